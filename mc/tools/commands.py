"""Shell commands: the approval key, the allow-list match, the environment and the bubblewrap sandbox."""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from mc.tools import seccomp

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
    fd = seccomp.program_fd()
    try:
        done = subprocess.run(
            [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", *_isolation(fd), "--", "true"],
            capture_output=True,
            timeout=20,
            stdin=subprocess.DEVNULL,
            pass_fds=() if fd is None else (fd,),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f'sandbox = "bwrap" but {bwrap} does not run: {exc}: set [tools] sandbox = "none"'
    finally:
        if fd is not None:
            os.close(fd)
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


#: System folders a sandboxed command sees, read-only (those that exist; a symlink such as /bin → usr/bin stays one).
SYSTEM_FOLDERS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/sys", "/nix")
#: PATH folders whose parent holds what their programs need (~/.cargo/bin → ~/.cargo, ~/.pyenv/shims → ~/.pyenv).
_BIN_NAMES = frozenset({"bin", "sbin", "shims"})


def _isolation(seccomp_fd: int | None) -> list[str]:
    """Namespaces of their own (processes, IPC, host name, network, cgroups), a new session, death with the
    parent, the seccomp filter read from `seccomp_fd` (no Unix socket, no io_uring: mc.tools.seccomp); as
    root, no capabilities either (an unprivileged bwrap drops them itself)."""
    flags = ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net", "--unshare-cgroup-try"]
    flags += ["--die-with-parent", "--new-session"]
    if seccomp_fd is not None:
        flags += ["--seccomp", str(seccomp_fd)]
    if os.geteuid() == 0:
        flags += ["--cap-drop", "ALL"]
    return flags


def _inside_any(path: str, folders: list[str]) -> bool:
    for folder in folders:
        try:
            if os.path.commonpath([path, folder]) == folder:
                return True
        except ValueError:
            continue
    return False


def _local_folders(bin_folder: str, local: str) -> list[str]:
    """What the programs of ~/.local/bin need, without the rest of ~/.local (~/.local/share holds keyrings,
    shell histories, other programs' data): the bin folder, ~/.local/lib (pip --user), and for each program
    that is a symlink elsewhere under ~/.local (pipx, uv tools) the folder two levels below ~/.local that holds
    its target (~/.local/share/pipx)."""
    folders = [bin_folder, os.path.join(local, "lib")]
    try:
        names = os.listdir(bin_folder)
    except OSError:
        names = []
    for name in names[:1000]:
        target = os.path.realpath(os.path.join(bin_folder, name))
        try:
            rel = os.path.relpath(target, local)
        except ValueError:
            continue
        parts = rel.split(os.sep)
        if rel.startswith("..") or parts[0] in ("bin", "lib") or len(parts) < 3:
            continue  # outside ~/.local (its own PATH entry or a system folder), or already bound
        folders.append(os.path.join(local, parts[0], parts[1]))
    return [f for f in dict.fromkeys(folders) if os.path.isdir(f)]


def program_folders(path: str | None, home: str | None = None) -> list[str]:
    """The folders outside the system folders that the programs on `path` need: each PATH entry, or its parent
    when it is a bin folder (~/.cargo/bin → ~/.cargo), but never the home folder or / itself, and of ~/.local
    only what its programs need (see _local_folders)."""
    system = [os.path.realpath(f) for f in SYSTEM_FOLDERS if os.path.isdir(f)]
    home_real = os.path.realpath(home) if home else ""
    local = os.path.join(home_real, ".local") if home_real else ""
    found: list[str] = []
    for entry in (path or "").split(os.pathsep):
        if not os.path.isabs(entry) or not os.path.isdir(entry):
            continue
        real = os.path.realpath(entry)
        folder = os.path.dirname(real) if os.path.basename(real) in _BIN_NAMES else real
        if folder in ("/", home_real):
            folder = real
        folders = _local_folders(real, local) if local and folder == local else [folder]
        for folder in folders:
            if folder in ("/", home_real, local) or _inside_any(folder, system + found):
                continue
            found = [f for f in found if not _inside_any(f, [folder])] + [folder]
    return found


def bwrap_argv(
    bwrap: str,
    root: Path,
    argv: list[str],
    *,
    git_dir: Path | None = None,
    path: str | None = None,
    home: str | None = None,
    seccomp_fd: int | None = None,
) -> list[str]:
    """`argv` under bubblewrap, seeing only what a command needs: the system folders and the folders of the
    programs on `path` read-only, a private /tmp (and an empty home folder), the worktree `root` writable, its
    `.git` and the repository's `git_dir` read-only; no other process, no host IPC, no network, and with the
    filter of `seccomp_fd` (mc.tools.seccomp.program_fd, which the child must inherit) no Unix socket.
    """
    wt = str(root)
    args = [bwrap]
    for folder in SYSTEM_FOLDERS:
        if os.path.islink(folder):
            args += ["--symlink", os.readlink(folder), folder]
        elif os.path.isdir(folder):
            args += ["--ro-bind", folder, folder]
    args += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", "/var/tmp"]
    system = [os.path.realpath(f) for f in SYSTEM_FOLDERS if os.path.isdir(f)]
    if (
        home
        and os.path.isabs(home)
        and os.path.realpath(home) != "/"
        and not _inside_any(os.path.realpath(home), system)
    ):
        args += ["--tmpfs", os.path.realpath(home)]
    for folder in program_folders(path, home):
        args += ["--ro-bind", folder, folder]
    if git_dir is not None:
        args += ["--ro-bind", str(git_dir), str(git_dir)]
    args += ["--bind", wt, wt]
    dotgit = os.path.join(wt, ".git")
    if not os.path.islink(dotgit) and os.path.exists(dotgit):  # (mission control never makes it a symlink)
        args += ["--ro-bind", dotgit, dotgit]
    return [*args, *_isolation(seccomp_fd), "--chdir", wt, "--", *argv]
