"""mc.git on real repositories: worktrees, diffs, snapshots, merges, discards."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mc.git import Diff, DiffScheduler, GitError, Repo, compute_diff, run_git


def git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """The user's (or the agent's) own git: no special environment."""
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout


@pytest.fixture(autouse=True)
def _isolated_git(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the developer's git config out of the tests."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / "gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL", "GIT_DIR"):
        monkeypatch.delenv(name, raising=False)


def make_repo(path: Path, files: dict[str, str] | None = None, *, user: bool = True) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    if user:
        git(path, "config", "user.name", "Test User")
        git(path, "config", "user.email", "user@example.com")
    for name, text in (files or {"README.md": "hello\n", "src/app.py": "print('hi')\n"}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git(path, "add", "-A")
    git(path, "-c", "user.name=T", "-c", "user.email=t@e", "commit", "-q", "-m", "initial")
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    r = Repo(make_repo(tmp_path / "repo"))
    yield r
    r.close()


def agent(repo: Repo, name: str) -> Path:
    path = repo.root.parent / "wt" / name
    repo.add_worktree(path, f"mc/{name}", repo.resolve("main"))
    return path


# -- basics ---------------------------------------------------------------------------------------------------


def test_not_a_repository_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(GitError, match=r"is not a git repository: run `git init`"):
        Repo(tmp_path)
    with pytest.raises(GitError, match="is not a git repository"):
        Repo(tmp_path / "missing")


def test_reads(repo: Repo) -> None:
    assert repo.current_branch() == "main"
    assert repo.resolve("main") == git(repo.root, "rev-parse", "HEAD").strip()
    with pytest.raises(GitError, match=r"base ref 'nope' not found in .*repo"):
        repo.resolve("nope")
    assert not repo.is_dirty()
    (repo.root / "new.txt").write_text("x")
    assert not repo.is_dirty()
    assert repo.is_dirty(untracked=True)
    (repo.root / "README.md").write_text("changed\n")
    assert repo.is_dirty()
    assert repo.branch_exists("main") and not repo.branch_exists("mc/x")
    assert repo.git_common_dir == repo.root / ".git"


def test_run_git_environment_and_errors(repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_DIR", "/nonexistent")  # as inside a hook: must not redirect our calls
    env = run_git(["-c", "alias.env=!env", "env"], repo.root)
    assert "GIT_OPTIONAL_LOCKS=0" in env and "LC_ALL=C" in env and "GIT_TERMINAL_PROMPT=0" in env
    assert "GIT_DIR=/nonexistent" not in env
    with pytest.raises(GitError, match=r"git rev-parse --verify failed in .*: fatal: Needed a single revision"):
        run_git(["rev-parse", "--verify", "nope"], repo.root)


def test_exclude_adds_a_line_once_and_leaves_gitignore_alone(repo: Repo) -> None:
    repo.exclude(".mc/")
    repo.exclude(".mc/")
    lines = (repo.git_common_dir / "info" / "exclude").read_text().splitlines()
    assert lines.count(".mc/") == 1
    assert not (repo.root / ".gitignore").exists()
    (repo.root / ".mc").mkdir()
    (repo.root / ".mc" / "state.toml").write_text("x")
    assert not repo.is_dirty(untracked=True)


# -- worktrees ------------------------------------------------------------------------------------------------


def test_add_worktree_locks_it_and_refuses_reuse(repo: Repo) -> None:
    path = agent(repo, "a")
    assert (path / "README.md").read_text() == "hello\n"
    info = {w.path: w for w in repo.worktrees()}[path]
    assert info.branch == "refs/heads/mc/a" and info.locked
    with pytest.raises(GitError, match=r"branch mc/a already exists and is checked out in .*/wt/a: pick another"):
        repo.add_worktree(repo.root.parent / "wt" / "other", "mc/a", repo.resolve("main"))
    with pytest.raises(GitError, match=r"branch mc/a is checked out in .*/wt/a: a branch can be checked out in one"):
        repo.add_worktree(repo.root.parent / "wt" / "other", "mc/a", repo.resolve("main"), reuse=True)
    busy = repo.root.parent / "wt" / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    with pytest.raises(GitError, match="already exists and is not empty"):
        repo.add_worktree(busy, "mc/busy", repo.resolve("main"))
    assert not repo.branch_exists("mc/busy")
    # gc prunes the entry of a worktree whose folder is missing, unless it is locked
    os.rename(path, str(path) + ".away")
    git(repo.root, "worktree", "prune")
    assert any(w.path == path for w in repo.worktrees())
    os.rename(str(path) + ".away", path)
    repo.remove_worktree(path)
    assert not path.exists() and repo.branch_exists("mc/a")
    repo.delete_branch("mc/a")
    assert not repo.branch_exists("mc/a")


def test_add_worktree_reuses_an_existing_branch_when_asked(repo: Repo) -> None:
    git(repo.root, "branch", "mc/mine")
    (repo.root / "mine.txt").write_text("mine\n")
    git(repo.root, "add", "mine.txt")
    git(repo.root, "commit", "-q", "-m", "mine")
    git(repo.root, "branch", "-f", "mc/mine", "HEAD")
    tip = repo.resolve("mc/mine")
    with pytest.raises(GitError, match=r"^branch mc/mine already exists: pick another agent name, or reuse"):
        repo.add_worktree(repo.root.parent / "wt" / "mine", "mc/mine", repo.resolve("HEAD~1"))
    path = repo.root.parent / "wt" / "mine"
    repo.add_worktree(path, "mc/mine", repo.resolve("HEAD~1"), reuse=True)
    assert (path / "mine.txt").read_text() == "mine\n" and repo.resolve("mc/mine") == tip
    # what a spawn killed half-way leaves is taken back, but never a branch that has commits of its own
    assert repo.remove_unstarted(path, "mc/mine", repo.resolve("HEAD~1")) == [
        "branch mc/mine has commits of its own: kept"
    ]
    assert not path.exists() and repo.resolve("mc/mine") == tip


def test_32_parallel_add_worktree_all_succeed(repo: Repo) -> None:
    base = repo.resolve("main")
    paths = [repo.root.parent / "wt" / f"a{i}" for i in range(32)]
    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(lambda i: repo.add_worktree(paths[i], f"mc/a{i}", base), range(32)))
    assert results == [None] * 32
    listed = {w.path for w in repo.worktrees()}
    assert all(p in listed and (p / "README.md").exists() for p in paths)
    assert all(repo.branch_exists(f"mc/a{i}") for i in range(32))


def test_discard_of_a_worktree_with_a_submodule(tmp_path: Path) -> None:
    lib = make_repo(tmp_path / "lib", {"lib.py": "x = 1\n"})
    main = make_repo(tmp_path / "repo")
    git(main, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(lib), "vendor/lib")
    git(main, "commit", "-q", "-m", "add submodule")
    repo = Repo(main)
    path = agent(repo, "a")
    assert (path / "vendor" / "lib").is_dir() and not (path / "vendor" / "lib" / "lib.py").exists()
    (path / "work.txt").write_text("w\n")
    snap = repo.discard(path, "mc/a", "refs/mc/snapshots/a")
    assert not path.exists() and not repo.branch_exists("mc/a")
    assert "work.txt" in git(main, "ls-tree", "--name-only", snap)


def test_remove_worktree_refuses_changes_without_force(repo: Repo) -> None:
    path = agent(repo, "a")
    (path / "README.md").write_text("work\n")
    with pytest.raises(GitError, match="cannot remove worktree"):
        repo.remove_worktree(path)
    assert (path / "README.md").read_text() == "work\n"
    assert {w.path: w for w in repo.worktrees()}[path].locked
    repo.remove_worktree(path, force=True)
    assert not path.exists()


# -- diffs ----------------------------------------------------------------------------------------------------


def test_two_worktrees_edited_in_parallel_give_their_own_diffs(repo: Repo) -> None:
    base = repo.resolve("main")
    a, b = agent(repo, "a"), agent(repo, "b")
    (a / "README.md").write_text("hello\nfrom a\n")
    (b / "src" / "app.py").write_text("print('b')\n")
    (b / "b.txt").write_text("new\n")
    with ThreadPoolExecutor(2) as pool:
        da, db = pool.map(lambda p: compute_diff(p, base), [a, b])
    assert [(f.path, f.status, f.added, f.removed) for f in da.files] == [("README.md", "M", 1, 0)]
    assert "+from a" in da.text and "b.txt" not in da.text
    assert [(f.path, f.status, f.added, f.removed) for f in db.files] == [
        ("src/app.py", "M", 1, 1),
        ("b.txt", "?", 1, 0),
    ]
    assert (db.added, db.removed) == (2, 1)
    assert db.summary() == "2 files changed, +2 -1"
    assert compute_diff(repo.root, base) == Diff() and Diff().summary() == "no changes"


def test_diff_shows_untracked_deleted_binary_renamed_and_committed(repo: Repo) -> None:
    base = repo.resolve("main")
    path = agent(repo, "a")
    (path / ".gitignore").write_text("build/\n")
    (path / "build").mkdir()
    (path / "build" / "out.o").write_bytes(b"ignored")
    (path / "README.md").unlink()
    git(path, "mv", "src/app.py", "src/main.py")
    (path / "logo.png").write_bytes(b"\x89PNG\0\1\2" * 100)
    (path / "notes.txt").write_text("one\ntwo")
    (path / "empty").write_text("")
    (path / "committed.txt").write_text("c\n")
    git(path, "add", "committed.txt")
    git(path, "commit", "-q", "-m", "agent commit")
    before = (path / ".git").read_text()
    diff = compute_diff(path, base)
    stats = {f.path: f for f in diff.files}
    assert stats["README.md"].status == "D" and stats["README.md"].removed == 1
    assert stats["src/main.py"].status == "R"
    assert stats["committed.txt"].status == "A" and stats["committed.txt"].added == 1
    assert stats["logo.png"].status == "?" and stats["logo.png"].binary
    assert stats["notes.txt"].added == 2 and stats["empty"].added == 0
    assert ".gitignore" in stats and "build/out.o" not in stats
    assert "rename from src/app.py\nrename to src/main.py" in diff.text
    assert "Binary files /dev/null and b/logo.png differ" in diff.text
    assert "+++ b/notes.txt\n@@ -0,0 +1,2 @@\n+one\n+two\n\\ No newline at end of file\n" in diff.text
    assert "deleted file mode 100644" in diff.text
    assert (path / ".git").read_text() == before


def test_untracked_patch_matches_git_no_index(repo: Repo) -> None:
    base = repo.resolve("main")
    path = agent(repo, "a")
    (path / "multi.txt").write_text("a\nb\nc\n")
    (path / "one.txt").write_text("x")
    (path / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (path / "run.sh").chmod(0o755)
    ours = compute_diff(path, base).text
    for name in ("multi.txt", "one.txt", "run.sh"):
        proc = subprocess.run(
            ["git", "diff", "--no-index", "--no-color", "/dev/null", name], cwd=path, capture_output=True, text=True
        )
        theirs = "".join(line for line in proc.stdout.splitlines(keepends=True) if not line.startswith("index "))
        assert theirs in ours


def test_diff_never_touches_the_agents_index(repo: Repo) -> None:
    base = repo.resolve("main")
    path = agent(repo, "a")
    (path / "README.md").write_text("changed\n")
    (path / "new.txt").write_text("new\n")
    index = Path(git(path, "rev-parse", "--path-format=absolute", "--git-path", "index").strip())
    staged = git(path, "ls-files", "-s")
    raw = index.read_bytes()
    objects = git(path, "count-objects")
    (path / "large-untracked.bin").write_bytes(b"\0" * 3_000_000)
    compute_diff(path, base)
    assert git(path, "ls-files", "-s") == staged
    assert index.read_bytes() == raw
    assert git(path, "count-objects") == objects  # nothing written to the shared object store


def test_background_diffs_never_break_the_agents_commits(repo: Repo) -> None:
    base = repo.resolve("main")
    path = agent(repo, "a")
    stop = threading.Event()
    errors: list[BaseException] = []
    diffs = 0

    def poll() -> None:
        nonlocal diffs
        while not stop.is_set():
            try:
                compute_diff(path, base)
                diffs += 1
            except BaseException as exc:
                errors.append(exc)

    pollers = [threading.Thread(target=poll) for _ in range(2)]
    for t in pollers:
        t.start()
    failures = []
    try:
        for i in range(40):
            (path / f"f{i}.txt").write_text(f"{i}\n")
            for args in (["add", "-A"], ["commit", "-q", "-m", f"step {i}"]):
                proc = subprocess.run(["git", *args], cwd=path, capture_output=True, text=True)
                if proc.returncode != 0:
                    failures.append(proc.stderr)
    finally:
        stop.set()
        for t in pollers:
            t.join()
    assert failures == [] and errors == []
    assert diffs > 0
    assert len(git(path, "log", "--oneline", "main..HEAD").splitlines()) == 40


def test_large_diff_is_truncated_at_max_bytes(repo: Repo) -> None:
    base = repo.resolve("main")
    path = agent(repo, "a")
    line = "x" * 99 + "\n"
    with open(path / "tracked.txt", "w") as fh:
        fh.write(line * 100_000)  # 10 MB, committed on the agent's branch
    git(path, "add", "tracked.txt")
    git(path, "commit", "-q", "-m", "big")
    with open(path / "untracked.txt", "w") as fh:
        fh.write(line * 100_000)  # 10 MB, untracked
    diff = compute_diff(path, base, max_bytes=200_000)
    assert diff.truncated and "(diff truncated)" in diff.summary()
    assert len(diff.text.encode()) <= 200_000 and diff.text.endswith("\n")
    stats = {f.path: f for f in diff.files}
    assert stats["tracked.txt"].added == 100_000 and stats["untracked.txt"].added == 100_000
    # the untracked file's text is cut too, when the budget is left for it
    only_untracked = compute_diff(path, git(path, "rev-parse", "HEAD").strip(), max_bytes=100_000)
    assert only_untracked.truncated and only_untracked.files[0].added == 100_000
    assert 90_000 < len(only_untracked.text) <= 100_000


def test_diff_of_a_missing_base_raises(repo: Repo) -> None:
    with pytest.raises(GitError, match="git diff"):
        compute_diff(repo.root, "0" * 40)


# -- DiffScheduler --------------------------------------------------------------------------------------------


async def test_scheduler_debounces_coalesces_and_reports(repo: Repo) -> None:
    base = repo.resolve("main")
    path = agent(repo, "a")
    got: list[tuple[str, Diff]] = []
    errors: list[tuple[str, BaseException]] = []
    delivered = asyncio.Event()

    def on_diff(agent_id: str, diff: Diff) -> None:
        got.append((agent_id, diff))
        delivered.set()

    sched = DiffScheduler(on_diff, lambda a, e: errors.append((a, e)), delay=0.05)
    (path / "a.txt").write_text("1\n")
    for _ in range(10):
        sched.request("a", path, base)
    await asyncio.wait_for(delivered.wait(), 10)
    assert sched.runs == 1 and got[0][0] == "a" and got[0][1].files[0].path == "a.txt"

    # same content again: computed but not delivered
    delivered.clear()
    sched.request("a", path, base)
    await asyncio.sleep(0.05)
    while sched.runs < 2:
        await asyncio.sleep(0.02)
    assert len(got) == 1

    # from another thread, and a failure goes to on_error
    await asyncio.to_thread(sched.request, "bad", path, "0" * 40)
    while not errors:
        await asyncio.sleep(0.02)
    assert errors[0][0] == "bad" and isinstance(errors[0][1], GitError)

    (path / "b.txt").write_text("2\n")
    sched.request("a", path, base)
    await asyncio.wait_for(delivered.wait(), 10)
    assert [f.path for f in got[-1][1].files] == ["a.txt", "b.txt"]
    assert sched.last("a") == got[-1][1]
    await sched.close()


async def test_scheduler_runs_once_more_for_requests_during_a_run(repo: Repo) -> None:
    base = repo.resolve("main")
    path = agent(repo, "a")
    seen: list[Diff] = []
    gate = asyncio.Event()

    async def on_diff(agent_id: str, diff: Diff) -> None:
        seen.append(diff)
        await gate.wait()  # the run is not over until its callback returns

    sched = DiffScheduler(on_diff, delay=0.01, only_changes=False)
    sched.request("a", path, base)
    while not seen:
        await asyncio.sleep(0.01)
    for i in range(5):  # all arrive while the first run is busy
        (path / f"f{i}").write_text("x\n")
        sched.request("a", path, base)
    while sched._agents["a"].timer is not None:
        await asyncio.sleep(0.01)
    assert sched.runs == 1 and sched._agents["a"].pending
    gate.set()
    while sched._agents["a"].task is not None:
        await asyncio.sleep(0.01)
    assert sched.runs == 2 and len(seen) == 2 and len(seen[1].files) == 5
    sched.forget("a")
    sched.request("b", path, base)
    await sched.close()
    await asyncio.sleep(0.05)
    assert sched.runs == 2 and len(seen) == 2


# -- snapshot, commit, discard, restore -----------------------------------------------------------------------


def test_snapshot_keeps_all_work_and_leaves_the_index_untouched(repo: Repo) -> None:
    path = agent(repo, "a")
    (path / ".gitignore").write_text("*.log\n")
    (path / "README.md").write_text("edited\n")
    (path / "staged.txt").write_text("staged\n")
    git(path, "add", "staged.txt")
    (path / "untracked.txt").write_text("untracked\n")
    (path / "debug.log").write_text("ignored\n")
    (path / "src" / "app.py").unlink()
    index = Path(git(path, "rev-parse", "--path-format=absolute", "--git-path", "index").strip())
    before, raw, head = git(path, "ls-files", "-s"), index.read_bytes(), git(path, "rev-parse", "HEAD")
    commit = repo.snapshot(path, "refs/mc/snapshots/a-1", "snapshot of a")
    assert git(path, "ls-files", "-s") == before and index.read_bytes() == raw
    assert git(path, "rev-parse", "HEAD") == head
    assert git(repo.root, "rev-parse", "refs/mc/snapshots/a-1").strip() == commit
    assert git(repo.root, "rev-parse", f"{commit}^").strip() == head.strip()
    files = set(git(repo.root, "ls-tree", "-r", "--name-only", commit).split())
    assert files == {".gitignore", "README.md", "staged.txt", "untracked.txt"}
    assert git(repo.root, "show", f"{commit}:README.md") == "edited\n"
    assert not list(index.parent.glob("mc-snapshot-*"))
    with pytest.raises(GitError, match="must be a full ref"):
        repo.snapshot(path, "snap", "x")


def test_commit_all_takes_over_an_index_lock_left_by_a_killed_git(repo: Repo) -> None:
    path = agent(repo, "a")
    (path / "work.txt").write_text("w\n")
    lock = Path(git(path, "rev-parse", "--absolute-git-dir").strip()) / "index.lock"
    lock.write_bytes(b"")  # what `git add` leaves when it is killed: no git runs there any more
    assert repo.commit_all(path, "agent work")
    assert not lock.exists() and git(path, "show", "HEAD:work.txt") == "w\n"


def test_commit_all_uses_missionctl_identity_without_user_config(tmp_path: Path) -> None:
    repo = Repo(make_repo(tmp_path / "repo", user=False))
    path = agent(repo, "a")
    assert repo.commit_all(path, "nothing") is None
    (path / "new.txt").write_text("x\n")
    commit = repo.commit_all(path, "agent a: work")
    assert commit == git(path, "rev-parse", "HEAD").strip()
    assert git(path, "log", "-1", "--format=%an <%ae>|%s") == "missionctl <missionctl@localhost>|agent a: work\n"
    assert git(path, "status", "--porcelain") == ""
    configured = Repo(make_repo(tmp_path / "configured"))
    p2 = agent(configured, "b")
    (p2 / "x").write_text("x")
    configured.commit_all(p2, "m")
    assert git(p2, "log", "-1", "--format=%an") == "Test User\n"


def test_discard_keeps_a_snapshot_and_undo_brings_the_work_back(repo: Repo) -> None:
    path = agent(repo, "a")
    (path / "committed.txt").write_text("c\n")
    repo.commit_all(path, "work")
    tip = git(path, "rev-parse", "HEAD").strip()
    (path / "README.md").write_text("uncommitted\n")
    (path / "untracked.txt").write_text("u\n")
    (path / "src" / "app.py").unlink()
    snap = repo.discard(path, "mc/a", "refs/mc/snapshots/a-1")
    assert not path.exists() and not repo.branch_exists("mc/a")
    assert repo.snapshots() == [("refs/mc/snapshots/a-1", snap)]
    restored = repo.root.parent / "wt" / "a-restored"
    assert repo.undo_discard("refs/mc/snapshots/a-1", "mc/a", restored) == snap
    assert git(restored, "rev-parse", "HEAD").strip() == tip
    assert (restored / "committed.txt").read_text() == "c\n"
    assert (restored / "README.md").read_text() == "uncommitted\n"
    assert (restored / "untracked.txt").read_text() == "u\n"
    assert not (restored / "src" / "app.py").exists()
    status = set(git(restored, "status", "--porcelain").splitlines())
    assert status == {" M README.md", " D src/app.py", "?? untracked.txt"}
    with pytest.raises(GitError, match="snapshot refs/mc/snapshots/none not found"):
        repo.restore_snapshot("refs/mc/snapshots/none", "mc/z", repo.root.parent / "wt" / "z")


# -- merge ----------------------------------------------------------------------------------------------------


def agent_with_work(repo: Repo, name: str, files: dict[str, str]) -> Path:
    path = agent(repo, name)
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    assert repo.commit_all(path, f"{name}: work")
    return path


def test_merge_ff_updates_the_checked_out_base_and_keeps_user_changes(repo: Repo) -> None:
    agent_with_work(repo, "a", {"feature.txt": "feature\n", "README.md": "hello\nfeature\n"})
    (repo.root / "src" / "app.py").write_text("print('user edit')\n")  # dirty, not touched by the merge
    git(repo.root, "add", "src/app.py")  # staged, even
    (repo.root / "src" / "app.py").write_text("print('user edit, more')\n")
    (repo.root / "scratch.txt").write_text("user's untracked\n")
    tip = repo.resolve("mc/a")
    result = repo.merge("mc/a", "main", "ff", "unused for ff")
    assert result.ok and result.commit == tip and result.mode == "ff"
    assert repo.resolve("main") == tip
    assert (repo.root / "feature.txt").read_text() == "feature\n"
    assert (repo.root / "README.md").read_text() == "hello\nfeature\n"
    assert (repo.root / "src" / "app.py").read_text() == "print('user edit, more')\n"
    assert git(repo.root, "show", ":src/app.py") == "print('user edit')\n"
    assert (repo.root / "scratch.txt").read_text() == "user's untracked\n"
    assert set(git(repo.root, "status", "--porcelain").splitlines()) == {"MM src/app.py", "?? scratch.txt"}
    again = repo.merge("mc/a", "main", "ff", "x")
    assert again.ok and again.commit == tip and "already contains" in again.message


def test_merge_ff_refuses_when_base_moved_and_merge_and_squash_land_it(repo: Repo) -> None:
    agent_with_work(repo, "a", {"a.txt": "a\n"})
    (repo.root / "main.txt").write_text("main\n")
    git(repo.root, "add", "main.txt")
    git(repo.root, "commit", "-q", "-m", "user commit")
    old = repo.resolve("main")
    with pytest.raises(GitError, match=r"cannot fast-forward main to mc/a: .*use merge or squash"):
        repo.merge("mc/a", "main", "ff", "x")
    assert repo.resolve("main") == old

    result = repo.merge("mc/a", "main", "merge", "Merge agent a")
    assert result.ok and result.mode == "merge"
    parents = git(repo.root, "log", "-1", "--format=%P|%s|%an", result.commit).strip()
    assert parents == f"{old} {repo.resolve('mc/a')}|Merge agent a|Test User"
    assert (repo.root / "a.txt").read_text() == "a\n" and git(repo.root, "status", "--porcelain") == ""

    agent_with_work(repo, "b", {"b.txt": "b\n"})
    old = repo.resolve("main")
    result = repo.merge("mc/b", "main", "squash", "Squash agent b")
    assert result.ok
    assert git(repo.root, "log", "-1", "--format=%P|%s", result.commit).strip() == f"{old}|Squash agent b"
    assert git(repo.root, "show", "--name-only", "--format=", result.commit).split() == ["b.txt"]
    assert (repo.root / "b.txt").read_text() == "b\n"


def test_merge_into_a_branch_not_checked_out_moves_only_the_ref(repo: Repo) -> None:
    git(repo.root, "branch", "release")
    agent_with_work(repo, "a", {"a.txt": "a\n"})
    result = repo.merge("mc/a", "release", "merge", "m")
    assert result.ok and repo.resolve("release") == result.commit
    assert not (repo.root / "a.txt").exists() and repo.current_branch() == "main"


def test_conflict_changes_nothing(repo: Repo) -> None:
    agent_with_work(repo, "a", {"README.md": "agent's line\n"})
    (repo.root / "README.md").write_text("user's line\n")
    git(repo.root, "commit", "-q", "-am", "user commit")
    (repo.root / "src" / "app.py").write_text("dirty\n")
    old, status = repo.resolve("main"), git(repo.root, "status", "--porcelain")
    for mode in ("merge", "squash"):
        result = repo.merge("mc/a", "main", mode, "m")
        assert not result.ok and result.conflicts == ["README.md"] and result.commit is None
        assert "conflicts with main in 1 file(s): README.md" in result.message
    assert repo.resolve("main") == old
    assert git(repo.root, "status", "--porcelain") == status
    assert (repo.root / "README.md").read_text() == "user's line\n"
    assert (repo.root / "src" / "app.py").read_text() == "dirty\n"
    assert not (repo.root / ".git" / "MERGE_HEAD").exists()


def test_merge_refuses_to_overwrite_the_users_uncommitted_work(repo: Repo) -> None:
    agent_with_work(repo, "a", {"README.md": "agent\n", "new.txt": "agent's new file\n"})
    old = repo.resolve("main")
    (repo.root / "README.md").write_text("user's unsaved work\n")
    with pytest.raises(GitError, match=r"cannot merge into main: uncommitted changes in .* touch README.md"):
        repo.merge("mc/a", "main", "ff", "m")
    assert repo.resolve("main") == old and (repo.root / "README.md").read_text() == "user's unsaved work\n"
    assert not (repo.root / "new.txt").exists()

    git(repo.root, "checkout", "README.md")
    (repo.root / "new.txt").write_text("user's own untracked file\n")  # the merge would overwrite it
    with pytest.raises(GitError, match=r"touch new\.txt"):
        repo.merge("mc/a", "main", "merge", "m")
    assert repo.resolve("main") == old and (repo.root / "new.txt").read_text() == "user's own untracked file\n"

    (repo.root / "new.txt").unlink()
    assert repo.merge("mc/a", "main", "ff", "m").ok
    assert (repo.root / "new.txt").read_text() == "agent's new file\n"


def test_merge_errors_name_the_fix(repo: Repo) -> None:
    with pytest.raises(GitError, match="branch mc/none not found"):
        repo.merge("mc/none", "main", "ff", "m")
    agent(repo, "a")
    with pytest.raises(GitError, match="base branch nope not found"):
        repo.merge("mc/a", "nope", "ff", "m")
    with pytest.raises(GitError, match="unknown merge mode 'rebase': use ff, merge or squash"):
        repo.merge("mc/a", "main", "rebase", "m")  # type: ignore[arg-type]


def test_diff_of_many_changed_files_and_odd_names(tmp_path: Path) -> None:
    files = {f"m/f{i}.txt": f"{i}\n" for i in range(520)}
    files['odd "name"\twith tab.txt'] = "odd\n"
    repo = Repo(make_repo(tmp_path / "repo", files))
    base = repo.resolve("main")
    path = agent(repo, "a")
    for i in range(520):
        (path / f"m/f{i}.txt").write_text(f"{i}\nmore\n")
    (path / 'odd "name"\twith tab.txt').write_text("odd\nchanged\n")
    (path / "new\tfile.txt").write_text("x\n")
    diff = compute_diff(path, base)
    assert len(diff.files) == 522 and (diff.added, diff.removed) == (522, 0)
    assert diff.text.count("diff --git ") == 522 and diff.text.count("\n+more\n") == 520
    assert '+++ "b/odd \\"name\\"\\twith tab.txt"' in diff.text
    assert '+++ "b/new\\tfile.txt"' in diff.text
    # fewer changes: the patch is limited to the changed paths and says the same
    for i in range(10, 520):
        (path / f"m/f{i}.txt").write_text(f"{i}\n")
    small = compute_diff(path, base)
    assert [f.path for f in small.files][:10] == [f"m/f{i}.txt" for i in sorted(range(10), key=str)]
    assert small.text.count("diff --git ") == 12 and "odd" in small.text


# -- mission control's own git in an agent's worktree ----------------------------------------------------------


def _logging_script(folder: Path, name: str, log: Path) -> str:
    path = folder / name
    path.write_text(f"#!/bin/sh\necho {name} >> {log}\ncat\n")
    path.chmod(0o755)
    return str(path)


def test_a_filter_defined_after_the_first_diff_is_switched_off_too(repo: Repo, tmp_path: Path) -> None:
    """The filter names are cached per worktree, keyed by the config files: a change is seen at the next call."""
    log = tmp_path / "ran.log"
    path = agent(repo, "a")
    base = repo.resolve("main")
    (path / ".gitattributes").write_text("*.txt filter=late\n")
    (path / "notes.txt").write_text("one\n")
    assert "notes.txt" in {f.path for f in compute_diff(path, base).files}
    git(path, "config", "extensions.worktreeConfig", "true")
    git(path, "config", "--worktree", "filter.late.clean", _logging_script(tmp_path, "late-clean", log))
    git(path, "config", "--worktree", "filter.late.required", "true")
    git(repo.root, "config", "filter.common.clean", _logging_script(tmp_path, "common-clean", log))
    (path / "more.txt").write_text("two\n")
    (path / ".gitattributes").write_text("*.txt filter=late\nmore.txt filter=common\n")
    assert repo.commit_all(path, "work")
    assert not log.exists()
    assert git(path, "show", "HEAD:notes.txt") == "one\n"


def test_the_main_working_tree_keeps_the_users_own_git_config(repo: Repo, tmp_path: Path) -> None:
    """Only agents' worktrees are confined: in the user's working tree, the user's hooks run as they always do."""
    log = tmp_path / "ran.log"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    _logging_script(hooks, "reference-transaction", log)
    git(repo.root, "config", "core.hooksPath", str(hooks))
    path = agent(repo, "a")
    assert log.read_text().split().count("reference-transaction") >= 1  # the branch mc/a was made in the main repo
    log.unlink()
    (path / "x.txt").write_text("x\n")
    repo.commit_all(path, "agent work")  # in the agent's worktree: no hook
    assert not log.exists()
    run_git(["update-ref", "refs/heads/kept", "HEAD"], repo.root)  # in the user's working tree: the hook runs
    assert "reference-transaction" in log.read_text()


def test_inherited_command_scope_config_is_kept_and_ours_comes_after(
    repo: Repo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "user.inherited")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "yes")
    path = agent(repo, "a")
    listed = run_git(["config", "--list", "--show-scope"], path)
    assert "command\tuser.inherited=yes" in listed
    assert "command\tgc.autodetach=false" in listed and "command\tcore.fsmonitor=false" in listed
    assert listed.index("user.inherited") < listed.index("core.fsmonitor")
