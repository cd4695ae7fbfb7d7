"""Best of N: one task given to several agents at once (copies, a mix of runners or models), one group that
the compare view shows side by side; the engineer merges one and discards the others (snapshots kept).

Real repositories, the real scripted model server, the real Fleet, the real app through Pilot, and the real
fleet server process driven by `missionctl spawn --copies`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mc.config import AgentConfig, ConfigError, parse_config
from tests.conftest import fleet_config, git

SCENARIO: dict[str, Any] = {
    "tokens_per_second": 0,
    "first_byte_delay": 0,
    "agents": [
        {
            "name": "fixer",
            "turns": [
                {"say": "Fixing.", "tool": "write_file", "args": {"path": "fix.txt", "content": "fixed\n"}},
                {"say": "Fixed."},
            ],
        },
        {
            "name": "slow",
            "turns": [{"say": "Thinking.", "tool": "shell", "args": {"command": "sleep 60"}}, {"say": "Done."}],
        },
        {
            "name": "rewriter",
            "turns": [
                {
                    "say": "Rewriting.",
                    "tool": "write_file",
                    "args": {"path": "fix.txt", "content": "rewritten\nin two lines\n"},
                },
                {"say": "Rewritten."},
            ],
        },
    ],
}


@pytest.fixture
def server(scripted: Any) -> Any:
    return scripted(SCENARIO)


def best_of(name: str = "fix", copies: int = 3, **fields: Any) -> AgentConfig:
    return AgentConfig(name=name, task="Fix the bug.", model="fixer", policy="never", copies=copies, **fields)


pytestmark = pytest.mark.timeout(90)


# -- config ------------------------------------------------------------------------------------------
def test_copies_runners_and_models_parse() -> None:
    cfg = parse_config(
        '[[agents]]\nname = "fix"\ntask = "Fix it."\ncopies = 3\n'
        '[[agents]]\nname = "mix"\ntask = "Fix it."\nrunners = ["builtin", "codex"]\n'
        '[[agents]]\nname = "models"\ntask = "Fix it."\nmodels = ["a", "b", "c", "d"]\n'
        '[[agents]]\nname = "pairs"\ntask = "Fix it."\nrunners = ["builtin", "claude"]\nmodels = ["a", "b"]\n'
        '[[agents]]\nname = "one"\ntask = "Fix it."\n',
        "x.toml",
    )
    fix, mix, models, pairs, one = cfg.agents
    assert fix.copies == 3 and fix.copy_plan() == [("builtin", ""), ("builtin", ""), ("builtin", "")]
    assert mix.copy_plan() == [("builtin", ""), ("codex", "")]
    assert models.copy_plan() == [("builtin", m) for m in "abcd"]
    assert pairs.copy_plan() == [("builtin", "a"), ("claude", "b")]
    assert one.copy_plan() == [("builtin", "")] and not one.is_group()
    assert fix.is_group() and mix.is_group()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("copies = 0\n", "x.toml:4: [[agents]] #1 copies = 0: must be from 1 to 32"),
        ("copies = 33\n", "x.toml:4: [[agents]] #1 copies = 33: must be from 1 to 32"),
        ('copies = "3"\n', "x.toml:4: [[agents]] #1 copies = '3': must be a whole number"),
        ('runners = "codex"\n', "x.toml:4: [[agents]] #1 runners = 'codex': must be a list of strings"),
        ('runners = ["builtin", "gemini"]\n', "x.toml:4: [[agents]] #1 runners = ['builtin', 'gemini']: 'gemini' is"),
        ('models = ["a", ""]\n', "x.toml:4: [[agents]] #1 models = ['a', '']: an empty model name"),
        (
            'runners = ["builtin", "codex"]\nmodels = ["a", "b", "c"]\n',
            "x.toml:5: [[agents]] 'fix' models = ['a', 'b', 'c']: 3 models for 2 runners",
        ),
        ('copies = 3\nmodels = ["a", "b"]\n', "x.toml:4: [[agents]] 'fix' copies = 3: models names 2"),
        ("copies = 2\nreuse_branch = true\n", "x.toml:5: [[agents]] 'fix' reuse_branch = true: each copy works on"),
        ('runners = ["builtin", "command"]\n', "x.toml:4: [[agents]] 'fix' runners = ['builtin', 'command']: "),
    ],
)
def test_bad_copies_give_one_line(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f'[[agents]]\nname = "fix"\ntask = "Fix it."\n{text}', "x.toml")
    message = str(info.value)
    assert expected in message, message
    assert "\n" not in message


def test_a_copy_name_clashes_with_another_agent() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            '[[agents]]\nname = "fix"\ntask = "t"\ncopies = 2\n[[agents]]\nname = "fix-2"\ntask = "t"\n', "x.toml"
        )
    assert "x.toml:6: [[agents]] name = 'fix-2' is the name of a copy of 'fix'" in str(info.value)


def test_a_copy_name_too_long_for_a_branch() -> None:
    name = "n" * 63
    with pytest.raises(ConfigError) as info:
        parse_config(f'[[agents]]\nname = "{name}"\ntask = "t"\ncopies = 12\n', "x.toml")
    assert f"its copies are named {name}-1 … {name}-12" in str(info.value)
    assert "longer than 64 characters" in str(info.value)


def test_a_cost_budget_needs_the_price_of_every_model_of_the_mix() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            '[prices]\na = { input = 1, output = 2 }\n[[agents]]\nname = "fix"\ntask = "t"\n'
            'models = ["a", "b"]\nbudget_cost = 1.0\n',
            "x.toml",
        )
    assert 'no price is known for its model "b"' in str(info.value)


def test_the_example_config_documents_every_agent_option() -> None:
    from dataclasses import fields

    from mc.config import AgentConfig, load_config

    for example in (Path(__file__).resolve().parent.parent / "config.example.toml", Path("mc/config.example.toml")):
        path = example if example.is_absolute() else Path(__file__).resolve().parent.parent / example
        text = path.read_text()
        for f in fields(AgentConfig):
            assert f"{f.name} =" in text or f"[agents.{f.name}]" in text, f.name
        best = next(a for a in load_config(path).agents if a.is_group())
        assert best.copy_count() == 3


# -- fleet -------------------------------------------------------------------------------------------
async def test_spawn_copies_makes_one_group_of_agents_on_their_own_branches(
    repo: Path, server: Any, fleet_factory: Any
) -> None:
    fleet = await fleet_factory(fleet_config(repo, server))
    agents = await fleet.spawn_copies(best_of())
    assert [a.name for a in agents] == ["fix-1", "fix-2", "fix-3"]
    assert {a.group for a in agents} == {"fix"}
    assert len({a.branch for a in agents}) == 3 and len({a.worktree for a in agents}) == 3
    assert await fleet.wait_settled(timeout=30)
    await fleet.refresh_diffs()
    for agent in agents:
        assert agent.status == "idle", agent.error
        assert (Path(agent.worktree) / "fix.txt").read_text() == "fixed\n"
        assert git(repo, "rev-parse", "--verify", f"refs/heads/{agent.branch}")
        assert agent.files_changed == 1
    # the group's totals (mc/cost.py) count the three together
    from mc import cost

    assert cost.group_totals(fleet.list(), fleet.config)["fix"].agents == 3


async def test_copies_take_names_and_a_group_nobody_has(repo: Path, server: Any, fleet_factory: Any) -> None:
    git(repo, "branch", "mc/fix-2")  # a branch of that name exists already: that copy is numbered past it
    fleet = await fleet_factory(fleet_config(repo, server))
    first = await fleet.spawn_copies(best_of(copies=2))
    assert [a.name for a in first] == ["fix-1", "fix-3"]
    again = await fleet.spawn_copies(best_of(copies=2))
    assert [a.name for a in again] == ["fix-4", "fix-5"]
    assert {a.group for a in first} == {"fix"} and {a.group for a in again} == {"fix#2"}
    assert await fleet.wait_settled(timeout=30)


async def test_a_mix_of_models_gives_each_copy_its_model(repo: Path, server: Any, fleet_factory: Any) -> None:
    fleet = await fleet_factory(fleet_config(repo, server))
    spec = AgentConfig(name="pick", task="Fix the bug.", policy="never", models=["fixer", "rewriter"])
    agents = await fleet.spawn_copies(spec)
    assert [(a.name, a.model) for a in agents] == [("pick-1", "fixer"), ("pick-2", "rewriter")]
    assert await fleet.wait_settled(timeout=30)
    assert (Path(agents[1].worktree) / "fix.txt").read_text() == "rewritten\nin two lines\n"


async def test_bad_copies_are_refused_by_the_fleet_in_the_configs_words(
    repo: Path, server: Any, fleet_factory: Any
) -> None:
    from mc.fleet import FleetError

    fleet = await fleet_factory(fleet_config(repo, server))
    with pytest.raises(FleetError) as info:
        await fleet.spawn_copies(best_of(copies=0))
    assert str(info.value).startswith("agent 'fix': copies = 0: must be from 1 to 32")
    with pytest.raises(FleetError) as info:
        await fleet.spawn_copies(AgentConfig(name="fix", task="t", runners=["builtin", "gemini"]))
    assert "'gemini' is not a runner: use builtin, codex, acp, claude or command" in str(info.value)
    assert not fleet.agents


async def test_configured_copies_are_spawned_once(repo: Path, server: Any, fleet_factory: Any) -> None:
    cfg = fleet_config(repo, server, [best_of(copies=2), AgentConfig(name="solo", task="t", model="fixer")])
    fleet = await fleet_factory(cfg)
    spawned = await fleet.spawn_configured()
    assert [a.name for a in spawned] == ["fix-1", "fix-2", "solo"]
    assert await fleet.wait_settled(timeout=30)
    assert await fleet.spawn_configured() == []  # a second run starts nothing new
    assert sorted(fleet.agents) == ["fix-1", "fix-2", "solo"]


# -- the fleet server ------------------------------------------------------------------------------
async def test_missionctl_spawn_copies_through_the_real_server(repo: Path, server: Any) -> None:
    from mc.client import FleetClient, socket_of
    from tests.test_server import missionctl, write_config

    write_config(repo, server)
    args = ("spawn", "--name", "fix", "--task", "Fix the bug.", "--model", "fixer", "--policy", "never")
    done = missionctl(repo, *args, "--copies", "2")
    assert done.returncode == 0, done.stderr
    lines = [line.split(": ", 1) for line in done.stdout.splitlines()]
    assert [name for name, _ in lines] == ["fix-1", "fix-2"]
    assert [said.split(" ", 1)[1] for _, said in lines] == ["on mc/fix-1 (group fix)", "on mc/fix-2 (group fix)"]
    refused = missionctl(repo, *args, "--copies", "0")
    assert refused.returncode == 1
    assert refused.stderr.strip() == "missionctl: agent 'fix': copies = 0: must be from 1 to 32 (agents at once)"
    mixed = missionctl(repo, "spawn", "--name", "mix", "--task", "t", "--models", "fixer,rewriter", "--policy", "never")
    assert mixed.returncode == 0, mixed.stderr
    assert [line.split(":")[0] for line in mixed.stdout.splitlines()] == ["mix-1", "mix-2"]

    client = FleetClient(socket_of(repo / ".mc"), reconnect=False)
    await client.connect(follow=False)
    try:
        agents = {a.name: a for a in client.list()}
        assert {a.group for n, a in agents.items() if n.startswith("fix")} == {"fix"}
        assert agents["fix-1"].branch != agents["fix-2"].branch
        assert agents["fix-1"].worktree != agents["fix-2"].worktree
        assert (agents["mix-1"].model, agents["mix-2"].model) == ("fixer", "rewriter")
    finally:
        await client.close()
    assert missionctl(repo, "stop").returncode == 0


# -- the compare view ----------------------------------------------------------------------------------
def make_app(repo: Path, server: Any, agents: list[AgentConfig]) -> Any:
    from mc.fleet import Fleet
    from mc.tui.app import MissionControl
    from tests.tui_helpers import tui_config

    cfg = tui_config(repo, server, agents)
    cfg.tools.sandbox = "none"
    return MissionControl(Fleet(cfg), spawn_configured=True)


async def wait_group(pilot: Any, app: Any, names: list[str], *, idle: list[str]) -> None:
    from tests.tui_helpers import until

    await until(pilot, lambda: app.opened and sorted(app.fleet.agents) == names, 30, "the copies to spawn")

    def ready() -> bool:
        agents = app.fleet.agents
        return all(agents[n].status == "idle" and agents[n].files_changed == 1 for n in idle)

    await until(pilot, ready, 30, "the copies to finish their work")
    await pilot.pause(0.4)


async def test_compare_view_moves_zooms_merges_one_and_discards_the_others(repo: Path, server: Any) -> None:
    from mc.tui.compare import CompareScreen
    from mc.tui.screens import ConfirmScreen, HelpScreen, MergeScreen, ZoomScreen
    from tests.tui_helpers import screen_text, until

    spec = AgentConfig(name="fix", task="Fix the bug.", policy="never", models=["fixer", "rewriter", "fixer"])
    app = make_app(repo, server, [spec])
    names = ["fix-1", "fix-2", "fix-3"]
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_group(pilot, app, names, idle=names)
        await pilot.press("b")
        await until(pilot, lambda: isinstance(app.screen, CompareScreen), what="the compare view")
        compare = app.screen
        assert compare.group == "fix" and app.current_id() == "fix-1"
        text = "\n".join(screen_text(app))
        for word in ("best of 3", "1 fix-1", "2 fix-2", "3 fix-3", "status", "checks", "flags", "files", "lines"):
            assert word in text, word
        for word in ("tokens", "cost", "time", "fixer", "rewriter", "+2 -0", "fix.txt"):
            assert word in text, word

        await pilot.press("right")
        assert compare.selected == "fix-2" and app.current_id() == "fix-2"
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ZoomScreen), what="the zoom")
        assert app.screen.agent_id == "fix-2"
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is compare, what="back to the compare view")

        await pilot.press("m")
        await until(pilot, lambda: isinstance(app.screen, MergeScreen), what="the merge dialog")
        assert app.screen.agent.name == "fix-2"
        await pilot.press("f")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the offer to discard the others")
        question = app.screen.question
        assert "fix-2 is merged" in question and "fix-1, fix-3" in question and "snapshot" in question
        await pilot.press("y")
        agents = app.fleet.agents
        await until(
            pilot,
            lambda: agents["fix-1"].status == agents["fix-3"].status == "discarded",
            what="the others to be discarded",
        )
        assert agents["fix-2"].status == "merged"
        assert (repo / "fix.txt").read_text() == "rewritten\nin two lines\n"
        refs = git(repo, "for-each-ref", "--format=%(refname)", "refs/mc/snapshots/").splitlines()
        kept = sorted(ref.rsplit("/", 1)[1].rsplit("-", 2)[0] for ref in refs)
        assert kept == ["fix-1", "fix-3"]
        for name in ("fix-1", "fix-3"):
            ref = agents[name].snapshot_ref
            assert ref in refs
            assert git(repo, "show", f"{ref}:fix.txt") == "fixed"
            assert not Path(agents[name].worktree).exists()
        await pilot.pause(0.3)
        assert app.screen is compare  # still there, showing how it ended
        assert "merged" in "\n".join(screen_text(app)) and "discarded" in "\n".join(screen_text(app))

        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), what="the help")
        rows = {binding_id: keys for binding_id, keys, _ in app.help_rows()}
        assert rows["compare"] == "b"
        assert "compare" in "\n".join(screen_text(app))


async def test_space_opens_the_compare_view_once_every_copy_has_settled(repo: Path, server: Any) -> None:
    from mc.tui.compare import CompareScreen
    from mc.tui.screens import FleetScreen
    from tests.tui_helpers import until

    spec = AgentConfig(name="try", task="Fix the bug.", policy="never", models=["fixer", "slow"])
    app = make_app(repo, server, [spec])
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_group(pilot, app, ["try-1", "try-2"], idle=["try-1"])
        slow = app.fleet.agents["try-2"]
        await until(pilot, lambda: "sleep 60" in str(slow.tool_calls), what="the slow copy's command")
        assert slow.status == "running"
        await pilot.press("space")  # one copy still works: the group is no decision yet
        await pilot.pause(0.2)
        assert isinstance(app.screen, FleetScreen)
        assert "nobody is waiting for a decision" in [n.message for n in app._notifications]

        await app.fleet.kill("try-2")
        await until(pilot, lambda: slow.status == "killed", what="the kill")
        await pilot.press("space")
        await until(pilot, lambda: isinstance(app.screen, CompareScreen), what="the compare view")
        assert app.screen.group == "try"
        await pilot.press("space")  # the only decision there is: it stays, and says so
        await pilot.pause(0.2)
        assert isinstance(app.screen, CompareScreen)
        assert any("pick one of try" in n.message for n in app._notifications)
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, FleetScreen), what="back to the fleet")


async def test_the_new_agent_dialog_starts_copies(repo: Path, server: Any) -> None:
    from mc.tui.screens import NewAgentScreen
    from tests.tui_helpers import until

    app = make_app(repo, server, [])
    async with app.run_test(size=(140, 40)) as pilot:
        await until(pilot, lambda: app.opened, what="the fleet to open")
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, NewAgentScreen), what="the dialog")
        dialog = app.screen
        dialog.query_one("#name").value = "pair"
        dialog.query_one("#task").value = "Fix the bug."
        dialog.query_one("#model").value = "fixer"
        dialog.query_one("#copies").value = "40"
        await pilot.click("#start")
        await pilot.pause(0.2)
        assert app.screen is dialog  # refused, in the config's words, with what was typed kept
        assert any("copies = 40: must be from 1 to 32" in n.message for n in app._notifications)
        dialog.query_one("#copies").value = "2"
        await pilot.click("#start")
        await until(pilot, lambda: sorted(app.fleet.agents) == ["pair-1", "pair-2"], what="the copies")
        assert {a.group for a in app.fleet.list()} == {"pair"}
        assert await app.fleet.wait_settled(timeout=30)


# -- the demo ------------------------------------------------------------------------------------------
async def test_the_demo_has_a_best_of_3_group_whose_checks_differ(tmp_path: Path) -> None:
    from mc.demo import DEMO_AGENTS, start_demo
    from mc.fleet import Fleet

    demo = start_demo(tmp_path / "demo")
    fleet = Fleet(demo.config)
    await fleet.open()
    try:
        agents = await fleet.spawn_copies(next(a for a in DEMO_AGENTS if a.name == "demo-pick"))
        assert [a.name for a in agents] == ["demo-pick-1", "demo-pick-2", "demo-pick-3"]
        assert await fleet.wait_settled(120)
        summaries = [(await fleet.wait_checks(a.id)).summary() for a in agents]
        assert summaries[0] == "✓ 2 passed" and summaries[2] == "✓ 3 passed"
        assert agents[1].check.state == "failed"
        assert [a.files_changed for a in agents] == [1, 1, 2]
        from mc import cost

        assert cost.group_totals(fleet.list(), fleet.config)["demo-pick"].cost is not None  # priced
    finally:
        await fleet.close()
        demo.stop()
