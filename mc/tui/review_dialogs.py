"""The review's dialogs: one comment on a hunk (`CommentScreen`) and the review of an agent (`ReviewScreen`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widget import Widget
from textual.widgets import Input, Label, OptionList, Select, Static
from textual.widgets.option_list import Option

from mc.agent import Agent, Comment
from mc.review import CHANGED, Hunk
from mc.tui.format import CYAN, MUTED, YELLOW, clean, diff_style
from mc.tui.screens import Dialog

if TYPE_CHECKING:
    from mc.tui.app import MissionControl

#: Lines of a hunk the comment dialog shows (the rest is counted).
PREVIEW_LINES = 14


def send_review(app: MissionControl, agent_id: str) -> None:
    """Send the agent's review (one command; its error is shown in one line)."""
    if app.monitor:
        app.notify_read_only()
        return
    agent = app.fleet.agents.get(agent_id)
    if agent is None:
        return
    if not agent.comments:
        app.notify(
            f"{agent.name} has no comments to send: {app.key_hint('comment')} comments on the selected hunk",
            severity="warning",
        )
        return
    n = len(agent.comments)
    app._command(app.fleet.send_review(agent.id), f"{agent.name}: review sent ({n} comment{'s' if n != 1 else ''})")


def hunk_text(hunk: Hunk, limit: int = PREVIEW_LINES) -> Text:
    """The hunk as the diff shows it (its first `limit` lines)."""
    t = Text(no_wrap=True, overflow="ellipsis")
    t.append(clean(hunk.header), style=CYAN)
    for line in hunk.body[:limit]:
        t.append("\n" + clean(line), style=diff_style(line))
    if len(hunk.body) > limit:
        t.append(f"\n… {len(hunk.body) - limit} more lines", style=MUTED)
    return t


