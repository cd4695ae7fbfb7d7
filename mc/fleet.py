"""The Fleet: owns the agents; the one API the fleet server (mc/server) wraps, and tests drive in-process.

Every command is a coroutine that runs on the caller's event loop; git, disk and process work goes to
threads. Every event is appended to its agent's log on disk first, folded into the agent's state, and
then handed to every subscriber. A read-only fleet reads the state of a fleet another process owns, as
its files are when it opens (what `missionctl ls` and `doctor` show), and refuses commands; a window that
follows a fleet live is a client of its server's event stream (mc/client).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from mc import cost, procs
from mc import events as ev
from mc.agent import Agent, AgentLog, CheckState, LogLine
from mc.agents import make_runner
from mc.agents.base import Runner, RunnerContext, RunnerError
from mc.checks import Checks, changed_paths, check_agent, fix_message
from mc.config import AgentConfig, Config, agent_name_problem, copies_problem, suggest_name
from mc.flags import FlagScanner, scanner_for
from mc.git import Diff as Diff
from mc.git import DiffScheduler, GitError, MergeResult, Repo
from mc.git.repo import MergeRecovery, fault_point
from mc.review import marks as review_marks
from mc.review import review_text
from mc.store import FleetLocked, LogWriteError, Store, StoreError, atomic_write, demo_scenario
from mc.tools import safe_env
from mc.watch import WorktreeWatcher

log = logging.getLogger(__name__)

__all__ = ["Diff", "Fleet", "FleetError", "FleetLocked", "MergeResult"]

#: Statuses in which an agent's work may be merged or discarded.
SETTLED = ev.SETTLED_STATUSES


#: Events that change what `missionctl ls` shows of an agent (besides its status).
_SHOWN_BY_LS = (
    ev.DiffChanged,
    ev.FlagsChanged,
    ev.Usage,
    ev.ApprovalRequested,
    ev.ApprovalResolved,
    ev.CheckStarted,
    ev.CheckFinished,
)
#: Seconds between two attempts to write what a full disk refused (the failure of an agent, state.toml).
RETRY_WRITES = 1.0
#: Seconds after a change of an agent's numbers (diff, tokens, approvals) before state.toml is written.
SAVE_DELAY = 1.0


class FleetError(Exception):
    """A command the fleet cannot carry out, as one line naming the problem and the fix."""


class LogUnwritable(FleetError):
    """An event could not be written to its agent's log: the agent is stopped `failed` (the message says why)."""


Listener = Callable[[ev.Event], None]


