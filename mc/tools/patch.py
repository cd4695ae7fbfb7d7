"""The files a unified diff touches, read from its headers (git style or plain)."""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field


class PatchError(ValueError):
    """A patch that cannot be applied as given; the message says what to send instead."""


@dataclass
class PatchFiles:
    """Paths a patch names (without their a/ b/ prefixes) and the -p level to apply it with."""

    strip: int
    paths: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


def _unquote(name: str) -> str:
    """A path as git writes it: C-quoted ("a/t\\303\\251st") when it holds unusual bytes."""
    if len(name) >= 2 and name.startswith('"') and name.endswith('"'):
        raw = codecs.escape_decode(name[1:-1].encode("utf-8"))[0]
        return raw.decode("utf-8", errors="surrogateescape")
    return name


def _header_path(rest: str) -> str:
    """The path of a ---/+++ line (without a trailing tab and timestamp)."""
    rest = rest.rstrip("\n")
    if rest.startswith('"'):
        end = rest.find('"', 1)
        while end > 0 and rest[end - 1] == "\\":
            end = rest.find('"', end + 1)
        return _unquote(rest[: end + 1]) if end > 0 else rest
    return rest.split("\t")[0].rstrip()


def _git_pair(rest: str) -> list[str]:
    """The two paths of a "diff --git a/X b/Y" line."""
    if rest.startswith('"'):
        first = _header_path(rest)
        second = rest[len(rest.split('" ', 1)[0]) + 2 :] if '" ' in rest else ""
        return [first, _unquote(second.strip())] if second else [first]
    cut = rest.rfind(" b/")
    return [rest[:cut], rest[cut + 1 :]] if cut > 0 else [rest]


def patch_files(patch: str) -> PatchFiles:
    """Parse a patch's file headers. Raises PatchError when it is not a unified diff."""
    if "*** Begin Patch" in patch:
        raise PatchError(
            "apply_patch takes a unified diff (--- a/path, +++ b/path, @@ hunks), not the *** Begin Patch format"
        )
    lines = patch.splitlines()
    olds: list[str] = []
    news: list[str] = []
    others: list[str] = []
    git_style = False
    created: list[str] = []
    deleted: list[str] = []
    for i, line in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        prev = lines[i - 1] if i > 0 else ""
        if line.startswith("diff --git "):
            git_style = True
            others += [p[2:] if p[:2] in ("a/", "b/") else p for p in _git_pair(line[len("diff --git ") :])]
        elif line.startswith("--- ") and nxt.startswith("+++ "):
            olds.append(_header_path(line[4:]))
        elif line.startswith("+++ ") and prev.startswith("--- "):
            news.append(_header_path(line[4:]))
        elif git_style and line.startswith(("rename from ", "rename to ", "copy from ", "copy to ")):
            others.append(_unquote(line.split(" ", 2)[2]))
    if not olds and not others:
        raise PatchError("the patch has no file headers: send a unified diff with --- a/path and +++ b/path lines")
    real_old = [p for p in olds if p != "/dev/null"]
    real_new = [p for p in news if p != "/dev/null"]
    prefixed = all(p.startswith("a/") for p in real_old) and all(p.startswith("b/") for p in real_new)
    strip = 1 if git_style or prefixed else 0

    def clean(p: str) -> str:
        return p[2:] if strip and p[:2] in ("a/", "b/") else p

    for old, new in zip(olds, news, strict=False):
        if old == "/dev/null" and new != "/dev/null":
            created.append(clean(new))
        elif new == "/dev/null" and old != "/dev/null":
            deleted.append(clean(old))
    paths: list[str] = []
    for p in [*(clean(p) for p in real_old + real_new), *others]:
        if p not in paths:
            paths.append(p)
    return PatchFiles(strip=strip, paths=paths, created=created, deleted=deleted)
