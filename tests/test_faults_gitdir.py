"""Fault suite, git dir: no file an agent can write decides what mission control's own git runs.

An agent's command can write its worktree (and, unsandboxed, what the user can write). Mission control's own
git calls there — the diff, the watcher's check-ignore, snapshot, commit, the built-in tools that call git —
run outside any sandbox, with the user's rights and the network. Three ways to make them run a program:

- rewrite the worktree's `.git` file to point at a repository the agent made, whose config names a program
  (`core.fsmonitor = ./p.sh`): every such call refuses, says what changed and how to put it back;
- plant config that runs programs (fsmonitor, hooks, filters named by `.gitattributes`, an external diff,
  textconv, a credential helper, askpass, gpg) in the repository's config or the worktree's `config.worktree`:
  mission control's calls switch each one off, and still work;
- do it through the real fleet: unsandboxed the diff says so and merge and discard refuse; under bubblewrap
  the `.git` file is read-only, so the rewrite itself fails.

Each planted program appends its name to a log outside the worktree: the log must stay empty.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mc import events as ev
from mc.config import AgentConfig
from mc.fleet import FleetError
from mc.git import GitError, Repo, compute_diff, run_git
from mc.tools import Workspace, run_tool, safe_env, sandbox_available
from mc.watch import _IgnoreFilter
from tests.conftest import fleet_config, make_repo
from tests.test_fleet import shell_turn, wait_for


def plain_git(cwd: Path, *args: str) -> str:
    """The agent's own git (not mission control's): it may run what the config says."""
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


class Programs:
    """Scripts outside the worktree that log their own name when run."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.log = folder / "ran.log"

    def make(self, name: str) -> str:
        path = self.folder / name
        path.write_text(f'#!/bin/sh\necho "{name}" >> {self.log}\n')
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
        return str(path)

    def ran(self) -> list[str]:
        return self.log.read_text().split() if self.log.exists() else []

    def clear(self) -> None:
        self.log.unlink(missing_ok=True)


HOOKS = (
    "pre-commit",
    "prepare-commit-msg",
    "commit-msg",
    "post-commit",
    "post-index-change",
    "reference-transaction",
    "post-checkout",
    "pre-auto-gc",
)


def planted(programs: Programs) -> dict[str, str]:
    """Every config key that makes git run a program, each naming its own logging script."""
    hooks = programs.folder / "hooks"
    hooks.mkdir(exist_ok=True)
    for hook in HOOKS:
        os.symlink(programs.make(f"hook-{hook}"), hooks / hook)
    return {
        "core.fsmonitor": programs.make("fsmonitor"),
        "core.hooksPath": str(hooks),
        "diff.external": programs.make("diff-external"),
        "filter.evil.clean": programs.make("filter-clean"),
        "filter.evil.smudge": programs.make("filter-smudge"),
        "filter.evil.required": "true",
        "filter.evilp.process": programs.make("filter-process"),
        "diff.evil.textconv": programs.make("textconv"),
        "diff.evil.command": programs.make("diff-driver"),
        "credential.helper": programs.make("credential-helper"),
        "core.askPass": programs.make("askpass"),
        "commit.gpgSign": "true",
        "gpg.program": programs.make("gpg"),
    }


#: What the agent writes in its worktree: attributes that name the planted drivers, and files they match.
AGENT_FILES = {
    ".gitattributes": "*.txt filter=evil diff=evil\n*.dat filter=evilp\n",
    ".gitignore": "build/\n",
    "notes.txt": "one\ntwo\n",
    "data.dat": "payload\n",
    "README.md": "changed by the agent\n",
}


def agent_worktree(repo: Repo, name: str) -> Path:
    path = repo.root.parent / "worktrees" / name
    repo.add_worktree(path, f"mc/{name}", repo.resolve("main"))
    for rel, text in AGENT_FILES.items():
        (path / rel).write_text(text)
    (path / "build").mkdir()
    (path / "build" / "out.o").write_text("ignored\n")
    return path


