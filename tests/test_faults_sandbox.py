"""Fault suite, sandbox: with `[tools] sandbox = "bwrap"` a shell command run by an agent cannot write outside
its worktree nor open a connection (to a listener this test opens on 127.0.0.1), while the same commands do
both when run unconfined; without bubblewrap on PATH the agent says so instead of running the command, and
`missionctl doctor` reports whether the sandbox is available."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mc import events as ev
from mc.config import AgentConfig
from mc.tools import sandbox_available
from tests.conftest import fleet_config
from tests.test_fleet import shell_turn

ROOT = Path(__file__).resolve().parent.parent


class Listener:
    """A TCP listener on 127.0.0.1 that counts the connections it accepts."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


@pytest.fixture
def outside() -> Iterator[Path]:
    """A folder outside /tmp (the sandbox gives /tmp a private tmpfs, which would hide a folder there)."""
    base = Path("/var/tmp") if os.access("/var/tmp", os.W_OK) else Path.home()
    folder = Path(tempfile.mkdtemp(prefix="mc-sandbox-", dir=base))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def needs_bwrap() -> None:
    ok, why = sandbox_available()
    if not ok:
        pytest.skip(f"bubblewrap is not usable here: {why}")


def probes(outside: Path, port: int) -> list[str]:
    connect = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3); print('connected')"
    return [
        f"echo pwned > {outside}/written.txt",
        f'{sys.executable} -c "{connect}"',
        "echo inside > inside.txt",
    ]


async def test_bwrap_blocks_writes_outside_and_connections(
    repo: Path, scripted: Any, fleet_factory: Any, listener: Listener, outside: Path
) -> None:
    needs_bwrap()
    commands = probes(outside, listener.port)
    # unconfined, the same commands do escape: the checks below can fail
    for command in commands[:2]:
        subprocess.run(command, shell=True, check=True, capture_output=True, cwd=repo)
    assert (outside / "written.txt").exists() and listener.accepted == 1
    (outside / "written.txt").unlink()

    server = scripted({"agents": [{"name": "box", "turns": [*(shell_turn(c) for c in commands), {"say": "Done."}]}]})
    cfg = fleet_config(repo, server, [AgentConfig(name="box", task="try", model="box", policy="never")])
    cfg.tools.sandbox = "bwrap"
    fleet = await fleet_factory(cfg)
    await fleet.spawn_configured()
    assert await fleet.wait_settled(60)
    agent = fleet.get("box")
    assert agent.status == "idle"
    results = [e for e in fleet.store.iter_events("box") if isinstance(e, ev.ToolResult)]
    assert [r.ok for r in results] == [False, False, True], [r.output for r in results]
    assert "Read-only file system" in results[0].output
    assert "connected" not in results[1].output
    assert list(outside.iterdir()) == []
    assert listener.accepted == 1  # only the unconfined probe got through
    assert (Path(agent.worktree) / "inside.txt").read_text() == "inside\n"


def bin_without_bwrap(folder: Path) -> Path:
    """A PATH folder with only the programs the fleet and the probe need: no bwrap."""
    folder.mkdir()
    for program in ("sh", "bash", "git", "touch", "cat", "env", "ls"):
        found = shutil.which(program)
        assert found, program
        os.symlink(found, folder / program)
    return folder


async def test_without_bwrap_the_agent_says_so_instead_of_running_unconfined(
    repo: Path, scripted: Any, fleet_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = bin_without_bwrap(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(path))
    server = scripted({"agents": [{"name": "nobox", "turns": [shell_turn("touch unconfined.txt"), {"say": "Ok."}]}]})
    cfg = fleet_config(repo, server, [AgentConfig(name="nobox", task="try", model="nobox", policy="never")])
    cfg.tools.sandbox = "bwrap"
    fleet = await fleet_factory(cfg)
    await fleet.spawn_configured()
    assert await fleet.wait_settled(30)
    agent = fleet.get("nobox")
    result = next(e for e in fleet.store.iter_events("nobox") if isinstance(e, ev.ToolResult))
    assert not result.ok and "bubblewrap is not installed" in result.output
    assert any("bubblewrap is not installed" in text for _, text in agent.log.lines)
    assert "bubblewrap is not installed" in server.requests_for("nobox")[-1].tool_outputs()[-1]
    assert not (Path(agent.worktree) / "unconfined.txt").exists()


def test_doctor_says_whether_the_sandbox_is_available(repo: Path, scripted: Any, tmp_path: Path) -> None:
    server = scripted({"agents": [{"name": "a", "turns": [{"say": "hi"}]}]})
    config = tmp_path / "mc.toml"
    config.write_text(
        f'[repo]\npath = "{repo}"\nworktree_dir = "{tmp_path / "wt"}"\n'
        f'[model]\nbase_url = "{server.base_url}"\napi_key_env = ""\n[tools]\nsandbox = "bwrap"\n'
    )
    path = bin_without_bwrap(tmp_path / "bin")

    def doctor(env_path: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PATH": env_path, "PYTHONPATH": str(ROOT)}
        argv = [sys.executable, "-m", "mc", "doctor", "--config", str(config)]
        return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)

    missing = doctor(str(path))
    assert missing.returncode == 1, missing.stdout + missing.stderr
    line = next(x for x in missing.stdout.splitlines() if "sandbox" in x)
    assert line.startswith("FAIL") and "bubblewrap is not installed" in line and "apt-get install" in line
    assert "Traceback" not in missing.stderr
    ok, why = sandbox_available()
    present = doctor(os.environ["PATH"])
    line = next(x for x in present.stdout.splitlines() if "sandbox" in x)
    assert line.startswith("ok" if ok else "FAIL") and why in line
    assert present.returncode == (0 if ok else 1), present.stdout
