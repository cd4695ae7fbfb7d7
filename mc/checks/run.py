"""Running a check in an agent's worktree, as the agent's own shell commands run.

The command goes through the built-in agent's shell tool (mc.tools.run_tool): its own process group under the
agent's process tag (so killing the agent ends its checks), the sandbox of [tools] sandbox, a timeout after which
its whole tree is killed, and output read as it comes and bounded (its first 256 KiB and last 64 KiB are kept).
That output is written, as it comes, to the check's file on disk; a pytest run also writes a JUnit report into
its own (private, under a sandbox) temporary folder, which the command prints base64-encoded after a marker line
when pytest is done, so that the report leaves the sandbox without the check writing into the worktree.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import shlex
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from mc.checks.plan import NICENESS, Plan
from mc.checks.results import MAX_FAILING, Counts, failure_report, parse_output
from mc.config import ToolsConfig
from mc.tools import Workspace, run_tool


@dataclass(frozen=True)
class Report:
    """The result of one check run."""

    outcome: str  # passed | failed | error | none
    counts: Counts
    duration: float
    exit_code: int | None
    reason: str = ""
    failures: str = ""
    """What the failing tests printed (for the message that asks the agent to fix them)."""


def with_junit(command: str, marker: str) -> str:
    """A pytest command that also writes its JUnit report and prints it, base64-encoded, after `marker`."""
    report = f'"${{TMPDIR:-/tmp}}/{marker}.xml"'
    extra = " -rfE" if " -r" not in f" {command}" else ""
    return (
        f"{command}{extra} --junitxml={report} -o junit_family=xunit1; __mc_status=$?; "
        f"if [ -s {report} ]; then printf '\\n%s\\n' {shlex.quote(marker)}; base64 < {report}; fi; "
        f"rm -f {report}; exit $__mc_status"
    )


class _Output:
    """The output of a check: to its file as it comes, kept for parsing, the JUnit report after the marker."""

    def __init__(self, path: Path | None, marker: str) -> None:
        self.marker = marker
        self.parts: list[str] = []
        self.junit: list[str] = []
        self._in_junit = False
        self._file: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            self._file = os.fdopen(fd, "w", encoding="utf-8", errors="replace")

    def header(self, text: str) -> None:
        """A line for the file only (the command that runs)."""
        if self._file is not None:
            try:
                self._file.write(text)
            except OSError:
                self.close()

    def write(self, text: str) -> None:
        for line in text.splitlines(keepends=True):
            if self._in_junit:
                self.junit.append(line.strip())
            elif line.rstrip("\n") == self.marker:
                self._in_junit = True
            else:
                self.parts.append(line)
                if self._file is not None:
                    try:
                        self._file.write(line)
                    except OSError:  # a full disk: the check goes on, its file stops here
                        self.close()
        if self._file is not None:
            try:
                self._file.flush()
            except OSError:
                self.close()

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None

    def junit_text(self) -> str:
        if not self.junit:
            return ""
        try:
            return base64.b64decode("".join(self.junit), validate=False).decode("utf-8", errors="replace")
        except (binascii.Error, ValueError):
            return ""


async def run_check(
    plan: Plan,
    worktree: Path,
    *,
    tools: ToolsConfig,
    timeout: float,
    env: dict[str, str],
    tag: str,
    output: Path | None = None,
) -> Report:
    """Run `plan.command` in `worktree` and read its result. `output`: the file that keeps what it printed."""
    marker = f"mc-check-junit-{uuid.uuid4().hex}"
    command = with_junit(plan.command, marker) if plan.pytest else plan.command
    # Checks are background work: below the agents' own commands and mission control itself, so that a fleet's
    # worth of test runs cannot make the screen or the keys wait (children inherit the niceness).
    command = f"renice -n {NICENESS} -p $$ >/dev/null 2>&1; {command}"
    env = {**env, "PYTHONDONTWRITEBYTECODE": "1", "NO_COLOR": "1", "PY_COLORS": "0"}
    cfg = dataclasses.replace(tools, shell_timeout=timeout, max_output=4000)
    out = _Output(output, marker)
    out.header(f"$ {plan.command}\n")
    started = time.monotonic()
    try:
        result = await run_tool(
            "shell",
            {"command": command},
            Workspace(worktree),
            on_output=out.write,
            env=env,
            tools_cfg=cfg,
            tag=tag,
        )
    finally:
        out.close()
    duration = time.monotonic() - started
    text = "".join(out.parts)
    counts = parse_output(text, out.junit_text())
    counts = dataclasses.replace(counts, failing=counts.failing[:MAX_FAILING])
    rc = result.exit_code
    failures = failure_report(counts, text) if counts.failed or counts.errors or (rc not in (0, None)) else ""
    if rc is None:
        if duration >= timeout * 0.99:
            return Report("error", counts, duration, None, f"timed out after {timeout:g} s", failures)
        why = result.output.strip().splitlines()[-1] if result.output.strip() else "it could not start"
        return Report("error", counts, duration, None, why)
    if rc == 0 and not (counts.failed or counts.errors):
        if counts.no_tests or (counts.counted and counts.total == 0):
            return Report("none", counts, duration, rc, "no tests ran")
        return Report("passed", counts, duration, rc)
    if rc < 0:  # the shell itself was killed (the agent was interrupted or killed): no verdict
        return Report("error", counts, duration, rc, f"stopped by signal {-rc}", failures)
    if plan.pytest and rc == 5:
        return Report("none", counts, duration, rc, "no tests ran")
    if rc == 127 or (plan.pytest and rc in (3, 4)):
        last = [ln for ln in text.strip().splitlines() if ln.strip()]
        return Report("error", counts, duration, rc, last[-1][:200] if last else f"exit code {rc}", failures)
    reason = "" if counts.failed or counts.errors else f"exit code {rc}"
    return Report("failed", counts, duration, rc, reason, failures)


__all__ = ["Report", "run_check", "with_junit"]
