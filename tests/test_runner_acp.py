"""The acp runner, for real: Zed's codex-acp adapter (an ACP agent) driven by the Fleet, talking to our
scripted model server on 127.0.0.1. Approvals answered through the Fleet change what happens on disk."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mc import procs
from mc.agents import acp
from mc.config import AgentConfig
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
