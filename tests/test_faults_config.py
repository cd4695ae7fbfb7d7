"""Fault suite, bad input: a corpus of broken configs through the real CLI (`python -m mc run --headless` and
`python -m mc doctor` as subprocesses). `run` answers with exactly one line on stderr that names the config
file, the key and the fix, exit status 2, no traceback, and creates nothing in the repository; `doctor`
reports the problem on a FAIL line and exits 1."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from mc.config import AgentConfig, ConfigError, agent_name_problem, parse_config
from mc.fleet import FleetError
from tests.conftest import fleet_config, git, make_repo

ROOT = Path(__file__).resolve().parent.parent

#: name → (the start of the config, before [model] and one agent; words run's message must hold besides the file name)
CASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "syntax": ('[repo\npath = "repo"\n', ("TOML syntax error", "line 1", "fix")),
    "unknown-key": ('[repo]\npath = "repo"\nbranch = "main"\n', ("[repo] branch", "remove it or use one of")),
    "wrong-type": ('[repo]\npath = "repo"\n[tools]\nshell_timeout = "long"\n', ("shell_timeout", "must be a number")),
    "bad-choice": ('[repo]\npath = "repo"\n[tools]\nsandbox = "docker"\n', ("[tools] sandbox", "one of none, bwrap")),
    "missing-repo": ('[repo]\npath = "nowhere"\n', ("nowhere", "[repo] path", "git init")),
    "not-a-repo": ('[repo]\npath = "plain"\n', ("plain", "not a git repository", "[repo] path")),
    "base-missing": ('[repo]\npath = "repo"\nbase = "no-such-branch"\n', ("no-such-branch", "[repo] base")),
    "agent-base-missing": (
        '[repo]\npath = "repo"\n',
        ("gone-branch", "base"),
    ),
    "worktree-folder": (
        '[repo]\npath = "repo"\nworktree_dir = "a-file/worktrees"\n',
        ("[repo] worktree_dir", "a-file"),
    ),
}


def snapshot(repo: Path) -> dict[str, bytes]:
    """Every file under the repository (its .git too), with its content."""
    return {str(p.relative_to(repo)): p.read_bytes() for p in sorted(repo.rglob("*")) if p.is_file()}


@pytest.fixture
def place(tmp_path: Path, scripted: Any) -> dict[str, Any]:
    repo = make_repo(tmp_path / "repo")
    (tmp_path / "plain").mkdir()
    (tmp_path / "a-file").write_text("not a folder\n")
    server = scripted({"agents": [{"name": "a", "turns": [{"say": "hi"}]}]})
    return {"tmp": tmp_path, "repo": repo, "base_url": server.base_url}


def write_case(place: dict[str, Any], case: str) -> Path:
    body, _ = CASES[case]
    agent_base = 'base = "gone-branch"\n' if case == "agent-base-missing" else ""
    text = (
        f'{body}\n[model]\nbase_url = "{place["base_url"]}"\napi_key_env = ""\n\n'
        f'[[agents]]\nname = "a"\ntask = "say hi"\nmodel = "a"\n{agent_base}'
    )
    path = place["tmp"] / f"{case}.toml"
    path.write_text(text)
    return path


def mc(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "mc", *args], capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize("case", list(CASES))
def test_a_broken_config_is_one_line_exit_2_and_touches_nothing(case: str, place: dict[str, Any]) -> None:
    config = write_case(place, case)
    assert_refused(place, config, CASES[case][1])


def assert_refused(place: dict[str, Any], config: Path, words: tuple[str, ...]) -> str:
    """`run` refuses the config in one line holding `words`, creating nothing; `doctor` fails it. Returns the line."""
    repo = place["repo"]
    before = snapshot(repo)
    run = mc("run", "--headless", "--config", str(config))
    assert run.returncode == 2, (run.returncode, run.stderr, run.stdout[-500:])
    assert "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("missionctl: ") and str(config) in line, line
    for word in words:
        assert word in line, (word, line)
    assert run.stdout == ""
    assert snapshot(repo) == before  # no .mc, no exclude line, no branch, no worktree
    assert not (place["tmp"] / "repo.mc-worktrees").exists()

    doctor = mc("doctor", "--config", str(config))
    assert doctor.returncode == 1, doctor.stdout
    assert "Traceback" not in doctor.stderr
    failed = [x for x in doctor.stdout.splitlines() if x.startswith("FAIL")]
    assert failed, doctor.stdout
    assert snapshot(repo) == before
    return line


#: name → (the values that differ from a good config: table → {key: TOML value}; words run's message must hold)
VALUES: dict[str, tuple[dict[str, dict[str, str]], tuple[str, ...]]] = {
    "shell-timeout-negative": ({"tools": {"shell_timeout": "-5"}}, ("[tools] shell_timeout = -5", "more than 0")),
    "max-output-negative": ({"tools": {"max_output": "-10"}}, ("[tools] max_output = -10", "from 100 to")),
    "timeout-zero": ({"model": {"timeout": "0"}}, ("[model] timeout = 0", "more than 0 and at most 86400")),
    "max-retries-negative": ({"model": {"max_retries": "-1"}}, ("[model] max_retries = -1", "from 0 to 100")),
    "timeout-nan": ({"model": {"timeout": "nan"}}, ("[model] timeout = nan", "more than 0")),
    "backoff-nan": ({"model": {"retry_backoff": "nan"}}, ("[model] retry_backoff = nan", "from 0 to 3600")),
    "call-timeout-inf": ({"model": {"call_timeout": "inf"}}, ("[model] call_timeout = inf", "at most 86400")),
    "retry-wait-negative": ({"model": {"max_retry_wait": "-1"}}, ("[model] max_retry_wait = -1", "from 0 to")),
    "empty-task": ({"agents": {"task": '""'}}, ("[[agents]] 'a' task = ''", "say what the agent should do")),
    "blank-task": ({"agents": {"task": '"  "'}}, ("[[agents]] 'a' task = '  '", "say what the agent should do")),
    "url-no-scheme": ({"model": {"base_url": '"127.0.0.1:8011/v1"'}}, ("[model] base_url", "http://")),
    "url-no-host": ({"model": {"base_url": '"http:///v1"'}}, ("[model] base_url = 'http:///v1'", "no host")),
    "url-bad-port": ({"model": {"base_url": '"http://127.0.0.1:x/v1"'}}, ("[model] base_url", "port")),
    "name-dots": ({"agents": {"name": '"a..b"'}}, ("name = 'a..b'", "'..'", 'name = "a.b"')),
    "name-lock": ({"agents": {"name": '"x.lock"'}}, ("name = 'x.lock'", "'.lock'", 'name = "x-lock"')),
    "name-dot-end": ({"agents": {"name": '"dot."'}}, ("name = 'dot.'", "end in '.'", 'name = "dot"')),
}


def write_values(place: dict[str, Any], case: str) -> tuple[Path, int]:
    """A good config with the case's values in it; returns its path and the line of the value."""
    tables: dict[str, dict[str, str]] = {
        "repo": {"path": '"repo"'},
        "tools": {},
        "model": {"base_url": f'"{place["base_url"]}"', "api_key_env": '""'},
        "agents": {"name": '"a"', "task": '"say hi"', "model": '"a"'},
    }
    changed = VALUES[case][0]
    for table, values in changed.items():
        tables[table].update(values)
    lines: list[str] = []
    for table, values in tables.items():
        lines.append("[[agents]]" if table == "agents" else f"[{table}]")
        lines += [f"{key} = {value}" for key, value in values.items()]
    ((table, values),) = changed.items()
    ((key, value),) = values.items()
    path = place["tmp"] / f"{case}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path, lines.index(f"{key} = {value}") + 1


