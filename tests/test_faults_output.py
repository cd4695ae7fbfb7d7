"""Fault suite, hostile output: agents whose commands print a flood of lines, one enormous line, binary garbage
and terminal escape sequences (clear screen, window title, OSC 52 clipboard), beside an agent that ticks.

The fleet stays responsive (a 50 ms ticker task on the event loop never waits more than a generous 2 s, and
the ticking agent's events keep arriving: a liveness check, not a speed target), memory stays bounded (the
agent's log ring and its line cap), events.jsonl holds the output, and no ESC byte reaches Agent.log lines.

Counts: a 10 MB flood by default, the issue's 50 MB with MC_FAULTS_FULL=1.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from pathlib import Path
from typing import Any

import psutil

from mc import events as ev
from mc.agent import LOG_RING, MAX_LINE
from mc.config import AgentConfig
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


def outputs(fleet: Any, name: str) -> str:
    return "".join(e.text for e in fleet.store.iter_events(name) if isinstance(e, ev.ToolOutput))


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
    assert len(flood.log.lines) == LOG_RING and flood.log.total > FLOOD_BYTES // LINE
    assert rss_growth < 400 * 1024 * 1024, f"memory grew by {rss_growth // 2**20} MiB"

    # the log on disk holds the output (long lines capped with a count of what was cut)
    assert outputs(fleet, "flood").count("a" * (LINE - 1) + "\n") == FLOOD_BYTES // LINE
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
