"""Risk flags: what a reviewer must not miss in an agent's diff, found by a table of rules.

`RULES` is the table. Each `Rule` is data: an id, a severity, a message, and what it looks at, by kind:

- ``line``: `pattern`, a regular expression searched in the added lines of the files `paths` matches (every
  file when empty) and `exclude` does not; with `entropy`, the pattern's first group (or the whole match)
  must have at least that many bits of entropy per character.
- ``path``: every changed file that `paths` matches (manifests, lock files, CI files …).
- ``check``: a built-in check the id names (executable bits, deleted files and lines, binary and large
  files, files outside the paths the task names, a diff text cut short), with the thresholds of [flags].

A glob without '/' matches a file's name in any folder; one with '/' matches the path from the top of the
worktree; ``*`` stays inside a folder, ``**`` crosses folders, a trailing ``/`` takes everything under it.

A team adds its own rules in ``[[flags.rules]]`` (kinds line and path; an id of a built-in rule replaces it)
and turns built-in ones off with ``[flags] disable`` (`scanner_for` builds the scanner a config asks for).

`FlagScanner.scan` is incremental: the flags of each file's part of the diff text are kept under a hash of
that text, so a file whose patch did not change since the last scan is not scanned again. It is blocking
(run it in a thread) and never reads the repository's git data; it only stats changed files for their size
and looks up the paths a task names.

Secrets are found by a rule set of our own (AWS key ids, private key headers, GitHub/GitLab/Slack/OpenAI-style
tokens, …, high-entropy values assigned to names) rather than detect-secrets: its line-by-line scan took 2.7 s
for a 5,000-line diff here, where the budget is 200 ms, and it reports lines of files on disk, not of a diff.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from mc.events import SEVERITIES, FileStat, Flag

if TYPE_CHECKING:
    from mc.config import FlagsConfig

__all__ = [
    "RULES",
    "Flag",
    "FlagScanner",
    "Rule",
    "describe",
    "diff_line",
    "scanner_for",
    "task_paths",
    "unknown_rule_ids",
]

#: Flags one rule raises in one file at most (a file of 5,000 `sudo` lines is one finding, not 5,000).
MAX_PER_FILE = 20
_RANK = {s: i for i, s in enumerate(SEVERITIES)}


@dataclass(frozen=True)
class Rule:
    """One entry of the table: see the module's docstring for the kinds."""

    id: str
    severity: str
    message: str
    kind: str = "line"  # line | path | check
    pattern: str = ""
    paths: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    entropy: float = 0.0
    hints: tuple[str, ...] = ()
    """Lower-case words one of which every line the pattern can match holds: a fast pre-check (lines without any
    are not searched)."""


_LOCKS = (
    "*.lock",
    "package-lock.json",
    "npm-shrinkwrap.json",
    "pnpm-lock.yaml",
    "go.sum",
    "go.work.sum",
    "*.lockfile",
    "packages.lock.json",
    "Package.resolved",
    "*.min.js",
    "*.map",
    "*.svg",
)
_Q = "['\"`]"  # a quote
_ASSIGN = r"[ \t]*(?::=|=>|==?|:)[ \t]*[rbuf]?"  # = := => : (and the quote's prefix, r"…")

