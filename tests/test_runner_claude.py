"""The claude runner, for real: the Claude Code CLI (from .cache/npm, scripts/install-tools.sh) driven by the
Fleet, talking to the scripted server's Anthropic Messages endpoint on 127.0.0.1. The scripted "model" calls
Claude Code's own tools (Bash); Claude Code asks through its can_use_tool control requests; our approve and
deny decide whether the command runs. HOME is a scratch folder and Claude Code's updater, telemetry and
other traffic are off, so nothing leaves 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from mc import events as ev
from mc import procs
from mc.agents import claude
from mc.agents.claude import CONTINUE, describe, kind_of, remember_key
from mc.config import AgentConfig
from tests.conftest import claude_bash, fleet_config, make_repo

pytestmark = pytest.mark.timeout(60)

BINARY = claude.claude_binary()


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


async def test_missing_executable_fails_with_what_to_do(repo, tmp_path, fleet_factory, monkeypatch) -> None:
    monkeypatch.setenv(claude.BIN_ENV, str(tmp_path / "no-such-claude"))
    server = SimpleServer()
    fleet = await fleet_factory(fleet_config(repo, server, [AgentConfig(name="m", task="hello", runner="claude")]))
    await fleet.spawn_configured()
    agent = fleet.get("m")
    assert agent.status == "failed"
    assert "Claude Code not found" in agent.status_reason and "install-tools.sh" in agent.status_reason


@pytest.mark.skipif(BINARY is None, reason="claude is not installed: run scripts/install-tools.sh")
def test_available_finds_the_installed_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(claude.BIN_ENV, raising=False)
    found = claude.claude_binary()
    assert found is not None and claude.available() == (True, found)


class SimpleServer:
    base_url = "http://127.0.0.1:9/v1"


# -- the real CLI ------------------------------------------------------------------------------------

needs_cli = pytest.mark.skipif(BINARY is None, reason="claude is not installed: run scripts/install-tools.sh")

RUN = "echo made > made.txt && echo wrote it"


def run_scenario(name: str, command: str = RUN) -> dict[str, Any]:
    return {
        "name": name,
        "turns": [
            {"say": "I will run it.", **claude_bash(command)},
            {"when_tool_output_contains": "wrote it", "say": "Ran it: {output_last_line}."},
            {"say": "Not run: {output_last_line}"},
        ],
    }


def long_turn(name: str, lines: int = 400, rate: float = 40.0) -> dict[str, Any]:
    """An answer that streams for lines * 5 / rate seconds, then a turn that answers a redirect."""
    return {
        "name": name,
        "turns": [
            {"say": "Working on line {n} of the answer.", "repeat": lines, "tokens_per_second": rate},
            {"when_user_contains": "new plan", "say": "Switching to the new plan."},
            {"say": "Picked up where I left off."},
        ],
    }


async def until(check: Callable[[], bool], fleet: Any, timeout: float = 30.0) -> None:
    """Wait until `check()` holds; fail with every agent's state otherwise."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            state = {a.name: (a.status, a.error, a.log.tail(8)) for a in fleet.list()}
            raise AssertionError(f"condition not reached within {timeout:g}s: {state}")
        await asyncio.sleep(0.05)


def agent_config(name: str, task: str, **kw: Any) -> AgentConfig:
    return AgentConfig(name=name, task=task, runner="claude", model=name, **kw)


async def spawn(fleet_factory: Any, repo: Path, server: Any, spec: AgentConfig) -> tuple[Any, list[Any]]:
    fleet = await fleet_factory(fleet_config(repo, server, [spec]))
    events: list[Any] = []
    fleet.add_listener(events.append)
    await fleet.spawn_configured()
    return fleet, events


def log_text(fleet: Any, name: str) -> str:
    return "\n".join(text for _kind, text in fleet.get(name).log.tail(10_000))


def claude_pids(tag: str) -> list[int]:
    """The Claude Code processes among an agent's tagged ones."""
    out = []
    for pid in procs.find_tagged(tag):
        try:
            if Path(psutil.Process(pid).exe()).name.startswith("claude"):
                out.append(pid)
        except psutil.Error:
            pass
    return out


