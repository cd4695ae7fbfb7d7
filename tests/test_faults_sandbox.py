"""Fault suite, sandbox: with `[tools] sandbox = "bwrap"` a shell command run by an agent cannot write outside
its worktree nor open a connection (to a listener this test opens on 127.0.0.1), while the same commands do
both when run unconfined; without bubblewrap on PATH the agent says so instead of running the command, and
`missionctl doctor` reports whether the sandbox is available."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mc import events as ev
from mc.config import AgentConfig
from mc.tools import sandbox_available
from tests.conftest import fleet_config
from tests.test_fleet import shell_turn

ROOT = Path(__file__).resolve().parent.parent


class Listener:
    """A TCP listener on 127.0.0.1 that counts the connections it accepts."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


@pytest.fixture
def outside() -> Iterator[Path]:
    """A folder outside /tmp (the sandbox gives /tmp a private tmpfs, which would hide a folder there)."""
    base = Path("/var/tmp") if os.access("/var/tmp", os.W_OK) else Path.home()
    folder = Path(tempfile.mkdtemp(prefix="mc-sandbox-", dir=base))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def needs_bwrap() -> None:
    ok, why = sandbox_available()
    if not ok:
        pytest.skip(f"bubblewrap is not usable here: {why}")


def probes(outside: Path, port: int) -> list[str]:
    connect = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3); print('connected')"
    return [
        f"echo pwned > {outside}/written.txt",
        f'{sys.executable} -c "{connect}"',
        "echo inside > inside.txt",
    ]


async def test_bwrap_blocks_writes_outside_and_connections(
    repo: Path, scripted: Any, fleet_factory: Any, listener: Listener, outside: Path
) -> None:
    needs_bwrap()
    commands = probes(outside, listener.port)
    # unconfined, the same commands do escape: the checks below can fail
    for command in commands[:2]:
        subprocess.run(command, shell=True, check=True, capture_output=True, cwd=repo)
    assert (outside / "written.txt").exists() and listener.accepted == 1
    (outside / "written.txt").unlink()

    server = scripted({"agents": [{"name": "box", "turns": [*(shell_turn(c) for c in commands), {"say": "Done."}]}]})
    cfg = fleet_config(repo, server, [AgentConfig(name="box", task="try", model="box", policy="never")])
    cfg.tools.sandbox = "bwrap"
    fleet = await fleet_factory(cfg)
    await fleet.spawn_configured()
    assert await fleet.wait_settled(60)
    agent = fleet.get("box")
    assert agent.status == "idle"
    results = [e for e in fleet.store.iter_events("box") if isinstance(e, ev.ToolResult)]
    assert [r.ok for r in results] == [False, False, True], [r.output for r in results]
    assert "Read-only file system" in results[0].output or "No such file or directory" in results[0].output
    assert "connected" not in results[1].output
    assert list(outside.iterdir()) == []
    assert listener.accepted == 1  # only the unconfined probe got through
    assert (Path(agent.worktree) / "inside.txt").read_text() == "inside\n"


def bin_without_bwrap(folder: Path) -> Path:
    """A PATH folder with only the programs the fleet and the probe need: no bwrap."""
    folder.mkdir()
    for program in ("sh", "bash", "git", "touch", "cat", "env", "ls"):
        found = shutil.which(program)
        assert found, program
        os.symlink(found, folder / program)
    return folder


