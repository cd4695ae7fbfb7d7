"""The typed events every layer speaks.

Each event is a frozen dataclass with the id of the agent it concerns and a timestamp. Events are the
unit of the append-only log (`agents/<id>/events.jsonl`): `to_dict`/`from_dict` round-trip them through
JSON. Nothing in this module imports anything of mission control's own.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

Status = Literal[
    "starting",
    "running",
    "waiting",
    "idle",
    "interrupted",
    "merged",
    "discarded",
    "killed",
    "failed",
]
STATUSES: tuple[str, ...] = (
    "starting",
    "running",
    "waiting",
    "idle",
    "interrupted",
    "merged",
    "discarded",
    "killed",
    "failed",
)
#: States in which the agent's runner is alive and may act on its own.
ACTIVE_STATUSES = frozenset({"starting", "running", "waiting"})
#: States from which nothing more happens to the agent by itself (a failed agent can still be resumed).
FINAL_STATUSES = frozenset({"merged", "discarded", "killed", "failed"})
#: A turn runs: the runner is at work (the clock of its elapsed time runs).
WORKING_STATUSES = frozenset({"starting", "running"})
#: The work has left the fleet: merged into its base, or discarded (a snapshot ref keeps it); no worktree.
DONE_STATUSES = frozenset({"merged", "discarded"})
#: States a turn ends in, where the engineer's next decision is awaited.
SETTLED_STATUSES = frozenset({"idle", "interrupted", "failed", "killed"})

#: Every status change an agent may make: status → the statuses it may go to ("" is a new agent). The fleet
#: checks each change against it (`allowed`); one that is not here is a defect, logged as an error.
TRANSITIONS: dict[str, frozenset[str]] = {
    "": frozenset({"starting", "failed"}),
    "starting": frozenset({"running", "waiting", "idle", "interrupted", "failed", "killed", "discarded"}),
    "running": frozenset({"waiting", "idle", "interrupted", "failed", "killed", "discarded"}),
    "waiting": frozenset({"running", "idle", "interrupted", "failed", "killed", "discarded"}),
    "idle": frozenset({"running", "waiting", "interrupted", "failed", "killed", "merged", "discarded"}),
    "interrupted": frozenset({"running", "waiting", "idle", "failed", "killed", "merged", "discarded"}),
    "failed": frozenset({"running", "waiting", "interrupted", "killed", "merged", "discarded"}),
    "killed": frozenset({"merged", "discarded"}),
    "merged": frozenset(),
    "discarded": frozenset(),
}


def allowed(previous: str, status: str) -> bool:
    """Whether an agent in `previous` may change to `status` (see TRANSITIONS)."""
    return status in TRANSITIONS.get(previous, frozenset())


#: Kinds of tool call, as the approval policy sees them.
CallKind = Literal["read", "write", "command"]
Decision = Literal["approve", "approve_all", "deny"]


_REGISTRY: dict[str, type[Event]] = {}


def _now() -> float:
    return time.time()


@dataclass(frozen=True, kw_only=True)
class Event:
    """Base of every event. `type` is the name written to the log."""

    type: ClassVar[str] = "event"

    agent: str
    ts: float = field(default_factory=_now)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.type] = cls

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": self.type}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in value]
            data[f.name] = value
        return data


def event_from_dict(data: dict[str, Any]) -> Event:
    """Rebuild an event from its logged dict; unknown fields are dropped, unknown types raise KeyError."""
    cls = _REGISTRY[data["type"]]
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            continue
        if key == "files" and cls is DiffChanged:
            value = tuple(FileStat(**v) for v in value)
        elif key == "flags" and cls is FlagsChanged:
            value = tuple(Flag.from_dict(v) for v in value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


@dataclass(frozen=True, kw_only=True)
class AgentCreated(Event):
    """First event of every agent: who it is and where it works."""

    type: ClassVar[str] = "agent_created"
    name: str
    task: str
    runner: str
    model: str = ""
    policy: str = "writes"
    branch: str = ""
    worktree: str = ""
    base_ref: str = ""
    base_commit: str = ""
    group: str = ""
    budget_tokens: int = 0
    budget_cost: float = 0.0


@dataclass(frozen=True, kw_only=True)
class StatusChanged(Event):
    type: ClassVar[str] = "status"
    status: str
    previous: str = ""
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class UserMessage(Event):
    """An instruction from the engineer: the task, or a redirect."""

    type: ClassVar[str] = "user_message"
    text: str
    redirect: bool = False


@dataclass(frozen=True, kw_only=True)
class TextDelta(Event):
    """A fragment of the model's (or a CLI agent's) visible output."""

    type: ClassVar[str] = "text_delta"
    text: str


@dataclass(frozen=True, kw_only=True)
class AssistantMessage(Event):
    """The model's complete text of one reply (after its deltas)."""

    type: ClassVar[str] = "assistant_message"
    text: str


