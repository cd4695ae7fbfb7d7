"""Review comments through the real fleet server process: made over its socket, kept through a kill -9 and a
stop of the server, sent as one instruction, and marked changed / unchanged in every client after the turn."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from mc import review
from mc.client import ClientError, RemoteFleet, ensure_server, socket_of
from mc.config import load_config
from tests.test_review import SCENARIO, review_repo, user_texts
from tests.test_server import missionctl, server_pids, write_config

pytestmark = pytest.mark.timeout(120)


async def until(predicate: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
def served(tmp_path: Path, scripted: Any) -> Any:
    server = scripted(SCENARIO)
    repo = review_repo(tmp_path)
    write_config(repo, server)
    yield repo, server
    for pid in server_pids(repo):
        os.kill(pid, signal.SIGKILL)


async def attach(repo: Path) -> RemoteFleet:
    cfg = load_config(repo / "missionctl.toml")
    await ensure_server(repo / ".mc", ["--config", str(repo / "missionctl.toml")])
    fleet = RemoteFleet(cfg, socket_of(repo / ".mc"))
    await fleet.open()
    return fleet


async def test_comments_survive_a_server_restart_and_the_review_marks_reach_every_client(served: Any) -> None:
    repo, model = served
    spawned = missionctl(
        repo, "spawn", "--name", "reviewed", "--task", "change values", "--model", "reviewed", "--policy", "never"
    )
    assert spawned.returncode == 0, spawned.stderr
    fleet = await attach(repo)
    try:
        await until(lambda: fleet.get("reviewed").status == "idle", what="the first turns")
        with pytest.raises(ClientError, match="no comments to send") as refused:
            await fleet.send_review("reviewed")
        assert refused.value.status == 400
        diff = await fleet.refresh_diff("reviewed")
        first, second = next(f for f in review.parse(diff.text) if f.path == "app/values.py").hunks
        for hunk, text in ((first, "Keep 300."), (second, "v25 must stay 25.")):
            line, quote = review.anchor(hunk)
            await fleet.add_comment("reviewed", hunk.path, line, text, quote=quote, hunk=hunk.body, header=hunk.header)
        await until(lambda: len(fleet.get("reviewed").comments) == 2, what="the comments to come back as events")
        [old] = server_pids(repo)
        os.kill(old, signal.SIGKILL)  # a crash: the comments were on disk before any client saw them
    finally:
        await fleet.close()

    fleet = await attach(repo)
    other = await attach(repo)
    try:
        assert server_pids(repo) != [old]
        kept = fleet.get("reviewed").comments
        assert [(c.id, c.path, c.line, c.text) for c in kept] == [
            ("c1", "app/values.py", 3, "Keep 300."),
            ("c2", "app/values.py", 25, "v25 must stay 25."),
        ]
        assert kept[0].quote == ("-v03 = 3", "+v03 = 300")
        text = await fleet.send_review("reviewed")
        assert "app/values.py:25\n> -v25 = 25\n> +v25 = 2500\nv25 must stay 25." in text
        await until(lambda: bool(other.get("reviewed").review.marks), what="the marks to reach the other client")
        assert other.get("reviewed").review.marks == {"c1": "unchanged", "c2": "changed"}
        assert user_texts(model, "reviewed")[-1] == text
    finally:
        await fleet.close()
        await other.close()
    stopped = missionctl(repo, "stop")
    assert stopped.returncode == 0, stopped.stderr
    await until(lambda: not server_pids(repo), what="the server to end")

    fleet = await attach(repo)
    try:
        agent = fleet.get("reviewed")
        assert agent.review.marks == {"c1": "unchanged", "c2": "changed"}
        assert not agent.comments
    finally:
        await fleet.close()
    assert missionctl(repo, "stop").returncode == 0
