"""A client of the fleet server: the Fleet's commands and events over the server's Unix socket.

`FleetClient` takes a snapshot of the fleet, then follows the event stream and folds each event into its
agents with the same `Agent.apply` the fleet uses. When the stream breaks it reconnects by itself and asks for
the events after the last one it saw (a restarted server, or events gone from its memory, mean a new
snapshot), so a window that stays open misses nothing. `ensure_server` starts the server of a repository
when none answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path, PurePath
from typing import Any

import aiohttp

from mc import events as ev
from mc.agent import Agent, LogLine
from mc.events import FileStat
from mc.snapshot import agent_from_dict

SOCKET_NAME = "fleet.sock"
LOG_NAME = "server.log"
#: Seconds a client waits for a server it started to answer.
START_TIMEOUT = 30.0


class ClientError(Exception):
    """The server answered with an error (its one-line message), or could not be reached."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class ServerGone(ClientError):
    """No fleet server answers on the socket."""


class _ShortPath:
    """Reach a socket whose path is too long for sun_path through /proc/self/fd (kept open while in use)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def open(self) -> str:
        text = str(self.path)
        if len(text.encode()) < 100:
            return text
        if self._fd is None:
            self._fd = os.open(self.path.parent, os.O_PATH | os.O_DIRECTORY)
        return f"/proc/self/fd/{self._fd}/{self.path.name}"

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def socket_of(state_dir: Path) -> Path:
    return Path(state_dir) / SOCKET_NAME


class Diff:
    """An agent's diff as the server sent it (the same fields as mc.git.Diff)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.files = tuple(FileStat(**f) for f in data.get("files") or [])
        self.added = int(data.get("added") or 0)
        self.removed = int(data.get("removed") or 0)
        self.text = str(data.get("text") or "")
        self.truncated = bool(data.get("truncated"))

    def summary(self) -> str:
        """One line: "3 files changed, +10 -2" (and "diff truncated" when the text was cut)."""
        if not self.files:
            return "no changes"
        n = len(self.files)
        line = f"{n} file{'s' if n != 1 else ''} changed, +{self.added} -{self.removed}"
        return line + " (diff truncated)" if self.truncated else line


