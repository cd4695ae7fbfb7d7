"""Measure mc.git on a synthetic repository: `python bench/bench_git.py [--files 50000] [--runs 15]`.

Builds a repository of N small files in a temporary folder (once), one agent worktree with 4 modified files,
1 deleted and 4 untracked, and prints the median (and min/max) of each operation. Not part of the tests.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mc.git import Repo, compute_diff


def git(cwd: Path, *args: str) -> None:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"git {args[0]} failed: {proc.stderr.strip()}")


def build(root: Path, files: int) -> None:
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    for i in range(files):
        folder = root / f"pkg{i // 500:03d}" / f"mod{(i // 50) % 10}"
        if i % 50 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"file{i}.py").write_text(f"# file {i}\nVALUE = {i}\n\ndef f():\n    return VALUE * 2\n")
    git(root, "add", "-A")
    git(
        root,
        "-c",
        "gc.auto=0",
        "-c",
        "user.name=bench",
        "-c",
        "user.email=bench@localhost",
        "commit",
        "-q",
        "-m",
        "initial",
    )
    git(root, "gc", "-q")


def timed(label: str, func: Callable[[], object], runs: int) -> None:
    func()  # warm the page cache
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        func()
        samples.append((time.perf_counter() - start) * 1000)
    print(
        f"{label:<52} median {statistics.median(samples):7.1f} ms   min {min(samples):7.1f}   max {max(samples):7.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mc-bench-") as tmp:
        root = Path(tmp) / "repo"
        start = time.perf_counter()
        build(root, args.files)
        print(
            f"built a repository of {args.files} files in {time.perf_counter() - start:.1f} s (git {os.uname().machine})"
        )
        repo = Repo(root)
        base = repo.resolve("main")
        wt = Path(tmp) / "wt" / "a"
        timed_add = time.perf_counter()
        repo.add_worktree(wt, "mc/a", base)
        print(f"{'add_worktree (one, checkout of all files)':<52} {(time.perf_counter() - timed_add) * 1000:7.1f} ms")
        for i in (1, args.files // 4 + 1, args.files // 2 + 1, 3 * args.files // 4 + 1):
            target = next(wt.glob(f"pkg{i // 500:03d}/mod*/file{i}.py"))
            target.write_text(target.read_text() + "# changed\n")
        gone = args.files // 10
        next(wt.glob(f"pkg{gone // 500:03d}/mod*/file{gone}.py")).unlink()
        for i in range(4):
            (wt / f"new{i}.py").write_text("x = 1\n" * 20)
        diff = compute_diff(wt, base)
        print(f"diff: {diff.summary()}, {len(diff.text)} bytes of text")
        timed("compute_diff (4 modified, 1 deleted, 4 untracked)", lambda: compute_diff(wt, base), args.runs)
        timed(
            "  of which git diff --raw --numstat",
            lambda: repo.git("diff", "--raw", "--numstat", base, cwd=wt),
            args.runs,
        )
        timed(
            "  of which git ls-files --others",
            lambda: repo.git("ls-files", "-z", "--others", "--exclude-standard", cwd=wt),
            args.runs,
        )
        timed("git status --porcelain (for comparison)", lambda: repo.git("status", "--porcelain", cwd=wt), args.runs)
        counter = iter(range(10_000))
        timed(
            "snapshot (temporary index, add -A, commit-tree)",
            lambda: repo.snapshot(wt, f"refs/mc/snapshots/b{next(counter)}", "bench"),
            args.runs,
        )
        clean = Path(tmp) / "wt" / "clean"
        repo.add_worktree(clean, "mc/clean", base)
        timed("compute_diff of a clean worktree", lambda: compute_diff(clean, base), args.runs)


if __name__ == "__main__":
    main()
