"""Fault suite, model endpoint: 429 with Retry-After, 500, a stream cut mid-answer, a stall past the timeout,
malformed JSON and a refused connection, over both APIs; a Retry-After of an hour (capped by [model]
max_retry_wait) and streams that never finish, trickling or sending only keep-alive comments (ended by [model]
call_timeout).

Every faulty agent ends in a named state (failed, or idle when the fault was transient) with the endpoint's
message; its retries are bounded (counted on the server); a healthy agent in the same fleet finishes its work.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import openai
import pytest

from mc import events as ev
from mc.config import AgentConfig
from tests.conftest import fleet_config
from tests.test_fleet import write_turn

MAX_RETRIES = 2
TIMEOUT = 1.0

#: fault name → (fault table, words the agent's error must contain)
FAULTS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "rate": ({"kind": "429", "retry_after": 0.2, "message": "slow down, scripted"}, ("429", "slow down, scripted")),
    "boom": ({"kind": "500", "message": "the model is on fire"}, ("500", "the model is on fire")),
    "cut": ({"kind": "cut", "after": 4}, ("closed connection",)),
    "stall": ({"kind": "stall", "after": 3, "seconds": 5.0}, ("stalled",)),
    "bad": ({"kind": "malformed", "after": 3}, ("malformed",)),
}


def _events(fleet: Any, name: str) -> list[ev.Event]:
    return list(fleet.store.iter_events(name))


@pytest.mark.parametrize("api", ["responses", "chat"])
async def test_every_endpoint_fault_ends_named_with_bounded_retries_and_the_fleet_goes_on(
    api: str, repo: Path, scripted: Any, fleet_factory: Any
) -> None:
    agents: list[dict[str, Any]] = []
    specs = []
    text = "This answer streams in a good number of words so that a fault lands in the middle of it."
    for name, (fault, _) in FAULTS.items():
        # permanent: every request fails; transient: the first one only
        agents.append({"name": f"{name}-always", "faults": [dict(fault)], "turns": [{"say": text}]})
        agents.append({"name": f"{name}-once", "faults": [{**fault, "times": 1}], "turns": [{"say": text}]})
    agents.append({"name": "healthy", "turns": [write_turn("healthy.txt", "fine\n"), {"say": "Done."}]})
    server = scripted({"agents": agents})
    for agent in agents:
        specs.append(AgentConfig(name=agent["name"], task="answer", model=agent["name"], policy="never"))
    cfg = fleet_config(repo, server, specs, api=api, max_retries=MAX_RETRIES, timeout=TIMEOUT, retry_backoff=0.05)
    fleet = await fleet_factory(cfg)
    await fleet.spawn_configured()
    assert await fleet.wait_settled(60)

    healthy = fleet.get("healthy")
    assert healthy.status == "idle"
    assert (Path(healthy.worktree) / "healthy.txt").read_text() == "fine\n"
    for name, (fault, words) in FAULTS.items():
        always, once = fleet.get(f"{name}-always"), fleet.get(f"{name}-once")
        # permanent fault: failed, with the endpoint's message, after exactly 1 + MAX_RETRIES requests
        assert always.status == "failed", (name, always.status, always.error)
        for word in words:
            assert word in always.error, (name, always.error)
        assert "gave up after 2 retries" in always.error
        assert len(server.requests_for(f"{name}-always")) == 1 + MAX_RETRIES, name
        retries = [e for e in _events(fleet, f"{name}-always") if isinstance(e, ev.ErrorEvent) and not e.fatal]
        assert [e.retry_in is not None for e in retries] == [True] * MAX_RETRIES
        if fault["kind"] == "429":
            assert {e.retry_in for e in retries} == {fault["retry_after"]}  # Retry-After is obeyed
        fatal = [e for e in _events(fleet, f"{name}-always") if isinstance(e, ev.ErrorEvent) and e.fatal]
        assert len(fatal) == 1 and fatal[0].message == always.error
        # transient fault: one retry, then the answer
        assert once.status == "idle", (name, once.status, once.error)
        assert len(server.requests_for(f"{name}-once")) == 2, name
        assert any(text in line for _, line in once.log.lines), name
        assert not once.error


@pytest.mark.parametrize("api", ["responses", "chat"])
async def test_a_refused_connection_fails_the_agent_after_bounded_retries(
    api: str, repo: Path, scripted: Any, fleet_factory: Any
) -> None:
    server = scripted({"agents": [{"name": "nobody", "turns": [{"say": "never reached"}]}]})
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = fleet_config(repo, server, [AgentConfig(name="nobody", task="hi", model="nobody")], api=api)
    cfg.model.base_url = f"http://127.0.0.1:{port}/v1"
    cfg.model.max_retries = MAX_RETRIES
    fleet = await fleet_factory(cfg)
    await fleet.spawn_configured()
    assert await fleet.wait_settled(30)
    agent = fleet.get("nobody")
    assert agent.status == "failed"
    assert f"cannot reach http://127.0.0.1:{port}/v1" in agent.error
    assert "gave up after 2 retries" in agent.error
    attempts = [e for e in _events(fleet, "nobody") if isinstance(e, ev.ErrorEvent)]
    assert len(attempts) == MAX_RETRIES + 1  # two retries announced, then the fatal one
    assert server.requests == []


@pytest.mark.parametrize("api", ["responses", "chat"])
async def test_a_retry_after_of_an_hour_waits_only_max_retry_wait_and_says_so(
    api: str, repo: Path, scripted: Any, fleet_factory: Any
) -> None:
    hour = {"kind": "429", "retry_after": 3600, "message": "come back in an hour"}
    text = "Here is the answer after the wait."
    agents = [
        {"name": "hour-once", "faults": [{**hour, "times": 1}], "turns": [{"say": text}]},
        {"name": "hour-always", "faults": [hour], "turns": [{"say": text}]},
    ]
    server = scripted({"agents": agents})
    specs = [AgentConfig(name=a["name"], task="answer", model=a["name"], policy="never") for a in agents]
    cfg = fleet_config(repo, server, specs, api=api, max_retries=1, max_retry_wait=1.0)
    fleet = await fleet_factory(cfg)
    await fleet.spawn_configured()
    assert await fleet.wait_settled(60)  # not an hour

    for name in ("hour-once", "hour-always"):
        retries = [e for e in _events(fleet, name) if isinstance(e, ev.ErrorEvent) and not e.fatal]
        assert [e.retry_in for e in retries] == [1.0], name  # the wait was capped
        # what the engineer reads while it waits: what the endpoint asked for, and the wait it got instead
        assert "asked to wait 3600s" in retries[0].message and "[model] max_retry_wait" in retries[0].message
        assert any("asked to wait 3600s" in line and "retrying in 1s" in line for _, line in fleet.get(name).log.lines)
    once, always = fleet.get("hour-once"), fleet.get("hour-always")
    assert once.status == "idle" and any(text in line for _, line in once.log.lines)
    assert len(server.requests_for("hour-once")) == 2
    assert always.status == "failed" and "come back in an hour" in always.error
    assert "gave up after 1 retries" in always.error
    assert len(server.requests_for("hour-always")) == 2


async def test_the_keepalive_fault_sends_only_sse_comments(scripted: Any) -> None:
    """The scripted knob itself: after `after` events, only `: keep-alive` lines arrive for `seconds`."""
    fault = {"kind": "keepalive", "after": 2, "seconds": 30, "every": 0.1}
    server = scripted({"agents": [{"name": "k", "faults": [fault], "turns": [{"say": "never said"}]}]})
    client = openai.AsyncOpenAI(api_key="not-set", base_url=server.base_url, timeout=10, max_retries=0)
    request = client.chat.completions.with_streaming_response.create(
        model="k", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    lines: list[str] = []
    try:
        async with request as response:
            async for line in response.iter_lines():
                lines.append(line)
                if sum(x.startswith(":") for x in lines) == 5:
                    break
    finally:
        await client.close()
    data = [x for x in lines if x.startswith("data:")]
    assert len(data) == 2 and all(x == ": keep-alive" for x in lines if x.startswith(":"))
    assert not any("never said" in x for x in lines)


@pytest.mark.parametrize("api", ["responses", "chat"])
async def test_a_call_that_never_finishes_meets_its_deadline_and_ends_named(
    api: str, repo: Path, scripted: Any, fleet_factory: Any
) -> None:
    """A stream that trickles one word a second, or sends only keep-alive comments, never trips the read timeout;
    [model] call_timeout ends the call, which is retried, and the agent fails (or goes on) like any fault."""
    text = "This answer would take a long while at one word a second. " * 20
    keepalive = {"kind": "keepalive", "after": 3, "seconds": 60, "every": 0.2}
    agents = [
        {"name": "trickle", "tokens_per_second": 1, "turns": [{"say": text}]},
        {"name": "keepalive-always", "faults": [keepalive], "turns": [{"say": text}]},
        {"name": "keepalive-once", "faults": [{**keepalive, "times": 1}], "turns": [{"say": "Answered."}]},
    ]
    server = scripted({"agents": agents})
    specs = [AgentConfig(name=a["name"], task="answer", model=a["name"], policy="never") for a in agents]
    # the read timeout (5 s) is well above the gaps of either stream, so only the call's own deadline can end
    # them; 2 s is far more than a healthy answer here takes
    cfg = fleet_config(repo, server, specs, api=api, max_retries=1, timeout=5.0, call_timeout=2.0)
    fleet = await fleet_factory(cfg)
    await fleet.spawn_configured()
    assert await fleet.wait_settled(60)

    for name in ("trickle", "keepalive-always"):
        agent = fleet.get(name)
        assert agent.status == "failed", (name, agent.status)
        assert "did not finish within 2s ([model] call_timeout)" in agent.error, agent.error
        assert "gave up after 1 retries" in agent.error and "stalled" not in agent.error
        assert len(server.requests_for(name)) == 2, name
    once = fleet.get("keepalive-once")
    assert once.status == "idle" and not once.error
    assert any("Answered." in line for _, line in once.log.lines)
    assert len(server.requests_for("keepalive-once")) == 2
