"""Streaming, then idle: N scripted agents each streaming R lines/s into the real `missionctl` in tmux.

    python bench/stream.py [--agents 32] [--rate 100] [--seconds 75] [--keys 120]

Every key is timed from outside, as a user sees it: sent with `tmux send-keys`, then `tmux capture-pane`
polled until the screen shows its effect (as /work/shared/tools/keylatency.py does). In one run:
- while the fleet streams: j/k (until the focused pane's title shows the newly selected agent), with the
  window's and the fleet server's CPU (% of one core, /proc ticks of each process alone; the scripted model
  server runs in its own process); then Down/Up on a bare Textual ListView (bench/listview_floor.py) in a
  tmux of its own beside it, the floor under the same load; then zoom enter and leave;
- the lines actually streamed, and lost on disk (every line of every agent counted in its events.jsonl);
- the idle fleet: CPU of window and server with every agent done;
- on the settled fleet (each agent's answer S x R lines long): zoom enter/leave, help and a dialog
  open/close, PageUp/PageDown in the zoom's log, and how far back it scrolls;
- the first frame of new windows attaching to the fleet (start until every row of the list shows).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from collections.abc import Callable
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


def lines_on_disk(state: Path, names: list[str], lines: int) -> tuple[int, int]:
    """(lines lost, lines duplicated) of every agent's stream of `lines` lines, counted in its events.jsonl."""
    lost = extra = 0
    for n in names:
        got = re.findall(rf"^{n}-(\d+)-{PAD}$", streamed_text(read_events(state, n)), re.M)
        seen = {int(x) for x in got}
        lost += lines - len(seen & set(range(1, lines + 1)))
        extra += len(got) - len(seen)
    return lost, extra


def title(agent: str) -> str:
    return rf"[╭┏][─━] (\d )?{agent} [─━]"


def timed(app: Tmux, key: str, done: Callable[[str], bool], timeout: float = 3.0) -> float | None:
    """Milliseconds from sending `key` until `done(screen)`, or None (and the screen printed once) after timeout."""
    start = time.perf_counter()
    app.keys(key)
    while True:
        screen = app.screen()
        if done(screen):
            return (time.perf_counter() - start) * 1000
        if time.perf_counter() - start > timeout:
            print(f"{key}: not done within {timeout:g} s; the screen:\n{screen}")
            return None


def shows(rx: str) -> Callable[[str], bool]:
    pattern = re.compile(rx)
    return lambda screen: pattern.search(screen) is not None


def gone(rx: str) -> Callable[[str], bool]:
    pattern = re.compile(rx)
    return lambda screen: pattern.search(screen) is None


def changed(app: Tmux) -> Callable[[str], bool]:
    before = app.screen()
    return lambda screen: screen != before


