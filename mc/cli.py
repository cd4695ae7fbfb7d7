"""`missionctl` / `python -m mc`: the command line.

missionctl                      open mission control on the fleet of the repository here
missionctl --monitor            follow that fleet read-only (beside an interactive session)
missionctl demo                 a whole fleet against the built-in scripted model (no key, no network)
missionctl run [--headless]     start the agents of the config
missionctl init                 write a starter config
missionctl ls [--json]          the fleet, from its state on disk
missionctl merge NAME           land an agent's work on its base branch
missionctl discard NAME         remove an agent's worktree and branch (a snapshot ref is kept)
missionctl doctor               check git, the config, the endpoint and the worktree folder
missionctl scripted-server      serve a scripted scenario as an OpenAI-compatible endpoint
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from mc.config import Config, ConfigError, find_config, load_config, starter_config


class CliError(Exception):
    """Printed as `missionctl: <message>` with exit status 2."""


def _git_toplevel(path: Path) -> Path | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=False
        )
    except OSError:
        return None
    return Path(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None


def resolve_config(config_path: str | None, cwd: Path | None = None) -> Config:
    """The config named by --config, or the one of the repository here, or defaults for the repository here."""
    here = cwd or Path.cwd()
    if config_path:
        return load_config(config_path)
    found = find_config(here)
    if found is not None:
        return load_config(found)
    cfg = Config()
    top = _git_toplevel(here)
    cfg.repo.path = str(top or here)
    return cfg


def _open_fleet(cfg: Config, readonly: bool = False) -> Any:
    from mc.fleet import Fleet

    return Fleet(cfg, readonly=readonly)


def _tell_notices(fleet: Any) -> None:
    """What opening the fleet repaired after a kill (an interrupted merge or spawn), on stderr."""
    for notice in fleet.notices:
        print(f"missionctl: {notice}", file=sys.stderr)


# -- subcommands -----------------------------------------------------------------------------------
def example_config() -> str:
    """The documented example config (every option, its default and what it does), shipped with the package."""
    from importlib import resources

    return resources.files("mc").joinpath("config.example.toml").read_text(encoding="utf-8")


def cmd_init(args: argparse.Namespace) -> int:
    if args.example:
        sys.stdout.write(example_config())
        return 0
    target = Path(args.path or "missionctl.toml")
    if target.exists() and not args.force:
        raise CliError(f"{target} exists already: edit it, or pass --force to overwrite it")
    text = starter_config(repo=".", model=args.model, base_url=args.base_url or "")
    target.write_text(text)
    print(
        f"wrote {target}: edit the [[agents]] tables, then run `missionctl run`; "
        "`missionctl init --example` prints every option with its default and what it does"
    )
    return 0


def _event_json(event: Any) -> str:
    return json.dumps(event.to_dict(), ensure_ascii=False, default=str)


async def _run_headless(cfg: Config, out: Any = None, *, spawn: bool = True) -> int:
    from mc import events as ev
    from mc.fleet import Fleet

    out = out or sys.stdout
    fleet = Fleet(cfg)
    await fleet.open()
    _tell_notices(fleet)

    def show(event: ev.Event) -> None:
        if event.type in ("conversation", "runner_state"):
            return
        out.write(_event_json(event) + "\n")
        out.flush()

    fleet.add_listener(show)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if spawn:
            await fleet.spawn_configured()
        waiter = asyncio.create_task(fleet.wait_settled())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for task in (waiter, stopper):
            task.cancel()
        await fleet.refresh_diffs()
    finally:
        await fleet.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    failed = [a for a in fleet.list() if a.status == "failed"]
    for agent in failed:
        why = " ".join((agent.error or agent.status_reason or "no reason was given").split())
        sys.stderr.write(f"missionctl: {agent.name} failed: {why}\n")
    waiting = [a.name for a in fleet.list() if a.pending]
    if waiting:
        sys.stderr.write(f"missionctl: waiting for your decision: {', '.join(waiting)} (open `missionctl` to answer)\n")
    return 1 if failed else 0


def _worktree_folder_problem(folder: Path) -> str | None:
    """Why worktrees cannot be made under `folder` (None when they can): its nearest existing part must be a
    writable folder."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a folder"
    if not os.access(probe, os.W_OK):
        return f"{probe} is not writable"
    return None


