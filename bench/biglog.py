"""A large log: `missionctl ls` and opening the fleet when one agent's events.jsonl is hundreds of MB.

    python bench/biglog.py [--mb 200] [--runs 3] [--tree PATH]

Runs one `command` agent (`echo hello`) to completion with `missionctl run --headless`, then appends --mb MB
of tool-output events to its log, as a runaway command of a version without output bounds left it. Then
times, each --runs times, in a fresh process: `missionctl ls --json`, and opening the fleet as its owner and
closing it again (`missionctl run --headless` with nothing left to start). Prints wall time, peak RSS and
the bytes each read. --tree runs another checkout of mission control (e.g. `git archive` of an older
commit) against the same kind of state, for before/after figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from harness import ROOT, build_repo, machine, remove, temp_dir, write_config

#: Runs `python -m mc ARGS…` as a child and prints its wall time, peak RSS and the bytes it read.
MEASURE = """
import json, os, resource, subprocess, sys, time
start = time.perf_counter()
child = subprocess.Popen([sys.executable, "-m", "mc", *sys.argv[1:]], stdout=subprocess.DEVNULL)
io = {}
while child.poll() is None:
    try:
        io = dict(line.split(": ") for line in open(f"/proc/{child.pid}/io").read().splitlines())
    except OSError:
        pass
    time.sleep(0.01)
wall = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"code": child.returncode, "wall": wall, "peak": peak, "read": int(io.get("rchar", 0))}))
"""


def measure(tree: Path, cwd: Path, *args: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", MEASURE, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout)


def line(label: str, runs: list[dict[str, float]]) -> str:
    walls = ", ".join(f"{r['wall'] * 1000:.0f}" for r in runs)
    peak = max(r["peak"] for r in runs) / 2**20
    read = max(r["read"] for r in runs) / 2**20
    return f"{label:<26} wall {walls} ms   peak RSS {peak:.0f} MiB   read {read:.0f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tree", type=Path, default=ROOT, help="the mission control checkout to run")
    args = ap.parse_args()
    print(machine())
    print(f"tree: {args.tree}")
    d = temp_dir("mc-bench-biglog-")
    try:
        repo = build_repo(d / "repo", 20)
        agents = [{"name": "big", "task": "say hello", "runner": "command", "command": "echo hello"}]
        cfg = write_config(d / "mc.toml", repo, "http://127.0.0.1:9/v1", agents)
        env = {**os.environ, "PYTHONPATH": str(args.tree)}
        run = [sys.executable, "-m", "mc", "run", "--headless", "--config", str(cfg)]
        subprocess.run(run, cwd=repo, env=env, stdout=subprocess.DEVNULL, check=True)
        log = repo / ".mc" / "agents" / "big" / "events.jsonl"
        small = [measure(args.tree, repo, "ls", "--json") for _ in range(args.runs)]
        event = {"type": "tool_output", "agent": "big", "ts": time.time(), "call_id": "flood", "text": "y" * 65535}
        block = (json.dumps(event, separators=(",", ":")) + "\n").encode() * 64
        with open(log, "ab") as fh:
            while fh.tell() < args.mb * 1_000_000:
                fh.write(block)
        print(f"log: {log.stat().st_size / 1e6:.0f} MB")
        print(line("ls, small log", small))
        print(line("ls, big log", [measure(args.tree, repo, "ls", "--json") for _ in range(args.runs)]))
        opens = [measure(args.tree, repo, "run", "--headless", "--config", str(cfg)) for _ in range(args.runs + 1)]
        print(line("open, first after the flood", opens[:1]))
        print(line("open, later ones", opens[1:]))
    finally:
        remove(d)


if __name__ == "__main__":
    main()
