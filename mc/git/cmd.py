"""Plain `git` subprocess calls: one place that sets the environment every call needs.

Every call runs with `GIT_OPTIONAL_LOCKS=0` (a read never takes the worktree's `index.lock`, so the agent's own
`git add`/`commit` never fails because we looked), `LC_ALL=C` (messages we can match) and
`GIT_TERMINAL_PROMPT=0` (never wait for a password). Variables that would point git somewhere else
(`GIT_DIR`, `GIT_INDEX_FILE`, … inherited from a hook, say) are dropped unless the caller passes them.

Calls in an agent's worktree are confined, because an agent's command can write that worktree (and, without a
sandbox, whatever the user can write), while these calls run outside any sandbox:

- The git dir and the work tree are named (`--git-dir`, `--work-tree`), so git never reads the worktree's
  `.git` file to find its repository. The git dir is the one the repository itself records for that folder
  (`<common git dir>/worktrees/<id>/gitdir`, outside the worktree), the `.git` file must still point there
  and that git dir's `commondir` at the repository: when not, the call is refused with a message that says
  how to put it back.
- Config that runs a program is switched off with command-scope config entries (`GIT_CONFIG_KEY_<n>`, which
  win over the system, global, repository and `config.worktree` files): `core.fsmonitor`, `core.hooksPath`,
  the credential helper, askpass, commit signing, and every filter driver (`filter.<name>.clean`, `smudge`,
  `process`) the config defines, whichever `.gitattributes` names it. `diff`, `log` and `show` get
  `--no-ext-diff --no-textconv`. So Git LFS and other filters do not run there: what mission control reads
  and commits in an agent's worktree is the bytes on disk.
- `diff` and `status` get `--ignore-submodules=dirty` unless the caller chose: git would otherwise start
  itself inside each submodule, a repository the agent may have made, with a config no one has read. What is
  inside a submodule is looked at by calls of its own there, confined the same way.
- `git worktree remove` (run in the main working tree) starts `git status` in the agent's worktree: it gets
  the same switched-off config.

A repository becomes mission control's with `trust_repository` (Repo does it when it opens one); its main
working tree is the user's and keeps the user's config as it is. Any other folder (a plain repository, a
submodule inside a worktree) gets the switched-off config but no named git dir.
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
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

#: Config that makes git run a program, switched off for calls in an agent's worktree (filters come on top).
NO_PROGRAMS: tuple[tuple[str, str], ...] = (
    ("core.fsmonitor", "false"),
    ("core.hooksPath", os.devnull),
    ("credential.helper", ""),
    ("core.askPass", ""),
    ("commit.gpgSign", "false"),
)
#: Subcommands that would run an external diff program or a textconv filter.
_DIFFING = frozenset({"diff", "log", "show"})
#: Variables that choose which config files git reads (part of the filter cache key).
_CONFIG_VARS = (
    "HOME",
    "XDG_CONFIG_HOME",
    "GIT_CONFIG_GLOBAL",
    "GIT_CONFIG_SYSTEM",
    "GIT_CONFIG_NOSYSTEM",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
)

_GUARD = threading.Lock()
_TRUSTED: dict[str, str] = {}  # real common git dir → real main working tree
_ROOTS: set[str] = set()  # main working trees of trusted repositories: the user's config applies there
_ADMIN: dict[str, str] = {}  # real agent worktree → real git dir (<common>/worktrees/<id>), found before
#: (git dir, config env) → (config files read, their stats, filter names)
_FILTERS: dict[tuple[object, ...], tuple[tuple[str, ...], tuple[object, ...], tuple[str, ...]]] = {}


class GitError(Exception):
    """A git operation failed; the message is one line naming the problem and, where known, the fix."""


def git_env(extra: Mapping[str, str] | None = None, config: Sequence[tuple[str, str]] = ()) -> dict[str, str]:
    """The environment for a git child process; `config` entries are added as command-scope config."""
    env = {k: v for k, v in os.environ.items() if k not in _REDIRECTING}
    env.update({"GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C", "LANGUAGE": "C", "GIT_TERMINAL_PROMPT": "0"})
    # An automatic gc must not detach: as a child subreaper we would collect its orphan as a zombie.
    add_config(env, [("gc.autoDetach", "false"), *config])
    if extra:
        env.update(extra)
    return env


def add_config(env: dict[str, str], entries: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Append `entries` to the command-scope config of `env` (GIT_CONFIG_COUNT/KEY_n/VALUE_n), after any the
    environment already has; later entries win. Returns `env`."""
    try:
        count = max(int(env.get("GIT_CONFIG_COUNT", "0") or 0), 0)
    except ValueError:
        count = 0
    for key, value in entries:
        env[f"GIT_CONFIG_KEY_{count}"] = key
        env[f"GIT_CONFIG_VALUE_{count}"] = value
        count += 1
    env["GIT_CONFIG_COUNT"] = str(count)
    return env


