"""One repository and its agent worktrees: create, snapshot, commit, merge, discard, restore.

Every command is a plain `git` subprocess (see `mc.git.cmd`): no long-lived helper processes to leak, and the
hot path costs one process per call. Calls that change shared state (`git worktree …`, branch creation, the
exclude file, ref moves of a merge) run under one lock per repository, held by a threading lock and a file
lock on `<git-common-dir>/missionctl.lock`, so threads and processes serialise; 32 parallel `worktree add`
calls otherwise fail on `.git/worktrees/<id>/commondir`.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import git as gitpython

from mc.git.cmd import GitError, run_git, run_git_status, trust_repository

MergeMode = Literal["ff", "merge", "squash"]
LOCK_REASON = "missionctl agent"
DEFAULT_IDENTITY = ("missionctl", "missionctl@localhost")


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

    def add_worktree(self, path: Path, branch: str, base_commit: str) -> None:
        """Create a worktree at `path` on a new branch `branch` from `base_commit`, locked against `git gc`.

        Only the registration (`worktree add --no-checkout`) runs under the repository lock; the files are
        checked out after it, so several agents of a large repository start side by side.
        """
        path = Path(path).absolute()
        with self._lock:
            if self.branch_exists(branch):
                raise GitError(
                    f"branch {branch} already exists: pick another agent name or delete it with "
                    f"`git branch -D {branch}`"
                )
            if path.exists() and (not path.is_dir() or any(path.iterdir())):
                raise GitError(f"{path} already exists and is not empty: pick another agent name or remove that folder")
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                run_git(
                    [
                        "worktree",
                        "add",
                        "--quiet",
                        "--no-checkout",
                        "--lock",
                        "--reason",
                        LOCK_REASON,
                        "-b",
                        branch,
                        str(path),
                        base_commit,
                    ],
                    self.root,
                )
            except GitError:
                # A failed `worktree add -b` can leave the branch (and an admin entry) behind: take them back.
                registered = any(w.path == path for w in self.worktrees())
                if not registered:
                    run_git_status(["worktree", "prune"], self.root)
                    if self.branch_exists(branch):
                        run_git_status(["branch", "-D", branch], self.root)
                raise
        try:
            run_git(["reset", "--hard", "--quiet"], path)
        except GitError as exc:
            with self._lock:
                run_git_status(["worktree", "unlock", str(path)], self.root)
                run_git_status(["worktree", "remove", "--force", str(path)], self.root)
                run_git_status(["branch", "-D", branch], self.root)
            raise GitError(f"could not check out {branch} in {path}: {exc}: check free disk space and retry") from None

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
        commit; `restore_snapshot` brings the work back. Nothing is removed when the snapshot fails."""
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
            self._move_branch(into, old, new, f"missionctl: {mode} {branch}")
            return MergeResult(ok=True, commit=new, message=f"{branch} landed on {into} ({mode})", mode=mode)

    def _move_branch(self, into: str, old: str, new: str, reason: str) -> None:
        """Move refs/heads/`into` from `old` to `new`, updating every working tree that has it checked out."""
        ref = f"refs/heads/{into}"
        trees = [w.path for w in self.worktrees() if w.branch == ref and not w.bare]
        if trees:
            out = run_git(["diff", "--name-status", "-z", "--no-renames", old, new], self.root)
            tokens = out.split("\0")
            changed: dict[str, str] = {}
            for status, name in zip(tokens[0::2], tokens[1::2], strict=False):
                if name:
                    changed[name] = status
            for tree in trees:
                self._check_tree_safe(tree, into, changed)
        updated: list[Path] = []
        try:
            for tree in trees:
                run_git(["read-tree", "-m", "-u", old, new], tree)
                updated.append(tree)
            run_git(["update-ref", "-m", reason, ref, new, old], self.root)
        except GitError as exc:
            for tree in updated:
                run_git_status(["read-tree", "-m", "-u", new, old], tree)
            raise GitError(f"could not move {into} to the merge result: {exc}: retry the merge") from None

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
