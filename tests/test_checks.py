"""Checks: the tests an agent's diff touches, run in its worktree. Real repositories made here, real pytest runs,
real grimp (and ast) import graphs, the real Fleet against the scripted model server; nothing is mocked."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from mc import events as ev
from mc import procs
from mc.agent import Agent, CheckState
from mc.checks import changed_paths, plan_check, run_check, runs_pytest, select_tests
from mc.checks.results import parse_junit, parse_output, parse_text
from mc.config import AgentConfig, ChecksConfig, ConfigError, ToolsConfig, load_config, parse_config
from mc.fleet import FleetError
from mc.tools import safe_env
from mc.tools.commands import sandbox_available
from tests.conftest import fleet_config, git, make_repo

PYTEST = f"{sys.executable} -m pytest -q"
EXAMPLE = Path(__file__).resolve().parent.parent / "mc" / "config.example.toml"

#: A package with a module imported directly by one test and through another module by a second, a module no
#: test imports, and a test of its own.
APP = {
    "app/__init__.py": "",
    "app/text.py": "def shout(s):\n    return s.upper() + '!'\n",
    "app/api.py": "from app.text import shout\n\n\ndef greet(name):\n    return shout('hi ' + name)\n",
    "app/util.py": "def strip(s):\n    return s.strip()\n",
    "app/cli.py": "import app.util\n",
    "tests/test_text.py": "from app.text import shout\n\n\ndef test_shout():\n    assert shout('a') == 'A!'\n",
    "tests/test_api.py": "from app.api import greet\n\n\ndef test_greet():\n    assert greet('bo') == 'HI BO!'\n",
    "tests/test_util.py": "from app.util import strip\n\n\ndef test_strip():\n    assert strip(' a ') == 'a'\n",
    "README.md": "# app\n",
    ".gitignore": "__pycache__/\n",
}


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


async def wait_for(predicate: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------------------------- config


def test_every_checks_option_is_documented_in_the_example() -> None:
    cfg = load_config(EXAMPLE)
    text = EXAMPLE.read_text()
    assert "[checks]" in text and "[agents.checks]" in text
    for f in fields(cfg.checks):
        assert f"\n{f.name} =" in text.split("[checks]", 1)[1], f.name
    assert any(a.checks for a in cfg.agents)  # an [agents.checks] override is shown, and valid


def test_an_agents_checks_override_the_fleets_key_by_key() -> None:
    cfg = parse_config(
        '[checks]\ntest = "pytest -q"\ntimeout = 30\n'
        '[[agents]]\nname = "a"\ntask = "t"\n[agents.checks]\non = "manual"\n'
        '[[agents]]\nname = "b"\ntask = "t"\n',
        "x.toml",
    )
    a, b = cfg.agents
    assert cfg.agent_checks(a) == ChecksConfig(test="pytest -q", on="manual", timeout=30.0)
    assert cfg.agent_checks(b) == ChecksConfig(test="pytest -q", on="idle", timeout=30.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[checks]\non = "always"\n', "x.toml:2: [checks] on = 'always': must be one of idle, merge, manual"),
        ('[checks]\naffected = "jest {file}"\n', "{file} is not a placeholder: use {files}, {tests} or {packages}"),
        ("[checks]\ntimeout = 0\n", "x.toml:2: [checks] timeout = 0: must be more than 0"),
        ("[checks]\nparallel = -1\n", "[checks] parallel = -1: must be from 0"),
        ('[[agents]]\nname = "a"\ntask = "t"\n[agents.checks]\nparallel = 2\n', "it is for the whole fleet"),
        ('[[agents]]\nname = "a"\ntask = "t"\n[agents.checks]\ntests = "x"\n', "x.toml:5: unknown key"),
        ('[[agents]]\nname = "a"\ntask = "t"\nchecks = "pytest"\n', "checks must be a table"),
    ],
)
def test_bad_checks_config_gives_one_line(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "x.toml")
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_shell_variables_in_affected_are_not_placeholders() -> None:
    cfg = parse_config('[checks]\ntest = "go test ./..."\naffected = "go test ${GOFLAGS} {packages}"\n')
    assert cfg.checks.affected == "go test ${GOFLAGS} {packages}"


# --------------------------------------------------------------------------------------------- events


def test_check_events_round_trip_and_fold_into_the_agent() -> None:
    started = ev.CheckStarted(
        agent="a",
        check_id="c1",
        command="pytest -q tests/test_text.py",
        scope="affected",
        why="1 test file touched by the diff",
        selected=("tests/test_text.py ← app/text.py",),
        digest="d1",
        trigger="idle",
    )
    finished = ev.CheckFinished(
        agent="a",
        check_id="c1",
        outcome="failed",
        passed=12,
        failed=2,
        total=14,
        failing=("tests/test_text.py::test_a", "tests/test_text.py::test_b"),
        duration=1.5,
        exit_code=1,
        output="/x/c1.log",
        digest="d1",
    )
    for event in (started, finished):
        assert ev.event_from_dict(json.loads(json.dumps(event.to_dict()))) == event
    agent = Agent(id="a")
    agent.apply(ev.DiffChanged(agent="a", digest="d1"))
    agent.apply(started)
    assert agent.check.state == "running" and agent.check.summary() == "… checking"
    agent.apply(finished)
    assert agent.check.summary() == "✗ 2 of 14 failed"
    assert not agent.check_stale
    assert any("tests/test_text.py ← app/text.py" in text for _, text in agent.log.lines)
    # a checkpoint keeps it
    again = Agent.from_snapshot(json.loads(json.dumps(agent.to_snapshot())))
    assert again.check == agent.check
    agent.apply(ev.DiffChanged(agent="a", digest="d2"))
    assert agent.check_stale
    assert CheckState().summary() == "— no checks"
    assert CheckState(state="passed", passed=12, total=12).summary() == "✓ 12 passed"


# --------------------------------------------------------------------------------------------- selection


@pytest.mark.parametrize("use_grimp", [True, False], ids=["grimp", "ast"])
def test_a_changed_module_selects_exactly_the_tests_that_import_it(tmp_path: Path, use_grimp: bool) -> None:
    root = make_repo(tmp_path / "repo", APP)
    sel = select_tests(root, ["app/text.py"], use_grimp=use_grimp)
    assert sel.lines() == ["tests/test_api.py ← app/api.py ← app/text.py", "tests/test_text.py ← app/text.py"]
    assert sel.engine.startswith("grimp ") if use_grimp else sel.engine == "ast"
    assert select_tests(root, ["app/util.py"], use_grimp=use_grimp).lines() == ["tests/test_util.py ← app/util.py"]
    # a changed test selects itself; a file nothing imports selects nothing, and says so
    assert select_tests(root, ["tests/test_api.py"], use_grimp=use_grimp).lines() == ["tests/test_api.py (changed)"]
    nothing = select_tests(root, ["README.md", "app/cli.py"], use_grimp=use_grimp)
    assert nothing.tests == [] and nothing.untouched == ["README.md", "app/cli.py"] and not nothing.full


@pytest.mark.parametrize("use_grimp", [True, False], ids=["grimp", "ast"])
def test_conftest_package_init_deleted_modules_and_config_files(tmp_path: Path, use_grimp: bool) -> None:
    files = {
        **APP,
        "tests/unit/conftest.py": "from app.util import strip\n",
        "tests/unit/test_loose.py": "from helpers import helper\n\n\ndef test_it():\n    assert helper() == 1\n",
        "tests/unit/helpers.py": "def helper():\n    return 1\n",
        "tests/test_gone.py": "from app.gone import thing\n",
        "top.py": "import app.text\n",
        "tests/test_top.py": "import top\n",
    }
    root = make_repo(tmp_path / "repo", files)
    # a conftest.py that imports the changed module brings every test under its folder
    assert select_tests(root, ["app/util.py"], use_grimp=use_grimp).lines() == [
        "tests/test_util.py ← app/util.py",
        "tests/unit/test_loose.py ← tests/unit/conftest.py ← app/util.py",
    ]
    # a sibling module imported by its bare name (pytest's rootdir import mode); a top-level module
    assert select_tests(root, ["tests/unit/helpers.py"], use_grimp=use_grimp).lines() == [
        "tests/unit/test_loose.py ← tests/unit/helpers.py"
    ]
    assert (
        "tests/test_top.py ← top.py ← app/text.py" in select_tests(root, ["app/text.py"], use_grimp=use_grimp).lines()
    )
    # a package's __init__.py runs before any of its modules: whatever imports the package is affected
    assert len(select_tests(root, ["app/__init__.py"], use_grimp=use_grimp).tests) == 6
    # a deleted module: the tests that still import it
    (root / "app" / "util.py").unlink()
    assert select_tests(root, [], ["app/gone.py"], use_grimp=use_grimp).lines() == ["tests/test_gone.py ← app/gone.py"]
    assert select_tests(root, ["pyproject.toml"], use_grimp=use_grimp).full == "pyproject.toml changed"


def test_a_syntax_error_falls_back_to_ast_and_says_so(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "repo", {**APP, "app/broken.py": "def (:\n"})
    sel = select_tests(root, ["app/text.py"])
    assert sel.engine == "ast"
    assert any("grimp could not build the import graph" in n for n in sel.notes)
    assert sel.lines() == ["tests/test_api.py ← app/api.py ← app/text.py", "tests/test_text.py ← app/text.py"]


async def test_the_graph_is_the_worktrees_even_where_an_installed_package_has_the_same_name(tmp_path: Path) -> None:
    # `mc` is installed (editable) in the interpreter that runs the selection; the worktree's own `mc` must win
    files = {
        "mc/__init__.py": "",
        "mc/core.py": "X = 1\n",
        "mc/extra.py": "from mc.core import X\n",
        "tests/test_core.py": "from mc.extra import X\n\n\ndef test_x():\n    assert X == 1\n",
    }
    root = make_repo(tmp_path / "repo", files)
    plan = await plan_check(ChecksConfig(test=PYTEST), root, ["mc/core.py"], tag="mc-test-graph", env=safe_env([]))
    assert plan.selected == ("tests/test_core.py ← mc/extra.py ← mc/core.py",)
    assert plan.command == f"{PYTEST} tests/test_core.py" and plan.scope == "affected"


async def test_plans_for_other_ecosystems_and_nothing_to_narrow_by(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "repo", {**APP, "web/a b.test.js": "", "go/pkg/x.go": ""})
    env = safe_env([])

    async def plan(cfg: ChecksConfig, changed: list[str], deleted: list[str] | None = None) -> Any:
        return await plan_check(cfg, root, changed, deleted, tag="mc-test-plan", env=env)

    jest = ChecksConfig(test="npm test", affected="npx jest --findRelatedTests {files}")
    p = await plan(jest, ["web/a b.test.js", "web/gone.js"])  # a path that is gone is left out
    assert p.command == "npx jest --findRelatedTests 'web/a b.test.js'" and p.scope == "affected"
    go = ChecksConfig(test="go test ./...", affected="go test {packages}")
    assert (await plan(go, ["go/pkg/x.go", "README.md"])).command == "go test . ./go/pkg"
    assert (await plan(ChecksConfig(test="npm test"), ["web/a b.test.js"])).command == "npm test"
    assert (await plan(ChecksConfig(test=PYTEST), [])).scope == "full"  # no changes: everything
    assert (await plan(ChecksConfig(test=PYTEST), ["setup.cfg"])).why == "setup.cfg changed"
    testmon = await plan(ChecksConfig(test=f"{PYTEST} --testmon"), ["app/text.py"])
    assert testmon.command == f"{PYTEST} --testmon" and "testmon" in testmon.why
    none = await plan(ChecksConfig(test=PYTEST), ["README.md"])
    assert none.command == "" and none.scope == "none" and "README.md" in none.why
    assert (await plan(ChecksConfig(), ["app/text.py"])).scope == "none"
    assert runs_pytest("python -m pytest -q") == (True, True)
    assert runs_pytest("cd x && pytest") == (True, False)
    assert runs_pytest("npm test") == (False, False)


def test_renames_count_their_old_path_as_deleted() -> None:
    files = (ev.FileStat(path="app/new.py", status="R"), ev.FileStat(path="app/old2.py", status="D"))
    text = "diff --git a/app/old.py b/app/new.py\nsimilarity index 90%\nrename from app/old.py\nrename to app/new.py\n"
    assert changed_paths(files, text) == (["app/new.py"], ["app/old2.py", "app/old.py"])


# --------------------------------------------------------------------------------------------- results

FAILING = {
    **APP,
    "tests/test_more.py": (
        "import pytest\n\n\n"
        "def test_ok():\n    pass\n\n\n"
        "def test_wrong():\n    assert 1 + 1 == 3, 'arithmetic'\n\n\n"
        "@pytest.mark.skip(reason='later')\ndef test_later():\n    pass\n\n\n"
        "class TestGroup:\n    def test_method(self):\n        raise ValueError('boom')\n\n\n"
        "@pytest.fixture\ndef broken():\n    raise RuntimeError('no fixture')\n\n\n"
        "def test_uses_broken(broken):\n    pass\n\n\n"
        "@pytest.mark.parametrize('word', ['a b', 'c'])\ndef test_param(word):\n    assert word == 'c'\n"
    ),
}
FAILING_NAMES = {
    "tests/test_more.py::test_wrong",
    "tests/test_more.py::TestGroup::test_method",
    "tests/test_more.py::test_uses_broken",
    "tests/test_more.py::test_param[a b]",
}


@pytest.mark.parametrize("junit", [True, False], ids=["junit", "text"])
async def test_pytests_real_output_gives_counts_and_failing_names(tmp_path: Path, junit: bool) -> None:
    root = make_repo(tmp_path / "repo", FAILING)
    # `&& true` makes it a compound command: no JUnit report is asked for, the text is read
    test = f"{PYTEST} tests/test_more.py" + ("" if junit else " -rfE && true")
    cfg = ChecksConfig(test=test)
    plan = await plan_check(cfg, root, [], tag="mc-test-results", env=safe_env([]))
    assert plan.pytest is junit
    out = tmp_path / "out" / "check.log"
    report = await run_check(
        plan, root, tools=ToolsConfig(), timeout=120, env=safe_env([]), tag="mc-test-results", output=out
    )
    c = report.counts
    assert report.outcome == "failed" and report.exit_code == 1
    assert (c.passed, c.failed, c.errors, c.skipped, c.total) == (2, 3, 1, 1, 7)
    assert set(c.failing) == FAILING_NAMES
    assert "AssertionError: arithmetic" in report.failures and "ValueError: boom" in report.failures
    kept = out.read_text()
    assert kept.startswith(f"$ {test}\n") and "3 failed, 2 passed, 1 skipped, 1 error" in kept
    assert "\nmc-check-junit-" not in kept and "PD94bWwg" not in kept  # the report's marker and base64 stay out
    assert git(root, "status", "--porcelain") == ""  # the check left nothing in the worktree


def test_parsers_of_other_runners_and_a_collection_error() -> None:
    jest = parse_text("FAIL src/a.test.js\n  ● maths › adds\n\nTests:       1 failed, 3 passed, 4 total\n")
    assert (jest.passed, jest.failed, jest.failing) == (3, 1, ("maths › adds",))
    vitest = parse_text(" FAIL  src/a.test.ts > adds\n Tests  1 failed | 3 passed (4)\n")
    assert (vitest.passed, vitest.failed, vitest.failing) == (3, 1, ("src/a.test.ts > adds",))
    go = parse_text("=== RUN   TestA\n--- PASS: TestA (0.00s)\n--- FAIL: TestB (0.00s)\nFAIL\tx/y\t0.01s\n")
    assert (go.passed, go.failed, go.failing) == (1, 1, ("TestB",))
    plain = parse_text("suite: 5 passed, 2 failed\n")
    assert (plain.passed, plain.failed) == (5, 2)
    assert parse_text("no tests ran in 0.01s\n").no_tests
    report = (
        '<?xml version="1.0"?><testsuites><testsuite errors="1" failures="0" tests="1">'
        '<testcase classname="" name="tests.test_bad" file="tests/test_bad.py">'
        '<error message="collection failure">ImportError: no module named nothere</error></testcase>'
        "</testsuite></testsuites>"
    )
    junit = parse_junit(report)
    assert junit is not None and (junit.errors, junit.failing) == (1, ("tests/test_bad.py",))
    assert "nothere" in junit.failures[0][1]
    assert parse_output("garbage", "<not xml").counted is False


async def test_a_check_that_runs_too_long_is_killed_with_its_processes(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "repo", APP)
    cfg = ChecksConfig(test="sleep 30 & sleep 30; echo never")
    plan = await plan_check(cfg, root, [], tag="mc-test-timeout", env=safe_env([]))
    report = await run_check(plan, root, tools=ToolsConfig(), timeout=1.0, env=safe_env([]), tag="mc-test-timeout")
    assert report.outcome == "error" and report.reason == "timed out after 1 s"
    for _ in range(250):  # a killed sandbox's processes may take a moment to go on a busy machine
        if not procs.find_tagged("mc-test-timeout"):
            break
        await asyncio.sleep(0.02)
    assert procs.find_tagged("mc-test-timeout") == []


@pytest.mark.skipif(not sandbox_available()[0], reason="bubblewrap is not usable here")
async def test_a_check_runs_in_the_sandbox_of_the_agents_commands(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    files = {**APP, "tests/test_escape.py": f"def test_escape():\n    open({str(outside)!r}, 'w').write('x')\n"}
    root = make_repo(tmp_path / "repo", files)
    plan = await plan_check(ChecksConfig(test=PYTEST), root, ["tests/test_escape.py"], tag="mc-t", env=safe_env([]))
    sandboxed = await run_check(
        plan, root, tools=ToolsConfig(sandbox="bwrap"), timeout=120, env=safe_env([]), tag="mc-t"
    )
    # the sandbox's /tmp is its own: what the test wrote outside the worktree never reached this machine's
    assert sandboxed.outcome == "passed" and not outside.exists()
    unconfined = await run_check(
        plan, root, tools=ToolsConfig(sandbox="none"), timeout=120, env=safe_env([]), tag="mc-t"
    )
    assert unconfined.outcome == "passed" and outside.exists()


# --------------------------------------------------------------------------------------------- the fleet


def write_turn(path: str, content: str, say: str = "Writing.") -> dict[str, Any]:
    return {"say": say, "tool": "write_file", "args": {"path": path, "content": content}}


BROKEN_TEXT = "def shout(s):\n    return s.upper() + '?'\n"
FIXED_TEXT = "def shout(s):\n    return s.upper() + '!'\n"


def checks_config(repo: Path, server: Any, agents: list[AgentConfig], **checks: Any) -> Any:
    cfg = fleet_config(repo, server, agents)
    cfg.checks = ChecksConfig(test=PYTEST, **checks)
    return cfg


async def test_a_turn_that_changes_the_diff_runs_the_tests_it_touches(repo_app: Path, scripted, fleet_factory) -> None:
    server = scripted(
        {
            "agents": [
                {
                    "name": "a",
                    "turns": [
                        write_turn("app/util.py", "def strip(s):\n    return s.strip(' ')\n"),
                        {"say": "Done."},
                        {"say": "Nothing to change."},
                    ],
                }
            ]
        }
    )
    agent_cfg = AgentConfig(name="a", task="tidy strip", model="a", policy="never")
    fleet = await fleet_factory(checks_config(repo_app, server, [agent_cfg]))
    await fleet.spawn_configured()
    assert await fleet.wait_settled(30)
    await wait_for(lambda: fleet.get("a").check.state not in ("none", "running"), what="the check after the turn")
    check = await fleet.wait_checks("a")
    assert check.state == "passed" and check.trigger == "idle"
    assert (check.passed, check.failed, check.total) == (1, 0, 1)
    assert check.selected == ("tests/test_util.py ← app/util.py",)
    assert check.command == f"{PYTEST} tests/test_util.py"
    assert Path(check.output).is_file() and "1 passed" in Path(check.output).read_text()
    assert not fleet.get("a").check_stale
    # a turn that leaves the diff as it was checks nothing again
    first = check.check_id
    await fleet.redirect("a", "anything else?")
    assert await fleet.wait_settled(30)
    await fleet.wait_checks("a")
    assert fleet.get("a").check.check_id == first
    # the result is an event in the agent's log, like every other
    logged = [e for e in fleet.store.iter_events(fleet.get("a").id) if isinstance(e, ev.CheckFinished)]
    assert [e.outcome for e in logged] == ["passed"]


@pytest.fixture
def repo_app(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", APP)


async def test_fix_checks_sends_the_failing_tests_back_to_the_model(repo_app: Path, scripted, fleet_factory) -> None:
    server = scripted(
        {
            "agents": [
                {
                    "name": "b",
                    "turns": [
                        write_turn("app/text.py", BROKEN_TEXT),
                        {"say": "Done."},
                        write_turn("app/text.py", FIXED_TEXT, say="Fixing."),
                        {"say": "Fixed."},
                    ],
                }
            ]
        }
    )
    agent_cfg = AgentConfig(name="b", task="change the shout", model="b", policy="never")
    fleet = await fleet_factory(checks_config(repo_app, server, [agent_cfg], on="manual"))
    await fleet.spawn_configured()
    assert await fleet.wait_settled(30)
    assert fleet.get("b").check.state == "none"  # on = "manual": nothing ran by itself
    with pytest.raises(FleetError, match="did not fail"):
        await fleet.fix_checks("b")
    await fleet.run_checks("b")
    check = await fleet.wait_checks("b")
    assert check.state == "failed" and check.summary() == "✗ 2 of 2 failed"
    assert set(check.failing) == {"tests/test_api.py::test_greet", "tests/test_text.py::test_shout"}
    text = await fleet.fix_checks("b")
    assert text.startswith("These tests fail: tests/test_api.py::test_greet, tests/test_text.py::test_shout; fix")
    assert await fleet.wait_settled(30)
    sent = server.requests_for("b")[-2].user_texts()[-1]  # the request that answered the redirect
    assert sent == text
    assert "assert 'A?' == 'A!'" in sent and "tests/test_text.py" in sent
    assert (Path(fleet.get("b").worktree) / "app" / "text.py").read_text() == FIXED_TEXT
    await fleet.run_checks("b")
    assert (await fleet.wait_checks("b")).state == "passed"


async def test_a_check_is_stale_once_the_diff_changes(repo_app: Path, scripted, fleet_factory) -> None:
    server = scripted({"agents": [{"name": "s", "turns": [write_turn("app/text.py", BROKEN_TEXT), {"say": "Ok."}]}]})
    agent_cfg = AgentConfig(name="s", task="t", model="s", policy="never")
    fleet = await fleet_factory(checks_config(repo_app, server, [agent_cfg], on="manual"))
    await fleet.spawn_configured()
    assert await fleet.wait_settled(30)
    await fleet.run_checks("s")
    await fleet.wait_checks("s")
    agent = fleet.get("s")
    assert agent.check.state == "failed" and not agent.check_stale
    # the same counts (one line changed in the same file), another text: still a new diff
    (Path(agent.worktree) / "app" / "text.py").write_text("def shout(s):\n    return s.upper() + '.'\n")
    await fleet.refresh_diff("s")
    assert agent.files_changed == 1 and (agent.lines_added, agent.lines_removed) == (1, 1)
    assert agent.check_stale
    await fleet.run_checks("s")
    await fleet.wait_checks("s")
    assert not agent.check_stale and agent.check.state == "failed"


async def test_at_most_n_checks_run_at_once_across_the_fleet(repo_app: Path, scripted, fleet_factory) -> None:
    names = [f"p{i}" for i in range(5)]
    server = scripted(
        {"agents": [{"name": n, "turns": [write_turn(f"app/{n}.py", "X = 1\n"), {"say": "Ok."}]} for n in names]}
    )
    agents = [AgentConfig(name=n, task="t", model=n, policy="never") for n in names]
    cfg = fleet_config(repo_app, server, agents)
    # each check prints when it starts and ends (from the clock of this one machine)
    probe = "import time; print('start', time.time()); time.sleep(0.4); print('end', time.time())"
    cfg.checks = ChecksConfig(test=f"{sys.executable} -c {probe!r}", on="manual", parallel=2)
    fleet = await fleet_factory(cfg)
    await fleet.spawn_configured()
    assert await fleet.wait_settled(30)
    for n in names:
        await fleet.run_checks(n)
    for n in names:
        assert (await fleet.wait_checks(n)).state == "passed"  # exit code 0, no counts to read
    spans = []
    for n in names:
        words = Path(fleet.get(n).check.output).read_text().split()
        spans.append((float(words[words.index("start") + 1]), float(words[words.index("end") + 1])))
    most = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert most <= 2 and fleet.checks.peak == 2


async def test_kill_stops_the_check_and_a_restart_ends_one_that_was_running(
    repo_app: Path, scripted, fleet_factory
) -> None:
    server = scripted({"agents": [{"name": "k", "turns": [write_turn("app/k.py", "X = 1\n"), {"say": "Ok."}]}]})
    agent_cfg = AgentConfig(name="k", task="t", model="k", policy="never")
    cfg = fleet_config(repo_app, server, [agent_cfg])
    cfg.checks = ChecksConfig(test="echo started; sleep 60", on="manual")
    fleet = await fleet_factory(cfg)
    await fleet.spawn_configured()
    assert await fleet.wait_settled(30)
    await fleet.run_checks("k")
    await wait_for(lambda: procs.find_tagged(fleet._tag("k")), what="the check's process")
    await fleet.close()
    assert procs.find_tagged(fleet._tag("k")) == []
    again = await fleet_factory(cfg)
    check = again.get("k").check
    assert check.state == "error" and check.reason.startswith("stopped: mission control was closed")
    await again.run_checks("k")
    await wait_for(lambda: procs.find_tagged(again._tag("k")), what="the check's process")
    await again.kill("k")
    assert again.get("k").check.reason == "stopped: the agent was killed"
    assert procs.find_tagged(again._tag("k")) == []


async def test_on_merge_a_failing_check_stops_the_merge(repo_app: Path, scripted, fleet_factory) -> None:
    server = scripted({"agents": [{"name": "m", "turns": [write_turn("app/text.py", BROKEN_TEXT), {"say": "Ok."}]}]})
    agent_cfg = AgentConfig(name="m", task="t", model="m", policy="never")
    fleet = await fleet_factory(checks_config(repo_app, server, [agent_cfg], on="merge"))
    await fleet.spawn_configured()
    assert await fleet.wait_settled(30)
    assert fleet.get("m").check.state == "none"
    before = git(repo_app, "rev-parse", "main")
    with pytest.raises(FleetError, match=r"merge of m stopped, nothing changed: its checks 2 of 2 failed"):
        await fleet.merge("m")
    assert git(repo_app, "rev-parse", "main") == before and fleet.get("m").status == "idle"
    assert fleet.get("m").check.trigger == "merge"
    (Path(fleet.get("m").worktree) / "app" / "text.py").write_text(FIXED_TEXT + "# fixed\n")
    result = await fleet.merge("m")
    assert result.ok and fleet.get("m").status == "merged"


async def test_ls_json_shows_the_check(repo_app: Path, scripted, fleet_factory, tmp_path: Path) -> None:
    server = scripted({"agents": [{"name": "l", "turns": [write_turn("app/text.py", BROKEN_TEXT), {"say": "Ok."}]}]})
    agent_cfg = AgentConfig(name="l", task="t", model="l", policy="never")
    cfg = checks_config(repo_app, server, [agent_cfg], on="manual")
    fleet = await fleet_factory(cfg)
    await fleet.spawn_configured()
    assert await fleet.wait_settled(30)
    await fleet.run_checks("l")
    await fleet.wait_checks("l")
    await fleet.close()
    config = tmp_path / "missionctl.toml"
    config.write_text(
        f'[repo]\npath = "{repo_app}"\nworktree_dir = "{repo_app.parent / "worktrees"}"\n[checks]\ntest = "{PYTEST}"\n'
    )
    out = subprocess.run(
        [sys.executable, "-m", "mc", "ls", "--json", "--config", str(config)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    check = json.loads(out.stdout)[0]["check"]
    assert check["state"] == "failed" and check["summary"] == "✗ 2 of 2 failed" and check["stale"] is False
    assert set(check["failing"]) == {"tests/test_api.py::test_greet", "tests/test_text.py::test_shout"}
    assert (check["passed"], check["failed"], check["total"]) == (0, 2, 2)
    table = subprocess.run([sys.executable, "-m", "mc", "ls", "--config", str(config)], capture_output=True, text=True)
    header, row = table.stdout.splitlines()[:2]
    assert "CHECKS" in header and "✗ 2 of 2 failed" in row


async def test_a_turn_that_leaves_the_diff_as_it_was_does_not_stop_its_running_check(
    repo_app: Path, scripted, fleet_factory
) -> None:
    server = scripted(
        {"agents": [{"name": "r", "turns": [write_turn("app/r.py", "X = 1\n"), {"say": "Ok."}, {"say": "Still ok."}]}]}
    )
    agent_cfg = AgentConfig(name="r", task="t", model="r", policy="never")
    cfg = fleet_config(repo_app, server, [agent_cfg])
    cfg.checks = ChecksConfig(test="echo checking; sleep 3; echo '1 passed, 0 failed'")
    fleet = await fleet_factory(cfg)
    await fleet.spawn_configured()
    assert await fleet.wait_settled(30)
    await wait_for(lambda: fleet.get("r").check.state == "running", what="the check after the first turn")
    first = fleet.get("r").check.check_id
    await fleet.redirect("r", "anything else?")  # a turn that changes nothing
    assert await fleet.wait_settled(30)
    check = await fleet.wait_checks("r")
    assert (check.check_id, check.state, check.passed) == (first, "passed", 1)


async def test_a_check_runs_below_mission_controls_own_priority(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "repo", APP)
    probe = "import os; print('niceness', os.nice(0))"
    plan = await plan_check(ChecksConfig(test=f"{sys.executable} -c {probe!r}"), root, [], tag="mc-t", env=safe_env([]))
    out = tmp_path / "check.log"
    report = await run_check(plan, root, tools=ToolsConfig(), timeout=60, env=safe_env([]), tag="mc-t", output=out)
    assert report.outcome == "passed"
    assert f"niceness {min(os.nice(0) + 10, 19)}\n" in out.read_text()


async def test_an_agents_own_checks_hold_after_a_restart(repo_app: Path, scripted, fleet_factory) -> None:
    server = scripted({"agents": [{"name": "o", "turns": [write_turn("app/o.py", "X = 1\n"), {"say": "Ok."}]}]})
    agent_cfg = AgentConfig(name="o", task="t", model="o", policy="never", checks={"test": "echo '3 passed, 0 failed'"})
    cfg = checks_config(repo_app, server, [agent_cfg], on="manual")
    fleet = await fleet_factory(cfg)
    await fleet.spawn_configured()
    assert await fleet.wait_settled(30)
    await fleet.close()
    again = await fleet_factory(cfg)
    await again.run_checks("o")
    check = await again.wait_checks("o")
    assert (check.command, check.state, check.passed) == ("echo '3 passed, 0 failed'", "passed", 3)


def test_unittests_real_output_gives_counts_and_failing_names(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "app/__init__.py": "",
            "app/text.py": "def shout(s):\n    return s\n",
            "tests/__init__.py": "",
            "tests/test_t.py": (
                "import unittest\nfrom app.text import shout\n\n\nclass T(unittest.TestCase):\n"
                "    def test_a(self):\n        self.assertEqual(shout('a'), 'A')\n\n"
                "    def test_b(self):\n        pass\n\n"
                "    @unittest.skip('later')\n    def test_s(self):\n        pass\n\n"
                "    def test_c(self):\n        raise ValueError('broken on purpose')\n"
            ),
            "tests/test_bad.py": "import unittest\nfrom app.text import nope\n",
        },
    )
    run = subprocess.run(
        [sys.executable, "-m", "unittest", "-q", "tests/test_t.py", "tests/test_bad.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    counts = parse_output(run.stdout + run.stderr)
    assert (counts.passed, counts.failed, counts.errors, counts.skipped, counts.total) == (1, 1, 2, 1, 5)
    assert set(counts.failing) == {"tests.test_t.T.test_a", "tests.test_t.T.test_c", "test_bad (failed to import)"}
    reports = dict(counts.failures)
    assert "AssertionError: 'a' != 'A'" in reports["tests.test_t.T.test_a"]
    assert "ValueError: broken on purpose" in reports["tests.test_t.T.test_c"]
    assert "cannot import name 'nope'" in reports["test_bad (failed to import)"]
    ok = subprocess.run(
        [sys.executable, "-m", "unittest", "-q", "tests/test_t.py", "-k", "test_b"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    passing = parse_output(ok.stdout + ok.stderr)
    assert (passing.passed, passing.total, passing.failing) == (1, 1, ())
