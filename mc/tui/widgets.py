"""The fleet view's widgets: an agent's pane, its approval box, the compact agent list and the summary bar.

None of them subscribes to anything: the app's drain timer calls `sync` on the ones that are visible.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

from rich.cells import cell_len
from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.geometry import Region
from textual.message import Message
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Static

from mc import cost
from mc import events as ev
from mc.agent import Agent, AgentLog
from mc.tui.format import (
    ADDED,
    FAILED_BADGE,
    INTERRUPTED_BADGE,
    LOG_STYLE,
    MUTED,
    NEEDS_YOU,
    REMOVED,
    REVIEW_BADGE,
    SELECTED_ROW,
    STATUS_STYLE,
    YELLOW,
    check_badge,
    diff_lines,
    duration,
    elapsed,
    first_fitting,
    flags_badge,
    header_text,
    key_rows,
    money,
    short_number,
    status_text,
    tokens_text,
)
from mc.tui.lineview import LineView

KeyHint = Callable[[str], str]


def partial_lines(log: AgentLog) -> list[tuple[str, str]]:
    """The unfinished streamed lines of a log (shown after its complete lines)."""
    if not log.pending_text():
        return []
    total = len(log.lines)
    tail = log.tail(total + 64)
    return tail[total:]


class LogFeed:
    """Keeps a LineView in step with an agent's log ring: only the lines added since the last sync."""

    def __init__(self, view: LineView) -> None:
        self.view = view
        self.agent_id: str | None = None
        self.seen = 0
        self._partial: list[tuple[str, str]] = []

    def sync(self, agent: Agent) -> None:
        log = agent.log
        ring = log.lines
        delta = log.total - self.seen
        partial = partial_lines(log)
        if agent.id != self.agent_id or delta > len(ring) or delta < 0:
            self.agent_id = agent.id
            self.view.set_lines(list(ring), partial)
        elif delta or partial != self._partial:
            new = list(itertools.islice(reversed(ring), delta))
            new.reverse()
            self.view.write_lines(new, partial)
        self.seen = log.total
        self._partial = partial


def looks_like_diff(text: str) -> bool:
    return text.startswith(("--- ", "diff ", "@@")) or "\n@@ " in text or "\n+++ " in text


class ApprovalBox(Static):
    """What the agent wants to run or change, and the keys that answer it, laid out for the box: a key never
    ends a line without its word, and in a pane (`fit_rows`) the proposal gets only the rows left once the
    title, the summary and the keys have theirs, so that the keys are never the part that is cut."""

    #: The share of its pane the box may take (`.approval { max-height: 60% }` in mc.tcss).
    PANE_SHARE = 0.6

    def __init__(self, *, classes: str | None = None, rest_hint: str = "", fit_rows: bool = False) -> None:
        super().__init__(classes=classes)
        self.rest_hint = rest_hint
        """Where the lines of a proposal beyond those shown are (default: "zoom" with its key)."""
        self.fit_rows = fit_rows
        self._shown: tuple[Agent, KeyHint, int | None] | None = None

    def show_request(self, agent: Agent, keys: KeyHint, max_lines: int | None) -> None:
        self._shown = (agent, keys, max_lines)
        self._paint()

    def on_resize(self) -> None:
        self.repaint_for_size()

    def repaint_for_size(self) -> None:
        """Lay the content out again for the box's (or its pane's) new size."""
        if self._shown is not None:
            self._paint()

    def _rows(self) -> int | None:
        parent = self.parent
        if not self.fit_rows or not isinstance(parent, Widget) or not parent.content_region.height:
            return None
        return max(3, int(parent.content_region.height * self.PANE_SHARE))

    def _paint(self) -> None:
        assert self._shown is not None
        agent, keys, max_lines = self._shown
        width = self.content_region.width
        req = agent.oldest_pending()
        if req is not None:
            text: Text | None = approval_text(agent, req, keys, max_lines, width, self.rest_hint, self._rows())
        else:
            text = status_notice(agent, keys, width)
        if text is None:
            self.display = False
            return
        self.display = True
        self.update(text)


