"""The scripted server's Anthropic Messages endpoint: ``POST /v1/messages`` (and ``/v1/messages/count_tokens``).

Claude Code calls it when ``ANTHROPIC_BASE_URL`` points at the server. The same scenarios play here as on
the OpenAI endpoints: a turn's text streams as a ``text`` block in word-sized ``text_delta`` events, its tool
calls as ``tool_use`` blocks (arguments as ``input_json_delta`` pieces), the client's ``tool_result`` blocks
are the tool outputs the conditions look at, and ``message_start``/``message_delta`` carry the usage.
Faults map onto Anthropic's error shapes: 429 ``rate_limit_error`` with ``retry-after``, 500 (or the
status given) ``api_error`` (529 ``overloaded_error``), and cut, stall and malformed in the middle of the
SSE stream.

A request for a model the scenario does not name (and without an agent's marker) that offers no tools is
a side job of the client's small model (a title, a summary): it is answered with a short text ("Done.")
and recorded with ``agent = ""``. With tools it is the agent loop asking for the wrong model: 404
``not_found_error`` naming the models the scenario has.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from mc.scripted._http import Request, send_bytes, send_json
from mc.scripted.conversation import Entry, content_text, offered_tools, select_agent
from mc.scripted.scenario import Agent, Fault

if TYPE_CHECKING:
    from mc.scripted.server import Reply, ScriptedServer

#: The assistant text Claude Code puts in a resumed conversation for a turn the model never answered (a tool
#: call cut off by a restart): no turn of the script, so it is left out of the conversation.
SYNTHETIC_TEXTS = frozenset({"No response requested."})


def error_body(message: str, kind: str) -> dict[str, Any]:
    """An Anthropic error object: ``{"type": "error", "error": {"type": kind, "message": message}}``."""
    return {"type": "error", "error": {"type": kind, "message": message}}


def _system_text(system: Any) -> str:
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        return "\n".join(str(b.get("text", "")) for b in system if isinstance(b, dict) and b.get("type") == "text")
    return ""


def messages_entries(body: dict[str, Any]) -> list[Entry]:
    """The conversation of a Messages API request body: system text, user text, the assistant's text and
    ``tool_use`` blocks (calls), the client's ``tool_result`` blocks (outputs)."""
    entries: list[Entry] = []
    system = _system_text(body.get("system"))
    if system:
        entries.append(Entry("system", system))
    for message in body.get("messages", []) or []:
        if not isinstance(message, dict):
            continue
        role = message.get("role", "user")
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list):
            continue
        texts: list[str] = []

        def flush_text(kind: str, texts: list[str] = texts) -> None:
            if texts:
                entries.append(Entry(kind, "\n".join(texts)))
                texts.clear()

        text_kind = {"assistant": "assistant", "system": "system"}.get(role, "user")
        for block in blocks:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "text":
                if role != "assistant" or str(block.get("text", "")).strip() not in SYNTHETIC_TEXTS:
                    texts.append(str(block.get("text", "")))
            elif kind == "tool_use" and role == "assistant":
                flush_text(text_kind)
                entries.append(
                    Entry(
                        "call",
                        json.dumps(block.get("input") or {}),
                        call_id=str(block.get("id", "")),
                        name=str(block.get("name", "")),
                    )
                )
            elif kind == "tool_result":
                flush_text(text_kind)
                entries.append(
                    Entry("output", content_text(block.get("content")), call_id=str(block.get("tool_use_id", "")))
                )
        flush_text(text_kind)
    return entries


def _usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def _message(message_id: str, model: str, content: list[dict[str, Any]], stop: str | None, usage: dict) -> dict:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": usage,
    }


def _content(reply: Reply) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [{"type": "text", "text": reply.text}] if reply.text else []
    for _, call_id, name, args in reply.calls:
        blocks.append({"type": "tool_use", "id": call_id, "name": name, "input": json.loads(args)})
    return blocks


