"""The real `missionctl` window in a real terminal (a pty): SIGHUP (the SSH session dropped) and SIGTERM detach
it cleanly, give the terminal back (alternate screen left, mouse reporting off), and the fleet keeps working in
its server; kill -9 of the window changes nothing in the fleet either."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mc.client import FleetClient, socket_of
from tests.conftest import fleet_servers, make_repo
from tests.test_server import SCENARIO, missionctl, write_config

pytestmark = pytest.mark.timeout(120)

LEAVE_ALT_SCREEN = b"\x1b[?1049l"
MOUSE_OFF = b"\x1b[?1000l"


def start_window(repo: Path) -> tuple[subprocess.Popen[bytes], int]:
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "30"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mc"], cwd=repo, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
    )
    os.close(slave)
    return proc, master


def read_until(master: int, needle: bytes, timeout: float = 30.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{needle!r} never appeared; the window wrote {seen[-500:]!r}")
        ready, _, _ = select.select([master], [], [], min(left, 0.5))
        if ready:
            try:
                seen += os.read(master, 65536)
            except OSError:
                break
    return seen


def drain(master: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the pty closed: the window is gone
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    return out


@pytest.fixture
def fleet_repo(tmp_path: Path, scripted: Any) -> Path:
    server = scripted(SCENARIO)
    repo = make_repo(tmp_path / "repo")
    write_config(repo, server)
    done = missionctl(repo, "spawn", "--name", "sleeper", "--task", "wait", "--model", "sleeper", "--policy", "never")
    assert done.returncode == 0, done.stderr
    return repo


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM])
async def test_a_signal_detaches_the_window_cleanly_and_the_fleet_works_on(fleet_repo: Path, sig: int) -> None:
    [server] = fleet_servers(fleet_repo)
    proc, master = start_window(fleet_repo)
    try:
        read_until(master, b"sleeper")
        os.kill(proc.pid, sig)
        out = drain(master, proc)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert LEAVE_ALT_SCREEN in out and MOUSE_OFF in out, out[-300:]
    assert [p.pid for p in fleet_servers(fleet_repo)] == [server.pid]
    client = FleetClient(socket_of(fleet_repo / ".mc"))
    await client.connect(follow=False)
    try:
        assert client.get("sleeper").status == "running"
    finally:
        await client.close()


async def test_kill_9_of_the_window_changes_nothing_in_the_fleet(fleet_repo: Path) -> None:
    [server] = fleet_servers(fleet_repo)
    for _ in range(3):
        proc, master = start_window(fleet_repo)
        try:
            read_until(master, b"sleeper")
            proc.kill()
            proc.wait(10)
        finally:
            os.close(master)
    assert [p.pid for p in fleet_servers(fleet_repo)] == [server.pid]
    client = FleetClient(socket_of(fleet_repo / ".mc"))
    await client.connect(follow=False)
    try:
        sleeper = client.get("sleeper")
        assert sleeper.status == "running"
        assert not [t for _k, t in sleeper.log.tail(100) if "interrupted" in t]
    finally:
        await client.close()
