"""The built-in agent: a tool-calling loop on `openai.AsyncOpenAI`.

Responses API by default, Chat Completions as an option, any OpenAI-compatible base_url. The loop is
driven by the conversation on record (`Agent.conversation`), so an agent restored after a restart
continues where its log ends: calls still waiting for approval wait again, a call that was running
when the process died is reported to the model as not finished, and the model is asked again.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import os
import platform
import random
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import openai

from mc import events as ev
from mc.agents.base import (
    BUDGET_STOPPED,
    NOT_RUN_INTERRUPTED,
    NOT_RUN_REDIRECTED,
    Runner,
    RunnerContext,
    RunnerError,
    denied_text,
    needs_approval,
)
from mc.cost import BUDGET_KIND
from mc.tools import (
    TOOLS,
    Refusal,
    Workspace,
    allowed_by_prefix,
    command_key,
    openai_tools,
    preview,
    run_tool,
    safe_env,
)
from mc.tools.run import sandbox_notice, unasked_note

SYSTEM_PROMPT = """\
You are a careful software engineer working on a task in a git worktree at {worktree}.
It is your own branch of the repository: edit files there freely with the tools you have.
Paths are relative to the worktree; you cannot reach outside it. Commands run with the worktree as
the current directory. Some calls need the engineer's approval: if one is denied, read the reason and
adapt. Keep answers short. When the task is done, say in a few lines what you changed and stop.
Platform: {platform}."""

#: Said to the model for a call that never ran to the end: (it had started, it had not started yet).
INTERRUPTED = (
    "This call was interrupted by the engineer before it finished; it may have run partly.",
    NOT_RUN_INTERRUPTED,
)
REDIRECTED = (
    "This call was stopped before it finished: the engineer gave a new instruction. It may have run partly.",
    NOT_RUN_REDIRECTED,
)
NOT_RUN_RESTART = "This call did not finish: mission control restarted while it ran. Check its effect before retrying."


class ModelFailed(Exception):
    """The endpoint failed for good (after retries, or with an error that retrying cannot fix)."""


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class _Reply:
    text: str = ""
    calls: list[dict[str, str]] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0


def remember_key(tool: str, kind: str, args: dict[str, Any]) -> str:
    """What approve-all remembers: the program and subcommand of a command, or the kind of call."""
    if kind == "command":
        return "command:" + command_key(str(args.get("command", "")))
    return kind


def to_responses_input(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for item in history:
        role = item.get("role")
        if role == "user":
            items.append({"role": "user", "content": item["content"]})
        elif role == "assistant":
            if item.get("content"):
                items.append({"role": "assistant", "content": item["content"]})
            for call in item.get("calls", []):
                items.append(
                    {
                        "type": "function_call",
                        "call_id": call["id"],
                        "name": call["name"],
                        "arguments": call["arguments"],
                    }
                )
        elif role == "tool":
            items.append({"type": "function_call_output", "call_id": item["call_id"], "output": item["output"]})
    return items


def to_chat_messages(system: str, history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
    for item in history:
        role = item.get("role")
        if role == "user":
            messages.append({"role": "user", "content": item["content"]})
        elif role == "assistant":
            msg: dict[str, Any] = {"role": "assistant", "content": item.get("content") or None}
            if item.get("calls"):
                msg["tool_calls"] = [
                    {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                    for c in item["calls"]
                ]
            messages.append(msg)
        elif role == "tool":
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
    return messages


def outstanding_calls(history: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Calls of the last assistant reply that have no output yet."""
    answered: set[str] = set()
    for item in reversed(history):
        if item.get("role") == "tool":
            answered.add(item["call_id"])
        elif item.get("role") == "assistant":
            return [c for c in item.get("calls", []) if c["id"] not in answered]
        else:
            return []
    return []


def _status_message(base_url: str, exc: openai.APIStatusError) -> str:
    message = exc.message or ""
    body = exc.body
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            message = str(err["message"])
    return f"HTTP {exc.status_code} from the model endpoint: {message} ({base_url})".strip()


