"""The codex runner: OpenAI's Codex CLI driven through `codex app-server` (JSON-RPC over stdio).

One app-server process per agent, started in the agent's worktree with its own CODEX_HOME (under the
repository's `.mc/`), whose config.toml points Codex at our [model] endpoint. The task is a
`turn/start`; Codex's command and file-change approval requests become ours; redirect is `turn/steer`
(or a new turn when idle); interrupt is `turn/interrupt`; kill ends the process tree. The thread id is
kept as runner state, so after an interrupt or a restart `thread/resume` continues the same thread.

Set MC_CODEX_HOME to use an existing Codex home as it is (your own login and config) instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

from mc import events as ev
from mc.agents._stdio import SETUP_TIMEOUT, RpcError, StdioRunner, child_env, find_binary
from mc.agents.base import RunnerContext

#: The Codex CLI version this runner is tested with (scripts/install-tools.sh installs it).
CODEX_VERSION = "0.171.0"
#: Older versions lack parts of the app-server protocol used here.
MIN_VERSION = (0, 171, 0)
BIN_ENV = "MC_CODEX_BIN"
HOME_ENV = "MC_CODEX_HOME"
INSTALL_HINT = (
    f"install it with scripts/install-tools.sh (or npm install -g @openai/codex@{CODEX_VERSION}), "
    f"or set {BIN_ENV} to its path"
)
CONTINUE = "Continue the task from where you stopped."


def codex_binary() -> str | None:
    """The codex executable: $MC_CODEX_BIN, else PATH, else the project-local npm install."""
    return find_binary("codex", BIN_ENV)


def parse_version(text: str) -> tuple[int, ...] | None:
    """(major, minor, patch) from `codex-cli 0.171.0` or a user agent `mc/0.171.0 (…)`."""
    m = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(x) for x in m.groups()) if m else None


def _version_text(version: tuple[int, ...]) -> str:
    return ".".join(str(x) for x in version)


def available() -> tuple[bool, str]:
    """Whether the codex runner can run here, and a line saying what was found (for `missionctl doctor`)."""
    binary = codex_binary()
    if binary is None:
        return False, f"codex not found: {INSTALL_HINT}"
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{binary} does not run ({exc}): {INSTALL_HINT}"
    version = parse_version(out.stdout)
    if version is None:
        return False, f"{binary} --version printed {out.stdout.strip()[:80]!r}: {INSTALL_HINT}"
    if version < MIN_VERSION:
        return (
            False,
            f"codex {_version_text(version)} at {binary} is older than {_version_text(MIN_VERSION)}: upgrade it",
        )
    return True, f"codex {_version_text(version)} at {binary}"


def approval_policy(policy: str) -> str:
    """Our approval policy as Codex's: `never` runs everything, every other policy asks before any command
    or change that Codex does not know to be a read (Codex has no finer equivalent)."""
    return "never" if policy == "never" else "untrusted"


def sandbox_mode(sandbox: str) -> str:
    """[tools] sandbox as Codex's: bwrap → workspace-write (Codex's own confinement), none → no sandbox."""
    return "workspace-write" if sandbox == "bwrap" else "danger-full-access"


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def codex_config(ctx: RunnerContext, *, provider: str = "mc", policy_in_file: bool = False) -> str:
    """The config.toml of an agent's CODEX_HOME: our [model] endpoint as a custom model provider.

    The app-server takes the approval policy and sandbox with each thread (its config file refuses
    `untrusted`); adapters such as codex-acp read them from the file (policy_in_file)."""
    cfg = ctx.config.model
    model = ctx.spec.model or ctx.agent.model or cfg.model
    lines = [
        "# Written by missionctl for one agent; rewritten at every start.",
        f"model = {_toml_str(model)}",
        f"model_provider = {_toml_str(provider)}",
        "check_for_update_on_startup = false",
    ]
    if policy_in_file:
        lines += [
            f"approval_policy = {_toml_str(approval_policy(ctx.agent.policy or ctx.config.policy.approve))}",
            f"sandbox_mode = {_toml_str(sandbox_mode(ctx.config.tools.sandbox))}",
        ]
    lines += [
        "",
        f"[model_providers.{provider}]",
        'name = "missionctl [model]"',
        f"base_url = {_toml_str(cfg.base_url.rstrip('/'))}",
        f"wire_api = {_toml_str('responses')}",
        "request_max_retries = 0",
        "stream_max_retries = 0",
        f"stream_idle_timeout_ms = {int(cfg.timeout * 1000)}",
    ]
    if cfg.api_key_env and os.environ.get(cfg.api_key_env):
        lines.append(f"env_key = {_toml_str(cfg.api_key_env)}")
    return "\n".join(lines) + "\n"


def _state_root(worktree: Path) -> Path:
    """The `.mc` folder of the repository a worktree belongs to."""
    try:
        out = subprocess.run(
            ["git", "-C", str(worktree), "rev-parse", "--path-format=absolute", "--git-common-dir"],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
        )
        common = Path(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        common = None
    if common is not None and common.name == ".git":
        return common.parent / ".mc"
    return Path.home() / ".cache" / "missionctl"


def prepare_home(ctx: RunnerContext, subdir: str, *, policy_in_file: bool = False) -> Path:
    """Create (or refresh) the agent's private CODEX_HOME and return it. Blocking: call it in a thread."""
    root = Path(ctx.extra["state_dir"]) if ctx.extra.get("state_dir") else _state_root(ctx.worktree)
    home = root / "agents" / ctx.agent_id / subdir
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(home, 0o700)
    target = home / "config.toml"
    tmp = home / "config.toml.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(codex_config(ctx, policy_in_file=policy_in_file))
    os.replace(tmp, target)
    return home