def _missing_base(cfg: Config, repo: Any) -> str | None:
    """The message for the first base ref of the config ([repo] base, or an agent's base) that `repo` lacks."""
    from mc.git import GitError

    for label, base in [("[repo] base", cfg.repo.base), *((f"[[agents]] {a.name!r} base", a.base) for a in cfg.agents)]:
        if not base:
            continue
        try:
            repo.resolve(base)
        except GitError:
            return (
                f"{label} = {base!r}: not found in {repo.root}: use an existing branch or commit "
                "(`git branch` lists them)"
            )
    return None


def _check_run(cfg: Config) -> None:
    """What `run` needs, checked before anything is created in the repository; CliError names the config file."""
    from mc.fleet import Fleet, FleetError

    def at(message: str) -> str:
        return f"{cfg.source}: {message}" if cfg.source else message  # no file: the defaults for the repository

    try:
        fleet = Fleet(cfg, readonly=True)
    except FleetError as exc:
        raise CliError(at(str(exc))) from None
    try:
        missing = _missing_base(cfg, fleet.repo)
        if missing:
            raise CliError(at(missing))
        problem = _worktree_folder_problem(fleet.worktree_dir)
    finally:
        fleet.repo.close()
    if problem:
        raise CliError(at(f"[repo] worktree_dir = {cfg.repo.worktree_dir!r}: {problem}: set it to a writable folder"))


def cmd_run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args.config)
    _check_run(cfg)
    if args.headless:
        return _headless(cfg, _server_argv(cfg))
    return _tui(cfg, spawn_configured=True)


def _server_argv(cfg: Config) -> list[str]:
    """How a fleet server finds this config: its file, or (none) the repository's own from its folder."""
    return ["--config", str(Path(cfg.source).resolve())] if cfg.source else []


def _headless(cfg: Config, argv: list[str], *, spawn: bool = True) -> int:
    from mc.client import ClientError
    from mc.commands import run_headless

    try:
        return asyncio.run(run_headless(cfg, argv, spawn=spawn))
    except ClientError as exc:
        raise CliError(str(exc)) from None


def _tui(cfg: Config, *, monitor: bool = False, spawn_configured: bool = False, demo: Any = None) -> int:
    """The window, attached to the repository's fleet server (started when none runs, unless a monitor)."""
    from mc.client import RemoteFleet, socket_of
    from mc.commands import state_dir

    try:
        from mc.tui.app import run_tui
    except ImportError as exc:  # pragma: no cover - the TUI ships with the package
        raise CliError(f"the terminal UI cannot start ({exc}): use `missionctl run --headless`") from None
    fleet = RemoteFleet(cfg, socket_of(state_dir(cfg)), readonly=monitor, server_argv=_server_argv(cfg))
    return run_tui(fleet, monitor=monitor, spawn_configured=spawn_configured, demo=demo)


def _stop_server(cfg: Config) -> bool:
    """Stop the repository's fleet server if one runs (every agent ends). True when there was one."""
    from mc.client import FleetClient, answers, socket_of
    from mc.commands import state_dir

    async def stop() -> bool:
        socket = socket_of(state_dir(cfg))
        if not await answers(socket):
            return False
        client = FleetClient(socket, reconnect=False)
        try:
            await client.stop()
        finally:
            await client.close()
        for _ in range(200):  # until it has ended its agents and let go of the folder
            if not await answers(socket) and not socket.exists():
                break
            await asyncio.sleep(0.05)
        return True

    return asyncio.run(stop())


