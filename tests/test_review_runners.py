"""A review reaches the agent whatever its runner: it is a redirect. A command agent (any CLI) gets it appended to
its task and its next run is marked; the real Claude Code CLI gets it as its next user message."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mc import review
from mc.config import AgentConfig
from tests.conftest import fleet_config
from tests.test_review import AFTER_REVIEW, FIRST, review_repo
from tests.test_runner_claude import BINARY, agent_config, spawn, until

pytestmark = pytest.mark.timeout(120)

NO_SERVER = SimpleNamespace(base_url="http://127.0.0.1:9/v1")  # a command agent never calls a model


async def test_a_command_agent_gets_the_review_and_its_next_run_is_marked(tmp_path: Path, fleet_factory: Any) -> None:
    repo = review_repo(tmp_path)
    runs = tmp_path / "runs.txt"
    first, after = tmp_path / "first.py", tmp_path / "after.py"
    first.write_text(FIRST)
    after.write_text(AFTER_REVIEW)
    program = tmp_path / "agent.py"
    program.write_text(
        textwrap.dedent(
            f"""
            import shutil, sys
            task = sys.argv[1]
            with open({str(runs)!r}, "a") as fh:
                fh.write(repr(task) + "\\n")
            source = {str(after)!r} if "Review of your changes" in task else {str(first)!r}
            shutil.copy(source, "app/values.py")
            print("wrote app/values.py", flush=True)
            """
        )
    )
    spec = AgentConfig(
        name="cmd", task="change values", runner="command", command=f"{sys.executable} {program} {{task}}"
    )
    fleet = await fleet_factory(fleet_config(repo, NO_SERVER, [spec]))
    await fleet.spawn_configured()
    assert await fleet.wait_settled(30)
    diff = await fleet.refresh_diff("cmd")
    for hunk, text in zip(review.hunks(diff.text), ("Keep 300.", "v25 must stay 25."), strict=True):
        line, quote = review.anchor(hunk)
        await fleet.add_comment("cmd", hunk.path, line, text, quote=quote, hunk=hunk.body, header=hunk.header)
    text = await fleet.send_review("cmd")
    assert await fleet.wait_settled(30)
    assert fleet.get("cmd").status == "idle"
    assert runs.read_text().splitlines()[-1] == repr("change values\n\n" + text)
    assert await fleet.wait_review("cmd") == {"c1": "unchanged", "c2": "changed"}


@pytest.mark.skipif(BINARY is None, reason="claude is not installed: run scripts/install-tools.sh")
async def test_claude_code_gets_the_review_as_its_next_message(
    repo: Path, serve_claude: Any, fleet_factory: Any
) -> None:
    server = serve_claude(
        {"name": "cl-review", "turns": [{"say": "Nothing to change."}, {"say": "Looked at the review."}]}
    )
    fleet, _ = await spawn(fleet_factory, repo, server, agent_config("cl-review", "Look at the code"))
    agent = fleet.get("cl-review")
    await until(lambda: agent.status in ("idle", "failed"), fleet)
    assert agent.status == "idle", agent.error
    await fleet.add_comment("cl-review", "app/main.py", 1, "Say hello instead.", quote=(" print('hi')",))
    text = await fleet.send_review("cl-review")
    await until(lambda: agent.status == "idle" and "Looked at the review." in str(agent.log.tail(50)), fleet)
    assert "app/main.py:1\n>  print('hi')\nSay hello instead." in text
    assert any(text in said for said in server.requests[-1].user_texts())