def operations(repo: Repo, path: Path, tag: str) -> list[tuple[str, Callable[[], Any]]]:
    """Mission control's own git calls in an agent's worktree, each as (name, call)."""
    base = repo.resolve("main")
    ws = Workspace(path)

    async def tool(name: str, args: dict[str, Any]) -> Any:
        from mc.config import ToolsConfig

        outcome = await run_tool(
            name, args, ws, on_output=lambda _: None, env=safe_env([]), tools_cfg=ToolsConfig(sandbox="none"), tag=tag
        )
        assert outcome.ok, f"{name}: {outcome.output}"
        return outcome

    patch = "--- a/notes.txt\n+++ b/notes.txt\n@@ -1,2 +1,2 @@\n one\n-two\n+three\n"
    return [
        ("diff", lambda: compute_diff(path, base)),
        ("watcher check-ignore", lambda: _IgnoreFilter().keep(path, set(WATCHED))),
        ("is_dirty", lambda: repo.is_dirty(path, untracked=True)),
        ("list_files tool", lambda: tool("list_files", {})),
        ("search tool", lambda: tool("search", {"pattern": "one"})),
        ("apply_patch tool", lambda: tool("apply_patch", {"patch": patch})),
        ("snapshot", lambda: repo.snapshot(path, "refs/mc/snapshots/planted", "before discard")),
        ("commit", lambda: repo.commit_all(path, "the agent's work")),
        ("diff after commit", lambda: compute_diff(path, base)),
        (
            "restore snapshot",
            lambda: repo.restore_snapshot("refs/mc/snapshots/planted", "mc/back", path.parent / "back"),
        ),
        ("remove worktree", lambda: repo.remove_worktree(path)),  # git runs `git status` there to see it is clean
    ]


#: The watcher never raises: a worktree it cannot ask keeps every changed path (so the diff runs, and says why).
WATCHED = {"notes.txt", "build/out.o", "build/new.o"}


async def run_all(ops: list[tuple[str, Callable[[], Any]]]) -> tuple[dict[str, Any], dict[str, str]]:
    """Run each operation: (what each returned, the error of each that raised)."""
    results: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for name, call in ops:
        try:
            result = call()
            if hasattr(result, "__await__"):
                result = await result
            results[name] = result
        except (GitError, AssertionError) as exc:
            failed[name] = str(exc)
    return results, failed


@pytest.fixture
def tag() -> str:
    return f"gitdir-{os.getpid()}"


@pytest.mark.parametrize("where", ["repository config", "worktree config"])
async def test_planted_config_runs_nothing_and_mission_control_still_works(
    tmp_path: Path, where: str, tag: str
) -> None:
    repo = Repo(make_repo(tmp_path / "repo"))
    path = agent_worktree(repo, "planter")
    programs = Programs(tmp_path / "programs")
    keys = planted(programs)
    if where == "repository config":
        target = ["--file", str(repo.git_common_dir / "config")]
        for hook in HOOKS:  # the default hooks folder too
            os.symlink(programs.folder / "hooks" / hook, repo.git_common_dir / "hooks" / hook)
    else:
        plain_git(path, "config", "extensions.worktreeConfig", "true")
        target = ["--worktree"]
    for key, value in keys.items():
        plain_git(path, "config", *target, key, value)
    ops = operations(repo, path, tag)
    if where == "repository config":
        # Restoring creates a branch in the main repository, whose own config (the user's hooks) applies.
        ops = [op for op in ops if op[0] != "restore snapshot"]
    # a call that asks for a password, while the worktree is still there: neither the planted helper nor
    # askpass is asked, so git finds no way to get one
    ops.insert(-1, ("credential fill", lambda: credential_fill(path)))
    results, failed = await run_all(ops)
    ran = programs.ran()
    print(f"{where}: {len(keys)} keys and {len(HOOKS)} hooks planted, {len(ops)} git operations: ran {ran}")
    assert len(keys) == 13 and len(ops) == (11 if where == "repository config" else 12)
    assert ran == [], f"planted programs ran: {ran}"
    assert failed == {}
    assert "terminal prompts disabled" in results["credential fill"], results["credential fill"]
    assert results["watcher check-ignore"] == {"notes.txt"}
    # the work is committed as the bytes on disk (no filter touched it)
    assert plain_git(repo.root, "show", "mc/planter:notes.txt") == "one\nthree\n" and not path.exists()
    if "restore snapshot" in results:
        assert (path.parent / "back" / "data.dat").read_text() == "payload\n"


