"""The diff of an agent's worktree against its base commit, and a scheduler that keeps it fresh.

`compute_diff` never touches the agent's index (no `git status` refresh, no `add -N`): tracked changes come
from `git diff BASE` with `GIT_OPTIONAL_LOCKS=0`, untracked files from `git ls-files --others
--exclude-standard`, and the patch of an untracked file is written here, reading the file in chunks (the
same text `git diff --no-index /dev/null FILE` prints, without a process per file and without loading a large
file whole). The patch text is capped at `max_bytes`: git is stopped as soon as the cap is reached.

Submodules are diffed inside, as `git diff --submodule=diff` shows them (plus their untracked files), with
paths from the top of the worktree. A submodule that git cannot read (its `.git` points nowhere) and a
submodule folder that is not checked out but holds files show those files as they are on disk: git sees
nothing there, and a failing submodule never hides the rest of the diff.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import logging
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mc.events import FileStat
from mc.git.cmd import GitError, read_git_capped, run_git, run_git_status

log = logging.getLogger(__name__)

_DIFF_OPTS = [
    "-c",
    "core.quotePath=false",
    "diff",
    "-M",
    "--no-color",
    "--no-ext-diff",
    "--no-relative",
    "--src-prefix=a/",
    "--dst-prefix=b/",
]
_BINARY_SNIFF = 8000  # git decides "binary" from the first 8000 bytes (a NUL among them)
_CHUNK = 1 << 20
_MAX_PATHSPECS = 500
_MAX_DEPTH = 4  # submodules inside submodules
GITLINK = "160000"


@dataclass(frozen=True)
class Diff:
    """An agent's changes against its base: per-file stats, totals and the unified diff text."""

    files: tuple[FileStat, ...] = ()
    added: int = 0
    removed: int = 0
    text: str = ""
    truncated: bool = False

    def summary(self) -> str:
        """One line: "3 files changed, +10 -2" (and "diff truncated" when the text was cut)."""
        if not self.files:
            return "no changes"
        n = len(self.files)
        line = f"{n} file{'s' if n != 1 else ''} changed, +{self.added} -{self.removed}"
        return line + " (diff truncated)" if self.truncated else line


def _parse_raw_numstat(out: str) -> tuple[list[FileStat], list[str], dict[str, str]]:
    """Parse `git diff -z --raw --numstat`: raw entries (status) first, then numstat entries (counts).

    Returns the file stats, every path involved (the old side of a rename too), and the status letter of
    every submodule (gitlink) entry."""
    tokens = out.split("\0")
    involved: list[str] = []
    statuses: dict[str, str] = {}
    order: list[str] = []
    counts: dict[str, tuple[int, int, bool]] = {}
    gitlinks: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token:
            i += 1
            continue
        if token.startswith(":"):
            fields = token[1:].split()
            letter = fields[-1][:1]
            if GITLINK in fields[:2]:
                gitlinks[tokens[i + 1]] = letter
            if letter in ("R", "C"):
                path = tokens[i + 2]
                involved.append(tokens[i + 1])
                i += 3
            else:
                path = tokens[i + 1]
                i += 2
            statuses[path] = "M" if letter == "T" else letter
            order.append(path)
            involved.append(path)
            continue
        added, removed, rest = token.split("\t", 2)
        if rest:
            path = rest
            i += 1
        else:  # rename or copy: the old and the new path follow
            path = tokens[i + 2]
            i += 3
        binary = added == "-"
        counts[path] = (0 if binary else int(added), 0 if binary else int(removed), binary)
    files = []
    for path in order:
        added, removed, binary = counts.get(path, (0, 0, False))
        files.append(FileStat(path=path, added=added, removed=removed, status=statuses[path], binary=binary))
    return files, involved, gitlinks