class BuiltinRunner(Runner):
    """The OpenAI tool loop."""

    kind = "builtin"
    keeps_questions = True  # the conversation is on disk: a question asked before a restart is asked again

    def __init__(self, ctx: RunnerContext) -> None:
        super().__init__(ctx)
        cfg = ctx.config.model
        self.api = cfg.api
        self.model = ctx.agent.model or ctx.spec.model or cfg.model
        key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
        self._key_missing = bool(cfg.api_key_env) and not key
        self.client = openai.AsyncOpenAI(
            api_key=key or "not-set",
            base_url=cfg.base_url,
            timeout=cfg.timeout,
            max_retries=0,  # retries are ours: each one is an event the engineer sees
        )
        self.ws = Workspace(ctx.worktree)
        self.system = SYSTEM_PROMPT.format(worktree=ctx.worktree, platform=platform.system())
        self._task: asyncio.Task[None] | None = None
        self._approvals: dict[str, asyncio.Future[tuple[str, str]]] = {}
        self._cancel_reason = INTERRUPTED
        self._running: set[str] = set()  # calls whose tool has started
        self._detaching = False

    # -- protocol ----------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self, task: str) -> None:
        notice = await asyncio.to_thread(sandbox_notice, self.ctx.config)  # once per fleet, when unconfined
        if notice:
            self.ctx.emit(ev.ErrorEvent(agent=self.ctx.agent_id, message=notice))
        self._add_history({"role": "user", "content": task})
        self._spawn_turn()

    async def send(self, text: str) -> None:
        await self._stop_turn(REDIRECTED)
        self._add_history({"role": "user", "content": text})
        self._spawn_turn()

    async def resolve(self, approval_id: str, decision: str, reason: str = "") -> None:
        fut = self._approvals.get(approval_id)
        if fut is None or fut.done():
            raise RunnerError(f"no pending approval {approval_id} for agent {self.ctx.agent.name}")
        fut.set_result((decision, reason))
        self.questions.pop(approval_id, None)
        if not self.ctx.agent.pending:
            self.ctx.status("running")  # at once, so that nobody sees the agent settled in between

    async def interrupt(self) -> None:
        await self._stop_turn(INTERRUPTED)
        self.ctx.status("interrupted", "by the engineer")

    async def resume(self) -> None:
        if self.busy:
            return
        self._spawn_turn(after_restart=True)

    async def restore(self) -> None:
        """After a restart with approvals pending: wait for them again, then go on."""
        if self.busy:
            return
        loop = asyncio.get_running_loop()
        for approval_id in self.ctx.agent.pending:  # ready at once, before the turn task first runs
            self._approvals.setdefault(approval_id, loop.create_future())
        self._spawn_turn(after_restart=True, quiet=True)

    async def kill(self) -> None:
        await self._stop_turn(INTERRUPTED)
        with contextlib.suppress(Exception):
            await self.client.close()

    async def detach(self) -> None:
        self._detaching = True
        try:
            await self.kill()
        finally:
            self._detaching = False

    # -- the loop ----------------------------------------------------------------------------------
    def _spawn_turn(self, after_restart: bool = False, quiet: bool = False) -> None:
        self.ws.forget_written()
        if not quiet:
            self.ctx.status("running")
        self._task = asyncio.get_running_loop().create_task(self._turn(after_restart))

    async def _stop_turn(self, reason: tuple[str, str]) -> None:
        task = self._task
        if task is None or task.done():
            return
        self._cancel_reason = reason
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    def _add_history(self, item: dict[str, Any]) -> None:
        self.ctx.emit(ev.ConversationItem(agent=self.ctx.agent_id, item=item))

    async def _turn(self, after_restart: bool) -> None:
        ctx = self.ctx
        try:
            if self._key_missing:
                ctx.emit(
                    ev.ErrorEvent(
                        agent=ctx.agent_id,
                        message=f"{ctx.config.model.api_key_env} is not set; calling {ctx.config.model.base_url} "
                        "without a key (export it if the endpoint needs one)",
                    )
                )
                self._key_missing = False
            first = True
            ended = "turn done"
            while True:
                calls = outstanding_calls(ctx.agent.conversation)
                if calls:
                    for call in calls:
                        started = call["id"] in ctx.agent.tool_calls
                        pending = f"ap-{call['id']}" in self._approvals or f"ap-{call['id']}" in ctx.agent.pending
                        if after_restart and first and started and not pending:
                            self._answer(call, NOT_RUN_RESTART, ok=False)
                            continue
                        await self._handle_call(call)
                    first = False
                    continue
                first = False
                last = ctx.agent.conversation[-1] if ctx.agent.conversation else None
                if last is None or last.get("role") == "assistant":
                    break
                if not await self._within_budget():
                    ended = BUDGET_STOPPED
                    break
                if ctx.agent.status != "running":
                    ctx.status("running")
                reply = await self._call_model()
                ctx.emit(ev.AssistantMessage(agent=ctx.agent_id, text=reply.text))
                self._add_history({"role": "assistant", "content": reply.text, "calls": reply.calls})
                if not reply.calls:
                    break
            ctx.status("idle", ended)
        except asyncio.CancelledError:
            if not self._detaching:  # closing: leave the conversation for the next start
                partly, not_run = self._cancel_reason
                for call in outstanding_calls(ctx.agent.conversation):
                    self._answer(call, partly if call["id"] in self._running else not_run, ok=False)
            self._running.clear()
            for fut in self._approvals.values():
                if not fut.done():
                    fut.cancel()
            self._approvals.clear()
            raise
        except ModelFailed as exc:
            ctx.emit(ev.ErrorEvent(agent=ctx.agent_id, message=str(exc), fatal=True))
            ctx.status("failed", str(exc))
        except Exception as exc:  # a bug must not leave the agent silently "running"
            message = f"{type(exc).__name__}: {exc}"
            ctx.emit(ev.ErrorEvent(agent=ctx.agent_id, message=message, fatal=True))
            ctx.status("failed", message)

    async def _within_budget(self) -> bool:
        """Before a model call: True when no budget is reached, or once the engineer raised the one that is (the
        budget is checked again: one call may have used more than a raise); False when they denied it."""
        ctx = self.ctx
        while True:
            overrun = ctx.over_budget()
            current = overrun.approval_id if overrun is not None else None
            for stale in [p for p in ctx.agent.pending.values() if p.kind == BUDGET_KIND and p.approval_id != current]:
                # asked before a restart, of a budget that is not reached any more (the config changed)
                fut = self._approvals.pop(stale.approval_id, None)
                if fut is not None and not fut.done():
                    fut.cancel()
                self.questions.pop(stale.approval_id, None)
                ctx.emit(
                    ev.ApprovalResolved(
                        agent=ctx.agent_id,
                        approval_id=stale.approval_id,
                        decision="deny",
                        reason="not reached any more",
                    )
                )
            if overrun is None:
                return True
            fut = self._approvals.get(overrun.approval_id)
            if fut is None:
                fut = self._approvals[overrun.approval_id] = asyncio.get_running_loop().create_future()
            self.ask_budget(overrun)
            try:
                decision, _ = await fut
            finally:
                self._approvals.pop(overrun.approval_id, None)
            if decision == "deny":
                return False

    def _answer(self, call: dict[str, str], output: str, ok: bool, exit_code: int | None = None) -> None:
        ctx = self.ctx
        ctx.emit(ev.ToolResult(agent=ctx.agent_id, call_id=call["id"], ok=ok, output=output, exit_code=exit_code))
        self._add_history({"role": "tool", "call_id": call["id"], "name": call["name"], "output": output})

    async def _handle_call(self, call: dict[str, str]) -> None:
        ctx = self.ctx
        name = call["name"]
        spec = TOOLS.get(name)
        try:
            args = json.loads(call["arguments"] or "{}")
            if not isinstance(args, dict):
                raise ValueError("arguments are not an object")
        except ValueError as exc:
            args = None
            error = f"invalid JSON arguments for {name}: {exc}"
        if spec is None:
            ctx.emit(ev.ToolCall(agent=ctx.agent_id, call_id=call["id"], tool=name, arguments=call["arguments"]))
            self._answer(call, f"unknown tool {name!r}; the tools are: {', '.join(TOOLS)}", ok=False)
            return
        if args is None:
            ctx.emit(ev.ToolCall(agent=ctx.agent_id, call_id=call["id"], tool=name, arguments=call["arguments"]))
            self._answer(call, error, ok=False)
            return
        kind = spec.kind_of(args)
        approval_id = f"ap-{call['id']}"
        restored = approval_id in ctx.agent.pending or approval_id in self._approvals
        if not restored and call["id"] not in ctx.agent.tool_calls:
            ctx.emit(
                ev.ToolCall(
                    agent=ctx.agent_id,
                    call_id=call["id"],
                    tool=name,
                    arguments=call["arguments"],
                    kind=kind,
                    summary=spec.summary(args),
                )
            )
        command = str(args.get("command", "")) if kind == "command" else ""
        key = remember_key(name, kind, args)
        policy = ctx.agent.policy or ctx.config.policy.approve
        if restored or (
            needs_approval(policy, kind, command, ctx.config.policy.allow_commands) and key not in ctx.agent.remembered
        ):
            if not restored:
                try:
                    detail = preview(name, args, self.ws)
                except Refusal as exc:
                    ctx.emit(ev.Refused(agent=ctx.agent_id, call_id=call["id"], tool=name, reason=str(exc)))
                    self._answer(call, f"refused: {exc}", ok=False)
                    return
                ctx.emit(
                    ev.ApprovalRequested(
                        agent=ctx.agent_id,
                        approval_id=approval_id,
                        call_id=call["id"],
                        tool=name,
                        kind=kind,
                        summary=spec.summary(args),
                        detail=detail,
                        remember_key=key,
                    )
                )
            ctx.status("waiting", f"{kind}: {spec.summary(args)}"[:200])
            fut = self._approvals.get(approval_id)
            if fut is None:
                fut = self._approvals[approval_id] = asyncio.get_running_loop().create_future()
            try:
                decision, reason = await fut
            finally:
                self._approvals.pop(approval_id, None)
            if not ctx.agent.pending:
                ctx.status("running")
            if decision == "deny":
                self._answer(call, denied_text(reason), ok=False)
                return
        elif kind == "command":
            allowed = policy == "commands" and allowed_by_prefix(command, ctx.config.policy.allow_commands)
            note = unasked_note(command, self.ws, allowed=allowed, remembered=key in ctx.agent.remembered)
            if note:
                ctx.emit(ev.ErrorEvent(agent=ctx.agent_id, message=note))
        await self._run(call, name, args)

    async def _run(self, call: dict[str, str], name: str, args: dict[str, Any]) -> None:
        ctx = self.ctx
        cfg = ctx.config.tools

        def on_output(text: str) -> None:
            ctx.emit(ev.ToolOutput(agent=ctx.agent_id, call_id=call["id"], text=text))

        self._running.add(call["id"])
        try:
            outcome = await run_tool(
                name,
                args,
                self.ws,
                on_output=on_output,
                env=safe_env(cfg.pass_env),
                tools_cfg=cfg,
                tag=ctx.tag,
            )
        except Refusal as exc:
            self._running.discard(call["id"])
            ctx.emit(ev.Refused(agent=ctx.agent_id, call_id=call["id"], tool=name, reason=str(exc)))
            self._answer(call, f"refused: {exc}", ok=False)
            return
        self._running.discard(call["id"])
        if not outcome.ok and outcome.exit_code is None and "bubblewrap is not installed" in outcome.output:
            ctx.emit(ev.Refused(agent=ctx.agent_id, call_id=call["id"], tool=name, reason=outcome.output.strip()))
        self._answer(call, outcome.output, ok=outcome.ok, exit_code=outcome.exit_code)

    # -- the model ---------------------------------------------------------------------------------
    async def _call_model(self) -> _Reply:
        cfg = self.ctx.config.model
        attempt = 0
        while True:
            try:
                reply = await self._stream_once()
            except _Retryable as exc:
                attempt += 1
                if attempt > cfg.max_retries:
                    raise ModelFailed(f"{exc} (gave up after {cfg.max_retries} retries)") from None
                delay = exc.retry_after
                if delay is None:
                    delay = min(cfg.retry_backoff * (2 ** (attempt - 1)), 30.0) * (0.8 + random.random() * 0.4)
                said = f"retry {attempt} of {cfg.max_retries}"
                if delay > cfg.max_retry_wait:  # a server may ask for an hour; the engineer decides the longest wait
                    if exc.retry_after is not None:
                        said += (
                            f"; the endpoint asked to wait {exc.retry_after:g}s, "
                            f"capped at {cfg.max_retry_wait:g}s by [model] max_retry_wait"
                        )
                    delay = cfg.max_retry_wait
                self.ctx.emit(ev.ErrorEvent(agent=self.ctx.agent_id, message=f"{exc} ({said})", retry_in=delay))
                await asyncio.sleep(delay)
                continue
            if reply.input_tokens or reply.output_tokens:
                self.ctx.emit(
                    ev.Usage(
                        agent=self.ctx.agent_id,
                        input_tokens=reply.input_tokens,
                        output_tokens=reply.output_tokens,
                    )
                )
            return reply

    def _classify(self, exc: Exception) -> Exception:
        base = self.ctx.config.model.base_url
        if isinstance(exc, openai.APIStatusError):
            message = _status_message(base, exc)
            if exc.status_code == 429 or exc.status_code >= 500 or exc.status_code == 408:
                retry_after = None
                with contextlib.suppress(Exception):
                    header = exc.response.headers.get("retry-after")
                    if header is not None:
                        retry_after = max(0.0, float(header))
                return _Retryable(message, retry_after)
            if exc.status_code == 401:
                message += f" (is {self.ctx.config.model.api_key_env} set to a valid key?)"
            return ModelFailed(message)
        if isinstance(exc, openai.APITimeoutError):
            return _Retryable(f"{base} sent nothing for {self.ctx.config.model.timeout:g}s (stalled)")
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc
            if isinstance(cause, ConnectionError) or type(cause).__name__ in ("ConnectError", "ConnectTimeout"):
                return _Retryable(f"cannot reach {base}: {cause}")
            return _Retryable(f"the connection to {base} broke: {cause}")
        names = {cls.__name__ for cls in type(exc).__mro__}
        if "TimeoutException" in names:  # the transport's own, read mid-stream
            return _Retryable(f"{base} sent nothing for {self.ctx.config.model.timeout:g}s (stalled)")
        if names & {"TransportError", "NetworkError", "ProtocolError", "StreamError"}:
            return _Retryable(f"the connection to {base} broke: {exc or type(exc).__name__}")
        if isinstance(exc, ValueError):  # malformed JSON in the stream
            return _Retryable(f"{base} sent a malformed response: {exc}")
        if isinstance(exc, openai.APIError):
            return _Retryable(f"{base}: {exc}")
        return _Retryable(f"{base}: the stream broke ({type(exc).__name__}: {exc})")

    async def _sse(self, request: Any) -> AsyncIterator[dict[str, Any]]:
        """The JSON payloads of a streamed answer, read as raw server-sent events.

        The SDK's typed stream validates every event with pydantic, which costs more than everything else an
        agent does while a model streams; a plain `json.loads` of each `data:` line is enough for the few
        fields we read. Status errors are still raised by the SDK (before the first line)."""
        async with request as response:
            lines = SseLines()
            loop = asyncio.get_running_loop()
            chunks = response.iter_bytes().__aiter__()
            while True:
                asked = loop.time()
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                waited = loop.time() - asked > READ_WAITED
                for line in lines.feed(chunk):
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if not data or data == "[DONE]":
                        continue
                    value = json.loads(data)
                    if isinstance(value, dict):
                        yield value
                if waited:
                    # This chunk came from the network, not from what a read had already taken in: let the next
                    # events gather for READ_PACE, then one read takes them all (a read of a stream costs far more
                    # than the few bytes of one event; its text leaves as one event per _DeltaBuffer.INTERVAL).
                    await asyncio.sleep(READ_PACE)
            lines.feed(b"", final=True)

    async def _stream_once(self) -> _Reply:
        """One model call, within its own deadline ([model] call_timeout: a stream that trickles or sends only
        keep-alive comments never trips the read timeout); whatever goes wrong on the way is classified as retryable
        or final."""
        cfg = self.ctx.config.model
        deadline = asyncio.timeout(cfg.call_timeout)
        try:
            async with deadline:
                return await (self._responses() if self.api == "responses" else self._chat())
        except (_Retryable, ModelFailed, asyncio.CancelledError):
            raise
        except Exception as exc:
            if deadline.expired():  # TimeoutError, or whatever the transport made of the cancellation
                raise _Retryable(
                    f"{cfg.base_url} did not finish within {cfg.call_timeout:g}s ([model] call_timeout)"
                ) from None
            raise self._classify(exc) from None

    async def _responses(self) -> _Reply:
        reply = _Reply()
        text = _DeltaBuffer(self.ctx)
        completed = False
        try:
            request = self.client.responses.with_streaming_response.create(
                model=self.model,
                instructions=self.system,
                input=to_responses_input(self.ctx.agent.conversation),  # type: ignore[arg-type]
                tools=openai_tools("responses"),  # type: ignore[arg-type]
                stream=True,
            )
            async for event in self._sse(request):
                etype = event.get("type", "")
                if etype == "response.output_text.delta":
                    delta = str(event.get("delta", ""))
                    reply.text += delta
                    text.add(delta)
                elif etype == "response.output_item.done":
                    item = event.get("item") or {}
                    if item.get("type") == "function_call":
                        reply.calls.append(
                            {
                                "id": str(item.get("call_id", "")),
                                "name": str(item.get("name", "")),
                                "arguments": str(item.get("arguments") or ""),
                            }
                        )
                elif etype == "response.completed":
                    completed = True
                    usage = (event.get("response") or {}).get("usage") or {}
                    reply.input_tokens = int(usage.get("input_tokens") or 0)
                    reply.output_tokens = int(usage.get("output_tokens") or 0)
                elif etype in ("response.failed", "error"):
                    err = (event.get("response") or {}).get("error") or event.get("message") or event
                    raise _Retryable(f"{self.ctx.config.model.base_url} reported: {err}")
        finally:
            text.flush()
        if not completed:
            raise _Retryable(f"{self.ctx.config.model.base_url}: the stream ended before the response completed")
        return reply

    async def _chat(self) -> _Reply:
        reply = _Reply()
        text = _DeltaBuffer(self.ctx)
        calls: dict[int, dict[str, str]] = {}
        finished = False
        try:
            request = self.client.chat.completions.with_streaming_response.create(
                model=self.model,
                messages=to_chat_messages(self.system, self.ctx.agent.conversation),  # type: ignore[arg-type]
                tools=openai_tools("chat"),  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
            )
            async for chunk in self._sse(request):
                usage = chunk.get("usage")
                if usage:
                    reply.input_tokens = int(usage.get("prompt_tokens") or 0)
                    reply.output_tokens = int(usage.get("completion_tokens") or 0)
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    if delta.get("content"):
                        reply.text += delta["content"]
                        text.add(delta["content"])
                    for tc in delta.get("tool_calls") or []:
                        slot = calls.setdefault(int(tc.get("index", 0)), {"id": "", "name": "", "arguments": ""})
                        if tc.get("id"):
                            slot["id"] = tc["id"]
                        function = tc.get("function") or {}
                        slot["name"] += function.get("name") or ""
                        slot["arguments"] += function.get("arguments") or ""
                    if choice.get("finish_reason"):
                        finished = True
        finally:
            text.flush()
        if not finished:
            raise _Retryable(f"{self.ctx.config.model.base_url}: the stream ended before the answer was finished")
        for index in sorted(calls):
            call = calls[index]
            if not call["id"]:
                call["id"] = f"call_{index}_{random.randrange(1 << 30):x}"
            reply.calls.append(call)
        return reply