RULES: tuple[Rule, ...] = (
    # -- secrets: keys and tokens with a shape of their own -------------------------------------------------
    Rule(
        "secret.aws-key",
        "high",
        "an AWS access key id",
        pattern=r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}\b",
        hints=("akia", "asia", "abia", "acca", "agpa", "aida", "aroa", "anpa", "anva", "aipa"),
    ),
    Rule(
        "secret.aws-secret",
        "high",
        "an AWS secret access key",
        pattern=r"(?i)aws[\w.-]{0,20}secret[\w.-]{0,20}['\"]?"
        + _ASSIGN
        + r"['\"]?([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])",
        hints=("aws",),
    ),
    Rule(
        "secret.private-key",
        "high",
        "a private key",
        pattern=r"-----BEGIN[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----",
        hints=("private key",),
    ),
    Rule(
        "secret.github-token",
        "high",
        "a GitHub token",
        pattern=r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})",
        hints=("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    ),
    Rule(
        "secret.gitlab-token",
        "high",
        "a GitLab token",
        pattern=r"\bgl(?:pat|ptt|dt|rt)-[A-Za-z0-9_-]{20,}",
        hints=("glpat-", "glptt-", "gldt-", "glrt-"),
    ),
    Rule(
        "secret.slack-token",
        "high",
        "a Slack token or webhook",
        pattern=r"\bxox[abposre]-[A-Za-z0-9-]{10,}|https://hooks\.slack\.com/services/[A-Za-z0-9/_-]{20,}",
        hints=("xox", "hooks.slack.com"),
    ),
    Rule(
        "secret.api-key",
        "high",
        "an OpenAI- or Anthropic-style API key (sk-…)",
        pattern=r"\bsk-(?:proj-|svcacct-|admin-|ant-[a-z]+\d*-)?[A-Za-z0-9_-]{32,}",
        hints=("sk-",),
    ),
    Rule("secret.google-key", "high", "a Google API key", pattern=r"\bAIza[0-9A-Za-z_-]{35}", hints=("aiza",)),
    Rule(
        "secret.stripe-key",
        "high",
        "a Stripe live key",
        pattern=r"\b[rs]k_live_[0-9A-Za-z]{20,}",
        hints=("k_live_",),
    ),
    Rule("secret.npm-token", "high", "an npm token", pattern=r"\bnpm_[A-Za-z0-9]{36}\b", hints=("npm_",)),
    Rule(
        "secret.jwt",
        "medium",
        "a JSON web token",
        pattern=r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
        hints=("eyj",),
    ),
    Rule(
        "secret.url-password",
        "medium",
        "a password in a URL",
        pattern=r"://[^\s/:@'\"]+:([^\s/:@'\"$]{3,})@[\w.-]",
        hints=("://",),
    ),
    # -- secrets: a random-looking value assigned to a name (the shapes above win on a line) --------------------
    Rule(
        "secret.assignment",
        "high",
        "a random-looking value assigned to a secret's name",
        pattern=r"(?i)(?:key|secret|token|passw(?:or)?d|pwd|credential|auth)[\w.-]*['\"]?"
        + _ASSIGN
        + _Q
        + r"((?=[^'\"`\s]*\d)[^'\"`\s]{12,})"
        + _Q,
        exclude=_LOCKS,
        entropy=3.0,
        hints=("key", "secret", "token", "passw", "pwd", "credential", "auth"),
    ),
    Rule(
        "secret.high-entropy",
        "medium",
        "a high-entropy string assigned to a name",
        pattern=r"(?::=|=>|==?|:)[ \t]*[rbuf]?"
        + _Q
        + r"((?=[A-Za-z0-9+/=_-]*\d)(?=[A-Za-z0-9+/=_-]*[A-Za-z])[A-Za-z0-9+/=_-]{20,})"
        + _Q,
        exclude=_LOCKS,
        entropy=4.0,  # [flags] entropy
    ),
    # -- dependencies: manifests and lock files --------------------------------------------------------------
    Rule(
        "deps.pip",
        "medium",
        "Python dependencies changed (a manifest or a lock file)",
        kind="path",
        paths=(
            "requirements*.txt",
            "requirements*.in",
            "**/requirements/*.txt",
            "constraints*.txt",
            "pyproject.toml",
            "setup.py",
            "setup.cfg",
            "Pipfile",
            "Pipfile.lock",
            "poetry.lock",
            "uv.lock",
            "pdm.lock",
            "pylock*.toml",
            "environment.yml",
            "environment.yaml",
            "conda-lock.yml",
        ),
    ),
    Rule(
        "deps.npm",
        "medium",
        "npm dependencies changed (a manifest or a lock file)",
        kind="path",
        paths=(
            "package.json",
            "package-lock.json",
            "npm-shrinkwrap.json",
            "yarn.lock",
            "pnpm-lock.yaml",
            "pnpm-workspace.yaml",
            "bun.lock",
            "bun.lockb",
            ".npmrc",
            ".yarnrc",
            ".yarnrc.yml",
        ),
    ),
    Rule(
        "deps.cargo",
        "medium",
        "Cargo dependencies changed (a manifest or a lock file)",
        kind="path",
        paths=("Cargo.toml", "Cargo.lock", ".cargo/config.toml", ".cargo/config"),
    ),
    Rule(
        "deps.go",
        "medium",
        "Go dependencies changed (go.mod, go.sum or go.work)",
        kind="path",
        paths=("go.mod", "go.sum", "go.work", "go.work.sum"),
    ),
    Rule(
        "deps.ruby",
        "medium",
        "Ruby dependencies changed (a Gemfile, its lock file or a gemspec)",
        kind="path",
        paths=("Gemfile", "Gemfile.lock", "*.gemspec"),
    ),
    Rule(
        "deps.php",
        "medium",
        "Composer dependencies changed",
        kind="path",
        paths=("composer.json", "composer.lock"),
    ),
    Rule(
        "deps.jvm",
        "medium",
        "JVM dependencies changed (Maven, Gradle or sbt)",
        kind="path",
        paths=(
            "pom.xml",
            "build.gradle",
            "build.gradle.kts",
            "settings.gradle",
            "settings.gradle.kts",
            "gradle.lockfile",
            "libs.versions.toml",
            "build.sbt",
        ),
    ),
    Rule(
        "deps.dotnet",
        "medium",
        ".NET dependencies changed",
        kind="path",
        paths=("*.csproj", "*.fsproj", "*.vbproj", "packages.config", "packages.lock.json", "Directory.Packages.props"),
    ),
    Rule(
        "deps.other",
        "medium",
        "dependencies changed (a manifest or a lock file)",
        kind="path",
        paths=(
            "Package.swift",
            "Package.resolved",
            "Podfile",
            "Podfile.lock",
            "mix.exs",
            "mix.lock",
            "pubspec.yaml",
            "pubspec.lock",
            "flake.nix",
            "flake.lock",
            "vcpkg.json",
            "conanfile.txt",
            "conanfile.py",
        ),
    ),
    # -- CI and automation: what runs on its own ---------------------------------------------------------------
    Rule(
        "ci.github",
        "medium",
        "a GitHub Actions workflow or action changed",
        kind="path",
        paths=(".github/workflows/", ".github/actions/", "action.yml", "action.yaml", ".github/dependabot.yml"),
    ),
    Rule(
        "ci.gitlab",
        "medium",
        "GitLab CI changed",
        kind="path",
        paths=(".gitlab-ci.yml", ".gitlab-ci.yaml", ".gitlab/ci/", "**/*.gitlab-ci.yml"),
    ),
    Rule(
        "ci.pipeline",
        "medium",
        "a CI pipeline changed",
        kind="path",
        paths=(
            ".circleci/",
            ".travis.yml",
            "azure-pipelines.yml",
            ".azure-pipelines/",
            "Jenkinsfile",
            "bitbucket-pipelines.yml",
            ".buildkite/",
            ".drone.yml",
            ".woodpecker.yml",
            ".woodpecker/",
            "appveyor.yml",
            ".appveyor.yml",
            "cloudbuild.yaml",
            "cloudbuild.yml",
        ),
    ),
    Rule(
        "ci.make",
        "medium",
        "a Makefile or task runner file changed: it runs commands",
        kind="path",
        paths=("Makefile", "makefile", "GNUmakefile", "*.mk", "justfile", "Justfile", "Taskfile.yml", "Taskfile.yaml"),
    ),
    Rule(
        "ci.pre-commit",
        "medium",
        "pre-commit hooks changed",
        kind="path",
        paths=(".pre-commit-config.yaml", ".pre-commit-config.yml", ".pre-commit-hooks.yaml"),
    ),
    Rule(
        "ci.hooks",
        "medium",
        "git hooks changed",
        kind="path",
        paths=(".husky/", ".githooks/", ".git-hooks/", "lefthook.yml", "lefthook.yaml", ".lefthook.yml"),
    ),
    Rule("ci.gitmodules", "medium", "submodules changed (.gitmodules)", kind="path", paths=(".gitmodules",)),
    Rule(
        "ci.gitattributes",
        "medium",
        "git attributes changed (filter and diff drivers run programs)",
        kind="path",
        paths=(".gitattributes",),
    ),
    # -- permissions -----------------------------------------------------------------------------------------
    Rule("perms.exec-bit", "medium", "made executable", kind="check"),
    Rule(
        "perms.curl-pipe-sh",
        "high",
        "a download piped into a shell",
        pattern=r"\b(?:curl|wget)\b[^|\n]*\|[ \t]*(?:sudo[ \t]+(?:-\S+[ \t]+)*)?(?:env[ \t]+)?"
        r"(?:ba|z|da|k|fi)?sh\b|\b(?:curl|wget)\b[^|\n]*\|[ \t]*(?:sudo[ \t]+)?python[0-9.]*\b"
        r"|\b(?:ba|z)?sh[ \t]+(?:-\S+[ \t]+)*<\([ \t]*(?:curl|wget)\b",
        hints=("curl", "wget"),
    ),
    Rule("perms.sudo", "medium", "sudo", pattern=r"(?:^|[\s;&|(`'\"])sudo[ \t]+[-\w]", hints=("sudo",)),
    Rule(
        "perms.chmod",
        "medium",
        "a permission change (chmod or chown)",
        pattern=r"\bch(?:mod|own)\b",
        hints=("chmod", "chown"),
    ),
    # -- size and scope --------------------------------------------------------------------------------------
    Rule("deletion.file", "medium", "a whole file deleted", kind="check"),
    Rule("deletion.lines", "medium", "a large deletion", kind="check"),
    Rule("file.binary", "low", "a binary file", kind="check"),
    Rule("file.large", "medium", "a large file", kind="check"),
    Rule("scope.outside", "medium", "outside the paths the task names", kind="check"),
    Rule(
        "scan.truncated",
        "medium",
        "the diff text is cut short here: the rest was not scanned line by line",
        kind="check",
    ),
)

