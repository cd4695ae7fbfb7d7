"""Persistence: `state.toml` (fleet metadata, tomli-w, atomic, 0600) and one append-only
`agents/<id>/events.jsonl` per agent, plus the lock that makes one process the owner of a fleet.

Layout under the state folder (the repository's `.mc/`)::

    state.toml            agents and their metadata (all that `missionctl ls` shows); [demo] for a fleet
                          `missionctl demo` started
    owner.lock            flock held by the owning process; holds its pid
    reserve               RESERVE_BYTES kept free for the one write that says "disk full"
    agents/<id>/events.jsonl
    agents/<id>/checkpoint.json   the agent's state as of a byte offset of its log (start-up replays the rest)

Every folder is 0700 and every file 0600, whatever the umask. An append is whole or absent: a write the disk
cannot take is cut back (LogWriteError), and a torn last line left by a crash is cut off when the owner opens
the fleet, so nothing is ever glued to it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import tomli_w

from mc.events import Event, event_from_dict

#: The folder at the top of a repository that holds the state of its fleet.
STATE_FOLDER = ".mc"


def demo_scenario(state: dict[str, Any]) -> str | None:
    """The bundled scenario a fleet started by `missionctl demo` plays (the `[demo]` table of its state), or
    None for any other fleet. The state names the scenario, never the server's address: that is new on every
    open."""
    table = state.get("demo")
    scenario = table.get("scenario") if isinstance(table, dict) else None
    return scenario if isinstance(scenario, str) and scenario else None


#: Bytes the owner keeps in `reserve`, freed when a write fails for want of space so that the failure itself
#: (a status line and state.toml) can still be written.
RESERVE_BYTES = 64 * 1024
#: The bytes of a log before a checkpoint's offset whose hash the checkpoint keeps, to know it is that log.
CHECK_BYTES = 4096
CHECKPOINT_VERSION = 1
_EVENT_START = b'{"type":'


class StoreError(Exception):
    """A state folder problem, as one line."""


class LogWriteError(StoreError):
    """An event could not be written to its log (nothing of it is left in the file)."""

    def __init__(self, path: Path, error: OSError) -> None:
        self.path = path
        self.errno = error.errno
        self.strerror = error.strerror or str(error)
        super().__init__(f"cannot write {path}: {self.strerror}")

    @property
    def disk_full(self) -> bool:
        return self.errno in (errno.ENOSPC, errno.EDQUOT)


class FleetLocked(StoreError):
    """Another live process owns this fleet."""

    def __init__(self, pid: int | None, path: Path) -> None:
        who = f"process {pid}" if pid else "another process"
        super().__init__(
            f"this fleet is already driven by {who} (lock {path}): wait for it to end, or stop it; a window "
            "opened with `missionctl` attaches to the fleet's server instead"
        )
        self.pid = pid


def private_dir(path: Path) -> Path:
    """Create `path` and every missing folder above it readable by their owner alone (0700, whatever the
    umask); folders that exist already are left as they are."""
    missing = []
    probe = Path(path)
    while not probe.is_dir():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=0o700)
        os.chmod(folder, 0o700)
    return path


def atomic_write(path: Path, data: bytes, mode: int = 0o600, *, durable: bool = False) -> None:
    """Write a file by temp file + rename, readable by its owner alone. A reader (or a restart after a crash)
    sees the old file or the new one, never half of one. `durable` adds an fsync (survives power loss, costs
    milliseconds on a busy disk: state.toml does without it, since every agent is rebuilt from its log)."""
    private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def parse_line(raw: bytes) -> Event | None:
    """The event of one log line, or None for a damaged one. A line that an older version glued to a torn one
    (`{"type":"sta{"type":"status",…}`) still gives the event that follows the torn part."""
    try:
        return event_from_dict(json.loads(raw))
    except (ValueError, KeyError, TypeError):
        pass
    start = raw.find(_EVENT_START, 1)
    while start > 0:  # each object that starts an event; a nested one never parses to the end of the line
        try:
            return event_from_dict(json.loads(raw[start:]))
        except (ValueError, KeyError, TypeError):
            start = raw.find(_EVENT_START, start + 1)
    return None


class LogReader:
    """The events of one log from a byte offset, read a line at a time (memory: one line, whatever the size of
    the log). `offset` is the position after the last whole line read so far; a torn last line is left."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self.offset = offset

    def __iter__(self) -> Iterator[Event]:
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 - closed below, also when the reader is dropped early
        except FileNotFoundError:
            return
        with fh:
            fh.seek(self.offset)
            for raw in fh:
                if not raw.endswith(b"\n"):
                    return  # torn: the writer died mid-line (or is writing it now)
                self.offset += len(raw)
                if raw.strip():
                    event = parse_line(raw)
                    if event is not None:
                        yield event


def _last_newline(fh: BinaryIO, size: int) -> int:
    """The offset just after the last newline of the file (0 when it has none)."""
    end = size
    while end > 0:
        start = max(0, end - 65536)
        fh.seek(start)
        block = fh.read(end - start)
        cut = block.rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        end = start
    return 0


