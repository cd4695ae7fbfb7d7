"""The acp runner: any agent that speaks the Agent Client Protocol (JSON-RPC over stdio).

Gemini CLI (`gemini --acp`), opencode (`opencode acp`), Zed's Codex adapter (`codex-acp`) and others.
The command line is the agent's `command`; without one it is codex-acp, which reads a Codex home: the
runner writes one for the agent (under the repository's `.mc/`) that points at our [model] endpoint.

initialize → session/new (cwd = the worktree) → session/prompt per instruction; session/update
notifications become our events; session/request_permission becomes our approval: approve and
approve-all answer allow_once (approve-all is mission control's memory for the rest of the run, never an
allow_always rule that the agent would keep), deny answers reject_once, and since ACP's answer carries no
reason, the engineer's reason follows as the next prompt. session/cancel stops a turn. Token usage is
what the agent reports: a prompt response's `usage` (the turn's tokens) and `usage_update` (the context
in use, kept as runner state `context_tokens` / `context_window`). The session id is kept as runner
state, so a later process continues it with session/resume or session/load.

The protocol is spoken by hand (a small JSON-RPC peer shared with the codex runner): the
`agent-client-protocol` library wants asyncio streams, and our processes are started through
mc.procs so that a kill leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

from mc import events as ev
from mc.agents._stdio import SETUP_TIMEOUT, RpcError, StdioRunner, child_env, find_binary
from mc.agents.base import (
    NOT_RUN_INTERRUPTED,
    NOT_RUN_REDIRECTED,
    Question,
    RunnerContext,
    deny_note,
    remember_key,
)
from mc.agents.codex import HOME_ENV, prepare_home

PROTOCOL_VERSION = 1
#: The codex-acp version this runner is tested with (scripts/install-tools.sh installs it).
CODEX_ACP_VERSION = "0.16.0"
BIN_ENV = "MC_CODEX_ACP_BIN"
INSTALL_HINT = (
    f"install codex-acp with scripts/install-tools.sh (or npm install -g @zed-industries/codex-acp@{CODEX_ACP_VERSION}),"
    f' set {BIN_ENV}, or give the agent a command such as "gemini --acp"'
)
CONTINUE = "Continue the task from where you stopped."

#: ACP tool kinds → our call kinds.
KINDS = {"execute": "command", "edit": "write", "delete": "write", "move": "write"}
#: ACP tool kinds whose calls approve-all remembers by our kind; any other is remembered by its own name.
KNOWN_KINDS = frozenset({"execute", "edit", "delete", "move", "read", "search"})
#: Our answers → the ACP permission option kinds that carry them, best first.
OPTION_KINDS = {
    "approve": ("allow_once", "allow_always"),
    "deny": ("reject_once", "reject_always"),
}
_SHELLS = frozenset({"bash", "sh", "zsh", "dash"})


def codex_acp_binary() -> str | None:
    """The codex-acp executable: $MC_CODEX_ACP_BIN, else PATH, else the project-local npm install."""
    return find_binary("codex-acp", BIN_ENV)


def available() -> tuple[bool, str]:
    """Whether the default ACP agent (codex-acp) can run here (for `missionctl doctor`)."""
    binary = codex_acp_binary()
    if binary is None:
        return False, f"codex-acp not found (agents with their own command still work): {INSTALL_HINT}"
    try:
        subprocess.run([binary, "--help"], capture_output=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"{binary} does not run ({exc}): {INSTALL_HINT}"
    return True, f"codex-acp at {binary} (any ACP agent works through its command)"


def _text_of(content: Any) -> str:
    """The text in an ACP content block, a tool-call content list, or raw output."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_text_of(c) for c in content)
    if isinstance(content, dict):
        if content.get("type") == "text":
            return str(content.get("text", ""))
        if content.get("type") == "content":
            return _text_of(content.get("content"))
        if content.get("type") == "diff":
            return f"--- {content.get('path', '')}\n{content.get('newText', '')}"
    return ""


