"""How agents look: status colours and words, log and diff line styles, short numbers and durations.

Every colour here is one of the 256 xterm colours above the 16 that a terminal theme may redefine, picked
for a contrast of at least 4.5:1 on every background it is shown on, in truecolor and in 256 colours alike
(tests/test_tui_contrast.py measures each cell of the screen). A status is never shown by colour alone: its
word (and a glyph) always goes with it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rich.cells import cell_len
from rich.text import Text

from mc import events as ev
from mc.agent import Agent

# -- the palette ------------------------------------------------------------------------------------
MUTED = "grey70"
"""Secondary text: counts, runner names, hints."""
ADDED = "green3"
REMOVED = "light_coral"
CYAN = "dark_turquoise"
YELLOW = "gold1"
VIOLET = "violet"
SELECTED_ROW = "on grey23"
"""The background of the selected row of the agent list (badges keep their own)."""
NEEDS_YOU = "bold grey0 on gold1"
"""The badge of an agent waiting for a decision, and of the count of such agents."""
FAILED_BADGE = "bold grey100 on color(124)"
REVIEW_BADGE = "bold grey0 on green3"
INTERRUPTED_BADGE = "bold grey0 on grey70"
MONITOR_BADGE = "bold grey0 on dark_turquoise"

#: status → (glyph, style). The word is the status itself.
STATUS_STYLE: dict[str, tuple[str, str]] = {
    "starting": ("◌", f"bold {CYAN}"),
    "running": ("▶", f"bold {ADDED}"),
    "waiting": ("?", NEEDS_YOU),
    "idle": ("■", "bold sky_blue1"),
    "interrupted": ("‖", f"bold {VIOLET}"),
    "merged": ("✓", ADDED),
    "discarded": ("⊘", MUTED),
    "killed": ("✗", f"bold {REMOVED}"),
    "failed": ("!", FAILED_BADGE),
}

#: log line kind (see mc.agent.LogLine) → style
LOG_STYLE: dict[str, str] = {
    "text": "",
    "user": f"bold {CYAN}",
    "tool": f"bold {YELLOW}",
    "output": "grey70",
    "ok": ADDED,
    "err": REMOVED,
    "warn": YELLOW,
    "info": MUTED,
    "approval": NEEDS_YOU,
    "partial": "",
}

# C0 controls except tab, DEL, and the C1 range (CSI 0x9b among them): never let them reach the terminal.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def clean(text: str) -> str:
    """Text safe to put on screen: tabs expanded, every control character (ESC too) shown as �."""
    if "\t" in text:
        text = text.expandtabs(4)
    return _CONTROL.sub("�", text)


def status_text(status: str, *, pad: int = 0) -> Text:
    """The status as glyph + word in its colour (for example "▶ running")."""
    glyph, style = STATUS_STYLE.get(status, ("·", "bold"))
    word = f"{glyph} {status}"
    return Text(word.ljust(pad), style=style)


def tokens_text(agent: Agent) -> str:
    """The agent's token count, or "—" while its runner never reported usage (unknown, not zero)."""
    return short_number(agent.tokens) if agent.usage_reported else "—"


def context_text(agent: Agent) -> str:
    """How full the agent's context is, where its runner reports it (ACP's usage_update): "ctx 12%" of a known
    window, "ctx 12k" without one; "" where nothing says."""
    used = agent.runner_state.get("context_tokens")
    if not isinstance(used, int) or used <= 0:
        return ""
    window = agent.runner_state.get("context_window")
    if isinstance(window, int) and window > 0:
        share = 100 * used / window
        return "ctx <1%" if share < 1 else f"ctx {min(100, round(share))}%"
    return f"ctx {short_number(used)}"


def key_rows(pairs: Sequence[tuple[str, str]], width: int) -> Text:
    """Keys and what they do ("a approve  d deny"), broken into lines of `width` only between two pairs, never
    between a key and its word (width 0: one line)."""
    t = Text()
    used = 0
    for key, label in pairs:
        size = cell_len(key) + 1 + cell_len(label)
        if used and width and used + 2 + size > width:
            t.append("\n")
            used = 0
        elif used:
            t.append("  ")
            used += 2
        t.append(key, style="bold reverse")
        t.append(f" {label}")
        used += size
    return t


def first_fitting(width: int, candidates: Sequence[Text]) -> Text:
    """The first of `candidates` (longest first) that fits in `width` cells, else the last one cut to it."""
    for text in candidates:
        if text.cell_len <= width:
            return text
    last = candidates[-1].copy()
    last.truncate(width, overflow="ellipsis")
    return last


def short_number(n: int) -> str:
    """1234 → 1.2k, 1234567 → 1.2M."""
    if n < 1000:
        return str(n)
    if n < 1_000_000:
        return f"{n / 1000:.1f}k"
    return f"{n / 1_000_000:.1f}M"


