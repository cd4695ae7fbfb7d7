"""Review comments on an agent's diff, end to end on the Fleet: real git worktrees, the real builtin runner
against the scripted server. Comments are anchored as path:line with their quoted lines, go to the model as one
instruction, survive a reopen of the fleet, and after the agent's next turn each says whether its hunk changed."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

from mc import review
from mc.config import AgentConfig
from mc.fleet import FleetError
from tests.conftest import fleet_config, make_repo

pytestmark = pytest.mark.timeout(90)

BASE = "".join(f"v{i:02d} = {i}\n" for i in range(1, 31))


def edited(**lines: str) -> str:
    """BASE with some of its lines replaced: edited(v03="v03 = 300")."""
    out = []
    for i in range(1, 31):
        key = f"v{i:02d}"
        out.append(lines.get(key, f"{key} = {i}") + "\n")
    return "".join(out)


FIRST = edited(v03="v03 = 300", v25="v25 = 2500")
AFTER_REVIEW = edited(v03="v03 = 300", v25="v25 = 25")  # hunk of v25 changes (back to the base), v03 stays

SCENARIO: dict[str, Any] = {
    "tokens_per_second": 0,
    "first_byte_delay": 0,
    "agents": [
        {
            "name": "reviewed",
            "turns": [
                {
                    "say": "Changing the values.",
                    "tool": "write_file",
                    "args": {"path": "app/values.py", "content": FIRST},
                },
                {"say": "Adding notes.", "tool": "write_file", "args": {"path": "notes.txt", "content": "one\ntwo\n"}},
                {"say": "Done."},
                {
                    "say": "Addressing the review.",
                    "tool": "write_file",
                    "args": {"path": "app/values.py", "content": AFTER_REVIEW},
                },
                {"say": "Review addressed."},
            ],
        }
    ],
}


def review_repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"README.md": "# sample\n", "app/values.py": BASE})


def review_config(repo: Path, server: Any) -> Any:
    agent = AgentConfig(name="reviewed", task="change values", model="reviewed", policy="never")
    return fleet_config(repo, server, [agent])


def user_texts(server: Any, agent: str) -> list[str]:
    requests = server.requests_for(agent)
    items = requests[-1].body.get("input", []) if requests else []
    return [str(i.get("content")) for i in items if isinstance(i, dict) and i.get("role") == "user"]


def git_diff(worktree: Path, base: str) -> str:
    """The worktree's diff as git itself writes it (tracked files)."""
    return subprocess.run(["git", "-C", str(worktree), "diff", base], check=True, capture_output=True, text=True).stdout


def test_a_git_diff_parses_into_files_and_hunks_anchored_at_new_lines(tmp_path: Path) -> None:
    repo = review_repo(tmp_path)
    (repo / "app" / "values.py").write_text(FIRST)
    text = git_diff(repo, "HEAD")
    files = review.parse(text)
    assert [f.path for f in files] == ["app/values.py"]
    first, second = files[0].hunks
    assert first.line == 3 and second.line == 25
    assert review.anchor(first) == (3, ("-v03 = 3", "+v03 = 300"))
    plus = first.body.index("+v03 = 300")
    assert review.anchor(first, plus) == (3, ("+v03 = 300",))
    # the indexes are those of the lines on screen (str.splitlines)
    lines = text.splitlines()
    assert lines[second.start] == second.header and lines[second.end - 1] == second.body[-1]


def test_a_hunk_is_unchanged_while_its_lines_stay_together_in_the_new_diff(tmp_path: Path) -> None:
    repo = review_repo(tmp_path)
    values = repo / "app" / "values.py"
    values.write_text(FIRST)
    before = review.hunks(git_diff(repo, "HEAD"))
    values.write_text(edited(v03="v03 = 300", v25="v25 = 25000", v27="v27 = 0"))
    after = git_diff(repo, "HEAD")
    assert not review.hunk_changed("app/values.py", before[0].body, after)
    assert review.hunk_changed("app/values.py", before[1].body, after)
    assert review.hunk_changed("other.py", before[0].body, after)