def trust_repository(common_dir: str | os.PathLike[str], root: str | os.PathLike[str]) -> None:
    """Mark the repository with git dir `common_dir` and main working tree `root` as mission control's: git
    calls in its other (linked) worktrees are confined (see the module's docstring)."""
    common, top = os.path.realpath(common_dir), os.path.realpath(root)
    with _GUARD:
        _TRUSTED[common] = top
        _ROOTS.add(top)


def _points_back(admin: str, worktree: str) -> bool:
    """Whether the git dir `admin` records `worktree` as its working tree (its `gitdir` file names worktree/.git)."""
    try:
        with open(os.path.join(admin, "gitdir"), encoding="utf-8", errors="surrogateescape") as fh:
            recorded = fh.read(8192).strip()
    except OSError:
        return False
    if not recorded:
        return False
    recorded = os.path.join(admin, recorded)  # relative paths are relative to the git dir
    return os.path.realpath(os.path.dirname(recorded)) == worktree


def agent_git_dir(worktree: str | os.PathLike[str]) -> Path | None:
    """The git dir a trusted repository keeps for its linked worktree at `worktree` (never read from the worktree
    itself), or None when `worktree` is no such worktree (or is a repository's main working tree)."""
    real = os.path.realpath(worktree)
    if real in _ROOTS:
        return None
    known = _ADMIN.get(real)
    if known is not None and _points_back(known, real):
        return Path(known)
    for common in list(_TRUSTED):
        folder = os.path.join(common, "worktrees")
        try:
            names = sorted(os.listdir(folder))
        except FileNotFoundError:
            if not os.path.isdir(common):
                with _GUARD:
                    _TRUSTED.pop(common, None)
            continue
        except OSError:
            continue
        for name in names:
            admin = os.path.realpath(os.path.join(folder, name))
            if _points_back(admin, real):
                with _GUARD:
                    _ADMIN[real] = admin
                return Path(admin)
    return None


def _check_dot_git(worktree: str, admin: str) -> None:
    """Refuse when `worktree`/.git no longer points at `admin`, where mission control put it."""
    dotgit = os.path.join(worktree, ".git")
    restore = f"printf 'gitdir: %s\\n' {shlex.quote(admin)} > {shlex.quote(dotgit)}"
    try:
        st = os.lstat(dotgit)
    except FileNotFoundError:
        now = "it is gone"
    else:
        if stat.S_ISDIR(st.st_mode):
            now = "it is a folder now"
            restore = f"mv {shlex.quote(dotgit)} {shlex.quote(dotgit + '.moved')} && {restore}"
        else:
            try:
                with open(dotgit, encoding="utf-8", errors="replace") as fh:
                    text = fh.read(8192).strip()
            except OSError as exc:
                text = f"unreadable: {exc.strerror}"
            target = text[len("gitdir:") :].strip() if text.startswith("gitdir:") else ""
            if target and os.path.realpath(os.path.join(worktree, target)) == admin:
                return
            now = f"it says {text[:200]!r}"
    raise GitError(
        f"{dotgit} no longer points at {admin}, where mission control put it ({now}): something in the worktree "
        f"changed it, so mission control runs no git there; check what changed it, then restore it: `{restore}`"
    )


