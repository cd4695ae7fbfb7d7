"""The `missionctl` subcommands that talk to a running fleet server: serve, socket, stop, spawn, approve, deny,
redirect, interrupt, resume, kill, events.

Each one is a client of the repository's fleet server (started on demand, except by `stop` and `events`),
so a script or a cron job can drive a fleet that a window shows at the same time. Exit codes a script can
rely on: 0 done, 1 the fleet refused (the message says why: no such agent, already answered …), 2 bad input or
no fleet server, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mc import events as ev
from mc.config import Config

EXIT_REFUSED = 1
EXIT_NO_SERVER = 2


def state_dir(cfg: Config) -> Path:
    """The fleet's state folder: `.mc` at the top of the config's repository."""
    from mc.client import ClientError

    where = cfg.repo_path()
    try:
        top = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):  # nothing is made there: no .mc, no server
        raise ClientError(
            f"{where} is not a git repository: run `git init` there or point [repo] path at one"
        ) from None
    return Path(top) / ".mc"


def _server_argv(args: argparse.Namespace) -> list[str]:
    config = getattr(args, "config", None)
    return ["--config", str(Path(config).resolve())] if config else []


def cmd_serve(args: argparse.Namespace, cfg: Config) -> int:
    """Run the fleet server in the foreground until `missionctl stop` (or SIGTERM)."""
    import logging

    from mc.server import FleetServer

    # what nobody classified yet is said in the server's log (stderr: .mc/server.log when detached)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server = FleetServer(cfg)

    def ready() -> None:
        print(f"missionctl: serving the fleet of {server.fleet.root} on {server.socket}", file=sys.stderr, flush=True)

    asyncio.run(server.serve(on_ready=ready))
    print("missionctl: the fleet server stopped; every agent was ended", file=sys.stderr)
    return 0


def reachable_path(socket: Path) -> Path:
    """`socket`, or where another program (ssh -L, curl) reaches it when its path is past sun_path's 107 bytes:
    a symlink in a folder of the user's own (/tmp/missionctl-UID, 0700) named after the path."""
    if len(str(socket).encode()) < 100:
        return socket
    import hashlib

    folder = Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp") / f"missionctl-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    if folder.is_symlink() or folder.stat().st_uid != os.getuid():
        raise OSError(f"{folder} is not yours: remove it, then run the command again")
    os.chmod(folder, 0o700)
    link = folder / f"{hashlib.sha256(str(socket).encode()).hexdigest()[:16]}.sock"
    if not (link.is_symlink() and os.readlink(link) == str(socket)):
        temp = folder / f".{link.name}.{os.getpid()}"
        temp.unlink(missing_ok=True)
        os.symlink(socket, temp)
        os.replace(temp, link)
    return link


def cmd_socket(args: argparse.Namespace, cfg: Config) -> int:
    """Print the path of the fleet server's socket, starting the server when none runs (what `--remote`
    asks of the far side, and a script's way to talk HTTP to the fleet: `curl --unix-socket PATH`)."""
    from mc.client import ClientError, ensure_server

    try:
        socket = asyncio.run(ensure_server(state_dir(cfg), _server_argv(args)))
    except ClientError as exc:
        print(f"missionctl: {exc}", file=sys.stderr)
        return EXIT_NO_SERVER
    try:
        print(reachable_path(Path(socket)))
    except OSError as exc:
        print(f"missionctl: cannot give a short path to {socket}: {exc}", file=sys.stderr)
        return EXIT_NO_SERVER
    return 0


async def _client(args: argparse.Namespace, cfg: Config, *, start: bool) -> Any:
    from mc.client import ClientError, FleetClient, answers, ensure_server, socket_of

    folder = state_dir(cfg)
    if start:
        socket = await ensure_server(folder, _server_argv(args))
    else:
        socket = socket_of(folder)
        if not await answers(socket):
            raise ClientError(f"no fleet server runs for {folder.parent} (nothing to do)", 0)
    client = FleetClient(socket, reconnect=False)
    await client.connect(follow=False)
    return client


def _run(args: argparse.Namespace, cfg: Config, work: Callable[[Any], Any], *, start: bool = True) -> int:
    from mc.client import ClientError, ServerGone

    async def main() -> int:
        client = await _client(args, cfg, start=start)
        try:
            result = await work(client)
            return int(result or 0)
        finally:
            await client.close()

    try:
        return asyncio.run(main())
    except ServerGone as exc:
        print(f"missionctl: {exc}", file=sys.stderr)
        return EXIT_NO_SERVER
    except ClientError as exc:
        print(f"missionctl: {exc}", file=sys.stderr)
        return EXIT_REFUSED if exc.status else EXIT_NO_SERVER


