"""The codex runner, for real: the Codex CLI's app-server, driven by the Fleet, talking to our scripted
model server on 127.0.0.1. The scripted "model" calls Codex's own exec_command tool; Codex asks for
approval; our approve/deny decides whether the command runs and the file appears."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mc import procs
from mc.agents import codex
from mc.config import AgentConfig
from tests.conftest import fleet_config

pytestmark = pytest.mark.timeout(120)

BINARY = codex.codex_binary()
if BINARY is None:
    pytest.skip("codex is not installed: run scripts/install-tools.sh", allow_module_level=True)

WRITE = "echo made > made.txt && echo wrote it"


def scenario(name: str, command: str = WRITE) -> dict[str, Any]:
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


async def until(check: Callable[[], bool], timeout: float = 60.0, fleet: Any = None) -> None:
    """Wait until `check()` holds (polling the event loop); fail the test with the timeout otherwise."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            state = {a.name: (a.status, a.error, a.log.tail(8)) for a in fleet.list()} if fleet else ""
            raise AssertionError(f"condition not reached within {timeout:g}s {state}")
        await asyncio.sleep(0.05)


@pytest.fixture(autouse=True)
def _codex_bin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(codex.BIN_ENV, BINARY or "")
    monkeypatch.delenv(codex.HOME_ENV, raising=False)


async def _spawn(fleet_factory: Any, repo: Path, server: Any, name: str, **spec: Any) -> tuple[Any, Any]:
    cfg = fleet_config(repo, server, model=name)
    fleet = await fleet_factory(cfg)
    events: list[Any] = []
    fleet.add_listener(events.append)
    await fleet.spawn(AgentConfig(name=name, task="Create made.txt", runner="codex", **spec))
    return fleet, events


async def test_approve_runs_the_command_in_the_worktree(repo: Path, scripted: Any, fleet_factory: Any) -> None:
    server = scripted(scenario("cx"))
    fleet, events = await _spawn(fleet_factory, repo, server, "cx")
    agent = fleet.get("cx")
    await until(lambda: bool(agent.pending) or agent.status == "failed")
    assert agent.status == "waiting", agent.error
    request = agent.oldest_pending()
    assert request.kind == "command" and "echo made > made.txt" in request.summary
    worktree = Path(agent.worktree)
    assert not (worktree / "made.txt").exists()  # nothing ran before the decision
    await fleet.approve("cx")
    await until(lambda: agent.status in ("idle", "failed"))
    assert agent.status == "idle", agent.error
    assert (worktree / "made.txt").read_text() == "made\n"
    assert not (repo / "made.txt").exists()
    types = {e.type for e in events}
    assert {"tool_call", "tool_result", "approval_requested", "usage", "runner_state"} <= types
    result = next(e for e in events if e.type == "tool_result")
    assert result.ok and result.exit_code == 0 and "wrote it" in result.output
    assert agent.runner_state.get("thread_id")
    assert agent.input_tokens > 0 and agent.output_tokens > 0
    assert any(e.type == "assistant_message" and "The file is there." in e.text for e in events)
    # The model saw the command's real output.
    assert any("wrote it" in out for r in server.requests for out in r.tool_outputs())
    # Codex ran against our endpoint with its own tools, and with the worktree as its cwd.
    assert "exec_command" in server.requests[0].tools()


async def test_deny_keeps_the_file_from_appearing(repo: Path, scripted: Any, fleet_factory: Any) -> None:
    server = scripted(scenario("cxdeny"))
    fleet, events = await _spawn(fleet_factory, repo, server, "cxdeny")
    agent = fleet.get("cxdeny")
    await until(lambda: bool(agent.pending) or agent.status == "failed")
    await fleet.deny("cxdeny")
    await until(lambda: agent.status in ("idle", "failed"))
    assert agent.status == "idle", agent.error
    assert not (Path(agent.worktree) / "made.txt").exists()
    assert any(e.type == "assistant_message" and "not allowed" in e.text for e in events)
    assert any("rejected" in out for r in server.requests for out in r.tool_outputs())


