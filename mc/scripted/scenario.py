"""Scripted scenarios: what each fake model agent answers, turn by turn, and which faults it injects.

A scenario is a TOML file (or the same structure as Python data)::

    tokens_per_second = 0          # server-wide pace of streamed words; 0 streams as fast as possible
    first_byte_delay = 0.0         # seconds before the first byte of every answer

    [[agents]]
    name = "fixer"                 # picked when the request's `model` is "fixer"
    marker = "[fixer]"             # ...or when the first user message contains this text
    [[agents.turns]]
    say = "I'll run the tests."
    tool = "shell"
    args = { command = "pytest -q" }
    [[agents.turns]]
    when_tool_output_contains = "denied"
    say = "Understood, I won't run anything."

A top-level ``turns = [...]`` (without ``[[agents]]``) is a single agent that answers every model name.
See ``Turn``, ``Agent`` and ``Fault`` for every key.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FAULT_KINDS = ("429", "500", "cut", "stall", "keepalive", "malformed")
SCENARIO_DIR = Path(__file__).parent / "scenarios"


class ScenarioError(ValueError):
    """A scenario problem, as one line naming the file, the key and the fix."""


@dataclass
class Fault:
    """A failure the server injects instead of (or in the middle of) a normal answer."""

    kind: str
    """429 (rate limited, with Retry-After), 500 (server error), cut (the connection closes mid-stream),
    stall (the stream stops for `seconds`), keepalive (for `seconds` the stream sends only SSE comment lines,
    one every `every` seconds, then goes on), malformed (one SSE event carries broken JSON)."""
    times: int = 0
    """Inject on the first `times` requests in this fault's scope only; 0 means on every request."""
    after: int = 3
    """For cut, stall, keepalive and malformed: how many SSE events are sent before the fault."""
    seconds: float = 30.0
    """For stall and keepalive: how long the stream sends nothing of the answer."""
    every: float = 1.0
    """For keepalive: seconds between two comment lines (`: keep-alive`)."""
    retry_after: float = 1.0
    """For 429: the Retry-After header, in seconds."""
    status: int = 0
    """For 500: the status code to answer (default 500)."""
    message: str = ""
    """The error message in the body of a 429 or 500."""


@dataclass
class Call:
    tool: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class Turn:
    """One answer of the model: text, tool calls, or both."""

    say: str = ""
    """The text. `{output_last_line}` becomes the last non-empty line of the latest tool output;
    `{n}` becomes the line number when `repeat` is used."""
    calls: list[Call] = field(default_factory=list)
    """The tool calls (`tool` + `args` is the short form of one call)."""
    repeat: int = 1
    """Say the text this many times, one line each (a long output for streaming demos)."""
    when_tool_output_contains: str = ""
    """Play this turn only when a tool output since the model's last turn contains this text (any case)."""
    when_user_contains: str = ""
    """Play this turn only when a user message since the model's last turn contains this text (any case)."""
    choice: str = ""
    """Consecutive turns with the same choice name are alternatives: the first whose condition holds is
    played and the others are skipped (put an unconditional one last as the `else`)."""
    tokens_per_second: float | None = None
    first_byte_delay: float | None = None
    fault: Fault | None = None
    """A fault for this turn, counted over the requests that selected it."""

    def condition_holds(self, user_texts: list[str], tool_outputs: list[str]) -> bool:
        if self.when_tool_output_contains:
            needle = self.when_tool_output_contains.lower()
            if not any(needle in out.lower() for out in tool_outputs):
                return False
        if self.when_user_contains:
            needle = self.when_user_contains.lower()
            if not any(needle in text.lower() for text in user_texts):
                return False
        return True

    def render(self, output_last_line: str = "") -> str:
        """The text of this turn, with its placeholders filled in."""
        if self.repeat > 1:
            lines = [self.say.replace("{n}", str(k)) for k in range(1, self.repeat + 1)]
            text = "\n".join(lines)
        else:
            text = self.say.replace("{n}", "1")
        return text.replace("{output_last_line}", output_last_line)


@dataclass
class Agent:
    """One scripted model, selected by the request's `model` name (or by `marker`)."""

    name: str
    marker: str = ""
    """Also select this agent when the first user message (or the instructions) contain this text."""
    turns: list[Turn] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    """Faults counted over every request this agent receives."""
    tokens_per_second: float | None = None
    first_byte_delay: float | None = None