def status_notice(agent: Agent, keys: KeyHint, width: int = 0) -> Text | None:
    """What an agent without a question still asks of the engineer: a failure to read, work to review."""
    t = Text()
    if agent.status == "failed":
        t.append(" FAILED ", style=FAILED_BADGE)
        t.append(" " + clean_line(agent.error or agent.status_reason or "see the log")[:400], style="bold")
        t.append("\n")
        actions = (("resume", "resume"), ("redirect", "redirect"), ("discard", "discard"))
    elif agent.status == "interrupted":
        t.append(" INTERRUPTED ", style=INTERRUPTED_BADGE)
        if agent.status_reason:
            t.append(" " + clean_line(agent.status_reason)[:200])
        t.append("\n")
        actions = (("resume", "resume"), ("redirect", "redirect"), ("kill", "kill"))
    elif agent.status == "idle" and agent.files_changed:
        t.append(" READY FOR REVIEW ", style=REVIEW_BADGE)
        t.append(f" {agent.files_changed} file{'s' if agent.files_changed != 1 else ''} changed")
        evidence = []
        if agent.check.state != "none":
            evidence.append(check_badge(agent))
        if agent.flags:
            evidence.append(flags_badge(agent))
        if evidence:  # what the review starts from: did the tests pass, what must not be missed
            t.append("\n")
            for i, badge in enumerate(evidence):
                t.append("  " if i else "")
                t.append_text(badge)
        t.append("\n")
        actions = (("zoom", "review"), ("merge", "merge"), ("redirect", "redirect"), ("discard", "discard"))
        if agent.check.state == "failed":
            actions = (("fix_checks", "send failures back"), *actions)
    else:
        return None
    t.append_text(key_rows([(keys(binding_id), label) for binding_id, label in actions], width))
    return t