async def _events(
    reply: Reply, model: str, rate: float, usage_in: int
) -> AsyncIterator[tuple[str | None, dict[str, Any]]]:
    from mc.scripted.server import _Pacer, split_words

    pacer = _Pacer(rate)
    pieces_out = 0
    start = _message(reply.message_id, model, [], None, _usage(usage_in, 1))
    yield "message_start", {"type": "message_start", "message": start}
    yield "ping", {"type": "ping"}
    index = 0
    if reply.text:
        block = {"type": "text", "text": ""}
        yield "content_block_start", {"type": "content_block_start", "index": index, "content_block": block}
        for piece in split_words(reply.text):
            await pacer.tick()
            pieces_out += 1
            delta = {"type": "text_delta", "text": piece}
            yield "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
        index += 1
    for _, call_id, name, args in reply.calls:
        block = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
        yield "content_block_start", {"type": "content_block_start", "index": index, "content_block": block}
        for piece in split_words(args):
            await pacer.tick()
            pieces_out += 1
            delta = {"type": "input_json_delta", "partial_json": piece}
            yield "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
        index += 1
    stop = {"stop_reason": "tool_use" if reply.calls else "end_turn", "stop_sequence": None}
    yield "message_delta", {"type": "message_delta", "delta": stop, "usage": {"output_tokens": max(1, pieces_out)}}
    yield "message_stop", {"type": "message_stop"}


async def _send_fault_status(writer: asyncio.StreamWriter, fault: Fault, agent: Agent) -> None:
    if fault.kind == "429":
        message = fault.message or f"Rate limit reached for {agent.name} (scripted): retry after {fault.retry_after:g}s"
        await send_json(
            writer, 429, error_body(message, "rate_limit_error"), headers={"retry-after": f"{fault.retry_after:g}"}
        )
        return
    status = fault.status or 500
    message = fault.message or f"The model server failed (scripted HTTP {status} for {agent.name})"
    await send_json(writer, status, error_body(message, "overloaded_error" if status == 529 else "api_error"))


async def complete_messages(server: ScriptedServer, request: Request, writer: asyncio.StreamWriter) -> bool:
    """Answer one ``POST /v1/messages`` (or ``/v1/messages/count_tokens``) from the server's scenario."""
    from mc.scripted.server import DONE_TEXT, RecordedRequest, Reply, _Cut, count_input_tokens, split_words

    try:
        body = json.loads(request.body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        await send_json(writer, 400, error_body(f"request body is not JSON: {exc}", "invalid_request_error"))
        return True
    if not isinstance(body, dict):
        await send_json(writer, 400, error_body("request body must be a JSON object", "invalid_request_error"))
        return True
    messages = body.get("messages") if isinstance(body.get("messages"), list) else []
    said = [m.get("content") for m in messages if isinstance(m, dict)]
    usage_in = max(1, count_input_tokens([body.get("system"), said, body.get("tools")]))
    if request.path.rstrip("/").endswith("/count_tokens"):
        await send_json(writer, 200, {"input_tokens": usage_in})
        return True
    model = str(body.get("model", ""))
    stream = bool(body.get("stream"))
    entries = messages_entries(body)
    agent = select_agent(server.scenario, model, entries)
    record = RecordedRequest(
        method=request.method,
        path=request.path,
        body=body,
        model=model,
        agent=agent.name if agent else "",
        stream=stream,
        entries=entries,
    )
    server.requests.append(record)
    fault = None
    if agent is None and offered_tools(body):
        known = ", ".join(a.name for a in server.scenario.agents)
        message = (
            f"model {model!r} is not in the scenario {server.scenario.source or '(given as data)'}: use one of {known}"
        )
        await send_json(writer, 404, error_body(message, "not_found_error"))
        return True
    if agent is None:
        # A side job (a title, a summary) for a model the scenario does not name: a short plain answer.
        reply = Reply(DONE_TEXT, [], f"msg_side_{uuid.uuid4().hex[:10]}")
        rate = 0.0
    else:
        where, index, turn, fault, delay, rate = server.plan(agent, entries, record)
        if delay > 0:
            await asyncio.sleep(delay)
        if fault and fault.kind in ("429", "500"):
            await _send_fault_status(writer, fault, agent)
            return True
        reply = server._reply(agent, index, turn, where, body)
    if stream:
        await server._stream(writer, _events(reply, model, rate, usage_in), fault, done_marker=False)
        return True
    if fault and fault.kind == "cut":
        raise _Cut
    if fault and fault.kind == "stall":
        await asyncio.sleep(fault.seconds)
    pieces = len(split_words(reply.text)) + sum(len(split_words(c[3])) for c in reply.calls)
    if rate > 0:
        await asyncio.sleep(pieces / rate)
    stop = "tool_use" if reply.calls else "end_turn"
    data = _message(reply.message_id, model, _content(reply), stop, _usage(usage_in, max(1, pieces)))
    if fault and fault.kind == "malformed":
        await send_bytes(writer, 200, json.dumps(data).encode()[: max(1, fault.after * 8)])
        return True
    await send_json(writer, 200, data)
    return True
