"""The Fleet end to end: real git worktrees, the real openai client against the scripted server, real
subprocesses. Each command is checked by what the model received next and by what is on disk."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from mc import events as ev
from mc import procs
from mc.config import AgentConfig
from mc.fleet import Fleet, FleetError
from mc.store import FleetLocked
from tests.conftest import fleet_config, git


def write_turn(path: str, content: str, say: str = "Writing.") -> dict[str, Any]:
    return {"say": say, "tool": "write_file", "args": {"path": path, "content": content}}


def shell_turn(command: str, say: str = "Running it.") -> dict[str, Any]:
    return {"say": say, "tool": "shell", "args": {"command": command}}


async def wait_for(predicate: Any, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def tool_outputs(server: Any, agent: str) -> list[str]:
    """The tool outputs in the conversation the scripted model last received (Responses API input items)."""
    requests = server.requests_for(agent)
    items = requests[-1].body.get("input", []) if requests else []
    return [i["output"] for i in items if isinstance(i, dict) and i.get("type") == "function_call_output"]


def user_texts(server: Any, agent: str) -> list[str]:
    requests = server.requests_for(agent)
    items = requests[-1].body.get("input", []) if requests else []
    return [str(i.get("content")) for i in items if isinstance(i, dict) and i.get("role") == "user"]


async def test_two_agents_edit_in_parallel_and_both_diffs_are_right(repo, scripted, fleet_factory) -> None:
    server = scripted(
        {
            "agents": [
                {"name": "alpha", "turns": [write_turn("alpha.txt", "from alpha\n"), {"say": "Done."}]},
                {"name": "beta", "turns": [write_turn("README.md", "# sample, by beta\n"), {"say": "Done."}]},
            ]
        }
    )
    agents = [
        AgentConfig(name="alpha", task="add alpha.txt", model="alpha", policy="never"),
        AgentConfig(name="beta", task="edit the readme", model="beta", policy="never"),
    ]
    fleet = await fleet_factory(fleet_config(repo, server, agents))
    await fleet.spawn_configured()
    assert await fleet.wait_settled(30)
    assert [fleet.get(n).status for n in ("alpha", "beta")] == ["idle", "idle"]
    alpha, beta = await fleet.refresh_diff("alpha"), await fleet.refresh_diff("beta")
    assert [(f.path, f.added, f.removed) for f in alpha.files] == [("alpha.txt", 1, 0)]
    assert [(f.path, f.added, f.removed) for f in beta.files] == [("README.md", 1, 1)]
    assert "+# sample, by beta" in beta.text
    # the user's own working tree is untouched, and each agent is on its own branch
    assert (repo / "README.md").read_text() == "# sample\n"
    assert not (repo / "alpha.txt").exists()
    assert set(git(repo, "branch", "--format=%(refname:short)").split()) == {"main", "mc/alpha", "mc/beta"}
    # the watcher reports the diff on its own as well
    await wait_for(lambda: fleet.get("beta").files_changed == 1, what="DiffChanged from the watcher")


@pytest.mark.parametrize("decision", ["approve", "deny"])
async def test_approve_runs_the_command_and_deny_tells_the_model(decision, repo, scripted, fleet_factory) -> None:
    server = scripted(
        {
            "agents": [
                {
                    "name": "w",
                    "turns": [
                        shell_turn("echo made > made.txt && echo ran-it"),
                        {"choice": "v", "when_tool_output_contains": "denied", "say": "Fine, I won't."},
                        {"choice": "v", "say": "It ran."},
                    ],
                }
            ]
        }
    )
    fleet = await fleet_factory(fleet_config(repo, server, [AgentConfig(name="w", task="make a file", model="w")]))
    await fleet.spawn_configured()
    await wait_for(lambda: fleet.get("w").pending, what="an approval")
    agent = fleet.get("w")
    assert agent.status == "waiting"
    request = agent.oldest_pending()
    assert request.kind == "command" and "echo made" in request.detail
    made = Path(agent.worktree) / "made.txt"
    assert not made.exists()
    if decision == "approve":
        await fleet.approve("w")
    else:
        await fleet.deny("w", reason="no shell today")
    assert await fleet.wait_settled(20)
    assert agent.status == "idle"
    outputs = tool_outputs(server, "w")
    if decision == "approve":
        assert made.read_text() == "made\n"
        assert "ran-it" in outputs[-1]
        assert any("ran-it" in text for _, text in agent.log.lines)
    else:
        assert not made.exists()
        assert "denied" in outputs[-1] and "no shell today" in outputs[-1]


async def test_approve_all_remembers_the_program_and_subcommand(repo, scripted, fleet_factory) -> None:
    server = scripted(
        {
            "agents": [
                {
                    "name": "g",
                    "turns": [
                        shell_turn("git status --short"),
                        shell_turn("git status"),
                        shell_turn("git log --oneline -1"),
                        {"say": "Done."},
                    ],
                }
            ]
        }
    )
    fleet = await fleet_factory(fleet_config(repo, server, [AgentConfig(name="g", task="look around", model="g")]))
    await fleet.spawn_configured()
    await wait_for(lambda: fleet.get("g").pending)
    await fleet.approve("g", remember=True)
    # `git status` again runs without asking; `git log` is another subcommand and asks
    await wait_for(lambda: fleet.get("g").pending and "git log" in fleet.get("g").oldest_pending().summary)
    assert len(tool_outputs(server, "g")) == 2
    await fleet.approve("g")
    assert await fleet.wait_settled(20)


async def test_redirect_reaches_the_model_and_stops_the_waiting_call(repo, scripted, fleet_factory) -> None:
    server = scripted(
        {
            "agents": [
                {
                    "name": "r",
                    "turns": [
                        write_turn("os_way.py", "import os\n"),
                        {"choice": "n", "when_user_contains": "pathlib", "say": "Switching to pathlib."},
                        {"choice": "n", "say": "Done."},
                    ],
                }
            ]
        }
    )
    fleet = await fleet_factory(fleet_config(repo, server, [AgentConfig(name="r", task="write a helper", model="r")]))
    await fleet.spawn_configured()
    await wait_for(lambda: fleet.get("r").pending)
    await fleet.redirect("r", "Use pathlib instead of os.")
    assert await fleet.wait_settled(20)
    agent = fleet.get("r")
    assert agent.status == "idle" and not agent.pending
    assert user_texts(server, "r")[-1] == "Use pathlib instead of os."
    assert "interrupted the turn" in tool_outputs(server, "r")[-1]
    assert not (Path(agent.worktree) / "os_way.py").exists()
    assert any("Switching to pathlib." in text for _, text in agent.log.lines)


async def test_interrupt_stops_the_command_and_resume_continues(repo, scripted, fleet_factory) -> None:
    server = scripted(
        {
            "agents": [
                {
                    "name": "s",
                    "turns": [
                        shell_turn("echo started; sleep 60; echo finished > late.txt"),
                        {"say": "Noted: it was interrupted."},
                    ],
                }
            ]
        }
    )
    fleet = await fleet_factory(
        fleet_config(repo, server, [AgentConfig(name="s", task="slow work", model="s", policy="never")])
    )
    await fleet.spawn_configured()
    agent = fleet.get("s")
    await wait_for(lambda: ("output", "started") in agent.log.tail(50), what="the command to start")
    tag = fleet._tag("s")
    assert procs.find_tagged(tag)
    await fleet.interrupt("s")
    assert agent.status == "interrupted"
    await wait_for(lambda: not procs.find_tagged(tag), timeout=10, what="the command's processes to end")
    assert not (Path(agent.worktree) / "late.txt").exists()
    await fleet.resume("s")
    assert await fleet.wait_settled(20)
    assert agent.status == "idle"
    assert "interrupted" in tool_outputs(server, "s")[-1]


async def test_kill_leaves_no_process_and_keeps_the_worktree(repo, scripted, fleet_factory) -> None:
    naps = ("sleep 300.5821", "sleep 301.5821", "sleep 302.5821")  # command lines no other process has
    script = f"{naps[0]} & setsid {naps[1]} & (sh -c '{naps[2]} &' &) ; echo spawned; wait"
    server = scripted({"agents": [{"name": "k", "turns": [shell_turn(script), {"say": "Done."}]}]})
    fleet = await fleet_factory(
        fleet_config(repo, server, [AgentConfig(name="k", task="spawn things", model="k", policy="never")])
    )
    await fleet.spawn_configured()
    agent = fleet.get("k")
    await wait_for(lambda: ("output", "spawned") in agent.log.tail(50), what="children to start")
    tag = fleet._tag("k")
    await wait_for(lambda: len(procs.find_tagged(tag)) >= 4, what="the process tree")
    (Path(agent.worktree) / "work.txt").write_text("keep me\n")
    await fleet.kill("k")
    assert agent.status == "killed"
    assert procs.find_tagged(tag) == []
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert [nap for nap in naps if nap in out] == []
    assert (Path(agent.worktree) / "work.txt").read_text() == "keep me\n"


async def test_merge_lands_the_commit_and_a_conflict_loses_nothing(repo, scripted, fleet_factory) -> None:
    server = scripted(
        {
            "agents": [
                {"name": "one", "turns": [write_turn("README.md", "# sample by one\n"), {"say": "Done."}]},
                {"name": "two", "turns": [write_turn("README.md", "# sample by two\n"), {"say": "Done."}]},
            ]
        }
    )
    agents = [
        AgentConfig(name="one", task="Reword the readme", model="one", policy="never"),
        AgentConfig(name="two", task="Reword it too", model="two", policy="never"),
    ]
    fleet = await fleet_factory(fleet_config(repo, server, agents))
    await fleet.spawn_configured()
    assert await fleet.wait_settled(30)
    (repo / "notes.txt").write_text("my own uncommitted notes\n")  # the engineer's own work in progress
    result = await fleet.merge("one", mode="ff")
    assert result.ok
    assert git(repo, "log", "-1", "--format=%s", "main").startswith("one: Reword the readme")
    assert (repo / "README.md").read_text() == "# sample by one\n"  # the checked-out base was updated
    assert fleet.get("one").status == "merged"
    head_before = git(repo, "rev-parse", "main")
    result = await fleet.merge("two", mode="merge")
    assert not result.ok and result.conflicts == ["README.md"]
    assert git(repo, "rev-parse", "main") == head_before
    assert (repo / "README.md").read_text() == "# sample by one\n"
    assert (repo / "notes.txt").read_text() == "my own uncommitted notes\n"
    two = fleet.get("two")
    assert two.status == "idle" and two.conflicts == ("README.md",)
    assert git(repo, "show", "mc/two:README.md") == "# sample by two"  # the agent's work is on its branch
    # discard keeps a snapshot from which the work comes back
    ref = await fleet.discard("two")
    assert fleet.get("two").status == "discarded"
    assert not Path(two.worktree).exists()
    assert "mc/two" not in git(repo, "branch")
    assert git(repo, "show", f"{ref}:README.md") == "# sample by two"


async def test_symlink_escape_is_refused_and_logged(repo, scripted, fleet_factory, tmp_path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret\n")
    server = scripted(
        {
            "agents": [
                {
                    "name": "x",
                    "turns": [
                        {"say": "Reading.", "tool": "read_file", "args": {"path": "link/secret.txt"}},
                        write_turn("link/evil.txt", "pwned\n"),
                        {"say": "Done."},
                    ],
                }
            ]
        }
    )
    fleet = await fleet_factory(
        fleet_config(repo, server, [AgentConfig(name="x", task="snoop", model="x", policy="never")])
    )
    agent = await fleet.spawn(AgentConfig(name="x", task="snoop", model="x", policy="never"))
    os.symlink(tmp_path, Path(agent.worktree) / "link")
    assert await fleet.wait_settled(20)
    refusals = [e for e in fleet.store.iter_events("x") if isinstance(e, ev.Refused)]
    assert len(refusals) == 2, refusals
    assert all("outside" in r.reason for r in refusals)
    outputs = tool_outputs(server, "x")
    assert all("top secret" not in o for o in outputs)
    assert not (tmp_path / "evil.txt").exists()


async def test_429_then_success_is_retried(repo, scripted, fleet_factory) -> None:
    server = scripted(
        {
            "agents": [
                {
                    "name": "rl",
                    "faults": [{"kind": "429", "times": 1, "retry_after": 0.1, "message": "slow down"}],
                    "turns": [{"say": "All good."}],
                }
            ]
        }
    )
    fleet = await fleet_factory(fleet_config(repo, server, [AgentConfig(name="rl", task="hi", model="rl")]))
    await fleet.spawn_configured()
    assert await fleet.wait_settled(20)
    agent = fleet.get("rl")
    assert agent.status == "idle"
    errors = [e for e in fleet.store.iter_events("rl") if isinstance(e, ev.ErrorEvent)]
    assert len(errors) == 1 and "429" in errors[0].message and "slow down" in errors[0].message
    assert any("All good." in t for _, t in agent.log.lines)
    assert agent.tokens > 0


async def test_endpoint_that_keeps_failing_ends_in_failed_with_its_message(repo, scripted, fleet_factory) -> None:
    server = scripted(
        {"agents": [{"name": "f", "faults": [{"kind": "500", "message": "the model is on fire"}], "turns": []}]}
    )
    cfg = fleet_config(repo, server, [AgentConfig(name="f", task="hi", model="f")], max_retries=2)
    fleet = await fleet_factory(cfg)
    await fleet.spawn_configured()
    assert await fleet.wait_settled(20)
    agent = fleet.get("f")
    assert agent.status == "failed"
    assert "the model is on fire" in agent.error and "500" in agent.error
    assert len(server.requests_for("f")) == 3  # the first try and two retries, no more


async def test_chat_completions_api_works_too(repo, scripted, fleet_factory) -> None:
    server = scripted({"agents": [{"name": "c", "turns": [write_turn("c.txt", "chat\n"), {"say": "Done."}]}]})
    cfg = fleet_config(repo, server, [AgentConfig(name="c", task="t", model="c", policy="never")], api="chat")
    fleet = await fleet_factory(cfg)
    await fleet.spawn_configured()
    assert await fleet.wait_settled(20)
    agent = fleet.get("c")
    assert agent.status == "idle"
    assert (Path(agent.worktree) / "c.txt").read_text() == "chat\n"
    assert server.requests_for("c")[-1].path.endswith("/chat/completions")


async def test_spawn_errors_are_one_line(repo, scripted, fleet_factory, tmp_path) -> None:
    server = scripted({"agents": [{"name": "idle", "turns": []}]})
    fleet = await fleet_factory(fleet_config(repo, server))
    git(repo, "branch", "mc/taken")
    with pytest.raises(FleetError, match="already exists"):
        await fleet.spawn(AgentConfig(name="taken", task="t"))
    with pytest.raises(FleetError, match="not found"):
        await fleet.spawn(AgentConfig(name="b", task="t", base="no-such-branch"))
    with pytest.raises(FleetError, match="letters, digits"):
        await fleet.spawn(AgentConfig(name="a b", task="t"))
    with pytest.raises(FleetError, match="not a git repository"):
        Fleet(fleet_config(tmp_path / "nowhere", server))
    # a second owner is refused; a monitor may follow
    with pytest.raises(FleetLocked):
        await fleet_factory(fleet_config(repo, server))
    monitor = await fleet_factory(fleet_config(repo, server), readonly=True)
    with pytest.raises(FleetError, match="monitor"):
        await monitor.spawn(AgentConfig(name="m", task="t"))


RESTART_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from mc.config import AgentConfig
    from tests.conftest import fleet_config
    from mc.fleet import Fleet

    class S:
        base_url = sys.argv[2]

    async def main():
        cfg = fleet_config(__import__("pathlib").Path(sys.argv[1]), S())
        fleet = Fleet(cfg)
        await fleet.open()
        await fleet.spawn(AgentConfig(name="p", task="make a file", model="p"))
        await fleet.spawn(AgentConfig(name="q", task="sleep a while", model="q", policy="never"))
        while not (fleet.get("p").pending and fleet.get("q").status == "running"):
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        print("ready", flush=True)
        await asyncio.sleep(600)

    asyncio.run(main())
    """
)


