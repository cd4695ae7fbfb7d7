"""The protocol every runner speaks, and what the Fleet hands a runner."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mc import events as ev
from mc.agent import Agent
from mc.config import AgentConfig, Config
from mc.cost import BUDGET_KIND, Overrun
from mc.tools import allowed_by_prefix, command_key

#: The result of a call the engineer denied (the model reads it, or the log shows it); see `denied_text`.
DENIED = "The engineer denied this call."
#: The result of a call that waited for approval when the engineer interrupted the turn: it never ran.
NOT_RUN_INTERRUPTED = "Not run: the engineer interrupted the turn before this call was approved."
#: The result of a call that waited for approval when the engineer gave a new instruction: it never ran.
NOT_RUN_REDIRECTED = "Not run: the engineer interrupted the turn to give a new instruction."
#: The result of a call that waited for approval when the agent reached its budget: it never ran.
NOT_RUN_BUDGET = "Not run: the agent reached its budget and stopped before its next model call."
#: The reason of the idle status after the engineer denied a budget question.
BUDGET_STOPPED = "stopped at its budget: redirect it to go on"


def needs_approval(policy: str, kind: str, command: str, allow: list[str]) -> bool:
    """Whether the approval policy makes a call of this kind (read, write, command) wait for the engineer."""
    if policy == "never":
        return False
    if policy == "writes":
        return kind in ("write", "command")
    if policy == "commands":
        return kind == "command" and not allowed_by_prefix(command, allow)
    return True  # always, and anything unknown: ask


def remember_key(kind: str, command: str = "", tool: str = "") -> str:
    """What approve-all remembers of a call, in every runner: `command:` and mc.tools.command_key of a command
    (program and subcommand; a compound command only itself), `tool:<name>` for a tool whose kind mission
    control does not know, else the kind ("write", "read")."""
    if kind == "command":
        return "command:" + command_key(command)
    if tool:
        return f"tool:{tool}"
    return kind


def denied_text(reason: str = "") -> str:
    """What a denied call's result says: the denial and the engineer's reason."""
    return DENIED + (f" Their reason: {reason}" if reason else "")


def deny_note(summary: str, reason: str) -> str:
    """The engineer's reason for a denial, as a message for the model of an agent whose protocol cannot carry
    a reason with the answer itself."""
    return f"The engineer denied `{summary}`. Their reason: {reason}"


class RunnerError(Exception):
    """A runner cannot do what was asked (one line: what and why)."""


@dataclass
class RunnerContext:
    """What a runner gets from the Fleet: where it works, how it is configured, and how it speaks."""

    agent: Agent
    """The agent's state (read it; never mutate it: emit events instead)."""
    config: Config
    spec: AgentConfig
    worktree: Path
    emit: Callable[[ev.Event], None]
    """Log an event (appended to disk first, then shown). Call it on the event loop."""
    tag: str
    """Every process the runner starts carries MC_PROC_TAG=<tag>, so a kill can find them all."""
    extra: dict[str, Any] = field(default_factory=dict)
    over_budget: Callable[[], Overrun | None] = lambda: None
    """The budget (the agent's own or the fleet's) the agent has reached, or None: asked before each model call
    (the Fleet's `mc.cost.over_budget` over all its agents)."""

    @property
    def agent_id(self) -> str:
        return self.agent.id

    def status(self, status: str, reason: str = "") -> None:
        """Emit a status change (nothing when the status is already that)."""
        if self.agent.status != status or reason:
            self.emit(ev.StatusChanged(agent=self.agent_id, status=status, previous=self.agent.status, reason=reason))


@dataclass
class Question:
    """A call of the agent that waits for the engineer, and what its runner needs to answer the agent."""

    approval_id: str
    call_id: str
    key: str
    """Its remember-key (`remember_key`)."""
    summary: str = ""
    handle: Any = None
    """The protocol's side: the request id to answer, the options offered … (of a budget question: what
    `go_on` does when the engineer raises the budget)."""
    kind: str = ""
    """`mc.cost.BUDGET_KIND` for a budget question (no call of the agent waits on it), else ""."""


