"""What the screen shows at 80x24, 120x40 and 160x48 is whole: what yields when space is short is decided,
and the count of agents that need a decision never does. Each test reads the screen as a person would (the
cells the terminal gets, as text)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from textual.widgets._toast import Toast

from mc import events as ev
from mc.config import AgentConfig
from mc.fleet import Fleet
from mc.tui.app import MissionControl
from mc.tui.format import STATUS_STYLE
from mc.tui.screens import MergeScreen, ZoomScreen
from tests.conftest import make_repo
from tests.tui_helpers import SCENARIO, agent, screen_text, served_monitor, settle, tui_config, until

pytestmark = pytest.mark.timeout(90)

#: (key, what it does) of every item the footer may show, as the footer writes them
FOOTER_ITEMS = {
    "⏎ Zoom", "a Approve", "d Deny", "r Redirect", "i Interrupt", "n New", "m Merge", "space Next",
    "? Help", "q Quit", "esc Back", "home Whole log", "T Checks", "] Next flag", "^p palette", "c Comment",
    "C Review",
}  # fmt: skip


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


@pytest.fixture
def server(scripted: Any) -> Any:
    return scripted(SCENARIO)


def footer_items(line: str) -> list[str]:
    """The footer's items, left to right; fails on a cut one."""
    items, rest = [], line.strip()
    while rest:
        item = next((i for i in sorted(FOOTER_ITEMS, key=len, reverse=True) if rest.startswith(i)), None)
        assert item is not None, f"a cut or unknown item at {rest!r} in the footer {line!r}"
        items.append(item)
        rest = rest[len(item) :].lstrip(" ▏│")
    return items


@pytest.mark.forced_statuses
async def test_the_summary_keeps_the_count_of_agents_needing_you_when_many_states_show(repo: Path, server: Any) -> None:
    names = ["quiet", "runner", "writer", "broken", "lister", "q2", "q3", "q4"]
    agents = [agent(n, model="quiet" if n.startswith("q") else n, policy="writes") for n in names]
    app = MissionControl(Fleet(tui_config(repo, server, agents)), spawn_configured=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        for name, status in (("quiet", "running"), ("q2", "interrupted"), ("q3", "killed"), ("q4", "merged")):
            app.fleet.emit(ev.StatusChanged(agent=name, status=status))
        await pilot.pause(0.5)
        need = sum(1 for a in app.fleet.agents.values() if a.pending)
        assert need == 3
        summary = screen_text(app)[1]
        assert f"{need} need you" in summary, summary
        for status in ("running", "waiting", "failed", "interrupted", "killed", "merged"):
            assert STATUS_STYLE[status][0] in summary, (status, summary)  # its glyph at least
        app.fleet.emit(ev.StatusChanged(agent="quiet", status="idle"))


@pytest.mark.parametrize("size", [(80, 24), (120, 40), (160, 48)])
async def test_the_footer_shows_whole_items_and_always_help_and_quit(
    repo: Path, server: Any, size: tuple[int, int]
) -> None:
    names = ["quiet", "runner", "writer", "lister", "broken"]
    app = MissionControl(Fleet(tui_config(repo, server, [agent(n) for n in names])), spawn_configured=True)
    async with app.run_test(size=size) as pilot:
        await settle(pilot, app)
        await pilot.pause(0.3)
        fleet = footer_items(screen_text(app)[-1])
        assert {"? Help", "q Quit", "space Next", "a Approve"} <= set(fleet), fleet
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ZoomScreen), what="the zoom")
        await pilot.pause(0.3)
        zoom = footer_items(screen_text(app)[-1])
        assert {"esc Back", "? Help", "q Quit", "space Next", "a Approve"} <= set(zoom), zoom


