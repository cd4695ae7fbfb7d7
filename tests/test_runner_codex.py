"""The codex runner, for real: the Codex CLI's app-server, driven by the Fleet, talking to our scripted
model server on 127.0.0.1. The scripted "model" calls Codex's own exec_command tool; Codex asks for
approval; our approve/deny decides whether the command runs and the file appears."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mc import events as ev
from mc import procs
from mc.agents import codex
from mc.agents.base import BUDGET_STOPPED, NOT_RUN_INTERRUPTED
from mc.config import AgentConfig
from tests.conftest import fleet_config, make_repo

pytestmark = pytest.mark.timeout(120)

BINARY = codex.codex_binary()
if BINARY is None:
    pytest.skip("codex is not installed: run scripts/install-tools.sh", allow_module_level=True)

WRITE = "echo made > made.txt && echo wrote it"
#: The oldest Codex the runner accepts, installed beside the current one by scripts/install-tools.sh.
OLDEST = Path(__file__).resolve().parents[1] / f".cache/npm-codex-{'.'.join(map(str, codex.TESTED_FROM))}"
OLDEST_BIN = OLDEST / "node_modules" / ".bin" / "codex"


@pytest.fixture(params=["current", "oldest"])
def any_codex(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with the tested Codex and with the oldest one the runner accepts."""
    if request.param == "oldest":
        if not OLDEST_BIN.exists():
            pytest.skip(f"{OLDEST_BIN} is not installed: run scripts/install-tools.sh")
        monkeypatch.setenv(codex.BIN_ENV, str(OLDEST_BIN))
        return str(OLDEST_BIN)
    return BINARY or ""


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


async def test_approve_runs_the_command_in_the_worktree(
    repo: Path, scripted: Any, fleet_factory: Any, any_codex: str
) -> None:
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


async def test_deny_keeps_the_file_from_appearing(
    repo: Path, scripted: Any, fleet_factory: Any, any_codex: str
) -> None:
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
    result = next(e for e in events if isinstance(e, ev.ToolResult))
    assert not result.ok and result.output == "The engineer denied this call."


async def test_deny_reason_reaches_the_model(repo: Path, scripted: Any, fleet_factory: Any, any_codex: str) -> None:
    server = scripted(scenario("cxwhy"))
    fleet, events = await _spawn(fleet_factory, repo, server, "cxwhy")
    agent = fleet.get("cxwhy")
    await until(lambda: bool(agent.pending) or agent.status == "failed")
    await fleet.deny("cxwhy", reason="use python instead of a shell redirection")
    await until(lambda: agent.status in ("idle", "failed"))
    assert agent.status == "idle", agent.error
    assert not (Path(agent.worktree) / "made.txt").exists()
    note = f"The engineer denied `{WRITE}`. Their reason: use python instead of a shell redirection"
    assert any(note in text for r in server.requests for text in r.user_texts())
    assert any(e.type == "assistant_message" and "Switching to python as asked." in e.text for e in events)
    result = next(e for e in events if isinstance(e, ev.ToolResult))
    assert result.output == "The engineer denied this call. Their reason: use python instead of a shell redirection"


async def test_interrupt_while_waiting_says_not_run_then_resume_asks_again(
    repo: Path, scripted: Any, fleet_factory: Any, any_codex: str
) -> None:
    call = {"tool": "exec_command", "args": {"cmd": WRITE, "login": False}}
    turns = [
        {"say": "Creating the file.", **call},
        {"when_user_contains": "Continue the task", "say": "Trying again.", **call},
        {"when_tool_output_contains": "wrote it", "say": "The file is there."},
        {"say": "I was not allowed to run it."},
    ]
    server = scripted({"agents": [{"name": "cxint", "turns": turns}]})
    fleet, events = await _spawn(fleet_factory, repo, server, "cxint")
    agent = fleet.get("cxint")
    await until(lambda: bool(agent.pending) or agent.status == "failed")
    first = agent.oldest_pending()
    await fleet.interrupt("cxint")
    assert agent.status == "interrupted"
    results = [e for e in events if isinstance(e, ev.ToolResult) and e.call_id == first.call_id]
    assert [(r.ok, r.output) for r in results] == [(False, NOT_RUN_INTERRUPTED)]
    assert not (Path(agent.worktree) / "made.txt").exists()
    await fleet.resume("cxint")
    await until(lambda: bool(agent.pending) or agent.status in ("idle", "failed"))
    assert agent.status == "waiting", agent.error
    await fleet.approve("cxint")
    await until(lambda: agent.status in ("idle", "failed"))
    assert agent.status == "idle", agent.error
    assert (Path(agent.worktree) / "made.txt").read_text() == "made\n"


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


async def test_interrupt_then_redirect_resumes_the_thread(
    repo: Path, scripted: Any, fleet_factory: Any, any_codex: str
) -> None:
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