def _quote(path: str) -> str:
    """Quote a path the way git does in patch headers when it holds special characters."""
    if not any(c in path for c in '"\\\n\t'):
        return path
    escaped = path.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def _count_lines(fh, first: bytes) -> tuple[int, bool]:  # type: ignore[no-untyped-def]
    """Lines in a file read in chunks after `first`; and whether it ends with a newline."""
    lines = first.count(b"\n")
    last = first[-1:] if first else b""
    while chunk := fh.read(_CHUNK):
        lines += chunk.count(b"\n")
        last = chunk[-1:]
    if last and last != b"\n":
        lines += 1
    return lines, last in (b"", b"\n")


def _fit(patch: bytes, budget: int) -> tuple[bytes, bool]:
    """A whole small patch, or nothing and truncated=True when it does not fit in the budget."""
    return (patch, False) if len(patch) <= budget else (b"", True)


def _untracked_patch(root: Path, rel: str, budget: int, prefix: str = "") -> tuple[FileStat | None, bytes, bool]:
    """The stat and the patch (at most `budget` bytes) of one untracked file at `root`/`rel`, named
    `prefix` + `rel`. (None, …) when it vanished."""
    full = root / rel
    rel = prefix + rel
    if rel.endswith("/"):  # a nested repository: git shows the folder, never its files
        return FileStat(path=rel.rstrip("/"), status="?"), b"", False
    try:
        st = os.lstat(full)
    except OSError:
        return None, b"", False
    name = _quote(rel).encode("utf-8", "surrogateescape")
    a, b = (b'"a/' + name[1:], b'"b/' + name[1:]) if name.startswith(b'"') else (b"a/" + name, b"b/" + name)
    if stat.S_ISLNK(st.st_mode):
        mode, body = b"120000", os.fsencode(os.readlink(full))
        header = b"diff --git %s %s\nnew file mode %s\n--- /dev/null\n+++ %s\n@@ -0,0 +1 @@\n" % (a, b, mode, b)
        patch = header + b"+" + body + b"\n\\ No newline at end of file\n"
        return FileStat(path=rel, added=1, status="?"), *_fit(patch, budget)
    if not stat.S_ISREG(st.st_mode):
        return None, b"", False
    mode = b"100755" if st.st_mode & 0o111 else b"100644"
    head = b"diff --git %s %s\nnew file mode %s\n" % (a, b, mode)
    try:
        with open(full, "rb") as fh:
            first = fh.read(_BINARY_SNIFF)
            if b"\0" in first:
                patch = head + b"Binary files /dev/null and %s differ\n" % b
                return FileStat(path=rel, status="?", binary=True), *_fit(patch, budget)
            if not first:
                return FileStat(path=rel, status="?"), *_fit(head, budget)
            lines, ends_newline = _count_lines(fh, first)
            span = b"1" if lines == 1 else b"1,%d" % lines
            out = bytearray(head + b"--- /dev/null\n+++ %s\n@@ -0,0 +%s @@\n" % (b, span))
            if len(out) > budget:
                return FileStat(path=rel, added=lines, status="?"), b"", True
            fh.seek(0)
            truncated = False
            for line in fh:
                if len(out) + len(line) + 1 > budget:
                    truncated = True
                    break
                out += b"+" + line
            if not truncated and not ends_newline:
                out += b"\n\\ No newline at end of file\n"
            return FileStat(path=rel, added=lines, status="?"), bytes(out), truncated
    except OSError:
        return None, b"", False


def _cut_at_line(data: bytes) -> bytes:
    cut = data.rfind(b"\n")
    return data[: cut + 1] if cut >= 0 else b""


def compute_diff(worktree: Path, base_commit: str, *, max_bytes: int = 4_000_000) -> Diff:
    """The changes in `worktree` against `base_commit`: committed, staged, unstaged and untracked (not ignored),
    inside submodules too.

    Blocking (run it in a thread). The text holds at most `max_bytes`; `truncated` says when it was cut; the
    per-file stats are always complete. Raises GitError when the worktree itself cannot be diffed.
    """
    out = _Out(max_bytes)
    _diff_into(out, Path(worktree), base_commit, "", 0)
    text = b"".join(out.chunks).decode("utf-8", "replace")
    added = sum(f.added for f in out.files)
    removed = sum(f.removed for f in out.files)
    return Diff(files=tuple(out.files), added=added, removed=removed, text=text, truncated=out.truncated)


