"""The claude runner: Claude Code in SDK mode, one long-lived process per agent.

``claude -p --output-format stream-json --input-format stream-json --verbose --permission-prompt-tool stdio
--include-partial-messages`` reads user messages and control messages on stdin and writes one JSON object per
line on stdout: ``system`` (``init``, with the session id), ``stream_event`` (the model's raw stream:
``content_block_delta`` ``text_delta`` is the text as it arrives), ``assistant`` (each complete ``text`` or
``tool_use`` block), ``user`` (``tool_result`` blocks), ``result`` (the end of a turn, with usage) and
``control_request`` ``can_use_tool`` — its permission questions, which become our approvals.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import time
from pathlib import Path
from typing import Any

from mc import events as ev
from mc import procs
from mc.agents._stdio import find_binary
from mc.agents.base import (
    BUDGET_STOPPED,
    NOT_RUN_INTERRUPTED,
    NOT_RUN_REDIRECTED,
    Runner,
    RunnerContext,
    RunnerError,
    needs_approval,
)
from mc.tools import command_key

#: Environment variable naming the Claude Code executable (default "claude").
BIN_ENV = "MC_CLAUDE_BIN"
SDK_ARGS = (
    "-p",
    "--output-format",
    "stream-json",
    "--input-format",
    "stream-json",
    "--verbose",
    "--permission-prompt-tool",
    "stdio",
    "--include-partial-messages",
)
INSTALL_HINT = (
    "install Claude Code (scripts/install-tools.sh, or npm install -g @anthropic-ai/claude-code), or point "
    "MC_CLAUDE_BIN or the agent's command at it"
)
#: What resume says to a session that was interrupted.
CONTINUE = "Continue with the task where you left off."
#: A JSON line longer than this is cut (and then reported as unreadable).
MAX_LINE = 32 * 1024 * 1024
#: Characters of a tool result kept in the log event.
MAX_RESULT = 20_000
#: Characters of stderr kept for the message of a crash.
STDERR_TAIL = 2000
#: Seconds to wait for Claude Code to acknowledge an interrupt, and for the interrupted turn to end.
INTERRUPT_WAIT = 5.0

#: What Claude Code says when --resume names a session whose transcript it no longer has.
LOST_SESSION = "No conversation found with session ID"
#: Seconds of streamed text gathered into one TextDelta.
TEXT_INTERVAL = 0.05
#: The callback id of the PostToolUse hook mission control registers when the agent has a budget: Claude Code
#: asks it after every tool call, before the model call that reads the result, and waits for the answer.
BUDGET_HOOK = "mc-budget"
#: Seconds Claude Code waits for that answer (the engineer decides when: a day is as long as a question waits).
BUDGET_HOOK_TIMEOUT = 86_400

WRITE_TOOLS = frozenset({"Edit", "Write", "MultiEdit", "NotebookEdit"})
READ_TOOLS = frozenset({"Read", "Glob", "Grep", "LS", "NotebookRead", "TodoWrite"})


def kind_of(tool: str) -> str:
    """Bash → command; Edit, Write, MultiEdit, NotebookEdit → write; any other tool → read."""
    if tool == "Bash":
        return "command"
    if tool in WRITE_TOOLS:
        return "write"
    return "read"


def remember_key(tool: str, kind: str, tool_input: dict[str, Any]) -> str:
    """What approve-all remembers: "command:<program subcommand>", "write", "read" or "tool:<name>"."""
    if kind == "command":
        return "command:" + command_key(str(tool_input.get("command", "")))
    if kind == "write" or tool in READ_TOOLS:
        return kind
    return f"tool:{tool}"


def _rel(path: str, root: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(Path(path).relative_to(root))
    return path


def summarize(tool: str, tool_input: dict[str, Any], root: Path) -> str:
    """One line for the log: the command, the path, the pattern …"""
    if tool == "Bash":
        return str(tool_input.get("command", ""))
    for key in ("file_path", "notebook_path", "path"):
        if tool_input.get(key):
            return f"{tool} {_rel(str(tool_input[key]), root)}"
    for key in ("pattern", "url", "query", "description", "prompt"):
        if tool_input.get(key):
            return f"{tool} {str(tool_input[key])[:120]}"
    return tool


def _lines(prefix: str, text: str, limit: int = 400) -> list[str]:
    lines = text.splitlines() or [""]
    shown = [prefix + line for line in lines[:limit]]
    if len(lines) > limit:
        shown.append(f"{prefix}… ({len(lines) - limit} more lines)")
    return shown


def describe(tool: str, tool_input: dict[str, Any], root: Path) -> str:
    """The approval's detail: the full command, or the change as diff-like text."""
    if tool == "Bash":
        text = str(tool_input.get("command", ""))
        if tool_input.get("description"):
            text += f"\n# {tool_input['description']}"
        return text
    path = _rel(str(tool_input.get("file_path") or tool_input.get("notebook_path") or ""), root)
    if tool == "Write":
        return "\n".join([f"+++ {path} (whole file)", *_lines("+", str(tool_input.get("content", "")))])
    if tool in ("Edit", "MultiEdit"):
        edits = tool_input.get("edits") if tool == "MultiEdit" else [tool_input]
        out = [f"--- {path}", f"+++ {path}"]
        for edit in edits or []:
            if not isinstance(edit, dict):
                continue
            out.append("@@" + (" (every occurrence)" if edit.get("replace_all") else ""))
            out += _lines("-", str(edit.get("old_string", "")))
            out += _lines("+", str(edit.get("new_string", "")))
        return "\n".join(out)
    if tool == "NotebookEdit":
        head = f"+++ {path} cell {tool_input.get('cell_id', '?')} ({tool_input.get('edit_mode', 'replace')})"
        return "\n".join([head, *_lines("+", str(tool_input.get("new_source", "")))])
    return json.dumps(tool_input, indent=2, ensure_ascii=False)[:8000]