def cmd_stop(args: argparse.Namespace, cfg: Config) -> int:
    async def work(client: Any) -> int:
        running = [a.name for a in client.list() if a.status in ev.WORKING_STATUSES]
        pid = client.info.get("pid")
        await client.stop()
        ended = f"; interrupted: {', '.join(running)}" if running else ""
        print(f"missionctl: the fleet server (pid {pid}) stopped{ended}", file=sys.stderr)
        return 0

    return _run(args, cfg, work, start=False)


def _list(text: str | None) -> list[str]:
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def cmd_spawn(args: argparse.Namespace, cfg: Config) -> int:
    fields: dict[str, Any] = {
        k: v
        for k, v in (("runner", args.runner), ("model", args.model), ("policy", args.policy), ("group", args.group))
        if v
    }
    if args.copies is not None:
        fields["copies"] = args.copies
    for key in ("runners", "models"):
        if getattr(args, key):
            fields[key] = _list(getattr(args, key))

    async def work(client: Any) -> int:
        data = await client.spawn(args.name, args.task, **fields)
        for agent in data.get("agents") or [data["agent"]]:
            group = f" (group {agent['group']})" if agent.get("group") else ""
            print(f"{agent['name']}: {agent['status']} on {agent['branch'] or 'no branch'}{group}")
        return 0

    return _run(args, cfg, work)


def _decision(action: str) -> Callable[[argparse.Namespace, Config], int]:
    def cmd(args: argparse.Namespace, cfg: Config) -> int:
        async def work(client: Any) -> int:
            agent = client.get(args.name)
            if action == "approve":
                await client.approve(agent.name, args.id, remember=args.all)
                print(f"{agent.name}: approved" + (" (and the same for the rest of the run)" if args.all else ""))
            elif action == "deny":
                await client.deny(agent.name, args.id, args.reason or "")
                print(f"{agent.name}: denied" + (f": {args.reason}" if args.reason else ""))
            elif action == "redirect":
                await client.redirect(agent.name, " ".join(args.text))
                print(f"{agent.name}: redirected")
            elif action == "interrupt":
                await client.interrupt(agent.name)
                print(f"{agent.name}: interrupted")
            elif action == "resume":
                await client.resume(agent.name)
                print(f"{agent.name}: resumed")
            elif action == "kill":
                await client.kill(agent.name, discard=args.discard)
                print(f"{agent.name}: killed" + (" and discarded (a snapshot is kept)" if args.discard else ""))
            return 0

        return _run(args, cfg, work)

    return cmd


def cmd_events(args: argparse.Namespace, cfg: Config) -> int:
    async def work(client: Any) -> int:
        agent = client.get(args.agent).id if args.agent else None
        names = {a.id: a.name for a in client.list()}
        since = 0 if args.all or not args.follow else client.seq  # without --follow: what the server keeps
        try:
            async for seq, event in client.events(since=since, agent=agent, follow=args.follow):
                names.setdefault(event.agent, getattr(event, "name", "") or event.agent)
                if args.json:
                    print(json.dumps({"seq": seq, **event.to_dict()}), flush=True)
                else:
                    print(f"{seq:>6} {names.get(event.agent, event.agent):<16} {_describe(event)}", flush=True)
        except (BrokenPipeError, KeyboardInterrupt):
            return 0
        return 0

    return _run(args, cfg, work, start=False)


def _describe(event: Any) -> str:
    data = event.to_dict()
    kind = data.pop("type")
    data.pop("agent", None)
    data.pop("ts", None)
    main = data.get("status") or data.get("summary") or data.get("text") or data.get("message") or ""
    return f"{kind}: {str(main).splitlines()[0][:100] if main else ''}".rstrip(": ")


