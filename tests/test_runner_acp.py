"""The acp runner, for real: Zed's codex-acp adapter (an ACP agent) driven by the Fleet, talking to our
scripted model server on 127.0.0.1. Approvals answered through the Fleet change what happens on disk."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mc import events as ev
from mc import procs
from mc.agents import acp
from mc.agents.base import BUDGET_STOPPED, NOT_RUN_INTERRUPTED
from mc.config import AgentConfig
from mc.scripted.server import count_input_tokens, split_words
from tests.conftest import fleet_config

pytestmark = pytest.mark.timeout(120)

BINARY = acp.codex_acp_binary()
if BINARY is None:
    pytest.skip("codex-acp is not installed: run scripts/install-tools.sh", allow_module_level=True)


def scenario(name: str, command: str = "echo made > made.txt && echo wrote it") -> dict[str, Any]:
    return {
        "agents": [
            {
                "name": name,
                "turns": [
                    {"say": "Creating the file.", "tool": "exec_command", "args": {"cmd": command, "login": False}},
                    {"when_tool_output_contains": "wrote it", "say": "The file is there."},
                    {"when_user_contains": "use python", "say": "Switching to python as asked."},
                    {"say": "I was not allowed to run it."},
                ],
            }
        ]
    }


async def until(check: Callable[[], bool], fleet: Any, timeout: float = 60.0) -> None:
    """Wait until `check()` holds; fail with every agent's state otherwise."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            state = {a.name: (a.status, a.error, a.log.tail(8)) for a in fleet.list()}
            raise AssertionError(f"condition not reached within {timeout:g}s: {state}")
        await asyncio.sleep(0.05)


@pytest.fixture(autouse=True)
def _acp_bin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(acp.BIN_ENV, BINARY or "")
    monkeypatch.delenv("MC_CODEX_HOME", raising=False)


async def _spawn(fleet_factory: Any, repo: Path, server: Any, name: str, **spec: Any) -> tuple[Any, list[Any]]:
    fleet = await fleet_factory(fleet_config(repo, server, model=name))
    events: list[Any] = []
    fleet.add_listener(events.append)
    await fleet.spawn(AgentConfig(name=name, task="Create made.txt", runner="acp", **spec))
    return fleet, events


async def test_approve_through_the_fleet_writes_the_file(repo: Path, scripted: Any, fleet_factory: Any) -> None:
    server = scripted(scenario("ac"))
    fleet, events = await _spawn(fleet_factory, repo, server, "ac")
    agent = fleet.get("ac")
    await until(lambda: bool(agent.pending) or agent.status == "failed", fleet)
    assert agent.status == "waiting", agent.error
    request = agent.oldest_pending()
    assert request.kind == "command" and "made.txt" in request.summary
    worktree = Path(agent.worktree)
    assert not (worktree / "made.txt").exists()
    await fleet.approve("ac")
    await until(lambda: agent.status in ("idle", "failed"), fleet)
    assert agent.status == "idle", agent.error
    assert (worktree / "made.txt").read_text() == "made\n"
    assert agent.runner_state.get("session_id")
    result = next(e for e in events if e.type == "tool_result")
    assert result.ok and "wrote it" in result.output
    assert any(e.type == "assistant_message" and "The file is there." in e.text for e in events)
    assert any(e.type == "text_delta" for e in events)


async def test_deny_through_the_fleet_keeps_the_file_away(repo: Path, scripted: Any, fleet_factory: Any) -> None:
    server = scripted(scenario("acdeny"))
    fleet, _ = await _spawn(fleet_factory, repo, server, "acdeny")
    agent = fleet.get("acdeny")
    await until(lambda: bool(agent.pending) or agent.status == "failed", fleet)
    await fleet.deny("acdeny", reason="not now")
    await until(lambda: agent.status in ("idle", "failed"), fleet)
    assert agent.status == "idle", agent.error
    assert not (Path(agent.worktree) / "made.txt").exists()


