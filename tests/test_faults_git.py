"""Fault suite, git: work that must never be lost.

- Submodules: work inside a submodule shows in the diff, a submodule git cannot read hides nothing else, and
  merge and discard refuse (saying why) whatever no commit or snapshot can hold, instead of removing it.
- SIGKILL during a merge: the next start finishes or rolls back the interrupted merge and says which; the base
  branch and the user's working tree never disagree.
- SIGKILL during a spawn: the next run cleans up the half-made agent and starts every agent.
- A branch of the user's that an agent's name would take: only that agent fails, with the choice; reuse_branch
  puts the agent on it.

The kills are deterministic: `MC_KILL_AT=<point>[:<agent>]` makes mission control SIGKILL itself at that point
(see mc.git.repo.fault_point). MC_FAULTS_FULL=1 adds the 12,000-file merge killed at random moments.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mc.config import AgentConfig, Config, load_config
from mc.fleet import Fleet, FleetError
from mc.git import GitError, Repo, compute_diff
from tests.conftest import fleet_servers, git, make_repo

FULL = os.environ.get("MC_FAULTS_FULL") == "1"
ROOT = Path(__file__).resolve().parent.parent
ALLOW_FILE = ["-c", "protocol.file.allow=always"]


def with_submodule(tmp_path: Path) -> tuple[Path, Path]:
    """A repository with a submodule at libs/sub (the user's checkout has it populated)."""
    lib = make_repo(tmp_path / "lib", {"lib.py": "x = 1\n"})
    main = make_repo(tmp_path / "repo", {"README.md": "# sample\n"})
    git(main, *ALLOW_FILE, "submodule", "add", "-q", str(lib), "libs/sub")
    git(main, "commit", "-q", "-m", "add submodule")
    return main, lib


def worktree(repo: Repo, name: str) -> Path:
    path = repo.root.parent / "wt" / name
    repo.add_worktree(path, f"mc/{name}", repo.resolve("main"))
    return path


def paths(diff: Any) -> list[str]:
    return sorted(f.path for f in diff.files)


def config(repo: Path, agents: list[AgentConfig]) -> Config:
    cfg = Config()
    cfg.repo.path = str(repo)
    cfg.repo.worktree_dir = str(repo.parent / "worktrees")
    cfg.model.base_url = "http://127.0.0.1:9/v1"  # command agents never call a model
    cfg.model.api_key_env = ""
    cfg.agents = agents
    return cfg


def write_toml(path: Path, repo: Path, agents: list[dict[str, Any]]) -> Path:
    tables = ""
    for spec in agents:
        tables += "[[agents]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in spec.items()) + "\n"
    path.write_text(
        f'[repo]\npath = "{repo}"\nworktree_dir = "{repo.parent / "worktrees"}"\n'
        f'[model]\nbase_url = "http://127.0.0.1:9/v1"\napi_key_env = ""\n\n{tables}'
    )
    return path


def missionctl(*args: str, kill_at: str = "", timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MC_KILL_AT", None)
    if kill_at:
        env["MC_KILL_AT"] = kill_at
    return subprocess.run(
        [sys.executable, "-m", "mc", *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=timeout
    )


async def settled_agent(cfg: Config, name: str) -> Fleet:
    fleet = Fleet(cfg)
    await fleet.open()
    await fleet.spawn_configured()
    assert await fleet.wait_settled(30)
    assert fleet.get(name).status == "idle", fleet.get(name).status_reason
    return fleet


def log_text(fleet: Fleet, name: str) -> str:
    return "\n".join(text for _kind, text in fleet.get(name).log.tail(10_000))


# -- submodules -----------------------------------------------------------------------------------------------


def test_diff_shows_work_inside_a_submodule_and_everything_else(tmp_path: Path) -> None:
    main, _ = with_submodule(tmp_path)
    repo = Repo(main)
    path = worktree(repo, "a")
    git(path, *ALLOW_FILE, "submodule", "update", "--init", "-q")
    (path / "libs/sub/PATCHED.md").write_text("patched\n")
    (path / "libs/sub/lib.py").write_text("x = 2\n")
    (path / "notes.txt").write_text("notes\n")
    diff = compute_diff(path, repo.resolve("main"))
    assert paths(diff) == ["libs/sub/PATCHED.md", "libs/sub/lib.py", "notes.txt"]
    assert "+++ b/libs/sub/lib.py\n" in diff.text and "+x = 2\n" in diff.text
    assert "+++ b/libs/sub/PATCHED.md\n" in diff.text
    # a commit inside the submodule shows as what it changed, not as a new commit id
    git(path / "libs/sub", "add", "-A")
    git(path / "libs/sub", "commit", "-q", "-m", "agent work")
    diff = compute_diff(path, repo.resolve("main"))
    assert paths(diff) == ["libs/sub/PATCHED.md", "libs/sub/lib.py", "notes.txt"]
    assert (diff.added, diff.removed) == (3, 1)


def test_diff_of_a_submodule_git_cannot_read_hides_nothing_else(tmp_path: Path) -> None:
    """The report's 0 files: the submodule folder copied from the user's checkout points at a repository that
    does not exist from the worktree; `git diff` failed as a whole and the diff showed nothing at all."""
    main, _ = with_submodule(tmp_path)
    repo = Repo(main)
    path = worktree(repo, "a")
    (path / "libs/sub/.git").write_text((main / "libs/sub/.git").read_text())
    (path / "libs/sub/PATCHED.md").write_text("patched\n")
    (path / "notes.txt").write_text("notes\n")
    diff = compute_diff(path, repo.resolve("main"))
    assert paths(diff) == ["libs/sub/PATCHED.md", "notes.txt"]
    assert "+patched\n" in diff.text and "+notes\n" in diff.text


def test_diff_shows_files_written_into_a_submodule_folder_that_is_not_checked_out(tmp_path: Path) -> None:
    main, _ = with_submodule(tmp_path)
    repo = Repo(main)
    path = worktree(repo, "a")
    assert (path / "libs/sub").is_dir() and not any((path / "libs/sub").iterdir())
    (path / "libs/sub/PATCHED.md").write_text("patched\n")
    (path / "notes.txt").write_text("notes\n")
    diff = compute_diff(path, repo.resolve("main"))
    assert paths(diff) == ["libs/sub/PATCHED.md", "notes.txt"]


async def test_merge_and_discard_keep_a_worktree_whose_files_no_commit_can_hold(tmp_path: Path) -> None:
    main, _ = with_submodule(tmp_path)
    cfg = config(
        main,
        [
            AgentConfig(
                name="a",
                task="patch",
                runner="command",
                command="echo patched > libs/sub/PATCHED.md; echo notes > notes.txt",
            )
        ],
    )
    fleet = await settled_agent(cfg, "a")
    try:
        wt = Path(fleet.get("a").worktree)
        before = git(main, "rev-parse", "main")
        diff = await fleet.refresh_diff("a")
        assert paths(diff) == ["libs/sub/PATCHED.md", "notes.txt"]
        with pytest.raises(FleetError, match=r"libs/sub/PATCHED\.md .*submodule libs/sub.*not checked out") as merr:
            await fleet.merge("a")
        assert "move it out of libs/sub" in str(merr.value)
        with pytest.raises(FleetError, match=r"discard of a stopped, nothing lost: .*libs/sub/PATCHED\.md"):
            await fleet.discard("a")
        assert git(main, "rev-parse", "main") == before
        assert (wt / "libs/sub/PATCHED.md").read_text() == "patched\n" and (wt / "notes.txt").exists()
        assert fleet.get("a").status == "idle"
        # once the file is where a commit can hold it, the merge goes through and loses nothing
        (wt / "libs/sub/PATCHED.md").rename(wt / "PATCHED.md")
        result = await fleet.merge("a")
        assert result.ok
        assert git(main, "show", "main:PATCHED.md") == "patched" and git(main, "show", "main:notes.txt") == "notes"
    finally:
        await fleet.close()


async def test_merge_refuses_submodule_work_that_would_exist_only_in_the_worktree(tmp_path: Path) -> None:
    main, _ = with_submodule(tmp_path)
    cfg = config(
        main,
        [
            AgentConfig(
                name="a",
                task="patch",
                runner="command",
                command="git -c protocol.file.allow=always submodule update --init -q && echo 2 > libs/sub/lib.py",
            )
        ],
    )
    fleet = await settled_agent(cfg, "a")
    try:
        sub = Path(fleet.get("a").worktree) / "libs/sub"
        assert (sub / "lib.py").read_text() == "2\n"
        with pytest.raises(FleetError, match=r"submodule libs/sub has uncommitted changes \(lib\.py\): commit them"):
            await fleet.merge("a")
        with pytest.raises(FleetError, match=r"nothing lost: .*submodule libs/sub has uncommitted changes"):
            await fleet.discard("a")
        git(sub, "commit", "-q", "-am", "agent work")
        with pytest.raises(FleetError, match=r"submodule libs/sub is at [0-9a-f]{10}, a commit that exists only in"):
            await fleet.merge("a")
        git(sub, "push", "-q", "origin", "HEAD:refs/heads/agent-work")
        result = await fleet.merge("a")
        assert result.ok
        assert git(main, "rev-parse", "main:libs/sub") == git(sub, "rev-parse", "HEAD")
    finally:
        await fleet.close()


def test_repo_discard_refuses_files_inside_an_unpopulated_submodule(tmp_path: Path) -> None:
    main, _ = with_submodule(tmp_path)
    repo = Repo(main)
    path = worktree(repo, "a")
    (path / "libs/sub/PATCHED.md").write_text("patched\n")
    with pytest.raises(GitError, match=r"libs/sub/PATCHED\.md is inside submodule libs/sub"):
        repo.discard(path, "mc/a", "refs/mc/snapshots/a")
    assert (path / "libs/sub/PATCHED.md").exists() and repo.branch_exists("mc/a")
    assert not repo.snapshots()


# -- SIGKILL during a merge -----------------------------------------------------------------------------------


async def prepared_merge(tmp_path: Path, files: int = 40) -> tuple[Path, Path, str]:
    """An idle agent that wrote `files` files; the user has an unrelated uncommitted change. Returns the
    repository, the config file and main's commit."""
    repo = make_repo(tmp_path / "repo")
    cfg_path = write_toml(
        tmp_path / "mc.toml",
        repo,
        [
            {
                "name": "a",
                "task": "write files",
                "runner": "command",
                "command": f"mkdir -p gen && for i in $(seq {files}); do echo $i > gen/f$i.txt; done; "
                "echo changed > app/main.py",
            }
        ],
    )
    fleet = await settled_agent(load_config(cfg_path), "a")
    await fleet.close()
    (repo / "README.md").write_text("# the user's own edit\n")
    return repo, cfg_path, git(repo, "rev-parse", "main")


def user_status(repo: Path) -> str:
    return git(repo, "status", "--porcelain", "--untracked-files=normal")


@pytest.mark.parametrize(
    ("point", "outcome"),
    [("merge-intent", "rolled back"), ("merge-tree", "completed"), ("merge-ref", "completed")],
)
async def test_sigkill_during_merge_is_finished_or_rolled_back_on_the_next_start(
    tmp_path: Path, point: str, outcome: str
) -> None:
    repo, cfg_path, old = await prepared_merge(tmp_path)
    killed = missionctl("merge", "a", "--config", str(cfg_path), kill_at=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    fleet = Fleet(load_config(cfg_path))
    await fleet.open()
    try:
        now = git(repo, "rev-parse", "main")
        told = log_text(fleet, "a")
        assert f"the merge of mc/a into main was interrupted; it was {outcome}" in told
        # either the base branch moved and the tree matches it, or nothing changed
        assert user_status(repo) == "M README.md"
        assert (repo / "README.md").read_text() == "# the user's own edit\n"
        if outcome == "completed":
            assert now != old and git(repo, "show", "main:gen/f7.txt") == "7"
            assert (repo / "gen/f7.txt").read_text() == "7\n" and (repo / "app/main.py").read_text() == "changed\n"
            assert fleet.get("a").status == "merged"
        else:
            assert now == old and not (repo / "gen").exists()
            assert (repo / "app/main.py").read_text() == "print('hi')\n"
            assert fleet.get("a").status == "idle"
            result = await fleet.merge("a")  # and a second merge goes through
            assert result.ok and (repo / "gen/f7.txt").read_text() == "7\n"
            assert user_status(repo) == "M README.md"
    finally:
        await fleet.close()
    assert not (repo / ".git" / "missionctl-merge.json").exists()
    assert not (repo / ".git" / "index.lock").exists()


async def test_merge_killed_halfway_through_updating_the_tree_is_rolled_back(tmp_path: Path) -> None:
    """What a SIGKILL of the whole process group leaves in the middle of `read-tree -m -u`: the index not yet
    written, its index.lock behind, some files already at the merge's content and one half written."""
    repo, cfg_path, old = await prepared_merge(tmp_path)
    killed = missionctl("merge", "a", "--config", str(cfg_path), kill_at="merge-intent")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    intent = json.loads((repo / ".git" / "missionctl-merge.json").read_text())
    (repo / "gen").mkdir()
    for i in range(1, 6):
        (repo / "gen" / f"f{i}.txt").write_text(f"{i}\n")
    (repo / "gen" / "f6.txt").write_text("")  # created, not written yet
    (repo / "app/main.py").write_text("chan")  # half written
    (repo / ".git" / "index.lock").write_bytes(b"")
    assert git(repo, "show", f"{intent['new']}:gen/f3.txt") == "3"
    fleet = Fleet(load_config(cfg_path))
    await fleet.open()
    try:
        assert "the merge of mc/a into main was interrupted; it was rolled back" in log_text(fleet, "a")
        assert git(repo, "rev-parse", "main") == old
        assert user_status(repo) == "M README.md"
        assert not (repo / "gen").exists() and (repo / "app/main.py").read_text() == "print('hi')\n"
        assert not (repo / ".git" / "index.lock").exists()
        assert (await fleet.merge("a")).ok
    finally:
        await fleet.close()


async def test_the_next_missionctl_merge_says_what_became_of_the_interrupted_one(tmp_path: Path) -> None:
    repo, cfg_path, old = await prepared_merge(tmp_path)
    killed = missionctl("merge", "a", "--config", str(cfg_path), kill_at="merge-intent")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    again = missionctl("merge", "a", "--config", str(cfg_path))
    assert again.returncode == 0, again.stderr
    assert "missionctl: the merge of mc/a into main was interrupted; it was rolled back" in again.stderr
    assert again.stdout.startswith("merged a into main (ff): ")
    assert git(repo, "rev-parse", "main") != old and user_status(repo) == "M README.md"


def test_a_file_the_user_wrote_after_the_kill_is_never_overwritten(tmp_path: Path) -> None:
    repo_path = make_repo(tmp_path / "repo")
    repo = Repo(repo_path)
    path = worktree(repo, "a")
    (path / "new.txt").write_text("agent\n")
    repo.commit_all(path, "agent work")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MC_KILL_AT": "merge-intent"}
    code = f"from mc.git import Repo; Repo({str(repo_path)!r}).merge('mc/a', 'main', 'ff', 'm')"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    (repo_path / "new.txt").write_text("the user's, written since\n")
    recovery = repo.recover_merge()
    assert recovery is not None and recovery.outcome == "rolled back"
    assert (repo_path / "new.txt").read_text() == "the user's, written since\n"
    assert "new.txt" in recovery.message  # and it says what it left alone


@pytest.mark.skipif(not FULL, reason="the 12,000-file merge killed at random moments runs with MC_FAULTS_FULL=1")
async def test_sigkill_at_random_moments_of_a_12000_file_merge(tmp_path: Path) -> None:
    seed = int(os.environ.get("MC_FAULTS_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    outcomes: dict[str, int] = {}
    # how long the whole merge and its last step (the user's tree follows main) take here
    timed, cfg_path, _ = await prepared_merge(tmp_path / "timed", files=12_000)
    intent = timed / ".git" / "missionctl-merge.json"
    started = time.monotonic()
    child = subprocess.Popen([sys.executable, "-m", "mc", "merge", "a", "--config", str(cfg_path)], cwd=ROOT)
    while not intent.exists() and child.poll() is None:
        time.sleep(0.005)
    moving = time.monotonic()
    assert child.wait(300) == 0
    duration, last_step = time.monotonic() - started, time.monotonic() - moving
    for i in range(8):
        where = f"kill {i} (MC_FAULTS_SEED={seed})"
        repo, cfg_path, old = await prepared_merge(tmp_path / f"k{i}", files=12_000)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("MC_KILL_AT", None)
        child = subprocess.Popen(
            [sys.executable, "-m", "mc", "merge", "a", "--config", str(cfg_path)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        intent = repo / ".git" / "missionctl-merge.json"
        if i % 2:  # anywhere in the whole command
            time.sleep(rng.uniform(0.1, 1.0) * duration)
        else:  # while the base branch and the user's tree move
            while not intent.exists() and child.poll() is None:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 1.0) * last_step)
        with_group = rng.random() < 0.5  # the whole process group (git too), or mission control alone
        try:
            if with_group:
                os.killpg(child.pid, signal.SIGKILL)
            else:
                child.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass
        child.wait()
        fleet = Fleet(load_config(cfg_path))
        await fleet.open()
        try:
            now = git(repo, "rev-parse", "main")
            assert user_status(repo) == "M README.md", where
            told = [n for n in fleet.notices if "was interrupted" in n]
            kind = ("rolled back" if "rolled back" in told[0] else "completed") if told else "before the move"
            kind += ", git killed too" if with_group else ""
            outcomes[kind] = outcomes.get(kind, 0) + 1
            if now == old:
                assert not (repo / "gen").exists(), where
                assert (await fleet.merge("a")).ok, where
            else:
                assert (repo / "gen/f12000.txt").read_text() == "12000\n", where
                assert fleet.get("a").status == "merged", where
        finally:
            await fleet.close()
    print(f"12,000-file merge: {duration:.1f} s ({last_step:.1f} s moving main); outcomes of 8 kills: {outcomes}")


# -- SIGKILL during a spawn -----------------------------------------------------------------------------------

SPAWN_AGENTS = [
    {"name": f"s{i}", "task": f"task {i}", "runner": "command", "command": "echo done > done.txt"} for i in range(1, 5)
]


@pytest.mark.parametrize("point", ["spawn-intent", "spawn-worktree", "spawn-created"])
async def test_sigkill_during_spawn_is_cleaned_up_and_every_agent_starts_next_time(tmp_path: Path, point: str):
    repo = make_repo(tmp_path / "repo")
    cfg_path = write_toml(tmp_path / "mc.toml", repo, SPAWN_AGENTS)
    killed = missionctl("run", "--headless", "--config", str(cfg_path), kill_at=f"{point}:s3")
    # the fleet server killed itself there; the client says the fleet is gone
    assert killed.returncode == 2 and "no fleet server answers" in killed.stderr, killed.stderr
    assert fleet_servers(repo) == []
    again = missionctl("run", "--headless", "--config", str(cfg_path))
    assert again.returncode == 0, again.stderr
    fleet = Fleet(load_config(cfg_path), readonly=True)
    fleet._restore()
    try:
        assert sorted(fleet.agents) == ["s1", "s2", "s3", "s4"]
        for name in ("s3", "s4"):
            agent = fleet.get(name)
            assert agent.status == "idle", (name, agent.status, agent.status_reason)
            assert (Path(agent.worktree) / "done.txt").read_text() == "done\n"
        listed = {w.path for w in fleet.repo.worktrees()} - {repo}
        assert listed == {Path(fleet.get(n).worktree) for n in ("s1", "s2", "s3", "s4")}
        branches = set(git(repo, "branch", "--format=%(refname:short)").split())
        assert branches == {"main", "mc/s1", "mc/s2", "mc/s3", "mc/s4"}
    finally:
        fleet.repo.close()


# -- a branch of the user's -----------------------------------------------------------------------------------


async def test_a_users_branch_fails_only_that_agent_and_reuse_branch_puts_it_to_work(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    git(repo, "branch", "mc/b")
    git(repo, "worktree", "add", "-q", str(tmp_path / "users-b"), "mc/b")
    (tmp_path / "users-b" / "mine.txt").write_text("the user's\n")
    git(tmp_path / "users-b", "add", "mine.txt")
    git(tmp_path / "users-b", "commit", "-q", "-m", "the user's work on mc/b")
    users_commit = git(repo, "rev-parse", "mc/b")
    agents = [{**spec, "name": n} for spec, n in zip(SPAWN_AGENTS, ["a", "b", "c"], strict=False)]
    cfg_path = write_toml(tmp_path / "mc.toml", repo, agents)
    run = missionctl("run", "--headless", "--config", str(cfg_path))
    assert run.returncode == 1, run.stderr
    fleet = Fleet(load_config(cfg_path), readonly=True)
    fleet._restore()
    assert [fleet.get(n).status for n in ("a", "b", "c")] == ["idle", "failed", "idle"]
    reason = fleet.get("b").status_reason
    assert "branch mc/b already exists" in reason and "pick another agent name" in reason
    assert "reuse_branch = true" in reason and str(tmp_path / "users-b") in reason
    fleet.repo.close()
    assert git(repo, "rev-parse", "mc/b") == users_commit
    # the user frees the branch and asks for it to be reused
    git(repo, "worktree", "remove", str(tmp_path / "users-b"))
    agents[1]["reuse_branch"] = True
    write_toml(cfg_path, repo, agents)
    run = missionctl("run", "--headless", "--config", str(cfg_path))
    assert run.returncode == 0, run.stderr
    fleet = Fleet(load_config(cfg_path), readonly=True)
    fleet._restore()
    b = fleet.get("b")
    assert b.status == "idle", b.status_reason
    assert b.branch == "mc/b" and (Path(b.worktree) / "mine.txt").read_text() == "the user's\n"
    assert (Path(b.worktree) / "done.txt").exists()
    fleet.repo.close()
    assert git(repo, "rev-parse", "mc/b") == users_commit


async def test_spawn_of_a_taken_branch_from_the_ui_names_the_choice(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    git(repo, "branch", "mc/b")
    fleet = Fleet(config(repo, []))
    await fleet.open()
    try:
        spec = AgentConfig(name="b", task="t", runner="command", command="true")
        with pytest.raises(FleetError, match=r"branch mc/b already exists: pick another agent name, or reuse"):
            await fleet.spawn(spec)
        assert "b" not in fleet.agents
        agent = await fleet.spawn(AgentConfig(name="b", task="t", runner="command", command="true", reuse_branch=True))
        assert agent.branch == "mc/b"
        assert await fleet.wait_settled(30)
    finally:
        await fleet.close()
