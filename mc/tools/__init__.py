"""The built-in agent's tools (shell, read_file, write_file, apply_patch, list_files, search), confined to its
worktree: paths are checked with realpath + commonpath and opened with openat2(RESOLVE_BENEATH); shell commands
run in the worktree with a small environment, optionally under bubblewrap."""

from mc.tools.commands import allowed_by_prefix, command_key, safe_env, sandbox_available
from mc.tools.registry import TOOLS, ToolSpec, openai_tools, preview, unified_diff
from mc.tools.run import ToolOutcome, run_tool, truncate_output
from mc.tools.workspace import Refusal, Workspace

__all__ = [
    "TOOLS",
    "Refusal",
    "ToolOutcome",
    "ToolSpec",
    "Workspace",
    "allowed_by_prefix",
    "command_key",
    "openai_tools",
    "preview",
    "run_tool",
    "safe_env",
    "sandbox_available",
    "truncate_output",
    "unified_diff",
]
