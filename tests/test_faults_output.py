"""Fault suite, hostile output: agents whose commands print a flood of lines, one enormous line, binary garbage
and terminal escape sequences (clear screen, window title, OSC 52 clipboard), beside an agent that ticks.

The fleet stays responsive (a 50 ms ticker task on the event loop never waits more than a generous 2 s, and
the ticking agent's events keep arriving: a liveness check, not a speed target), memory stays bounded (the
agent's log ring and its line cap), events.jsonl holds each command's head and tail and counts the rest, and no
ESC byte reaches Agent.log lines.

Runaway output (`yes`): one command, in a shell call or as a command agent, puts at most LOG_HEAD + LOG_TAIL
characters of its output in the log (head, tail and the count of what was left out between them), so
events.jsonl stays under LOG_FILE_BOUND; and `missionctl ls` and opening the fleet on a 200 MB log cost no more
memory (and read no more of the log) than on a small one.

Counts: a 10 MB flood by default, the issue's 50 MB with MC_FAULTS_FULL=1.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import psutil

from mc import events as ev
from mc.agent import LOG_RING, MAX_LINE
from mc.config import AgentConfig
from mc.tools.run import LOG_HEAD, LOG_TAIL
from tests.conftest import fleet_config
from tests.test_fleet import shell_turn

FULL = os.environ.get("MC_FAULTS_FULL") == "1"
FLOOD_BYTES = 50_000_000 if FULL else 10_000_000
LINE = 100  # bytes per flood line, its newline included
LONG_LINE = 5_000_000
TICKS = 40
HOSTILE = (
    r"printf '\033[2J\033[H\033]0;evil title\007\033]52;c;aGVsbG8gY2xpcGJvYXJk\007visible text\n'; "
    r"printf '\033[31mred\033[0m and \033[1A\033[Kmoved\n\233 8-bit CSI\n\033P1;2qdcs\033\\ after dcs\n'"
)
COMMANDS = {
    "flood": f"head -c {FLOOD_BYTES // LINE * (LINE - 1)} /dev/zero | tr '\\0' a | fold -w {LINE - 1}",
    "longline": f"head -c {LONG_LINE} /dev/zero | tr '\\0' x; echo",
    "garbage": "head -c 2000000 /dev/urandom; echo; echo after-garbage",
    "escapes": HOSTILE,
    "ticker": f"for i in $(seq 1 {TICKS}); do echo tick $i; sleep 0.05; done",
}


#: events.jsonl of an agent that ran one runaway command stays under this (LOG_HEAD + LOG_TAIL characters of
#: `y\n` output take 1.5 bytes each as JSON, plus the framing of each event and the agent's other events).
LOG_FILE_BOUND = 1024 * 1024
YES_SECONDS = 3
OMITTED = re.compile(r"\[… ([\d,]+) characters of output left out of the log …\]\n")
GOES_ON = re.compile(r"\[… the output goes on: the log keeps its last [\d,]+ characters and counts the rest …\]\n")


def outputs(fleet: Any, name: str) -> str:
    return "".join(e.text for e in fleet.store.iter_events(name) if isinstance(e, ev.ToolOutput))


def texts(fleet: Any, name: str) -> str:
    return "".join(e.text for e in fleet.store.iter_events(name) if isinstance(e, ev.TextDelta))


def split_bounded(logged: str) -> tuple[str, int, str]:
    """(head, characters left out, tail) of one command's output as its log holds it."""
    parts = GOES_ON.split(logged)
    assert len(parts) == 2, f"expected one note that the output goes on, got {len(parts) - 1}"
    head, rest = parts
    counted = OMITTED.split(rest)
    assert len(counted) == 3 and counted[0] == "", f"expected one count of what was left out: {rest[:200]!r}"
    assert len(head) <= LOG_HEAD and len(counted[2]) <= LOG_TAIL
    return head, int(counted[1].replace(",", "")), counted[2]


