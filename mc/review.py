"""Review comments on a diff: its files and hunks, where a comment is anchored, the instruction a review
becomes, and whether a commented hunk changed in a later diff.

Pure text, no I/O: the TUI uses it to move through the diff it shows and to anchor what the engineer writes;
the Fleet uses it to write the review the agent receives and to mark each comment changed or unchanged after
the agent's next turn. The diff text is split with `str.splitlines`, as the views show it, so that the index
of a line here is its index on screen.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

_HUNK = re.compile(r"@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
#: Quoted lines of one comment at most (the rest is counted).
QUOTE_LINES = 12
CHANGED = "changed"
UNCHANGED = "unchanged"


@dataclass(frozen=True)
class Hunk:
    """One hunk of a file's part of a diff."""

    path: str
    header: str
    """Its `@@ -a,b +c,d @@ …` line."""
    start: int
    """The index of the header among the diff text's lines."""
    body: tuple[str, ...]
    """The lines after the header (` ` context, `+` added, `-` removed)."""
    numbers: tuple[int, ...]
    """The new file's line of each body line; for a removed line, the line of the new file where it was."""

    @property
    def end(self) -> int:
        """The index after its last line among the diff text's lines."""
        return self.start + 1 + len(self.body)

    @property
    def changed(self) -> list[int]:
        """The indexes (in `body`) of its added and removed lines."""
        return [i for i, line in enumerate(self.body) if line[:1] in ("+", "-")]

    @property
    def line(self) -> int:
        """The new file's line of its first change (its first line when it has none)."""
        changed = self.changed
        index = changed[0] if changed else 0
        return self.numbers[index] if self.numbers else 1


@dataclass(frozen=True)
class DiffFile:
    """One file's part of a diff."""

    path: str
    start: int
    """The index of its `diff --git` line."""
    hunks: tuple[Hunk, ...]


def _unquote(name: str) -> str:
    """A path as git prints it (C-quoted, with octal bytes, when it holds special characters)."""
    if len(name) >= 2 and name.startswith('"') and name.endswith('"'):
        raw, _ = codecs.escape_decode(name[1:-1].encode("utf-8", "surrogateescape"))
        return raw.decode("utf-8", "replace")
    return name


def _side(name: str) -> str:
    name = _unquote(name.strip())
    return name[2:] if name[:2] in ("a/", "b/") else name


def parse(text: str) -> list[DiffFile]:
    """The files of a unified diff (as `git diff` writes it) and their hunks."""
    lines = text.splitlines()
    files: list[DiffFile] = []
    i = 0
    while i < len(lines):
        if not lines[i].startswith("diff --git "):
            i += 1
            continue
        start = i
        rest = lines[i][len("diff --git ") :]
        path = _side(rest.rsplit(" b/", 1)[-1]) if " b/" in rest else _side(rest.rsplit(" ", 1)[-1])
        old = new = ""
        i += 1
        while i < len(lines) and not lines[i].startswith(("@@", "diff --git ")):
            line = lines[i]
            if line.startswith("+++ "):
                new = "" if line[4:].strip() == "/dev/null" else _side(line[4:])
            elif line.startswith("--- "):
                old = "" if line[4:].strip() == "/dev/null" else _side(line[4:])
            elif line.startswith("rename to "):
                new = new or _unquote(line[len("rename to ") :])
            i += 1
        path = new or old or path
        hunks: list[Hunk] = []
        while i < len(lines) and lines[i].startswith("@@"):
            header = lines[i]
            m = _HUNK.match(header)
            number = int(m.group(3)) if m else 1
            number = max(number, 1)
            i += 1
            body: list[str] = []
            numbers: list[int] = []
            while i < len(lines) and lines[i][:1] in (" ", "+", "-", "\\", ""):
                line = lines[i]
                if line.startswith(("diff --git ", "--- ", "+++ ")) and _ends_hunk(body, header):
                    break
                body.append(line)
                numbers.append(number)
                if line[:1] in (" ", "+", ""):
                    number += 1
                i += 1
            hunks.append(Hunk(path, header, i - len(body) - 1, tuple(body), tuple(numbers)))
        files.append(DiffFile(path, start, tuple(hunks)))
    return files


def _ends_hunk(body: list[str], header: str) -> bool:
    """True when the hunk under `header` already holds all the lines its header counts."""
    m = _HUNK.match(header)
    if not m:
        return True
    old = int(m.group(2)) if m.group(2) is not None else 1
    new = int(m.group(4)) if m.group(4) is not None else 1
    seen_old = sum(1 for line in body if line[:1] in (" ", "-", ""))
    seen_new = sum(1 for line in body if line[:1] in (" ", "+", ""))
    return seen_old >= old and seen_new >= new


def hunks(text: str) -> list[Hunk]:
    """Every hunk of a diff, in order."""
    return [h for f in parse(text) for h in f.hunks]


def anchor(hunk: Hunk, index: int | None = None) -> tuple[int, tuple[str, ...]]:
    """Where a comment on the hunk (or on its body line `index`) is anchored: the new file's line, and the
    lines it quotes (the hunk's changes, or that one line)."""
    if index is not None and 0 <= index < len(hunk.body):
        return hunk.numbers[index], (hunk.body[index],)
    changed = hunk.changed
    quote = tuple(hunk.body[i] for i in changed) if changed else hunk.body
    return hunk.line, quote


class CommentLike(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def line(self) -> int: ...
    @property
    def text(self) -> str: ...
    @property
    def quote(self) -> tuple[str, ...]: ...
    @property
    def hunk(self) -> tuple[str, ...]: ...


def review_text(comments: Sequence[CommentLike]) -> str:
    """The instruction a review becomes: every comment under its `path:line` and the lines it quotes, as a
    pull-request review reads."""
    n = len(comments)
    parts = [
        f"Review of your changes: {n} comment{'s' if n != 1 else ''}. Address each one in the code it points "
        "at (path:line, the quoted diff lines under it), then go on with your task."
    ]
    for comment in comments:
        block = [f"{comment.path}:{comment.line}"]
        quote = list(comment.quote)
        block += [f"> {line}" for line in quote[:QUOTE_LINES]]
        if len(quote) > QUOTE_LINES:
            block.append(f"> … ({len(quote) - QUOTE_LINES} more lines)")
        block.append(comment.text.strip())
        parts.append("\n".join(block))
    return "\n\n".join(parts)


def hunk_changed(path: str, hunk: Sequence[str], text: str) -> bool:
    """True when the hunk `hunk` (its body lines) of `path` is not in the diff `text` as it was: its lines are
    no longer together, unchanged, in one hunk of that file (a merge of neighbouring hunks keeps them)."""
    body = list(hunk)
    if not body:
        return True
    for f in parse(text):
        if f.path != path:
            continue
        for h in f.hunks:
            lines = list(h.body)
            for k in range(len(lines) - len(body) + 1):
                if lines[k : k + len(body)] == body:
                    return False
    return True


def marks(comments: Sequence[CommentLike], text: str) -> dict[str, str]:
    """comment id → "changed" or "unchanged": whether each comment's hunk changed in the diff `text`."""
    return {c.id: CHANGED if hunk_changed(c.path, c.hunk, text) else UNCHANGED for c in comments}