_BUILTIN_IDS = frozenset(r.id for r in RULES)
_GROUPS = frozenset(r.id.split(".", 1)[0] for r in RULES)


def unknown_rule_ids(names: Iterable[str]) -> list[str]:
    """The names in `names` that are neither a built-in rule's id nor a group of them ("deps")."""
    return [n for n in names if n not in _BUILTIN_IDS and n not in _GROUPS]


def _disabled(rule_id: str, disable: Iterable[str]) -> bool:
    group = rule_id.split(".", 1)[0]
    return any(name in (rule_id, group) for name in disable)


def scanner_for(config: FlagsConfig) -> FlagScanner | None:
    """The scanner `[flags]` asks for (None when the scan is off): the built-in rules it does not disable, its
    own rules (one with a built-in's id replaces it) and its thresholds."""
    if not config.enabled:
        return None
    own = {
        r.id: Rule(
            r.id,
            r.severity,
            r.message or r.id,
            kind="line" if r.pattern else "path",
            pattern=r.pattern,
            paths=tuple(r.paths),
            entropy=r.entropy,
        )
        for r in config.rules
    }
    rules: list[Rule] = []
    for rule in RULES:
        if rule.id in own:
            rules.append(own.pop(rule.id))
        elif not _disabled(rule.id, config.disable):
            rules.append(replace(rule, entropy=config.entropy) if rule.id == "secret.high-entropy" else rule)
    rules.extend(own.values())
    return FlagScanner(rules, large_deletion=config.large_deletion, large_file=config.large_file)


