"""One repository and its agent worktrees: create, snapshot, commit, merge, discard, restore.

Every command is a plain `git` subprocess (see `mc.git.cmd`): no long-lived helper processes to leak, and the
hot path costs one process per call. Calls that change shared state (`git worktree …`, branch creation, the
exclude file, ref moves of a merge) run under one lock per repository, held by a threading lock and a file
lock on `<git-common-dir>/missionctl.lock`, so threads and processes serialise; 32 parallel `worktree add`
calls otherwise fail on `.git/worktrees/<id>/commondir`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import git as gitpython

from mc.git.cmd import GitError, run_git, run_git_status, trust_repository
from mc.git.diff import GITLINK, git_status_in, hidden_files

log = logging.getLogger(__name__)

MergeMode = Literal["ff", "merge", "squash"]
LOCK_REASON = "missionctl agent"
DEFAULT_IDENTITY = ("missionctl", "missionctl@localhost")
#: The merge in progress (old and new commit of the base branch, the trees that follow it), in the common git
#: folder: written before anything moves, removed when all of it moved; `recover_merge` finishes or undoes it.
MERGE_INTENT = "missionctl-merge.json"
#: How long recovery waits for a git command still running in a working tree (holding its index.lock).
LOCK_WAIT = 120.0


def fault_point(name: str, detail: str = "") -> None:
    """For the fault suite: SIGKILL this process here when MC_KILL_AT names this point (`name` or
    `name:detail`), so that a test can stop an operation exactly between two of its steps."""
    wanted = os.environ.get("MC_KILL_AT")
    if wanted and wanted in (name, f"{name}:{detail}"):
        os.kill(os.getpid(), signal.SIGKILL)


class _RepoLock:
    """A re-entrant lock shared by every thread and (through flock) every process working on one repository."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    def __enter__(self) -> _RepoLock:
        self._lock.acquire()
        try:
            if self._depth == 0:
                fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                self._fd = fd
            self._depth += 1
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        self._lock.release()


_LOCKS: dict[str, _RepoLock] = {}
_LOCKS_GUARD = threading.Lock()


def _repo_lock(common_dir: Path) -> _RepoLock:
    key = os.path.realpath(common_dir)
    with _LOCKS_GUARD:
        lock = _LOCKS.get(key)
        if lock is None:
            lock = _LOCKS[key] = _RepoLock(Path(key) / "missionctl.lock")
        return lock


@dataclass(frozen=True)
class MergeResult:
    """What `Repo.merge` did. `ok` false means a conflict: nothing was changed."""

    ok: bool
    commit: str | None = None
    conflicts: list[str] = field(default_factory=list)
    message: str = ""
    mode: str = "ff"


@dataclass(frozen=True)
class MergeRecovery:
    """What `Repo.recover_merge` did with a merge that was interrupted (mission control was killed during it)."""

    outcome: Literal["completed", "rolled back", "abandoned"]
    branch: str
    into: str
    commit: str
    mode: str
    message: str
    """One line for the user: what happened, and what to do."""


@dataclass(frozen=True)
class WorktreeInfo:
    path: Path
    head: str
    branch: str | None  # full ref, e.g. refs/heads/mc/x; None when detached
    locked: bool
    bare: bool = False


def _retry_on_index_lock(func, attempts: int = 20, delay: float = 0.1):  # type: ignore[no-untyped-def]
    """Call `func`; when git says another process holds index.lock (the agent's own git), wait and retry."""
    for attempt in range(attempts):
        try:
            return func()
        except GitError as exc:
            if "index.lock" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(delay)
    raise AssertionError("unreachable")


