"""Review in the zoom with the real app, a real repository and a real agent on the scripted model: move to a
hunk, comment on it and on one line of another, see the review, delete a comment, send it; the model receives
one instruction with path:line and the quoted lines, and after its turn the review says which hunk changed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rich.color import Color
from textual.widgets import OptionList

from mc.fleet import Fleet
from mc.tui.app import MissionControl
from mc.tui.format import CYAN
from mc.tui.review import SELECTED_HEADER
from mc.tui.review_dialogs import CommentScreen, ReviewScreen
from mc.tui.screens import ZoomScreen
from tests.test_review import SCENARIO, review_repo, user_texts
from tests.tui_helpers import agent, screen_cells, settle, tui_config, until

pytestmark = pytest.mark.timeout(90)


def review_rows(app: Any) -> list[str]:
    """The review dialog's list, one string per entry."""
    options = app.screen.query_one(OptionList)
    return [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]


async def comment(pilot: Any, app: Any, text: str, line_downs: int = 0) -> None:
    """c, then (with line_downs) pick a line of the hunk in the list, then type the comment and enter."""
    await pilot.press("c")
    await until(pilot, lambda: isinstance(app.screen, CommentScreen), what="the comment dialog")
    if line_downs:
        await pilot.press("shift+tab", "enter", *["down"] * line_downs, "enter", "tab")
    await pilot.press(*text)
    await pilot.press("enter")
    await until(pilot, lambda: isinstance(app.screen, ZoomScreen), what="the comment dialog to close")


async def test_comment_hunks_review_and_send_then_see_what_changed(tmp_path: Path, scripted: Any) -> None:
    server = scripted(SCENARIO)
    repo = review_repo(tmp_path)
    app = MissionControl(Fleet(tui_config(repo, server, [agent("reviewed", policy="never")])), spawn_configured=True)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot, app)
        reviewed = app.fleet.agents["reviewed"]
        await until(pilot, lambda: reviewed.files_changed == 2, what="the diff")
        await pilot.press("enter")
        zoom = app.screen
        assert isinstance(zoom, ZoomScreen)
        await until(pilot, lambda: "+v25 = 2500" in zoom.diff_view.plain_text(), what="the diff in the zoom")

        await pilot.press("right_curly_bracket")
        hunk = zoom.cursor.current()
        assert hunk is not None and (hunk.path, hunk.line) == ("app/values.py", 3)
        await pilot.press("right_curly_bracket")
        await pilot.press("left_curly_bracket")
        assert zoom.cursor.current() == hunk
        await pilot.pause(0.1)
        # the selected hunk shows: its @@ line is drawn in the selection's colours
        header_rows = [row for row in screen_cells(app) if "".join(ch for ch, _ in row).find(hunk.header) >= 0]
        assert header_rows, "the selected hunk is not on screen"
        at = "".join(ch for ch, _ in header_rows[0]).find(hunk.header)
        bgcolor = header_rows[0][at][1].bgcolor
        assert bgcolor is not None and bgcolor.triplet == Color.parse(CYAN).get_truecolor()
        assert zoom.diff_view.lines[hunk.start][0] == SELECTED_HEADER
        assert "hunk 1 of 3 · app/values.py:3" in str(zoom.diff_view.border_title)

        await comment(pilot, app, "Keep 300.")
        await until(pilot, lambda: len(reviewed.comments) == 1, what="the first comment")
        await pilot.press("right_curly_bracket")
        # the second hunk's body: v22 v23 v24 -v25 +v25 …; the list starts with the whole hunk
        await comment(pilot, app, "v25 must stay 25.", line_downs=5)
        await until(pilot, lambda: len(reviewed.comments) == 2, what="the second comment")
        await pilot.press("greater_than_sign")
        assert zoom.cursor.current().path == "notes.txt"
        await comment(pilot, app, "Not needed.")
        await until(pilot, lambda: len(reviewed.comments) == 3, what="the third comment")
        assert [(c.path, c.line, c.quote) for c in reviewed.comments] == [
            ("app/values.py", 3, ("-v03 = 3", "+v03 = 300")),
            ("app/values.py", 25, ("+v25 = 2500",)),
            ("notes.txt", 1, ("+one", "+two")),
        ]
        await until(pilot, lambda: "3 comments (C: review)" in str(zoom.diff_view.border_title), what="the count")

        await pilot.press("C")
        await until(pilot, lambda: isinstance(app.screen, ReviewScreen), what="the review")
        await until(pilot, lambda: len(review_rows(app)) == 3, what="the review's comments")
        rows = review_rows(app)
        assert rows[0].startswith("app/values.py:3") and "Keep 300." in rows[0]
        assert rows[1].startswith("app/values.py:25") and "v25 must stay 25." in rows[1]
        await pilot.press("down", "down", "d")
        await until(pilot, lambda: len(reviewed.comments) == 2, what="the deletion")
        await until(pilot, lambda: len(review_rows(app)) == 2, what="the list to follow")
        assert not any("Not needed." in row for row in review_rows(app))

        await pilot.press("S")
        await until(pilot, lambda: reviewed.review.review_id == "r1", what="the review to be sent")
        assert await app.fleet.wait_settled(20)
        sent = user_texts(server, "reviewed")[-1]
        assert sent.startswith("Review of your changes: 2 comments.")
        assert "app/values.py:3\n> -v03 = 3\n> +v03 = 300\nKeep 300." in sent
        assert "app/values.py:25\n> +v25 = 2500\nv25 must stay 25." in sent
        assert "notes.txt" not in sent

        await app.fleet.wait_review("reviewed")
        await until(pilot, lambda: isinstance(app.screen, ZoomScreen), what="the zoom")
        await pilot.press("C")
        await until(pilot, lambda: isinstance(app.screen, ReviewScreen), what="the review again")
        await until(pilot, lambda: any("changed" in row for row in review_rows(app)), what="the marks")
        rows = review_rows(app)
        assert "1 of 2 commented hunks changed" in rows[0]
        assert rows[1].startswith("app/values.py:3  unchanged")
        assert rows[2].startswith("app/values.py:25  changed")
        await pilot.press("escape")
        # the help lists the keys, with the zoom's
        rows = app.help_rows()
        for row in [
            ("next_hunk", "}", "zoom: next hunk"),
            ("prev_hunk", "{", "zoom: previous hunk"),
            ("next_file", ">", "zoom: next file"),
            ("prev_file", "<", "zoom: previous file"),
        ]:
            assert row in rows
        assert {"comment", "review", "send_review"} <= {row[0] for row in rows}
