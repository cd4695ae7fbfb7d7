"""The bare-Textual floor: a plain ListView of 32 items and a line that names the highlighted one.

    python bench/listview_floor.py

Run by bench/stream.py in its own tmux beside the fleet, to time Down/Up as it times j/k on mission control
(the same poller, the same machine load): what any Textual app answers in here, the least mc can.
"""

from __future__ import annotations

from textual.app import App, ComposeResult
from textual.widgets import Label, ListItem, ListView, Static


class Floor(App[None]):
    BINDINGS = [("q", "quit", "Quit")]

    def compose(self) -> ComposeResult:
        yield Static("selected: 0", id="sel")
        yield ListView(*[ListItem(Label(f"item {i:02d}")) for i in range(32)])

    def on_list_view_highlighted(self, event: ListView.Highlighted) -> None:
        view = self.query_one(ListView)
        self.query_one("#sel", Static).update(f"selected: {view.index}")


if __name__ == "__main__":
    Floor().run()