def credential_fill(path: Path) -> str:
    """Ask mission control's git for a password in `path`: the error it ends with (it must find none)."""
    try:
        run_git(["credential", "fill"], path, input=b"protocol=https\nhost=example.invalid\n\n")
    except GitError as exc:
        return str(exc)
    raise AssertionError("a credential was found: a helper ran")


def test_a_filter_defined_later_in_an_included_file_is_switched_off_too(tmp_path: Path) -> None:
    """Unsandboxed, the agent adds `include.path` of a file in its worktree to the repository's config, lets
    mission control read the config once, and only then defines a filter in the included file: mission
    control's next calls still switch it off (the filter list is read again when an included file changes)."""
    repo = Repo(make_repo(tmp_path / "repo"))
    path = agent_worktree(repo, "includer")
    programs = Programs(tmp_path / "programs")
    included = path / "inc.cfg"
    included.write_text("")
    plain_git(path, "config", "--file", str(repo.git_common_dir / "config"), "include.path", str(included))
    nested = path / "nested.cfg"
    nested.write_text("")
    base = repo.resolve("main")
    assert "notes.txt" in {f.path for f in compute_diff(path, base).files}  # read once: no filter defined
    included.write_text(f'[include]\n\tpath = nested.cfg\n[filter "evil"]\n\tclean = {programs.make("clean")}\n')
    (path / "notes.txt").write_text("one\ntwo\nthree\n")
    compute_diff(path, base)
    nested.write_text(f'[filter "evilp"]\n\tprocess = {programs.make("process")}\n\trequired = true\n')
    (path / "data.dat").write_text("changed\n")
    compute_diff(path, base)
    repo.commit_all(path, "the agent's work")
    assert programs.ran() == []
    assert plain_git(repo.root, "show", "mc/includer:data.dat") == "changed\n"


def evil_repo(programs: Programs, at: Path) -> Path:
    """A repository at `at` whose config runs a program on the next git call that reads its index."""
    plain_git(at.parent, "init", "-q", str(at))
    plain_git(at, "config", "core.fsmonitor", programs.make("p.sh"))
    plain_git(at, "config", "core.hooksPath", str(at))
    return at / ".git"


def hijacks(path: Path, sibling: Path, programs: Programs) -> dict[str, Callable[[], None]]:
    """Ways an agent's command points its worktree's git elsewhere."""
    dotgit = path / ".git"

    def gitdir_file() -> None:  # the report: gitdir: $PWD/evil/.git
        dotgit.write_text(f"gitdir: {evil_repo(programs, path / 'evil')}\n")

    def relative_gitdir_file() -> None:
        evil_repo(programs, path / "evil")
        dotgit.write_text("gitdir: evil/.git\n")

    def a_repository_in_its_place() -> None:
        dotgit.unlink()
        plain_git(path, "init", "-q")
        plain_git(path, "config", "core.fsmonitor", programs.make("p.sh"))

    def another_agents_gitdir() -> None:
        dotgit.write_text((sibling / ".git").read_text())

    def removed() -> None:
        dotgit.unlink()

    def its_git_dir_names_another_repository() -> None:  # unsandboxed: <common>/worktrees/<id>/commondir
        admin = Path(dotgit.read_text().split(":", 1)[1].strip())
        (admin / "commondir").write_text(f"{evil_repo(programs, path / 'evil')}\n")

    return {
        "gitdir file": gitdir_file,
        "relative gitdir file": relative_gitdir_file,
        "a repository in its place": a_repository_in_its_place,
        "another agent's git dir": another_agents_gitdir,
        "removed": removed,
        "its git dir names another repository": its_git_dir_names_another_repository,
    }


