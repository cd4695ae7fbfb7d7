"""The claude runner through the real Fleet, against tests/fakes/fake_claude.py: a stand-in CLI that speaks
Claude Code's recorded stream-json protocol (the real CLI cannot be pointed at a local model)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mc import procs
from mc.agents.claude import CONTINUE, describe, kind_of, remember_key
from mc.config import AgentConfig
from tests.conftest import fleet_config

FAKE = Path(__file__).resolve().parent / "fakes" / "fake_claude.py"
FAKE_CMD = f"{sys.executable} {FAKE}"
NO_SERVER = SimpleNamespace(base_url="http://127.0.0.1:9/v1")


@pytest.fixture
def fake_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "fake-claude.jsonl"
    monkeypatch.setenv("FAKE_CLAUDE_LOG", str(path))
    return path


def received(log: Path) -> list[dict[str, Any]]:
    """Everything the fake got: {"argv": …} per start, {"received": message} per line of stdin."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def starts(log: Path) -> list[list[str]]:
    return [entry["argv"] for entry in received(log) if "argv" in entry]


def messages(log: Path, kind: str) -> list[dict[str, Any]]:
    return [e["received"] for e in received(log) if "received" in e and e["received"].get("type") == kind]


def log_text(fleet: Any, name: str) -> str:
    return "\n".join(text for _kind, text in fleet.get(name).log.tail(10_000))


