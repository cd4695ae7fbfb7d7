"""In the zoom every character can be read: long log and diff lines wrap, and the whole of a proposed change
can be scrolled through before it is approved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mc.fleet import Fleet
from mc.tui.app import MissionControl
from mc.tui.lineview import LineView
from mc.tui.screens import ZoomScreen
from tests.conftest import make_repo
from tests.tui_helpers import agent, screen_text, settle, tui_config, until

pytestmark = pytest.mark.timeout(60)

LONG_SAY = "I looked at it: " + " ".join(f"word{i:03d}" for i in range(60)) + " END-OF-SAY"
LONG_CODE = "value = [" + ", ".join(f"'item{i:03d}'" for i in range(40)) + "]  # END-OF-CODE"
PROPOSAL = "".join(f"proposed line {i:02d}\n" for i in range(1, 18))

WIDE: dict[str, Any] = {
    "tokens_per_second": 0,
    "first_byte_delay": 0,
    "agents": [
        {
            "name": "wide",
            "turns": [
                {"say": LONG_SAY, "tool": "write_file", "args": {"path": "wide.py", "content": LONG_CODE + "\n"}},
                {"say": "Done."},
            ],
        },
        {
            "name": "proposer",
            "turns": [
                {"say": "A longer file.", "tool": "write_file", "args": {"path": "list.txt", "content": PROPOSAL}},
                {"say": "Written."},
            ],
        },
    ],
}


def view_text(view: LineView) -> str:
    """Every row the view can show, scrolled through from its top, joined as the reader reads them."""
    rows = []

    def row(y: int) -> str:
        return "".join(seg.text for seg in view.render_line(y)).rstrip()

    for top in range(view.max_scroll_y + 1):
        view.scroll_to(y=top, animate=False, immediate=True)
        rows.append(row(0))
    rows.extend(row(y) for y in range(1, view.size.height))
    return "".join(rows)


@pytest.mark.parametrize("size", [(160, 48), (80, 24)])
async def test_long_log_and_diff_lines_wrap_in_the_zoom(tmp_path: Path, scripted: Any, size: tuple[int, int]) -> None:
    server = scripted(WIDE)
    repo = make_repo(tmp_path / "repo")
    app = MissionControl(Fleet(tui_config(repo, server, [agent("wide", policy="never")])), spawn_configured=True)
    async with app.run_test(size=size) as pilot:
        await settle(pilot, app)
        await until(pilot, lambda: app.fleet.agents["wide"].files_changed == 1, what="the diff")
        await pilot.press("enter")
        zoom = app.screen
        assert isinstance(zoom, ZoomScreen)
        await until(pilot, lambda: "END-OF-CODE" in zoom.diff_view.plain_text(), what="the diff in the zoom")
        await pilot.pause(0.3)
        # on screen now: the end of the long log line, below its start
        shown = screen_text(app)
        assert any("END-OF-SAY" in line for line in shown), shown
        assert LONG_SAY.replace(" ", "") in view_text(zoom.log_view).replace(" ", "")
        assert ("+" + LONG_CODE).replace(" ", "") in view_text(zoom.diff_view).replace(" ", "")


async def test_the_whole_proposal_can_be_read_before_approving_it(tmp_path: Path, scripted: Any) -> None:
    server = scripted(WIDE)
    repo = make_repo(tmp_path / "repo")
    app = MissionControl(Fleet(tui_config(repo, server, [agent("proposer", policy="writes")])), spawn_configured=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        proposer = app.fleet.agents["proposer"]
        assert proposer.pending
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ZoomScreen), what="the zoom")
        await pilot.pause(0.3)
        seen: set[str] = set()
        for _ in range(12):  # page through it as a person would
            seen.update(line for line in screen_text(app))
            await pilot.press("pagedown")
            await pilot.pause(0.05)
        text = "\n".join(seen)
        missing = [f"+proposed line {i:02d}" for i in range(1, 18) if f"+proposed line {i:02d}" not in text]
        assert not missing, f"never on screen: {missing}"
        assert proposer.pending, "reading it approved nothing"
        await pilot.press("a")
        await until(pilot, lambda: proposer.status == "idle", what="the approval")
        assert (Path(proposer.worktree) / "list.txt").read_text() == PROPOSAL


@pytest.mark.parametrize("width", [1, 4, 9, 20, 80])
def test_wrapping_keeps_every_word_and_no_row_is_wider_than_the_view(width: int) -> None:
    from rich.cells import cell_len

    from mc.tui.lineview import _pieces, _rows

    for text in ["", "short", LONG_SAY, LONG_CODE, "x" * 200, "a " * 50, "héllo wörld — ünïcode " * 9]:
        pieces = _pieces(text, width)
        assert len(pieces) == _rows(text, width)
        assert all(cell_len(piece) <= width for piece in pieces), (text, width, pieces)
        assert "".join(pieces).replace(" ", "") == text.replace(" ", "")