def _raw_output_text(raw: Any) -> tuple[str, int | None]:
    if isinstance(raw, dict):
        text = raw.get("aggregated_output") or raw.get("formatted_output") or raw.get("stdout") or raw.get("output")
        code = raw.get("exit_code", raw.get("exitCode"))
        return (str(text) if text is not None else ""), (code if isinstance(code, int) else None)
    if isinstance(raw, str):
        return raw, None
    return "", None


def command_of(call: dict[str, Any]) -> str:
    """The command line of an execute call: its rawInput's command (`bash -c SCRIPT` → SCRIPT), else its title."""
    raw = call.get("rawInput")
    command = (raw.get("command") or raw.get("cmd")) if isinstance(raw, dict) else None
    if isinstance(command, list) and command and all(isinstance(w, str) for w in command):
        if len(command) == 3 and Path(command[0]).name in _SHELLS and command[1] in ("-c", "-lc"):
            return command[2]
        return shlex.join(command)
    if isinstance(command, str) and command.strip():
        return command
    return str(call.get("title") or "")


class AcpRunner(StdioRunner):
    """Drives one ACP agent process for one agent."""

    kind = "acp"
    label = "ACP agent"

    def __init__(self, ctx: RunnerContext) -> None:
        super().__init__(ctx)
        self.session_id = str(ctx.agent.runner_state.get("session_id", ""))
        self._loaded = False
        self._replaying = False
        self._prompt: asyncio.Task[Any] | None = None
        self._cancelled = False
        self._notes: list[str] = []  # the reasons of denials, for the next prompt
        self._calls: dict[str, dict[str, Any]] = {}
        self._text = ""
        self._capabilities: dict[str, Any] = {}
        self._argv: list[str] = []
        self._unmetered = False  # said once that the agent reports no tokens, so its budget cannot be checked

    @property
    def busy(self) -> bool:
        return self._prompt is not None and not self._prompt.done()

    def _command(self) -> list[str]:
        if self.ctx.spec.command.strip():
            try:
                argv = shlex.split(self.ctx.spec.command)
            except ValueError as exc:
                raise RpcError(
                    f"command {self.ctx.spec.command!r} cannot be split into words ({exc}): fix its quotes"
                ) from None
            if argv:
                return argv
        binary = codex_acp_binary()
        if binary is None:
            raise RpcError(f"codex-acp not found: {INSTALL_HINT}")
        return [binary]

    def explain(self, message: str) -> str:
        name = Path(self._argv[0]).name if self._argv else "acp"
        return f"{name}: {message}"

    # -- set-up --------------------------------------------------------------------------------------
    async def _ensure_session(self) -> None:
        async with self._session_lock:
            if self.alive and self._loaded:
                return
            await self._launch()

    async def _launch(self) -> None:
        ctx = self.ctx
        argv = self._argv = self._command()
        extra: dict[str, str] = {}
        if Path(argv[0]).name.startswith("codex-acp"):
            own = os.environ.get(HOME_ENV, "").strip()
            home = own or str(await asyncio.to_thread(prepare_home, ctx, "codex-acp-home", policy_in_file=True))
            extra["CODEX_HOME"] = home
        await self.shutdown()
        try:
            peer = await self.launch(argv, child_env(extra))
        except RpcError as exc:
            hint = INSTALL_HINT if not ctx.spec.command.strip() else "check the agent's command"
            raise RpcError(f"{exc}: {hint}") from None
        try:
            info = await peer.request(
                "initialize",
                {
                    "protocolVersion": PROTOCOL_VERSION,
                    "clientCapabilities": {"fs": {"readTextFile": False, "writeTextFile": False}, "terminal": False},
                    "clientInfo": {"name": "missionctl", "title": "missionctl", "version": "1"},
                },
                timeout=SETUP_TIMEOUT,
            )
        except RpcError as exc:
            raise RpcError(
                f"did not answer initialize ({exc}): is {argv[0]!r} an ACP agent (check its flags)?"
            ) from None
        info = info or {}
        version = info.get("protocolVersion")
        if version != PROTOCOL_VERSION:
            raise RpcError(
                f"speaks ACP protocol version {version!r}, and missionctl speaks {PROTOCOL_VERSION}: "
                "use a release of the agent that supports it"
            )
        self._capabilities = info.get("agentCapabilities") or {}
        cwd = str(ctx.worktree)
        session_caps = self._capabilities.get("sessionCapabilities") or {}
        loaded = False
        if self.session_id:
            try:
                if "resume" in session_caps:
                    await peer.request(
                        "session/resume", {"sessionId": self.session_id, "cwd": cwd, "mcpServers": []}, SETUP_TIMEOUT
                    )
                    loaded = True
                elif self._capabilities.get("loadSession"):
                    self._replaying = True  # the agent replays the conversation: it is in our log already
                    try:
                        await peer.request(
                            "session/load", {"sessionId": self.session_id, "cwd": cwd, "mcpServers": []}, SETUP_TIMEOUT
                        )
                    finally:
                        self._replaying = False
                    loaded = True
            except RpcError as exc:
                self.warn(
                    f"{self.explain(f'could not continue session {self.session_id} ({exc})')}; starting a new one"
                )
        if not loaded:
            result = await peer.request("session/new", {"cwd": cwd, "mcpServers": []}, timeout=SETUP_TIMEOUT)
            session_id = str((result or {}).get("sessionId", ""))
            if not session_id:
                raise RpcError("session/new answered without a session id")
            self.session_id = session_id
            ctx.emit(ev.RunnerState(agent=ctx.agent_id, data={"session_id": session_id}))
        self._loaded = True

    def on_exit(self) -> None:
        self._loaded = False
        self.questions.clear()
        self.close_not_run()

    # -- turns ---------------------------------------------------------------------------------------
    def _begin(self, text: str) -> None:
        self._cancelled = False
        self._prompt = self.spawn(self._run_prompt(text))

    async def _run_prompt(self, text: str) -> None:
        if not self.within_budget(text):  # ACP reports tokens per turn: the budget is checked before each prompt
            return
        await self._ensure_session()
        assert self.peer is not None
        self.ctx.status("running")
        result = await self.peer.request(
            "session/prompt", {"sessionId": self.session_id, "prompt": [{"type": "text", "text": text}]}
        )
        self._flush_text()
        self.close_not_run()
        self._usage((result or {}).get("usage"))
        self._note_unmetered()
        reason = str((result or {}).get("stopReason", "end_turn"))
        if self._closing:
            return
        if self._notes and not self._cancelled:
            # ACP's answer to a permission request carries no reason: the model reads it as the next prompt
            note, self._notes = "\n".join(self._notes), []
            self._begin(note)
            return
        if reason == "cancelled":
            if self._cancelled:
                return
            self.ctx.status("idle", "the agent stopped the turn")
        elif reason == "end_turn":
            self.ctx.status("idle", "turn done")
        else:
            self.ctx.status("idle", f"turn ended: {reason.replace('_', ' ')}")

    async def go_on(self, handle: Any) -> None:
        self._begin(str(handle or CONTINUE))

    def _note_unmetered(self) -> None:
        """An agent under a budget whose turn ended without token usage: say once that its tokens count toward none
        (a fleet budget that the others reach still stops it before its next prompt)."""
        agent, fleet = self.ctx.agent, self.ctx.config.fleet
        budget = agent.budget_tokens or agent.budget_cost or fleet.budget_tokens or fleet.budget_cost
        if agent.usage_reported or self._unmetered or not budget:
            return
        self._unmetered = True
        name = Path(self._argv[0]).name if self._argv else "the ACP agent"
        self.warn(
            f"{name} reports no token usage for its turns (no `usage` in its prompt responses): its tokens are "
            "unknown and count toward no budget, so its own budget is never reached"
        )

    async def _cancel_turn(self, why: str) -> None:
        self._cancelled = True
        await self.cancel_questions(why)
        if self.busy and self.alive and self.peer is not None:
            await self.peer.notify("session/cancel", {"sessionId": self.session_id})
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self._prompt), 10)  # type: ignore[arg-type]
        if self.busy and self._prompt is not None:
            self._prompt.cancel()
        self.close_not_run()

    # -- protocol (ours) -------------------------------------------------------------------------------
    async def start(self, task: str) -> None:
        self._begin(task)

    async def send(self, text: str) -> None:
        await self._cancel_turn(NOT_RUN_REDIRECTED)
        notes, self._notes = self._notes, []
        self._begin("\n".join([*notes, text]))

    async def answer(self, question: Question, decision: str, reason: str) -> None:
        if self.peer is None:
            return
        rid, options = question.handle
        chosen = None
        for kind in OPTION_KINDS.get(decision, ()):
            chosen = next((o for o in options if o.get("kind") == kind), None)
            if chosen is not None:
                break
        if chosen is None:
            outcome: dict[str, Any] = {"outcome": "cancelled"}
        else:
            outcome = {"outcome": "selected", "optionId": chosen.get("optionId")}
        if decision == "deny" and reason:
            self._notes.append(deny_note(question.summary, reason))
        await self.peer.respond(rid, {"outcome": outcome})

    async def interrupt(self) -> None:
        self._notes = []
        await self._cancel_turn(NOT_RUN_INTERRUPTED)
        # The fleet ends every tagged process after an interrupt: let go of this one first.
        await self.shutdown()
        self.on_exit()
        self.ctx.status("interrupted", "by the engineer")

    async def resume(self) -> None:
        if self.busy:
            return
        self._begin(CONTINUE)

    async def restore(self) -> None:
        """After a restart the process that asked is gone: its questions cannot be answered any more."""
        self.ctx.status("interrupted", "mission control restarted while the agent waited for approval; resume it")

    async def kill(self) -> None:
        self.questions.clear()
        await super().kill()

    # -- protocol (the agent's) ------------------------------------------------------------------------
    def _flush_text(self) -> None:
        if self._text:
            self.ctx.emit(ev.AssistantMessage(agent=self.ctx.agent_id, text=self._text))
            self._text = ""

    def on_notification(self, method: str, params: dict[str, Any]) -> None:
        if method != "session/update" or self._replaying:
            return
        if params.get("sessionId") not in (None, self.session_id):
            return
        update = params.get("update") or {}
        kind = update.get("sessionUpdate")
        ctx = self.ctx
        if kind == "agent_message_chunk":
            text = _text_of(update.get("content"))
            if text:
                self._text += text
                ctx.emit(ev.TextDelta(agent=ctx.agent_id, text=text))
        elif kind == "tool_call":
            self._flush_text()
            self._tool_call(update)
        elif kind == "tool_call_update":
            self._tool_update(update)
        elif kind == "usage_update":
            self._context(update)

    def _usage(self, usage: Any) -> None:
        """A prompt response's `usage`: the tokens of that turn. ACP counts each kind apart (their sum is
        totalTokens); an agent whose counts overlap (cached tokens inside inputTokens) is read as it says."""
        if not isinstance(usage, dict):
            return

        def count(name: str) -> int:
            value = usage.get(name)
            return value if isinstance(value, int) and value > 0 else 0

        tokens_in = count("inputTokens") + count("cachedReadTokens") + count("cachedWriteTokens")
        tokens_out = count("outputTokens") + count("thoughtTokens")
        total = count("totalTokens")
        if total and tokens_in + tokens_out > total:
            tokens_in, tokens_out = count("inputTokens"), count("outputTokens")
        self.ctx.emit(ev.Usage(agent=self.ctx.agent_id, input_tokens=tokens_in, output_tokens=tokens_out))

    def _context(self, update: dict[str, Any]) -> None:
        """`usage_update`: how many tokens the session's context holds now, of how many it can."""
        used, size = update.get("used"), update.get("size")
        if not isinstance(used, int):
            return
        data = {"context_tokens": used, "context_window": size if isinstance(size, int) else 0}
        state = self.ctx.agent.runner_state
        if any(state.get(k) != v for k, v in data.items()):
            self.ctx.emit(ev.RunnerState(agent=self.ctx.agent_id, data=data))

    def _tool_call(self, update: dict[str, Any]) -> None:
        call_id = str(update.get("toolCallId", ""))
        known = call_id in self._calls
        call = self._calls.setdefault(call_id, {})
        call.update({k: v for k, v in update.items() if v is not None})
        if known and call.get("emitted"):
            return
        call["emitted"] = True
        kind = KINDS.get(str(call.get("kind", "")), "read")
        title = str(call.get("title") or call.get("kind") or "tool")
        self.ctx.emit(
            ev.ToolCall(
                agent=self.ctx.agent_id,
                call_id=call_id,
                tool="shell" if kind == "command" else str(call.get("kind") or "tool"),
                arguments=json.dumps(call.get("rawInput") or {}),
                kind=kind,
                summary=title[:300],
            )
        )

    def _tool_update(self, update: dict[str, Any]) -> None:
        call_id = str(update.get("toolCallId", ""))
        if call_id not in self._calls or not self._calls[call_id].get("emitted"):
            self._tool_call(update)
        status = update.get("status")
        if status not in ("completed", "failed"):
            return
        text, code = _raw_output_text(update.get("rawOutput"))
        if not text:
            text = _text_of(update.get("content"))
        why = self.not_run(call_id)
        if why and status == "failed":
            text = why  # mission control said no: the agent's own words may say less (or say it ran)
        self._calls.pop(call_id, None)
        self.ctx.emit(
            ev.ToolResult(
                agent=self.ctx.agent_id,
                call_id=call_id,
                ok=status == "completed" and code in (0, None),
                output=text or str(status),
                exit_code=code,
            )
        )

    def on_request(self, rid: Any, method: str, params: dict[str, Any]) -> None:
        if method == "session/request_permission":
            self._ask(rid, params)
            return
        if self.peer is not None:
            self.spawn(self.peer.respond_error(rid, -32601, f"missionctl does not offer {method}"))

    def _ask(self, rid: Any, params: dict[str, Any]) -> None:
        call = params.get("toolCall") or {}
        options = [o for o in params.get("options") or [] if isinstance(o, dict)]
        call_id = str(call.get("toolCallId") or rid)
        self._flush_text()
        if call_id not in self._calls or not self._calls[call_id].get("emitted"):
            self._tool_call(call)
        known = {**self._calls.get(call_id, {}), **{k: v for k, v in call.items() if v is not None}}
        acp_kind = str(known.get("kind") or "")
        kind = KINDS.get(acp_kind, "read")
        summary = str(known.get("title") or call_id)
        raw = known.get("rawInput")
        detail = _text_of(call.get("content")) or (json.dumps(raw, indent=1) if raw else summary)
        command = command_of(known) if kind == "command" else ""
        key = remember_key(kind, command, tool="" if acp_kind in KNOWN_KINDS else acp_kind or "other")
        question = Question(
            approval_id=self.new_approval_id(call_id),
            call_id=call_id,
            key=key,
            summary=command or summary,
            handle=(rid, options),
        )
        tool = "shell" if kind == "command" else acp_kind or "tool"
        if self.ask(question, tool=tool, kind=kind, summary=summary, detail=detail):
            self.spawn(self.answer(question, "approve", ""))