class Runner(abc.ABC):
    """One agent's driver. Methods are called on the event loop; long work runs in tasks the runner owns.

    A runner that speaks an agent's protocol asks through `ask` and answers in `answer`; `resolve`,
    approve-all and the results of calls that never ran are handled here, the same for every runner.
    """

    kind: str = "base"
    keeps_questions: bool = False
    """Whether `restore` waits on the questions a restart found pending (the others' agent processes, and
    their questions, end with the fleet that ran them)."""

    def __init__(self, ctx: RunnerContext) -> None:
        self.ctx = ctx
        self.questions: dict[str, Question] = {}
        self._not_run: dict[str, str] = {}  # call id → why it did not run, until its result is written

    @abc.abstractmethod
    async def start(self, task: str) -> None:
        """Begin the first turn with the task (returns at once; the turn runs in the background)."""

    @abc.abstractmethod
    async def send(self, text: str) -> None:
        """Redirect: stop the current turn if one runs, and continue the conversation with `text`."""

    async def resolve(self, approval_id: str, decision: str, reason: str = "") -> None:
        """Answer a pending approval: approve, approve_all or deny (with an optional reason).

        Approve-all also lets through the other waiting calls with the same remember-key; the calls after
        it are let through by `ask`, from the agent's memory, for the rest of the run. The agent itself is
        only ever told "this once", so that nothing outlives the run in the agent's own settings."""
        question = self.questions.pop(approval_id, None)
        if question is None:
            raise RunnerError(f"no pending approval {approval_id} for agent {self.ctx.agent.name}")
        if question.kind == BUDGET_KIND:
            if decision == "deny":
                await self.budget_denied(question.handle)
            else:
                if not self.questions:
                    self.ctx.status("running")
                await self.go_on(question.handle)
            return
        if decision == "deny":
            if question.call_id:
                self._not_run[question.call_id] = denied_text(reason)
            await self.answer(question, "deny", reason)
        else:
            await self.answer(question, "approve", "")
        if decision == "approve_all" and question.key:
            for other in [q for q in self.questions.values() if q.key == question.key]:
                del self.questions[other.approval_id]
                self.ctx.emit(
                    ev.ApprovalResolved(agent=self.ctx.agent_id, approval_id=other.approval_id, decision="approve")
                )
                await self.answer(other, "approve", "")
        if not self.questions and self.ctx.agent.status == "waiting":
            self.ctx.status("running")

    # -- approvals: the shared half (a runner translates its protocol's question into `ask`) ---------------
    def new_approval_id(self, call_id: str) -> str:
        """`ap-<call id>`, made unique among the questions of this agent."""
        approval_id, n = f"ap-{call_id}", 1
        while approval_id in self.questions or approval_id in self.ctx.agent.pending:
            n += 1
            approval_id = f"ap-{call_id}-{n}"
        return approval_id

    def ask(self, question: Question, *, tool: str, kind: str, summary: str, detail: str) -> bool:
        """The agent asks to run a call. True when approve-all already covers it (answer `approve` at once);
        else the question waits for the engineer (ApprovalRequested, status waiting) and False."""
        if question.key in self.ctx.agent.remembered:
            return True
        question.summary = question.summary or summary
        self.questions[question.approval_id] = question
        self.ctx.emit(
            ev.ApprovalRequested(
                agent=self.ctx.agent_id,
                approval_id=question.approval_id,
                call_id=question.call_id,
                tool=tool,
                kind=kind,
                summary=summary[:300],
                detail=detail,
                remember_key=question.key,
            )
        )
        self.ctx.status("waiting", f"{kind}: {summary}"[:200])
        return False

    def ask_budget(self, overrun: Overrun, handle: Any = None) -> None:
        """The agent reached a budget before a model call: ask the engineer, through `ask`, like any approval.
        Approving raises the budget once by its own amount and calls `go_on(handle)`; denying ends the turn; kill
        ends the agent. A question asked before a restart is pending still: it waits again, unasked."""
        question = Question(approval_id=overrun.approval_id, call_id="", key="", handle=handle, kind=BUDGET_KIND)
        if overrun.approval_id in self.ctx.agent.pending:
            question.summary = overrun.summary
            self.questions.setdefault(overrun.approval_id, question)
            if self.ctx.agent.status != "waiting":
                self.ctx.status("waiting", f"{BUDGET_KIND}: {overrun.summary}"[:200])
            return
        self.ask(question, tool=overrun.scope, kind=BUDGET_KIND, summary=overrun.summary, detail=overrun.detail)

    def within_budget(self, handle: Any) -> bool:
        """Before a model call the runner is about to cause (a turn it starts): True when no budget is reached;
        else the budget question is asked, with `handle` for `go_on`, and False (start nothing then)."""
        overrun = self.ctx.over_budget()
        if overrun is None:
            return True
        self.ask_budget(overrun, handle)
        return False

    async def budget_denied(self, handle: Any) -> None:
        """The engineer denied a budget question: the turn ends where it stopped (a runner that holds a request of
        its agent answers it here)."""
        self.ctx.status("idle", BUDGET_STOPPED)

    def fleet_usage(self) -> None:  # noqa: B027 - optional hook
        """Another agent reported usage while the fleet has a budget: a runner that cannot check before each model
        call checks now whether its running turn must stop at the fleet's budget."""

    async def go_on(self, handle: Any) -> None:
        """The engineer raised the budget the agent stopped at: continue as `handle` says (the runner's own:
        the instruction whose turn waited, or the held request to let through). The budget is checked again
        there: one call may have used more than a raise."""
        raise NotImplementedError

    async def answer(self, question: Question, decision: str, reason: str) -> None:
        """Tell the agent a decision in its protocol: "approve" (this once), "deny" (with the engineer's
        reason, which the model must get to read) or "cancel" (the turn stops). Runners that `ask` define it."""
        raise NotImplementedError

    async def cancel_questions(self, why: str, decision: str = "cancel") -> None:
        """Answer every waiting question with `decision` ("cancel" for an interrupt, "deny" for a redirect):
        their calls never ran, and their results say `why`."""
        questions, self.questions = self.questions, {}
        for question in questions.values():
            if question.kind == BUDGET_KIND:
                continue  # no call waits on it: what follows (a new turn, or none) decides again
            if question.call_id:
                self._not_run[question.call_id] = why
            await self.answer(question, decision, why)

    def not_run(self, call_id: str) -> str | None:
        """Why a call mission control said no to did not run (its result should say so), or None."""
        return self._not_run.pop(call_id, None)

    def close_not_run(self) -> None:
        """Write the result of every call mission control said no to whose agent reported no result."""
        pending, self._not_run = self._not_run, {}
        for call_id, text in pending.items():
            self.ctx.emit(ev.ToolResult(agent=self.ctx.agent_id, call_id=call_id, ok=False, output=text))

    @abc.abstractmethod
    async def interrupt(self) -> None:
        """Stop the current turn and keep the agent (status interrupted)."""

    @abc.abstractmethod
    async def resume(self) -> None:
        """Continue after an interrupt or a restart, from the conversation on record."""

    @abc.abstractmethod
    async def kill(self) -> None:
        """Stop the agent and every process it started. Returns when none is left."""

    async def detach(self) -> None:
        """Mission control is closing: stop without answering anything, so that pending approvals and the
        conversation stay on disk exactly as they are and come back on the next start."""
        await self.kill()

    async def restore(self) -> None:  # noqa: B027 - optional hook
        """Called after a restart for an agent whose approvals are still pending: be ready to resolve them."""

    @property
    def busy(self) -> bool:
        """True while a turn runs."""
        return False
