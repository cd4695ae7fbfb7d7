"""An agent's state as plain JSON and back: what a fleet server sends a client that attaches.

A client rebuilds each agent from a snapshot once and then folds every later event into it with the same
`Agent.apply` the fleet uses, so a screen attached over a socket shows what an in-process fleet would. The
snapshot is the agent's own checkpoint (`Agent.to_snapshot`, one codec per field) without what only the fleet
needs (the model's conversation) and with the log cut to its last lines (the whole log is asked for separately).
"""

from __future__ import annotations

from typing import Any

from mc.agent import LOG_RING, Agent

#: Tool calls a snapshot keeps (the newest), for the lines that name them.
TOOL_CALLS = 50


def agent_to_dict(agent: Agent, log_lines: int = LOG_RING) -> dict[str, Any]:
    """The agent's state and the last `log_lines` lines of its log, as JSON-ready data."""
    data = agent.to_snapshot()
    data.pop("conversation", None)
    log = data.get("log") or {}
    lines = log.get("lines") or []
    log["lines"] = lines[-log_lines:] if log_lines else []
    calls = data.get("tool_calls") or []
    data["tool_calls"] = calls[-TOOL_CALLS:]
    return data


def agent_from_dict(data: dict[str, Any]) -> Agent:
    """An Agent rebuilt from `agent_to_dict` output; later events are applied to it with `Agent.apply`."""
    agent = Agent.from_snapshot(data)
    agent.version += 1
    return agent
