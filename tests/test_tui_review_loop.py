"""The review loop on screen: each agent's checks and risk flags show on its row, its pane and its zoom; `t`
runs the checks, `f` sends the failures back, `T` shows what ran and why, `]` / `[` jump to each flag, a
flagged merge asks once more naming the flags, and the summary line totals the fleet's tokens and cost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from mc.agent import Agent
from mc.client import RemoteFleet, ensure_server
from mc.config import ChecksConfig, PriceConfig, load_config
from mc.events import Flag
from mc.flags import diff_line
from mc.fleet import Fleet
from mc.tui.app import MissionControl, flags_question
from mc.tui.format import check_badge, flags_badge, money, short_number
from mc.tui.screens import ConfirmScreen, MergeScreen, ZoomScreen
from tests.conftest import make_repo
from tests.test_checks import APP, BROKEN_TEXT, FIXED_TEXT, PYTEST, write_turn
from tests.test_server import server_pids
from tests.tui_helpers import agent, screen_text, settle, tui_config, until

pytestmark = pytest.mark.timeout(120)

AWS_KEY = "AKIA" + "QWERTYUIOPASDFGH"  # an AWS-style access key id (made up), split so no scanner flags this file

BREAKER = {
    "name": "breaker",
    "turns": [
        write_turn("app/text.py", BROKEN_TEXT),
        {"say": "Done."},
        write_turn("app/text.py", FIXED_TEXT, say="Fixing."),
        {"say": "Fixed."},
    ],
}
LEAKER = {
    "name": "leaker",
    "turns": [
        write_turn("app/big.py", "".join(f"VALUE_{i} = {i}\n" for i in range(150))),
        write_turn("app/settings.py", f"REGION = 'eu'\nKEY = '{AWS_KEY}'\n"),
        {"say": "Configured."},
    ],
}


def review_config(repo: Path, server: Any, names: list[str]) -> Any:
    cfg = tui_config(repo, server, [agent(n, policy="never") for n in names])
    cfg.checks = ChecksConfig(test=PYTEST, on="manual")
    cfg.prices = {n: PriceConfig(input=1.0, output=2.0) for n in names}
    return cfg


async def test_checks_run_show_and_go_back_to_the_agent_by_key(tmp_path: Path, scripted: Any) -> None:
    server = scripted({"tokens_per_second": 0, "first_byte_delay": 0, "agents": [BREAKER]})
    repo = make_repo(tmp_path / "repo", APP)
    app = MissionControl(Fleet(review_config(repo, server, ["breaker"])), spawn_configured=True)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot, app)
        breaker = app.fleet.get("breaker")
        app.select(breaker.id)
        assert breaker.check.state == "none"
        await pilot.press("f")  # nothing failed yet: says so, sends nothing
        await pilot.pause(0.2)
        assert len(server.requests_for("breaker")) == 2
        await pilot.press("t")
        await until(pilot, lambda: breaker.check.state == "failed", timeout=60, what="the failing check")
        await pilot.pause(0.5)
        assert "✗ 2 of 2 failed" in "\n".join(screen_text(app))  # the pane's header
        # the zoom's checks view: what ran, why, what failed and what it printed
        await pilot.press("enter")
        zoom = app.screen
        assert isinstance(zoom, ZoomScreen)
        await pilot.press("T")
        await until(pilot, lambda: "assert 'A?' == 'A!'" in zoom.checks_view.plain_text(), what="the output")
        shown = zoom.checks_view.plain_text()
        assert f"ran: {PYTEST} tests/test_api.py tests/test_text.py" in shown
        assert "tests/test_text.py ← app/text.py" in shown
        assert "failing (2):" in shown and "tests/test_api.py::test_greet" in shown
        assert zoom.checks_view.display and not zoom.diff_view.display
        await pilot.press("T")
        assert zoom.diff_view.display and not zoom.checks_view.display
        # f: the failures go back as one instruction, the agent fixes them, t checks again
        await pilot.press("f")
        await until(pilot, lambda: len(server.requests_for("breaker")) == 4, timeout=30, what="the fix")
        sent = server.requests_for("breaker")[2].user_texts()[-1]
        assert sent.startswith("These tests fail: tests/test_api.py::test_greet, tests/test_text.py::test_shout")
        assert await app.fleet.wait_settled(30)
        await until(pilot, lambda: breaker.check_stale, what="the check to go stale with the new diff")
        await pilot.pause(0.5)
        assert "✗ 2 of 2 failed stale" in "\n".join(screen_text(app))
        await pilot.press("t")
        await until(pilot, lambda: breaker.check.state == "passed", timeout=60, what="the passing check")
        await pilot.pause(0.5)
        assert "✓ 3 passed" in "\n".join(screen_text(app))  # the fix undid the diff: the whole suite ran
        await pilot.press("escape")
        await pilot.pause(0.3)
        assert "✓ 3 passed" in "\n".join(screen_text(app))


async def test_flags_badge_jump_and_a_flagged_merge_asks_once_more(tmp_path: Path, scripted: Any) -> None:
    server = scripted({"tokens_per_second": 0, "first_byte_delay": 0, "agents": [LEAKER]})
    repo = make_repo(tmp_path / "repo", APP)
    app = MissionControl(Fleet(review_config(repo, server, ["leaker"])), spawn_configured=True)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot, app)
        leaker = app.fleet.get("leaker")
        app.select(leaker.id)
        await until(pilot, lambda: bool(leaker.flags), what="the risk flags")
        await pilot.pause(0.5)
        flag = next(f for f in leaker.flags if f.path == "app/settings.py" and f.line == 2)
        assert flag.severity == "high"
        assert "⚑" in "\n".join(screen_text(app))
        # the zoom: ] scrolls the diff to the flagged line and names it
        await pilot.press("enter")
        zoom = app.screen
        assert isinstance(zoom, ZoomScreen)
        await until(pilot, lambda: AWS_KEY in zoom.diff_view.plain_text(), what="the diff")
        for _ in range(len(leaker.flags)):
            await pilot.press("right_square_bracket")
            if f"{flag.rule} app/settings.py:2" in str(zoom.diff_view.border_subtitle):
                break
        assert f"{flag.rule} app/settings.py:2" in str(zoom.diff_view.border_subtitle)
        await pilot.pause(0.2)
        view = zoom.diff_view  # it scrolled past the 150 lines of app/big.py to the flagged line
        shown = [view.render_line(y).text for y in range(view.size.height)]
        assert view.scroll_y > 100 and any(AWS_KEY in line for line in shown), shown
        await pilot.press("left_square_bracket")
        assert "⚑" in str(zoom.diff_view.border_subtitle)
        await pilot.press("escape")
        # the merge: the dialog lists the flags; choosing a mode asks once more, naming them; n merges nothing
        await pilot.press("m")
        await until(pilot, lambda: isinstance(app.screen, MergeScreen), what="the merge dialog")
        await pilot.pause(0.3)
        dialog = "\n".join(screen_text(app))
        assert "risk flag" in dialog and "app/settings.py:2" in dialog
        await pilot.press("f")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the second question")
        await pilot.pause(0.2)
        assert "Merge it anyway?" in " ".join(screen_text(app))
        await pilot.press("n")
        await pilot.pause(0.5)
        assert leaker.status != "merged"
        await pilot.press("m")
        await until(pilot, lambda: isinstance(app.screen, MergeScreen), what="the merge dialog again")
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the second question again")
        await pilot.press("y")
        await until(pilot, lambda: leaker.status == "merged", what="the merge")
        shown = subprocess.run(
            ["git", "-C", str(repo), "show", "HEAD:app/settings.py"], capture_output=True, text=True, check=True
        )
        assert AWS_KEY in shown.stdout


async def test_the_summary_totals_tokens_and_cost_where_a_price_is_known(tmp_path: Path, scripted: Any) -> None:
    server = scripted(
        {"tokens_per_second": 0, "first_byte_delay": 0, "agents": [{"name": "quiet", "turns": [{"say": "Hi."}]}]}
    )
    repo = make_repo(tmp_path / "repo")
    cfg = review_config(repo, server, ["quiet"])
    app = MissionControl(Fleet(cfg), spawn_configured=True)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot, app)
        quiet = app.fleet.get("quiet")
        assert quiet.usage_reported and quiet.tokens > 0
        price = money((quiet.input_tokens * 1.0 + quiet.output_tokens * 2.0) / 1_000_000)
        text = "\n".join(screen_text(app))
        assert f"Σ {short_number(quiet.tokens)} tok {price}" in text, text
        assert text.count(f"tok {price}") == 2, text  # the pane's header has the agent's own cost
    # without a price nothing is shown, never a guess
    assert money(None) == ""


def test_badges_and_flag_lines_read_as_the_issue_says() -> None:
    from mc.agent import CheckState

    a = Agent(id="a", name="a")
    assert check_badge(a).plain == "— no checks" and check_badge(a, short=True).plain == "—"
    a.check = CheckState(state="running")
    assert check_badge(a).plain == "… checking"
    a.check = CheckState(state="passed", passed=12, total=12, digest="d1")
    a.diff_digest = "d1"
    assert check_badge(a).plain == "✓ 12 passed" and check_badge(a, short=True).plain == "✓12"
    a.check = CheckState(state="failed", passed=12, failed=2, total=14, digest="d1")
    assert check_badge(a).plain == "✗ 2 of 14 failed" and check_badge(a, short=True).plain == "✗2/14"
    a.diff_digest = "d2"
    assert check_badge(a).plain == "✗ 2 of 14 failed stale"
    assert flags_badge(a).plain == ""
    a.flags = (Flag(rule="secrets.aws", severity="high", path="k.py", line=3, message="AWS key"),)
    assert flags_badge(a).plain == "⚑ 1 flag" and flags_badge(a, short=True).plain == "⚑1"
    question = flags_question("a", (*a.flags, Flag(rule="ci", severity="medium", path=".gitlab-ci.yml")))
    assert question == "a's diff has 2 risk flags: secrets.aws (k.py:3), ci (.gitlab-ci.yml). Merge it anyway?"
    diff = "\n".join(
        [
            "diff --git a/k.py b/k.py",
            "--- a/k.py",
            "+++ b/k.py",
            "@@ -1,2 +1,3 @@",
            " one",
            "-two",
            "+2",
            "+three",
            "diff --git a/z b/z",
        ]
    )
    assert (
        diff_line(diff, Flag(rule="r", severity="low", path="k.py", line=2)) == 5
    )  # where the removed line was, then its replacement
    assert diff_line(diff, Flag(rule="r", severity="low", path="k.py", line=3)) == 7
    assert diff_line(diff, Flag(rule="r", severity="low", path="k.py")) == 0
    assert diff_line(diff, Flag(rule="r", severity="low", path="nope.py", line=1)) is None


async def test_the_checks_view_reads_the_output_through_the_server(tmp_path: Path, scripted: Any) -> None:
    server = scripted({"tokens_per_second": 0, "first_byte_delay": 0, "agents": [BREAKER]})
    repo = make_repo(tmp_path / "repo", APP)
    config = {
        "repo": {"path": ".", "worktree_dir": str(repo.parent / "worktrees")},
        "model": {"base_url": server.base_url, "api_key_env": "", "max_retries": 1, "retry_backoff": 0.05},
        "tools": {"sandbox": "none"},
        "checks": {"test": PYTEST, "on": "idle"},
    }
    (repo / "missionctl.toml").write_text(tomli_w.dumps(config))
    subprocess.run(["git", "-C", str(repo), "add", "missionctl.toml"], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "config"], check=True)
    sock = await ensure_server(repo / ".mc", ["--config", str(repo / "missionctl.toml")])
    try:
        done = subprocess.run(
            [sys.executable, "-m", "mc", "spawn", "--name", "breaker", "--task", "shout", "--model", "breaker"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        app = MissionControl(RemoteFleet(load_config(repo / "missionctl.toml"), sock))
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, lambda: bool(app.fleet.agents), what="the agent")
            breaker = app.fleet.get("breaker")
            app.select(breaker.id)
            await until(pilot, lambda: breaker.pending, what="the write to ask")
            await pilot.press("A")
            await until(pilot, lambda: breaker.check.state == "failed", timeout=60, what="the check after the turn")
            app.zoom(breaker.id)
            await pilot.pause(0.2)
            zoom = app.screen
            assert isinstance(zoom, ZoomScreen)
            await pilot.press("T")
            await until(pilot, lambda: "assert 'A?' == 'A!'" in zoom.checks_view.plain_text(), what="the output")
            assert "(after a turn)" in zoom.checks_view.plain_text()
    finally:
        for pid in server_pids(repo):
            os.kill(pid, signal.SIGKILL)


async def test_a_budget_question_says_what_each_key_does_and_a_raises_it_once(tmp_path: Path, scripted: Any) -> None:
    from mc.config import AgentConfig
    from tests.test_cost import WRITES

    server = scripted({"tokens_per_second": 0, "first_byte_delay": 0, "agents": [{"name": "w", "turns": WRITES}]})
    repo = make_repo(tmp_path / "repo")
    spec = AgentConfig(name="w", task="write four files", model="w", policy="never", budget_tokens=300)
    app = MissionControl(Fleet(tui_config(repo, server, [spec])), spawn_configured=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.opened and bool(app.fleet.agents), what="the agent")
        w = app.fleet.get("w")
        await until(pilot, lambda: "budget-0" in w.pending, what="the budget question")
        app.select(w.id)
        await pilot.pause(0.5)
        shown = "\n".join(screen_text(app))
        assert "reached its budget" in shown and "of 300 tokens" in shown
        assert "a raise it once" in shown and "K end it" in shown and "d stop the turn" in shown
        await pilot.press("a")
        await until(pilot, lambda: "budget-1" in w.pending, timeout=30, what="the raised budget to be reached")
        await pilot.pause(0.5)
        assert "of 600 tokens" in "\n".join(screen_text(app))
        made = len(server.requests_for("w"))
        await pilot.press("K")
        await pilot.press("y")
        await until(pilot, lambda: w.status == "killed", what="the kill")
        assert len(server.requests_for("w")) == made
