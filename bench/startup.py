"""Start-up: the first frame of the real `missionctl` in tmux with N agents restored from disk.

    python bench/startup.py [--agents 32] [--lines 10000] [--runs 5]

First runs N `command` agents (`seq`, L log lines each) to completion and quits, so the state on disk is the
one a real fleet leaves; then starts `missionctl` on it R times and times each launch (tmux new-session)
until the screen shows the fleet summary and the last agent's row. Includes the interpreter's start.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from harness import (
    Tmux,
    build_repo,
    machine,
    percentiles,
    proc_rss_mb,
    read_events,
    remove,
    temp_dir,
    wait_until,
    write_config,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=32)
    ap.add_argument("--lines", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    print(machine())
    names = [f"t{i:02d}" for i in range(args.agents)]
    d = temp_dir("mc-bench-startup-")
    repo = build_repo(d / "repo", 200)
    agents = [
        {"name": n, "task": "print", "runner": "command", "command": f"seq -f '{n}-%.0f' 1 {args.lines}"} for n in names
    ]
    cfg = write_config(d / "mc.toml", repo, "http://127.0.0.1:9/v1", agents)
    state = repo / ".mc"
    app = Tmux(["run", "--config", str(cfg)], d)

    def all_idle() -> bool:
        try:
            return all(any(e.get("status") == "idle" for e in read_events(state, n)) for n in names)
        except OSError:
            return False

    try:
        if not wait_until(all_idle, 180, 1.0):
            raise SystemExit("the fleet did not finish:\n" + app.screen())
        app.quit()
        size = sum(p.stat().st_size for p in state.glob("agents/*/events.jsonl")) / 1e6
        print(f"state on disk: {args.agents} agents x {args.lines} log lines ({size:.1f} MB of events.jsonl)")
        times = []
        for _ in range(args.runs):
            app = Tmux(["--config", str(cfg)], d)
            seen = app.wait_for(rf"(?s){args.agents} agents.*\b{names[-1]}\b", 30, poll=0.002)
            if seen is None:
                print("no first frame within 30 s:\n" + app.screen())
            else:
                times.append((time.perf_counter() - app.started) * 1000)
            time.sleep(1)
            rss = proc_rss_mb(app.pid)
            app.quit()
        print(f"first frame with {args.agents} agents restored: {percentiles(times)}  (RSS after 1 s: {rss:.0f} MB)")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import mc.tui.app"], check=True)
        print(f"for scale: `python -c 'import mc.tui.app'` alone takes {(time.perf_counter() - t0) * 1000:.0f} ms")
    finally:
        app.quit()
        remove(d)


if __name__ == "__main__":
    main()
