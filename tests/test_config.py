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
            "agents": [{"name": "a", "task": "t", "model": "m2"}, {"name": "b", "task": "t"}],
        }
    )
    assert cfg.agent_model(cfg.agents[0]) == "m2"
    assert cfg.agent_model(cfg.agents[1]) == "m1"
    assert cfg.agent_policy(cfg.agents[1]) == "never"


#: (config text, the line the error must name, words the message must hold: the key, the value and the range)
BAD_VALUES = [
    ("[tools]\nshell_timeout = -5\n", 2, ("[tools] shell_timeout = -5", "more than 0", "at most 86400")),
    ("[tools]\nshell_timeout = nan\n", 2, ("[tools] shell_timeout = nan", "more than 0")),
    ("[tools]\nmax_output = -10\n", 2, ("[tools] max_output = -10", "from 100 to")),
    ("[model]\ntimeout = 0\n", 2, ("[model] timeout = 0", "more than 0")),
    ("[model]\ntimeout = inf\n", 2, ("[model] timeout = inf", "at most 86400")),
    ("[model]\nmax_retries = -1\n", 2, ("[model] max_retries = -1", "from 0 to 100")),
    ("[model]\nretry_backoff = -0.5\n", 2, ("[model] retry_backoff = -0.5", "from 0 to")),
    ("[model]\nretry_backoff = nan\n", 2, ("[model] retry_backoff = nan", "from 0 to")),
    ("[model]\nmax_retry_wait = -1\n", 2, ("[model] max_retry_wait = -1", "from 0 to")),
    ("[model]\ncall_timeout = 0\n", 2, ("[model] call_timeout = 0", "more than 0")),
    ('[model]\nbase_url = "127.0.0.1:8011/v1"\n', 2, ("[model] base_url = '127.0.0.1:8011/v1'", "http://")),
    ('[model]\nbase_url = "http:///v1"\n', 2, ("[model] base_url = 'http:///v1'", "host")),
    ('[model]\nbase_url = "ftp://example.com/v1"\n', 2, ("[model] base_url", "http://")),
    ('[model]\nbase_url = "http://localhost:99999/v1"\n', 2, ("[model] base_url", "port")),
    ('[model]\nbase_url = ""\n', 2, ("[model] base_url = ''", "http://")),
    ('[[agents]]\nname = "a"\ntask = ""\n', 3, ("[[agents]] 'a' task = ''", "say what the agent should do")),
    ('[[agents]]\nname = "a"\ntask = "  \\n "\n', 3, ("[[agents]] 'a' task", "say what the agent should do")),
    ('[[agents]]\nname = "a"\n', 1, ("[[agents]] 'a' has no task", 'add task = "')),
    ('[policy]\napprove = "commands"\nallow_commands = ["pytest", " "]\n', 3, ("[policy] allow_commands", "empty")),
    ('[tools]\npass_env = ["HOME", "A B"]\n', 2, ("[tools] pass_env", "'A B'", "environment variable")),
]


@pytest.mark.parametrize(("text", "line", "words"), BAD_VALUES)
def test_out_of_range_values_are_refused_with_file_line_key_and_range(
    text: str, line: int, words: tuple[str, ...]
) -> None:
    if "[[agents]]" not in text:
        text += '[[agents]]\nname = "a"\ntask = "t"\n'
    with pytest.raises(ConfigError) as info:
        parse_config(text, "x.toml")
    message = str(info.value)
    assert message.startswith(f"x.toml:{line}: "), message
    for word in words:
        assert word in message, (word, message)
    assert "\n" not in message


def test_edge_values_are_accepted() -> None:
    cfg = parse_config(
        "[model]\ntimeout = 0.1\nmax_retries = 0\nretry_backoff = 0\nmax_retry_wait = 0\ncall_timeout = 86400\n"
        'base_url = "http://[::1]:8011/v1"\n[tools]\nshell_timeout = 1\nmax_output = 100\n'
        '[[agents]]\nname = "a"\ntask = "t"\n',
        "x.toml",
    )
    assert (cfg.model.timeout, cfg.model.max_retries, cfg.model.max_retry_wait) == (0.1, 0, 0.0)
    assert (cfg.model.call_timeout, cfg.tools.shell_timeout, cfg.tools.max_output) == (86400.0, 1.0, 100)


def test_defaults_cap_the_wait_and_bound_a_call() -> None:
    cfg = parse_config("", "x.toml")
    assert 60 <= cfg.model.max_retry_wait <= 600  # a few minutes
    assert cfg.model.call_timeout > cfg.model.timeout
