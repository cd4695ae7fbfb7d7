"""Start and kill process trees; read child output safely.

Every process started here runs in its own session and process group and carries
``MC_PROC_TAG=<tag>`` in its environment. A kill signals the group, then finds every process that
still carries the tag by scanning ``/proc/*/environ`` (a grandchild that called ``setsid`` or a
double-forking daemon escapes the group but keeps its environment), and every descendant or member of
the group or session. With :func:`enable_subreaper` such orphans become our children, and they are
reaped one by one with ``waitpid(pid, WNOHANG)`` — never ``waitpid(-1)``, which would steal other
code's children.

Exit is detected through a pidfd (or by polling ``Popen.poll``), never through the pipes closing: a
surviving grandchild may hold them open for ever. After the exit, output is drained briefly and then
the pipe is closed.

Tags are hierarchical: ``find_tagged("a1")`` also finds ``MC_PROC_TAG=a1/call-7``, so one tag per
agent and a sub-tag per tool call lets either be cleaned up.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import contextlib
import ctypes
import fcntl
import os
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Literal

TAG_VAR = "MC_PROC_TAG"
READ_SIZE = 65536
#: Bytes of unread output buffered per stream before we stop reading (the child then blocks on write).
HIGH_WATER = 8 * 1024 * 1024
LOW_WATER = 1024 * 1024
#: After the leader exits: stop reading once no output came for DRAIN_IDLE s, or after DRAIN_MAX s.
DRAIN_IDLE = 0.2
DRAIN_MAX = 2.0

_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37
_subreaper_on = False

#: Live leaders by pid, so that reaping a tagged pid that is a leader goes through its Popen.
_LEADERS: weakref.WeakValueDictionary[int, Proc] = weakref.WeakValueDictionary()
#: Pids started but not yet wrapped in a Proc, and the lock that makes "started" and "adopted" exclusive.
_STARTING: set[int] = set()
_SPAWN_LOCK = threading.Lock()


# --------------------------------------------------------------------------------------------- subreaper


def enable_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux). Idempotent; False where unavailable."""
    global _subreaper_on
    if _subreaper_on:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.prctl(_PR_SET_CHILD_SUBREAPER, ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0), 0)
    except (OSError, AttributeError):
        return False
    if rc != 0:
        return False
    _subreaper_on = True
    return True


def disable_subreaper() -> None:
    """Stop being the reaper of orphans (for tests that must leave the process as they found it)."""
    global _subreaper_on
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, ctypes.c_ulong(0), 0, 0, 0)
        except (OSError, AttributeError):
            return
    _subreaper_on = False


