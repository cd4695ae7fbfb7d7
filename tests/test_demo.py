"""The demo fleet comes back as it left: after a kill -9 its agents go on against the scripted model, and a
second `missionctl demo --dir` in the same folder opens that fleet without touching the user's history.
Real subprocesses, real git, the real openai client against the scripted server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from mc import events as ev
from mc.cli import resolve_config
from mc.demo import DEMO_AGENTS, start_demo
from mc.fleet import Fleet
from tests.conftest import git, make_repo

MISSIONCTL = [sys.executable, "-m", "mc"]


def start_headless_demo(folder: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*MISSIONCTL, "demo", "--dir", str(folder), "--headless"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_until(proc: subprocess.Popen[str], wanted: Any) -> list[dict[str, Any]]:
    """The JSON events the process prints, up to and including the first one `wanted(event)` accepts."""
    assert proc.stdout is not None
    seen: list[dict[str, Any]] = []
    for line in proc.stdout:
        seen.append(json.loads(line))
        if wanted(seen[-1]):
            return seen
    raise AssertionError(
        f"the demo ended before the event came: {proc.wait()} {proc.stderr.read() if proc.stderr else ''}"
    )


def kill_9(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


async def test_a_demo_killed_mid_run_comes_back_on_the_scripted_model(tmp_path: Path, fleet_factory: Any) -> None:
    folder = tmp_path / "demo"
    proc = start_headless_demo(folder)
    try:
        read_until(proc, lambda e: e["type"] == "status" and e["status"] == "waiting" and e["agent"] == "demo-tests")
    finally:
        kill_9(proc)
    repo = folder / "textkit"
    state = (repo / ".mc" / "state.toml").read_text()
    assert tomllib.loads(state)["demo"] == {"scenario": "demo"}
    assert "127.0.0.1" not in state and "http" not in state  # the endpoint is made again on open, never recorded

    # `missionctl` in the demo repository: the config it resolves there, and the fleet it opens
    fleet = await fleet_factory(resolve_config(None, cwd=repo))
    assert fleet.config.model.base_url.startswith("http://127.0.0.1:"), fleet.config.model.base_url
    assert fleet.config.model.api_key_env == ""
    seen: list[ev.Event] = []
    fleet.add_listener(seen.append)
    agent = fleet.get("demo-tests")
    assert agent.status == "waiting" and agent.oldest_pending().tool == "shell"
    await fleet.approve("demo-tests")
    assert await fleet.wait_settled(60)
    assert agent.status == "idle", agent.status_reason
    said = " ".join(e.text for e in seen if isinstance(e, ev.AssistantMessage) and e.agent == "demo-tests")
    assert "The suite is green" in said
    assert not [e.message for e in seen if isinstance(e, ev.ErrorEvent) and e.agent == "demo-tests"]
    # a new agent of the reopened demo fleet gets its worktree where the demo's others are
    assert Path(agent.worktree).parent == fleet.worktree_dir


async def test_a_second_demo_in_its_folder_opens_that_fleet_and_commits_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    demo = start_demo(folder)
    docs = next(a for a in DEMO_AGENTS if a.name == "demo-docs")
    fleet = Fleet(demo.config)
    await fleet.open()
    try:
        await fleet.spawn(docs)
        assert await fleet.wait_settled(60)
        assert fleet.get("demo-docs").status == "idle"
        result = await fleet.merge("demo-docs", mode="merge")
        assert result.ok, result.message
    finally:
        await fleet.close()
        demo.stop(remove=False)
    repo = demo.repo
    history = git(repo, "log", "--format=%H %s", "main")
    files = {
        p.relative_to(repo).as_posix(): p.read_bytes() for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts
    }
    assert "docs/usage.md" in files

    again = subprocess.run(
        [*MISSIONCTL, "demo", "--dir", str(folder), "--headless"], capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr
    assert git(repo, "log", "--format=%H %s", "main") == history
    assert git(repo, "status", "--porcelain") == ""
    after = {
        p.relative_to(repo).as_posix(): p.read_bytes() for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts
    }
    assert {k: v for k, v in after.items() if not k.startswith(".mc/")} == {
        k: v for k, v in files.items() if not k.startswith(".mc/")
    }
    # the fleet came back as it was: the merged agent, and no agent spawned again
    ls = subprocess.run([*MISSIONCTL, "ls", "--json"], cwd=repo, capture_output=True, text=True, timeout=60)
    assert [(r["name"], r["status"]) for r in json.loads(ls.stdout)] == [("demo-docs", "merged")]


@pytest.mark.parametrize("holds", ["a repository", "a file"])
def test_a_demo_folder_that_holds_something_else_is_refused_in_one_line(tmp_path: Path, holds: str) -> None:
    folder = tmp_path / "demo"
    target = folder / "textkit"
    if holds == "a repository":
        make_repo(target)
        before = git(target, "log", "--format=%H", "main")
    else:
        folder.mkdir()
        target.write_text("mine\n")
    run = subprocess.run(
        [*MISSIONCTL, "demo", "--dir", str(folder), "--headless"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("missionctl: ") and str(target) in lines[0], run.stderr
    assert "--dir" in lines[0]
    if holds == "a repository":
        assert git(target, "log", "--format=%H", "main") == before
        assert git(target, "status", "--porcelain") == ""
        assert not (target / ".mc").exists()
    else:
        assert target.read_text() == "mine\n"


async def test_the_demo_shows_the_review_loop(tmp_path: Path) -> None:
    """Checks that pass, checks that fail and are fixed after `f`, and a flagged diff: each on the demo's own
    sample project, its own tests run by the checks."""
    demo = start_demo(tmp_path / "demo")
    fleet = Fleet(demo.config)
    await fleet.open()
    try:
        for name in ("demo-refactor", "demo-rename", "demo-docs"):
            await fleet.spawn(next(a for a in DEMO_AGENTS if a.name == name))
        for _ in range(3):  # demo-refactor asks for its test command
            assert await fleet.wait_settled(120)
            refactor = fleet.get("demo-refactor")
            if not refactor.pending:
                break
            await fleet.approve("demo-refactor")
        assert await fleet.wait_settled(120)
        refactor, rename = fleet.get("demo-refactor"), fleet.get("demo-rename")
        assert (await fleet.wait_checks("demo-refactor")).summary() == "✓ 4 passed"
        check = await fleet.wait_checks("demo-rename")
        assert check.state == "failed", (check.state, check.reason)
        assert check.selected == ("tests/test_text.py ← app/text.py",)
        text = await fleet.fix_checks("demo-rename")
        assert text.startswith("These tests fail")
        assert await fleet.wait_settled(120)
        await fleet.wait_checks("demo-rename")
        for _ in range(200):  # the fix's own turn is checked after it ends
            if rename.check.state == "passed" and not rename.check_stale:
                break
            await asyncio.sleep(0.1)
        assert rename.check.summary() == "✓ 2 passed"
        flags = await fleet.wait_flags("demo-docs")
        rules = {(f.rule, f.path) for f in flags}
        assert any(path == ".github/workflows/docs.yml" and rule.startswith("ci") for rule, path in rules), rules
        assert any("curl" in f.message or "curl" in f.rule for f in flags), flags
        assert not refactor.flags and not rename.flags
    finally:
        await fleet.close()
        demo.stop()


def test_plain_missionctl_in_a_demo_repository_shows_the_demo_as_the_demo_does(tmp_path: Path) -> None:
    """The window's own config (keys, prices): `missionctl` in DIR/textkit shows the demo's costs as `missionctl
    demo --dir DIR` does; in a repository that is not a demo, the defaults stay."""
    from mc.cli import window_config

    demo = start_demo(tmp_path / "demo")
    demo.stop(remove=False)
    cfg = window_config(None, cwd=demo.repo)
    assert cfg.prices == demo.config.prices and cfg.prices, cfg.prices
    assert [a.name for a in cfg.agents] == [a.name for a in DEMO_AGENTS]
    plain = make_repo(tmp_path / "plain")
    assert window_config(None, cwd=plain).prices == {}