def duration(seconds: float) -> str:
    """Elapsed time as m:ss or h:mm:ss."""
    s = max(0, int(seconds))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def elapsed(agent: Agent, now: float) -> float:
    """Seconds the agent has been at work: until now while it works; a waiting, idle or finished agent's clock
    stands still at its last status change (so that a fleet waiting for the engineer repaints nothing)."""
    end = now if agent.status in ev.WORKING_STATUSES else min(agent.status_since, now)
    return max(0.0, end - agent.created)


def diff_style(line: str) -> str:
    """Style of one unified-diff line."""
    if line.startswith(("+++", "---")):
        return "bold"
    if line.startswith("+"):
        return ADDED
    if line.startswith("-"):
        return REMOVED
    if line.startswith("@@"):
        return CYAN
    if line.startswith(("diff ", "index ", "new file", "deleted file", "rename ", "similarity ", "Binary ")):
        return "bold grey70"
    return ""


def diff_lines(text: str) -> list[tuple[str, str]]:
    """A unified diff as (style, line) pairs."""
    return [(diff_style(line), line) for line in text.splitlines()]


def money(value: float | None) -> str:
    """A cost on screen: "$0.42", "$0.004"; "" when unknown (no price: nothing shown, never a guess)."""
    if value is None:
        return ""
    if value == 0:
        return "$0"
    return f"${value:,.2f}" if value >= 0.1 else f"${value:.3f}" if value >= 0.001 else "<$0.001"


def check_badge(agent: Agent, *, short: bool = False) -> Text:
    """The agent's checks in a word or two: "✓ 12 passed", "✗ 2 of 14 failed", "… checking", "— no checks"
    (short, for a row: "✓12", "✗2/14", "…", "—"); "stale" follows a result the diff changed after."""
    check = agent.check
    state = check.state
    if state == "running":
        t = Text("…" if short else "… checking", style=f"bold {YELLOW}")
    elif state == "passed":
        word = (f"✓{check.passed}" if check.total else "✓") if short else check.summary()
        t = Text(word, style=f"bold {ADDED}")
    elif state == "failed":
        bad = check.failed + check.errors
        word = (f"✗{bad}/{check.total}" if check.total else "✗") if short else check.summary()
        t = Text(word, style=f"bold {REMOVED}")
    elif state == "error":
        t = Text("✗ err" if short else f"✗ checks: {check.reason or 'error'}", style=f"bold {REMOVED}")
    else:
        t = Text("—" if short else "— no checks", style=MUTED)
    if agent.check_stale and state in ("passed", "failed", "error"):
        t.append(" stale", style=YELLOW)
    return t


#: Flag severity → style, the worst first.
FLAG_STYLE = {"high": f"bold {REMOVED}", "medium": f"bold {YELLOW}", "low": MUTED}


def flags_badge(agent: Agent, *, short: bool = False) -> Text:
    """The agent's risk flags: "⚑ 3 flags" in the colour of the worst (short: "⚑3"); empty when it has none."""
    flags = agent.flags
    if not flags:
        return Text()
    worst = next((s for s in FLAG_STYLE if any(f.severity == s for f in flags)), "low")
    n = len(flags)
    return Text(f"⚑{n}" if short else f"⚑ {n} flag{'s' if n != 1 else ''}", style=FLAG_STYLE[worst])


def header_text(
    agent: Agent, now: float, *, waiting_lines: int = 0, cost: str = "", short_badges: bool = False
) -> Text:
    """The one-line summary of an agent, what a reviewer needs first at the front (a narrow pane cuts its end):
    status, elapsed, its checks and risk flags (`short_badges`: "✗2/14" for "✗ 2 of 14 failed"), files and
    +/- lines, tokens (and how full its context is, and `cost`, where known), runner."""
    t = Text(no_wrap=True, overflow="ellipsis")
    t.append_text(status_text(agent.status))
    t.append(f" {duration(elapsed(agent, now))}")
    if agent.check.state != "none" or agent.check.reason:
        t.append(" ")
        t.append_text(check_badge(agent, short=short_badges))
    if agent.flags:
        t.append(" ")
        t.append_text(flags_badge(agent, short=short_badges))
    files = agent.files_changed
    t.append(f" {files} file{'s' if files != 1 else ''} ")
    t.append(f"+{agent.lines_added}", style=ADDED)
    t.append("/")
    t.append(f"-{agent.lines_removed}", style=REMOVED)
    t.append(f" {tokens_text(agent)} tok", style=MUTED)
    if context := context_text(agent):
        t.append(f" {context}", style=MUTED)
    if cost:
        t.append(f" {cost}", style=MUTED)
    t.append(f" {agent.runner}", style=MUTED)
    if waiting_lines:
        t.append(f"  ⏸ {waiting_lines} new", style=f"bold {VIOLET}")
    return t
