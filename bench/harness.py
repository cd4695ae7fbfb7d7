"""Shared set-up for the benchmarks: a synthetic repository, a scripted model server in its own process, a
fleet config, the real `missionctl` in a private tmux server, and /proc sampling. Not part of the tests."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import tomli_w

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GIT_ID = ["-c", "user.name=bench", "-c", "user.email=bench@localhost", "-c", "gc.auto=0"]


def git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(["git", *GIT_ID, *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"git {args[0]} failed in {cwd}: {proc.stderr.strip()}")
    return proc.stdout


def build_repo(root: Path, files: int) -> Path:
    """A repository of `files` small Python files (500 per package, 50 per module folder), one commit on main."""
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    for i in range(files):
        folder = root / f"pkg{i // 500:03d}" / f"mod{(i // 50) % 10}"
        if i % 50 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"file{i}.py").write_text(f"# file {i}\nVALUE = {i}\n\ndef f():\n    return VALUE * 2\n")
    (root / "README.md").write_text("# bench\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    if files >= 5000:
        git(root, "gc", "-q")
    return root


def percentiles(samples: list[float]) -> str:
    """p50/p95/max of millisecond samples, as one string."""
    if not samples:
        return "no samples"
    q = statistics.quantiles(samples, n=20, method="inclusive") if len(samples) >= 2 else [samples[0]] * 19
    return f"p50 {statistics.median(samples):.0f} ms  p95 {q[18]:.0f} ms  max {max(samples):.0f} ms  (n={len(samples)})"


def machine() -> str:
    load = os.getloadavg()
    cpu = "?"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    git_v = subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.strip()
    return (
        f"{time.strftime('%Y-%m-%d %H:%M')}  {os.cpu_count()} cores ({cpu}), Python {sys.version.split()[0]}, "
        f"{git_v}, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


# -- the scripted model server, in its own process (so its CPU is not counted as the app's) -------------------
class Server:
    def __init__(self, scenario: dict[str, Any], folder: Path, tokens_per_second: float | None = None) -> None:
        path = folder / "scenario.toml"
        path.write_text(tomli_w.dumps(scenario))
        cmd = [sys.executable, "-m", "mc.scripted", "--scenario", str(path)]
        if tokens_per_second is not None:
            cmd += ["--tokens-per-second", str(tokens_per_second)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        self.base_url = self.proc.stdout.readline().strip()
        if not self.base_url.startswith("http"):
            raise SystemExit("the scripted server did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def write_config(
    path: Path,
    repo: Path,
    base_url: str,
    agents: Iterable[dict[str, Any]],
    *,
    worktree_dir: Path | None = None,
    approve: str = "never",
) -> Path:
    cfg = {
        "repo": {"path": str(repo), "base": "main", "worktree_dir": str(worktree_dir or repo.parent / "worktrees")},
        "model": {
            "base_url": base_url,
            "model": "bench",
            "api_key_env": "",
            "timeout": 120.0,
            "max_retries": 2,
            "retry_backoff": 0.5,
        },
        "policy": {"approve": approve},
        "ui": {"bell": False},
        "agents": list(agents),
    }
    path.write_text(tomli_w.dumps(cfg))
    return path


# -- the real app in a private tmux server ---------------------------------------------------------------------
class Tmux:
    """`missionctl ARGS` in its own tmux server at COLSxROWS."""

    def __init__(self, args: list[str], cwd: Path, size: str = "160x48", *, script: str = "", name: str = "") -> None:
        """`script`: run that Python file of bench/ instead of `missionctl`; `name`: a second server beside."""
        self.sock = f"mcbench{os.getpid()}{name}"
        cols, rows = size.split("x")
        program = [str(ROOT / "bench" / script)] if script else ["-m", "mc"]
        cmd = " ".join([sys.executable, *program, *args])
        self.started = time.perf_counter()
        subprocess.run(
            [
                *self._tm(),
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-x",
                cols,
                "-y",
                rows,
                "-c",
                str(cwd),
                f"cd {ROOT} && TERM=xterm-256color exec {cmd}",
            ],
            check=True,
        )
        self.pid = int(self.tm("display-message", "-p", "#{pane_pid}").strip())

    def _tm(self) -> list[str]:
        return ["tmux", "-L", self.sock]

    def tm(self, *args: str) -> str:
        return subprocess.run([*self._tm(), *args], capture_output=True, text=True).stdout

    def screen(self) -> str:
        return self.tm("capture-pane", "-p")

    def keys(self, *keys: str) -> None:
        self.tm("send-keys", *keys)

    def wait_for(self, pattern: str, timeout: float = 30.0, poll: float = 0.005) -> float | None:
        """Seconds until `pattern` (a regex) is on screen, or None."""
        rx = re.compile(pattern)
        start = time.perf_counter()
        while time.perf_counter() - start < timeout:
            if rx.search(self.screen()):
                return time.perf_counter() - start
            time.sleep(poll)
        return None

    def alive(self) -> bool:
        return Path(f"/proc/{self.pid}").exists()

    def quit(self, timeout: float = 15.0) -> None:
        """Quit the app (q, confirming when it asks) and end the tmux server."""
        if self.alive():
            self.keys("q")
            time.sleep(0.5)
            if re.search(r"Quit\?", self.screen()):
                self.keys("Enter")
            deadline = time.time() + timeout
            while self.alive() and time.time() < deadline:
                time.sleep(0.1)
            if self.alive():
                os.kill(self.pid, signal.SIGTERM)
                time.sleep(1)
        subprocess.run([*self._tm(), "kill-server"], capture_output=True)


# -- /proc -------------------------------------------------------------------------------------------------
TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of one process."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / TICK
    except (OSError, IndexError):
        return 0.0


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def proc_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class CpuMeter:
    """% of one core used by `pid` between start() and stop()."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.c0 = self.t0 = 0.0

    def start(self) -> None:
        self.c0, self.t0 = proc_cpu(self.pid), time.perf_counter()

    def stop(self) -> float:
        return 100 * (proc_cpu(self.pid) - self.c0) / max(time.perf_counter() - self.t0, 1e-9)


def count_execs(pid: int, seconds: float, name: str = "git") -> tuple[int, list[str]]:
    """Processes `name` started by `pid` (and its descendants) over `seconds`, traced with strace."""
    out = Path(tempfile.mktemp(prefix="mc-strace-"))
    proc = subprocess.Popen(
        [
            "strace",
            "-f",
            "--seccomp-bpf",
            "-qq",
            "-e",
            "trace=execve",
            "-e",
            "signal=none",
            "-o",
            str(out),
            "-p",
            str(pid),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(seconds)
    proc.send_signal(signal.SIGINT)
    proc.wait(10)
    lines = out.read_text().splitlines() if out.exists() else []
    # Only successful execs: a PATH search shows failed attempts (ENOENT) before the one that runs.
    calls = [line for line in lines if "execve(" in line and not re.search(r"= -1 E", line)]
    out.unlink(missing_ok=True)
    hits = [c for c in calls if re.search(rf'execve\("[^"]*/{name}"', c)]
    return len(hits), calls


# -- event logs on disk --------------------------------------------------------------------------------------
def read_events(state_dir: Path, agent: str) -> list[dict[str, Any]]:
    path = state_dir / "agents" / agent / "events.jsonl"
    with open(path, "rb") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def streamed_text(events: list[dict[str, Any]]) -> str:
    """Every text delta of an agent, joined."""
    return "".join(e.get("text", "") for e in events if e.get("type") == "text_delta")


def temp_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def wait_until(pred: Callable[[], bool], timeout: float, poll: float = 0.2) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(poll)
    return pred()