@dataclass
class _Out:
    """What compute_diff collects: stats, patch chunks and what is left of the text budget."""

    budget: int
    files: list[FileStat] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    truncated: bool = False

    def add(self, patch: bytes) -> None:
        if patch:
            self.chunks.append(patch)
            self.budget -= len(patch)

    def note(self, line: str) -> None:
        """A line of explanation in the text (kept only when it fits)."""
        data = line.encode("utf-8", "surrogateescape") + b"\n"
        if not self.truncated and len(data) <= self.budget:
            self.add(data)

    def untracked(self, root: Path, rel: str, prefix: str) -> None:
        fstat, patch, cut = _untracked_patch(root, rel, max(self.budget, 0) if not self.truncated else 0, prefix)
        if fstat is None:
            return
        self.files.append(fstat)
        self.add(patch)
        self.truncated = self.truncated or cut


def _diff_into(out: _Out, root: Path, base: str, prefix: str, depth: int) -> None:
    """Add the changes of the repository at `root` against `base` to `out`, every path named `prefix` + path."""
    opts = [*_DIFF_OPTS, f"--src-prefix=a/{prefix}", f"--dst-prefix=b/{prefix}"]
    # Submodules are diffed inside below; here git only says which moved (`dirty` never runs git in them, so a
    # submodule git cannot read does not fail the whole diff).
    meta = run_git([*opts, "--ignore-submodules=dirty", "-z", "--raw", "--numstat", base, "--"], root)
    files, involved, moved = _parse_raw_numstat(meta)
    files = [f for f in files if f.path not in moved or moved[f.path] == "D"]
    involved = [p for p in involved if p not in moved]
    for f in files:
        out.files.append(dataclasses.replace(f, path=prefix + f.path) if prefix else f)
    if involved:
        # Naming the changed paths spares git a second stat of every file in a large tree.
        limit = [f":(literal){p}" for p in involved] if len(involved) <= _MAX_PATHSPECS else []
        args = [*opts, "--ignore-submodules=all", base, "--", *limit]
        patch, cut = read_git_capped(args, root, max(out.budget, 0)) if not out.truncated else (b"", True)
        if cut:
            patch = _cut_at_line(patch)
        out.add(patch)
        out.truncated = out.truncated or cut
    others = run_git(["ls-files", "-z", "--others", "--exclude-standard"], root)
    for rel in sorted(p for p in others.split("\0") if p):
        out.untracked(root, rel, prefix)
    links = dict(base_gitlinks(root, base))
    links.update({p: "" for p, letter in moved.items() if letter != "D" and p not in links})
    for path in sorted(links):
        _submodule_into(out, root, path, links[path], prefix, depth)


def _submodule_into(out: _Out, root: Path, path: str, commit: str, prefix: str, depth: int) -> None:
    """The changes inside the submodule at `root`/`path` against `commit` (its commit in the base; "" when the
    agent added it), or the files in its folder when git cannot read it or it is not checked out."""
    folder = root / path
    shown = prefix + path
    if not folder.is_dir() or folder.is_symlink() or depth >= _MAX_DEPTH:
        return
    reason = ""
    if os.path.lexists(folder / ".git"):
        code, top, err = git_status_in(["rev-parse", "--show-toplevel"], folder)
        if code == 0 and Path(top.strip()) == folder.resolve():
            inside = _Out(out.budget, truncated=out.truncated)
            try:
                _diff_into(inside, folder, commit or _empty_tree(folder), shown + "/", depth + 1)
            except GitError as exc:
                reason = str(exc)
            else:
                out.files += inside.files
                out.chunks += inside.chunks
                out.budget, out.truncated = inside.budget, inside.truncated
                return
        else:
            reason = err
        note = f"Submodule {shown}: git cannot read it ({reason}); the files in its folder, as they are on disk:"
    else:
        note = f"Submodule {shown} is not checked out; files in its folder, which git does not see:"
    hidden = hidden_files(folder)
    if hidden:
        out.note(note)
        for rel in hidden:
            out.untracked(folder, rel, shown + "/")