# -- globs -----------------------------------------------------------------------------------------------------
def _glob_part(glob: str) -> str:
    """A glob as a regular expression over a whole path (see the module's docstring for the rules)."""
    if glob.endswith("/"):
        glob += "**"
    anchored = "/" in glob.rstrip("/")
    out = []
    i = 0
    while i < len(glob):
        c = glob[i]
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = glob.find("]", i + 1)
            if end > i + 1:
                body = glob[i + 1 : end]
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
                i = end + 1
                continue
            out.append(re.escape(c))
        else:
            out.append(re.escape(c))
        i += 1
    body = "".join(out)
    return body if anchored else "(?:.*/)?" + body


def _globs(globs: Sequence[str]) -> re.Pattern[str] | None:
    if not globs:
        return None
    return re.compile("(?:" + "|".join(_glob_part(g.removeprefix("./").removeprefix("/")) for g in globs) + r")\Z")


# -- the diff text -----------------------------------------------------------------------------------------------
class DiffLike(Protocol):
    """What the scanner reads of a diff (mc.git.Diff has it)."""

    @property
    def text(self) -> str: ...
    @property
    def files(self) -> Sequence[FileStat]: ...
    @property
    def truncated(self) -> bool: ...


_SECTION = re.compile(r"^diff --git ", re.M)
_HUNK = re.compile(r"@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@")
_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\", "a": "\a", "b": "\b", "f": "\f", "r": "\r", "v": "\v"}