async def test_restart_after_sigkill_restores_the_fleet(repo, scripted, fleet_factory) -> None:
    server = scripted(
        {
            "agents": [
                {"name": "p", "turns": [write_turn("p.txt", "restored\n"), {"say": "Done after restart."}]},
                {"name": "q", "turns": [shell_turn("sleep 120"), {"say": "Resumed."}]},
            ]
        }
    )
    root = Path(__file__).resolve().parent.parent
    child = subprocess.Popen(
        [sys.executable, "-c", RESTART_CHILD, str(repo), server.base_url],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 60)
        assert line.strip() == "ready"
    finally:
        child.kill()
        child.wait()
    fleet = await fleet_factory(fleet_config(repo, server))
    p, q = fleet.get("p"), fleet.get("q")
    # the waiting agent waits again with its question; the one that ran is interrupted
    assert p.status == "waiting" and p.oldest_pending().tool == "write_file"
    assert q.status == "interrupted"
    assert not procs.find_tagged(fleet._tag("q"))  # the sleep of the dead process was cleaned up
    assert any("make a file" in t for _, t in p.log.lines)
    await fleet.approve("p")
    await fleet.resume("q")
    assert await fleet.wait_settled(20)
    assert (Path(p.worktree) / "p.txt").read_text() == "restored\n"
    assert p.status == "idle" and q.status == "idle"
    # the model saw the whole conversation again, including the task from before the crash
    assert user_texts(server, "p")[-1] == "make a file"
    assert "restarted" in tool_outputs(server, "q")[-1]