HIJACKS = [
    "gitdir file",
    "relative gitdir file",
    "a repository in its place",
    "another agent's git dir",
    "removed",
    "its git dir names another repository",
]


@pytest.mark.parametrize("how", HIJACKS)
async def test_a_rewritten_dot_git_is_refused_by_every_call_and_runs_nothing(
    tmp_path: Path, how: str, tag: str
) -> None:
    repo = Repo(make_repo(tmp_path / "repo"))
    path = agent_worktree(repo, "hijacker")
    sibling = agent_worktree(repo, "sibling")
    expected = (path / ".git").read_text().split(":", 1)[1].strip()
    programs = Programs(tmp_path / "programs")
    hijacks(path, sibling, programs)[how]()
    programs.clear()
    ops = [op for op in operations(repo, path, tag) if op[0] not in ("restore snapshot", "remove worktree")]
    results, failed = await run_all(ops)
    print(f".git {how}: {len(ops)} git operations, {len(failed)} refused, ran {programs.ran()}")
    assert programs.ran() == []
    assert results == {"watcher check-ignore": WATCHED}, f"not refused: {set(results)}"
    for name, message in failed.items():
        assert ".git" in message and expected in message and "restore it" in message, (name, message)
    assert repo.branch_exists("mc/hijacker") and not repo.snapshots()  # nothing was recorded from the wrong place
    assert len(HIJACKS) == 6 and len(ops) == 9


def test_putting_the_dot_git_file_back_as_the_message_says_restores_everything(tmp_path: Path) -> None:
    repo = Repo(make_repo(tmp_path / "repo"))
    path = agent_worktree(repo, "undo")
    programs = Programs(tmp_path / "programs")
    hijacks(path, path, programs)["gitdir file"]()
    with pytest.raises(GitError) as refused:
        compute_diff(path, repo.resolve("main"))
    fix = str(refused.value).split("`")[1]  # restore it: `printf 'gitdir: …\n' > …/.git`
    subprocess.run(fix, shell=True, check=True)
    assert "README.md" in {f.path for f in compute_diff(path, repo.resolve("main")).files}
    assert programs.ran() == []


ATTACK = (
    "mkdir evil && git -C evil init -q && printf '#!/bin/sh\\necho ran >> {mark}\\n' > p.sh && chmod +x p.sh"
    " && git -C evil config core.fsmonitor $PWD/p.sh && echo changed > README.md"
    ' && echo "gitdir: $PWD/evil/.git" > .git'
)


async def test_the_reported_escape_through_the_fleet_unsandboxed(
    repo: Path, tmp_path: Path, scripted: Any, fleet_factory: Any
) -> None:
    mark = tmp_path / "escaped.txt"
    server = scripted({"agents": [{"name": "evil", "turns": [shell_turn(ATTACK.format(mark=mark)), {"say": "Ok."}]}]})
    cfg = fleet_config(repo, server, [AgentConfig(name="evil", task="escape", model="evil", policy="never")])
    cfg.tools.sandbox = "none"
    fleet = await fleet_factory(cfg)
    await fleet.spawn_configured()
    assert await fleet.wait_settled(60)
    agent = fleet.get("evil")
    result = next(e for e in fleet.store.iter_events("evil") if isinstance(e, ev.ToolResult))
    assert result.ok, result.output  # unsandboxed, the rewrite itself succeeds

    def said() -> list[str]:
        return [e.message for e in fleet.store.iter_events("evil") if isinstance(e, ev.ErrorEvent)]

    await wait_for(lambda: any(".git" in m and "restore it" in m for m in said()), what="the diff's refusal")
    with pytest.raises(FleetError, match=r"\.git"):
        await fleet.merge("evil")
    with pytest.raises(FleetError, match=r"\.git"):
        await fleet.discard("evil")
    assert any(text.startswith("! diff failed") and "restore it" in text for _, text in agent.log.lines)
    assert not mark.exists(), "p.sh ran outside the sandbox"
    assert Path(agent.worktree, "README.md").read_text() == "changed\n"  # nothing was thrown away


