"""One file watcher over every agent's worktree → a debounced "this worktree changed" per agent.

One `watchfiles` Rust watcher (`RustNotify`) watches all worktrees at once and runs in one dedicated thread
(not in anyio's shared thread pool, where dozens of watchers queue behind each other). When agents come or go,
a new watcher over the new set of folders is built in a worker thread, so the event loop never waits for
inotify to walk thousands of folders; the old one keeps reporting until the new one is ready.

Filtering: paths inside `.git` are dropped, and so are paths the repository ignores, asked of
`git check-ignore --stdin -z` in one batch per worktree per burst of changes (so every rule git honours —
nested .gitignore files, info/exclude, core.excludesFile, negations — applies). Folders found ignored (and
holding no tracked file) are remembered, so a build writing thousands of files into `build/` costs one git
call, not one per burst; the memory is dropped when a .gitignore changes. Nothing runs when nothing changes.

inotify needs one watch per folder (the machine-wide budget is `fs.inotify.max_user_watches`): every worktree
counts, ignored folders such as node_modules included.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

from watchfiles._rust_notify import RustNotify

from mc.git.cmd import GitError, run_git

log = logging.getLogger(__name__)

OnChange = Callable[[str, list[str]], "Awaitable[None] | None"]


def _parents(rel: str) -> list[str]:
    """The folders above a relative path, outermost first: "a/b/c" → ["a", "a/b"]."""
    parts = rel.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


class _IgnoreFilter:
    """Drops the paths a worktree's repository ignores; remembers ignored folders without tracked files."""

    def __init__(self) -> None:
        self.ignored_dirs: dict[Path, set[str]] = {}
        self.git_calls = 0

    def forget(self, root: Path) -> None:
        self.ignored_dirs.pop(root, None)

    def keep(self, root: Path, rels: set[str]) -> set[str]:
        cache = self.ignored_dirs.setdefault(root, set())
        if any(r == ".gitignore" or r.endswith("/.gitignore") for r in rels):
            cache.clear()
        candidates = [r for r in rels if not any(p in cache for p in _parents(r))]
        if not candidates:
            return set()
        dirs = sorted({p for r in candidates for p in _parents(r)})
        query = [d + "/" for d in dirs] + candidates
        try:
            self.git_calls += 1
            out = run_git(["check-ignore", "--stdin", "-z"], root, check=False, input="\0".join(query).encode() + b"\0")
        except GitError as exc:  # the worktree is being removed, say: keep everything
            log.debug("check-ignore in %s failed: %s", root, exc)
            return set(candidates)
        hits = {p for p in out.split("\0") if p}
        ignored_dirs = {h.rstrip("/") for h in hits if h.endswith("/")}
        if ignored_dirs:
            # A tracked file inside an ignored folder still matters: do not remember such folders.
            self.git_calls += 1
            try:
                tracked = run_git(["ls-files", "-z", "--", *(d + "/" for d in ignored_dirs)], root, check=False)
            except GitError as exc:  # one worktree's trouble must not stop the watcher of every agent
                log.debug("ls-files in %s failed: %s", root, exc)
                return set(candidates)
            holding = {p for t in tracked.split("\0") if t for p in _parents(t)}
            cache.update(ignored_dirs - holding)
        # An untracked file inside an ignored folder is reported itself; a tracked one is not, and stays.
        return {r for r in candidates if r not in hits and not any(p in cache for p in _parents(r))}


