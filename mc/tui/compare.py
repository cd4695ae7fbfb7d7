"""Best of N: the compare view of a group (copies of one task), side by side, to pick the one to merge.

One column per agent (one row each when the columns would not fit): status, runner and model, checks, risk
flags, files and lines changed, tokens, cost and time; below, the selected agent's changed files and flags. The
app's keys act on the selected agent (m merges it, x discards it, a approves …); after a merge the others are
offered for discard in one confirmation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Static

from mc import cost
from mc import events as ev
from mc.agent import Agent
from mc.client import ClientError
from mc.config import Config
from mc.fleet import FleetError
from mc.tui.format import (
    ADDED,
    FLAG_STYLE,
    MUTED,
    REMOVED,
    check_badge,
    clean,
    duration,
    elapsed,
    flags_badge,
    money,
    status_text,
    tokens_text,
)
from mc.tui.screens import ConfirmScreen, NarrowFooter, TopBar

if TYPE_CHECKING:
    from mc.tui.app import MissionControl

#: Statuses in which an agent has done what it will do without the engineer (its work can be picked).
SETTLED = ev.SETTLED_STATUSES
#: Statuses after which an agent has no work left to pick or discard.
DONE = ev.DONE_STATUSES
#: Cells of one agent's column (and of the label column) side by side.
COLUMN = 24
LABEL = 9


def group_members(agents: Iterable[Agent], group: str) -> list[Agent]:
    """The agents of `group`, in the fleet's order."""
    return [a for a in agents if group and a.group == group]


def groups_to_pick(agents: Sequence[Agent]) -> list[str]:
    """Groups that wait for the engineer to pick one: none of their agents merged, every one still there settled
    (idle, interrupted, failed or killed), at least one still there. In the order their last agent settled."""
    groups: dict[str, list[Agent]] = {}
    for agent in agents:
        if agent.group:
            groups.setdefault(agent.group, []).append(agent)
    ready = []
    for name, members in groups.items():
        left = [a for a in members if a.status != "discarded"]
        if len(members) < 2 or not left or any(a.status == "merged" for a in members):
            continue
        if all(a.status in SETTLED for a in left):
            ready.append((max(a.status_since for a in left), name))
    return [name for _, name in sorted(ready)]


def flags_cell(agent: Agent) -> Text:
    """The flags badge of the fleet view, and a word where there are none (a column must not look empty)."""
    return flags_badge(agent) if agent.flags else Text("— none", style=MUTED)


def lines_cell(agent: Agent) -> Text:
    t = Text()
    t.append(f"+{agent.lines_added}", style=ADDED)
    t.append(" ")
    t.append(f"-{agent.lines_removed}", style=REMOVED)
    return t


def cost_cell(agent: Agent, config: Config) -> Text:
    """The cost at the config's price of its model; "—" where none is known (never a guess)."""
    shown = money(cost.agent_cost(agent, config))
    return Text(shown or "—", style="" if shown else MUTED)


#: (label, cell of one agent) of each line of the comparison.
def _cells(agent: Agent, now: float, config: Config) -> list[tuple[str, Text]]:
    files = agent.files_changed
    runner = agent.runner + (f" · {agent.model}" if agent.model else "")
    return [
        ("status", status_text(agent.status)),
        ("runner", Text(clean(runner), style=MUTED)),
        ("checks", check_badge(agent)),
        ("flags", flags_cell(agent)),
        ("files", Text(f"{files} file{'s' if files != 1 else ''}")),
        ("lines", lines_cell(agent)),
        ("tokens", Text(tokens_text(agent))),
        ("cost", cost_cell(agent, config)),
        ("time", Text(duration(elapsed(agent, now)))),
    ]


