"""Fault suite: no change is missed. A watcher that saw nothing (being rebuilt, or an inotify budget spent)
must not leave an agent showing "0 files" with files on disk: a turn that ends asks for its agent's diff."""

from __future__ import annotations

import asyncio
from typing import Any

from mc.config import AgentConfig
from tests.conftest import fleet_config

AGENTS = 8


async def test_a_turn_that_ends_is_diffed_even_when_the_watcher_saw_nothing(repo, scripted, fleet_factory) -> None:
    scenario: dict[str, Any] = {
        "agents": [
            {
                "name": f"w{i}",
                "turns": [
                    {"say": "Writing.", "tool": "write_file", "args": {"path": f"f{i}.txt", "content": "x\n"}},
                    {"say": "Writing.", "tool": "write_file", "args": {"path": "g.txt", "content": f"{i}\n"}},
                    {"say": "Done."},
                ],
            }
            for i in range(AGENTS)
        ]
    }
    server = scripted(scenario)
    fleet = await fleet_factory(fleet_config(repo, server))
    assert fleet.watcher is not None
    await fleet.watcher.stop()  # blind from now on: only the fleet itself can notice the changes
    for i in range(AGENTS):
        await fleet.spawn(AgentConfig(name=f"w{i}", task="write two files", model=f"w{i}", policy="never"))
    assert await fleet.wait_settled(60)
    deadline = asyncio.get_running_loop().time() + 20
    while asyncio.get_running_loop().time() < deadline:
        if all(fleet.get(f"w{i}").files_changed == 2 for i in range(AGENTS)):
            break
        await asyncio.sleep(0.05)
    assert {f"w{i}": fleet.get(f"w{i}").files_changed for i in range(AGENTS)} == {f"w{i}": 2 for i in range(AGENTS)}
    assert all(fleet.get(f"w{i}").status == "idle" for i in range(AGENTS))
