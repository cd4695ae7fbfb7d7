"""TOML configuration → typed, validated dataclasses.

Errors are one line that names the file, the line where it can be found, the key and the fix:
``mc.toml:7: [policy] approve = "sometimes": must be one of always, writes, commands, never``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

APPROVE_POLICIES = ("always", "writes", "commands", "never")
APIS = ("responses", "chat")
RUNNERS = ("builtin", "codex", "acp", "claude", "command")
MERGE_MODES = ("ff", "merge", "squash")
SANDBOXES = ("none", "bwrap", "auto")
CHECK_TRIGGERS = ("idle", "merge", "manual")
#: What a [checks] affected command may hold in braces: the changed paths, the tests they touch, their folders.
CHECK_PLACEHOLDERS = ("files", "tests", "packages")
CONFIG_NAMES = ("missionctl.toml", ".mc/config.toml")


class ConfigError(Exception):
    """A configuration problem, as one line a person can act on."""


@dataclass
class RepoConfig:
    path: str = "."
    """The git repository the fleet works on (relative paths are relative to the config file)."""
    base: str = ""
    """The ref agents branch from and merge into; empty means the repository's current branch."""
    worktree_dir: str = ""
    """Where worktrees go; empty means `<repo>/../<repo-name>.mc-worktrees`."""
    merge: str = "ff"
    """How `merge` lands an agent's work on the base branch: ff, merge or squash."""


@dataclass
class ModelConfig:
    base_url: str = "https://api.openai.com/v1"
    """Any OpenAI-compatible endpoint: OpenAI, Ollama, vLLM, LM Studio, OpenRouter."""
    model: str = "gpt-5-mini"
    api_key_env: str = "OPENAI_API_KEY"
    """The environment variable that holds the key. The key itself never goes in a file."""
    api: str = "responses"
    """responses (default) or chat (Chat Completions)."""
    timeout: float = 60.0
    """Seconds without a byte from the endpoint before a call counts as stalled."""
    max_retries: int = 4
    """Retries of a call that failed with 429, 5xx or a dropped stream, with backoff."""
    retry_backoff: float = 1.0
    """Seconds before the first retry (doubling each time) when the endpoint gives no Retry-After."""
    max_retry_wait: float = 300.0
    """The longest wait before a retry, in seconds, whatever Retry-After the endpoint asks for."""
    call_timeout: float = 600.0
    """Seconds one model call may take from request to the end of its answer, however steadily bytes arrive;
    past it the call is retried (or the agent fails) like any other fault."""


@dataclass
class PolicyConfig:
    approve: str = "writes"
    """always: every tool call waits; writes: reads run, writes and commands wait;
    commands: reads and writes run, commands outside allow_commands wait; never."""
    allow_commands: list[str] = field(default_factory=list)
    """Command prefixes that run without asking under `commands` (e.g. "pytest", "git status")."""


@dataclass
class ToolsConfig:
    shell_timeout: float = 300.0
    """Seconds a shell command may run before it is killed."""
    sandbox: str = "auto"
    """auto (bwrap where bubblewrap works, else none, said once in the log), bwrap (shell commands run under
    bubblewrap: the worktree writable, system folders read-only, no other process, socket or network; refused
    where it is missing), or none (unconfined: a command can read and change whatever the user can)."""
    pass_env: list[str] = field(default_factory=list)
    """Environment variables shell commands get in addition to a safe default set (never the API key unless named)."""
    max_output: int = 64_000
    """Characters of a tool's output the model receives (one command's log keeps its first 256 KiB and last
    64 KiB, and counts the rest)."""


@dataclass
class UIConfig:
    bell: bool = True
    """Ring the terminal bell once when an agent starts needing a decision."""
    keys: dict[str, str] = field(default_factory=dict)
    """Remapped bindings: binding id → keys, e.g. approve = "y"."""


@dataclass
class FlagRuleConfig:
    id: str
    """The rule's id, shown on the flag (e.g. "team.todo"); a built-in id here replaces that rule."""
    message: str = ""
    """What the flag says to the reviewer (default: the id)."""
    severity: str = "medium"
    """high, medium or low."""
    pattern: str = ""
    """A regular expression searched in every added line; without it the rule flags each changed file that
    `paths` matches."""
    paths: list[str] = field(default_factory=list)
    """Globs of the files the rule looks at (a glob without '/' matches a file's name in any folder); empty: all."""
    entropy: float = 0.0
    """With a pattern: flag only when the pattern's first group (or the whole match) has at least this many
    bits of entropy per character."""