def command_text(item: dict[str, Any]) -> str:
    """The command of a commandExecution item as the model wrote it (without the `bash -lc` wrapper)."""
    actions = item.get("commandActions") or []
    if len(actions) == 1 and isinstance(actions[0], dict) and actions[0].get("command"):
        return str(actions[0]["command"])
    command = str(item.get("command") or "")
    m = re.match(r"^\S*(?:ba|z)?sh -l?c (.*)$", command, re.DOTALL)
    if m:
        with contextlib.suppress(ValueError):
            parts = shlex.split(m.group(1))
            if len(parts) == 1:
                return parts[0]
    return command


def _command_key(command: str) -> str:
    words = command.split()
    if not words:
        return "command:"
    key = words[0] if len(words) == 1 or words[1].startswith("-") else " ".join(words[:2])
    return "command:" + key


class CodexRunner(StdioRunner):
    """Drives `codex app-server` for one agent."""

    kind = "codex"
    label = "codex app-server"

    def __init__(self, ctx: RunnerContext) -> None:
        super().__init__(ctx)
        self.thread_id: str = str(ctx.agent.runner_state.get("thread_id", ""))
        self.turn_id: str = ""
        self._turn_done: asyncio.Event = asyncio.Event()
        self._turn_done.set()
        self._interrupting = False
        self._approvals: dict[str, tuple[Any, str]] = {}  # approval id → (request id, method)
        self._items: dict[str, dict[str, Any]] = {}
        self._texts: dict[str, str] = {}
        self._usage_total = (0, 0)
        self._thread_loaded = False

    @property
    def busy(self) -> bool:
        return not self._turn_done.is_set()

    def explain(self, message: str) -> str:
        return f"codex: {message}"

    # -- set-up --------------------------------------------------------------------------------------
    async def _ensure_session(self) -> None:
        async with self._session_lock:
            if self.alive and self.thread_id and self._thread_loaded:
                return
            await self._launch()

    async def _launch(self) -> None:
        ctx = self.ctx
        binary = codex_binary()
        if binary is None:
            raise RpcError(f"codex not found: {INSTALL_HINT}")
        own_home = os.environ.get(HOME_ENV, "").strip()
        home = Path(own_home).expanduser() if own_home else await asyncio.to_thread(prepare_home, ctx, "codex-home")
        await self.shutdown()
        try:
            peer = await self.launch([binary, "app-server"], child_env({"CODEX_HOME": str(home)}), jsonrpc_field=False)
        except RpcError as exc:
            raise RpcError(f"{exc}: {INSTALL_HINT}") from None
        try:
            info = await peer.request(
                "initialize",
                {"clientInfo": {"name": "missionctl", "title": "missionctl", "version": "1"}},
                timeout=SETUP_TIMEOUT,
            )
        except RpcError as exc:
            raise RpcError(
                f"{binary} app-server did not initialize ({exc}): is it a Codex CLI? {INSTALL_HINT}"
            ) from None
        agent_text = str((info or {}).get("userAgent", ""))
        version = parse_version(agent_text)
        if version is not None and version < MIN_VERSION:
            raise RpcError(
                f"{binary} is Codex {_version_text(version)}, older than {_version_text(MIN_VERSION)}: "
                f"upgrade it ({INSTALL_HINT})"
            )
        await peer.notify("initialized")
        params: dict[str, Any] = {
            "cwd": str(ctx.worktree),
            "approvalPolicy": approval_policy(ctx.agent.policy or ctx.config.policy.approve),
            "sandbox": sandbox_mode(ctx.config.tools.sandbox),
        }
        result = None
        if self.thread_id:
            try:
                result = await peer.request(
                    "thread/resume", {"threadId": self.thread_id, **params}, timeout=SETUP_TIMEOUT
                )
            except RpcError as exc:
                self.warn(f"codex could not resume thread {self.thread_id} ({exc}); starting a new thread")
        if result is None:
            result = await peer.request("thread/start", params, timeout=SETUP_TIMEOUT)
        thread = (result or {}).get("thread") or {}
        thread_id = str(thread.get("id", ""))
        if not thread_id:
            raise RpcError("thread/start answered without a thread id")
        if thread_id != self.thread_id:
            self.thread_id = thread_id
            ctx.emit(ev.RunnerState(agent=ctx.agent_id, data={"thread_id": thread_id}))
        self._thread_loaded = True

    def on_exit(self) -> None:
        self._thread_loaded = False
        self._approvals.clear()
        self.turn_id = ""
        self._turn_done.set()

    async def _start_turn(self, text: str) -> None:
        self._turn_done.clear()
        self._interrupting = False
        try:
            await self._ensure_session()
            assert self.peer is not None
            self.ctx.status("running")
            result = await self.peer.request(
                "turn/start",
                {"threadId": self.thread_id, "input": [{"type": "text", "text": text}]},
                timeout=SETUP_TIMEOUT,
            )
        except BaseException:
            self._turn_done.set()
            raise
        turn = (result or {}).get("turn") or {}
        if turn.get("id") and not self.turn_id:
            self.turn_id = str(turn["id"])

    # -- protocol (ours) -------------------------------------------------------------------------------
    async def start(self, task: str) -> None:
        self._turn_done.clear()
        self.spawn(self._start_turn(task))

    async def send(self, text: str) -> None:
        await self._answer_all("decline")
        if self.alive and self.turn_id and not self._turn_done.is_set() and self.peer is not None:
            try:
                await self.peer.request(
                    "turn/steer",
                    {
                        "threadId": self.thread_id,
                        "expectedTurnId": self.turn_id,
                        "input": [{"type": "text", "text": text}],
                    },
                    timeout=SETUP_TIMEOUT,
                )
                self.ctx.status("running")
                return
            except RpcError:
                pass  # the turn ended meanwhile: start a new one
        self._turn_done.clear()
        self.spawn(self._start_turn(text))

    async def resolve(self, approval_id: str, decision: str, reason: str = "") -> None:
        from mc.agents.base import RunnerError

        entry = self._approvals.pop(approval_id, None)
        if entry is None or self.peer is None:
            raise RunnerError(f"no pending approval {approval_id} for agent {self.ctx.agent.name}")
        rid, _method = entry
        answer = {"approve": "accept", "approve_all": "acceptForSession"}.get(decision, "decline")
        await self.peer.respond(rid, {"decision": answer})
        if not self._approvals and self.ctx.agent.status == "waiting":
            self.ctx.status("running")
        if answer == "decline" and reason and self.turn_id and self.peer is not None:
            steer = {
                "threadId": self.thread_id,
                "expectedTurnId": self.turn_id,
                "input": [{"type": "text", "text": f"The engineer denied that, saying: {reason}"}],
            }
            with contextlib.suppress(RpcError):
                await self.peer.request("turn/steer", steer, timeout=SETUP_TIMEOUT)

    async def _answer_all(self, decision: str) -> None:
        approvals, self._approvals = self._approvals, {}
        if self.peer is None:
            return
        for rid, _method in approvals.values():
            await self.peer.respond(rid, {"decision": decision})

    async def interrupt(self) -> None:
        self._interrupting = True
        await self._answer_all("cancel")
        if self.alive and self.turn_id and not self._turn_done.is_set() and self.peer is not None:
            with contextlib.suppress(RpcError):
                await self.peer.request("turn/interrupt", {"threadId": self.thread_id, "turnId": self.turn_id}, 10)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._turn_done.wait(), 10)
        # The fleet ends every tagged process after an interrupt: let go of this one first.
        await self.shutdown()
        self.on_exit()
        self.ctx.status("interrupted", "by the engineer")

    async def resume(self) -> None:
        if self.busy and self.alive:
            return
        self.spawn(self._start_turn(CONTINUE))

    async def restore(self) -> None:
        """After a restart the app-server that asked is gone: its questions cannot be answered any more."""
        self.ctx.status("interrupted", "mission control restarted while Codex waited for approval; resume to ask again")

    async def kill(self) -> None:
        self._approvals.clear()
        await super().kill()
        self._turn_done.set()

    # -- protocol (Codex's) ----------------------------------------------------------------------------
    def on_notification(self, method: str, params: dict[str, Any]) -> None:
        ctx = self.ctx
        aid = ctx.agent_id
        if params.get("threadId") not in (None, self.thread_id) and method != "thread/started":
            return
        if method == "turn/started":
            self.turn_id = str((params.get("turn") or {}).get("id", self.turn_id))
            self._turn_done.clear()
        elif method == "item/agentMessage/delta":
            delta = str(params.get("delta", ""))
            self._texts[str(params.get("itemId"))] = self._texts.get(str(params.get("itemId")), "") + delta
            if delta:
                ctx.emit(ev.TextDelta(agent=aid, text=delta))
        elif method == "item/started":
            self._item_started(params.get("item") or {})
        elif method == "item/completed":
            self._item_completed(params.get("item") or {})
        elif method in ("item/commandExecution/outputDelta", "item/fileChange/outputDelta"):
            delta = str(params.get("delta", ""))
            if delta:
                ctx.emit(ev.ToolOutput(agent=aid, call_id=str(params.get("itemId", "")), text=delta))
        elif method == "thread/tokenUsage/updated":
            total = ((params.get("tokenUsage") or {}).get("total")) or {}
            now = (int(total.get("inputTokens") or 0), int(total.get("outputTokens") or 0))
            before = self._usage_total
            if now[0] < before[0] or now[1] < before[1]:
                before = (0, 0)  # a resumed thread counts from zero in this process
            self._usage_total = now
            if now != before:
                ctx.emit(ev.Usage(agent=aid, input_tokens=now[0] - before[0], output_tokens=now[1] - before[1]))
        elif method == "error":
            error = params.get("error") or {}
            message = str(error.get("message") or "unknown error")
            retry = bool(params.get("willRetry"))
            ctx.emit(ev.ErrorEvent(agent=aid, message=f"codex: {message}" + (" (retrying)" if retry else "")))
        elif method == "turn/completed":
            self._turn_completed(params.get("turn") or {})
        elif method == "serverRequest/resolved":
            pass

    def _item_started(self, item: dict[str, Any]) -> None:
        ctx = self.ctx
        kind = item.get("type")
        item_id = str(item.get("id", ""))
        if kind == "commandExecution":
            self._items[item_id] = item
            command = command_text(item)
            ctx.emit(
                ev.ToolCall(
                    agent=ctx.agent_id,
                    call_id=item_id,
                    tool="shell",
                    arguments=json.dumps({"command": command}),
                    kind="command",
                    summary=command[:300],
                )
            )
        elif kind == "fileChange":
            self._items[item_id] = item
            paths = [str(c.get("path", "")) for c in item.get("changes") or [] if isinstance(c, dict)]
            ctx.emit(
                ev.ToolCall(
                    agent=ctx.agent_id,
                    call_id=item_id,
                    tool="apply_patch",
                    arguments=json.dumps({"changes": item.get("changes") or []}),
                    kind="write",
                    summary="write " + ", ".join(paths)[:300],
                )
            )

    def _item_completed(self, item: dict[str, Any]) -> None:
        ctx = self.ctx
        kind = item.get("type")
        item_id = str(item.get("id", ""))
        if kind == "agentMessage":
            text = str(item.get("text") or self._texts.get(item_id, ""))
            self._texts.pop(item_id, None)
            ctx.emit(ev.AssistantMessage(agent=ctx.agent_id, text=text))
        elif kind == "commandExecution":
            self._items.pop(item_id, None)
            status = str(item.get("status", ""))
            code = item.get("exitCode")
            output = item.get("aggregatedOutput")
            if status == "declined":
                output = output or "declined"
            ctx.emit(
                ev.ToolResult(
                    agent=ctx.agent_id,
                    call_id=item_id,
                    ok=status == "completed" and (code in (0, None)),
                    output=str(output or ""),
                    exit_code=code if isinstance(code, int) else None,
                )
            )
        elif kind == "fileChange":
            self._items.pop(item_id, None)
            status = str(item.get("status", ""))
            paths = [str(c.get("path", "")) for c in item.get("changes") or [] if isinstance(c, dict)]
            ctx.emit(
                ev.ToolResult(
                    agent=ctx.agent_id,
                    call_id=item_id,
                    ok=status == "completed",
                    output=f"{status}: {', '.join(paths)}",
                )
            )

    def _turn_completed(self, turn: dict[str, Any]) -> None:
        ctx = self.ctx
        self.turn_id = ""
        self._turn_done.set()
        status = str(turn.get("status", "completed"))
        if self._interrupting or self._closing:
            return
        if status == "completed":
            ctx.status("idle", "turn done")
        elif status == "interrupted":
            ctx.status("interrupted", "the turn was stopped")
        else:
            error = (turn.get("error") or {}).get("message") or "the turn failed"
            self.fail(f"codex: {error}")
            self._failed = False  # the thread lives on: resume can start another turn

    def on_request(self, rid: Any, method: str, params: dict[str, Any]) -> None:
        if method in ("item/commandExecution/requestApproval", "item/fileChange/requestApproval"):
            self._ask(rid, method, params)
            return
        if self.peer is not None:
            self.spawn(self.peer.respond_error(rid, -32601, f"missionctl does not handle {method}"))

    def _ask(self, rid: Any, method: str, params: dict[str, Any]) -> None:
        ctx = self.ctx
        item_id = str(params.get("itemId", ""))
        approval_id = "ap-" + str(params.get("approvalId") or item_id or rid)
        item = self._items.get(item_id, {})
        reason = str(params.get("reason") or "")
        if method.startswith("item/commandExecution"):
            command = command_text({**item, **{k: v for k, v in params.items() if k in ("command", "commandActions")}})
            kind, tool, summary = "command", "shell", command
            detail = command + (f"\n\n{reason}" if reason else "")
            key = _command_key(command)
        else:
            changes = [c for c in item.get("changes") or [] if isinstance(c, dict)]
            paths = [str(c.get("path", "")) for c in changes]
            kind, tool, summary = "write", "apply_patch", "write " + ", ".join(paths)
            detail = "\n".join(str(c.get("diff", "")) for c in changes) or reason
            key = "write"
        if key in ctx.agent.remembered and self.peer is not None:
            self.spawn(self.peer.respond(rid, {"decision": "acceptForSession"}))
            return
        self._approvals[approval_id] = (rid, method)
        ctx.emit(
            ev.ApprovalRequested(
                agent=ctx.agent_id,
                approval_id=approval_id,
                call_id=item_id,
                tool=tool,
                kind=kind,
                summary=summary[:300],
                detail=detail,
                remember_key=key,
            )
        )
        ctx.status("waiting", f"{kind}: {summary}"[:200])
