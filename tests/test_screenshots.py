"""The screenshots in README: each SVG keeps its spaces for every renderer (librsvg drops the spaces at the
edges of a text run unless the SVG says `xml:space="preserve"`; the PNGs then showed glued words such as
"? waiting0:01" and "aapprove"), and the script that makes them applies that to what the real app exports."""

from __future__ import annotations

import importlib.util
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from textual.app import App, ComposeResult
from textual.widgets import Static

SHOTS = Path(__file__).resolve().parent.parent / "screenshots"
PRESERVE = "{http://www.w3.org/XML/1998/namespace}space"


def load_script() -> Any:  # screenshots/ is not a package: load the script as README runs it
    spec = importlib.util.spec_from_file_location("make_screenshots", SHOTS / "make_screenshots.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_screenshot_in_the_readme_keeps_its_spaces() -> None:
    readme = (SHOTS.parent / "README.md").read_text()
    shown = re.findall(r"screenshots/([\w-]+\.(?:png|svg))", readme)
    assert len(shown) >= 5 and all((SHOTS / name).exists() for name in shown), shown
    for svg in sorted(SHOTS.glob("*.svg")):
        root = ET.parse(svg).getroot()
        assert root.get(PRESERVE) == "preserve", svg.name
        assert (SHOTS / f"{svg.stem}.png").exists(), f"{svg.stem}.png: run screenshots/make_screenshots.py"


async def test_the_script_keeps_the_spaces_of_what_the_app_exports() -> None:
    class Words(App[None]):
        def compose(self) -> ComposeResult:
            yield Static("[reverse]a[/] approve  [bold]? waiting[/] 0:01")

    app = Words()
    async with app.run_test(size=(40, 3)):
        exported = app.export_screenshot(title="words")
    kept = load_script().keep_spaces(exported)
    root = ET.fromstring(kept)
    assert ET.fromstring(exported).get(PRESERVE) is None  # what Textual writes: the renderer decides
    assert root.get(PRESERVE) == "preserve"
    runs = ["".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert any(run.startswith(("\xa0", " ")) for run in runs), runs  # a run that starts with the space kept
    assert load_script().keep_spaces(kept) == kept