@needs_cli
async def test_approve_runs_the_command_and_the_turn_is_logged(repo, serve_claude, fleet_factory) -> None:
    server = serve_claude(run_scenario("cl-yes"))
    fleet, events = await spawn(fleet_factory, repo, server, agent_config("cl-yes", "Create made.txt"))
    agent = fleet.get("cl-yes")
    await until(lambda: bool(agent.pending) or agent.status == "failed", fleet)
    assert agent.status == "waiting", agent.error
    request = agent.oldest_pending()
    assert (request.tool, request.kind) == ("Bash", "command")
    assert request.detail.startswith(RUN) and request.remember_key == f"command:{RUN}"  # compound: exact
    worktree = Path(agent.worktree)
    assert not (worktree / "made.txt").exists()  # nothing ran before the decision
    await fleet.approve("cl-yes")
    await until(lambda: agent.status in ("idle", "failed"), fleet)
    assert agent.status == "idle", agent.error
    assert (worktree / "made.txt").read_text() == "made\n"
    assert not (repo / "made.txt").exists()
    assert agent.runner_state["session_id"]
    assert agent.input_tokens > 0 and agent.output_tokens > 0
    text = log_text(fleet, "cl-yes")
    assert "I will run it." in text and "Ran it: wrote it." in text
    result = next(e for e in events if isinstance(e, ev.ToolResult))
    assert result.ok and "wrote it" in result.output
    # The model saw the command's real output, and was offered Claude Code's own tools.
    assert server.requests[-1].tool_outputs() == ["wrote it"]
    assert {"Bash", "Write", "Edit", "Read"} <= set(server.requests[0].tools())
    # Claude Code asked nothing else of the endpoint: no side job for another model.
    assert {(r.path, r.agent) for r in server.requests} == {("/v1/messages", "cl-yes")}


@needs_cli
async def test_deny_with_reason_reaches_the_model(repo, serve_claude, fleet_factory) -> None:
    server = serve_claude(run_scenario("cl-no"))
    fleet, _ = await spawn(fleet_factory, repo, server, agent_config("cl-no", "Create made.txt"))
    agent = fleet.get("cl-no")
    await until(lambda: bool(agent.pending) or agent.status == "failed", fleet)
    await fleet.deny("cl-no", reason="not in this repository")
    await until(lambda: agent.status in ("idle", "failed"), fleet)
    assert agent.status == "idle", agent.error
    assert not (Path(agent.worktree) / "made.txt").exists()
    reason = "The engineer denied this call. Their reason: not in this repository"
    assert server.requests[-1].tool_outputs() == [reason]
    assert f"Not run: {reason}" in log_text(fleet, "cl-no")


@needs_cli
async def test_approve_all_lets_the_same_command_run_without_asking(repo, serve_claude, fleet_factory) -> None:
    server = serve_claude(
        {
            "name": "cl-all",
            "turns": [
                {"say": "Touching.", **claude_bash("touch one.txt")},
                {"say": "Touched."},
                {"when_user_contains": "again", "say": "Touching again.", **claude_bash("touch two.txt")},
                {"say": "Touched again."},
            ],
        }
    )
    fleet, events = await spawn(fleet_factory, repo, server, agent_config("cl-all", "Touch the files"))
    agent = fleet.get("cl-all")
    await until(lambda: bool(agent.pending) or agent.status == "failed", fleet)
    assert agent.oldest_pending().remember_key == "command:touch"
    await fleet.approve("cl-all", remember=True)
    await until(lambda: agent.status in ("idle", "failed"), fleet)
    assert agent.status == "idle", agent.error
    await fleet.redirect("cl-all", "touch again")
    await until(lambda: "Touched again." in log_text(fleet, "cl-all") or agent.status == "failed", fleet)
    await until(lambda: agent.status in ("idle", "failed"), fleet)
    assert agent.status == "idle", agent.error
    assert "command:touch" in agent.remembered
    assert sum(isinstance(e, ev.ApprovalRequested) for e in events) == 1  # the second ran without a question
    assert sorted(p.name for p in Path(agent.worktree).glob("*.txt")) == ["one.txt", "two.txt"]