def cmd_demo(args: argparse.Namespace) -> int:
    from mc.demo import DemoError, start_demo

    try:
        demo = start_demo(Path(args.dir) if args.dir else None)
    except DemoError as exc:
        raise CliError(str(exc)) from None
    keep = bool(args.keep or args.dir or demo.reopened)
    again = f"`missionctl demo --dir {demo.folder}` (or `missionctl` in {demo.repo}) opens it again"
    if demo.reopened:
        print(f"demo repository: {demo.repo}: the demo fleet there comes back as it was left", file=sys.stderr)
    elif args.headless:
        print(f"demo repository: {demo.repo}", file=sys.stderr)
    try:
        if args.headless:
            return asyncio.run(_run_headless(demo.config, spawn=not demo.reopened))
        return _tui(demo.config, spawn_configured=not demo.reopened, demo=demo)
    finally:
        if not keep:  # a throwaway demo: its fleet server goes with its folder
            _stop_server(demo.config)
        demo.stop(remove=not keep)
        if keep:
            print(f"the demo is kept in {demo.folder}: {again}", file=sys.stderr)


async def _ls(cfg: Config) -> list[dict[str, Any]]:
    fleet = _open_fleet(cfg, readonly=True)
    try:
        return fleet.summary()  # state.toml (and the ends of logs it lacks): never a whole log
    finally:
        fleet.repo.close()


def _checks_cell(check: dict[str, Any]) -> str:
    """The CHECKS column of `ls`: "✓ 12 passed", "✗ 2 of 14 failed (stale)", "— no checks"."""
    text = str(check.get("summary") or "— no checks")
    if check.get("state", "none") == "none":
        text = "— no checks"
    stale = " (stale)" if check.get("stale") else ""
    return text[: 24 - len(stale)] + stale


def cmd_ls(args: argparse.Namespace) -> int:
    cfg = resolve_config(args.config)
    rows = asyncio.run(_ls(cfg))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no agents yet: start some with `missionctl run` or `missionctl` (n)")
        return 0
    width = max(len(r["name"]) for r in rows)
    print(f"{'NAME':<{width}}  {'STATUS':<11} {'FILES':>5} {'+/-':>11} {'TOKENS':>8}  {'CHECKS':<24}  BRANCH")
    for r in rows:
        pm = f"+{r['added']}/-{r['removed']}"
        status = r["status"] + ("*" if r["pending"] else "")
        checks = _checks_cell(r.get("check") or {})
        print(
            f"{r['name']:<{width}}  {status:<11} {r['files_changed']:>5} {pm:>11} {r['tokens']:>8}  {checks:<24}  "
            f"{r['branch']}"
        )
    if any(r["pending"] for r in rows):
        print("* an approval waits for your decision: open `missionctl` here to answer it")
    return 0


async def _served(cfg: Config) -> Any:
    """The fleet as its running server shows it (a RemoteFleet, attached), or None when no server runs: then
    a command opens the fleet itself, as its owner for the time it takes."""
    from mc.client import RemoteFleet, answers, socket_of
    from mc.commands import state_dir

    socket = socket_of(state_dir(cfg))
    if not await answers(socket):
        return None
    fleet = RemoteFleet(cfg, socket)
    await fleet.open()
    return fleet


async def _owner(cfg: Config) -> Any:
    """The fleet to run one command on: through its server when one runs, else opened here."""
    fleet = await _served(cfg)
    if fleet is None:
        fleet = _open_fleet(cfg)
        await fleet.open()
        _tell_notices(fleet)
    return fleet


