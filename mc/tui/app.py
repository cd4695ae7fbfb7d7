"""The mission control app: opens the fleet, turns keys into Fleet commands, and keeps the visible panes live.

How it stays fast: the fleet listener only marks agents dirty (and rings the bell); a one-shot timer, armed
when something changed, drains the dirty agents into the visible panes a few times a second, in batches.
Hidden agents cost nothing but their header counters. Idle, only a 1 Hz clock runs (for elapsed times).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from typing import Any, TypeVar

from textual import events
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from mc import events as ev
from mc.agent import Agent
from mc.client import ClientError
from mc.config import AgentConfig, Config
from mc.fleet import Fleet, FleetError, FleetLocked
from mc.tui.compare import CompareScreen, group_members, groups_to_pick
from mc.tui.screens import (
    DECISION_ACTIONS,
    ConfirmScreen,
    FleetScreen,
    HelpScreen,
    KillScreen,
    MergeScreen,
    NewAgentScreen,
    TextPrompt,
    ZoomScreen,
)

#: Seconds between a change and its drain into the visible panes (~4 Hz at most).
DRAIN_INTERVAL = 0.22

#: Actions that make sense only on the fleet view or the zoom (not in a dialog).
VIEW_ACTIONS = DECISION_ACTIONS | {"next_decision", "compare", "help", "quit"}

#: Seconds keys typed while a dialog opens are held at most (then they are delivered wherever focus is).
TYPEAHEAD_HOLD = 2.0

_Action = TypeVar("_Action", bound=Callable[..., Any])


def decision(action: _Action) -> _Action:
    """A key that changes the fleet: in a read-only monitor it says where decisions are taken instead."""

    @functools.wraps(action)
    def run(self: MissionControl, *args: Any) -> Any:
        if self.monitor:
            self.notify_read_only()
            return None
        return action(self, *args)

    return run  # type: ignore[return-value]


_KEY_NAMES = {"question_mark": "?", "escape": "esc", "space": "space", "enter": "enter"}


class MissionControl(App[int]):
    """Mission control for a fleet of coding agents."""

    CSS_PATH = "mc.tcss"
    TITLE = "missionctl"

    # Every key of the fleet view and the zoom is a priority binding: it acts the moment it arrives, in the
    # order it was typed. (A non-priority binding acts only once its key has bubbled back up from the focused
    # widget; keys typed right after it would overtake it, and `2 a` could approve agent 1.)
    BINDINGS = [
        Binding("a", "approve", "Approve", id="approve", priority=True),
        Binding("A", "approve_all", "Approve + same kind", id="approve_all", show=False, priority=True),
        Binding("d", "deny", "Deny", id="deny", priority=True),
        Binding("r", "redirect", "Redirect", id="redirect", priority=True),
        Binding("i", "interrupt", "Interrupt", id="interrupt", priority=True),
        Binding("R", "resume", "Resume", id="resume", show=False, priority=True),
        Binding("K", "kill", "Kill", id="kill", show=False, priority=True),
        Binding("n", "new", "New", id="new", priority=True),
        Binding("m", "merge", "Merge", id="merge", priority=True),
        Binding("x", "discard", "Discard", id="discard", show=False, priority=True),
        Binding("t", "run_checks", "Check", id="run_checks", show=False, priority=True),
        Binding("f", "fix_checks", "Fix", id="fix_checks", show=False, priority=True),
        Binding("space", "next_decision", "Next", id="next_decision", priority=True),
        Binding("b", "compare", "Compare", id="compare", show=False, priority=True),
        Binding("question_mark", "help", "Help", id="help", priority=True),
        Binding("q", "quit", "Quit", id="quit", priority=True),
    ]

    def __init__(
        self,
        fleet: Fleet,
        *,
        monitor: bool = False,
        spawn_configured: bool = False,
        demo: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.fleet: Fleet = fleet
        self.config: Config = fleet.config
        self.monitor = monitor or fleet.readonly
        self.spawn_on_open = spawn_configured
        self.demo = demo
        self._clock = clock
        self.selected: str | None = None
        self._zoom: ZoomScreen | None = None
        """The one zoom screen, kept (installed) once opened: entering it again composes nothing."""
        self.bells = 0
        """How many times the bell rang (an agent started needing a decision)."""
        self.opened = False
        self._dirty: set[str] = set()
        self._diff_dirty: set[str] = set()
        self._drain_armed = False
        self._closed = False
        self._keys = dict(self.config.ui.keys)
        self.farewell = ""
        """What to say on the terminal after the window closes (detached, stopped)."""
        self.signals: tuple[int, ...] = ()
        """Signals that detach this window cleanly (set by run_tui: a test's app leaves the process's own)."""
        self._typeahead: list[events.Key | events.Paste] | None = None
        """Keys typed (and text pasted) while a dialog opens, held until its first field has focus (None: not
        holding)."""
        self._typeahead_timer: Any = None

    # -- life cycle ------------------------------------------------------------------------------
    def get_default_screen(self) -> Screen:
        return FleetScreen()

    async def on_mount(self) -> None:
        if self._keys:
            self.set_keymap(self._keys)
        loop = asyncio.get_running_loop()
        for sig in self.signals:
            loop.add_signal_handler(sig, self._on_signal)
        try:
            await self.fleet.open()
        except FleetLocked as exc:  # owned by a process that is not a fleet server: it has no stream to follow
            self.exit(2, message=f"missionctl: {exc}")
            return
        except (FleetError, ClientError) as exc:
            self.exit(2, message=f"missionctl: {exc}")
            return
        self.monitor = self.monitor or self.fleet.readonly
        self.fleet.add_listener(self._on_event)
        on_connection = getattr(self.fleet, "on_connection", None)
        if on_connection is not None:  # a fleet server: say when it goes away and when it is back
            on_connection(lambda up: self.call_later(self._server_connection, up))
        agents = self.fleet.list()
        waiting = self.fleet.next_needing_decision()
        self.selected = waiting.id if waiting else (agents[0].id if agents else None)
        self.opened = True
        screen = self.fleet_screen()
        if screen is not None:
            screen.topbar.show(self)
            screen.relayout(force=True)
        self.set_interval(1.0, self._tick)
        if self.spawn_on_open and not self.monitor:
            self.run_worker(self._spawn_configured(), group="fleet")

    def _server_connection(self, up: bool) -> None:
        if up:
            self.notify("the fleet server is back: reconnected", timeout=4)
            self._dirty.update(a.id for a in self.agents())
            if not self._drain_armed and not self._closed:
                self._drain_armed = True
                self._arm_drain()
        else:
            self.notify(
                "the fleet server is gone: reconnecting… (the next `missionctl` command starts it again)",
                severity="error",
                timeout=30,
            )

    async def _spawn_configured(self) -> None:
        await self._guard(self.fleet.spawn_configured())

    async def close_fleet(self) -> None:
        """Stop listening and close the fleet (its state stays on disk). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self.fleet.remove_listener(self._on_event)
        if self.opened:
            await self.fleet.close()

    async def on_unmount(self) -> None:
        await self.close_fleet()

    # -- typeahead -------------------------------------------------------------------------------
    async def on_event(self, event: events.Event) -> None:
        held = isinstance(event, (events.Key, events.Paste)) and not event.is_forwarded
        if held and self._typeahead is not None:
            self._typeahead.append(event)  # a dialog is opening: its first field gets this once it has focus
            return
        await super().on_event(event)

    def hold_keys(self) -> None:
        """Hold the keys typed from now on until `release_keys` (a dialog is about to open)."""
        if self._typeahead is None:
            self._typeahead = []
        if self._typeahead_timer is not None:
            self._typeahead_timer.stop()
        self._typeahead_timer = self.set_timer(TYPEAHEAD_HOLD, self.release_keys)

    def release_keys(self) -> None:
        """Deliver the held keys, in order, before any key typed after them (called once a dialog has focus)."""
        if self._typeahead is not None:
            self.call_later(self._replay_keys)

    async def _replay_keys(self) -> None:
        held, self._typeahead = self._typeahead or [], None
        if self._typeahead_timer is not None:
            self._typeahead_timer.stop()
            self._typeahead_timer = None
        for index, key in enumerate(held):
            await super().on_event(key)
            if self._typeahead is not None:  # that key opened another dialog: the rest wait for it
                self._typeahead[:0] = held[index + 1 :]
                return

    def open_dialog(self, screen: Screen[Any], callback: Callable[[Any], None] | None = None) -> None:
        """Push a dialog; what is typed until its first field has focus goes there (see mc.tui.screens.Dialog)."""
        self.hold_keys()
        self.push_screen(screen, callback)

    def decision_place(self) -> str:
        """Where a read-only monitor's engineer decides instead (for its notes and header)."""
        if getattr(self.fleet, "client", None) is not None:  # attached to a fleet server: any window may decide
            return "any window opened without --monitor, or `missionctl approve NAME`"
        owner = self.fleet.owner_pid
        return f"the window of process {owner}" if owner else "the window that drives the fleet"

    def notify_read_only(self) -> None:
        self.notify(f"read-only monitor: decisions are taken in {self.decision_place()}", severity="warning")

    # -- state helpers ---------------------------------------------------------------------------
    def now(self) -> float:
        return self._clock()

    def agents(self) -> list[Agent]:
        return self.fleet.list() if self.opened else []

    def index_of(self, agent_id: str | None) -> int:
        ids = [a.id for a in self.agents()]
        return ids.index(agent_id) + 1 if agent_id in ids else 0

    def fleet_screen(self) -> FleetScreen | None:
        for screen in self.screen_stack:
            if isinstance(screen, FleetScreen):
                return screen
        return None

    def view_screen(self) -> FleetScreen | ZoomScreen | CompareScreen | None:
        """The topmost fleet, zoom or compare screen (a dialog may sit on top of it)."""
        for screen in reversed(self.screen_stack):
            if isinstance(screen, (FleetScreen, ZoomScreen, CompareScreen)):
                return screen
        return None

    def current_id(self) -> str | None:
        """The agent the keys act on: the zoomed one, the one chosen in a compare view, else the selected one."""
        view = self.view_screen()
        if isinstance(view, ZoomScreen):
            return view.agent_id
        if isinstance(view, CompareScreen):
            chosen = view.selected_agent()
            return chosen.id if chosen is not None else None
        if self.selected is None or self.selected not in self.fleet.agents:
            agents = self.agents()
            self.selected = agents[0].id if agents else None
        return self.selected

    def current(self) -> Agent | None:
        agent_id = self.current_id()
        return self.fleet.agents.get(agent_id) if agent_id else None

    def key_hint(self, binding_id: str) -> str:
        """The key that triggers a binding, as remapped by [ui.keys] (first key when several)."""
        key = self._keys.get(binding_id) or _default_keys().get(binding_id, "?")
        first = key.split(",")[0].strip()
        return _KEY_NAMES.get(first, first)

    def help_rows(self) -> list[tuple[str, str, str]]:
        """(binding id, keys, description) of every binding, as remapped."""
        rows = []
        seen_agents = False
        seen: set[str] = set()
        for binding in _all_bindings():
            if binding.id is None:
                continue
            if binding.id.startswith("agent_"):
                if seen_agents:
                    continue
                seen_agents = True
                rows.append(("agent_1 … agent_9", "1-9", "select agent 1 to 9"))
                continue
            keys = self._keys.get(binding.id) or binding.key
            shown = ", ".join(_KEY_NAMES.get(k.strip(), k.strip()) for k in keys.split(","))
            if binding.id in seen:  # the same id on several screens (left, zoom, back …): one row
                continue
            seen.add(binding.id)
            rows.append((binding.id, shown, HELP_TEXT.get(binding.id) or binding.tooltip or binding.description))
        rows.append(("", "ctrl+p", "command palette: every action, and jump to any agent"))
        return rows

    def select(self, agent_id: str) -> None:
        self.selected = agent_id
        view = self.view_screen()
        if isinstance(view, ZoomScreen):
            view.show_agent(agent_id)
        elif isinstance(view, CompareScreen):
            if agent_id in [a.id for a in view.members()]:
                view.selected = agent_id
                view.sync(None)
            elif self.screen is view:  # an agent this view does not show: back to where it is
                self.pop_screen()
        screen = self.fleet_screen()
        if screen is not None:
            screen.sync(set())

    def zoom(self, agent_id: str) -> None:
        """Open the zoom on `agent_id`. One ZoomScreen lives as long as the app: entering it again mounts and
        styles nothing, and its log takes only the lines added since it last showed that agent."""
        self.selected = agent_id
        screen = self._zoom
        if screen is None:
            self._zoom = screen = ZoomScreen(agent_id)
            self.install_screen(screen, name="zoom")
        elif screen in self.screen_stack:  # under another view (the compare view, say): back down to it
            while self.screen is not screen:
                self.pop_screen()
            screen.show_agent(agent_id)
            return
        else:
            screen.reopen(agent_id)
        self.push_screen("zoom")

    # -- events and the drain --------------------------------------------------------------------
    def _on_event(self, event: ev.Event) -> None:
        """Fleet listener: mark the agent dirty; ring the bell when it starts needing a decision."""
        self._dirty.add(event.agent)
        if isinstance(event, ev.DiffChanged):
            self._diff_dirty.add(event.agent)
        elif isinstance(event, ev.ApprovalRequested):
            agent = self.fleet.agents.get(event.agent)
            if agent is not None and len(agent.pending) == 1:
                self.bells += 1
                if self.config.ui.bell:
                    self.bell()
        if not self._drain_armed and not self._closed:
            # the listener may run outside the app's context (a fleet callback): arm the timer from a message
            self._drain_armed = True
            self.call_later(self._arm_drain)

    def _arm_drain(self) -> None:
        if not self._closed:
            self.set_timer(DRAIN_INTERVAL, self._drain)

    def _drain(self) -> None:
        self._drain_armed = False
        dirty, self._dirty = self._dirty, set()
        diff_dirty, self._diff_dirty = self._diff_dirty, set()
        if self._closed:
            return
        if self.selected is None or self.selected not in self.fleet.agents:
            agents = self.agents()
            self.selected = agents[0].id if agents else None
        view = self.view_screen()
        if isinstance(view, ZoomScreen):
            if view.agent_id in dirty or view.agent_id in diff_dirty:
                view.sync(view.agent_id in diff_dirty)
        elif isinstance(view, FleetScreen):
            view.sync(dirty)
        elif isinstance(view, CompareScreen):
            view.sync(dirty | diff_dirty)

    def _tick(self) -> None:
        if self._closed or not any(a.status in ev.WORKING_STATUSES for a in self.agents()):
            return
        view = self.view_screen()
        if view is not None:
            view.tick()

    # -- commands --------------------------------------------------------------------------------
    async def _guard(self, work: Awaitable[Any], done: str = "") -> Any:
        """Run one fleet command; its FleetError becomes a one-line notification, never a crash."""
        try:
            result = await work
        except (FleetError, ClientError) as exc:
            self.notify(str(exc), severity="error", timeout=8)
            return None
        except Exception as exc:  # a bug below must not take the UI down
            self.notify(f"{type(exc).__name__}: {exc}", severity="error", timeout=8)
            return None
        if done:
            self.notify(done)
        return result

    def _command(self, work: Awaitable[Any], done: str = "") -> None:
        self.run_worker(self._guard(work, done), group="fleet")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # a dialog is open: the key is the dialog's (typed into a field, say)
        return not (action in VIEW_ACTIONS and self.view_screen() is not self.screen)

    def _need_agent(self) -> Agent | None:
        agent = self.current()
        if agent is None:
            self.notify("no agent selected", severity="warning")
        return agent

    @decision
    def action_approve(self) -> None:
        if (agent := self._need_agent()) is not None:
            req = agent.oldest_pending()  # the question on screen: never one that came after it
            self._command(self.fleet.approve(agent.id, req.approval_id if req else None))

    @decision
    def action_approve_all(self) -> None:
        if (agent := self._need_agent()) is not None:
            req = agent.oldest_pending()
            what = req.remember_key or req.kind if req else ""
            done = f"{agent.name}: approved; {what} calls run without asking for the rest of this run" if req else ""
            self._command(self.fleet.approve(agent.id, req.approval_id if req else None, remember=True), done)

    @decision
    def action_deny(self) -> None:
        agent = self._need_agent()
        if agent is None:
            return
        req = agent.oldest_pending()
        if req is None:
            self.notify(f"{agent.name} has no pending approval", severity="warning")
            return

        def answer(reason: str | None) -> None:
            if reason is not None:
                self._command(self.fleet.deny(agent.id, req.approval_id, reason=reason))

        self.open_dialog(
            TextPrompt(f"Deny {agent.name}: {req.summary}", "reason (optional; the model sees it)"), answer
        )

    @decision
    def action_redirect(self) -> None:
        agent = self._need_agent()
        if agent is None:
            return

        def answer(text: str | None) -> None:
            if text:
                self._command(self.fleet.redirect(agent.id, text), f"{agent.name}: new instruction sent")

        self.open_dialog(
            TextPrompt(f"New instruction for {agent.name}", "what should it do instead?", allow_empty=False), answer
        )

    @decision
    def action_interrupt(self) -> None:
        agent = self._need_agent()
        if agent is None:
            return
        if agent.status in ("interrupted", "failed"):
            self._command(self.fleet.resume(agent.id), f"{agent.name}: resumed")
        else:
            self._command(
                self.fleet.interrupt(agent.id), f"{agent.name}: interrupted ({self.key_hint('interrupt')} resumes)"
            )

    @decision
    def action_resume(self) -> None:
        if (agent := self._need_agent()) is not None:
            self._command(self.fleet.resume(agent.id), f"{agent.name}: resumed")

    @decision
    def action_kill(self) -> None:
        agent = self._need_agent()
        if agent is None:
            return

        def answer(choice: tuple[bool, bool] | None) -> None:
            if choice:
                discard = choice[1]
                done = f"{agent.name}: killed" + (" and discarded" if discard else "; its worktree is kept")
                self._command(self.fleet.kill(agent.id, discard=discard), done)

        self.open_dialog(KillScreen(agent.name), answer)

    @decision
    def action_new(self) -> None:
        def answer(spec: AgentConfig | None) -> None:
            if spec is not None:
                self._command(self._spawn(spec))

        self.open_dialog(NewAgentScreen(self.fleet.base_branch), answer)

    async def _spawn(self, spec: AgentConfig) -> None:
        if spec.is_group():
            agents = await self.fleet.spawn_copies(spec)
            self.select(agents[0].id)
            self.notify(
                f"{', '.join(a.name for a in agents)}: started in group {agents[0].group} "
                f"({self.key_hint('compare')} compares them)"
            )
            return
        agent = await self.fleet.spawn(spec)
        self.select(agent.id)
        self.notify(f"{agent.name}: started on {agent.branch}")

    @decision
    def action_merge(self) -> None:
        agent = self._need_agent()
        if agent is None:
            return
        if agent.status in ev.ACTIVE_STATUSES:
            self.notify(
                f"{agent.name} is {agent.status}: interrupt it ({self.key_hint('interrupt')}) or let it finish first",
                severity="warning",
            )
            return
        if agent.status in ev.DONE_STATUSES:
            self.notify(f"{agent.name} is already {agent.status}: there is nothing to merge", severity="warning")
            return
        self.hold_keys()  # the dialog opens once the diff is fresh: f, g or s typed meanwhile are its keys
        self.run_worker(self._merge_flow(agent), group="fleet")

    async def _merge_flow(self, agent: Agent) -> None:
        try:
            diff = await self.fleet.refresh_diff(agent.id)
        except Exception:
            diff = self.fleet.diff(agent.id)
        if diff is not None and not diff.files:
            self.notify(
                f"{agent.name} has no changes against {agent.base_ref}: there is nothing to merge",
                severity="warning",
            )
            self.release_keys()
            return

        def answer(mode: str | None) -> None:
            if not mode:
                return
            flags = self.fleet.agents.get(agent.id, agent).flags
            if not flags:
                self._command(self._merge(agent, mode))
                return

            def confirmed(yes: bool | None) -> None:
                if yes:
                    self._command(self._merge(agent, mode))

            self.open_dialog(ConfirmScreen(flags_question(agent.name, flags), "Merge anyway"), confirmed)

        self.open_dialog(MergeScreen(agent, diff, self.config.repo.merge), answer)

    async def _merge(self, agent: Agent, mode: str) -> None:
        result = await self.fleet.merge(agent.id, mode=mode)
        if result.ok:
            self.notify(f"{agent.name}: merged into {agent.base_ref} ({mode}) as {(result.commit or '')[:10]}")
        else:
            files = ", ".join(result.conflicts) or "?"
            self.notify(
                f"{agent.name}: merge conflicts in {files}; nothing changed. {result.message}",
                severity="error",
                timeout=12,
            )

    @decision
    def action_discard(self) -> None:
        agent = self._need_agent()
        if agent is None:
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self._command(self._discard(agent))

        self.open_dialog(
            ConfirmScreen(
                f"Discard {agent.name}? Its worktree and branch go away; a snapshot ref keeps the work.", "Discard"
            ),
            answer,
        )

    async def _discard(self, agent: Agent) -> None:
        ref = await self.fleet.discard(agent.id)
        self.notify(f"{agent.name}: discarded; the work is kept at {ref}")

    @decision
    def action_run_checks(self) -> None:
        agent = self._need_agent()
        if agent is None:
            return
        if agent.status in ev.DONE_STATUSES:
            self.notify(f"{agent.name} is {agent.status}: there is nothing to check", severity="warning")
            return
        self._command(self.fleet.run_checks(agent.id), f"{agent.name}: checks started")

    @decision
    def action_fix_checks(self) -> None:
        agent = self._need_agent()
        if agent is None:
            return
        if agent.check.state != "failed":
            self.notify(
                f"{agent.name}'s checks have not failed ({agent.check.summary()}): "
                f"{self.key_hint('run_checks')} runs them",
                severity="warning",
            )
            return
        n = len(agent.check.failing) or agent.check.failed + agent.check.errors
        done = f"{agent.name}: the {n} failing test{'s' if n != 1 else ''} went back to it"
        self._command(self.fleet.fix_checks(agent.id), done)

    def action_next_decision(self) -> None:
        """The next decision: an agent's waiting question (the oldest first), then a group whose agents have all
        settled (best of N), which opens its compare view to pick one."""
        view = self.view_screen()
        decisions = [("agent", a.id) for a in self.fleet.needing_decision()]
        decisions += [("group", g) for g in groups_to_pick(self.agents())]
        if not decisions:
            self.notify("nobody is waiting for a decision")
            return
        here = ("group", view.group) if isinstance(view, CompareScreen) else ("agent", self.current_id() or "")
        nxt = decisions[(decisions.index(here) + 1) % len(decisions)] if here in decisions else decisions[0]
        kind, name = nxt
        if nxt == here and kind == "group":
            self.notify(f"nothing else waits for a decision: pick one of {name}")
        elif kind == "group":
            self.compare(name)
        else:
            if isinstance(view, CompareScreen):
                self.pop_screen()
            self.select(name)

    def action_compare(self) -> None:
        """Best of N: the compare view of the current agent's group."""
        agent = self._need_agent()
        if agent is None:
            return
        if not agent.group or len(group_members(self.agents(), agent.group)) < 2:
            self.notify(
                f"{agent.name} is not one of several copies of a task: start copies with {self.key_hint('new')} "
                "(copies) or copies = N in the config",
                severity="warning",
            )
            return
        view = self.view_screen()
        if not (isinstance(view, CompareScreen) and view.group == agent.group):
            self.compare(agent.group, agent.id)

    def compare(self, group: str, selected: str | None = None) -> None:
        """Open the compare view of `group` (the agents of one best-of-N task, side by side)."""
        self.push_screen(CompareScreen(group, selected))

    def action_help(self) -> None:
        self.open_dialog(HelpScreen())

    @property
    def served(self) -> bool:
        """True when the fleet runs in a fleet server (this window only attaches to it)."""
        return getattr(self.fleet, "client", None) is not None

    async def action_quit(self) -> None:
        running = [a.name for a in self.agents() if a.status in ev.WORKING_STATUSES]
        if self.served:  # the fleet lives on in its server: quitting only detaches this window
            self.farewell = (
                f"missionctl: detached; the fleet keeps working ({len(running)} running). `missionctl` attaches "
                "again, `missionctl stop` ends it."
                if not self.monitor
                else ""
            )
            await self._quit_now()
            return
        if running and not self.monitor:

            def answer(yes: bool | None) -> None:
                if yes:
                    self.call_later(self._leave)

            self.open_dialog(
                ConfirmScreen(
                    f"{len(running)} agent{'s' if len(running) != 1 else ''} still running ({', '.join(running)}). "
                    "Quit? They stop now and come back interrupted, resumable; everything stays on disk.",
                    "Quit",
                ),
                answer,
            )
            return
        await self._quit_now()

    async def _quit_now(self) -> None:
        await self.close_fleet()
        self.exit(0)

    def action_stop_fleet(self) -> None:
        """Stop the fleet server itself (with a confirmation): every agent ends and comes back interrupted."""
        if not self.served:
            self.notify("this window runs the fleet itself: quit (q) to stop it", severity="warning")
            return
        running = [a.name for a in self.agents() if a.status in ev.WORKING_STATUSES]

        def answer(yes: bool | None) -> None:
            if yes:
                self.run_worker(self._stop_fleet_now(len(running)), group="fleet")

        self.open_dialog(
            ConfirmScreen(
                f"Stop the fleet? Every agent ends ({len(running)} running come back interrupted, resumable); "
                "everything stays on disk.",
                "Stop the fleet",
            ),
            answer,
        )

    async def _stop_fleet_now(self, running: int) -> None:
        if await self._guard(self.fleet.stop(), "") is None and not self._closed:
            self.farewell = f"missionctl: the fleet stopped; {running} running agent(s) come back interrupted"
            self.call_later(self._leave)

    def _on_signal(self) -> None:
        """SIGTERM or SIGHUP (the terminal went away): detach cleanly, giving the terminal back as it was. Called
        by the event loop outside the app's context: the work is handed to the app as a message."""
        self.farewell = "missionctl: detached on a signal; the fleet keeps working" if self.served else ""
        self.call_later(self._leave)

    async def _leave(self) -> None:
        """Detach and end the app, as a message of the app's own (exiting from inside a worker hangs Textual)."""
        await self.close_fleet()
        self.exit(0)

    # -- command palette -------------------------------------------------------------------------
    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        for command in super().get_system_commands(screen):
            # "Keys" is ours (every key of mission control, as remapped); Textual's shows widget internals.
            # "Theme": the colours are chosen for this app's dark background (tests/test_tui_contrast.py).
            if command.title not in ("Keys", "Theme"):
                yield command
        for action, title, text in PALETTE:
            if self.monitor and action in DECISION_ACTIONS:
                continue
            yield SystemCommand(title, text, partial(self.run_worker, partial(self.run_action, action)))
        for agent in self.agents():
            yield SystemCommand(
                f"Zoom into {agent.name}", f"{agent.status}: {agent.task[:60]}", partial(self.zoom, agent.id)
            )
            yield SystemCommand(f"Select {agent.name}", f"{agent.status}", partial(self.select, agent.id))


