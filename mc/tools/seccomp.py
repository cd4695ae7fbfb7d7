"""The seccomp filter of sandboxed commands: no Unix-domain socket of their own, no io_uring.

bubblewrap's namespaces leave one way to a host process: a Unix socket file inside a folder the sandbox shows.
A read-only bind does not stop connect(2) (a git fsmonitor daemon's `.git/fsmonitor--daemon.ipc`, the nix
daemon's socket under /nix, anything under /opt). So a sandboxed command cannot create an AF_UNIX socket at all:
socket(2) with that family fails with EACCES. socketpair(2) still works (it reaches nothing but the command's
own processes), and so do IPv4 and IPv6 sockets inside the sandbox's own network namespace, where only a
loopback of its own exists. io_uring is refused (ENOSYS: programs fall back to plain system calls) because
its socket and connect operations do not pass through seccomp.

The filter is classic BPF, handed to bubblewrap's `--seccomp FD` (which applies it right before it starts the
command, after setting no_new_privs). Built here in a few lines rather than with libseccomp, which would be a
C library and its bindings for fourteen instructions.
"""

from __future__ import annotations

import errno
import os
import platform
import struct
import sys

# BPF instruction classes and fields (linux/filter.h, linux/bpf_common.h)
_LD_W_ABS = 0x00 | 0x00 | 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x05 | 0x10 | 0x00  # BPF_JMP | BPF_JEQ | BPF_K
_JGE_K = 0x05 | 0x30 | 0x00  # BPF_JMP | BPF_JGE | BPF_K
_RET_K = 0x06 | 0x00  # BPF_RET | BPF_K

_RET_ALLOW = 0x7FFF0000  # SECCOMP_RET_ALLOW
_RET_ERRNO = 0x00050000  # SECCOMP_RET_ERRNO | errno

# offsets in struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; }
_NR, _ARCH, _ARG0_LOW = 0, 4, 16  # args[0]'s low 32 bits, on a little-endian machine

_AF_UNIX = 1
_X32_BIT = 0x40000000  # x86-64's x32 system calls have this bit set

#: machine → (AUDIT_ARCH_*, socket's system call number, io_uring_setup/enter/register, whether x32 exists)
_ARCHES: dict[str, tuple[int, int, tuple[int, ...], bool]] = {
    "x86_64": (0xC000003E, 41, (425, 426, 427), True),
    "aarch64": (0xC00000B7, 198, (425, 426, 427), False),
}


def supported() -> bool:
    """Whether this machine's system calls are known here (x86-64 or arm64, little-endian)."""
    return platform.machine() in _ARCHES and sys.byteorder == "little"


def program() -> bytes:
    """The filter as struct sock_filter[] bytes for `bwrap --seccomp FD` (ValueError on an unknown machine)."""
    machine = platform.machine()
    if not supported():
        raise ValueError(f"no seccomp filter for {machine} ({sys.byteorder}-endian)")
    arch, socket_nr, uring, x32 = _ARCHES[machine]
    deny_all = _RET_ERRNO | errno.ENOSYS  # another ABI (32-bit, x32): its system calls are not the ones checked
    # (code, jump-if-true target, jump-if-false target, k): targets are labels resolved below
    code: list[tuple[int, str | None, str | None, int]] = [
        (_LD_W_ABS, None, None, _ARCH),
        (_JEQ_K, None, "foreign", arch),
        (_LD_W_ABS, None, None, _NR),
    ]
    if x32:
        code.append((_JGE_K, "foreign", None, _X32_BIT))
    for nr in uring:
        code.append((_JEQ_K, "no_uring", None, nr))
    code += [
        (_JEQ_K, None, "allow", socket_nr),
        (_LD_W_ABS, None, None, _ARG0_LOW),
        (_JEQ_K, "no_unix", "allow", _AF_UNIX),
    ]
    labels = {"allow": _RET_ALLOW, "no_unix": _RET_ERRNO | errno.EACCES, "no_uring": _RET_ERRNO | errno.ENOSYS}
    labels["foreign"] = deny_all
    ends = {name: len(code) + i for i, name in enumerate(labels)}
    out = bytearray()
    for at, (op, yes, no, k) in enumerate(code):
        jt = ends[yes] - at - 1 if yes else 0
        jf = ends[no] - at - 1 if no else 0
        out += struct.pack("=HBBI", op, jt, jf, k)
    for value in labels.values():
        out += struct.pack("=HBBI", _RET_K, 0, 0, value)
    return bytes(out)


def program_fd() -> int | None:
    """A file descriptor (close it after the child started) from which bubblewrap reads the filter, or None on
    a machine this module has no filter for."""
    if not supported():
        return None
    fd = os.memfd_create("mc-seccomp", os.MFD_CLOEXEC)
    try:
        os.write(fd, program())
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd
