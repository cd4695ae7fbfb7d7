"""Running one tool call in a worktree."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import shutil
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mc import procs
from mc.config import ToolsConfig
from mc.git.cmd import GitError, agent_git_dir, git_command
from mc.tools import seccomp
from mc.tools.commands import bwrap_argv, find_bwrap, safe_env, sandbox_available
from mc.tools.patch import PatchError, patch_files
from mc.tools.registry import TOOLS
from mc.tools.workspace import Refusal, Workspace

#: Bounds of what read-only tools return.
MAX_LIST_FILES = 1000
MAX_SEARCH_MATCHES = 200
MAX_MATCH_LINE = 300
MAX_READ_BYTES = 20 * 1024 * 1024
MAX_LOG_LINE = 4096
#: What one command's output may put in its agent's log: its first LOG_HEAD characters as they come, then, when
#: it ends, its last LOG_TAIL characters and the count of those left out between ([tools] max_output bounds
#: what the model receives).
LOG_HEAD = 256 * 1024
LOG_TAIL = 64 * 1024


UNCONFINED = (
    "shell commands run unconfined ({why}): they can read and change whatever you can, including the "
    "environment of mission control and the API key in it; {fix}"
)
_INSTALL = 'install bubblewrap (apt-get install bubblewrap) to confine them ([tools] sandbox = "auto" uses it)'
_CHOOSE = 'set [tools] sandbox = "auto" to confine them where bubblewrap works'
_noticed: set[int] = set()


def effective_sandbox(setting: str, path: str | None = None) -> tuple[str, str]:
    """What [tools] sandbox means on this machine, for commands with this PATH: ("bwrap", its version and
    path), ("none", what that means), or ("", why the command must not run: "bwrap" asked for, not usable)."""
    if setting == "none":
        return "none", UNCONFINED.format(why='[tools] sandbox = "none"', fix=_CHOOSE)
    ok, why = sandbox_available(path)
    if ok:
        return "bwrap", why
    if setting == "bwrap":
        return "", why
    reason = "bubblewrap is not installed" if find_bwrap(path) is None else why
    return "none", UNCONFINED.format(why=reason, fix=_INSTALL)


def sandbox_notice(config: Any) -> str | None:
    """Once per fleet `config` (the first agent start): the notice that its agents' commands run unconfined
    because [tools] sandbox = "auto" found no usable bubblewrap; None otherwise. Blocking (runs bwrap once)."""
    tools = config.tools
    if tools.sandbox != "auto" or id(config) in _noticed:
        return None
    mode, why = effective_sandbox(tools.sandbox, safe_env(tools.pass_env).get("PATH"))
    if mode != "none":
        return None
    _noticed.add(id(config))
    weakref.finalize(config, _noticed.discard, id(config))
    return "no sandbox: " + why


def unasked_note(command: str, ws: Workspace, *, allowed: bool, remembered: bool) -> str | None:
    """The warning for a command that runs without asking (`allowed` by allow_commands, or approved-all earlier)
    while files the agent wrote this turn exist: a command's name says nothing of what it runs (`pytest` runs
    the conftest.py the agent just wrote). None when nothing was written, or the command was asked about."""
    files = ws.written_files()
    if not files or not (allowed or remembered):
        return None
    why = "it is in [policy] allow_commands" if allowed else "you approved all like it"
    shown = ", ".join(files[:8]) + (f" and {len(files) - 8} more" if len(files) > 8 else "")
    return (
        f"`{command[:200]}` runs without asking ({why}) after this agent wrote {shown} this turn: "
        "an allowed command runs whatever those files make it run (pytest runs conftest.py), so that code was not approved"
    )


@dataclass(frozen=True)
class ToolOutcome:
    ok: bool
    output: str
    """What the model receives (already truncated to [tools] max_output)."""
    exit_code: int | None = None


class _BadArgs(Exception):
    pass


def truncate_output(text: str, limit: int) -> str:
    """Keep the head and the tail of `text` within `limit` characters, with a marker of what was left out."""
    if len(text) <= limit:
        return text
    marker = f"\n[… {len(text) - limit} characters omitted …]\n"
    budget = limit - len(marker)
    if budget < 2:
        return text[:limit]
    head = budget // 2
    omitted = len(text) - budget
    marker = f"\n[… {omitted} characters omitted …]\n"
    return text[:head] + marker + text[len(text) - (budget - head) :]


class _HeadTail:
    """Keeps the first and last `limit` characters of a stream and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.head: list[str] = []
        self.head_size = 0
        self.tail: collections.deque[str] = collections.deque()
        self.tail_size = 0
        self.total = 0

    def add(self, text: str) -> None:
        self.total += len(text)
        if self.head_size < self.limit:
            take = text[: self.limit - self.head_size]
            self.head.append(take)
            self.head_size += len(take)
            text = text[len(take) :]
        if text:
            self.tail.append(text)
            self.tail_size += len(text)
            while self.tail and self.tail_size - len(self.tail[0]) >= self.limit:
                self.tail_size -= len(self.tail.popleft())

    def render(self) -> str:
        head = "".join(self.head)
        tail = "".join(self.tail)
        if self.total == len(head) + len(tail):
            return truncate_output(head + tail, self.limit)
        tail = tail[-self.limit :]
        budget = max(self.limit - 60, 2)
        h = budget // 2
        t = budget - h
        return head[:h] + f"\n[… {self.total - h - t} characters omitted …]\n" + tail[-t:]