def _unquote(name: str) -> str:
    """A path as git prints it in a patch header: C-quoted (with octal bytes) when it holds special characters."""
    if not (name.startswith('"') and name.endswith('"') and len(name) >= 2):
        return name
    raw = bytearray()
    body = name[1:-1]
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if re.fullmatch(r"[0-7]{3}", body[i + 1 : i + 4]):
                raw.append(int(body[i + 1 : i + 4], 8) & 0xFF)
                i += 4
                continue
            raw.extend(_ESCAPES.get(nxt, nxt).encode())
            i += 2
            continue
        raw.extend(c.encode("utf-8", "surrogateescape"))
        i += 1
    return raw.decode("utf-8", "replace")


def _side(name: str) -> str:
    """`a/x` or `b/x` (maybe quoted) → `x`."""
    name = _unquote(name.strip())
    return name[2:] if name[:2] in ("a/", "b/") else name


def _path_of_git_line(line: str) -> str:
    rest = line[len("diff --git ") :]
    if rest.startswith('"'):  # "a/…" "b/…" or "a/…" b/…
        end = rest.find('" ', 1)
        while end > 0 and rest[end - 1] == "\\":
            end = rest.find('" ', end + 1)
        if end > 0:
            return _side(rest[end + 2 :])
    if rest.endswith('"'):
        start = rest.rfind(' "')
        if start > 0:
            return _side(rest[start + 1 :])
    n = (len(rest) - 1) // 2  # "a/X b/X": both halves alike
    if rest[n : n + 1] == " ":
        return _side(rest[n + 1 :])
    return _side(rest.rsplit(" ", 1)[-1])


@dataclass
class _Section:
    """What one file's part of the diff text holds."""

    path: str
    added: list[str] = field(default_factory=list)
    numbers: list[int] = field(default_factory=list)  # the new-file line of each added line
    first_change: int = 0  # the first changed line (new file); 0: no hunk
    first_removed: int = 0  # where the first removed line was (new file)
    mode_change: str = ""  # "new" (a new executable file) or "exec" (an existing file made executable)


def _header(lines: list[str]) -> tuple[str, str, int]:
    """The path of a file's part of the diff text, how its mode changed ("new": a new executable file, "exec": a
    file made executable, ""), and the index of its first hunk line."""
    new_path = old_path = rename_to = ""
    old_mode = new_mode = new_file_mode = ""
    i = 1
    while i < len(lines):
        line = lines[i]
        if line.startswith("@@"):
            break
        if line.startswith("+++ "):
            new_path = "" if line[4:] == "/dev/null" else _side(line[4:])
        elif line.startswith("--- "):
            old_path = "" if line[4:] == "/dev/null" else _side(line[4:])
        elif line.startswith("rename to "):
            rename_to = _unquote(line[len("rename to ") :])
        elif line.startswith("old mode "):
            old_mode = line[len("old mode ") :]
        elif line.startswith("new mode "):
            new_mode = line[len("new mode ") :]
        elif line.startswith("new file mode "):
            new_file_mode = line[len("new file mode ") :]
        i += 1
    path = new_path or rename_to or old_path or _path_of_git_line(lines[0])
    mode = "new" if new_file_mode == "100755" else "exec" if new_mode == "100755" and old_mode != "100755" else ""
    return path, mode, i


def _parse_section(text: str) -> _Section:
    lines = text.split("\n")
    path, mode, i = _header(lines)
    section = _Section(path, mode_change=mode)
    added, numbers = section.added, section.numbers
    new = 0
    for line in lines[i:]:
        c = line[:1]
        if c == "+":
            if not section.first_change:
                section.first_change = new
            added.append(line[1:])
            numbers.append(new)
            new += 1
        elif c == " ":
            new += 1
        elif c == "-":
            if not section.first_change:
                section.first_change = max(new, 1)
            if not section.first_removed:
                section.first_removed = max(new, 1)
        elif c == "@":
            m = _HUNK.match(line)
            if m:
                new = int(m.group(2)) or 1
    return section


