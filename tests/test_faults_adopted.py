"""Fault suite: what the subreaper adopts belongs to the fleet. A command that sheds its tag
(`env -u MC_PROC_TAG`, `env -i`) and leaves the session (`setsid`) still does not outlive its turn, a kill,
a discard or the fleet; an adopted orphan that exits is reaped, never left a zombie."""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

import psutil

from mc import procs
from mc.config import AgentConfig
from tests.conftest import fleet_config


def marked(marker: str) -> list[psutil.Process]:
    """Live processes whose command line carries the marker (zombies excluded)."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and marker in " ".join(p.info["cmdline"] or []):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def adopted_by_us(marker: str) -> list[psutil.Process]:
    """The marked processes whose parent is now this process (the subreaper adopted them)."""
    return adopted_by(marker, os.getpid())


def adopted_by(marker: str, parent: int) -> list[psutil.Process]:
    """The marked processes whose parent is now `parent` (a subreaper that adopted them)."""
    found = []
    for p in marked(marker):
        try:
            if p.ppid() == parent:
                found.append(p)
        except psutil.NoSuchProcess:  # one that just ended (the `true` escapee)
            continue
    return found


def zombie_children() -> list[int]:
    found = []
    for child in psutil.Process().children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                found.append(child.pid)
        except psutil.NoSuchProcess:  # reaped between the listing and the look
            continue
    return found


async def until(predicate: Any, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def escapes(marker: str) -> str:
    # each escapee sleeps for a number of seconds made of the marker, so the test finds exactly its own
    return (
        f"env -u MC_PROC_TAG setsid sleep 4{marker} & env -i /usr/bin/setsid /bin/sleep 5{marker} & "
        f"env -i /usr/bin/setsid sh -c 'sleep 6{marker} & exec sleep 7{marker}' & "
        "env -i /usr/bin/setsid true & sleep 0.3; echo started"
    )


async def test_an_escapee_that_shed_its_tag_ends_with_the_turn(repo, scripted, fleet_factory) -> None:
    marker = str(uuid.uuid4().int)[:8]
    server = scripted(
        {"turns": [{"say": "Starting.", "tool": "shell", "args": {"command": escapes(marker)}}, {"say": "Done."}]}
    )
    cfg = fleet_config(repo, server)
    cfg.tools.sandbox = "none"
    fleet = await fleet_factory(cfg)
    await fleet.spawn(AgentConfig(name="esc", task="start things", policy="never"))
    assert await fleet.wait_settled(30)
    assert fleet.get("esc").status == "idle"
    await until(lambda: not marked(marker), what="the escapees to end with the turn")
    await until(lambda: not zombie_children(), what="the exited escapee to be reaped")


async def test_kill_discard_and_close_end_what_was_adopted(repo, scripted, fleet_factory) -> None:
    marker = str(uuid.uuid4().int)[:8]
    command = f"( {escapes(marker)} ); sleep 300"  # the subshell exits: its escapees are orphans at once
    server = scripted({"turns": [{"say": "Starting.", "tool": "shell", "args": {"command": command}}]})
    cfg = fleet_config(repo, server)
    cfg.tools.sandbox = "none"
    fleet = await fleet_factory(cfg)
    await fleet.spawn(AgentConfig(name="esc", task="start things", policy="never"))
    await until(
        lambda: len(adopted_by_us(marker)) >= 3,
        what="the escapees to be orphaned and adopted",
    )
    assert procs.find_tagged(fleet._tag(fleet.get("esc").id)), "the command itself carries the tag"
    await fleet.kill("esc", discard=True)
    assert marked(marker) == []
    await until(lambda: not zombie_children(), what="every adopted zombie to be reaped")
    assert os.path.isdir(fleet.get("esc").worktree) is False


async def test_closing_the_fleet_ends_adopted_processes_that_left_the_worktree(repo, scripted, fleet_factory) -> None:
    marker = str(uuid.uuid4().int)[:8]
    command = f"cd / && ( {escapes(marker)} ); sleep 300"  # out of the worktree: only the fleet can own them
    server = scripted({"turns": [{"say": "Starting.", "tool": "shell", "args": {"command": command}}]})
    cfg = fleet_config(repo, server)
    cfg.tools.sandbox = "none"
    fleet = await fleet_factory(cfg)
    await fleet.spawn(AgentConfig(name="esc", task="start things", policy="never"))
    await until(
        lambda: len(adopted_by_us(marker)) >= 3,
        what="the escapees to be orphaned and adopted",
    )
    await fleet.close()
    assert marked(marker) == []
    assert zombie_children() == []


async def test_stopping_the_fleet_server_ends_what_it_adopted(repo, scripted) -> None:
    """The real fleet server process (what every window attaches to): escapees that shed their tag, left the
    session and the worktree, and were orphaned, are adopted by the server, and end when it is stopped (SIGTERM,
    as `missionctl stop` and a logout do)."""
    import signal
    import subprocess
    import sys

    from mc.client import ensure_server
    from tests.test_server import server_pids, write_config

    marker = str(uuid.uuid4().int)[:8]
    command = f"cd / && ( {escapes(marker)} ); sleep 300"
    server = scripted(
        {"agents": [{"name": "esc", "turns": [{"say": "Starting.", "tool": "shell", "args": {"command": command}}]}]}
    )
    write_config(repo, server)
    config = repo / "missionctl.toml"
    await ensure_server(repo / ".mc", ["--config", str(config)])
    [pid] = server_pids(repo)
    spawn = [sys.executable, "-m", "mc", "spawn", "--name", "esc", "--task", "start things", "--model", "esc"]
    done = subprocess.run(
        [*spawn, "--policy", "never", "--config", str(config)], cwd=repo, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    try:
        await until(lambda: len(adopted_by(marker, pid)) >= 3, what="the escapees to be adopted by the server")
        os.kill(pid, signal.SIGTERM)
        await until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
        await until(lambda: not marked(marker), what="the adopted escapees to end with the server")
    finally:
        for p in marked(marker):
            p.kill()
