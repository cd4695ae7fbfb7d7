"""A real OpenAI-compatible HTTP server on 127.0.0.1 that plays scripted scenarios.

Endpoints: ``POST /v1/responses`` and ``POST /v1/chat/completions`` (streaming SSE and plain JSON, text and
function tool calls, usage), Anthropic's ``POST /v1/messages`` (mc/scripted/anthropic.py) and
``GET /v1/models``. One server serves a whole fleet: the request's ``model`` picks the scripted agent. Every
request body is kept in ``server.requests`` so tests can check what the model saw.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mc.scripted._http import BadRequest, ChunkedSSE, Request, read_request, send_bytes, send_json
from mc.scripted.conversation import (
    Entry,
    Situation,
    chat_entries,
    next_turn,
    offered_tools,
    responses_entries,
    select_agent,
    situation,
)
from mc.scripted.scenario import Agent, Fault, Scenario, ScenarioError, Turn, load_scenario, scenario_from_dict

DONE_TEXT = "Done."
_PIECE = re.compile(r"\s*\S+|\s+")
_HISTORY_LIMIT = 1000


def split_words(text: str) -> list[str]:
    """Word-sized pieces (each with its leading whitespace) that join back to exactly `text`."""
    return _PIECE.findall(text)


def count_input_tokens(body: Any) -> int:
    """The scripted model's input token count: one token per whitespace-separated word of every string in the
    request. A word is one token however long it is, so a path in the prompt counts the same wherever the
    repository lives (a count by bytes would change with the length of a temporary folder's name)."""
    if isinstance(body, str):
        return len(body.split())
    if isinstance(body, dict):
        return sum(count_input_tokens(value) for value in body.values())
    if isinstance(body, list):
        return sum(count_input_tokens(value) for value in body)
    return 0


@dataclass
class RecordedRequest:
    """One request the server received, with the turn it chose and the fault it injected."""

    method: str
    path: str
    body: dict[str, Any]
    model: str = ""
    agent: str = ""
    """The scripted agent that answered ("" when no agent matched the model)."""
    stream: bool = False
    turn: int | None = None
    """The index of the scripted turn that answered (None: the script had run out)."""
    fault: str = ""
    """The kind of fault injected into the answer ("" for none)."""
    entries: list[Entry] = field(default_factory=list, repr=False)

    def user_texts(self) -> list[str]:
        """Every user message of the conversation, in order."""
        return [e.text for e in self.entries if e.kind == "user"]

    def tool_outputs(self) -> list[str]:
        """Every tool result of the conversation, in order."""
        return [e.text for e in self.entries if e.kind == "output"]

    def tools(self) -> list[str]:
        """The names of the function tools the request offered."""
        return offered_tools(self.body)


@dataclass
class Reply:
    text: str
    calls: list[tuple[str, str, str, str]]
    """(item id, call id, tool name, JSON arguments) per call."""
    message_id: str


class _Pacer:
    """Releases pieces at a steady rate (0: as fast as possible)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.start = 0.0
        self.count = 0

    async def tick(self) -> None:
        if self.rate <= 0:
            return
        loop = asyncio.get_running_loop()
        if not self.count:
            self.start = loop.time()
        self.count += 1
        delay = self.start + self.count / self.rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)


class _Cut(Exception):
    """The scripted fault closed the connection."""


def _error_body(message: str, kind: str, code: str | int | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _first(*values: float | None) -> float:
    return next((v for v in values if v is not None), 0.0)


class ScriptedServer:
    """An OpenAI-compatible server on 127.0.0.1 that answers from a scenario (path, dict or Scenario).

    `tokens_per_second` and `first_byte_delay` given here override the scenario's values everywhere
    (0 runs a paced scenario at full speed); left as None, the turn's, agent's or scenario's value applies.
    """

    def __init__(
        self,
        scenario: Scenario | dict[str, Any] | str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tokens_per_second: float | None = None,
        first_byte_delay: float | None = None,
    ) -> None:
        if isinstance(scenario, Scenario):
            self.scenario = scenario
        elif isinstance(scenario, dict):
            self.scenario = scenario_from_dict(scenario)
        else:
            self.scenario = load_scenario(scenario)
        self.host = host
        self.port = port
        self.tokens_per_second = tokens_per_second
        self.first_byte_delay = first_byte_delay
        self.requests: list[RecordedRequest] = []
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._fault_counts: dict[int, int] = {}
        self._history: dict[str, list[Entry]] = {}

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def requests_for(self, agent: str) -> list[RecordedRequest]:
        """The requests answered by one scripted agent (by its name)."""
        return [r for r in self.requests if r.agent == agent]

    async def start(self) -> None:
        """Listen (on an ephemeral port unless one was given); `port` and `base_url` are set after this."""
        self._server = await asyncio.start_server(self._on_connection, self.host, self.port, limit=1024 * 1024)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and close every open connection (streams in progress are cut)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    async def __aenter__(self) -> ScriptedServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- connections -------------------------------------------------------------------------------

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            while True:
                try:
                    request = await read_request(reader)
                except BadRequest as exc:
                    await send_json(writer, 400, _error_body(str(exc), "invalid_request_error"), keep_alive=False)
                    break
                if request is None:
                    break
                keep = await self._dispatch(request, writer)
                if not keep or not request.keep_alive:
                    break
        except (_Cut, ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # stop() cancels open connections; ending quietly keeps asyncio from logging it
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _dispatch(self, request: Request, writer: asyncio.StreamWriter) -> bool:
        path = request.path.rstrip("/")
        if path.startswith("/v1/"):
            path = path[3:]
        if request.method == "GET" and path == "/models":
            data = [self._model_object(a.name) for a in self.scenario.agents]
            await send_json(writer, 200, {"object": "list", "data": data})
            return True
        if request.method == "GET" and path.startswith("/models/"):
            name = path.removeprefix("/models/")
            if self.scenario.agent(name) or self.scenario.any_model:
                await send_json(writer, 200, self._model_object(name))
            else:
                await send_json(writer, 404, _error_body(f"model {name!r} not found", "invalid_request_error"))
            return True
        if path in ("/responses", "/chat/completions"):
            if request.method != "POST":
                await send_json(writer, 405, _error_body(f"use POST for {request.path}", "invalid_request_error"))
                return True
            return await self._complete(request, writer, "responses" if path == "/responses" else "chat")
        if request.method == "POST" and path in ("/messages", "/messages/count_tokens"):
            from mc.scripted.anthropic import complete_messages  # the Anthropic Messages API (Claude Code)

            return await complete_messages(self, request, writer)
        await send_json(
            writer,
            404,
            _error_body(
                f"no such endpoint {request.method} {request.path}: this server offers POST /v1/responses, "
                "POST /v1/chat/completions, POST /v1/messages and GET /v1/models",
                "invalid_request_error",
            ),
        )
        return True

    @staticmethod
    def _model_object(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": "mc-scripted"}

    # -- completions -------------------------------------------------------------------------------

    async def _complete(self, request: Request, writer: asyncio.StreamWriter, api: str) -> bool:
        try:
            body = json.loads(request.body or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            await send_json(writer, 400, _error_body(f"request body is not JSON: {exc}", "invalid_request_error"))
            return True
        if not isinstance(body, dict):
            await send_json(writer, 400, _error_body("request body must be a JSON object", "invalid_request_error"))
            return True
        model = str(body.get("model", ""))
        stream = bool(body.get("stream"))
        entries = responses_entries(body) if api == "responses" else chat_entries(body)
        previous = body.get("previous_response_id") if api == "responses" else None
        if previous:
            if previous not in self._history:
                message = f"previous response {previous!r} not found on this server"
                await send_json(
                    writer, 400, _error_body(message, "invalid_request_error", "previous_response_not_found")
                )
                return True
            entries = self._history[previous] + [e for e in entries if e.kind != "system"]
        agent = select_agent(self.scenario, model, entries)
        record = RecordedRequest(
            method=request.method,
            path=request.path,
            body=body,
            model=model,
            agent=agent.name if agent else "",
            stream=stream,
            entries=entries,
        )
        self.requests.append(record)
        if agent is None:
            known = ", ".join(a.name for a in self.scenario.agents)
            message = (
                f"model {model!r} is not in the scenario {self.scenario.source or '(given as data)'}: "
                f"use one of {known}"
            )
            await send_json(writer, 404, _error_body(message, "invalid_request_error", "model_not_found"))
            return True

        where, index, turn, fault, delay, rate = self.plan(agent, entries, record)
        if delay > 0:
            await asyncio.sleep(delay)
        if fault and fault.kind in ("429", "500"):
            await self._send_fault_status(writer, fault, agent)
            return True
        reply = self._reply(agent, index, turn, where, body)
        response_id = f"resp_{uuid.uuid4().hex[:16]}" if api == "responses" else f"chatcmpl-{uuid.uuid4().hex[:16]}"
        if api == "responses":
            self._remember(response_id, entries, reply)
        usage_in = max(1, count_input_tokens(body))
        if stream:
            events = (
                self._responses_events(response_id, reply, body, model, rate, usage_in)
                if api == "responses"
                else self._chat_events(response_id, reply, body, model, rate, usage_in)
            )
            await self._stream(writer, events, fault, done_marker=api == "chat")
            return True
        if fault and fault.kind == "cut":
            raise _Cut
        if fault and fault.kind in ("stall", "keepalive"):  # a plain answer cannot carry comments
            await asyncio.sleep(fault.seconds)
        pieces = len(split_words(reply.text)) + sum(len(split_words(c[3])) for c in reply.calls)
        if rate > 0:
            await asyncio.sleep(pieces / rate)
        if api == "responses":
            data = self._response_object(response_id, body, model, "completed", self._output_items(reply))
            data["usage"] = self._responses_usage(usage_in, pieces)
        else:
            data = self._chat_object(response_id, reply, model, usage_in, pieces)
        if fault and fault.kind == "malformed":
            await send_bytes(writer, 200, json.dumps(data).encode()[: max(1, fault.after * 8)])
            return True
        await send_json(writer, 200, data)
        return True

    def plan(self, agent: Agent, entries: list[Any], record: RecordedRequest) -> tuple[Any, ...]:
        """What answers this request, whatever the API: (where, turn index, turn, fault, first-byte delay, pace).
        The turn and the fault are written into `record`."""
        where = situation(agent, entries)
        index = next_turn(agent, where)
        turn = agent.turns[index] if index is not None else None
        record.turn = index
        fault = self._pick_fault(agent, turn)
        record.fault = fault.kind if fault else ""
        delay = _first(
            self.first_byte_delay,
            turn.first_byte_delay if turn else None,
            agent.first_byte_delay,
            self.scenario.first_byte_delay,
        )
        rate = _first(
            self.tokens_per_second,
            turn.tokens_per_second if turn else None,
            agent.tokens_per_second,
            self.scenario.tokens_per_second,
        )
        return where, index, turn, fault, delay, rate

    def _pick_fault(self, agent: Agent, turn: Turn | None) -> Fault | None:
        scoped = [*self.scenario.faults, *agent.faults, *([turn.fault] if turn and turn.fault else [])]
        chosen = None
        for fault in scoped:
            seen = self._fault_counts.get(id(fault), 0) + 1
            self._fault_counts[id(fault)] = seen
            if chosen is None and (fault.times == 0 or seen <= fault.times):
                chosen = fault
        return chosen

    async def _send_fault_status(self, writer: asyncio.StreamWriter, fault: Fault, agent: Agent) -> None:
        if fault.kind == "429":
            message = (
                fault.message or f"Rate limit reached for {agent.name} (scripted): retry after {fault.retry_after:g}s"
            )
            await send_json(
                writer,
                429,
                _error_body(message, "rate_limit_error", "rate_limit_exceeded"),
                headers={"Retry-After": f"{fault.retry_after:g}"},
            )
            return
        status = fault.status or 500
        message = fault.message or f"The model server failed (scripted HTTP {status} for {agent.name})"
        await send_json(writer, status, _error_body(message, "server_error", status))

    def _reply(self, agent: Agent, index: int | None, turn: Turn | None, where: Situation, body: dict) -> Reply:
        rid = uuid.uuid4().hex[:10]
        if turn is None or index is None:
            return Reply(DONE_TEXT, [], f"msg_done_{rid}")
        offered = offered_tools(body)
        missing = [c.tool for c in turn.calls if c.tool not in offered]
        if missing:
            text = (
                f"[scripted] turn {index + 1} of {agent.name!r} calls tool {missing[0]!r}, but the request offers "
                f"{', '.join(offered) if offered else 'no tools'}: add the tool to the request or fix the scenario."
            )
            return Reply(text, [], f"msg_missing_{rid}")
        calls = [
            (f"fc_t{index}_{j}_{rid}", f"call_t{index}_{j}_{rid}", c.tool, json.dumps(c.args))
            for j, c in enumerate(turn.calls)
        ]
        return Reply(turn.render(where.output_last_line) if turn.say else "", calls, f"msg_t{index}_{rid}")

    def _remember(self, response_id: str, entries: list[Entry], reply: Reply) -> None:
        out = [Entry("assistant", reply.text, item_id=reply.message_id)] if reply.text else []
        out += [Entry("call", args, call_id=cid, name=name, item_id=iid) for iid, cid, name, args in reply.calls]
        self._history[response_id] = entries + out
        while len(self._history) > _HISTORY_LIMIT:
            self._history.pop(next(iter(self._history)))

    # -- streaming ---------------------------------------------------------------------------------

    async def _stream(
        self,
        writer: asyncio.StreamWriter,
        events: AsyncIterator[tuple[str | None, dict[str, Any]]],
        fault: Fault | None,
        *,
        done_marker: bool,
    ) -> None:
        sse = ChunkedSSE(writer)
        await sse.start()
        sent = 0
        pending = fault if fault and fault.kind in ("cut", "stall", "keepalive", "malformed") else None

        async def inject(name: str | None) -> None:
            assert pending is not None
            if pending.kind == "cut":
                writer.close()
                raise _Cut
            if pending.kind == "stall":
                await asyncio.sleep(pending.seconds)
            elif pending.kind == "keepalive":  # bytes keep coming, but nothing of an answer
                end = asyncio.get_running_loop().time() + pending.seconds
                while (left := end - asyncio.get_running_loop().time()) > 0:
                    await sse.send_raw(b": keep-alive\n\n")
                    await asyncio.sleep(min(pending.every, left))
            else:
                await sse.event('{"type": "' + (name or "chunk") + '", "delta": "unterminated', event=name)

        async for name, data in events:
            if pending and sent == pending.after:
                await inject(name)
                pending = None
            await sse.event(json.dumps(data), event=name)
            sent += 1
        if pending:
            await inject(None)
        if done_marker:
            await sse.event("[DONE]")
        await sse.end()

    def _response_object(
        self, response_id: str, body: dict[str, Any], model: str, status: str, output: list[dict[str, Any]]
    ) -> dict[str, Any]:
        return {
            "id": response_id,
            "object": "response",
            "created_at": int(time.time()),
            "status": status,
            "model": model,
            "output": output,
            "parallel_tool_calls": bool(body.get("parallel_tool_calls", True)),
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools", []),
            "instructions": body.get("instructions"),
            "previous_response_id": body.get("previous_response_id"),
            "temperature": body.get("temperature", 1.0),
            "top_p": body.get("top_p", 1.0),
            "error": None,
            "incomplete_details": None,
            "metadata": body.get("metadata") or {},
            "usage": None,
        }

    @staticmethod
    def _responses_usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        }

    @staticmethod
    def _message_item(reply: Reply, status: str) -> dict[str, Any]:
        part = {"type": "output_text", "text": reply.text, "annotations": [], "logprobs": []}
        return {
            "id": reply.message_id,
            "type": "message",
            "role": "assistant",
            "status": status,
            "content": [part] if status == "completed" else [],
        }

    @staticmethod
    def _call_item(call: tuple[str, str, str, str], status: str) -> dict[str, Any]:
        item_id, call_id, name, args = call
        return {
            "id": item_id,
            "type": "function_call",
            "call_id": call_id,
            "name": name,
            "arguments": args if status == "completed" else "",
            "status": status,
        }

    def _output_items(self, reply: Reply) -> list[dict[str, Any]]:
        items = [self._message_item(reply, "completed")] if reply.text else []
        return items + [self._call_item(call, "completed") for call in reply.calls]

    async def _responses_events(
        self, response_id: str, reply: Reply, body: dict[str, Any], model: str, rate: float, usage_in: int
    ) -> AsyncIterator[tuple[str | None, dict[str, Any]]]:
        pacer = _Pacer(rate)
        seq = 0
        pieces_out = 0

        def event(kind: str, **fields: Any) -> tuple[str, dict[str, Any]]:
            nonlocal seq
            seq += 1
            return kind, {"type": kind, "sequence_number": seq - 1, **fields}

        start = self._response_object(response_id, body, model, "in_progress", [])
        yield event("response.created", response=start)
        yield event("response.in_progress", response=start)
        index = 0
        if reply.text:
            mid = reply.message_id
            yield event("response.output_item.added", output_index=index, item=self._message_item(reply, "in_progress"))
            empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            yield event("response.content_part.added", item_id=mid, output_index=index, content_index=0, part=empty)
            for piece in split_words(reply.text):
                await pacer.tick()
                pieces_out += 1
                yield event(
                    "response.output_text.delta",
                    item_id=mid,
                    output_index=index,
                    content_index=0,
                    delta=piece,
                    logprobs=[],
                )
            yield event(
                "response.output_text.done",
                item_id=mid,
                output_index=index,
                content_index=0,
                text=reply.text,
                logprobs=[],
            )
            full = {"type": "output_text", "text": reply.text, "annotations": [], "logprobs": []}
            yield event("response.content_part.done", item_id=mid, output_index=index, content_index=0, part=full)
            yield event("response.output_item.done", output_index=index, item=self._message_item(reply, "completed"))
            index += 1
        for call in reply.calls:
            item_id, _, name, args = call
            yield event("response.output_item.added", output_index=index, item=self._call_item(call, "in_progress"))
            for piece in split_words(args):
                await pacer.tick()
                pieces_out += 1
                yield event("response.function_call_arguments.delta", item_id=item_id, output_index=index, delta=piece)
            yield event(
                "response.function_call_arguments.done", item_id=item_id, output_index=index, name=name, arguments=args
            )
            yield event("response.output_item.done", output_index=index, item=self._call_item(call, "completed"))
            index += 1
        final = self._response_object(response_id, body, model, "completed", self._output_items(reply))
        final["usage"] = self._responses_usage(usage_in, pieces_out)
        yield event("response.completed", response=final)

    def _chat_object(
        self, completion_id: str, reply: Reply, model: str, usage_in: int, usage_out: int
    ) -> dict[str, Any]:
        tool_calls = [
            {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
            for _, cid, name, args in reply.calls
        ]
        message = {
            "role": "assistant",
            "content": reply.text or None,
            "refusal": None,
            "annotations": [],
            "tool_calls": tool_calls or None,
        }
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "tool_calls" if tool_calls else "stop",
                    "logprobs": None,
                }
            ],
            "usage": self._chat_usage(usage_in, usage_out),
            "system_fingerprint": None,
        }

    @staticmethod
    def _chat_usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
        return {
            "prompt_tokens": input_tokens,
            "completion_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
        }

    async def _chat_events(
        self, completion_id: str, reply: Reply, body: dict[str, Any], model: str, rate: float, usage_in: int
    ) -> AsyncIterator[tuple[str | None, dict[str, Any]]]:
        pacer = _Pacer(rate)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        created = int(time.time())
        pieces_out = 0

        def chunk(delta: dict[str, Any], finish: str | None = None) -> tuple[None, dict[str, Any]]:
            data: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            }
            if include_usage:
                data["usage"] = None
            return None, data

        yield chunk({"role": "assistant", "content": ""})
        for piece in split_words(reply.text):
            await pacer.tick()
            pieces_out += 1
            yield chunk({"content": piece})
        for j, (_, call_id, name, args) in enumerate(reply.calls):
            opening = {"index": j, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
            yield chunk({"tool_calls": [opening]})
            for piece in split_words(args):
                await pacer.tick()
                pieces_out += 1
                yield chunk({"tool_calls": [{"index": j, "function": {"arguments": piece}}]})
        yield chunk({}, "tool_calls" if reply.calls else "stop")
        if include_usage:
            yield (
                None,
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "system_fingerprint": None,
                    "choices": [],
                    "usage": self._chat_usage(usage_in, pieces_out),
                },
            )


# -- running it ------------------------------------------------------------------------------------


class ThreadedServer:
    """A ScriptedServer running on its own event loop in a background thread."""

    def __init__(self, server: ScriptedServer) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mc-scripted-server", daemon=True)

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.server.requests

    def requests_for(self, agent: str) -> list[RecordedRequest]:
        """The requests answered by one scripted agent (by its name)."""
        return self.server.requests_for(agent)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stopped = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stopped.wait()
        await self.server.stop()

    def start(self, timeout: float = 10.0) -> ThreadedServer:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"scripted server did not start within {timeout:g}s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server and join its thread (safe to call twice)."""
        if self._thread.is_alive() and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(timeout)

    def __enter__(self) -> ThreadedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_in_thread(scenario: Scenario | dict[str, Any] | str | Path, **kwargs: Any) -> ThreadedServer:
    """Start a ScriptedServer in a background thread; returns a handle with base_url, requests and stop()."""
    return ThreadedServer(ScriptedServer(scenario, **kwargs)).start()


async def _serve(server: ScriptedServer) -> None:
    await server.start()
    print(server.base_url, flush=True)
    agents = ", ".join(a.name for a in server.scenario.agents)
    print(f"scripted model server: agents {agents}; Ctrl-C stops it", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    """`python -m mc.scripted --scenario FILE [--port N] [--host 127.0.0.1]`: print the base URL, serve."""
    parser = argparse.ArgumentParser(
        prog="python -m mc.scripted", description="Serve a scripted scenario as an OpenAI-compatible API."
    )
    parser.add_argument("--scenario", default="demo", help="a scenario .toml file, or a bundled name (default: demo)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--tokens-per-second", type=float, default=None, help="override the scenario's pace")
    args = parser.parse_args(argv)
    try:
        server = ScriptedServer(args.scenario, host=args.host, port=args.port, tokens_per_second=args.tokens_per_second)
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(server))
    except OSError as exc:
        print(
            f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}: pick another --port",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        pass
    return 0