def compare_table(agents: Sequence[Agent], selected: str | None, now: float, config: Config, width: int) -> Table:
    """The comparison: one column per agent when they fit in `width`, else one row per agent."""
    table = Table(box=None, pad_edge=False, expand=False, show_header=True, header_style="bold", padding=(0, 1))
    rows = [_cells(a, now, config) for a in agents]
    labels = [label for label, _ in rows[0]] if rows else []

    def name(index: int, agent: Agent) -> Text:
        style = "bold reverse" if agent.id == selected else "bold"
        return Text(f"{index + 1} {clean(agent.name)}", style=style, no_wrap=True, overflow="ellipsis")

    if LABEL + COLUMN * len(agents) <= width:
        table.add_column("", style="bold", no_wrap=True, width=LABEL)
        for i, agent in enumerate(agents):
            table.add_column(name(i, agent), no_wrap=True, overflow="ellipsis", width=COLUMN - 1)
        for line, label in enumerate(labels):
            table.add_row(label, *(cells[line][1] for cells in rows))
        return table
    table.add_column("agent", no_wrap=True, overflow="ellipsis")
    for label in labels:
        table.add_column(label, no_wrap=True, overflow="ellipsis")
    for i, (agent, cells) in enumerate(zip(agents, rows, strict=True)):
        table.add_row(name(i, agent), *(cell for _, cell in cells))
    return table


def detail_text(agent: Agent | None) -> Text:
    """The selected agent's task, changed files and risk flags."""
    t = Text()
    if agent is None:
        return t
    t.append(f"{clean(agent.name)}", style="bold")
    t.append(f"  {clean(agent.branch)}\n", style=MUTED)
    if agent.error:
        t.append(clean(agent.error.splitlines()[0]) + "\n", style=REMOVED)
    if not agent.diff_files:
        t.append("no changes" + ("" if agent.status in DONE else " yet") + "\n", style=MUTED)
    for f in agent.diff_files:
        t.append(f"{f.status:>2} ", style="bold")
        t.append(clean(f.path))
        if f.binary:
            t.append("  binary", style=MUTED)
        else:
            t.append(f"  +{f.added}", style=ADDED)
            t.append(f" -{f.removed}", style=REMOVED)
        t.append("\n")
    for flag in agent.flags:
        t.append(f"⚑ {flag.severity} ", style=FLAG_STYLE.get(flag.severity, MUTED))
        t.append(f"{clean(flag.where)} ", style="bold")
        t.append(clean(flag.message) + "\n")
    if agent.check.failing:
        t.append("failing: " + clean(", ".join(agent.check.failing[:5])) + "\n", style=REMOVED)
    return t


