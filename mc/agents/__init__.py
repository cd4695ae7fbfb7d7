"""Runners: the drivers of agents. One protocol (mc.agents.base.Runner), several kinds."""

from __future__ import annotations

from mc.agents.base import Runner, RunnerContext, RunnerError

__all__ = ["Runner", "RunnerContext", "RunnerError", "make_runner"]


def make_runner(kind: str, ctx: RunnerContext) -> Runner:
    """The runner of an agent, by kind. Unknown or unavailable kinds raise RunnerError."""
    if kind == "builtin":
        from mc.agents.builtin import BuiltinRunner

        return BuiltinRunner(ctx)
    raise RunnerError(f'runner {kind!r} is not available in this version: use runner = "builtin"')