async def test_without_bwrap_the_agent_says_so_instead_of_running_unconfined(
    repo: Path, scripted: Any, fleet_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = bin_without_bwrap(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(path))
    server = scripted({"agents": [{"name": "nobox", "turns": [shell_turn("touch unconfined.txt"), {"say": "Ok."}]}]})
    cfg = fleet_config(repo, server, [AgentConfig(name="nobox", task="try", model="nobox", policy="never")])
    cfg.tools.sandbox = "bwrap"
    fleet = await fleet_factory(cfg)
    await fleet.spawn_configured()
    assert await fleet.wait_settled(30)
    agent = fleet.get("nobox")
    result = next(e for e in fleet.store.iter_events("nobox") if isinstance(e, ev.ToolResult))
    assert not result.ok and "bubblewrap is not installed" in result.output
    assert any("bubblewrap is not installed" in text for _, text in agent.log.lines)
    assert "bubblewrap is not installed" in server.requests_for("nobox")[-1].tool_outputs()[-1]
    assert not (Path(agent.worktree) / "unconfined.txt").exists()


def test_doctor_says_whether_the_sandbox_is_available(repo: Path, scripted: Any, tmp_path: Path) -> None:
    server = scripted({"agents": [{"name": "a", "turns": [{"say": "hi"}]}]})
    config = tmp_path / "mc.toml"
    config.write_text(
        f'[repo]\npath = "{repo}"\nworktree_dir = "{tmp_path / "wt"}"\n'
        f'[model]\nbase_url = "{server.base_url}"\napi_key_env = ""\n[tools]\nsandbox = "bwrap"\n'
    )
    path = bin_without_bwrap(tmp_path / "bin")

    def doctor(env_path: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PATH": env_path, "PYTHONPATH": str(ROOT)}
        argv = [sys.executable, "-m", "mc", "doctor", "--config", str(config)]
        return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)

    missing = doctor(str(path))
    assert missing.returncode == 1, missing.stdout + missing.stderr
    line = next(x for x in missing.stdout.splitlines() if "sandbox" in x)
    assert line.startswith("FAIL") and "bubblewrap is not installed" in line and "apt-get install" in line
    assert "Traceback" not in missing.stderr
    ok, why = sandbox_available()
    present = doctor(os.environ["PATH"])
    line = next(x for x in present.stdout.splitlines() if "sandbox" in x)
    assert line.startswith("ok" if ok else "FAIL") and why in line
    assert present.returncode == (0 if ok else 1), present.stdout


# ----------------------------------------------------------------------------------- processes, IPC, sockets

MARKER = "mc-host-process-marker"
NAMESPACES = ("pid", "ipc", "uts", "net", "mnt")


class Host:
    """What a desktop has around the sandbox: another process of the user (with a key in its environment), Unix
    sockets (D-Bus, docker.sock; a git fsmonitor daemon's in the git dir, one in a folder of a program on PATH,
    both folders the sandbox shows read-only), a System V shared memory segment, a private file in a host
    folder and one in the host's /tmp."""

    def __init__(self, outside: Path, git_dir: Path, program_folder: Path) -> None:
        self.key_name = "MC_FAKE_KEY_" + os.urandom(4).hex().upper()
        self.key = "sk-fake-" + os.urandom(20).hex()
        env = {**os.environ, self.key_name: self.key}
        code = "import sys, time; time.sleep(300)"
        self.process = subprocess.Popen([sys.executable, "-c", code, MARKER], env=env)
        self.sockets = {
            "hidden": outside / "s.sock",
            "gitdir": git_dir / "fsmonitor--daemon.ipc",
            "program": program_folder / "agent.sock",
        }
        self.accepted: dict[str, int] = {}
        self._stop = threading.Event()
        self._listeners = []
        for name, path in self.sockets.items():
            unix = socket.socket(socket.AF_UNIX)
            here = os.getcwd()  # bound by its name in its folder: a long temp path is past AF_UNIX's 108 bytes
            os.chdir(path.parent)
            try:
                unix.bind(path.name)
            finally:
                os.chdir(here)
            unix.listen(4)
            unix.settimeout(0.1)
            thread = threading.Thread(target=self._accept, args=(name, unix), daemon=True)
            thread.start()
            self._listeners.append((unix, thread))
        (outside / "private.txt").write_text("host private text\n")
        self.private = outside / "private.txt"
        tag = os.urandom(4).hex()
        self.host_tmp = Path(f"/tmp/mc-host-{tag}.txt")
        self.host_tmp.write_text("host tmp text\n")
        self.inside_tmp = Path(f"/tmp/mc-inside-{tag}.txt")  # what a command writes to its /tmp
        self.shmid = ""
        if shutil.which("ipcmk"):
            made = subprocess.run(["ipcmk", "-M", "4096"], capture_output=True, text=True, check=True).stdout
            self.shmid = made.split(":")[-1].strip()

    def _accept(self, name: str, unix: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = unix.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted[name] = self.accepted.get(name, 0) + 1
            conn.close()

    def stopped(self) -> bool:
        import psutil

        return psutil.Process(self.process.pid).status() == psutil.STATUS_STOPPED

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        self._stop.set()
        for unix, thread in self._listeners:
            thread.join(5)
            unix.close()
        for path in self.sockets.values():
            path.unlink(missing_ok=True)
        self.host_tmp.unlink(missing_ok=True)
        self.inside_tmp.unlink(missing_ok=True)
        if self.shmid:
            subprocess.run(["ipcrm", "-m", self.shmid], capture_output=True)


@pytest.fixture
def host(outside: Path, repo: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Host]:
    programs = outside / "tools"
    (programs / "bin").mkdir(parents=True)  # on PATH: the sandbox shows its parent, read-only
    monkeypatch.setenv("PATH", f"{programs / 'bin'}{os.pathsep}{os.environ['PATH']}")
    handle = Host(outside, repo / ".git", programs)
    yield handle
    handle.close()


def isolation_probes(host: Host) -> dict[str, str]:
    """Shell commands of an agent that reach for the host around the sandbox, by what each tries."""
    sockets = {name: str(path) for name, path in host.sockets.items()}
    connect = (
        f"import os, socket\nfor name, path in {sockets!r}.items():\n"
        "    try:\n        s = socket.socket(socket.AF_UNIX); os.chdir(os.path.dirname(path))\n"
        "        s.connect(os.path.basename(path)); print('unix-connected', name)\n"
        "    except OSError as exc:\n        print(name, exc)\n"
    )
    uring = (  # io_uring_setup(1, NULL): EFAULT where io_uring exists, ENOSYS where it is refused
        "import ctypes; libc = ctypes.CDLL(None, use_errno=True); "
        "print('io_uring errno', -libc.syscall(425, 1, None) * ctypes.get_errno())"
    )
    return {
        "see host processes": "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done 2>/dev/null; "
        "echo visible: $(ls -d /proc/[0-9]* | wc -l)",
        # the marker is put together at run time, so that this command's own command line does not match
        "stop a host process": f"m={MARKER[:7]}; m=$m{MARKER[7:]}; for p in /proc/[0-9]*; do "
        'if grep -qa "$m" $p/cmdline 2>/dev/null; then kill -STOP ${p#/proc/} && echo stopped-host; fi; done; true',
        "signal its own missionctl": 'p=$PPID; while [ "$p" -gt 1 ]; do kill -0 $p 2>/dev/null && echo can-signal-$p; '
        "p=$(awk '/^PPid/{print $2}' /proc/$p/status); done; true",
        "read a key from another process": "cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep MC_FAKE_KEY_; "
        "tr '\\0' '\\n' < /proc/$PPID/environ | grep MC_FAKE_KEY_; true",
        "connect to a host Unix socket": f"{sys.executable} -c {shlex.quote(connect)}",
        "reach around seccomp with io_uring": f'{sys.executable} -c "{uring}"',
        "share the host's /tmp": f"cat {host.host_tmp}; echo inside > {host.inside_tmp}; true",
        "see host shared memory": f"ipcs -m -i {host.shmid or 0}; true",
        "read a host file": f"cat {host.private}; true",
        "write the git dir or .git": 'echo "[core]" >> "$(git rev-parse --git-common-dir)/config" && echo wrote-git-dir; '
        'echo "gitdir: /tmp" > .git && echo wrote-dot-git; true',
        "share the host's namespaces": "for n in "
        + " ".join(NAMESPACES)
        + "; do echo ns-$n=$(readlink /proc/self/ns/$n); done",
    }


async def test_bwrap_isolates_processes_ipc_sockets_and_host_files(
    repo: Path, scripted: Any, fleet_factory: Any, host: Host
) -> None:
    needs_bwrap()
    probes = isolation_probes(host)
    pair = "import socket; a, b = socket.socketpair(); a.send(b'pair'); print(b.recv(4).decode(), 'works')"
    work = (
        f'{sys.executable} -c "print(\'python runs\')" && {sys.executable} -c "{pair}" && git status --short '
        "&& echo tmp > /tmp/t && cat /tmp/t"
    )
    turns = [*(shell_turn(c) for c in probes.values()), shell_turn(work), {"say": "Done."}]
    server = scripted({"agents": [{"name": "box", "turns": turns}]})
    cfg = fleet_config(repo, server, [AgentConfig(name="box", task="try", model="box", policy="never")])
    cfg.tools.sandbox = "bwrap"
    fleet = await fleet_factory(cfg)
    await fleet.spawn_configured()
    assert await fleet.wait_settled(60)
    results = [e for e in fleet.store.iter_events("box") if isinstance(e, ev.ToolResult)]
    out = dict(zip([*probes, "work"], (r.output for r in results), strict=True))
    print(f"{len(probes)} isolation attacks tried; {out['see host processes'].splitlines()[-1]} in the sandbox")
    assert len(probes) == 11
    assert MARKER not in out["see host processes"]
    assert "stopped-host" not in out["stop a host process"] and not host.stopped()
    assert "can-signal" not in out["signal its own missionctl"]
    assert (
        host.key not in out["read a key from another process"]
        and host.key_name not in out["read a key from another process"]
    )
    assert "unix-connected" not in out["connect to a host Unix socket"] and host.accepted == {}
    for name in host.sockets:  # each refused by the filter, not merely missing
        assert f"{name} [Errno 13] Permission denied" in out["connect to a host Unix socket"], out
    assert "io_uring errno 38" in out["reach around seccomp with io_uring"], out["reach around seccomp with io_uring"]
    assert "host tmp text" not in out["share the host's /tmp"] and not host.inside_tmp.exists()
    assert "Segment shmid" not in out["see host shared memory"]
    assert "host private text" not in out["read a host file"]
    assert "wrote-" not in out["write the git dir or .git"] and out["write the git dir or .git"].count("Read-only") == 2
    for name in NAMESPACES:
        assert f"ns-{name}={os.readlink(f'/proc/self/ns/{name}')}" not in out["share the host's namespaces"], name
    assert "python runs" in out["work"] and "pair works" in out["work"], out["work"]
    assert out["work"].rstrip().endswith("tmp"), out["work"]


async def test_unconfined_the_same_probes_reach_the_host(
    repo: Path, scripted: Any, fleet_factory: Any, host: Host
) -> None:
    """What `sandbox = "none"` means: the same commands see and touch the host (so the test above can fail)."""
    probes = isolation_probes(host)
    chosen = [
        "see host processes",
        "read a key from another process",
        "connect to a host Unix socket",
        "reach around seccomp with io_uring",
        "share the host's /tmp",
        "read a host file",
    ]
    server = scripted(
        {"agents": [{"name": "open", "turns": [*(shell_turn(probes[c]) for c in chosen), {"say": "Ok."}]}]}
    )
    cfg = fleet_config(repo, server, [AgentConfig(name="open", task="try", model="open", policy="never")])
    cfg.tools.sandbox = "none"
    fleet = await fleet_factory(cfg)
    await fleet.spawn_configured()
    assert await fleet.wait_settled(60)
    results = [e.output for e in fleet.store.iter_events("open") if isinstance(e, ev.ToolResult)]
    out = dict(zip(chosen, results, strict=True))
    assert MARKER in out["see host processes"]
    assert host.key in out["read a key from another process"]
    assert host.accepted == dict.fromkeys(host.sockets, 1), out["connect to a host Unix socket"]
    assert "io_uring errno 14" in out["reach around seccomp with io_uring"], out["reach around seccomp with io_uring"]
    assert "host tmp text" in out["share the host's /tmp"] and host.inside_tmp.exists()
    assert "host private text" in out["read a host file"]


# ----------------------------------------------------------------------------------------- the default: auto


async def test_auto_is_the_sandbox_where_bubblewrap_works(
    repo: Path, scripted: Any, fleet_factory: Any, outside: Path
) -> None:
    needs_bwrap()
    (outside / "private.txt").write_text("host private text\n")
    server = scripted(
        {"agents": [{"name": "dflt", "turns": [shell_turn(f"cat {outside}/private.txt"), {"say": "Ok."}]}]}
    )
    cfg = fleet_config(repo, server, [AgentConfig(name="dflt", task="try", model="dflt", policy="never")])
    assert cfg.tools.sandbox == "auto"  # nothing set: the default
    fleet = await fleet_factory(cfg)
    await fleet.spawn_configured()
    assert await fleet.wait_settled(30)
    result = next(e for e in fleet.store.iter_events("dflt") if isinstance(e, ev.ToolResult))
    assert not result.ok and "No such file or directory" in result.output
    assert not [e for e in fleet.store.iter_events("dflt") if isinstance(e, ev.ErrorEvent)]  # no notice


async def test_auto_without_bubblewrap_runs_unconfined_and_says_so_once(
    repo: Path, scripted: Any, fleet_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(bin_without_bwrap(tmp_path / "bin")))
    names = ("first", "second")
    server = scripted({"agents": [{"name": n, "turns": [shell_turn(f"touch {n}.txt"), {"say": "Ok."}]} for n in names]})
    cfg = fleet_config(repo, server, [AgentConfig(name=n, task="try", model=n, policy="never") for n in names])
    fleet = await fleet_factory(cfg)
    for name in names:  # one after the other: the first start is the one that says it
        await fleet.spawn(next(a for a in cfg.agents if a.name == name))
        assert await fleet.wait_settled(30)
    notices = {n: [e.message for e in fleet.store.iter_events(n) if isinstance(e, ev.ErrorEvent)] for n in names}
    assert len(notices["first"]) == 1 and notices["second"] == [], notices
    notice = notices["first"][0]
    assert notice.startswith("no sandbox: shell commands run unconfined (bubblewrap is not installed)")
    assert "API key" in notice and "apt-get install bubblewrap" in notice
    assert any(text == f"! {notice}" for _, text in fleet.get("first").log.lines)  # in the pane
    for name in names:  # and the commands did run, unconfined
        assert (Path(fleet.get(name).worktree) / f"{name}.txt").exists()


def test_doctor_says_which_sandbox_is_in_force(repo: Path, scripted: Any, tmp_path: Path) -> None:
    server = scripted({"agents": [{"name": "a", "turns": [{"say": "hi"}]}]})
    path = bin_without_bwrap(tmp_path / "bin")

    def doctor(sandbox: str, env_path: str) -> str:
        config = tmp_path / f"{sandbox}.toml"
        tools = f'[tools]\nsandbox = "{sandbox}"\n' if sandbox != "default" else ""
        config.write_text(
            f'[repo]\npath = "{repo}"\nworktree_dir = "{tmp_path / "wt"}"\n'
            f'[model]\nbase_url = "{server.base_url}"\napi_key_env = ""\n{tools}'
        )
        env = {**os.environ, "PATH": env_path, "PYTHONPATH": str(ROOT)}
        argv = [sys.executable, "-m", "mc", "doctor", "--config", str(config)]
        done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
        return next(x for x in done.stdout.splitlines() if "sandbox:" in x)

    missing = doctor("default", str(path))
    assert missing.startswith('warn  sandbox: none ([tools] sandbox = "auto")'), missing
    assert "bubblewrap is not installed" in missing and "API key" in missing
    unconfined = doctor("none", os.environ["PATH"])
    assert unconfined.startswith('warn  sandbox: none ([tools] sandbox = "none")') and "API key" in unconfined
    ok, why = sandbox_available()
    if ok:
        present = doctor("default", os.environ["PATH"])
        assert present.startswith('ok    sandbox: bwrap ([tools] sandbox = "auto")') and why in present, present


# ------------------------------------------------------------------------------ allow_commands cannot see inside

CONFTEST = "import pathlib\npathlib.Path('ran-without-approval.txt').write_text('conftest.py ran\\n')\n"


async def test_an_allowed_command_runs_what_the_agent_wrote_and_the_log_says_so(
    repo: Path, scripted: Any, fleet_factory: Any
) -> None:
    """The report: with policy "commands" and allow_commands = ["python -m pytest"] the agent writes conftest.py
    and runs the allowed command: its code runs with no approval. No allow-list can see what a command runs
    (documented); the log names the files the agent wrote this turn when an allowed command runs after them."""
    turns = [
        shell_turn("python -m pytest --version"),  # allowed, nothing written yet: no warning
        {"say": "Writing.", "tool": "write_file", "args": {"path": "conftest.py", "content": CONFTEST}},
        shell_turn("python -m pytest -q -p no:cacheprovider"),
        {"say": "Done."},
    ]
    server = scripted({"agents": [{"name": "sly", "turns": turns}]})
    cfg = fleet_config(repo, server, [AgentConfig(name="sly", task="test", model="sly", policy="commands")])
    cfg.policy.allow_commands = ["python -m pytest"]
    fleet = await fleet_factory(cfg)
    await fleet.spawn_configured()
    assert await fleet.wait_settled(60)
    agent = fleet.get("sly")
    assert agent.status == "idle", agent.error
    logged = list(fleet.store.iter_events("sly"))
    assert not [e for e in logged if isinstance(e, ev.ApprovalRequested)]  # nothing was asked
    assert (Path(agent.worktree) / "ran-without-approval.txt").exists()  # and the agent's code ran
    warnings = [e.message for e in logged if isinstance(e, ev.ErrorEvent)]
    assert len(warnings) == 1, warnings
    assert "`python -m pytest -q -p no:cacheprovider` runs without asking" in warnings[0]
    assert "allow_commands" in warnings[0] and "conftest.py this turn" in warnings[0]
    calls = [e for e in logged if isinstance(e, (ev.ToolCall, ev.ErrorEvent))]
    assert isinstance(calls[2], ev.ToolCall) and isinstance(calls[3], ev.ErrorEvent)  # shown before it runs
    assert any(text == f"! {warnings[0]}" for _, text in agent.log.lines)


async def test_in_the_sandbox_background_and_setsid_processes_end_with_the_command(
    repo: Path, scripted: Any, fleet_factory: Any
) -> None:
    """Its own process namespace: whatever a command leaves running (a setsid daemon, a double fork) ends when
    the command ends, and nothing of it is left to find on the host."""
    needs_bwrap()
    from mc import procs

    nap = "sleep 317.0419"  # an odd length: no other process on the machine has this command line
    command = f"setsid {nap} & ({nap} &) & nohup {nap} >/dev/null 2>&1 & echo started"
    server = scripted({"agents": [{"name": "bg", "turns": [shell_turn(command), {"say": "Ok."}]}]})
    cfg = fleet_config(repo, server, [AgentConfig(name="bg", task="try", model="bg", policy="never")])
    cfg.tools.sandbox = "bwrap"
    fleet = await fleet_factory(cfg)
    await fleet.spawn_configured()
    assert await fleet.wait_settled(30)
    result = next(e for e in fleet.store.iter_events("bg") if isinstance(e, ev.ToolResult))
    assert result.ok and result.output.startswith("started")
    assert procs.find_tagged(fleet._tag("bg")) == []
    left = []
    for name in os.listdir("/proc"):
        try:
            if name.isdigit() and Path(f"/proc/{name}/cmdline").read_bytes() == nap.replace(" ", "\0").encode() + b"\0":
                left.append(name)
        except OSError:
            continue
    assert left == []  # found by their command line, not by a tag the sandbox could have dropped


DIES_WITH_PARENT = """
import asyncio, sys
from pathlib import Path
from mc.config import ToolsConfig
from mc.tools import Workspace, run_tool, safe_env

async def main():
    def shown(text):
        if "started" in text:
            print("ready", flush=True)
    await run_tool(
        "shell", {"command": "echo started; exec " + sys.argv[2]}, Workspace(Path(sys.argv[1])), on_output=shown,
        env=safe_env([]), tools_cfg=ToolsConfig(sandbox="bwrap", shell_timeout=600), tag="dies-with-parent",
    )

asyncio.run(main())
"""


def test_a_sandboxed_command_dies_with_the_process_that_started_it(repo: Path) -> None:
    """kill -9 of mission control itself (no cleanup of its own runs): bubblewrap ends what it started."""
    needs_bwrap()
    from mc.git import Repo

    worktree = repo.parent / "wt-parent"
    git = Repo(repo)
    git.add_worktree(worktree, "mc/parent", git.resolve("main"))
    nap = "sleep 1234.5678"  # an odd length: no other process on the machine has this command line
    child = subprocess.Popen(
        [sys.executable, "-c", DIES_WITH_PARENT, str(worktree), nap],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )

    def running() -> list[str]:
        found = []
        for name in os.listdir("/proc"):
            try:
                if (
                    name.isdigit()
                    and Path(f"/proc/{name}/cmdline").read_bytes() == nap.replace(" ", "\0").encode() + b"\0"
                ):
                    found.append(name)
            except OSError:
                continue
        return found

    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        assert len(running()) == 1
        child.kill()
        child.wait()
        deadline = time.monotonic() + 10
        while running() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert running() == []
    finally:
        child.kill()
        child.wait()
        child.stdout.close() if child.stdout else None
        for pid in running():
            os.kill(int(pid), 9)


async def test_a_program_in_dot_local_bin_runs_but_the_rest_of_dot_local_stays_hidden(
    repo: Path, outside: Path
) -> None:
    """~/.local/bin on PATH: its programs (a pip --user script that imports from ~/.local/lib, a pipx one that
    is a symlink into ~/.local/share/pipx) run in the sandbox, and ~/.local/share's other folders (keyrings,
    shell histories) are not there."""
    needs_bwrap()
    from mc.config import ToolsConfig
    from mc.git import Repo
    from mc.tools import Workspace, run_tool, safe_env

    home = outside / "home"
    local = home / ".local"
    (local / "bin").mkdir(parents=True)
    site = local / "lib" / "site"
    site.mkdir(parents=True)
    (site / "userlib.py").write_text("WORD = 'user library'\n")
    user_script = local / "bin" / "usertool"
    user_script.write_text(
        f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(site)!r})\nimport userlib\nprint(userlib.WORD)\n"
    )
    venv_bin = local / "share" / "pipx" / "venvs" / "pipxtool" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "pipxtool").write_text("#!/bin/sh\necho pipx tool runs\n")
    os.symlink(venv_bin / "pipxtool", local / "bin" / "pipxtool")
    for script in (user_script, venv_bin / "pipxtool"):
        script.chmod(0o755)
    keyrings = local / "share" / "keyrings"
    keyrings.mkdir(parents=True)
    (keyrings / "login.keyring").write_text("the user's keyring\n")
    worktree = repo.parent / "wt-local"
    git = Repo(repo)
    git.add_worktree(worktree, "mc/local", git.resolve("main"))
    env = {**safe_env([]), "HOME": str(home), "PATH": f"{local / 'bin'}{os.pathsep}{safe_env([])['PATH']}"}
    command = f"usertool; pipxtool; cat {keyrings}/login.keyring; ls {local / 'share'}"
    outcome = await run_tool(
        "shell", {"command": command}, Workspace(worktree), on_output=lambda _: None, env=env,
        tools_cfg=ToolsConfig(sandbox="bwrap"), tag="dot-local",
    )  # fmt: skip
    out = outcome.output
    assert "user library" in out and "pipx tool runs" in out, out
    assert "the user's keyring" not in out and "login.keyring: No such file or directory" in out, out
    assert out.rstrip().splitlines()[-1] == "pipx", out  # ~/.local/share holds only what a program needs
