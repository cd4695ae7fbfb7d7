"""A test run's output → counts, the failing tests' names and what they printed.

pytest's JUnit XML (the check asks for it when its command is one pytest run) gives exact counts and node ids;
otherwise the text is read: pytest's summary line ("2 failed, 12 passed in 0.31s") and its "FAILED x::y" lines
(-rf), Jest's and Vitest's "Tests:" line and "●" headers, go test's "--- FAIL:" lines, and the plain closing
line "N passed, N failed" of any runner.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

#: Characters of one failing test's output kept for the message that asks the agent to fix it.
MAX_FAILURE = 4000
#: Failing test names kept in an event.
MAX_FAILING = 100


@dataclass(frozen=True)
class Counts:
    """What a test run reported. `counted` is False when the output said nothing the parser knows."""

    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    failing: tuple[str, ...] = ()
    """Names of the failing tests (and of the files that failed to collect), in the order they were reported."""
    failures: tuple[tuple[str, str], ...] = ()
    """(name, what it printed: the assertion and traceback) of each failing test, each bounded."""
    counted: bool = False
    no_tests: bool = False
    """The runner said that no test ran ("no tests ran", pytest's exit code 5)."""

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.errors + self.skipped


def _cut(text: str, limit: int = MAX_FAILURE) -> str:
    text = text.strip("\n")
    if len(text) <= limit:
        return text
    return text[: limit // 3] + f"\n[… {len(text) - limit} characters …]\n" + text[-(limit - limit // 3) :]


def _node_id(case: ET.Element) -> str:
    """pytest's node id of a JUnit testcase: file::Class::name (xunit1 records the file)."""
    name = case.get("name", "")
    classname = case.get("classname", "")
    path = case.get("file", "")
    if path:
        module = path[:-3].replace("/", ".") if path.endswith(".py") else ""
        if not classname:  # a file that failed to collect
            return path
        rest = classname[len(module) + 1 :] if module and classname.startswith(module + ".") else ""
        return "::".join(p for p in (path, rest, name) if p)
    return f"{classname}::{name}" if classname else name


def parse_junit(text: str) -> Counts | None:
    """Counts from a JUnit XML report (pytest's); None when it is not one."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        return None
    if root.tag not in ("testsuites", "testsuite"):
        return None
    passed = failed = errors = skipped = 0
    failing: list[str] = []
    failures: list[tuple[str, str]] = []
    for case in root.iter("testcase"):
        kinds = {child.tag for child in case}
        name = _node_id(case)
        if "failure" in kinds or "error" in kinds:
            if "failure" in kinds:
                failed += 1
            else:
                errors += 1
            failing.append(name)
            parts = []
            for child in case:
                if child.tag in ("failure", "error"):
                    parts.append(child.text or child.get("message", ""))
            failures.append((name, _cut("\n".join(p for p in parts if p))))
        elif "skipped" in kinds:
            skipped += 1
        else:
            passed += 1
    return Counts(passed, failed, errors, skipped, tuple(failing), tuple(failures), counted=True)


_PYTEST_WORDS = r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected|warnings?|rerun)"
_PYTEST_SUMMARY = re.compile(rf"^=*\s*(?:{_PYTEST_WORDS}(?:, )?)+(?: in [\d.]+s.*)?\s*=*$")
_NO_TESTS = re.compile(r"^=*\s*no tests ran\b")
_FAILED_LINE = re.compile(r"^(FAILED|ERROR) (\S.*?)(?: - .*)?$")
_JEST = re.compile(r"^\s*Tests:\s+(.*\btotal)\s*$")
_VITEST = re.compile(r"^\s*Tests\s+(.*)\((\d+)\)\s*$")
_GO_FAIL = re.compile(r"^\s*--- FAIL: (\S+)")
_GO_PASS = re.compile(r"^\s*--- PASS: (\S+)")
_UNITTEST_RAN = re.compile(r"^Ran (\d+) tests? in [\d.]+s$")
_UNITTEST_END = re.compile(r"^(OK|FAILED)(?: \((.*)\))?$")
_UNITTEST_CASE = re.compile(r"^(FAIL|ERROR): (\S+) \(([^)]*)\)")
_PLAIN = re.compile(r"^(?:\w+: )?(\d+) passed, (\d+) failed(?:, (\d+) skipped)?\s*$")


def _pytest_sections(lines: list[str]) -> dict[str, str]:
    """What pytest printed for each failing test, from its FAILURES and ERRORS sections ("____ name ____")."""
    sections: dict[str, str] = {}
    inside = False
    current = ""
    body: list[str] = []
    header = re.compile(r"^_{3,} (.+?) _{3,}$")
    for line in lines:
        if re.match(r"^=+ (FAILURES|ERRORS) =+$", line):
            inside = True
            continue
        if not inside:
            continue
        if re.match(r"^=+ .* =+$", line) or line.startswith("-" * 10 + " generated xml"):
            if current:
                sections[current] = "\n".join(body)
            current, body = "", []
            inside = bool(re.match(r"^=+ (FAILURES|ERRORS) =+$", line))
            continue
        m = header.match(line)
        if m:
            if current:
                sections[current] = "\n".join(body)
            current, body = m.group(1), []
            continue
        body.append(line)
    if current:
        sections[current] = "\n".join(body)
    return sections


def _parse_unittest(lines: list[str], end: int) -> Counts | None:
    """Counts from unittest's closing lines ("Ran 4 tests in 0.001s", then "OK" or "FAILED (failures=1)") at
    `end`, with each failing test's name (its id, as `python -m unittest` takes it) and traceback."""
    ran = next((i for i in range(end - 1, -1, -1) if lines[i].strip()), None)
    m_ran = _UNITTEST_RAN.match(lines[ran].strip()) if ran is not None else None
    m_end = _UNITTEST_END.match(lines[end].strip())
    if m_ran is None or m_end is None:
        return None
    found = {k.strip(): int(v) for k, v in re.findall(r"(\w+)=(\d+)", m_end.group(2) or "")}
    failed, errors = found.get("failures", 0), found.get("errors", 0)
    skipped = found.get("skipped", 0)
    failures: list[tuple[str, str]] = []
    for i, line in enumerate(lines[:ran]):
        m = _UNITTEST_CASE.match(line)
        if m is None or i == 0 or not lines[i - 1].startswith("====="):
            continue
        method, where = m.group(2), m.group(3)
        if where.startswith("unittest.loader._FailedTest"):
            name = f"{method} (failed to import)"
        else:
            name = where if where.endswith("." + method) else f"{where}.{method}"
        body = []
        for text in lines[i + 1 : ran]:
            if text.startswith("=====") or _UNITTEST_CASE.match(text):
                break
            body.append(text)
        while body and (not body[-1].strip() or body[-1].startswith("-----")):
            body.pop()
        failures.append((name, _cut("\n".join(body).strip("-\n"))))
    total = int(m_ran.group(1))
    return Counts(
        passed=max(0, total - failed - errors - skipped),
        failed=failed,
        errors=errors,
        skipped=skipped,
        failing=tuple(name for name, _ in failures),
        failures=tuple(failures),
        counted=True,
    )


def parse_text(output: str) -> Counts:
    """Counts from a test runner's text output (pytest, unittest, Jest, Vitest, go test, or a plain closing
    line)."""
    lines = output.splitlines()
    for index in range(len(lines) - 1, -1, -1):
        line = lines[index]
        stripped = line.strip()
        if _UNITTEST_END.match(stripped):
            unittest_counts = _parse_unittest(lines, index)
            if unittest_counts is not None:
                return unittest_counts
        if _NO_TESTS.match(stripped):
            return Counts(counted=True, no_tests=True)
        if _PYTEST_SUMMARY.match(stripped) and re.search(_PYTEST_WORDS, stripped):
            found = {word: int(n) for n, word in re.findall(_PYTEST_WORDS, stripped)}
            failing = []
            for other in lines:
                m = _FAILED_LINE.match(other.strip())
                if m:
                    failing.append(m.group(2))
            sections = _pytest_sections(lines)
            failures = []
            for name in failing:
                short = name.split("::")[-1]
                key = next(
                    (k for k in sections if k == short or k.endswith(("." + short, " " + short)) or name in k), None
                )
                failures.append((name, _cut(sections.get(key, "")) if key else ""))
            return Counts(
                passed=found.get("passed", 0) + found.get("xpassed", 0),
                failed=found.get("failed", 0),
                errors=found.get("error", 0) + found.get("errors", 0),
                skipped=found.get("skipped", 0) + found.get("xfailed", 0),
                failing=tuple(failing),
                failures=tuple(failures),
                counted=True,
            )
        m = _JEST.match(line)
        if m:
            found = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|todo|total)", m.group(1))}
            failing = [ln.strip()[2:].strip() for ln in lines if ln.strip().startswith("● ")]
            return Counts(
                passed=found.get("passed", 0),
                failed=found.get("failed", 0),
                skipped=found.get("skipped", 0) + found.get("todo", 0),
                failing=tuple(dict.fromkeys(failing)),
                counted=True,
            )
        m = _VITEST.match(line)
        if m and re.search(r"\d+ (passed|failed)", m.group(1)):
            found = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|todo)", m.group(1))}
            failing = [ln.strip()[6:].strip() for ln in lines if ln.strip().startswith("FAIL  ")]
            return Counts(
                passed=found.get("passed", 0),
                failed=found.get("failed", 0),
                skipped=found.get("skipped", 0) + found.get("todo", 0),
                failing=tuple(dict.fromkeys(failing)),
                counted=True,
            )
        m = _PLAIN.match(stripped)
        if m:
            return Counts(passed=int(m.group(1)), failed=int(m.group(2)), skipped=int(m.group(3) or 0), counted=True)
    go_failed = [m.group(1) for ln in lines if (m := _GO_FAIL.match(ln))]
    go_passed = [m.group(1) for ln in lines if (m := _GO_PASS.match(ln))]
    if go_failed or go_passed:
        return Counts(passed=len(go_passed), failed=len(go_failed), failing=tuple(go_failed), counted=True)
    return Counts()


def parse_output(output: str, junit: str = "") -> Counts:
    """The counts of a run: from its JUnit report where there is one, else from its text. The names of what
    failed to collect (which pytest's report lists as nameless errors) come from the text where it has them."""
    counts = parse_junit(junit) if junit else None
    if counts is None:
        return parse_text(output)
    if counts.total == 0:
        text = parse_text(output)
        return text if text.counted else Counts(counted=True, no_tests=True)
    return counts


def failure_report(counts: Counts, output: str, limit: int = 16000) -> str:
    """What the failing tests printed, test by test, within `limit` characters; the end of the output where
    the runner named no failing test."""
    parts = []
    for name, text in counts.failures:
        parts.append(f"--- {name}\n{text}" if text else f"--- {name}")
    report = "\n\n".join(parts)
    if not report.strip() or not any(text for _, text in counts.failures):
        tail = output.strip("\n")
        report = (report + "\n\n" if report else "") + (tail[-limit // 2 :] if len(tail) > limit // 2 else tail)
    return _cut(report, limit)