async def wait_for(predicate: Any, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def claude(name: str, task: str, **kw: Any) -> AgentConfig:
    return AgentConfig(name=name, task=task, runner="claude", command=kw.pop("command", FAKE_CMD), **kw)


async def open_fleet(fleet_factory: Any, repo: Path, *agents: AgentConfig) -> Any:
    return await fleet_factory(fleet_config(repo, NO_SERVER, list(agents)))


def test_tool_kinds_keys_and_details() -> None:
    assert [kind_of(t) for t in ("Bash", "Edit", "Write", "MultiEdit", "NotebookEdit", "Read", "WebFetch")] == [
        "command",
        "write",
        "write",
        "write",
        "write",
        "read",
        "read",
    ]
    assert remember_key("Bash", "command", {"command": "git status -s"}) == "command:git status"
    assert remember_key("Edit", "write", {}) == "write"
    assert remember_key("WebFetch", "read", {}) == "tool:WebFetch"
    root = Path("/wt")
    detail = describe("Edit", {"file_path": "/wt/a.py", "old_string": "x = 1", "new_string": "x = 2"}, root)
    assert detail.splitlines() == ["--- a.py", "+++ a.py", "@@", "-x = 1", "+x = 2"]


async def test_approved_command_runs_and_the_turn_is_logged(repo, fake_log, fleet_factory) -> None:
    fleet = await open_fleet(fleet_factory, repo, claude("c", "run: echo approved > made.txt"))
    await fleet.spawn_configured()
    await wait_for(lambda: fleet.get("c").pending, what="the approval")
    agent = fleet.get("c")
    assert agent.status == "waiting"
    req = agent.oldest_pending()
    assert (req.tool, req.kind) == ("Bash", "command")
    assert req.detail.startswith("echo approved > made.txt")
    assert not (Path(agent.worktree) / "made.txt").exists()
    await fleet.approve("c")
    assert await fleet.wait_settled(30)
    assert agent.status == "idle", agent.status_reason
    assert (Path(agent.worktree) / "made.txt").read_text() == "approved\n"
    diff = await fleet.refresh_diff("c")
    assert [f.path for f in diff.files] == ["made.txt"]
    assert agent.runner_state["session_id"].startswith("sess-")
    assert (agent.input_tokens, agent.output_tokens) == (150, 40)
    text = log_text(fleet, "c")
    assert "I will run echo approved > made.txt." in text and "Ran it: exit 0." in text
    assert "$ echo approved > made.txt" in text
    argv = starts(fake_log)[0]
    assert " ".join(argv[:8]) == (
        "-p --output-format stream-json --input-format stream-json --verbose --permission-prompt-tool stdio"
    )
    assert [m["request"]["subtype"] for m in messages(fake_log, "control_request")] == ["initialize"]
    answer = messages(fake_log, "control_response")[0]["response"]
    assert answer["response"] == {
        "behavior": "allow",
        "updatedInput": {"command": "echo approved > made.txt", "description": "run what was asked"},
    }


async def test_denied_command_does_not_run_and_claude_gets_the_reason(repo, fake_log, fleet_factory) -> None:
    fleet = await open_fleet(fleet_factory, repo, claude("d", "run: touch denied.txt"))
    await fleet.spawn_configured()
    await wait_for(lambda: fleet.get("d").pending, what="the approval")
    await fleet.deny("d", reason="not in this repository")
    assert await fleet.wait_settled(30)
    agent = fleet.get("d")
    assert agent.status == "idle"
    assert not (Path(agent.worktree) / "denied.txt").exists()
    answer = messages(fake_log, "control_response")[0]["response"]["response"]
    assert answer["behavior"] == "deny"
    assert answer["message"] == "The engineer denied this call. Their reason: not in this repository"
    assert "Not run. Denied with: The engineer denied this call. Their reason: not in this repository" in log_text(
        fleet, "d"
    )


async def test_approve_all_lets_the_same_command_run_without_asking(repo, fake_log, fleet_factory) -> None:
    fleet = await open_fleet(fleet_factory, repo, claude("a", "run: git status"))
    await fleet.spawn_configured()
    await wait_for(lambda: fleet.get("a").pending, what="the approval")
    await fleet.approve("a", remember=True)
    assert await fleet.wait_settled(30)
    await fleet.redirect("a", "run: git status --short")
    assert await fleet.wait_settled(30)
    agent = fleet.get("a")
    assert agent.status == "idle" and not agent.pending
    assert "command:git status" in agent.remembered
    assert len(messages(fake_log, "control_response")) == 2  # the second was allowed without a question
    assert log_text(fleet, "a").count("Ran it: exit 0.") == 2


async def test_policy_never_answers_at_once(repo, fake_log, fleet_factory) -> None:
    fleet = await open_fleet(fleet_factory, repo, claude("n", "write: free.txt", policy="never"))
    await fleet.spawn_configured()
    assert await fleet.wait_settled(30)
    agent = fleet.get("n")
    assert agent.status == "idle"
    assert (Path(agent.worktree) / "free.txt").read_text() == "written\n"


async def test_redirect_interrupts_the_turn_and_reaches_the_same_process(repo, fake_log, fleet_factory) -> None:
    fleet = await open_fleet(fleet_factory, repo, claude("r", "sleep: 60"))
    await fleet.spawn_configured()
    await wait_for(lambda: "Working on it." in log_text(fleet, "r"), what="the long turn")
    await fleet.redirect("r", "new plan please")
    assert await fleet.wait_settled(30)
    assert fleet.get("r").status == "idle"
    assert "echo: new plan please" in log_text(fleet, "r")
    assert "Finished working." not in log_text(fleet, "r")
    assert len(starts(fake_log)) == 1
    assert [m["request"]["subtype"] for m in messages(fake_log, "control_request")] == ["initialize", "interrupt"]
    users = [m["message"]["content"] for m in messages(fake_log, "user")]
    assert users == ["sleep: 60", "new plan please"]


async def test_redirect_while_waiting_denies_the_question(repo, fake_log, fleet_factory) -> None:
    fleet = await open_fleet(fleet_factory, repo, claude("w", "run: touch never.txt"))
    await fleet.spawn_configured()
    await wait_for(lambda: fleet.get("w").pending, what="the approval")
    await fleet.redirect("w", "forget it")
    assert await fleet.wait_settled(30)
    agent = fleet.get("w")
    assert agent.status == "idle" and not agent.pending
    assert not (Path(agent.worktree) / "never.txt").exists()
    answer = messages(fake_log, "control_response")[0]["response"]["response"]
    assert answer["behavior"] == "deny" and "new instruction" in answer["message"]
    assert "echo: forget it" in log_text(fleet, "w")


async def test_interrupt_then_resume_continues_the_session(repo, fake_log, fleet_factory) -> None:
    fleet = await open_fleet(fleet_factory, repo, claude("i", "sleep: 60"))
    await fleet.spawn_configured()
    await wait_for(lambda: "Working on it." in log_text(fleet, "i"), what="the long turn")
    session = fleet.get("i").runner_state["session_id"]
    await fleet.interrupt("i")
    assert fleet.get("i").status == "interrupted"
    assert procs.find_tagged(fleet._tag("i")) == []
    await fleet.resume("i")
    assert await fleet.wait_settled(30)
    assert fleet.get("i").status == "idle"
    assert starts(fake_log)[1][-1] == f"--resume={session}"
    text = log_text(fleet, "i")
    assert f"(resumed session {session})" in text and f"echo: {CONTINUE}" in text


async def test_restart_resumes_with_the_session_id(repo, fake_log, fleet_factory) -> None:
    cfg = fleet_config(repo, NO_SERVER, [claude("s", "hello")])
    fleet = await fleet_factory(cfg)
    await fleet.spawn_configured()
    assert await fleet.wait_settled(30)
    session = fleet.get("s").runner_state["session_id"]
    await fleet.close()

    again = await fleet_factory(cfg)
    assert again.get("s").runner_state["session_id"] == session
    await again.redirect("s", "after the restart")
    assert await again.wait_settled(30)
    assert again.get("s").status == "idle"
    assert starts(fake_log)[1][-1] == f"--resume={session}"
    assert "echo: after the restart" in log_text(again, "s")


async def test_restart_while_waiting_leaves_the_agent_resumable(repo, fake_log, fleet_factory) -> None:
    cfg = fleet_config(repo, NO_SERVER, [claude("q", "run: touch later.txt")])
    fleet = await fleet_factory(cfg)
    await fleet.spawn_configured()
    await wait_for(lambda: fleet.get("q").pending, what="the approval")
    await fleet.close()

    again = await fleet_factory(cfg)
    agent = again.get("q")
    assert agent.status == "interrupted" and not agent.pending
    await again.resume("q")
    assert await again.wait_settled(30)
    assert agent.status == "idle"
    assert starts(fake_log)[1][-1].startswith("--resume=sess-")


async def test_kill_leaves_no_process(repo, fake_log, fleet_factory) -> None:
    marker = f"{uuid.uuid4().int % 10**6 + 10**6}"
    fleet = await open_fleet(
        fleet_factory, repo, claude("k", f"run: setsid sleep {marker} >/dev/null 2>&1 &", policy="never")
    )
    await fleet.spawn_configured()
    assert await fleet.wait_settled(30)
    await fleet.redirect("k", "sleep: 60")
    await wait_for(lambda: "Working on it." in log_text(fleet, "k"), what="the long turn")

    def ours() -> list[str]:
        out = subprocess.run(["ps", "-ww", "-eo", "pid,stat,args"], capture_output=True, text=True, check=True).stdout
        return [ln for ln in out.splitlines() if (f"sleep {marker}" in ln or str(FAKE) in ln) and " Z" not in ln]

    assert len(ours()) == 2
    await fleet.kill("k")
    assert fleet.get("k").status == "killed"
    assert procs.find_tagged(fleet._tag("k")) == []
    assert ours() == []


async def test_missing_executable_fails_with_what_to_do(repo, tmp_path, fleet_factory, monkeypatch) -> None:
    monkeypatch.setenv("MC_CLAUDE_BIN", str(tmp_path / "no-such-claude"))
    fleet = await open_fleet(fleet_factory, repo, claude("m", "hello", command=""))
    await fleet.spawn_configured()
    agent = fleet.get("m")
    assert agent.status == "failed"
    assert "Claude Code not found" in agent.status_reason and "npm install" in agent.status_reason


async def test_crash_fails_with_its_stderr(repo, fake_log, fleet_factory, tmp_path, monkeypatch) -> None:
    launcher = tmp_path / "claude"
    launcher.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE} "$@"\n')
    launcher.chmod(0o755)
    monkeypatch.setenv("MC_CLAUDE_BIN", str(launcher))
    fleet = await open_fleet(fleet_factory, repo, claude("x", "crash", command=""))
    await fleet.spawn_configured()
    assert await fleet.wait_settled(30)
    agent = fleet.get("x")
    assert agent.status == "failed"
    assert "exited with status 3" in agent.status_reason
    assert "fatal: the fake was told to crash" in agent.status_reason