HELP_TEXT = {
    "approve": "approve the pending call of this agent",
    "approve_all": (
        "approve it, and calls of the same kind for the rest of this agent's run; such a command (like one in "
        "allow_commands) runs what the agent wrote too: pytest runs its conftest.py"
    ),
    "deny": "deny the pending call (with an optional reason the model sees)",
    "redirect": "give the agent a new instruction (stops the current turn)",
    "interrupt": "interrupt this agent; on an interrupted or failed agent: resume it",
    "resume": "resume an interrupted or failed agent",
    "kill": "kill the agent and every process it started (asks; option to discard)",
    "new": "start a new agent (name, task, runner, model, base, policy)",
    "merge": "merge the agent's work into its base branch (shows the diff; ff, merge or squash)",
    "discard": "discard the agent's worktree and branch (asks; a snapshot ref keeps the work)",
    "run_checks": "run the agent's checks now: the tests its diff touches ([checks] in the config)",
    "fix_checks": "send the failing tests' output back to the agent as one instruction: fix them",
    "checks_view": "zoom: show the checks (what ran, why, what failed and its output) in place of the diff",
    "next_flag": "zoom: jump to the next risk flag in the diff",
    "prev_flag": "zoom: jump to the previous risk flag in the diff",
    "next_decision": "jump to the next agent that needs a decision, or to a group of copies that all settled",
    "compare": "best of N: the copies of this agent's task side by side, to pick the one to merge",
    "help": "this help",
    "quit": "quit (asks when agents are running; the fleet stays on disk)",
    "left": "previous agent",
    "right": "next agent",
    "up": "agent above (previous in the list)",
    "down": "agent below (next in the list)",
    "zoom": "zoom into the agent: log and diff",
    "log_up": "scroll the selected agent's log up (pauses following)",
    "log_down": "scroll the selected agent's log down",
    "follow": "follow the log again (jump to its end)",
    "back": "zoom, compare: back",
    "history": "zoom: load the whole log from disk (memory keeps the last 5,000 lines) and go to its top",
}

