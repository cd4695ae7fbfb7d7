"""The app says what a key did, or why it did nothing: a merge with nothing to merge, a decision key in a
read-only monitor, the file list after a merge, and one entry per action in the command palette."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mc.fleet import Fleet
from mc.tui.app import MissionControl
from mc.tui.screens import FleetScreen, MergeScreen, ZoomScreen
from tests.conftest import git, make_repo
from tests.tui_helpers import SCENARIO, agent, served_monitor, settle, tui_config, until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


@pytest.fixture
def server(scripted: Any) -> Any:
    return scripted(SCENARIO)


def notes(app: MissionControl) -> list[str]:
    return [n.message for n in app._notifications]


async def test_merging_an_agent_without_changes_says_there_is_nothing_to_merge(repo: Path, server: Any) -> None:
    app = MissionControl(Fleet(tui_config(repo, server, [agent("quiet")])), spawn_configured=True)
    before = git(repo, "rev-parse", "main")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, app)
        await pilot.press("m")
        await until(pilot, lambda: any("nothing to merge" in n for n in notes(app)), what="the notice")
        assert "quiet has no changes against main: there is nothing to merge" in notes(app)
        await pilot.press("s")  # would choose squash, had a merge dialog opened
        await pilot.pause(0.3)
        assert isinstance(app.screen, FleetScreen)
        assert app.fleet.agents["quiet"].status == "idle"
    assert git(repo, "rev-parse", "main") == before


async def test_after_a_merge_the_zoom_lists_the_files_as_merged(repo: Path, server: Any) -> None:
    app = MissionControl(Fleet(tui_config(repo, server, [agent("writer", policy="never")])), spawn_configured=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, app)
        writer = app.fleet.agents["writer"]
        await until(pilot, lambda: writer.files_changed == 1, what="the writer's diff")
        await pilot.press("enter")
        zoom = app.screen
        assert isinstance(zoom, ZoomScreen)
        await until(pilot, lambda: "? notes.txt" in str(zoom.files.render()), what="the untracked file")
        await pilot.press("m")
        await until(pilot, lambda: isinstance(app.screen, MergeScreen), what="the merge dialog")
        await pilot.press("s")
        await until(pilot, lambda: writer.status == "merged", what="the merge")
        await until(pilot, lambda: "merged into main" in str(zoom.files.render()), what="the merged file list")
        files = str(zoom.files.render())
        assert "?" not in files
        assert "A notes.txt" in files


async def test_a_decision_key_in_a_monitor_says_where_decisions_are_taken(repo: Path, server: Any) -> None:
    app = await served_monitor(repo, server, ["quiet"])
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.opened and app.monitor and bool(app.fleet.agents), what="the monitor")
        screen = app.fleet_screen()
        assert screen is not None
        # the first agent is selected from the start, in a monitor too
        await until(pilot, lambda: "quiet" in screen.panes and screen.panes["quiet"].has_class("selected"))
        before = app.fleet.get("quiet").version
        for key in ("a", "d", "n", "m"):
            await pilot.press(key)
        await pilot.pause(0.2)
        told = [n for n in notes(app) if "decisions are taken in any window opened without --monitor" in n]
        assert len(told) == 4, notes(app)
        assert isinstance(app.screen, FleetScreen)
        assert app.fleet.get("quiet").version == before and len(app.fleet.agents) == 1


async def test_the_palette_has_one_keys_entry(repo: Path, server: Any) -> None:
    app = MissionControl(Fleet(tui_config(repo, server, [agent("quiet")])), spawn_configured=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, app)
        titles = [command.title for command in app.get_system_commands(app.screen)]
        assert titles.count("Keys") == 1
        await pilot.press("ctrl+p")
        await pilot.pause(0.3)
        await pilot.press(*"keys", "enter")
        await until(pilot, lambda: type(app.screen).__name__ == "HelpScreen", what="the help screen")