@needs_cli
async def test_text_streams_live_while_the_turn_runs(repo, serve_claude, fleet_factory) -> None:
    lines = 60
    server = serve_claude(long_turn("cl-live", lines=lines, rate=150.0))  # 300 words in about 2 s
    fleet, events = await spawn(fleet_factory, repo, server, agent_config("cl-live", "Write a long answer"))
    agent = fleet.get("cl-live")
    await until(lambda: agent.status in ("idle", "failed"), fleet)
    assert agent.status == "idle", agent.error
    done = next(i for i, e in enumerate(events) if isinstance(e, ev.StatusChanged) and e.status == "idle")
    deltas = [e.text for e in events[:done] if isinstance(e, ev.TextDelta)]
    expected = "\n".join(f"Working on line {n} of the answer." for n in range(1, lines + 1))
    assert "".join(deltas) == expected  # every character, once
    assert len(deltas) >= 5, f"the answer came in {len(deltas)} pieces: not live"
    assert len(deltas) < lines * 5  # coalesced, not one event per word
    messages = [e.text for e in events if isinstance(e, ev.AssistantMessage)]
    assert messages == [expected]
    assert log_text(fleet, "cl-live").count("Working on line 60 of the answer.") == 1


@needs_cli
async def test_redirect_interrupts_the_turn_and_reaches_the_same_process(repo, serve_claude, fleet_factory) -> None:
    server = serve_claude(long_turn("cl-redir"))
    fleet, _ = await spawn(fleet_factory, repo, server, agent_config("cl-redir", "Write a long answer"))
    agent = fleet.get("cl-redir")
    tag = fleet._tag(agent.id)
    await until(lambda: "Working on line 2 " in log_text(fleet, "cl-redir") or agent.status == "failed", fleet)
    before = claude_pids(tag)
    assert len(before) == 1
    await fleet.redirect("cl-redir", "new plan please")
    await until(lambda: "Switching to the new plan." in log_text(fleet, "cl-redir") or agent.status == "failed", fleet)
    await until(lambda: agent.status in ("idle", "failed"), fleet)
    assert agent.status == "idle", agent.error
    assert claude_pids(tag) == before
    assert "Working on line 400 " not in log_text(fleet, "cl-redir")
    last = server.requests[-1]
    assert last.turn == 1 and any("new plan please" in text for text in last.user_texts())
    assert any("Write a long answer" in text for text in last.user_texts())


@needs_cli
async def test_interrupt_stops_the_process_and_resume_continues_the_session(repo, serve_claude, fleet_factory) -> None:
    server = serve_claude(long_turn("cl-int"))
    fleet, _ = await spawn(fleet_factory, repo, server, agent_config("cl-int", "Write a long answer"))
    agent = fleet.get("cl-int")
    tag = fleet._tag(agent.id)
    await until(lambda: "Working on line 2 " in log_text(fleet, "cl-int") or agent.status == "failed", fleet)
    session = agent.runner_state["session_id"]
    await fleet.interrupt("cl-int")
    assert agent.status == "interrupted"
    assert procs.find_tagged(tag) == []
    await fleet.resume("cl-int")
    await until(lambda: "Picked up where I left off." in log_text(fleet, "cl-int") or agent.status == "failed", fleet)
    await until(lambda: agent.status in ("idle", "failed"), fleet)
    assert agent.status == "idle", agent.error
    assert agent.runner_state["session_id"] == session
    last = server.requests[-1]
    assert any(CONTINUE in text for text in last.user_texts())
    assert any("Write a long answer" in text for text in last.user_texts())  # the session's history came back