async def test_deny_reason_reaches_the_model(repo: Path, scripted: Any, fleet_factory: Any) -> None:
    # codex-acp ends the turn on a rejection and tells the model nothing: the reason is the next prompt
    server = scripted(scenario("acwhy"))
    fleet, events = await _spawn(fleet_factory, repo, server, "acwhy")
    agent = fleet.get("acwhy")
    await until(lambda: bool(agent.pending) or agent.status == "failed", fleet)
    await fleet.deny("acwhy", reason="use python instead of a shell redirection")
    await until(lambda: agent.status in ("idle", "failed"), fleet)
    assert agent.status == "idle", agent.error
    assert not (Path(agent.worktree) / "made.txt").exists()
    note = "The engineer denied `echo made > made.txt && echo wrote it`. Their reason: use python instead of a shell redirection"
    assert note in server.requests[-1].user_texts()
    assert any(e.type == "assistant_message" and "Switching to python as asked." in e.text for e in events)
    results = [e for e in events if isinstance(e, ev.ToolResult)]
    assert [(r.ok, r.output) for r in results] == [
        (False, "The engineer denied this call. Their reason: use python instead of a shell redirection")
    ]


async def test_interrupt_while_waiting_says_the_call_did_not_run(repo: Path, scripted: Any, fleet_factory: Any) -> None:
    server = scripted(scenario("acint"))
    fleet, events = await _spawn(fleet_factory, repo, server, "acint")
    agent = fleet.get("acint")
    await until(lambda: bool(agent.pending) or agent.status == "failed", fleet)
    call_id = agent.oldest_pending().call_id
    await fleet.interrupt("acint")
    assert agent.status == "interrupted"
    results = [(e.ok, e.output) for e in events if isinstance(e, ev.ToolResult) and e.call_id == call_id]
    assert results == [(False, NOT_RUN_INTERRUPTED)]


async def test_tokens_are_what_codex_acp_reports(repo: Path, scripted: Any, fleet_factory: Any) -> None:
    # codex-acp 0.16.0 reports only the context in use (usage_update), no tokens per turn
    server = scripted(scenario("actok"))
    fleet, _ = await _spawn(fleet_factory, repo, server, "actok")
    agent = fleet.get("actok")
    await until(lambda: bool(agent.pending) or agent.status == "failed", fleet)
    await fleet.approve("actok")
    await until(lambda: agent.status in ("idle", "failed"), fleet)
    assert agent.status == "idle", agent.error
    assert not agent.usage_reported and agent.tokens == 0  # unknown, not zero
    said = len(split_words("The file is there."))  # the scripted model counts one token per word
    assert agent.runner_state["context_tokens"] == count_input_tokens(server.requests[-1].body) + said
    assert agent.runner_state["context_window"] > agent.runner_state["context_tokens"]
    # what the protocol reports is what the header shows: no token count, how full the context is
    from mc.tui.format import header_text

    share = 100 * agent.runner_state["context_tokens"] / agent.runner_state["context_window"]
    shown = "<1" if share < 1 else str(round(share))
    assert f" — tok ctx {shown}% acp" in header_text(agent, now=0.0).plain


#: A minimal ACP agent that answers each prompt with one sentence and the turn's usage.
_USAGE_AGENT = """
import json, sys
def send(obj):
    sys.stdout.write(json.dumps(obj) + "\\n")
    sys.stdout.flush()
for line in sys.stdin:
    msg = json.loads(line)
    method, rid = msg.get("method"), msg.get("id")
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": rid, "result": {"protocolVersion": 1, "agentCapabilities": {}}})
    elif method == "session/new":
        send({"jsonrpc": "2.0", "id": rid, "result": {"sessionId": "s-1"}})
    elif method == "session/prompt":
        chunk = {"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": "Nothing to do."}}
        send({"jsonrpc": "2.0", "method": "session/update", "params": {"sessionId": "s-1", "update": chunk}})
        usage = {"totalTokens": 175, "inputTokens": 100, "cachedReadTokens": 20, "outputTokens": 40, "thoughtTokens": 15}
        send({"jsonrpc": "2.0", "id": rid, "result": {"stopReason": "end_turn", "usage": usage}})
"""


