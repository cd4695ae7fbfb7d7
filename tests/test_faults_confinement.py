"""Fault suite, confinement: a scripted model, through the real Fleet, makes tool calls that try to leave the
worktree (.., absolute paths, a symlink to /, symlinks to outside folders in the path, /proc/self/root, a NUL
or newline in the path, a sibling agent's worktree). Every one is refused, each refusal is a Refused event in
the log, the model never sees a byte from outside, and nothing outside changed (a sentinel folder and the
sibling worktree hash the same before and after).

The symlinks are committed in the repository, so each worktree has them from its first moment."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from mc import events as ev
from mc.config import AgentConfig
from tests.conftest import fleet_config, git, make_repo

SECRET = "top secret sentinel text"


def tree_hash(root: Path, skip: tuple[str, ...] = ()) -> str:
    """A digest of every name, type, mode, link target and file content under `root` (links not followed),
    leaving out the top-level folders named in `skip`."""
    digest = hashlib.sha256()
    for folder, dirs, files in os.walk(root, followlinks=False):
        if Path(folder) == root:
            dirs[:] = [d for d in dirs if d not in skip]
        dirs.sort()
        for name in sorted(dirs + files):
            path = Path(folder) / name
            st = path.lstat()
            digest.update(f"{path.relative_to(root)}\0{st.st_mode}\0".encode())
            if path.is_symlink():
                digest.update(os.readlink(path).encode())
            elif path.is_file():
                digest.update(path.read_bytes())
    return digest.hexdigest()


def corpus(sentinel: Path) -> list[tuple[str, dict[str, Any]]]:
    """(tool, arguments) of calls that each try to reach outside the worktree <tmp>/worktrees/<agent>."""
    up = "../../sentinel"
    patch = f"--- a/{up}/secret.txt\n+++ b/{up}/secret.txt\n@@ -1 +1 @@\n-{SECRET}\n+pwned\n"
    create = "--- /dev/null\n+++ b/rootlink/tmp/mc-escape-patch.txt\n@@ -0,0 +1 @@\n+pwned\n"
    return [
        ("read_file", {"path": f"{up}/secret.txt"}),
        ("read_file", {"path": str(sentinel / "secret.txt")}),
        ("write_file", {"path": str(sentinel / "new.txt"), "content": "pwned"}),
        ("write_file", {"path": f"{up}/secret.txt", "content": "pwned"}),
        ("write_file", {"path": f"sub/../../{up}/new.txt", "content": "pwned"}),
        ("read_file", {"path": "rootlink/etc/hostname"}),
        ("write_file", {"path": "rootlink/tmp/mc-escape.txt", "content": "pwned"}),
        ("read_file", {"path": "outlink/secret.txt"}),
        ("write_file", {"path": "outlink/new.txt", "content": "pwned"}),
        ("write_file", {"path": "nest/escape/secret.txt", "content": "pwned"}),
        ("read_file", {"path": f"/proc/self/root{sentinel}/secret.txt"}),
        ("write_file", {"path": f"/proc/self/root{sentinel}/proc.txt", "content": "pwned"}),
        ("read_file", {"path": f"README.md\0{up}/secret.txt"}),
        ("write_file", {"path": f"ok.txt\n{up}/new.txt", "content": "pwned"}),
        ("read_file", {"path": "../other/README.md"}),
        ("write_file", {"path": "../other/README.md", "content": "pwned"}),
        ("apply_patch", {"patch": patch}),
        ("apply_patch", {"patch": create}),
        ("list_files", {"path": "/"}),
        ("list_files", {"path": "outlink"}),
        ("search", {"pattern": "secret", "path": up}),
        ("search", {"pattern": "secret", "path": "nest/escape"}),
        ("write_file", {"path": ".git", "content": "gitdir: /tmp\n"}),
    ]


@pytest.mark.parametrize("policy", ["never", "always"])
async def test_every_escape_is_refused_logged_and_changes_nothing(
    policy: str, tmp_path: Path, scripted: Any, fleet_factory: Any
) -> None:
    sentinel = tmp_path / "sentinel"
    (sentinel / "deeper").mkdir(parents=True)
    (sentinel / "secret.txt").write_text(SECRET + "\n")
    (sentinel / "deeper" / "more.txt").write_text(SECRET + " again\n")
    repo = make_repo(tmp_path / "repo")
    (repo / "nest").mkdir()
    os.symlink("/", repo / "rootlink")
    os.symlink(sentinel, repo / "outlink")
    os.symlink("../../../sentinel", repo / "nest" / "escape")  # relative: from <tmp>/worktrees/<agent>/nest
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "symlinks")

    calls = corpus(sentinel)
    turns: list[dict[str, Any]] = [
        {"say": f"Try {i}.", "tool": tool, "args": args} for i, (tool, args) in enumerate(calls)
    ]
    server = scripted(
        {
            "agents": [
                {"name": "escaper", "turns": [*turns, {"say": "Done."}]},
                {"name": "other", "turns": [{"say": "Hi."}]},
            ]
        }
    )
    fleet = await fleet_factory(fleet_config(repo, server))
    await fleet.spawn(AgentConfig(name="other", task="stay put", model="other", policy="never"))
    assert await fleet.wait_settled(20)
    sibling = Path(fleet.get("other").worktree)
    assert (sibling / "README.md").exists() and (Path(fleet.worktree_dir) / "escaper").parent == sibling.parent
    before = (tree_hash(sentinel), tree_hash(sibling), tree_hash(repo, skip=(".git", ".mc")))

    await fleet.spawn(AgentConfig(name="escaper", task="get out", model="escaper", policy=policy))
    assert await fleet.wait_settled(60)
    agent = fleet.get("escaper")
    assert agent.status == "idle", (agent.status, agent.error)
    assert not agent.pending  # nothing was ever put to the engineer: each call was refused first

    logged = list(fleet.store.iter_events("escaper"))
    calls_logged = [e for e in logged if isinstance(e, ev.ToolCall)]
    refused = {e.call_id: e for e in logged if isinstance(e, ev.Refused)}
    results = {e.call_id: e for e in logged if isinstance(e, ev.ToolResult)}
    assert len(calls_logged) == len(calls)
    for call, (tool, args) in zip(calls_logged, calls, strict=True):
        assert call.tool == tool
        assert call.call_id in refused, f"not refused: {tool} {args}: {results[call.call_id].output[:200]}"
        assert not results[call.call_id].ok
        assert results[call.call_id].output.startswith("refused:")
    assert not [e for e in logged if isinstance(e, ev.ApprovalRequested)]
    # the refusals are in the human log too
    shown = {text for _, text in agent.log.lines}
    assert all(f"  refused: {r.reason}" in shown for r in refused.values())
    # the model never saw a byte from outside
    outputs = [e.text for e in server.requests_for("escaper")[-1].entries if e.kind == "output"]
    assert len(outputs) == len(calls)
    assert not any(SECRET in out or "root:" in out for out in outputs)
    # nothing outside the worktree changed
    assert (tree_hash(sentinel), tree_hash(sibling), tree_hash(repo, skip=(".git", ".mc"))) == before
    assert not Path("/tmp/mc-escape.txt").exists() and not Path("/tmp/mc-escape-patch.txt").exists()
