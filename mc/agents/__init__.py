"""Runners: the drivers of agents. One protocol (mc.agents.base.Runner), several kinds."""

from __future__ import annotations

import importlib

from mc.agents.base import Runner, RunnerContext, RunnerError

__all__ = ["RUNNER_CLASSES", "Runner", "RunnerContext", "RunnerError", "make_runner"]

#: kind → "module:class" (imported on first use, so a runner's dependencies load only when it is used)
RUNNER_CLASSES = {
    "builtin": "mc.agents.builtin:BuiltinRunner",
    "command": "mc.agents.command:CommandRunner",
    "claude": "mc.agents.claude:ClaudeRunner",
    "codex": "mc.agents.codex:CodexRunner",
    "acp": "mc.agents.acp:AcpRunner",
}


def runner_class(kind: str) -> type[Runner]:
    """The runner class of a kind. Unknown or unavailable kinds raise RunnerError."""
    target = RUNNER_CLASSES.get(kind)
    if target is None:
        raise RunnerError(f"unknown runner {kind!r}: use one of {', '.join(RUNNER_CLASSES)}")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RunnerError(f"runner {kind!r} is not available in this installation ({exc})") from None
    return getattr(module, class_name)


def runner_status() -> dict[str, tuple[bool, str]]:
    """Which runners are usable here, and why not: kind → (usable, detail)."""
    status: dict[str, tuple[bool, str]] = {
        "builtin": (True, "OpenAI tool loop (needs only the [model] endpoint)"),
        "command": (True, "any command line"),
    }
    for kind in ("codex", "acp", "claude"):
        try:
            module = importlib.import_module(RUNNER_CLASSES[kind].partition(":")[0])
            status[kind] = module.available()
        except Exception as exc:
            status[kind] = (False, f"cannot load: {exc}")
    return status


def make_runner(kind: str, ctx: RunnerContext) -> Runner:
    """The runner of an agent, by kind."""
    return runner_class(kind)(ctx)
