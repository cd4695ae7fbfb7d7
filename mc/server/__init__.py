"""The fleet server: one process per repository owns the Fleet and serves it on a Unix socket.

HTTP/1.1 with JSON over the socket (aiohttp), and an NDJSON event stream, as Docker's daemon does: every
window and every `missionctl` command is a client, and the fleet outlives all of them. The protocol is written
down in docs/protocol.md; `PROTOCOL` is its version.

Every event the Fleet appends gets a sequence number here (`seq`, counted from 1 for each server process,
whose `epoch` names it). A client that reconnects asks for the events after the last one it saw; when the
server has been replaced (another epoch) or the events have left the ring, it is told to take a new snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import signal
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from mc import events as ev
from mc.config import AgentConfig, Config
from mc.fleet import Fleet, FleetError
from mc.snapshot import agent_to_dict

log = logging.getLogger(__name__)

PROTOCOL = 1
SOCKET_NAME = "fleet.sock"
#: Events kept in memory for clients that reconnect (older ones: take a new snapshot).
RING = 200_000
#: Events one slow client may have waiting before it is cut off (it reconnects and catches up from the ring).
CLIENT_QUEUE = 50_000


def socket_path(state_dir: Path) -> Path:
    """Where the fleet of a state folder listens."""
    return Path(state_dir) / SOCKET_NAME


class ShortPath:
    """A Unix socket path that fits in sun_path (107 bytes): a long folder is reached through an O_PATH
    descriptor as /proc/self/fd/N/NAME. Use as a context manager around bind or connect."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def __enter__(self) -> str:
        text = str(self.path)
        if len(text.encode()) < 100:
            return text
        self._fd = os.open(self.path.parent, os.O_PATH | os.O_DIRECTORY)
        return f"/proc/self/fd/{self._fd}/{self.path.name}"

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED), or None when unknown."""
    try:
        data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", data)
    return uid


class _Stream:
    """One client's event stream: a bounded queue; a client that falls too far behind is cut off."""

    def __init__(self, agent: str | None) -> None:
        self.agent = agent
        self.queue: asyncio.Queue[tuple[int, dict[str, Any]] | None] = asyncio.Queue()
        self.lagged = False

    def put(self, seq: int, data: dict[str, Any]) -> None:
        if self.agent and data.get("agent") != self.agent:
            return
        if self.queue.qsize() >= CLIENT_QUEUE:
            if not self.lagged:
                self.lagged = True
                self.queue.put_nowait(None)
            return
        self.queue.put_nowait((seq, data))


