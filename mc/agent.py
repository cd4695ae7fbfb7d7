"""One agent's state, rebuilt from its events by a reducer, and its human log.

The same `Agent.apply` runs when an event happens, when a fleet is restored from disk and when a
monitor follows the logs of a fleet owned by another process, so the three cannot disagree.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from mc import events as ev
from mc.cost import AGENT_BUDGET, BUDGET_KIND, FLEET_BUDGET, budget_level

#: Lines of log kept in memory per agent (the whole log stays on disk).
LOG_RING = 5000
#: A log line longer than this is cut in memory (the disk keeps it whole).
MAX_LINE = 2000

#: (kind, text); kind is one of: text user tool output ok err warn info approval
LogLine = tuple[str, str]


def _json_args(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class AgentLog:
    """A bounded ring of log lines plus partial-line assembly for streamed text and output."""

    def __init__(self, maxlen: int | None = LOG_RING) -> None:
        self.lines: deque[LogLine] = deque(maxlen=maxlen)
        self.total = 0  # lines ever added (also those that fell out of the ring)
        self._partial: dict[str, str] = {}  # stream key → unfinished line
        self._partial_kind: dict[str, str] = {}

    def add(self, kind: str, text: str) -> None:
        for line in text.split("\n"):
            if len(line) > MAX_LINE:
                line = line[:MAX_LINE] + f" … (+{len(line) - MAX_LINE} chars)"
            self.lines.append((kind, line))
            self.total += 1

    def stream(self, key: str, kind: str, text: str) -> None:
        """Add streamed text; complete lines go to the ring, the rest waits for more."""
        buf = self._partial.get(key, "") + text
        *done, rest = buf.split("\n")
        for line in done:
            self.add(kind, line)
        self._partial[key] = rest
        self._partial_kind[key] = kind
        if len(rest) > MAX_LINE * 4:  # a single endless line: flush it in pieces
            self.flush(key)

    def flush(self, key: str | None = None) -> bool:
        """Close unfinished streamed lines (all of them when key is None). True when any text was flushed."""
        keys = list(self._partial) if key is None else [key]
        flushed = False
        for k in keys:
            rest = self._partial.pop(k, "")
            kind = self._partial_kind.pop(k, "text")
            if rest:
                self.add(kind, rest)
                flushed = True
        return flushed

    def tail(self, n: int) -> list[LogLine]:
        """The last n lines, including unfinished streamed ones."""
        partial = [(self._partial_kind[k], v) for k, v in self._partial.items() if v]
        if n <= len(partial):
            return partial[-n:] if n else []
        start = max(0, len(self.lines) - (n - len(partial)))
        return [self.lines[i] for i in range(start, len(self.lines))] + partial

    def pending_text(self) -> bool:
        return any(self._partial.values())

    def to_json(self) -> dict[str, Any]:
        """The ring, its count and the unfinished lines, as plain JSON (for a checkpoint)."""
        return {
            "maxlen": self.lines.maxlen,
            "lines": [list(line) for line in self.lines],
            "total": self.total,
            "partial": [[key, self._partial_kind.get(key, "text"), text] for key, text in self._partial.items()],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AgentLog:
        log = cls(maxlen=data.get("maxlen", LOG_RING))
        log.lines.extend((str(kind), str(text)) for kind, text in data.get("lines", []))
        log.total = int(data.get("total", len(log.lines)))
        for key, kind, text in data.get("partial", []):
            log._partial[key] = text
            log._partial_kind[key] = kind
        return log


@dataclass(frozen=True)
class CheckState:
    """The agent's last check, as its CheckStarted and CheckFinished events made it."""

    state: str = "none"
    """none (never checked, or nothing to run), running, passed, failed or error (no verdict: see `reason`)."""
    check_id: str = ""
    trigger: str = ""
    command: str = ""
    scope: str = ""
    why: str = ""
    selected: tuple[str, ...] = ()
    digest: str = ""
    """The digest of the diff it ran on (see Agent.check_stale)."""
    started: float = 0.0
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    total: int = 0
    failing: tuple[str, ...] = ()
    duration: float = 0.0
    exit_code: int | None = None
    reason: str = ""
    output: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckState:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names})

    def summary(self) -> str:
        """One line: "✓ 12 passed", "✗ 2 of 14 failed", "… checking", "— no checks" (the reason of an error)."""
        if self.state == "running":
            return "… checking"
        if self.state == "passed":
            return f"✓ {self.passed} passed" if self.total else "✓ passed"
        if self.state == "failed":
            bad = self.failed + self.errors
            return f"✗ {bad} of {self.total} failed" if self.total else "✗ failed"
        if self.state == "error":
            return f"✗ {self.reason or 'error'}"
        return "— no checks" + (f": {self.reason}" if self.reason else "")