def _sections(text: str) -> list[tuple[int, str]]:
    """(start offset, text) of each file's part of the diff text."""
    starts = [m.start() for m in _SECTION.finditer(text)]
    return [(s, text[s : (starts[k + 1] if k + 1 < len(starts) else len(text))]) for k, s in enumerate(starts)]


def _lines_holding(lowered: str, starts: list[int], words: Sequence[str]) -> list[int]:
    """The indexes (in order) of the lines of `lowered` (which start at `starts`) that hold one of `words`."""
    found: set[int] = set()
    for word in words:
        at = lowered.find(word)
        while at >= 0:
            index = bisect.bisect_right(starts, at) - 1
            found.add(index)
            end = starts[index + 1] if index + 1 < len(starts) else len(lowered)
            at = lowered.find(word, end)
    return sorted(found)


def _entropy(value: str) -> float:
    """Shannon entropy of `value` in bits per character."""
    n = len(value)
    if not n:
        return 0.0
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


# -- the scanner -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Compiled:
    rule: Rule
    regex: re.Pattern[str] | None
    paths: re.Pattern[str] | None
    exclude: re.Pattern[str] | None

    def covers(self, path: str) -> bool:
        if self.paths is not None and not self.paths.match(path):
            return False
        return self.exclude is None or not self.exclude.match(path)


@dataclass(frozen=True)
class _Scanned:
    """The cached result of one file's part of the diff text."""

    path: str
    flags: tuple[Flag, ...]
    first_change: int
    first_removed: int
    added: int  # added lines the text holds
    last_added: int  # the line of the last of them (0: none)


