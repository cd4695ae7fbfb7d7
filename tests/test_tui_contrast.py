"""Every character on screen is readable: its colour against its background, in truecolor and in 256 colours.

The app runs on a real fleet; each agent status is shown in turn on a selected and an unselected row, in the
summary, in a pane header and in the zoom, with approvals pending and notices showing. Each cell that the
terminal would get is measured (WCAG contrast ratio), after the colours are brought down to the 256-colour
palette the way a 256-colour terminal gets them. Borders and bars are decoration and are not text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rich.color import Color, ColorSystem
from rich.style import Style

from mc import events as ev
from mc.fleet import Fleet
from mc.tui.app import MissionControl
from mc.tui.format import STATUS_STYLE
from mc.tui.screens import ZoomScreen
from tests.conftest import make_repo
from tests.tui_helpers import SCENARIO, agent, screen_cells, served_monitor, settle, tui_config, until

pytestmark = pytest.mark.timeout(120)

#: WCAG AA for normal text.
MIN_CONTRAST = 4.5


def luminance(rgb: tuple[int, int, int]) -> float:
    def channel(c: int) -> float:
        v = c / 255
        return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4

    r, g, b = rgb
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def contrast(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_contrast_ratio_is_the_wcag_one() -> None:
    assert contrast((0, 0, 0), (255, 255, 255)) == pytest.approx(21.0)
    assert contrast((28, 28, 28), (58, 58, 58)) < 1.6  # colour 234 on 237: the unreadable selected badge
    assert contrast((118, 118, 118), (255, 255, 255)) == pytest.approx(4.54, abs=0.01)


def is_decoration(ch: str) -> bool:
    code = ord(ch)
    return ch.isspace() or 0x2500 <= code <= 0x259F or ch in "▔▁▂▃▄▅▆▇"


def colours(style: Style, eight_bit: bool) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    fg, bg = style.color, style.bgcolor
    assert fg is not None and bg is not None, style
    if style.reverse:
        fg, bg = bg, fg

    def rgb(colour: Color) -> tuple[int, int, int]:
        if eight_bit:
            colour = colour.downgrade(ColorSystem.EIGHT_BIT)
        return tuple(colour.get_truecolor())  # type: ignore[return-value]

    return rgb(fg), rgb(bg)


class Unreadable:
    """What could not be read, once per colour pair and text (with the first place it was seen)."""

    def __init__(self) -> None:
        self.found: dict[tuple[str, str], str] = {}

    def check(self, app: MissionControl, scene: str) -> None:
        for y, row in enumerate(screen_cells(app)):
            line = "".join(ch for ch, _ in row).rstrip()
            runs: dict[tuple[str, str], list[str]] = {}
            for ch, style in row:
                if is_decoration(ch) or style is None:
                    continue
                for eight_bit in (False, True):
                    fg, bg = colours(style, eight_bit)
                    ratio = contrast(fg, bg)
                    if ratio < MIN_CONTRAST:
                        mode = "256 colours" if eight_bit else "truecolor"
                        runs.setdefault((mode, f"{fg} on {bg} = {ratio:.2f}"), []).append(ch)
            for (mode, what), chars in runs.items():
                key = ("".join(chars), what)
                self.found.setdefault(key, f"{scene}, row {y} ({mode}): {key[0]!r} is {what} in {line!r}")

    def __bool__(self) -> bool:
        return bool(self.found)

    def __str__(self) -> str:
        return "\n".join(self.found.values())


async def show_every_status(
    pilot: Any, app: MissionControl, problems: Unreadable, scene: str, moving: str, other: str
) -> None:
    """Put `moving` through every status, selected and not, and collect what cannot be read."""
    for status in STATUS_STYLE:
        app.fleet.emit(ev.StatusChanged(agent=moving, status=status, reason="shown for the test"))
        for selected in (moving, other):
            app.select(selected)
            await pilot.pause(0.35)
            problems.check(app, f"{scene}: {moving} {status}, {selected} selected")
    app.fleet.emit(ev.StatusChanged(agent=moving, status="idle"))


@pytest.fixture
def cfg(tmp_path: Path, scripted: Any) -> Any:
    server = scripted(SCENARIO)
    repo = make_repo(tmp_path / "repo")
    # two approvals pending (runner, lister), a failure (broken), work to review (writer), one to move (quiet)
    names = ["quiet", "runner", "writer", "broken", "lister"]
    return tui_config(repo, server, [agent(n, policy="never" if n == "writer" else "commands") for n in names])


@pytest.mark.forced_statuses
@pytest.mark.parametrize("size", [(80, 24), (120, 40), (160, 48)])
async def test_every_badge_is_readable_on_every_row(cfg: Any, size: tuple[int, int]) -> None:
    app = MissionControl(Fleet(cfg), spawn_configured=True, clock=lambda: 0.0)
    async with app.run_test(size=size) as pilot:
        await settle(pilot, app)
        await until(pilot, lambda: app.fleet.agents["writer"].files_changed == 1, what="the writer's diff")
        problems = Unreadable()
        await show_every_status(pilot, app, problems, f"fleet {size}", "quiet", "runner")
        for name in ("runner", "writer", "broken"):
            app.select(name)
            await pilot.pause(0.35)
            problems.check(app, f"fleet {size}: {name} selected")
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, ZoomScreen), what="the zoom")
            await pilot.pause(0.35)
            problems.check(app, f"zoom {size}: {name}")
            await pilot.press("escape")
        assert not problems, str(problems)


async def test_the_monitor_header_is_readable(tmp_path: Path, scripted: Any) -> None:
    app = await served_monitor(make_repo(tmp_path / "served"), scripted(SCENARIO), ["quiet"], clock=lambda: 0.0)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.opened and app.monitor and bool(app.fleet.agents), what="the monitor")
        await pilot.pause(0.4)
        problems = Unreadable()
        problems.check(app, "monitor")
        assert not problems, str(problems)