@dataclass(frozen=True)
class Comment:
    """A review comment on the agent's diff, as its CommentAdded event made it."""

    id: str
    path: str
    line: int
    text: str
    quote: tuple[str, ...] = ()
    hunk: tuple[str, ...] = ()
    header: str = ""
    ts: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Comment:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class ReviewState:
    """The last review sent to the agent: its comments and, after the turn that followed, whether each comment's
    hunk changed."""

    review_id: str = ""
    number: int = 0
    """How many reviews were sent (this one's number)."""
    comments: tuple[Comment, ...] = ()
    marks: dict[str, str] = field(default_factory=dict)
    """comment id → "changed" or "unchanged" (empty until a turn after the review has ended)."""
    sent: float = 0.0
    turns: int = 0
    """Turns the agent began since the review was sent."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "review_id": self.review_id,
            "number": self.number,
            "comments": [c.to_dict() for c in self.comments],
            "marks": dict(self.marks),
            "sent": self.sent,
            "turns": self.turns,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReviewState:
        return cls(
            review_id=str(data.get("review_id", "")),
            number=int(data.get("number", 0)),
            comments=tuple(Comment.from_dict(c) for c in data.get("comments", [])),
            marks={str(k): str(v) for k, v in (data.get("marks") or {}).items()},
            sent=float(data.get("sent", 0.0)),
            turns=int(data.get("turns", 0)),
        )


@dataclass
class Agent:
    """Everything the fleet knows about one agent. Mutated only through `apply`."""

    id: str
    name: str = ""
    task: str = ""
    runner: str = "builtin"
    model: str = ""
    policy: str = "writes"
    branch: str = ""
    worktree: str = ""
    base_ref: str = ""
    base_commit: str = ""
    created: float = field(default_factory=time.time)
    status: str = "starting"
    status_since: float = field(default_factory=time.time)
    status_reason: str = ""
    error: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    usage_reported: bool = False
    """Whether the runner ever reported token usage; while False the token counts are unknown (not zero)."""
    group: str = ""
    """Agents with the same group (copies of one task) are totalled together (mc/cost.py)."""
    budget_tokens: int = 0
    """The token budget it was given (0: none); `mc.cost.agent_budget` is what it is now."""
    budget_cost: float = 0.0
    """The cost budget it was given (0: none)."""
    budget_raises: int = 0
    """How many times an approved budget question raised its own budget."""
    fleet_budget_raises: int = 0
    """The fleet budget's level its approved fleet budget questions raised it to (the fleet's is the highest)."""
    files_changed: int = 0
    lines_added: int = 0
    lines_removed: int = 0
    diff_files: tuple[ev.FileStat, ...] = ()
    flags: tuple[ev.Flag, ...] = ()
    """The risk flags of the diff (mc/flags.py), sorted by path and line."""
    diff_digest: str = ""
    """The digest of the diff (DiffChanged.digest): what a check's result is compared with."""
    check: CheckState = field(default_factory=CheckState)
    """The last check of its tests (mc/checks)."""
    comments: tuple[Comment, ...] = ()
    """The review being written: comments on the diff not sent yet, in the order they were made."""
    comments_made: int = 0
    """Comments ever made (the next one's id is c<comments_made + 1>)."""
    review: ReviewState = field(default_factory=ReviewState)
    """The last review sent."""
    pending: dict[str, ev.ApprovalRequested] = field(default_factory=dict)
    remembered: set[str] = field(default_factory=set)
    conversation: list[dict[str, Any]] = field(default_factory=list)
    runner_state: dict[str, Any] = field(default_factory=dict)
    tool_calls: dict[str, ev.ToolCall] = field(default_factory=dict)
    merged_commit: str = ""
    snapshot_ref: str = ""
    conflicts: tuple[str, ...] = ()
    last_event: float = 0.0
    log: AgentLog = field(default_factory=AgentLog)
    version: int = 0  # bumped on every applied event: cheap change detection for views
    text_streamed: bool = field(default=False, repr=False)
    streamed_calls: set[str] = field(default_factory=set, repr=False)

    # -- derived -----------------------------------------------------------------------------------
    @property
    def needs_decision(self) -> bool:
        """True when the engineer has something to decide: an approval, or finished work to review."""
        return bool(self.pending) or self.status == "waiting"

    @property
    def waiting_since(self) -> float:
        """When the oldest pending approval was asked (for 'next agent that needs a decision')."""
        if self.pending:
            return min(p.ts for p in self.pending.values())
        return self.status_since

    @property
    def check_stale(self) -> bool:
        """True when the diff changed after the last check began: its result is not about the diff as it is."""
        check = self.check
        return (
            check.state != "none" and bool(check.digest) and bool(self.diff_digest) and check.digest != self.diff_digest
        )

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def _raise_budget(self, req: ev.ApprovalRequested) -> None:
        """An approved budget question raises its budget to the level after the one it was asked at."""
        level = budget_level(req.tool, req.approval_id)
        if level is None:
            return
        if req.tool == AGENT_BUDGET:
            self.budget_raises = max(self.budget_raises, level + 1)
        elif req.tool == FLEET_BUDGET:
            self.fleet_budget_raises = max(self.fleet_budget_raises, level + 1)

    def oldest_pending(self) -> ev.ApprovalRequested | None:
        if not self.pending:
            return None
        return min(self.pending.values(), key=lambda p: p.ts)

    # -- checkpoint --------------------------------------------------------------------------------
    def to_snapshot(self) -> dict[str, Any]:
        """Everything the agent's events made of it, as plain JSON: a checkpoint that `from_snapshot` turns
        back into the same Agent, to which the events logged after it are then applied."""
        data: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _CODECS:
                data[f.name] = _CODECS[f.name][0](value)
            elif value is None or isinstance(value, (str, int, float, bool)):
                data[f.name] = value
            else:  # a new kind of field: say so rather than checkpoint half an agent
                raise TypeError(f"Agent.{f.name} ({type(value).__name__}) has no checkpoint codec in mc/agent.py")
        return data

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> Agent:
        """The Agent a `to_snapshot` checkpoint holds (fields it lacks keep their defaults)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (_CODECS[k][1](v) if k in _CODECS else v) for k, v in data.items() if k in names})

    # -- reducer -----------------------------------------------------------------------------------
    def apply(self, event: ev.Event) -> None:
        """Fold one event into the state and the human log."""
        self.version += 1
        self.last_event = event.ts
        log = self.log
        match event:
            case ev.AgentCreated():
                self.name, self.task, self.runner = event.name, event.task, event.runner
                self.model, self.policy, self.branch = event.model, event.policy, event.branch
                self.worktree, self.base_ref, self.base_commit = event.worktree, event.base_ref, event.base_commit
                self.group, self.budget_tokens, self.budget_cost = event.group, event.budget_tokens, event.budget_cost
                self.created = event.ts
                self.status_since = event.ts
                log.add("info", f"agent {event.name} ({event.runner}) on {event.branch or 'no branch'}")
                log.add("user", f"» {event.task}")
            case ev.StatusChanged():
                self.status = event.status
                self.status_since = event.ts
                self.status_reason = event.reason
                if event.status == "failed":
                    self.error = event.reason
                elif event.status in ("running", "starting"):
                    self.error = ""
                if event.status in ("running", "starting") and self.review.review_id:
                    self.review = dataclasses.replace(self.review, turns=self.review.turns + 1)
                if event.status not in ("waiting", "running", "starting"):
                    self.pending.clear()  # idle, interrupted or final: no approval is still open
                log.flush()
                text = f"· {event.status}" + (f": {event.reason}" if event.reason else "")
                log.add("err" if event.status == "failed" else "info", text)
            case ev.UserMessage():
                log.flush()
                log.add("user", ("» redirect: " if event.redirect else "» ") + event.text)
            case ev.TextDelta():
                self.text_streamed = True
                log.stream("text", "text", event.text)
            case ev.AssistantMessage():
                log.flush("text")
                if event.text and not self.text_streamed:
                    log.add("text", event.text)
                self.text_streamed = False
            case ev.ToolCall():
                log.flush()
                self.tool_calls[event.call_id] = event
                if len(self.tool_calls) > 200:
                    self.tool_calls.pop(next(iter(self.tool_calls)))
                log.add("tool", _call_line(event))
            case ev.ToolOutput():
                self.streamed_calls.add(event.call_id)
                log.stream(f"out:{event.call_id}", "output", event.text)
            case ev.ToolResult():
                log.flush(f"out:{event.call_id}")
                streamed = event.call_id in self.streamed_calls
                self.streamed_calls.discard(event.call_id)
                call = self.tool_calls.get(event.call_id)
                if call is not None and (call.tool == "shell" or call.kind == "command"):
                    code = event.exit_code
                    if not streamed and event.output:
                        log.add("output", event.output)
                    log.add("ok" if event.ok else "err", f"  exit {code}" if code is not None else "  done")
                elif not event.ok:
                    log.add("err", "  " + event.output.strip().splitlines()[0] if event.output.strip() else "  failed")
                else:
                    first = event.output.strip().splitlines()[0] if event.output.strip() else "ok"
                    log.add("ok", "  " + first[:200])
            case ev.ApprovalRequested():
                self.pending[event.approval_id] = event
                log.flush()
                log.add("approval", f"? approve {event.kind}: {event.summary}")
            case ev.ApprovalResolved():
                req = self.pending.pop(event.approval_id, None)
                if event.decision == "approve_all" and req is not None and req.remember_key:
                    self.remembered.add(req.remember_key)
                if req is not None and req.kind == BUDGET_KIND and event.decision != "deny":
                    self._raise_budget(req)
                word = {"approve": "approved", "approve_all": "approved (and the same for the rest of the run)"}
                text = word.get(event.decision, "denied")
                if event.reason:
                    text += f": {event.reason}"
                log.add("ok" if event.decision != "deny" else "warn", f"  {text}")
            case ev.Refused():
                log.add("err", f"  refused: {event.reason}")
            case ev.Usage():
                self.usage_reported = True
                self.input_tokens += event.input_tokens
                self.output_tokens += event.output_tokens
            case ev.ErrorEvent():
                log.flush()
                extra = f" (retrying in {event.retry_in:.0f}s)" if event.retry_in else ""
                log.add("err" if event.fatal else "warn", f"! {event.message}{extra}")
                if event.fatal:
                    self.error = event.message
            case ev.ConversationItem():
                self.conversation.append(event.item)
            case ev.RunnerState():
                self.runner_state.update(event.data)
            case ev.DiffChanged():
                self.diff_files = event.files
                self.files_changed = len(event.files)
                self.lines_added, self.lines_removed = event.added, event.removed
                if event.digest:
                    self.diff_digest = event.digest
            case ev.FlagsChanged():
                self.flags = event.flags
            case ev.CheckStarted():
                self.check = CheckState(
                    state="running",
                    check_id=event.check_id,
                    trigger=event.trigger,
                    command=event.command,
                    scope=event.scope,
                    why=event.why,
                    selected=event.selected,
                    digest=event.digest,
                    started=event.ts,
                )
                log.flush()
                log.add("info", f"· checking ({event.trigger}): {event.why}" if event.why else "· checking")
                for line in event.selected[:20]:
                    log.add("info", f"  {line}")
                if len(event.selected) > 20:
                    log.add("info", f"  … and {len(event.selected) - 20} more")
            case ev.CheckFinished():
                base = self.check if self.check.check_id == event.check_id else CheckState(check_id=event.check_id)
                self.check = dataclasses.replace(
                    base,
                    state="none" if event.outcome == "none" else event.outcome,
                    passed=event.passed,
                    failed=event.failed,
                    errors=event.errors,
                    skipped=event.skipped,
                    total=event.total,
                    failing=event.failing,
                    duration=event.duration,
                    exit_code=event.exit_code,
                    reason=event.reason,
                    output=event.output,
                    digest=event.digest or base.digest,
                )
                kind = {"passed": "ok", "failed": "err", "error": "err"}.get(event.outcome, "info")
                text = self.check.summary() + (f" in {event.duration:.1f} s" if event.duration else "")
                if event.failing:
                    text += ": " + ", ".join(event.failing[:5]) + (" …" if len(event.failing) > 5 else "")
                log.add(kind, text)
            case ev.CommentAdded():
                comment = Comment(
                    id=event.comment_id,
                    path=event.path,
                    line=event.line,
                    text=event.text,
                    quote=event.quote,
                    hunk=event.hunk,
                    header=event.header,
                    ts=event.ts,
                )
                self.comments = (*[c for c in self.comments if c.id != comment.id], comment)
                self.comments_made += 1
                first = event.text.strip().splitlines()[0] if event.text.strip() else ""
                log.flush()
                log.add("info", f"✎ comment on {event.path}:{event.line}: {first}")
            case ev.CommentRemoved():
                gone = next((c for c in self.comments if c.id == event.comment_id), None)
                self.comments = tuple(c for c in self.comments if c.id != event.comment_id)
                if gone is not None:
                    log.add("info", f"✎ comment on {gone.path}:{gone.line} deleted")
            case ev.ReviewSent():
                sent = tuple(c for c in self.comments if c.id in event.comments)
                self.comments = tuple(c for c in self.comments if c.id not in event.comments)
                self.review = ReviewState(
                    review_id=event.review_id, number=self.review.number + 1, comments=sent, sent=event.ts
                )
                log.flush()
                n = len(sent)
                log.add("info", f"✎ review sent: {n} comment{'s' if n != 1 else ''}")
            case ev.ReviewChecked():
                if event.review_id == self.review.review_id:
                    marks = dict.fromkeys(event.changed, "changed") | dict.fromkeys(event.unchanged, "unchanged")
                    self.review = dataclasses.replace(self.review, marks=marks)
                    log.add(
                        "info",
                        f"✎ after the review: {len(event.changed)} commented hunk"
                        f"{'s' if len(event.changed) != 1 else ''} changed, {len(event.unchanged)} unchanged",
                    )
            case ev.Committed():
                log.add(
                    "ok", f"committed {event.commit[:10]}: {event.message.splitlines()[0] if event.message else ''}"
                )
            case ev.Merged():
                self.merged_commit = event.commit
                self.conflicts = ()
                log.add("ok", f"merged into {event.into} ({event.mode}) as {event.commit[:10]}")
            case ev.MergeConflict():
                self.conflicts = event.files
                log.add("err", f"merge conflict in {', '.join(event.files) or '?'}: {event.message}")
            case ev.Discarded():
                self.snapshot_ref = event.snapshot_ref
                log.add("warn", f"discarded; snapshot kept at {event.snapshot_ref} ({event.snapshot_commit[:10]})")


def _call_line(call: ev.ToolCall) -> str:
    args = _json_args(call.arguments)
    if call.tool == "shell" or call.kind == "command":
        return f"$ {args.get('command') or call.summary}"
    if call.summary:
        return f"→ {call.summary}"
    return f"→ {call.tool}"


def _events(items: list[dict[str, Any]], kind: type[ev.Event], key: str) -> dict[str, Any]:
    events = [ev.event_from_dict(item) for item in items]
    return {getattr(e, key): e for e in events if isinstance(e, kind)}


#: How a checkpoint writes (and reads back) each field of an Agent that is not a plain JSON value.
_CODECS: dict[str, tuple[Any, Any]] = {
    "diff_files": (lambda v: [dataclasses.asdict(f) for f in v], lambda d: tuple(ev.FileStat(**f) for f in d)),
    "flags": (lambda v: [dataclasses.asdict(f) for f in v], lambda d: tuple(ev.Flag.from_dict(f) for f in d)),
    "check": (CheckState.to_dict, CheckState.from_dict),
    "comments": (lambda v: [c.to_dict() for c in v], lambda d: tuple(Comment.from_dict(c) for c in d)),
    "review": (ReviewState.to_dict, ReviewState.from_dict),
    "pending": (lambda v: [e.to_dict() for e in v.values()], lambda d: _events(d, ev.ApprovalRequested, "approval_id")),
    "remembered": (sorted, set),
    "conversation": (list, list),
    "runner_state": (dict, dict),
    "tool_calls": (lambda v: [e.to_dict() for e in v.values()], lambda d: _events(d, ev.ToolCall, "call_id")),
    "conflicts": (list, tuple),
    "log": (AgentLog.to_json, AgentLog.from_json),
    "streamed_calls": (sorted, set),
}


def replay(agent_id: str, events: list[ev.Event]) -> Agent:
    """Rebuild an agent from its whole log."""
    agent = Agent(id=agent_id)
    for event in events:
        agent.apply(event)
    return agent