@dataclass(frozen=True, kw_only=True)
class ToolCall(Event):
    type: ClassVar[str] = "tool_call"
    call_id: str
    tool: str
    arguments: str  # JSON text, as the model sent it
    kind: str = "read"  # read | write | command
    summary: str = ""  # one line for the log: the command, the path …


@dataclass(frozen=True, kw_only=True)
class ToolOutput(Event):
    """A chunk of a running tool's output (a shell command's lines)."""

    type: ClassVar[str] = "tool_output"
    call_id: str
    text: str


@dataclass(frozen=True, kw_only=True)
class ToolResult(Event):
    """What a tool call returned to the model (truncated for the log when large)."""

    type: ClassVar[str] = "tool_result"
    call_id: str
    ok: bool
    output: str
    exit_code: int | None = None


@dataclass(frozen=True, kw_only=True)
class ApprovalRequested(Event):
    type: ClassVar[str] = "approval_requested"
    approval_id: str
    call_id: str
    tool: str
    kind: str  # read | write | command
    summary: str  # one line: the command, or "write path"
    detail: str = ""  # the full command, or the change as a unified diff
    remember_key: str = ""  # what `approve_all` remembers: "command:git status", "write", …


@dataclass(frozen=True, kw_only=True)
class ApprovalResolved(Event):
    type: ClassVar[str] = "approval_resolved"
    approval_id: str
    decision: str  # approve | approve_all | deny
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class Refused(Event):
    """A tool call refused by confinement (a path outside the worktree, a sandbox missing …)."""

    type: ClassVar[str] = "refused"
    call_id: str
    tool: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class Usage(Event):
    """Token usage of one model call."""

    type: ClassVar[str] = "usage"
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True, kw_only=True)
class ErrorEvent(Event):
    type: ClassVar[str] = "error"
    message: str
    fatal: bool = False
    retry_in: float | None = None


@dataclass(frozen=True, kw_only=True)
class ConversationItem(Event):
    """One item of the model conversation, kept so that a restart can continue it. Not shown."""

    type: ClassVar[str] = "conversation"
    item: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class RunnerState(Event):
    """Opaque state a runner needs to resume after a restart (a thread or session id). Not shown."""

    type: ClassVar[str] = "runner_state"
    data: dict[str, Any]


@dataclass(frozen=True)
class FileStat:
    path: str
    added: int = 0
    removed: int = 0
    status: str = "M"  # A added, M modified, D deleted, R renamed, ? untracked
    binary: bool = False


@dataclass(frozen=True, kw_only=True)
class DiffChanged(Event):
    """The agent's worktree differs from its base in a new way. The text itself is kept by the Fleet."""

    type: ClassVar[str] = "diff"
    files: tuple[FileStat, ...] = ()
    added: int = 0
    removed: int = 0
    digest: str = ""
    """A hash of the diff's text: it changes whenever the diff does, also where the counts stay the same."""


#: How much a risk flag matters to a reviewer, highest first.
Severity = Literal["high", "medium", "low"]
SEVERITIES: tuple[str, ...] = ("high", "medium", "low")


