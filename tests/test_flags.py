"""Risk flags: every diff is scanned for what a reviewer must not miss, each flag naming its file and line.

Diffs come from real repositories made here (compute_diff, as the fleet computes them) and from a real fleet
whose scripted agent writes the files; nothing is mocked."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mc import events as ev
from mc.agent import Agent, replay
from mc.config import ConfigError, FlagRuleConfig, FlagsConfig, load_config, parse_config
from mc.flags import RULES, FlagScanner, describe, diff_line, scanner_for, task_paths
from mc.git import compute_diff
from mc.snapshot import agent_from_dict, agent_to_dict
from tests.conftest import git, make_repo

AWS_KEY = "AKIAZ7QX3V5N2LKJ4WPR"  # the shape of an AWS access key id; not a real one
EXAMPLE = Path(__file__).resolve().parent.parent / "mc" / "config.example.toml"
WORKFLOW = "name: ci\non: [push]\njobs:\n  test:\n    runs-on: ubuntu-latest\n    steps:\n      - run: make test\n"
LOCK_BASE = '{\n  "name": "app",\n  "lockfileVersion": 3,\n  "packages": {\n    "": {"name": "app"}\n  }\n}\n'


def base_repo(tmp_path: Path, files: dict[str, str] | None = None) -> tuple[Path, str]:
    repo = make_repo(
        tmp_path / "repo",
        files
        or {
            "README.md": "# sample\n",
            "app/settings.py": "import os\n\nDEBUG = False\n",
            "package-lock.json": LOCK_BASE,
        },
    )
    return repo, git(repo, "rev-parse", "HEAD")


def write(repo: Path, rel: str, text: str) -> None:
    target = repo / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def where(flags: tuple[ev.Flag, ...]) -> set[tuple[str, str, int]]:
    return {(f.rule, f.path, f.line) for f in flags}


def key_workflow_and_lock(repo: Path) -> None:
    """The diff of the issue: an AWS-style key, a new workflow, a changed lock file."""
    write(repo, "app/settings.py", f'import os\n\nDEBUG = False\nAWS_ACCESS_KEY_ID = "{AWS_KEY}"\n')
    write(repo, ".github/workflows/ci.yml", WORKFLOW)
    write(repo, "package-lock.json", LOCK_BASE.replace('"": {"name": "app"}', '"node_modules/left-pad": {}'))


# -- the rules on real diffs -------------------------------------------------------------------------------------
def test_a_key_a_workflow_and_a_lock_file_are_each_flagged_with_file_and_line(tmp_path: Path) -> None:
    repo, base = base_repo(tmp_path)
    key_workflow_and_lock(repo)
    diff = compute_diff(repo, base)
    flags = FlagScanner().scan(diff, root=repo)
    assert where(flags) >= {
        ("secret.aws-key", "app/settings.py", 4),
        ("ci.github", ".github/workflows/ci.yml", 1),
        ("deps.npm", "package-lock.json", 5),
    }
    assert {f.rule for f in flags} == {"secret.aws-key", "ci.github", "deps.npm"}, [describe(f) for f in flags]
    key = next(f for f in flags if f.rule == "secret.aws-key")
    assert key.severity == "high" and key.message == "an AWS access key id"
    # each flag leads to its line of the diff text (what the zoom jumps to)
    lines = diff.text.split("\n")
    assert AWS_KEY in lines[diff_line(diff.text, key)]
    at = diff_line(diff.text, next(f for f in flags if f.rule == "deps.npm"))  # the file's first changed line
    assert at is not None and lines[at] == '-    "": {"name": "app"}' and "left-pad" in lines[at + 1]
    assert describe(key) == "high  app/settings.py:4  an AWS access key id (secret.aws-key)"


def test_secrets_of_every_shape_are_flagged_and_plain_code_is_not(tmp_path: Path) -> None:
    repo, base = base_repo(tmp_path)
    lines = [
        "import os",  # 1
        'name = "a perfectly ordinary string"',  # 2
        "-----BEGIN OPENSSH PRIVATE KEY-----",  # 3
        'token = "ghp_' + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8" + '"',  # 4
        'OPENAI_API_KEY = "sk-proj-' + "Zq3" * 15 + '"',  # 5
        'SLACK = "xoxb-' + "1234567890-abcdefghij" + '"',  # 6
        'db_password = "Tr0ub4dor&3x!9q"',  # 7
        'SALT = "Zx81kPq0LmN2vB7cXa9sDf3G"',  # 8
        'url = "postgres://admin:s3cretpw@db.internal/app"',  # 9
        'commit = "0123456789abcdef0123456789abcdef01234567"',  # 10: a hash is no secret
        "value = compute(x, y)  # an ordinary line",  # 11
    ]
    write(repo, "app/keys.py", "\n".join(lines) + "\n")
    flags = FlagScanner().scan(compute_diff(repo, base), root=repo)
    assert where(flags) == {
        ("secret.private-key", "app/keys.py", 3),
        ("secret.github-token", "app/keys.py", 4),
        ("secret.api-key", "app/keys.py", 5),
        ("secret.slack-token", "app/keys.py", 6),
        ("secret.assignment", "app/keys.py", 7),
        ("secret.high-entropy", "app/keys.py", 8),
        ("secret.url-password", "app/keys.py", 9),
    }, [describe(f) for f in flags]


def test_a_secret_that_is_removed_is_no_flag_and_lock_file_hashes_are_no_secret(tmp_path: Path) -> None:
    repo, base = base_repo(tmp_path, {"app/settings.py": f'KEY = "{AWS_KEY}"\n', "README.md": "# x\n"})
    write(repo, "app/settings.py", 'KEY = os.environ["KEY"]\n')
    integrity = "sha512-" + "Zx81kPq0LmN2vB7cXa9sDf3GZx81kPq0LmN2vB7cXa9sDf3G"
    write(repo, "yarn.lock", f'left-pad@1.3.0:\n  integrity "{integrity}"\n  checksum: "{integrity[7:]}"\n')
    flags = FlagScanner().scan(compute_diff(repo, base), root=repo)
    assert where(flags) == {("deps.npm", "yarn.lock", 1)}


def test_permission_changes_are_flagged(tmp_path: Path) -> None:
    repo, base = base_repo(tmp_path, {"scripts/build.sh": "#!/bin/sh\necho build\n", "README.md": "# x\n"})
    os.chmod(repo / "scripts/build.sh", 0o755)  # an existing file made executable: "old mode / new mode"
    write(repo, "scripts/setup.sh", "#!/bin/sh\ncurl -fsSL https://get.example.com | sh\nsudo make install\n")
    os.chmod(repo / "scripts/setup.sh", 0o755)  # a new executable file (an untracked one)
    write(repo, "README.md", "# x\n\nInstall: `chmod +x scripts/setup.sh`\n")
    diff = compute_diff(repo, base)
    assert "old mode 100644\nnew mode 100755" in diff.text and "new file mode 100755" in diff.text
    flags = FlagScanner().scan(diff, root=repo)
    assert where(flags) == {
        ("perms.exec-bit", "scripts/build.sh", 0),
        ("perms.exec-bit", "scripts/setup.sh", 0),
        ("perms.curl-pipe-sh", "scripts/setup.sh", 2),
        ("perms.sudo", "scripts/setup.sh", 3),
        ("perms.chmod", "README.md", 3),
    }, [describe(f) for f in flags]
    made = next(f for f in flags if f.path == "scripts/build.sh")
    new = next(f for f in flags if f.rule == "perms.exec-bit" and f.path == "scripts/setup.sh")
    assert "100755" in made.message and new.message == "a new executable file"


@pytest.mark.parametrize(
    ("path", "rule"),
    [
        (".gitlab-ci.yml", "ci.gitlab"),
        ("Makefile", "ci.make"),
        ("tools/rules.mk", "ci.make"),
        (".pre-commit-config.yaml", "ci.pre-commit"),
        (".husky/pre-commit", "ci.hooks"),
        (".gitmodules", "ci.gitmodules"),
        ("requirements-dev.txt", "deps.pip"),
        ("services/api/pyproject.toml", "deps.pip"),
        ("Cargo.lock", "deps.cargo"),
        ("go.sum", "deps.go"),
        ("web/package.json", "deps.npm"),
    ],
)
def test_ci_automation_and_manifests_are_flagged_by_path(tmp_path: Path, path: str, rule: str) -> None:
    repo, base = base_repo(tmp_path, {"README.md": "# x\n"})
    write(repo, path, "first line\nsecond line\n")
    flags = FlagScanner().scan(compute_diff(repo, base), root=repo)
    assert where(flags) == {(rule, path, 1)}


def test_large_deletions_deleted_binary_and_large_files_are_flagged(tmp_path: Path) -> None:
    long = "".join(f"line {i}\n" for i in range(1, 301))
    repo, base = base_repo(tmp_path, {"src/long.py": long, "src/old.py": "a\nb\n", "README.md": "# x\n"})
    write(repo, "src/long.py", "".join(f"line {i}\n" for i in range(1, 51)))  # lines 51..300 removed
    (repo / "src/old.py").unlink()
    (repo / "assets").mkdir()
    (repo / "assets/logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(range(256)))
    write(repo, "data/big.csv", "a,b\n" * 400)  # 1,600 bytes: large against a threshold of 1,000
    flags = FlagScanner(large_deletion=200, large_file=1000).scan(compute_diff(repo, base), root=repo)
    assert where(flags) == {
        ("deletion.lines", "src/long.py", 51),
        ("deletion.file", "src/old.py", 1),
        ("file.binary", "assets/logo.png", 0),
        ("file.large", "data/big.csv", 1),
    }, [describe(f) for f in flags]
    by_rule = {f.rule: f for f in flags}
    assert "250 lines removed" in by_rule["deletion.lines"].message
    assert "1.6 kB" in by_rule["file.large"].message
    # below the thresholds nothing of that is flagged
    calm = FlagScanner(large_deletion=251, large_file=2000).scan(compute_diff(repo, base), root=repo)
    assert {f.rule for f in calm} == {"deletion.file", "file.binary"}


def test_files_outside_the_paths_the_task_names_are_flagged(tmp_path: Path) -> None:
    files = {"src/parser.py": "def parse():\n    pass\n", "tests/test_parser.py": "", "README.md": "# x\n"}
    repo, base = base_repo(tmp_path, files)
    write(repo, "src/parser.py", "def parse():\n    return 1\n")
    write(repo, "tests/test_parser.py", "def test_parse():\n    assert True\n")
    write(repo, "Makefile", "test:\n\tpytest\n")
    diff = compute_diff(repo, base)
    task = "Fix parse() in src/parser.py (and/or its callers), like Node.js does; add a test in tests/."
    assert task_paths(task, [f.path for f in diff.files], repo) == ("src/parser.py", "tests/")
    flags = FlagScanner().scan(diff, task=task, root=repo)
    assert where(flags) == {("scope.outside", "Makefile", 1), ("ci.make", "Makefile", 1)}
    outside = next(f for f in flags if f.rule == "scope.outside")
    assert outside.message == "outside the paths the task names (src/parser.py, tests/)"
    # a task that names no path flags nothing as outside; a file named by its name alone is inside
    assert {f.rule for f in FlagScanner().scan(diff, task="Make the parser faster", root=repo)} == {"ci.make"}
    named = FlagScanner().scan(diff, task="Fix parser.py and its tests/test_parser.py", root=repo)
    assert where(named) == {("scope.outside", "Makefile", 1), ("ci.make", "Makefile", 1)}


def test_a_diff_cut_short_still_flags_what_its_file_list_shows(tmp_path: Path) -> None:
    repo, base = base_repo(tmp_path, {"README.md": "# x\n"})
    write(repo, "a_big.txt", "".join(f"row {i}\n" for i in range(2000)))
    write(repo, "b/package.json", '{"name": "b"}\n')
    diff = compute_diff(repo, base, max_bytes=4000)
    assert diff.truncated and "b/package.json" not in diff.text
    flags = FlagScanner().scan(diff, root=repo)
    cut = next(f for f in flags if f.rule == "scan.truncated")
    assert where(flags) == {("scan.truncated", "a_big.txt", cut.line), ("deps.npm", "b/package.json", 0)}
    # the flag sits on the last line the text holds, and says what it does not reach
    assert 1 < cut.line < 2000 and diff.text.rstrip("\n").endswith(f"+row {cut.line - 1}")
    assert cut.message.endswith("(1 more file not reached)")


# -- incremental ----------------------------------------------------------------------------------------------------
def test_only_the_files_whose_patch_changed_are_scanned_again(tmp_path: Path) -> None:
    repo, base = base_repo(tmp_path)
    key_workflow_and_lock(repo)
    write(repo, "docs/notes.md", "notes\n")
    scanner = FlagScanner()
    first = scanner.scan(compute_diff(repo, base), root=repo)
    assert scanner.rescanned == 4
    assert scanner.scan(compute_diff(repo, base), root=repo) == first and scanner.rescanned == 0
    write(repo, "app/settings.py", 'import os\n\nDEBUG = True\nAWS_ACCESS_KEY_ID = os.environ["AWS_KEY"]\n')
    after = scanner.scan(compute_diff(repo, base), root=repo)
    assert scanner.rescanned == 1
    assert where(after) == where(first) - {("secret.aws-key", "app/settings.py", 4)}
    # a fresh scanner finds the same: the kept results are not stale
    assert FlagScanner().scan(compute_diff(repo, base), root=repo) == after


# -- rules from the config ------------------------------------------------------------------------------------------
def test_a_team_adds_rules_and_turns_built_in_ones_off_in_config(tmp_path: Path) -> None:
    text = (
        "[flags]\n"
        "large_deletion = 5\n"
        'disable = ["deps", "perms.sudo"]\n'
        "[[flags.rules]]\n"
        'id = "team.todo"\n'
        'message = "a TODO left in"\n'
        'severity = "low"\n'
        "pattern = '\\bTODO\\b'\n"
        'paths = ["*.py"]\n'
        "[[flags.rules]]\n"
        'id = "team.migrations"\n'
        'paths = ["db/migrations/"]\n'
    )
    cfg = parse_config(text, "mc.toml")
    assert cfg.flags.rules[0] == FlagRuleConfig(
        id="team.todo", message="a TODO left in", severity="low", pattern="\\bTODO\\b", paths=["*.py"]
    )
    repo, base = base_repo(tmp_path, {"app/main.py": "x = 1\n", "notes.txt": "x\n", "README.md": "# x\n"})
    write(repo, "app/main.py", "x = 1\n# TODO: handle errors\n")
    write(repo, "notes.txt", "x\nTODO: not python\n")
    write(repo, "db/migrations/0002_users.sql", "ALTER TABLE users ADD age int;\n")
    write(repo, "package.json", '{"name": "app"}\n')
    write(repo, "install.sh", "sudo true\n")
    scanner = scanner_for(cfg.flags)
    assert scanner is not None
    flags = scanner.scan(compute_diff(repo, base), root=repo)
    assert where(flags) == {("team.todo", "app/main.py", 2), ("team.migrations", "db/migrations/0002_users.sql", 1)}
    todo = next(f for f in flags if f.rule == "team.todo")
    assert (todo.severity, todo.message) == ("low", "a TODO left in")
    assert next(f for f in flags if f.rule == "team.migrations").message == "team.migrations"
    assert scanner_for(FlagsConfig(enabled=False)) is None
    # [flags] entropy is the bar of secret.high-entropy (this value has 4.6 bits per character)
    write(repo, "app/main.py", 'x = 1\nSALT = "Zx81kPq0LmN2vB7cXa9sDf3G"\n')
    assert "secret.high-entropy" in {f.rule for f in scanner_for(FlagsConfig()).scan(compute_diff(repo, base))}
    strict = scanner_for(FlagsConfig(entropy=4.7))
    assert "secret.high-entropy" not in {f.rule for f in strict.scan(compute_diff(repo, base))}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[flags]\nlarge_deletion = 0\n", "mc.toml:2: [flags] large_deletion = 0: must be from 1 to"),
        ('[flags]\ndisable = ["depz"]\n', "mc.toml:2: [flags] disable = ['depz']: no built-in rule 'depz'"),
        ("[flags]\nentropy = 9.0\n", "mc.toml:2: [flags] entropy = 9.0: must be more than 0 and at most 8"),
        ("[[flags.rules]]\nid = \"x\"\npattern = '(unclosed'\n", "mc.toml:3: [[flags.rules]] #1 pattern = '(unclosed'"),
        ('[[flags.rules]]\nid = "x"\nseverity = "urgent"\npaths = ["a"]\n', "must be one of high, medium, low"),
        (
            '[[flags.rules]]\nmessage = "m"\npaths = ["a"]\n',
            "mc.toml:1: [[flags.rules]] #1 is missing required key 'id'",
        ),
        ('[[flags.rules]]\nid = "x"\n', "mc.toml:1: [[flags.rules]] 'x' has neither pattern nor paths"),
        (
            '[[flags.rules]]\nid = "x"\npaths = ["a"]\n[[flags.rules]]\nid = "x"\npaths = ["b"]\n',
            "mc.toml:5: [[flags.rules]] id = 'x' is used twice",
        ),
        (
            '[[flags.rules]]\nid = "x"\npaths = ["a"]\nwhen = "always"\n',
            "mc.toml:4: unknown key [[flags.rules]] #1 when",
        ),
        ("[flags]\nrules = 3\n", "mc.toml:2: [flags] rules must be an array of tables"),
    ],
)
def test_bad_flags_config_is_one_line_naming_file_line_and_key(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "mc.toml")
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_the_example_config_documents_every_flags_option_and_rule() -> None:
    cfg = load_config(EXAMPLE)
    text = EXAMPLE.read_text()
    for f in dataclasses.fields(FlagsConfig):
        assert f"{f.name} =" in text or f".{f.name}]]" in text, f.name
    for f in dataclasses.fields(FlagRuleConfig):
        assert f"\n{f.name} =" in text, f.name
    for rule in RULES:
        assert rule.id in text, rule.id
    assert cfg.flags.rules and scanner_for(cfg.flags) is not None


# -- the event, the reducer and what views read ------------------------------------------------------------------
def test_flags_round_trip_through_the_log_the_checkpoint_and_the_snapshot() -> None:
    flags = (
        ev.Flag("secret.aws-key", "high", "app/settings.py", 4, "an AWS access key id"),
        ev.Flag("perms.exec-bit", "medium", "run.sh", 0, "made executable"),
    )
    event = ev.FlagsChanged(agent="a1", flags=flags)
    back = ev.event_from_dict(json.loads(json.dumps(event.to_dict())))
    assert back == event and isinstance(back.flags[0], ev.Flag)
    # a field a newer version adds is dropped, not fatal
    data = event.to_dict()
    data["flags"][0]["column"] = 7
    assert ev.event_from_dict(data).flags == flags
    agent = replay("a1", [ev.AgentCreated(agent="a1", name="a1", task="t", runner="builtin"), event])
    assert agent.flags == flags
    assert Agent.from_snapshot(json.loads(json.dumps(agent.to_snapshot()))).flags == flags
    assert agent_from_dict(json.loads(json.dumps(agent_to_dict(agent)))).flags == flags
    agent.apply(ev.FlagsChanged(agent="a1", flags=()))
    assert agent.flags == ()


def test_the_flags_module_stays_below_the_fleet_and_the_ui() -> None:
    import mc.flags

    tree = ast.parse(Path(mc.flags.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m.split(".")[0] == "textual" or m.startswith(("mc.fleet", "mc.tui", "mc.git"))}


# -- the fleet -------------------------------------------------------------------------------------------------------
def write_turn(path: str, content: str) -> dict[str, Any]:
    return {"say": "Writing.", "tool": "write_file", "args": {"path": path, "content": content}}


async def test_the_fleet_flags_an_agents_diff_once_per_change_of_the_set_and_ls_shows_them(
    tmp_path: Path, scripted: Any, fleet_factory: Any
) -> None:
    from tests.test_fleet import wait_for

    repo, _ = base_repo(tmp_path)
    lock = LOCK_BASE.replace('"": {"name": "app"}', '"node_modules/left-pad": {}')
    settings = f'import os\n\nDEBUG = False\nAWS_ACCESS_KEY_ID = "{AWS_KEY}"\n'
    turns = [
        write_turn("app/settings.py", settings),
        write_turn(".github/workflows/ci.yml", WORKFLOW),
        write_turn("package-lock.json", lock),
        {"say": "Done."},
    ]
    server = scripted({"agents": [{"name": "risky", "turns": turns}]})
    config = tmp_path / "missionctl.toml"
    config.write_text(
        f'[repo]\npath = "{repo}"\nworktree_dir = "{tmp_path / "wt"}"\n'
        f'[model]\nbase_url = "{server.base_url}"\napi_key_env = ""\ntimeout = 10.0\n'
        '[[agents]]\nname = "risky"\ntask = "Add the settings"\nmodel = "risky"\npolicy = "never"\n'
    )
    fleet = await fleet_factory(load_config(config))
    events: list[ev.Event] = []
    fleet.add_listener(lambda e: events.append(e) if isinstance(e, ev.FlagsChanged) else None)
    await fleet.spawn_configured()
    assert await fleet.wait_settled(30)
    expected = {
        ("secret.aws-key", "app/settings.py", 4),
        ("ci.github", ".github/workflows/ci.yml", 1),
        ("deps.npm", "package-lock.json", 5),
    }
    # the turn's end asks for a diff and the diff for a scan: no one has to ask for the flags
    await wait_for(lambda: where(fleet.get("risky").flags) == expected, what="the flags of the turn's diff")
    flags = fleet.get("risky").flags
    assert events and events[-1].flags == flags
    count = len(events)

    worktree = Path(fleet.get("risky").worktree)
    write(worktree, "README.md", "# sample, reworded\n")  # a new diff with the same flags: no event
    diff = await fleet.refresh_diff("risky")
    assert "reworded" in diff.text
    assert await fleet.wait_flags("risky") == flags and len(events) == count
    write(worktree, "app/settings.py", 'import os\n\nDEBUG = False\nAWS_ACCESS_KEY_ID = os.environ["AWS_KEY"]\n')
    await fleet.refresh_diff("risky")
    assert where(await fleet.wait_flags("risky")) == expected - {("secret.aws-key", "app/settings.py", 4)}
    assert len(events) == count + 1
    await fleet.close()

    # the log keeps them: the agent comes back with its flags, and `ls --json` shows them
    logged = [e for e in fleet.store.read_events("risky")[0] if isinstance(e, ev.FlagsChanged)]
    assert [e.flags for e in logged] == [e.flags for e in events]
    shown = subprocess.run(
        [sys.executable, "-m", "mc", "ls", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    row = next(r for r in json.loads(shown.stdout) if r["name"] == "risky")
    assert {(f["rule"], f["path"], f["line"]) for f in row["flags"]} == where(fleet.get("risky").flags)
    assert all(set(f) == {"rule", "severity", "path", "line", "message"} for f in row["flags"])