class LogBound:
    """Bounds what one command's output puts in its agent's log, whatever it prints (`yes` fills gigabytes).

    The first `head` characters go to `emit` as they come, cut after a whole line; past them one note says that
    the output goes on, the rest is held in a ring of its last `tail` characters, and `finish` emits the count
    of the characters left out and then that tail, from the start of a line. So the log keeps the head, the
    tail and the size of what was between, as `truncate_output` does for the model."""

    def __init__(self, emit: Callable[[str], None], head: int = LOG_HEAD, tail: int = LOG_TAIL) -> None:
        self._emit = emit
        self.head_left = head
        self.tail_limit = tail
        self.total = 0
        self.omitted = 0
        self._past_head = False
        self._finished = False
        self._ring: collections.deque[str] = collections.deque()
        self._ring_size = 0
        self._ring_at_line_start = True
        self._line_open = False  # the last text emitted did not end its line

    def _out(self, text: str) -> None:
        if text:
            self._emit(text)
            self._line_open = not text.endswith("\n")

    def _note(self, text: str) -> None:
        self._out(("\n" if self._line_open else "") + text)

    def add(self, text: str) -> None:
        if not text or self._finished:
            return
        self.total += len(text)
        if not self._past_head:
            if len(text) <= self.head_left:
                self.head_left -= len(text)
                self._out(text)
                return
            take = text[: self.head_left]
            take = take[: take.rfind("\n") + 1]  # whole lines only
            self._out(take)
            self._past_head = True
            self._note(
                f"[… the output goes on: the log keeps its last {self.tail_limit:,} characters and counts the rest …]\n"
            )
            text = text[len(take) :]
            self._ring_at_line_start = not take or take.endswith("\n")
        self._ring.append(text)
        self._ring_size += len(text)
        while self._ring_size > self.tail_limit:
            excess = self._ring_size - self.tail_limit
            first = self._ring[0]
            dropped = first if len(first) <= excess else first[:excess]
            if dropped is first:
                self._ring.popleft()
            else:
                self._ring[0] = first[excess:]
            self._ring_size -= len(dropped)
            self.omitted += len(dropped)
            self._ring_at_line_start = dropped.endswith("\n")

    def finish(self) -> None:
        """The command ended: emit the count of what was left out and the tail (nothing if all was shown)."""
        if self._finished:
            return
        self._finished = True
        if not self._past_head:
            return
        tail = "".join(self._ring)
        self._ring.clear()
        if not self._ring_at_line_start:
            start = tail.find("\n") + 1
            if 0 < start < len(tail):  # begin at a line of its own
                self.omitted += start
                tail = tail[start:]
        if self.omitted:
            self._note(f"[… {self.omitted:,} characters of output left out of the log …]\n")
        self._out(tail)


def _arg(args: dict[str, Any], name: str, kind: type | tuple[type, ...], tool: str, required: bool = True) -> Any:
    value = args.get(name)
    if value is None:
        if required:
            raise _BadArgs(f"{tool} needs the argument {name!r}")
        return None
    if isinstance(value, bool) or not isinstance(value, kind):
        raise _BadArgs(f"{tool}: argument {name!r} = {value!r} has the wrong type")
    return value


