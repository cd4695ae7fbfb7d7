"""Drive the real app on the demo fleet and save SVG screenshots: fleet view, zoom, a pending approval, the
checks view, a flagged merge (its dialog and the question it adds), help.

    python screenshots/make_screenshots.py   # writes screenshots/{fleet,approval,zoom,checks,merge,merge-flags,help}.svg

and a PNG beside each SVG where `rsvg-convert` (Debian: librsvg2-bin) is installed. The SVGs declare
`xml:space="preserve"`: without it librsvg drops the spaces that start or end each run of text (Rich writes
one run per colour), and the PNGs showed glued words ("? waiting0:01", "aapprove") and diff context lines
without their leading space.

The demo runs against the built-in scripted model server (no key, no network) in a throwaway folder.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from pathlib import Path

from mc.demo import start_demo
from mc.fleet import Fleet
from mc.tui.app import MissionControl

HERE = Path(__file__).resolve().parent


def keep_spaces(svg: str) -> str:
    """The SVG with its spaces kept by every renderer (librsvg strips them at the edges of each text run)."""
    return svg if 'xml:space="preserve"' in svg else svg.replace("<svg ", '<svg xml:space="preserve" ', 1)


async def _shoot(app: MissionControl, name: str) -> None:
    app.clear_notifications()
    (HERE / f"{name}.svg").write_text(keep_spaces(app.export_screenshot(title=name)))
    print(f"wrote {HERE / name}.svg")
    converter = shutil.which("rsvg-convert")
    if converter:
        subprocess.run([converter, "-o", str(HERE / f"{name}.png"), str(HERE / f"{name}.svg")], check=True)
        print(f"wrote {HERE / name}.png")


async def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="missionctl-shots-"))
    demo = start_demo(folder)
    try:
        app = MissionControl(Fleet(demo.config), spawn_configured=True, demo=demo)
        async with app.run_test(size=(132, 40)) as pilot:
            while not app.opened:
                await pilot.pause(0.1)
            while len(app.fleet.agents) < len(demo.config.agents):
                await pilot.pause(0.1)
            # let the demo play until every agent has settled (demo-stream takes a few seconds)
            await app.fleet.wait_settled(timeout=60)
            await pilot.pause(0.6)
            waiting = app.fleet.next_needing_decision()
            if waiting is not None:
                app.select(waiting.id)
                await pilot.pause(0.3)
            await _shoot(app, "fleet")
            if waiting is not None:
                await pilot.press("enter")
                await pilot.pause(0.5)
                await _shoot(app, "approval")
                await pilot.press("escape")
            app.select("demo-refactor")
            await pilot.press("enter")
            await pilot.pause(0.6)
            await _shoot(app, "zoom")
            await pilot.press("escape")
            # the checks view of the agent whose rename broke the tests
            rename = app.fleet.get("demo-rename")
            while rename.check.state in ("none", "running"):
                await pilot.pause(0.1)
            app.select(rename.id)
            await pilot.press("enter")
            await pilot.press("T")
            await pilot.pause(0.8)
            await _shoot(app, "checks")
            await pilot.press("escape")
            # a flagged merge: the dialog names the flags, and choosing a mode asks once more
            docs = app.fleet.get("demo-docs")
            while not docs.flags:
                await pilot.pause(0.1)
            app.select(docs.id)
            await pilot.press("m")
            await pilot.pause(0.8)
            await _shoot(app, "merge")
            await pilot.press("s")
            await pilot.pause(0.5)
            await _shoot(app, "merge-flags")
            await pilot.press("n")
            await pilot.pause(0.3)
            app.compare("demo-pick", "demo-pick-1")  # best of 3: the copies side by side, to pick one
            await pilot.pause(0.6)
            await _shoot(app, "compare")
            await pilot.press("escape")
            await pilot.press("question_mark")
            await pilot.pause(0.4)
            await _shoot(app, "help")
            await pilot.press("escape")
            await app.close_fleet()
    finally:
        demo.stop(remove=False)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
