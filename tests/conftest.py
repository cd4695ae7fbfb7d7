"""Shared fixtures: real git repositories in a temporary folder, the real scripted model server on
127.0.0.1, and a Fleet that drives them. Nothing here mocks git, the filesystem or HTTP."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mc.config import AgentConfig, Config

# Keep the developer's own git and API settings out of the tests.
os.environ["GIT_CONFIG_GLOBAL"] = os.devnull
os.environ["GIT_CONFIG_NOSYSTEM"] = "1"
os.environ["GIT_AUTHOR_NAME"] = os.environ["GIT_COMMITTER_NAME"] = "Test Person"
os.environ["GIT_AUTHOR_EMAIL"] = os.environ["GIT_COMMITTER_EMAIL"] = "test@localhost"
for _name in [n for n in os.environ if n.endswith("_API_KEY")]:
    del os.environ[_name]


def git(repo: Path, *args: str) -> str:
    """Run git in `repo` and return its stdout (stripped)."""
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def make_repo(path: Path, files: dict[str, str] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    for rel, text in (files or {"README.md": "# sample\n", "app/main.py": "print('hi')\n"}).items():
        target = path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


@pytest.fixture
def scripted() -> Iterator[Callable[..., Any]]:
    """Start scripted servers (in threads) for a test: scripted(scenario_dict, **knobs) -> handle."""
    from mc.scripted import serve_in_thread

    servers: list[Any] = []

    def start(scenario: Any, **kwargs: Any) -> Any:
        server = serve_in_thread(scenario, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def claude_bash(command: str, description: str = "run what was asked") -> dict[str, Any]:
    """A scripted turn's tool call: Claude Code's Bash tool running `command`."""
    return {"tool": "Bash", "args": {"command": command, "description": description}}


@pytest.fixture
def serve_claude(scripted: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """serve_claude(agent, ...) starts the scripted server and points the real Claude Code CLI at it: a scratch
    HOME, no updater, telemetry or other traffic (nothing leaves 127.0.0.1), and none of the developer's own
    ANTHROPIC_* or CLAUDE_* settings."""
    from mc.agents import claude

    for name in [n for n in os.environ if n.startswith(("ANTHROPIC_", "CLAUDE_"))]:
        monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("DISABLE_AUTOUPDATER", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "DISABLE_TELEMETRY"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("DISABLE_ERROR_REPORTING", "1")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key-not-real")
    monkeypatch.setenv(claude.BIN_ENV, claude.claude_binary() or "")

    def start(*agents: dict[str, Any]) -> Any:
        server = scripted({"agents": list(agents)})
        monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://127.0.0.1:{server.port}")
        return server

    return start


def fleet_config(repo: Path, server: Any, agents: list[AgentConfig] | None = None, **model: Any) -> Config:
    cfg = Config()
    cfg.repo.path = str(repo)
    cfg.repo.worktree_dir = str(repo.parent / "worktrees")
    cfg.model.base_url = server.base_url
    cfg.model.api_key_env = ""
    cfg.model.max_retries = 3
    cfg.model.retry_backoff = 0.05
    cfg.model.timeout = 10.0
    for key, value in model.items():
        setattr(cfg.model, key, value)
    cfg.agents = agents or []
    return cfg


@pytest.fixture
async def fleet_factory() -> AsyncIterator[Callable[..., Any]]:
    """Open fleets for a test and close them afterwards: await fleet_factory(cfg, readonly=False)."""
    from mc.fleet import Fleet

    fleets: list[Any] = []

    async def open_fleet(cfg: Config, **kwargs: Any) -> Any:
        fleet = Fleet(cfg, **kwargs)
        await fleet.open()
        fleets.append(fleet)
        return fleet

    yield open_fleet
    for fleet in reversed(fleets):
        if fleet._opened:
            await fleet.close()


def fleet_servers(root: Path) -> list[Any]:
    """The live `missionctl serve` processes whose repository is under `root` (psutil processes)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline", "cwd", "status"]):
        try:
            cmd = proc.info["cmdline"] or []
            if proc.info["status"] == psutil.STATUS_ZOMBIE or "serve" not in cmd or "mc" not in cmd:
                continue
            if str(proc.info["cwd"] or "").startswith(str(root)):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def end_fleet_servers(root: Path, *, kill: bool = False) -> int:
    """Stop the fleet servers of repositories under `root` (SIGTERM: agents end as interrupted; kill: SIGKILL,
    as a crash would). Returns how many there were."""
    import signal

    import psutil

    servers = fleet_servers(root)
    for proc in servers:
        try:
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(15)
            except psutil.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        except psutil.NoSuchProcess:
            continue
    return len(servers)


@pytest.fixture(autouse=True)
def _no_fleet_server_outlives_its_test(tmp_path: Path) -> Iterator[None]:
    """A `missionctl` command starts a detached fleet server that runs until told to stop: end the ones a test
    started in its temporary folder, so none piles up across the suite."""
    yield
    end_fleet_servers(tmp_path)


@pytest.fixture(autouse=True)
def _every_status_change_is_in_the_table(
    caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest
) -> Iterator[None]:
    """Every status change a fleet in this process makes is one events.TRANSITIONS allows (the fleet logs any
    other as an error): each test that drives a fleet checks the table."""
    yield
    if request.node.get_closest_marker("forced_statuses"):
        return
    bad = [
        r.getMessage()
        for when in ("setup", "call", "teardown")
        for r in caplog.get_records(when)  # type: ignore[arg-type]
        if r.name == "mc.fleet" and "not in events.TRANSITIONS" in r.getMessage()
    ]
    assert not bad, bad


_FAULTS: dict[str, str] = {}


def pytest_runtest_logreport(report: Any) -> None:
    """Count the fault suite's cases (tests/test_faults_*.py: each attack or fault, each parameter, is one)."""
    if "test_faults_" in report.nodeid and (report.when == "call" or report.outcome != "passed"):
        _FAULTS[report.nodeid] = report.outcome


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _FAULTS:
        passed = sum(1 for outcome in _FAULTS.values() if outcome == "passed")
        skipped = sum(1 for outcome in _FAULTS.values() if outcome == "skipped")
        files = len({nodeid.split("::")[0] for nodeid in _FAULTS})
        line = f"fault suite: {len(_FAULTS) - skipped} attacks and faults tried in {files} files, {passed} held"
        terminalreporter.write_line(line + (f" ({skipped} skipped here)" if skipped else ""))