async def run_tool(
    name: str,
    args: dict[str, Any],
    ws: Workspace,
    *,
    on_output: Callable[[str], None],
    env: dict[str, str],
    tools_cfg: ToolsConfig,
    tag: str,
) -> ToolOutcome:
    """Run one tool call in the worktree. Raises Refusal when it would reach outside the worktree.

    `on_output` receives a shell command's output as it comes: one or more complete, cleaned lines, each
    ending in a newline. `tag` is the agent's process tag; each call runs under `tag/<call>`.
    """
    if name not in TOOLS:
        return ToolOutcome(False, f"unknown tool {name!r}: use one of {', '.join(TOOLS)}")
    if not isinstance(args, dict):
        return ToolOutcome(False, f"{name}: the arguments must be a JSON object")
    try:
        if name == "shell":
            outcome = await _shell(args, ws, on_output, env, tools_cfg, tag)
        elif name == "read_file":
            outcome = _read_file(args, ws)
        elif name == "write_file":
            outcome = _write_file(args, ws)
        elif name == "apply_patch":
            outcome = await _apply_patch(args, ws, env, tag)
        elif name == "list_files":
            outcome = await _list_files(args, ws, env, tag)
        else:
            outcome = await _search(args, ws, env, tag)
    except _BadArgs as exc:
        return ToolOutcome(False, str(exc))
    except GitError as exc:  # the worktree's .git no longer points where mission control put it
        return ToolOutcome(False, f"{name}: {exc}")
    except OSError as exc:  # a program or folder that cannot be started or read
        return ToolOutcome(False, f"{name} failed: {exc}")
    return ToolOutcome(outcome.ok, truncate_output(outcome.output, tools_cfg.max_output), outcome.exit_code)


# --------------------------------------------------------------------------------------------- shell


async def _shell(
    args: dict[str, Any],
    ws: Workspace,
    on_output: Callable[[str], None],
    env: dict[str, str],
    cfg: ToolsConfig,
    tag: str,
) -> ToolOutcome:
    command = _arg(args, "command", str, "shell")
    if not command.strip():
        return ToolOutcome(False, "shell: the command is empty")
    timeout = cfg.shell_timeout
    asked = _arg(args, "timeout", (int, float), "shell", required=False)
    if asked is not None and asked > 0:
        timeout = min(timeout, float(asked))
    env = dict(env)
    shell = shutil.which("bash", path=env.get("PATH")) or "/bin/sh"
    argv = [shell, "-c", command]
    mode, why = await asyncio.to_thread(effective_sandbox, cfg.sandbox, env.get("PATH"))
    bwrap = find_bwrap(env.get("PATH"))
    if not mode or (mode == "bwrap" and bwrap is None):
        return ToolOutcome(False, why)
    filter_fd: int | None = None
    if mode == "bwrap" and bwrap is not None:
        admin = agent_git_dir(ws.root)  # <common git dir>/worktrees/<id>, as the repository records it
        common = admin.parent.parent if admin is not None else None
        filter_fd = seccomp.program_fd()
        argv = bwrap_argv(
            bwrap, ws.root, argv, git_dir=common, path=env.get("PATH"), home=env.get("HOME"), seccomp_fd=filter_fd
        )
        env["TMPDIR"] = "/tmp"
    call_tag = f"{tag}/shell-{uuid.uuid4().hex[:8]}"
    collected = _HeadTail(cfg.max_output)
    try:
        proc = await procs.start(
            argv, cwd=ws.root, env=env, tag=call_tag, pass_fds=() if filter_fd is None else (filter_fd,)
        )
    finally:
        if filter_fd is not None:
            os.close(filter_fd)

    def show(text: str) -> None:
        with contextlib.suppress(Exception):
            on_output(text)

    logged = LogBound(show)  # what the log gets: head, tail and a count, however much the command prints

    async def pump() -> None:
        splitter = procs.LineSplitter(max_line=MAX_LOG_LINE)
        async for chunk in proc.chunks():
            _emit(splitter.feed(chunk))
        _emit(splitter.flush())
        logged.finish()

    def _emit(lines: list[str]) -> None:
        if lines:
            text = "".join(procs.clean_terminal_text(line) + "\n" for line in lines)
            collected.add(text)
            logged.add(text)

    reader = asyncio.create_task(pump())
    timed_out = False
    try:
        try:
            rc: int | None = await asyncio.wait_for(asyncio.shield(proc.wait()), timeout)
        except TimeoutError:
            timed_out = True
            rc = None
        leftovers = len(procs.find_tagged(call_tag))
        await proc.kill(grace=1.0 if timed_out else 0.5)
        await reader
    except asyncio.CancelledError:
        await asyncio.shield(proc.kill(grace=0.5))
        reader.cancel()
        raise
    output = collected.render()
    notes = []
    if timed_out:
        notes.append(f"[timed out after {timeout:g} s: the command and its processes were killed]")
    elif leftovers:
        notes.append(f"[{leftovers} background process(es) still running when the command ended were stopped]")
    if rc:
        notes.append(f"[exit code {rc}]")
    if notes:
        output = (output + "\n" if output and not output.endswith("\n") else output) + "\n".join(notes)
    return ToolOutcome(rc == 0 and not timed_out, truncate_output(output, cfg.max_output), rc)