def subreaper_enabled() -> bool:
    """Whether this process is a child subreaper (asks the kernel)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        value = ctypes.c_int(0)
        if libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(value), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    return bool(value.value)


# --------------------------------------------------------------------------------------------- /proc scan


def _check_tag(tag: str) -> None:
    if not tag or "\0" in tag or "=" in tag or "\n" in tag:
        raise ValueError(f"process tag {tag!r} is not usable: use a non-empty name without '=', NUL or newline")


def _pids() -> list[int]:
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    return [int(n) for n in names if n.isdigit()]


def _has_tag(pid: int, exact: bytes, prefix: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            data = fh.read()
    except OSError:
        return False
    if exact not in data:
        return False
    return any(item == exact or item.startswith(prefix) for item in data.split(b"\0"))


def find_tagged(tag: str) -> list[int]:
    """Pids of live processes whose environment has MC_PROC_TAG=tag (or tag/…). Zombies are not listed."""
    _check_tag(tag)
    exact = f"{TAG_VAR}={tag}".encode()
    prefix = exact + b"/"
    me = os.getpid()
    return sorted(pid for pid in _pids() if pid != me and _has_tag(pid, exact, prefix))


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgrp, session) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[3])
    except (IndexError, ValueError):
        return None


class _Tree:
    """What we know of one process tree: the pids seen in it and the groups and sessions they used.

    A member that exits after being orphaned is a zombie child of ours (with the subreaper on); a zombie
    has no readable environment, so it is recognised by the group or session it shared with the tree.
    """

    def __init__(self, tag: str | None, leader: int | None) -> None:
        self.tag = tag
        self.leader = leader
        self.pids: set[int] = set()
        self.groups: set[int] = {leader} if leader is not None else set()

    def scan(self, leader_alive: bool = True) -> tuple[set[int], set[int]]:
        """(live members, zombie children of ours that belonged to the tree)."""
        me = os.getpid()
        exact = f"{TAG_VAR}={self.tag}".encode() if self.tag else b""
        prefix = exact + b"/"
        leader = self.leader if leader_alive else None
        children: dict[int, list[int]] = collections.defaultdict(list)
        info: dict[int, tuple[int, int]] = {}
        members: set[int] = set()
        zombies: list[tuple[int, int, int]] = []
        for pid in _pids():
            if pid == me:
                continue
            st = _stat(pid)
            if st is None:
                continue
            state, ppid, pgrp, session = st
            if state in ("Z", "X"):
                if ppid == me:
                    zombies.append((pid, pgrp, session))
                continue
            children[ppid].append(pid)
            info[pid] = (pgrp, session)
            if (leader is not None and (pid == leader or pgrp == leader or session == leader)) or (
                self.tag and _has_tag(pid, exact, prefix)
            ):
                members.add(pid)
        stack = list(members)
        while stack:
            for child in children.get(stack.pop(), ()):
                if child not in members:
                    members.add(child)
                    stack.append(child)
        self.pids |= members
        for pid in members:
            self.groups.update(info.get(pid, ()))
        dead = {
            pid
            for pid, pgrp, session in zombies
            if pid in self.pids or pid in self.groups or pgrp in self.groups or session in self.groups
        }
        return members, dead


def _signal(pids: set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _reap(pids: set[int], timeout: float = 1.0) -> None:
    """Reap the given pids if they are our children (adopted orphans), each by its own pid."""
    pending = set(pids)
    deadline = time.monotonic() + timeout
    while pending:
        for pid in list(pending):
            leader = _LEADERS.get(pid)
            if leader is not None:
                if leader._poll() is not None:
                    pending.discard(pid)
                continue
            try:
                done, _status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pending.discard(pid)  # not our child: its parent (or init) reaps it
                continue
            if done == pid:
                pending.discard(pid)
        if not pending or time.monotonic() > deadline:
            return
        time.sleep(0.01)


def _kill_tree(tree: _Tree, sig: int, leader_alive: bool = True) -> set[int]:
    """Signal the tree (its group too); with SIGKILL re-scan and repeat until nothing is left, then reap."""
    signalled: set[int] = set()
    dead: set[int] = set()
    for _ in range(100):
        members, zombies = tree.scan(leader_alive)
        dead |= zombies
        if tree.leader is not None and leader_alive:
            try:
                os.killpg(tree.leader, sig)
            except (ProcessLookupError, PermissionError):
                pass
        if not members:
            break
        _signal(members, sig)
        signalled |= members
        if sig != signal.SIGKILL:
            break
        time.sleep(0.01)
    if sig == signal.SIGKILL:
        _reap(signalled | dead)
        _reap(tree.scan(leader_alive=False)[1], timeout=0.2)
    return signalled


def _adoptees(me: int, my_session: int) -> tuple[list[int], list[int]]:
    """(live, zombie) children of ours that we did not start: orphans the subreaper adopted.

    Everything mission control starts itself is either a Proc leader (its own session, in _LEADERS) or a
    plain subprocess such as git (our own session). A child of ours in another session that no Proc leads
    was started by something an agent ran and reparented to us when its parent exited: `setsid`, or
    `env -u MC_PROC_TAG` / `env -i` to shed the tag, does not take it out of this list."""
    live: list[int] = []
    dead: list[int] = []
    for pid in _pids():
        if pid == me or pid in _LEADERS or pid in _STARTING:
            continue
        st = _stat(pid)
        if st is None:
            continue
        state, ppid, _pgrp, session = st
        if ppid != me or session == my_session:
            continue
        (dead if state in ("Z", "X") else live).append(pid)
    return live, dead


def _cwd(pid: int) -> str:
    try:
        where = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""
    return where.removesuffix(" (deleted)")


def _inside(path: str, root: str) -> bool:
    return bool(path) and (path == root or path.startswith(root.rstrip(os.sep) + os.sep))


def adopted(within: str | os.PathLike[str] | None = None) -> list[int]:
    """Live processes reparented to us that we did not start (see _adoptees); with `within`, only those whose
    working folder is inside that folder (an agent's worktree: they are that agent's)."""
    with _SPAWN_LOCK:
        live, _dead = _adoptees(os.getpid(), os.getsid(0))
    if within is None:
        return sorted(live)
    root = os.path.realpath(within)
    return sorted(pid for pid in live if _inside(_cwd(pid), root))


def end_adopted(within: str | os.PathLike[str] | None = None) -> int:
    """Kill every adopted process tree (those inside `within` only, when given) and reap every adopted zombie.
    What the subreaper inherits belongs to the fleet: nothing it adopted outlives the agent or the fleet.
    Returns how many processes were signalled."""
    signalled: set[int] = set()
    for pid in adopted(within):
        signalled |= _kill_tree(_Tree(None, pid), signal.SIGKILL)
    reap_adopted()
    return len(signalled)


def reap_adopted() -> int:
    """Reap the zombies of adopted orphans that exited (each by its own pid). Returns how many."""
    with _SPAWN_LOCK:
        _live, dead = _adoptees(os.getpid(), os.getsid(0))
    reaped = 0
    for pid in dead:
        with contextlib.suppress(ChildProcessError):
            done, _status = os.waitpid(pid, os.WNOHANG)
            reaped += done == pid
    return reaped


def kill_tagged(tag: str, sig: int = signal.SIGKILL) -> int:
    """Signal every process carrying the tag (and its descendants); with SIGKILL repeat until none is left
    and reap the ones that are our children. Returns how many processes were signalled."""
    _check_tag(tag)
    return len(_kill_tree(_Tree(tag, None), sig))


# --------------------------------------------------------------------------------------------- decoding


class OutputDecoder:
    """Bytes → str with an incremental UTF-8 decoder (errors="replace"); with pty=True, ``\\r\\n`` → ``\\n``."""

    def __init__(self, pty: bool = False) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pty = pty
        self._held_cr = False

    def decode(self, data: bytes, final: bool = False) -> str:
        text = self._decoder.decode(data, final)
        if self._pty:
            if self._held_cr:
                text = "\r" + text
                self._held_cr = False
            if text.endswith("\r") and not final:
                text = text[:-1]
                self._held_cr = True
            text = text.replace("\r\n", "\n")
        return text


class LineSplitter:
    """Split a stream of text into complete lines (without their ``\\n``), capping each at ``max_line``.

    A longer line keeps its first ``max_line`` characters followed by ``… [+N chars]``; the rest is
    counted, not stored. With ``truncate=False`` it is cut into pieces of ``max_line`` characters instead.
    """

    def __init__(self, max_line: int = 4096, truncate: bool = True) -> None:
        if max_line < 1:
            raise ValueError("max_line must be at least 1")
        self.max_line = max_line
        self.truncate = truncate
        self._parts: list[str] = []
        self._size = 0
        self._dropped = 0

    def _emit(self) -> str:
        line = "".join(self._parts)
        if self._dropped:
            line += f" … [+{self._dropped} chars]"
        self._parts, self._size, self._dropped = [], 0, 0
        return line

    def _add(self, piece: str, out: list[str]) -> None:
        while piece:
            room = self.max_line - self._size
            if room <= 0:
                if self.truncate:
                    self._dropped += len(piece)
                    return
                out.append(self._emit())
                continue
            self._parts.append(piece[:room])
            self._size += min(room, len(piece))
            piece = piece[room:]

    def feed(self, text: str) -> list[str]:
        """Add text; return the lines it completed."""
        out: list[str] = []
        pieces = text.split("\n")
        for piece in pieces[:-1]:
            self._add(piece, out)
            out.append(self._emit())
        self._add(pieces[-1], out)
        return out

    def flush(self) -> list[str]:
        """The unterminated last line, if any."""
        if self._parts or self._dropped:
            return [self._emit()]
        return []


# OSC (titles, clipboard 52 …), DCS/SOS/PM/APC strings, CSI (colours, clears, moves), other escapes, a lone ESC.
# String bodies stop at a newline or at the next ESC, so an unterminated one cannot swallow later lines.
_ESCAPES = re.compile(
    r"""
      (?:\x1b\]|\x9d)[^\x07\x1b\x9c\n]*(?:\x07|\x1b\\|\x9c|(?=[\x1b\n])|\Z)
    | (?:\x1b[PX^_]|[\x90\x98\x9e\x9f])[^\x1b\x9c\n]*(?:\x1b\\|\x9c|(?=[\x1b\n])|\Z)
    | (?P<csi>(?:\x1b\[|\x9b)(?P<params>[0-?]*)[ -/]*(?P<final>[@-~]|\Z))
    | \x1b[ -/]*[0-~]
    | \x1b
    """,
    re.VERBOSE,
)
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROLS_BUT_ESC = re.compile(r"[\x00-\x08\x0b-\x1a\x1c-\x1f\x7f-\x9f]")
_SGR = re.compile(r"\x1b\[[0-9;:]*m")
_SGR_PARAMS = re.compile(r"[0-9;:]*")


def _apply_backspaces(text: str) -> str:
    out: list[str] = []
    for ch in text:
        if ch == "\b":
            if out and out[-1] != "\n":
                out.pop()
        else:
            out.append(ch)
    return "".join(out)


def _last_visible_segment(line: str) -> str:
    segments = line.split("\r")
    for segment in reversed(segments):
        if _SGR.sub("", segment):
            return segment
    return ""


def clean_terminal_text(text: str, keep_sgr: bool = False) -> str:
    """Make child output safe for a log: no escape sequence that moves, clears, retitles or touches the clipboard.

    ``\\r\\n`` becomes ``\\n``; a line overwritten with ``\\r`` keeps its last visible segment; OSC, DCS and
    CSI sequences are removed (SGR colour codes are kept with ``keep_sgr=True``, for ``Text.from_ansi``);
    backspace erases the character before it; other control characters except tab and newline are dropped.
    """

    def replace(m: re.Match[str]) -> str:
        if keep_sgr and m.group("csi") and m.group("final") == "m" and _SGR_PARAMS.fullmatch(m.group("params")):
            return "\x1b[" + m.group("params") + "m"
        return ""

    text = text.replace("\r\n", "\n")
    if "\b" in text:
        text = _apply_backspaces(text)
    text = _ESCAPES.sub(replace, text)
    if "\r" in text:
        text = "\n".join(_last_visible_segment(line) if "\r" in line else line for line in text.split("\n"))
    # Every ESC left is the start of an SGR sequence we chose to keep.
    return (_CONTROLS_BUT_ESC if keep_sgr else _CONTROLS).sub("", text)


# --------------------------------------------------------------------------------------------- reading


class _Reader:
    """Non-blocking reader of one fd into a bounded queue of byte chunks."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, pty: bool) -> None:
        self.loop = loop
        self.fd = fd
        self.pty = pty
        self.queue: collections.deque[bytes] = collections.deque()
        self.pending = 0
        self.paused = False
        self.closed = False
        self.last_data = time.monotonic()
        self.event = asyncio.Event()
        self.consumed = False
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._ready)

    def _ready(self) -> None:
        try:
            data = os.read(self.fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO: the pty's other side is gone — that is EOF
            data = b""
        if not data:
            self.close()
            return
        self.queue.append(data)
        self.pending += len(data)
        self.last_data = time.monotonic()
        self.event.set()
        if self.pending > HIGH_WATER and not self.paused:
            self.loop.remove_reader(self.fd)
            self.paused = True

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.paused:
            self.loop.remove_reader(self.fd)
        self.paused = False
        try:
            os.close(self.fd)
        except OSError:
            pass
        self.event.set()

    async def chunks(self) -> AsyncIterator[str]:
        if self.consumed:
            raise RuntimeError("chunks() can be iterated once: keep one consumer per process")
        self.consumed = True
        decoder = OutputDecoder(pty=self.pty)
        while True:
            if self.queue:
                data = self.queue.popleft()
                self.pending -= len(data)
                if self.paused and self.pending < LOW_WATER and not self.closed:
                    self.paused = False
                    self.loop.add_reader(self.fd, self._ready)
                text = decoder.decode(data)
                if text:
                    yield text
            elif self.closed:
                text = decoder.decode(b"", final=True)
                if text:
                    yield text
                return
            else:
                self.event.clear()
                await self.event.wait()


# --------------------------------------------------------------------------------------------- Proc


class Proc:
    """A started process tree: its output, its exit, and a kill that leaves nothing behind."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        tag: str,
        argv: list[str],
        out_fd: int,
        err_fd: int | None,
        in_fd: int | None,
        pty: bool,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._popen = popen
        self.pid = popen.pid
        self.tag = tag
        self.argv = argv
        self.pty = pty
        self._out = _Reader(self._loop, out_fd, pty)
        self._err = _Reader(self._loop, err_fd, False) if err_fd is not None else None
        self._in_fd = in_fd
        self._write_lock = asyncio.Lock()
        self._exited = asyncio.Event()
        self._kill_lock = asyncio.Lock()
        self._tree = _Tree(tag, self.pid)
        self._pidfd: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        _LEADERS[self.pid] = self
        _STARTING.discard(self.pid)
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            self._spawn(self._poll_exit())
        else:
            self._loop.add_reader(self._pidfd, self._on_pidfd)
        if self._poll() is not None:
            self._mark_exited()

    def __repr__(self) -> str:
        return f"<Proc pid={self.pid} tag={self.tag!r} returncode={self.returncode}>"

    @property
    def returncode(self) -> int | None:
        """The exit status once reaped (negative: killed by that signal)."""
        return self._popen.returncode

    def _spawn(self, coro: object) -> None:
        task = self._loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _poll(self) -> int | None:
        rc = self._popen.poll()
        if rc is not None and not self._exited.is_set():
            self._loop.call_soon_threadsafe(self._mark_exited)
        return rc

    def _on_pidfd(self) -> None:
        # Readable pidfd: the process has exited and can be reaped without blocking.
        if self._popen.poll() is None:
            if self._pidfd is not None:
                self._loop.remove_reader(self._pidfd)
            self._spawn(self._poll_exit())
            return
        self._mark_exited()

    async def _poll_exit(self) -> None:
        while self._popen.poll() is None:
            await asyncio.sleep(0.05)
        self._mark_exited()

    def _mark_exited(self) -> None:
        if self._exited.is_set():
            return
        self._exited.set()
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        _LEADERS.pop(self.pid, None)
        for reader in (self._out, self._err):
            if reader is not None:
                self._spawn(self._drain(reader))

    async def _drain(self, reader: _Reader, idle: float = DRAIN_IDLE, limit: float = DRAIN_MAX) -> None:
        """After the exit: read what is left, but stop once output stays quiet (a grandchild may hold the pipe)."""
        deadline = time.monotonic() + limit
        while not reader.closed:
            await asyncio.sleep(idle / 2)
            now = time.monotonic()
            if now >= deadline or (not reader.paused and now - reader.last_data >= idle):
                reader.close()

    def chunks(self) -> AsyncIterator[str]:
        """Output (stdout and stderr merged unless stderr="separate") as decoded text chunks, until EOF."""
        return self._out.chunks()

    def stderr_chunks(self) -> AsyncIterator[str]:
        """Stderr as text chunks, for a process started with stderr="separate"."""
        if self._err is None:
            raise RuntimeError('stderr_chunks() needs start(..., stderr="separate")')
        return self._err.chunks()

    async def wait(self) -> int:
        """Wait for the process to exit, then for its output to drain (briefly); return the exit status."""
        await self._exited.wait()
        for reader in (self._out, self._err):
            while reader is not None and not reader.closed:
                reader.event.clear()
                await reader.event.wait()
        rc = self._popen.returncode
        assert rc is not None
        return rc

    async def write(self, data: bytes | str) -> None:
        """Write to the process's stdin (start(..., stdin=True)). Raises BrokenPipeError when it is closed."""
        if self._in_fd is None:
            raise BrokenPipeError("stdin is not open: start the process with stdin=True")
        view = memoryview(data.encode() if isinstance(data, str) else data)
        async with self._write_lock:
            while view:
                if self._in_fd is None:
                    raise BrokenPipeError("stdin was closed")
                try:
                    n = os.write(self._in_fd, view)
                except BlockingIOError:
                    await self._writable(self._in_fd)
                    continue
                view = view[n:]

    async def _writable(self, fd: int) -> None:
        fut: asyncio.Future[None] = self._loop.create_future()

        def ready() -> None:
            self._loop.remove_writer(fd)
            if not fut.done():
                fut.set_result(None)

        self._loop.add_writer(fd, ready)
        try:
            await fut
        finally:
            self._loop.remove_writer(fd)

    def close_stdin(self) -> None:
        """Close the process's stdin (it sees EOF)."""
        if self._in_fd is not None:
            fd, self._in_fd = self._in_fd, None
            try:
                os.close(fd)
            except OSError:
                pass

    def send_signal(self, sig: int) -> None:
        """Send a signal to the whole process group."""
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    async def kill(self, grace: float = 2.0) -> None:
        """SIGTERM the group and every tagged process, SIGKILL what is left after `grace` seconds (re-scanning
        until nothing carries the tag), reap them, and close the output. Safe to call more than once."""
        async with self._kill_lock:
            members, _ = self._tree.scan(leader_alive=self._popen.returncode is None)
            _signal(members, signal.SIGTERM)
            if self._popen.returncode is None:
                self.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            while members and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                members, _ = self._tree.scan(leader_alive=self._popen.returncode is None)
            await asyncio.to_thread(_kill_tree, self._tree, signal.SIGKILL, self._popen.returncode is None)
            if self._poll() is not None and not self._exited.is_set():
                self._mark_exited()
            self.close_stdin()
        await self.wait()


# --------------------------------------------------------------------------------------------- start


def _set_winsize(fd: int, rows: int = 40, cols: int = 120) -> None:
    try:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    except OSError:
        pass


def _raw_output(fd: int) -> None:
    """No echo of what we write to a pty; output post-processing stays (we normalise \\r\\n ourselves)."""
    try:
        attrs = termios.tcgetattr(fd)
        attrs[3] &= ~(termios.ECHO | termios.ICANON)
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
    except termios.error:
        pass


async def start(
    argv: list[str] | str,
    *,
    cwd: Path,
    env: dict[str, str],
    pty: bool = False,
    tag: str,
    stdin: bool = False,
    stderr: Literal["merge", "separate"] = "merge",
    pass_fds: Sequence[int] = (),
) -> Proc:
    """Start `argv` (a string runs via /bin/sh -c) in its own session with MC_PROC_TAG=tag and PYTHONUNBUFFERED=1.

    `env` is the whole environment of the child (build it with mc.tools.safe_env or from os.environ).
    With pty=True the child's stdin, stdout and stderr are a pseudo-terminal (so it line-buffers and
    may colour); otherwise stdin is /dev/null unless stdin=True (then use Proc.write / close_stdin).
    `pass_fds` are kept open in the child (the caller still owns and closes them).
    """
    _check_tag(tag)
    args = ["/bin/sh", "-c", argv] if isinstance(argv, str) else list(argv)
    if not args:
        raise ValueError("nothing to start: the command is empty")
    full_env = {k: v for k, v in env.items() if "=" not in k and "\0" not in k and "\0" not in v}
    full_env[TAG_VAR] = tag
    full_env["PYTHONUNBUFFERED"] = "1"
    in_fd = err_fd = None
    child_fds: list[int] = []
    try:
        if pty:
            master, slave = os.openpty()
            child_fds.append(slave)
            _set_winsize(slave)
            _raw_output(slave)
            out_fd = master
            if stdin:
                in_fd = os.dup(master)
                os.set_blocking(in_fd, False)
            std = {"stdin": slave, "stdout": slave, "stderr": slave}
        else:
            out_fd, out_w = os.pipe()
            child_fds.append(out_w)
            std = {"stdin": subprocess.DEVNULL, "stdout": out_w, "stderr": out_w}
            if stderr == "separate":
                err_fd, err_w = os.pipe()
                child_fds.append(err_w)
                std["stderr"] = err_w
            if stdin:
                in_r, in_fd = os.pipe()
                child_fds.append(in_r)
                os.set_blocking(in_fd, False)
                std["stdin"] = in_r
        try:
            with _SPAWN_LOCK:
                popen = subprocess.Popen(
                    args,
                    cwd=str(cwd),
                    env=full_env,
                    start_new_session=True,
                    close_fds=True,
                    pass_fds=tuple(pass_fds),
                    **std,
                )
                _STARTING.add(popen.pid)
        except OSError as exc:
            for fd in (out_fd, err_fd, in_fd):
                if fd is not None:
                    os.close(fd)
            where = f" in {cwd}" if not Path(cwd).is_dir() else ""
            raise type(exc)(exc.errno, f"cannot start {args[0]!r}{where}: {exc.strerror}") from None
    finally:
        for fd in child_fds:
            os.close(fd)
    return Proc(popen, tag, args, out_fd, err_fd, in_fd, pty)