class Keys:
    """Latency samples of one kind of key, and how many never showed."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.lat: list[float] = []
        self.missed = 0

    def add(self, ms: float | None) -> None:
        if ms is None:
            self.missed += 1
        else:
            self.lat.append(ms)
        time.sleep(0.15)

    def line(self) -> str:
        return f"{self.what}: {percentiles(self.lat)}  missed {self.missed}"


def zoom_in_out(app: Tmux, name: str, into: Keys, out: Keys) -> None:
    into.add(timed(app, "Enter", shows(r"zoom: " + name)))
    out.add(timed(app, "Escape", lambda s: "zoom: " not in s and re.search(title(name), s) is not None))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=32)
    ap.add_argument("--rate", type=float, default=100, help="lines per second per agent")
    ap.add_argument("--seconds", type=float, default=75)
    ap.add_argument("--keys", type=int, default=120, help="j/k presses to time while streaming")
    ap.add_argument("--floor-keys", type=int, default=60, help="Down/Up presses of the bare ListView, streaming")
    ap.add_argument("--zooms", type=int, default=20, help="zoom enter/leave pairs, streaming and after")
    ap.add_argument("--idle", type=float, default=20, help="seconds of idle fleet measured after the streams")
    ap.add_argument("--attach", type=int, default=5, help="windows attached one after the other, first frame timed")
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
    floor: Tmux | None = None
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
        moves = Keys("j/k (until the focused pane shows the agent)")
        for i in range(args.keys):
            key, name = ("j", names[1]) if i % 2 == 0 else ("k", names[0])
            moves.add(timed(app, key, shows(title(name))))
        window = time.perf_counter() - cpu.t0
        app_cpu = cpu.stop()
        server_cpu = 100 * (proc_cpu(server.proc.pid) - server_cpu0) / window
        fleet_cpu = 100 * (proc_cpu(fleet_pid) - fleet_cpu0) / window
        rss = proc_rss_mb(app.pid)
        # the floor, on the same machine under the same streams: a bare ListView in a tmux of its own
        floor = Tmux([], d, script="listview_floor.py", name="floor")
        wait_until(lambda: "selected: 0" in floor.screen(), 30)
        time.sleep(1)
        bare = Keys("bare ListView Down/Up, beside (the floor)")
        for i in range(args.floor_keys):
            key, want = ("Down", "selected: 1") if i % 2 == 0 else ("Up", "selected: 0")
            bare.add(timed(floor, key, shows(want)))
        floor.quit()
        floor = None
        zin, zout = Keys("zoom enter (Enter)"), Keys("zoom leave (Escape)")
        for _ in range(args.zooms):
            zoom_in_out(app, names[0], zin, zout)
        streaming_left = args.seconds - (time.perf_counter() - t_started)
        print(f"agents {args.agents} x {args.rate:g} lines/s for {args.seconds:g} s ({lines} lines each)")
        print(f"while streaming (the streams had {streaming_left:.0f} s left after the last key):")
        for keys in (moves, bare, zin, zout):
            print("  " + keys.line())
        print(
            f"  window CPU {app_cpu:.0f}% of a core over {window:.0f} s of j/k, fleet server "
            f"{fleet_cpu:.0f}% (scripted model server: {server_cpu:.0f}%), window RSS {rss:.0f} MB"
        )
        # Wait for every stream to end, then count the lines on disk.
        done = wait_until(lambda: re.search(rf"idle {args.agents}\b", app.screen()) is not None, args.seconds * 4)
        total_s = time.perf_counter() - t_started
        lost, extra = lines_on_disk(state, names, lines)
        print(
            f"all streams ended: {done} ({total_s:.0f} s after the fleet started; achieved ≈ "
            f"{args.agents * lines / total_s:.0f} lines/s in all)"
        )
        print(f"lines lost on disk: {lost} of {args.agents * lines} (duplicated: {extra})")
        # Idle: every agent done, the window attached, nothing on screen moving.
        time.sleep(3)
        cpu0, fleet0, t0 = proc_cpu(app.pid), proc_cpu(fleet_pid), time.perf_counter()
        time.sleep(args.idle)
        span = time.perf_counter() - t0
        idle_app, idle_fleet = 100 * (proc_cpu(app.pid) - cpu0) / span, 100 * (proc_cpu(fleet_pid) - fleet0) / span
        print(
            f"idle fleet ({args.agents} agents, {span:.0f} s): window {idle_app:.2f}%, fleet server {idle_fleet:.2f}%"
        )
        # Keys on a settled fleet whose agents each answered `lines` streamed lines.
        app.keys("1")
        app.wait_for(title(names[0]), 5)
        zin, zout = Keys(f"zoom enter ({lines}-line answer)"), Keys("zoom leave")
        for _ in range(args.zooms):
            zoom_in_out(app, names[0], zin, zout)
        helps, helps_out = Keys("help open (?)"), Keys("help close (Escape)")
        prompt, prompt_out = Keys("dialog open (r: redirect prompt)"), Keys("dialog close (Escape)")
        for _ in range(10):
            helps.add(timed(app, "?", shows(r"what it does")))
            helps_out.add(timed(app, "Escape", gone(r"what it does")))
            prompt.add(timed(app, "r", shows(r"New instruction for")))
            prompt_out.add(timed(app, "Escape", gone(r"New instruction for")))
        app.keys("Enter")
        app.wait_for(r"zoom: " + names[0], 5)
        time.sleep(0.5)
        scroll_up, scroll_down = Keys("zoom log PageUp"), Keys("zoom log PageDown")
        for _ in range(args.zooms):
            scroll_up.add(timed(app, "PageUp", changed(app)))
        for _ in range(args.zooms):
            scroll_down.add(timed(app, "PageDown", changed(app)))
        print("after the streams:")
        for keys in (zin, zout, helps, helps_out, prompt, prompt_out, scroll_up, scroll_down):
            print("  " + keys.line())
        # How far back can the engineer scroll? `home` loads the whole log from disk (memory keeps the last
        # 5,000 lines) and goes to its top; page up until the oldest line stops moving.
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
        # First frame of a window attaching to the running fleet: from its start to the whole list on screen.
        first: list[float] = []
        for i in range(args.attach):
            other = Tmux(["--config", str(cfg)], d, name=f"attach{i}")
            took = other.wait_for(rf"{args.agents} agents[\s\S]*{names[-1]}", 30, poll=0.002)
            if took is None:
                print("an attaching window did not show the fleet within 30 s:\n" + other.screen())
            else:
                first.append((time.perf_counter() - other.started) * 1000)
            other.quit()
        print(f"first frame of an attaching window (start until all {args.agents} rows show): {percentiles(first)}")
    finally:
        if floor is not None:
            floor.quit()
        app.quit()
        subprocess.run([sys.executable, "-m", "mc", "stop", "--config", str(cfg)], capture_output=True, check=False)
        server.stop()
        if not args.keep:
            remove(d)
        else:
            print(f"kept {d}")


if __name__ == "__main__":
    main()