async def _merge(cfg: Config, name: str, mode: str | None, message: str | None) -> int:
    fleet = await _owner(cfg)
    try:
        agent = fleet.get(name)
        result = await fleet.merge(agent.id, mode=mode, message=message)
    finally:
        await fleet.close()
    if not result.ok:
        files = ", ".join(result.conflicts) or "?"
        print(f"missionctl: merge of {name} conflicts in {files}: nothing changed; {result.message}", file=sys.stderr)
        return 1
    print(f"merged {name} into {agent.base_ref} ({result.mode}): {result.commit[:12]}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    return asyncio.run(_merge(resolve_config(args.config), args.name, args.mode, args.message))


async def _discard(cfg: Config, name: str) -> int:
    fleet = await _owner(cfg)
    try:
        agent = fleet.get(name)
        ref = await fleet.discard(agent.id)
    finally:
        await fleet.close()
    print(f"discarded {name}; its work is kept at {ref} (git worktree add -b NEW PATH {ref} brings it back)")
    return 0


def cmd_discard(args: argparse.Namespace) -> int:
    return asyncio.run(_discard(resolve_config(args.config), args.name))


def _check(ok: bool, label: str, detail: str, *, mark: str = "") -> bool:
    """Print one doctor line, `ok` or `FAIL` (or `mark`: `warn` for what does not fail the check but is not
    ok either), and return `ok`."""
    print(f"{mark or ('ok' if ok else 'FAIL'):<4}  {label}: {detail}")
    return ok


def cmd_doctor(args: argparse.Namespace) -> int:
    from mc.git import GitError, Repo

    good = True
    git = shutil.which("git")
    if git:
        version = subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.strip()
        good &= _check(True, "git", version)
    else:
        good &= _check(False, "git", "not found on PATH: install git")
    try:
        cfg = resolve_config(args.config)
        good &= _check(True, "config", cfg.source or "none found; defaults for the repository here")
    except ConfigError as exc:
        _check(False, "config", str(exc))
        return 1
    repo = None
    try:
        repo = Repo(cfg.repo_path())
        branch = cfg.repo.base or repo.current_branch() or "(detached HEAD)"
        missing = _missing_base(cfg, repo)
        if missing:
            raise GitError(missing)
        good &= _check(True, "repository", f"{repo.root} (base {branch})")
    except GitError as exc:
        good &= _check(False, "repository", str(exc))
    demo = None
    if repo is not None:
        from mc.demo import demo_settings
        from mc.fleet import Fleet
        from mc.store import StoreError, demo_scenario

        fleet = Fleet(cfg, readonly=True)
        with contextlib.suppress(StoreError):
            demo = demo_scenario(fleet.store.load_state())
        if demo and not cfg.source:
            demo_settings(cfg, fleet.root)  # what opening the demo fleet sets: its worktree folder, its agents
        wt = fleet.worktree_dir
        problem = _worktree_folder_problem(wt)
        good &= _check(
            problem is None, "worktree folder", f"{wt}" + (f": {problem}; set [repo] worktree_dir" if problem else "")
        )
        owner = fleet.store.owner_pid() if fleet.store.is_owned_elsewhere() else None
        _check(
            True,
            "fleet",
            ("a demo fleet, " if demo else "") + (f"owned by process {owner}" if owner else "not running"),
        )
        repo.close()
    if demo:
        good &= _doctor_demo_endpoint(demo)
    else:
        good &= _doctor_endpoint(cfg)
    from mc.agents import runner_status

    used = {a.runner for a in cfg.agents}
    for kind, (usable, detail) in runner_status().items():
        if usable:
            _check(True, f"runner {kind}", f"usable: {detail}")
        elif kind in used:
            good &= _check(False, f"runner {kind}", f"not usable: {detail}")
        else:  # not usable, but no agent needs it: a warning, not a failure
            _check(True, f"runner {kind}", f"not usable: {detail}; no agent uses it", mark="warn")
    from mc.tools.run import effective_sandbox

    mode, why = effective_sandbox(cfg.tools.sandbox)
    setting = f'[tools] sandbox = "{cfg.tools.sandbox}"'
    if mode == "bwrap":
        seen = "the worktree, system folders and no other process, Unix socket or network"
        _check(True, "sandbox", f"bwrap ({setting}): {why}; the built-in agent's commands see {seen}")
    elif mode == "none":
        _check(True, "sandbox", f"none ({setting}): {why}", mark="warn")
    else:
        good &= _check(False, "sandbox", why)
    return 0 if good else 1


def _doctor_demo_endpoint(scenario: str) -> bool:
    """A demo fleet's endpoint is the scripted model, started on a fresh port whenever the fleet opens."""
    from mc.demo import DemoError, demo_scenario_path

    try:
        demo_scenario_path(scenario)
    except DemoError as exc:
        return _check(False, "endpoint", str(exc))
    return _check(True, "endpoint", f"the demo's scripted model (scenario {scenario}), started when the fleet opens")


def _doctor_endpoint(cfg: Config) -> bool:
    import urllib.error
    import urllib.request

    needs_key = bool(cfg.model.api_key_env)
    key = os.environ.get(cfg.model.api_key_env, "") if needs_key else ""
    if needs_key and not key:
        _check(False, "api key", f"{cfg.model.api_key_env} is not set: export it (or set [model] api_key_env)")
    elif needs_key:
        _check(True, "api key", f"{cfg.model.api_key_env} is set")
    url = cfg.model.base_url.rstrip("/") + "/models"
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5.0):
            pass
    except urllib.error.HTTPError as exc:
        return _check(False, "endpoint", f"{url} answered HTTP {exc.code}: check [model] base_url and the key")
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return _check(False, "endpoint", f"{cfg.model.base_url} unreachable ({reason}): check [model] base_url")
    return _check(True, "endpoint", f"{cfg.model.base_url} answers (model {cfg.model.model}, api {cfg.model.api})")


