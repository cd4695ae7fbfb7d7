"""The approval policy: which calls wait for the engineer."""

import pytest

from mc.agents.base import needs_approval, remember_key

ALLOW = ["python -m pytest", "git status"]


@pytest.mark.parametrize(
    ("policy", "kind", "command", "waits"),
    [
        ("always", "read", "", True),
        ("always", "write", "", True),
        ("writes", "read", "", False),
        ("writes", "write", "", True),
        ("writes", "command", "git status", True),
        ("commands", "write", "", False),
        ("commands", "command", "git status -s", False),
        ("commands", "command", "python -m pytest -q", False),
        ("commands", "command", "git status; rm -rf /", True),  # compound commands always ask
        ("commands", "command", "git statusx", True),  # whole words only
        ("commands", "command", "make", True),
        ("never", "command", "rm -rf build", False),
        ("sometimes", "read", "", True),  # an unknown policy asks
    ],
)
def test_policy(policy: str, kind: str, command: str, waits: bool) -> None:
    assert needs_approval(policy, kind, command, ALLOW) is waits


@pytest.mark.parametrize(
    ("kind", "command", "tool", "key"),
    [
        ("command", "git tag x", "", "command:git tag"),
        ("command", "git commit --allow-empty -m sneaky", "", "command:git commit"),
        ("command", "echo step > s1.txt", "", "command:echo step > s1.txt"),  # a redirection: only itself
        ("command", "pytest -q | tail -3", "", "command:pytest -q | tail -3"),
        ("command", "make test && rm -rf build", "", "command:make test && rm -rf build"),
        ("command", "cat $(ls)", "", "command:cat $(ls)"),
        ("write", "", "", "write"),
        ("read", "", "", "read"),
        ("read", "", "fetch", "tool:fetch"),  # a tool whose kind is not known is remembered by its name
    ],
)
def test_remember_key_is_the_one_rule_of_approve_all(kind: str, command: str, tool: str, key: str) -> None:
    assert remember_key(kind, command, tool) == key
