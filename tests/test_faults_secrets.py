"""Fault suite, secrets: the API key (an environment variable named by api_key_env, with a random fake value)
is sent to the endpoint as the Authorization bearer and nowhere else: not in a file under .mc, the worktrees
or .git, not in an event, not in the environment of shell tools (a scripted agent runs `env`) unless
`[tools] pass_env` names it."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Any

import pytest

from mc import events as ev
from mc.config import AgentConfig
from mc.scripted.server import ScriptedServer, ThreadedServer
from tests.conftest import fleet_config
from tests.test_fleet import shell_turn, write_turn


class RecordingServer(ScriptedServer):
    """The scripted server, also keeping the Authorization header of every request."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.authorizations: list[str] = []

    async def _dispatch(self, request: Any, writer: asyncio.StreamWriter) -> bool:
        self.authorizations.append(request.headers.get("authorization", ""))
        return await super()._dispatch(request, writer)


SCENARIO = {
    "agents": [
        {
            "name": "envy",
            "turns": [
                shell_turn("env; echo env-done"),
                write_turn("notes.txt", "the environment was listed\n"),
                {"say": "Done: {output_last_line}"},
            ],
        },
        {"name": "limited", "faults": [{"kind": "429", "times": 1, "retry_after": 0.05}], "turns": [{"say": "Ok."}]},
        {"name": "denied", "faults": [{"kind": "500", "status": 401, "message": "bad key"}], "turns": []},
    ]
}


@pytest.fixture
def server() -> Any:
    handle = ThreadedServer(RecordingServer(SCENARIO)).start()
    yield handle
    handle.stop()


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    name = f"MC_FAKE_KEY_{secrets.token_hex(4).upper()}"
    value = f"sk-fake-{secrets.token_hex(24)}"
    monkeypatch.setenv(name, value)
    return name, value


async def run_fleet(repo: Path, server: Any, key_name: str, fleet_factory: Any, pass_env: list[str]) -> Any:
    agents = [AgentConfig(name=n, task=f"task of {n}", model=n, policy="never") for n in ("envy", "limited", "denied")]
    cfg = fleet_config(repo, server, agents, api_key_env=key_name, max_retries=1)
    cfg.tools.pass_env = pass_env
    fleet = await fleet_factory(cfg)
    seen: list[str] = []
    fleet.add_listener(lambda event: seen.append(json.dumps(event.to_dict())))
    await fleet.spawn_configured()
    assert await fleet.wait_settled(30)
    assert [fleet.get(n).status for n in ("envy", "limited", "denied")] == ["idle", "idle", "failed"]
    fleet.seen = seen
    return fleet


def env_output(fleet: Any) -> str:
    return "".join(e.text for e in fleet.store.iter_events("envy") if isinstance(e, ev.ToolOutput))


async def test_the_key_is_sent_as_bearer_and_found_nowhere_else(
    repo: Path, server: Any, api_key: tuple[str, str], fleet_factory: Any
) -> None:
    name, value = api_key
    fleet = await run_fleet(repo, server, name, fleet_factory, pass_env=[])
    # it was used: every model request carried it
    assert len(server.server.authorizations) == len(server.requests) >= 5
    assert set(server.server.authorizations) == {f"Bearer {value}"}
    # the shell saw an environment, but not the key nor its name
    listed = env_output(fleet)
    assert "env-done" in listed and "PATH=" in listed
    assert value not in listed and name not in listed
    assert "401" in fleet.get("denied").error and name in fleet.get("denied").error  # named, never shown
    await fleet.close()
    # nowhere on disk: the state folder, the worktrees, the repository's .git
    blob = value.encode()
    checked = 0
    for top in (repo / ".mc", repo.parent / "worktrees", repo / ".git"):
        for path in top.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert blob not in path.read_bytes(), f"the key is in {path}"
                checked += 1
    assert checked > 10
    assert fleet.seen and not any(value in line for line in fleet.seen)


async def test_pass_env_hands_the_key_to_shell_tools_when_named(
    repo: Path, server: Any, api_key: tuple[str, str], fleet_factory: Any
) -> None:
    name, value = api_key
    fleet = await run_fleet(repo, server, name, fleet_factory, pass_env=[name])
    assert f"{name}={value}" in env_output(fleet)


READ_THE_KEY = (
    "tr '\\0' '\\n' < /proc/$PPID/environ | grep {name}; "
    "cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep {name}; echo searched"
)


@pytest.mark.parametrize("sandbox", ["bwrap", "none"])
def test_an_agent_reading_missionctls_environment(
    sandbox: str, repo: Path, scripted: Any, tmp_path: Path, api_key: tuple[str, str]
) -> None:
    """The report: `tr '\\0' '\\n' </proc/$PPID/environ` in an agent's command printed the key, which then went
    into events.jsonl and to the model. missionctl runs as the user started it, the key in its environment;
    in the sandbox no process outside it is visible. Unsandboxed it is readable, as README and doctor say."""
    import os
    import subprocess
    import sys

    from mc.tools import sandbox_available

    if sandbox == "bwrap" and not sandbox_available()[0]:
        pytest.skip(sandbox_available()[1])
    name, value = api_key
    server = scripted(
        {"agents": [{"name": "reader", "turns": [shell_turn(READ_THE_KEY.format(name=name)), {"say": "ok"}]}]}
    )
    config = tmp_path / "missionctl.toml"
    config.write_text(
        f'[repo]\npath = "{repo}"\nworktree_dir = "{tmp_path / "wt"}"\n'
        f'[model]\nbase_url = "{server.base_url}"\napi_key_env = "{name}"\n'
        f'[tools]\nsandbox = "{sandbox}"\n'
        '[[agents]]\nname = "reader"\ntask = "look around"\nmodel = "reader"\npolicy = "never"\n'
    )
    run = subprocess.run(
        [sys.executable, "-m", "mc", "run", "--headless", "--config", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, name: value},
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    log = (repo / ".mc" / "agents" / "reader" / "events.jsonl").read_text()
    assert "searched" in log  # the command ran
    told = "".join(server.requests_for("reader")[-1].tool_outputs())
    if sandbox == "bwrap":
        assert value not in log and value not in told and value not in run.stdout
    else:
        assert value in log and value in told  # what an unsandboxed agent can do: see README, Security
