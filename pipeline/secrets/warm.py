"""A text that touches every catalogue rule once, scanned right after the rules load.

Why: Kingfisher builds a rule's confirming regex the first time that rule's pattern
fires, a few ms each. Collect's workers fork from the process that loaded the rules, so
rules first met in a worker are built once per worker, and on a corpus where many
providers' keys appear that is most of the worker's time in the engine. Scanning one
candidate for every rule in the loading process builds them all once, before the fork.

A candidate is a shortest string the pattern matches, derived from Python's parse of
it: a literal stands for itself, a class for its first member, a repeat for its
minimum, an alternation for its first branch; a word boundary is a space between
two word characters (or a word character where neither side is one); other anchors and lookarounds add nothing. It need not be a secret (a rule may still reject it on entropy): only the
rule's pattern must fire.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from re import _constants as sre  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

_BOUNDARY = "\0"  # where the pattern asks for a word boundary (resolved by ``_boundary``)
_BOUNDARIES = re.compile(r"(?<=(.))?\0+(?=(.))?", re.DOTALL)
_CATEGORY = {
    sre.CATEGORY_DIGIT: re.compile(r"\d"),
    sre.CATEGORY_NOT_DIGIT: re.compile(r"\D"),
    sre.CATEGORY_WORD: re.compile(r"\w"),
    sre.CATEGORY_NOT_WORD: re.compile(r"\W"),
    sre.CATEGORY_SPACE: re.compile(r"\s"),
    sre.CATEGORY_NOT_SPACE: re.compile(r"\S"),
}
# Candidates for "any character but these", and for a category: common ones first.
_OUTSIDERS = "a0 -!_\n\x00"


def python_form(pattern: str) -> str:
    """The catalogue's (Rust) syntax as Python's ``re`` takes it: ``\\z`` is ``\\Z``, and
    an inline ``(?i)`` after the start applies to the whole pattern (a superset)."""
    form = _set_literals(pattern.replace("\\z", "\\Z"))
    if "(?i)" in form[1:]:
        form = "(?i)" + form.replace("(?i)", "")
    return form


def _set_literals(pattern: str) -> str:
    """Inside ``[...]``, escape what Python reads as a future set operation (``[``, and
    a doubled ``-&~|``): literal characters in Rust's syntax, a FutureWarning here."""
    out: list[str] = []
    in_set = escaped = False
    for i, char in enumerate(pattern):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif not in_set:
            in_set = char == "["
        elif char == "]" and out[-1] != "[" and out[-2:] != ["[", "^"]:
            in_set = False
        elif char == "[" or (char in "-&~|" and pattern[i - 1] == char):
            out.append("\\")
        out.append(char)
    return "".join(out)


def shortest_match(pattern: str) -> str | None:
    """A shortest string ``pattern`` matches, or None where Python cannot parse it."""
    try:
        text = _text(sre_parse.parse(python_form(pattern)).data)
    except (re.error, ValueError, KeyError, StopIteration, OverflowError, RecursionError):
        return None
    return _BOUNDARIES.sub(_boundary, text)


def warm_text(patterns: Iterable[str]) -> str:
    """Every pattern's shortest match, one per line."""
    return "\n".join(text for text in map(shortest_match, patterns) if text is not None)


def _boundary(m: re.Match[str]) -> str:
    """A space between two word characters, nothing between a word and a non-word
    character, a word character where neither side is one."""
    before, after = (bool(c) and c.isalnum() or c == "_" for c in (m.group(1) or "", m.group(2) or ""))
    return " " if before and after else "" if before != after else "a"


def _text(items: Sequence[tuple[Any, Any]]) -> str:
    out: list[str] = []
    for op, arg in items:
        if op is sre.LITERAL:
            out.append(chr(arg))
        elif op is sre.NOT_LITERAL:
            out.append("b" if arg == ord("a") else "a")
        elif op is sre.ANY:
            out.append("a")
        elif op is sre.IN:
            out.append(_member(arg))
        elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
            low, high, body = arg
            out.append(_text(body) * low)
        elif op is sre.SUBPATTERN:
            out.append(_text(arg[-1]))
        elif op is sre.ATOMIC_GROUP:
            out.append(_text(arg))
        elif op is sre.BRANCH:
            out.append(_text(arg[1][0]))
        elif op is sre.AT and arg is sre.AT_BOUNDARY:
            out.append(_BOUNDARY)
        elif op in (sre.AT, sre.ASSERT, sre.ASSERT_NOT):
            continue
        else:  # a back reference or a conditional: no shortest form worth the code
            raise ValueError(f"unsupported: {op}")
    return "".join(out)


def _member(items: Sequence[tuple[Any, Any]]) -> str:
    if items and items[0][0] is sre.NEGATE:
        return next(c for c in _OUTSIDERS if not any(_holds(item, c) for item in items[1:]))
    op, arg = items[0]
    if op is sre.LITERAL:
        return chr(arg)
    if op is sre.RANGE:
        return chr(arg[0])
    if op is sre.CATEGORY:
        return next(c for c in _OUTSIDERS if _CATEGORY[arg].match(c))
    raise ValueError(f"unsupported class member: {op}")


def _holds(item: tuple[Any, Any], char: str) -> bool:
    op, arg = item
    if op is sre.LITERAL:
        return bool(ord(char) == arg)
    if op is sre.RANGE:
        return bool(arg[0] <= ord(char) <= arg[1])
    if op is sre.CATEGORY:
        return _CATEGORY[arg].match(char) is not None
    raise ValueError(f"unsupported class member: {op}")
