"""Store: append-only logs that survive a torn write, atomic private state, one owner per fleet."""

import dataclasses
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mc import events as ev
from mc.agent import Agent, replay
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
        assert str(holder.pid) in str(info.value) and "attaches to the fleet's server" in str(info.value)
        assert store.is_owned_elsewhere()
    finally:
        holder.kill()  # SIGKILL: the lock file stays, its flock goes with the process
        holder.wait()
    assert (root / "owner.lock").exists()
    store = Store(root)
    store.acquire()
    assert store.owner_pid() == os.getpid()
    store.close()


def test_a_torn_last_line_is_repaired_on_open_and_never_appended_to(tmp_path: Path) -> None:
    store = Store(tmp_path / ".mc")
    store.append(ev.AgentCreated(agent="a1", name="a1", task="t", runner="builtin"))
    store.append(ev.StatusChanged(agent="a1", status="running"))
    store.close()
    path = store.events_path("a1")
    whole = path.read_bytes()
    torn = b'{"type":"tool_output","agent":"a1","call_id":"c1","text":"half of a li'
    with open(path, "ab") as fh:
        fh.write(torn)  # the process died mid-write (or the disk filled)
    store = Store(tmp_path / ".mc")
    store.acquire()  # the owner opens the fleet: the torn line is cut off at the last whole event
    assert store.repaired == {"a1": len(torn)}
    assert path.read_bytes() == whole
    store.append(ev.StatusChanged(agent="a1", status="interrupted", reason="after the crash"))
    events, offset = store.read_events("a1")
    assert [(e.type, getattr(e, "status", "")) for e in events] == [
        ("agent_created", ""),
        ("status", "running"),
        ("status", "interrupted"),
    ]
    assert offset == path.stat().st_size and b"half of a li" not in path.read_bytes()
    store.close()


def test_an_append_after_a_torn_line_written_behind_its_back_is_not_glued(tmp_path: Path) -> None:
    """The store's own handle is open when a torn fragment appears (another writer died): the next append
    still starts on a line of its own."""
    store = Store(tmp_path / ".mc")
    store.append(ev.StatusChanged(agent="a1", status="running"))
    with open(store.events_path("a1"), "ab") as fh:
        fh.write(b'{"type":"status","agent":"a1","sta')
    store.close()
    store = Store(tmp_path / ".mc")
    store.append(ev.StatusChanged(agent="a1", status="idle"))
    assert [e.status for e in store.iter_events("a1")] == ["running", "idle"]  # type: ignore[attr-defined]
    store.close()


def test_an_event_glued_to_a_torn_line_by_an_older_version_is_still_read(tmp_path: Path) -> None:
    store = Store(tmp_path / ".mc")
    path = store.events_path("a1")
    path.parent.mkdir(parents=True)
    first = json.dumps(ev.StatusChanged(agent="a1", status="running").to_dict(), separators=(",", ":"))
    nested = ev.ConversationItem(agent="a1", item={"type": "function_call", "call_id": "c1"}).to_dict()
    glued = json.dumps(ev.StatusChanged(agent="a1", status="interrupted").to_dict(), separators=(",", ":"))
    torn = json.dumps(nested, separators=(",", ":"))[:-12]  # a torn event holding a nested {"type":…}
    path.write_text(f"{first}\n{torn}{glued}\n")
    assert [getattr(e, "status", e.type) for e in store.iter_events("a1")] == ["running", "interrupted"]


def test_every_folder_and_file_of_the_store_is_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        store = Store(tmp_path / ".mc")
        store.acquire()
        store.append(ev.AgentCreated(agent="a1", name="a1", task="t", runner="builtin"))
        store.save_state({"version": 1})
        store.save_checkpoint("a1", {"id": "a1"})
        store.close()
    finally:
        os.umask(old)
    for path in [tmp_path / ".mc", *(tmp_path / ".mc").rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path.relative_to(tmp_path)}: {mode:o}"


def _varied_events(agent: str) -> list[ev.Event]:
    """Events of a turn that touch every part of an agent's state."""
    call = ev.ToolCall(agent=agent, call_id="c1", tool="shell", arguments='{"command":"ls"}', kind="command")
    return [
        ev.AgentCreated(agent=agent, name=agent, task="do it", runner="builtin", branch="mc/a", worktree="/w"),
        ev.StatusChanged(agent=agent, status="running"),
        ev.ConversationItem(agent=agent, item={"role": "user", "content": "do it"}),
        ev.TextDelta(agent=agent, text="Looking at the files,\nthen run"),
        call,
        ev.ToolOutput(agent=agent, call_id="c1", text="a.py\nb.py\npart"),
        ev.ApprovalRequested(
            agent=agent, approval_id="ap-c2", call_id="c2", tool="write_file", kind="write", summary="write x",
            remember_key="write",
        ),
        ev.ApprovalResolved(agent=agent, approval_id="ap-c2", decision="approve_all"),
        ev.Usage(agent=agent, input_tokens=120, output_tokens=30),
        ev.DiffChanged(agent=agent, files=(ev.FileStat("x.py", 3, 1),), added=3, removed=1),
        ev.RunnerState(agent=agent, data={"thread_id": "t-1"}),
        ev.ApprovalRequested(
            agent=agent, approval_id="ap-c3", call_id="c3", tool="shell", kind="command", summary="rm x"
        ),
        ev.StatusChanged(agent=agent, status="waiting", reason="command: rm x"),
    ]  # fmt: skip


def test_a_checkpoint_restores_exactly_what_replaying_the_whole_log_gives(tmp_path: Path) -> None:
    events = _varied_events("a1")
    later = [
        ev.ApprovalResolved(agent="a1", approval_id="ap-c3", decision="deny", reason="no"),
        ev.StatusChanged(agent="a1", status="running"),
        ev.ToolOutput(agent="a1", call_id="c1", text="ial line\n"),
        ev.ToolResult(agent="a1", call_id="c1", ok=True, output="a.py\nb.py\npartial line\n", exit_code=0),
        ev.MergeConflict(agent="a1", files=("x.py",), message="both changed"),
        ev.StatusChanged(agent="a1", status="idle", reason="turn done"),
    ]
    store = Store(tmp_path / ".mc")
    for event in events:
        store.append(event)
    store.save_checkpoint("a1", replay("a1", events).to_snapshot())
    for event in later:
        store.append(event)
    restored = store.load_checkpoint("a1")
    assert restored is not None
    offset, snapshot = restored
    agent = Agent.from_snapshot(snapshot)
    rest, end = store.read_events("a1", offset)
    assert [e.type for e in rest] == [e.type for e in later]
    for event in rest:
        agent.apply(event)
    whole = replay("a1", events + later)
    assert end == store.events_path("a1").stat().st_size
    for f in dataclasses.fields(Agent):
        if f.name != "log":
            assert getattr(agent, f.name) == getattr(whole, f.name), f.name
    assert list(agent.log.lines) == list(whole.log.lines) and agent.log.total == whole.log.total
    assert agent.log.tail(3) == whole.log.tail(3)

    # a log that no longer matches its checkpoint (cut, or replaced) is replayed from the start instead
    path = store.events_path("a1")
    data = path.read_bytes()
    path.write_bytes(data[: offset - 10].replace(b"do it", b"do that") + data[offset - 10 :])
    assert store.load_checkpoint("a1") is None
    path.write_bytes(data[: offset // 2])
    assert store.load_checkpoint("a1") is None
    store.close()
