"""A line-based view of styled lines that renders only what is visible.

Used for agent logs (fed in batches by the app's drain timer) and for diffs (thousands of lines, each
coloured by its first character). Lines are plain strings with a style name; rich `Text` is built only for
the rows on screen, and control characters never reach the terminal.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich.text import Text
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from mc.tui.format import clean

StyledLine = tuple[str, str]  # (style, text)


class LineView(ScrollView, can_focus=True):
    """Styled lines, a bounded history, and a follow mode that pauses when the engineer scrolls up."""

    BINDINGS = [
        Binding("end", "follow", "Follow", id="log.follow", show=False),
    ]

    DEFAULT_CSS = """
    LineView {
        background: $surface;
        overflow-x: hidden;
        overflow-y: auto;
        scrollbar-size-vertical: 1;
    }
    """

    class FollowChanged(Message):
        """The view started or stopped following, or the number of waiting lines changed."""

        def __init__(self, view: LineView) -> None:
            super().__init__()
            self.view = view

        @property
        def control(self) -> LineView:
            return self.view

    def __init__(
        self,
        *,
        styles: dict[str, str] | None = None,
        max_lines: int = 5000,
        follow: bool = True,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(id=id, classes=classes)
        self._styles = styles or {}
        self.max_lines = max_lines
        self._lines: list[StyledLine] = []
        self._partial: list[StyledLine] = []
        self.follow = follow
        self.waiting = 0
        """Lines written while not following (shown as "N new")."""

    # -- content ---------------------------------------------------------------------------------
    @property
    def lines(self) -> Sequence[StyledLine]:
        return self._lines

    @property
    def line_count(self) -> int:
        return len(self._lines) + len(self._partial)

    def plain_text(self) -> str:
        """Everything in the view as plain text (for tests and copying)."""
        return "\n".join(text for _, text in (*self._lines, *self._partial))

    def _prepared(self, lines: Iterable[tuple[str, str]]) -> list[StyledLine]:
        styles = self._styles
        return [(styles.get(kind, kind), clean(text)) for kind, text in lines]

    def set_lines(self, lines: Iterable[tuple[str, str]], partial: Iterable[tuple[str, str]] = ()) -> None:
        """Replace the content (scroll position: the end when following, else kept)."""
        self._lines = self._prepared(lines)[-self.max_lines :]
        self._partial = self._prepared(partial)
        self.waiting = 0
        self._changed(0)

    def write_lines(self, lines: Iterable[tuple[str, str]], partial: Iterable[tuple[str, str]] | None = None) -> None:
        """Append a batch of lines; `partial` replaces the unfinished lines shown after them."""
        new = self._prepared(lines)
        self._lines.extend(new)
        extra = len(self._lines) - self.max_lines
        if extra > 0:
            del self._lines[:extra]
            if not self.follow:
                self.scroll_to(y=max(0, self.scroll_y - extra), animate=False, immediate=True)
        if partial is not None:
            self._partial = self._prepared(partial)
        self._changed(len(new))

    def _changed(self, added: int) -> None:
        self.virtual_size = Size(max(1, self.scrollable_content_region.width), self.line_count)
        if self.follow:
            self._to_end()
        elif added:
            self.waiting += added
            self.post_message(self.FollowChanged(self))
        self.refresh()

    # -- follow mode -----------------------------------------------------------------------------
    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        at_end = new_value >= self.max_scroll_y
        if at_end != self.follow:
            self.follow = at_end
            if at_end:
                self.waiting = 0
            self.post_message(self.FollowChanged(self))

    def action_follow(self) -> None:
        """Jump to the end and follow new lines again."""
        self.follow = True
        self.waiting = 0
        self._to_end()
        self.post_message(self.FollowChanged(self))

    def _to_end(self) -> None:
        # forced: until the next layout pass a view whose lines just outgrew it has no scrollbar yet, and
        # Textual refuses to scroll a widget without one (a burst of lines would stay at its first row)
        self.scroll_end(animate=False, immediate=True, x_axis=False, force=True)

    def on_resize(self) -> None:
        self.virtual_size = Size(max(1, self.scrollable_content_region.width), self.line_count)
        if self.follow:
            self.call_after_refresh(lambda: self.follow and self._to_end())

    # -- rendering -------------------------------------------------------------------------------
    def render_line(self, y: int) -> Strip:
        index = int(self.scroll_y) + y
        width = self.scrollable_content_region.width
        base = self.rich_style
        n = len(self._lines)
        if index < n:
            style, text = self._lines[index]
        elif index - n < len(self._partial):
            style, text = self._partial[index - n]
        else:
            return Strip.blank(width, base)
        line = Text(text, no_wrap=True, end="")
        if style:
            line.stylize(style)  # a span: Text.render() drops a Text's own base style
        line.truncate(width)
        segments = list(line.render(self.app.console))
        return Strip(segments).apply_style(base).crop_extend(0, width, base)