async def test_tokens_of_a_prompt_response_are_counted(repo: Path, scripted: Any, fleet_factory: Any) -> None:
    agent_py = repo.parent / "usage_agent.py"
    agent_py.write_text(_USAGE_AGENT)
    server = scripted({"agents": [{"name": "helper", "turns": [{"say": "unused"}]}]})
    fleet = await fleet_factory(fleet_config(repo, server, model="helper"))
    await fleet.spawn(AgentConfig(name="acuse", task="anything", runner="acp", command=f"{sys.executable} {agent_py}"))
    agent = fleet.get("acuse")
    await until(lambda: agent.status in ("idle", "failed"), fleet)
    assert agent.status == "idle", agent.error
    assert agent.usage_reported
    assert (agent.input_tokens, agent.output_tokens) == (120, 55)
    await fleet.redirect("acuse", "again")
    await until(lambda: agent.status in ("idle", "failed") and agent.tokens > 175, fleet)
    assert (agent.input_tokens, agent.output_tokens) == (240, 110)


async def test_kill_leaves_no_process(repo: Path, scripted: Any, fleet_factory: Any) -> None:
    server = scripted(scenario("ackill", command="sleep 60 && echo late > late.txt"))
    fleet, _ = await _spawn(fleet_factory, repo, server, "ackill")
    agent = fleet.get("ackill")
    await until(lambda: bool(agent.pending) or agent.status == "failed", fleet)
    await fleet.approve("ackill")
    tag = fleet._tag(agent.id)
    await until(lambda: any(b"sleep 60" in _cmdline(pid) for pid in procs.find_tagged(tag)), fleet)
    await fleet.kill("ackill")
    assert agent.status == "killed"
    assert procs.find_tagged(tag) == []
    assert "sleep 60 && echo late" not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return b""


async def test_interrupt_then_redirect_continues_the_session(repo: Path, scripted: Any, fleet_factory: Any) -> None:
    server = scripted(scenario("acredir"))
    fleet, _ = await _spawn(fleet_factory, repo, server, "acredir")
    agent = fleet.get("acredir")
    await until(lambda: bool(agent.pending) or agent.status == "failed", fleet)
    session = agent.runner_state.get("session_id")
    await fleet.interrupt("acredir")
    assert agent.status == "interrupted"
    assert procs.find_tagged(fleet._tag(agent.id)) == []
    await fleet.redirect("acredir", "Leave the file alone and say so.")
    await until(lambda: agent.status in ("idle", "failed"), fleet)
    assert agent.status == "idle", agent.error
    assert agent.runner_state.get("session_id") == session
    texts = server.requests[-1].user_texts()
    assert any("Leave the file alone" in t for t in texts) and any("Create made.txt" in t for t in texts)


async def test_not_an_acp_agent_fails_that_agent_only(repo: Path, scripted: Any, fleet_factory: Any) -> None:
    server = scripted({"agents": [{"name": "helper", "turns": [{"say": "Nothing to do."}]}]})
    fleet = await fleet_factory(fleet_config(repo, server, model="helper"))
    # one ends before initialize is written to it, one reads initialize and then ends: the same message
    await fleet.spawn(AgentConfig(name="dead", task="anything", runner="acp", command="sh -c 'echo boom >&2; exit 3'"))
    late = "sh -c 'read line; echo boom >&2; exit 3'"
    await fleet.spawn(AgentConfig(name="late", task="anything", runner="acp", command=late))
    await fleet.spawn(AgentConfig(name="missing", task="anything", runner="acp", command="no-such-acp-agent --acp"))
    await fleet.spawn(AgentConfig(name="fine", task="say something", runner="builtin"))
    await until(
        lambda: (
            fleet.get("dead").status == "failed"
            and fleet.get("late").status == "failed"
            and fleet.get("missing").status == "failed"
            and fleet.get("fine").status == "idle"
        ),
        fleet,
    )
    expected = "sh: did not answer initialize (the agent process ended: boom): is 'sh' an ACP agent (check its flags)?"
    assert fleet.get("dead").error == expected
    assert fleet.get("late").error == expected
    assert "no-such-acp-agent" in fleet.get("missing").error


def test_available_names_the_binary() -> None:
    ok, text = acp.available()
    assert ok, text
    assert "codex-acp" in text


# -- budgets -------------------------------------------------------------------------------------------
#: A minimal ACP agent that answers each prompt with "Answer <n>." and the turn's usage (175 tokens).
_COUNTING_AGENT = _USAGE_AGENT.replace('"text": "Nothing to do."', '"text": f"Answer {rid}."')


def answers(fleet: Any, name: str) -> list[str]:
    return [e.text for e in fleet.store.iter_events(fleet.get(name).id) if isinstance(e, ev.AssistantMessage)]


