"""A streaming fleet repaints, it does not lay the screen out again: lines arriving in a visible pane, a header
whose clock or counters move, the summary's counts and a move of the selection in the list change what a row
shows, never the size or place of a widget, so none of them asks the screen for a layout pass (on a 160x48
screen the layout pass cost more than the paint, on nearly every frame of a streaming fleet). Layout requests
are the `Layout` messages a widget posts to its screen, captured with `run_test(message_hook=...)`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from textual import messages
from textual.message import Message
from textual.widgets._footer import FooterKey

from mc import events as ev
from mc.fleet import Fleet
from mc.tui.app import MissionControl
from mc.tui.screens import GRID_MAX, ZoomScreen
from tests.conftest import make_repo
from tests.tui_helpers import SCENARIO, agent, settle, tui_config

pytestmark = pytest.mark.timeout(90)


def stream(app: MissionControl, name: str, first: int, count: int) -> None:
    app.fleet.emit(ev.TextDelta(agent=name, text="".join(f"{name} line {i}\n" for i in range(first, first + count))))


def layouts(captured: list[Message]) -> list[str]:
    """Which widgets asked for a layout pass."""
    return [repr(m.widget) for m in captured if isinstance(m, messages.Layout)]


@pytest.mark.parametrize("count", [4, 14], ids=["grid", "list"])
async def test_lines_clocks_and_moves_repaint_without_a_layout_pass(tmp_path: Path, scripted: Any, count: int) -> None:
    server = scripted(SCENARIO)
    repo = make_repo(tmp_path / "repo")
    names = [f"q{i:02d}" for i in range(count)]
    cfg = tui_config(repo, server, [agent(n, model="quiet", policy="never") for n in names])
    captured: list[Message] = []
    app = MissionControl(Fleet(cfg), spawn_configured=True)
    async with app.run_test(size=(160, 48), message_hook=captured.append) as pilot:
        await settle(pilot, app)
        for name in names:  # every log outgrows its pane (its scrollbar comes: that one is a layout)
            app.fleet.emit(ev.StatusChanged(agent=name, status="running"))
            stream(app, name, 1, 200)
        await pilot.pause(0.8)
        captured.clear()
        for batch in range(3):  # lines into every pane over several drains, while the clocks tick
            for name in names:
                stream(app, name, 201 + batch * 50, 50)
            await pilot.pause(0.45)
        if count > GRID_MAX:  # the list and its one pane (in the grid, a move changes two panes' borders)
            await pilot.press("j")
            await pilot.pause(0.3)
            await pilot.press("k")
            await pilot.pause(0.3)
        screen = app.fleet_screen()
        assert screen is not None
        shown = next(iter(screen.panes.values())).log_view
        assert shown.plain_text().endswith(" line 350")  # the lines did arrive
        assert layouts(captured) == []


async def test_leaving_the_zoom_keeps_the_footer_items_that_did_not_change(tmp_path: Path, scripted: Any) -> None:
    server = scripted(SCENARIO)
    repo = make_repo(tmp_path / "repo")
    cfg = tui_config(repo, server, [agent("quiet", policy="never"), agent("lister", policy="never")])
    app = MissionControl(Fleet(cfg), spawn_configured=True)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot, app)
        screen = app.fleet_screen()
        assert screen is not None
        before = list(screen.query(FooterKey))
        assert [k.description for k in before][:2] == ["Zoom", "Approve"]
        await pilot.press("enter")
        await pilot.pause(0.4)
        assert isinstance(app.screen, ZoomScreen)
        assert "Back" in [k.description for k in app.screen.query(FooterKey)]
        await pilot.press("escape")
        await pilot.pause(0.4)
        assert app.screen is screen
        assert list(screen.query(FooterKey)) == before  # the same widgets: not mounted again
        await pilot.resize_terminal(80, 24)  # fewer items fit: these are mounted again
        await pilot.pause(0.4)
        narrow = [k.description for k in screen.query(FooterKey)]
        assert "Zoom" in narrow and len(narrow) < len(before)