def _check_common_dir(admin: str) -> None:
    """Refuse when the git dir `admin` (<common>/worktrees/<id>) no longer names <common> as its repository."""
    common = os.path.dirname(os.path.dirname(admin))
    path = os.path.join(admin, "commondir")
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read(8192).strip()
    except OSError as exc:
        text = f"unreadable: {exc.strerror}"
    else:
        if text and os.path.realpath(os.path.join(admin, text)) == common:
            return
    raise GitError(
        f"{path} no longer points at {common}, the repository mission control works on (it says {text[:200]!r}): "
        f"so mission control runs no git in that worktree; check what changed it, then restore it: "
        f"`printf '../..\\n' > {shlex.quote(path)}`"
    )


def _stats(files: Sequence[str]) -> tuple[object, ...]:
    """What tells whether any of `files` changed: each one's mtime, size and inode (or that it is missing)."""
    stats: list[object] = []
    for name in files:
        try:
            st = os.stat(name) if name else None
        except OSError:
            st = None
        stats.append((name, st.st_mtime_ns, st.st_size, st.st_ino) if st else (name,))
    return tuple(stats)


def _included(entries: list[str], cwd: Path, env: Mapping[str, str]) -> list[str]:
    """The files that `include.path` and `includeIf.<condition>.path` entries of `git config -z --show-origin
    --get-regexp` output name, resolved as git resolves them (relative to the file that includes them)."""
    files: list[str] = []
    for origin, entry in zip(entries[0::2], entries[1::2], strict=False):
        name, _, value = entry.partition("\n")
        if not (name.startswith(("include.", "includeif.")) and name.endswith(".path")) or not value:
            continue
        if value.startswith("~/"):
            value = os.path.join(env.get("HOME", ""), value[2:])
        elif not os.path.isabs(value):
            if not origin.startswith("file:"):
                continue  # relative to no file: git ignores it
            value = os.path.join(os.path.dirname(os.path.join(cwd, origin[len("file:") :])), value)
        files.append(value)
    return files


