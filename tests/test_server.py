"""The fleet server as a real process on its real Unix socket, driven by `missionctl` commands and by
FleetClient: started on demand, two clients deciding, kill -9 of the server mid-turn, stop — with the
processes counted after each step."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
import tomli_w

from mc.client import ClientError, FleetClient, ServerGone, socket_of
from tests.conftest import make_repo

pytestmark = pytest.mark.timeout(120)

SCENARIO = {
    "agents": [
        {
            "name": "writer",
            "turns": [
                {"say": "Writing.", "tool": "write_file", "args": {"path": "notes.txt", "content": "hello\n"}},
                {"say": "Done."},
            ],
        },
        {
            "name": "sleeper",
            "turns": [
                {"say": "Waiting.", "tool": "shell", "args": {"command": "sleep 300"}},
                {"say": "Waiting again.", "tool": "shell", "args": {"command": "sleep 300"}},
                {"say": "Done."},
            ],
        },
    ]
}


def missionctl(repo: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mc", *args], cwd=repo, capture_output=True, text=True, timeout=timeout, check=False
    )


def write_config(repo: Path, server: Any) -> None:
    config = {
        "repo": {"path": ".", "worktree_dir": str(repo.parent / "worktrees")},
        "model": {"base_url": server.base_url, "api_key_env": "", "max_retries": 1, "retry_backoff": 0.05},
        "tools": {"sandbox": "none"},
    }
    (repo / "missionctl.toml").write_text(tomli_w.dumps(config))
    subprocess.run(["git", "-C", str(repo), "add", "missionctl.toml"], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "config"], check=True)


def server_pids(repo: Path) -> list[int]:
    """Live `missionctl serve` processes started for this repository."""
    found = []
    for p in psutil.process_iter(["cmdline", "cwd", "status"]):
        try:
            cmd = p.info["cmdline"] or []
            if p.info["status"] != psutil.STATUS_ZOMBIE and "serve" in cmd and p.info["cwd"] == str(repo):
                found.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def agent_processes(worktrees: Path) -> list[int]:
    """Live processes working in one of the fleet's worktrees (the agents' commands)."""
    found = []
    for p in psutil.process_iter(["cwd", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and str(p.info["cwd"] or "").startswith(str(worktrees)):
                found.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def until(predicate: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
def fleet_repo(tmp_path: Path, scripted: Any) -> Any:
    server = scripted(SCENARIO)
    repo = make_repo(tmp_path / "repo")
    write_config(repo, server)
    yield repo
    for pid in server_pids(repo):  # a failed test must not leave a server behind
        os.kill(pid, signal.SIGKILL)


async def test_two_clients_decide_and_the_fleet_outlives_them(fleet_repo: Path) -> None:
    repo = fleet_repo
    done = missionctl(repo, "spawn", "--name", "writer", "--task", "write notes", "--model", "writer")
    assert done.returncode == 0, done.stderr
    assert "writer: " in done.stdout
    assert len(server_pids(repo)) == 1
    sock = socket_of(repo / ".mc")
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE((repo / ".mc").stat().st_mode) == 0o700

    a, b = FleetClient(sock), FleetClient(sock)
    await a.connect()
    await b.connect()
    try:
        await until(lambda: bool(a.get("writer").pending) and bool(b.get("writer").pending), what="the approval")
        approval = next(iter(a.get("writer").pending))
        await a.approve("writer", approval)
        # the other window sees the answer, and a second answer is refused in one line
        await until(lambda: not b.get("writer").pending, what="the answer to reach the other client")
        with pytest.raises(ClientError) as refused:
            await b.approve("writer", approval)
        assert refused.value.status == 409
        assert "already answered" in str(refused.value)
        await until(lambda: b.get("writer").status == "idle", what="the writer to finish")
        assert (await b.diff("writer")).files[0].path == "notes.txt"
        assert any("notes.txt" in text for _kind, text in await a.full_log("writer"))
    finally:
        await a.close()
        await b.close()
    # no client is attached: the fleet still runs and answers the command line
    listed = missionctl(repo, "events", "--agent", "writer")
    assert listed.returncode == 0, listed.stderr
    assert "approval_resolved" in listed.stdout
    refused_cli = missionctl(repo, "approve", "writer")
    assert refused_cli.returncode == 1
    assert "writer has no pending approval" in refused_cli.stderr
    stopped = missionctl(repo, "stop")
    assert stopped.returncode == 0, stopped.stderr
    await until(lambda: not server_pids(repo), what="the server to end")
    assert not sock.exists()
    again = missionctl(repo, "stop")
    assert again.returncode == 2 and "no fleet server runs" in again.stderr


async def test_kill_9_of_the_server_mid_turn_then_a_new_one_revives_the_fleet(fleet_repo: Path) -> None:
    repo = fleet_repo
    worktrees = repo.parent / "worktrees"
    spawned = missionctl(
        repo, "spawn", "--name", "sleeper", "--task", "wait", "--model", "sleeper", "--policy", "never"
    )
    assert spawned.returncode == 0, spawned.stderr
    sock = socket_of(repo / ".mc")
    client = FleetClient(sock)
    await client.connect()
    gone: list[bool] = []
    client.on_connection(lambda up: gone.append(not up))
    try:
        await until(lambda: bool(agent_processes(worktrees)), what="the agent's command to run")
        [old] = server_pids(repo)
        orphans = agent_processes(worktrees)
        os.kill(old, signal.SIGKILL)
        await until(lambda: any(gone), what="the client to notice the server is gone")
        with pytest.raises(ServerGone):
            await client.interrupt("sleeper")
        # the next command starts a new server, which ends what the old one left and revives the fleet
        listed = missionctl(repo, "events")
        assert listed.returncode == 2  # events never starts a server
        resumed = missionctl(repo, "resume", "sleeper")
        assert resumed.returncode == 0, resumed.stderr
        [new] = server_pids(repo)
        assert new != old
        assert not [pid for pid in orphans if alive(pid)], "the old server's agent processes live on"
        await until(lambda: client.connected, what="the client to reconnect by itself")
        await until(lambda: client.get("sleeper").status == "running", what="the agent to run again")
        await until(lambda: bool(agent_processes(worktrees)), what="the agent's next command to run")
        log = " ".join(text for _kind, text in await client.full_log("sleeper"))
        assert "interrupted" in log
        stopped = missionctl(repo, "stop")
        assert stopped.returncode == 0, stopped.stderr
        assert "sleeper" in stopped.stderr  # it names what it interrupted
        await until(lambda: not server_pids(repo), what="the server to end")
        await until(lambda: not agent_processes(worktrees), what="every agent process to end")
    finally:
        await client.close()
    state = (repo / ".mc" / "state.toml").read_text()
    assert 'status = "interrupted"' in state


async def test_checks_run_and_their_failure_goes_back_to_the_agent_through_the_socket(
    tmp_path: Path, scripted: Any
) -> None:
    server = scripted(SCENARIO)
    repo = make_repo(tmp_path / "repo")
    config = {
        "repo": {"path": ".", "worktree_dir": str(repo.parent / "worktrees")},
        "model": {"base_url": server.base_url, "api_key_env": "", "max_retries": 1, "retry_backoff": 0.05},
        "tools": {"sandbox": "none"},
        "checks": {
            "test": "echo 'FAILED tests/test_x.py::test_y'; echo '1 failed, 3 passed in 0.1s'; exit 1",
            "on": "manual",
        },
    }
    (repo / "missionctl.toml").write_text(tomli_w.dumps(config))
    subprocess.run(["git", "-C", str(repo), "add", "missionctl.toml"], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "config"], check=True)
    done = missionctl(repo, "spawn", "--name", "writer", "--task", "write notes", "--model", "writer")
    assert done.returncode == 0, done.stderr
    client = FleetClient(socket_of(repo / ".mc"))
    await client.connect()
    try:
        await until(lambda: bool(client.get("writer").pending), what="the question")
        await client.approve("writer")
        await until(lambda: client.get("writer").status == "idle", what="the writer to finish")
        await client.run_checks("writer")
        await until(lambda: client.get("writer").check.state == "failed", what="the check to fail")
        assert client.get("writer").check.summary().startswith("✗ 1 of 4 failed")
        text = await client.fix_checks("writer")
        assert "tests/test_x.py::test_y" in text
        await until(
            lambda: any("These tests fail" in t for _k, t in client.get("writer").log.tail(50)), what="redirect"
        )
    finally:
        await client.close()


async def test_two_commands_at_once_start_one_server_and_both_succeed(fleet_repo: Path) -> None:
    repo = fleet_repo
    args = [sys.executable, "-m", "mc"]
    both = [
        subprocess.Popen(
            [*args, "spawn", "--name", n, "--task", "write", "--model", "writer"],
            cwd=repo,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in ("one", "two")
    ]
    results = [p.communicate(timeout=60) for p in both]
    assert [p.returncode for p in both] == [0, 0], results
    assert len(server_pids(repo)) == 1
