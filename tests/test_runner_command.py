"""The command runner through the real Fleet: real worktrees, real shell commands, real process trees."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from mc import procs
from mc.agents.command import program_of, render, split_template
from mc.config import AgentConfig
from tests.conftest import fleet_config, git

PY = sys.executable
NO_SERVER = SimpleNamespace(base_url="http://127.0.0.1:9/v1")  # command agents never call a model


def log_text(fleet: Any, name: str) -> str:
    agent = fleet.get(name)
    return "\n".join(text for _kind, text in agent.log.tail(10_000))


async def wait_for(predicate: Any, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


async def open_fleet(fleet_factory: Any, repo: Path, *agents: AgentConfig) -> Any:
    return await fleet_factory(fleet_config(repo, NO_SERVER, list(agents)))


def test_template_helpers() -> None:
    assert render("aider --message {task} --yes-always", "fix it; rm -rf /") == (
        "aider --message 'fix it; rm -rf /' --yes-always"
    )
    assert render("awk '{print $1}' {task}", "x") == "awk '{print $1}' x"
    assert split_template("pty: aider {task}") == ("aider {task}", True)
    assert split_template("aider {task}") == ("aider {task}", False)
    assert program_of("FOO=1 ./run.sh {task}") == "./run.sh"
    assert program_of("cd sub && make") is None


async def test_command_writes_a_file_and_its_coloured_output_is_logged_clean(repo, tmp_path, fleet_factory) -> None:
    writer = script(
        tmp_path,
        "writer.py",
        """
        import sys
        task = sys.argv[1]
        open("notes.txt", "w").write(task + "\\n")
        print("\\x1b[32mgreen done\\x1b[0m for", task)
        print("\\x1b]0;window title\\x07\\x1b[2Jafter clear")
        """,
    )
    fleet = await open_fleet(
        fleet_factory,
        repo,
        AgentConfig(name="cmd", task="write the notes", runner="command", command=f"{PY} {writer} {{task}}"),
    )
    await fleet.spawn_configured()
    assert await fleet.wait_settled(30)
    agent = fleet.get("cmd")
    assert agent.status == "idle", agent.status_reason
    worktree = Path(agent.worktree)
    assert (worktree / "notes.txt").read_text() == "write the notes\n"
    assert not (repo / "notes.txt").exists()
    diff = await fleet.refresh_diff("cmd")
    assert [f.path for f in diff.files] == ["notes.txt"]
    assert "+write the notes" in diff.text
    text = log_text(fleet, "cmd")
    assert "green done for write the notes" in text
    assert "after clear" in text
    assert "\x1b" not in text and "window title" not in text


async def test_pty_command_output_has_no_carriage_returns(repo, tmp_path, fleet_factory) -> None:
    fleet = await open_fleet(
        fleet_factory,
        repo,
        AgentConfig(name="tty", task="t", runner="command", command="pty: test -t 1 && echo on-a-tty; echo {task}"),
    )
    await fleet.spawn_configured()
    assert await fleet.wait_settled(30)
    agent = fleet.get("tty")
    assert agent.status == "idle", agent.status_reason
    lines = [text for kind, text in agent.log.tail(100) if kind == "text"]
    assert "on-a-tty" in lines and "t" in lines
    assert not any("\r" in line for line in lines)


async def test_failing_command_fails_with_its_message_and_exit_code(repo, fleet_factory) -> None:
    fleet = await open_fleet(
        fleet_factory,
        repo,
        AgentConfig(
            name="bad", task="x", runner="command", command="echo starting; echo 'tests broke: 3 failed' >&2; exit 3"
        ),
    )
    await fleet.spawn_configured()
    assert await fleet.wait_settled(30)
    agent = fleet.get("bad")
    assert agent.status == "failed"
    assert "exited 3" in agent.status_reason
    assert "tests broke: 3 failed" in agent.status_reason


async def test_missing_executable_fails_naming_it(repo, fleet_factory) -> None:
    fleet = await open_fleet(
        fleet_factory,
        repo,
        AgentConfig(name="nope", task="x", runner="command", command="no-such-agent-cli-4711 --message {task}"),
        AgentConfig(name="late", task="x", runner="command", command="true && no-such-agent-cli-4712 {task}"),
    )
    await fleet.spawn_configured()
    assert await fleet.wait_settled(30)
    nope, late = fleet.get("nope"), fleet.get("late")
    assert nope.status == "failed"
    assert nope.status_reason.startswith("command not found: no-such-agent-cli-4711: install it or fix [[agents]]")
    # found only when the shell runs it (exit 127)
    assert late.status == "failed"
    assert "command not found" in late.status_reason and "no-such-agent-cli-4712" in late.status_reason


async def test_redirect_restarts_with_the_new_instruction_appended(repo, tmp_path, fleet_factory) -> None:
    runs = tmp_path / "runs.txt"
    slow = script(
        tmp_path,
        "slow.py",
        f"""
        import sys, time
        task = sys.argv[1]
        with open({str(runs)!r}, "a") as fh:
            fh.write(repr(task) + "\\n")
        print("working on", task.splitlines()[-1], flush=True)
        if "stop now" not in task:
            time.sleep(60)
        """,
    )
    fleet = await open_fleet(
        fleet_factory,
        repo,
        AgentConfig(name="red", task="do the thing", runner="command", command=f"{PY} {slow} {{task}}"),
    )
    await fleet.spawn_configured()
    await wait_for(lambda: "working on do the thing" in log_text(fleet, "red"), what="first run")
    assert fleet.get("red").status == "running"
    await fleet.redirect("red", "stop now")
    assert await fleet.wait_settled(30)
    assert fleet.get("red").status == "idle"
    assert runs.read_text().splitlines() == [repr("do the thing"), repr("do the thing\n\nstop now")]
    assert "working on stop now" in log_text(fleet, "red")
    assert procs.find_tagged(fleet._tag("red")) == []


async def test_redirect_without_task_slot_is_refused(repo, fleet_factory) -> None:
    from mc.fleet import FleetError

    fleet = await open_fleet(fleet_factory, repo, AgentConfig(name="fixed", task="x", runner="command", command="true"))
    await fleet.spawn_configured()
    assert await fleet.wait_settled(30)
    try:
        await fleet.redirect("fixed", "something else")
    except FleetError as exc:
        assert "no {task} in its template" in str(exc)
    else:
        raise AssertionError("redirect of a command without {task} was accepted")


async def test_interrupt_then_resume_runs_again(repo, tmp_path, fleet_factory) -> None:
    runs = tmp_path / "runs.txt"
    fleet = await open_fleet(
        fleet_factory,
        repo,
        AgentConfig(name="ir", task="t", runner="command", command=f"echo run >> {runs}; echo started; sleep 60"),
    )
    await fleet.spawn_configured()
    await wait_for(lambda: "started" in log_text(fleet, "ir"), what="start")
    await fleet.interrupt("ir")
    assert fleet.get("ir").status == "interrupted"
    assert procs.find_tagged(fleet._tag("ir")) == []
    await fleet.resume("ir")
    await wait_for(lambda: runs.read_text().count("run") == 2, what="second run")
    assert fleet.get("ir").status == "running"


async def test_kill_leaves_no_process_of_the_tree(repo, tmp_path, fleet_factory) -> None:
    marker = f"{uuid.uuid4().int % 10**6 + 10**6}"  # a sleep length no other process uses
    spawner = script(
        tmp_path,
        "spawner.sh",
        f"""
        sleep {marker} &
        setsid sleep {marker} &
        sh -c 'sleep {marker} & sleep {marker}' &
        {PY} -c "import subprocess, os; subprocess.Popen(['setsid', 'sleep', '{marker}']); os.execvp('sleep', ['sleep', '{marker}'])" &
        sleep 0.3
        echo ready
        wait
        """,
    )
    fleet = await open_fleet(
        fleet_factory, repo, AgentConfig(name="tree", task="t", runner="command", command=f"sh {spawner}")
    )
    await fleet.spawn_configured()
    await wait_for(lambda: "ready" in log_text(fleet, "tree"), what="the tree to start")

    def sleepers() -> list[str]:
        out = subprocess.run(["ps", "-ww", "-eo", "pid,stat,args"], capture_output=True, text=True, check=True).stdout
        return [line for line in out.splitlines() if f"sleep {marker}" in line and " Z" not in line]

    await wait_for(lambda: len(sleepers()) >= 6, what="six sleepers")
    await fleet.kill("tree")
    assert fleet.get("tree").status == "killed"
    assert procs.find_tagged(fleet._tag("tree")) == []
    assert sleepers() == []


async def test_merge_lands_the_work_of_a_command_agent(repo, fleet_factory) -> None:
    fleet = await open_fleet(
        fleet_factory,
        repo,
        AgentConfig(name="m", task="add a changelog", runner="command", command="printf '%s\\n' {task} > CHANGELOG.md"),
    )
    await fleet.spawn_configured()
    assert await fleet.wait_settled(30)
    assert fleet.get("m").status == "idle"
    result = await fleet.merge("m")
    assert result.ok
    assert fleet.get("m").status == "merged"
    assert git(repo, "show", "main:CHANGELOG.md") == "add a changelog"


async def test_after_a_restart_resume_runs_every_instruction_again(repo, tmp_path, fleet_factory) -> None:
    runs = tmp_path / "runs.txt"
    cfg = fleet_config(
        repo,
        NO_SERVER,
        [AgentConfig(name="rs", task="first", runner="command", command=f"printf '%s|' {{task}} >> {runs}; sleep 60")],
    )
    fleet = await fleet_factory(cfg)
    await fleet.spawn_configured()
    await wait_for(lambda: runs.exists(), what="the first run")
    await fleet.redirect("rs", "second")
    await wait_for(lambda: runs.read_text().count("|") == 2, what="the second run")
    await fleet.close()
    assert procs.find_tagged(fleet._tag("rs")) == []

    again = await fleet_factory(cfg)
    assert again.get("rs").status == "interrupted"
    await again.resume("rs")
    await wait_for(lambda: runs.read_text().count("|") == 3, what="the resumed run")
    assert runs.read_text().split("|")[:3] == ["first", "first\n\nsecond", "first\n\nsecond"]
    assert again.get("rs").status == "running"