class CommentScreen(Dialog[tuple[int | None, str] | None]):
    """One comment on a hunk: on the whole hunk or on one of its lines, and its text. Returns (line index in the
    hunk's body or None for the whole hunk, text), or None."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="dialog.cancel", priority=True),
        Binding("enter", "send", "Add", id="dialog.send", show=False, priority=True),
    ]

    def __init__(self, hunk: Hunk) -> None:
        super().__init__()
        self.hunk = hunk

    def compose(self) -> ComposeResult:
        hunk = self.hunk
        options: list[tuple[str, int]] = [(f"the whole hunk ({hunk.path}:{hunk.line})", -1)]
        for i, line in enumerate(hunk.body):
            options.append((clean(f"line {hunk.numbers[i]}: {line}")[:90], i))
        with Vertical(classes="dialog comment"):
            yield Label(clean(f"Comment on {hunk.path}:{hunk.line}"), classes="dialog-title")
            yield Static(hunk_text(hunk), classes="comment-hunk")
            yield Select(options, value=-1, allow_blank=False, id="comment-on")
            yield Input(placeholder="what should change here? (the agent reads it)", id="comment-text")
            yield Label(
                "enter: add to the review   tab: whole hunk or one line   escape: cancel", classes="dialog-hint"
            )

    def first_focus(self) -> Widget | None:
        return self.query_one("#comment-text", Input)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "send":  # on the list, enter is its own
            return isinstance(self.focused, Input)
        return super().check_action(action, parameters)

    def action_send(self) -> None:
        self.after_typing(self._send)

    def _send(self) -> None:
        text = self.query_one("#comment-text", Input).value.strip()
        if not text:
            self.notify("type the comment first (escape cancels)", severity="warning")
            return
        value = self.query_one("#comment-on", Select).value
        index = value if isinstance(value, int) and value >= 0 else None
        self.dismiss((index, text))

    def action_cancel(self) -> None:
        self.dismiss(None)


def comment_prompt(comment: Comment, mark: str = "") -> Text:
    t = Text(no_wrap=False)
    t.append(clean(f"{comment.path}:{comment.line}"), style=f"bold {YELLOW}")
    if mark:
        t.append(f"  {mark}", style=f"bold {CYAN}" if mark == CHANGED else f"bold {MUTED}")
    t.append("\n" + clean(comment.text))
    if comment.quote:
        first = comment.quote[0]
        more = f"  (+{len(comment.quote) - 1} lines)" if len(comment.quote) > 1 else ""
        t.append("\n  > " + clean(first)[:80] + more, style=diff_style(first) or MUTED)
    return t


class ReviewScreen(Dialog[None]):
    """The review of one agent: the comments not sent yet (d deletes the highlighted one, S sends them all) and
    the last review sent, each of its comments marked changed or unchanged after the agent's next turn."""

    BINDINGS = [
        Binding("escape,C", "close", "Close", id="review.close", priority=True),
        Binding("d,delete", "delete", "Delete comment", id="review.delete", priority=True),
        Binding("S", "send", "Send review", id="review.send", priority=True),
    ]

    def __init__(self, agent_id: str) -> None:
        super().__init__()
        self.agent_id = agent_id
        self._version = -1

    @property
    def mc(self) -> MissionControl:
        return self.app  # type: ignore[return-value]

    def agent(self) -> Agent | None:
        return self.mc.fleet.agents.get(self.agent_id)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog review"):
            yield Static(id="review-title", classes="dialog-title")
            yield OptionList(id="review-list")
            yield Label("d: delete the comment   S: send the review   escape: close", classes="dialog-hint")

    def first_focus(self) -> Widget | None:
        return self.query_one(OptionList)

    def on_mount(self) -> None:
        super().on_mount()
        self.refresh_list()
        self.set_interval(0.25, self.refresh_list)

    def refresh_list(self) -> None:
        """Show the review as the agent's events made it (again only when they changed it)."""
        agent = self.agent()
        if agent is None or agent.version == self._version:
            return
        self._version = agent.version
        options = self.query_one(OptionList)
        keep = options.highlighted
        options.clear_options()
        items: list[Option | None] = [Option(comment_prompt(c), id=c.id) for c in agent.comments]
        review = agent.review
        if review.review_id:
            if items:
                items.append(None)
            items.append(Option(Text(self._sent_line(agent), style="bold"), id="sent", disabled=True))
            for c in review.comments:
                items.append(
                    Option(comment_prompt(c, review.marks.get(c.id, "sent")), id=f"sent:{c.id}", disabled=True)
                )
        options.add_options(items)
        if agent.comments:
            options.highlighted = min(keep or 0, len(agent.comments) - 1)
        n = len(agent.comments)
        title = Text(f"Review of {agent.name}: ", style="bold")
        title.append(f"{n} comment{'s' if n != 1 else ''} to send" if n else "no comments to send")
        if not n:
            title.append(f"  ({self.mc.key_hint('comment')} in the diff comments on the selected hunk)", style=MUTED)
        self.query_one("#review-title", Static).update(title)

    @staticmethod
    def _sent_line(agent: Agent) -> str:
        review = agent.review
        n = len(review.comments)
        line = f"sent: review {review.review_id} ({n} comment{'s' if n != 1 else ''})"
        if review.marks:
            changed = sum(1 for v in review.marks.values() if v == CHANGED)
            return line + f": after the agent's turn {changed} of {n} commented hunks changed"
        return line + ": waiting for the agent's next turn"

    def action_delete(self) -> None:
        if self.mc.monitor:
            self.mc.notify_read_only()
            return
        option = self.query_one(OptionList).highlighted_option
        agent = self.agent()
        if option is None or agent is None or not any(c.id == option.id for c in agent.comments):
            self.notify("no comment to delete here", severity="warning")
            return
        self.mc._command(self.mc.fleet.remove_comment(agent.id, str(option.id)), "comment deleted")

    def action_send(self) -> None:
        agent = self.agent()
        if agent is not None and agent.comments and not self.mc.monitor:
            self.dismiss(None)
        send_review(self.mc, self.agent_id)

    def action_close(self) -> None:
        self.dismiss(None)

    @on(OptionList.OptionSelected)
    def _selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