def cmd_scripted_server(args: argparse.Namespace) -> int:
    from mc.scripted.server import main as server_main

    argv = ["--scenario", args.scenario, "--port", str(args.port), "--host", args.host]
    return server_main(argv)


def cmd_open(args: argparse.Namespace) -> int:
    if args.remote:
        return _remote_tui(args.remote, monitor=args.monitor)
    return _tui(window_config(args.config), monitor=args.monitor)


def window_config(path: str | None, cwd: Path | None = None) -> Config:
    """The config a window shows its fleet with: the file's (see resolve_config); for a demo fleet opened with
    plain `missionctl` (no file), the demo's, so that the window shows it as `missionctl demo` does (its
    prices, its agents)."""
    cfg = resolve_config(path, cwd=cwd)
    if not cfg.source:
        from mc.commands import state_dir
        from mc.demo import demo_settings, is_demo_repo

        top = state_dir(cfg).parent
        if is_demo_repo(top):
            demo_settings(cfg, top)
    return cfg


def _remote_tui(url: str, *, monitor: bool) -> int:
    """The window attached to a fleet on another machine, through an ssh tunnel (mc/remote.py)."""
    from mc.remote import RemoteError, open_remote
    from mc.tui.app import run_tui

    try:
        fleet, tunnel = open_remote(url, readonly=monitor)
    except RemoteError as exc:
        raise CliError(str(exc)) from None
    try:
        return run_tui(fleet, monitor=monitor)
    finally:
        tunnel.close()


CONFIG_HELP = "config file (default: missionctl.toml or .mc/config.toml at the top of the repository here)"