async def asked(fleet: Any, name: str, approval_id: str) -> ev.ApprovalRequested:
    agent = fleet.get(name)
    await until(lambda: approval_id in agent.pending or agent.status == "failed", fleet)
    assert agent.status == "waiting" and list(agent.pending) == [approval_id], (agent.status, agent.error)
    return agent.pending[approval_id]


def counting_agent(repo: Path) -> str:
    agent_py = repo.parent / "counting_agent.py"
    agent_py.write_text(_COUNTING_AGENT)
    return f"{sys.executable} {agent_py}"


async def test_a_token_budget_reached_by_a_turn_asks_before_the_next_prompt(
    repo: Path, scripted: Any, fleet_factory: Any
) -> None:
    command = counting_agent(repo)
    server = scripted({"agents": [{"name": "helper", "turns": [{"say": "unused"}]}]})
    fleet = await fleet_factory(fleet_config(repo, server, model="helper"))
    await fleet.spawn(AgentConfig(name="acb", task="anything", runner="acp", command=command, budget_tokens=100))
    agent = fleet.get("acb")
    await until(lambda: agent.status in ("idle", "failed"), fleet)
    assert agent.status == "idle" and agent.tokens == 175  # the turn that reached it ran to its end

    await fleet.redirect("acb", "again")
    question = await asked(fleet, "acb", "budget-0")  # before the prompt: no turn ran
    assert "175 of 100 tokens" in question.summary and "to 200" in question.summary
    assert len(answers(fleet, "acb")) == 1
    await fleet.approve("acb")  # 200 now: the prompt goes
    await until(lambda: agent.status in ("idle", "failed"), fleet)
    assert agent.status == "idle" and len(answers(fleet, "acb")) == 2 and agent.tokens == 350

    await fleet.redirect("acb", "once more")
    await asked(fleet, "acb", "budget-1")
    await fleet.approve("acb")  # 300 is still under what was used: it asks again, and nothing runs
    question = await asked(fleet, "acb", "budget-2")
    assert "350 of 300 tokens" in question.summary and len(answers(fleet, "acb")) == 2
    await fleet.deny("acb")
    assert agent.status == "idle" and agent.status_reason == BUDGET_STOPPED and len(answers(fleet, "acb")) == 2


async def test_a_fleet_budget_asks_both_agents_and_one_approval_lets_both_go_on(
    repo: Path, scripted: Any, fleet_factory: Any
) -> None:
    command = counting_agent(repo)
    server = scripted({"agents": [{"name": "helper", "turns": [{"say": "unused"}]}]})
    cfg = fleet_config(repo, server, model="helper")
    cfg.fleet.budget_tokens = 300
    fleet = await fleet_factory(cfg)
    for name in ("aca", "acc"):
        await fleet.spawn(AgentConfig(name=name, task="anything", runner="acp", command=command))
        await until(lambda name=name: fleet.get(name).status in ("idle", "failed"), fleet)
    assert [fleet.get(n).tokens for n in ("aca", "acc")] == [175, 175]  # the second turn began at 175 of 300
    for name in ("aca", "acc"):
        await fleet.redirect(name, "again")
        question = await asked(fleet, name, "fleet-budget-0")
        assert "350 of 300 tokens used by all agents" in question.summary
    await fleet.approve("acc")  # the fleet's budget goes up once, for both
    for name in ("aca", "acc"):
        await until(lambda name=name: len(answers(fleet, name)) == 2 and fleet.get(name).status == "idle", fleet)
        assert fleet.get(name).fleet_budget_raises == 1


async def test_an_agent_that_reports_no_tokens_says_its_budget_cannot_be_reached(
    repo: Path, scripted: Any, fleet_factory: Any
) -> None:
    server = scripted({"agents": [{"name": "acnone", "turns": [{"say": "Nothing to do."}]}]})
    fleet, events = await _spawn(fleet_factory, repo, server, "acnone", budget_tokens=10)
    agent = fleet.get("acnone")
    await until(lambda: agent.status in ("idle", "failed"), fleet)
    assert agent.status == "idle", agent.error
    said = [e.message for e in events if isinstance(e, ev.ErrorEvent)]
    assert said == [
        f"{Path(BINARY or '').name} reports no token usage for its turns (no `usage` in its prompt responses): its "
        "tokens are unknown and count toward no budget, so its own budget is never reached"
    ]
