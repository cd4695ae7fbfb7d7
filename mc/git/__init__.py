"""Git for mission control: worktrees per agent, diffs against the base, snapshot, commit, merge, discard.

Every operation is a plain `git` subprocess (no GitPython objects, so no helper processes stay alive).
"""

from mc.git.cmd import GitError, git_env, run_git
from mc.git.diff import Diff, DiffScheduler, compute_diff
from mc.git.repo import MergeMode, MergeResult, Repo, WorktreeInfo

__all__ = [
    "Diff",
    "DiffScheduler",
    "GitError",
    "MergeMode",
    "MergeResult",
    "Repo",
    "WorktreeInfo",
    "compute_diff",
    "git_env",
    "run_git",
]