@dataclass
class FlagsConfig:
    enabled: bool = True
    """Scan every diff for risk flags (secrets, dependency and CI changes, permissions, large deletions …)."""
    large_deletion: int = 200
    """Lines removed from one file from which on that file is flagged as a large deletion."""
    large_file: int = 1_000_000
    """Bytes from which a changed file is flagged as large."""
    entropy: float = 4.0
    """Bits of entropy per character from which a long quoted value assigned to a name is flagged as a
    possible secret (rule secret.high-entropy)."""
    disable: list[str] = field(default_factory=list)
    """Built-in rules to turn off, by id ("deps.npm") or by the part before the dot ("deps")."""
    rules: list[FlagRuleConfig] = field(default_factory=list)
    """A team's own rules ([[flags.rules]] tables)."""


@dataclass
class ChecksConfig:
    test: str = ""
    """The project's test command, run in the agent's worktree like its own commands (e.g. "python -m pytest -q",
    "npm test", "go test ./..."); empty: no checks."""
    affected: str = ""
    """The test command narrowed to what the diff touches, with {files} (the changed paths), {tests} (the Python
    test files that import a changed module, directly or not) or {packages} (the changed files' folders, as
    ./dir); empty: a pytest `test` gets the affected test files appended, any other runs whole."""
    on: str = "idle"
    """When checks run: idle (whenever an agent finishes a turn with a changed diff), merge (before a merge, which
    a failing check stops) or manual (only when asked, key t)."""
    timeout: float = 600.0
    """Seconds a check may run before its processes are killed (and it counts as an error)."""
    parallel: int = 0
    """Checks that run at once across the fleet ([checks] only); 0: half the cores, at least 1."""


@dataclass
class AgentConfig:
    name: str
    task: str = ""
    runner: str = "builtin"
    model: str = ""
    """Overrides [model] model for this agent."""
    policy: str = ""
    """Overrides [policy] approve for this agent."""
    command: str = ""
    """For runner = "command": the command line ({task} is replaced by the task; a "pty:" prefix runs it in a
    terminal). For claude, codex and acp: the agent's executable and its arguments (default: their usual name)."""
    base: str = ""
    """Overrides [repo] base for this agent."""
    reuse_branch: bool = False
    """Work on the branch mc/<name> when it exists already (the agent continues from it), instead of failing."""
    group: str = ""
    """Agents with the same group (copies of one task) are totalled together; empty: in no group (copies: the
    name)."""
    copies: int = 1
    """Best of N: how many agents do this task at once, each on its own branch, named <name>-1, <name>-2 … and
    sharing one group; the compare view (key b) shows them side by side to pick the one to merge."""
    runners: list[str] = field(default_factory=list)
    """Best of N with a mix of runners: one copy per runner (e.g. ["builtin", "codex", "claude"])."""
    models: list[str] = field(default_factory=list)
    """Best of N with a mix of models: one copy per model; with runners as well, copy i gets runners[i] and
    models[i]."""
    budget_tokens: int = 0
    """Tokens (in and out) the agent may use; once reached it asks before its next model call. 0: no budget."""
    budget_cost: float = 0.0
    """What the agent may spend at the [prices] of its model; once reached it asks before its next model call.
    0: no budget."""
    checks: dict[str, Any] = field(default_factory=dict)
    """[agents.checks]: the keys of [checks] that differ for this agent (test, affected, on, timeout)."""

    def copy_count(self) -> int:
        """How many agents this entry makes: one per runner or model of its mix, else `copies`."""
        return max(len(self.runners), len(self.models)) or self.copies

    def is_group(self) -> bool:
        """True when this entry makes several agents (best of N)."""
        return self.copy_count() > 1

    def copy_plan(self) -> list[tuple[str, str]]:
        """(runner, model) of each copy, in order ("" model: the one `model` or [model] gives)."""
        n = self.copy_count()
        return [
            (
                self.runners[i] if i < len(self.runners) else self.runner,
                self.models[i] if i < len(self.models) else self.model,
            )
            for i in range(n)
        ]

    def as_copy(self, index: int, name: str, group: str) -> AgentConfig:
        """Copy `index` (from 0) of this entry as an agent of its own: its name, the group, its runner and model."""
        runner, model = self.copy_plan()[index]
        return dataclasses.replace(
            self, name=name, group=group, runner=runner, model=model, copies=1, runners=[], models=[]
        )


