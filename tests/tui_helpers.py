"""Shared pieces of the TUI tests: a small deterministic scenario, an app factory and wait helpers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mc.config import AgentConfig, Config

#: Deterministic agents for the TUI tests (no timings in their output).
SCENARIO: dict[str, Any] = {
    "tokens_per_second": 0,
    "first_byte_delay": 0,
    "agents": [
        {
            "name": "runner",
            "turns": [
                {"say": "I will run the check.", "tool": "shell", "args": {"command": "echo hello-from-tool"}},
                {
                    "choice": "after",
                    "when_tool_output_contains": "denied",
                    "say": "Understood, I will not run it.",
                },
                {"choice": "after", "say": "The check printed {output_last_line}."},
                {"say": "Following your new instruction now."},
            ],
        },
        {
            "name": "writer",
            "turns": [
                {
                    "say": "I will write the notes.",
                    "tool": "write_file",
                    "args": {"path": "notes.txt", "content": "first line\nsecond line\n"},
                },
                {"say": "The notes are written."},
            ],
        },
        {
            "name": "sleeper",
            "turns": [
                {"say": "Sleeping a while.", "tool": "shell", "args": {"command": "sleep 31.25"}},
                {"say": "Awake."},
            ],
        },
        {
            "name": "chatty",
            "turns": [
                {"say": "Counting.", "tool": "shell", "args": {"command": "seq 1 7000"}},
                {"say": "Counted."},
            ],
        },
        {
            "name": "broken",
            "faults": [{"kind": "500", "message": "the model is on fire"}],
            "turns": [],
        },
        {
            "name": "quiet",
            "turns": [{"say": "Nothing to do here."}],
        },
        {
            "name": "lister",
            "turns": [
                {"say": "Listing.", "tool": "shell", "args": {"command": "seq 1 300"}},
                {"say": "Listed."},
            ],
        },
    ],
}


def agent(name: str, model: str | None = None, policy: str = "commands", task: str = "") -> AgentConfig:
    return AgentConfig(name=name, task=task or f"Task of {name}.", model=model or name, policy=policy)


def tui_config(repo: Path, server: Any, agents: list[AgentConfig], **ui: Any) -> Config:
    cfg = Config()
    cfg.repo.path = str(repo)
    cfg.repo.worktree_dir = str(repo.parent / "worktrees")
    cfg.model.base_url = server.base_url
    cfg.model.api_key_env = ""
    cfg.model.max_retries = 1
    cfg.model.retry_backoff = 0.05
    cfg.model.timeout = 10.0
    cfg.agents = agents
    for key, value in ui.items():
        setattr(cfg.ui, key, value)
    return cfg


async def until(pilot: Any, predicate: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    """Let the app run until predicate() holds (fails the test after timeout)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await pilot.pause(0.05)


async def settle(pilot: Any, app: Any, timeout: float = 20.0) -> None:
    """Wait until the fleet is open, every agent has settled, and the panes have drained."""
    await until(pilot, lambda: app.opened, timeout, "the fleet to open")
    await until(
        pilot,
        lambda: len(app.fleet.agents) >= len(app.config.agents) if app.spawn_on_open else True,
        timeout,
        "the agents to spawn",
    )
    assert await app.fleet.wait_settled(timeout=timeout)
    await asyncio.sleep(0.3)
    await pilot.pause(0.3)


def pane_text(app: Any, agent_id: str) -> str:
    from mc.tui.screens import FleetScreen

    screen = app.fleet_screen()
    assert isinstance(screen, FleetScreen)
    return screen.panes[agent_id].log_view.plain_text()


def screen_cells(app: Any) -> list[list[tuple[str, Any]]]:
    """What the terminal gets: every cell of the screen (dialogs over their background) as (character, style)."""
    update = app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    rows = []
    for chops in update.strips:
        row = []
        for strip in chops:
            for segment in strip:
                row.extend((ch, segment.style) for ch in segment.text)
        rows.append(row)
    return rows


def screen_text(app: Any) -> list[str]:
    """The screen as lines of text, the way a person reads it off the terminal."""
    return ["".join(ch for ch, _ in row).rstrip() for row in screen_cells(app)]


def burst(app: Any, keys: list[str]) -> None:
    """Type `keys` the way typeahead or a paste arrives over SSH: all queued at once, before the app has
    handled the first (Pilot's press waits for the app after each key). "paste:TEXT" is a bracketed paste."""
    from textual import events
    from textual.keys import _character_to_key

    for key in keys:
        if key.startswith("paste:"):  # a bracketed paste: one event with all its text
            paste = events.Paste(key.removeprefix("paste:"))
            paste.set_sender(app)
            app._driver.send_message(paste)
            continue
        char: str | None = None
        if len(key) == 1:  # a character: its key name ("minus" for "-") and the character itself
            char = key
            key = key if key.isalnum() else _character_to_key(key)
        elif key == "space":
            char = " "
        event = events.Key(key, char)
        event.set_sender(app)
        app._driver.send_message(event)


async def served_monitor(repo: Path, server: Any, names: list[str], **app_args: Any) -> Any:
    """A read-only window on a real fleet server of `repo` (started here) whose agents `names` (scripted models of
    the same names, never asking) have settled: what `missionctl --monitor` opens."""
    import subprocess
    import sys

    from mc.client import FleetClient, RemoteFleet, ensure_server
    from mc.config import load_config
    from mc.tui.app import MissionControl
    from tests.test_server import write_config

    write_config(repo, server)
    config = repo / "missionctl.toml"
    sock = await ensure_server(repo / ".mc", ["--config", str(config)])
    MISSIONCTL, NEVER = [sys.executable, "-m", "mc"], ["--policy", "never", "--config"]
    for name in names:
        done = subprocess.run(
            [*MISSIONCTL, "spawn", "--name", name, "--task", f"Task of {name}.", "--model", name, *NEVER, str(config)],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    client = FleetClient(sock, reconnect=False)
    await client.connect(follow=False)
    try:
        deadline = time.monotonic() + 30
        while not all(a.status in ("idle", "failed") for a in client.agents.values()):
            assert time.monotonic() < deadline, "the served agents did not settle"
            await asyncio.sleep(0.1)
            await client.connect(follow=False)
    finally:
        await client.close()
    return MissionControl(RemoteFleet(load_config(config), sock, readonly=True), monitor=True, **app_args)