def result_text(content: Any) -> str:
    """The text of a tool_result's content (a string, or a list of text/image blocks)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, dict):
                if block.get("type") == "text":
                    parts.append(str(block.get("text", "")))
                else:
                    parts.append(f"[{block.get('type', 'block')}]")
        return "\n".join(parts)
    return "" if content is None else json.dumps(content)


def _input_tokens(usage: dict[str, Any]) -> int:
    """Input tokens of an Anthropic usage block: fresh, written to the cache and read from it."""
    return sum(
        int(usage.get(k) or 0) for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )


def claude_binary() -> str | None:
    """The Claude Code executable: $MC_CLAUDE_BIN, else PATH, else the project-local npm install."""
    return find_binary("claude", BIN_ENV)


class _TextStream:
    """Streamed text → one TextDelta per ~50 ms, the rest flushed by a timer or before any other event, so
    the log is live and in order without an event per word."""

    def __init__(self, ctx: RunnerContext) -> None:
        self.ctx = ctx
        self.parts: list[str] = []
        self.since = 0.0
        self.streamed = False  # text arrived in deltas since the last complete text block
        self._timer: asyncio.TimerHandle | None = None

    def add(self, text: str) -> None:
        if not text:
            return
        self.streamed = True
        now = time.monotonic()
        if not self.parts:
            self.since = now
            self._timer = asyncio.get_running_loop().call_later(TEXT_INTERVAL, self.flush)
        self.parts.append(text)
        if now - self.since >= TEXT_INTERVAL:
            self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.parts:
            self.ctx.emit(ev.TextDelta(agent=self.ctx.agent_id, text="".join(self.parts)))
            self.parts = []


class ClaudeRunner(Runner):
    """Drives Claude Code over its stream-json SDK protocol.

    * Executable: ``[[agents]] command`` when set (e.g. ``"npx @anthropic-ai/claude-code"``), else
      ``$MC_CLAUDE_BIN``, else ``claude`` on PATH or in .cache/npm; the SDK arguments are appended, and
      ``--model`` when the agent names a model. It runs in the worktree with mission control's environment
      (its login or ``ANTHROPIC_API_KEY``, and ``ANTHROPIC_BASE_URL`` when set).
    * Text streams: the partial messages' text deltas reach the log as they arrive (coalesced), and the
      complete block ends the reply.
    * Permission questions (``can_use_tool``) go through our approval policy: the ones it lets run are
      answered at once, the others wait as approvals. Claude Code's own settings may allow a call
      before it asks (reads, usually): those only show in the log.
    * The session id is kept as runner state, so after an interrupt, a crash or a restart of mission
      control the next instruction (or resume) starts ``claude --resume=<session>``.
    * Redirect: a new user message; a turn that runs is interrupted first (``control_request``
      ``interrupt``). Interrupt: the turn is interrupted and the process stops (the session stays).
    """

    kind = "claude"

    def __init__(self, ctx: RunnerContext) -> None:
        super().__init__(ctx)
        self._proc: procs.Proc | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stderr = ""
        self._outstanding = 0  # user messages sent whose result has not come yet
        self._idle = asyncio.Event()
        self._idle.set()
        self._approvals: dict[str, dict[str, Any]] = {}  # approval id → the question
        self._controls: dict[str, asyncio.Future[dict[str, Any]]] = {}  # our requests → their answers
        self._counter = 0
        self._expect_exit = False  # we stop the process: its exit is no failure
        self._quiet = False  # an interrupt is under way: its result is no "turn done"
        self._broken = False  # the process reported a failure: the next message starts a new one
        self._last_text = ""
        self._text = _TextStream(ctx)
        self._call_in = 0  # input tokens of the model call that streams (its message_start)
        self._call_out = 0  # output tokens of it reported so far (message_delta counts from its start)
        self._turn_usage = (0, 0)  # tokens reported per call since the last result
        self._stopping = False  # a budget question was denied at a held hook: the turn ends at its result

    # -- protocol ----------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._outstanding > 0

    @property
    def session_id(self) -> str:
        return str(self.ctx.agent.runner_state.get("session_id", ""))

    async def start(self, task: str) -> None:
        await self._say(task)

    async def send(self, text: str) -> None:
        if self._alive and self._outstanding:
            await self._interrupt_turn(NOT_RUN_REDIRECTED)
        await self._say(text)

    async def resolve(self, approval_id: str, decision: str, reason: str = "") -> None:
        if approval_id in self.questions:  # a budget question: asked and answered the way every runner's are
            await super().resolve(approval_id, decision, reason)
            return
        question = self._approvals.pop(approval_id, None)
        if question is None or not self._alive:
            raise RunnerError(f"no pending approval {approval_id} for agent {self.ctx.agent.name}")
        if decision in ("approve", "approve_all"):
            await self._allow(question)
            if decision == "approve_all":
                for other_id, other in list(self._approvals.items()):
                    if other["key"] == question["key"]:
                        self._approvals.pop(other_id)
                        self.ctx.emit(
                            ev.ApprovalResolved(agent=self.ctx.agent_id, approval_id=other_id, decision="approve")
                        )
                        await self._allow(other)
        else:
            text = "The engineer denied this call."
            if reason:
                text += f" Their reason: {reason}"
            await self._deny(question, text)
        if not self._approvals and self.ctx.agent.status == "waiting":
            self.ctx.status("running")

    async def go_on(self, handle: Any) -> None:
        what, value = handle
        if what == "say":
            await self._say(value)
            return
        overrun = self.ctx.over_budget()  # one call may have used more than a raise: ask again, still holding
        if overrun is not None:
            self.ask_budget(overrun, handle)
            return
        for request_id in value:
            await self._answer(request_id, {"continue": True})

    async def budget_denied(self, handle: Any) -> None:
        what, value = handle
        if what == "say" or not self._alive:
            await super().budget_denied(handle)
            return
        self._stopping = True  # idle when the turn's result comes
        await self._release_hooks(value)

    async def _release_hooks(self, request_ids: list[str]) -> None:
        """End the turn at held budget hooks: Claude Code makes no further model call."""
        for request_id in request_ids:
            await self._answer(request_id, {"continue": False, "stopReason": "the agent reached its budget"})

    async def interrupt(self) -> None:
        if self._alive and self._outstanding:
            await self._interrupt_turn(NOT_RUN_INTERRUPTED)
        await self._stop_process()
        self._outstanding = 0
        self._idle.set()
        self.ctx.status("interrupted", "by the engineer")

    async def resume(self) -> None:
        if self.busy and self._alive:
            return
        text = CONTINUE if self.session_id else (self._last_text or self.ctx.agent.task)
        await self._say(text)

    async def restore(self) -> None:
        """After a restart the question Claude Code asked is gone with its process: say so, resumable."""
        if self._alive:
            return
        agent = self.ctx.agent
        for approval_id in list(agent.pending):
            self.ctx.emit(
                ev.ApprovalResolved(
                    agent=agent.id,
                    approval_id=approval_id,
                    decision="deny",
                    reason="mission control restarted: Claude Code's question went with its process",
                )
            )
        self.ctx.status("interrupted", "mission control restarted while Claude Code waited; resume to continue")

    async def kill(self) -> None:
        await self._stop_process()
        await asyncio.to_thread(procs.kill_tagged, self.ctx.tag)
        self._outstanding = 0
        self._idle.set()

    # -- the process -------------------------------------------------------------------------------
    @property
    def _alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def argv(self) -> list[str]:
        """The command line that starts Claude Code for this agent."""
        spec = self.ctx.spec
        base = shlex.split(spec.command) if spec.command.strip() else [claude_binary() or "claude"]
        args = [*base, *SDK_ARGS]
        model = self.ctx.agent.model or spec.model
        if model:
            args += ["--model", model]
        if self.session_id:
            args.append(f"--resume={self.session_id}")  # one token: a session id can never read as a flag
        return args

    def _hooks(self) -> dict[str, Any] | None:
        """The hooks of the initialize request: a PostToolUse hook that holds the next model call while the agent
        is at a budget, when it has one (its own or the fleet's)."""
        agent, fleet = self.ctx.agent, self.ctx.config.fleet
        if not (agent.budget_tokens or agent.budget_cost or fleet.budget_tokens or fleet.budget_cost):
            return None
        hook = {"matcher": None, "hookCallbackIds": [BUDGET_HOOK], "timeout": BUDGET_HOOK_TIMEOUT}
        return {"PostToolUse": [hook]}

    async def _spawn(self) -> bool:
        ctx = self.ctx
        argv = self.argv()
        env = {k: v for k, v in os.environ.items() if k != "CLAUDECODE"}
        env["PWD"] = str(ctx.worktree)
        try:
            proc = await procs.start(argv, cwd=ctx.worktree, env=env, tag=ctx.tag, stdin=True, stderr="separate")
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) or "No such file" in str(exc):
                self._fail(f"Claude Code not found ({argv[0]}): {INSTALL_HINT}")
            else:
                self._fail(f"cannot start Claude Code ({argv[0]}): {exc}")
            return False
        self._proc = proc
        self._stderr = ""
        self._expect_exit = False
        self._broken = False
        self._spawn_task(self._read(proc))
        self._spawn_task(self._read_stderr(proc))
        await self._control({"subtype": "initialize", "hooks": self._hooks()}, wait=None)
        return True

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stop_process(self) -> None:
        proc = self._proc
        self._text.flush()
        self._expect_exit = True
        for fut in self._controls.values():
            if not fut.done():
                fut.cancel()
        self._controls.clear()
        self._approvals.clear()
        self.questions.clear()
        if proc is not None:
            await proc.kill(grace=1.0)
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(asyncio.shield(task), 3.0)
        self._proc = None

    async def _write(self, message: dict[str, Any]) -> bool:
        proc = self._proc
        if proc is None:
            return False
        try:
            await proc.write(json.dumps(message) + "\n")
        except OSError:  # BrokenPipeError: it exited; the reader reports why
            return False
        return True

    async def _control(self, request: dict[str, Any], wait: float | None) -> dict[str, Any] | None:
        """Send a control request; with `wait`, return its answer (None when none came in time)."""
        self._counter += 1
        request_id = f"mc-{self._counter}-{os.urandom(3).hex()}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if wait is not None:
            self._controls[request_id] = fut
        if not await self._write({"type": "control_request", "request_id": request_id, "request": request}):
            self._controls.pop(request_id, None)
            return None
        if wait is None:
            return None
        try:
            return await asyncio.wait_for(fut, wait)
        except (TimeoutError, asyncio.CancelledError, RunnerError):
            return None
        finally:
            self._controls.pop(request_id, None)

    async def _say(self, text: str) -> None:
        """Send a user message (starting Claude Code first when it does not run); at a budget, the budget question
        waits first."""
        if not self.within_budget(("say", text)):
            return
        self._last_text = text
        if self._broken and self._proc is not None:
            await self._stop_process()  # it failed and is on its way out: do not talk to it
        if not self._alive and not await self._spawn():
            return
        self._outstanding += 1
        self._idle.clear()
        self.ctx.status("running")
        message = {
            "type": "user",
            "session_id": self.session_id,
            "message": {"role": "user", "content": text},
            "parent_tool_use_id": None,
        }
        await self._write(message)

    async def _interrupt_turn(self, why: str) -> None:
        """Deny what waits, interrupt the turn and wait for its end; stop the process when it does not answer.
        The calls that waited never ran, and their results say `why`: Claude Code, interrupted, reports them with
        its own words for a rejected call (or not at all, when it had to be stopped)."""
        self._quiet = True
        try:
            for question in list(self._approvals.values()):
                self._not_run[question["call_id"]] = why
                await self._deny(question, why)
            self._approvals.clear()
            held, self.questions = self.questions, {}
            for budget in held.values():
                if budget.handle[0] == "hook":
                    await self._release_hooks(budget.handle[1])
            answer = await self._control({"subtype": "interrupt"}, wait=INTERRUPT_WAIT)
            if answer is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._idle.wait(), INTERRUPT_WAIT)
            if answer is None or not self._idle.is_set():
                await self._stop_process()  # the next message starts it again with --resume
            self.close_not_run()
            self._outstanding = 0
            self._idle.set()
        finally:
            self._quiet = False

    def _fail(self, message: str) -> None:
        self._broken = True
        self.ctx.emit(ev.ErrorEvent(agent=self.ctx.agent_id, message=message, fatal=True))
        self.ctx.status("failed", message)

    async def _read_stderr(self, proc: procs.Proc) -> None:
        async for chunk in proc.stderr_chunks():
            self._stderr = (self._stderr + chunk)[-STDERR_TAIL:]

    async def _read(self, proc: procs.Proc) -> None:
        splitter = procs.LineSplitter(max_line=MAX_LINE)
        try:
            async for chunk in proc.chunks():
                for line in splitter.feed(chunk):
                    await self._on_line(line)
            for line in splitter.flush():
                await self._on_line(line)
            code = await proc.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not leave the agent silently "running"
            self._fail(f"reading Claude Code's output failed: {type(exc).__name__}: {exc}")
            return
        await asyncio.sleep(0)  # let the stderr reader take the last words
        self._on_exit(proc, code)

    def _on_exit(self, proc: procs.Proc, code: int) -> None:
        if proc is not self._proc:
            return
        self._proc = None
        self._text.flush()
        for fut in self._controls.values():
            if not fut.done():
                fut.set_exception(RunnerError("Claude Code exited"))
        self._controls.clear()
        self._approvals.clear()
        self.questions.clear()
        was_busy = self._outstanding > 0
        self._outstanding = 0
        self._idle.set()
        if self._expect_exit or (code == 0 and not was_busy) or self._broken:
            return  # a stop of ours, a clean end, or a turn whose error already said why
        said = " | ".join(line.strip() for line in self._stderr.strip().splitlines()[-6:] if line.strip())
        hint = INSTALL_HINT if code == 127 else "fix what it says, then resume (the session continues)"
        what = f"Claude Code exited with status {code}" if code >= 0 else f"Claude Code was killed by signal {-code}"
        if code == 0:
            what = "Claude Code exited in the middle of a turn"
        self._fail(f"{what}: {said or 'no message on stderr'}: {hint}")

    # -- messages ----------------------------------------------------------------------------------
    async def _on_line(self, line: str) -> None:
        line = line.strip()
        if not line:
            return
        if not line.startswith("{"):
            self._stderr = (self._stderr + line + "\n")[-STDERR_TAIL:]  # stray text: keep it for a crash report
            return
        try:
            message = json.loads(line)
        except ValueError as exc:
            self.ctx.emit(ev.ErrorEvent(agent=self.ctx.agent_id, message=f"Claude Code sent unreadable JSON ({exc})"))
            return
        if isinstance(message, dict):
            await self._on_message(message)

    async def _on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "stream_event":
            self._on_stream_event(message.get("event") or {})
            return
        self._text.flush()  # what streamed so far is logged before anything that follows it
        if message.get("session_id") and kind in ("system", "result"):
            self._note_session(str(message["session_id"]))
        if kind == "system" and message.get("subtype") == "api_retry":
            self._on_retry(message)
        elif kind == "assistant":
            self._on_assistant(message.get("message") or {})
        elif kind == "user":
            self._on_tool_results(message.get("message") or {})
        elif kind == "result":
            self._on_result(message)
        elif kind == "control_request":
            await self._on_control_request(message)
        elif kind == "control_response":
            response = message.get("response") or {}
            fut = self._controls.pop(str(response.get("request_id", "")), None)
            if fut is not None and not fut.done():
                if response.get("subtype") == "error":
                    fut.set_exception(RunnerError(str(response.get("error", "error"))))
                else:
                    fut.set_result(response)
        elif kind == "control_cancel_request":
            request_id = str(message.get("request_id", ""))
            for approval_id, question in list(self._approvals.items()):
                if question["request_id"] == request_id:
                    self._approvals.pop(approval_id)
                    self.ctx.emit(
                        ev.ApprovalResolved(
                            agent=self.ctx.agent_id,
                            approval_id=approval_id,
                            decision="deny",
                            reason="Claude Code withdrew the question",
                        )
                    )
            if not self._approvals and self.ctx.agent.status == "waiting":
                self.ctx.status("running")

    def _note_session(self, session_id: str) -> None:
        if session_id and session_id != self.session_id:
            self.ctx.emit(ev.RunnerState(agent=self.ctx.agent_id, data={"session_id": session_id}))

    def _on_retry(self, message: dict[str, Any]) -> None:
        """Claude Code retries a failed model call by itself: say so, with when."""
        status = message.get("error_status") or "no status"
        error = message.get("error") or "error"
        attempt = f"attempt {message.get('attempt', '?')} of {message.get('max_retries', '?')}"
        try:
            delay = max(0.0, float(message.get("retry_delay_ms") or 0) / 1000)
        except (TypeError, ValueError):
            delay = 0.0
        self.ctx.emit(
            ev.ErrorEvent(
                agent=self.ctx.agent_id,
                message=f"the model endpoint answered {status} ({error}); Claude Code retries, {attempt}",
                retry_in=delay or None,
            )
        )

    def _on_stream_event(self, event: dict[str, Any]) -> None:
        """The model's raw stream: text deltas go to the log at once; the complete blocks follow as messages."""
        etype = event.get("type")
        if etype == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                self._text.add(str(delta.get("text", "")))
        elif etype == "message_start":
            self._text.flush()
            self._text.streamed = False
            usage = (event.get("message") or {}).get("usage") or {}
            self._call_in = _input_tokens(usage)
            self._call_out = 0
        elif etype == "message_delta":
            self._call_usage(int((event.get("usage") or {}).get("output_tokens") or 0))

    def _call_usage(self, output_tokens: int) -> None:
        """The tokens of one model call, as its stream reports them (input at its start, output at its end): one
        Usage per call, so that a budget is seen before the next call. The turn's result settles the rest."""
        tokens_in, tokens_out = self._call_in, max(0, output_tokens - self._call_out)
        self._call_in, self._call_out = 0, max(output_tokens, self._call_out)
        if tokens_in or tokens_out:
            self._turn_usage = (self._turn_usage[0] + tokens_in, self._turn_usage[1] + tokens_out)
            self.ctx.emit(ev.Usage(agent=self.ctx.agent_id, input_tokens=tokens_in, output_tokens=tokens_out))

    def _on_assistant(self, body: dict[str, Any]) -> None:
        ctx = self.ctx
        content = body.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        for block in content or []:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text" and block.get("text"):
                if not self._text.streamed:  # a CLI without partial messages: the block is all there is
                    ctx.emit(ev.TextDelta(agent=ctx.agent_id, text=block["text"]))
                self._text.streamed = False
                ctx.emit(ev.AssistantMessage(agent=ctx.agent_id, text=block["text"]))
            elif block.get("type") == "tool_use":
                name = str(block.get("name", "?"))
                tool_input = block.get("input") if isinstance(block.get("input"), dict) else {}
                ctx.emit(
                    ev.ToolCall(
                        agent=ctx.agent_id,
                        call_id=str(block.get("id", "")),
                        tool=name,
                        arguments=json.dumps(tool_input, ensure_ascii=False),
                        kind=kind_of(name),
                        summary=summarize(name, tool_input, ctx.worktree)[:500],
                    )
                )

    def _on_tool_results(self, body: dict[str, Any]) -> None:
        content = body.get("content")
        if not isinstance(content, list):
            return
        for block in content:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                call_id = str(block.get("tool_use_id", ""))
                text = self.not_run(call_id) or result_text(block.get("content"))
                if len(text) > MAX_RESULT:
                    text = text[:MAX_RESULT] + f"\n… ({len(text) - MAX_RESULT} more characters)"
                self.ctx.emit(
                    ev.ToolResult(
                        agent=self.ctx.agent_id,
                        call_id=call_id,
                        ok=not block.get("is_error", False),
                        output=text,
                    )
                )

    def _on_result(self, message: dict[str, Any]) -> None:
        ctx = self.ctx
        usage = message.get("usage") or {}
        if isinstance(usage, dict):  # the turn's total: what its calls' streams did not report yet
            seen_in, seen_out = self._turn_usage
            tokens_in = max(0, _input_tokens(usage) - seen_in)
            tokens_out = max(0, int(usage.get("output_tokens") or 0) - seen_out)
            if tokens_in or tokens_out:
                ctx.emit(ev.Usage(agent=ctx.agent_id, input_tokens=tokens_in, output_tokens=tokens_out))
        self._turn_usage = (0, 0)
        self._outstanding = max(0, self._outstanding - 1)
        if self._outstanding == 0:
            self._idle.set()
        if self._quiet:
            return  # the end of a turn we interrupted
        subtype = str(message.get("subtype", ""))
        if message.get("is_error") or subtype.startswith("error"):
            detail = message.get("result") or "; ".join(str(e) for e in message.get("errors") or []) or subtype
            text = f"Claude Code ended the turn with an error: {detail}"
            lost = self.session_id
            if lost and LOST_SESSION in str(detail) and self._outstanding == 0:
                ctx.emit(ev.RunnerState(agent=ctx.agent_id, data={"session_id": ""}))
                self._fail(
                    f"Claude Code no longer has session {lost} (its transcript is gone): "
                    "resume or redirect to start a new session"
                )
                return
            if subtype == "error_max_turns":
                ctx.emit(ev.ErrorEvent(agent=ctx.agent_id, message=text))
            elif self._outstanding == 0:
                self._fail(f"{text}: fix it, then redirect or resume")
                return
        if self._stopping and self._outstanding == 0:
            self._stopping = False
            ctx.status("idle", BUDGET_STOPPED)
        elif self._outstanding == 0 and not self._approvals:
            ctx.status("idle", "turn done")

    async def _on_control_request(self, message: dict[str, Any]) -> None:
        request_id = str(message.get("request_id", ""))
        request = message.get("request") or {}
        if request.get("subtype") == "hook_callback" and request.get("callback_id") == BUDGET_HOOK:
            await self._budget_hook(request_id)
            return
        if request.get("subtype") != "can_use_tool":
            await self._write(
                {
                    "type": "control_response",
                    "response": {
                        "subtype": "error",
                        "request_id": request_id,
                        "error": f"missionctl does not handle {request.get('subtype')!r} requests",
                    },
                }
            )
            return
        ctx = self.ctx
        tool = str(request.get("tool_name", "?"))
        tool_input = request.get("input") if isinstance(request.get("input"), dict) else {}
        kind = kind_of(tool)
        key = remember_key(tool, kind, tool_input)
        call_id = str(request.get("tool_use_id") or f"perm-{request_id}")
        question = {"request_id": request_id, "input": tool_input, "key": key, "call_id": call_id}
        policy = ctx.agent.policy or ctx.config.policy.approve
        command = str(tool_input.get("command", "")) if kind == "command" else ""
        if key in ctx.agent.remembered or not needs_approval(policy, kind, command, ctx.config.policy.allow_commands):
            await self._allow(question)
            return
        summary = summarize(tool, tool_input, ctx.worktree)
        if call_id not in ctx.agent.tool_calls:
            ctx.emit(
                ev.ToolCall(
                    agent=ctx.agent_id,
                    call_id=call_id,
                    tool=tool,
                    arguments=json.dumps(tool_input, ensure_ascii=False),
                    kind=kind,
                    summary=summary[:500],
                )
            )
        approval_id = f"ap-{re.sub(r'[^A-Za-z0-9_-]', '', request_id)[:40] or self._counter}"
        self._approvals[approval_id] = question
        ctx.emit(
            ev.ApprovalRequested(
                agent=ctx.agent_id,
                approval_id=approval_id,
                call_id=call_id,
                tool=tool,
                kind=kind,
                summary=summary[:500],
                detail=describe(tool, tool_input, ctx.worktree),
                remember_key=key,
            )
        )
        ctx.status("waiting", f"{kind}: {summary}"[:200])

    async def _budget_hook(self, request_id: str) -> None:
        """A tool call ran and the model is about to read its result: hold that model call while a budget is
        reached, and ask (parallel calls wait on the same question)."""
        overrun = self.ctx.over_budget()
        if overrun is None:
            await self._answer(request_id, {"continue": True})
            return
        waiting = self.questions.get(overrun.approval_id)
        if waiting is not None and waiting.handle[0] == "hook":
            waiting.handle[1].append(request_id)
            return
        self.ask_budget(overrun, ("hook", [request_id]))

    async def _allow(self, question: dict[str, Any]) -> None:
        await self._answer(question["request_id"], {"behavior": "allow", "updatedInput": question["input"]})

    async def _deny(self, question: dict[str, Any], message: str) -> None:
        await self._answer(question["request_id"], {"behavior": "deny", "message": message})

    async def _answer(self, request_id: str, response: dict[str, Any]) -> None:
        await self._write(
            {
                "type": "control_response",
                "response": {"subtype": "success", "request_id": request_id, "response": response},
            }
        )


def available() -> tuple[bool, str]:
    """Whether Claude Code can be started here, and why not (for `missionctl doctor`)."""
    import shutil

    configured = os.environ.get(BIN_ENV, "").strip()
    binary = claude_binary()
    found = shutil.which(binary) if binary else None
    if found:
        return True, found
    return False, f"{configured or 'claude'} not found: {INSTALL_HINT}"