@pytest.mark.parametrize("case", list(VALUES))
def test_a_value_out_of_range_is_refused_before_anything_is_created(case: str, place: dict[str, Any]) -> None:
    config, line = write_values(place, case)
    message = assert_refused(place, config, VALUES[case][1])
    assert f"{config}:{line}: " in message  # file and line, then the key, the value and what it must be


def git_accepts_branch(name: str) -> bool:
    """What git itself says of the branch an agent called `name` gets."""
    return subprocess.run(["git", "check-ref-format", f"refs/heads/mc/{name}"], capture_output=True).returncode == 0


#: Names git refuses as a branch mc/<name>, each for another of its rules.
BAD_NAMES = [
    "a..b",
    "x.lock",
    "dot.",
    ".hidden",
    "a b",
    "a~1",
    "a^2",
    "a:b",
    "a?",
    "a*",
    "a[b",
    "a\\b",
    "a@{1}",
    "a\x7f",
]
#: Names git takes (some close to a rule), which the config must take too.
GOOD_NAMES = ["a", "fix-1", "a.b", "A_b", "x.locked", "lock", "x.lock.y", "v1.2.3", "a-", "a_", "9", "a" * 64]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_name_git_refuses_is_refused_by_the_config_with_a_name_git_takes(name: str) -> None:
    assert not git_accepts_branch(name)  # the table is right about git
    with pytest.raises(ConfigError) as info:
        parse_config("[[agents]]\n" + tomli_w.dumps({"name": name, "task": "t"}), "x.toml")
    message = str(info.value)
    assert message.startswith("x.toml:2: [[agents]] name = ") and "\n" not in message, message
    fix = message.rsplit('name = "', 1)[1].rstrip('"')
    assert git_accepts_branch(fix) and agent_name_problem(fix) is None, (name, fix)


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_a_name_git_takes_is_taken(name: str) -> None:
    assert git_accepts_branch(name)
    assert parse_config("[[agents]]\n" + tomli_w.dumps({"name": name, "task": "t"})).agents[0].name == name


def test_every_short_name_the_config_takes_git_takes() -> None:
    """Over every name of up to four characters from letters and the punctuation git's rules are about (and each
    with '.lock' after it), the config never takes a name git refuses."""
    alphabet = "a.-_"
    names = ["".join(p) for n in range(1, 5) for p in itertools.product(alphabet, repeat=n)]
    names += [n + ".lock" for n in names[:20]]
    taken = [n for n in names if agent_name_problem(n) is None]
    assert len(taken) > 50
    refused_by_git = [n for n in taken if not git_accepts_branch(n)]
    assert refused_by_git == []


async def test_a_new_agent_with_a_name_git_refuses_is_refused_before_git(
    repo: Path, scripted: Any, fleet_factory: Any
) -> None:
    """The `n` key's path: Fleet.spawn checks a name by the same rule as the config, before any git call."""
    server = scripted({"agents": [{"name": "a", "turns": [{"say": "hi"}]}]})
    fleet = await fleet_factory(fleet_config(repo, server))
    branches = git(repo, "branch", "--list")
    for name in ("a..b", "x.lock", "dot."):
        with pytest.raises(FleetError) as info:
            await fleet.spawn(AgentConfig(name=name, task="say hi", model="a"))
        message = str(info.value)
        assert f"agent name {name!r}" in message and "rename it, e.g. " in message, message
        assert "git worktree add failed" not in message
    assert git(repo, "branch", "--list") == branches
    assert fleet.list() == []
