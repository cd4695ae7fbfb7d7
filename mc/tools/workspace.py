"""Confinement of tool paths to one worktree.

A path is accepted when both its lexical form (joined to the root, normalised) and its real form
(every symlink resolved) lie inside the root, compared with ``os.path.commonpath`` — a ``startswith``
test would accept ``../wt10/x`` for a root of ``/wt1``. Files are then opened with ``openat2`` relative
to the root with ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS``, so a symlink swapped
in between the check and the open is refused by the kernel. Where ``openat2`` is unavailable the open
falls back to ``O_NOFOLLOW`` on the checked real path.
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path


class Refusal(Exception):
    """A tool call refused by confinement; the message says why."""


_SYS_OPENAT2 = 437  # the same number on every Linux architecture
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc: ctypes.CDLL | None = None
_openat2_works: bool | None = None


def _openat2(dirfd: int, path: str, flags: int, mode: int) -> int | None:
    """openat2(2) beneath dirfd without following any symlink; None when the kernel lacks it."""
    global _libc, _openat2_works
    if _openat2_works is False:
        return None
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        how = _OpenHow(
            flags, mode if flags & os.O_CREAT else 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS
        )
        fd = _libc.syscall(
            ctypes.c_long(_SYS_OPENAT2),
            ctypes.c_int(dirfd),
            ctypes.c_char_p(os.fsencode(path)),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
    except (OSError, AttributeError):
        _openat2_works = False
        return None
    if fd >= 0:
        _openat2_works = True
        return fd
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EPERM) and not _openat2_works:
        _openat2_works = False  # no openat2 here (old kernel, or a seccomp filter that forbids it)
        return None
    raise OSError(err, os.strerror(err), path)


def _inside(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:
        return False


class Workspace:
    """One worktree that tools may read and write, and nothing outside it."""

    def __init__(self, root: Path | str) -> None:
        real = os.path.realpath(root)
        if not os.path.isdir(real):
            raise ValueError(f"worktree {root} is not a folder: create it or give the right path")
        self.root = Path(real)
        self.written: set[str] = set()
        """Paths (relative to the root) the tools wrote or patched since `forget_written`: the current turn."""

    def forget_written(self) -> None:
        """Start a new turn: nothing written yet."""
        self.written.clear()

    def written_files(self) -> list[str]:
        """The files written this turn that are still there, sorted."""
        return sorted(p for p in self.written if os.path.lexists(self.root / p))

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    def resolve(self, path: str, *, for_write: bool = False) -> Path:
        """The real path of `path` (relative to the root, or absolute inside it). Raises Refusal when it is not
        inside the worktree, goes through a symlink that leaves it, or (for writes) is the worktree's .git."""
        if not isinstance(path, str):
            raise Refusal(f"path {path!r} is not a string")
        if path == "":
            raise Refusal("path is empty: give a path inside the worktree")
        if "\0" in path or "\n" in path or "\r" in path:
            raise Refusal(f"path {path!r} contains a NUL or a line break")
        root = str(self.root)
        lexical = os.path.normpath(os.path.join(root, path))
        if not _inside(lexical, root):
            raise Refusal(f"path {path!r} is outside the worktree")
        real = os.path.realpath(lexical)
        if not _inside(real, root):
            raise Refusal(f"path {path!r} is outside the worktree (a symlink on the way leads to {real})")
        if for_write:
            rel = os.path.relpath(real, root)
            if rel == ".":
                raise Refusal(f"path {path!r} is the worktree itself, not a file")
            if rel.split(os.sep)[0] == ".git" or os.path.relpath(lexical, root).split(os.sep)[0] == ".git":
                raise Refusal(f"path {path!r} is in the worktree's .git: tools do not write git's own data")
        return Path(real)

    def relative(self, real: Path | str) -> str:
        """A checked real path as a path relative to the root ("." for the root)."""
        return os.path.relpath(real, self.root)

    def open_fd(self, path: str, flags: int, mode: int = 0o644, *, for_write: bool = False) -> int:
        """Open a file inside the worktree and return its fd (close it yourself). Raises Refusal or OSError."""
        real = self.resolve(path, for_write=for_write)
        flags |= os.O_CLOEXEC
        rel = self.relative(real)
        dirfd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fd = _openat2(dirfd, rel, flags, mode)
        except OSError as exc:
            if exc.errno in (errno.EXDEV, errno.ELOOP):
                raise Refusal(f"path {path!r} changed to leave the worktree while it was being opened") from None
            raise
        finally:
            os.close(dirfd)
        if fd is not None:
            return fd
        try:
            return os.open(real, flags | os.O_NOFOLLOW, mode)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise Refusal(f"path {path!r} changed to a symlink while it was being opened") from None
            raise

    def read_bytes(self, path: str, limit: int | None = None) -> bytes:
        """The bytes of a file inside the worktree (at most `limit`)."""
        fd = self.open_fd(path, os.O_RDONLY)
        with os.fdopen(fd, "rb") as fh:
            return fh.read() if limit is None else fh.read(limit)

    def write_bytes(self, path: str, data: bytes) -> Path:
        """Write a file inside the worktree, creating its folders; returns its real path."""
        real = self.resolve(path, for_write=True)
        parent = real.parent
        if not parent.is_dir():
            self.resolve(self.relative(parent), for_write=True)
            parent.mkdir(parents=True, exist_ok=True)
        fd = self.open_fd(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, for_write=True)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        self.written.add(self.relative(real))
        return real
