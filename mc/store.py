"""Persistence: `state.toml` (fleet metadata, tomli-w, atomic, 0600) and one append-only
`agents/<id>/events.jsonl` per agent, plus the lock that makes one process the owner of a fleet.

Layout under the state folder (the repository's `.mc/`)::

    state.toml            agents and their metadata; [demo] for a fleet `missionctl demo` started
    owner.lock            flock held by the owning process; holds its pid
    agents/<id>/events.jsonl
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


class StoreError(Exception):
    """A state folder problem, as one line."""


class FleetLocked(StoreError):
    """Another live process owns this fleet."""

    def __init__(self, pid: int | None, path: Path) -> None:
        who = f"process {pid}" if pid else "another process"
        super().__init__(
            f"this fleet is already driven by {who} (lock {path}): open it read-only with "
            "`missionctl --monitor`, or stop that process first"
        )
        self.pid = pid


def atomic_write(path: Path, data: bytes, mode: int = 0o600, *, durable: bool = False) -> None:
    """Write a file by temp file + rename, readable by its owner alone. A reader (or a restart after a crash)
    sees the old file or the new one, never half of one. `durable` adds an fsync (survives power loss, costs
    milliseconds on a busy disk: state.toml does without it, since every agent is rebuilt from its log)."""
    path.parent.mkdir(parents=True, exist_ok=True)
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


def _clean_toml(value: Any) -> Any:
    """tomli-w cannot write None: drop such keys (recursively)."""
    if isinstance(value, dict):
        return {k: _clean_toml(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_clean_toml(v) for v in value]
    return value


class Store:
    """The files of one fleet. Appends are flushed to the OS at once, so a SIGKILL loses nothing shown."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._handles: dict[str, Any] = {}
        self._lock_fd: int | None = None

    # -- ownership -------------------------------------------------------------------------------
    @property
    def lock_path(self) -> Path:
        return self.root / "owner.lock"

    def acquire(self) -> None:
        """Become the owner of the fleet, or raise FleetLocked. A lock left by a dead process is taken over
        (the kernel drops a flock when its holder dies, even by SIGKILL)."""
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FleetLocked(self.owner_pid(), self.lock_path) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

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

    def agent_ids_on_disk(self) -> list[str]:
        folder = self.root / "agents"
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if (p / "events.jsonl").is_file())

    def append(self, event: Event) -> None:
        """Append one event to its agent's log and flush it to the OS before returning."""
        fh = self._handles.get(event.agent)
        if fh is None:
            path = self.events_path(event.agent)
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            fh = os.fdopen(fd, "ab", buffering=0)
            self._handles[event.agent] = fh
        line = json.dumps(event.to_dict(), ensure_ascii=False, separators=(",", ":")) + "\n"
        fh.write(line.encode("utf-8"))

    def read_events(self, agent_id: str, offset: int = 0) -> tuple[list[Event], int]:
        """Events of an agent from byte `offset`, and the offset after the last complete line.

        A torn last line (the process died mid-write) is left for a later read; a damaged line in the
        middle is skipped rather than losing the rest of the log."""
        path = self.events_path(agent_id)
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except FileNotFoundError:
            return [], offset
        events: list[Event] = []
        end = data.rfind(b"\n") + 1
        for raw in data[:end].splitlines():
            if not raw.strip():
                continue
            try:
                events.append(event_from_dict(json.loads(raw)))
            except (ValueError, KeyError, TypeError):
                continue
        return events, offset + end

    def iter_events(self, agent_id: str) -> Iterator[Event]:
        events, _ = self.read_events(agent_id)
        yield from events

    def close(self) -> None:
        for fh in self._handles.values():
            with contextlib.suppress(OSError):
                fh.close()
        self._handles.clear()
        self.release()
