"""A fleet on another machine: `missionctl --remote ssh://[user@]host[:port]/path/to/repo`.

OpenSSH does the work, as for `git` over ssh: one `ssh host 'cd PATH && missionctl socket'` starts the far
fleet server when none runs there and prints its socket; then `ssh -N -L LOCAL:REMOTE host` forwards that
Unix socket to one in a private folder here (0700). No TCP port is opened on either side, the peer-uid check
happens on the far side (sshd connects as the logged-in user), and the window speaks the same protocol as to a
local fleet. A tunnel that drops (the network, a laptop's sleep) is made again in the background, and the
window reconnects by itself as it does to a local server that comes back.

`MISSIONCTL_SSH_COMMAND` is the ssh command line (default `ssh`; like GIT_SSH_COMMAND: add `-i KEY`, `-F
CONFIG` …), and `MISSIONCTL_REMOTE_COMMAND` how the far side runs missionctl (default `missionctl`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

#: Seconds the first connection (the far server's start included) may take.
CONNECT_TIMEOUT = 60.0
#: Seconds between two tries to make a dropped tunnel again.
RETUNNEL_DELAY = 2.0


class RemoteError(Exception):
    """A remote fleet that cannot be reached, as one line naming the problem and the fix."""


@dataclass(frozen=True)
class Remote:
    """Where a remote fleet lives: `ssh://[user@]host[:port]/path`."""

    host: str
    path: str
    user: str = ""
    port: int | None = None

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    @property
    def url(self) -> str:
        port = f":{self.port}" if self.port else ""
        return f"ssh://{self.destination}{port}{self.path}"


def parse_remote(text: str) -> Remote:
    """`ssh://[user@]host[:port]/absolute/path` → Remote, or RemoteError saying what to write."""
    example = "e.g. --remote ssh://devbox/home/me/project"
    parts = urlsplit(text)
    if parts.scheme != "ssh":
        raise RemoteError(f"--remote {text}: not an ssh:// address: {example}")
    try:
        port = parts.port
    except ValueError:
        raise RemoteError(f"--remote {text}: the port is not a number: {example}") from None
    if not parts.hostname:
        raise RemoteError(f"--remote {text}: no host: {example}")
    if not parts.path or parts.path == "/":
        raise RemoteError(f"--remote {text}: no repository path after the host: {example}")
    if parts.query or parts.fragment or parts.password:
        raise RemoteError(f"--remote {text}: only ssh://[user@]host[:port]/path is understood: {example}")
    path = str(PurePosixPath(parts.path))
    if path.startswith("/~"):  # ssh://host/~/project: relative to the far home, as scp says it
        path = path[1:]
    return Remote(host=parts.hostname, path=path, user=parts.username or "", port=port)


def ssh_command(remote: Remote) -> list[str]:
    """The ssh command line to `remote` (MISSIONCTL_SSH_COMMAND, else ssh), with its port."""
    base = shlex.split(os.environ.get("MISSIONCTL_SSH_COMMAND", "") or "ssh")
    if not shutil.which(base[0]):
        raise RemoteError(f"{base[0]} not found: install OpenSSH's client (apt-get install openssh-client)")
    port = ["-p", str(remote.port)] if remote.port else []
    return [*base, *port, "-o", "BatchMode=yes"]


def remote_socket(remote: Remote, timeout: float = CONNECT_TIMEOUT) -> str:
    """Start the far fleet server (when none runs) and return its socket's path there."""
    far = os.environ.get("MISSIONCTL_REMOTE_COMMAND", "") or "missionctl"
    path = remote.path
    cd = f"cd ~/{shlex.quote(path[2:])}" if path.startswith("~/") else f"cd {shlex.quote(path)}"
    command = f"{cd} && {far} socket"
    try:
        run = subprocess.run(
            [*ssh_command(remote), remote.destination, command],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise RemoteError(f"{remote.url}: no answer in {timeout:.0f} s: check `ssh {remote.destination}`") from None
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    if run.returncode != 0 or not lines or not lines[-1].startswith("/"):
        said = (run.stderr.strip().splitlines() or ["(nothing on stderr)"])[-1]
        if run.returncode == 255:
            raise RemoteError(f"{remote.url}: ssh could not connect: {said}")
        if run.returncode == 127 or "not found" in said:
            raise RemoteError(
                f"{remote.url}: {said}: install missionctl there, or set MISSIONCTL_REMOTE_COMMAND to how it runs"
            )
        raise RemoteError(f"{remote.url}: {said.removeprefix('missionctl: ')}")
    return lines[-1].strip()


class Tunnel:
    """`ssh -N -L LOCAL:REMOTE` from a private folder here to the far fleet's socket, made again when it drops.

    `socket` is the local end; `close()` ends the tunnel and removes the folder."""

    def __init__(self, remote: Remote, far_socket: str) -> None:
        self.remote = remote
        self.far_socket = far_socket
        self.folder = Path(tempfile.mkdtemp(prefix="missionctl-remote-"))  # 0700, as mkdtemp makes it
        self.socket = self.folder / "fleet.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._closed = threading.Event()
        self._watch: threading.Thread | None = None
        self._stderr = self.folder / "ssh.log"

    def _start(self) -> subprocess.Popen[bytes]:
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        args = [
            *ssh_command(self.remote),
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "StreamLocalBindMask=0177",
            "-o",
            "ServerAliveInterval=15",
            "-L",
            f"{self.socket}:{self.far_socket}",
            self.remote.destination,
        ]
        with open(self._stderr, "ab") as err:
            return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)

    def open(self, timeout: float = CONNECT_TIMEOUT) -> Path:
        """Start the tunnel and wait until its local end answers; then keep it up in the background."""
        from mc.client import answers

        self.proc = self._start()
        deadline = time.monotonic() + timeout
        while not (self.socket.exists() and asyncio.run(answers(self.socket))):
            if self.proc.poll() is not None:
                said = self._last_error()
                self.close()
                raise RemoteError(f"{self.remote.url}: the ssh tunnel ended: {said}")
            if time.monotonic() > deadline:
                self.close()
                raise RemoteError(
                    f"{self.remote.url}: the ssh tunnel did not come up in {timeout:.0f} s: the far sshd must allow "
                    "forwarding (AllowStreamLocalForwarding and AllowTcpForwarding not 'no')"
                )
            time.sleep(0.05)
        self._watch = threading.Thread(target=self._keep_up, name="ssh tunnel", daemon=True)
        self._watch.start()
        return self.socket

    def _last_error(self) -> str:
        with contextlib.suppress(OSError):
            lines = self._stderr.read_text(errors="replace").strip().splitlines()
            if lines:
                return lines[-1]
        return f"ssh exited with {self.proc.returncode if self.proc else '?'}"

    def _keep_up(self) -> None:
        while not self._closed.wait(0.5):
            proc = self.proc
            if proc is not None and proc.poll() is not None and not self._closed.is_set():
                self._closed.wait(RETUNNEL_DELAY)
                if not self._closed.is_set():
                    self.restarts += 1
                    self.proc = self._start()

    def close(self) -> None:
        self._closed.set()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def open_remote(url: str, *, readonly: bool = False) -> tuple[Any, Tunnel]:
    """The fleet at `url` as a RemoteFleet through an ssh tunnel (which the caller closes), with the config
    the far fleet runs with. Blocking; RemoteError in one line when it cannot be reached."""
    from mc.client import ClientError, FleetClient, RemoteFleet
    from mc.config import Config, ConfigError, parse_config

    remote = parse_remote(url)
    tunnel = Tunnel(remote, remote_socket(remote))
    socket = tunnel.open()

    async def far_config() -> dict[str, Any]:
        client = FleetClient(socket, reconnect=False)
        try:
            return await client.request("GET", "/v1/config")
        finally:
            await client.close()

    try:
        data = asyncio.run(far_config())
        text = str(data.get("text") or "")
        cfg = parse_config(text, source=f"{remote.url} ({data.get('source')})") if text else Config()
    except (ClientError, ConfigError) as exc:
        tunnel.close()
        raise RemoteError(f"{remote.url}: {exc}") from None
    cfg.repo.path = str(data.get("repo") or remote.path)
    fleet = RemoteFleet(cfg, socket, readonly=readonly, root=PurePosixPath(cfg.repo.path))
    return fleet, tunnel