class Repo:
    """A git repository that agents work on, each in a worktree on its own branch."""

    def __init__(self, path: str | Path) -> None:
        p = Path(path).expanduser()
        hint = f"{p} is not a git repository: run `git init` there or point [repo] path at one"
        if not p.is_dir():
            raise GitError(hint)
        # Opening is GitPython's job (it finds the top and the common git folder of a worktree too); it is
        # closed at once, so none of its helper processes outlives this call. Every command after this is a
        # plain git process (see mc.git.cmd).
        try:
            opened = gitpython.Repo(p, search_parent_directories=True)
        except (gitpython.InvalidGitRepositoryError, gitpython.NoSuchPathError):
            raise GitError(hint) from None
        try:
            if opened.working_tree_dir is None:
                raise GitError(f"{p} is a bare repository: point [repo] path at a clone with a working tree")
            self.root = Path(opened.working_tree_dir).resolve()
            self.git_common_dir = Path(opened.common_dir).resolve()
        finally:
            opened.close()
        trust_repository(self.git_common_dir, self.root)  # git in its linked (agents') worktrees is confined
        self._lock = _repo_lock(self.git_common_dir)
        self._identity: dict[str, str] | None = None

    def __repr__(self) -> str:
        return f"Repo({str(self.root)!r})"

    def close(self) -> None:
        """Nothing stays open between calls (every call is its own git process); kept for symmetry."""

    def __enter__(self) -> Repo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ----------------------------------------------------------------------------------------------

    def git(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
        """Run a git command in the repository (or `cwd`) and return its stdout."""
        return run_git(list(args), cwd or self.root, env=env)

    def current_branch(self) -> str | None:
        """The branch checked out in the main working tree, or None when HEAD is detached."""
        code, out, _ = run_git_status(["symbolic-ref", "-q", "--short", "HEAD"], self.root)
        return out.strip() if code == 0 and out.strip() else None

    def resolve(self, ref: str) -> str:
        """The commit a ref names. Raises GitError when there is none."""
        code, out, _ = run_git_status(
            ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"], self.root
        )
        if code != 0 or not out.strip():
            raise GitError(
                f"base ref {ref!r} not found in {self.root}: set [repo] base to an existing branch or commit "
                "(`git branch` lists them)"
            )
        return out.strip()

    def is_dirty(self, path: Path | None = None, *, untracked: bool = False) -> bool:
        """Whether the working tree (main, or the worktree at `path`) has uncommitted changes to tracked files
        (or, with `untracked`, untracked files)."""
        args = ["status", "--porcelain", "-z", "--untracked-files=" + ("normal" if untracked else "no")]
        return bool(run_git(args, path or self.root))

    def branch_exists(self, name: str) -> bool:
        code, _, _ = run_git_status(["show-ref", "--verify", "--quiet", f"refs/heads/{name}"], self.root)
        return code == 0

    def worktrees(self) -> list[WorktreeInfo]:
        """Every worktree of the repository, the main one first."""
        out = run_git(["worktree", "list", "--porcelain", "-z"], self.root)
        result: list[WorktreeInfo] = []
        entry: dict[str, str] = {}
        for token in [*out.split("\0"), ""]:
            if token:
                key, _, value = token.partition(" ")
                entry[key] = value
                continue
            if "worktree" in entry:
                result.append(
                    WorktreeInfo(
                        path=Path(entry["worktree"]),
                        head=entry.get("HEAD", ""),
                        branch=entry.get("branch"),
                        locked="locked" in entry,
                        bare="bare" in entry,
                    )
                )
            entry = {}
        return result

    def snapshots(self, prefix: str = "refs/mc/snapshots/") -> list[tuple[str, str]]:
        """(ref, commit) of every snapshot under `prefix`, newest first."""
        out = run_git(["for-each-ref", "--sort=-committerdate", "--format=%(refname) %(objectname)", prefix], self.root)
        return [tuple(line.split(" ", 1)) for line in out.splitlines() if line]  # type: ignore[misc]

    def identity_env(self) -> dict[str, str]:
        """Author/committer variables for commits we make: the user's configured identity, else missionctl's."""
        if self._identity is None:
            _, name, _ = run_git_status(["config", "user.name"], self.root)
            _, email, _ = run_git_status(["config", "user.email"], self.root)
            env: dict[str, str] = {}
            if not name.strip() or not email.strip():
                for role in ("AUTHOR", "COMMITTER"):
                    if not os.environ.get(f"GIT_{role}_NAME") or not os.environ.get(f"GIT_{role}_EMAIL"):
                        env[f"GIT_{role}_NAME"], env[f"GIT_{role}_EMAIL"] = DEFAULT_IDENTITY
            self._identity = env
        return dict(self._identity)

    # -- shared state (under the repository lock) -------------------------------------------------------------

    def exclude(self, pattern: str) -> None:
        """Add `pattern` to `.git/info/exclude` once (the user's .gitignore is never edited)."""
        path = self.git_common_dir / "info" / "exclude"
        with self._lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            text = path.read_text(encoding="utf-8") if path.exists() else ""
            if pattern in text.splitlines():
                return
            if text and not text.endswith("\n"):
                text += "\n"
            tmp = path.with_name(f"exclude.mc-{secrets.token_hex(4)}")
            tmp.write_text(text + pattern + "\n", encoding="utf-8")
            os.replace(tmp, path)

    def checked_out_in(self, branch: str) -> Path | None:
        """The working tree that has `branch` checked out, or None."""
        ref = f"refs/heads/{branch}"
        return next((w.path for w in self.worktrees() if w.branch == ref), None)

    def add_worktree(self, path: Path, branch: str, base_commit: str, *, reuse: bool = False) -> None:
        """Create a worktree at `path` on a new branch `branch` from `base_commit`, locked against `git gc`.
        With `reuse`, an existing `branch` is checked out there as it is (and created from `base_commit` when
        there is none).

        Only the registration (`worktree add --no-checkout`) runs under the repository lock; the files are
        checked out after it, so several agents of a large repository start side by side.
        """
        path = Path(path).absolute()
        with self._lock:
            existing = self.branch_exists(branch)
            if existing and not reuse:
                where = self.checked_out_in(branch)
                raise GitError(
                    f"branch {branch} already exists"
                    + (f" and is checked out in {where}" if where else "")
                    + ": pick another agent name, or reuse the branch (reuse_branch = true for the agent)"
                )
            if existing and (where := self.checked_out_in(branch)):
                raise GitError(
                    f"branch {branch} is checked out in {where}: a branch can be checked out in one place only; "
                    f"remove that worktree (`git worktree remove {where}`) or pick another agent name"
                )
            if path.exists() and (not path.is_dir() or any(path.iterdir())):
                raise GitError(f"{path} already exists and is not empty: pick another agent name or remove that folder")
            path.parent.mkdir(parents=True, exist_ok=True)
            args = ["worktree", "add", "--quiet", "--no-checkout", "--lock", "--reason", LOCK_REASON]
            args += [str(path), branch] if existing else ["-b", branch, str(path), base_commit]
            try:
                run_git(args, self.root)
            except GitError:
                # A failed `worktree add -b` can leave the branch (and an admin entry) behind: take them back.
                registered = any(w.path == path for w in self.worktrees())
                if not registered:
                    run_git_status(["worktree", "prune"], self.root)
                    if not existing and self.branch_exists(branch):
                        run_git_status(["branch", "-D", branch], self.root)
                raise
        fault_point("spawn-worktree", path.name)
        try:
            run_git(["reset", "--hard", "--quiet"], path)
        except GitError as exc:
            with self._lock:
                run_git_status(["worktree", "unlock", str(path)], self.root)
                run_git_status(["worktree", "remove", "--force", str(path)], self.root)
                if not existing:
                    run_git_status(["branch", "-D", branch], self.root)
            raise GitError(f"could not check out {branch} in {path}: {exc}: check free disk space and retry") from None

    def remove_unstarted(self, path: Path, branch: str, base_commit: str, *, keep_branch: bool = False) -> list[str]:
        """Take back what an interrupted `add_worktree` left: the worktree at `path` (no agent ever worked in
        it) and, unless `keep_branch`, `branch` when it still points at `base_commit`. Returns what it could not
        remove, one line each."""
        path = Path(path).absolute()
        left: list[str] = []
        with self._lock:
            registered = next((w for w in self.worktrees() if w.path == path), None)
            if registered is not None and registered.branch not in (None, f"refs/heads/{branch}"):
                return [f"{path} is a worktree of {registered.branch}, not of {branch}: left as it is"]
            if registered is not None:
                run_git_status(["worktree", "unlock", str(path)], self.root)
                code, _, err = run_git_status(["worktree", "remove", "--force", str(path)], self.root)
                if code != 0:
                    left.append(f"{path}: {err}")
            elif path.is_dir():
                # `worktree add` died before registering it: only its own `.git` file can be in there
                if {p.name for p in path.iterdir()} <= {".git"}:
                    shutil.rmtree(path)
                else:
                    left.append(f"{path} holds files and is no worktree: left as it is")
            run_git_status(["worktree", "prune"], self.root)
            if self.branch_exists(branch) and not keep_branch:
                if self.resolve(f"refs/heads/{branch}") == base_commit and self.checked_out_in(branch) is None:
                    run_git_status(["branch", "-D", branch], self.root)
                else:
                    left.append(f"branch {branch} has commits of its own: kept")
        return left

    def remove_worktree(self, path: Path, *, force: bool = False) -> None:
        """Remove the worktree at `path` (its branch stays). Without `force`, git refuses when it has changes."""
        path = Path(path).absolute()
        with self._lock:
            run_git_status(["worktree", "unlock", str(path)], self.root)
            args = ["worktree", "remove", *(["--force"] if force else []), str(path)]
            code, _, err = run_git_status(args, self.root)
            if code != 0:
                if path.exists():
                    run_git_status(["worktree", "lock", "--reason", LOCK_REASON, str(path)], self.root)
                raise GitError(
                    f"cannot remove worktree {path}: {err}: discard the agent (a snapshot is kept) or commit its work first"
                )

    def delete_branch(self, branch: str) -> None:
        """Delete `branch` whether merged or not (take a snapshot first if its work matters)."""
        with self._lock:
            run_git(["branch", "-D", branch], self.root)

    # -- keeping work -----------------------------------------------------------------------------------------

    def unkept_work(self, worktree: Path) -> list[str]:
        """What in `worktree` no commit or snapshot of this repository can hold, one line each with its fix
        (empty when a commit keeps everything but ignored files): files in a submodule folder that is not
        checked out or that git cannot read, uncommitted changes inside a submodule, a submodule commit that
        exists only in the worktree, a repository of its own inside it. Removing the worktree would lose them."""
        worktree = Path(worktree)
        problems: list[str] = []
        links: dict[str, str] = {}
        for entry in run_git(["ls-files", "-z", "--stage"], worktree).split("\0"):
            if entry.startswith(GITLINK + " "):
                info, _, path = entry.partition("\t")
                links[path] = info.split()[1]
        for path, commit in sorted(links.items()):
            problems += self._submodule_problems(worktree, path, commit)
        others = run_git(["ls-files", "-z", "--others", "--exclude-standard"], worktree)
        for rel in sorted(p for p in others.split("\0") if p.endswith("/")):
            name = rel.rstrip("/")
            problems.append(
                f"{name} is a git repository of its own inside the worktree, so no commit can hold its files: "
                f"move them out of {name} (or delete {name}/.git)"
            )
        return problems

    def _submodule_problems(self, worktree: Path, path: str, commit: str) -> list[str]:
        folder = worktree / path
        if not folder.is_dir() or folder.is_symlink():
            return []

        def files_note(why: str) -> list[str]:
            hidden = hidden_files(folder)
            if not hidden:
                return []
            more = f" (and {len(hidden) - 1} more)" if len(hidden) > 1 else ""
            return [
                f"{path}/{hidden[0]}{more} is inside submodule {path}, {why}, so no commit can hold it: "
                f"move it out of {path} (or delete it)"
            ]

        if not os.path.lexists(folder / ".git"):
            return files_note("which is not checked out in the worktree")
        code, top, err = git_status_in(["rev-parse", "--show-toplevel"], folder)
        if code != 0 or Path(top.strip()) != folder.resolve():
            return files_note(f"which git cannot read ({err})")
        code, out, err = git_status_in(["status", "--porcelain", "-z", "--untracked-files=normal"], folder)
        if code != 0:
            return files_note(f"which git cannot read ({err})")
        if out:
            names = sorted({e[3:] for e in out.split("\0") if len(e) > 3})
            shown = ", ".join(names[:5]) + (" …" if len(names) > 5 else "")
            return [f"submodule {path} has uncommitted changes ({shown}): commit them inside {path}"]
        code, head, _ = git_status_in(["rev-parse", "--verify", "--quiet", "HEAD"], folder)
        head = head.strip()
        if code == 0 and head and head != commit and not self._kept_elsewhere(worktree, folder, path, head):
            return [
                f"submodule {path} is at {head[:10]}, a commit that exists only in the worktree: push it "
                f"(`git -C {folder} push`) so that the submodule's remote keeps it"
            ]
        return []

    def _kept_elsewhere(self, worktree: Path, folder: Path, path: str, commit: str) -> bool:
        """Whether submodule `commit` survives the removal of `worktree`: its repository lives elsewhere, the
        user's own checkout of the submodule has it, or it was pushed."""
        code, gitdir, _ = git_status_in(["rev-parse", "--absolute-git-dir"], folder)
        if code == 0:
            where = Path(gitdir.strip()).resolve()
            doomed = (worktree.resolve(), self.git_common_dir / "worktrees")
            if not any(where == d or where.is_relative_to(d) for d in doomed):
                return True
        users = self.root / path
        if os.path.lexists(users / ".git"):
            code, _, _ = git_status_in(["cat-file", "-e", f"{commit}^{{commit}}"], users)
            if code == 0:
                return True
        code, out, _ = git_status_in(
            ["for-each-ref", "--count=1", "--contains", commit, "--format=%(refname)", "refs/remotes/"], folder
        )
        return code == 0 and bool(out.strip())

    def snapshot(self, worktree: Path, ref: str, message: str) -> str:
        """Keep everything in `worktree` (committed or not, untracked included, ignored excluded) as a commit
        at `ref`, without touching the worktree's index. Returns the commit."""
        if not ref.startswith("refs/"):
            raise GitError(f"snapshot ref {ref!r} must be a full ref: use refs/mc/snapshots/<id>")
        worktree = Path(worktree)
        index = Path(run_git(["rev-parse", "--path-format=absolute", "--git-path", "index"], worktree).strip())
        tmp = index.with_name(f"mc-snapshot-{os.getpid()}-{secrets.token_hex(4)}.index")
        try:
            if index.exists():
                shutil.copyfile(index, tmp)
            env = {"GIT_INDEX_FILE": str(tmp)}
            run_git(["add", "-A", "--", "."], worktree, env=env)
            tree = run_git(["write-tree"], worktree, env=env).strip()
            code, head, _ = run_git_status(["rev-parse", "--verify", "--quiet", "HEAD"], worktree)
            parents = ["-p", head.strip()] if code == 0 and head.strip() else []
            commit = run_git(["commit-tree", tree, *parents, "-m", message], worktree, env=self.identity_env()).strip()
            run_git(["update-ref", "-m", f"missionctl: {message}"[:200], ref, commit], worktree)
            return commit
        finally:
            for leftover in (tmp, tmp.with_name(tmp.name + ".lock")):
                try:
                    leftover.unlink()
                except FileNotFoundError:
                    pass

    def commit_all(self, worktree: Path, message: str) -> str | None:
        """Commit everything in `worktree` (untracked included, ignored excluded) on its branch.

        Returns the new commit, or None when there is nothing to commit. Hooks are not run: this records the
        agent's work as it is; the user's hooks run when the user commits on the base branch.
        """
        worktree = Path(worktree)
        self._settle_index_lock(worktree)  # one left by a commit of ours that was killed would block every merge
        _retry_on_index_lock(lambda: run_git(["add", "-A", "--", "."], worktree))
        code, _, err = run_git_status(["diff", "--cached", "--quiet"], worktree)
        if code == 0:
            return None
        if code != 1:
            raise GitError(f"cannot read the index of {worktree}: {err}")
        _retry_on_index_lock(
            lambda: run_git(["commit", "--quiet", "--no-verify", "-m", message], worktree, env=self.identity_env())
        )
        return run_git(["rev-parse", "HEAD"], worktree).strip()

    def restore_snapshot(self, ref: str, branch: str, path: Path) -> str:
        """Recreate a worktree at `path` on a new `branch` from a snapshot: the branch points at the commit the
        snapshot was taken on, and the snapshot's uncommitted work is back as uncommitted changes.
        Returns the snapshot commit."""
        code, out, _ = run_git_status(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], self.root)
        if code != 0:
            raise GitError(f"snapshot {ref} not found in {self.root}: list them with `git for-each-ref refs/mc/`")
        snap = out.strip()
        code, out, _ = run_git_status(["rev-parse", "--verify", "--quiet", f"{snap}^1"], self.root)
        base = out.strip() if code == 0 else snap
        self.add_worktree(path, branch, base)
        if base != snap:
            run_git(["read-tree", "-m", "-u", base, snap], Path(path))
            run_git(["reset", "--quiet"], Path(path))
        return snap

    undo_discard = restore_snapshot

    def discard(self, worktree: Path, branch: str, snapshot_ref: str, message: str = "discarded") -> str:
        """Snapshot the worktree at `snapshot_ref`, then remove it and delete its branch. Returns the snapshot
        commit; `restore_snapshot` brings the work back. Nothing is removed when the snapshot fails, nor when
        the worktree holds work a snapshot cannot (see `unkept_work`)."""
        if Path(worktree).is_dir():
            problems = self.unkept_work(worktree)
            if problems:
                raise GitError("; ".join(problems) + "; then discard again")
        commit = self.snapshot(worktree, snapshot_ref, message)
        if Path(worktree).exists() or any(w.path == Path(worktree).absolute() for w in self.worktrees()):
            self.remove_worktree(worktree, force=True)
        if self.branch_exists(branch):
            self.delete_branch(branch)
        return commit

    # -- landing work -----------------------------------------------------------------------------------------

    def _is_ancestor(self, older: str, newer: str) -> bool:
        code, _, err = run_git_status(["merge-base", "--is-ancestor", older, newer], self.root)
        if code > 1:
            raise GitError(f"cannot compare {older[:12]} and {newer[:12]}: {err}")
        return code == 0

    def merge(self, branch: str, into: str, mode: MergeMode, message: str) -> MergeResult:
        """Land `branch` on `into` without checking anything out and without touching uncommitted changes.

        ff moves `into` to `branch` (only when `into` is an ancestor); merge records a merge commit even when a
        fast-forward is possible; squash records one commit with `into` as its only parent. When `into` is
        checked out in a working tree, that tree follows, but only when none of the paths the merge changes
        has uncommitted changes there. A conflict returns ok=False and changes nothing.
        """
        if mode not in ("ff", "merge", "squash"):
            raise GitError(f"unknown merge mode {mode!r}: use ff, merge or squash")
        with self._lock:
            recovered = self.recover_merge()
            if recovered is not None:
                log.warning("%s", recovered.message)
            if not self.branch_exists(into):
                raise GitError(f"base branch {into} not found in {self.root}: set [repo] base to an existing branch")
            if not self.branch_exists(branch):
                raise GitError(f"branch {branch} not found in {self.root}: the agent's work is gone or was renamed")
            old = self.resolve(f"refs/heads/{into}")
            tip = self.resolve(f"refs/heads/{branch}")
            if self._is_ancestor(tip, old):
                return MergeResult(ok=True, commit=old, message=f"{into} already contains {branch}", mode=mode)
            if mode == "ff":
                if not self._is_ancestor(old, tip):
                    raise GitError(
                        f"cannot fast-forward {into} to {branch}: {into} has new commits since the agent started; "
                        "use merge or squash"
                    )
                new = tip
            else:
                code, out, err = run_git_status(
                    ["merge-tree", "--write-tree", "-z", "--name-only", "--no-messages", old, tip], self.root
                )
                if code not in (0, 1):
                    raise GitError(f"cannot merge {branch} into {into}: {err}")
                tree, *names = out.split("\0")
                conflicts = sorted({n for n in names if n})
                if code == 1 or conflicts:
                    shown = ", ".join(conflicts[:5]) + (" …" if len(conflicts) > 5 else "")
                    return MergeResult(
                        ok=False,
                        conflicts=conflicts,
                        message=(
                            f"{branch} conflicts with {into} in {len(conflicts)} file(s): {shown}: ask the agent to "
                            f"merge {into} into its branch and resolve them, then merge again"
                        ),
                        mode=mode,
                    )
                parents = ["-p", old, "-p", tip] if mode == "merge" else ["-p", old]
                new = run_git(
                    ["commit-tree", tree, *parents, "-m", message], self.root, env=self.identity_env()
                ).strip()
            self._move_branch(into, old, new, f"missionctl: {mode} {branch}", branch=branch, mode=mode)
            return MergeResult(ok=True, commit=new, message=f"{branch} landed on {into} ({mode})", mode=mode)

    def _move_branch(self, into: str, old: str, new: str, reason: str, *, branch: str = "", mode: str = "") -> None:
        """Move refs/heads/`into` from `old` to `new`, updating every working tree that has it checked out.

        The intent (old and new commit, the trees) is on disk before anything moves and gone once all of it
        moved, so that a kill at any moment leaves something `recover_merge` finishes or undoes."""
        ref = f"refs/heads/{into}"
        trees = [w.path for w in self.worktrees() if w.branch == ref and not w.bare]
        if trees:
            changed = {p: c.new_status for p, c in self._merge_changes(old, new).items()}
            for tree in trees:
                self._check_tree_safe(tree, into, changed)
        intent = {"ref": ref, "old": old, "new": new, "trees": [str(t) for t in trees], "branch": branch}
        self._write_intent({**intent, "mode": mode})
        fault_point("merge-intent")
        updated: list[Path] = []
        try:
            for tree in trees:
                run_git(["read-tree", "-m", "-u", old, new], tree)
                updated.append(tree)
            fault_point("merge-tree")
            run_git(["update-ref", "-m", reason, ref, new, old], self.root)
        except GitError as exc:
            for tree in updated:
                run_git_status(["read-tree", "-m", "-u", new, old], tree)
            self._clear_intent()
            raise GitError(f"could not move {into} to the merge result: {exc}: retry the merge") from None
        fault_point("merge-ref")
        self._clear_intent()

    # -- an interrupted merge ---------------------------------------------------------------------------------

    @property
    def _intent_path(self) -> Path:
        return self.git_common_dir / MERGE_INTENT

    def _write_intent(self, data: dict[str, object]) -> None:
        path = self._intent_path
        tmp = path.with_name(f"{MERGE_INTENT}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, json.dumps(data).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def _clear_intent(self) -> None:
        try:
            self._intent_path.unlink()
        except FileNotFoundError:
            pass

    def recover_merge(self) -> MergeRecovery | None:
        """Finish or undo a merge that was interrupted (the process was killed during it); None when there is
        none. Completed when every working tree that has the base branch checked out already shows the merge;
        rolled back otherwise: the base branch and those trees are as before the merge, and a file that changed
        since the kill is left alone (and named)."""
        with self._lock:
            try:
                intent = json.loads(self._intent_path.read_text(encoding="utf-8"))
                ref, old, new = str(intent["ref"]), str(intent["old"]), str(intent["new"])
                trees = [Path(t) for t in intent.get("trees", [])]
            except FileNotFoundError:
                return None
            except (OSError, ValueError, KeyError, TypeError) as exc:
                self._clear_intent()
                return MergeRecovery(
                    "abandoned", "", "", "", "", f"a damaged record of an interrupted merge was dropped ({exc})"
                )
            branch, mode = str(intent.get("branch", "")), str(intent.get("mode", ""))
            into = ref.removeprefix("refs/heads/")
            head = f"the merge of {branch or new[:10]} into {into} was interrupted"
            code, out, _ = run_git_status(["rev-parse", "--verify", "--quiet", ref], self.root)
            now = out.strip() if code == 0 else ""
            changes = self._merge_changes(old, new)
            trees = [t for t in trees if t.is_dir()]
            for tree in trees:
                self._settle_index_lock(tree)
            sides = {tree: self._index_side(tree, changes) for tree in trees}
            if now == old and all(side == "new" for side in sides.values()):
                run_git(["update-ref", "-m", f"missionctl: {mode} {branch} (completed)", ref, new, old], self.root)
                now = new
            if now == new:
                self._clear_intent()
                return MergeRecovery(
                    "completed",
                    branch,
                    into,
                    new,
                    mode,
                    f"{head}; it was completed: {into} is at {new[:10]} and the working tree matches it",
                )
            if now != old:
                self._clear_intent()
                return MergeRecovery(
                    "abandoned",
                    branch,
                    into,
                    new,
                    mode,
                    f"{head}; {into} has moved since (to {now[:10] or 'nothing'}), so nothing was changed: merge again",
                )
            left: list[str] = []
            for tree in trees:
                left += self._roll_back_tree(tree, changes)
            self._clear_intent()
            note = ""
            if left:
                shown = ", ".join(left[:5]) + (" …" if len(left) > 5 else "")
                note = f"; these changed since and were left as they are: {shown}"
            return MergeRecovery(
                "rolled back",
                branch,
                into,
                new,
                mode,
                f"{head}; it was rolled back: {into} and the working tree are as they were before it{note}; "
                "merge again",
            )

    def _merge_changes(self, old: str, new: str) -> dict[str, _Change]:
        """Every path the move from `old` to `new` changes, with both sides."""
        out = run_git(["diff", "--raw", "-z", "--no-renames", "--no-abbrev", old, new], self.root)
        tokens = out.split("\0")
        changes: dict[str, _Change] = {}
        for meta, name in zip(tokens[0::2], tokens[1::2], strict=False):
            if not meta.startswith(":") or not name:
                continue
            old_mode, new_mode, old_oid, new_oid, status = meta[1:].split()
            changes[name] = _Change(old_mode, old_oid, new_mode, new_oid, status[:1])
        return changes

    def _settle_index_lock(self, tree: Path) -> None:
        """Wait for a git command still running in `tree` (one whose parent was killed goes on), then remove
        an index.lock nobody holds any more (its git was killed)."""
        gitdir = Path(run_git(["rev-parse", "--absolute-git-dir"], tree).strip())
        lock = gitdir / "index.lock"
        deadline = time.monotonic() + LOCK_WAIT
        while lock.exists() and _git_running_in(tree):
            if time.monotonic() > deadline:
                raise GitError(
                    f"a git command has held {lock} for {LOCK_WAIT:g} s: let it finish, then start mission control again"
                )
            time.sleep(0.05)
        if not lock.exists():
            return
        # No git runs there, so nobody holds the lock; and nobody can take it while it exists.
        try:
            lock.unlink()
            log.warning("removed %s, left by a git command that was killed", lock)
        except FileNotFoundError:
            pass

    def _index_side(self, tree: Path, changes: dict[str, _Change]) -> str:
        """Which side of the merge the index of `tree` holds for the paths the merge changes: "new" (all of
        them), "old" (none of them) or "mixed"."""
        index = _index_entries(tree)
        at_new = sum(1 for p, c in changes.items() if index.get(p) == c.new_entry)
        at_old = sum(1 for p, c in changes.items() if index.get(p) == c.old_entry)
        if at_new == len(changes):
            return "new"
        return "old" if at_old == len(changes) else "mixed"

    def _roll_back_tree(self, tree: Path, changes: dict[str, _Change]) -> list[str]:
        """Bring the paths the merge changes in `tree` back to the old side, in the index and on disk, where
        they hold what the merge put there. Returns the paths left alone because they hold something else."""
        index = _index_entries(tree)
        fmt = run_git(["rev-parse", "--show-object-format"], tree).strip() or "sha1"
        zero = "0" * len(next(iter(changes.values())).old_oid) if changes else ""
        entries: list[str] = []
        restore: list[str] = []
        remove: list[str] = []
        left: list[str] = []
        unsure: list[str] = []
        for path, c in sorted(changes.items()):
            if GITLINK in (c.old_mode, c.new_mode):
                continue
            entry = index.get(path)
            if entry == c.new_entry and entry != c.old_entry:
                entries.append(f"{c.old_mode} {c.old_oid}\t{path}" if c.old_entry else f"0 {zero}\t{path}")
            elif entry != c.old_entry:
                left.append(path)
                continue
            on_disk = _disk_entry(tree / path, fmt)
            if on_disk == c.old_entry:
                continue
            if on_disk == c.new_entry:
                (restore if c.old_entry else remove).append(path)
            elif on_disk is not None and c.new_entry is not None and c.new_mode != "120000":
                unsure.append(path)
            else:
                left.append(path)
        # A file git was writing when it was killed holds the start of the merge's content: that is ours too.
        contents = _blobs(tree, [changes[p].new_oid for p in unsure])
        for path in unsure:
            try:
                data = (tree / path).read_bytes()
            except OSError:
                data = None
            if data is not None and contents.get(changes[path].new_oid, b"").startswith(data):
                (restore if changes[path].old_entry else remove).append(path)
            else:
                left.append(path)
        if entries:
            run_git(["update-index", "-z", "--index-info"], tree, input="\0".join(entries).encode() + b"\0")
        for path in remove:
            _remove_file(tree, path)
        if restore:
            run_git(["checkout-index", "-f", "-z", "--stdin"], tree, input="\0".join(restore).encode() + b"\0")
        return left

    def _check_tree_safe(self, tree: Path, into: str, changed: dict[str, str]) -> None:
        """Refuse when the user's uncommitted changes in `tree` touch a path the merge changes."""
        out = run_git(["status", "--porcelain=v1", "-z", "--no-renames", "--untracked-files=normal"], tree)
        blocked: set[str] = set()
        for entry in out.split("\0"):
            if len(entry) < 4:
                continue
            path = entry[3:]
            if path.endswith("/"):
                blocked.update(c for c in changed if c.startswith(path))
            elif path in changed:
                blocked.add(path)
        # A file the merge adds that exists on disk untracked or ignored would be overwritten too.
        blocked.update(c for c, s in changed.items() if s == "A" and os.path.lexists(tree / c))
        if blocked:
            names = sorted(blocked)
            shown = ", ".join(names[:5]) + (" …" if len(names) > 5 else "")
            raise GitError(
                f"cannot merge into {into}: uncommitted changes in {tree} touch {shown}, which the merge changes: "
                "commit or stash them, then merge again"
            )


@dataclass(frozen=True)
class _Change:
    """One path of a merge: its mode and object before and after (mode 000000 where it does not exist)."""

    old_mode: str
    old_oid: str
    new_mode: str
    new_oid: str
    new_status: str

    @property
    def old_entry(self) -> tuple[str, str] | None:
        return None if self.old_mode == "000000" else (self.old_mode, self.old_oid)

    @property
    def new_entry(self) -> tuple[str, str] | None:
        return None if self.new_mode == "000000" else (self.new_mode, self.new_oid)


def _index_entries(tree: Path) -> dict[str, tuple[str, str]]:
    """(mode, object) of every stage-0 entry of the index of `tree`."""
    entries: dict[str, tuple[str, str]] = {}
    for entry in run_git(["ls-files", "-z", "--stage"], tree).split("\0"):
        info, _, path = entry.partition("\t")
        parts = info.split()
        if len(parts) == 3 and parts[2] == "0":
            entries[path] = (parts[0], parts[1])
    return entries


def _blobs(tree: Path, oids: list[str]) -> dict[str, bytes]:
    """The contents of the blobs `oids` (one `cat-file --batch`)."""
    if not oids:
        return {}
    text = run_git(["cat-file", "--batch"], tree, input="".join(f"{oid}\n" for oid in oids).encode())
    out = text.encode("utf-8", "surrogateescape")  # the bytes git printed, undecodable ones included
    found: dict[str, bytes] = {}
    pos = 0
    while pos < len(out):
        end = out.index(b"\n", pos)
        header = out[pos:end].split()
        pos = end + 1
        if len(header) != 3:  # "<oid> missing"
            continue
        size = int(header[2])
        found[header[0].decode()] = out[pos : pos + size]
        pos += size + 1
    return found


def _disk_entry(path: Path, fmt: str) -> tuple[str, str] | None:
    """(mode, object) of the file at `path` as git would store it, or None when there is none."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if os.path.islink(path):
        data, mode = os.fsencode(os.readlink(path)), "120000"
    elif os.path.isfile(path):
        with open(path, "rb") as fh:
            data = fh.read()
        mode = "100755" if st.st_mode & 0o111 else "100644"
    else:
        return ("040000", "")
    digest = hashlib.new(fmt, b"blob %d\0" % len(data) + data).hexdigest()
    return mode, digest


def _remove_file(tree: Path, rel: str) -> None:
    """Remove `tree`/`rel` and the folders it leaves empty."""
    path = tree / rel
    try:
        path.unlink()
    except FileNotFoundError:
        return
    parent = path.parent
    while parent != tree and parent.is_relative_to(tree):
        try:
            parent.rmdir()
        except OSError:
            break
        parent = parent.parent


def _git_running_in(tree: Path) -> bool:
    """Whether a git process of ours runs with its current folder in `tree` (Linux /proc; False elsewhere)."""
    root = os.path.realpath(tree)
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return False
    for pid in pids:
        try:
            with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as fh:
                if not fh.read().startswith("git"):
                    continue
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if cwd == root or cwd.startswith(root + os.sep):
            return True
    return False
