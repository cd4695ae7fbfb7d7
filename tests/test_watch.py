"""WorktreeWatcher on real worktrees and the real file system."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from mc.git import Repo
from mc.watch import WorktreeWatcher


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(autouse=True)
def _isolated_git(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / "gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


@pytest.fixture
def worktrees(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / ".gitignore").write_text("build/\n*.log\n")
    (root / "src").mkdir()
    (root / "src" / "app.py").write_text("x = 1\n")
    git(root, "add", "-A")
    git(root, "-c", "user.name=T", "-c", "user.email=t@e", "commit", "-q", "-m", "initial")
    repo = Repo(root)
    paths = {}
    for name in ("a", "b", "c"):
        paths[name] = tmp_path / "wt" / name
        repo.add_worktree(paths[name], f"mc/{name}", repo.resolve("main"))
    return paths


class Recorder:
    def __init__(self) -> None:
        self.events: asyncio.Queue[tuple[str, list[str]]] = asyncio.Queue()

    def __call__(self, agent_id: str, paths: list[str]) -> None:
        self.events.put_nowait((agent_id, paths))

    async def next(self, timeout: float = 10) -> tuple[str, list[str]]:
        return await asyncio.wait_for(self.events.get(), timeout)

    async def quiet(self, seconds: float = 0.6) -> list[tuple[str, list[str]]]:
        """Everything that arrives within `seconds`."""
        await asyncio.sleep(seconds)
        got = []
        while not self.events.empty():
            got.append(self.events.get_nowait())
        return got


async def test_an_edit_reaches_the_right_agent_and_ignored_files_do_not(worktrees: dict[str, Path]) -> None:
    rec = Recorder()
    watcher = WorktreeWatcher(rec, debounce=0.1)
    watcher.add("a", worktrees["a"])
    watcher.add("b", worktrees["b"])
    async with watcher:
        assert await rec.quiet(0.3) == []
        assert watcher.git_calls == 0  # nothing changed: no git process

        (worktrees["b"] / "src" / "app.py").write_text("x = 2\n")
        assert await rec.next() == ("b", ["src/app.py"])
        assert watcher.git_calls == 1

        build = worktrees["a"] / "build"
        build.mkdir()
        for i in range(300):
            (build / f"obj{i}.o").write_bytes(b"x")
        (worktrees["a"] / "debug.log").write_text("noise\n")
        (worktrees["a"] / "new.py").write_text("y = 1\n")  # the one change that matters
        agent_id, paths = await rec.next()
        extra = await rec.quiet()
        assert agent_id == "a"
        assert set(paths) | {p for _, ps in extra for p in ps} == {"new.py"}

        # later writes into the ignored folder hit the remembered ignore: no git at all
        calls = watcher.git_calls
        for i in range(50):
            (build / f"more{i}.o").write_bytes(b"x")
        assert await rec.quiet() == []
        assert watcher.git_calls == calls

        # git metadata of a commit in the worktree is not a change of its files
        git(worktrees["b"], "-c", "user.name=T", "-c", "user.email=t@e", "commit", "-q", "-am", "b")
        assert await rec.quiet() == []


async def test_a_tracked_file_in_an_ignored_folder_still_counts(worktrees: dict[str, Path]) -> None:
    wt = worktrees["a"]
    (wt / "build").mkdir()
    (wt / "build" / "keep.txt").write_text("tracked\n")
    git(wt, "add", "-f", "build/keep.txt")
    rec = Recorder()
    watcher = WorktreeWatcher(rec, debounce=0.1)
    watcher.add("a", wt)
    async with watcher:
        (wt / "build" / "junk.o").write_bytes(b"x")
        (wt / "build" / "keep.txt").write_text("changed\n")
        agent_id, paths = await rec.next()
        rest = [p for _, ps in await rec.quiet() for p in ps]
        assert agent_id == "a" and set(paths + rest) == {"build/keep.txt"}


async def test_adding_and_removing_agents_while_running(worktrees: dict[str, Path]) -> None:
    rec = Recorder()
    watcher = WorktreeWatcher(rec, debounce=0.05)
    watcher.add("a", worktrees["a"])
    await watcher.start()
    try:
        watcher.add("c", worktrees["c"])
        await watcher.ready()
        (worktrees["c"] / "c.txt").write_text("c\n")
        assert await rec.next() == ("c", ["c.txt"])

        watcher.remove("a")
        (worktrees["a"] / "late.txt").write_text("too late\n")
        (worktrees["c"] / "c2.txt").write_text("c\n")
        assert await rec.next() == ("c", ["c2.txt"])
        await watcher.ready()
        (worktrees["a"] / "later.txt").write_text("still nothing\n")
        assert await rec.quiet() == []
        assert set(watcher.paths) == {"c"}

        watcher.remove("c")
        await watcher.ready()
        (worktrees["c"] / "c3.txt").write_text("c\n")
        assert await rec.quiet() == []
    finally:
        await watcher.stop()


async def test_a_steady_stream_is_delivered_in_few_batches(worktrees: dict[str, Path]) -> None:
    rec = Recorder()
    watcher = WorktreeWatcher(rec, debounce=0.2, max_wait=0.5)
    watcher.add("a", worktrees["a"])
    async with watcher:
        for i in range(40):
            (worktrees["a"] / f"f{i}.txt").write_text("x\n")
            await asyncio.sleep(0.02)
        got = [await rec.next()] + await rec.quiet()
    paths = {p for _, ps in got for p in ps}
    assert paths == {f"f{i}.txt" for i in range(40)}
    assert all(agent_id == "a" for agent_id, _ in got)
    assert len(got) < 10


async def test_async_callback_and_a_vanished_worktree(worktrees: dict[str, Path], tmp_path: Path) -> None:
    seen: list[str] = []

    async def on_change(agent_id: str, paths: list[str]) -> None:
        await asyncio.sleep(0)
        seen.append(agent_id)

    watcher = WorktreeWatcher(on_change, debounce=0.05)
    watcher.add("gone", tmp_path / "does-not-exist")
    watcher.add("b", worktrees["b"])
    async with watcher:
        (worktrees["b"] / "x.txt").write_text("x\n")
        for _ in range(200):
            if seen:
                break
            await asyncio.sleep(0.05)
    assert seen == ["b"]