class FlagScanner:
    """Scans diffs with a table of rules, keeping each file's result until its patch text changes.

    One scanner serves one agent (its cache follows that agent's diff); `scan` runs in one thread at a time."""

    def __init__(self, rules: Sequence[Rule] = RULES, *, large_deletion: int = 200, large_file: int = 1_000_000):
        self.rules = tuple(rules)
        self.large_deletion = large_deletion
        self.large_file = large_file
        compiled = [
            _Compiled(
                r,
                re.compile(r.pattern, re.M) if r.kind == "line" and r.pattern else None,
                _globs(r.paths),
                _globs(r.exclude),
            )
            for r in self.rules
        ]
        self._lines = [c for c in compiled if c.regex is not None]
        self._paths = [c for c in compiled if c.rule.kind == "path" and c.paths is not None]
        self._checks = {c.rule.id: c.rule for c in compiled if c.rule.kind == "check"}
        self._cache: dict[bytes, _Scanned] = {}
        self.rescanned = 0
        """How many files' patch text the last `scan` read (the others came from the cache)."""

    def scan(self, diff: DiffLike, *, task: str = "", root: Path | None = None) -> tuple[Flag, ...]:
        """Every flag of `diff`, sorted by path, line and severity. `task` names the paths the work should stay
        in (when it names any); `root` is the worktree, for file sizes and the paths the task names."""
        cache: dict[bytes, _Scanned] = {}
        scanned: dict[str, _Scanned] = {}
        self.rescanned = 0
        order: list[str] = []
        for _, text in _sections(diff.text):
            key = hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=16).digest()
            result = self._cache.get(key)
            if result is None:
                result = self._scan_section(text)
                self.rescanned += 1
            cache[key] = result
            scanned[result.path] = result
            order.append(result.path)
        self._cache = cache
        flags: list[Flag] = []
        for result in scanned.values():
            flags.extend(result.flags)
        files = list(diff.files) or [FileStat(path=p) for p in order]
        for f in files:
            if f.path not in scanned:  # beyond the text (cut short), or a file with no patch text
                flags.extend(self._path_flags(f.path, 0))
        flags.extend(self._file_checks(files, scanned, root))
        flags.extend(self._scope(task, files, scanned, root))
        if diff.truncated and "scan.truncated" in self._checks:
            flags.extend(self._cut(files, scanned))
        unique = set(flags)
        return tuple(sorted(unique, key=lambda f: (f.path, f.line, _RANK.get(f.severity, 9), f.rule, f.message)))

    def _cut(self, files: Sequence[FileStat], scanned: dict[str, _Scanned]) -> list[Flag]:
        """Where the text of a diff cut short ends: the first file it holds only part of, or does not reach."""
        rule = self._checks["scan.truncated"]
        unreached = [f.path for f in files if f.path not in scanned]
        for f in files:
            result = scanned.get(f.path)
            if result is None or (not f.binary and result.added < f.added):
                after = len(unreached) - (result is None)
                more = f" ({after} more file{'s' if after != 1 else ''} not reached)" if after else ""
                line = result.last_added if result else 0
                return [Flag(rule.id, rule.severity, f.path, line, rule.message + more)]
        return []

    def _path_flags(self, path: str, line: int) -> list[Flag]:
        return [Flag(c.rule.id, c.rule.severity, path, line, c.rule.message) for c in self._paths if c.covers(path)]

    def _scan_section(self, text: str) -> _Scanned:
        section = _parse_section(text)
        path = section.path
        flags = self._path_flags(path, section.first_change or (1 if section.added else 0))
        rule = self._checks.get("perms.exec-bit")
        if rule is not None and section.mode_change:
            words = "a new executable file" if section.mode_change == "new" else rule.message + " (mode 100755)"
            flags.append(Flag(rule.id, rule.severity, path, 0, words))
        if section.added:
            flags.extend(self._line_flags(path, section))
        last = section.numbers[-1] if section.numbers else section.first_change
        return _Scanned(path, tuple(flags), section.first_change, section.first_removed, len(section.added), last)

    def _line_flags(self, path: str, section: _Section) -> list[Flag]:
        added = section.added
        joined = "\n".join(added)
        starts = [0]
        for line in added[:-1]:
            starts.append(starts[-1] + len(line) + 1)
        lowered = joined.lower() if any(c.rule.hints for c in self._lines) else ""
        flagged: set[int] = set()  # lines a secret rule flagged already: generic secret rules skip them
        out: list[Flag] = []
        for c in self._lines:
            if not c.covers(path):
                continue
            rule, regex = c.rule, c.regex
            assert regex is not None
            if rule.hints:
                lines = _lines_holding(lowered, starts, rule.hints)
                matches: Iterable[tuple[int, re.Match[str]]] = ((i, m) for i in lines for m in regex.finditer(added[i]))
            else:
                matches = ((bisect.bisect_right(starts, m.start()) - 1, m) for m in regex.finditer(joined))
            generic = rule.entropy > 0 and rule.id.startswith("secret.")
            seen: set[int] = set()
            for index, m in matches:
                if index in seen or (generic and index in flagged):
                    continue
                if rule.entropy > 0:
                    value = next((g for g in m.groups() if g), m.group(0))
                    if _entropy(value) < rule.entropy:
                        continue
                seen.add(index)
                out.append(Flag(rule.id, rule.severity, path, section.numbers[index], rule.message))
                if len(seen) >= MAX_PER_FILE:
                    break
            if rule.id.startswith("secret."):
                flagged |= seen
        return out

    def _file_checks(self, files: Sequence[FileStat], scanned: dict[str, _Scanned], root: Path | None) -> list[Flag]:
        checks = self._checks
        out: list[Flag] = []
        for f in files:
            result = scanned.get(f.path)
            first = result.first_change if result else 0
            if f.status == "D" and "deletion.file" in checks:
                rule = checks["deletion.file"]
                lines = f" ({f.removed} lines)" if f.removed else ""
                out.append(Flag(rule.id, rule.severity, f.path, 1 if result else 0, rule.message + lines))
            elif f.removed >= self.large_deletion and "deletion.lines" in checks:
                rule = checks["deletion.lines"]
                line = result.first_removed if result else 0
                out.append(Flag(rule.id, rule.severity, f.path, line, f"{rule.message}: {f.removed} lines removed"))
            if f.binary and "file.binary" in checks:
                rule = checks["file.binary"]
                out.append(Flag(rule.id, rule.severity, f.path, 0, rule.message))
            if root is not None and f.status != "D" and "file.large" in checks:
                try:
                    size = os.lstat(root / f.path).st_size
                except OSError:
                    size = 0
                if size >= self.large_file:
                    rule = checks["file.large"]
                    out.append(Flag(rule.id, rule.severity, f.path, first, f"{rule.message} ({_size(size)})"))
        return out

    def _scope(
        self, task: str, files: Sequence[FileStat], scanned: dict[str, _Scanned], root: Path | None
    ) -> list[Flag]:
        rule = self._checks.get("scope.outside")
        if rule is None or not task:
            return []
        named = task_paths(task, [f.path for f in files], root)
        if not named:
            return []
        inside = _within(named)
        shown = ", ".join(named[:3]) + (", …" if len(named) > 3 else "")
        out = []
        for f in files:
            if not inside(f.path):
                result = scanned.get(f.path)
                line = result.first_change if result else 0
                out.append(Flag(rule.id, rule.severity, f.path, line, f"{rule.message} ({shown})"))
        return out