def _config_option(p: argparse.ArgumentParser) -> None:
    """--config on a subcommand too (`missionctl ls --config F` as well as `missionctl --config F ls`)."""
    p.add_argument("--config", "-c", dest="config", default=argparse.SUPPRESS, metavar="FILE", help=CONFIG_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="missionctl",
        description="Mission control for a fleet of coding agents, each in its own git worktree. Without a "
        "command: open mission control on the fleet of the repository here.",
    )
    parser.add_argument("--config", "-c", metavar="FILE", help=CONFIG_HELP)
    parser.add_argument(
        "--monitor", action="store_true", help="follow the fleet read-only (beside the process that drives it)"
    )
    parser.add_argument(
        "--remote",
        metavar="ssh://[USER@]HOST[:PORT]/PATH",
        help="open the window on the fleet of the repository PATH on another machine, through ssh (no TCP port "
        "is opened; the far side needs missionctl)",
    )
    sub = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")

    def command(name: str, summary: str, description: str = "") -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=description or summary[:1].upper() + summary[1:] + ".")

    p = command(
        "demo",
        "run a demo fleet against the built-in scripted model",
        "A sample repository and a fleet of agents against the built-in scripted model (approvals, checks that "
        "pass and fail, a flagged diff, a best-of-3 group): no API key, no network. "
        "Given the folder of an earlier demo, it opens that demo's fleet again as it was left.",
    )
    p.add_argument("--headless", action="store_true", help="no UI: one JSON line per event on stdout")
    p.add_argument(
        "--dir",
        metavar="DIR",
        help="make the demo in DIR/textkit, or open the demo already there (kept afterwards; default: a new "
        "temporary folder, removed afterwards)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary demo folder afterwards")
    p.set_defaults(func=cmd_demo)

    p = command(
        "run", "start the agents of the config", "Start the [[agents]] of the config that the fleet does not have yet."
    )
    _config_option(p)
    p.add_argument(
        "--headless",
        action="store_true",
        help="no UI: one JSON line per event on stdout; exits when every agent is idle, done, failed or waiting",
    )
    p.set_defaults(func=cmd_run)

    p = command("init", "write a starter config")
    p.add_argument("path", nargs="?", help="the file to write (default: missionctl.toml here)")
    p.add_argument("--model", default="gpt-5-mini", help="the model of the [model] table (default: gpt-5-mini)")
    p.add_argument(
        "--base-url", default="", metavar="URL", help="an OpenAI-compatible endpoint (default: the OpenAI API)"
    )
    p.add_argument("--force", action="store_true", help="overwrite the file if it exists")
    p.add_argument(
        "--example",
        action="store_true",
        help="print the example config with every option, its default and what it does, and write nothing",
    )
    p.set_defaults(func=cmd_init)

    p = command("ls", "list the fleet", "The fleet from its state on disk: status, files, lines, tokens, branch.")
    _config_option(p)
    p.add_argument("--json", action="store_true", help="one JSON list of the agents instead of the table")
    p.set_defaults(func=cmd_ls)

    p = command("merge", "land an agent's work on its base branch")
    p.add_argument("name", help="the agent (its name, as `missionctl ls` shows it)")
    _config_option(p)
    p.add_argument(
        "--mode",
        choices=["ff", "merge", "squash"],
        help="fast-forward, a merge commit, or one squashed commit (default: [repo] merge of the config)",
    )
    p.add_argument("--message", "-m", metavar="TEXT", help="the commit message (default: the agent's name and task)")
    p.set_defaults(func=cmd_merge)

    p = command("discard", "remove an agent's worktree and branch (a snapshot is kept)")
    p.add_argument("name", help="the agent (its name, as `missionctl ls` shows it)")
    _config_option(p)
    p.set_defaults(func=cmd_discard)

    p = command("doctor", "check git, the config, the endpoint and the worktree folder")
    _config_option(p)
    p.set_defaults(func=cmd_doctor)

    p = command("scripted-server", "serve a scenario as an OpenAI-compatible endpoint")
    p.add_argument("--scenario", required=True, metavar="FILE", help="a scenario .toml file, or a bundled name (demo)")
    p.add_argument("--port", type=int, default=0, help="the port to listen on (default: a free one, printed)")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1)")
    p.set_defaults(func=cmd_scripted_server)

    from mc.commands import register

    register(command, _config_option, lambda func: lambda args: func(args, resolve_config(args.config)))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", cmd_open)
    if args.remote and func is not cmd_open:
        print(
            "missionctl: --remote opens the window only: run the command on that machine (ssh HOST missionctl …)",
            file=sys.stderr,
        )
        return 2
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from mc.client import ClientError
        from mc.fleet import FleetError
        from mc.store import StoreError

        if isinstance(exc, (CliError, ConfigError, FleetError, StoreError, ClientError)):
            print(f"missionctl: {exc}", file=sys.stderr)
            return 2
        raise
