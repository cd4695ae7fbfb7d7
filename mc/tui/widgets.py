"""The fleet view's widgets: an agent's pane, its approval box, the compact agent list and the summary bar.

None of them subscribes to anything: the app's drain timer calls `sync` on the ones that are visible.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Static

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
    diff_lines,
    duration,
    elapsed,
    header_text,
    short_number,
    status_text,
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
    """What the agent wants to run or change, and the keys that answer it."""

    def show_request(self, agent: Agent, keys: KeyHint, max_lines: int | None) -> None:
        req = agent.oldest_pending()
        text = approval_text(agent, req, keys, max_lines) if req is not None else status_notice(agent, keys)
        if text is None:
            self.display = False
            return
        self.display = True
        self.update(text)


def status_notice(agent: Agent, keys: KeyHint) -> Text | None:
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
        t.append(f" {agent.files_changed} file{'s' if agent.files_changed != 1 else ''} changed\n")
        actions = (("zoom", "review"), ("merge", "merge"), ("redirect", "redirect"), ("discard", "discard"))
    else:
        return None
    for binding_id, label in actions:
        t.append(keys(binding_id), style="bold reverse")
        t.append(f" {label}  ")
    return t


def approval_text(agent: Agent, req: ev.ApprovalRequested, keys: KeyHint, max_lines: int | None) -> Text:
    """Title and summary, then the answering keys (always visible), then the command or the diff."""
    what = {"command": "wants to run", "write": "wants to change", "read": "wants to read"}.get(req.kind, "wants")
    t = Text()
    t.append(" NEEDS YOU ", style=NEEDS_YOU)
    t.append(f" {what} ({req.tool})", style="bold")
    if len(agent.pending) > 1:
        t.append(f"  1 of {len(agent.pending)}", style=YELLOW)
    t.append("\n")
    t.append(clean_line(req.summary) + "\n", style=f"bold {YELLOW}")
    for binding_id, label in (("approve", "approve"), ("approve_all", "all like it"), ("deny", "deny")):
        t.append(keys(binding_id), style="bold reverse")
        t.append(f" {label}  ")
    t.append(keys("redirect"), style="bold reverse")
    t.append(" redirect")
    detail = req.detail.strip("\n")
    if detail and detail.strip() != req.summary.strip():
        lines = diff_lines(detail) if looks_like_diff(detail) else [("", line) for line in detail.splitlines()]
        shown = lines if max_lines is None else lines[:max_lines]
        for style, line in shown:
            t.append("\n" + clean_line(line), style=style)
        if len(shown) < len(lines):
            t.append(f"\n… {len(lines) - len(shown)} more lines ({keys('zoom')}: zoom)", style=MUTED)
    return t


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
        self.approval = ApprovalBox(classes="approval")
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
        head = header_text(agent, now, waiting_lines=self.log_view.waiting)
        if (title, subtitle, head.plain, agent.status) == self._header:
            return  # nothing new to show: no repaint
        self._header = (title, subtitle, head.plain, agent.status)
        self.border_title = title
        self.head.update(head)
        self.border_subtitle = subtitle

    def on_click(self, event: events.Click) -> None:
        self.post_message(self.Clicked(self.agent_id))


class AgentList(Widget, can_focus=False):
    """Many agents, one line each; the selected one is highlighted and kept in view."""

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
                    short_number(a.tokens),
                    a.files_changed,
                    a.lines_added,
                    a.lines_removed,
                    bool(a.pending),
                )
                for a in self.agents
            ),
        )
        if shown != self._shown:
            self._shown = shown
            self.refresh()

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

    def render(self) -> Text:
        start, end = self._window()
        width = self.size.width
        name_w = max(8, min(24, max((len(a.name) for a in self.agents), default=8)))
        out = Text(no_wrap=True, overflow="ellipsis")
        for i in range(start, end):
            a = self.agents[i]
            line = Text(no_wrap=True, overflow="ellipsis")
            num = f"{i + 1:>2}" if i < 9 else "  "
            sel = a.id == self.selected
            line.append("▸" if sel else " ", style="bold")
            line.append(f"{num} {a.name[:name_w]:<{name_w}} ", style="bold" if sel else "")
            line.append_text(status_text(a.status, pad=13))
            line.append(f" {duration(elapsed(a, self.now)):>7}")
            line.append(f" {short_number(a.tokens):>6} tok", style=MUTED)
            line.append(f" {a.files_changed:>3}f ")
            line.append(f"+{a.lines_added}", style=ADDED)
            line.append("/")
            line.append(f"-{a.lines_removed}", style=REMOVED)
            if a.pending:
                line.append("  ")
                line.append("NEEDS YOU", style=NEEDS_YOU)
            if sel:
                line.stylize_before(SELECTED_ROW)  # under the spans: every badge keeps its own background
            line.truncate(width, pad=True)
            out.append_text(line)
            if i < end - 1:
                out.append("\n")
        return out

    def on_click(self, event: events.Click) -> None:
        start, _ = self._window()
        index = start + event.y
        if 0 <= index < len(self.agents):
            self.post_message(self.Clicked(self.agents[index].id))


class SummaryBar(Static):
    """Counts per status, and how many agents need the engineer."""

    def show_fleet(self, agents: Sequence[Agent], keys: KeyHint) -> None:
        counts: dict[str, int] = {}
        for a in agents:
            counts[a.status] = counts.get(a.status, 0) + 1
        need = sum(1 for a in agents if a.pending)
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(f" {len(agents)} agent{'s' if len(agents) != 1 else ''} ", style="bold")
        for status in STATUS_STYLE:
            if counts.get(status):
                t.append(" ")
                t.append_text(status_text(status))
                t.append(f" {counts[status]}")
        t.append("  │ ")
        if need:
            t.append(f" {need} need{'s' if need == 1 else ''} you ", style=NEEDS_YOU)
            t.append(f" {keys('next_decision')}: next", style=MUTED)
        else:
            t.append("nobody needs you", style=MUTED)
        self.update(t)
