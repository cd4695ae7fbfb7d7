"""Fault suite, a full disk and private files: the state folder `.mc` on a real 1 MB tmpfs that fills up in the
middle of a turn, and the modes of everything mission control creates under `.mc`.

A full disk: the agent whose log cannot be written ends `failed` with a reason that names the disk (shown at
once; written to its log and to state.toml from the space mission control keeps in reserve, or, when that is
gone, as soon as the disk takes it again), its command is stopped, `run --headless` exits, no log ends in a
torn line, and after space returns the fleet reopens with every line of every log whole, `ls` and
state.toml agreeing.

Mounting needs root (or CAP_SYS_ADMIN); where it is refused, those tests are skipped and say why.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mc import events as ev
from mc import procs
from mc.config import AgentConfig, load_config
from mc.store import Store
from tests.conftest import end_fleet_servers, fleet_config, make_repo
from tests.test_fleet import shell_turn, wait_for, write_turn

#: The command of the agents below: says "start", waits for the test to fill the disk, then prints ~600 KB.
PRINTER = "echo start; while [ ! -e {flag} ]; do sleep 0.05; done; seq 1 100000; echo printed"


@contextlib.contextmanager
def small_disk(path: Path, size: str = "1m") -> Iterator[Path]:
    """A real tmpfs of `size` mounted at `path` for the duration of the block."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
    except OSError as exc:
        pytest.skip(f"no mount program to make a small file system ({exc})")
    if done.returncode != 0:
        pytest.skip(
            f"mounting a {size} tmpfs was refused ({done.stderr.strip() or done.returncode}): "
            "run the fault suite as root, or in a container with CAP_SYS_ADMIN"
        )
    try:
        yield path
    finally:
        for _ in range(50):
            if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(folder: Path) -> Path:
    """Write a file into `folder` until its file system has no byte left (ENOSPC); return the file."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (65536, 4096, 256, 1):
            block = b"\0" * size
            try:
                while True:
                    os.write(fd, block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


def statuses_on_disk(store: Store, agent: str) -> list[tuple[str, str]]:
    return [(e.status, e.reason) for e in store.iter_events(agent) if isinstance(e, ev.StatusChanged)]


def state_status(state_dir: Path, agent: str) -> str | None:
    try:
        return tomllib.loads((state_dir / "state.toml").read_text())["agents"][agent]["status"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return None


def every_line_whole(path: Path) -> list[dict[str, Any]]:
    """Every line of a log, parsed; fails on a torn or glued line."""
    data = path.read_bytes()
    assert data.endswith(b"\n"), f"{path.name} ends in a torn line: {data[-80:]!r}"
    return [json.loads(line) for line in data.splitlines()]


def ls_json(repo: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "mc", "ls", "--json"], cwd=repo, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


async def test_disk_full_mid_turn_fails_the_agent_and_the_failure_is_written_once_space_is_back(
    repo: Path, scripted: Any, fleet_factory: Any
) -> None:
    command = PRINTER.format(flag="go")
    server = scripted({"agents": [{"name": "filler", "turns": [shell_turn(command), {"say": "Printed."}]}]})
    cfg = fleet_config(repo, server, [AgentConfig(name="filler", task="print a lot", model="filler", policy="never")])
    with small_disk(repo / ".mc") as disk:
        fleet = await fleet_factory(cfg)
        try:
            fleet.store.reserve_path.unlink()  # the space kept in reserve is used up already: wait for real space
            await fleet.spawn_configured()
            agent = fleet.get("filler")
            await wait_for(lambda: ("output", "start") in agent.log.tail(20), what="the command to start")
            filler = fill(disk)
            (Path(agent.worktree) / "go").touch()

            assert await fleet.wait_settled(30), f"the agent shows {agent.status} though its log cannot be written"
            assert agent.status == "failed"
            assert agent.status_reason.startswith(f"disk full at {fleet.state_dir}"), agent.status_reason
            tag = fleet._tag("filler")
            await wait_for(lambda: not procs.find_tagged(tag), what="the agent's command to be stopped")
            log = fleet.store.events_path("filler")
            every_line_whole(log)  # the write that did not fit left nothing behind
            # the short failure line may fit in the last page of the log; state.toml needs new space: not yet
            assert state_status(disk, "filler") == "running"

            filler.unlink()  # space is back: what waited is written without anyone doing anything
            await wait_for(
                lambda: statuses_on_disk(fleet.store, "filler")[-1] == ("failed", agent.status_reason),
                timeout=10,
                what="the failure to be written once space is back",
            )
            await wait_for(lambda: state_status(disk, "filler") == "failed", timeout=10, what="state.toml")
            await fleet.close()

            fleet = await fleet_factory(cfg)
            again = fleet.get("filler")
            assert (again.status, again.status_reason) == ("failed", agent.status_reason)
            lines = every_line_whole(log)
            assert [line["status"] for line in lines if line["type"] == "status"][-1] == "failed"
            assert [r["status"] for r in ls_json(repo)] == [state_status(disk, "filler")] == ["failed"]
        finally:
            await fleet.close()


async def test_headless_run_on_a_full_disk_exits_with_the_agent_failed_and_the_log_whole(
    tmp_path: Path, fleet_factory: Any
) -> None:
    repo = make_repo(tmp_path / "repo")
    flag = tmp_path / "go"
    config = tmp_path / "mc.toml"
    config.write_text(
        f'[repo]\npath = "{repo}"\nworktree_dir = "{tmp_path / "worktrees"}"\n\n'
        f'[[agents]]\nname = "printer"\nrunner = "command"\ntask = "print a lot"\n'
        f"command = {json.dumps(PRINTER.format(flag=flag))}\n"
    )
    with small_disk(repo / ".mc") as disk:
        child = subprocess.Popen(
            [sys.executable, "-m", "mc", "run", "--headless", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        lines: list[dict[str, Any]] = []
        assert child.stdout is not None
        reader = threading.Thread(
            target=lambda: lines.extend(json.loads(raw) for raw in iter(child.stdout.readline, b"")), daemon=True
        )
        reader.start()
        try:
            deadline = time.monotonic() + 30
            while not any(e["type"] == "text_delta" and "start" in e["text"] for e in list(lines)):
                assert time.monotonic() < deadline and child.poll() is None, "the command did not start"
                time.sleep(0.02)
            filler = fill(disk)
            flag.touch()
            try:
                rc = child.wait(60)
            except subprocess.TimeoutExpired:
                pytest.fail("`run --headless` did not exit after its agent's log could not be written")
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            reader.join(10)
            stderr = child.stderr.read().decode() if child.stderr else ""
        assert rc == 1, stderr
        failed = [e for e in lines if e["type"] == "status" and e["status"] == "failed"]
        reason = failed[-1]["reason"] if failed else ""
        assert reason.startswith(f"disk full at {repo / '.mc'}"), (reason, stderr[-2000:])

        # written at once, from the reserve, so it outlives the process although the disk is still full
        log = disk / "agents" / "printer" / "events.jsonl"
        written = every_line_whole(log)
        assert [(e["status"], e["reason"]) for e in written if e["type"] == "status"][-1] == ("failed", reason)
        assert state_status(disk, "printer") == "failed"

        filler.unlink()
        assert [r["status"] for r in ls_json(repo)] == [state_status(disk, "printer")] == ["failed"]
        assert end_fleet_servers(repo) == 1  # the headless run left its fleet running; a new owner opens it
        fleet = await fleet_factory(load_config(config))
        try:
            assert (fleet.get("printer").status, fleet.get("printer").status_reason) == ("failed", reason)
            every_line_whole(log)
        finally:
            await fleet.close()


async def test_every_folder_and_file_under_the_state_folder_is_private_after_a_real_run(
    repo: Path, scripted: Any, fleet_factory: Any
) -> None:
    server = scripted(
        {
            "agents": [
                {
                    "name": "writer",
                    "turns": [write_turn("notes.txt", "notes\n"), shell_turn("echo hello"), {"say": "Done."}],
                }
            ]
        }
    )
    specs = [
        AgentConfig(name="writer", task="write notes", model="writer", policy="never"),
        AgentConfig(name="cmd", task="say hi", runner="command", command="echo hi {task}"),
    ]
    old = os.umask(0o022)  # the usual umask: what mission control creates must not depend on it
    try:
        fleet = await fleet_factory(fleet_config(repo, server, specs))
        await fleet.spawn_configured()
        assert await fleet.wait_settled(30)
        assert [a.status for a in fleet.list()] == ["idle", "idle"]
        await fleet.close()
    finally:
        os.umask(old)
    state_dir = repo / ".mc"
    paths = [state_dir, *sorted(state_dir.rglob("*"))]
    assert any(p.name == "events.jsonl" for p in paths) and any(p.name == "state.toml" for p in paths)
    wrong = [
        f"{p.relative_to(repo)} {stat.S_IMODE(p.lstat().st_mode):o}"
        for p in paths
        if stat.S_IMODE(p.lstat().st_mode) != (0o700 if p.is_dir() else 0o600)
    ]
    assert not wrong, f"not private to their owner (folders 0700, files 0600): {wrong}"
    # the folder of the worktrees, which mission control made: nobody else reaches the agents' checkouts
    assert stat.S_IMODE(fleet.worktree_dir.stat().st_mode) == 0o700, oct(fleet.worktree_dir.stat().st_mode)