async def test_hostile_output_keeps_the_fleet_responsive_bounded_and_clean(
    repo: Path, scripted: Any, fleet_factory: Any
) -> None:
    server = scripted(
        {"agents": [{"name": n, "turns": [shell_turn(c), {"say": f"{n} done."}]} for n, c in COMMANDS.items()]}
    )
    specs = [AgentConfig(name=n, task=f"print {n}", model=n, policy="never") for n in COMMANDS]
    fleet = await fleet_factory(fleet_config(repo, server, specs))
    rss_before = psutil.Process().memory_info().rss
    ticks: list[float] = []
    fleet.add_listener(
        lambda e: ticks.append(time.monotonic()) if e.agent == "ticker" and isinstance(e, ev.ToolOutput) else None
    )
    max_gap = 0.0
    running = True

    async def ticker() -> None:
        nonlocal max_gap
        last = time.monotonic()
        while running:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            max_gap = max(max_gap, now - last)
            last = now

    task = asyncio.create_task(ticker())
    await fleet.spawn_configured()
    spawn_gap, max_gap = max_gap, 0.0  # the first spawn imports the runner (the openai SDK) on the loop
    settled = await fleet.wait_settled(120)
    running = False
    await task
    rss_growth = psutil.Process().memory_info().rss - rss_before
    assert settled
    assert {a.name: a.status for a in fleet.list()} == dict.fromkeys(COMMANDS, "idle")

    # responsive: the loop never stalled, and the ticking agent's lines all came, one after another
    assert max_gap < 2.0, f"the event loop stalled for {max_gap:.2f} s while the output poured in"
    assert spawn_gap < 2.0, f"the event loop stalled for {spawn_gap:.2f} s while the agents were spawned"
    assert outputs(fleet, "ticker").split() == " ".join(f"tick {i}" for i in range(1, TICKS + 1)).split()
    assert max(b - a for a, b in itertools.pairwise(ticks)) < 2.0

    # bounded: the log ring and the line cap hold, whatever came in
    for agent in fleet.list():
        assert len(agent.log.lines) <= LOG_RING
        assert all(len(text) <= MAX_LINE + 40 for _, text in agent.log.lines)
    flood = fleet.get("flood")
    assert (LOG_HEAD + LOG_TAIL) // LINE - 10 < flood.log.total < (LOG_HEAD + LOG_TAIL) // LINE + 100  # head, tail
    assert rss_growth < 400 * 1024 * 1024, f"memory grew by {rss_growth // 2**20} MiB"

    # the log on disk holds the head and the tail of the flood, in whole lines, and counts every character between
    head, omitted, tail = split_bounded(outputs(fleet, "flood"))
    assert len(head) + omitted + len(tail) == FLOOD_BYTES
    assert head.count("a" * (LINE - 1) + "\n") * LINE == len(head) > 0
    assert tail.count("a" * (LINE - 1) + "\n") * LINE == len(tail) > 0
    assert fleet.store.events_path("flood").stat().st_size < LOG_FILE_BOUND
    # long lines are capped with a count of what was cut
    longline = outputs(fleet, "longline")
    assert longline.startswith("x" * 4096) and f"[+{LONG_LINE - 4096} chars]" in longline
    garbage = outputs(fleet, "garbage")
    assert "\ufffd" in garbage and garbage.rstrip().endswith("after-garbage")
    escapes = outputs(fleet, "escapes")
    assert "visible text\n" in escapes and "red and moved\n" in escapes and "after dcs" in escapes
    assert "evil title" not in escapes and "aGVsbG8" not in escapes
    # what the model got is capped
    for name in COMMANDS:
        result = next(e for e in fleet.store.iter_events(name) if isinstance(e, ev.ToolResult))
        assert len(result.output) <= fleet.config.tools.max_output

    # no escape byte (7-bit ESC or 8-bit CSI/OSC) and no other control reaches a log line
    for agent in fleet.list():
        for _, text in agent.log.lines:
            assert not any(ch in text for ch in "\x1b\x9b\x9d\x90\x07\x08\r"), (agent.name, text[:80])
    for name in ("escapes", "garbage"):
        assert "\x1b" not in outputs(fleet, name)