class CompareScreen(Screen[None]):
    """The agents of one group side by side; the app's keys act on the selected one."""

    BINDINGS = [  # priority: each acts in the order typed, with the app's keys (see MissionControl.BINDINGS)
        Binding("escape", "back", "Back", id="back", priority=True),
        Binding("left,h", "move(-1)", "Prev", id="left", show=False, priority=True),
        Binding("right,l", "move(1)", "Next", id="right", show=False, priority=True),
        Binding("up,k", "move(-1)", "Up", id="up", show=False, priority=True),
        Binding("down,j", "move(1)", "Down", id="down", show=False, priority=True),
        Binding("enter", "zoom", "Zoom", id="zoom", priority=True),
        *[
            Binding(str(i), f"pick({i})", f"Agent {i}", id=f"agent_{i}", show=False, priority=True)
            for i in range(1, 10)
        ],
    ]

    def __init__(self, group: str, selected: str | None = None) -> None:
        super().__init__(id="compare")
        self.group = group
        self.selected = selected
        self.topbar = TopBar(id="topbar")
        self.head = Static(id="compare-head")
        self.table = Static(id="compare-table")
        self.detail = Static(id="compare-detail")
        self.offered: set[str] = set()
        """Agents whose merge has offered the others for discard already (once per merge)."""

    @property
    def mc(self) -> MissionControl:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield self.topbar
        yield self.head
        with VerticalScroll(id="compare-body"):
            yield self.table
            yield self.detail
        yield NarrowFooter(compact=True)

    def members(self) -> list[Agent]:
        return group_members(self.mc.agents(), self.group)

    def selected_agent(self) -> Agent | None:
        members = self.members()
        if not members:
            return None
        if self.selected not in [a.id for a in members]:
            live = [a for a in members if a.status not in DONE]
            self.selected = (live or members)[0].id
        return next(a for a in members if a.id == self.selected)

    def on_mount(self) -> None:
        # a merge from before the view opened offers nothing: only one the engineer makes here (or in a zoom
        # opened from here) does
        self.offered = {a.id for a in self.members() if a.status == "merged"}
        self.sync(None)

    def on_resize(self) -> None:
        self.sync(None)

    def on_screen_resume(self) -> None:
        self.sync(None)

    def sync(self, dirty: set[str] | None = None) -> None:
        """Draw again when an agent of the group changed (any when None)."""
        members = self.members()
        if dirty is not None and not any(a.id in dirty for a in members):
            return
        app = self.mc
        self.topbar.show(app, extra=f"compare: {self.group}")
        agent = self.selected_agent()
        totals = cost.totals(members, app.config)
        head = Text(no_wrap=True, overflow="ellipsis")
        head.append(f"best of {len(members)}", style="bold")
        head.append(f"  group {clean(self.group)}  ", style=MUTED)
        head.append(f"{totals.tokens:,} tokens" if totals.reported else "tokens —", style=MUTED)
        if totals.cost is not None:
            head.append(f"  cost {money(totals.cost)}" + ("" if totals.cost_complete else "+"), style=MUTED)
        keys = app.key_hint
        head.append(
            f"\n←→ choose  {keys('zoom')} zoom  {keys('merge')} merge (the others are then offered for discard)  "
            f"{keys('discard')} discard  {keys('back')} back",
            style=MUTED,
        )
        self.head.update(head)
        width = max(40, self.size.width - 2)
        self.table.update(Group(compare_table(members, self.selected, app.now(), app.config, width), Text("")))
        self.detail.update(detail_text(agent))
        if agent is not None and app.selected != agent.id:
            app.selected = agent.id
        self._offer_after_merge(members)

    def tick(self) -> None:
        self.sync(None)

    def action_move(self, step: int) -> None:
        members = self.members()
        if not members:
            return
        ids = [a.id for a in members]
        pos = ids.index(self.selected) if self.selected in ids else 0
        self.selected = ids[max(0, min(len(ids) - 1, pos + step))]
        self.sync(None)

    def action_pick(self, number: int) -> None:
        members = self.members()
        if 0 < number <= len(members):
            self.selected = members[number - 1].id
            self.sync(None)

    def action_zoom(self) -> None:
        if self.selected_agent() is not None and self.selected:
            self.mc.zoom(self.selected)

    def action_back(self) -> None:
        self.app.pop_screen()

    # -- after a merge -----------------------------------------------------------------------------
    def _offer_after_merge(self, members: list[Agent]) -> None:
        """Once an agent of the group is merged, offer every other one still there for discard, in one question."""
        merged = next((a for a in members if a.status == "merged" and a.id not in self.offered), None)
        if merged is None or self.mc.monitor or self.app.screen is not self:
            return
        self.offered.add(merged.id)
        others = [a for a in members if a.status not in DONE]
        if not others:
            return
        names = ", ".join(a.name for a in others)

        def answer(yes: bool | None) -> None:
            if yes:
                self.mc.run_worker(self._discard(others), group="fleet")

        self.mc.open_dialog(
            ConfirmScreen(
                f"{merged.name} is merged. Discard the other{'s' if len(others) != 1 else ''} of {self.group}: "
                f"{names}? Their worktrees and branches go away; a snapshot ref keeps each one's work.",
                f"Discard {len(others)}",
            ),
            answer,
        )

    async def _discard(self, agents: list[Agent]) -> None:
        """Discard each agent (a snapshot ref keeps its work); one that refuses is said and the others go on."""
        kept: list[str] = []
        for agent in agents:
            try:
                ref = await self.mc.fleet.discard(agent.id)
            except (FleetError, ClientError) as exc:
                self.mc.notify(str(exc), severity="error", timeout=8)
                continue
            kept.append(f"{agent.name} at {ref}" if ref else agent.name)
        if kept:
            self.mc.notify(f"discarded {', '.join(kept)}", timeout=8)
