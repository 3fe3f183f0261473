"""Text markers behind the scorer: test-run summaries, interrupts, user pushback."""

from __future__ import annotations

import re

INTERRUPT_MARKERS = (
    "[Request interrupted by user",
    "The user doesn't want to proceed",
    "<turn_aborted>",
    "aborted by user",
)

DEFAULT_CORRECTION_PATTERNS = [
    r"^\s*(no|nope|nah|wrong|undo|revert|stop|wait)\b",
    r"^\s*(that'?s|that is|this is|it'?s|it is) (not|wrong|broken|incorrect)\b",
    r"^\s*(don'?t|do not|didn'?t|did not|doesn'?t|does not|you didn'?t|you broke|still)\b",
    r"\b(that'?s not (what|right|it)|not what i (asked|wanted|meant))\b",
    r"\b(undo|revert|roll ?back) (that|this|it|the|your|those|these)\b",
    r"^\s*\[request interrupted by user",
]

_PYTEST = re.compile(
    r"^[=\s]*((?:\d+ (?:passed|failed|errors?|skipped|xfailed|xpassed|warnings?|deselected|rerun)"
    r"(?:, )?)+)(?: in [\d.]+s?.*)?[=\s]*$",
    re.M,
)
_COUNT = re.compile(r"(\d+) (passed|failed|errors?)")
_JEST = re.compile(r"^Tests:\s+(.*\d+ total)\s*$", re.M)
_CARGO = re.compile(r"test result: \w+\. (\d+) passed; (\d+) failed")
_GO_PASS = re.compile(r"^(?:--- PASS: |ok\s+\S+\s)", re.M)
_GO_FAIL = re.compile(r"^(?:--- FAIL: |FAIL\s+\S+\s)", re.M)


def _pytest_like(text: str) -> tuple[int, int] | None:
    last = None
    for match in _PYTEST.finditer(text):
        passed = failed = 0
        for n, word in _COUNT.findall(match.group(1)):
            if word == "passed":
                passed += int(n)
            else:
                failed += int(n)
        last = (passed, failed)
    return last


def _jest(text: str) -> tuple[int, int] | None:
    last = None
    for match in _JEST.finditer(text):
        counts = dict((w, int(n)) for n, w in re.findall(r"(\d+) (passed|failed|total)", match.group(1)))
        last = (counts.get("passed", 0), counts.get("failed", 0))
    return last


def _cargo(text: str) -> tuple[int, int] | None:
    found = _CARGO.findall(text)
    if not found:
        return None
    return sum(int(p) for p, _ in found), sum(int(f) for _, f in found)


def _go(text: str) -> tuple[int, int] | None:
    passed, failed = len(_GO_PASS.findall(text)), len(_GO_FAIL.findall(text))
    if not passed and not failed:
        return None
    return passed, failed


def test_summary(text: str | None) -> tuple[int, int] | None:
    """(passed, failed) of a pytest, jest, cargo test or go test run in a shell result."""
    if not text or not any(w in text for w in ("passed", "failed", "PASS", "FAIL", "ok ", "error")):
        return None
    for parser in (_jest, _cargo, _pytest_like, _go):
        found = parser(text)
        if found is not None:
            return found
    return None


test_summary.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def is_interrupt(text: str | None) -> bool:
    return bool(text) and any(m in text for m in INTERRUPT_MARKERS)  # type: ignore[operator]


def compile_patterns(patterns: list[str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.I)