def copies_problem(agent: AgentConfig) -> tuple[str, str] | None:
    """What is wrong with an agent's copies, runners and models, as (key, text) where the text names the key, its
    value and the fix (`copies = 0: must be from 1 to 32 (agents at once)`); None when nothing is. The config says
    it after `file:line: [[agents]] 'name'`, a spawn after `agent 'name':`."""
    for key, annotation in (("copies", "int"), ("runners", "list[str]"), ("models", "list[str]")):
        written = getattr(agent, key)
        ok, value = _check_value(written, annotation)
        problem = _value_problem("agents", key, value, annotation) if ok else f"must be {_TYPE_WORDS[annotation]}"
        if problem:
            return key, f"{key} = {written!r}: {problem}"
    runners, models = agent.runners, agent.models
    if runners and models and len(runners) != len(models):
        return (
            "models",
            f"models = {models!r}: {len(models)} models for {len(runners)} runners: give both lists the same length "
            "(copy i gets runners[i] and models[i])",
        )
    mix = "runners" if runners else "models" if models else ""
    if mix and agent.copies not in (1, len(getattr(agent, mix))):
        n = len(getattr(agent, mix))
        return "copies", f"copies = {agent.copies}: {mix} names {n} (one copy each): remove copies or make it {n}"
    n = agent.copy_count()
    if n == 1:
        return None
    if agent.reuse_branch:
        return (
            "reuse_branch",
            "reuse_branch = true: each copy works on a new branch of its own: remove reuse_branch (or the copies)",
        )
    last = f"{agent.name}-{n}"
    problem = agent_name_problem(last) if agent.name else None
    if problem:
        return (
            "name",
            f"name = {agent.name!r}: its copies are named {agent.name}-1 … {last}, not usable as branches "
            f"({problem}): shorten the name",
        )
    if "command" in runners and not agent.command:
        return "runners", f'runners = {runners!r}: a command copy needs its command: add command = "… {{task}}"'
    return None


@dataclass
class PriceConfig:
    input: float
    """The price of a million input tokens (the prompt, cached tokens included)."""
    output: float
    """The price of a million output tokens."""


@dataclass
class FleetConfig:
    budget_tokens: int = 0
    """Tokens (in and out) all agents together may use; once reached each agent asks before its next model call.
    0: no budget."""
    budget_cost: float = 0.0
    """What all agents together may spend at the [prices] of their models; once reached each agent asks before
    its next model call. 0: no budget."""