async def test_headless_run_then_merge_three_agents(repo, scripted, tmp_path) -> None:
    agents = [(f"a{i}", f"file{i}.txt") for i in range(3)]
    server = scripted(
        {
            "agents": [
                {"name": name, "turns": [write_turn(path, f"{name}\n"), {"say": f"{name} done."}]}
                for name, path in agents
            ]
        }
    )
    config = tmp_path / "missionctl.toml"
    tables = "\n".join(
        f'[[agents]]\nname = "{name}"\ntask = "Add {path}"\nmodel = "{name}"\npolicy = "never"\n'
        for name, path in agents
    )
    config.write_text(
        f'[repo]\npath = "{repo}"\nworktree_dir = "{tmp_path / "wt"}"\nmerge = "merge"\n'
        f'[model]\nbase_url = "{server.base_url}"\napi_key_env = ""\n\n{tables}'
    )
    run = subprocess.run(
        [sys.executable, "-m", "mc", "run", "--headless", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    assert all({"agent", "type", "ts"} <= set(e) for e in events)
    idle = {e["agent"] for e in events if e["type"] == "status" and e["status"] == "idle"}
    assert idle == {"a0", "a1", "a2"}
    ls = subprocess.run(
        [sys.executable, "-m", "mc", "ls", "--json", "--config", str(config)], capture_output=True, text=True
    )
    rows = {r["name"]: r for r in json.loads(ls.stdout)}
    assert {r["status"] for r in rows.values()} == {"idle"} and rows["a1"]["files_changed"] == 1
    for name, _ in agents:
        merged = subprocess.run(
            [sys.executable, "-m", "mc", "merge", name, "--config", str(config)], capture_output=True, text=True
        )
        assert merged.returncode == 0, merged.stderr
    for name, path in agents:
        assert git(repo, "log", "-1", "--format=%s", f"mc/{name}").startswith(f"{name}: Add {path}")
        assert (repo / path).read_text() == f"{name}\n"
    assert git(repo, "status", "--porcelain") == ""


async def test_a_question_left_open_at_close_is_answered_after_reopening(repo, scripted, fleet_factory) -> None:
    server = scripted({"agents": [{"name": "z", "turns": [write_turn("z.txt", "later\n"), {"say": "Done."}]}]})
    cfg = fleet_config(repo, server, [AgentConfig(name="z", task="write z", model="z")])
    fleet = await fleet_factory(cfg)
    await fleet.spawn_configured()
    await wait_for(lambda: fleet.get("z").pending)
    await fleet.close()
    again = await fleet_factory(cfg)
    agent = again.get("z")
    assert agent.status == "waiting" and agent.oldest_pending().tool == "write_file"
    assert not (Path(agent.worktree) / "z.txt").exists()
    await again.approve("z")
    assert await again.wait_settled(20)
    assert agent.status == "idle"
    assert (Path(agent.worktree) / "z.txt").read_text() == "later\n"
    assert "interrupted" not in " ".join(tool_outputs(server, "z"))
