"""Diff: an agent saves a file in a synthetic repository of N files; the time until the Fleet's DiffChanged
for it arrives, beside the raw git commands that diff needs, timed in the same run right after.

    python bench/diff.py [--files 50000] [--saves 30] [--agents 8] [--rounds 6]

The fleet runs in this process (agents are `command` runners that sleep; the bench writes the files into
their worktrees as the agent would). Timed from the write to the DiffChanged event reaching a fleet
listener. Then the same save is timed in the real app in tmux (zoomed into the agent) until the saved
file count of its diff ("N files changed") shows the new file on screen.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import time
from pathlib import Path

from harness import Tmux, build_repo, machine, percentiles, remove, temp_dir, write_config

from mc import events as ev
from mc.config import AgentConfig, Config
from mc.fleet import Fleet

DIFF_OPTS = ["-c", "core.quotePath=false", "diff", "-M", "--no-color", "--no-ext-diff", "--no-relative"]


def raw_git(worktree: Path, base: str, paths: list[str]) -> float:
    """Milliseconds for the git commands compute_diff runs: raw+numstat, the patch of the paths, untracked."""
    env = {"GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C", "PATH": "/usr/bin:/bin:/usr/local/bin"}
    start = time.perf_counter()
    for args in (
        [*DIFF_OPTS, "-z", "--raw", "--numstat", base, "--"],
        [*DIFF_OPTS, base, "--", *paths],
        ["ls-files", "-z", "--others", "--exclude-standard"],
    ):
        subprocess.run(["git", *args], cwd=worktree, env=env, capture_output=True, check=True)
    return (time.perf_counter() - start) * 1000


async def run(args: argparse.Namespace, d: Path) -> None:
    t0 = time.perf_counter()
    repo = build_repo(d / "repo", args.files)
    print(f"built a repository of {args.files} files in {time.perf_counter() - t0:.0f} s")
    cfg = Config()
    cfg.repo.path = str(repo)
    cfg.repo.base = "main"
    cfg.repo.worktree_dir = str(d / "worktrees")
    cfg.agents = [
        AgentConfig(name=f"d{i}", task="wait", runner="command", command="sleep 3600") for i in range(args.agents)
    ]
    fleet = Fleet(cfg)
    await fleet.open()
    arrived: dict[str, asyncio.Event] = {}
    seen: dict[str, tuple[float, tuple[str, ...]]] = {}

    def listen(event: ev.Event) -> None:
        if isinstance(event, ev.DiffChanged):
            seen[event.agent] = (time.perf_counter(), tuple(f.path for f in event.files))
            if event.agent in arrived:
                arrived[event.agent].set()

    fleet.add_listener(listen)
    try:
        t0 = time.perf_counter()
        await fleet.spawn_configured()
        print(f"spawned {args.agents} agents in {time.perf_counter() - t0:.1f} s")
        await asyncio.sleep(3)
        names = [a.name for a in cfg.agents]
        agent = fleet.get(names[0])

        async def save(name: str, rel: str) -> float | None:
            a = fleet.get(name)
            arrived[name] = asyncio.Event()
            path = Path(a.worktree) / rel
            start = time.perf_counter()
            await asyncio.to_thread(path.write_text, f"# saved by the bench at {start}\nVALUE = 1\n")
            try:
                await asyncio.wait_for(arrived[name].wait(), 10)
            except TimeoutError:
                return None
            return (seen[name][0] - start) * 1000

        one, raw, lost = [], [], 0
        for i in range(args.saves):
            k = (i * 997) % args.files
            rel = f"pkg{k // 500:03d}/mod{(k // 50) % 10}/file{k}.py"
            ms = await save(agent.name, rel)
            if ms is None:
                lost += 1
            else:
                one.append(ms)
            changed = [f.path for f in fleet.agents[agent.id].diff_files]
            raw.append(await asyncio.to_thread(raw_git, Path(agent.worktree), agent.base_commit, changed))
            await asyncio.sleep(0.3)
        print(f"one agent saves a file ({args.saves} saves, diff of up to {args.saves} files):")
        print(f"  save -> DiffChanged   {percentiles(one)}  no event: {lost}")
        print(f"  raw git, same run     {percentiles(raw)}")
        together, raw8, lost8 = [], [], 0
        for r in range(args.rounds):
            rel = f"new/round{r}.py"
            for n in names:
                (Path(fleet.get(n).worktree) / Path(rel).parent).mkdir(parents=True, exist_ok=True)
            results = await asyncio.gather(*(save(n, rel) for n in names))
            together += [x for x in results if x is not None]
            lost8 += sum(1 for x in results if x is None)
            start = time.perf_counter()
            for n in names:
                a = fleet.get(n)
                raw_git(Path(a.worktree), a.base_commit, [f.path for f in a.diff_files])
            raw8.append((time.perf_counter() - start) * 1000)
            await asyncio.sleep(0.5)
        print(f"{args.agents} agents save a file at the same moment ({args.rounds} rounds):")
        print(f"  save -> DiffChanged   {percentiles(together)}  no event: {lost8}")
        print(f"  raw git, all {args.agents} one after another, same run: {percentiles(raw8)}")
        if fleet.diff_scheduler is not None:
            print(f"diffs computed by the fleet: {fleet.diff_scheduler.runs}")
    finally:
        for a in fleet.list():
            await fleet.kill(a.id)
        await fleet.close()
    if args.screen:
        await asyncio.to_thread(on_screen, args, d, repo, Path(fleet.get(names[0]).worktree))


def on_screen(args: argparse.Namespace, d: Path, repo: Path, worktree: Path) -> None:
    """The same save, timed until its path shows in the zoomed agent's diff in the real app in tmux."""
    cfg = write_config(d / "mc.toml", repo, "http://127.0.0.1:9/v1", [])
    app = Tmux(["--config", str(cfg)], d)
    try:
        if app.wait_for(r"\d+ agents?\b", 60) is None:
            raise SystemExit("the app did not start:\n" + app.screen())
        app.keys("1")
        time.sleep(1)
        app.keys("Enter")
        if app.wait_for(r"zoom: d0", 10) is None:
            raise SystemExit("no zoom:\n" + app.screen())
        time.sleep(2)
        shown, missed = [], 0
        count = re.compile(r"(\d+) files? changed")
        for i in range(args.screen):
            rel = f"onscreen/saved{i}.py"
            (worktree / "onscreen").mkdir(exist_ok=True)
            before = count.search(app.screen())
            want = rf"\b{int(before.group(1)) + 1 if before else 1} files? changed"
            start = time.perf_counter()
            (worktree / rel).write_text(f"# saved {i}\n")
            seen = app.wait_for(want, 10, poll=0.003)
            if seen is None:
                if not missed:
                    print(f"{want!r} did not show within 10 s:\n{app.screen()}")
                missed += 1
            else:
                shown.append((time.perf_counter() - start) * 1000)
            time.sleep(0.3)
        print(f"the real app in tmux, zoomed into d0 ({args.screen} saves of a new file each):")
        print(f"  save -> new file count on screen {percentiles(shown)}  not shown: {missed}")
    finally:
        app.quit()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=50_000)
    ap.add_argument("--saves", type=int, default=30)
    ap.add_argument("--agents", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--screen", type=int, default=15, help="saves timed until on screen in the real app (0: skip)")
    args = ap.parse_args()
    print(machine())
    d = temp_dir("mc-bench-diff-")
    try:
        asyncio.run(run(args, d))
    finally:
        remove(d)


if __name__ == "__main__":
    main()
