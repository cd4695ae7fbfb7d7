"""Checks: the project's tests that an agent's diff touches, run in its worktree, their result an event.

[checks] (and an agent's [agents.checks]) → a command (mc/checks/plan.py), narrowed for Python repositories to
the test files that import what changed (mc/checks/affected.py, from the import graph); it runs like the agent's
own commands (mc/checks/run.py) at most `parallel` at once across the fleet, and its output → counts and the
failing tests' names (mc/checks/results.py). The Fleet calls `Checks.start` with a `check_agent` job; the
result is a CheckStarted and a CheckFinished event, and the output stays in a file under the agent's folder.
No Textual here: the TUI reads the events.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from mc import events as ev
from mc.checks.affected import Selection, select_tests
from mc.checks.plan import Plan, plan_check, runs_pytest
from mc.checks.results import Counts, parse_junit, parse_output, parse_text
from mc.checks.run import Report, run_check
from mc.config import ChecksConfig, ToolsConfig

#: Check outputs kept per agent (the oldest go first).
KEEP_OUTPUTS = 20
#: Characters of the failing tests' output a fix request sends the agent.
MAX_FIX = 16000

__all__ = [
    "Checks",
    "Counts",
    "Plan",
    "Report",
    "Selection",
    "changed_paths",
    "check_agent",
    "default_parallel",
    "fix_message",
    "parse_junit",
    "parse_output",
    "parse_text",
    "plan_check",
    "run_check",
    "runs_pytest",
    "select_tests",
]


def default_parallel() -> int:
    """Checks at once when [checks] parallel is 0: half the cores, at least one."""
    return max(1, (os.cpu_count() or 2) // 2)


_RENAME_FROM = re.compile(r"^rename from (.+)$", re.MULTILINE)


def changed_paths(files: tuple[ev.FileStat, ...], text: str = "") -> tuple[list[str], list[str]]:
    """(paths the diff adds or changes, paths it deletes, the old side of each rename included)."""
    changed = [f.path for f in files if f.status != "D"]
    deleted = [f.path for f in files if f.status == "D"]
    deleted += [m for m in _RENAME_FROM.findall(text) if not m.startswith('"') and m not in deleted]
    return changed, deleted


class Checks:
    """The fleet's checks: at most `parallel` run at once, one per agent (a new one replaces a running one)."""

    def __init__(self, parallel: int = 0) -> None:
        self.parallel = parallel or default_parallel()
        self._slots: asyncio.Semaphore | None = None
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._deciding: dict[str, set[asyncio.Task[Any]]] = {}
        """Per agent: what still decides whether a check starts (is the diff new since the last check?)."""
        self._stop_reasons: dict[str, str] = {}
        self.running = 0
        """Checks whose command runs now."""
        self.peak = 0
        """The most that ever ran at once."""

    @contextlib.asynccontextmanager
    async def slot(self) -> Any:
        """One of the `parallel` places a check runs in; waits for one."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.parallel)
        async with self._slots:
            self.running += 1
            self.peak = max(self.peak, self.running)
            try:
                yield
            finally:
                self.running -= 1

    def start(self, agent_id: str, job: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `job` as the agent's check, in place of one that still runs (which is stopped, saying nothing)."""
        old = self._tasks.get(agent_id)
        if old is not None and not old.done():
            self._stop_reasons[agent_id] = ""  # replaced: the new check's events follow
            old.cancel()
        task = asyncio.get_running_loop().create_task(job, name=f"checks of {agent_id}")
        self._tasks[agent_id] = task

        def done(t: asyncio.Task[Any]) -> None:
            if self._tasks.get(agent_id) is t:
                del self._tasks[agent_id]

        task.add_done_callback(done)
        return task

    def decide(self, agent_id: str, job: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `job`, which may `start` a check, without stopping the one that runs: `wait` waits for it too."""
        task = asyncio.get_running_loop().create_task(job, name=f"should {agent_id} be checked")
        pending = self._deciding.setdefault(agent_id, set())
        pending.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            pending.discard(t)
            if not pending and self._deciding.get(agent_id) is pending:
                del self._deciding[agent_id]

        task.add_done_callback(done)
        return task

    def task(self, agent_id: str) -> asyncio.Task[Any] | None:
        return self._tasks.get(agent_id)

    def stop_reason(self, agent_id: str) -> str | None:
        """Why the agent's check was cancelled ("" when a newer check replaced it); None if nobody cancelled it."""
        return self._stop_reasons.pop(agent_id, None)

    async def stop(self, agent_id: str, reason: str) -> None:
        """Stop the agent's running check (its CheckFinished says `reason`) and wait until it has ended."""
        task = self._tasks.get(agent_id)
        if task is None or task.done():
            return
        self._stop_reasons[agent_id] = reason
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    async def wait(self, agent_id: str) -> None:
        """Wait until the agent's check (the one running now, any that replaces it, and any that a pending
        decision starts) has ended."""
        while True:
            pending = list(self._deciding.get(agent_id, ()))
            if pending:
                await asyncio.wait(pending)
                continue
            task = self._tasks.get(agent_id)
            if task is None:
                return
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.shield(task)
            if self._tasks.get(agent_id) is task and not self._deciding.get(agent_id):
                return

    async def close(self, reason: str) -> None:
        for pending in list(self._deciding.values()):
            for task in list(pending):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for agent_id in list(self._tasks):
            await self.stop(agent_id, reason)


def _check_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def _prune(folder: Path, keep: int = KEEP_OUTPUTS) -> None:
    logs = sorted(folder.glob("*.log"))
    for old in logs[:-keep] if len(logs) > keep else []:
        for path in (old, old.with_suffix(".failures")):
            with contextlib.suppress(OSError):
                path.unlink()


async def check_agent(
    *,
    agent_id: str,
    cfg: ChecksConfig,
    worktree: Path,
    changed: list[str],
    deleted: list[str],
    digest: str,
    trigger: str,
    tools: ToolsConfig,
    env: dict[str, str],
    tag: str,
    folder: Path,
    checks: Checks,
    emit: Callable[[ev.Event], object],
) -> ev.CheckFinished | None:
    """One check of an agent's worktree, from waiting for a place to the CheckFinished event (returned; None
    when a newer check replaced it). Its output goes to `folder`/<check id>.log."""
    check_id = _check_id()
    started = False
    try:
        async with checks.slot():
            plan = await plan_check(cfg, worktree, changed, deleted, tag=f"{tag}/check-{check_id}", env=env)
            emit(
                ev.CheckStarted(
                    agent=agent_id,
                    check_id=check_id,
                    command=plan.command,
                    scope=plan.scope,
                    why=plan.why,
                    selected=plan.selected,
                    digest=digest,
                    trigger=trigger,
                )
            )
            started = True
            if not plan.command:
                finished = ev.CheckFinished(
                    agent=agent_id, check_id=check_id, outcome="none", reason=plan.why, digest=digest
                )
                emit(finished)
                return finished
            output = folder / f"{check_id}.log"
            report = await run_check(
                plan,
                worktree,
                tools=tools,
                timeout=cfg.timeout,
                env=env,
                tag=f"{tag}/check-{check_id}",
                output=output,
            )
        if report.failures:
            await asyncio.to_thread(_write_private, output.with_suffix(".failures"), report.failures)
        await asyncio.to_thread(_prune, folder)
        c = report.counts
        finished = ev.CheckFinished(
            agent=agent_id,
            check_id=check_id,
            outcome=report.outcome,
            passed=c.passed,
            failed=c.failed,
            errors=c.errors,
            skipped=c.skipped,
            total=c.total,
            failing=c.failing,
            duration=round(report.duration, 3),
            exit_code=report.exit_code,
            reason=report.reason,
            output=str(output),
            digest=digest,
        )
        emit(finished)
        return finished
    except asyncio.CancelledError:
        reason = checks.stop_reason(agent_id)
        if started and reason != "":
            emit(
                ev.CheckFinished(
                    agent=agent_id,
                    check_id=check_id,
                    outcome="error",
                    reason=f"stopped: {reason or 'cancelled'}",
                    digest=digest,
                )
            )
        raise
    except Exception as exc:  # a bug, or a worktree that vanished: said, not swallowed
        message = f"the check could not run: {exc!r}"
        if not started:
            emit(ev.CheckStarted(agent=agent_id, check_id=check_id, scope="none", digest=digest, trigger=trigger))
        finished = ev.CheckFinished(agent=agent_id, check_id=check_id, outcome="error", reason=message, digest=digest)
        emit(finished)
        return finished


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def fix_message(check: Any, stale: bool = False) -> str:
    """The redirect that sends a failed check back to its agent: which tests fail, and what they printed.
    `check` is the agent's CheckState. Blocking (reads the failures file)."""
    failures = ""
    if check.output:
        with contextlib.suppress(OSError):
            failures = Path(check.output).with_suffix(".failures").read_text(encoding="utf-8", errors="replace")
    if len(failures) > MAX_FIX:
        failures = failures[: MAX_FIX // 2] + "\n[…]\n" + failures[-MAX_FIX // 2 :]
    if check.failing:
        names = ", ".join(check.failing[:20]) + (
            f" and {len(check.failing) - 20} more" if len(check.failing) > 20 else ""
        )
        head = f"These tests fail: {names}; fix them."
    elif check.state == "error":
        head = f"The tests did not finish ({check.reason}); make them pass."
    else:
        head = f"The tests fail ({check.reason or 'exit code ' + str(check.exit_code)}); fix them."
    parts = [head]
    if stale:
        parts.append("(This is what they did before your latest changes.)")
    if check.command:
        parts.append(f"The command: {check.command}")
    if failures.strip():
        parts.append("What they printed:\n" + failures.strip())
    return "\n\n".join(parts)
