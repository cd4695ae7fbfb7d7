"""A window on a fleet of another machine (`missionctl --remote ssh://host/path`), through a real sshd on
127.0.0.1 with keys made for the test: the far fleet server starts on demand, its socket is forwarded by
OpenSSH to a private folder here (no TCP port opened by the tunnel), keys decide through it, and a tunnel that
drops is made again and the window reconnects."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from mc.remote import RemoteError, parse_remote
from mc.tui.app import MissionControl
from tests.conftest import make_repo
from tests.test_server import SCENARIO, missionctl, server_pids, write_config

pytestmark = pytest.mark.timeout(120)
SSHD = "/usr/sbin/sshd"


def test_an_address_is_read_or_refused_in_one_line() -> None:
    r = parse_remote("ssh://me@devbox:2222/home/me/project/")
    assert (r.user, r.host, r.port, r.path) == ("me", "devbox", 2222, "/home/me/project")
    assert r.url == "ssh://me@devbox:2222/home/me/project"
    assert parse_remote("ssh://devbox/~/project").path == "~/project"
    for bad, said in (
        ("devbox:/home/me", "not an ssh:// address"),
        ("ssh://devbox", "no repository path"),
        ("ssh:///home/me", "no host"),
        ("ssh://devbox:x/home", "the port is not a number"),
    ):
        with pytest.raises(RemoteError, match=said) as info:
            parse_remote(bad)
        assert "\n" not in str(info.value) and "e.g. --remote ssh://" in str(info.value)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def sshd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real sshd on 127.0.0.1 that lets this user in with a key made here; MISSIONCTL_SSH_COMMAND uses it."""
    if not os.access(SSHD, os.X_OK) or not shutil.which("ssh") or os.geteuid() != 0:
        pytest.skip("needs OpenSSH's sshd (scripts/install-tools.sh installs it) and root to run it")
    d = tmp_path / "ssh"
    d.mkdir(mode=0o700)
    for name in ("host", "user"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "user.pub").read_text())
    port = free_port()
    (d / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {d / 'host'}\nPidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPermitRootLogin prohibit-password\nStrictModes no\n"
        "UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nAllowStreamLocalForwarding yes\n"
        "X11Forwarding no\nLogLevel ERROR\n"
        # bash sources ~/.bashrc for a command run by sshd unless it is a nested shell: this machine's rc files
        # (a version manager's init that waits on its lock, say) are not what the test is about
        "SetEnv SHLVL=1\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"sshd did not start: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.05)
    monkeypatch.setenv(
        "MISSIONCTL_SSH_COMMAND",
        f"ssh -i {d / 'user'} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
        "-o LogLevel=ERROR",
    )
    monkeypatch.setenv("MISSIONCTL_REMOTE_COMMAND", f"{sys.executable} -m mc")
    try:
        yield f"root@127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


async def until(pilot: Any, predicate: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


def tcp_listeners(pid: int) -> list[Any]:
    return [c for c in psutil.Process(pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]


async def test_a_window_decides_on_a_fleet_of_another_machine_through_ssh(
    tmp_path: Path, scripted: Any, sshd: str
) -> None:
    from mc.remote import open_remote

    server = scripted(SCENARIO)
    repo = make_repo(tmp_path / "repo")
    write_config(repo, server)
    assert server_pids(repo) == []
    fleet, tunnel = await asyncio.to_thread(open_remote, f"ssh://{sshd}{repo}")
    try:
        assert len(server_pids(repo)) == 1  # the far fleet server, started by the far `missionctl socket`
        assert tunnel.socket.parent.stat().st_mode & 0o777 == 0o700
        assert tcp_listeners(tunnel.proc.pid) == []  # a Unix socket forwarded: no TCP port opened here
        assert fleet.config.source.startswith(f"ssh://{sshd}{repo}")  # the far fleet's own config
        done = missionctl(repo, "spawn", "--name", "writer", "--task", "write notes", "--model", "writer")
        assert done.returncode == 0, done.stderr
        app = MissionControl(fleet)
        async with app.run_test(size=(120, 36)) as pilot:
            await until(pilot, lambda: bool(app.fleet.agents) and app.fleet.list()[0].pending, what="the question")
            assert app.fleet.root.name == "repo"
            app.select(app.fleet.list()[0].id)
            await pilot.press("a")
            await until(pilot, lambda: app.fleet.get("writer").status == "idle", what="the writer to finish")
            # the tunnel drops (as a network would): it is made again, and the window reconnects by itself
            first = tunnel.proc
            os.kill(first.pid, signal.SIGKILL)
            await until(pilot, lambda: tunnel.restarts == 1 and tunnel.proc is not first, what="a new tunnel")
            redirected = missionctl(repo, "redirect", "writer", "and one more line")
            assert redirected.returncode == 0, redirected.stderr
            await until(
                pilot,
                lambda: (
                    app.fleet.connected
                    and app.fleet.get("writer").status in ("running", "waiting", "idle")
                    and len(server.requests_for("writer")) >= 3
                ),
                what="the window to follow the fleet again",
            )
            await pilot.press("q")
        assert len(server_pids(repo)) == 1  # quitting the window leaves the far fleet working
    finally:
        tunnel.close()
    assert not tunnel.folder.exists()
    assert missionctl(repo, "stop").returncode == 0


def test_an_unreachable_or_wrong_remote_says_so_in_one_line(tmp_path: Path, sshd: str) -> None:
    not_repo = tmp_path / "plain"
    not_repo.mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "mc", "--remote", f"ssh://{sshd}{not_repo}"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "is not a git repository" in run.stderr, run.stderr
    host = sshd.rsplit(":", 1)[0]
    closed = free_port()
    run = subprocess.run(
        [sys.executable, "-m", "mc", "--remote", f"ssh://{host}:{closed}{not_repo}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "ssh could not connect" in run.stderr, run.stderr
    run = subprocess.run(
        [sys.executable, "-m", "mc", "--remote", f"ssh://{sshd}{not_repo}", "ls"], capture_output=True, text=True
    )
    assert run.returncode == 2 and "--remote opens the window only" in run.stderr