PALETTE = [
    ("approve", "Approve", "approve the pending call of the selected agent"),
    ("approve_all", "Approve all like it", "approve, and the same kind of call for the rest of the run"),
    ("deny", "Deny", "deny the pending call, with a reason"),
    ("redirect", "Redirect", "give the selected agent a new instruction"),
    ("interrupt", "Interrupt / resume", "interrupt the selected agent (resume when interrupted)"),
    ("resume", "Resume", "resume an interrupted or failed agent"),
    ("kill", "Kill", "kill the selected agent"),
    ("new", "New agent", "start a new agent"),
    ("merge", "Merge", "merge the selected agent's work into its base branch"),
    ("discard", "Discard", "discard the selected agent's worktree and branch"),
    ("next_decision", "Next waiting agent", "jump to the next agent that needs a decision"),
    ("compare", "Compare the group", "best of N: the copies of the selected agent's task side by side"),
    ("help", "Keys", "show every key"),
    ("stop_fleet", "Stop the fleet", "end every agent and the fleet server (running agents come back interrupted)"),
]


def flags_question(name: str, flags: Sequence[ev.Flag], shown: int = 6) -> str:
    """The merge's one more question when the diff is flagged: every flag named (the first `shown`)."""
    named = [f"{f.rule} ({f.where})" for f in flags[:shown]]
    more = f" and {len(flags) - shown} more" if len(flags) > shown else ""
    n = len(flags)
    return f"{name}'s diff has {n} risk flag{'s' if n != 1 else ''}: {', '.join(named)}{more}. Merge it anyway?"


def _all_bindings() -> list[Binding]:
    out = []
    for source in (FleetScreen.BINDINGS, MissionControl.BINDINGS, ZoomScreen.BINDINGS, CompareScreen.BINDINGS):
        out.extend(b for b in source if isinstance(b, Binding))
    return out


def _default_keys() -> dict[str, str]:
    return {b.id: b.key for b in _all_bindings() if b.id}


def run_tui(fleet: Any, *, monitor: bool = False, spawn_configured: bool = False, demo: Any = None) -> int:
    """Open mission control on `fleet`: a RemoteFleet attached to the repository's fleet server (or a Fleet run in
    this process). Read-only when monitor."""
    import signal
    import sys

    app = MissionControl(fleet, monitor=monitor, spawn_configured=spawn_configured and not monitor, demo=demo)

    app.signals = (signal.SIGTERM, signal.SIGHUP)
    app.run()
    if app.farewell:
        print(app.farewell, file=sys.stderr)
    return app.return_code or 0


__all__ = ["MissionControl", "run_tui"]
