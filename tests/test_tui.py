"""The TUI against the real Fleet: a real git repository, the real scripted model server, real processes.

Every key of the issue is pressed through Pilot, and its effect is checked where it lands: the agent's log,
the model's request log, the process table, the git history of the repository.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psutil
import pytest

from mc.fleet import Fleet
from mc.tui.app import MissionControl
from mc.tui.format import ADDED, CYAN
from mc.tui.lineview import LineView
from mc.tui.screens import FleetScreen, HelpScreen, ZoomScreen
from tests.conftest import git, make_repo
from tests.tui_helpers import SCENARIO, agent, pane_text, settle, tui_config, until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def server(scripted: Any) -> Any:
    return scripted(SCENARIO)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


def make_app(repo: Path, server: Any, agents: list, **kwargs: Any) -> MissionControl:
    ui = {k: kwargs.pop(k) for k in ("bell", "keys") if k in kwargs}
    cfg = tui_config(repo, server, agents, **ui)
    return MissionControl(Fleet(cfg, readonly=kwargs.pop("readonly", False)), spawn_configured=True, **kwargs)


def notes(app: MissionControl) -> list[str]:
    return [n.message for n in app._notifications]


async def test_approve_runs_the_command_and_its_output_reaches_the_pane(repo: Path, server: Any) -> None:
    app = make_app(repo, server, [agent("runner")])
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, app)
        runner = app.fleet.agents["runner"]
        assert runner.pending, "the shell call should wait for a decision"
        assert "NEEDS YOU" in str(app.fleet_screen().panes["runner"].approval.render())
        assert app.bells == 1
        await pilot.press("a")
        await until(pilot, lambda: runner.status == "idle", what="runner to finish")
        await pilot.pause(0.4)
        assert "hello-from-tool" in pane_text(app, "runner")
        assert "The check printed hello-from-tool." in pane_text(app, "runner")


async def test_failures_and_finished_work_say_what_they_ask_of_the_engineer(repo: Path, server: Any) -> None:
    app = make_app(repo, server, [agent("broken"), agent("writer", policy="never"), agent("quiet")])
    async with app.run_test(size=(160, 40)) as pilot:
        await settle(pilot, app)
        await until(pilot, lambda: app.fleet.agents["writer"].files_changed == 1, what="the writer's diff")
        await pilot.pause(0.5)
        panes = app.fleet_screen().panes
        broken = str(panes["broken"].approval.render())
        assert "FAILED" in broken and "the model is on fire" in broken and "HTTP 500" in broken
        assert "R resume" in broken
        writer = str(panes["writer"].approval.render())
        assert "READY FOR REVIEW" in writer and "m merge" in writer
        assert not panes["quiet"].approval.display  # idle with nothing to review asks nothing


async def test_approve_all_remembers_the_kind(repo: Path, server: Any) -> None:
    app = make_app(repo, server, [agent("runner")])
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, app)
        await pilot.press("A")
        runner = app.fleet.agents["runner"]
        await until(pilot, lambda: runner.status == "idle", what="runner to finish")
        assert runner.remembered, "approve-all should remember the call's kind"


async def test_deny_with_a_reason_reaches_the_model(repo: Path, server: Any) -> None:
    app = make_app(repo, server, [agent("runner")])
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, app)
        await pilot.press("d")
        await pilot.pause(0.2)
        await pilot.press(*"not today", "enter")
        runner = app.fleet.agents["runner"]
        await until(pilot, lambda: runner.status == "idle" and not runner.pending, what="runner to stop")
        outputs = server.requests_for("runner")[-1].tool_outputs()
        assert any("not today" in o for o in outputs), outputs
        await pilot.pause(0.4)
        assert "Understood, I will not run it." in pane_text(app, "runner")


async def test_redirect_sends_the_new_instruction(repo: Path, server: Any) -> None:
    app = make_app(repo, server, [agent("quiet")])
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, app)
        await pilot.press("r")
        await pilot.pause(0.2)
        await pilot.press(*"use tabs please", "enter")
        await until(pilot, lambda: len(server.requests_for("quiet")) >= 2, what="the second request")
        assert "use tabs please" in server.requests_for("quiet")[-1].user_texts()[-1]
        await settle(pilot, app)
        assert "redirect: use tabs please" in pane_text(app, "quiet")


def sleepers() -> list[psutil.Process]:
    """The scenario's `sleep 31.25` among this test's own descendants (another run's sleep is not ours)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            cmdline = proc.cmdline()
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
        if cmdline and "31.25" in " ".join(cmdline) and "sleep" in cmdline[0]:
            found.append(proc)
    return found


async def test_kill_leaves_no_process(repo: Path, server: Any) -> None:
    app = make_app(repo, server, [agent("sleeper", policy="never")])
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: bool(sleepers()), what="the sleep command to start")
        await pilot.press("K")
        await pilot.pause(0.2)
        assert app.screen.__class__.__name__ == "KillScreen"
        await pilot.press("y")
        sleeper = app.fleet.agents["sleeper"]
        await until(pilot, lambda: sleeper.status == "killed", what="the kill")
        await until(pilot, lambda: not sleepers(), timeout=10, what="the sleep process to die")
        assert Path(sleeper.worktree).is_dir(), "kill without discard keeps the worktree"