def _size(n: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


# -- the paths a task names ----------------------------------------------------------------------------------------
_TOKEN = re.compile(r"[^\s'\"`()\[\]{}<>,;]+")
_PATHISH = re.compile(r"[\w.*?/-]+")
_EXTENSION = re.compile(r"[^/]+\.[A-Za-z][A-Za-z0-9]{0,9}")


def task_paths(task: str, changed: Sequence[str] = (), root: Path | None = None) -> tuple[str, ...]:
    """The files, folders and globs a task names: words that look like paths (`src/app/`, `README.md`,
    `tests/*.py`) and that are real, i.e. a glob, or a path that exists in `root` or that a changed file is at,
    under, or named like (so "and/or" or "Node.js" are not taken for paths)."""
    found: list[str] = []
    names = {p.rsplit("/", 1)[-1] for p in changed}
    for token in _TOKEN.findall(task):
        token = token.rstrip(".:!?")
        if "://" in token or not _PATHISH.fullmatch(token):
            continue
        token = token.removeprefix("./")
        if not token or token.startswith(("..", "/")):
            continue
        is_glob = any(c in token for c in "*?")
        if "/" not in token and not is_glob and not _EXTENSION.fullmatch(token):
            continue
        if not is_glob and not _real(token, changed, names, root):
            continue
        if token not in found:
            found.append(token)
    return tuple(found)


def _real(token: str, changed: Sequence[str], names: set[str], root: Path | None) -> bool:
    bare = token.rstrip("/")
    if not bare:
        return False
    if root is not None and os.path.lexists(root / bare):
        return True
    if "/" not in bare and bare in names:
        return True
    return any(p == bare or p.startswith(bare + "/") for p in changed)


def _within(named: Sequence[str]):  # type: ignore[no-untyped-def]
    """A test of whether a path is inside what the task names."""
    globs = _globs([n for n in named if any(c in n for c in "*?")])
    plain = [n.rstrip("/") for n in named if not any(c in n for c in "*?")]

    def inside(path: str) -> bool:
        if globs is not None and globs.match(path):
            return True
        name = path.rsplit("/", 1)[-1]
        return any(path == p or path.startswith(p + "/") or ("/" not in p and name == p) for p in plain)

    return inside


# -- for views -------------------------------------------------------------------------------------------------------
def describe(flag: Flag) -> str:
    """One line for a reviewer: `high  app/config.py:3  an AWS access key id (secret.aws-key)`."""
    return f"{flag.severity}  {flag.where}  {flag.message} ({flag.rule})"


def diff_line(text: str, flag: Flag) -> int | None:
    """The index of the line of the diff text (`text.split("\\n")`) that shows `flag`: its added line, where its
    lines were removed, or the file's header when the flag is about the whole file. None when the text does not
    reach the file."""
    base = 0
    last = 0
    for offset, section in _sections(text):
        base += text.count("\n", last, offset)
        last = offset
        lines = section.split("\n")
        path, _, first_hunk = _header(lines)
        if path != flag.path:
            continue
        if not flag.line:
            return base
        new = 0
        at = base + first_hunk if first_hunk < len(lines) else base
        for k in range(first_hunk, len(lines)):
            line = lines[k]
            c = line[:1]
            if c == "@":
                m = _HUNK.match(line)
                if m:
                    new = int(m.group(2)) or 1
                    at = base + k
            elif c in ("+", " "):
                if new >= flag.line:
                    return base + k
                new += 1
            elif c == "-" and new >= flag.line:
                return base + k
        return at
    return None
