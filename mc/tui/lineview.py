"""A line-based view of styled lines that renders only what is visible.

Used for agent logs (fed in batches by the app's drain timer) and for diffs (thousands of lines, each
coloured by its first character). Lines are plain strings with a style name; rich `Text` is built only for
the rows on screen, and control characters never reach the terminal.

A view either cuts long lines at its edge with a "…" (the fleet's panes: one row per line), or wraps them
(the zoom and the merge dialog: every character can be read). A wrapping view keeps the row at which each
line starts, so that it still renders only the rows on screen.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence

from rich.cells import cell_len, chop_cells
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
    LineView.-wrap {
        scrollbar-gutter: stable;  /* the width lines wrap at does not change when the scrollbar comes */
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
        wrap: bool = False,
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
        self.wrap = wrap
        self.set_class(wrap, "-wrap")
        self._starts: list[int] = [0]
        """wrap: the row at which each of `_lines` starts, and after the last the row after it."""
        self._starts_width = 0

    # -- content ---------------------------------------------------------------------------------
    @property
    def lines(self) -> Sequence[StyledLine]:
        return self._lines

    @property
    def line_count(self) -> int:
        return len(self._lines) + len(self._partial)

    @property
    def row_count(self) -> int:
        """Rows the content takes: one per line, more for the lines a wrapping view wraps."""
        if not self.wrap:
            return self.line_count
        self._update_starts()
        width = self._wrap_width()
        return self._starts[-1] + sum(_rows(text, width) for _, text in self._partial)

    def _wrap_width(self) -> int:
        return max(1, self.scrollable_content_region.width)

    def _update_starts(self, appended: int = 0) -> None:
        """Bring the row table up to date: for the last `appended` lines only when the rest is, else all."""
        width = self._wrap_width()
        known = len(self._starts) - 1
        if width == self._starts_width and known == len(self._lines):
            return
        if width == self._starts_width and appended and known == len(self._lines) - appended:
            row = self._starts[-1]
            for _, text in self._lines[known:]:
                row += _rows(text, width)
                self._starts.append(row)
            return
        self._starts_width = width
        starts, row = [0], 0
        for _, text in self._lines:
            row += _rows(text, width)
            starts.append(row)
        self._starts = starts

    def row_of(self, index: int) -> int:
        """The row at which line `index` starts (its index, unless the view wraps)."""
        if not self.wrap:
            return index
        self._update_starts()
        return self._starts[min(max(0, index), len(self._starts) - 1)]

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
        self._starts, self._starts_width = [0], 0  # the row table is rebuilt when next needed
        self.waiting = 0
        self._changed(0)

    def write_lines(self, lines: Iterable[tuple[str, str]], partial: Iterable[tuple[str, str]] | None = None) -> None:
        """Append a batch of lines; `partial` replaces the unfinished lines shown after them."""
        new = self._prepared(lines)
        self._lines.extend(new)
        if self.wrap:
            self._update_starts(appended=len(new))
        extra = len(self._lines) - self.max_lines
        if extra > 0:
            gone = self._starts[extra] if self.wrap else extra
            del self._lines[:extra]
            if self.wrap:
                self._starts = [row - gone for row in self._starts[extra:]]
            if not self.follow:
                self.scroll_to(y=max(0, self.scroll_y - gone), animate=False, immediate=True)
        if partial is not None:
            self._partial = self._prepared(partial)
        self._changed(len(new))

    def set_styles(self, styles: dict[int, str]) -> None:
        """Give some lines (by index) another style; their text, so the rows they take, stay as they are."""
        lines = self._lines
        for index, style in styles.items():
            if 0 <= index < len(lines):
                lines[index] = (style, lines[index][1])
        if styles:
            self.refresh()

    def _changed(self, added: int) -> None:
        self._set_virtual_size()
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

    def _set_virtual_size(self) -> None:
        """Size the scrollable content without a layout pass of the screen: Textual's `virtual_size` reactive
        lays the whole screen out on every change, and a streaming log changes it on every drain. A layout is
        needed only when the scrollbar comes or goes (it takes a column), and `_scroll_update` asks for one
        then, as Textual's own `_size_updated(layout=False)` does."""
        size = Size(max(1, self.scrollable_content_region.width), self.row_count)
        if size != self.virtual_size:
            self.set_reactive(LineView.virtual_size, size)
            self._scroll_update(size)

    def on_resize(self) -> None:
        self._set_virtual_size()
        if self.follow:
            self.call_after_refresh(lambda: self.follow and self._to_end())

    # -- rendering -------------------------------------------------------------------------------
    def render_line(self, y: int) -> Strip:
        row = self.scroll_offset.y + y  # rounded, as ScrollView rounds when it decides to repaint
        width = self.scrollable_content_region.width
        base = self.rich_style
        found = self._row(row, width) if self.wrap else self._line(row)
        if found is None:
            return Strip.blank(width, base)
        style, text, piece = found
        if self.wrap:
            text = _piece(text, width, piece)
        line = Text(text, no_wrap=True, end="")
        if style:
            line.stylize(style)  # a span: Text.render() drops a Text's own base style
        line.truncate(width, overflow="ellipsis")
        segments = list(line.render(self.app.console))
        return Strip(segments).apply_style(base).crop_extend(0, width, base)

    def _line(self, index: int) -> tuple[str, str, int] | None:
        n = len(self._lines)
        if index < n:
            return (*self._lines[index], 0)
        if index - n < len(self._partial):
            return (*self._partial[index - n], 0)
        return None

    def _row(self, row: int, width: int) -> tuple[str, str, int] | None:
        """(style, text, which piece of the wrapped line) shown at `row` of a wrapping view."""
        self._update_starts()
        starts = self._starts
        if row < starts[-1]:
            index = bisect_right(starts, row) - 1
            return (*self._lines[index], row - starts[index])
        row -= starts[-1]
        for style, text in self._partial:
            rows = _rows(text, width)
            if row < rows:
                return style, text, row
            row -= rows
        return None


def _rows(text: str, width: int) -> int:
    """Rows a line takes when wrapped at `width` cells."""
    if len(text) <= width:  # the common case: a short line (its cells are never fewer than its characters)
        return 1 if text.isascii() or cell_len(text) <= width else len(_pieces(text, width))
    return len(_pieces(text, width))


def _piece(text: str, width: int, index: int) -> str:
    """The `index`-th row of `text` wrapped at `width` cells."""
    pieces = _pieces(text, width)
    return pieces[index] if index < len(pieces) else ""


def _pieces(text: str, width: int) -> list[str]:
    """`text` wrapped at `width` cells: after the last space of a row when there is one in its second half,
    else at the width (a long word, a path, a row of dashes)."""
    if not text.isascii():
        return chop_cells(text, width) or [""]
    pieces = []
    start = 0
    while len(text) - start > width:
        if text[start + width] == " ":  # a word ends at the edge: the space between the rows goes
            pieces.append(text[start : start + width])
            start += width + 1
            continue
        cut = text.rfind(" ", start + width // 2, start + width)
        end = cut + 1 if cut >= 0 else start + width
        pieces.append(text[start:end])
        start = end
    if start < len(text) or not pieces:
        pieces.append(text[start:])
    return pieces