async def test_the_reported_escape_fails_in_the_sandbox(
    repo: Path, tmp_path: Path, scripted: Any, fleet_factory: Any
) -> None:
    ok, why = sandbox_available()
    if not ok:
        pytest.skip(why)
    mark = tmp_path / "escaped.txt"
    server = scripted({"agents": [{"name": "evil", "turns": [shell_turn(ATTACK.format(mark=mark)), {"say": "Ok."}]}]})
    cfg = fleet_config(repo, server, [AgentConfig(name="evil", task="escape", model="evil", policy="never")])
    cfg.tools.sandbox = "bwrap"
    fleet = await fleet_factory(cfg)
    await fleet.spawn_configured()
    assert await fleet.wait_settled(60)
    agent = fleet.get("evil")
    before = (Path(agent.worktree) / ".git").read_text()
    result = next(e for e in fleet.store.iter_events("evil") if isinstance(e, ev.ToolResult))
    assert not result.ok and "Read-only file system" in result.output, result.output
    assert before == f"gitdir: {repo.resolve() / '.git' / 'worktrees' / 'evil'}\n"  # as mission control made it

    def diffed() -> set[str]:
        return {f.path for e in fleet.store.iter_events("evil") if isinstance(e, ev.DiffChanged) for f in e.files}

    await wait_for(lambda: "README.md" in diffed(), what="the agent's diff")
    assert not mark.exists()


def test_a_repository_the_agent_made_inside_a_submodule_runs_nothing(tmp_path: Path) -> None:
    """Where a submodule is (a gitlink of the base), the agent's command can make a repository of its own, with a
    repository inside it whose config and attributes name a filter. Mission control's checks of the submodule
    run git there; git must not start it in the nested one, whose config no one has read."""
    lib = make_repo(tmp_path / "lib", {"lib.py": "x = 1\n"})
    main = make_repo(tmp_path / "repo")
    plain_git(main, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(lib), "vendor/lib")
    plain_git(main, "commit", "-q", "-m", "add submodule")
    repo = Repo(main)
    path = repo.root.parent / "worktrees" / "nest"
    repo.add_worktree(path, "mc/nest", repo.resolve("main"))
    programs = Programs(tmp_path / "programs")
    sub = path / "vendor" / "lib"  # empty: not checked out in a new worktree
    inner = sub / "inner"
    for folder, driver in ((inner, "deep"), (sub, "outer")):  # the agent's own git, inside its worktree
        folder.mkdir(parents=True, exist_ok=True)
        plain_git(folder, "init", "-q")
        (folder / ".gitattributes").write_text(f"*.txt filter={driver}\n")
        (folder / "a.txt").write_text("a\n")
        plain_git(folder, "add", "-A")
        plain_git(folder, "-c", "user.name=a", "-c", "user.email=a@b", "commit", "-q", "-m", "x")
        plain_git(folder, "config", f"filter.{driver}.clean", programs.make(f"clean-{driver}"))
        plain_git(folder, "config", f"filter.{driver}.required", "true")
        (folder / "a.txt").write_text("b\n")  # the same size, a later time: git must clean it to compare
        os.utime(folder / "a.txt", (os.stat(folder / "a.txt").st_atime, os.stat(folder / "a.txt").st_mtime + 5))
    base = repo.resolve("main")
    ops = [("unkept work", lambda: repo.unkept_work(path)), ("diff", lambda: compute_diff(path, base))]
    for _name, call in ops:
        call()
    print(f"nested repositories in a submodule: {len(ops)} git operations, ran {programs.ran()}")
    assert programs.ran() == []
    assert any("vendor/lib" in line for line in repo.unkept_work(path))  # and the work there is still reported
