"""Store: append-only logs that survive a torn write, atomic private state, one owner per fleet."""

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mc import events as ev
from mc.store import FleetLocked, Store


def test_events_round_trip_and_torn_last_line(tmp_path: Path) -> None:
    store = Store(tmp_path / ".mc")
    store.append(ev.AgentCreated(agent="a1", name="a1", task="t", runner="builtin"))
    store.append(ev.DiffChanged(agent="a1", files=(ev.FileStat("x.py", 3, 1),), added=3, removed=1))
    store.append(ev.StatusChanged(agent="a1", status="running"))
    path = store.events_path("a1")
    with open(path, "ab") as fh:
        fh.write(b'{"type":"status","agent":"a1","sta')  # the process died mid-write
    events, offset = store.read_events("a1")
    assert [e.type for e in events] == ["agent_created", "diff", "status"]
    assert events[1].files[0] == ev.FileStat("x.py", 3, 1)
    assert offset < path.stat().st_size
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_state_is_atomic_and_private(tmp_path: Path) -> None:
    store = Store(tmp_path / ".mc")
    store.save_state({"version": 1, "agents": {"a": {"name": "a", "created": 1.5, "skip": None}}})
    assert store.load_state()["agents"]["a"] == {"name": "a", "created": 1.5}
    assert stat.S_IMODE(store.state_path.stat().st_mode) == 0o600
    assert not [p for p in store.root.iterdir() if p.name.endswith(".tmp")]


def test_second_owner_is_refused_and_dead_owner_is_taken_over(tmp_path: Path) -> None:
    root = tmp_path / ".mc"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from mc.store import Store
                s = Store({str(root)!r}); s.acquire(); print("held", flush=True); time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        store = Store(root)
        with pytest.raises(FleetLocked) as info:
            store.acquire()
        assert str(holder.pid) in str(info.value) and "--monitor" in str(info.value)
        assert store.is_owned_elsewhere()
    finally:
        holder.kill()  # SIGKILL: the lock file stays, its flock goes with the process
        holder.wait()
    assert (root / "owner.lock").exists()
    store = Store(root)
    store.acquire()
    assert store.owner_pid() == os.getpid()
    store.close()