def register(
    command: Callable[..., argparse.ArgumentParser],
    config_option: Callable[..., None],
    wrap: Callable[[Callable[[argparse.Namespace, Config], int]], Callable[[argparse.Namespace], int]],
) -> None:
    """Add these subcommands to the `missionctl` parser (`command(name, summary, description)` makes one)."""
    p = command(
        "serve",
        "run the fleet server in the foreground",
        "Run the repository's fleet server in the foreground (for systemd or debugging). Other commands start it "
        "on demand, detached; it runs until `missionctl stop`.",
    )
    config_option(p)
    p.set_defaults(func=wrap(cmd_serve))

    p = command(
        "socket",
        "print the fleet server's socket (starting the server if none runs)",
        "Print the path of the Unix socket of the repository's fleet server, starting the server when none runs: "
        "the far end of `missionctl --remote`, or `curl --unix-socket PATH http://fleet/v1/fleet` in a script.",
    )
    config_option(p)
    p.set_defaults(func=wrap(cmd_socket))

    p = command("stop", "stop the fleet server: every agent ends (mid-turn ones as interrupted)")
    config_option(p)
    p.set_defaults(func=wrap(cmd_stop))

    p = command("spawn", "start a new agent in the running fleet")
    config_option(p)
    p.add_argument("--name", required=True, help="the agent's name (also its branch: mc/NAME)")
    p.add_argument("--task", required=True, help="what the agent is asked to do")
    p.add_argument("--runner", help="builtin, codex, acp, claude or command (default: builtin)")
    p.add_argument("--model", help="the model (default: [model] model of the config)")
    p.add_argument("--policy", help="always, writes, commands or never: which calls wait for approval")
    p.add_argument(
        "--copies",
        type=int,
        metavar="N",
        help="best of N: N agents do the task at once (NAME-1, NAME-2 …, in one group; the window compares them)",
    )
    p.add_argument("--runners", metavar="A,B", help="best of N with a mix of runners: one copy per runner")
    p.add_argument("--models", metavar="A,B", help="best of N with a mix of models: one copy per model")
    p.add_argument("--group", help="the group the agents are totalled in (copies: default NAME)")
    p.set_defaults(func=wrap(cmd_spawn))

    for action, summary in (
        ("approve", "let an agent's waiting call run"),
        ("deny", "refuse an agent's waiting call; the model reads the reason"),
        ("redirect", "give an agent a new instruction"),
        ("interrupt", "stop an agent's turn (resume it later)"),
        ("resume", "continue an interrupted agent"),
        ("kill", "end an agent and its processes (its worktree stays)"),
    ):
        p = command(action, summary)
        p.add_argument("name", help="the agent (its name, as `missionctl ls` shows it)")
        config_option(p)
        if action in ("approve", "deny"):
            p.add_argument("--id", help="the approval to answer (default: the agent's oldest waiting one)")
        if action == "approve":
            p.add_argument("--all", action="store_true", help="approve calls like this one for the rest of the run")
        if action == "deny":
            p.add_argument("--reason", help="why: the model reads it and adapts")
        if action == "redirect":
            p.add_argument("text", nargs="+", help="the new instruction")
        if action == "kill":
            p.add_argument("--discard", action="store_true", help="also discard its work (a snapshot is kept)")
        p.set_defaults(func=wrap(_decision(action)))

    p = command("events", "print the fleet's events (with --follow: as they happen)")
    config_option(p)
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events until interrupted")
    p.add_argument("--agent", metavar="NAME", help="only this agent's events")
    p.add_argument("--json", action="store_true", help="one JSON object per line, with its sequence number")
    p.add_argument(
        "--all", action="store_true", help="with --follow, start from the first event the server keeps (default: now)"
    )
    p.set_defaults(func=wrap(cmd_events))


async def run_headless(cfg: Config, argv: list[str], *, spawn: bool = True, out: Any = None) -> int:
    """`run --headless` as a client: start the config's agents in the fleet server (started if needed), print
    every event as a JSON line, and exit once every agent is idle, waiting, done or failed. The fleet keeps
    running: a question asked now can be answered later (`missionctl approve NAME`, or the window)."""
    import signal

    from mc.client import FleetClient, ensure_server

    out = out or sys.stdout
    socket = await ensure_server(state_dir(cfg), argv)
    client = FleetClient(socket, reconnect=False)
    await client.connect(follow=False)
    for notice in client.info.get("notices") or []:
        print(f"missionctl: {notice}", file=sys.stderr)
    since = client.seq
    end: list[int] = []
    stop = asyncio.Event()

    async def follow() -> None:
        async for seq, event in client.events(since=since, follow=True):
            client._apply(event)
            if event.type not in ("conversation", "runner_state"):
                out.write(json.dumps(event.to_dict(), ensure_ascii=False, default=str) + "\n")
                out.flush()
            if end and seq >= end[0]:
                return

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    printer = asyncio.create_task(follow())
    try:
        if spawn:
            specs = [dataclasses.asdict(spec) for spec in cfg.agents]
            await client.request("POST", "/v1/spawn-configured", {"agents": specs})
        settle = asyncio.create_task(client.request("POST", "/v1/settle"))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({settle, stopper, printer}, return_when=asyncio.FIRST_COMPLETED)
        if settle.done() and not settle.cancelled():
            end.append(int(settle.result()["seq"]))
            if client.seq >= end[0] or printer.done():
                printer.cancel()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(printer), 10)
        for task in (settle, stopper, printer):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await printer
        await client._snapshot()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await client.close()
    agents = client.list()
    failed = [a for a in agents if a.status == "failed"]
    for agent in failed:
        why = " ".join((agent.error or agent.status_reason or "no reason was given").split())
        sys.stderr.write(f"missionctl: {agent.name} failed: {why}\n")
    waiting = [a.name for a in agents if a.pending]
    if waiting:
        sys.stderr.write(
            f"missionctl: waiting for your decision: {', '.join(waiting)} (the fleet keeps running: "
            "`missionctl approve NAME`, `deny NAME` or `missionctl` to answer; `missionctl stop` ends it)\n"
        )
    return 1 if failed else 0