class FleetClient:
    """The fleet behind a socket, with the Fleet's commands; `agents` is kept up to date by the event stream."""

    def __init__(self, socket: Path, *, reconnect: bool = True) -> None:
        self.socket = Path(socket)
        self.reconnect = reconnect
        self.agents: dict[str, Agent] = {}
        self.epoch = ""
        self.seq = 0
        self.info: dict[str, Any] = {}
        self.connected = False
        self._path = _ShortPath(self.socket)
        self._session: aiohttp.ClientSession | None = None
        self._listeners: list[Callable[[ev.Event], None]] = []
        self._on_connection: list[Callable[[bool], None]] = []
        self._follow: asyncio.Task[None] | None = None
        self._closed = False

    # -- connection ------------------------------------------------------------------------------
    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.UnixConnector(path=self._path.open())
            self._session = aiohttp.ClientSession(
                connector=connector, base_url="http://fleet", timeout=aiohttp.ClientTimeout(total=None, connect=5)
            )
        return self._session

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None, **query: Any) -> Any:
        """One request; the server's error becomes ClientError with its one-line message and status."""
        try:
            async with self._http().request(
                method, path, json=body, params={k: str(v) for k, v in query.items() if v is not None}
            ) as response:
                try:
                    data = await response.json(content_type=None)
                except ValueError:  # not JSON: an answer of aiohttp's own (an unknown path, say)
                    data = {"error": f"{response.status} {response.reason}: {method} {path}"}
                if response.status >= 400:
                    raise ClientError(str((data or {}).get("error") or response.reason), response.status)
                return data
        except (aiohttp.ClientConnectionError, FileNotFoundError, ConnectionRefusedError) as exc:
            raise ServerGone(f"no fleet server answers on {self.socket} ({exc.__class__.__name__})") from None

    async def connect(self, *, follow: bool = True) -> None:
        """Take a snapshot of the fleet; with follow, keep it up to date from the event stream."""
        await self._snapshot()
        self._set_connected(True)
        if follow and self._follow is None:
            self._follow = asyncio.get_running_loop().create_task(self._follow_loop(), name="follow the fleet")

    async def _snapshot(self) -> None:
        data = await self.request("GET", "/v1/fleet", log_lines=500)
        self.info = {k: v for k, v in data.items() if k != "agents"}
        self.epoch, self.seq = data["epoch"], int(data["seq"])
        self.agents = {a["id"]: agent_from_dict(a) for a in data["agents"]}

    async def _follow_loop(self) -> None:
        delay = 0.1
        while not self._closed:
            try:
                async for seq, event in self._stream(since=self.seq, epoch=self.epoch):
                    delay = 0.1
                    self.seq = seq
                    self._apply(event)
                if not self.reconnect:
                    return
            except ClientError as exc:
                if exc.status == 410:  # a new server, or too far behind: start again from a snapshot
                    with contextlib.suppress(ClientError):
                        await self._snapshot()
                        self._set_connected(True)
                        for listener in list(self._listeners):
                            listener(ev.RunnerState(agent="", data={"resync": True}))
                        continue
            except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
                pass
            self._set_connected(False)
            if not self.reconnect or self._closed:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            with contextlib.suppress(ClientError):
                await self.request("GET", "/v1/info")
                self._set_connected(True)

    async def _stream(
        self, *, since: int | None = None, epoch: str = "", agent: str | None = None, follow: bool = True
    ) -> AsyncIterator[tuple[int, ev.Event]]:
        params: dict[str, str] = {"follow": "1" if follow else "0"}
        if since is not None:
            params["since"] = str(since)
        if epoch:
            params["epoch"] = epoch
        if agent:
            params["agent"] = agent
        try:
            response = await self._http().get("/v1/events", params=params)
        except (aiohttp.ClientConnectionError, FileNotFoundError, ConnectionRefusedError) as exc:
            raise ServerGone(f"no fleet server answers on {self.socket} ({exc.__class__.__name__})") from None
        async with response:
            if response.status >= 400:
                data = await response.json(content_type=None)
                raise ClientError(str((data or {}).get("error") or response.reason), response.status)
            buffer = b""
            async for chunk in response.content.iter_any():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    item = json.loads(line)
                    if "error" in item:
                        raise ClientError(str(item["error"]), 410)
                    yield int(item["seq"]), ev.event_from_dict(item["event"])

    async def events(
        self, *, since: int | None = None, agent: str | None = None, follow: bool = True
    ) -> AsyncIterator[tuple[int, ev.Event]]:
        """The fleet's events with their sequence numbers: those after `since` (kept in the server's memory),
        then, with follow, every new one as it is appended."""
        async for item in self._stream(since=since, epoch=self.epoch if since else "", agent=agent, follow=follow):
            yield item

    def _apply(self, event: ev.Event) -> None:
        agent = self.agents.get(event.agent)
        if agent is None:
            agent = self.agents[event.agent] = Agent(id=event.agent)
        agent.apply(event)
        for listener in list(self._listeners):
            listener(event)

    def _set_connected(self, value: bool) -> None:
        if value != self.connected:
            self.connected = value
            for callback in list(self._on_connection):
                callback(value)

    def add_listener(self, listener: Callable[[ev.Event], None]) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[ev.Event], None]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def on_connection(self, callback: Callable[[bool], None]) -> None:
        """Call `callback(connected)` whenever the server goes away or comes back."""
        self._on_connection.append(callback)

    async def close(self) -> None:
        self._closed = True
        if self._follow is not None:
            self._follow.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._follow
            self._follow = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._path.close()

    async def __aenter__(self) -> FleetClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- reading ---------------------------------------------------------------------------------
    def list(self) -> list[Agent]:
        return sorted(self.agents.values(), key=lambda a: a.created)

    def get(self, name_or_id: str) -> Agent:
        agent = self.agents.get(name_or_id) or next((a for a in self.agents.values() if a.name == name_or_id), None)
        if agent is None:
            names = ", ".join(a.name for a in self.list()) or "none"
            raise ClientError(f"no agent named {name_or_id!r} (agents: {names})", 404)
        return agent

    async def diff(self, name: str) -> Diff:
        return Diff(await self.request("GET", f"/v1/agents/{name}/diff"))

    async def full_log(self, name: str) -> list[LogLine]:
        data = await self.request("GET", f"/v1/agents/{name}/log")
        return [(kind, text) for kind, text in data["lines"]]

    async def check_output(self, name: str) -> str:
        data = await self.request("GET", f"/v1/agents/{name}/check-output")
        return str(data.get("text", ""))

    # -- commands --------------------------------------------------------------------------------
    async def spawn(self, name: str, task: str, **fields: Any) -> dict[str, Any]:
        """Start an agent (or, with copies, runners or models, best of N: every copy; `agents` lists them)."""
        return await self.request("POST", "/v1/agents", {"name": name, "task": task, **fields})

    async def _act(self, name: str, action: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.request("POST", f"/v1/agents/{name}/{action}", body or {})

    async def approve(self, name: str, approval_id: str | None = None, *, remember: bool = False) -> None:
        await self._act(name, "approve", {"approval_id": approval_id, "all": remember})

    async def deny(self, name: str, approval_id: str | None = None, reason: str = "") -> None:
        await self._act(name, "deny", {"approval_id": approval_id, "reason": reason})

    async def redirect(self, name: str, text: str) -> None:
        await self._act(name, "redirect", {"text": text})

    async def interrupt(self, name: str) -> None:
        await self._act(name, "interrupt")

    async def resume(self, name: str) -> None:
        await self._act(name, "resume")

    async def kill(self, name: str, *, discard: bool = False) -> None:
        await self._act(name, "kill", {"discard": discard})

    async def merge(
        self, name: str, mode: str | None = None, message: str | None = None, *, checks: bool = True
    ) -> dict[str, Any]:
        return await self._act(name, "merge", {"mode": mode, "message": message, "checks": checks})

    async def discard(self, name: str) -> str:
        return str((await self._act(name, "discard")).get("snapshot_ref") or "")

    async def run_checks(self, name: str) -> None:
        await self._act(name, "check")

    async def fix_checks(self, name: str) -> str:
        return str((await self._act(name, "fix")).get("text") or "")

    async def add_comment(self, name: str, path: str, line: int, text: str, **anchor: Any) -> str:
        body = {"path": path, "line": line, "text": text, **anchor}
        return str((await self._act(name, "comment", body)).get("comment_id") or "")

    async def remove_comment(self, name: str, comment_id: str) -> None:
        await self._act(name, "uncomment", {"comment_id": comment_id})

    async def send_review(self, name: str) -> str:
        return str((await self._act(name, "review")).get("text") or "")

    async def stop(self) -> None:
        """Stop the fleet server: every agent ends (mid-turn ones as interrupted), the socket goes away."""
        await self.request("POST", "/v1/stop")


async def answers(socket: Path) -> bool:
    """True when a fleet server answers on `socket`."""
    client = FleetClient(socket, reconnect=False)
    try:
        await client.request("GET", "/v1/info")
        return True
    except ClientError:
        return False
    finally:
        await client.close()


async def ensure_server(state_dir: Path, argv: list[str], *, timeout: float = START_TIMEOUT) -> Path:
    """The socket of the repository's fleet server, starting `python -m mc serve ARGV` detached when none
    answers (its own session, stdio to .mc/server.log). Raises ClientError with the server's last words when
    it does not come up."""
    socket = socket_of(state_dir)
    if await answers(socket):
        return socket
    state_dir = Path(state_dir)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    log_path = state_dir / LOG_NAME
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        start = log_path.stat().st_size
        proc = subprocess.Popen(
            [sys.executable, "-m", "mc", "serve", *argv],
            cwd=state_dir.parent,  # the repository: the server never holds a folder the user may remove
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(fd)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await answers(socket):
            return socket
        if proc.poll() is not None:
            # ours ended: maybe because another command started the server a moment earlier (it holds the
            # fleet's lock and listens once it has opened the fleet): wait a little for that one
            with open(log_path, "rb") as fh:
                fh.seek(start)
                said = fh.read().decode(errors="replace")
            if "already driven by process" not in said:
                break
            deadline = min(deadline, time.monotonic() + 10.0)
        await asyncio.sleep(0.05)
    with open(log_path, "rb") as fh:
        fh.seek(start)
        words = fh.read().decode(errors="replace").strip().splitlines()
    last = words[-1] if words else f"it did not answer within {timeout:g}s"
    if proc.poll() is None:
        proc.kill()
    raise ClientError(f"the fleet server did not start: {last} (log: {log_path})")


class MergeOutcome:
    """What a merge did, as the server answered (the fields of mc.git.MergeResult)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.ok = bool(data.get("ok"))
        self.commit: str | None = data.get("commit")
        self.conflicts: list[str] = list(data.get("conflicts") or [])
        self.message = str(data.get("message") or "")
        self.mode = str(data.get("mode") or "")


class RemoteFleet:
    """A fleet server seen through the Fleet's own interface, so a screen does not know or care where the
    fleet runs: the same attributes, the same commands, the same listener of events.

    Commands go to the server; `agents` follows its event stream. `readonly` (a monitor) refuses commands here.
    Diffs are kept as the server last sent them: `refresh_diff` asks for the current one.
    """

    def __init__(
        self,
        config: Any,
        socket: Path,
        *,
        readonly: bool = False,
        server_argv: list[str] | None = None,
        root: PurePath | None = None,
    ) -> None:
        self.config = config
        self.readonly = readonly
        self.socket = Path(socket)
        self.state_dir = self.socket.parent
        self.root: PurePath = root or self.state_dir.parent
        """The repository (on another machine for `--remote`: its path there)."""
        self.client = FleetClient(self.socket)
        self.diffs: dict[str, Diff] = {}
        self._server_argv = server_argv
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: list[Callable[[ev.Event], None]] = []
        self._shown_diffs: set[str] = set()  # agents whose diff a screen asked for: kept fresh, the others wait
        self._fetching: dict[str, bool] = {}  # agent → asked again while a fetch ran
        self.client.add_listener(self._on_event)

    # -- life cycle ------------------------------------------------------------------------------
    async def open(self) -> None:
        """Attach: start the server when none answers (unless read-only), take a snapshot, follow events."""
        self._loop = asyncio.get_running_loop()
        if self._server_argv is not None and not self.readonly:
            await ensure_server(self.state_dir, self._server_argv)
        elif self.readonly and not await answers(self.socket):
            raise ClientError(f"no fleet runs in {self.root}: `missionctl` there starts it (a monitor only watches)")
        await self.client.connect()

    async def close(self) -> None:
        """Detach. The fleet keeps working in its server."""
        await self.client.close()

    @property
    def agents(self) -> dict[str, Agent]:
        return self.client.agents

    @property
    def base_branch(self) -> str:
        return str(self.client.info.get("base_branch") or "")

    @property
    def owner_pid(self) -> int | None:
        pid = self.client.info.get("pid")
        return int(pid) if pid else None

    @property
    def connected(self) -> bool:
        return self.client.connected

    def add_listener(self, listener: Callable[[ev.Event], None]) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[ev.Event], None]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def _on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.DiffChanged) and event.agent in self._shown_diffs:
            self._fetch_diff(event.agent)
        for listener in list(self._listeners):
            listener(event)

    def _fetch_diff(self, agent_id: str) -> None:
        """Fetch the agent's diff in the background; listeners then get a DiffChanged for it (so a screen that
        shows the diff draws the new one). One fetch per agent at a time; a change meanwhile fetches again."""
        if agent_id in self._fetching:
            self._fetching[agent_id] = True
            return
        self._fetching[agent_id] = False
        loop = self._loop or asyncio.get_running_loop()

        async def fetch() -> None:
            try:
                while True:
                    with contextlib.suppress(ClientError):
                        diff = await self.client.diff(agent_id)
                        self.diffs[agent_id] = diff
                        for listener in list(self._listeners):
                            listener(
                                ev.DiffChanged(agent=agent_id, files=diff.files, added=diff.added, removed=diff.removed)
                            )
                    if not self._fetching.get(agent_id):
                        return
                    self._fetching[agent_id] = False
            finally:
                self._fetching.pop(agent_id, None)

        loop.create_task(fetch(), name=f"diff of {agent_id}")

    def on_connection(self, callback: Callable[[bool], None]) -> None:
        self.client.on_connection(callback)

    # -- reading ---------------------------------------------------------------------------------
    def list(self) -> list[Agent]:
        return self.client.list()

    def get(self, name_or_id: str) -> Agent:
        return self.client.get(name_or_id)

    def needing_decision(self) -> list[Agent]:
        return sorted((a for a in self.agents.values() if a.pending), key=lambda a: a.waiting_since)

    def next_needing_decision(self, after: str | None = None) -> Agent | None:
        waiting = self.needing_decision()
        if not waiting:
            return None
        ids = [a.id for a in waiting]
        return waiting[(ids.index(after) + 1) % len(waiting)] if after in ids else waiting[0]

    def diff(self, agent_id: str) -> Diff | None:
        """The agent's diff as last fetched (None until it arrives: listeners are told with a DiffChanged)."""
        cached = self.diffs.get(agent_id)
        if agent_id not in self._shown_diffs:
            self._shown_diffs.add(agent_id)
            self._fetch_diff(agent_id)
        return cached

    async def refresh_diff(self, agent_id: str) -> Diff:
        diff = await self.client.diff(agent_id)
        self.diffs[agent_id] = diff
        return diff

    def full_log(self, agent_id: str) -> list[LogLine]:
        """The whole log (blocking: call it in a thread, as for the in-process Fleet)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(self.client.full_log(agent_id), self._loop).result(60)

    def check_output(self, agent_id: str) -> str:
        """What the agent's last check printed (blocking: call it in a thread, as for the in-process Fleet)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(self.client.check_output(agent_id), self._loop).result(60)

    # -- commands --------------------------------------------------------------------------------
    def _writable(self) -> None:
        if self.readonly:
            raise ClientError("this window is a read-only monitor: decide in a window opened without --monitor")

    async def spawn(self, spec: Any) -> Agent:
        """Start an agent; a best-of-N spec starts every copy and returns the first (see `spawn_copies`)."""
        return (await self.spawn_copies(spec))[0]

    async def spawn_copies(self, spec: Any) -> list[Agent]:
        """Start the agent, or each copy of a best-of-N spec (copies, runners or models), as Fleet.spawn_copies."""
        self._writable()
        keys = ("runner", "model", "policy", "command", "base", "group", "runners", "models")
        fields: dict[str, Any] = {k: getattr(spec, k) for k in keys if getattr(spec, k, None)}
        if getattr(spec, "copies", 1) != 1:
            fields["copies"] = spec.copies
        data = await self.client.spawn(spec.name, spec.task, **fields)
        return [self.agents.get(a["id"]) or agent_from_dict(a) for a in data.get("agents") or [data["agent"]]]

    async def spawn_configured(self) -> list[Agent]:
        self._writable()
        agents = [dataclasses.asdict(spec) for spec in getattr(self.config, "agents", [])]
        data = await self.client.request("POST", "/v1/spawn-configured", {"agents": agents})
        return [self.agents.get(a["id"]) or agent_from_dict(a) for a in data.get("agents", [])]

    async def approve(self, agent_id: str, approval_id: str | None = None, *, remember: bool = False) -> None:
        self._writable()
        await self.client.approve(agent_id, approval_id, remember=remember)

    async def deny(self, agent_id: str, approval_id: str | None = None, reason: str = "") -> None:
        self._writable()
        await self.client.deny(agent_id, approval_id, reason)

    async def redirect(self, agent_id: str, text: str) -> None:
        self._writable()
        await self.client.redirect(agent_id, text)

    async def interrupt(self, agent_id: str) -> None:
        self._writable()
        await self.client.interrupt(agent_id)

    async def resume(self, agent_id: str) -> None:
        self._writable()
        await self.client.resume(agent_id)

    async def kill(self, agent_id: str, *, discard: bool = False) -> None:
        self._writable()
        await self.client.kill(agent_id, discard=discard)

    async def merge(
        self, agent_id: str, mode: str | None = None, message: str | None = None, *, checks: bool = True
    ) -> MergeOutcome:
        self._writable()
        return MergeOutcome(await self.client.merge(agent_id, mode, message, checks=checks))

    async def discard(self, agent_id: str) -> str:
        self._writable()
        return await self.client.discard(agent_id)

    async def run_checks(self, agent_id: str) -> None:
        self._writable()
        await self.client.run_checks(agent_id)

    async def fix_checks(self, agent_id: str) -> str:
        self._writable()
        return await self.client.fix_checks(agent_id)

    async def add_comment(
        self,
        agent_id: str,
        path: str,
        line: int,
        text: str,
        *,
        quote: tuple[str, ...] | list[str] = (),
        hunk: tuple[str, ...] | list[str] = (),
        header: str = "",
    ) -> str:
        """Comment on a hunk (or a line) of the agent's diff; it waits in the review until `send_review`."""
        self._writable()
        return await self.client.add_comment(
            agent_id, path, line, text, quote=list(quote), hunk=list(hunk), header=header
        )

    async def remove_comment(self, agent_id: str, comment_id: str) -> None:
        self._writable()
        await self.client.remove_comment(agent_id, comment_id)

    async def send_review(self, agent_id: str) -> str:
        """Send the review (every unsent comment) to the agent as one instruction; returns its text."""
        self._writable()
        return await self.client.send_review(agent_id)

    async def stop(self) -> None:
        """Stop the fleet server itself: every agent ends."""
        self._writable()
        await self.client.stop()
