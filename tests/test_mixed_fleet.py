"""One fleet of four kinds on one repository, driven through the real app by key presses: a builtin agent,
the real Codex CLI (app-server), a real ACP agent (Zed's codex-acp) and a command agent. The codex and acp
approvals are answered with keys and decide what lands on disk; kill of each leaves no process behind."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import psutil
import pytest

from mc import procs
from mc.agents import acp, codex
from mc.config import AgentConfig
from mc.fleet import Fleet
from mc.tui.app import MissionControl
from tests.conftest import make_repo
from tests.tui_helpers import tui_config, until

pytestmark = pytest.mark.timeout(180)

CODEX = codex.codex_binary()
CODEX_ACP = acp.codex_acp_binary()
if CODEX is None or CODEX_ACP is None:
    pytest.skip("codex / codex-acp are not installed: run scripts/install-tools.sh", allow_module_level=True)


def exec_turns(command: str) -> list[dict[str, Any]]:
    """Turns of a scripted model that makes Codex (or codex-acp) run `command` with its own tool."""
    return [
        {"say": "Running it.", "tool": "exec_command", "args": {"cmd": command, "login": False}},
        {"when_tool_output_contains": "wrote", "say": "Done, the file is there."},
        {"say": "I was not allowed to run it."},
    ]


SCENARIO = {
    "tokens_per_second": 0,
    "agents": [
        {
            "name": "m-builtin",
            "turns": [
                {"say": "Writing.", "tool": "write_file", "args": {"path": "builtin.txt", "content": "b\n"}},
                {"say": "Written."},
            ],
        },
        {"name": "m-codex", "turns": exec_turns("echo codex > codex.txt && echo wrote codex")},
        {"name": "m-acp", "turns": exec_turns("echo acp > acp.txt && echo wrote acp")},
    ],
}


@pytest.fixture(autouse=True)
def _binaries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(codex.BIN_ENV, CODEX or "")
    monkeypatch.setenv(acp.BIN_ENV, CODEX_ACP or "")
    monkeypatch.delenv(codex.HOME_ENV, raising=False)


#: Odd lengths: no process of another test (or of anything else on the machine) has these command lines.
NAP, NAP_SETSID = "sleep 300.3917", "sleep 301.3917"


def processes_with(marker: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if marker in line and "ps -eo" not in line]


async def test_four_kinds_of_agent_in_one_fleet_by_keystroke(tmp_path: Path, scripted: Any) -> None:
    repo = make_repo(tmp_path / "repo")
    server = scripted(SCENARIO)
    agents = [
        AgentConfig(name="m-builtin", task="write builtin.txt", model="m-builtin", policy="writes"),
        AgentConfig(name="m-codex", task="write codex.txt", runner="codex", model="m-codex", policy="writes"),
        AgentConfig(name="m-acp", task="write acp.txt", runner="acp", model="m-acp", policy="writes"),
        AgentConfig(
            name="m-cmd",
            task="count",
            runner="command",
            command=f"echo command-agent-up; {NAP} & setsid {NAP_SETSID} & wait",
        ),
    ]
    cfg = tui_config(repo, server, agents)
    app = MissionControl(Fleet(cfg), spawn_configured=True)
    async with app.run_test(size=(160, 48)) as pilot:
        fleet = app.fleet
        await until(pilot, lambda: len(fleet.agents) == 4, 30, "four agents")

        def waiting(name: str) -> bool:
            return bool(fleet.agents[name].pending) or fleet.agents[name].status == "failed"

        for name in ("m-builtin", "m-codex", "m-acp"):
            await until(pilot, lambda name=name: waiting(name), 90, f"{name} to ask")
            assert fleet.agents[name].status == "waiting", (name, fleet.agents[name].error)
        worktrees = {name: Path(fleet.agents[name].worktree) for name in fleet.agents}
        assert not any((worktrees[n] / f).exists() for n, f in [("m-codex", "codex.txt"), ("m-acp", "acp.txt")])

        # codex: approve with `a` on its pane; acp: deny with `d` and a reason; builtin: approve all with `A`
        await pilot.press("2")
        assert app.selected == "m-codex"
        await pilot.press("a")
        await pilot.press("3")
        await pilot.press("d")
        await pilot.pause(0.2)
        await pilot.press(*"not this one", "enter")
        await pilot.press("1")
        await pilot.press("A")
        for name in ("m-builtin", "m-codex", "m-acp"):
            await until(pilot, lambda name=name: fleet.agents[name].status in ("idle", "failed"), 90, f"{name} done")
            assert fleet.agents[name].status == "idle", (name, fleet.agents[name].error)
        assert (worktrees["m-codex"] / "codex.txt").read_text() == "codex\n"
        assert not (worktrees["m-acp"] / "acp.txt").exists()
        assert (worktrees["m-builtin"] / "builtin.txt").read_text() == "b\n"
        assert not (repo / "codex.txt").exists()

        # the command agent runs on; its output is its log
        await until(pilot, lambda: any("command-agent-up" in t for _, t in fleet.agents["m-cmd"].log.lines), 30)
        tags = {name: fleet._tag(name) for name in fleet.agents}
        assert procs.find_tagged(tags["m-cmd"]), "the command agent's processes should be running"

        # kill each one by keys; nothing of theirs survives
        for index, name in enumerate(("m-builtin", "m-codex", "m-acp", "m-cmd"), start=1):
            await pilot.press(str(index))
            await pilot.press("K")
            await pilot.pause(0.2)
            await pilot.press("y")
            await until(pilot, lambda name=name: fleet.agents[name].status == "killed", 30, f"{name} killed")
        for name, tag in tags.items():
            assert procs.find_tagged(tag) == [], name
        assert processes_with(NAP_SETSID) == [] and processes_with(NAP) == []
        own = psutil.Process().children(recursive=True)
        assert not [p for p in own if p.name() in ("codex", "codex-acp", "sleep")]
