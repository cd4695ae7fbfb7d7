"""Best of N: one task given to several agents at once (copies, a mix of runners or models), one group that
the compare view shows side by side; the engineer merges one and discards the others (snapshots kept).

Real repositories, the real scripted model server, the real Fleet, the real app through Pilot, and the real
fleet server process driven by `missionctl spawn --copies`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mc.config import ConfigError, parse_config

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