def git_status_in(args: list[str], folder: Path) -> tuple[int, str, str]:
    """`run_git_status` in a folder that may not be a readable repository (a submodule the agent broke): a
    failure to run git there at all is a status too, never an exception."""
    try:
        return run_git_status(args, folder)
    except GitError as exc:
        return 128, "", str(exc)


def hidden_files(folder: Path) -> list[str]:
    """Every file under `folder` (its `.git` aside), relative and sorted: what sits in a submodule folder that
    git cannot read or that is not checked out."""
    found: list[str] = []
    for top, dirs, names in os.walk(folder):
        rel_top = os.path.relpath(top, folder)
        rel_top = "" if rel_top == "." else rel_top + "/"
        if not rel_top:
            dirs[:] = [d for d in dirs if d != ".git"]
            names = [n for n in names if n != ".git"]
        for d in dirs:
            if os.path.islink(os.path.join(top, d)):
                found.append(rel_top + d)
        found.extend(rel_top + n for n in names)
    return sorted(found)


_GITLINKS: OrderedDict[str, tuple[tuple[str, str], ...]] = OrderedDict()
_GITLINKS_LOCK = threading.Lock()


def base_gitlinks(root: Path, commit: str) -> tuple[tuple[str, str], ...]:
    """(path, commit) of every submodule in the tree of `commit`. A commit never changes: the answer is kept
    (one `ls-tree` per base, not per diff)."""
    with _GITLINKS_LOCK:
        if commit in _GITLINKS:
            _GITLINKS.move_to_end(commit)
            return _GITLINKS[commit]
    out = run_git(["ls-tree", "-r", "-z", "--full-tree", commit], root)
    links: list[tuple[str, str]] = []
    for entry in out.split("\0"):
        if entry.startswith(GITLINK + " "):
            info, _, path = entry.partition("\t")
            links.append((path, info.split()[2]))
    result = tuple(links)
    with _GITLINKS_LOCK:
        _GITLINKS[commit] = result
        while len(_GITLINKS) > 256:
            _GITLINKS.popitem(last=False)
    return result


@functools.lru_cache(maxsize=4)
def _empty_tree_of(object_format: str) -> str:
    return {"sha256": "6ef19b41225c5369f1c104d45d8d85efa9b057b53b14b4b9b939dd74decc5321"}.get(
        object_format, "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
    )


def _empty_tree(root: Path) -> str:
    code, out, _ = run_git_status(["rev-parse", "--show-object-format"], root)
    return _empty_tree_of(out.strip() if code == 0 else "sha1")


OnDiff = Callable[[str, Diff], "Awaitable[None] | None"]
OnError = Callable[[str, BaseException], "Awaitable[None] | None"]


@dataclass
class _Agent:
    worktree: Path
    base_commit: str
    timer: asyncio.TimerHandle | None = None
    task: asyncio.Task[None] | None = None
    pending: bool = False
    last: Diff | None = field(default=None, repr=False)


