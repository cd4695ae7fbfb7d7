"""A log that follows shows its newest line: after a burst of thousands of lines, and after a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mc import events as ev
from mc.fleet import Fleet
from mc.tui.app import MissionControl
from mc.tui.lineview import LineView
from tests.conftest import make_repo
from tests.tui_helpers import SCENARIO, agent, settle, tui_config, until

pytestmark = pytest.mark.timeout(90)


def last_row(view: LineView) -> str:
    """The text of the bottom row the view paints."""
    rows = ["".join(seg.text for seg in view.render_line(y)).rstrip() for y in range(view.size.height)]
    filled = [r for r in rows if r]
    return filled[-1] if filled else ""


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
async def test_a_burst_of_lines_in_one_event_shows_its_end_in_every_pane(
    tmp_path: Path, scripted: Any, size: tuple[int, int]
) -> None:
    server = scripted(SCENARIO)
    repo = make_repo(tmp_path / "repo")
    names = ["quiet", "lister", "writer"]
    cfg = tui_config(repo, server, [agent(n, policy="never") for n in names])
    app = MissionControl(Fleet(cfg), spawn_configured=True)
    async with app.run_test(size=size) as pilot:
        await settle(pilot, app)
        for name in names:
            app.fleet.emit(ev.TextDelta(agent=name, text="".join(f"{name} answer line {i}\n" for i in range(1, 3001))))
            app.fleet.emit(ev.AssistantMessage(agent=name, text=""))
        await pilot.pause(0.6)
        screen = app.fleet_screen()
        assert screen is not None
        assert screen.panes
        for agent_id, pane in screen.panes.items():
            view = pane.log_view
            assert view.follow, agent_id
            assert view.scroll_y == view.max_scroll_y > 0, agent_id
            assert last_row(view) == f"{agent_id} answer line 3000", agent_id


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
async def test_after_a_restart_a_long_log_opens_at_its_end_and_follows(
    tmp_path: Path, scripted: Any, size: tuple[int, int]
) -> None:
    server = scripted(SCENARIO)
    repo = make_repo(tmp_path / "repo")
    cfg = tui_config(repo, server, [agent("chatty", policy="never"), agent("quiet")])
    first = MissionControl(Fleet(cfg), spawn_configured=True)
    async with first.run_test(size=size) as pilot:
        await settle(pilot, first)
        assert first.fleet.agents["chatty"].log.total > 7000

    again = MissionControl(Fleet(cfg))
    async with again.run_test(size=size) as pilot:
        await until(pilot, lambda: again.opened, what="the fleet to open")
        again.select("chatty")
        await pilot.pause(0.6)
        screen = again.fleet_screen()
        assert screen is not None
        pane = screen.panes["chatty"]
        view = pane.log_view
        assert view.follow
        assert view.scroll_y == view.max_scroll_y > 0
        assert last_row(view).startswith("· idle")
        assert not pane.border_subtitle
