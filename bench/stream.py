"""Streaming: N scripted agents each streaming R lines/s for S seconds into the real `missionctl` in tmux.

    python bench/stream.py [--agents 32] [--rate 100] [--seconds 60] [--keys 150]

Prints key-press-to-screen latency (j/k moves the selection; the time until the focused pane's title shows
the newly selected agent, polled with `tmux capture-pane` like /work/shared/tools/keylatency.py), the app's
CPU (% of one core, /proc ticks of the app process alone: the model server runs in its own process), the
line rate actually achieved, lines lost on disk (every line of every agent counted in its events.jsonl) and
how far back the focused pane can scroll.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

from harness import (
    CpuMeter,
    Server,
    Tmux,
    build_repo,
    machine,
    percentiles,
    proc_cpu,
    proc_rss_mb,
    read_events,
    remove,
    streamed_text,
    temp_dir,
    wait_until,
    write_config,
)

PAD = "x" * 40


def fleet_server_pid(cfg: Path) -> int:
    """The pid of the `missionctl serve` process the window started for this config."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"serve" in cmd and str(cfg).encode() in cmd:
                return int(entry.name)
    raise SystemExit("no fleet server runs for the bench's config")


def line_text(agent: str) -> str:
    """One streamed line is one word (one SSE delta): `s07-123-xxxx…`."""
    return f"{agent}-{{n}}-{PAD}"


def title(agent: str) -> str:
    return rf"[╭┏][─━] (\d )?{agent} [─━]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=32)
    ap.add_argument("--rate", type=float, default=100, help="lines per second per agent")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--keys", type=int, default=150, help="key presses to time")
    ap.add_argument("--warm", type=float, default=6, help="seconds after the last agent starts before timing")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    print(machine())
    lines = int(args.rate * args.seconds)
    names = [f"s{i:02d}" for i in range(args.agents)]
    d = temp_dir("mc-bench-stream-")
    repo = build_repo(d / "repo", 20)
    scenario = {"agents": [{"name": n, "turns": [{"say": line_text(n), "repeat": lines}]} for n in names]}
    server = Server(scenario, d, tokens_per_second=args.rate)
    cfg = write_config(d / "mc.toml", repo, server.base_url, [{"name": n, "task": "stream", "model": n} for n in names])
    app = Tmux(["run", "--config", str(cfg)], d)
    state = repo / ".mc"
    try:
        ok = wait_until(lambda: re.search(rf"{args.agents} agents", app.screen()) is not None, 120)
        if not ok:
            raise SystemExit("the fleet did not start:\n" + app.screen())
        t_started = time.perf_counter()
        time.sleep(args.warm)
        fleet_pid = fleet_server_pid(cfg)  # the fleet runs in its own server; the window only draws
        cpu, server_cpu0, fleet_cpu0 = CpuMeter(app.pid), proc_cpu(server.proc.pid), proc_cpu(fleet_pid)
        cpu.start()
        # The selection starts on s00; j and k move it between s00 and s01.
        specs = [("j", title(names[1])), ("k", title(names[0]))]
        lat, missed = [], 0
        for i in range(args.keys):
            key, rx = specs[i % 2]
            pattern = re.compile(rx)
            start = time.perf_counter()
            app.keys(key)
            while True:
                if pattern.search(app.screen()):
                    lat.append((time.perf_counter() - start) * 1000)
                    break
                if time.perf_counter() - start > 3.0:
                    if not missed:
                        print(f"{key} did not show {rx} within 3 s; the screen:\n{app.screen()}")
                    missed += 1
                    break
            time.sleep(0.15)
            if time.perf_counter() - t_started > args.seconds - 2:
                break
        window = time.perf_counter() - cpu.t0
        app_cpu = cpu.stop()
        server_cpu = 100 * (proc_cpu(server.proc.pid) - server_cpu0) / window
        fleet_cpu = 100 * (proc_cpu(fleet_pid) - fleet_cpu0) / window
        rss = proc_rss_mb(app.pid)
        print(f"agents {args.agents} x {args.rate:g} lines/s for {args.seconds:g} s ({lines} lines each)")
        print(f"key latency (j/k until the focused pane shows the agent): {percentiles(lat)}  missed {missed}")
        print(
            f"window CPU {app_cpu:.0f}% of a core over {window:.0f} s while streaming, fleet server "
            f"{fleet_cpu:.0f}% (scripted model server: {server_cpu:.0f}%), window RSS {rss:.0f} MB"
        )
        # Wait for every stream to end, then count the lines on disk.
        done = wait_until(lambda: re.search(rf"idle {args.agents}\b", app.screen()) is not None, args.seconds * 4)
        total_s = time.perf_counter() - t_started
        lost, extra = 0, 0
        for n in names:
            text = streamed_text(read_events(state, n))
            got = re.findall(rf"^{n}-(\d+)-{PAD}$", text, re.M)
            seen = {int(x) for x in got}
            lost += lines - len(seen & set(range(1, lines + 1)))
            extra += len(got) - len(seen)
        print(
            f"all streams ended: {done} ({total_s:.0f} s after the fleet started; achieved ≈ "
            f"{args.agents * lines / total_s:.0f} lines/s in all)"
        )
        print(f"lines lost on disk: {lost} of {args.agents * lines} (duplicated: {extra})")
        # How far back can the engineer scroll? Zoom into s00, load its whole log, page up until the oldest line
        # stops moving.
        app.keys("1")
        app.wait_for(title(names[0]), 5)
        app.keys("Enter")
        app.wait_for(r"zoom: " + names[0], 5)
        # `home` loads the whole log from disk (memory keeps the last 5,000 lines) and goes to its top
        app.keys("Home")
        time.sleep(1.5)
        oldest, still = None, 0
        while still < 3:
            app.tm("send-keys", "-N", "10", "PageUp")
            time.sleep(0.4)
            shown = [int(x) for x in re.findall(rf"{names[0]}-(\d+)-x", app.screen())]
            low = min(shown) if shown else None
            if low is None:
                print("the zoom shows no line of the stream:\n" + app.screen())
                break
            still = still + 1 if low == oldest else 0
            oldest = low
            if oldest == 1:
                break
        print(
            f"scrolling {names[0]}'s log back in the zoom: the oldest line reachable is {names[0]}-{oldest} "
            f"({'every line reachable' if oldest == 1 else f'lines 1..{(oldest or 1) - 1} only on disk'})"
        )
        app.keys("Escape")
    finally:
        app.quit()
        subprocess.run([sys.executable, "-m", "mc", "stop", "--config", str(cfg)], capture_output=True, check=False)
        server.stop()
        if not args.keep:
            remove(d)
        else:
            print(f"kept {d}")


if __name__ == "__main__":
    main()
