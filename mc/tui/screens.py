"""Screens: the fleet view, the zoom into one agent, and the dialogs (prompt, confirm, kill, new, merge, help)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widget import Widget
from textual.widgets import Button, Checkbox, Footer, Input, Label, Select, Static
from textual.widgets._footer import FooterKey

from mc import cost
from mc import events as ev
from mc.agent import Agent
from mc.config import APPROVE_POLICIES, RUNNERS, AgentConfig, copies_problem
from mc.flags import diff_line
from mc.tui.format import (
    ADDED,
    CYAN,
    FLAG_STYLE,
    LOG_STYLE,
    MONITOR_BADGE,
    MUTED,
    REMOVED,
    YELLOW,
    check_badge,
    clean,
    diff_lines,
    first_fitting,
    header_text,
    money,
)
from mc.tui.lineview import LineView
from mc.tui.review import REVIEW_BINDINGS, DiffCursor, ReviewKeys
from mc.tui.widgets import AgentList, AgentPane, ApprovalBox, LogFeed, SummaryBar, proposal_lines

#: Actions that need an agent and a fleet that can be driven (a monitor says where to take them instead).
DECISION_ACTIONS = frozenset(
    {
        "approve",
        "approve_all",
        "deny",
        "redirect",
        "interrupt",
        "resume",
        "kill",
        "new",
        "merge",
        "discard",
        "run_checks",
        "fix_checks",
        "comment",
        "send_review",
    }
)

#: Which footer items yield first when the line is short (higher goes first); help and quit never do, and
#: the help lists every key.
FOOTER_YIELDS = {"quit": 0, "help": 0, "next_decision": 1, "approve": 1, "deny": 1, "redirect": 1, "back": 1}
FOOTER_YIELDS_DEFAULT = 2
FOOTER_YIELDS_FIRST = {
    "comment": 5,
    "review": 5,
    "interrupt": 4,
    "history": 4,
    "checks_view": 4,
    "next_flag": 4,
    "new": 3,
    "zoom": 2,
    "merge": 2,
}
PALETTE_HINT_MIN_WIDTH = 120


class NarrowFooter(Footer):
    """The footer, with whole items only: when they do not fit, the least needed ones go (see FOOTER_YIELDS)
    instead of the last ones being cut; below 120 columns the command palette hint goes too. In a read-only
    monitor the decision keys are not offered."""

    _composed: list[tuple[Any, ...]] | None = None

    def compose(self) -> ComposeResult:
        plan = self._plan()
        self._composed = plan
        for key, display, description, action, disabled, tooltip, palette in plan:
            if palette:
                yield FooterKey(
                    key, display, description, action, classes="-command-palette", disabled=disabled, tooltip=tooltip
                )
            else:
                yield FooterKey(key, display, description, action, disabled=disabled, tooltip=tooltip).data_bind(
                    compact=Footer.compact
                )

    async def recompose(self) -> None:
        """Mount the items again only when they would differ: the bindings change at every screen switch and
        focus change, mostly to the same items (remounting them cost a third of opening or leaving the zoom)."""
        if self._composed is not None and self.is_attached and self._plan() == self._composed:
            return
        await super().recompose()

    def _plan(self) -> list[tuple[Any, ...]]:
        """(key, shown key, description, action, disabled, tooltip, is the palette's) of each item to show."""
        if not self._bindings_ready:
            return []
        app: Any = self.app
        width = app.size.width
        monitor = bool(getattr(app, "monitor", False))
        items: list[tuple[Binding, bool, str, str]] = []
        seen: set[str] = set()
        for _node, binding, enabled, tooltip in self.screen.active_bindings.values():
            if not binding.show or binding.action in seen or (monitor and binding.action in DECISION_ACTIONS):
                continue
            seen.add(binding.action)
            items.append((binding, enabled, tooltip, app.get_key_display(binding)))
        palette = width >= PALETTE_HINT_MIN_WIDTH and app.ENABLE_COMMAND_PALETTE
        budget = width - (14 if palette else 0)
        sizes = [len(key) + 1 + len(binding.description) + 1 for binding, _, _, key in items]

        def yields(index: int) -> tuple[int, int]:
            binding_id = items[index][0].id or ""
            rank = FOOTER_YIELDS.get(binding_id, FOOTER_YIELDS_FIRST.get(binding_id, FOOTER_YIELDS_DEFAULT))
            return rank, index

        kept = set(range(len(items)))
        while sum(sizes[i] for i in kept) > budget:
            candidates = [i for i in kept if yields(i)[0] > 0]
            if not candidates:
                break
            kept.discard(max(candidates, key=yields))
        plan: list[tuple[Any, ...]] = [
            (binding.key, key, binding.description, binding.action, not enabled, tooltip, False)
            for index, (binding, enabled, tooltip, key) in enumerate(items)
            if index in kept
        ]
        if palette:
            try:
                _node, binding, enabled, tooltip = self.screen.active_bindings[app.COMMAND_PALETTE_BINDING]
            except KeyError:
                return plan
            plan.append(
                (
                    binding.key,
                    app.get_key_display(binding),
                    binding.description,
                    binding.action,
                    not enabled,
                    binding.tooltip or binding.description,
                    True,
                )
            )
        return plan

    def on_resize(self) -> None:
        if self.is_attached and self._bindings_ready:
            self.call_after_refresh(self.recompose)


if TYPE_CHECKING:
    from mc.fleet import Diff
    from mc.tui.app import MissionControl

#: At most this many panes stream at once in the grid; more agents get the list + one pane.
GRID_MAX = 12
PANE_MIN_W = 38
PANE_MIN_H = 8


def grid_shape(n: int, width: int, height: int) -> tuple[int, int] | None:
    """(columns, rows) of a grid that fits n panes in width x height, or None when a list serves better."""
    if n == 0 or n > GRID_MAX:
        return None
    best: tuple[float, int, int] | None = None
    for cols in range(1, n + 1):
        rows = math.ceil(n / cols)
        w, h = width / cols, height / rows
        if w < PANE_MIN_W or h < PANE_MIN_H:
            continue
        score = abs(w - 2.6 * h) + (cols * rows - n) * 4
        if best is None or score < best[0]:
            best = (score, cols, rows)
    return None if best is None else (best[1], best[2])


class TopBar(Static):
    """The title line: repository and base branch, and MONITOR when this is a read-only view. When short of
    room, the monitor's explanation yields first, then the base branch; MONITOR itself stays."""

    def show(self, app: MissionControl, extra: str = "") -> None:
        fleet = app.fleet
        repo = fleet.root.name if fleet is not None else ""
        branch = fleet.base_branch if fleet is not None else ""
        notes: list[str] = [""]
        if app.monitor:
            owner = fleet.owner_pid if fleet is not None else None
            where = app.decision_place()
            remote = getattr(fleet, "client", None) is not None
            short = " decide in another window" if remote else (f" decided in process {owner}" if owner else "")
            notes = [f" decisions are taken in {where}", short, ""]

        def line(note: str, with_branch: bool) -> Text:
            t = Text(no_wrap=True, overflow="ellipsis")
            t.append(" missionctl ", style="bold reverse")
            t.append(f" {repo}", style="bold")
            if branch and with_branch:
                t.append(f" ({branch})", style=MUTED)
            if app.monitor:
                t.append("  ")
                t.append(" MONITOR · read-only ", style=MONITOR_BADGE)
                t.append(note, style=CYAN)
            if extra:
                t.append("  " + extra)
            return t

        candidates = [line(note, True) for note in dict.fromkeys(notes)] + [line("", False)]
        self.update(first_fitting(app.size.width, candidates))


class FleetScreen(Screen):
    """Every agent: a grid of panes for a few, a compact list plus the selected pane for many."""

    BINDINGS = [  # priority: each acts in the order typed, with the app's keys (see MissionControl.BINDINGS)
        Binding("left,h", "move(-1, 0)", "Prev", id="left", show=False, priority=True),
        Binding("right,l", "move(1, 0)", "Next", id="right", show=False, priority=True),
        Binding("up,k", "move(0, -1)", "Up", id="up", show=False, priority=True),
        Binding("down,j", "move(0, 1)", "Down", id="down", show=False, priority=True),
        Binding("enter", "zoom", "Zoom", id="zoom", priority=True),
        Binding("pageup", "log_page(-1)", "Log up", id="log_up", show=False, priority=True),
        Binding("pagedown", "log_page(1)", "Log down", id="log_down", show=False, priority=True),
        Binding("end", "log_follow", "Follow log", id="follow", show=False, priority=True),
        *[
            Binding(str(i), f"select({i})", f"Agent {i}", id=f"agent_{i}", show=False, priority=True)
            for i in range(1, 10)
        ],
    ]

    def __init__(self) -> None:
        super().__init__(id="fleet")
        self.topbar = TopBar(id="topbar")
        self.summary = SummaryBar(id="summary")
        self.body = Container(id="body")
        self.panes: dict[str, AgentPane] = {}
        self.focus_pane: AgentPane | None = None
        self.agent_list: AgentList | None = None
        self._layout_key: tuple[Any, ...] = ()
        self.cols = 1

    @property
    def mc(self) -> MissionControl:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield self.topbar
        yield self.summary
        yield self.body
        yield NarrowFooter(compact=True)

    def on_mount(self) -> None:
        self.topbar.show(self.mc)

    def on_resize(self) -> None:
        self.topbar.show(self.mc)
        self.call_after_refresh(self.relayout)

    def on_screen_resume(self) -> None:
        self.relayout()
        self.sync(None)

    # -- layout ----------------------------------------------------------------------------------
    def relayout(self, force: bool = False) -> None:
        """Rebuild the body when the number of agents or the terminal size calls for another layout."""
        if not self.body.is_attached:
            return  # the app is leaving before its first frame (a fleet that could not open)
        agents = self.mc.agents()
        width, height = self.size.width, self.size.height
        avail = max(1, height - 3)
        shape = grid_shape(len(agents), width, avail)
        side = width >= 150
        key = (tuple(a.id for a in agents), shape, side if shape is None else None, avail if shape is None else 0)
        if key == self._layout_key and not force:
            return
        self._layout_key = key
        self.body.remove_children()
        self.panes = {}
        self.focus_pane = None
        self.agent_list = None
        self.body.remove_class("grid", "list-side", "list-top", "empty")
        if not agents:
            self.body.add_class("empty")
            hint = "" if self.mc.monitor else f" Press {self.mc.key_hint('new')} to start one."
            self.body.mount(Static(f"No agents in this fleet yet.{hint}", classes="empty"))
        elif shape is not None:
            cols, rows = shape
            self.cols = cols
            self.body.add_class("grid")
            self.body.styles.grid_size_columns = cols
            self.body.styles.grid_size_rows = rows
            panes = [AgentPane(a.id, index=i + 1) for i, a in enumerate(agents)]
            self.panes = {p.agent_id: p for p in panes}
            self.body.mount_all(panes)
        else:
            self.cols = 1
            self.body.add_class("list-side" if side else "list-top")
            self.agent_list = AgentList()
            if not side:
                self.agent_list.styles.height = min(len(agents), max(3, avail - 12))
            index = self.mc.index_of(self.mc.selected)
            self.focus_pane = AgentPane(self.mc.selected or agents[0].id, index=index, approval_lines=6)
            self.panes = {self.focus_pane.agent_id: self.focus_pane}
            self.body.mount(self.agent_list, self.focus_pane)
        self.call_after_refresh(self.sync, None)

    # -- updates ---------------------------------------------------------------------------------
    def sync(self, dirty: set[str] | None) -> None:
        """Update the visible panes of the agents in `dirty` (all when None), the list and the summary."""
        app = self.mc
        if app.fleet is None:
            return
        agents = app.agents()
        if not self._layout_key or tuple(a.id for a in agents) != self._layout_key[0]:
            self.relayout()
            return
        now = app.now()
        keys = app.key_hint
        if self.focus_pane is not None and app.selected and self.focus_pane.agent_id != app.selected:
            self.focus_pane.show_agent(app.selected, app.index_of(app.selected))
            self.panes = {app.selected: self.focus_pane}
            dirty = None
        for agent_id, pane in self.panes.items():
            pane.set_class(agent_id == app.selected, "selected")  # mounted or not: it shows once it is
            if not pane.is_mounted:
                continue
            agent = app.fleet.agents.get(agent_id)
            if agent is None:
                continue
            if dirty is None or agent_id in dirty:
                pane.sync(agent, now, keys)
        if self.agent_list is not None:
            self.agent_list.set_state(agents, app.selected, now)
        self.summary.show_fleet(agents, keys, app.config)

    def tick(self) -> None:
        """Once a second: elapsed times of the agents at work."""
        app = self.mc
        if app.fleet is None:
            return
        now = app.now()
        for agent_id, pane in self.panes.items():
            agent = app.fleet.agents.get(agent_id)
            if agent is not None and pane.is_mounted and agent.status in ev.WORKING_STATUSES:
                pane.update_header(agent, now)
        if self.agent_list is not None:
            self.agent_list.set_state(app.agents(), app.selected, now)

    # -- actions ---------------------------------------------------------------------------------
    def action_move(self, dx: int, dy: int) -> None:
        agents = self.mc.agents()
        if not agents:
            return
        ids = [a.id for a in agents]
        pos = ids.index(self.mc.selected) if self.mc.selected in ids else 0
        step = dx + dy * (self.cols if self.agent_list is None else 1)
        self.mc.select(ids[max(0, min(len(ids) - 1, pos + step))])

    def action_select(self, number: int) -> None:
        agents = self.mc.agents()
        if 0 < number <= len(agents):
            self.mc.select(agents[number - 1].id)

    def action_zoom(self) -> None:
        if self.mc.selected:
            self.mc.zoom(self.mc.selected)

    def _selected_pane(self) -> AgentPane | None:
        return self.panes.get(self.mc.selected or "")

    def action_log_page(self, direction: int) -> None:
        pane = self._selected_pane()
        if pane is not None:
            view = pane.log_view
            view.scroll_to(y=view.scroll_y + direction * max(1, view.size.height - 1), animate=False)

    def action_log_follow(self) -> None:
        pane = self._selected_pane()
        if pane is not None:
            pane.log_view.action_follow()

    @on(AgentPane.Clicked)
    @on(AgentList.Clicked)
    def _clicked(self, message: AgentPane.Clicked | AgentList.Clicked) -> None:
        self.mc.select(message.agent_id)

    @on(LineView.FollowChanged)
    def _follow_changed(self, message: LineView.FollowChanged) -> None:
        for pane in self.panes.values():
            if pane.log_view is message.view and self.mc.fleet is not None:
                agent = self.mc.fleet.agents.get(pane.agent_id)
                if agent is not None:
                    pane.update_header(agent, self.mc.now())


class ZoomScreen(ReviewKeys, Screen):
    """One agent: its log and its diff side by side (stacked when narrow), both live; the diff is reviewed by
    hunk (mc/tui/review.py)."""

    BINDINGS = [
        Binding("escape", "back", "Back", id="back", priority=True),
        Binding("home", "history", "Whole log", id="history", priority=True, tooltip="load the whole log from disk"),
        Binding(
            "T", "checks_view", "Checks", id="checks_view", priority=True, tooltip="the checks in place of the diff"
        ),
        Binding("right_square_bracket", "flag(1)", "Next flag", id="next_flag", priority=True),
        Binding("left_square_bracket", "flag(-1)", "Prev flag", id="prev_flag", show=False, priority=True),
        *REVIEW_BINDINGS,
    ]

    def __init__(self, agent_id: str) -> None:
        super().__init__(id="zoom")
        self.agent_id = agent_id
        self.topbar = TopBar(id="topbar")
        self.head = Static(id="zoom-head")
        self.approval = ApprovalBox(classes="approval", rest_hint="all of them below: ↑↓ pgup pgdn")
        self.log_view = LineView(styles=LOG_STYLE, wrap=True, id="zoom-log")
        self.diff_view = LineView(follow=False, max_lines=1_000_000, wrap=True, id="zoom-diff")
        self.proposal_view = LineView(follow=False, max_lines=1_000_000, wrap=True, id="zoom-proposal")
        """The whole of a pending proposal (a write's diff, a long command): read it all before approving."""
        self.checks_view = LineView(follow=False, max_lines=1_000_000, wrap=True, id="zoom-checks")
        """The last check: what ran and why, what failed, and its output (T shows it in place of the diff)."""
        self._checks_shown: tuple[Any, ...] | None = None
        self._check_output: tuple[str, str] = ("", "")  # (check id, what it printed)
        self._flag = -1  # the flag ] and [ last jumped to
        self.files = Static(id="zoom-files")
        self.feed = LogFeed(self.log_view)
        self.cursor = DiffCursor(agent_id)
        self._diff: Diff | bool | None = False
        self._diff_status = ""
        self._version = -1
        self._proposal: str | None = None

    @property
    def mc(self) -> MissionControl:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield self.topbar
        yield self.head
        with VerticalScroll(id="zoom-approval"):
            yield self.approval
        with Container(id="split"):
            with Vertical(id="log-side"):
                yield Label("log", classes="side-title")
                yield self.log_view
            with Vertical(id="diff-side"):
                with VerticalScroll(id="files-box"):
                    yield self.files
                yield self.diff_view
                yield self.checks_view
                yield self.proposal_view
        yield NarrowFooter(compact=True)

    def action_history(self) -> None:
        """Load every line of the agent's log from disk (beyond the lines kept in memory) and show its top."""
        self.run_worker(self._load_history(), group="history", exclusive=True)

    async def _load_history(self) -> None:
        fleet = self.mc.fleet
        if fleet is None:
            return
        lines = await asyncio.to_thread(fleet.full_log, self.agent_id)
        view = self.log_view
        view.max_lines = max(view.max_lines, len(lines) + 10_000)
        view.follow = False
        view.set_lines(lines)
        view.scroll_home(animate=False, immediate=True)
        self.notify(f"whole log: {len(lines):,} lines (end: follow again)", timeout=4)

    def on_mount(self) -> None:
        self.log_view.border_title = "log"
        self.diff_view.border_title = "diff"
        self.checks_view.border_title = "checks"
        self.query_one("#split").set_class(self.size.width < 120, "stacked")
        self.set_focus(self.log_view)
        self.show_agent(self.agent_id)

    def on_resize(self) -> None:
        self.query_one("#split").set_class(self.size.width < 120, "stacked")
        self.sync()

    def reopen(self, agent_id: str) -> None:
        """Shown again (the app keeps one zoom): on `agent_id`, as a fresh zoom would open — the log followed
        and focused, the diff in place of the checks."""
        self.agent_id = agent_id
        if not self.is_mounted:
            return  # its first mount shows the agent
        split = self.query_one("#split")
        split.remove_class("checking")
        split.set_class(self.app.size.width < 120, "stacked")
        if not self.log_view.follow:
            self.log_view.action_follow()
        self.set_focus(self.log_view)
        self.show_agent(agent_id)

    def show_agent(self, agent_id: str) -> None:
        self.agent_id = agent_id
        self._diff = False
        self._version = -1
        self._proposal = None
        self._checks_shown = None
        self._flag = -1
        self.diff_view.border_subtitle = ""
        self.sync(True)

    def sync(self, diff_changed: bool = False) -> None:
        fleet = self.mc.fleet
        agent = fleet.agents.get(self.agent_id) if fleet is not None else None
        if agent is None or fleet is None:
            return
        self.topbar.show(self.mc, extra=f"zoom: {agent.name}")
        self.tick()
        if agent.version != self._version:
            self._version = agent.version
            self.approval.show_request(agent, self.mc.key_hint, 0)
            self.query_one("#zoom-approval").display = bool(agent.pending)
            self._show_proposal(agent)
            self.feed.sync(agent)
            self._show_checks(agent)
            self.review_changed()
        diff = fleet.diff(agent.id)
        if diff is not self._diff or diff_changed or agent.status != self._diff_status:
            self._diff = diff
            self._diff_status = agent.status
            self._show_diff(agent, diff)

    def tick(self) -> None:
        fleet = self.mc.fleet
        agent = fleet.agents.get(self.agent_id) if fleet is not None else None
        if agent is None:
            return
        price = money(cost.agent_cost(agent, self.mc.config))
        t = header_text(agent, self.mc.now(), waiting_lines=self.log_view.waiting, cost=price)
        t.append("\n")
        t.append(f"{agent.branch} from {agent.base_ref}  ", style=MUTED)
        t.append("task: ", style="bold")
        t.append(clean(agent.task.splitlines()[0] if agent.task else ""))
        if agent.error:
            t.append("\n" + clean(agent.error), style=REMOVED)
        self.head.update(t)
        follow = "" if self.log_view.follow else f"paused · {self.log_view.waiting} new · end: follow"
        self.log_view.border_subtitle = follow

    def _show_diff(self, agent: Agent, diff: Diff | None) -> None:
        t = Text(no_wrap=True, overflow="ellipsis")
        files = diff.files if diff is not None else agent.diff_files
        merged = agent.status == "merged"
        if not files:
            t.append("no changes" if merged or agent.status == "discarded" else "no changes yet", style=MUTED)
        else:
            added = diff.added if diff is not None else agent.lines_added
            removed = diff.removed if diff is not None else agent.lines_removed
            n = f"{len(files)} file{'s' if len(files) != 1 else ''}"
            if merged:
                commit = f" as {agent.merged_commit[:10]}" if agent.merged_commit else ""
                t.append(f"{n} merged into {agent.base_ref}{commit}  ", style="bold")
            else:
                t.append(f"{n} changed  ", style="bold")
            t.append(f"+{added}", style=ADDED)
            t.append(" ")
            t.append(f"-{removed}", style=REMOVED)
            if diff is not None and diff.truncated:
                t.append("  (diff truncated)", style=YELLOW)
            for f in files:
                # once merged, an untracked file is one the merge added: no longer "?"
                status = "A" if merged and f.status.startswith("?") else f.status
                t.append(f"\n{status:>2} ", style="bold")
                t.append(clean(f.path))
                if f.binary:
                    t.append("  binary", style=MUTED)
                else:
                    t.append(f"  +{f.added}", style=ADDED)
                    t.append(f" -{f.removed}", style=REMOVED)
        self.files.update(t)
        y = self.diff_view.scroll_y
        self.diff_view.set_lines(diff_lines(diff.text) if diff is not None else [])
        self.review_shown(diff.text if diff is not None else "")
        self.diff_view.scroll_to(y=y, animate=False)

    # -- checks and flags -----------------------------------------------------------------------
    def action_checks_view(self) -> None:
        """Show the checks in place of the diff, or the diff again."""
        split = self.query_one("#split")
        split.toggle_class("checking")
        if split.has_class("checking"):
            self.set_focus(self.checks_view)
        elif self.focused is self.checks_view:
            self.set_focus(self.diff_view)
        fleet = self.mc.fleet
        agent = fleet.agents.get(self.agent_id) if fleet is not None else None
        if agent is not None:
            self._show_checks(agent)

    def _show_checks(self, agent: Agent) -> None:
        """Paint the checks view when it shows and what it would show changed; the output comes from disk (or
        the server) in a worker, once per check."""
        if not self.query_one("#split").has_class("checking"):
            return
        check = agent.check
        output_id, output = self._check_output
        key = (agent.id, check, agent.check_stale, output_id, len(output))
        if key == self._checks_shown:
            return
        self._checks_shown = key
        keys = self.mc.key_hint
        lines: list[tuple[str, str]] = []
        badge = check_badge(agent)
        lines.append((str(badge.style) or "bold", badge.plain))
        if agent.check_stale:
            lines.append((YELLOW, "stale: the diff changed after this check ran"))
        if check.state == "none" and not check.command:
            why = check.reason or "no check has run yet"
            lines.append((MUTED, f"{why}; {keys('run_checks')} runs them ([checks] test in the config)"))
        if check.command:
            took = f"  {check.duration:.1f} s" if check.duration else ""
            when = {"idle": "after a turn", "merge": "before a merge", "manual": "asked for"}.get(check.trigger, "")
            lines.append(("bold", f"ran: {check.command}"))
            lines.append((MUTED, f"{check.scope}{': ' + check.why if check.why else ''}{took}  ({when})"))
        if check.selected:
            lines.append(("bold", f"selected ({len(check.selected)}):"))
            lines.extend(("", f"  {line}") for line in check.selected)
        if check.failing:
            lines.append((f"bold {REMOVED}", f"failing ({len(check.failing)}):"))
            lines.extend((REMOVED, f"  {name}") for name in check.failing)
        if check.state == "error" and check.reason:
            lines.append((REMOVED, check.reason))
        if check.state in ("failed", "error", "passed"):
            verb = "sends the failures back to the agent" if check.state == "failed" else ""
            hint = f"{keys('run_checks')} runs them again" + (f" · {keys('fix_checks')} {verb}" if verb else "")
            lines.append((MUTED, hint))
        if check.output and output_id != check.check_id:
            self.run_worker(self._load_check_output(agent.id, check.check_id), group="check-output", exclusive=True)
        if output and output_id == check.check_id:
            lines.append(("bold", "─ output " + "─" * 30))
            lines.extend(("", line) for line in output.splitlines())
        self.checks_view.set_lines(lines)
        self.checks_view.border_subtitle = f"{keys('checks_view')}: diff"

    async def _load_check_output(self, agent_id: str, check_id: str) -> None:
        fleet = self.mc.fleet
        if fleet is None:
            return
        try:
            text = await asyncio.to_thread(fleet.check_output, agent_id)
        except Exception as exc:  # the server is gone, say: the view says so rather than nothing
            text = f"(the output could not be read: {exc})"
        if agent_id == self.agent_id:
            self._check_output = (check_id, text)
            agent = fleet.agents.get(agent_id)
            if agent is not None:
                self._show_checks(agent)

    def action_flag(self, direction: int) -> None:
        """Jump to the next (or previous) risk flag: the diff scrolls to its line, and says what it is."""
        fleet = self.mc.fleet
        agent = fleet.agents.get(self.agent_id) if fleet is not None else None
        if agent is None:
            return
        flags = agent.flags
        if not flags:
            self.notify(f"{agent.name}'s diff has no risk flags", timeout=3)
            return
        split = self.query_one("#split")
        if split.has_class("checking"):
            self.action_checks_view()  # back to the diff, where the flag is
        self._flag = (self._flag + direction) % len(flags) if self._flag >= 0 or direction > 0 else len(flags) - 1
        flag = flags[self._flag]
        sub = Text(f"⚑ {self._flag + 1}/{len(flags)} ", style=FLAG_STYLE.get(flag.severity, "bold"))
        sub.append(f"{flag.rule} {flag.where}: {clean(flag.message)}")
        self.diff_view.border_subtitle = sub.markup
        diff = None if isinstance(self._diff, bool) else self._diff
        index = diff_line(diff.text, flag) if diff is not None else None
        if index is not None:
            self.diff_view.scroll_to(y=self.diff_view.row_of(index), animate=False, immediate=True)
        self.set_focus(self.diff_view)

    def _show_proposal(self, agent: Agent) -> None:
        """While an approval that proposes more than its summary waits, the diff side shows all of it, with
        the focus, so that the arrows and page keys read it to its end before a, d or r answer it."""
        req = agent.oldest_pending()
        lines = proposal_lines(req) if req is not None else []
        key = req.approval_id if req is not None and lines else None
        if key == self._proposal:
            return
        self._proposal = key
        view = self.proposal_view
        self.query_one("#split").set_class(key is not None, "proposing")
        if req is None or key is None:
            view.set_lines([])
            if self.focused is view:
                self.set_focus(self.log_view)
            return
        view.set_lines(lines)
        view.scroll_home(animate=False, immediate=True)
        view.border_title = f"proposed: {clean(req.summary)}"
        view.border_subtitle = f"{len(lines)} line{'s' if len(lines) != 1 else ''} · ↑↓ pgup pgdn"
        self.set_focus(view)

    def action_back(self) -> None:
        self.app.pop_screen()

    @on(LineView.FollowChanged)
    def _follow_changed(self, message: LineView.FollowChanged) -> None:
        self.tick()


# -- dialogs ---------------------------------------------------------------------------------------
DialogResult = TypeVar("DialogResult")


class Dialog(ModalScreen[DialogResult]):
    """A modal dialog whose keys act in the order they are typed.

    Keys typed while it opens (typeahead, a paste over SSH) are held by the app and delivered once its first
    field has focus (`MissionControl.open_dialog`). Its own keys, tab and shift+tab among them, are priority
    bindings: a key that moves the focus acts before the next key is delivered, so text typed after a tab
    lands in the next field, not in the one it left.
    """

    BINDINGS = [
        Binding("tab", "app.focus_next", "Next field", show=False, priority=True),
        Binding("shift+tab", "app.focus_previous", "Previous field", show=False, priority=True),
    ]

    def __init__(self) -> None:
        super().__init__(classes="dialog-screen")

    def first_focus(self) -> Widget | None:
        """The widget that gets the focus (and the typeahead) when the dialog opens."""
        return None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # escape closes an open list first, not the dialog with what was typed in it
        return not (action == "cancel" and any(select.expanded for select in self.query(Select)))

    def after_typing(self, callback: Callable[[], None]) -> None:
        """Run `callback` once every field has taken in the keys already sent to it (a priority key such as
        enter acts on arrival, while the characters typed before it may still wait in a field's queue)."""
        fields = list(self.query(Input))

        def step(index: int) -> None:
            if index == len(fields):
                callback()
            else:
                fields[index].call_later(step, index + 1)

        step(0)

    def on_mount(self) -> None:
        target = self.first_focus()
        if target is not None:
            self.set_focus(target)  # now, not after a refresh as Widget.focus() does: the held keys come next
        release = getattr(self.app, "release_keys", None)
        if release is not None:
            release()


class TextPrompt(Dialog[str | None]):
    """One line of text (a deny reason, a new instruction). Enter sends, escape cancels."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="dialog.cancel", priority=True),
        Binding("enter", "send", "Send", id="dialog.send", show=False, priority=True),
    ]

    def __init__(self, title: str, placeholder: str = "", *, allow_empty: bool = True) -> None:
        super().__init__()
        self.title_text = title
        self.placeholder = placeholder
        self.allow_empty = allow_empty

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            yield Input(placeholder=self.placeholder, id="prompt-input")
            yield Label("enter: send   escape: cancel", classes="dialog-hint")

    def first_focus(self) -> Widget | None:
        return self.query_one(Input)

    def action_send(self) -> None:
        self.after_typing(self._send)

    def _send(self) -> None:
        value = self.query_one(Input).value.strip()
        if not value and not self.allow_empty:
            self.notify("type something first (escape cancels)", severity="warning")
            return
        self.dismiss(value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmScreen(Dialog[bool]):
    """A yes/no question. y or enter confirms, n or escape cancels."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes", id="dialog.yes", priority=True),
        Binding("n,escape", "answer(False)", "No", id="dialog.no", priority=True),
    ]

    def __init__(self, question: str, yes: str = "Yes") -> None:
        super().__init__()
        self.question = question
        self.yes = yes

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question, classes="dialog-title")
            with Horizontal(classes="buttons"):
                yield Button(f"{self.yes} (y)", variant="error", id="yes")
                yield Button("Cancel (n)", id="no")

    def first_focus(self) -> Widget | None:
        return self.query_one("#no", Button)

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class KillScreen(Dialog[tuple[bool, bool] | None]):
    """Confirm a kill, optionally discarding the worktree too. Returns (kill, discard) or None."""

    BINDINGS = [
        Binding("y", "kill", "Kill", id="dialog.yes", priority=True),
        Binding("n,escape", "cancel", "Cancel", id="dialog.no", priority=True),
    ]

    def __init__(self, name: str) -> None:
        super().__init__()
        self.agent_name = name

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(
                f"Kill {self.agent_name}? It stops now with every process it started. "
                "Its worktree and branch stay unless you tick the box.",
                classes="dialog-title",
            )
            yield Checkbox("also discard the worktree (a snapshot ref is kept)", id="discard")
            with Horizontal(classes="buttons"):
                yield Button("Kill (y)", variant="error", id="yes")
                yield Button("Cancel (n)", id="no")

    def first_focus(self) -> Widget | None:
        return self.query_one("#no", Button)

    def action_kill(self) -> None:
        self.dismiss((True, self.query_one("#discard", Checkbox).value))

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "yes":
            self.action_kill()
        else:
            self.dismiss(None)