# --------------------------------------------------------------------------------------------- files


def _read_file(args: dict[str, Any], ws: Workspace) -> ToolOutcome:
    path = _arg(args, "path", str, "read_file")
    start = _arg(args, "start_line", int, "read_file", required=False)
    end = _arg(args, "end_line", int, "read_file", required=False)
    real = ws.resolve(path)
    if real.is_dir():
        return ToolOutcome(False, f"{path} is a folder: use list_files")
    try:
        data = ws.read_bytes(path, MAX_READ_BYTES + 1)
    except FileNotFoundError:
        return ToolOutcome(False, f"no such file: {path}")
    except OSError as exc:
        return ToolOutcome(False, f"cannot read {path}: {exc.strerror}")
    if b"\0" in data[:8192]:
        return ToolOutcome(False, f"{path} is a binary file ({real.stat().st_size} bytes): not shown")
    text = data[:MAX_READ_BYTES].decode("utf-8", errors="replace")
    if start is None and end is None:
        return ToolOutcome(True, text)
    lines = text.splitlines(keepends=True)
    first = max(start or 1, 1)
    last = end if end is not None else len(lines)
    if first > len(lines) and lines:
        return ToolOutcome(False, f"start_line {first} is past the end of {path} ({len(lines)} lines)")
    if last < first:
        return ToolOutcome(False, f"end_line {last} is before start_line {first}")
    return ToolOutcome(True, "".join(lines[first - 1 : last]))


def _write_file(args: dict[str, Any], ws: Workspace) -> ToolOutcome:
    path = _arg(args, "path", str, "write_file")
    content = _arg(args, "content", str, "write_file")
    real = ws.resolve(path, for_write=True)
    if real.is_dir():
        return ToolOutcome(False, f"{path} is a folder: give a file path")
    existed = real.exists()
    try:
        ws.write_bytes(path, content.encode("utf-8"))
    except OSError as exc:
        return ToolOutcome(False, f"cannot write {path}: {exc.strerror}")
    lines = len(content.splitlines())
    return ToolOutcome(True, f"{'replaced' if existed else 'created'} {ws.relative(real)} ({lines} lines)")