class _WatchThread(threading.Thread):
    """Runs one RustNotify until stopped and hands each filtered burst to `deliver` on the event loop."""

    def __init__(
        self,
        notify: RustNotify,
        roots: dict[Path, str],
        ignore: _IgnoreFilter,
        loop: asyncio.AbstractEventLoop,
        deliver: Callable[[dict[str, tuple[Path, set[str]]]], None],
    ) -> None:
        super().__init__(name="mc-watch", daemon=True)
        self.notify = notify
        self.roots = sorted(roots.items(), key=lambda item: -len(str(item[0])))
        self.ignore = ignore
        self.loop = loop
        self.deliver = deliver
        self.stop_event = threading.Event()  # stop now, dropping what is not yet delivered
        self.drain = threading.Event()  # stop after delivering what has been seen so far

    def run(self) -> None:
        try:
            while True:
                # A finite timeout lets a draining thread hand over what it has before it ends.
                result = self.notify.watch(1000, 50, 1000, self.stop_event)
                if result == "stop":
                    return
                if not isinstance(result, str):
                    batch = self._group(path for _, path in result)
                    if batch:
                        self.loop.call_soon_threadsafe(self.deliver, batch)
                if self.drain.is_set():
                    return
        except Exception:
            log.exception("file watcher stopped")
        finally:
            self.notify.close()

    def _group(self, paths) -> dict[str, tuple[Path, set[str]]]:  # type: ignore[no-untyped-def]
        by_root: dict[Path, set[str]] = {}
        for path in paths:
            for root, _agent in self.roots:
                prefix = str(root) + os.sep
                if path.startswith(prefix):
                    rel = path[len(prefix) :].replace(os.sep, "/")
                    if ".git" not in rel.split("/"):
                        by_root.setdefault(root, set()).add(rel)
                    break
        agents = dict(self.roots)
        batch: dict[str, tuple[Path, set[str]]] = {}
        for root, rels in by_root.items():
            kept = self.ignore.keep(root, rels)
            if kept:
                batch[agents[root]] = (root, kept)
        return batch