async def test_kill_with_discard_removes_the_worktree(repo: Path, server: Any) -> None:
    app = make_app(repo, server, [agent("quiet")])
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, app)
        await pilot.press("K")
        await pilot.pause(0.2)
        await pilot.click("#discard")
        await pilot.press("y")
        quiet = app.fleet.agents["quiet"]
        await until(pilot, lambda: quiet.status == "discarded", what="kill + discard")
        assert not Path(quiet.worktree).exists()


async def test_merge_puts_the_commit_on_the_base_branch(repo: Path, server: Any) -> None:
    app = make_app(repo, server, [agent("writer", policy="writes")])
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, app)
        await pilot.press("a")
        writer = app.fleet.agents["writer"]
        await until(pilot, lambda: writer.status == "idle", what="writer to finish")
        await pilot.press("m")
        await until(pilot, lambda: app.screen.__class__.__name__ == "MergeScreen", what="the merge dialog")
        diff_view = app.screen.query_one("#merge-diff", LineView)
        assert "+first line" in diff_view.plain_text()
        await pilot.press("s")
        await until(pilot, lambda: writer.status == "merged", what="the merge")
        log = git(repo, "log", "--format=%s", "main")
        assert log.splitlines()[0].startswith("writer:")
        assert (repo / "notes.txt").exists() or "notes.txt" in git(repo, "show", "--name-only", "main")
        await pilot.pause(0.3)
        assert any("merged into main" in n for n in notes(app))


async def test_merge_of_a_running_agent_is_refused_with_a_message(repo: Path, server: Any) -> None:
    app = make_app(repo, server, [agent("sleeper", policy="never")])
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: bool(sleepers()), what="the sleep command to start")
        await pilot.press("m")
        await pilot.pause(0.2)
        assert any("interrupt it" in n for n in notes(app))
        assert isinstance(app.screen, FleetScreen)
        # interrupt, then the same key resumes
        await pilot.press("i")
        sleeper = app.fleet.agents["sleeper"]
        await until(pilot, lambda: sleeper.status == "interrupted", what="the interrupt")
        await until(pilot, lambda: not sleepers(), what="the sleep process to stop")
        await pilot.press("i")
        await until(pilot, lambda: sleeper.status != "interrupted", what="the resume")


async def test_fleet_errors_become_notifications(repo: Path, server: Any) -> None:
    app = make_app(repo, server, [agent("quiet")])
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, app)
        await pilot.press("a")  # nothing pending
        await pilot.press("R")  # idle: cannot resume
        await pilot.pause(0.3)
        messages = notes(app)
        assert any("no pending approval" in n for n in messages), messages
        assert any("only an interrupted or failed agent resumes" in n for n in messages), messages
        assert app.is_running


async def test_space_cycles_through_waiting_agents(repo: Path, server: Any) -> None:
    agents = [agent("quiet"), agent("runner"), agent("writer", policy="writes")]
    app = make_app(repo, server, agents)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, app)
        app.select("quiet")
        seen = []
        for _ in range(4):
            await pilot.press("space")
            seen.append(app.selected)
        assert set(seen[:2]) == {"runner", "writer"}
        assert seen[2] == seen[0] and seen[3] == seen[1]
        assert app.bells == 2


async def test_bell_is_off_when_configured(repo: Path, server: Any) -> None:
    app = make_app(repo, server, [agent("runner")], bell=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, app)
        assert app.fleet.agents["runner"].pending
        assert app.bells == 1  # counted, but the terminal bell stays silent (checked by cfg.ui.bell)