async def test_yes_in_a_shell_call_logs_its_head_tail_and_count_only(
    repo: Path, scripted: Any, fleet_factory: Any
) -> None:
    command = f"timeout {YES_SECONDS} yes; echo after-yes"
    server = scripted({"agents": [{"name": "yes", "turns": [shell_turn(command), {"say": "Done."}]}]})
    spec = AgentConfig(name="yes", task="say yes", model="yes", policy="never")
    fleet = await fleet_factory(fleet_config(repo, server, [spec]))
    await fleet.spawn_configured()
    assert await fleet.wait_settled(60 + YES_SECONDS)
    assert fleet.get("yes").status == "idle"
    size = fleet.store.events_path("yes").stat().st_size
    assert size < LOG_FILE_BOUND, f"{size / 2**20:.1f} MiB of events.jsonl for {YES_SECONDS} s of yes"
    head, omitted, tail = split_bounded(outputs(fleet, "yes"))
    assert head == "y\n" * (len(head) // 2) and len(head) > LOG_HEAD - 100
    assert omitted > 0 and tail.endswith("y\nafter-yes\n") and set(tail[:-10]) <= {"y", "\n"}
    result = next(e for e in fleet.store.iter_events("yes") if isinstance(e, ev.ToolResult))
    assert len(result.output) <= fleet.config.tools.max_output and result.output.rstrip().endswith("after-yes")


async def test_yes_in_a_command_agent_logs_its_head_tail_and_count_only(repo: Path, fleet_factory: Any) -> None:
    spec = AgentConfig(
        name="yes", task="say yes", runner="command", command=f"timeout {YES_SECONDS} yes; echo after-yes"
    )
    fleet = await fleet_factory(fleet_config(repo, type("NoModel", (), {"base_url": "http://127.0.0.1:9/v1"}), [spec]))
    await fleet.spawn_configured()
    assert await fleet.wait_settled(30 + YES_SECONDS)
    assert fleet.get("yes").status == "idle"
    size = fleet.store.events_path("yes").stat().st_size
    assert size < LOG_FILE_BOUND, f"{size / 2**20:.1f} MiB of events.jsonl for {YES_SECONDS} s of yes"
    head, omitted, tail = split_bounded(texts(fleet, "yes"))
    assert head == "y\n" * (len(head) // 2) and len(head) > LOG_HEAD - 100
    assert omitted > 0 and tail.endswith("y\nafter-yes\n") and set(tail[:-10]) <= {"y", "\n"}


BIG_LOG = 200 * 1024 * 1024
#: Runs `missionctl ARGS…` in this process and reports its peak memory and how much it read.
LS_PROBE = """
import json, resource, sys
from mc.cli import main
code = main(sys.argv[1:])
io = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
sys.stderr.write(json.dumps({"code": code, "peak": peak, "read": int(io["rchar"])}) + "\\n")
"""
#: Opens the fleet of the repository here as its owner, and closes it.
OPEN_PROBE = """
import asyncio, json, resource, sys
from mc.cli import resolve_config
from mc.fleet import Fleet

async def run():
    fleet = Fleet(resolve_config(None))
    await fleet.open()
    try:
        return {a.name: [a.status, a.log.total] for a in fleet.list()}
    finally:
        await fleet.close()

agents = asyncio.run(run())
io = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"agents": agents, "peak": peak, "read": int(io["rchar"])}))
"""


def probe(repo: Path, code: str, *args: str) -> tuple[str, dict[str, Any]]:
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=repo, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    if code is LS_PROBE:
        return out.stdout, json.loads(out.stderr.strip().splitlines()[-1])
    return "", json.loads(out.stdout.strip().splitlines()[-1])


async def test_ls_and_opening_the_fleet_cost_the_same_on_a_200_mb_log(
    repo: Path, scripted: Any, fleet_factory: Any
) -> None:
    server = scripted({"agents": [{"name": "big", "turns": [shell_turn("echo hello"), {"say": "Done."}]}]})
    spec = AgentConfig(name="big", task="say hello", model="big", policy="never")
    fleet = await fleet_factory(fleet_config(repo, server, [spec]))
    await fleet.spawn_configured()
    assert await fleet.wait_settled(30)
    agent = fleet.get("big")
    expected = {"name": "big", "status": "idle", "runner": "builtin", "branch": agent.branch, "tokens": agent.tokens}
    await fleet.close()

    small_ls, small = probe(repo, LS_PROBE, "ls", "--json")
    assert [{k: r[k] for k in expected} for r in json.loads(small_ls)] == [expected]
    log = fleet.store.events_path("big")
    chunk = ev.ToolOutput(agent="big", call_id="flood", text="y" * 65535 + "\n")
    line = (json.dumps(chunk.to_dict(), separators=(",", ":")) + "\n").encode()
    with open(log, "ab") as fh:  # a runaway command of an older version, as it was left on disk
        while fh.tell() < BIG_LOG:
            fh.write(line * 64)
    assert log.stat().st_size >= BIG_LOG

    big_ls, big = probe(repo, LS_PROBE, "ls", "--json")
    assert big_ls == small_ls
    state = tomllib.loads((repo / ".mc" / "state.toml").read_text())
    assert [r["status"] for r in json.loads(big_ls)] == [state["agents"]["big"]["status"]]
    assert big["peak"] < small["peak"] + 64 * 2**20, f"ls peaked at {big['peak'] // 2**20} MiB on a 200 MB log"
    assert big["read"] < small["read"] + 8 * 2**20, f"ls read {big['read'] // 2**20} MiB on a 200 MB log"

    # the first open after the flood replays the log a line at a time: memory does not follow its size
    _, first = probe(repo, OPEN_PROBE)
    assert first["agents"]["big"][0] == "idle" and first["agents"]["big"][1] > BIG_LOG // len(line)
    assert first["peak"] < 400 * 2**20, f"opening the fleet peaked at {first['peak'] // 2**20} MiB"
    # it left a checkpoint: the next open reads only what the log gained since
    _, second = probe(repo, OPEN_PROBE)
    assert second["agents"] == first["agents"]
    assert second["read"] < first["read"] - BIG_LOG + 16 * 2**20, f"the second open read {second['read'] >> 20} MiB"
    assert second["peak"] < 400 * 2**20
