"""Typing is never lost: keys typed in one burst right after the key that opens a dialog (typeahead, a paste
over SSH) land in the fields they were meant for, in order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Input

from mc.fleet import Fleet
from mc.tui.app import MissionControl
from mc.tui.screens import NewAgentScreen, TextPrompt
from tests.conftest import make_repo
from tests.tui_helpers import SCENARIO, agent, burst, settle, tui_config, until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def app(tmp_path: Path, scripted: Any) -> MissionControl:
    server = scripted(SCENARIO)
    repo = make_repo(tmp_path / "repo")
    cfg = tui_config(repo, server, [agent("quiet")])
    return MissionControl(Fleet(cfg), spawn_configured=True)


def field(app: MissionControl, wid: str) -> str:
    return app.screen.query_one(f"#{wid}", Input).value


async def test_new_agent_dialog_keeps_a_burst_of_typing_in_its_fields(app: MissionControl) -> None:
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        burst(app, ["n", *"race1", "tab", *"my task text"])
        await until(pilot, lambda: isinstance(app.screen, NewAgentScreen), what="the dialog")
        await until(pilot, lambda: field(app, "task") == "my task text", what=f"the task ({field(app, 'task')!r})")
        assert field(app, "name") == "race1"
        assert "race1" not in app.fleet.agents and not app.fleet.agents["quiet"].pending


async def test_keys_typed_right_after_n_reach_the_name_field(app: MissionControl) -> None:
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        burst(app, ["n", *"reader-2"])
        await until(pilot, lambda: isinstance(app.screen, NewAgentScreen), what="the dialog")
        await until(pilot, lambda: field(app, "name") == "reader-2", what=f"the name ({field(app, 'name')!r})")


async def test_text_typed_and_pasted_right_after_r_is_the_new_instruction_in_order(app: MissionControl) -> None:
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        burst(app, ["r", *"use ", "paste:the helper from app/text.py", "enter"])
        quiet = app.fleet.agents["quiet"]
        await until(
            pilot,
            lambda: any("redirect: use the helper from app/text.py" in text for _, text in quiet.log.lines),
            what="the pasted redirect in the log",
        )


async def test_a_redirect_typed_in_one_burst_is_sent_whole(app: MissionControl) -> None:
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        burst(app, ["r", *"add tests", "enter"])
        quiet = app.fleet.agents["quiet"]
        await until(
            pilot,
            lambda: any("redirect: add tests" in text for _, text in quiet.log.lines),
            what="the redirect in the log",
        )
        assert not isinstance(app.screen, TextPrompt)


async def test_a_whole_new_agent_typed_in_one_burst_starts(app: MissionControl) -> None:
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        # name, tab, tab past the runner list, the model, back to the task, the task, enter
        keys = ["n", *"second", "tab", "tab", "tab", *"quiet", "shift+tab", "shift+tab", *"say it twice", "enter"]
        burst(app, keys)
        await until(pilot, lambda: "second" in app.fleet.agents, what="the new agent")
        second = app.fleet.agents["second"]
        assert (second.task, second.model) == ("say it twice", "quiet")


async def test_keys_act_in_the_order_they_were_typed(tmp_path: Path, scripted: Any) -> None:
    server = scripted(SCENARIO)
    repo = make_repo(tmp_path / "repo")
    cfg = tui_config(repo, server, [agent("runner"), agent("lister")])
    app = MissionControl(Fleet(cfg), spawn_configured=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        app.select("runner")
        await pilot.pause(0.2)
        burst(app, ["2", "a"])  # select the second agent, approve it
        lister = app.fleet.agents["lister"]
        await until(pilot, lambda: lister.status == "idle", what="the second agent to be approved")
        assert app.fleet.agents["runner"].pending


async def test_escape_in_an_open_list_closes_the_list_not_the_form(app: MissionControl) -> None:
    from textual.widgets import Select

    async with app.run_test(size=(100, 40)) as pilot:
        await settle(pilot, app)
        await pilot.press("n", *"keep-me", "tab", "tab", "enter")
        await until(pilot, lambda: app.screen.query_one("#runner", Select).expanded, what="the runner list")
        await pilot.press("escape")
        await pilot.pause(0.2)
        assert isinstance(app.screen, NewAgentScreen) and field(app, "name") == "keep-me"
        assert not app.screen.query_one("#runner", Select).expanded