def approval_text(
    agent: Agent,
    req: ev.ApprovalRequested,
    keys: KeyHint,
    max_lines: int | None,
    width: int = 0,
    rest_hint: str = "",
    rows: int | None = None,
) -> Text:
    """Title and summary, then the answering keys (always visible), then the command or the diff.

    `width` (0: unknown) lays the keys out; `rows` (None: no limit) is the room the whole takes at most: the
    summary shrinks to one line and the proposal to what is left, with a line that says how much more there is.
    """
    budget = req.kind == cost.BUDGET_KIND
    what = {
        "command": "wants to run",
        "write": "wants to change",
        "read": "wants to read",
        cost.BUDGET_KIND: "reached its budget",
    }.get(req.kind, "wants")
    title = Text(no_wrap=True, overflow="ellipsis")
    title.append(" NEEDS YOU ", style=NEEDS_YOU)
    title.append(f" {what}", style="bold")
    tool = f" ({req.tool})"
    if not width or title.cell_len + len(tool) <= width:
        title.append(tool, style="bold")
    if len(agent.pending) > 1:
        title.append(f"  1 of {len(agent.pending)}", style=YELLOW)
    summary = clean_line(req.summary)
    answers = (("approve", "approve"), ("approve_all", "all like it"), ("deny", "deny"), ("redirect", "redirect"))
    if budget:  # a raise goes up once by the same amount, whatever the key; kill ends it; deny ends the turn
        answers = (
            ("approve", "raise it once"),
            ("kill", "end it"),
            ("deny", "stop the turn"),
            ("redirect", "redirect"),
        )
    key_text = key_rows([(keys(binding_id), label) for binding_id, label in answers], width)
    lines = proposal_lines(req)
    limit = len(lines) if max_lines is None else min(max_lines, len(lines))
    if rows is not None and width:
        summary_rows = -(-cell_len(summary) // width) or 1
        fixed = 1 + len(key_text.split())
        if fixed + summary_rows > rows:
            summary, summary_rows = _cut(summary, width), 1
        room = rows - fixed - summary_rows
        if limit > room:
            limit = max(0, room - 1)  # one row says how many more there are
    t = Text()
    t.append_text(title)
    t.append("\n")
    t.append(summary + "\n", style=f"bold {YELLOW}")
    t.append_text(key_text)
    for style, line in lines[:limit]:
        t.append("\n" + (_cut(clean_line(line), width) if width else clean_line(line)), style=style)
    if limit < len(lines) and (rows is None or limit or rows > 1 + len(key_text.split()) + 1):
        more = len(lines) - limit
        where = rest_hint or f"{keys('zoom')}: zoom"
        word = "more line" if limit else "line"
        t.append(f"\n… {more} {word}{'s' if more != 1 else ''} ({where})", style=MUTED)
    return t


def _cut(text: str, width: int) -> str:
    """One row of `width` cells at most: the text, or its start and "…"."""
    if cell_len(text) <= width:
        return text
    cut = Text(text)
    cut.truncate(width, overflow="ellipsis")
    return cut.plain


def proposal_lines(req: ev.ApprovalRequested) -> list[tuple[str, str]]:
    """The whole of what an approval proposes beyond its summary (a diff, a long command), as styled lines."""
    detail = req.detail.strip("\n")
    if not detail or detail.strip() == req.summary.strip():
        return []
    return diff_lines(detail) if looks_like_diff(detail) else [("", line) for line in detail.splitlines()]


def clean_line(text: str) -> str:
    from mc.tui.format import clean

    return clean(text)


class AgentPane(Vertical):
    """One agent: a header line, its pending approval (if any) and the live tail of its log."""

    class Clicked(Message):
        def __init__(self, agent_id: str) -> None:
            super().__init__()
            self.agent_id = agent_id

    def __init__(self, agent_id: str, *, index: int = 0, approval_lines: int | None = 8) -> None:
        super().__init__(classes="pane")
        self.agent_id = agent_id
        self.index = index
        self.approval_lines = approval_lines
        self.head = Static(classes="pane-head")
        self.approval = ApprovalBox(classes="approval", fit_rows=True)
        self.log_view = LineView(styles=LOG_STYLE, classes="pane-log")
        self.log_view.can_focus = False
        self.feed = LogFeed(self.log_view)
        self._version = -1
        self._header: tuple[str, str, str, str] | None = None

    def compose(self) -> ComposeResult:
        yield self.head
        yield self.approval
        yield self.log_view

    def on_mount(self) -> None:
        self.approval.display = False
        self.call_after_refresh(self._first_sync)

    def on_resize(self) -> None:
        self.approval.repaint_for_size()  # its share of the pane changed with the pane

    def _first_sync(self) -> None:
        app: Any = self.app
        agent = app.fleet.agents.get(self.agent_id)
        if agent is not None:
            self.sync(agent, app.now(), app.key_hint)

    def show_agent(self, agent_id: str, index: int) -> None:
        """Point the pane at another agent (the list layout reuses one pane)."""
        self.agent_id = agent_id
        self.index = index
        self._version = -1

    def sync(self, agent: Agent, now: float, keys: KeyHint) -> None:
        """Bring header, approval box and log up to date with the agent."""
        self.update_header(agent, now)
        if agent.version != self._version:
            self._version = agent.version
            self.set_class(bool(agent.pending), "needs")
            self.approval.show_request(agent, keys, self.approval_lines)
            self.feed.sync(agent)

    def update_header(self, agent: Agent, now: float) -> None:
        prefix = f"{self.index} " if 0 < self.index < 10 else ""
        title = f"{prefix}{agent.name}"
        subtitle = f"paused · {self.log_view.waiting} new · end: follow" if not self.log_view.follow else ""
        app: Any = self.app
        head = header_text(
            agent,
            now,
            waiting_lines=self.log_view.waiting,
            cost=money(cost.agent_cost(agent, app.config)),
            short_badges=self.size.width < 72,
        )
        if (title, subtitle, head.plain, agent.status) == self._header:
            return  # nothing new to show: no repaint
        self._header = (title, subtitle, head.plain, agent.status)
        self.border_title = title
        self.head.update(head, layout=False)  # one row, whatever it says (.pane-head): a repaint, no layout
        self.border_subtitle = subtitle

    def on_click(self, event: events.Click) -> None:
        self.post_message(self.Clicked(self.agent_id))


class AgentList(Widget, can_focus=False):
    """Many agents, one line each; the selected one is highlighted and kept in view.

    Rendered row by row: each row's strip is kept while the row shows the same, and only the rows that changed
    are repainted (a move changes two rows, a clock one; turning 32 rows of text into strips on every change
    cost more than everything else the window painted)."""

    class Clicked(Message):
        def __init__(self, agent_id: str) -> None:
            super().__init__()
            self.agent_id = agent_id

    def __init__(self) -> None:
        super().__init__(classes="agent-list")
        self.agents: list[Agent] = []
        self.selected: str | None = None
        self.now = 0.0
        self._top = 0
        self._shown: object = None
        self._rows: list[Text] = []
        """The rows on screen, top to bottom."""
        self._keys: list[object] = []
        self._width = -1
        self._strips: dict[object, Strip] = {}

    def set_state(self, agents: Sequence[Agent], selected: str | None, now: float) -> None:
        """Take the fleet's state; repaint only when a row would show something else (a streaming fleet
        changes its log lines many times a second, but its rows rarely)."""
        self.agents = list(agents)
        self.selected = selected
        self.now = now
        shown = (
            selected,
            self.size,
            tuple(
                (
                    a.id,
                    a.status,
                    int(elapsed(a, now)),
                    tokens_text(a),
                    a.files_changed,
                    a.lines_added,
                    a.lines_removed,
                    bool(a.pending),
                    a.check.state,
                    a.check.check_id,
                    a.check_stale,
                    tuple(f.severity for f in a.flags),
                )
                for a in self.agents
            ),
        )
        if shown != self._shown:
            self._shown = shown
            self._update_rows()

    def on_resize(self) -> None:
        self._update_rows()

    def _update_rows(self) -> None:
        """Build the rows on screen and repaint those that changed (all of them when the width did)."""
        start, end = self._window()
        width = self.size.width
        rows = [self._row(i, width) for i in range(start, end)]
        keys: list[object] = [(row.plain, tuple(row.spans)) for row in rows]
        old, self._rows, self._keys = self._keys, rows, keys
        if width != self._width or len(keys) != len(old):
            self._width = width
            self._strips.clear()
            self.refresh()
            return
        for y, (key, was) in enumerate(zip(keys, old, strict=True)):
            if key != was:
                self.refresh(Region(0, y, width, 1))
        if len(self._strips) > 4 * max(len(keys), self.size.height):
            kept = set(keys)
            self._strips = {key: strip for key, strip in self._strips.items() if key in kept}

    def _window(self) -> tuple[int, int]:
        height = max(1, self.size.height)
        ids = [a.id for a in self.agents]
        pos = ids.index(self.selected) if self.selected in ids else 0
        if pos < self._top:
            self._top = pos
        elif pos >= self._top + height:
            self._top = pos - height + 1
        self._top = max(0, min(self._top, max(0, len(ids) - height)))
        return self._top, min(len(ids), self._top + height)

    def _row(self, i: int, width: int) -> Text:
        """The row of the `i`-th agent, `width` cells wide."""
        name_w = max(8, min(24, max((len(a.name) for a in self.agents), default=8)))
        a = self.agents[i]
        line = Text(no_wrap=True, overflow="ellipsis")
        num = f"{i + 1:>2}" if i < 9 else "  "
        sel = a.id == self.selected
        line.append("▸" if sel else " ", style="bold")
        line.append(f"{num} {a.name[:name_w]:<{name_w}} ", style="bold" if sel else "")
        line.append_text(status_text(a.status, pad=13))
        line.append(f" {duration(elapsed(a, self.now)):>7}")
        line.append(f" {tokens_text(a):>6} tok", style=MUTED)
        line.append(f" {a.files_changed:>3}f ")
        line.append(f"+{a.lines_added}", style=ADDED)
        line.append("/")
        line.append(f"-{a.lines_removed}", style=REMOVED)
        badges = Text(" ")
        badges.append_text(check_badge(a, short=True))
        badges.align("left", 12)
        badges.append_text(flags_badge(a, short=True))
        badges.align("left", 16)
        if line.cell_len + badges.cell_len + (11 if a.pending else 0) <= width:
            line.append_text(badges)  # checks and flags yield first: the pane and the zoom show them too
        if a.pending:
            line.append("  ")
            line.append("NEEDS YOU", style=NEEDS_YOU)
        if sel:
            line.stylize_before(SELECTED_ROW)  # under the spans: every badge keeps its own background
        line.truncate(width, pad=True)
        return line

    def render(self) -> Text:
        """Every row on screen as one text (what `render_line` paints row by row)."""
        start, end = self._window()
        out = Text(no_wrap=True, overflow="ellipsis")
        for i in range(start, end):
            out.append_text(self._row(i, self.size.width))
            if i < end - 1:
                out.append("\n")
        return out

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        base = self.rich_style
        if width != self._width:  # laid out anew before on_resize: build the rows for this width
            self._update_rows()
        if y >= len(self._rows):
            return Strip.blank(width, base)
        key = self._keys[y]
        strip = self._strips.get(key)
        if strip is None:
            segments = list(self._rows[y].render(self.app.console))
            strip = self._strips[key] = Strip(segments).apply_style(base).crop_extend(0, width, base)
        return strip

    def on_click(self, event: events.Click) -> None:
        start, _ = self._window()
        index = start + event.y
        if 0 <= index < len(self.agents):
            self.post_message(self.Clicked(self.agents[index].id))


class SummaryBar(Static):
    """How many agents need the engineer, then the count per status. When the line is short, the statuses
    yield (glyphs without words, then cut); the count of agents that need a decision never does."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._shown: tuple[list[Agent], KeyHint, str] | None = None
        self._painted: tuple[Any, ...] | None = None

    def show_fleet(self, agents: Sequence[Agent], keys: KeyHint, config: Any = None) -> None:
        """Show these agents' counts (and, given the config, the fleet's tokens and cost at its [prices])."""
        total = ""
        if config is not None:
            t = cost.totals(agents, config)
            if t.reported:
                price = money(t.cost)
                total = f"{short_number(t.tokens)} tok" + (f" {price}" if price else "")
                if price and not t.cost_complete:
                    total += "+"  # some agents' models have no price: the sum is a floor
        self._shown = (list(agents), keys, total)
        self._paint()

    def on_resize(self) -> None:
        if self._shown is not None:
            self._paint()

    def _paint(self) -> None:
        assert self._shown is not None
        agents, keys, total = self._shown
        counts: dict[str, int] = {}
        for a in agents:
            counts[a.status] = counts.get(a.status, 0) + 1
        need = sum(1 for a in agents if a.pending)
        shown = [s for s in STATUS_STYLE if counts.get(s)]
        painted = (tuple(counts.items()), need, total, keys("next_decision"), self.content_region.width)
        if painted == self._painted:
            return  # the same line: no repaint
        self._painted = painted

        def line(hint: bool, words: bool, totals: bool = True) -> Text:
            t = Text(no_wrap=True, overflow="ellipsis")
            t.append(f" {len(agents)} agent{'s' if len(agents) != 1 else ''} ", style="bold")
            t.append(" │ ")
            if need:
                t.append(f" {need} need{'s' if need == 1 else ''} you ", style=NEEDS_YOU)
                if hint:
                    t.append(f" {keys('next_decision')}: next", style=MUTED)
            else:
                t.append("nobody needs you", style=MUTED)
            if shown:
                t.append("  │")
            for status in shown:
                t.append(" ")
                if words:
                    t.append_text(status_text(status))
                    t.append(f" {counts[status]}")
                else:
                    glyph, style = STATUS_STYLE[status]
                    t.append(glyph, style=style)
                    t.append(f"{counts[status]}")
            if total and totals:
                t.append("  │ ")
                t.append(f"Σ {total}", style=MUTED)
            return t

        # what yields first: the hint (the footer has it too), then the words of the statuses, then the totals
        # (the zoom and the compare view have them too), then the statuses' end
        candidates = [
            line(True, True),
            line(False, True),
            line(True, False),
            line(False, False),
            line(False, False, totals=False),
        ]
        fitting = first_fitting(self.content_region.width or candidates[0].cell_len, candidates)
        self.update(fitting, layout=False)  # one row, whatever it says (#summary): a repaint, no layout
