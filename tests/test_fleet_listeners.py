"""Unknown failures are loud: a listener of the fleet that raises is said in the log (once), and the fleet and
the other listeners go on."""

from __future__ import annotations

import logging

import pytest

from mc import events as ev
from mc.config import AgentConfig
from tests.conftest import fleet_config


async def test_a_broken_listener_is_logged_once_and_the_others_go_on(repo, scripted, fleet_factory, caplog) -> None:
    server = scripted({"turns": [{"say": "Done."}]})
    fleet = await fleet_factory(fleet_config(repo, server))
    seen: list[str] = []

    def broken(event: ev.Event) -> None:
        raise RuntimeError("a bug in a view")

    fleet.add_listener(broken)
    fleet.add_listener(lambda event: seen.append(event.type))
    with caplog.at_level(logging.WARNING, logger="mc.fleet"):
        await fleet.spawn(AgentConfig(name="a", task="say done", policy="never"))
        assert await fleet.wait_settled(30)
    assert fleet.get("a").status == "idle"
    assert "status" in seen and len(seen) > 3
    failures = [r for r in caplog.records if "a listener of the fleet failed" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is not None and "a bug in a view" in str(failures[0].exc_info[1])


@pytest.mark.forced_statuses
async def test_a_status_change_the_table_lacks_is_logged_once(repo, scripted, fleet_factory, caplog) -> None:
    server = scripted({"turns": [{"say": "Done."}]})
    fleet = await fleet_factory(fleet_config(repo, server))
    await fleet.spawn(AgentConfig(name="a", task="say done", policy="never"))
    assert await fleet.wait_settled(30)
    assert ev.allowed("idle", "merged") and not ev.allowed("merged", "running") and not ev.allowed("killed", "idle")
    with caplog.at_level(logging.ERROR, logger="mc.fleet"):
        fleet.emit(ev.StatusChanged(agent="a", status="killed"))
        for _ in range(2):  # a defect: loud, once per kind
            fleet.emit(ev.StatusChanged(agent="a", status="idle"))
            fleet.emit(ev.StatusChanged(agent="a", status="killed"))
    said = [r.getMessage() for r in caplog.records if "not in events.TRANSITIONS" in r.getMessage()]
    assert said == ["status change not in events.TRANSITIONS: killed → idle (agent a)"]
    assert fleet.get("a").status == "killed"  # applied all the same: the log is what happened
