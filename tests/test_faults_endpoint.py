"""Fault suite, model endpoint: 429 with Retry-After, 500, a stream cut mid-answer, a stall past the timeout,
malformed JSON and a refused connection, over both APIs.

Every faulty agent ends in a named state (failed, or idle when the fault was transient) with the endpoint's
message; its retries are bounded (counted on the server); a healthy agent in the same fleet finishes its work.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

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