#: Seconds a model's stream is left to gather events after a read that waited for the network (its text
#: leaves as events every _DeltaBuffer.INTERVAL anyway): a fast stream is read ~20 times a second, whatever its
#: rate, each read taking every event that came meanwhile.
READ_PACE = 0.05
#: A chunk that took longer than this to come was read from the network (not from what a read had taken in).
READ_WAITED = 0.001

_EOL = re.compile("\r\n|\r|\n")


class SseLines:
    """The lines of a byte stream cut anywhere: inside a line, between CR and LF, inside a UTF-8 character.
    Lines end at LF, CRLF or CR, as in server-sent events."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._rest = ""

    def feed(self, chunk: bytes, *, final: bool = False) -> list[str]:
        """The lines completed by `chunk` (with `final`, the unfinished last one too)."""
        text = self._rest + self._decoder.decode(chunk, final)
        hold = ""
        if not final and text.endswith("\r"):  # its LF may come in the next chunk
            text, hold = text[:-1], "\r"
        lines = _EOL.split(text)
        rest = lines.pop()  # after the last line end: the start of a line still coming
        if final:
            self._rest = ""
            return [*lines, rest] if rest else lines
        self._rest = rest + hold
        return lines


class _DeltaBuffer:
    """Coalesces streamed text into one TextDelta per agent every ~50 ms (every character still reaches the
    log; at a fast stream this is far fewer events to write, fold and show)."""

    INTERVAL = 0.05

    def __init__(self, ctx: RunnerContext) -> None:
        self.ctx = ctx
        self.parts: list[str] = []
        self.since = 0.0

    def add(self, text: str) -> None:
        if not text:
            return
        now = time.monotonic()
        if not self.parts:
            self.since = now
        self.parts.append(text)
        if now - self.since >= self.INTERVAL:
            self.flush()

    def flush(self) -> None:
        if self.parts:
            self.ctx.emit(ev.TextDelta(agent=self.ctx.agent_id, text="".join(self.parts)))
            self.parts = []
