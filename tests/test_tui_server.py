"""The real app attached to the real fleet server process: keys decide through the socket, a second window
sees the answer, quitting the window leaves the fleet working, and a window comes back to a replaced server."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from mc.client import FleetClient, RemoteFleet, ensure_server, socket_of
from mc.config import load_config
from mc.tui.app import MissionControl
from tests.conftest import make_repo
from tests.test_server import SCENARIO, missionctl, server_pids, write_config

pytestmark = pytest.mark.timeout(120)


async def until(pilot: Any, predicate: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


@pytest.fixture
def served(tmp_path: Path, scripted: Any) -> Any:
    server = scripted(SCENARIO)
    repo = make_repo(tmp_path / "repo")
    write_config(repo, server)
    yield repo
    for pid in server_pids(repo):
        os.kill(pid, signal.SIGKILL)


async def test_keys_decide_through_the_server_and_quitting_leaves_the_fleet_working(served: Path) -> None:
    repo = served
    cfg = load_config(repo / "missionctl.toml")
    sock = await ensure_server(repo / ".mc", ["--config", str(repo / "missionctl.toml")])
    other = FleetClient(sock)
    await other.connect()
    try:
        done = missionctl(repo, "spawn", "--name", "writer", "--task", "write notes", "--model", "writer")
        assert done.returncode == 0, done.stderr
        app = MissionControl(RemoteFleet(cfg, sock))
        async with app.run_test(size=(120, 36)) as pilot:
            await until(pilot, lambda: bool(app.fleet.agents) and app.fleet.list()[0].pending, what="the question")
            app.select(app.fleet.list()[0].id)
            await pilot.press("a")
            await until(pilot, lambda: app.fleet.get("writer").status == "idle", what="the writer to finish")
            await until(pilot, lambda: other.get("writer").status == "idle", what="the other window to see it")
            await pilot.press("q")
        # the window is gone; the fleet is not
        assert len(server_pids(repo)) == 1
        assert other.get("writer").status == "idle"
        assert (await other.diff("writer")).files[0].path == "notes.txt"
    finally:
        await other.close()
    stopped = missionctl(repo, "stop")
    assert stopped.returncode == 0, stopped.stderr


async def test_a_monitor_window_cannot_decide_and_says_where_to(served: Path) -> None:
    repo = served
    cfg = load_config(repo / "missionctl.toml")
    sock = await ensure_server(repo / ".mc", ["--config", str(repo / "missionctl.toml")])
    done = missionctl(repo, "spawn", "--name", "writer", "--task", "write notes", "--model", "writer")
    assert done.returncode == 0, done.stderr
    app = MissionControl(RemoteFleet(cfg, socket_of(repo / ".mc"), readonly=True), monitor=True)
    async with app.run_test(size=(120, 36)) as pilot:
        await until(pilot, lambda: bool(app.fleet.agents) and app.fleet.list()[0].pending, what="the question")
        app.select(app.fleet.list()[0].id)
        await pilot.press("a")
        await pilot.pause(0.5)
        assert app.fleet.get("writer").pending, "a monitor decided"
    assert sock.exists()
    stopped = missionctl(repo, "stop")
    assert stopped.returncode == 0, stopped.stderr


async def test_stop_the_fleet_from_the_window_asks_then_ends_every_agent(served: Path) -> None:
    repo = served
    cfg = load_config(repo / "missionctl.toml")
    sock = await ensure_server(repo / ".mc", ["--config", str(repo / "missionctl.toml")])
    done = missionctl(repo, "spawn", "--name", "sleeper", "--task", "wait", "--model", "sleeper", "--policy", "never")
    assert done.returncode == 0, done.stderr
    app = MissionControl(RemoteFleet(cfg, sock))
    async with app.run_test(size=(120, 36)) as pilot:
        await until(pilot, lambda: bool(app.fleet.agents), what="the fleet")
        app.action_stop_fleet()
        await pilot.pause(0.2)
        await pilot.press("n")  # not yet
        await pilot.pause(0.3)
        assert server_pids(repo), "a 'no' stopped the fleet"
        app.action_stop_fleet()
        await pilot.pause(0.2)
        await pilot.press("y")
        await until(pilot, lambda: not server_pids(repo), what="the server to end")
    assert "the fleet stopped" in app.farewell
    state = (repo / ".mc" / "state.toml").read_text()
    assert 'status = "interrupted"' in state
