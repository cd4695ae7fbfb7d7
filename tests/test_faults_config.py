"""Fault suite, bad input: a corpus of broken configs through the real CLI (`python -m mc run --headless` and
`python -m mc doctor` as subprocesses). `run` answers with exactly one line on stderr that names the config
file, the key and the fix, exit status 2, no traceback, and creates nothing in the repository; `doctor`
reports the problem on a FAIL line and exits 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_repo

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
    repo = place["repo"]
    before = snapshot(repo)
    run = mc("run", "--headless", "--config", str(config))
    assert run.returncode == 2, (run.returncode, run.stderr, run.stdout[-500:])
    assert "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("missionctl: ") and str(config) in line, line
    for word in CASES[case][1]:
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