class WorktreeWatcher:
    """Watch every agent's worktree with one watcher; call `on_change(agent_id, paths)` per worktree, debounced.

    `paths` are the changed paths relative to the worktree (POSIX separators), sorted. A worktree's changes
    are delivered `debounce` seconds after its last change, or at most `max_wait` seconds after its first one
    under a steady stream of writes. `add`/`remove` may be called at any time; `await ready()` waits until
    the watcher covers the current set of worktrees.
    """

    def __init__(
        self, on_change: OnChange, *, debounce: float = 0.2, max_wait: float = 1.0, force_polling: bool = False
    ) -> None:
        self._on_change = on_change
        self._debounce = debounce
        self._max_wait = max_wait
        self._force_polling = force_polling
        self._paths: dict[str, Path] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: _WatchThread | None = None
        self._ignore = _IgnoreFilter()
        self._want = 0
        self._built = -1  # the generation of the path set the running watcher covers; -1: none yet
        self._rebuild_task: asyncio.Task[None] | None = None
        self._pending: dict[str, set[str]] = {}
        self._first: dict[str, float] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._last_flush: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._running = False

    @property
    def git_calls(self) -> int:
        """How many git processes the ignore filter started (nothing changes → stays put)."""
        return self._ignore.git_calls

    @property
    def paths(self) -> dict[str, Path]:
        return dict(self._paths)

    def _call_on_loop(self, func: Callable[..., None], *args: object) -> None:
        loop = self._loop
        try:
            on_loop = loop is None or asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop or loop is None:
            func(*args)
        else:
            loop.call_soon_threadsafe(func, *args)

    def add(self, agent_id: str, path: Path) -> None:
        """Watch `path` (an agent's worktree) for `agent_id`."""
        self._call_on_loop(self._set, agent_id, Path(os.path.realpath(path)))

    def remove(self, agent_id: str) -> None:
        """Stop watching `agent_id`'s worktree; no more events are delivered for it from now on."""
        self._call_on_loop(self._set, agent_id, None)

    def _set(self, agent_id: str, path: Path | None) -> None:
        if path is None:
            old = self._paths.pop(agent_id, None)
            self._pending.pop(agent_id, None)
            self._first.pop(agent_id, None)
            timer = self._timers.pop(agent_id, None)
            if timer:
                timer.cancel()
            if old is None:
                return
            self._ignore.forget(old)
        else:
            if self._paths.get(agent_id) == path:
                return
            self._paths[agent_id] = path
        self._want += 1
        if self._running:
            self._kick()

    def _kick(self) -> None:
        if self._rebuild_task is None or self._rebuild_task.done():
            assert self._loop is not None
            self._rebuild_task = self._loop.create_task(self._rebuild(), name="rebuild file watcher")

    async def _rebuild(self) -> None:
        while self._running and self._built != self._want:
            want = self._want
            roots = {path: agent for agent, path in self._paths.items()}
            notify, roots = await asyncio.to_thread(self._build, roots)
            if not self._running:
                if notify is not None:
                    notify.close()
                return
            # The new watcher is already collecting: the old one delivers what it saw, then ends.
            await self._stop_thread(drain=True)
            if notify is not None:
                assert self._loop is not None
                self._thread = _WatchThread(notify, roots, self._ignore, self._loop, self._deliver)
                self._thread.start()
            self._built = want

    def _build(self, roots: dict[Path, str]) -> tuple[RustNotify | None, dict[Path, str]]:
        """Create the Rust watcher over the worktrees that exist (blocking: inotify walks every folder)."""
        for attempt in range(3):
            roots = {p: a for p, a in roots.items() if p.is_dir()}
            if not roots:
                break
            try:
                return RustNotify([str(p) for p in roots], False, self._force_polling, 300, True, True), roots
            except FileNotFoundError:  # a worktree vanished while we walked it: try again without it
                if attempt == 2:
                    raise
        return None, {}

    async def _stop_thread(self, *, drain: bool = False) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            (thread.drain if drain else thread.stop_event).set()
            await asyncio.to_thread(thread.join)

    def _deliver(self, batch: dict[str, tuple[Path, set[str]]]) -> None:
        assert self._loop is not None
        now = self._loop.time()
        for agent_id, (root, rels) in batch.items():
            if self._paths.get(agent_id) != root:
                continue  # removed (or moved) since the watcher saw it
            self._pending.setdefault(agent_id, set()).update(rels)
            first = self._first.setdefault(agent_id, now)
            timer = self._timers.pop(agent_id, None)
            if timer:
                timer.cancel()
            if timer is None and now - self._last_flush.get(agent_id, -1e9) >= self._debounce:
                self._flush(agent_id)  # leading edge: a change after a quiet spell goes out at once
                continue
            delay = 0.0 if now - first >= self._max_wait else self._debounce
            self._timers[agent_id] = self._loop.call_later(delay, self._flush, agent_id)

    def _flush(self, agent_id: str) -> None:
        self._timers.pop(agent_id, None)
        self._last_flush[agent_id] = self._loop.time() if self._loop is not None else 0.0
        self._first.pop(agent_id, None)
        paths = self._pending.pop(agent_id, None)
        if not paths or agent_id not in self._paths:
            return
        try:
            result = self._on_change(agent_id, sorted(paths))
        except Exception:
            log.exception("on_change for agent %s failed", agent_id)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)  # type: ignore[arg-type]
            task.add_done_callback(self._tasks.discard)  # type: ignore[arg-type]

    async def start(self) -> None:
        """Start watching the worktrees added so far (and those added later); returns once watching."""
        self._loop = asyncio.get_running_loop()
        self._running = True
        self._kick()
        await self.ready()

    async def ready(self) -> None:
        """Wait until the watcher covers the current set of worktrees."""
        while self._running and self._built != self._want:
            task = self._rebuild_task
            if task is None or task.done():
                self._kick()
                task = self._rebuild_task
            assert task is not None
            await asyncio.shield(task)

    async def stop(self) -> None:
        """Stop watching; pending (debounced) changes are dropped."""
        self._running = False
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._pending.clear()
        self._first.clear()
        task = self._rebuild_task
        if task is not None and not task.done():
            await asyncio.gather(task, return_exceptions=True)
        await self._stop_thread()
        self._built = -1
        for task in list(self._tasks):
            task.cancel()

    async def __aenter__(self) -> WorktreeWatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