@dataclass(frozen=True)
class Flag:
    """Something in a diff a reviewer must not miss (mc/flags.py finds them): which rule, where, and why.

    `line` is a line of the new version of the file: the flagged added line, or the first changed one (for a
    removal: where the lines were; 1 for a deleted file); 0 when the flag is about the whole file (a mode
    change, a binary file, a file the diff text does not reach)."""

    rule: str
    severity: str  # high | medium | low
    path: str
    line: int = 0
    message: str = ""

    @property
    def where(self) -> str:
        """`path:line`, or the path alone for a flag about the whole file."""
        return f"{self.path}:{self.line}" if self.line else self.path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Flag:
        """A flag from its logged dict; fields this version does not know are dropped."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True, kw_only=True)
class FlagsChanged(Event):
    """The risk flags of the agent's diff are a different set now (all of them, sorted by path and line)."""

    type: ClassVar[str] = "flags"
    flags: tuple[Flag, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Committed(Event):
    type: ClassVar[str] = "committed"
    commit: str
    message: str


@dataclass(frozen=True, kw_only=True)
class Merged(Event):
    type: ClassVar[str] = "merged"
    mode: str
    commit: str
    into: str


@dataclass(frozen=True, kw_only=True)
class MergeConflict(Event):
    type: ClassVar[str] = "merge_conflict"
    files: tuple[str, ...]
    message: str


@dataclass(frozen=True, kw_only=True)
class Discarded(Event):
    type: ClassVar[str] = "discarded"
    snapshot_ref: str
    snapshot_commit: str


#: What a check's result is: its tests passed or failed; error: it gave no verdict (it could not run, or timed
#: out); none: there was nothing to run (no test command, or no test touches what changed).
CheckOutcome = Literal["passed", "failed", "error", "none"]
CHECK_OUTCOMES: tuple[str, ...] = ("passed", "failed", "error", "none")


@dataclass(frozen=True, kw_only=True)
class CheckStarted(Event):
    """The agent's checks (its project's tests, narrowed to what its diff touches) began to run in its worktree."""

    type: ClassVar[str] = "check_started"
    check_id: str
    command: str = ""
    """The command line that runs (empty when there is nothing to run)."""
    scope: str = "full"
    """affected (narrowed to what the diff touches), full (the whole test command) or none (nothing to run)."""
    why: str = ""
    """One line: why this scope ("2 test files import what changed", "pyproject.toml changed" …)."""
    selected: tuple[str, ...] = ()
    """The tests selected and why, one line each: "tests/test_text.py ← app/text.py"."""
    digest: str = ""
    """The DiffChanged digest of the diff the check runs on: a later diff makes its result stale."""
    trigger: str = "manual"
    """idle (a turn ended with a changed diff), merge (before a merge) or manual (asked for)."""


@dataclass(frozen=True, kw_only=True)
class CheckFinished(Event):
    """The result of the check `check_id`: counts, duration, the failing tests, where its output is kept."""

    type: ClassVar[str] = "check_finished"
    check_id: str
    outcome: str  # passed | failed | error | none
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    total: int = 0
    """Tests that ran (passed, failed, errors and skipped); 0 when the output did not say."""
    failing: tuple[str, ...] = ()
    """The names of the failing tests (pytest node ids where pytest ran), at most 100."""
    duration: float = 0.0
    exit_code: int | None = None
    reason: str = ""
    """One line on an error or an empty run ("timed out after 600 s", "no test imports README.md" …)."""
    output: str = ""
    """The file that keeps the check's output (its first 256 KiB and last 64 KiB)."""
    digest: str = ""


@dataclass(frozen=True, kw_only=True)
class CommentAdded(Event):
    """The engineer commented on a hunk (or one line of it) of the agent's diff: part of the next review."""

    type: ClassVar[str] = "review_comment"
    comment_id: str
    path: str
    line: int
    """The new file's line the comment is anchored at (`path:line` in the review)."""
    text: str
    quote: tuple[str, ...] = ()
    """The diff lines it quotes (with their ` `/`+`/`-`): the hunk's changes, or the one line commented on."""
    hunk: tuple[str, ...] = ()
    """The whole hunk (its body lines) as it was: what "changed" / "unchanged" is judged by after the review."""
    header: str = ""
    """The hunk's `@@ … @@` line."""


@dataclass(frozen=True, kw_only=True)
class CommentRemoved(Event):
    """A comment not sent yet was deleted from the review."""

    type: ClassVar[str] = "review_comment_removed"
    comment_id: str


@dataclass(frozen=True, kw_only=True)
class ReviewSent(Event):
    """The comments went to the agent as one instruction (a redirect, which follows as a user message)."""

    type: ClassVar[str] = "review_sent"
    review_id: str
    comments: tuple[str, ...]
    """The ids of the comments it holds, in order."""
    text: str = ""


@dataclass(frozen=True, kw_only=True)
class ReviewChecked(Event):
    """After a turn that followed the review: which comments' hunks the diff changed, and which it did not."""

    type: ClassVar[str] = "review_checked"
    review_id: str
    changed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()


#: Events that belong in the human log of an agent (the rest is bookkeeping).
HIDDEN_TYPES = frozenset({"conversation", "runner_state", "text_delta"})