async def test_the_merge_dialog_keeps_the_counts_together(repo: Path, server: Any) -> None:
    long = AgentConfig(name="rework-helpers", task="Write notes.", model="writer", policy="never")
    app = MissionControl(Fleet(tui_config(repo, server, [long])), spawn_configured=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        await until(pilot, lambda: app.fleet.agents[long.name].files_changed == 1, what="the diff")
        await pilot.press("m")
        await until(pilot, lambda: isinstance(app.screen, MergeScreen), what="the merge dialog")
        await pilot.pause(0.3)
        lines = screen_text(app)
        counts = [line for line in lines if "+2" in line]
        assert counts and all("-0" in line for line in counts), lines
        assert any("Merge rework-helpers" in line for line in lines), lines


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
async def test_the_monitor_header_fits(repo: Path, server: Any, size: tuple[int, int]) -> None:
    app = await served_monitor(repo, server, ["quiet"])
    async with app.run_test(size=size) as pilot:
        await until(pilot, lambda: app.opened and app.monitor and bool(app.fleet.agents), what="the monitor")
        await pilot.pause(0.3)
        top = screen_text(app)[0]
        assert "MONITOR" in top and top.count("read-only") == 1 and not top.endswith("…"), top
        assert "decide in another window" in top or "decisions are taken in" in top, top
        if size[0] >= 160:
            assert "decisions are taken in any window opened without --monitor" in top, top


@pytest.mark.parametrize(
    ("size", "names"),
    [
        ((120, 40), ["runner", "writer", "quiet", "lister", "broken"]),  # 3 x 2 panes of 40 columns
        ((80, 24), ["runner", "writer", "broken"]),  # 2 x 2 panes of 9 rows
    ],
)
async def test_a_key_and_its_word_stay_on_one_line(
    repo: Path, server: Any, size: tuple[int, int], names: list[str]
) -> None:
    cfg = tui_config(repo, server, [agent(n, policy="never" if n == "writer" else "commands") for n in names])
    app = MissionControl(Fleet(cfg), spawn_configured=True)
    async with app.run_test(size=size) as pilot:
        await settle(pilot, app)
        await until(pilot, lambda: app.fleet.agents["writer"].files_changed == 1, what="the writer's diff")
        await pilot.pause(0.4)
        lines = screen_text(app)
        # the rows of the approval boxes and notices, pane by pane (each starts with the box's bar)
        rows = [cell.strip() for line in lines for cell in re.split("[┃│]", line) if cell.strip().startswith("█")]
        text = "\n".join(lines)
        for row in rows:
            assert not re.search(r"(^|\s)\S$", row), f"a key without its word at the end of {row!r}:\n{text}"
        for hint in ("a approve", "A all like it", "d deny", "r redirect", "enter review", "m merge", "R resume"):
            assert any(hint in row for row in rows), f"{hint!r} is split, cut or missing:\n{text}"


async def test_a_toast_covers_the_text_under_it_to_the_edge(repo: Path, server: Any) -> None:
    app = MissionControl(Fleet(tui_config(repo, server, [agent("quiet")])), spawn_configured=True)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await settle(pilot, app)
        await pilot.press("a")  # nothing pending: a notice
        await until(pilot, lambda: bool(app.screen.query(Toast)), what="the toast")
        await pilot.pause(0.3)
        toast = app.screen.query_one(Toast)
        assert toast.region.right == 80, toast.region


async def test_an_agent_that_never_reported_usage_shows_no_token_count(repo: Path, server: Any) -> None:
    echo = AgentConfig(name="echoer", task="hello", runner="command", command="echo {task}")
    app = MissionControl(Fleet(tui_config(repo, server, [echo, agent("quiet")])), spawn_configured=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, app)
        await pilot.pause(0.3)
        assert not app.fleet.agents["echoer"].usage_reported
        lines = screen_text(app)
        cells = [cell.strip() for line in lines for cell in re.split("[┃│]", line)]
        echo_head = next(cell for cell in cells if cell.endswith(" command"))
        assert " — tok " in echo_head and " 0 tok" not in echo_head, lines
        quiet_head = next(cell for cell in cells if cell.endswith(" builtin"))
        assert " 310 tok " in quiet_head, lines
