"""Approvals mean the same in every runner, run for real through the built-in runner, Codex's app-server,
codex-acp (ACP) and the Claude Code CLI, each talking to the scripted model server on 127.0.0.1 (Claude Code to
its Anthropic Messages endpoint, with a scratch HOME and no other traffic: the serve_claude fixture).

* Approve-all approves exactly what it says: one table of commands for every runner. The remember-key is
  mc.tools.command_key: the program and its subcommand; a command with a redirection, a pipe, `;`, `&&` or a
  substitution matches only itself.
* A call that waits for approval when the engineer interrupts never ran, and its result says so.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from mc import events as ev
from mc import procs
from mc.agents import acp, builtin, claude, codex
from mc.agents.base import NOT_RUN_INTERRUPTED, NOT_RUN_REDIRECTED
from mc.config import AgentConfig
from tests.conftest import claude_bash, fleet_config

pytestmark = pytest.mark.timeout(180)

#: (command, whether the engineer is asked, how the engineer answers when asked)
TABLE: list[tuple[str, bool, str]] = [
    ("git tag x", True, "approve_all"),
    ("git tag y", False, ""),  # the same program and subcommand
    ("git commit --allow-empty -m sneaky", True, "approve"),  # another subcommand
    ("echo step > s1.txt", True, "approve_all"),
    ("echo step > s1.txt", False, ""),  # a redirection matches only itself ...
    ("echo step > s2.txt", True, "approve"),  # ... and nothing else
]

RUNNERS = ["builtin", "codex", "acp", "claude"]


def _call(runner: str, command: str) -> dict[str, Any]:
    """A scripted turn's tool call that runs `command` with the runner's own shell tool."""
    if runner == "builtin":
        return {"tool": "shell", "args": {"command": command}}
    if runner == "claude":  # Claude Code's Bash
        return claude_bash(command)
    return {"tool": "exec_command", "args": {"cmd": command, "login": False}}  # Codex's, in codex and codex-acp


def _start(
    runner: str, name: str, commands: list[str], request: pytest.FixtureRequest, **options: Any
) -> tuple[Any, AgentConfig]:
    """The scripted model server, whose turns run one command each and then say a last word, and the agent
    that runs them."""
    steps = [{"say": f"Step {n}.", **_call(runner, command)} for n, command in enumerate(commands)]
    agent = {"name": name, "turns": [*steps, {"say": "All steps done."}]}
    if runner == "claude":  # Claude Code picks the scenario's agent by its model
        server = request.getfixturevalue("serve_claude")(agent)
        return server, AgentConfig(name=name, task="Run the steps.", runner=runner, model=name, **options)
    server = request.getfixturevalue("scripted")({"agents": [agent]})
    return server, AgentConfig(name=name, task="Run the steps.", runner=runner, **options)


def _available(runner: str) -> str:
    if runner == "codex" and codex.codex_binary() is None:
        return "codex is not installed: run scripts/install-tools.sh"
    if runner == "acp" and acp.codex_acp_binary() is None:
        return "codex-acp is not installed: run scripts/install-tools.sh"
    if runner == "claude" and claude.claude_binary() is None:
        return "claude is not installed: run scripts/install-tools.sh"
    return ""


@pytest.mark.parametrize("runner", RUNNERS)
async def test_the_same_table_in_every_runner(
    runner: str, repo: Path, fleet_factory: Any, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    if why := _available(runner):
        pytest.skip(why)
    monkeypatch.delenv(codex.HOME_ENV, raising=False)
    name = f"aa-{runner}"
    server, spec = _start(runner, name, [command for command, _, _ in TABLE], request)
    fleet = await fleet_factory(fleet_config(repo, server, model=name))
    events: list[ev.Event] = []
    fleet.add_listener(events.append)
    await fleet.spawn(spec)
    agent = fleet.get(name)

    def calls() -> list[ev.ToolCall]:
        return [e for e in events if isinstance(e, ev.ToolCall) and e.kind == "command"]

    def settled_call(n: int) -> ev.ToolCall | None:
        """The n-th command call once it waits for the engineer or has its result."""
        found = calls()
        if len(found) <= n:
            return None
        call = found[n]
        asked = any(p.call_id == call.call_id for p in agent.pending.values())
        done = any(isinstance(e, ev.ToolResult) and e.call_id == call.call_id for e in events)
        return call if asked or done else None

    seen: list[tuple[str, bool]] = []
    for n, (command, _asks, answer) in enumerate(TABLE):
        await _until(lambda n=n: settled_call(n) is not None or agent.status == "failed", fleet, name)
        assert agent.status != "failed", agent.error
        call = settled_call(n)
        assert call is not None
        assert command in call.summary, (command, call.summary)
        asked = any(isinstance(e, ev.ApprovalRequested) and e.call_id == call.call_id for e in events)
        seen.append((command, asked))
        if asked:
            request = next(p for p in agent.pending.values() if p.call_id == call.call_id)
            await fleet.approve(name, request.approval_id, remember=answer == "approve_all")
    assert seen == [(command, asks) for command, asks, _ in TABLE]
    await _until(lambda: agent.status in ("idle", "failed"), fleet, name)
    assert agent.status == "idle", agent.error
    assert agent.remembered == {"command:git tag", "command:echo step > s1.txt"}
    if runner == "acp":
        # "for the rest of this run" is mission control's memory: nothing permanent in codex-acp's own home
        rules = list((repo / ".mc" / "agents").glob("*/codex-acp-home/rules/*"))
        assert [p.read_text() for p in rules if "prefix_rule" in p.read_text()] == []


async def _waiting(
    runner: str, prefix: str, repo: Path, fleet_factory: Any, monkeypatch: pytest.MonkeyPatch, request: Any
) -> tuple[Any, Any, Any, list[ev.Event], str]:
    """An agent of `runner` whose call `echo made > made.txt` waits for approval: (model server, fleet, agent,
    the fleet's events so far and from now on, the waiting call's id)."""
    if why := _available(runner):
        pytest.skip(why)
    monkeypatch.delenv(codex.HOME_ENV, raising=False)
    name = f"{prefix}-{runner}"
    server, spec = _start(runner, name, ["echo made > made.txt"], request)
    fleet = await fleet_factory(fleet_config(repo, server, model=name))
    events: list[ev.Event] = []
    fleet.add_listener(events.append)
    await fleet.spawn(spec)
    agent = fleet.get(name)
    await _until(lambda: bool(agent.pending) or agent.status == "failed", fleet, name)
    assert agent.status == "waiting", agent.error
    call_id = agent.oldest_pending().call_id
    return server, fleet, agent, events, call_id


@pytest.mark.parametrize("runner", RUNNERS)
async def test_interrupt_while_waiting_says_the_call_was_not_run(
    runner: str, repo: Path, fleet_factory: Any, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    server, fleet, agent, events, call_id = await _waiting(runner, "int", repo, fleet_factory, monkeypatch, request)
    await fleet.interrupt(agent.name)
    assert agent.status == "interrupted"
    assert not (Path(agent.worktree) / "made.txt").exists()
    results = [e.output for e in events if isinstance(e, ev.ToolResult) and e.call_id == call_id]
    assert results == [NOT_RUN_INTERRUPTED]
    if runner == "builtin":  # what the model reads on resume
        await fleet.resume(agent.name)
        await _until(lambda: agent.status in ("idle", "failed"), fleet, agent.name)
        assert NOT_RUN_INTERRUPTED in server.requests[-1].tool_outputs()


@pytest.mark.parametrize("runner", RUNNERS)
async def test_redirect_while_waiting_says_the_call_was_not_run(
    runner: str, repo: Path, fleet_factory: Any, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """A new instruction given while a call waits for approval: the call never runs, its result says why, and
    the agent goes on with the new instruction."""
    _, fleet, agent, events, call_id = await _waiting(runner, "redir", repo, fleet_factory, monkeypatch, request)
    await fleet.redirect(agent.name, "Stop that and say you are done.")
    await _until(lambda: agent.status in ("idle", "failed"), fleet, agent.name)
    assert agent.status == "idle", agent.error
    assert not (Path(agent.worktree) / "made.txt").exists()
    results = [e.output for e in events if isinstance(e, ev.ToolResult) and e.call_id == call_id]
    assert results == [NOT_RUN_REDIRECTED]


async def test_a_call_interrupted_while_it_runs_may_have_run_partly(
    repo: Path, fleet_factory: Any, request: pytest.FixtureRequest
) -> None:
    server, spec = _start("builtin", "partly", ["sleep 30"], request, policy="never")
    fleet = await fleet_factory(fleet_config(repo, server, model="partly"))
    events: list[ev.Event] = []
    fleet.add_listener(events.append)
    await fleet.spawn(spec)
    agent = fleet.get("partly")
    tag = fleet._tag(agent.id)
    await _until(lambda: any("sleep" in _cmdline(pid) for pid in procs.find_tagged(tag)), fleet, "partly")
    await fleet.interrupt("partly")
    results = [e.output for e in events if isinstance(e, ev.ToolResult)]
    assert results == [builtin.INTERRUPTED[0]]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


async def _until(check: Any, fleet: Any, name: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            agent = fleet.get(name)
            raise AssertionError(f"not reached within {timeout:g}s: {agent.status} {agent.error} {agent.log.tail(12)}")
        await asyncio.sleep(0.05)
