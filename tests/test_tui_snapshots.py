"""SVG snapshots of the fleet view, the zoom, a pending approval and the help screen.

The app runs on the real fleet (real repository, scripted server) with a frozen clock, so elapsed times read
0:00 and the pictures are the same from run to run. `MC_UPDATE_SNAPSHOTS=1 pytest tests/test_tui_snapshots.py`
rewrites them after an intended change; look at the SVGs in tests/snapshots/ before committing them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from mc.fleet import Fleet
from mc.tui.app import MissionControl
from tests.conftest import make_repo
from tests.tui_helpers import SCENARIO, agent, settle, tui_config, until

SNAPSHOTS = Path(__file__).parent / "snapshots"
pytestmark = pytest.mark.timeout(60)


def check_snapshot(app: MissionControl, name: str) -> None:
    app.clear_notifications()
    svg = app.export_screenshot(title=name)
    path = SNAPSHOTS / f"{name}.svg"
    if os.environ.get("MC_UPDATE_SNAPSHOTS") or not path.exists():
        SNAPSHOTS.mkdir(exist_ok=True)
        path.write_text(svg)
        if not os.environ.get("MC_UPDATE_SNAPSHOTS"):
            pytest.fail(f"{path} did not exist: written now; look at it and run the test again")
        return
    expected = path.read_text()
    if _normal(svg) != _normal(expected):
        (SNAPSHOTS / f"{name}.actual.svg").write_text(svg)
        pytest.fail(f"{name}: the screen differs from {path}; see {name}.actual.svg (MC_UPDATE_SNAPSHOTS=1 accepts it)")


def _normal(svg: str) -> str:
    # the unique id Rich gives each export is derived from the content; keep the comparison to what is drawn
    return re.sub(r"terminal-\d+", "terminal", svg)


@pytest.fixture
async def app(tmp_path: Path, scripted: Any) -> Any:
    server = scripted(SCENARIO)
    repo = make_repo(tmp_path / "repo")
    agents = [agent("runner"), agent("writer", policy="writes"), agent("quiet")]
    cfg = tui_config(repo, server, agents)
    return MissionControl(Fleet(cfg), spawn_configured=True, clock=lambda: 0.0)


async def _ready(pilot: Any, app: MissionControl) -> None:
    await settle(pilot, app)
    app.select("runner")
    await pilot.pause(0.3)


async def test_snapshot_fleet_view(app: MissionControl) -> None:
    async with app.run_test(size=(120, 36)) as pilot:
        await _ready(pilot, app)
        check_snapshot(app, "fleet")


async def test_snapshot_pending_approval_list_layout(app: MissionControl) -> None:
    async with app.run_test(size=(80, 24)) as pilot:
        await _ready(pilot, app)
        await pilot.press("2")  # writer: a write waiting, shown as a diff
        await pilot.pause(0.4)
        check_snapshot(app, "approval")


async def test_snapshot_zoom(app: MissionControl) -> None:
    async with app.run_test(size=(140, 36)) as pilot:
        await _ready(pilot, app)
        app.select("writer")
        await pilot.press("a")
        await until(pilot, lambda: app.fleet.agents["writer"].status == "idle", what="the writer")
        await until(pilot, lambda: app.fleet.diff("writer") is not None, what="the diff")
        await pilot.press("enter")
        await pilot.pause(0.5)
        check_snapshot(app, "zoom")


async def test_snapshot_help(app: MissionControl) -> None:
    async with app.run_test(size=(120, 44)) as pilot:
        await _ready(pilot, app)
        await pilot.press("question_mark")
        await pilot.pause(0.3)
        check_snapshot(app, "help")