@needs_cli
async def test_restart_resumes_the_session(repo, serve_claude, fleet_factory) -> None:
    server = serve_claude(
        {
            "name": "cl-again",
            "turns": [{"say": "Hello."}, {"when_user_contains": "after the restart", "say": "Still here."}],
        }
    )
    cfg = fleet_config(repo, server, [agent_config("cl-again", "Say hello")])
    fleet = await fleet_factory(cfg)
    await fleet.spawn_configured()
    agent = fleet.get("cl-again")
    await until(lambda: agent.status in ("idle", "failed"), fleet)
    assert agent.status == "idle", agent.error
    session = agent.runner_state["session_id"]
    await fleet.close()

    again = await fleet_factory(cfg)
    agent = again.get("cl-again")
    assert agent.runner_state["session_id"] == session
    await again.redirect("cl-again", "after the restart")
    await until(lambda: agent.status in ("idle", "failed") and "Still here." in log_text(again, "cl-again"), again)
    assert agent.status == "idle", agent.error
    assert agent.runner_state["session_id"] == session
    texts = server.requests[-1].user_texts()
    assert any("Say hello" in t for t in texts) and any("after the restart" in t for t in texts)


@needs_cli
async def test_restart_while_waiting_leaves_the_agent_resumable(repo, serve_claude, fleet_factory) -> None:
    server = serve_claude(
        {
            "name": "cl-wait",
            "turns": [
                {"say": "I will run it.", **claude_bash(RUN)},
                {"when_user_contains": CONTINUE, "say": "Trying again.", **claude_bash(RUN)},
                {"when_tool_output_contains": "wrote it", "say": "Ran it: {output_last_line}."},
            ],
        }
    )
    cfg = fleet_config(repo, server, [agent_config("cl-wait", "Create made.txt")])
    fleet = await fleet_factory(cfg)
    await fleet.spawn_configured()
    await until(lambda: bool(fleet.get("cl-wait").pending) or fleet.get("cl-wait").status == "failed", fleet)
    await fleet.close()

    again = await fleet_factory(cfg)
    agent = again.get("cl-wait")
    assert agent.status == "interrupted" and not agent.pending
    await again.resume("cl-wait")
    await until(lambda: bool(agent.pending) or agent.status in ("idle", "failed"), again)
    assert agent.status == "waiting", agent.error  # the resumed session asks again, through the new process
    assert server.requests[-1].tool_outputs()  # Claude Code told the model the first call never ran
    await again.approve("cl-wait")
    await until(lambda: agent.status in ("idle", "failed"), again)
    assert agent.status == "idle", agent.error
    assert (Path(agent.worktree) / "made.txt").read_text() == "made\n"


@needs_cli
async def test_kill_leaves_no_process(repo, serve_claude, fleet_factory) -> None:
    marker = uuid.uuid4().int % 10**6 + 10**6
    command = f"(setsid sleep {marker} >/dev/null 2>&1 &); sleep {marker + 1}; echo wrote it"
    server = serve_claude(run_scenario("cl-kill", command=command))
    fleet, _ = await spawn(fleet_factory, repo, server, agent_config("cl-kill", "Sleep", policy="never"))
    agent = fleet.get("cl-kill")
    tag = fleet._tag(agent.id)

    def sleepers() -> list[psutil.Process]:
        """The two sleeps the command started (one escaped with setsid), zombies left out."""
        wanted = (["sleep", str(marker)], ["sleep", str(marker + 1)])
        return [
            proc
            for proc in psutil.process_iter(["cmdline", "status"])
            if (proc.info["cmdline"] or [])[-2:] in wanted and proc.info["status"] != psutil.STATUS_ZOMBIE
        ]

    await until(lambda: len(sleepers()) == 2 or agent.status == "failed", fleet)
    assert agent.status == "running", agent.error
    cli = claude_pids(tag)
    assert len(cli) == 1
    await fleet.kill("cl-kill")
    assert agent.status == "killed"
    assert procs.find_tagged(tag) == []
    assert sleepers() == []
    assert not psutil.pid_exists(cli[0]) or psutil.Process(cli[0]).status() == psutil.STATUS_ZOMBIE