def _filter_drivers(options: list[str], cwd: Path, env: Mapping[str, str], admin: str | None) -> tuple[str, ...]:
    """The names of every filter driver the config of this call defines (whichever file defines it, included
    files too). Cached per agent git dir while none of the config files it read, nor any file they include,
    changed."""
    key: tuple[object, ...] | None = None
    files: list[str] = []
    if admin is not None:
        common = os.path.dirname(os.path.dirname(admin))
        files = [os.path.join(common, "config"), os.path.join(admin, "config.worktree")]
        home = env.get("HOME", "")
        xdg = env.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
        files += [env.get("GIT_CONFIG_GLOBAL", ""), os.path.join(home, ".gitconfig"), os.path.join(xdg, "git/config")]
        files += [env.get("GIT_CONFIG_SYSTEM", ""), "/etc/gitconfig"]
        config_env = tuple((k, v) for k, v in sorted(env.items()) if k in _CONFIG_VARS or k.startswith("GIT_CONFIG_"))
        key = (admin, config_env)
        cached = _FILTERS.get(key)
        if cached is not None and _stats(cached[0]) == cached[1]:
            return cached[2]
    try:
        proc = subprocess.run(
            ["git", *options, "config", "-z", "--show-origin", "--get-regexp", r"^(filter|include|includeif)\."],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=dict(env),
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GitError(f"cannot read the git config in {cwd}: {exc}: check that git runs there") from None
    if proc.returncode not in (0, 1):  # 1: no filter defined
        message = _first_line(proc.stderr.decode("utf-8", "replace"))
        raise GitError(f"cannot read the git config in {cwd}: {message}")
    entries = proc.stdout.decode("utf-8", "surrogateescape").split("\0")[:-1]
    names = sorted(
        {
            name[len("filter.") :].rpartition(".")[0]
            for name in (entry.partition("\n")[0] for entry in entries[1::2])
            if name.startswith("filter.")
        }
    )
    drivers = tuple(n for n in names if n)
    if key is not None:
        files += _included(entries, cwd, env)
        with _GUARD:
            if len(_FILTERS) > 256:
                _FILTERS.clear()
            _FILTERS[key] = (tuple(files), _stats(files), drivers)
    return drivers


def _no_external_diff(args: list[str]) -> list[str]:
    """`args` with --no-ext-diff --no-textconv after the subcommand when it is diff, log or show, and
    --ignore-submodules=dirty for diff and status unless `args` say otherwise: to tell whether a submodule's
    files changed, git would start itself inside it, with a config (and filters) no one has read."""
    i = 0
    while i < len(args) and args[i].startswith("-"):
        i += 2 if args[i] in ("-c", "-C") else 1
    if i >= len(args):
        return args
    extra = ["--no-ext-diff", "--no-textconv"] if args[i] in _DIFFING else []
    if args[i] in ("diff", "status") and not any(a.startswith("--ignore-submodules") for a in args[i + 1 :]):
        extra.append("--ignore-submodules=dirty")
    return [*args[: i + 1], *extra, *args[i + 1 :]] if extra else args


def git_command(
    args: list[str], cwd: str | os.PathLike[str], env: Mapping[str, str]
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of `git ARGS` run in `cwd` with environment `env`.

    In the main working tree of a trusted repository, that is `git ARGS` and `env` as they are. Anywhere else,
    config that runs programs is switched off; in an agent's worktree the git dir and work tree are named too,
    after checking that its `.git` file still points where mission control put it (GitError when not).
    """
    real = os.path.realpath(cwd)
    if not os.path.isdir(real):  # a missing folder: the call fails and says so
        return ["git", *args], dict(env)
    if real in _ROOTS:
        if args[:2] == ["worktree", "remove"] and "--force" not in args:
            # git checks that the worktree is clean by running `git status` there, with that worktree's config
            target = agent_git_dir(args[-1])
            options = [] if target is None else [f"--git-dir={target}"]
            base = add_config(dict(env), NO_PROGRAMS)
            return ["git", *args], add_config(base, _no_filters(options, Path(cwd), base, target))
        return ["git", *args], dict(env)
    options: list[str] = []
    admin = agent_git_dir(real)
    if admin is not None:
        _check_dot_git(real, str(admin))
        _check_common_dir(str(admin))
        options = [f"--git-dir={admin}", f"--work-tree={real}"]
    base = add_config(dict(env), NO_PROGRAMS)
    return ["git", *options, *_no_external_diff(args)], add_config(base, _no_filters(options, Path(cwd), base, admin))


def _no_filters(options: list[str], cwd: Path, env: Mapping[str, str], admin: Path | None) -> list[tuple[str, str]]:
    """Config entries that switch off every filter driver the config of this call defines."""
    config: list[tuple[str, str]] = []
    for driver in _filter_drivers(options, cwd, env, None if admin is None else str(admin)):
        config += [(f"filter.{driver}.{k}", "") for k in ("clean", "smudge", "process")]
        config.append((f"filter.{driver}.required", "false"))
    return config


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
    argv, full_env = git_command(args, cwd, git_env(env))
    try:
        proc = subprocess.run(
            argv,
            cwd=cwd,
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=True,
            env=full_env,
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
    """Run `git ARGS` in `cwd` and return (exit status, stdout, stderr) without raising on a non-zero status.

    Raises GitError when git cannot run, or when the call is refused (see `git_command`)."""
    argv, full_env = git_command(args, cwd, git_env(env))
    try:
        proc = subprocess.run(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=full_env,
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
    argv, full_env = git_command(args, cwd, git_env())
    with tempfile.TemporaryFile() as errfile:
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=errfile,
                env=full_env,
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