async def _capture(
    argv: list[str], ws: Workspace, env: dict[str, str], tag: str, stdin: str | None = None, max_chars: int = 0
) -> tuple[int, str, str, bool]:
    """Run a helper (git) to completion: (exit code, stdout, stderr, cut short).

    It runs outside any sandbox, so git is confined as mission control's own calls are (mc.git.cmd): no config
    the agent could have written runs a program. Raises GitError when the worktree's .git was tampered with."""
    env = {**env, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C.UTF-8"}
    if argv[0] == "git":
        argv, env = git_command(argv[1:], ws.root, env)
    proc = await procs.start(
        argv, cwd=ws.root, env=env, tag=f"{tag}/{uuid.uuid4().hex[:8]}", stdin=stdin is not None, stderr="separate"
    )
    out: list[str] = []
    size = 0
    cut = False

    async def read_out() -> None:
        nonlocal size, cut
        async for chunk in proc.chunks():
            out.append(chunk)
            size += len(chunk)
            if max_chars and size > max_chars:
                cut = True
                await proc.kill(grace=0.2)
                return

    async def read_err() -> str:
        return "".join([c async for c in proc.stderr_chunks()])

    try:
        if stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                await proc.write(stdin)
            proc.close_stdin()
        _, err = await asyncio.gather(read_out(), read_err())
        rc = await proc.wait()
    finally:
        await asyncio.shield(proc.kill(grace=0.2))
    return rc, "".join(out), err, cut


async def _apply_patch(args: dict[str, Any], ws: Workspace, env: dict[str, str], tag: str) -> ToolOutcome:
    patch = _arg(args, "patch", str, "apply_patch")
    try:
        files = patch_files(patch)
    except PatchError as exc:
        return ToolOutcome(False, str(exc))
    for path in files.paths:
        ws.resolve(path, for_write=True)
    if not patch.endswith("\n"):
        patch += "\n"
    argv = ["git", "apply", "--recount", "--whitespace=nowarn", f"-p{files.strip}", "-"]
    rc, out, err, _ = await _capture(argv, ws, env, tag, stdin=patch)
    if rc != 0:
        detail = (err or out).strip() or f"git apply exited with {rc}"
        return ToolOutcome(False, f"the patch does not apply (nothing was changed):\n{detail}", rc)
    ws.written.update(ws.relative(ws.resolve(path)) for path in files.paths)
    parts = []
    for path in files.paths:
        label = " (created)" if path in files.created else " (deleted)" if path in files.deleted else ""
        parts.append(path + label)
    return ToolOutcome(True, "applied: " + ", ".join(parts), 0)


# --------------------------------------------------------------------------------------------- listing


def _walk(base: Path, ws: Workspace) -> list[str]:
    found: list[str] = []
    for folder, dirs, names in os.walk(base):
        dirs[:] = sorted(d for d in dirs if d != ".git")
        for n in sorted(names):
            found.append(ws.relative(Path(folder) / n))
            if len(found) > MAX_LIST_FILES * 5:
                return found
    return found


async def _tracked_and_untracked(ws: Workspace, rel: str, env: dict[str, str], tag: str) -> list[str] | None:
    """Files git knows or would add (ignored ones left out) under `rel`; None outside a git worktree."""
    argv = ["git", "--literal-pathspecs", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", rel]
    rc, out, _err, _ = await _capture(argv, ws, env, tag)
    if rc != 0:
        return None
    seen: dict[str, None] = {}
    for name in out.split("\0"):
        if name and name not in seen and os.path.lexists(ws.root / name):
            seen[name] = None
    return sorted(seen)


async def _list_files(args: dict[str, Any], ws: Workspace, env: dict[str, str], tag: str) -> ToolOutcome:
    path = _arg(args, "path", str, "list_files", required=False) or "."
    real = ws.resolve(path)
    if not real.exists():
        return ToolOutcome(False, f"no such folder: {path}")
    rel = ws.relative(real)
    if real.is_file():
        return ToolOutcome(True, rel)
    files = await _tracked_and_untracked(ws, rel, env, tag)
    if files is None:
        files = _walk(real, ws)
    if not files:
        return ToolOutcome(True, f"(no files under {rel})")
    shown = files[:MAX_LIST_FILES]
    text = "\n".join(shown)
    if len(files) > len(shown):
        text += f"\n[… {len(files) - len(shown)} more files: list a folder to see them]"
    return ToolOutcome(True, text)


# --------------------------------------------------------------------------------------------- search


def _format_match(path: str, number: str, line: str) -> str:
    line = procs.clean_terminal_text(line)
    if len(line) > MAX_MATCH_LINE:
        line = line[:MAX_MATCH_LINE] + " …"
    return f"{path}:{number}:{line}"


def _python_search(regex: re.Pattern[str], base: Path, ws: Workspace, limit: int) -> list[str]:
    matches: list[str] = []
    files = [base] if base.is_file() else [ws.root / p for p in _walk(base, ws)]
    for file in files:
        try:
            if file.is_symlink() or not file.is_file() or file.stat().st_size > MAX_READ_BYTES:
                continue
            data = file.read_bytes()
        except OSError:
            continue
        if b"\0" in data[:8192]:
            continue
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
            if regex.search(line):
                matches.append(_format_match(ws.relative(file), str(number), line))
                if len(matches) > limit:
                    return matches
    return matches


async def _search(args: dict[str, Any], ws: Workspace, env: dict[str, str], tag: str) -> ToolOutcome:
    pattern = _arg(args, "pattern", str, "search")
    path = _arg(args, "path", str, "search", required=False) or "."
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        return ToolOutcome(False, f"search: invalid regular expression {pattern!r}: {exc}")
    real = ws.resolve(path)
    if not real.exists():
        return ToolOutcome(False, f"no such file or folder: {path}")
    rel = ws.relative(real)
    limit = MAX_SEARCH_MATCHES
    matches: list[str] | None = None
    for flavour in ("-P", "-E"):
        argv = ["git", "--literal-pathspecs", "grep", "-n", "-z", "-I", "--untracked", "--no-color", flavour]
        rc, out, err, _ = await _capture([*argv, "-e", pattern, "--", rel], ws, env, tag, max_chars=limit * 400)
        if rc in (0, 1) or (rc < 0 and out):
            matches = []
            for line in out.split("\n"):
                parts = line.split("\0", 2)
                if len(parts) == 3:
                    matches.append(_format_match(*parts))
                if len(matches) > limit:
                    break
            break
        if "not a git repository" in err:
            break
    if matches is None:
        matches = await asyncio.to_thread(_python_search, regex, real, ws, limit)
    if not matches:
        return ToolOutcome(True, f"no matches for /{pattern}/ in {rel}")
    text = "\n".join(matches[:limit])
    if len(matches) > limit:
        text += f"\n[more than {limit} matches: narrow the pattern or the path]"
    return ToolOutcome(True, text)


__all__ = ["Refusal", "ToolOutcome", "run_tool", "truncate_output"]
