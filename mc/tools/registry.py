"""The built-in agent's tools as the model sees them, and what an approval shows."""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from mc.tools.patch import PatchError, patch_files
from mc.tools.workspace import Refusal, Workspace


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]
    """JSON schema of the arguments."""
    kind_of: Callable[[dict[str, Any]], str]
    """"read", "write" or "command": what the approval policy sees."""
    summary: Callable[[dict[str, Any]], str]
    """One line for the log: the command, the path …"""


def _short(text: object, limit: int = 160) -> str:
    line = str(text).strip().replace("\n", " ⏎ ")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _lines_label(args: dict[str, Any]) -> str:
    start, end = args.get("start_line"), args.get("end_line")
    if start is None and end is None:
        return ""
    return f":{start or 1}-{end or ''}"


def _patch_summary(args: dict[str, Any]) -> str:
    try:
        return "patch " + _short(", ".join(patch_files(str(args.get("patch", ""))).paths) or "(no files)")
    except PatchError:
        return "patch (not a unified diff)"


def _schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


_PATH = {"type": "string", "description": "A path relative to the root of the worktree."}

TOOLS: dict[str, ToolSpec] = {
    spec.name: spec
    for spec in (
        ToolSpec(
            name="shell",
            description=(
                "Run a shell command (bash -c) in the root of the worktree and return its output (stdout and stderr "
                "together) and exit code. No terminal, no input; processes still running when it ends are stopped."
            ),
            parameters=_schema(
                {
                    "command": {"type": "string", "description": "The command line."},
                    "timeout": {"type": "number", "description": "Seconds before the command is killed (capped)."},
                },
                ["command"],
            ),
            kind_of=lambda args: "command",
            summary=lambda args: _short(args.get("command", "")),
        ),
        ToolSpec(
            name="read_file",
            description="Read a text file of the worktree, or lines start_line..end_line of it (1-based, inclusive).",
            parameters=_schema(
                {
                    "path": _PATH,
                    "start_line": {"type": "integer", "minimum": 1},
                    "end_line": {"type": "integer", "minimum": 1},
                },
                ["path"],
            ),
            kind_of=lambda args: "read",
            summary=lambda args: f"read {_short(args.get('path', ''))}{_lines_label(args)}",
        ),
        ToolSpec(
            name="write_file",
            description="Create or replace a file of the worktree with the given content (folders are created).",
            parameters=_schema({"path": _PATH, "content": {"type": "string"}}, ["path", "content"]),
            kind_of=lambda args: "write",
            summary=lambda args: (
                f"write {_short(args.get('path', ''))} ({len(str(args.get('content', '')).splitlines())} lines)"
            ),
        ),
        ToolSpec(
            name="apply_patch",
            description=(
                "Apply a unified diff (git style: diff --git a/x b/x, --- a/x, +++ b/x, @@ hunks) to the worktree. "
                "Use --- /dev/null to create a file and +++ /dev/null to delete one."
            ),
            parameters=_schema({"patch": {"type": "string", "description": "The unified diff."}}, ["patch"]),
            kind_of=lambda args: "write",
            summary=_patch_summary,
        ),
        ToolSpec(
            name="list_files",
            description="List the files under a folder of the worktree (ignored files left out), one path a line.",
            parameters=_schema({"path": {**_PATH, "default": "."}}, []),
            kind_of=lambda args: "read",
            summary=lambda args: f"list {_short(args.get('path') or '.')}",
        ),
        ToolSpec(
            name="search",
            description="Search the worktree's text files for a regular expression; returns path:line:text matches.",
            parameters=_schema(
                {"pattern": {"type": "string", "description": "A regular expression."}, "path": _PATH}, ["pattern"]
            ),
            kind_of=lambda args: "read",
            summary=lambda args: f"search /{_short(args.get('pattern', ''), 80)}/ in {_short(args.get('path') or '.')}",
        ),
    )
}


def openai_tools(api: Literal["responses", "chat"] = "responses") -> list[dict[str, Any]]:
    """The function-tool definitions in the shape each OpenAI API expects."""
    if api == "responses":
        return [
            {
                "type": "function",
                "name": t.name,
                "description": t.description,
                "parameters": t.parameters,
                "strict": False,
            }
            for t in TOOLS.values()
        ]
    if api == "chat":
        return [
            {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
            for t in TOOLS.values()
        ]
    raise ValueError(f"unknown api {api!r}: use responses or chat")


def unified_diff(old: str | None, new: str | None, path: str) -> str:
    """A git-style diff of one file's text (None is /dev/null), with "\\ No newline at end of file" markers."""
    a = old.splitlines(keepends=True) if old is not None else []
    b = new.splitlines(keepends=True) if new is not None else []
    out = []
    for line in difflib.unified_diff(
        a, b, "a/" + path if old is not None else "/dev/null", "b/" + path if new is not None else "/dev/null"
    ):
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)


def preview(name: str, args: dict[str, Any], ws: Workspace) -> str:
    """What an approval shows: the full command, the change as a diff, or the patch. Raises Refusal for paths
    outside the worktree."""
    if name == "shell":
        return str(args.get("command", ""))
    if name == "write_file":
        real = ws.resolve(str(args.get("path", "")), for_write=True)
        old: str | None = None
        if real.is_file():
            data = ws.read_bytes(ws.relative(real))
            old = "(binary file)\n" if b"\0" in data[:8192] else data.decode("utf-8", errors="replace")
        return unified_diff(old, str(args.get("content", "")), ws.relative(real)) or "(no change)"
    if name == "apply_patch":
        patch = str(args.get("patch", ""))
        try:
            files = patch_files(patch)
        except PatchError:
            return patch
        for path in files.paths:
            ws.resolve(path, for_write=True)
        return patch
    if name in ("read_file", "list_files", "search"):
        ws.resolve(str(args.get("path") or "."))
        return TOOLS[name].summary(args)
    return f"{name} {json.dumps(args, ensure_ascii=False)}"


__all__ = ["TOOLS", "Refusal", "ToolSpec", "openai_tools", "preview", "unified_diff"]
