"""The command line as a user meets it: real `python -m mc` subprocesses on real repositories, the scripted
model server on 127.0.0.1 as the endpoint."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mc.cli import build_parser

MISSIONCTL = [sys.executable, "-m", "mc"]


def missionctl(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MISSIONCTL, *args], capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})}, timeout=120
    )


def write_config(tmp_path: Path, repo: Path, server: Any, agents: str = "", **model: str) -> Path:
    config = tmp_path / "missionctl.toml"
    extra = "".join(f"{key} = {value}\n" for key, value in model.items())
    config.write_text(
        f'[repo]\npath = "{repo}"\nworktree_dir = "{tmp_path / "wt"}"\n'
        f'[model]\nbase_url = "{server.base_url}"\napi_key_env = ""\n{extra}\n{agents}'
    )
    return config


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_option_and_argument_of_every_command_has_a_help_text() -> None:
    parser = build_parser()
    commands = subparsers(parser)
    assert {"demo", "run", "init", "ls", "merge", "discard", "doctor", "scripted-server"} <= set(commands)
    missing = []
    for name, sub in [("missionctl", parser), *commands.items()]:
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []
    # and each subcommand's --help prints them (no traceback, exit 0)
    for name in commands:
        shown = missionctl(name, "--help")
        assert shown.returncode == 0 and "Traceback" not in shown.stderr, name


def test_doctor_calls_an_unusable_runner_ok_never(repo: Path, scripted: Any, tmp_path: Path) -> None:
    server = scripted({"agents": [{"name": "a", "turns": [{"say": "hi"}]}]})
    env = {"MC_CLAUDE_BIN": str(tmp_path / "no-such-claude")}

    unused = missionctl("doctor", "--config", str(write_config(tmp_path, repo, server)), env=env)
    line = next(x for x in unused.stdout.splitlines() if "runner claude" in x)
    assert "not usable" in line and not line.startswith("ok"), line
    assert "no agent uses it" in line
    for row in unused.stdout.splitlines():
        assert not (row.startswith("ok") and "not usable" in row), row
    assert "FAIL" not in line and unused.returncode == 0, unused.stdout  # nothing needs it: doctor still passes

    agent = '[[agents]]\nname = "c"\ntask = "t"\nrunner = "claude"\n'
    used = missionctl("doctor", "--config", str(write_config(tmp_path, repo, server, agent)), env=env)
    line = next(x for x in used.stdout.splitlines() if "runner claude" in x)
    assert line.startswith("FAIL") and "not usable" in line, line
    assert used.returncode == 1


async def test_ls_explains_the_mark_of_an_agent_waiting_for_a_decision(
    repo: Path, scripted: Any, tmp_path: Path, fleet_factory: Any
) -> None:
    from mc.config import load_config
    from tests.test_fleet import wait_for, write_turn

    server = scripted({"agents": [{"name": "w", "turns": [write_turn("w.txt", "w\n"), {"say": "Done."}]}]})
    agents = '[[agents]]\nname = "w"\ntask = "write w"\nmodel = "w"\npolicy = "writes"\n'
    config = write_config(tmp_path, repo, server, agents)
    fleet = await fleet_factory(load_config(config))
    await fleet.spawn_configured()
    await wait_for(lambda: fleet.get("w").pending, what="an approval")
    await fleet.close()

    shown = missionctl("ls", "--config", str(config))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    row = next(x for x in lines if x.startswith("w "))
    assert "waiting*" in row
    legend = [x for x in lines if x.startswith("*")]
    assert len(legend) == 1 and "decision" in legend[0] and "missionctl" in legend[0], shown.stdout


def test_a_headless_run_whose_agents_all_fail_says_why_on_stderr(repo: Path, scripted: Any, tmp_path: Path) -> None:
    fault = {"kind": "500", "message": "the model is down for maintenance"}
    server = scripted({"agents": [{"name": n, "faults": [fault], "turns": [{"say": "never"}]} for n in ("one", "two")]})
    agents = "".join(f'[[agents]]\nname = "{n}"\ntask = "t"\nmodel = "{n}"\n' for n in ("one", "two"))
    config = write_config(tmp_path, repo, server, agents, max_retries="0")
    run = missionctl("run", "--headless", "--config", str(config))
    assert run.returncode == 1
    lines = [x for x in run.stderr.splitlines() if x.strip()]
    assert "Traceback" not in run.stderr
    for name in ("one", "two"):
        line = next((x for x in lines if f"{name} failed" in x), None)
        assert line is not None, run.stderr
        assert line.startswith("missionctl: ") and "the model is down for maintenance" in line


def test_init_points_to_an_example_the_user_can_read(tmp_path: Path) -> None:
    from mc.config import parse_config
    from tests.conftest import make_repo

    cwd = make_repo(tmp_path / "repo")
    made = missionctl("init", cwd=cwd)
    assert made.returncode == 0, made.stderr
    written = (cwd / "missionctl.toml").read_text()
    told = made.stdout + written
    assert "config.example.toml" not in told or (cwd / "config.example.toml").is_file()
    assert "missionctl init --example" in made.stdout and "missionctl init --example" in written

    example = missionctl("init", "--example", cwd=cwd)
    assert example.returncode == 0, example.stderr
    parse_config(example.stdout, "example.toml")  # valid as it stands
    assert "[model]" in example.stdout and "api_key_env =" in example.stdout
    assert sorted(p.name for p in cwd.iterdir() if p.name.endswith(".toml")) == ["missionctl.toml"]


def test_the_example_config_has_one_copy_shipped_with_the_package() -> None:
    from importlib import resources

    shipped = Path(str(resources.files("mc") / "config.example.toml"))
    top = Path(__file__).resolve().parent.parent / "config.example.toml"
    assert shipped.is_file()
    assert top.resolve() == shipped.resolve()


def test_doctor_in_a_demo_repository_checks_the_scripted_model_not_openai(tmp_path: Path) -> None:
    from mc.demo import start_demo

    demo = start_demo(tmp_path / "demo")
    # were the check to call out anyway, it would meet a closed port on 127.0.0.1, never the internet
    closed = {"HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "NO_PROXY": ""}
    checked = missionctl("doctor", cwd=demo.repo, env=closed)
    lines = checked.stdout.splitlines()
    endpoint = next(x for x in lines if x.split()[1:2] == ["endpoint:"])
    assert endpoint.startswith("ok") and "scripted" in endpoint, checked.stdout
    assert not [x for x in lines if "api key" in x], checked.stdout
    assert checked.returncode == 0, checked.stdout


@pytest.mark.parametrize("command", [["approve", "x"], ["events"], ["stop"], ["spawn", "--name", "a", "--task", "t"]])
def test_a_fleet_command_outside_a_repository_says_so_and_makes_nothing(tmp_path: Path, command: list[str]) -> None:
    folder = tmp_path / "not-a-repo"
    folder.mkdir()
    done = missionctl(*command, cwd=folder)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"missionctl: {folder} is not a git repository: run `git init` there or point [repo] path at one"
    ]
    assert list(folder.iterdir()) == []  # no .mc, no server log


async def test_merge_of_an_agent_without_changes_says_there_is_nothing_to_merge(
    repo: Path, scripted: Any, tmp_path: Path, fleet_factory: Any
) -> None:
    """From the command line (and so through the fleet server) as in the window: nothing merged, the agent is
    left as it was, its worktree kept; an agent that did write something still merges."""
    from mc.config import load_config
    from tests.conftest import git
    from tests.test_fleet import write_turn

    turns = {"quiet": [{"say": "Nothing to change."}], "busy": [write_turn("b.txt", "b\n"), {"say": "Done."}]}
    server = scripted({"agents": [{"name": n, "turns": t} for n, t in turns.items()]})
    agents = "".join(f'[[agents]]\nname = "{n}"\ntask = "t"\nmodel = "{n}"\npolicy = "never"\n' for n in turns)
    config = write_config(tmp_path, repo, server, agents)
    fleet = await fleet_factory(load_config(config))
    await fleet.spawn_configured()
    assert await fleet.wait_settled(30)
    await fleet.close()
    before = git(repo, "rev-parse", "main")

    quiet = missionctl("merge", "quiet", "--config", str(config))
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    assert quiet.stderr.strip() == "missionctl: quiet has no changes against main: there is nothing to merge"
    assert "merged" not in quiet.stdout
    assert git(repo, "rev-parse", "main") == before and (tmp_path / "wt" / "quiet").is_dir()
    listed = missionctl("ls", "--config", str(config)).stdout
    assert next(x for x in listed.splitlines() if x.startswith("quiet ")).split()[1] == "idle", listed

    busy = missionctl("merge", "busy", "--config", str(config))
    assert busy.returncode == 0 and "merged busy into main" in busy.stdout, busy.stderr
    assert git(repo, "show", "main:b.txt") == "b"
