"""Idle: N scripted agents, each waiting for approval of a file write, in the real `missionctl` in tmux.

    python bench/idle.py [--agents 32] [--seconds 60]

Prints the app's CPU (% of one core, /proc ticks of the app process) over the idle window, and every git
process the app (or anything it started) executed in that window, traced with `strace -f -e execve`.
"""

from __future__ import annotations

import argparse
import re
import threading
import time

from harness import (
    CpuMeter,
    Server,
    Tmux,
    build_repo,
    count_execs,
    machine,
    read_events,
    remove,
    temp_dir,
    wait_until,
    write_config,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--files", type=int, default=2000, help="files in the repository")
    ap.add_argument("--settle", type=float, default=5, help="seconds after the last approval before measuring")
    args = ap.parse_args()
    print(machine())
    names = [f"w{i:02d}" for i in range(args.agents)]
    d = temp_dir("mc-bench-idle-")
    repo = build_repo(d / "repo", args.files)
    turn = {"say": "I'll write the notes.", "tool": "write_file", "args": {"path": "NOTES.md", "content": "hi\n"}}
    scenario = {"agents": [{"name": n, "turns": [turn]} for n in names]}
    server = Server(scenario, d, tokens_per_second=0)
    cfg = write_config(
        d / "mc.toml",
        repo,
        server.base_url,
        [{"name": n, "task": "write notes", "model": n} for n in names],
        approve="writes",
    )
    app = Tmux(["run", "--config", str(cfg)], d)
    state = repo / ".mc"

    def all_waiting() -> bool:
        try:
            return all(any(e.get("type") == "approval_requested" for e in read_events(state, n)) for n in names)
        except OSError:
            return False

    try:
        if not wait_until(all_waiting, 180, poll=0.5):
            raise SystemExit("not every agent asked for approval:\n" + app.screen())
        time.sleep(args.settle)
        summary = next((ln for ln in app.screen().splitlines() if re.search(r"\d+ agents", ln)), "").strip()
        cpu = CpuMeter(app.pid)
        cpu.start()
        time.sleep(args.seconds)
        app_cpu = cpu.stop()
        print(f"{args.agents} agents waiting for approval; the summary line says: {summary}")
        print(f"idle {args.seconds:g} s (nothing traced): app CPU {app_cpu:.2f}% of a core")
        gits, calls = count_execs(app.pid, args.seconds)
        print(
            f"next {args.seconds:g} s under strace: git processes started while nothing changed: {gits} "
            f"(execve calls of any program: {len(calls)})"
        )
        for call in calls[:10]:
            print("   ", call[:160])
        # Control: the same tracing does see the git calls of a change (one file saved in one worktree).
        result: list[int] = []
        tracer = threading.Thread(target=lambda: result.extend(count_execs(app.pid, 4)))
        tracer.start()
        time.sleep(1)
        (d / "worktrees" / names[0] / "control.txt").write_text("a change\n")
        tracer.join()
        print(f"control: one file saved in {names[0]}'s worktree -> {result[0]} git processes traced:")
        for call in result[1]:
            print("   ", re.sub(r"\], 0x[0-9a-f]+ /\* \d+ vars \*/\) += 0", "]", call)[:150])
    finally:
        app.quit()
        server.stop()
        remove(d)


if __name__ == "__main__":
    main()