class DiffScheduler:
    """Recompute agents' diffs off the event loop: debounced per agent, at most `concurrency` at once.

    `request` re-arms the agent's trailing timer (`delay` seconds); when it fires the diff is computed in a
    worker thread. Requests that arrive while that agent's diff is running coalesce into one more run after
    it. `on_diff(agent_id, diff)` is called on the loop, only when the diff differs from the last one
    delivered (unless `only_changes` is false); failures go to `on_error(agent_id, exc)` or the log.
    """

    def __init__(
        self,
        on_diff: OnDiff,
        on_error: OnError | None = None,
        *,
        delay: float = 0.15,
        concurrency: int = 2,
        max_bytes: int = 4_000_000,
        only_changes: bool = True,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._on_diff = on_diff
        self._on_error = on_error
        self._delay = delay
        self._max_bytes = max_bytes
        self._only_changes = only_changes
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="mc-diff")
        self._agents: dict[str, _Agent] = {}
        self._loop = loop
        self._closed = False
        self.runs = 0
        """How many diffs were computed (for tests and the status line)."""

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:
                raise RuntimeError("DiffScheduler has no event loop: create it inside the loop or pass loop=") from None
        return self._loop

    def _on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def request(self, agent_id: str, worktree: Path, base_commit: str) -> None:
        """Ask for a fresh diff of `agent_id` soon. Safe to call from any thread."""
        loop = self._get_loop()
        if self._on_loop():
            self._request(agent_id, Path(worktree), base_commit)
        else:
            loop.call_soon_threadsafe(self._request, agent_id, Path(worktree), base_commit)

    def forget(self, agent_id: str) -> None:
        """Stop diffing `agent_id`: its pending request is dropped and a running one is not delivered."""
        loop = self._get_loop()
        if self._on_loop():
            self._forget(agent_id)
        else:
            loop.call_soon_threadsafe(self._forget, agent_id)

    def last(self, agent_id: str) -> Diff | None:
        """The last diff delivered for `agent_id`."""
        agent = self._agents.get(agent_id)
        return agent.last if agent else None

    def _request(self, agent_id: str, worktree: Path, base_commit: str) -> None:
        if self._closed:
            return
        agent = self._agents.get(agent_id)
        if agent is None:
            agent = self._agents[agent_id] = _Agent(worktree, base_commit)
        else:
            agent.worktree, agent.base_commit = worktree, base_commit
        if agent.timer is not None:
            agent.timer.cancel()
        agent.timer = self._get_loop().call_later(self._delay, self._fire, agent_id, agent)

    def _forget(self, agent_id: str) -> None:
        agent = self._agents.pop(agent_id, None)
        if agent and agent.timer:
            agent.timer.cancel()

    def _fire(self, agent_id: str, agent: _Agent) -> None:
        agent.timer = None
        if self._closed or self._agents.get(agent_id) is not agent:
            return
        if agent.task is not None:
            agent.pending = True
            return
        agent.task = self._get_loop().create_task(self._run(agent_id, agent), name=f"diff {agent_id}")

    async def _run(self, agent_id: str, agent: _Agent) -> None:
        loop = self._get_loop()
        try:
            while True:
                agent.pending = False
                worktree, base = agent.worktree, agent.base_commit
                try:
                    diff = await loop.run_in_executor(
                        self._executor, functools.partial(compute_diff, worktree, base, max_bytes=self._max_bytes)
                    )
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.runs += 1
                    if self._agents.get(agent_id) is agent:
                        await self._call(self._on_error, agent_id, exc)
                else:
                    self.runs += 1
                    if self._agents.get(agent_id) is agent and not (self._only_changes and diff == agent.last):
                        agent.last = diff
                        await self._call(self._on_diff, agent_id, diff)
                if not agent.pending or self._closed or self._agents.get(agent_id) is not agent:
                    break
        finally:
            agent.task = None

    async def _call(self, callback: Callable[..., object] | None, agent_id: str, value: object) -> None:
        if callback is None:
            log.warning("diff of agent %s failed: %s", agent_id, value)
            return
        try:
            result = callback(agent_id, value)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("diff callback for agent %s failed", agent_id)

    async def close(self) -> None:
        """Drop pending requests, stop waiting for running diffs and release the worker threads."""
        self._closed = True
        tasks = []
        for agent in self._agents.values():
            if agent.timer:
                agent.timer.cancel()
            if agent.task:
                agent.task.cancel()
                tasks.append(agent.task)
        self._agents.clear()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)
