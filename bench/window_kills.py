"""Windows that die while the fleet streams: kill -9 of the window, and the terminal's session killed (an SSH
drop without tmux), many times over, while N scripted agents stream; then every line is counted.

    python bench/window_kills.py [--agents 8] [--rate 50] [--kills 50] [--drops 5]

Each round attaches a new window (`missionctl --config …` in a tmux server of its own, at 120x40) to the
running fleet server, waits for its first frame (the fleet's agent count on screen; the time is reported),
lets it draw for a random 0.3–1.5 s, and then either kills it with SIGKILL or kills its whole tmux server
(the terminal goes away: the window gets SIGHUP, as over a dropped SSH session). After the last round it waits
for every stream to end and checks, from each agent's events.jsonl on disk: every streamed line there exactly
once, every agent idle (none interrupted or failed), and the same fleet server process from start to end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness import (
    Server,
    Tmux,
    build_repo,
    machine,
    percentiles,
    remove,
    temp_dir,
    wait_until,
    write_config,
)
from stream import fleet_server_pid, line_text, lines_on_disk


class Window(Tmux):
    """A window in a tmux server of its own: a new socket each time, so that a server just killed is never
    the one the next window starts."""

    count = 0

    def __init__(self, args: list[str], cwd: Path, size: str = "120x40") -> None:
        Window.count += 1
        self.unique = f"mckills{os.getpid()}-{Window.count}"
        super().__init__(args, cwd, size=size)

    def _tm(self) -> list[str]:
        return ["tmux", "-L", self.unique]


def ls(cfg: Path) -> list[dict]:
    run = subprocess.run(
        [sys.executable, "-m", "mc", "ls", "--json", "--config", str(cfg)], capture_output=True, text=True, timeout=60
    )
    return json.loads(run.stdout) if run.returncode == 0 else []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=8)
    ap.add_argument("--rate", type=float, default=50, help="lines per second per agent")
    ap.add_argument("--kills", type=int, default=50, help="windows killed with SIGKILL")
    ap.add_argument("--drops", type=int, default=5, help="windows whose terminal session is killed (SIGHUP)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    print(machine())
    rng = random.Random(args.seed)
    rounds = ["kill"] * args.kills + ["drop"] * args.drops
    rng.shuffle(rounds)
    seconds = len(rounds) * 2.5 + 20  # the streams outlast the rounds
    lines = int(args.rate * seconds)
    names = [f"w{i:02d}" for i in range(args.agents)]
    d = temp_dir("mc-bench-kills-")
    repo = build_repo(d / "repo", 10)
    scenario = {"agents": [{"name": n, "turns": [{"say": line_text(n), "repeat": lines}]} for n in names]}
    server = Server(scenario, d, tokens_per_second=args.rate)
    cfg = write_config(d / "mc.toml", repo, server.base_url, [{"name": n, "task": "stream", "model": n} for n in names])
    state = repo / ".mc"
    first = Window(["run", "--config", str(cfg)], d)  # starts the fleet server and the agents
    try:
        if not first.wait_for(rf"{args.agents} agents", 120):
            raise SystemExit("the fleet did not start:\n" + first.screen())
        fleet_pid = fleet_server_pid(cfg)
        os.kill(first.pid, signal.SIGKILL)
        subprocess.run([*first._tm(), "kill-server"], capture_output=True)
        attach, hung = [], 0
        for what in rounds:
            window = Window(["--config", str(cfg)], d)
            shown = window.wait_for(rf"{args.agents} agents", 20)
            if shown is None:
                hung += 1
                print(f"a window showed no frame in 20 s:\n{window.screen()}")
            else:
                attach.append((time.perf_counter() - window.started) * 1000)
            time.sleep(rng.uniform(0.3, 1.5))
            if what == "kill":
                os.kill(window.pid, signal.SIGKILL)
            subprocess.run([*window._tm(), "kill-server"], capture_output=True)  # a drop: the terminal goes
            wait_until(lambda w=window: not w.alive(), 10, poll=0.05)
        same_server = fleet_server_pid(cfg) == fleet_pid
        print(f"{args.kills} windows killed with SIGKILL and {args.drops} terminals dropped while streaming")
        print(f"first frame of each attaching window ({args.agents} agents streaming): {percentiles(attach)}")
        print(f"windows that showed no frame: {hung}; the same fleet server throughout: {same_server}")
        done = wait_until(lambda: all(r.get("status") == "idle" for r in ls(cfg)), seconds * 3, poll=1.0)
        statuses = sorted({r.get("status", "?") for r in ls(cfg)})
        lost, extra = lines_on_disk(state, names, lines)
        print(f"every agent idle after its stream: {done} (statuses: {', '.join(statuses)})")
        print(f"lines lost on disk: {lost} of {args.agents * lines} (duplicated: {extra})")
    finally:
        subprocess.run([sys.executable, "-m", "mc", "stop", "--config", str(cfg)], capture_output=True, check=False)
        server.stop()
        if not args.keep:
            remove(d)
        else:
            print(f"kept {d}")


if __name__ == "__main__":
    main()