@needs_cli
async def test_lost_session_fails_once_and_resume_starts_a_new_one(repo, serve_claude, fleet_factory, tmp_path) -> None:
    server = serve_claude({"name": "cl-lost", "turns": [{"say": "Hello."}]})
    cfg = fleet_config(repo, server, [agent_config("cl-lost", "Say hello")])
    fleet = await fleet_factory(cfg)
    await fleet.spawn_configured()
    await until(lambda: fleet.get("cl-lost").status in ("idle", "failed"), fleet)
    assert fleet.get("cl-lost").status == "idle", fleet.get("cl-lost").error
    await fleet.close()
    transcripts = list((tmp_path / "home" / ".claude" / "projects").rglob("*.jsonl"))
    assert transcripts
    for transcript in transcripts:
        transcript.unlink()  # Claude Code's record of the session is gone

    again = await fleet_factory(cfg)
    agent = again.get("cl-lost")
    events: list[Any] = []
    again.add_listener(events.append)
    session = agent.runner_state["session_id"]
    await again.redirect("cl-lost", "are you there?")
    await until(lambda: agent.status == "failed", again)
    assert agent.error == (
        f"Claude Code no longer has session {session} (its transcript is gone): "
        "resume or redirect to start a new session"
    )
    await again.resume("cl-lost")  # at once: the process that failed may still be on its way out
    await until(lambda: agent.status in ("idle", "failed"), again)
    assert agent.status == "idle", agent.error
    assert sum(isinstance(e, ev.StatusChanged) and e.status == "failed" for e in events) == 1
    assert agent.runner_state["session_id"] not in ("", session)
    assert server.requests[-1].user_texts()[-1].endswith("are you there?")


@needs_cli
async def test_rate_limit_is_retried_and_shown(repo, serve_claude, fleet_factory) -> None:
    server = serve_claude(
        {
            "name": "cl-429",
            "faults": [{"kind": "429", "times": 1, "retry_after": 0.2}],
            "turns": [{"say": "Answered after the retry."}],
        }
    )
    fleet, events = await spawn(fleet_factory, repo, server, agent_config("cl-429", "Say something"))
    agent = fleet.get("cl-429")
    await until(lambda: agent.status in ("idle", "failed"), fleet)
    assert agent.status == "idle", agent.error
    assert [r.fault for r in server.requests] == ["429", ""]
    retry = next(e for e in events if isinstance(e, ev.ErrorEvent))
    assert not retry.fatal and retry.retry_in and "429" in retry.message
    assert "Answered after the retry." in log_text(fleet, "cl-429")


@needs_cli
async def test_endpoint_failure_fails_the_agent_with_the_error(repo, serve_claude, fleet_factory, monkeypatch) -> None:
    monkeypatch.setenv("CLAUDE_CODE_MAX_RETRIES", "0")
    server = serve_claude(
        {"name": "cl-500", "faults": [{"kind": "500", "message": "backend on fire"}], "turns": [{"say": "x"}]}
    )
    fleet, _ = await spawn(fleet_factory, repo, server, agent_config("cl-500", "Say something"))
    agent = fleet.get("cl-500")
    await until(lambda: agent.status in ("idle", "failed"), fleet)
    assert agent.status == "failed"
    assert agent.error.startswith("Claude Code ended the turn with an error: API Error: 500 backend on fire")
    assert [r.fault for r in server.requests] == ["500"]


# -- budgets -------------------------------------------------------------------------------------------
def steps_scenario(name: str) -> dict[str, Any]:
    """Three model calls: two that each run a command, one that ends the turn."""
    return {
        "name": name,
        "turns": [
            {"say": "Step one.", **claude_bash("echo one > one.txt && echo did one")},
            {
                "when_tool_output_contains": "did one",
                "say": "Step two.",
                **claude_bash("echo two > two.txt && echo did two"),
            },
            {"when_tool_output_contains": "did two", "say": "Done."},
        ],
    }


def usage_events(fleet: Any, name: str) -> list[ev.Usage]:
    return [e for e in fleet.store.iter_events(fleet.get(name).id) if isinstance(e, ev.Usage)]