@dataclass
class Scenario:
    agents: list[Agent] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    """Faults counted over every request the server receives."""
    tokens_per_second: float = 0.0
    first_byte_delay: float = 0.0
    any_model: bool = False
    """True for a single-agent scenario written with top-level `turns`: it answers every model name."""
    source: str = ""

    def agent(self, name: str) -> Agent | None:
        return next((a for a in self.agents if a.name == name), None)


_TYPE_WORDS = {
    str: 'a string ("…")',
    int: "a whole number",
    float: "a number",
    dict: "a table ({ key = … })",
    list: "an array of tables",
}


class _Checker:
    def __init__(self, source: str) -> None:
        self.source = source or "scenario"

    def fail(self, where: str, problem: str) -> ScenarioError:
        return ScenarioError(f"{self.source}: {where}: {problem}")

    def keys(self, data: Any, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise self.fail(where, "must be a table")
        for key in data:
            if key not in allowed:
                raise self.fail(f"{where}.{key}", f"unknown key: remove it or use one of {', '.join(allowed)}")
        return data

    def value(self, data: dict[str, Any], key: str, where: str, kind: type, default: Any) -> Any:
        if key not in data:
            return default
        value = data[key]
        ok = isinstance(value, kind) and not isinstance(value, bool)
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        if not ok:
            raise self.fail(f"{where}.{key}", f"{value!r} must be {_TYPE_WORDS[kind]}")
        if kind in (int, float) and value < 0:
            raise self.fail(f"{where}.{key}", f"{value!r} must not be negative")
        return value

    def fault(self, data: Any, where: str) -> Fault:
        data = self.keys(
            data, where, ("kind", "times", "after", "seconds", "every", "retry_after", "status", "message")
        )
        kind = data.get("kind")
        kind = str(kind) if isinstance(kind, (int, str)) and not isinstance(kind, bool) else kind
        if kind not in FAULT_KINDS:
            raise self.fail(f"{where}.kind", f"{kind!r}: must be one of {', '.join(FAULT_KINDS)}")
        status = self.value(data, "status", where, int, 0)
        if status and not 400 <= status <= 599:
            raise self.fail(f"{where}.status", f"{status}: must be an HTTP error status (400-599)")
        if "every" in data and self.value(data, "every", where, float, 1.0) <= 0:
            raise self.fail(f"{where}.every", "must be more than 0 (seconds between two comments)")
        return Fault(
            kind=kind,
            times=self.value(data, "times", where, int, 0),
            after=self.value(data, "after", where, int, 3),
            seconds=self.value(data, "seconds", where, float, 30.0),
            every=self.value(data, "every", where, float, 1.0),
            retry_after=self.value(data, "retry_after", where, float, 1.0),
            status=status,
            message=self.value(data, "message", where, str, ""),
        )

    def faults(self, data: dict[str, Any], where: str) -> list[Fault]:
        items = data.get("faults", [])
        if not isinstance(items, list):
            raise self.fail(f"{where}.faults", "must be an array of tables: write [[...faults]]")
        return [self.fault(item, f"{where}.faults[{i + 1}]") for i, item in enumerate(items)]

    def call(self, data: Any, where: str) -> Call:
        data = self.keys(data, where, ("tool", "args"))
        tool = self.value(data, "tool", where, str, "")
        if not tool:
            raise self.fail(f"{where}.tool", 'is missing: name the tool, e.g. tool = "shell"')
        return Call(tool=tool, args=dict(self.value(data, "args", where, dict, {})))

    def turn(self, data: Any, where: str) -> Turn:
        allowed = (
            "say",
            "tool",
            "args",
            "calls",
            "repeat",
            "when_tool_output_contains",
            "when_user_contains",
            "choice",
            "tokens_per_second",
            "first_byte_delay",
            "fault",
        )
        data = self.keys(data, where, allowed)
        calls: list[Call] = []
        if "tool" in data:
            calls.append(self.call({"tool": data["tool"], "args": data.get("args", {})}, where))
        elif "args" in data:
            raise self.fail(f"{where}.args", 'has no tool: add tool = "…" next to it')
        items = data.get("calls", [])
        if not isinstance(items, list):
            raise self.fail(f"{where}.calls", "must be an array of tables: calls = [{ tool = …, args = {…} }]")
        calls.extend(self.call(item, f"{where}.calls[{i + 1}]") for i, item in enumerate(items))
        say = self.value(data, "say", where, str, "")
        if not say and not calls:
            raise self.fail(where, 'says nothing and calls no tool: add say = "…" or tool = "…"')
        repeat = self.value(data, "repeat", where, int, 1)
        if repeat < 1:
            raise self.fail(f"{where}.repeat", "must be at least 1")
        fault = self.fault(data["fault"], f"{where}.fault") if "fault" in data else None
        return Turn(
            say=say,
            calls=calls,
            repeat=repeat,
            when_tool_output_contains=self.value(data, "when_tool_output_contains", where, str, ""),
            when_user_contains=self.value(data, "when_user_contains", where, str, ""),
            choice=self.value(data, "choice", where, str, ""),
            tokens_per_second=self.value(data, "tokens_per_second", where, float, None),
            first_byte_delay=self.value(data, "first_byte_delay", where, float, None),
            fault=fault,
        )

    def turns(self, data: dict[str, Any], where: str) -> list[Turn]:
        items = data.get("turns", [])
        if not isinstance(items, list):
            raise self.fail(f"{where}.turns", "must be an array of tables: write [[agents.turns]]")
        turns = [self.turn(item, f"{where}.turns[{i + 1}]") for i, item in enumerate(items)]
        seen_done: set[str] = set()
        for i, turn in enumerate(turns):
            previous = turns[i - 1].choice if i else ""
            if turn.choice and turn.choice != previous:
                if turn.choice in seen_done:
                    raise self.fail(
                        f"{where}.turns[{i + 1}].choice",
                        f"{turn.choice!r} is used by turns that are not next to each other: keep them together",
                    )
                seen_done.add(turn.choice)
        return turns

    def agent(self, data: Any, where: str) -> Agent:
        data = self.keys(data, where, ("name", "marker", "turns", "faults", "tokens_per_second", "first_byte_delay"))
        name = self.value(data, "name", where, str, "")
        if not name:
            raise self.fail(f"{where}.name", 'is missing: add name = "…" (the model name that selects this agent)')
        where = f"agents[{name}]"
        return Agent(
            name=name,
            marker=self.value(data, "marker", where, str, ""),
            turns=self.turns(data, where),
            faults=self.faults(data, where),
            tokens_per_second=self.value(data, "tokens_per_second", where, float, None),
            first_byte_delay=self.value(data, "first_byte_delay", where, float, None),
        )


def scenario_from_dict(data: dict[str, Any], source: str = "") -> Scenario:
    """Build and validate a scenario from plain data. Raises ScenarioError with a one-line message."""
    check = _Checker(source)
    data = check.keys(data, "top level", ("agents", "turns", "faults", "tokens_per_second", "first_byte_delay"))
    scenario = Scenario(
        faults=check.faults(data, "top level"),
        tokens_per_second=check.value(data, "tokens_per_second", "top level", float, 0.0),
        first_byte_delay=check.value(data, "first_byte_delay", "top level", float, 0.0),
        source=source,
    )
    if "turns" in data:
        if "agents" in data:
            raise check.fail("turns", "top-level turns and [[agents]] cannot be mixed: move the turns into an agent")
        scenario.agents = [Agent(name="scripted", turns=check.turns(data, "top level"))]
        scenario.any_model = True
        return scenario
    items = data.get("agents", [])
    if not isinstance(items, list):
        raise check.fail("agents", "must be an array of tables: write [[agents]]")
    scenario.agents = [check.agent(item, f"agents[{i + 1}]") for i, item in enumerate(items)]
    names = [a.name for a in scenario.agents]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise check.fail(f"agents[{name}].name", "is used twice: give each agent its own name")
    if not scenario.agents:
        raise check.fail("agents", "no agents: add [[agents]] with a name and [[agents.turns]]")
    return scenario


def resolve_scenario(name_or_path: str | Path) -> Path:
    """A scenario file path; a bare name such as "demo" means the bundled scenarios/demo.toml."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    bundled = SCENARIO_DIR / f"{path.stem}.toml"
    if path.parent == Path(".") and bundled.exists():
        return bundled
    return path


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario TOML file. Raises ScenarioError naming the file and the key."""
    p = resolve_scenario(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        known = ", ".join(sorted(f.stem for f in SCENARIO_DIR.glob("*.toml")))
        raise ScenarioError(f"{p}: no such scenario file: give a path to a .toml file or one of: {known}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{p}: cannot read scenario: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{p}: TOML syntax error: {exc}: fix the line it names") from None
    return scenario_from_dict(data, source=str(p))


def demo_scenario_path() -> Path:
    """The bundled demo fleet (demo-tests, demo-refactor, demo-flaky, demo-docs, demo-stream)."""
    return SCENARIO_DIR / "demo.toml"
