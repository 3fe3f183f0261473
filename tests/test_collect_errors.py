"""error_kind screens with RE2 before the ``re`` patterns: the kinds must not change."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.collect.errors import _SCAN_CHARS, ERROR_KINDS, claude_exit_code, error_kind


def _reference(text: str) -> str:
    """The kinds as the ``re`` patterns alone name them."""
    sample = text[:_SCAN_CHARS]
    for kind, pattern in ERROR_KINDS:
        if pattern.search(sample):
            return kind
    return "tool_error"


_PHRASES = [
    "command not found", ": not found", "No such file or directory", "ENOENT", "Permission denied",
    "permission to use", "SyntaxError", "Unexpected end of", "Connection refused", "timed out",
    "getaddrinfo", "does not exist", "not allowed", "parse error",
]
# Characters that case-fold onto ASCII letters (Kelvin sign, long s, Turkish i's), word
# characters that end a word boundary differently in ASCII and Unicode, a lone surrogate.
_ODD = ["\u212a", "\u017f", "\u0130", "\u0131", "é", "ß", "→", "\ud800", "_", " ", "\n"]


def _variants(phrase: str) -> st.SearchStrategy[str]:
    swaps = {"k": "\u212a", "K": "\u212a", "s": "\u017f", "S": "\u017f", "i": "\u0131", "I": "\u0130"}
    return st.lists(st.booleans(), min_size=len(phrase), max_size=len(phrase)).flatmap(
        lambda flips: st.sampled_from([
            "".join(c.swapcase() if f else c for c, f in zip(phrase, flips, strict=True)),
            "".join(swaps.get(c, c) if f else c for c, f in zip(phrase, flips, strict=True)),
        ])
    )


_TEXT = st.lists(
    st.one_of(st.sampled_from(_PHRASES).flatmap(_variants), st.sampled_from(_ODD), st.text(max_size=8)),
    max_size=6,
).map("".join)


@settings(max_examples=500, deadline=None)
@given(_TEXT)
def test_error_kind_matches_the_re_patterns(text: str) -> None:
    assert error_kind(True, text) == _reference(text)
    assert error_kind(False, text) is None


def test_error_kind_examples() -> None:
    assert error_kind(True, "bash: foo: command not found") == "command_not_found"
    assert error_kind(True, "PERM\u0130SS\u0130ON DEN\u0130ED") == "permission_denied"  # only ``re`` folds İ
    assert error_kind(True, "→ cat: x: No such file or directory") == "file_not_found"
    assert error_kind(True, "something else") == "tool_error"
    assert error_kind(True, None) == "tool_error"


_FINISHED = {"stdout": "ok", "stderr": "", "interrupted": False, "isImage": False}


@pytest.mark.parametrize(("tool", "text", "structured", "is_error", "code"), [
    ("Bash", "Exit code 127\n/bin/sh: nope: command not found", "Error: Exit code 127", True, 127),
    ("Bash", "Exit code 2", "Error: Exit code 2", True, 2),
    ("Bash", "ok", _FINISHED, False, 0),
    ("Bash", "", {**_FINISHED, "interrupted": True}, False, None),  # cut short: unknown
    ("Bash", "Exit code 1 is what grep returns", _FINISHED, False, 0),  # not the lead form
    ("Bash", "boom", "Error: boom", True, None),  # an error with no code given
    ("Bash", "[Request interrupted by user]", None, True, None),
    ("Read", "Exit code 3\n", None, True, None),  # only Bash has exit codes
])
def test_claude_code_bash_exit_codes(tool: str, text: str, structured: object, is_error: bool, code: int | None) -> None:
    assert claude_exit_code(tool, text, structured, is_error) == code
