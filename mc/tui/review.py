"""Review in the zoom: move through the diff by hunk and file, comment on a hunk (or a line of it), see the
review, delete a comment, send the review to the agent.

`ReviewKeys` gives the zoom (mc/tui/screens.py) its keys and actions, `DiffCursor` the selected hunk; the dialogs
are in mc/tui/review_dialogs.py (they build on the screens' Dialog, so the zoom opens them by a late import).
Every change goes to the fleet (in-process or over the socket) as one command: comments are events in the
agent's log, so every window shows the same review.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from textual.binding import Binding

from mc.agent import Agent
from mc.review import Hunk, anchor, parse
from mc.tui.format import CYAN, diff_style

if TYPE_CHECKING:
    from mc.tui.app import MissionControl
    from mc.tui.lineview import LineView

#: The background of the selected hunk's lines in the zoom's diff, and the style of its `@@` line.
SELECTED_HUNK = "on grey23"
SELECTED_HEADER = f"bold grey0 on {CYAN}"
REVIEW_BINDINGS = [
    Binding("}", "hunk(1)", "Next hunk", id="next_hunk", show=False, priority=True, tooltip="zoom: next hunk"),
    Binding("{", "hunk(-1)", "Prev hunk", id="prev_hunk", show=False, priority=True, tooltip="zoom: previous hunk"),
    Binding(">", "file(1)", "Next file", id="next_file", show=False, priority=True, tooltip="zoom: next file"),
    Binding("<", "file(-1)", "Prev file", id="prev_file", show=False, priority=True, tooltip="zoom: previous file"),
    Binding(
        "c",
        "comment",
        "Comment",
        id="comment",
        priority=True,
        tooltip="zoom: comment on the selected hunk of the diff, or on one line of it",
    ),
    Binding(
        "C",
        "review",
        "Review",
        id="review",
        priority=True,
        tooltip="zoom: the review: its comments (d deletes one), and after the agent's next turn whether each "
        "commented hunk changed",
    ),
    Binding(
        "S",
        "send_review",
        "Send review",
        id="send_review",
        show=False,
        priority=True,
        tooltip="zoom: send the review to the agent as one instruction (path:line and the quoted lines of each "
        "comment); it goes on from there",
    ),
]


class DiffCursor:
    """The files and hunks of the diff the zoom shows, and which hunk is selected (-1: none yet)."""

    def __init__(self, agent_id: str = "") -> None:
        self.agent_id = agent_id
        self.hunks: list[Hunk] = []
        self.files: list[str] = []
        self.index = -1

    def load(self, text: str) -> None:
        """Take the diff's new text; the selected hunk stays selected when it is still there (by file and
        header), else the one at its place."""
        was = self.current()
        files = parse(text)
        self.files = [f.path for f in files if f.hunks]
        self.hunks = [h for f in files for h in f.hunks]
        if was is None:
            self.index = -1 if self.index < 0 or not self.hunks else min(self.index, len(self.hunks) - 1)
            return
        same = [i for i, h in enumerate(self.hunks) if (h.path, h.header) == (was.path, was.header)]
        self.index = same[0] if same else min(self.index, len(self.hunks) - 1)

    def current(self) -> Hunk | None:
        return self.hunks[self.index] if 0 <= self.index < len(self.hunks) else None

    def move(self, step: int) -> Hunk | None:
        if not self.hunks:
            return None
        if self.index < 0:
            self.index = 0 if step > 0 else len(self.hunks) - 1
        else:
            self.index = max(0, min(len(self.hunks) - 1, self.index + step))
        return self.current()

    def move_file(self, step: int) -> Hunk | None:
        if not self.hunks:
            return None
        hunk = self.current()
        if hunk is None:
            return self.move(step)
        at = self.files.index(hunk.path)
        target = self.files[max(0, min(len(self.files) - 1, at + step))]
        if target == hunk.path:  # the first hunk of this file (going back), or nothing to do
            first = next(i for i, h in enumerate(self.hunks) if h.path == target)
            self.index = first if step < 0 else self.index
        else:
            self.index = next(i for i, h in enumerate(self.hunks) if h.path == target)
        return self.current()

    def position(self) -> str:
        hunk = self.current()
        if hunk is None:  # the diff's title stays as it was until a hunk is selected
            return ""
        return f"hunk {self.index + 1} of {len(self.hunks)} · {hunk.path}:{hunk.line}"


class ReviewKeys:
    """The zoom's review keys (mixed into ZoomScreen, whose BINDINGS hold REVIEW_BINDINGS)."""

    agent_id: str
    diff_view: LineView
    cursor: DiffCursor
    app: Any

    @property
    def _mc(self) -> MissionControl:
        return self.app  # type: ignore[no-any-return]

    def review_shown(self, text: str) -> None:
        """The diff view got new lines (`text`): keep the selection on its hunk and show it again."""
        if self.cursor.agent_id != self.agent_id:
            self.cursor = DiffCursor(self.agent_id)
        self.cursor.load(text)
        self._mark(None)

    def _mark(self, old: Hunk | None) -> None:
        view = self.diff_view
        styles: dict[int, str] = {}
        if old is not None:
            lines = view.lines
            for i in range(old.start, min(old.end, len(lines))):
                styles[i] = diff_style(lines[i][1])
        hunk = self.cursor.current()
        if hunk is not None:
            lines = view.lines
            for i in range(hunk.start, min(hunk.end, len(lines))):
                styles[i] = SELECTED_HEADER if i == hunk.start else f"{diff_style(lines[i][1])} {SELECTED_HUNK}".strip()
        view.set_styles(styles)
        self._title()

    def _title(self) -> None:
        agent = self._agent()
        n = len(agent.comments) if agent is not None else 0
        parts = ["diff"]
        if self.cursor.position():
            parts.append(self.cursor.position())
        if n:
            parts.append(f"{n} comment{'s' if n != 1 else ''} ({self._mc.key_hint('review')}: review)")
        self.diff_view.border_title = " · ".join(parts)

    def _agent(self) -> Agent | None:
        fleet = self._mc.fleet
        return fleet.agents.get(self.agent_id) if fleet is not None else None

    def _show(self, old: Hunk | None, hunk: Hunk | None) -> None:
        if hunk is None:
            self._mc.notify("no hunks in this diff yet", severity="warning")
            return
        self._mark(old)
        view = self.diff_view
        view.scroll_to(y=max(0, view.row_of(hunk.start) - 1), animate=False, immediate=True)

    def action_hunk(self, step: int) -> None:
        old = self.cursor.current()
        self._show(old, self.cursor.move(step))

    def action_file(self, step: int) -> None:
        old = self.cursor.current()
        self._show(old, self.cursor.move_file(step))

    def action_comment(self) -> None:
        app = self._mc
        if app.monitor:
            app.notify_read_only()
            return
        agent = self._agent()
        if agent is None:
            return
        hunk = self.cursor.current()
        if hunk is None:
            self.action_hunk(1)
            hunk = self.cursor.current()
            if hunk is None:
                return

        def answer(result: tuple[int | None, str] | None) -> None:
            if result is None:
                return
            index, text = result
            line, quote = anchor(hunk, index)
            done = (
                f"{agent.name}: comment on {hunk.path}:{line} added "
                f"({app.key_hint('review')}: the review, {app.key_hint('send_review')}: send it)"
            )
            work = app.fleet.add_comment(
                agent.id, hunk.path, line, text, quote=quote, hunk=hunk.body, header=hunk.header
            )
            app._command(work, done)

        from mc.tui.review_dialogs import CommentScreen

        app.open_dialog(CommentScreen(hunk), answer)

    def action_review(self) -> None:
        from mc.tui.review_dialogs import ReviewScreen

        agent = self._agent()
        if agent is not None:
            self._mc.open_dialog(ReviewScreen(agent.id))

    def action_send_review(self) -> None:
        from mc.tui.review_dialogs import send_review

        send_review(self._mc, self.agent_id)

    def review_changed(self) -> None:
        """The agent changed (its comments, say): the diff's title counts them."""
        self._title()