async def test_kill_leaves_no_process(repo: Path, scripted: Any, fleet_factory: Any) -> None:
    server = scripted(scenario("cxkill", command="sleep 60 && echo late > late.txt"))
    fleet, _ = await _spawn(fleet_factory, repo, server, "cxkill", policy="never")
    agent = fleet.get("cxkill")
    tag = fleet._tag(agent.id)
    await until(lambda: bool(agent.tool_calls) or agent.status == "failed")
    assert agent.status == "running", agent.error
    await until(lambda: any("sleep 60" in _cmdline(pid) for pid in procs.find_tagged(tag)))
    await fleet.kill("cxkill")
    assert agent.status == "killed"
    assert procs.find_tagged(tag) == []
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    assert "sleep 60 && echo late" not in ps
    assert not (Path(agent.worktree) / "late.txt").exists()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


async def test_interrupt_then_redirect_resumes_the_thread(repo: Path, scripted: Any, fleet_factory: Any) -> None:
    server = scripted(scenario("cxredir"))
    fleet, _ = await _spawn(fleet_factory, repo, server, "cxredir")
    agent = fleet.get("cxredir")
    await until(lambda: bool(agent.pending) or agent.status == "failed")
    thread = agent.runner_state.get("thread_id")
    await fleet.interrupt("cxredir")
    assert agent.status == "interrupted"
    assert procs.find_tagged(fleet._tag(agent.id)) == []
    await fleet.redirect("cxredir", "Do not write the file; use python instead.")
    await until(lambda: agent.status in ("idle", "failed"))
    assert agent.status == "idle", agent.error
    assert agent.runner_state.get("thread_id") == thread  # the same thread, resumed in a new process
    last = server.requests[-1]
    assert any("use python instead" in text for text in last.user_texts())
    assert "Create made.txt" in last.user_texts()[-2] or any("Create made.txt" in t for t in last.user_texts())
    assert not (Path(agent.worktree) / "made.txt").exists()


async def test_missing_binary_fails_that_agent_only(
    repo: Path, scripted: Any, fleet_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(codex.BIN_ENV, str(repo / "no-such-codex"))
    server = scripted({"agents": [{"name": "helper", "turns": [{"say": "Nothing to do."}]}]})
    cfg = fleet_config(repo, server, model="helper")
    fleet = await fleet_factory(cfg)
    await fleet.spawn(AgentConfig(name="broken", task="anything", runner="codex"))
    await fleet.spawn(AgentConfig(name="fine", task="say something", runner="builtin"))
    await until(lambda: fleet.get("broken").status == "failed" and fleet.get("fine").status == "idle", fleet=fleet)
    error = fleet.get("broken").error
    assert "no-such-codex" in error and "install-tools.sh" in error


async def test_crash_mid_run_fails_with_the_reason(repo: Path, scripted: Any, fleet_factory: Any) -> None:
    server = scripted(scenario("cxcrash"))
    fleet, _ = await _spawn(fleet_factory, repo, server, "cxcrash")
    agent = fleet.get("cxcrash")
    await until(lambda: bool(agent.pending) or agent.status == "failed")
    tag = fleet._tag(agent.id)
    servers = [pid for pid in procs.find_tagged(tag) if "app-server" in _cmdline(pid)]
    assert servers
    for pid in servers:
        os.kill(pid, signal.SIGKILL)
    await until(lambda: agent.status == "failed")
    assert "codex" in agent.error and ("exited" in agent.error or "killed" in agent.error)
    await until(lambda: procs.find_tagged(tag) == [])


async def test_old_version_is_refused(repo: Path, scripted: Any, fleet_factory: Any, monkeypatch: Any) -> None:
    fake = repo.parent / "old-codex"
    fake.write_text('#!/bin/sh\nread line\necho \'{"id":1,"result":{"userAgent":"mc/0.1.0 (test)"}}\'\nsleep 30\n')
    fake.chmod(0o755)
    monkeypatch.setenv(codex.BIN_ENV, str(fake))
    server = scripted(scenario("cxold"))
    fleet, _ = await _spawn(fleet_factory, repo, server, "cxold")
    agent = fleet.get("cxold")
    await until(lambda: agent.status == "failed")
    assert "0.1.0" in agent.error and "upgrade" in agent.error


def test_available_reports_the_version() -> None:
    ok, text = codex.available()
    assert ok, text
    assert codex.CODEX_VERSION in text or "codex" in text