class Fleet:
    """All agents of one repository."""

    def __init__(self, config: Config, *, readonly: bool = False, state_dir: Path | None = None) -> None:
        self.config = config
        self.readonly = readonly
        try:
            self.repo = Repo(config.repo_path())
        except GitError as exc:
            raise FleetError(str(exc)) from None
        self.root = self.repo.root
        self.state_dir = Path(state_dir) if state_dir else self.root / ".mc"
        self.store = Store(self.state_dir)
        self.agents: dict[str, Agent] = {}
        self.specs: dict[str, AgentConfig] = {}
        self.diffs: dict[str, Diff] = {}
        self.base_branch = ""
        self._runners: dict[str, Runner] = {}
        self._listeners: list[Listener] = []
        self._queues: list[asyncio.Queue[ev.Event]] = []
        self._offsets: dict[str, int] = {}
        self._settled = asyncio.Event()
        self._opened = False
        self._lock = asyncio.Lock()
        self._naming = asyncio.Lock()  # copies pick their names and spawn one group at a time
        self.diff_scheduler: DiffScheduler | None = None
        self.watcher: WorktreeWatcher | None = None
        self._fleet_key = hashlib.sha1(str(self.state_dir).encode()).hexdigest()[:10]
        self._preload: asyncio.Task[None] | None = None
        self._unwritten: dict[str, ev.StatusChanged] = {}
        self._bad_transitions: set[tuple[str, str]] = set()
        """Agents stopped because their log refused an event → that failure, shown, to write once the disk can."""
        self._halting: set[str] = set()  # their runner is being stopped: what it still says is dropped
        self._state_unsaved = False
        self._retry: asyncio.TimerHandle | None = None
        self._save_later: asyncio.TimerHandle | None = None
        self._checkpointed: dict[str, int] = {}  # agent → log offset of its last checkpoint
        self._recovery: MergeRecovery | None = None
        self.notices: list[str] = []
        """What the last open found and repaired after a kill (an interrupted merge or spawn), one line each."""
        self.demo_scenario: str | None = None
        """The scenario of a fleet `missionctl demo` started (from its state); None for any other fleet."""
        self._demo_server: Any = None
        self._background: set[asyncio.Task[None]] = set()
        self._broken_listeners: set[Any] = set()
        self._flag_scanners: dict[str, FlagScanner] = {}  # agent → its scanner (which keeps per-file results)
        self._flag_next: dict[str, Diff] = {}  # agent → the newest diff its scan has not read yet
        self._flag_tasks: dict[str, asyncio.Task[None]] = {}
        self._review_tasks: dict[str, asyncio.Task[None]] = {}  # agent → the marking of its last review
        self.checks = Checks(config.checks.parallel)
        """The agents' checks: at most [checks] parallel at once (mc/checks)."""
        self._sigchld: tuple[asyncio.AbstractEventLoop, list[asyncio.TimerHandle]] | None = None

    # -- life cycle ------------------------------------------------------------------------------
    @property
    def worktree_dir(self) -> Path:
        configured = self.config.repo.worktree_dir
        if configured:
            base = Path(self.config.source).parent if self.config.source else self.root
            return (base / os.path.expanduser(configured)).resolve()
        return self.root.parent / f"{self.root.name}.mc-worktrees"

    async def open(self) -> None:
        """Take ownership (or follow, when read-only), rebuild every agent from disk, start watching."""
        if self._opened:
            return
        if not self.readonly:
            try:
                self.store.acquire()
            except FleetLocked:
                raise
            except OSError as exc:
                raise FleetError(f"cannot create the state folder {self.state_dir}: {exc}") from None
            await asyncio.to_thread(self.repo.exclude, "/.mc/")
            if procs.enable_subreaper():
                self._reap_on_sigchld()

        def load() -> None:  # git and disk: off the loop (a large fleet's logs take a while to read)
            self.base_branch = self.config.repo.base or (self.repo.current_branch() or "")
            self._restore()
            if not self.readonly:
                self._recover_git()

        try:
            await asyncio.to_thread(load)
        except StoreError as exc:
            self.store.release()
            raise FleetError(str(exc)) from None
        if self.demo_scenario and not self.readonly:
            await self._serve_demo(self.demo_scenario)
        # The watcher already debounces each worktree; a second debounce here would only add latency.
        self.diff_scheduler = DiffScheduler(on_diff=self._on_diff, on_error=self._on_diff_error, delay=0.0)
        self.watcher = WorktreeWatcher(on_change=self._on_worktree_change)
        await self.watcher.start()
        for agent in self.agents.values():
            if agent.worktree and Path(agent.worktree).is_dir() and agent.status not in ev.DONE_STATUSES:
                self.watcher.add(agent.id, Path(agent.worktree))
                self.request_diff(agent.id)
        if not self.readonly:  # read-only: the fleet as its files are now (what follows it is a client's stream)
            # in the background: the first frame need not wait for the openai SDK's import
            self._preload = asyncio.get_running_loop().create_task(self._preload_runners())
            await self._revive()
        self._opened = True
        self._update_settled()

    async def _preload_runners(self) -> None:
        """Import the runners this fleet uses in a thread: the openai SDK takes ~0.5 s to import, which would
        otherwise stall the event loop at the first spawn."""
        from mc.agents import runner_class

        kinds = {"builtin"} | {a.runner for a in self.agents.values()} | {a.runner for a in self.config.agents}

        def load() -> None:
            for kind in kinds:
                with contextlib.suppress(Exception):
                    runner_class(kind)

        await asyncio.to_thread(load)

    async def _serve_demo(self, scenario: str) -> None:
        """A fleet the demo started plays its scenario again: the scripted server starts on a fresh port and the
        config (so every runner made from now on) points at it. Before any runner exists."""
        from mc.demo import DemoError, serve_demo

        try:
            self._demo_server = await asyncio.to_thread(serve_demo, self.config, scenario, self.root)
        except (DemoError, OSError, RuntimeError) as exc:
            self.store.release()
            raise FleetError(f"the demo's model server cannot start: {exc}") from None

    async def _runners_loaded(self) -> None:
        """Wait (without blocking the loop) until the background import of the runners is done."""
        if self._preload is not None:
            with contextlib.suppress(Exception):
                await self._preload

    def _restore(self) -> None:
        state = self.store.load_state()
        self.demo_scenario = demo_scenario(state)
        ids = list(state.get("agents", {}))
        ids += [i for i in self.store.agent_ids_on_disk() if i not in ids]
        for agent_id in ids:
            loaded = self._load_agent(agent_id)
            if loaded is None:
                continue
            agent = self.agents[agent_id] = loaded
            meta = state.get("agents", {}).get(agent_id, {})
            self.specs[agent_id] = AgentConfig(
                name=agent.name,
                task=agent.task,
                runner=agent.runner,
                model=agent.model,
                policy=agent.policy,
                command=str(meta.get("command", "")),
                base=agent.base_ref,
                group=agent.group,
                budget_tokens=agent.budget_tokens,
                budget_cost=agent.budget_cost,
            )

    def _load_agent(self, agent_id: str) -> Agent | None:
        """The agent its log makes (None for an empty log): its checkpoint, when it still belongs to the log,
        and the events logged after it, read a line at a time, so that neither the time nor the memory an open
        takes follows the size of the log. Blocking."""
        agent: Agent | None = None
        offset = 0
        checkpoint = self.store.load_checkpoint(agent_id)
        if checkpoint is not None:
            try:
                agent = Agent.from_snapshot(checkpoint[1])
                offset = checkpoint[0]
            except (TypeError, ValueError, KeyError, AttributeError):  # written by another version: replay
                agent = None
            if agent is not None and agent.id != agent_id:
                agent, offset = None, 0
        if agent is not None:
            self._checkpointed[agent_id] = offset
        reader = self.store.reader(agent_id, offset)
        for event in reader:
            if agent is None:
                agent = Agent(id=agent_id)
            agent.apply(event)
        self._offsets[agent_id] = reader.offset
        return agent

    async def _revive(self) -> None:
        """After a restart: leftover processes die, mid-turn agents become interrupted, pending approvals wait."""
        for agent in self.agents.values():
            if agent.check.state == "running":  # its processes die with the agent's, below
                self._try_emit(
                    ev.CheckFinished(
                        agent=agent.id,
                        check_id=agent.check.check_id,
                        outcome="error",
                        reason="stopped: mission control stopped while it ran",
                        digest=agent.check.digest,
                    )
                )
        for agent_id, cut in sorted(self.store.repaired.items()):
            if agent_id in self.agents:
                self._try_emit(
                    ev.ErrorEvent(
                        agent=agent_id,
                        message=f"its log ended in half a line ({cut} bytes of a write that a crash or a full disk "
                        "cut short): that line was dropped",
                    )
                )
        live = [a for a in self.agents.values() if a.status not in ev.FINAL_STATUSES or a.status == "failed"]
        tags = [self._tag(a.id) for a in live]
        await asyncio.to_thread(lambda: [procs.kill_tagged(tag) for tag in tags])
        for agent in live:
            if agent.status in ev.WORKING_STATUSES and agent.pending:
                # killed after the question was written and before `waiting` was: it still waits on it
                await self._runners_loaded()
                runner = self._runner(agent.id)
                if runner.keeps_questions:
                    self._try_emit(
                        ev.StatusChanged(
                            agent=agent.id,
                            status="waiting",
                            previous=agent.status,
                            reason="mission control stopped as it asked; the question waits again",
                        )
                    )
            if agent.status in ev.WORKING_STATUSES:
                self._try_emit(
                    ev.StatusChanged(
                        agent=agent.id,
                        status="interrupted",
                        previous=agent.status,
                        reason="mission control stopped while it ran; resume it with one key",
                    )
                )
            elif agent.status == "waiting":
                if agent.pending:
                    await self._runners_loaded()
                    runner = self._runner(agent.id)
                    await runner.restore()
                else:
                    self._try_emit(ev.StatusChanged(agent=agent.id, status="interrupted", previous="waiting"))
        await self._apply_merge_recovery()
        self._save_state()

    @property
    def _spawn_records(self) -> Path:
        return self.state_dir / "spawning"

    def _recover_git(self) -> None:
        """After a kill (blocking): finish or undo an interrupted merge; take back what a spawn that was
        interrupted before its agent was recorded left in git, so that the agent can start again."""
        try:
            self._recovery = self.repo.recover_merge()
        except GitError as exc:
            self.notices.append(f"an interrupted merge could not be recovered: {exc}")
        if self._recovery is not None:
            self.notices.append(self._recovery.message)
        folder = self._spawn_records
        for record in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            name = record.stem
            try:
                data = json.loads(record.read_text(encoding="utf-8"))
                if name not in self.agents:
                    left = self.repo.remove_unstarted(
                        Path(data["worktree"]), data["branch"], data["base_commit"], keep_branch=bool(data["reuse"])
                    )
                    extra = f" ({'; '.join(left)})" if left else ""
                    self.notices.append(
                        f"agent {name} was being created when mission control stopped: what it had made was "
                        f"taken back{extra}; spawn it again"
                    )
            except (OSError, ValueError, KeyError, TypeError, GitError) as exc:
                self.notices.append(f"agent {name}: an interrupted spawn could not be cleaned up: {exc}")
                continue
            record.unlink(missing_ok=True)

    async def _apply_merge_recovery(self) -> None:
        """Tell the agent whose merge was interrupted what became of it; a completed merge makes it merged."""
        rec, self._recovery = self._recovery, None
        if rec is None:
            return
        agent = next(
            (a for a in self.agents.values() if rec.branch and a.branch == rec.branch and a.status != "discarded"),
            None,
        )
        if agent is None:
            return
        self.emit(ev.ErrorEvent(agent=agent.id, message=rec.message))
        if rec.outcome == "completed" and agent.status != "merged":
            self.emit(ev.Merged(agent=agent.id, mode=rec.mode, commit=rec.commit, into=rec.into))
            self.emit(ev.StatusChanged(agent=agent.id, status="merged", previous=agent.status, reason=rec.message))
            if self.watcher is not None:
                self.watcher.remove(agent.id)
            if agent.worktree and Path(agent.worktree).is_dir():
                with contextlib.suppress(GitError):
                    await asyncio.to_thread(self.repo.remove_worktree, Path(agent.worktree), force=False)

    async def close(self) -> None:
        """Stop runners and watchers and release the fleet. State stays on disk for the next start."""
        await self.checks.close("mission control was closed while it ran")
        for agent_id, runner in list(self._runners.items()):
            agent = self.agents[agent_id]
            was = agent.status
            with contextlib.suppress(Exception):
                await runner.detach()
            await asyncio.to_thread(procs.kill_tagged, self._tag(agent_id))
            if was in ev.WORKING_STATUSES and not self.readonly:
                self._try_emit(
                    ev.StatusChanged(
                        agent=agent_id,
                        status="interrupted",
                        previous=was,
                        reason="mission control was closed while it ran; resume it with one key",
                    )
                )
        self._runners.clear()
        for handle in (self._retry, self._save_later):
            if handle is not None:
                handle.cancel()
        self._retry = self._save_later = None
        for task in list(self._background):
            task.cancel()
        if self._sigchld is not None:
            loop, pending = self._sigchld
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signal.SIGCHLD)
            for handle in pending:
                handle.cancel()
            self._sigchld = None
        if not self.readonly:  # nothing the subreaper adopted outlives the fleet
            await asyncio.to_thread(procs.end_adopted)
        if self.watcher is not None:
            await self.watcher.stop()
        if self.diff_scheduler is not None:
            await self.diff_scheduler.close()
        if not self.readonly and self._opened:
            for agent_id in list(self._unwritten):  # a last attempt: the disk may take it now
                self._write_failure(agent_id)
            self._save_state()
            for agent_id in list(self.agents):
                self._checkpoint(agent_id)
        if self._demo_server is not None:
            await asyncio.to_thread(self._demo_server.stop)
            self._demo_server = None
        self.store.close()
        self.repo.close()
        self._opened = False

    async def __aenter__(self) -> Fleet:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- events ----------------------------------------------------------------------------------
    def emit(self, event: ev.Event) -> None:
        """Log an event: on disk first, then into the agent's state, then to every subscriber.

        An event the disk does not take is neither shown nor applied: its agent stops `failed` (shown at once,
        written as soon as the disk takes it) and LogUnwritable says why."""
        if self.readonly:
            raise FleetError("this fleet is open read-only (a monitor): it cannot change anything")
        if isinstance(event, ev.StatusChanged):
            self._check_transition(event)
        self._write(event)
        self._deliver(event)
        if isinstance(event, _SHOWN_BY_LS):
            self._save_state_soon()  # what `missionctl ls` shows
        if isinstance(event, ev.StatusChanged):
            self._save_state()
            if event.status not in ev.WORKING_STATUSES:
                self._checkpoint(event.agent)
            self._update_settled()
            if event.status not in ev.WORKING_STATUSES | ev.DONE_STATUSES:
                # a turn that ends (or waits, or stops) is diffed whatever the watcher saw: no change is missed
                self.request_diff(event.agent)
                if event.status != "waiting":
                    self._after_turn(event.agent)
                if event.status == "idle":
                    self._checks_after_turn(event.agent)
                if event.status in ("idle", "interrupted", "failed"):
                    self._review_after_turn(event.agent)

    def _check_transition(self, event: ev.StatusChanged) -> None:
        """A status change that events.TRANSITIONS does not allow is a defect: say so, loudly, once per kind
        (it is still applied: the log is the truth of what happened)."""
        agent = self.agents.get(event.agent)
        previous = agent.status if agent is not None else ""
        if previous == event.status or ev.allowed(previous, event.status):
            return
        key = (previous, event.status)
        if key not in self._bad_transitions:
            self._bad_transitions.add(key)
            log.error(
                "status change not in events.TRANSITIONS: %s → %s (agent %s)", previous, event.status, event.agent
            )

    def _try_emit(self, event: ev.Event) -> bool:
        """`emit` where a full disk must not stop what is being done (opening, closing): False if refused."""
        try:
            self.emit(event)
        except LogUnwritable:
            return False
        return True

    def _runner_emit(self, event: ev.Event) -> None:
        """What runners emit through: an agent whose log refused an event is being stopped, so what its runner
        still says is dropped, and a refused write is the fleet's to handle, not the runner's."""
        if event.agent in self._halting:
            return
        with contextlib.suppress(LogUnwritable):
            self.emit(event)
        if isinstance(event, ev.Usage) and (self.config.fleet.budget_tokens or self.config.fleet.budget_cost):
            for agent_id, runner in list(self._runners.items()):
                if agent_id != event.agent:
                    runner.fleet_usage()  # the fleet's budget may be reached now, mid-turn of another agent

    def _write(self, event: ev.Event) -> None:
        agent_id = event.agent
        if agent_id in self._unwritten and not self._write_failure(agent_id):
            raise LogUnwritable(self._unwritten[agent_id].reason)
        try:
            self.store.append(event)
        except LogWriteError as exc:
            raise LogUnwritable(self._cannot_write(agent_id, exc)) from None

    def _cannot_write(self, agent_id: str, exc: LogWriteError) -> str:
        """The agent's log refused an event: stop the agent `failed` and show it at once; write that down from
        the reserve if the disk is full, else as soon as the disk takes it. Returns the reason."""
        if exc.disk_full:
            reason = f"disk full at {self.state_dir}: free space there, then resume the agent"
        else:
            reason = f"its log cannot be written ({exc}): fix that, then resume the agent"
        agent = self.agents.get(agent_id)
        if agent is None:
            return reason
        if agent_id in self._unwritten:
            return self._unwritten[agent_id].reason
        failure = ev.StatusChanged(agent=agent_id, status="failed", previous=agent.status, reason=reason)
        self._unwritten[agent_id] = failure
        self._halting.add(agent_id)
        self._deliver(failure)
        self._update_settled()
        if exc.disk_full:
            self.store.free_reserve()
        self._write_failure(agent_id)
        self._retry_soon()
        with contextlib.suppress(RuntimeError):  # no loop: nothing runs that needs stopping
            task = asyncio.get_running_loop().create_task(self._halt(agent_id), name=f"stop {agent_id}")
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return reason

    async def _halt(self, agent_id: str) -> None:
        """Stop the runner (and every process) of an agent whose log refused an event, answering nothing."""
        try:
            runner = self._runners.pop(agent_id, None)
            if runner is not None:
                with contextlib.suppress(Exception):
                    await runner.detach()
            await asyncio.to_thread(procs.kill_tagged, self._tag(agent_id))
        finally:
            self._halting.discard(agent_id)

    def _write_failure(self, agent_id: str) -> bool:
        """Write the failure of an agent that its log refused an event, if the disk takes it now."""
        failure = self._unwritten.get(agent_id)
        if failure is None:
            return True
        try:
            self.store.append(failure)
        except LogWriteError:
            return False
        del self._unwritten[agent_id]
        self._save_state()
        self._checkpoint(agent_id)
        return True

    def _retry_soon(self) -> None:
        if self._retry is not None or self.readonly:
            return
        with contextlib.suppress(RuntimeError):
            self._retry = asyncio.get_running_loop().call_later(RETRY_WRITES, self._retry_writes)

    def _retry_writes(self) -> None:
        """What a full disk refused, tried again: the agents' failures, state.toml, then the reserve."""
        self._retry = None
        for agent_id in list(self._unwritten):
            if agent_id not in self._halting:
                self._write_failure(agent_id)
        if self._state_unsaved:
            self._save_state()
        if self._unwritten or self._state_unsaved or not self.store.make_reserve():
            self._retry_soon()

    def _checkpoint(self, agent_id: str) -> None:
        """Keep the agent's state as of the end of its log, so that the next open replays only what follows.
        Best effort: without it the next open replays more, nothing else."""
        agent = self.agents.get(agent_id)
        if agent is None or self.readonly or agent_id in self._unwritten:
            return
        offset = self.store.log_size(agent_id)
        if self._checkpointed.get(agent_id) == offset:
            return
        try:
            self.store.save_checkpoint(agent_id, agent.to_snapshot(), offset)
        except (OSError, TypeError, ValueError):
            return
        self._checkpointed[agent_id] = offset

    def _deliver(self, event: ev.Event) -> None:
        agent = self.agents.get(event.agent)
        if agent is None:
            agent = self.agents[event.agent] = Agent(id=event.agent)
        agent.apply(event)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a broken view must not stop the fleet, and must not fail unseen either
                if listener not in self._broken_listeners:
                    self._broken_listeners.add(listener)
                    log.exception("a listener of the fleet failed on a %s event (said once per listener)", event.type)
        for queue in self._queues:
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(event)` on the event loop for every event from now on."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    async def subscribe(self, maxsize: int = 100_000) -> AsyncIterator[ev.Event]:
        """Every event from now on, as an async iterator (bounded: the oldest are dropped when it lags)."""
        queue: asyncio.Queue[ev.Event] = asyncio.Queue(maxsize=maxsize)
        self._queues.append(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._queues.remove(queue)

    @property
    def owner_pid(self) -> int | None:
        return self.store.owner_pid()

    # -- queries ---------------------------------------------------------------------------------
    def list(self) -> list[Agent]:
        return list(self.agents.values())

    def get(self, name_or_id: str) -> Agent:
        """An agent by id or name, or FleetError naming the agents there are."""
        agent = self.agents.get(name_or_id)
        if agent is None:
            agent = next((a for a in self.agents.values() if a.name == name_or_id), None)
        if agent is None:
            names = ", ".join(a.name for a in self.agents.values()) or "none yet"
            raise FleetError(f"no agent named {name_or_id!r} in this fleet (agents: {names})")
        return agent

    def needing_decision(self) -> list[Agent]:
        """Agents with a pending approval, the oldest question first."""
        waiting = [a for a in self.agents.values() if a.pending]
        return sorted(waiting, key=lambda a: a.waiting_since)

    def next_needing_decision(self, after: str | None = None) -> Agent | None:
        """The agent to look at next: the oldest waiting one, cycling past `after`."""
        waiting = self.needing_decision()
        if not waiting:
            return None
        ids = [a.id for a in waiting]
        if after in ids:
            return waiting[(ids.index(after) + 1) % len(waiting)]
        return waiting[0]

    def full_log(self, agent_id: str) -> list[LogLine]:
        """Every log line of an agent, rebuilt from its whole event log on disk (the ring in memory keeps only
        the last ones). Blocking: call it in a thread."""
        agent = Agent(id=agent_id, log=AgentLog(maxlen=None))
        for event in self.store.iter_events(agent_id):  # a line at a time: only the log lines are kept
            agent.apply(event)
        agent.log.flush()
        return list(agent.log.lines)

    def check_output(self, agent_id: str, limit: int = 64 * 1024) -> str:
        """What the agent's last check printed, for the checks view: the failing tests' report when it failed,
        else the end of its output (at most `limit` characters; "" when there is none). Blocking."""
        agent = self.get(agent_id)
        if not agent.check.output:
            return ""
        folder = (self.state_dir / "agents" / agent.id / "checks").resolve()
        log_file = Path(agent.check.output).resolve()
        if log_file.parent != folder:
            return ""  # only the fleet's own files: the event names one there
        for path in (log_file.with_suffix(".failures"), log_file):
            try:
                with open(path, "rb") as f:
                    size = f.seek(0, os.SEEK_END)
                    f.seek(max(0, size - limit * 4))
                    text = f.read().decode("utf-8", "replace")
            except OSError:
                continue
            if text.strip():
                return text[-limit:]
        return ""

    def summary(self) -> list[dict[str, Any]]:
        """What `missionctl ls` shows of each agent, from state.toml; an agent it lacks (or the numbers an older
        version did not write there) from the first event and the last megabyte of its log. No log is read
        whole: the cost does not follow the size of the logs. Blocking."""
        table = self.store.load_state().get("agents", {})
        rows = []
        for agent_id in list(table) + [i for i in self.store.agent_ids_on_disk() if i not in table]:
            meta = dict(table.get(agent_id, {}))
            if "status" not in meta or "files_changed" not in meta:
                known = self._known_from_log_ends(agent_id)
                if known is None:
                    continue
                for key, value in known.items():
                    meta.setdefault(key, value)
            rows.append(
                {
                    "name": str(meta.get("name") or agent_id),
                    "status": str(meta.get("status", "")),
                    "runner": str(meta.get("runner", "")),
                    "branch": str(meta.get("branch", "")),
                    "worktree": str(meta.get("worktree", "")),
                    "files_changed": int(meta.get("files_changed", 0)),
                    "added": int(meta.get("added", 0)),
                    "removed": int(meta.get("removed", 0)),
                    "tokens": int(meta.get("input_tokens", 0)) + int(meta.get("output_tokens", 0)),
                    "input_tokens": int(meta.get("input_tokens", 0)),
                    "output_tokens": int(meta.get("output_tokens", 0)),
                    "cost": self._cost_of(meta),
                    "group": str(meta.get("group", "")),
                    "pending": int(meta.get("pending", 0)),
                    "task": str(meta.get("task", "")),
                    "flags": [dict(f) for f in meta.get("flags", []) if isinstance(f, dict)],
                    "check": dict(meta["check"]) if isinstance(meta.get("check"), dict) else {"state": "none"},
                }
            )
        return rows

    def _known_from_log_ends(self, agent_id: str) -> dict[str, Any] | None:
        """An agent's summary from the first event and the end of its log (tokens before that end are not
        counted); None for an empty log."""
        first, tail = self.store.tail_events(agent_id)
        if first is None and not tail:
            return None
        agent = Agent(id=agent_id)
        for event in [first, *tail] if isinstance(first, ev.AgentCreated) else tail:
            agent.apply(event)
        return {
            "name": agent.name,
            "status": agent.status,
            "runner": agent.runner,
            "branch": agent.branch,
            "worktree": agent.worktree,
            "task": agent.task,
            "pending": len(agent.pending),
            "files_changed": agent.files_changed,
            "added": agent.lines_added,
            "removed": agent.lines_removed,
            "input_tokens": agent.input_tokens,
            "output_tokens": agent.output_tokens,
            "usage_reported": agent.usage_reported,
            "model": agent.model,
            "group": agent.group,
            "flags": [dataclasses.asdict(f) for f in agent.flags],
            "check": _check_summary(agent),
        }

    def _cost_of(self, meta: dict[str, Any]) -> float | None:
        """The cost of an agent's tokens as state.toml has them, at the config's price of its model (None when
        there is no price, or its runner never reported usage)."""
        tokens_in, tokens_out = int(meta.get("input_tokens", 0)), int(meta.get("output_tokens", 0))
        if not meta.get("usage_reported", bool(tokens_in or tokens_out)):
            return None
        return cost.cost_of(self.config, str(meta.get("model", "")), tokens_in, tokens_out)

    def diff(self, agent_id: str) -> Diff | None:
        return self.diffs.get(agent_id)

    def settled(self) -> bool:
        """True when no agent is starting or running (each is idle, waiting, done or failed)."""
        return all(a.status not in ev.WORKING_STATUSES for a in self.agents.values())

    async def wait_settled(self, timeout: float | None = None) -> bool:
        """Wait until `settled()`. Returns False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.settled():
            self._settled.clear()
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if remaining == 0.0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), timeout=min(remaining or 1.0, 1.0))
        return True

    def _update_settled(self) -> None:
        if self.settled():
            self._settled.set()
        else:
            self._settled.clear()

    # -- commands --------------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self.readonly:
            raise FleetError(f"this is a monitor: the fleet is driven by process {self.owner_pid or '?'}; decide there")

    def _tag(self, agent_id: str) -> str:
        return f"mc-{self._fleet_key}-{agent_id}"

    async def spawn_configured(self, specs: list[AgentConfig] | None = None) -> list[Agent]:
        """Spawn every agent of the config (or of `specs`: a client's config, read after this fleet opened) that
        this fleet does not have yet (or that failed before it had a worktree). One that cannot start is recorded
        as failed, with the reason; the others start all the same."""
        spawned = []
        for spec in self.config.agents if specs is None else specs:
            if spec.is_group():
                spawned += await self._spawn_configured_group(spec)
                continue
            known = self.agents.get(spec.name)
            if known is not None and not _never_started(known):
                continue
            try:
                spawned.append(await self.spawn(spec))
            except FleetError as exc:
                spawned.append(self._spawn_failed(spec, str(exc)))
        return spawned

    async def _spawn_configured_group(self, spec: AgentConfig) -> list[Agent]:
        """A best-of-N entry of the config: its copies, once. When the fleet has them already (its group holds
        agents named <name>-N), only those that failed before they had a worktree are spawned again."""
        group = spec.group or spec.name
        prefix = f"{spec.name}-"
        known = [
            a
            for a in self.agents.values()
            if a.group == group and a.name.startswith(prefix) and a.name[len(prefix) :].isdigit()
        ]
        if not known:
            try:
                return await self.spawn_copies(dataclasses.replace(spec, group=group))
            except FleetError as exc:
                return [self._spawn_failed(spec, str(exc))]
        again = []
        for agent in known:
            if _never_started(agent):
                copy = self.specs.get(agent.id) or AgentConfig(name=agent.name, task=agent.task, group=group)
                try:
                    again.append(await self.spawn(copy))
                except FleetError as exc:
                    again.append(self._spawn_failed(copy, str(exc)))
        return again

    async def spawn_copies(self, spec: AgentConfig) -> list[Agent]:
        """Best of N: start `spec`'s task in each of its copies (`copies`, or one per entry of `runners` /
        `models`), named <name>-1, <name>-2 … with the first numbers that no agent, branch or worktree folder has,
        in one group: `spec.group`, else the name (made unique: <name>#2 … when a group of that name exists).
        A copy that cannot start is recorded as failed, with the reason; the others start all the same."""
        self._check_writable()
        problem = agent_name_problem(spec.name)
        if problem:
            raise FleetError(
                f"agent name {spec.name!r}: {problem} (it becomes a branch): rename it, e.g. "
                f"{suggest_name(spec.name)!r}"
            )
        copies = copies_problem(spec)
        if copies is not None:
            raise FleetError(f"agent {spec.name!r}: {copies[1]}")
        if not spec.task.strip():
            raise FleetError(f"agent {spec.name!r} has no task: give it one")
        if not spec.is_group():
            return [await self.spawn(spec)]
        async with self._naming:
            taken = set(self.agents) | {a.name for a in self.agents.values()}
            taken |= await asyncio.to_thread(self._names_in_git)
            names: list[str] = []
            number = 0
            while len(names) < spec.copy_count():
                number += 1
                name = f"{spec.name}-{number}"
                if name not in taken and not (self.worktree_dir / name).exists():
                    names.append(name)
            if agent_name_problem(names[-1]):
                raise FleetError(
                    f"agent {spec.name!r}: its copies would be named {names[0]} … {names[-1]}, too long for a "
                    "branch: shorten the name"
                )
            group = spec.group
            if not group:
                groups = {a.group for a in self.agents.values()}
                group = spec.name
                k = 1
                while group in groups:
                    k += 1
                    group = f"{spec.name}#{k}"
            spawned = []
            for index, name in enumerate(names):
                copy = spec.as_copy(index, name, group)
                try:
                    spawned.append(await self.spawn(copy))
                except FleetError as exc:
                    spawned.append(self._spawn_failed(copy, str(exc)))
        return spawned

    def _names_in_git(self) -> set[str]:
        """The agent names that branches mc/<name> hold already (blocking)."""
        out = self.repo.git("for-each-ref", "--format=%(refname)", "refs/heads/mc/")
        return {line.removeprefix("refs/heads/mc/") for line in out.splitlines() if line.strip()}

    def _spawn_failed(self, spec: AgentConfig, reason: str) -> Agent:
        """Record an agent that could not be created: no branch and no worktree are its (nothing to merge or
        discard), and it is spawned again by the next run."""
        self.specs[spec.name] = spec
        self.emit(
            ev.AgentCreated(
                agent=spec.name,
                name=spec.name,
                task=spec.task,
                runner=spec.runner,
                model=spec.model,
                policy=spec.policy or self.config.policy.approve,
                base_ref=spec.base or self.base_branch,
                group=spec.group,
                budget_tokens=spec.budget_tokens,
                budget_cost=spec.budget_cost,
            )
        )
        self.emit(ev.ErrorEvent(agent=spec.name, message=reason, fatal=True))
        self.emit(ev.StatusChanged(agent=spec.name, status="failed", previous="starting", reason=reason))
        return self.agents[spec.name]

    async def spawn(self, spec: AgentConfig) -> Agent:
        """Create the agent's worktree and branch, and start it on its task. A best-of-N spec (copies, runners or
        models) starts all its copies (`spawn_copies`) and returns the first."""
        self._check_writable()
        if spec.is_group():
            return (await self.spawn_copies(spec))[0]
        name = spec.name
        problem = agent_name_problem(name)
        if problem:
            raise FleetError(
                f"agent name {name!r}: {problem} (it becomes a branch): rename it, e.g. {suggest_name(name)!r}"
            )
        if name in self.agents and not _never_started(self.agents[name]):
            raise FleetError(f"an agent named {name!r} already exists in this fleet: pick another name")
        if not spec.task.strip():
            raise FleetError(f"agent {name!r} has no task: give it one")
        base_ref = spec.base or self.base_branch
        if not base_ref:
            raise FleetError("the repository has no current branch (detached HEAD): set [repo] base to a branch")
        worktree = self.worktree_dir / name
        branch = f"mc/{name}"

        record = self._spawn_records / f"{name}.json"

        def create() -> tuple[str, bool]:
            commit = self.repo.resolve(base_ref)
            dirty = self.repo.current_branch() == base_ref and self.repo.is_dirty()
            reuse = spec.reuse_branch and self.repo.branch_exists(branch)
            if reuse:  # the diff and the merge start where the branch left the base
                commit = self.repo.git("merge-base", commit, f"refs/heads/{branch}").strip()
            # the folder of the worktrees, when mission control makes it, is its owner's alone (as .mc is)
            worktree.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # On record before anything is made: a restart after a kill takes back what it finds.
            data = {"branch": branch, "worktree": str(worktree), "base_commit": commit, "reuse": reuse}
            record.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write(record, json.dumps(data).encode())
            fault_point("spawn-intent", name)
            try:
                self.repo.add_worktree(worktree, branch, commit, reuse=spec.reuse_branch)
            except BaseException:
                record.unlink(missing_ok=True)
                raise
            fault_point("spawn-created", name)
            return commit, dirty

        async with self._lock:
            try:
                base_commit, dirty = await asyncio.to_thread(create)
            except GitError as exc:
                raise FleetError(str(exc)) from None
            except OSError as exc:
                raise FleetError(
                    f"cannot create the worktree folder {worktree.parent}: {exc.strerror}: "
                    "set [repo] worktree_dir to a writable folder"
                ) from None
            self.specs[name] = spec
            self.emit(
                ev.AgentCreated(
                    agent=name,
                    name=name,
                    task=spec.task,
                    runner=spec.runner,
                    model=spec.model or (self.config.model.model if spec.runner == "builtin" else ""),
                    policy=spec.policy or self.config.policy.approve,
                    branch=branch,
                    worktree=str(worktree),
                    base_ref=base_ref,
                    base_commit=base_commit,
                    group=spec.group,
                    budget_tokens=spec.budget_tokens,
                    budget_cost=spec.budget_cost,
                )
            )
            record.unlink(missing_ok=True)
        if dirty:
            self.emit(
                ev.ErrorEvent(
                    agent=name,
                    message=f"note: {base_ref} has uncommitted changes in {self.root}; the agent starts from "
                    f"{base_commit[:10]} without them (commit them first to share them)",
                )
            )
        self.emit(ev.StatusChanged(agent=name, status="starting", previous=""))
        if self.watcher is not None:
            self.watcher.add(name, worktree)
            self._watch_covered(name)
        try:
            await self._runners_loaded()
            runner = self._runner(name)
            await runner.start(spec.task)
        except Exception as exc:
            self.emit(ev.ErrorEvent(agent=name, message=str(exc), fatal=True))
            self.emit(ev.StatusChanged(agent=name, status="failed", reason=str(exc)))
        return self.agents[name]

    def _runner(self, agent_id: str) -> Runner:
        runner = self._runners.get(agent_id)
        if runner is None:
            agent = self.agents[agent_id]
            spec = self.specs.get(agent_id) or AgentConfig(name=agent.name, task=agent.task, runner=agent.runner)
            ctx = RunnerContext(
                agent=agent,
                config=self.config,
                spec=spec,
                worktree=Path(agent.worktree),
                emit=self._runner_emit,
                tag=self._tag(agent_id),
                over_budget=lambda: cost.over_budget(self.agents[agent_id], self.agents.values(), self.config),
            )
            try:
                runner = make_runner(agent.runner, ctx)
            except RunnerError as exc:
                raise FleetError(str(exc)) from None
            self._runners[agent_id] = runner
        return runner

    def _pending(self, agent: Agent, approval_id: str | None) -> ev.ApprovalRequested:
        req = agent.pending.get(approval_id) if approval_id else agent.oldest_pending()
        if req is None:
            raise FleetError(f"{agent.name} has no pending approval{' ' + approval_id if approval_id else ''}")
        return req

    async def approve(self, agent_id: str, approval_id: str | None = None, *, remember: bool = False) -> None:
        """Let a waiting call run. With remember, calls of the same kind run without asking from now on."""
        self._check_writable()
        agent = self.get(agent_id)
        req = self._pending(agent, approval_id)
        await self._runners_loaded()
        runner = self._runner(agent.id)
        budget = req.kind == cost.BUDGET_KIND
        decision = "approve_all" if remember and not budget else "approve"  # a budget goes up once, whatever the key
        self.emit(ev.ApprovalResolved(agent=agent.id, approval_id=req.approval_id, decision=decision))
        await self._resolve(runner, agent, req, decision, "")
        if budget and req.tool == cost.FLEET_BUDGET:  # the fleet's budget is raised for every agent waiting on it
            for other in self.agents.values():
                same = other.pending.get(req.approval_id)
                if other is agent or same is None or same.tool != cost.FLEET_BUDGET:
                    continue
                reason = f"the fleet budget was raised (approved for {agent.name})"
                self.emit(
                    ev.ApprovalResolved(agent=other.id, approval_id=req.approval_id, decision="approve", reason=reason)
                )
                await self._resolve(self._runner(other.id), other, same, "approve", reason)

    async def deny(self, agent_id: str, approval_id: str | None = None, reason: str = "") -> None:
        """Refuse a waiting call; the model receives the refusal and the reason."""
        self._check_writable()
        agent = self.get(agent_id)
        req = self._pending(agent, approval_id)
        await self._runners_loaded()
        runner = self._runner(agent.id)
        self.emit(ev.ApprovalResolved(agent=agent.id, approval_id=req.approval_id, decision="deny", reason=reason))
        await self._resolve(runner, agent, req, "deny", reason)

    async def _resolve(self, runner: Runner, agent: Agent, req: ev.ApprovalRequested, decision: str, reason: str):
        try:
            await runner.resolve(req.approval_id, decision, reason)
        except RunnerError as exc:
            raise FleetError(f"{agent.name}: {exc}") from None

    def _cancel_pending(self, agent: Agent, reason: str) -> None:
        for req in list(agent.pending.values()):
            self.emit(ev.ApprovalResolved(agent=agent.id, approval_id=req.approval_id, decision="deny", reason=reason))

    def _redirectable(self, agent: Agent) -> None:
        """Raise FleetError when the agent can take no new instruction."""
        if agent.status in ev.DONE_STATUSES:
            raise FleetError(f"{agent.name} is {agent.status}: start a new agent instead")
        if agent.status == "killed" and not Path(agent.worktree).is_dir():
            raise FleetError(f"{agent.name} was killed and its worktree is gone: start a new agent instead")

    async def redirect(self, agent_id: str, text: str) -> None:
        """Give a new instruction: the current turn stops and the conversation goes on with it."""
        self._check_writable()
        agent = self.get(agent_id)
        if not text.strip():
            raise FleetError("an empty instruction: type what the agent should do instead")
        self._redirectable(agent)
        self._cancel_pending(agent, "the engineer gave a new instruction instead")
        self.emit(ev.UserMessage(agent=agent.id, text=text, redirect=True))
        await self._runners_loaded()
        try:
            await self._runner(agent.id).send(text)
        except RunnerError as exc:
            raise FleetError(str(exc)) from None

    # -- review ----------------------------------------------------------------------------------
    async def add_comment(
        self,
        agent_id: str,
        path: str,
        line: int,
        text: str,
        *,
        quote: tuple[str, ...] | list[str] = (),
        hunk: tuple[str, ...] | list[str] = (),
        header: str = "",
    ) -> str:
        """Comment on a hunk (or one line) of the agent's diff: `path:line`, the diff lines it quotes, the whole
        hunk it belongs to (what "changed" is judged by after the review) and the text. It waits in the review
        until `send_review`. Returns its id."""
        self._check_writable()
        agent = self.get(agent_id)
        if agent.status in ev.DONE_STATUSES:
            raise FleetError(f"{agent.name} is {agent.status}: there is no diff to comment on")
        if not text.strip():
            raise FleetError("an empty comment: type what should change in this hunk")
        if not path.strip():
            raise FleetError("a comment needs the path of the file it is about")
        if line < 0:
            raise FleetError(f"line {line}: a comment's line is 1 or more (0: the whole file)")
        comment_id = f"c{agent.comments_made + 1}"
        self.emit(
            ev.CommentAdded(
                agent=agent.id,
                comment_id=comment_id,
                path=path,
                line=int(line),
                text=text.strip(),
                quote=tuple(str(q) for q in quote),
                hunk=tuple(str(h) for h in hunk),
                header=header,
            )
        )
        return comment_id

    async def remove_comment(self, agent_id: str, comment_id: str) -> None:
        """Delete a comment of the review that was not sent yet."""
        self._check_writable()
        agent = self.get(agent_id)
        if not any(c.id == comment_id for c in agent.comments):
            ids = ", ".join(c.id for c in agent.comments) or "none"
            raise FleetError(f"{agent.name} has no unsent comment {comment_id!r} (its unsent comments: {ids})")
        self.emit(ev.CommentRemoved(agent=agent.id, comment_id=comment_id))

    async def send_review(self, agent_id: str) -> str:
        """Send every unsent comment to the agent as one instruction, each under its `path:line` with the lines
        it quotes, as a redirect: the agent goes on from there. After its next turn each comment is marked
        changed or unchanged (ReviewChecked). Returns the text sent."""
        self._check_writable()
        agent = self.get(agent_id)
        comments = agent.comments
        if not comments:
            raise FleetError(f"{agent.name} has no comments to send: write one with c on a hunk of its diff")
        self._redirectable(agent)
        text = review_text(comments)
        review_id = f"r{agent.review.number + 1}"
        self.emit(ev.ReviewSent(agent=agent.id, review_id=review_id, comments=tuple(c.id for c in comments), text=text))
        await self.redirect(agent.id, text)
        return text

    def _review_after_turn(self, agent_id: str) -> None:
        """A turn that followed the review ended: mark each of its comments changed or unchanged, from the diff."""
        agent = self.agents.get(agent_id)
        if agent is None or self.readonly or not agent.review.review_id or not agent.review.turns:
            return
        if not agent.worktree or not Path(agent.worktree).is_dir():
            return
        previous = self._review_tasks.get(agent_id)
        with contextlib.suppress(RuntimeError):  # no loop: nothing is marked
            task = asyncio.get_running_loop().create_task(
                self._mark_review(agent_id, previous), name=f"mark the review of {agent_id}"
            )
            self._review_tasks[agent_id] = task
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _mark_review(self, agent_id: str, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await previous
        agent = self.agents[agent_id]
        review = agent.review
        try:
            diff = await self.refresh_diff(agent_id)
        except (GitError, OSError, FleetError) as exc:
            self._try_emit(ev.ErrorEvent(agent=agent_id, message=f"the review could not be marked: {exc}"))
            return
        marks = await asyncio.to_thread(review_marks, review.comments, diff.text)
        if agent.review.review_id != review.review_id or marks == agent.review.marks:
            return
        self._try_emit(
            ev.ReviewChecked(
                agent=agent_id,
                review_id=review.review_id,
                changed=tuple(k for k, v in marks.items() if v == "changed"),
                unchanged=tuple(k for k, v in marks.items() if v == "unchanged"),
            )
        )

    async def wait_review(self, agent_id: str) -> dict[str, str]:
        """Wait until the marking of the agent's last review (if one runs) is done; its marks."""
        agent = self.get(agent_id)
        while (task := self._review_tasks.get(agent.id)) is not None and not task.done():
            await asyncio.wait({task})
        return dict(agent.review.marks)

    async def interrupt(self, agent_id: str) -> None:
        """Stop the current turn; the agent stays, resumable."""
        self._check_writable()
        agent = self.get(agent_id)
        if agent.status not in ev.ACTIVE_STATUSES:
            raise FleetError(f"{agent.name} is {agent.status}, not running: nothing to interrupt")
        self._cancel_pending(agent, "the engineer interrupted the turn")
        await self._runner(agent.id).interrupt()
        await asyncio.to_thread(self._end_processes, agent)
        if agent.status != "interrupted":
            self.emit(ev.StatusChanged(agent=agent.id, status="interrupted", previous=agent.status))

    async def resume(self, agent_id: str) -> None:
        """Continue an interrupted (or failed) agent from its conversation."""
        self._check_writable()
        agent = self.get(agent_id)
        if agent.status not in ("interrupted", "failed"):
            raise FleetError(f"{agent.name} is {agent.status}: only an interrupted or failed agent resumes")
        if not Path(agent.worktree).is_dir():
            raise FleetError(f"{agent.name}'s worktree {agent.worktree} is gone: it cannot resume")
        self.emit(ev.StatusChanged(agent=agent.id, status="running", previous=agent.status, reason="resumed"))
        await self._runners_loaded()
        await self._runner(agent.id).resume()

    async def kill(self, agent_id: str, *, discard: bool = False) -> None:
        """Stop the agent and every process it started; keep its worktree unless discard."""
        self._check_writable()
        agent = self.get(agent_id)
        if agent.status in ev.DONE_STATUSES:
            raise FleetError(f"{agent.name} is {agent.status}: nothing to kill")
        runner = self._runners.pop(agent.id, None)
        if runner is not None:
            await runner.kill()
        await self.checks.stop(agent.id, "the agent was killed")
        await asyncio.to_thread(self._end_processes, agent)
        if agent.status != "killed":
            self._cancel_pending(agent, "the agent was killed")
            self.emit(
                ev.StatusChanged(agent=agent.id, status="killed", previous=agent.status, reason="by the engineer")
            )
        if discard:
            await self.discard(agent.id)

    async def merge(
        self, agent_id: str, mode: str | None = None, message: str | None = None, *, checks: bool = True
    ) -> MergeResult:
        """Commit the agent's work in its worktree and land it on its base branch (ff, merge or squash).

        A conflict is reported (MergeConflict) and changes nothing: not the base branch, not the
        engineer's working tree. With [checks] on = "merge" the checks run first (unless the last ones passed on
        this very diff) and a failing check stops the merge; `checks=False` merges without them."""
        self._check_writable()
        agent = self.get(agent_id)
        if agent.status in ev.ACTIVE_STATUSES:
            raise FleetError(f"{agent.name} is {agent.status}: interrupt it (or let it finish) before merging")
        if agent.status in ev.DONE_STATUSES:
            raise FleetError(f"{agent.name} is already {agent.status}")
        if not agent.branch:
            raise FleetError(f"{agent.name} failed before it had a branch: there is nothing to merge")
        mode = mode or self.config.repo.merge
        if mode not in ("ff", "merge", "squash"):
            raise FleetError(f"merge mode {mode!r}: use ff, merge or squash")
        title = agent.task.strip().splitlines()[0] if agent.task.strip() else agent.name
        msg = (
            message
            or f"{agent.name}: {title[:60]}\n\n{agent.task.strip()}\n\nMerged by missionctl from {agent.branch}."
        )
        worktree = Path(agent.worktree)
        if await asyncio.to_thread(self._nothing_to_merge, agent):
            raise FleetError(f"{agent.name} has no changes against {agent.base_ref}: there is nothing to merge")
        if checks and worktree.is_dir() and self._checks_config(agent.id).on == "merge":
            await self._checks_before_merge(agent)
        await self.checks.stop(agent.id, "the agent is being merged")

        def work() -> tuple[str | None, MergeResult]:
            if not self.repo.branch_exists(agent.base_ref):
                raise GitError(f"{agent.name} started from {agent.base_ref!r}, which is not a branch: merge it by hand")
            if worktree.is_dir():
                problems = self.repo.unkept_work(worktree)
                if problems:  # the worktree goes once merged: what no commit holds would go with it
                    raise GitError(
                        f"merge of {agent.name} stopped, nothing changed: {'; '.join(problems)}; then merge again"
                    )
            commit = self.repo.commit_all(worktree, msg) if worktree.is_dir() else None
            result = self.repo.merge(agent.branch, agent.base_ref, mode, msg)
            return commit, result

        async with self._lock:
            try:
                commit, result = await asyncio.to_thread(work)
            except GitError as exc:
                raise FleetError(str(exc)) from None
            if commit:
                self.emit(ev.Committed(agent=agent.id, commit=commit, message=msg))
            if not result.ok:
                self.emit(ev.MergeConflict(agent=agent.id, files=tuple(result.conflicts), message=result.message))
                return result
            self.emit(ev.Merged(agent=agent.id, mode=mode, commit=result.commit or "", into=agent.base_ref))
            self.emit(ev.StatusChanged(agent=agent.id, status="merged", previous=agent.status))
            self._runners.pop(agent.id, None)
            if self.watcher is not None:
                self.watcher.remove(agent.id)
            with contextlib.suppress(GitError):
                await asyncio.to_thread(self.repo.remove_worktree, worktree, force=False)
        return result

    def _nothing_to_merge(self, agent: Agent) -> bool:
        """Whether the agent changed nothing: its branch is still at the commit it started from and its worktree
        holds no change (a branch with commits of its own that the base already contains is merged as before)."""
        worktree = Path(agent.worktree)
        if not agent.base_commit or not worktree.is_dir():
            return False
        try:
            if self.repo.resolve(f"refs/heads/{agent.branch}") != agent.base_commit:
                return False
            # (work inside a submodule is not a change here: the merge then says why it cannot keep it)
            return not self.repo.is_dirty(worktree, untracked=True) and not self.repo.unkept_work(worktree)
        except GitError:
            return False  # the merge itself says what is wrong

    async def discard(self, agent_id: str) -> str:
        """Remove the agent's worktree and branch, after keeping a snapshot ref of everything in it.

        Returns the snapshot ref (`git worktree add -b NAME PATH REF` brings the work back)."""
        self._check_writable()
        agent = self.get(agent_id)
        if agent.status in ev.DONE_STATUSES:
            raise FleetError(f"{agent.name} is already {agent.status}")
        worktree = Path(agent.worktree) if agent.worktree else None
        if worktree is not None and worktree.is_dir():  # before the agent is stopped: a refusal changes nothing
            try:
                problems = await asyncio.to_thread(self.repo.unkept_work, worktree)
            except GitError as exc:
                raise FleetError(f"discard of {agent.name} stopped, nothing lost: {exc}") from None
            if problems:
                raise FleetError(
                    f"discard of {agent.name} stopped, nothing lost: {'; '.join(problems)}; then discard again"
                )
        if agent.id in self._runners:
            runner = self._runners.pop(agent.id)
            await runner.kill()
        await self.checks.stop(agent.id, "the agent was discarded")
        await asyncio.to_thread(self._end_processes, agent)
        ref = f"refs/mc/snapshots/{agent.id}-{time.strftime('%Y%m%d-%H%M%S')}"

        def work() -> str:
            message = f"missionctl snapshot of {agent.name} before discard"
            if worktree is not None and worktree.is_dir():
                return self.repo.discard(worktree, agent.branch, ref, message)
            snap = ""
            # the worktree is gone already: keep the branch's work
            if agent.branch and self.repo.branch_exists(agent.branch):
                snap = self.repo.resolve(agent.branch)
                self.repo.git("update-ref", ref, snap)
                self.repo.delete_branch(agent.branch)
            return snap

        async with self._lock:
            if self.watcher is not None:
                self.watcher.remove(agent.id)
            try:
                snap = await asyncio.to_thread(work)
            except GitError as exc:
                if self.watcher is not None and worktree is not None and worktree.is_dir():
                    self.watcher.add(agent.id, worktree)
                raise FleetError(f"discard of {agent.name} stopped, nothing lost: {exc}") from None
            self._cancel_pending(agent, "the agent was discarded")
            self.emit(ev.Discarded(agent=agent.id, snapshot_ref=ref if snap else "", snapshot_commit=snap))
            self.emit(ev.StatusChanged(agent=agent.id, status="discarded", previous=agent.status))
        self.diffs.pop(agent.id, None)
        self._flag_scanners.pop(agent.id, None)
        return ref

    # -- diffs -----------------------------------------------------------------------------------
    def request_diff(self, agent_id: str) -> None:
        """Recompute the agent's diff soon (debounced, off the loop)."""
        agent = self.agents.get(agent_id)
        if agent is None or self.diff_scheduler is None or not agent.worktree or not agent.base_commit:
            return
        if agent.status in ev.DONE_STATUSES:
            return
        self.diff_scheduler.request(agent_id, Path(agent.worktree), agent.base_commit)

    async def refresh_diff(self, agent_id: str) -> Diff:
        """Compute the agent's diff now and return it."""
        from mc.git import compute_diff

        agent = self.get(agent_id)
        diff = await asyncio.to_thread(compute_diff, Path(agent.worktree), agent.base_commit)
        self._on_diff(agent.id, diff)
        return diff

    async def refresh_diffs(self) -> None:
        """Bring every live agent's diff up to date now (two at a time), e.g. before a headless run exits."""
        semaphore = asyncio.Semaphore(2)

        async def one(agent: Agent) -> None:
            async with semaphore:
                with contextlib.suppress(Exception):
                    await self.refresh_diff(agent.id)
            await self.wait_flags(agent.id)

        live = [
            a
            for a in self.agents.values()
            if a.status not in ev.DONE_STATUSES and a.worktree and Path(a.worktree).is_dir()
        ]
        await asyncio.gather(*(one(a) for a in live))

    def _end_processes(self, agent: Agent) -> None:
        """End every process of the agent (blocking: run it in a thread): those carrying its tag, and those the
        subreaper adopted from its commands (shed tag, own session) that still work in its worktree."""
        procs.kill_tagged(self._tag(agent.id))
        if agent.worktree:
            procs.end_adopted(within=agent.worktree)

    def _reap_on_sigchld(self) -> None:
        """Reap the orphans the subreaper adopted as they exit (coalesced: one /proc scan per half second at
        most), so no zombie piles up under a fleet that runs for days. Main thread only (signal handlers)."""
        loop = asyncio.get_running_loop()
        pending: list[asyncio.TimerHandle] = []

        def reap() -> None:
            pending.clear()
            task = loop.create_task(asyncio.to_thread(procs.reap_adopted), name="reap adopted orphans")
            self._background.add(task)
            task.add_done_callback(self._background.discard)

        def on_sigchld() -> None:
            if not pending:
                pending.append(loop.call_later(0.5, reap))

        try:
            loop.add_signal_handler(signal.SIGCHLD, on_sigchld)
        except (ValueError, RuntimeError, NotImplementedError):  # not the main thread: reaped at turn ends
            return
        self._sigchld = (loop, pending)

    def _after_turn(self, agent_id: str) -> None:
        """A turn ended: what the agent's commands left behind in its worktree goes, as with its tagged ones."""
        agent = self.agents.get(agent_id)
        if agent is None or not agent.worktree or not procs.subreaper_enabled():
            return
        task = asyncio.get_running_loop().create_task(
            asyncio.to_thread(procs.end_adopted, agent.worktree), name=f"end what {agent_id} left running"
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _watch_covered(self, agent_id: str) -> None:
        """Diff the agent once the watcher covers its new worktree: what was written before then is seen too."""
        watcher = self.watcher

        async def covered() -> None:
            if watcher is not None:
                await watcher.ready()
            self.request_diff(agent_id)

        task = asyncio.get_running_loop().create_task(covered(), name=f"diff {agent_id} once watched")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _on_worktree_change(self, agent_id: str, paths: Any = None) -> None:
        self.request_diff(agent_id)

    def _on_diff(self, agent_id: str, diff: Diff) -> None:
        agent = self.agents.get(agent_id)
        if agent is None:
            return
        self.diffs[agent_id] = diff
        self._scan_flags(agent_id, diff)  # the text may have changed where the numbers did not
        digest = diff_digest(diff)
        changed = (diff.files, diff.added, diff.removed, digest) != (
            agent.diff_files,
            agent.lines_added,
            agent.lines_removed,
            agent.diff_digest,
        )
        event = ev.DiffChanged(agent=agent_id, files=diff.files, added=diff.added, removed=diff.removed, digest=digest)
        if not changed:
            return
        if self.readonly:
            self._deliver(event)
        else:
            self._try_emit(event)

    # -- checks ----------------------------------------------------------------------------------
    def _checks_config(self, agent_id: str) -> Any:
        """[checks] with the agent's [agents.checks]: from the spec it was spawned with, else from the config's
        [[agents]] table of its name (a restart rebuilds specs from state.toml, which does not keep them)."""
        spec = self.specs.get(agent_id)
        if spec is None or not spec.checks:
            agent = self.agents.get(agent_id)
            group = agent.group if agent is not None else ""
            spec = next(
                (
                    a
                    for a in self.config.agents
                    if a.name == agent_id or (group and a.is_group() and (a.group or a.name) == group)
                ),
                spec,
            )
        return self.config.agent_checks(spec)

    def _checkable(self, agent: Agent) -> None:
        """Raise FleetError when the agent's checks cannot run now."""
        if not self._checks_config(agent.id).test.strip():
            raise FleetError('no checks to run: set [checks] test in the config (e.g. test = "python -m pytest -q")')
        if agent.status in ev.DONE_STATUSES:
            raise FleetError(f"{agent.name} is {agent.status}: there is no worktree to check")
        if not agent.worktree or not Path(agent.worktree).is_dir():
            raise FleetError(f"{agent.name} has no worktree to check")

    async def run_checks(self, agent_id: str) -> None:
        """Run the agent's checks now (key t), whatever [checks] on says, in place of any that still run. They
        run in the background: CheckStarted and CheckFinished follow; `wait_checks` waits for the result."""
        self._check_writable()
        agent = self.get(agent_id)
        self._checkable(agent)
        self._start_check(agent.id, "manual")

    async def wait_checks(self, agent_id: str) -> CheckState:
        """Wait until the agent's running check (if any) has finished, and return its check state."""
        agent = self.get(agent_id)
        await self.checks.wait(agent.id)
        return agent.check

    async def fix_checks(self, agent_id: str) -> str:
        """Send the failing tests and what they printed back to the agent as one redirect (key f). Returns the
        text sent."""
        self._check_writable()
        agent = self.get(agent_id)
        check = agent.check
        if check.state not in ("failed", "error"):
            what = "are running" if check.state == "running" else f"did not fail ({check.summary()})"
            raise FleetError(f"{agent.name}'s checks {what}: there is nothing to send back")
        text = await asyncio.to_thread(fix_message, check, agent.check_stale)
        await self.redirect(agent.id, text)
        return text

    def _checks_after_turn(self, agent_id: str) -> None:
        """A turn ended: with [checks] on = "idle", check the diff if it changed since the last check."""
        agent = self.agents.get(agent_id)
        cfg = self._checks_config(agent_id)
        if agent is None or self.readonly or cfg.on != "idle" or not cfg.test.strip():
            return
        if not agent.worktree or not Path(agent.worktree).is_dir():
            return
        with contextlib.suppress(RuntimeError):  # no loop: nothing is checked
            self.checks.decide(agent_id, self._check_if_changed(agent_id))

    async def _check_if_changed(self, agent_id: str) -> None:
        """Check the agent's diff if it is not the one its last (or running) check is about."""
        diff = await self._diff_for_check(agent_id)
        agent = self.agents[agent_id]
        if diff is not None and diff.files and diff_digest(diff) != agent.check.digest:
            self._start_check(agent_id, "idle", diff)

    async def _diff_for_check(self, agent_id: str) -> Diff | None:
        try:
            return await self.refresh_diff(agent_id)  # the diff as the check will see it, not as last seen
        except (GitError, OSError, FleetError) as exc:
            self._try_emit(ev.ErrorEvent(agent=agent_id, message=f"checks did not run: the diff failed: {exc}"))
            return None

    def _start_check(self, agent_id: str, trigger: str, diff: Diff | None = None) -> asyncio.Task[Any]:
        """Start a check of the agent (of `diff`, or of its diff as it is then), in place of one that runs."""
        return self.checks.start(agent_id, self._check_job(agent_id, trigger, diff))

    async def _check_job(self, agent_id: str, trigger: str, diff: Diff | None) -> ev.CheckFinished | None:
        agent = self.agents[agent_id]
        diff = diff or await self._diff_for_check(agent_id)
        if diff is None:
            return None
        digest = diff_digest(diff)
        changed, deleted = changed_paths(diff.files, diff.text)
        return await check_agent(
            agent_id=agent_id,
            cfg=self._checks_config(agent_id),
            worktree=Path(agent.worktree),
            changed=changed,
            deleted=deleted,
            digest=digest,
            trigger=trigger,
            tools=self.config.tools,
            env=safe_env(self.config.tools.pass_env),
            tag=self._tag(agent_id),
            folder=self.state_dir / "agents" / agent_id / "checks",
            checks=self.checks,
            emit=self._try_emit,
        )

    async def _checks_before_merge(self, agent: Agent) -> None:
        """[checks] on = "merge": the checks pass on this diff, or FleetError says which fail."""
        digest = diff_digest(await self.refresh_diff(agent.id))
        if not (agent.check.state in ("passed", "none") and agent.check.digest == digest and agent.check.check_id):
            await self.checks.stop(agent.id, "a merge checks the diff again")
            await self._start_check(agent.id, "merge")
        check = agent.check
        if check.state in ("passed", "none"):
            return
        names = ", ".join(check.failing[:3]) + (" …" if len(check.failing) > 3 else "")
        raise FleetError(
            f"merge of {agent.name} stopped, nothing changed: its checks {check.summary().lstrip('✗ ')}"
            f"{': ' + names if names else ''}; fix them (f sends them back to the agent), or merge without checks"
        )

    # -- risk flags ------------------------------------------------------------------------------
    def _scan_flags(self, agent_id: str, diff: Diff) -> None:
        """Scan the agent's new diff for risk flags in a thread: one scan per agent at a time, the newest diff
        next (those that came between are skipped), only the files whose patch changed. FlagsChanged follows
        when the set of flags is not the one the agent has."""
        if self.readonly or not self.config.flags.enabled:
            return
        self._flag_next[agent_id] = diff
        if agent_id in self._flag_tasks:
            return
        task = asyncio.get_running_loop().create_task(self._flag_loop(agent_id), name=f"risk flags of {agent_id}")
        self._flag_tasks[agent_id] = task
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _flag_loop(self, agent_id: str) -> None:
        try:
            while (diff := self._flag_next.pop(agent_id, None)) is not None:
                agent = self.agents.get(agent_id)
                if agent is None or agent.status in ev.DONE_STATUSES:
                    return
                scanner = self._flag_scanners.get(agent_id) or scanner_for(self.config.flags)
                if scanner is None:
                    return
                self._flag_scanners[agent_id] = scanner
                root = Path(agent.worktree) if agent.worktree else None
                try:
                    flags = await asyncio.to_thread(scanner.scan, diff, task=agent.task, root=root)
                except Exception as exc:  # a bug in a rule: said in the agent's log, the next diff is tried again
                    self._flag_scanners.pop(agent_id, None)
                    self._try_emit(ev.ErrorEvent(agent=agent_id, message=f"risk scan failed: {exc!r}"))
                    continue
                if flags != agent.flags and agent.status not in ev.DONE_STATUSES:
                    self._try_emit(ev.FlagsChanged(agent=agent_id, flags=flags))
        finally:
            self._flag_tasks.pop(agent_id, None)

    async def wait_flags(self, agent_id: str) -> tuple[ev.Flag, ...]:
        """Wait until the agent's newest diff has been scanned for risk flags, and return its flags."""
        agent = self.get(agent_id)
        while (task := self._flag_tasks.get(agent.id)) is not None:
            await asyncio.wait({task})
        return agent.flags

    def _on_diff_error(self, agent_id: str, error: BaseException) -> None:
        agent = self.agents.get(agent_id)
        if agent is None or self.readonly:
            return
        if Path(agent.worktree).is_dir():
            self._try_emit(ev.ErrorEvent(agent=agent_id, message=f"diff failed: {error}"))

    # -- persistence -----------------------------------------------------------------------------
    def _save_state_soon(self) -> None:
        if self._save_later is None and not self.readonly:
            with contextlib.suppress(RuntimeError):
                self._save_later = asyncio.get_running_loop().call_later(SAVE_DELAY, self._save_state)

    def _save_state(self) -> None:
        """Write state.toml: the agents and all that `missionctl ls` shows of them. A disk that refuses it is
        tried again (the agents themselves are rebuilt from their logs)."""
        if self.readonly:
            return
        if self._save_later is not None:
            self._save_later.cancel()
            self._save_later = None
        agents: dict[str, Any] = {}
        for agent in self.agents.values():
            spec = self.specs.get(agent.id)
            agents[agent.id] = {
                "name": agent.name,
                "task": agent.task,
                "runner": agent.runner,
                "model": agent.model,
                "policy": agent.policy,
                "branch": agent.branch,
                "worktree": agent.worktree,
                "base_ref": agent.base_ref,
                "base_commit": agent.base_commit,
                "status": agent.status,
                "created": agent.created,
                "command": spec.command if spec else "",
                "files_changed": agent.files_changed,
                "added": agent.lines_added,
                "removed": agent.lines_removed,
                "input_tokens": agent.input_tokens,
                "output_tokens": agent.output_tokens,
                "usage_reported": agent.usage_reported,
                "group": agent.group,
                "pending": len(agent.pending),
                "flags": [dataclasses.asdict(f) for f in agent.flags],
                "check": _check_summary(agent),
            }
        demo = {"scenario": self.demo_scenario} if self.demo_scenario else None
        try:
            self.store.save_state({"version": 1, "repo": str(self.root), "demo": demo, "agents": agents})
        except OSError:
            self._state_unsaved = True
            self._retry_soon()
        else:
            self._state_unsaved = False


def diff_digest(diff: Diff) -> str:
    """A hash of a diff: its files and its text (DiffChanged.digest; what makes a check stale)."""
    h = hashlib.sha1(diff.text.encode("utf-8", errors="replace"))
    h.update(repr([(f.path, f.status, f.added, f.removed) for f in diff.files]).encode())
    return h.hexdigest()[:16]


def _check_summary(agent: Agent) -> dict[str, Any]:
    """The agent's last check as `missionctl ls --json` shows it (plain TOML/JSON values: no None)."""
    check = agent.check
    data: dict[str, Any] = {"state": check.state, "summary": check.summary(), "stale": agent.check_stale}
    if check.check_id:
        data.update(
            check_id=check.check_id,
            passed=check.passed,
            failed=check.failed,
            errors=check.errors,
            skipped=check.skipped,
            total=check.total,
            failing=list(check.failing),
            duration=check.duration,
            reason=check.reason,
            output=check.output,
            selected=list(check.selected),
        )
    return data


def _never_started(agent: Agent) -> bool:
    """An agent that failed before it had a branch and a worktree (spawn_configured records it so)."""
    return agent.status == "failed" and not agent.branch
