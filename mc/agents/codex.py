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
import functools
import json
import os
import re
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from mc import events as ev
from mc.agents._stdio import SETUP_TIMEOUT, RpcError, StdioRunner, child_env, find_binary
from mc.agents.base import (
    NOT_RUN_BUDGET,
    NOT_RUN_INTERRUPTED,
    NOT_RUN_REDIRECTED,
    Question,
    RunnerContext,
    deny_note,
    remember_key,
)

#: The Codex CLI version this runner is tested with (scripts/install-tools.sh installs it).
CODEX_VERSION = "0.171.0"
#: The oldest Codex CLI a test runs the runner's flows with (scripts/install-tools.sh installs it into
#: .cache/npm-codex-<version>). Any version whose app-server offers all of `REQUIRED` is accepted.
TESTED_FROM = (0, 169, 0)
#: What the runner uses of the app-server protocol, as its JSON schema names it (`codex app-server
#: generate-json-schema`): (where, name, what it is for). A version that lacks one is refused, naming it.
REQUIRED = (
    ("ClientRequest", "thread/start", "starting a thread"),
    ("ClientRequest", "thread/resume", "resume"),
    ("ClientRequest", "turn/start", "starting a turn"),
    ("ClientRequest", "turn/steer", "redirect"),
    ("ClientRequest", "turn/interrupt", "interrupt"),
    ("ServerRequest", "item/commandExecution/requestApproval", "approving commands"),
    ("ServerRequest", "item/fileChange/requestApproval", "approving file changes"),
    ("ServerNotification", "item/agentMessage/delta", "streamed text"),
    ("ServerNotification", "item/started", "tool calls"),
    ("ServerNotification", "item/completed", "tool results"),
    ("ServerNotification", "item/commandExecution/outputDelta", "streamed command output"),
    ("ServerNotification", "thread/tokenUsage/updated", "token usage"),
    ("ServerNotification", "turn/completed", "the end of a turn"),
    ("ServerNotification", "error", "errors"),
    ("TurnSteerParams", "expectedTurnId", "redirect"),
    ("ErrorNotification", "willRetry", "giving up on an unreachable endpoint"),
    ("CommandExecutionApprovalDecision", "accept", "approving commands"),
    ("CommandExecutionApprovalDecision", "decline", "denying commands"),
    ("CommandExecutionApprovalDecision", "cancel", "interrupting a waiting command"),
    ("FileChangeApprovalDecision", "decline", "denying file changes"),
)
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


def _schema_names(schema: dict[str, Any]) -> dict[str, set[str]]:
    """Where → the names the app-server's JSON schema offers there (methods, fields, enum values)."""
    defs = schema.get("definitions") or {}
    v2 = defs.get("v2") if isinstance(defs.get("v2"), dict) else {}
    names: dict[str, set[str]] = {}
    for where in {w for w, _, _ in REQUIRED}:
        node = defs.get(where) or v2.get(where) or {}
        found: set[str] = set(node.get("properties") or {})
        for option in node.get("oneOf") or []:
            if not isinstance(option, dict):
                continue
            found.update(str(v) for v in option.get("enum") or [])
            method = (option.get("properties") or {}).get("method") or {}
            found.update(str(v) for v in method.get("enum") or [])
        names[where] = found
    return names


def missing_protocol(schema: dict[str, Any]) -> list[str]:
    """What the runner needs that this app-server schema lacks: ["turn/steer (redirect)", …]."""
    names = _schema_names(schema)
    return [f"{name} ({what})" for where, name, what in REQUIRED if name not in names.get(where, set())]


