"""[checks] and a diff → the command line a check runs, and why that one.

`affected` narrows `test` to what the diff touches with its placeholders: {files} (the changed paths that
still exist), {tests} (the Python test files that import a changed module, found from the import graph by
mc/checks/affected.py in a process of its own) and {packages} (the changed files' folders, as ./dir). A pytest
`test` without an `affected` gets the affected tests appended. With nothing to narrow by (no `affected` and no
pytest, no changes, a changed pyproject.toml …) the whole `test` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from mc import procs
from mc.checks import affected as affected_module
from mc.checks.affected import Selection
from mc.config import ChecksConfig

#: How much lower than mission control's own the priority of the import-graph process is (see nice(1)).
NICENESS = 10
#: Seconds the import-graph process may take before the whole test command runs instead.
SELECT_TIMEOUT = 120.0
_OPERATORS = frozenset({"&&", "||", ";", "|", "&", "(", ")", ">", ">>", "<", "2>", "2>&1"})


@dataclass(frozen=True)
class Plan:
    """What a check runs: `command` ("" when there is nothing to run), its scope and why."""

    command: str
    scope: str  # affected | full | none
    why: str
    selected: tuple[str, ...] = ()
    """"tests/test_text.py ← app/text.py", one line per selected test file."""
    pytest: bool = False
    """The command is one pytest run (no shell operators): the check asks it for a JUnit report."""
    notes: tuple[str, ...] = ()


def runs_pytest(command: str) -> tuple[bool, bool]:
    """(whether `command` runs pytest, whether it is a single pytest run that options can be appended to)."""
    try:
        words = shlex.split(command)
    except ValueError:
        return False, False
    pytest = False
    for i, word in enumerate(words):
        base = os.path.basename(word)
        if base in ("pytest", "py.test") or (word == "-m" and i + 1 < len(words) and words[i + 1] == "pytest"):
            pytest = True
            break
    simple = pytest and not any(w in _OPERATORS or any(c in w for c in ";|&`$()<>") for w in words)
    return pytest, simple


def _quote_all(paths: list[str]) -> str:
    return " ".join(shlex.quote(p) for p in paths)


def _packages(paths: list[str]) -> list[str]:
    folders = {os.path.dirname(p) for p in paths}
    return sorted("./" + f if f else "." for f in folders)


async def select_affected(
    worktree: Path, changed: list[str], deleted: list[str], *, tag: str, env: dict[str, str]
) -> Selection:
    """mc/checks/affected.py in a process of its own (isolated: `-I -P`, so only the worktree is searched for
    its packages), killed with the agent's processes; raises RuntimeError when it fails."""
    argv = [sys.executable, "-I", "-P", affected_module.__file__]
    request = json.dumps({"root": str(worktree), "changed": changed, "deleted": deleted})
    small_env = {k: v for k, v in env.items() if k in ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR")}
    small_env["PYTHONDONTWRITEBYTECODE"] = "1"
    proc = await procs.start(
        argv, cwd=worktree, env=small_env, tag=f"{tag}/select-{uuid.uuid4().hex[:8]}", stdin=True, stderr="separate"
    )
    with contextlib.suppress(OSError):  # background work, as the check itself (mc/checks/run.py)
        os.setpriority(os.PRIO_PROCESS, proc.pid, os.getpriority(os.PRIO_PROCESS, 0) + NICENESS)
    try:
        await proc.write(request)
        proc.close_stdin()

        async def read() -> tuple[str, str]:
            out, err = await asyncio.gather(_all(proc.chunks()), _all(proc.stderr_chunks()))
            return out, err

        out, err = await asyncio.wait_for(read(), SELECT_TIMEOUT)
        rc = await proc.wait()
    except TimeoutError:
        raise RuntimeError(f"it took more than {SELECT_TIMEOUT:g} s") from None
    finally:
        await asyncio.shield(proc.kill(grace=0.2))
    if rc != 0:
        last = (err.strip().splitlines() or [f"exit code {rc}"])[-1]
        raise RuntimeError(last)
    try:
        return Selection.from_dict(json.loads(out))
    except (ValueError, TypeError, AttributeError) as exc:
        raise RuntimeError(f"unreadable answer: {exc}") from None


async def _all(chunks: object) -> str:
    parts = []
    async for chunk in chunks:  # type: ignore[attr-defined]
        parts.append(chunk)
    return "".join(parts)


async def plan_check(
    cfg: ChecksConfig,
    worktree: Path,
    changed: list[str],
    deleted: list[str] | None = None,
    *,
    tag: str,
    env: dict[str, str],
) -> Plan:
    """The command a check of this diff runs. `changed`: the paths the diff adds or modifies; `deleted`: those
    it removes (the old side of a rename too)."""
    deleted = list(deleted or [])
    test = cfg.test.strip()
    if not test:
        return Plan("", "none", 'no test command: set [checks] test (e.g. test = "python -m pytest -q")')
    pytest, _ = runs_pytest(test)

    def full(why: str, notes: tuple[str, ...] = ()) -> Plan:
        return Plan(test, "full", why, pytest=runs_pytest(test)[1], notes=notes)

    if "--testmon" in test.split():
        return full("pytest-testmon selects the tests")
    template = cfg.affected.strip() or (f"{test} {{tests}}" if pytest else "")
    if not template:
        return full("the whole test command (no [checks] affected to narrow it)")
    if not changed and not deleted:
        return full("no changes to narrow by")
    values: dict[str, str] = {}
    selected: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    why = ""
    if "{tests}" in template:
        try:
            sel = await select_affected(worktree, changed, deleted, tag=tag, env=env)
        except RuntimeError as exc:
            return full(f"the affected tests could not be found ({exc})")
        notes = tuple(sel.notes)
        if sel.full:
            return full(sel.full, notes)
        if not sel.tests:
            shown = ", ".join(sel.untouched[:3]) + (" …" if len(sel.untouched) > 3 else "")
            return Plan("", "none", f"no test imports what changed ({shown or 'nothing'})", notes=notes)
        selected = tuple(sel.lines())
        values["{tests}"] = _quote_all([path for path, _ in sel.tests])
        n = len(sel.tests)
        why = f"{n} test file{'s' if n != 1 else ''} touched by the diff ({sel.engine})"
    present = [p for p in changed if (worktree / p).exists()]
    if "{files}" in template or "{packages}" in template:
        if not present:
            return full("no changed file is left to narrow by")
        values["{files}"] = _quote_all(present)
        values["{packages}"] = _quote_all(_packages(present))
        why = why or f"{len(present)} changed file{'s' if len(present) != 1 else ''}"
    command = template
    for placeholder, value in values.items():
        command = command.replace(placeholder, value)
    return Plan(command, "affected", why, selected, pytest=runs_pytest(command)[1], notes=notes)


__all__ = ["Plan", "plan_check", "runs_pytest", "select_affected"]