async def test_new_agent_form_spawns_it(repo: Path, server: Any) -> None:
    app = make_app(repo, server, [])
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.opened)
        await pilot.press("n")
        await pilot.pause(0.2)
        await pilot.press(*"quiet", "tab", *"say nothing")
        app.screen.query_one("#model").value = "quiet"  # the scripted agent to talk to
        await pilot.click("#start")
        await until(pilot, lambda: "quiet" in app.fleet.agents, what="the new agent")
        await settle(pilot, app)
        assert app.fleet.agents["quiet"].status == "idle"
        assert "Nothing to do here." in pane_text(app, "quiet")


async def test_discard_asks_then_removes(repo: Path, server: Any) -> None:
    app = make_app(repo, server, [agent("quiet")])
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, app)
        await pilot.press("x")
        await pilot.pause(0.2)
        await pilot.press("n")  # cancel
        await pilot.pause(0.2)
        assert app.fleet.agents["quiet"].status == "idle"
        await pilot.press("x")
        await pilot.pause(0.2)
        await pilot.press("y")
        await until(pilot, lambda: app.fleet.agents["quiet"].status == "discarded", what="the discard")
        assert "refs/mc/snapshots/quiet" in git(repo, "for-each-ref", "--format=%(refname)")


async def test_zoom_shows_log_and_live_diff(repo: Path, server: Any) -> None:
    app = make_app(repo, server, [agent("writer", policy="writes")])
    async with app.run_test(size=(160, 40)) as pilot:
        await settle(pilot, app)
        await pilot.press("enter")
        assert isinstance(app.screen, ZoomScreen)
        assert "wants to change" in str(app.screen.approval.render())
        await pilot.press("a")
        await until(pilot, lambda: app.fleet.agents["writer"].files_changed == 1, what="the diff")
        await settle(pilot, app)
        zoom = app.screen
        assert isinstance(zoom, ZoomScreen)
        assert "+second line" in zoom.diff_view.plain_text()
        # the diff is coloured on screen: added lines green, removed red, hunks cyan
        view = zoom.diff_view
        view.scroll_home(animate=False, immediate=True)
        await pilot.pause()
        colours = {}
        for row in range(min(view.size.height, len(view.lines))):
            for segment in view.render_line(row):
                if segment.text.strip() and segment.style is not None and segment.style.color is not None:
                    colours.setdefault(segment.text.strip()[:2], segment.style.color.name)
        assert colours.get("+s") == ADDED and colours.get("@@") == CYAN, colours
        assert "notes.txt" in str(zoom.files.render())
        assert "The notes are written." in zoom.log_view.plain_text()
        assert not zoom.query_one("#split").has_class("stacked")
        await pilot.resize_terminal(90, 40)
        await pilot.pause(0.2)
        assert zoom.query_one("#split").has_class("stacked")
        await pilot.press("escape")
        assert isinstance(app.screen, FleetScreen)


async def test_the_whole_log_is_reachable_from_disk(repo: Path, server: Any) -> None:
    app = make_app(repo, server, [agent("chatty", policy="never")])
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, app)
        chatty = app.fleet.agents["chatty"]
        assert chatty.log.total > 7000 > len(chatty.log.lines)  # memory keeps only the ring
        await pilot.press("enter")
        zoom = app.screen
        assert isinstance(zoom, ZoomScreen)
        assert ("output", "1") not in zoom.log_view.lines
        await pilot.press("home")
        await until(pilot, lambda: len(zoom.log_view.lines) >= chatty.log.total, what="the whole log")
        texts = [text for _, text in zoom.log_view.lines]
        assert texts[texts.index("$ seq 1 7000") + 1 : texts.index("$ seq 1 7000") + 3] == ["1", "2"]
        assert "7000" in texts and "Counted." in texts
        assert zoom.log_view.scroll_y == 0 and not zoom.log_view.follow


async def test_help_lists_remapped_keys_and_the_remap_works(repo: Path, server: Any) -> None:
    app = make_app(repo, server, [agent("runner")], keys={"approve": "y"})
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, app)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        rows = {row[0]: row[1] for row in app.help_rows()}
        assert rows["approve"] == "y"
        assert rows["kill"] == "K"
        await pilot.press("escape")
        await pilot.press("a")  # no longer bound
        await pilot.pause(0.2)
        assert app.fleet.agents["runner"].pending
        await pilot.press("y")
        await until(pilot, lambda: app.fleet.agents["runner"].status == "idle", what="approve by y")


