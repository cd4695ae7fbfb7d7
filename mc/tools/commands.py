"""Shell commands: the approval key, the allow-list match, the environment and the bubblewrap sandbox."""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

#: Shell syntax that chains, pipes, substitutes or redirects: never auto-allowed by a prefix.
_COMPOUND = re.compile(r"[;&|`<>\n\r]|\$\(")
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
#: Programs whose first word is a subcommand ("git status", "npm run test").
_SUBCOMMAND_PROGRAMS = frozenset(
    {
        "git", "npm", "pnpm", "yarn", "bun", "cargo", "go", "docker", "podman", "kubectl", "helm", "pip", "pip3",
        "uv", "poetry", "pdm", "hatch", "conda", "gh", "apt", "apt-get", "brew", "dotnet", "deno", "rustup",
        "terraform", "systemctl", "npx", "pipx",
    }
)  # fmt: skip
#: Subcommands that take the name of what they run as the next word: "npm run test", "uv run pytest".
_RUNNERS = frozenset({"run", "exec", "x", "dlx"})
#: Interpreters: the key is the script or module they run, never the interpreter alone.
_INTERPRETER = re.compile(r"(python|python[0-9.]+|node|bash|sh|zsh|perl|ruby|php)")
#: Wrappers that run another command: the key is the whole command line.
_WRAPPERS = frozenset({"sudo", "env", "xargs", "timeout", "nice", "nohup", "time", "command", "exec", "eval", "su"})


def _words(command: str) -> list[str] | None:
    try:
        return shlex.split(command)
    except ValueError:
        return None


def command_key(command: str) -> str:
    """The "same kind of call" key that approve-all remembers.

    The program and its subcommand: "git status -s" → "git status", "npm run test" → "npm run test",
    "python -m pytest -q" → "python -m pytest", "pytest -x" → "pytest", "python x.py" → "python x.py".
    A compound command (;, &&, |, `…`, $(…), redirection), a leading VAR=value, a wrapper (sudo, env …)
    or options before a subcommand make the key the whole command, so only that exact command matches.
    """
    command = command.strip()
    words = _words(command)
    if not words or _COMPOUND.search(command) or _ASSIGNMENT.match(words[0]):
        return command
    program = os.path.basename(words[0])
    rest = words[1:]
    if program in _WRAPPERS:
        return command
    if _INTERPRETER.fullmatch(program):
        if not rest:
            return program
        if rest[0] == "-m" and len(rest) > 1:
            return f"{program} -m {rest[1]}"
        if rest[0].startswith("-"):
            return command
        return f"{program} {rest[0]}"
    if program in _SUBCOMMAND_PROGRAMS and rest:
        if rest[0].startswith("-"):
            return command
        key = f"{program} {rest[0]}"
        if rest[0] in _RUNNERS and len(rest) > 1 and not rest[1].startswith("-"):
            key += f" {rest[1]}"
        return key
    return program


def allowed_by_prefix(command: str, allow: list[str]) -> bool:
    """Whether an allow-list entry is a word prefix of the command ("pytest" allows "pytest -x tests").

    Compound commands (;, &, |, `…`, $(…), redirection, several lines) are never allowed this way.
    """
    if not command.strip() or _COMPOUND.search(command):
        return False
    words = _words(command)
    if not words:
        return False
    for entry in allow:
        prefix = _words(entry)
        if prefix and words[: len(prefix)] == prefix:
            return True
    return False


#: Variables of our environment a tool's command gets by default.
SAFE_VARS = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "USER", "LOGNAME", "TMPDIR", "TZ", "SHELL")


def safe_env(pass_env: list[str]) -> dict[str, str]:
    """A small environment for tool commands: PATH, HOME, LANG, USER, TMPDIR …, TERM=dumb, no pager, no
    credential prompts, plus the variables named in `pass_env` — never anything else (no API key unless named)."""
    env = {name: os.environ[name] for name in SAFE_VARS if name in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.setdefault("LANG", "C.UTF-8")
    env.update(TERM="dumb", PAGER="cat", GIT_PAGER="cat", GIT_TERMINAL_PROMPT="0")
    for name in pass_env:
        if name in os.environ:
            env[name] = os.environ[name]
    return env


BWRAP_MISSING = (
    'sandbox = "bwrap" but bubblewrap is not installed: apt-get install bubblewrap, or set [tools] sandbox = "none"'
)


@functools.lru_cache(maxsize=8)
def _probe(bwrap: str) -> tuple[bool, str]:
    try:
        done = subprocess.run(
            [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-net", "--", "true"],
            capture_output=True,
            timeout=20,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f'sandbox = "bwrap" but {bwrap} does not run: {exc}: set [tools] sandbox = "none"'
    if done.returncode != 0:
        why = (done.stderr.decode(errors="replace").strip().splitlines() or ["it failed"])[-1]
        return False, (
            f'sandbox = "bwrap" but bubblewrap cannot run here ({why}): allow unprivileged user namespaces, '
            'or set [tools] sandbox = "none"'
        )
    version = subprocess.run([bwrap, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return True, f"{version or 'bubblewrap'} at {bwrap}"


def find_bwrap(path: str | None = None) -> str | None:
    """The bwrap a command with this PATH would run (our own PATH when None)."""
    return shutil.which("bwrap", path=path)


def sandbox_available(path: str | None = None) -> tuple[bool, str]:
    """Whether bubblewrap is installed and works here: (True, "bubblewrap 0.8.0 at /usr/bin/bwrap") or
    (False, the one-line reason and fix). `path` is the PATH to search (our own when None)."""
    bwrap = find_bwrap(path)
    if bwrap is None:
        return False, BWRAP_MISSING
    return _probe(bwrap)


def bwrap_argv(bwrap: str, root: Path, argv: list[str]) -> list[str]:
    """`argv` under bubblewrap: everything read-only, the worktree writable, a private /tmp, no network."""
    wt = str(root)
    return [
        bwrap,
        "--ro-bind", "/", "/",
        "--dev", "/dev",
        "--proc", "/proc",
        "--tmpfs", "/tmp",
        "--bind", wt, wt,
        "--unshare-net",
        "--die-with-parent",
        "--chdir", wt,
        "--",
        *argv,
    ]  # fmt: skip