async def one_call(fleet_factory: Any, repo: Path, server: Any) -> int:
    """What the first model call of the steps scenario uses (an agent without a budget runs it to the end)."""
    fleet, _ = await spawn(fleet_factory, repo, server, agent_config("clprobe", "Do the steps", policy="never"))
    await until(lambda: fleet.get("clprobe").status in ("idle", "failed"), fleet)
    assert fleet.get("clprobe").status == "idle", fleet.get("clprobe").error
    calls = usage_events(fleet, "clprobe")
    assert len(calls) == len(server.requests_for("clprobe")) == 3  # one Usage per model call
    await fleet.close()
    return calls[0].input_tokens + calls[0].output_tokens


async def asked(fleet: Any, name: str, approval_id: str) -> ev.ApprovalRequested:
    agent = fleet.get(name)
    await until(lambda: approval_id in agent.pending or agent.status == "failed", fleet)
    assert agent.status == "waiting" and list(agent.pending) == [approval_id], (agent.status, agent.error)
    return agent.pending[approval_id]


@needs_cli
async def test_a_token_budget_holds_the_next_model_call_and_approve_lets_it_go(
    repo, tmp_path, serve_claude, fleet_factory
) -> None:
    server = serve_claude(steps_scenario("clprobe"), steps_scenario("clb"))
    used = await one_call(fleet_factory, make_repo(tmp_path / "probe"), server)
    budget = used * 3 // 4  # the first call reaches it; once raised, the second one does
    spec = agent_config("clb", "Do the steps", policy="never", budget_tokens=budget)
    fleet, _ = await spawn(fleet_factory, repo, server, spec)
    agent = fleet.get("clb")
    question = await asked(fleet, "clb", "budget-0")
    assert question.kind == "budget" and f"{agent.tokens} of {budget} tokens" in question.summary
    # the command of the call that reached the budget ran; the model call that would read it waits
    assert len(server.requests_for("clb")) == 1 and (Path(agent.worktree) / "one.txt").exists()

    await fleet.approve("clb")
    question = await asked(fleet, "clb", "budget-1")
    assert len(server.requests_for("clb")) == 2 and (Path(agent.worktree) / "two.txt").exists()
    assert agent.budget_raises == 1 and f"of {2 * budget} tokens" in question.summary

    await fleet.deny("clb")  # the turn ends at the held call
    await until(lambda: agent.status in ("idle", "failed"), fleet)
    assert agent.status == "idle" and agent.status_reason == claude.BUDGET_STOPPED
    assert len(server.requests_for("clb")) == 2
    calls = usage_events(fleet, "clb")  # one per model call: the same tokens as the turn's result
    assert len(calls) == 2 and agent.tokens == sum(u.input_tokens + u.output_tokens for u in calls)

    await fleet.redirect("clb", "Go on.")  # a new turn is within the budget no more: it asks first
    await asked(fleet, "clb", "budget-1")
    assert len(server.requests_for("clb")) == 2
    await fleet.kill("clb")


@needs_cli
async def test_a_fleet_budget_holds_one_agent_stops_the_next_before_its_first_call_and_one_approval_frees_both(
    repo, tmp_path, serve_claude, fleet_factory
) -> None:
    server = serve_claude(steps_scenario("clprobe"), steps_scenario("cla"), steps_scenario("clc"))
    used = await one_call(fleet_factory, make_repo(tmp_path / "probe"), server)
    cfg = fleet_config(repo, server)
    cfg.fleet.budget_tokens = used * 19 // 10  # one call is under it, two reach it
    fleet = await fleet_factory(cfg)
    await fleet.spawn(agent_config("cla", "Do the steps", policy="never"))
    await asked(fleet, "cla", "fleet-budget-0")
    assert len(server.requests_for("cla")) == 2
    await fleet.spawn(agent_config("clc", "Do the steps", policy="never"))
    question = await asked(fleet, "clc", "fleet-budget-0")
    assert server.requests_for("clc") == [] and "by all agents" in question.summary

    await fleet.approve("clc")  # the fleet's budget goes up once, for both
    await until(lambda: len(server.requests_for("cla")) >= 3 and len(server.requests_for("clc")) >= 1, fleet)
    assert fleet.get("cla").fleet_budget_raises == fleet.get("clc").fleet_budget_raises == 1
    for name in ("cla", "clc"):
        await fleet.kill(name)