async def until(predicate: Any, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def comment_both_hunks(fleet: Any) -> tuple[str, str]:
    diff = await fleet.refresh_diff("reviewed")
    values = next(f for f in review.parse(diff.text) if f.path == "app/values.py")
    first, second = values.hunks
    line, quote = review.anchor(first)
    one = await fleet.add_comment(
        "reviewed", first.path, line, "Keep 300: it is right.", quote=quote, hunk=first.body, header=first.header
    )
    index = second.body.index("+v25 = 2500")
    line, quote = review.anchor(second, index)
    two = await fleet.add_comment(
        "reviewed", second.path, line, "v25 must stay 25.", quote=quote, hunk=second.body, header=second.header
    )
    return one, two


async def test_a_review_goes_to_the_model_and_marks_each_hunk_after_the_next_turn(
    tmp_path: Path, scripted: Any, fleet_factory: Any
) -> None:
    server = scripted(SCENARIO)
    repo = review_repo(tmp_path)
    cfg = review_config(repo, server)
    fleet = await fleet_factory(cfg)
    await fleet.spawn_configured()
    assert await fleet.wait_settled(20)
    one, two = await comment_both_hunks(fleet)
    assert [c.id for c in fleet.get("reviewed").comments] == [one, two] == ["c1", "c2"]

    text = await fleet.send_review("reviewed")
    assert await fleet.wait_settled(20)
    agent = fleet.get("reviewed")
    assert agent.status == "idle" and not agent.comments
    # the model got the review as one instruction, every comment under its path:line with its quoted lines
    sent = user_texts(server, "reviewed")[-1]
    assert sent == text
    assert "app/values.py:3\n> -v03 = 3\n> +v03 = 300\nKeep 300: it is right." in sent
    assert "app/values.py:25\n> +v25 = 2500\nv25 must stay 25." in sent
    assert any("Review addressed." in line for _, line in agent.log.lines)

    assert await fleet.wait_review("reviewed") == {"c1": "unchanged", "c2": "changed"}
    assert agent.review.review_id == "r1" and [c.id for c in agent.review.comments] == ["c1", "c2"]
    logged = [line for _, line in agent.log.lines]
    assert "✎ after the review: 1 commented hunk changed, 1 unchanged" in logged

    # a reopened fleet rebuilds the review from the log
    await fleet.close()
    again = await fleet_factory(cfg)
    back = again.get("reviewed")
    assert back.review.marks == {"c1": "unchanged", "c2": "changed"}
    assert [c.text for c in back.review.comments] == ["Keep 300: it is right.", "v25 must stay 25."]


async def test_unsent_comments_survive_a_reopen_and_one_can_be_deleted(
    tmp_path: Path, scripted: Any, fleet_factory: Any
) -> None:
    server = scripted(SCENARIO)
    repo = review_repo(tmp_path)
    cfg = review_config(repo, server)
    fleet = await fleet_factory(cfg)
    await fleet.spawn_configured()
    assert await fleet.wait_settled(20)
    await comment_both_hunks(fleet)
    await fleet.close()
    again = await fleet_factory(cfg)
    comments = again.get("reviewed").comments
    assert [(c.id, c.path, c.line) for c in comments] == [("c1", "app/values.py", 3), ("c2", "app/values.py", 25)]
    await again.remove_comment("reviewed", "c1")
    assert [c.id for c in again.get("reviewed").comments] == ["c2"]
    third = await again.add_comment("reviewed", "notes.txt", 1, "Drop this file.", quote=("+one",))
    assert third == "c3"  # ids are never reused, also after a deletion and a reopen


async def test_review_commands_refuse_bad_input_with_one_line(
    tmp_path: Path, scripted: Any, fleet_factory: Any
) -> None:
    server = scripted(SCENARIO)
    repo = review_repo(tmp_path)
    cfg = review_config(repo, server)
    fleet = await fleet_factory(cfg)
    await fleet.spawn_configured()
    assert await fleet.wait_settled(20)
    with pytest.raises(FleetError, match="no comments to send: write one with c"):
        await fleet.send_review("reviewed")
    with pytest.raises(FleetError, match="an empty comment"):
        await fleet.add_comment("reviewed", "app/values.py", 3, "   ")
    with pytest.raises(FleetError, match=r"no unsent comment 'c9' \(its unsent comments: none\)"):
        await fleet.remove_comment("reviewed", "c9")
