"""The approval policy: which calls wait for the engineer."""

import pytest

from mc.agents.base import needs_approval

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
