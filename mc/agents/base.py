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
from mc.tools import allowed_by_prefix


def needs_approval(policy: str, kind: str, command: str, allow: list[str]) -> bool:
    """Whether the approval policy makes a call of this kind (read, write, command) wait for the engineer."""
    if policy == "never":
        return False
    if policy == "writes":
        return kind in ("write", "command")
    if policy == "commands":
        return kind == "command" and not allowed_by_prefix(command, allow)
    return True  # always, and anything unknown: ask


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

    @property
    def agent_id(self) -> str:
        return self.agent.id

    def status(self, status: str, reason: str = "") -> None:
        """Emit a status change (nothing when the status is already that)."""
        if self.agent.status != status or reason:
            self.emit(ev.StatusChanged(agent=self.agent_id, status=status, previous=self.agent.status, reason=reason))


class Runner(abc.ABC):
    """One agent's driver. Methods are called on the event loop; long work runs in tasks the runner owns."""

    kind: str = "base"

    def __init__(self, ctx: RunnerContext) -> None:
        self.ctx = ctx

    @abc.abstractmethod
    async def start(self, task: str) -> None:
        """Begin the first turn with the task (returns at once; the turn runs in the background)."""

    @abc.abstractmethod
    async def send(self, text: str) -> None:
        """Redirect: stop the current turn if one runs, and continue the conversation with `text`."""

    @abc.abstractmethod
    async def resolve(self, approval_id: str, decision: str, reason: str = "") -> None:
        """Answer a pending approval: approve, approve_all or deny (with an optional reason)."""

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
