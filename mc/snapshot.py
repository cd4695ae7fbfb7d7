"""An agent's state as plain JSON and back: what a fleet server sends a client that attaches.

A client rebuilds each agent from a snapshot once and then folds every later event into it with the same
`Agent.apply` the fleet uses, so a screen attached over a socket shows what an in-process fleet would. The
snapshot carries the state fields and the tail of the log (the whole log is asked for separately), never the
conversation or the runner's private state, which only the fleet needs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mc import events as ev
from mc.agent import LOG_RING, Agent

#: Fields a client never needs (the model's conversation, a runner's resume data, internal bookkeeping).
_PRIVATE = {"conversation", "runner_state", "log", "pending", "tool_calls", "diff_files", "remembered", "version"}
_PRIVATE |= {"text_streamed", "streamed_calls", "flags"}


def agent_to_dict(agent: Agent, log_lines: int = LOG_RING) -> dict[str, Any]:
    """The agent's state and the last `log_lines` lines of its log, as JSON-ready data."""
    data: dict[str, Any] = {f.name: getattr(agent, f.name) for f in dataclasses.fields(agent) if f.name not in _PRIVATE}
    data["conflicts"] = list(agent.conflicts)
    data["pending"] = [p.to_dict() for p in agent.pending.values()]
    data["tool_calls"] = [c.to_dict() for c in list(agent.tool_calls.values())[-50:]]
    data["diff_files"] = [dataclasses.asdict(f) for f in agent.diff_files]
    data["flags"] = [dataclasses.asdict(f) for f in agent.flags]
    data["remembered"] = sorted(agent.remembered)
    data["log"] = [list(line) for line in agent.log.tail(log_lines)]
    data["log_total"] = agent.log.total
    return data


def agent_from_dict(data: dict[str, Any]) -> Agent:
    """An Agent rebuilt from `agent_to_dict` output; later events are applied to it with `Agent.apply`."""
    names = {f.name for f in dataclasses.fields(Agent)} - _PRIVATE
    agent = Agent(**{k: v for k, v in data.items() if k in names and k != "conflicts"})
    agent.conflicts = tuple(data.get("conflicts") or ())
    for item in data.get("pending") or []:
        request = ev.event_from_dict(item)
        if isinstance(request, ev.ApprovalRequested):
            agent.pending[request.approval_id] = request
    for item in data.get("tool_calls") or []:
        call = ev.event_from_dict(item)
        if isinstance(call, ev.ToolCall):
            agent.tool_calls[call.call_id] = call
    agent.diff_files = tuple(ev.FileStat(**f) for f in data.get("diff_files") or [])
    agent.flags = tuple(ev.Flag.from_dict(f) for f in data.get("flags") or [])
    agent.remembered = set(data.get("remembered") or [])
    for kind, text in data.get("log") or []:
        agent.log.lines.append((kind, text))
    agent.log.total = int(data.get("log_total") or len(agent.log.lines))
    agent.version = 1
    return agent