#: Drop turn/steer from the schema the real codex writes (argv: the --out folder).
_DROP_STEER = """
import json, sys, pathlib
path = pathlib.Path(sys.argv[1]) / "codex_app_server_protocol.schemas.json"
schema = json.loads(path.read_text())
requests = schema["definitions"]["ClientRequest"]
requests["oneOf"] = [o for o in requests["oneOf"] if o["properties"]["method"].get("enum") != ["turn/steer"]]
path.write_text(json.dumps(schema))
"""


def _older_codex(folder: Path) -> Path:
    """A Codex that says it is 0.100.0 and whose app-server lacks turn/steer: the real one, with that cut."""
    (folder / "drop_steer.py").write_text(_DROP_STEER)
    fake = folder / "older-codex"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --version ]; then echo "codex-cli 0.100.0"; exit 0; fi\n'
        'if [ "$2" = generate-json-schema ]; then\n'
        f'  {BINARY} "$@" && exec {sys.executable} {folder / "drop_steer.py"} "$4"\n'
        "fi\n"
        f'exec {BINARY} "$@"\n'
    )
    fake.chmod(0o755)
    return fake


async def test_a_version_without_what_the_runner_uses_is_refused_naming_it(
    repo: Path, scripted: Any, fleet_factory: Any, monkeypatch: Any
) -> None:
    fake = _older_codex(repo.parent)
    monkeypatch.setenv(codex.BIN_ENV, str(fake))
    server = scripted(scenario("cxold"))
    fleet, _ = await _spawn(fleet_factory, repo, server, "cxold")
    agent = fleet.get("cxold")
    await until(lambda: agent.status == "failed")
    assert agent.error == (
        f"codex: {fake} is Codex 0.100.0, whose app-server lacks turn/steer (redirect): upgrade it to 0.169.0 or later"
    )
    assert server.requests == []
    assert codex.available() == (False, agent.error.removeprefix("codex: "))


def test_available_reports_the_version() -> None:
    ok, text = codex.available()
    assert ok, text
    assert text == f"codex {codex.CODEX_VERSION} at {BINARY}"


def test_the_oldest_accepted_version_offers_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    if not OLDEST_BIN.exists():
        pytest.skip(f"{OLDEST_BIN} is not installed: run scripts/install-tools.sh")
    assert codex.inspect_binary(str(OLDEST_BIN)) == (codex.TESTED_FROM, "")
    monkeypatch.setenv(codex.BIN_ENV, str(OLDEST_BIN))
    assert codex.available() == (True, f"codex 0.169.0 at {OLDEST_BIN}")


def test_install_script_installs_the_oldest_accepted_version() -> None:
    script = (Path(__file__).resolve().parents[1] / "scripts" / "install-tools.sh").read_text()
    assert f"CODEX_MIN_VERSION={'.'.join(map(str, codex.TESTED_FROM))} " in script
    assert f"CODEX_VERSION={codex.CODEX_VERSION} " in script