@functools.lru_cache(maxsize=8)
def _inspect(binary: str, stamp: tuple[int, int]) -> tuple[tuple[int, ...] | None, list[str] | None, str]:
    """(its version, what its app-server lacks — None when it cannot say —, why it cannot say). Blocking."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, None, f"it does not run ({exc})"
    version = parse_version(out.stdout)
    with tempfile.TemporaryDirectory(prefix="mc-codex-schema-") as tmp:
        try:
            done = subprocess.run(
                [binary, "app-server", "generate-json-schema", "--out", tmp],
                capture_output=True,
                text=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return version, None, f"`app-server generate-json-schema` did not run ({exc})"
        try:
            schema = json.loads((Path(tmp) / "codex_app_server_protocol.schemas.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            said = (done.stderr or done.stdout).strip().splitlines()
            detail = f": {said[-1][:200]}" if said else ""
            return version, None, f"`app-server generate-json-schema` gave no protocol schema{detail}"
    return version, missing_protocol(schema), ""


def inspect_binary(binary: str) -> tuple[tuple[int, ...] | None, str]:
    """(its version, "" when it offers everything the runner uses, else the one-line reason and fix).
    Blocking; the answer is kept while the file stays the same."""
    try:
        st = os.stat(binary)
        stamp = (st.st_mtime_ns, st.st_size)
    except OSError:
        stamp = (0, 0)
    version, missing, why = _inspect(binary, stamp)
    name = f"Codex {_version_text(version)}" if version else "a Codex CLI of unknown version"
    oldest = _version_text(TESTED_FROM)
    if missing is None:
        return version, f"{binary} is {name}, and {why}: use Codex {oldest} or later ({INSTALL_HINT})"
    if missing:
        lacks = ", ".join(missing)
        return version, f"{binary} is {name}, whose app-server lacks {lacks}: upgrade it to {oldest} or later"
    return version, ""


def available() -> tuple[bool, str]:
    """Whether the codex runner can run here, and a line saying what was found (for `missionctl doctor`)."""
    binary = codex_binary()
    if binary is None:
        return False, f"codex not found: {INSTALL_HINT}"
    version, problem = inspect_binary(binary)
    if problem:
        return False, problem
    text = f"codex {_version_text(version) if version else '(version unknown)'} at {binary}"
    if version is None or version < TESTED_FROM:
        text += f"; it offers what the runner uses, but the oldest version tested is {_version_text(TESTED_FROM)}"
    return True, text


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
        self._items: dict[str, dict[str, Any]] = {}
        self._texts: dict[str, str] = {}
        self._usage_total = (0, 0)
        self._thread_loaded = False
        self._retries = 0  # retryable errors since the model last answered
        self._note = ""  # a denial's reason that steering could not deliver: the next turn says it
        self._budget_stop = False  # the turn is being stopped at a budget its usage reached
        self._ended = ""  # how the last turn ended (turn/completed's status)

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
        if os.path.isfile(binary):  # a missing one fails below with the launcher's words
            _version, problem = await asyncio.to_thread(inspect_binary, binary)
            if problem:
                raise RpcError(problem)
        own_home = os.environ.get(HOME_ENV, "").strip()
        home = Path(own_home).expanduser() if own_home else await asyncio.to_thread(prepare_home, ctx, "codex-home")
        await self.shutdown()
        try:
            peer = await self.launch([binary, "app-server"], child_env({"CODEX_HOME": str(home)}), jsonrpc_field=False)
        except RpcError as exc:
            raise RpcError(f"{exc}: {INSTALL_HINT}") from None
        try:
            await peer.request(
                "initialize",
                {"clientInfo": {"name": "missionctl", "title": "missionctl", "version": "1"}},
                timeout=SETUP_TIMEOUT,
            )
        except RpcError as exc:
            raise RpcError(
                f"{binary} app-server did not initialize ({exc}): is it a Codex CLI? {INSTALL_HINT}"
            ) from None
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
        self.questions.clear()
        self.close_not_run()
        self.turn_id = ""
        self._turn_done.set()

    async def _start_turn(self, text: str) -> None:
        if not self.within_budget(text):  # the budget question waits before the turn's first model call
            self._turn_done.set()
            return
        self._turn_done.clear()
        self._interrupting = False
        self._retries = 0
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

    async def _steer(self, text: str) -> bool:
        """Add `text` to the turn that runs; False when no turn runs any more."""
        if not (self.alive and self.turn_id and not self._turn_done.is_set() and self.peer is not None):
            return False
        steer = {"threadId": self.thread_id, "expectedTurnId": self.turn_id, "input": [{"type": "text", "text": text}]}
        try:
            await self.peer.request("turn/steer", steer, timeout=SETUP_TIMEOUT)
        except RpcError:
            return False  # the turn ended meanwhile
        return True

    # -- protocol (ours) -------------------------------------------------------------------------------
    async def start(self, task: str) -> None:
        self._turn_done.clear()
        self.spawn(self._start_turn(task))

    async def send(self, text: str) -> None:
        await self.cancel_questions(NOT_RUN_REDIRECTED, "deny")
        if self._note:
            text, self._note = f"{self._note}\n\n{text}", ""
        if await self._steer(text):
            self.ctx.status("running")
            return
        self._turn_done.clear()
        self.spawn(self._start_turn(text))

    async def answer(self, question: Question, decision: str, reason: str) -> None:
        if self.peer is None:
            return
        if decision == "deny" and reason and not await self._steer(deny_note(question.summary, reason)):
            self._note = deny_note(question.summary, reason)
        # approve-all is mission control's memory: Codex is told "accept" (this once), never "for the session"
        answer = {"approve": "accept", "deny": "decline"}.get(decision, "cancel")
        await self.peer.respond(question.handle, {"decision": answer})

    async def go_on(self, handle: Any) -> None:
        text = str(handle or CONTINUE)
        if self._note:
            text, self._note = f"{self._note}\n\n{text}", ""
        self._turn_done.clear()
        self.spawn(self._start_turn(text))

    def _check_budget(self) -> None:
        """After a usage report: a turn whose tokens reached a budget is stopped at once (Codex asks nobody before
        a model call), and the budget question waits; approving it continues in a new turn."""
        if self._budget_stop or self._interrupting or self._turn_done.is_set():
            return
        if self.ctx.over_budget() is not None:
            self._budget_stop = True
            self.spawn(self._stop_at_budget())

    def fleet_usage(self) -> None:
        self._check_budget()

    async def _stop_at_budget(self) -> None:
        self._interrupting = True
        try:
            await self.cancel_questions(NOT_RUN_BUDGET)
            if self.alive and self.turn_id and not self._turn_done.is_set() and self.peer is not None:
                with contextlib.suppress(RpcError):
                    await self.peer.request("turn/interrupt", {"threadId": self.thread_id, "turnId": self.turn_id}, 10)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._turn_done.wait(), 10)
        finally:
            self._interrupting = False
            self._budget_stop = False
        if self._closing or self._failed:
            return  # interrupted, killed or failed meanwhile: that says what happens next
        if self._ended == "completed":
            self.ctx.status("idle", "turn done")  # it ended by itself: the next turn asks first
        elif self.within_budget(CONTINUE):
            await self.go_on(CONTINUE)  # raised meanwhile (the fleet's budget, by another agent's approval)

    async def interrupt(self) -> None:
        self._interrupting = True
        self._note = ""
        await self.cancel_questions(NOT_RUN_INTERRUPTED)
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
        self.questions.clear()
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
            self._retries = 0
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
            self._retries = 0
            total = ((params.get("tokenUsage") or {}).get("total")) or {}
            now = (int(total.get("inputTokens") or 0), int(total.get("outputTokens") or 0))
            before = self._usage_total
            if now[0] < before[0] or now[1] < before[1]:
                before = (0, 0)  # a resumed thread counts from zero in this process
            self._usage_total = now
            if now != before:
                ctx.emit(ev.Usage(agent=aid, input_tokens=now[0] - before[0], output_tokens=now[1] - before[1]))
                self._check_budget()
        elif method == "error":
            self._error(params)
        elif method == "turn/completed":
            self._turn_completed(params.get("turn") or {})
        elif method == "serverRequest/resolved":
            pass

    def _error(self, params: dict[str, Any]) -> None:
        """An error of the turn. Codex retries an unreachable endpoint without end ("Reconnecting... waiting
        for network"): after [model] max_retries retries the turn stops and the agent fails, naming it."""
        ctx = self.ctx
        error = params.get("error") or {}
        message = str(error.get("message") or "unknown error")
        details = str(error.get("additionalDetails") or "")
        if details and details not in message:
            message += f" ({details})"
        if not params.get("willRetry"):
            ctx.emit(ev.ErrorEvent(agent=ctx.agent_id, message=f"codex: {message}"))
            return
        allowed = ctx.config.model.max_retries
        self._retries += 1
        if self._retries <= allowed:
            ctx.emit(
                ev.ErrorEvent(agent=ctx.agent_id, message=f"codex: {message} (retry {self._retries} of {allowed})")
            )
            return
        if self._interrupting:
            return
        url = ctx.config.model.base_url
        tries = f"{allowed} retr{'y' if allowed == 1 else 'ies'}"
        self.spawn(
            self._give_up(
                f"codex: the model endpoint {url} did not answer: {message}; gave up after {tries} "
                "([model] max_retries): check [model] base_url and that the server runs, then resume"
            )
        )

    async def _give_up(self, message: str) -> None:
        self._interrupting = True
        self._note = ""
        await self.cancel_questions(NOT_RUN_INTERRUPTED)
        if self.alive and self.turn_id and self.peer is not None:
            with contextlib.suppress(RpcError):
                await self.peer.request("turn/interrupt", {"threadId": self.thread_id, "turnId": self.turn_id}, 10)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._turn_done.wait(), 10)
        self.fail(message)
        self._failed = False  # the thread lives on: resume can start another turn

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
            why = self.not_run(item_id)
            if status == "declined":
                output = why or output or "declined"
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
            why = self.not_run(item_id)
            ctx.emit(
                ev.ToolResult(
                    agent=ctx.agent_id,
                    call_id=item_id,
                    ok=status == "completed",
                    output=why if status == "declined" and why else f"{status}: {', '.join(paths)}",
                )
            )

    def _turn_completed(self, turn: dict[str, Any]) -> None:
        ctx = self.ctx
        self.turn_id = ""
        self._turn_done.set()
        self.close_not_run()
        status = self._ended = str(turn.get("status", "completed"))
        if self._interrupting or self._closing:
            return
        if self._note and status == "completed":
            note, self._note = self._note, ""
            self.spawn(self._start_turn(note))  # the model reads the engineer's reason before it stops
        elif status == "completed":
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
        item_id = str(params.get("itemId", ""))
        item = self._items.get(item_id, {})
        reason = str(params.get("reason") or "")
        if method.startswith("item/commandExecution"):
            command = command_text({**item, **{k: v for k, v in params.items() if k in ("command", "commandActions")}})
            kind, tool, summary = "command", "shell", command
            detail = command + (f"\n\n{reason}" if reason else "")
            key = remember_key("command", command)
        else:
            changes = [c for c in item.get("changes") or [] if isinstance(c, dict)]
            paths = [str(c.get("path", "")) for c in changes]
            kind, tool, summary = "write", "apply_patch", "write " + ", ".join(paths)
            detail = "\n".join(str(c.get("diff", "")) for c in changes) or reason
            key = remember_key("write")
        approval_id = "ap-" + str(params.get("approvalId") or item_id or rid)
        if approval_id in self.questions or approval_id in self.ctx.agent.pending:
            approval_id = self.new_approval_id(approval_id[3:])
        question = Question(approval_id=approval_id, call_id=item_id, key=key, handle=rid)
        if self._budget_stop:  # the turn is being stopped: nothing more of it runs
            self._not_run[item_id] = NOT_RUN_BUDGET
            self.spawn(self.answer(question, "cancel", ""))
            return
        if self.ask(question, tool=tool, kind=kind, summary=summary, detail=detail):
            self.spawn(self.answer(question, "approve", ""))
