"""Plain `git` subprocess calls: one place that sets the environment every call needs.

Every call runs with `GIT_OPTIONAL_LOCKS=0` (a read never takes the worktree's `index.lock`, so the agent's own
`git add`/`commit` never fails because we looked), `LC_ALL=C` (messages we can match) and
`GIT_TERMINAL_PROMPT=0` (never wait for a password). Variables that would point git somewhere else
(`GIT_DIR`, `GIT_INDEX_FILE`, … inherited from a hook, say) are dropped unless the caller passes them.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

#: Inherited variables that would redirect git away from the `cwd` we give it.
_REDIRECTING = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_COMMON_DIR",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_PREFIX",
    "GIT_NAMESPACE",
)


class GitError(Exception):
    """A git operation failed; the message is one line naming the problem and, where known, the fix."""


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a git child process."""
    env = {k: v for k, v in os.environ.items() if k not in _REDIRECTING}
    env.update({"GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C", "LANGUAGE": "C", "GIT_TERMINAL_PROMPT": "0"})
    # An automatic gc must not detach: as a child subreaper we would collect its orphan as a zombie.
    if "GIT_CONFIG_COUNT" not in env:
        env.update({"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "gc.autoDetach", "GIT_CONFIG_VALUE_0": "false"})
    if extra:
        env.update(extra)
    return env


def _name(args: list[str]) -> str:
    """The git subcommand of `args` for messages, skipping `-c key=value` options."""
    i = 0
    while i < len(args) and args[i] == "-c":
        i += 2
    return " ".join(args[i : i + 2])


def _first_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    # git puts the decisive line first ("fatal: …"), hints after it.
    for line in lines:
        if line.startswith(("fatal:", "error:")):
            return line
    return lines[0] if lines else "no message"


def run_git(
    args: list[str],
    cwd: Path,
    *,
    check: bool = True,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> str:
    """Run `git ARGS` in `cwd` and return its stdout (undecodable bytes kept as surrogates).

    Raises GitError with git's own message when the exit status is not 0 (unless `check` is false),
    when git is missing, or when `timeout` seconds pass.
    """
    try:
        proc = subprocess.run(
            ["git", *args],
            cwd=cwd,
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=True,
            env=git_env(env),
            timeout=timeout,
        )
    except FileNotFoundError as exc:
        if not Path(cwd).is_dir():
            raise GitError(f"{cwd} does not exist: create it or point at an existing folder") from None
        raise GitError("git is not installed or not on PATH: install git 2.39 or newer") from exc
    except subprocess.TimeoutExpired:
        raise GitError(f"git {_name(args)} in {cwd} took more than {timeout:g} s: retry, or check the disk") from None
    if check and proc.returncode != 0:
        message = _first_line(proc.stderr.decode("utf-8", "replace"))
        raise GitError(f"git {_name(args)} failed in {cwd}: {message}")
    return proc.stdout.decode("utf-8", "surrogateescape")


def run_git_status(
    args: list[str], cwd: Path, *, env: dict[str, str] | None = None, timeout: float | None = None
) -> tuple[int, str, str]:
    """Run `git ARGS` in `cwd` and return (exit status, stdout, stderr) without raising on a non-zero status."""
    try:
        proc = subprocess.run(
            ["git", *args],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=git_env(env),
            timeout=timeout,
        )
    except FileNotFoundError as exc:
        raise GitError("git is not installed or not on PATH: install git 2.39 or newer") from exc
    except subprocess.TimeoutExpired:
        raise GitError(f"git {_name(args)} in {cwd} took more than {timeout:g} s: retry, or check the disk") from None
    return (
        proc.returncode,
        proc.stdout.decode("utf-8", "surrogateescape"),
        _first_line(proc.stderr.decode("utf-8", "replace")),
    )


def read_git_capped(args: list[str], cwd: Path, limit: int) -> tuple[bytes, bool]:
    """Run `git ARGS` and read at most `limit` bytes of its stdout, in chunks.

    Returns (output, truncated). When the output is longer, git is killed as soon as the limit is reached,
    so a 100 MB diff costs what its first `limit` bytes cost, never a 100 MB string.
    """
    with tempfile.TemporaryFile() as errfile:
        try:
            proc = subprocess.Popen(
                ["git", *args],
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=errfile,
                env=git_env(),
            )
        except FileNotFoundError as exc:
            raise GitError("git is not installed or not on PATH: install git 2.39 or newer") from exc
        assert proc.stdout is not None
        chunks: list[bytes] = []
        size = 0
        truncated = False
        try:
            while True:
                chunk = proc.stdout.read1(1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    truncated = True
                    break
        finally:
            if truncated and proc.poll() is None:
                proc.kill()
            proc.stdout.close()
            returncode = proc.wait()
        if not truncated and returncode != 0:
            errfile.seek(0)
            message = _first_line(errfile.read(8192).decode("utf-8", "replace"))
            raise GitError(f"git {_name(args)} failed in {cwd}: {message}")
    data = b"".join(chunks)
    if truncated:
        data = data[:limit]
    return data, truncated