@dataclass
class Config:
    repo: RepoConfig = field(default_factory=RepoConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    tools: ToolsConfig = field(default_factory=ToolsConfig)
    ui: UIConfig = field(default_factory=UIConfig)
    flags: FlagsConfig = field(default_factory=FlagsConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    checks: ChecksConfig = field(default_factory=ChecksConfig)
    prices: dict[str, PriceConfig] = field(default_factory=dict)
    """Model name → its price per million tokens in and out ([prices] table)."""
    agents: list[AgentConfig] = field(default_factory=list)
    source: str = ""
    """The file this config was read from ("" when built in code)."""

    def repo_path(self) -> Path:
        base = Path(self.source).parent if self.source else Path.cwd()
        return (base / os.path.expanduser(self.repo.path)).resolve()

    def agent_model(self, agent: AgentConfig) -> str:
        return agent.model or self.model.model

    def agent_policy(self, agent: AgentConfig) -> str:
        return agent.policy or self.policy.approve

    def agent_checks(self, agent: AgentConfig | None) -> ChecksConfig:
        """[checks] with the agent's own [agents.checks] keys in place of the fleet's."""
        if agent is None or not agent.checks:
            return self.checks
        return dataclasses.replace(self.checks, **agent.checks)


_SECTIONS: dict[str, type] = {
    "repo": RepoConfig,
    "model": ModelConfig,
    "policy": PolicyConfig,
    "tools": ToolsConfig,
    "ui": UIConfig,
    "flags": FlagsConfig,
    "fleet": FleetConfig,
    "checks": ChecksConfig,
}
_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("repo", "merge"): MERGE_MODES,
    ("model", "api"): APIS,
    ("policy", "approve"): APPROVE_POLICIES,
    ("tools", "sandbox"): SANDBOXES,
    ("agents", "runner"): RUNNERS,
    ("agents", "policy"): ("", *APPROVE_POLICIES),
    ("flags.rules", "severity"): ("high", "medium", "low"),
    ("checks", "on"): CHECK_TRIGGERS,
    ("agents.checks", "on"): CHECK_TRIGGERS,
}
#: (table, key) → (lowest, highest, whether the lowest itself is allowed, unit) of a number.
_RANGES: dict[tuple[str, str], tuple[float, float, bool, str]] = {
    ("model", "timeout"): (0, 86400, False, "seconds"),
    ("model", "max_retries"): (0, 100, True, ""),
    ("model", "retry_backoff"): (0, 3600, True, "seconds"),
    ("model", "max_retry_wait"): (0, 86400, True, "seconds"),
    ("model", "call_timeout"): (0, 86400, False, "seconds"),
    ("tools", "shell_timeout"): (0, 86400, False, "seconds"),
    ("tools", "max_output"): (100, 100_000_000, True, "characters"),
    ("flags", "large_deletion"): (1, 100_000_000, True, "lines"),
    ("flags", "large_file"): (1, 1_000_000_000_000, True, "bytes"),
    ("flags", "entropy"): (0, 8, False, "bits per character"),
    ("flags.rules", "entropy"): (0, 8, True, "bits per character"),
    ("agents", "budget_tokens"): (0, 10**15, True, "tokens; 0: no budget"),
    ("agents", "budget_cost"): (0, 10**12, True, "0: no budget"),
    ("agents", "copies"): (1, 32, True, "agents at once"),
    ("fleet", "budget_tokens"): (0, 10**15, True, "tokens; 0: no budget"),
    ("fleet", "budget_cost"): (0, 10**12, True, "0: no budget"),
    ("prices", "input"): (0, 10**9, True, "per million tokens"),
    ("prices", "output"): (0, 10**9, True, "per million tokens"),
    ("checks", "timeout"): (0, 86400, False, "seconds"),
    ("agents.checks", "timeout"): (0, 86400, False, "seconds"),
    ("checks", "parallel"): (0, 1024, True, "checks at once; 0: half the cores"),
}
NAME_MAX = 64
#: The most agents one best-of-N entry makes.
COPIES_MAX = 32
_NAME_CHARS = re.compile(r"[A-Za-z0-9._-]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def agent_name_problem(name: str) -> str | None:
    """Why `name` cannot name an agent (None when it can). A name becomes the branch `mc/<name>`, a folder and a
    log's folder, so it keeps to letters, digits, '.', '_' and '-' and to git's rules for a ref name."""
    if not name:
        return "the name is empty"
    if len(name) > NAME_MAX:
        return f"longer than {NAME_MAX} characters"
    if not _NAME_CHARS.fullmatch(name):
        bad = next(c for c in name if not _NAME_CHARS.fullmatch(c))
        return f"{bad!r} is not allowed: use letters, digits, '.', '_' or '-'"
    if not name[0].isalnum():
        return "it must start with a letter or a digit"
    if ".." in name:
        return "git branch names cannot hold '..'"
    if name.endswith(".lock"):
        return "git branch names cannot end in '.lock'"
    if name.endswith("."):
        return "git branch names cannot end in '.'"
    return None


def suggest_name(name: str) -> str:
    """A valid agent name close to `name` (what an error message offers as the fix)."""
    fixed = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._-]+", "-", name)).lstrip("._-")[:NAME_MAX]
    while fixed.endswith((".", ".lock")):
        fixed = fixed[:-5] + "-lock" if fixed.endswith(".lock") else fixed[:-1]
    return fixed if fixed and agent_name_problem(fixed) is None else "agent-1"


def _range_problem(value: float, table: str, key: str) -> str | None:
    """Why a number is outside its allowed range, as the words after `must` (None when it is inside)."""
    bounds = _RANGES.get((table, key))
    if bounds is None:
        return None
    low, high, low_ok, unit = bounds
    inside = (low <= value if low_ok else low < value) and value <= high  # False for nan
    if inside:
        return None
    low_text, high_text = (str(int(x)) if x == int(x) else str(x) for x in (low, high))
    words = f"from {low_text} to {high_text}" if low_ok else f"more than {low_text} and at most {high_text}"
    return f"must be {words}" + (f" ({unit})" if unit else "")


def _url_problem(url: str) -> str | None:
    """Why `url` cannot be an endpoint's base_url (None when it can)."""
    example = "e.g. http://127.0.0.1:11434/v1"
    if any(c.isspace() for c in url):
        return f"a URL cannot hold spaces: write it as {example}"
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not url.lower().startswith(f"{parts.scheme}://"):
        return f"must start with http:// or https://, {example}"
    if not parts.hostname:
        return f"has no host: write it as {example}"
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or (port is None and parts.netloc.endswith(":")):
        return f"the port must be a number from 1 to 65535, {example}"
    return None


def _line_of(text: str, table: str, key: str | None, index: int | None = None) -> int | None:
    """Best-effort line number of `key` in `[table]` (or of the table header when key is None)."""
    lines = text.splitlines()
    current = ""
    seen = -1
    header_line = None
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        m = re.match(r"^\[\[?\s*([A-Za-z0-9_.-]+)\s*\]\]?", line)
        if m:
            current = m.group(1)
            if current == table:
                seen += 1
                if index is None or seen == index:
                    header_line = number
            continue
        if current != table or (index is not None and seen != index):
            continue
        if key is not None and re.match(rf"^{re.escape(key)}\s*=", line):
            return number
    return header_line


def _where(source: str, text: str, table: str, key: str | None, index: int | None = None) -> str:
    name = source or "config"
    line = _line_of(text, table, key, index) if text else None
    return f"{name}:{line}" if line else name


def _type_name(tp: Any) -> str:
    return {"str": "a string", "int": "a whole number", "float": "a number", "bool": "true or false"}.get(
        str(tp), str(tp)
    )


def _check_value(value: Any, annotation: str) -> tuple[bool, Any]:
    """Check a TOML value against a dataclass field annotation (as a string). Returns (ok, value)."""
    if annotation == "str":
        return isinstance(value, str), value
    if annotation == "bool":
        return isinstance(value, bool), value
    if annotation == "int":
        return isinstance(value, int) and not isinstance(value, bool), value
    if annotation == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if annotation == "list[str]":
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        return ok, list(value) if ok else value
    if annotation == "dict[str, str]":
        ok = isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
        return ok, dict(value) if ok else value
    return True, value


_TYPE_WORDS = {
    "str": 'a string in quotes ("…")',
    "bool": "true or false",
    "int": "a whole number",
    "float": "a number",
    "list[str]": 'a list of strings (["…", "…"])',
    "dict[str, str]": 'a table of strings (key = "…")',
}


def _value_problem(table: str, key: str, value: Any, annotation: str) -> str | None:
    """What is wrong with a value of the right type (None when nothing is), as the words after `key = value: `."""
    choices = _CHOICES.get((table, key))
    if choices and value not in choices:
        return f"must be one of {', '.join(c for c in choices if c)}"
    if annotation in ("int", "float"):
        return _range_problem(value, table, key)
    if (table, key) == ("model", "base_url"):
        return _url_problem(value)
    if (table, key) == ("policy", "allow_commands") and any(not entry.strip() for entry in value):
        return 'an empty entry allows nothing: remove it, or write a command prefix such as "pytest"'
    if (table, key) == ("agents", "runners"):
        bad = next((runner for runner in value if runner not in RUNNERS), None)
        if bad is not None:
            return f"{bad!r} is not a runner: use {', '.join(RUNNERS[:-1])} or {RUNNERS[-1]}"
        if len(value) > COPIES_MAX:
            return f"{len(value)} runners: at most {COPIES_MAX} agents at once"
    if (table, key) == ("agents", "models"):
        if any(not model.strip() for model in value):
            return 'an empty model name: remove it or name a model, e.g. "gpt-5-mini"'
        if len(value) > COPIES_MAX:
            return f"{len(value)} models: at most {COPIES_MAX} agents at once"
    if (table, key) == ("tools", "pass_env"):
        bad = next((name for name in value if not _ENV_NAME.fullmatch(name)), None)
        if bad is not None:
            return f"{bad!r} is not an environment variable name: use letters, digits and '_'"
    if (table, key) == ("flags", "disable"):
        from mc.flags import unknown_rule_ids

        unknown = unknown_rule_ids(value)
        if unknown:
            return f'no built-in rule {unknown[0]!r}: use an id or a group of the built-in rules, e.g. "deps.npm"'
    if (table, key) == ("flags.rules", "pattern") and value:
        try:
            re.compile(value)
        except re.error as exc:
            return f"not a regular expression ({exc}): fix it (write it in single quotes, '…', so '\\' stays as it is)"
    if (table, key) == ("flags.rules", "id") and not value.strip():
        return 'an empty id: name the rule, e.g. id = "team.todo"'
    if key == "affected" and table in ("checks", "agents.checks"):
        unknown = [m for m in re.findall(r"(?<!\$)\{(\w*)\}", value) if m not in CHECK_PLACEHOLDERS]
        if unknown:
            return f"{{{unknown[0]}}} is not a placeholder: use {{files}}, {{tests}} or {{packages}}"
    return None


def _build(
    cls: type, data: dict[str, Any], table: str, source: str, text: str, index: int | None = None, label: str = ""
):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    label = label or (f"[{table}]" if index is None else f"[[{table}]] #{index + 1}")
    for key, written in data.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(
                f"{_where(source, text, table, key, index)}: unknown key {label} {key}: remove it or use one of {known}"
            )
        annotation = str(fields[key].type)
        ok, value = _check_value(written, annotation)
        problem = (
            _value_problem(table, key, value, annotation)
            if ok
            else f"must be {_TYPE_WORDS.get(annotation, annotation)}"
        )
        if problem:
            raise ConfigError(f"{_where(source, text, table, key, index)}: {label} {key} = {written!r}: {problem}")
        kwargs[key] = value
    for name, f in fields.items():
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and name not in kwargs:
            raise ConfigError(
                f"{_where(source, text, table, None, index)}: {label} is missing required key {name!r}: add "
                f'{name} = "…"'
            )
    return cls(**kwargs)


def parse_config(text: str, source: str = "") -> Config:
    """Parse and validate config text. Raises ConfigError with a one-line message."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source or 'config'}: TOML syntax error: {exc}: fix the line it names") from None
    return config_from_dict(data, source=source, text=text)


def config_from_dict(data: dict[str, Any], source: str = "", text: str = "") -> Config:
    cfg = Config(source=source)
    for key, value in data.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{_where(source, text, key, None)}: {key} must be a table: write [{key}]")
            if key == "flags":
                value = dict(value)
                rules = _flag_rules(value.pop("rules", []), source, text)
                setattr(cfg, key, _build(_SECTIONS[key], value, key, source, text))
                cfg.flags.rules = rules
                continue
            setattr(cfg, key, _build(_SECTIONS[key], value, key, source, text))
        elif key == "agents":
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise ConfigError(
                    f"{_where(source, text, 'agents', None)}: agents must be an array of tables: write [[agents]]"
                )
            cfg.agents = _agents(value, source, text)
        elif key == "prices":
            cfg.prices = _prices(value, source, text)
        else:
            known = ", ".join([*_SECTIONS, "prices", "agents"])
            raise ConfigError(
                f"{_where(source, text, key, None) if isinstance(value, dict) else source or 'config'}: "
                f"unknown table or key {key!r}: remove it or use one of {known}"
            )
    names = [a.name for a in cfg.agents]
    for i, name in enumerate(names):
        problem = agent_name_problem(name)
        if problem:
            raise ConfigError(
                f"{_where(source, text, 'agents', 'name', i)}: [[agents]] name = {name!r}: not usable as the branch "
                f'mc/{name} ({problem}): rename it, e.g. name = "{suggest_name(name)}"'
            )
        if name in names[:i]:
            raise ConfigError(
                f"{_where(source, text, 'agents', 'name', i)}: [[agents]] name = {name!r} is used twice: "
                "give each agent its own name"
            )
        agent = cfg.agents[i]
        owner = next((a for a in cfg.agents[:i] + cfg.agents[i + 1 :] if name in _copy_names(a)), None)
        if owner is not None:
            raise ConfigError(
                f"{_where(source, text, 'agents', 'name', i)}: [[agents]] name = {name!r} is the name of a copy of "
                f"{owner.name!r} (copies = {owner.copy_count()}): rename one of them"
            )
        copies = copies_problem(agent)
        if copies is not None:
            key, said = copies
            raise ConfigError(f"{_where(source, text, 'agents', key, i)}: [[agents]] {name!r} {said}")
        if agent.runner == "command" and not agent.command and "command" in [r for r, _ in agent.copy_plan()]:
            raise ConfigError(
                f'{_where(source, text, "agents", "runner", i)}: [[agents]] {name!r} has runner = "command" '
                'but no command: add command = "… {task}"'
            )
    for i, agent in enumerate(cfg.agents):
        if not agent.task.strip():
            where = _where(source, text, "agents", "task" if "task" in data["agents"][i] else None, i)
            said = f"task = {agent.task!r}: the task is empty" if "task" in data["agents"][i] else "has no task"
            raise ConfigError(
                f'{where}: [[agents]] {agent.name!r} {said}: say what the agent should do, e.g. add task = "Fix the '
                'failing test in tests/"'
            )
    _check_cost_budgets(cfg, source, text)
    return cfg


def _copy_names(agent: AgentConfig) -> list[str]:
    """The names the copies of a best-of-N entry get in a fleet that has none of them yet."""
    n = agent.copy_count()
    return [f"{agent.name}-{k}" for k in range(1, n + 1)] if n > 1 else []


def spawn_model(cfg: Config, agent: AgentConfig) -> str:
    """The model an agent is recorded with: its own, else [model] model for the built-in runner; "" when another
    runner picks its own."""
    return agent.model or (cfg.model.model if agent.runner == "builtin" else "")


def _toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else '"' + name.replace('"', '\\"') + '"'


def _price_fix(model: str) -> str:
    return f"add [prices] {_toml_key(model)} = {{ input = …, output = … }} (per million tokens)"


def _check_cost_budgets(cfg: Config, source: str, text: str) -> None:
    """A cost budget needs the price of every model it counts: none is ever guessed."""
    for i, entry in enumerate(cfg.agents):
        if not entry.budget_cost:
            continue
        head = f"{_where(source, text, 'agents', 'budget_cost', i)}: [[agents]] {entry.name!r} budget_cost = "
        for agent in _each_copy(entry):
            model = spawn_model(cfg, agent)
            if not model:
                raise ConfigError(
                    f"{head}{agent.budget_cost!r}: no price can be known, {agent.runner} picks its own model: set "
                    'model = "…" and give its price in [prices]'
                )
            if model not in cfg.prices:
                raise ConfigError(
                    f'{head}{agent.budget_cost!r}: no price is known for its model "{model}": {_price_fix(model)}'
                )
    if not cfg.fleet.budget_cost:
        return
    head = f"{_where(source, text, 'fleet', 'budget_cost')}: [fleet] budget_cost = {cfg.fleet.budget_cost!r}: "
    if cfg.model.model not in cfg.prices:
        raise ConfigError(
            f'{head}no price is known for "{cfg.model.model}" ([model] model): {_price_fix(cfg.model.model)}'
        )
    for agent in (copy for entry in cfg.agents for copy in _each_copy(entry)):
        if agent.runner == "command":
            continue  # a command reports no tokens
        model = spawn_model(cfg, agent)
        if not model:
            raise ConfigError(
                f"{head}no price can be known for agent {agent.name!r}, {agent.runner} picks its own model: set its "
                'model = "…" and give its price in [prices]'
            )
        if model not in cfg.prices:
            raise ConfigError(f'{head}no price is known for "{model}" (agent {agent.name!r}): {_price_fix(model)}')


def _each_copy(agent: AgentConfig) -> list[AgentConfig]:
    """The agents an entry makes (itself when it makes one), as far as runner and model go."""
    if not agent.is_group():
        return [agent]
    return [agent.as_copy(i, agent.name, agent.group) for i in range(agent.copy_count())]


def _price_line(text: str, model: str, key: str | None) -> int | None:
    """Best-effort line of a model's price (or of one of its keys) in the [prices] table."""
    header: int | None = None
    current = ""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith("["):
            current = re.sub(r"\s+", "", line.split("#", 1)[0]).strip("[]")
            parts = current.split(".", 1)
            if parts[0] == "prices" and len(parts) == 2 and parts[1].strip("\"'") == model:
                header = number
                if key is None:
                    return number
            continue
        if current == "prices":
            m = re.match(r'^("[^"]*"|\'[^\']*\'|[A-Za-z0-9_-]+)\s*=', line)
            if m and m.group(1).strip("\"'") == model:
                return number
        elif header is not None and key is not None and re.match(rf"^{re.escape(key)}\s*=", line):
            return number
    return header


def _prices(value: Any, source: str, text: str) -> dict[str, PriceConfig]:
    """[prices]: model name → its price per million tokens in and out, both given (no price is ever guessed)."""
    if not isinstance(value, dict):
        raise ConfigError(f"{_where(source, text, 'prices', None)}: prices must be a table: write [prices]")
    prices: dict[str, PriceConfig] = {}
    for model, price in value.items():
        name = _toml_key(model)

        def where(key: str | None = None, model: str = model) -> str:
            line = _price_line(text, model, key) if text else None
            return f"{source or 'config'}:{line}" if line else source or "config"

        if not isinstance(price, dict):
            raise ConfigError(
                f"{where()}: [prices] {name} = {price!r}: must be a table of the prices per million tokens, e.g. "
                f"{name} = {{ input = 1.25, output = 10.0 }}"
            )
        for key, written in price.items():
            if key not in ("input", "output"):
                raise ConfigError(f"{where(key)}: unknown key [prices] {name} {key}: remove it or use input and output")
            ok, number = _check_value(written, "float")
            problem = _value_problem("prices", key, number, "float") if ok else "must be a number"
            if problem:
                raise ConfigError(f"{where(key)}: [prices] {name} {key} = {written!r}: {problem}")
        missing = [k for k in ("input", "output") if k not in price]
        if missing:
            raise ConfigError(
                f"{where()}: [prices] {name} is missing its {missing[0]} price: add {missing[0]} = … (per million tokens)"
            )
        prices[model] = PriceConfig(input=float(price["input"]), output=float(price["output"]))
    return prices


def _agents(tables: list[dict[str, Any]], source: str, text: str) -> list[AgentConfig]:
    """The [[agents]] tables; an agent's [agents.checks] is checked like [checks], and keeps only the keys it sets."""
    agents = []
    with_checks = 0
    for i, table in enumerate(tables):
        table = dict(table)
        overrides = table.pop("checks", None)
        agent = _build(AgentConfig, table, "agents", source, text, index=i)
        if overrides is not None:
            if not isinstance(overrides, dict):
                raise ConfigError(
                    f"{_where(source, text, 'agents', 'checks', i)}: [[agents]] {agent.name!r} checks must be a "
                    'table: write [agents.checks] under the agent, or checks = { test = "…" }'
                )
            label = f"[agents.checks] of {agent.name!r}"
            if "parallel" in overrides:
                raise ConfigError(
                    f"{_where(source, text, 'agents.checks', 'parallel', with_checks)}: {label} parallel: it is for "
                    "the whole fleet: set it in [checks]"
                )
            built = _build(ChecksConfig, overrides, "agents.checks", source, text, index=with_checks, label=label)
            agent.checks = {key: getattr(built, key) for key in overrides}
            with_checks += 1
        agents.append(agent)
    return agents


def _flag_rules(value: Any, source: str, text: str) -> list[FlagRuleConfig]:
    """A team's [[flags.rules]]: each one checked like a table of its own; ids are unique."""
    table = "flags.rules"
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError(
            f"{_where(source, text, 'flags', 'rules')}: [flags] rules must be an array of tables: write [[flags.rules]]"
        )
    rules = [_build(FlagRuleConfig, v, table, source, text, index=i) for i, v in enumerate(value)]
    seen: set[str] = set()
    for i, rule in enumerate(rules):
        if not rule.pattern and not rule.paths:
            raise ConfigError(
                f"{_where(source, text, table, None, i)}: [[flags.rules]] {rule.id!r} has neither pattern nor paths, "
                "so it would flag every file: add pattern = '…' (searched in added lines) or paths = [\"…\"]"
            )
        if rule.id in seen:
            raise ConfigError(
                f"{_where(source, text, table, 'id', i)}: [[flags.rules]] id = {rule.id!r} is used twice: give each "
                "rule its own id"
            )
        seen.add(rule.id)
    return rules


def load_config(path: str | Path) -> Config:
    """Read a config file. Raises ConfigError naming the file when it is missing or unreadable."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file: create one with `missionctl init`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read config: {exc}") from None
    return parse_config(text, source=str(p.resolve()))


def find_config(start: Path | None = None) -> Path | None:
    """The config of the repository around `start`: missionctl.toml or .mc/config.toml at its top."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        for name in CONFIG_NAMES:
            candidate = folder / name
            if candidate.is_file():
                return candidate
        if (folder / ".git").exists():
            return None
    return None


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain data (for tomli-w), without the bookkeeping `source`."""
    data = dataclasses.asdict(cfg)
    data.pop("source", None)
    if not data["agents"]:
        data.pop("agents")
    return data


def starter_config(repo: str = ".", model: str = "gpt-5-mini", base_url: str = "") -> str:
    """The text `missionctl init` writes."""
    cfg = Config()
    cfg.repo.path = repo
    cfg.model.model = model
    if base_url:
        cfg.model.base_url = base_url
    cfg.agents = [
        AgentConfig(name="tests", task="Run the test suite and fix the first failure you find."),
        AgentConfig(name="docs", task="Bring README.md up to date with the code.", policy="commands"),
    ]
    data = config_to_dict(cfg)
    for agent in data["agents"]:
        for key in [
            k
            for k, v in agent.items()
            if v in ("", {}, []) or v is False or (isinstance(v, (int, float)) and v == 0) or (k, v) == ("copies", 1)
        ]:
            del agent[key]
    if not data["prices"]:
        data.pop("prices")
    head = (
        "# missionctl configuration. Every option, its default and what it does: `missionctl init --example`.\n"
        "# The API key is read from the environment variable named by api_key_env, never from this file.\n\n"
    )
    return head + tomli_w.dumps(data)
