"""Config: typed, validated, and every error one line naming file, line, key and fix."""

from pathlib import Path

import pytest

from mc.config import (
    ConfigError,
    config_from_dict,
    find_config,
    load_config,
    parse_config,
    starter_config,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


def test_example_config_is_valid_and_complete() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.model.api in ("responses", "chat")
    assert {a.runner for a in cfg.agents} >= {"builtin"}
    # every option of every table appears in the example, so the example documents them all
    text = EXAMPLE.read_text()
    from dataclasses import fields

    for table in (cfg.repo, cfg.model, cfg.policy, cfg.tools, cfg.ui):
        for f in fields(table):
            assert f"{f.name} =" in text or f".{f.name}]" in text, f.name


def test_starter_config_round_trips() -> None:
    cfg = parse_config(starter_config(), "missionctl.toml")
    assert [a.name for a in cfg.agents] == ["tests", "docs"]
    assert cfg.agent_policy(cfg.agents[1]) == "commands"
    assert cfg.agent_policy(cfg.agents[0]) == "writes"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[policy]\napprove = "sometimes"\n', "x.toml:2: [policy] approve"),
        ("[repo]\npath = 3\n", "x.toml:2: [repo] path = 3: must be a string"),
        ('[[agents]]\ntask = "x"\n', "x.toml:1: [[agents]] #1 is missing required key 'name'"),
        ("[model]\nfoo = 1\n", "x.toml:2: unknown key [model] foo"),
        ("[model\n", "x.toml: TOML syntax error"),
        ('[[agents]]\nname = "a b"\ntask = "t"\n', "x.toml:2: [[agents]] name = 'a b'"),
        ('[[agents]]\nname = "a"\n[[agents]]\nname = "a"\n', "x.toml:4: [[agents]] name = 'a' is used twice"),
        ('[[agents]]\nname = "a"\nrunner = "command"\n', 'has runner = "command" but no command'),
        ('[model]\napi = "grpc"\n', "must be one of responses, chat"),
        ("[tools]\nmax_output = 1.5\n", "must be a whole number"),
        ("bogus = 1\n", "unknown table or key 'bogus'"),
    ],
)
def test_bad_configs_give_one_line(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "x.toml")
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_missing_file_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missionctl init"):
        load_config(tmp_path / "nope.toml")


def test_find_config_stops_at_repository_top(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "sub").mkdir()
    assert find_config(repo / "sub") is None
    (repo / "missionctl.toml").write_text("")
    assert find_config(repo / "sub") == repo / "missionctl.toml"


def test_agent_overrides() -> None:
    cfg = config_from_dict(
        {
            "model": {"model": "m1"},
            "policy": {"approve": "never"},
            "agents": [{"name": "a", "model": "m2"}, {"name": "b"}],
        }
    )
    assert cfg.agent_model(cfg.agents[0]) == "m2"
    assert cfg.agent_model(cfg.agents[1]) == "m1"
    assert cfg.agent_policy(cfg.agents[1]) == "never"
