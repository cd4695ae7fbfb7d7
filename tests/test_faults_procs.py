"""Fault suite, processes: spawn/kill cycles of process trees that try to escape (a plain child, a grandchild,
one that calls setsid, one that double-forks) leave no process behind, and discarded agents leave no worktree
and no branch.

The design under test (mc/procs.py): every process mission control starts runs in its own session and
carries MC_PROC_TAG=<tag> in its environment; the Fleet makes its process a child subreaper
(PR_SET_CHILD_SUBREAPER), so orphans of a tree are re-parented to it instead of init; a kill signals the
group, then scans /proc/*/environ for the tag (setsid and double forks keep their environment) plus every
descendant and group/session member, repeats with SIGKILL until nothing is left, and reaps adopted orphans
by their own pid.

Counts: MC_FAULTS_FULL=1 runs the issue's 200 cycles for both parts; the default runs 40 process cycles
and 10 Fleet cycles (half built-in agents with a shell call, half command agents).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest

from mc import procs
from mc.config import AgentConfig
from tests.conftest import fleet_config, git
from tests.test_fleet import shell_turn

FULL = os.environ.get("MC_FAULTS_FULL") == "1"
PROC_CYCLES = 200 if FULL else 40
FLEET_CYCLES = 200 if FULL else 10
PARALLEL = 4

#: Four escapees, each named "<marker>-<how>" in its argv: a child, a grandchild, a setsid, a double fork.
ESCAPER = """\
M="$1"
(exec -a "$M-child" sleep 600) &
bash -c '(exec -a "$0-grandchild" sleep 600) & wait' "$M" &
setsid bash -c 'exec -a "$0-setsid" sleep 600' "$M" &
bash -c '(trap "" TERM; exec -a "$0-daemon" sleep 600) &' "$M" &
echo spawned
wait
"""
ESCAPEES = 4


@pytest.fixture
def subreaper() -> Any:
    was_on = procs.subreaper_enabled()
    assert procs.enable_subreaper()
    yield
    if not was_on:
        procs.disable_subreaper()


@pytest.fixture
def escaper(tmp_path: Path) -> Path:
    path = tmp_path / "escaper.sh"
    path.write_text(ESCAPER)
    return path


def with_marker(marker: str, escapees: bool = False) -> list[int]:
    """Live (non-zombie) processes whose command line contains the marker (with escapees: whose argv[0] is
    one of the named escapees), from a /proc listing."""
    needle = marker.encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                cmdline = fh.read()
            if needle not in cmdline or (escapees and not cmdline.startswith(needle + b"-")):
                continue
            with open(f"/proc/{name}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in (b"Z", b"X"):
            found.append(int(name))
    return found


def tagged(tag: str) -> list[int]:
    """Live processes carrying the tag (or a sub-tag), listed with psutil (independent of mc.procs)."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            value = p.environ().get(procs.TAG_VAR, "")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if value == tag or value.startswith(tag + "/"):
            found.append(p.pid)
    return found


def my_zombies() -> set[int]:
    return {p.pid for p in psutil.Process().children() if p.status() == psutil.STATUS_ZOMBIE}


async def until(predicate: Any, what: str, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_process_trees_leave_nothing_after_kill(subreaper: None, escaper: Path, tmp_path: Path) -> None:
    zombies_before = my_zombies()
    run = uuid.uuid4().hex[:8]
    env = {"PATH": os.environ["PATH"]}

    async def cycle(i: int) -> None:
        marker, tag = f"mcfault-{run}-{i}x", f"fault-{run}-{i}"
        proc = await procs.start(["bash", str(escaper), marker], cwd=tmp_path, env=env, tag=tag)
        await until(lambda: len(with_marker(marker, escapees=True)) == ESCAPEES, f"the escapees of cycle {i}")
        assert len(tagged(tag)) >= ESCAPEES + 1  # the leader too
        await proc.kill(grace=0.3)
        assert with_marker(marker) == [], f"cycle {i}: a process with the marker survived"
        assert tagged(tag) == [], f"cycle {i}: a tagged process survived"
        assert proc.returncode is not None

    for start in range(0, PROC_CYCLES, PARALLEL):
        await asyncio.gather(*(cycle(i) for i in range(start, min(start + PARALLEL, PROC_CYCLES))))
    assert with_marker(f"mcfault-{run}") == []
    assert my_zombies() <= zombies_before  # every adopted orphan was reaped


async def test_fleet_spawn_kill_discard_cycles_leak_nothing(
    repo: Path, scripted: Any, fleet_factory: Any, escaper: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    server = scripted(
        {"agents": [{"name": "spawner", "turns": [shell_turn(f"bash {escaper} $MARKER"), {"say": "Done."}]}]}
    )
    cfg = fleet_config(repo, server)
    cfg.tools.sandbox = "none"  # the escaper is outside the worktree; in the sandbox its tree ends with the sandbox
    fleet = await fleet_factory(cfg)
    zombies_before = my_zombies()
    for i in range(FLEET_CYCLES):
        marker = f"mcfleet-{run}-{i}x"
        name = f"c{i}"
        if i % 2:  # a command agent: its own command starts the tree
            spec = AgentConfig(name=name, task="spawn", runner="command", command=f"bash {escaper} {marker}")
        else:  # a built-in agent: a shell tool call starts it
            spec = AgentConfig(name=name, task="spawn", model="spawner", policy="never")
            os.environ["MARKER"] = marker  # reaches the tool's shell only through pass_env
            fleet.config.tools.pass_env = ["MARKER"]
        await fleet.spawn(spec)
        await until(lambda m=marker: len(with_marker(m, escapees=True)) == ESCAPEES, f"the escapees of {name}")
        tag = fleet._tag(name)
        assert tagged(tag)
        await fleet.kill(name, discard=True)
        assert fleet.get(name).status == "discarded"
        assert with_marker(marker) == [], f"{name}: a process with the marker survived"
        assert tagged(tag) == [], f"{name}: a tagged process survived"
    os.environ.pop("MARKER", None)
    assert with_marker(f"mcfleet-{run}") == []
    assert my_zombies() <= zombies_before
    # no worktree and no branch is left behind; the snapshots keep the work
    worktrees = [
        line for line in git(repo, "worktree", "list", "--porcelain").splitlines() if line.startswith("worktree ")
    ]
    assert worktrees == [f"worktree {repo}"]
    assert git(repo, "branch", "--format=%(refname:short)").split() == ["main"]
    assert list((repo.parent / "worktrees").iterdir()) == []
    snapshots = git(repo, "for-each-ref", "--format=%(refname)", "refs/mc/snapshots").split()
    assert len(snapshots) == FLEET_CYCLES