async def test_unreachable_endpoint_fails_after_the_configured_retries(
    repo: Path, fleet_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as closed:  # bound, never listening: every connection is refused at once
        closed.bind(("127.0.0.1", 0))
        endpoint = SimpleNamespace(base_url=f"http://127.0.0.1:{closed.getsockname()[1]}/v1")
        fleet = await fleet_factory(fleet_config(repo, endpoint, model="cxdown", max_retries=1))
        await fleet.spawn(AgentConfig(name="cxdown", task="Create made.txt", runner="codex"))
        agent = fleet.get("cxdown")
        await until(lambda: agent.status == "failed", timeout=60)
    assert agent.error.startswith(f"codex: the model endpoint {endpoint.base_url} did not answer: ")
    assert agent.error.endswith(
        "; gave up after 1 retry ([model] max_retries): check [model] base_url and that the server runs, then resume"
    )
    retries = [e for e in agent.log.tail(50) if "(retry " in e[1]]
    assert [text.endswith("(retry 1 of 1)") for _, text in retries] == [True]


# -- budgets -----------------------------------------------------------------------------------------
#: The scripted turn that answers a model call made in the same turn after a budget was reached: slow, so that a
#: call Codex began before the interrupt reached it is cut off before it answers.
PAST = 2


def _step(n: str, when: str = "") -> dict[str, Any]:
    turn: dict[str, Any] = {"say": f"Step {n}.", "tool": "exec_command"}
    turn["args"] = {"cmd": f"echo {n} > {n}.txt && echo did {n}", "login": False}
    return {**turn, "when_user_contains": when} if when else turn


def budget_agent(name: str) -> dict[str, Any]:
    """Each turn makes one model call that asks for a command (the default policy makes it wait); a second call
    in the same turn would get the slow turn PAST."""
    past = {"when_tool_output_contains": "did", "say": "Past the budget.", "first_byte_delay": 20.0}
    return {"name": name, "turns": [_step("one"), _step("two", "Continue"), past, _step("three", "Continue")]}


async def first_call_tokens(fleet: Any, name: str) -> int:
    """Spawn `name` without a budget and return what its first model call used (Codex reports it once the
    command that call asked for has run)."""
    await fleet.spawn(AgentConfig(name=name, task="Do the steps", runner="codex", model=name))
    agent = fleet.get(name)
    await until(lambda: bool(agent.pending) or agent.status == "failed", fleet=fleet)
    await fleet.approve(name)
    await until(lambda: agent.usage_reported or agent.status == "failed", fleet=fleet)
    assert agent.usage_reported, agent.error
    return agent.tokens


async def approve_command(fleet: Any, name: str) -> None:
    agent = fleet.get(name)
    await until(
        lambda: any(p.kind == "command" for p in agent.pending.values()) or agent.status == "failed", fleet=fleet
    )
    await fleet.approve(name, next(p.approval_id for p in agent.pending.values() if p.kind == "command"))


async def asked(fleet: Any, name: str, approval_id: str) -> ev.ApprovalRequested:
    agent = fleet.get(name)
    await until(lambda: approval_id in agent.pending or agent.status == "failed", fleet=fleet)
    assert agent.status == "waiting" and list(agent.pending) == [approval_id], (agent.status, agent.error)
    return agent.pending[approval_id]


def answered(server: Any, name: str) -> list[int | None]:
    """The scripted turns that answered the agent's model calls, leaving out calls cut off by an interrupt."""
    return [r.turn for r in server.requests_for(name) if r.turn != PAST]


async def test_a_token_budget_interrupts_the_turn_its_usage_reaches_and_approve_goes_on(
    repo: Path, scripted: Any, fleet_factory: Any
) -> None:
    server = scripted({"agents": [budget_agent("cxprobe"), budget_agent("cxb")]})
    fleet = await fleet_factory(fleet_config(repo, server))
    used = await first_call_tokens(fleet, "cxprobe")  # what one call of this scenario uses
    await fleet.kill("cxprobe")
    budget = used * 3 // 4  # the first call reaches it; once raised, the second one does
    await fleet.spawn(AgentConfig(name="cxb", task="Do the steps", runner="codex", model="cxb", budget_tokens=budget))
    agent = fleet.get("cxb")
    await approve_command(fleet, "cxb")
    question = await asked(fleet, "cxb", "budget-0")
    assert question.kind == "budget" and question.tool == "budget"
    assert f"{agent.tokens} of {budget} tokens" in question.summary and str(2 * budget) in question.summary
    assert answered(server, "cxb") == [0] and agent.tokens >= budget
    assert "Past the budget." not in "\n".join(text for _, text in agent.log.tail(1000))

    await fleet.approve("cxb")  # raised once by the same amount: a new turn goes on from there
    await approve_command(fleet, "cxb")
    question = await asked(fleet, "cxb", "budget-1")
    assert answered(server, "cxb") == [0, 1] and agent.budget_raises == 1
    assert codex.CONTINUE in server.requests_for("cxb")[-1].user_texts()[-1]
    assert (Path(agent.worktree) / "two.txt").exists()
    assert agent.tokens >= 2 * budget and f"of {2 * budget} tokens" in question.summary

    await fleet.deny("cxb")  # the turn ends: no further model call
    assert await fleet.wait_settled(10)
    assert agent.status == "idle" and agent.status_reason == BUDGET_STOPPED
    assert answered(server, "cxb") == [0, 1]


async def test_a_fleet_budget_stops_both_agents_and_one_approval_lets_both_go_on(
    repo: Path, tmp_path: Path, scripted: Any, fleet_factory: Any
) -> None:
    server = scripted({"agents": [budget_agent("cxprobe"), budget_agent("cxa"), budget_agent("cxc")]})
    probe = await fleet_factory(fleet_config(make_repo(tmp_path / "probe"), server))
    used = await first_call_tokens(probe, "cxprobe")
    await probe.close()
    cfg = fleet_config(repo, server)
    cfg.fleet.budget_tokens = used * 19 // 10  # one first call is under it, two reach it
    fleet = await fleet_factory(cfg)
    for name in ("cxa", "cxc"):
        await fleet.spawn(AgentConfig(name=name, task="Do the steps", runner="codex", model=name))
    for name in ("cxa", "cxc"):
        await approve_command(fleet, name)
    for name in ("cxa", "cxc"):  # the second usage stops both: its own turn and the other's
        question = await asked(fleet, name, "fleet-budget-0")
        assert question.tool == "fleet budget" and "by all agents" in question.summary
        assert answered(server, name) == [0]

    await fleet.approve("cxa")  # the fleet's budget goes up once, for both
    assert not fleet.get("cxa").pending and not fleet.get("cxc").pending
    for name in ("cxa", "cxc"):
        await approve_command(fleet, name)
    for name in ("cxa", "cxc"):
        await asked(fleet, name, "fleet-budget-1")
        assert answered(server, name) == [0, 1] and fleet.get(name).fleet_budget_raises == 1