async def test_quit_asks_when_agents_run_and_closes_the_fleet(repo: Path, server: Any) -> None:
    app = make_app(repo, server, [agent("sleeper", policy="never")])
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: bool(sleepers()), what="the sleep command to start")
        await pilot.press("q")
        await pilot.pause(0.2)
        assert app.screen.__class__.__name__ == "ConfirmScreen"
        await pilot.press("y")
        await until(pilot, lambda: not app.is_running, what="the app to exit")
    assert app.fleet.agents["sleeper"].status == "interrupted"
    assert not sleepers()
    assert not app.fleet._opened


async def test_log_follow_pauses_and_counts_waiting_lines(repo: Path, server: Any) -> None:
    from mc import events as ev

    app = make_app(repo, server, [agent("lister", policy="commands"), agent("quiet")])
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, app)
        app.select("lister")
        await pilot.press("enter")
        zoom = app.screen
        assert isinstance(zoom, ZoomScreen)
        view = zoom.log_view
        view.focus()
        await pilot.press("a")
        await until(pilot, lambda: app.fleet.agents["lister"].status == "idle", what="the listing")
        await pilot.pause(0.4)
        assert "300" in view.plain_text() and view.follow
        await pilot.press("home")
        await pilot.pause(0.1)
        assert not view.follow
        app.fleet.emit(ev.TextDelta(agent="lister", text="more\n" * 40 + "half a line"))
        await pilot.pause(0.5)
        assert view.waiting == 40
        assert "40 new" in str(zoom.head.render())
        assert view.plain_text().endswith("half a line")
        await pilot.press("end")
        await pilot.pause(0.1)
        assert view.follow and view.waiting == 0


async def test_escape_sequences_never_reach_the_screen(repo: Path, server: Any) -> None:
    from mc import events as ev

    app = make_app(repo, server, [agent("quiet")])
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, app)
        app.fleet.emit(ev.ErrorEvent(agent="quiet", message="boom \x1b[2J\x1b]52;c;aGk=\x07 done"))
        await pilot.pause(0.5)
        text = pane_text(app, "quiet")
        assert "\x1b" not in text and "\x07" not in text
        assert "boom �[2J" in text


@pytest.mark.parametrize("size", [(80, 24), (200, 60)])
async def test_thirty_agents_fit(repo: Path, server: Any, size: tuple[int, int]) -> None:
    agents = [agent(f"a{i:02d}", model="quiet") for i in range(30)]
    app = make_app(repo, server, agents)
    async with app.run_test(size=size) as pilot:
        await settle(pilot, app, timeout=45)
        screen = app.fleet_screen()
        assert screen is not None and screen.agent_list is not None, "30 agents get the list layout"
        assert len(screen.panes) == 1
        await pilot.press("end")
        for _ in range(29):
            await pilot.press("j")
        assert app.selected == "a29"
        await pilot.pause(0.4)
        rendered = str(screen.agent_list.render())
        assert "a29" in rendered and "30 agents" in str(screen.summary.render())
        assert "Nothing to do here." in pane_text(app, "a29")
        await pilot.press("3")
        assert app.selected == "a02"


@pytest.mark.parametrize(("size", "grid"), [((80, 24), False), ((200, 60), True)])
async def test_layout_by_size(repo: Path, server: Any, size: tuple[int, int], grid: bool) -> None:
    names = ["quiet", "runner", "writer", "lister", "sleeper"]
    app = make_app(repo, server, [agent(n, policy="writes" if n == "writer" else "commands") for n in names])
    async with app.run_test(size=size) as pilot:
        await settle(pilot, app)
        screen = app.fleet_screen()
        assert screen is not None
        assert (screen.agent_list is None) is grid
        if grid:
            assert set(screen.panes) == set(names)
            # move right through the grid
            app.select("quiet")
            await pilot.press("l")
            assert app.selected == "runner"
        await pilot.press("2")
        await pilot.pause(0.3)
        assert "echo hello-from-tool" in str(screen.panes["runner"].approval.render())


async def test_a_window_on_a_fleet_another_process_drives_says_so_and_exits(
    repo: Path, server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fleet owned by a process that is not its server (an old version, a `merge` in progress) has no event
    stream to follow: the window says who drives it, in one line, rather than showing a picture that never moves."""
    cfg = tui_config(repo, server, [agent("runner")])
    owner = Fleet(cfg)
    await owner.open()
    try:
        app = MissionControl(Fleet(cfg))
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause(0.5)
        assert app.return_value == 2
        said = " ".join(capsys.readouterr().err.split())
        assert said.startswith(f"missionctl: this fleet is already driven by process {os.getpid()}"), said
    finally:
        await owner.close()