def _check(path: Path, offset: int) -> str | None:
    """The hash of the CHECK_BYTES before `offset` in the file, or None when the file is shorter."""
    try:
        with open(path, "rb") as fh:
            start = max(0, offset - CHECK_BYTES)
            fh.seek(start)
            data = fh.read(offset - start)
    except OSError:
        return None
    return hashlib.sha256(data).hexdigest() if len(data) == offset - start else None


def _clean_toml(value: Any) -> Any:
    """tomli-w cannot write None: drop such keys (recursively)."""
    if isinstance(value, dict):
        return {k: _clean_toml(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_clean_toml(v) for v in value]
    return value


class Store:
    """The files of one fleet. Appends are handed to the OS at once, so a SIGKILL loses nothing shown."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._handles: dict[str, int] = {}  # agent → fd of its log, opened for appending
        self._sizes: dict[str, int] = {}  # agent → size of its log: where the next line starts
        self._lock_fd: int | None = None
        self.repaired: dict[str, int] = {}
        """Agents whose log ended in a torn line when the owner opened the fleet → bytes cut off."""

    # -- ownership -------------------------------------------------------------------------------
    @property
    def lock_path(self) -> Path:
        return self.root / "owner.lock"

    def acquire(self) -> None:
        """Become the owner of the fleet, or raise FleetLocked. A lock left by a dead process is taken over
        (the kernel drops a flock when its holder dies, even by SIGKILL)."""
        private_dir(self.root)
        for folder in (self.root, self.root / "agents", *self._agent_folders()):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(folder, 0o700)  # also those an older version made 0755
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FleetLocked(self.owner_pid(), self.lock_path) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        for agent_id in self.agent_ids_on_disk():
            cut = self.repair(agent_id)
            if cut:
                self.repaired[agent_id] = cut
        self.make_reserve()

    # -- the reserve -------------------------------------------------------------------------------
    @property
    def reserve_path(self) -> Path:
        return self.root / "reserve"

    def make_reserve(self) -> bool:
        """Set RESERVE_BYTES aside (a file of that size), unless it is there already. False when the disk has
        no room for it (nothing is left behind then)."""
        try:
            if self.reserve_path.stat().st_size >= RESERVE_BYTES:
                return True
        except FileNotFoundError:
            pass
        try:
            atomic_write(self.reserve_path, bytes(RESERVE_BYTES))
        except OSError:
            return False
        return True

    def free_reserve(self) -> bool:
        """Give the reserved bytes back to the disk (when a write failed for want of space). True if there were."""
        try:
            self.reserve_path.unlink()
        except FileNotFoundError:
            return False
        return True

    def owner_pid(self) -> int | None:
        """The pid written by the owner, or None."""
        try:
            return int(self.lock_path.read_text().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def is_owned_elsewhere(self) -> bool:
        """True while another live process holds the lock."""
        if self._lock_fd is not None or not self.lock_path.exists():
            return False
        fd = os.open(self.lock_path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def release(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._lock_fd, 0)
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- state.toml ------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.root / "state.toml"

    def load_state(self) -> dict[str, Any]:
        try:
            text = self.state_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise StoreError(
                f"{self.state_path}: damaged ({exc}): move it aside; agents are rebuilt from their event logs"
            ) from None

    def save_state(self, state: dict[str, Any]) -> None:
        atomic_write(self.state_path, tomli_w.dumps(_clean_toml(state)).encode())

    def record_demo(self, scenario: str) -> None:
        """Mark the fleet as one `missionctl demo` started, playing the bundled `scenario`."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        state = self.load_state()
        state.setdefault("version", 1)
        state["demo"] = {"scenario": scenario}
        self.save_state(state)

    # -- event logs ------------------------------------------------------------------------------
    def events_path(self, agent_id: str) -> Path:
        return self.root / "agents" / agent_id / "events.jsonl"

    def _agent_folders(self) -> list[Path]:
        folder = self.root / "agents"
        return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def agent_ids_on_disk(self) -> list[str]:
        folder = self.root / "agents"
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if (p / "events.jsonl").is_file())

    def repair(self, agent_id: str) -> int:
        """Cut a torn last line (a write that a crash or a full disk cut short) off the agent's log, so that the
        next event starts a line of its own. Returns the number of bytes cut off (0 for a whole log)."""
        path = self.events_path(agent_id)
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return 0
        with os.fdopen(fd, "r+b") as fh:
            size = os.fstat(fd).st_size
            if size == 0:
                return 0
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return 0
            keep = _last_newline(fh, size)
            os.ftruncate(fd, keep)
            return size - keep

    def _open_log(self, agent_id: str) -> int:
        fd = self._handles.get(agent_id)
        if fd is None:
            path = self.events_path(agent_id)
            private_dir(path.parent)
            self.repair(agent_id)  # never append to a torn line, whoever left it
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._handles[agent_id] = fd
            self._sizes[agent_id] = os.fstat(fd).st_size
        return fd

    def append(self, event: Event) -> None:
        """Append one event to its agent's log, whole, and hand it to the OS before returning (a SIGKILL loses
        nothing shown). Raises LogWriteError when the disk does not take all of it; the part that was written,
        if any, is cut off again, so the log never ends in half a line."""
        try:
            fd = self._open_log(event.agent)
        except OSError as exc:
            raise LogWriteError(self.events_path(event.agent), exc) from None
        data = (json.dumps(event.to_dict(), ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        start = self._sizes[event.agent]
        view = memoryview(data)
        try:
            while view:
                written = os.write(fd, view)
                if written <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                view = view[written:]
        except OSError as exc:
            self._cut_back(event.agent, fd, start)
            raise LogWriteError(self.events_path(event.agent), exc) from None
        self._sizes[event.agent] = start + len(data)

    def _cut_back(self, agent_id: str, fd: int, size: int) -> None:
        """Undo a partial append. Should even that fail, the handle goes: the next append repairs the log first."""
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
            if os.fstat(fd).st_size == size:
                return
        with contextlib.suppress(OSError):
            os.close(fd)
        self._handles.pop(agent_id, None)
        self._sizes.pop(agent_id, None)

    def log_size(self, agent_id: str) -> int:
        """Bytes of the agent's log that hold whole events."""
        if agent_id in self._sizes:
            return self._sizes[agent_id]
        try:
            return self.events_path(agent_id).stat().st_size
        except FileNotFoundError:
            return 0

    def reader(self, agent_id: str, offset: int = 0) -> LogReader:
        """The agent's events from byte `offset`, read a line at a time; its `offset` follows the reading."""
        return LogReader(self.events_path(agent_id), offset)

    def read_events(self, agent_id: str, offset: int = 0) -> tuple[list[Event], int]:
        """Events of an agent from byte `offset`, and the offset after the last complete line.

        A torn last line (the process died mid-write) is left for a later read; a damaged line in the
        middle is skipped rather than losing the rest of the log."""
        reader = self.reader(agent_id, offset)
        events = list(reader)
        return events, reader.offset

    def iter_events(self, agent_id: str) -> Iterator[Event]:
        """Every event of the agent's log, read a line at a time."""
        yield from self.reader(agent_id)

    def tail_events(self, agent_id: str, max_bytes: int = 1 << 20) -> tuple[Event | None, list[Event]]:
        """The first event of the agent's log and the events of its last `max_bytes` (whole lines only): what
        can be known of an agent cheaply, whatever the size of its log."""
        path = self.events_path(agent_id)
        try:
            with open(path, "rb") as fh:
                first = parse_line(fh.readline())
                size = os.fstat(fh.fileno()).st_size
                start = max(0, size - max_bytes)
                fh.seek(start)
                data = fh.read(size - start)
        except FileNotFoundError:
            return None, []
        if start > 0:
            data = data[data.find(b"\n") + 1 :]
        data = data[: data.rfind(b"\n") + 1]
        events = [e for e in map(parse_line, data.splitlines()) if e is not None]
        return first, events

    # -- checkpoints -------------------------------------------------------------------------------
    def checkpoint_path(self, agent_id: str) -> Path:
        return self.root / "agents" / agent_id / "checkpoint.json"

    def save_checkpoint(self, agent_id: str, snapshot: dict[str, Any], offset: int | None = None) -> None:
        """Keep the agent's state (`snapshot`, plain JSON) as of byte `offset` of its log (default: its end), so
        that opening the fleet replays only the events after it. Raises OSError when it cannot be written (the
        previous checkpoint, or none, stays: either is correct, only slower)."""
        offset = self.log_size(agent_id) if offset is None else offset
        check = _check(self.events_path(agent_id), offset)
        if check is None:
            raise OSError(errno.EINVAL, f"{self.events_path(agent_id)} is shorter than {offset} bytes")
        data = {"version": CHECKPOINT_VERSION, "offset": offset, "check": check, "agent": snapshot}
        atomic_write(self.checkpoint_path(agent_id), json.dumps(data, ensure_ascii=False).encode("utf-8"))

    def load_checkpoint(self, agent_id: str) -> tuple[int, dict[str, Any]] | None:
        """(offset, snapshot) of the agent's checkpoint, or None when there is none or it does not belong to
        the log as it is now (cut, replaced or edited before that offset): then the whole log is replayed."""
        try:
            data = json.loads(self.checkpoint_path(agent_id).read_bytes())
            offset = int(data["offset"])
            snapshot = data["agent"]
            if data.get("version") != CHECKPOINT_VERSION or not isinstance(snapshot, dict) or offset < 0:
                return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if _check(self.events_path(agent_id), offset) != data.get("check"):
            return None
        return offset, snapshot

    def close(self) -> None:
        for fd in self._handles.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._handles.clear()
        self._sizes.clear()
        self.release()
