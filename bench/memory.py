"""Memory: N agents each printing L log lines, live, into the real `missionctl` in tmux; then the app's RSS.

    python bench/memory.py [--agents 32] [--lines 200000]

Each agent is a `command` runner running `seq` (its output is the agent's log, through the same path as any
CLI agent's). Prints the app's RSS (now and its peak, VmHWM) once every agent is done, the time the fleet
took, and lines lost on disk (every line of every agent counted in its events.jsonl). Then quits, starts the
app again on the same state and prints the time to its first frame and its RSS after the restore.
"""

from __future__ import annotations

import argparse
import re
import time

from harness import (
    Tmux,
    build_repo,
    machine,
    proc_hwm_mb,
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
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--timeout", type=float, default=240)
    args = ap.parse_args()
    print(machine())
    names = [f"m{i:02d}" for i in range(args.agents)]
    d = temp_dir("mc-bench-memory-")
    repo = build_repo(d / "repo", 20)
    agents = [
        {"name": n, "task": "print", "runner": "command", "command": f"seq -f '{n}-%.0f-payload' 1 {args.lines}"}
        for n in names
    ]
    cfg = write_config(d / "mc.toml", repo, "http://127.0.0.1:9/v1", agents)
    state = repo / ".mc"
    app = Tmux(["run", "--config", str(cfg)], d)
    try:
        start = time.perf_counter()

        def all_idle() -> bool:
            try:
                return all(any(e.get("status") == "idle" for e in read_events(state, n)) for n in names)
            except OSError:
                return False

        done = wait_until(all_idle, args.timeout, 1.0)
        took = time.perf_counter() - start
        summary = next((ln for ln in app.screen().splitlines() if re.search(r"\d+ agents", ln)), "").strip()
        time.sleep(2)
        rss, hwm = proc_rss_mb(app.pid), proc_hwm_mb(app.pid)
        print(f"{args.agents} agents x {args.lines} lines: all done {done} after {took:.0f} s ({summary})")
        print(f"app RSS {rss:.0f} MB now, peak {hwm:.0f} MB")
        lost = 0
        for n in names:
            text = "".join(e.get("text", "") for e in read_events(state, n) if e.get("type") == "text_delta")
            got = {int(x) for x in re.findall(rf"^{n}-(\d+)-payload\r?$", text, re.M)}
            lost += args.lines - len(got & set(range(1, args.lines + 1)))
        size = sum(p.stat().st_size for p in state.glob("agents/*/events.jsonl")) / 1e6
        print(f"lines lost on disk: {lost} of {args.agents * args.lines} (events.jsonl: {size:.0f} MB in all)")
        app.quit()
        app = Tmux(["--config", str(cfg)], d)
        first = app.wait_for(rf"{args.agents} agents", 60, poll=0.002)
        launched = time.perf_counter() - app.started
        time.sleep(3)
        print(
            f"restart on that state: first frame with {args.agents} agents after {launched:.2f} s "
            f"(poll {first}), RSS {proc_rss_mb(app.pid):.0f} MB, peak {proc_hwm_mb(app.pid):.0f} MB"
        )
    finally:
        app.quit()
        remove(d)


if __name__ == "__main__":
    main()