class NewAgentScreen(Dialog[AgentConfig | None]):
    """The form for a new agent: name, task, runner, model, base ref, policy (and a command for `command`), and
    copies: best of N, the task given to N agents at once (named <name>-1 …, in one group)."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="dialog.cancel", priority=True),
        Binding("enter", "enter", "Next field / start", id="dialog.enter", show=False, priority=True),
    ]

    def __init__(self, default_base: str = "") -> None:
        super().__init__()
        self.default_base = default_base

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog form"):
            yield Label("New agent", classes="dialog-title")
            yield Input(placeholder="name (letters, digits, . _ -)", id="name")
            yield Input(placeholder="task: what should it do?", id="task")
            yield Select([(r, r) for r in RUNNERS], value="builtin", allow_blank=False, id="runner")
            yield Input(placeholder="model (empty: the config's)", id="model")
            yield Input(placeholder="command (runner = command only; {task} is replaced)", id="command")
            yield Input(placeholder=f"base ref (empty: {self.default_base or 'the current branch'})", id="base")
            yield Select(
                [("policy: the config's", "")] + [(f"policy: {p}", p) for p in APPROVE_POLICIES],
                value="",
                allow_blank=False,
                id="policy",
            )
            yield Input(placeholder="copies (best of N: 1 to 32 agents at once; empty: 1)", id="copies")
            with Horizontal(classes="buttons"):
                yield Button("Start", variant="primary", id="start")
                yield Button("Cancel", id="cancel")

    def first_focus(self) -> Widget | None:
        return self.query_one("#name", Input)

    def _value(self, wid: str) -> str:
        return self.query_one(f"#{wid}", Input).value.strip()

    def _submit(self) -> None:
        name, task = self._value("name"), self._value("task")
        if not name or not task:
            self.notify("give the agent a name and a task", severity="warning")
            return
        copies_text = self._value("copies") or "1"
        spec = AgentConfig(
            name=name,
            task=task,
            runner=str(self.query_one("#runner", Select).value),
            model=self._value("model"),
            command=self._value("command"),
            base=self._value("base"),
            policy=str(self.query_one("#policy", Select).value or ""),
            copies=int(copies_text) if copies_text.isdigit() else copies_text,  # type: ignore[arg-type]
        )
        problem = copies_problem(spec)
        if problem is not None:  # in the config's words: copies = 0: must be from 1 to 32 (agents at once)
            self.notify(problem[1], severity="warning")
            return
        self.dismiss(spec)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "enter":  # on a button or a list, enter is theirs
            return isinstance(self.focused, Input)
        return super().check_action(action, parameters)

    def action_enter(self) -> None:
        """Enter in a field: start the agent from the task field (or from the name when a task is there), else
        go to the next field."""
        wid = self.focused.id if self.focused is not None else ""
        if wid == "task" or (wid == "name" and self._value("task")):
            self.after_typing(self._submit)
        else:
            self.focus_next()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "start":
            self._submit()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class MergeScreen(Dialog[str | None]):
    """The final diff, and how to land it: ff, merge or squash. Returns the mode or None."""

    BINDINGS = [
        Binding("f", "choose('ff')", "Fast-forward", id="merge.ff", priority=True),
        Binding("g", "choose('merge')", "Merge commit", id="merge.merge", priority=True),
        Binding("s", "choose('squash')", "Squash", id="merge.squash", priority=True),
        Binding("escape", "choose(None)", "Cancel", id="dialog.cancel", priority=True),
    ]

    def __init__(self, agent: Agent, diff: Diff | None, default_mode: str) -> None:
        super().__init__()
        self.agent = agent
        self.diff = diff
        self.default_mode = default_mode

    def compose(self) -> ComposeResult:
        a = self.agent
        with Vertical(classes="dialog merge"):
            yield Static(
                Text.assemble(("Merge ", "bold"), (a.name, "bold"), f" ({a.branch}) into {a.base_ref}"),
                classes="dialog-title merge-title",
            )
            yield Static(diff_summary(self.diff), classes="merge-summary")
            yield Static(merge_evidence(a), classes="merge-evidence")
            view = LineView(follow=False, max_lines=1_000_000, wrap=True, id="merge-diff")
            view.set_lines(diff_lines(self.diff.text) if self.diff is not None else [])
            yield view
            with Horizontal(classes="buttons"):
                for mode, label in (
                    ("ff", "fast-forward (f)"),
                    ("merge", "merge commit (g)"),
                    ("squash", "squash (s)"),
                ):
                    yield Button(
                        label, id=f"mode-{mode}", variant="primary" if mode == self.default_mode else "default"
                    )
                yield Button("Cancel (esc)", id="mode-cancel")

    def first_focus(self) -> Widget | None:
        return self.query_one(f"#mode-{self.default_mode}", Button)

    def action_choose(self, mode: str | None) -> None:
        self.dismiss(mode)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        mode = (event.button.id or "").removeprefix("mode-")
        self.dismiss(None if mode == "cancel" else mode)


def merge_evidence(agent: Agent, shown: int = 5) -> Text:
    """What the merge dialog says beside the diff: the checks, and each risk flag with its file and line."""
    t = Text(no_wrap=True, overflow="ellipsis")
    t.append("checks: ", style="bold")
    t.append_text(check_badge(agent))
    if not agent.flags:
        t.append("   no risk flags", style=MUTED)
        return t
    n = len(agent.flags)
    t.append(f"\n{n} risk flag{'s' if n != 1 else ''} (a merge asks once more):", style="bold")
    for flag in agent.flags[:shown]:
        t.append("\n ⚑ ", style=FLAG_STYLE.get(flag.severity, "bold"))
        t.append(f"{flag.severity:<6} {flag.rule}  {clean(flag.where)}  {clean(flag.message)}")
    if n > shown:
        t.append(f"\n   and {n - shown} more (] in the zoom jumps to each)", style=MUTED)
    return t


def diff_summary(diff: Diff | None) -> Text:
    """ "3 files changed  +17 -1" on one line that is never broken (cut at its end when it must be)."""
    t = Text(no_wrap=True, overflow="ellipsis")
    if diff is None:
        t.append("the diff could not be computed", style=MUTED)
        return t
    n = len(diff.files)
    t.append(f"{n} file{'s' if n != 1 else ''} changed  ", style="bold")
    t.append(f"+{diff.added}", style=ADDED)
    t.append(" ")
    t.append(f"-{diff.removed}", style=REMOVED)
    if diff.truncated:
        t.append("  (diff truncated)", style=YELLOW)
    return t


class HelpScreen(Dialog[None]):
    """Every key, as remapped by [ui.keys], with what it does."""

    BINDINGS = [Binding("escape,q,question_mark", "close", "Close", id="help.close", priority=True)]

    def compose(self) -> ComposeResult:
        app: MissionControl = self.app  # type: ignore[assignment]
        table = Table(box=None, show_header=True, header_style="bold", pad_edge=False, expand=False)
        table.add_column("key", style=f"bold {YELLOW}", no_wrap=True)
        table.add_column("what it does")
        table.add_column(Text("id in [ui.keys]"), style=MUTED, no_wrap=True)
        for binding_id, keys, description in app.help_rows():
            table.add_row(keys, description, binding_id)
        with VerticalScroll(classes="dialog help"):
            yield Static(Text("Keys", style="bold"), classes="dialog-title")
            yield Static(table)
            yield Static(
                'Remap any key in the config: [ui.keys] approve = "y". '
                "ctrl+p opens the command palette. escape closes this help.",
                classes="dialog-hint",
            )

    def action_close(self) -> None:
        self.dismiss(None)
