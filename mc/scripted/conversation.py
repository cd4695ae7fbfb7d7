"""Read a request's conversation and decide which scripted turn answers it.

Both APIs are reduced to one list of `Entry`. The turns the model already played are recognised by the
ids the server gave them (call ids `call_t<N>_…`, message ids `msg_t<N>_…`) or, for text the client sent
back without ids, by the text itself; an assistant turn that matches nothing counts as the next turn.
The answer is the first turn after the last one played whose condition holds on what came in since.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from mc.scripted.scenario import Agent, Scenario, Turn

_TURN_ID = re.compile(r"^(?:call|msg|fc)_t(\d+)_")


@dataclass
class Entry:
    kind: str
    """system, user, assistant (text), call (a tool call), output (a tool result)."""
    text: str = ""
    call_id: str = ""
    name: str = ""
    item_id: str = ""


@dataclass
class Situation:
    """Where the conversation stands, as the script sees it."""

    played: int
    """The index of the last scripted turn the model played (-1: none yet)."""
    new_user: list[str] = field(default_factory=list)
    new_outputs: list[str] = field(default_factory=list)
    first_user: str = ""
    system: str = ""

    @property
    def output_last_line(self) -> str:
        for out in reversed(self.new_outputs):
            lines = [line.strip() for line in out.splitlines() if line.strip()]
            if lines:
                return lines[-1]
        return ""


def content_text(content: Any) -> str:
    """The text of a message content: a string, or a list of parts with `text` (or `output`)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "".join(parts)
    if isinstance(content, dict) and isinstance(content.get("text"), str):
        return content["text"]
    return json.dumps(content)


def responses_entries(body: dict[str, Any]) -> list[Entry]:
    """The conversation of a Responses API request body (without any previous_response_id history)."""
    entries: list[Entry] = []
    if isinstance(body.get("instructions"), str):
        entries.append(Entry("system", body["instructions"]))
    items = body.get("input", [])
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role", "user")
            text = content_text(item.get("content"))
            if role == "assistant":
                entries.append(Entry("assistant", text, item_id=str(item.get("id") or "")))
            elif role in ("system", "developer"):
                entries.append(Entry("system", text))
            else:
                entries.append(Entry("user", text))
        elif kind == "function_call":
            entries.append(
                Entry(
                    "call",
                    str(item.get("arguments", "")),
                    call_id=str(item.get("call_id", "")),
                    name=str(item.get("name", "")),
                    item_id=str(item.get("id") or ""),
                )
            )
        elif kind == "function_call_output":
            entries.append(Entry("output", content_text(item.get("output")), call_id=str(item.get("call_id", ""))))
    return entries


def chat_entries(body: dict[str, Any]) -> list[Entry]:
    """The conversation of a Chat Completions request body."""
    entries: list[Entry] = []
    for message in body.get("messages", []) or []:
        if not isinstance(message, dict):
            continue
        role = message.get("role", "user")
        text = content_text(message.get("content"))
        if role in ("system", "developer"):
            entries.append(Entry("system", text))
        elif role == "user":
            entries.append(Entry("user", text))
        elif role == "tool":
            entries.append(Entry("output", text, call_id=str(message.get("tool_call_id", ""))))
        elif role == "assistant":
            if text:
                entries.append(Entry("assistant", text))
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                entries.append(
                    Entry(
                        "call",
                        str(function.get("arguments", "")),
                        call_id=str(call.get("id", "")),
                        name=str(function.get("name", "")),
                    )
                )
    return entries


def offered_tools(body: dict[str, Any]) -> list[str]:
    """The function tool names a request offers (both API shapes)."""
    names = []
    for tool in body.get("tools", []) or []:
        if not isinstance(tool, dict):
            continue
        name = tool.get("name") or (tool.get("function") or {}).get("name")
        if isinstance(name, str):
            names.append(name)
    return names


def select_agent(scenario: Scenario, model: str, entries: list[Entry]) -> Agent | None:
    """The agent a request is for: by model name, then by marker in the first user message or system text."""
    if scenario.any_model:
        return scenario.agents[0]
    agent = scenario.agent(model)
    if agent is not None:
        return agent
    first_user = next((e.text for e in entries if e.kind == "user"), "")
    system = "\n".join(e.text for e in entries if e.kind == "system")
    for candidate in scenario.agents:
        if candidate.marker and (candidate.marker in first_user or candidate.marker in system):
            return candidate
    return None


def _template_pattern(turn: Turn) -> re.Pattern[str]:
    sentinel = "\x00LAST\x00"
    text = re.escape(turn.render(sentinel).strip()).replace(re.escape(sentinel), ".*?")
    return re.compile(text, re.DOTALL)


def _identify(agent: Agent, group: list[Entry], after: int) -> int | None:
    for entry in group:
        for ident in (entry.call_id, entry.item_id):
            m = _TURN_ID.match(ident)
            if m and int(m.group(1)) < len(agent.turns):
                return int(m.group(1))
    texts = [e.text.strip() for e in group if e.kind == "assistant" and e.text.strip()]
    if not texts:
        return None
    for index in range(after + 1, len(agent.turns)):
        turn = agent.turns[index]
        if turn.say and _template_pattern(turn).fullmatch(texts[0]):
            return index
    return None


def situation(agent: Agent, entries: list[Entry]) -> Situation:
    """How far the script has got in this conversation, and what came in since the model's last turn."""
    played = -1
    group: list[Entry] = []
    last_assistant = -1
    for position, entry in enumerate(entries):
        if entry.kind in ("assistant", "call"):
            group.append(entry)
            last_assistant = position
            continue
        if group:
            found = _identify(agent, group, played)
            played = found if found is not None else played + 1
            group = []
    if group:
        found = _identify(agent, group, played)
        played = found if found is not None else played + 1
    since = entries[last_assistant + 1 :]
    return Situation(
        played=played,
        new_user=[e.text for e in since if e.kind == "user"],
        new_outputs=[e.text for e in since if e.kind == "output"],
        first_user=next((e.text for e in entries if e.kind == "user"), ""),
        system="\n".join(e.text for e in entries if e.kind == "system"),
    )


def next_turn(agent: Agent, where: Situation) -> int | None:
    """The index of the turn that answers now, or None when the script has run out."""
    turns = agent.turns
    start = where.played + 1
    if 0 <= where.played < len(turns) and turns[where.played].choice:
        while start < len(turns) and turns[start].choice == turns[where.played].choice:
            start += 1
    for index in range(max(start, 0), len(turns)):
        if turns[index].condition_holds(where.new_user, where.new_outputs):
            return index
    return None
