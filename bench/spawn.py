"""Spawn: N agents (worktree + branch each) on a synthetic repository of F files through the Fleet, beside N
raw `git worktree add -b` of the same repository, timed in the same run.

    python bench/spawn.py [--files 50000] [--agents 32]

Fleet: `Fleet.spawn` one after another (as `missionctl run` does), each agent a `command` runner that sleeps,
timed from the call until it returns (worktree, branch, lock, checkout, runner started).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import time
from pathlib import Path

from harness import GIT_ID, build_repo, machine, percentiles, remove, temp_dir

from mc.config import AgentConfig, Config
from mc.fleet import Fleet


async def run(args: argparse.Namespace, d: Path) -> None:
    t0 = time.perf_counter()
    repo = build_repo(d / "repo", args.files)
    print(f"built a repository of {args.files} files in {time.perf_counter() - t0:.0f} s")
    cfg = Config()
    cfg.repo.path = str(repo)
    cfg.repo.base = "main"
    cfg.repo.worktree_dir = str(d / "worktrees")
    fleet = Fleet(cfg)
    await fleet.open()
    # Interleaved, raw then fleet, each after `sync` (untimed): neither pays for the other's dirty pages.
    raw, spawned = [], []
    try:
        for i in range(args.agents):
            await asyncio.to_thread(os.sync)
            start = time.perf_counter()
            subprocess.run(
                ["git", *GIT_ID, "worktree", "add", "--quiet", "-b", f"raw/{i}", str(d / "raw" / f"r{i}"), "main"],
                cwd=repo,
                check=True,
                capture_output=True,
            )
            raw.append((time.perf_counter() - start) * 1000)
            await asyncio.to_thread(os.sync)
            spec = AgentConfig(name=f"a{i:02d}", task="wait", runner="command", command="sleep 3600")
            start = time.perf_counter()
            await fleet.spawn(spec)
            spawned.append((time.perf_counter() - start) * 1000)
        print(f"{args.agents} agents on {args.files} files (interleaved with the raw worktrees, `sync` before each):")
        print(f"  Fleet.spawn            total {sum(spawned) / 1000:6.1f} s   per agent {percentiles(spawned)}")
        print(f"  raw git worktree add   total {sum(raw) / 1000:6.1f} s   per worktree {percentiles(raw)}")
        print(
            f"  Fleet.spawn, first 4 vs last 4: {[round(x) for x in spawned[:4]]} ... {[round(x) for x in spawned[-4:]]} ms"
        )
        print(f"  raw, first 4 vs last 4:         {[round(x) for x in raw[:4]]} ... {[round(x) for x in raw[-4:]]} ms")
    finally:
        for a in fleet.list():
            await fleet.kill(a.id)
        await fleet.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=50_000)
    ap.add_argument("--agents", type=int, default=32)
    args = ap.parse_args()
    print(machine())
    d = temp_dir("mc-bench-spawn-")
    try:
        asyncio.run(run(args, d))
    finally:
        start = time.perf_counter()
        remove(d)
        print(f"(clean-up of {2 * args.agents} worktrees: {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