class FleetServer:
    """Owns a Fleet and serves it on `socket` until told to stop."""

    def __init__(self, config: Config, *, socket: Path | None = None, state_dir: Path | None = None) -> None:
        self.fleet = Fleet(config, state_dir=state_dir)
        self.socket = Path(socket) if socket else socket_path(self.fleet.state_dir)
        self.epoch = secrets.token_hex(6)
        self.seq = 0
        self.ring: deque[tuple[int, dict[str, Any]]] = deque(maxlen=RING)
        self._streams: set[_Stream] = set()
        self._stopped = asyncio.Event()
        self._runner: web.AppRunner | None = None

    # -- events --------------------------------------------------------------------------------
    def _on_event(self, event: ev.Event) -> None:
        self.seq += 1
        data = event.to_dict()
        self.ring.append((self.seq, data))
        for stream in list(self._streams):
            stream.put(self.seq, data)

    # -- life cycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the fleet (reviving it from disk) and listen. Raises FleetError / OSError with one line."""
        await self.fleet.open()
        self.fleet.add_listener(self._on_event)
        folder = self.socket.parent
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()  # ours: the fleet's lock says no other server owns this folder
        app = web.Application(middlewares=[self._same_user], client_max_size=64 * 1024 * 1024)
        self._routes(app)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            with ShortPath(self.socket) as where:
                sock.bind(where)
        finally:
            os.umask(old)
        os.chmod(self.socket, 0o600)
        site = web.SockSite(self._runner, sock)
        await site.start()

    async def serve(self, on_ready: Callable[[], Awaitable[None] | None] | None = None) -> None:
        """Start, then serve until stopped (by `stop`, POST /v1/stop, SIGTERM or SIGINT)."""
        await self.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                loop.add_signal_handler(sig, self._stopped.set)
        if on_ready is not None:
            result = on_ready()
            if asyncio.iscoroutine(result):
                await result
        try:
            await self._stopped.wait()
        finally:
            await self.close()

    def stop(self) -> None:
        self._stopped.set()

    async def close(self) -> None:
        """End every stream, every agent (recorded as interrupted) and the listener."""
        for stream in list(self._streams):
            stream.queue.put_nowait(None)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        self.fleet.remove_listener(self._on_event)
        if self.fleet._opened:
            await self.fleet.close()

    # -- http ------------------------------------------------------------------------------------
    @web.middleware
    async def _same_user(self, request: web.Request, handler: Any) -> web.StreamResponse:
        transport = request.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        uid = peer_uid(sock) if sock is not None else None
        if uid is None or uid != os.getuid():
            return _error(403, f"refused: the fleet is served to its owner only (uid {os.getuid()})")
        try:
            return await handler(request)
        except FleetError as exc:
            text = str(exc)
            status = 409 if "already answered" in text or "no pending approval" in text else 400
            return _error(status, text)
        except (KeyError, ValueError, TypeError) as exc:
            return _error(400, f"bad request: {exc}")

    def _routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/v1/info", self._info)
        r.add_get("/v1/fleet", self._snapshot)
        r.add_get("/v1/config", self._config)
        r.add_get("/v1/events", self._events)
        r.add_post("/v1/agents", self._spawn)
        r.add_post("/v1/spawn-configured", self._spawn_configured)
        r.add_get("/v1/agents/{name}/diff", self._diff)
        r.add_get("/v1/agents/{name}/log", self._log)
        r.add_get("/v1/agents/{name}/check-output", self._check_output)
        r.add_post("/v1/agents/{name}/{action}", self._act)
        r.add_post("/v1/settle", self._settle)
        r.add_post("/v1/stop", self._stop)

    async def _info(self, request: web.Request) -> web.Response:
        return web.json_response(self._info_data())

    def _info_data(self) -> dict[str, Any]:
        return {
            "protocol": PROTOCOL,
            "epoch": self.epoch,
            "seq": self.seq,
            "pid": os.getpid(),
            "repo": str(self.fleet.root),
            "base_branch": self.fleet.base_branch,
            "notices": list(getattr(self.fleet, "notices", [])),
        }

    async def _snapshot(self, request: web.Request) -> web.Response:
        lines = int(request.query.get("log_lines", "200"))
        data = self._info_data()
        data["agents"] = [agent_to_dict(a, lines) for a in self.fleet.list()]
        return web.json_response(data)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        agent = request.query.get("agent") or None
        if agent:
            agent = self.fleet.get(agent).id
        follow = request.query.get("follow", "1") not in ("0", "false", "no")
        since_text = request.query.get("since")
        epoch = request.query.get("epoch")
        stream = _Stream(agent)
        backlog: list[tuple[int, dict[str, Any]]] = []
        if since_text is not None:
            since = int(since_text)
            if (epoch and epoch != self.epoch) or since > self.seq:
                return _error(410, "the fleet server was restarted: take a new snapshot (GET /v1/fleet)")
            if self.ring and since < self.ring[0][0] - 1:
                return _error(410, "those events are no longer kept in memory: take a new snapshot (GET /v1/fleet)")
            backlog = [(s, d) for s, d in self.ring if s > since and (not agent or d.get("agent") == agent)]
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "X-Mc-Epoch": self.epoch})
        await response.prepare(request)
        self._streams.add(stream)
        try:
            for seq, data in backlog:
                await response.write(_line(seq, data))
            if not follow:
                return response
            while True:
                item = await stream.queue.get()
                if item is None:
                    if stream.lagged:
                        await response.write(_json_line({"error": "this client fell behind: reconnect with since"}))
                    break
                chunk = [_line(*item)]
                while not stream.queue.empty() and len(chunk) < 1000:
                    more = stream.queue.get_nowait()
                    if more is None:
                        stream.queue.put_nowait(None)
                        break
                    chunk.append(_line(*more))
                await response.write(b"".join(chunk))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._streams.discard(stream)
        return response

    async def _spawn(self, request: web.Request) -> web.Response:
        spec = _spec(await request.json())
        if not spec.name.strip() or not spec.task.strip():
            raise FleetError("spawn needs a name and a task (--name NAME --task TEXT)")
        agents = await self.fleet.spawn_copies(spec)  # one agent, or best of N: every copy
        return web.json_response(
            {"agent": agent_to_dict(agents[0], 50), "agents": [agent_to_dict(a, 50) for a in agents]}
        )

    async def _spawn_configured(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        specs = None
        if isinstance(body, dict) and isinstance(body.get("agents"), list):  # the client's [[agents]], as it reads them
            specs = [_spec(item) for item in body["agents"]]
        agents = await self.fleet.spawn_configured(specs)
        return web.json_response({"agents": [agent_to_dict(a, 50) for a in agents]})

    async def _diff(self, request: web.Request) -> web.Response:
        agent = self.fleet.get(request.match_info["name"])
        diff = self.fleet.diff(agent.id)
        if agent.worktree and agent.status not in ev.DONE_STATUSES and Path(agent.worktree).is_dir():
            diff = await self.fleet.refresh_diff(agent.id)  # asked for: as the worktree is now, not as last seen
        if diff is None:
            return web.json_response({"files": [], "added": 0, "removed": 0, "text": "", "truncated": False})
        return web.json_response(
            {
                "files": [
                    {"path": f.path, "added": f.added, "removed": f.removed, "status": f.status, "binary": f.binary}
                    for f in diff.files
                ],
                "added": diff.added,
                "removed": diff.removed,
                "text": diff.text,
                "truncated": diff.truncated,
            }
        )

    async def _log(self, request: web.Request) -> web.Response:
        agent = self.fleet.get(request.match_info["name"])
        lines = await asyncio.to_thread(self.fleet.full_log, agent.id)
        return web.json_response({"lines": [list(line) for line in lines]})

    async def _config(self, request: web.Request) -> web.Response:
        """The config the fleet runs with, as the text of its file ("" when it runs on the defaults), so that a
        window elsewhere (`--remote`) shows it with the same keys, prices and agents."""
        source = self.fleet.config.source
        text = ""
        if source:
            with contextlib.suppress(OSError, UnicodeDecodeError):
                text = await asyncio.to_thread(Path(source).read_text, encoding="utf-8")
        return web.json_response({"source": source, "text": text, "repo": str(self.fleet.root)})

    async def _check_output(self, request: web.Request) -> web.Response:
        agent = self.fleet.get(request.match_info["name"])
        text = await asyncio.to_thread(self.fleet.check_output, agent.id)
        return web.json_response({"check_id": agent.check.check_id, "text": text})

    async def _act(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        action = request.match_info["action"]
        body: dict[str, Any] = {}
        if request.can_read_body:
            body = await request.json()
        fleet = self.fleet
        agent = fleet.get(name)
        approval = body.get("approval_id") or None
        result: dict[str, Any] = {"ok": True}
        if action == "approve":
            if approval and approval not in agent.pending:
                raise FleetError(f"{agent.name}: approval {approval} was already answered")
            await fleet.approve(agent.id, approval, remember=bool(body.get("all")))
        elif action == "deny":
            if approval and approval not in agent.pending:
                raise FleetError(f"{agent.name}: approval {approval} was already answered")
            await fleet.deny(agent.id, approval, str(body.get("reason") or ""))
        elif action == "redirect":
            text = str(body.get("text") or "").strip()
            if not text:
                raise FleetError("redirect needs the new instruction (missionctl redirect NAME TEXT)")
            await fleet.redirect(agent.id, text)
        elif action == "interrupt":
            await fleet.interrupt(agent.id)
        elif action == "resume":
            await fleet.resume(agent.id)
        elif action == "kill":
            await fleet.kill(agent.id, discard=bool(body.get("discard")))
        elif action == "merge":
            merged = await fleet.merge(
                agent.id,
                body.get("mode") or None,
                body.get("message") or None,
                checks=body.get("checks", True) is not False,
            )
            result = {
                "ok": merged.ok,
                "commit": merged.commit,
                "conflicts": list(merged.conflicts),
                "message": merged.message,
                "mode": merged.mode,
            }
        elif action == "discard":
            result = {"ok": True, "snapshot_ref": await fleet.discard(agent.id)}
        elif action == "comment":
            comment_id = await fleet.add_comment(
                agent.id,
                str(body.get("path") or ""),
                int(body.get("line") or 0),
                str(body.get("text") or ""),
                quote=[str(q) for q in body.get("quote") or []],
                hunk=[str(h) for h in body.get("hunk") or []],
                header=str(body.get("header") or ""),
            )
            result = {"ok": True, "comment_id": comment_id}
        elif action == "uncomment":
            await fleet.remove_comment(agent.id, str(body.get("comment_id") or ""))
        elif action == "review":
            result = {"ok": True, "text": await fleet.send_review(agent.id)}
        elif action == "check":
            await fleet.run_checks(agent.id)
        elif action == "fix":
            result = {"ok": True, "text": await fleet.fix_checks(agent.id)}
        else:
            return _error(404, f"unknown action {action!r}")
        return web.json_response(result)

    async def _settle(self, request: web.Request) -> web.Response:
        """Wait until no agent is starting or running, bring every diff up to date, and answer the seq of the
        last event that produced (a headless run prints the stream up to there, then exits)."""
        await self.fleet.wait_settled()
        await self.fleet.refresh_diffs()
        return web.json_response({"seq": self.seq})

    async def _stop(self, request: web.Request) -> web.Response:
        asyncio.get_running_loop().call_soon(self._stopped.set)
        return web.json_response({"ok": True, "pid": os.getpid()})


def _spec(data: Any) -> AgentConfig:
    """An agent's config from JSON: its known fields, of the types AgentConfig declares."""
    if not isinstance(data, dict):
        raise ValueError("an agent is a JSON object with at least name and task")
    fields = {f.name: f for f in dataclasses.fields(AgentConfig)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields or value is None:
            continue
        if key in ("copies", "runners", "models"):  # as sent: the fleet checks them in the config's words
            kwargs[key] = value
            continue
        default = fields[key].default
        if isinstance(default, bool):
            kwargs[key] = bool(value)
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            kwargs[key] = type(default)(value)
        else:
            kwargs[key] = value if not isinstance(default, str) else str(value)
    return AgentConfig(**kwargs)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _json_line(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, separators=(",", ":")) + "\n").encode()


def _line(seq: int, data: dict[str, Any]) -> bytes:
    return _json_line({"seq": seq, "event": data})
