"""What the codex and acp runners share: a JSON-RPC peer over a child's stdio, and the runner life cycle
around one long-lived agent process (launch, fail with a clear line, kill leaving nothing behind).

Both protocols are newline-delimited JSON-RPC: requests go both ways (the agent asks us for approvals),
notifications stream the agent's activity. The process is started with `mc.procs.start` and the
agent's tag, so a kill finds every process it started (the npm launcher, the real binary, the
commands it runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
from collections import deque
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from mc import events as ev
from mc import procs
from mc.agents.base import Runner, RunnerContext

#: The project-local npm install of the agent CLIs (scripts/install-tools.sh puts them there).
LOCAL_BIN = Path(__file__).resolve().parents[2] / ".cache" / "npm" / "node_modules" / ".bin"
#: A single JSON-RPC message longer than this is dropped (with an error event) instead of filling memory.
MAX_MESSAGE = 64 * 1024 * 1024
#: Seconds to wait for an answer to a set-up request (initialize, thread/start, session/new).
SETUP_TIMEOUT = 60.0
#: Seconds to wait for the rest of stderr once stdout has closed.
STDERR_DRAIN = 2.0
#: Stderr lines that say nothing to a person (backtrace frames).
_NOISE = re.compile(r"^(\d+: <unknown>|Stack backtrace:|at .+:\d+:\d+\)?)$")


class RpcError(Exception):
    """An error answer to a request, or the connection closing before the answer came."""

    def __init__(self, message: str, code: int = 0, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.data = data


def find_binary(name: str, env_var: str) -> str | None:
    """The executable `name`: from $env_var, else PATH, else the project-local npm install."""
    configured = os.environ.get(env_var, "").strip()
    if configured:
        return configured
    found = shutil.which(name)
    if found:
        return found
    local = LOCAL_BIN / name
    return str(local) if local.is_file() and os.access(local, os.X_OK) else None


class JsonRpcPeer:
    """One JSON-RPC connection over a started process's stdin/stdout.

    `on_notification(method, params)` and `on_request(id, method, params)` are called on the event loop
    in the order the messages arrive; answer a request later with `respond` or `respond_error`.
    """

    def __init__(
        self,
        proc: procs.Proc,
        *,
        on_notification: Callable[[str, dict[str, Any]], None],
        on_request: Callable[[Any, str, dict[str, Any]], None],
        on_bad_line: Callable[[str], None] | None = None,
        jsonrpc_field: bool = True,
    ) -> None:
        self.proc = proc
        self._on_notification = on_notification
        self._on_request = on_request
        self._on_bad_line = on_bad_line
        self._jsonrpc_field = jsonrpc_field
        self._next_id = 0
        self._pending: dict[Any, asyncio.Future[Any]] = {}
        self.stderr_tail: deque[str] = deque(maxlen=40)
        self.closed = asyncio.Event()
        self._tasks = [
            asyncio.get_running_loop().create_task(self._read()),
            asyncio.get_running_loop().create_task(self._read_stderr()),
        ]

    def _message(self, **fields: Any) -> bytes:
        if self._jsonrpc_field:
            fields = {"jsonrpc": "2.0", **fields}
        return (json.dumps(fields, separators=(",", ":")) + "\n").encode()

    async def request(self, method: str, params: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        """Send a request and wait for its result. Raises RpcError (an error answer, or the process ended)."""
        if self.closed.is_set():
            raise RpcError(f"cannot send {method}: the agent process has ended")
        self._next_id += 1
        rid = self._next_id
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        fields: dict[str, Any] = {"id": rid, "method": method}
        if params is not None:
            fields["params"] = params
        try:
            await self.proc.write(self._message(**fields))
            return await asyncio.wait_for(fut, timeout) if timeout else await fut
        except (BrokenPipeError, OSError):
            # the process ended before it read the request: the same words as when it ends after reading it,
            # so which of the two came first never changes the message
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closed.wait(), 3)
            raise RpcError(self.ended_text()) from None
        except TimeoutError:
            raise RpcError(f"{method} got no answer within {timeout:g}s") from None
        finally:
            self._pending.pop(rid, None)

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        fields: dict[str, Any] = {"method": method}
        if params is not None:
            fields["params"] = params
        with contextlib.suppress(BrokenPipeError, OSError):
            await self.proc.write(self._message(**fields))

    async def respond(self, rid: Any, result: Any) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            await self.proc.write(self._message(id=rid, result=result))

    async def respond_error(self, rid: Any, code: int, message: str) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            await self.proc.write(self._message(id=rid, error={"code": code, "message": message}))

    def _dispatch(self, line: str) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            if self._on_bad_line is not None:
                self._on_bad_line(line)
            return
        if not isinstance(msg, dict):
            return
        method = msg.get("method")
        params = msg.get("params")
        params = params if isinstance(params, dict) else {}
        if isinstance(method, str):
            if "id" in msg and msg["id"] is not None:
                self._on_request(msg["id"], method, params)
            else:
                self._on_notification(method, params)
            return
        fut = self._pending.get(msg.get("id"))
        if fut is None or fut.done():
            return
        if "error" in msg and msg["error"] is not None:
            err = msg["error"] if isinstance(msg["error"], dict) else {"message": str(msg["error"])}
            fut.set_exception(RpcError(str(err.get("message", err)), int(err.get("code") or 0), err.get("data")))
        else:
            fut.set_result(msg.get("result"))

    async def _read(self) -> None:
        buffer = ""
        try:
            async for chunk in self.proc.chunks():
                buffer += chunk
                if "\n" not in buffer:
                    if len(buffer) > MAX_MESSAGE:
                        buffer = ""
                        if self._on_bad_line is not None:
                            self._on_bad_line(f"(a message over {MAX_MESSAGE} bytes was dropped)")
                    continue
                *lines, buffer = buffer.split("\n")
                for line in lines:
                    if line.strip():
                        self._dispatch(line)
            if buffer.strip():
                self._dispatch(buffer)
        finally:
            # stdout closed: let stderr drain (bounded: a grandchild may hold it open) so the message has the
            # process's last words whichever pipe closed first
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self._tasks[1]), STDERR_DRAIN)
            self.closed.set()
            text = self.ended_text()
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(RpcError(text))

    def ended_text(self) -> str:
        """ "the agent process ended: <its last stderr lines>"."""
        tail = self.stderr_text()
        return "the agent process ended" + (f": {tail}" if tail else "")

    async def _read_stderr(self) -> None:
        buffer = ""
        with contextlib.suppress(Exception):
            async for chunk in self.proc.stderr_chunks():
                buffer += chunk
                *lines, buffer = buffer.split("\n")
                for line in lines:
                    if line.strip():
                        self.stderr_tail.append(procs.clean_terminal_text(line)[:500])
                if len(buffer) > 4000:
                    self.stderr_tail.append(buffer[:500])
                    buffer = ""
        if buffer.strip():
            self.stderr_tail.append(procs.clean_terminal_text(buffer)[:500])

    def stderr_text(self, lines: int = 3) -> str:
        """The last lines the process wrote to stderr, joined on one line (warnings left out when possible)."""
        tail = [line.strip() for line in self.stderr_tail if line.strip()]
        tail = [line for line in tail if not _NOISE.match(line)]
        errors = [line for line in tail if line.lower().startswith(("error", "fatal", "panic"))]
        errors = errors or [line for line in tail if not line.startswith("WARNING")] or tail
        return " | ".join(errors[-lines:])

    async def close(self) -> None:
        """Kill the process tree and stop reading."""
        await self.proc.kill()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.closed.set()


class StdioRunner(Runner):
    """A runner driving one long-lived agent process over JSON-RPC. Subclasses speak the protocol."""

    #: Shown in error lines ("codex app-server exited …").
    label = "agent"

    def __init__(self, ctx: RunnerContext) -> None:
        super().__init__(ctx)
        self.peer: JsonRpcPeer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._failed = False
        self._session_lock = asyncio.Lock()

    # -- helpers for subclasses --------------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `coro` in the background; an exception makes the agent fail with its message."""
        task = asyncio.get_running_loop().create_task(self._guard(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guard(self, coro: Coroutine[Any, Any, Any]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except RpcError as exc:
            if not self._closing:
                self.fail(self.explain(str(exc)))
        except Exception as exc:  # a bug must not leave the agent silently "running"
            if not self._closing:
                self.fail(f"{type(exc).__name__}: {exc}")

    def explain(self, message: str) -> str:
        """Turn a protocol error into a line that says what to do (subclasses add their advice)."""
        return f"{self.label}: {message}"

    def fail(self, message: str) -> None:
        """The agent goes to failed with `message` (once per failure)."""
        if self._failed:
            return
        self._failed = True
        self.ctx.emit(ev.ErrorEvent(agent=self.ctx.agent_id, message=message, fatal=True))
        self.ctx.status("failed", message)

    def warn(self, message: str) -> None:
        self.ctx.emit(ev.ErrorEvent(agent=self.ctx.agent_id, message=message))

    @property
    def alive(self) -> bool:
        return self.peer is not None and not self.peer.closed.is_set()

    async def launch(self, argv: list[str], env: dict[str, str], *, jsonrpc_field: bool = True) -> JsonRpcPeer:
        """Start the agent process in the worktree; its end without our asking makes the agent fail."""
        self._closing = False
        self._failed = False
        try:
            proc = await procs.start(
                argv, cwd=self.ctx.worktree, env=env, tag=self.ctx.tag, stdin=True, stderr="separate"
            )
        except OSError as exc:
            raise RpcError(str(exc.strerror or exc)) from None
        peer = JsonRpcPeer(
            proc,
            on_notification=self.on_notification,
            on_request=self.on_request,
            on_bad_line=lambda line: None,
            jsonrpc_field=jsonrpc_field,
        )
        self.peer = peer
        watcher = asyncio.get_running_loop().create_task(self._watch_exit(peer))
        self._tasks.add(watcher)
        watcher.add_done_callback(self._tasks.discard)
        return peer

    async def _watch_exit(self, peer: JsonRpcPeer) -> None:
        await peer.closed.wait()
        if self._closing or peer is not self.peer:
            return
        code = await peer.proc.wait()
        await peer.proc.kill()  # whatever it left running goes with it
        if self._closing or peer is not self.peer:
            return
        self.on_exit()
        tail = peer.stderr_text()
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        self.fail(self.explain(f"the {self.label} process {how}" + (f": {tail}" if tail else "")))

    def on_exit(self) -> None:
        """The process ended on its own (subclasses forget their turn and questions here)."""

    async def shutdown(self) -> None:
        """Stop the process tree on purpose (interrupt, kill)."""
        self._closing = True
        peer, self.peer = self.peer, None
        if peer is not None:
            await peer.close()

    # -- the protocol's side -------------------------------------------------------------------------
    def on_notification(self, method: str, params: dict[str, Any]) -> None:
        raise NotImplementedError

    def on_request(self, rid: Any, method: str, params: dict[str, Any]) -> None:
        raise NotImplementedError

    async def kill(self) -> None:
        await self.shutdown()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment of an agent process: ours, plus `extra`."""
    env = dict(os.environ)
    env.update(extra)
    return env
