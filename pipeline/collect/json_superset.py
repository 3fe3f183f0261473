"""Rewrite a text pattern into one that matches the JSON text of any string it matches.

Why: a record is screened once, as the JSON text orjson wrote for it, not string by
string. A pattern written for plain text (the catalogue's rules, this package's
detectors) misses there: a quote inside a string is ``\\"``, a newline is ``\\n``, and
JSON text kept inside a string (Codex keeps tool output so) adds a backslash per level.
Undoing the escapes first costs a copy of every record; rewriting the pattern once
costs nothing per record.

The rewrite is a superset, for Hyperscan's prefilter mode (which only answers "may
match"). A string's JSON text writes each character either as itself or, for ``"``,
``\\``, ``/`` and control characters (the *escapable* ones), as an escape of one or more
backslashes and ``"\\/bfnrt`` or ``u`` and four hex digits. So:

- an atom that admits an escapable character also admits the escapes of exactly those
  characters, behind any number of backslashes (``[ \\t]`` becomes
  ``(?:[\\x09\\x20]|\\x5c+(?:[t]|u00(?:09)))``). Not every character an escape is written
  with: that class (hex digits, ``/``, ``n``...) runs through hashes and paths, and
  Hyperscan then follows a prefix like ``1//0`` or ``://`` from almost every byte;
- a repeat whose body may match an escapable character loses its upper bound;
- a word boundary stays where the character before it cannot be escapable (then it
  reads the same in JSON text); at the start of the pattern it also accepts an escape
  just before (``\\nghp_``: the ``n`` of ``\\n`` is a word character); elsewhere it goes;
- an atom admitting every character beyond ASCII (``.``, ``[^"]``, ``\\S``) stands for
  one to four bytes, and a counted repeat of it for four times as many: the text is
  UTF-8 and Hyperscan counts bytes where ``re`` counts characters;
- other anchors go; a case-insensitive part anywhere makes the whole pattern so; groups
  lose their captures; lazy repeats become greedy.

Hence wherever the pattern matches a string, its rewrite matches that string's JSON
text at any nesting depth, written by orjson or any serialiser that escapes no other
characters (one that writes non-ASCII letters as ``\\u`` escapes is not covered). A
pattern holding anything else (look-arounds, back-references, a non-ASCII literal)
gives None: the caller screens it the old way.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from re import _constants as C  # type: ignore[attr-defined]
from re import _parser as P  # type: ignore[attr-defined]
from typing import Any

# Characters a JSON serialiser may write as an escape, and what escapes are written with.
ESCAPABLE = frozenset([*map(chr, range(0x20)), '"', "\\", "/"])
_ESCAPABLE_CODES = frozenset(map(ord, ESCAPABLE))
# A word boundary at the start of a pattern: or an escape that ends in a word character.
_START_BOUNDARY = r"(?:\x5c+(?:[bfnrt]|u[0-9a-fA-F]{4})|\b)"
_REPEATS = tuple(r for r in (C.MAX_REPEAT, C.MIN_REPEAT, getattr(C, "POSSESSIVE_REPEAT", None)) if r is not None)
_BYTES = frozenset(range(0x100))
_DIGITS = frozenset(range(0x30, 0x3A))
_SPACES = frozenset(b" \t\n\r\f\v")
_WORD = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz")
# Class escapes: the bytes each admits in Hyperscan's byte mode (ASCII semantics).
_CATEGORIES = {
    C.CATEGORY_DIGIT: _DIGITS, C.CATEGORY_NOT_DIGIT: _BYTES - _DIGITS,
    C.CATEGORY_SPACE: _SPACES, C.CATEGORY_NOT_SPACE: _BYTES - _SPACES,
    C.CATEGORY_WORD: _WORD, C.CATEGORY_NOT_WORD: _BYTES - _WORD,
}

# What may stand just before a point of the pattern, for word boundaries.
_START = 0  # nothing of the match yet (or only what cannot be escapable)
_SAFE = 1  # a character that cannot be escapable
_UNSAFE = 2  # a character that may be escapable


def json_superset(pattern: str) -> str | None:
    """The rewrite of ``pattern`` (see the module docstring), or None where it holds a
    construct this does not rewrite."""
    return _rewrite(pattern, json=True)


def text_superset(pattern: str) -> str | None:
    """``pattern`` for Hyperscan's byte mode on plain UTF-8 text, where it must match
    wherever Python's ``re`` matches the decoded string. An atom that admits every
    character beyond ASCII may take up to four bytes for one, and a counted repeat of
    it four times its bound: ``re`` counts characters, Hyperscan bytes
    (``[^"']{0,40}`` once let 20 characters of a Japanese, Chinese and Korean label,
    42 bytes, hide a password). None where the pattern holds a construct this does not rewrite."""
    return _rewrite(pattern, json=False)


def _rewrite(pattern: str, json: bool) -> str | None:
    if not pattern.isascii():  # a literal character is its UTF-8 bytes to Hyperscan
        return None
    text = python_syntax(pattern.replace("(?i)", ""))
    if text is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = P.parse(text)
    except (re.error, OverflowError, RecursionError):
        return None
    caseless = "(?i)" in pattern or bool(parsed.state.flags & C.SRE_FLAG_IGNORECASE)
    state = _State(caseless, json)
    try:
        body = _sequence(list(parsed), state, _START).text
    except _Unsupported:
        return None
    if not body:
        return None
    return ("(?i)" if state.caseless else "") + body


class _Unsupported(Exception):
    pass


class _State:
    def __init__(self, caseless: bool, json: bool) -> None:
        self.caseless = caseless
        self.json = json  # escapes admitted (JSON text), or plain text


# POSIX classes (Rust's syntax, the catalogue's) as the ASCII ranges they stand for.
_POSIX = {
    "alnum": "0-9A-Za-z", "alpha": "A-Za-z", "ascii": r"\x00-\x7f", "blank": r"\t ", "cntrl": r"\x00-\x1f\x7f",
    "digit": "0-9", "graph": "!-~", "lower": "a-z", "print": " -~", "punct": r"!-/:-@\[-`{-~",
    "space": r"\t\n\x0b\x0c\r ", "upper": "A-Z", "word": "0-9A-Za-z_", "xdigit": "0-9A-Fa-f",
}
_POSIX_CLASS = re.compile(r"\[:([a-z]+):\]")


def python_syntax(pattern: str) -> str | None:
    """A pattern in Rust's syntax (the catalogue's) as Python's ``re`` reads it the same
    way: ``\\z`` is ``\\Z`` and a POSIX class its ranges. Python would read
    ``[[:alnum:]]{14}`` as one of ``[:alnu`` then fourteen ``]``, and the screen would
    never fire on an Airtable token. None for what Python reads otherwise and this does
    not translate: a class inside a class (a union in Rust), a set operation (``&&``,
    ``--``, ``~~``), a negated POSIX class, a word edge (``\\b{start}``, ``\\<``)."""
    out: list[str] = []
    i, in_class, first = 0, False, 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            pair = pattern[i : i + 2]
            if pair in (r"\<", r"\>") or pattern.startswith(r"\b{", i):  # Rust's word edges: literals to Python
                return None
            out.append(r"\Z" if pair == r"\z" else pair)
            i += 2
            continue
        if in_class:
            if char == "[":
                posix = _POSIX_CLASS.match(pattern, i)
                if posix is None or posix.group(1) not in _POSIX:
                    return None
                out.append(_POSIX[posix.group(1)])
                i = posix.end()
                continue
            if char == "]" and i > first:
                in_class = False
            elif pattern.startswith(("&&", "--", "~~"), i):
                return None
        elif char == "[":
            in_class = True
            first = i + 2 if pattern.startswith("[^", i) else i + 1
        out.append(char)
        i += 1
    return "".join(out)


@dataclass(frozen=True)
class _Part:
    text: str
    escapable: bool  # may match an escapable character
    empty: bool  # may match nothing
    after: int  # what stands before the point after it (_START, _SAFE, _UNSAFE)


def _sequence(items: list[Any], state: _State, before: int) -> _Part:
    texts: list[str] = []
    escapable, empty = False, True
    for op, av in items:
        part = _item(op, av, state, before)
        texts.append(part.text)
        escapable = escapable or part.escapable
        empty = empty and part.empty
        before = part.after
    return _Part("".join(texts), escapable, empty, before)


def _after(before: int, escapable: bool, empty: bool) -> int:
    if escapable:
        return _UNSAFE
    if empty:
        return before if before != _UNSAFE else _UNSAFE
    return _SAFE


def _item(op: Any, av: Any, state: _State, before: int) -> _Part:
    if op is C.AT:
        if av is C.AT_BOUNDARY and not state.json:  # plain text reads as the pattern does
            return _Part(r"\b", False, True, before)
        if av is C.AT_BOUNDARY and before == _SAFE:
            return _Part(r"\b", False, True, before)
        if av is C.AT_BOUNDARY and before == _START:
            return _Part(_START_BOUNDARY, False, True, before)
        return _Part("", False, True, before)  # anchors, and boundaries it cannot keep
    atom = _atom(op, av, state.json)
    if atom is not None:
        cls, escapable, wide = atom
        return _Part(cls + (_bound(1, _UTF8_MAX) if wide else ""), escapable, False, _after(before, escapable, False))
    if op is C.BRANCH:
        branches = [_sequence(list(b), state, before) for b in av[1]]
        escapable = any(b.escapable for b in branches)
        empty = any(b.empty for b in branches)
        text = "(?:" + "|".join(b.text for b in branches) + ")"
        after = max(b.after for b in branches)
        return _Part(text, escapable, empty, after)
    if op is C.SUBPATTERN:
        _group, add_flags, _del_flags, items = av
        if add_flags & C.SRE_FLAG_IGNORECASE:
            state.caseless = True
        return _grouped(_sequence(list(items), state, before))
    if op in _REPEATS:
        return _repeat(av, state, before)
    if op is getattr(C, "ATOMIC_GROUP", None):
        return _grouped(_sequence(list(av), state, before))
    raise _Unsupported(str(op))


def _grouped(inner: _Part) -> _Part:
    return _Part(f"(?:{inner.text})" if inner.text else "", inner.escapable, inner.empty, inner.after)


def _repeat(av: Any, state: _State, before: int) -> _Part:
    low, high, items = av
    items = list(items)
    if len(items) == 1 and (atom := _atom(items[0][0], items[0][1], state.json)) is not None:
        cls, escapable, wide = atom
        # n characters are at most four times as many bytes, each one the class admits;
        # past Hyperscan's largest bounded repeat, any number
        wide_high = high * _UTF8_MAX if wide and high != C.MAXREPEAT else high
        unbounded = escapable or high == C.MAXREPEAT or wide_high > _MAX_BOUND
        text = cls + _bound(low, C.MAXREPEAT if unbounded else wide_high)
        return _Part(text, escapable, low == 0, _after(before, escapable, low == 0))
    # A later pass over the body follows its earlier pass: boundaries inside see that.
    first = _sequence(items, state, before)
    body = first if high == 1 else _sequence(items, state, max(before, first.after))
    if not body.text:
        return _Part("", False, True, before)
    bound = _bound(low, C.MAXREPEAT if body.escapable else high)
    empty = low == 0 or body.empty
    return _Part(f"(?:{body.text}){bound}", body.escapable, empty, _after(before, body.escapable, empty))


def _bound(low: int, high: int) -> str:
    if (low, high) == (1, 1):
        return ""
    if high == C.MAXREPEAT:
        return "*" if low == 0 else "+" if low == 1 else f"{{{low},}}"
    return f"{{{low},{high}}}"


def _atom(op: Any, av: Any, json: bool) -> tuple[str, bool, bool] | None:
    """A one-character atom as a class; whether it admits an escapable character (then,
    in JSON text, as an alternation: the character itself, or its escapes); whether it
    admits every byte beyond ASCII, so that one character of it may be up to four bytes
    of UTF-8 (the caller counts it so). An atom admitting only some of those bytes is
    not rewritten: a byte is not a character there."""
    codes = _atom_codes(op, av)
    if codes is None:
        return None
    wide = _HIGH <= codes
    if codes & _HIGH and not wide:
        raise _Unsupported("a class holding some characters beyond ASCII")
    if op is C.LITERAL and not codes & _ESCAPABLE_CODES:
        return _char(av), False, wide
    escapable = bool(codes & _ESCAPABLE_CODES)
    return (_escaped(codes) if escapable and json else _listed(codes)), escapable and json, wide


_HIGH = frozenset(range(0x80, 0x100))
_UTF8_MAX = 4  # bytes of one character
_MAX_BOUND = 4096  # a counted repeat of a wide class above this has no bound (Hyperscan refuses 16384)


# The one-letter escape of a character, where JSON has one.
_SHORT_ESCAPES = {ord('"'): ord('"'), ord("\\"): ord("\\"), ord("/"): ord("/"), 0x08: ord("b"),
                  0x0C: ord("f"), 0x0A: ord("n"), 0x0D: ord("r"), 0x09: ord("t")}
_ANY_U_ESCAPE = "u00[0-9A-Fa-f]{2}"


def _escaped(codes: frozenset[int]) -> str:
    """One character of ``codes`` as JSON text may write it: as itself, or (an
    escapable one) one or more backslashes and its one-letter escape or ``u00HH``
    (a backslash written at every depth before it: ``\\\\\\"`` is a quote two deep)."""
    escapable = sorted(codes & _ESCAPABLE_CODES)
    escapes: list[str] = []
    shorts = frozenset(_SHORT_ESCAPES[c] for c in escapable if c in _SHORT_ESCAPES)
    if shorts:
        escapes.append(_listed(shorts))
    if len(escapable) > 4:
        escapes.append(_ANY_U_ESCAPE)
    else:
        escapes.append("u00(?:" + "|".join(_hex_pair(c) for c in escapable) + ")")
    return f"(?:{_listed(codes)}|\\x5c+(?:{'|'.join(escapes)}))"


def _hex_pair(code: int) -> str:
    """The two hex digits of ``code`` in either case (``2[Ff]``)."""
    return "".join(ch if ch.isdigit() else f"[{ch.upper()}{ch}]" for ch in f"{code:02x}")


def _atom_codes(op: Any, av: Any) -> frozenset[int] | None:
    """The bytes a one-character atom admits (a branch of such atoms is one too:
    ``(?:.|[\\n\\r])`` becomes one class, not a choice inside a repeat); None for
    anything longer."""
    if op is C.LITERAL:
        _char(av)
        return frozenset((av,))
    if op is C.NOT_LITERAL:
        _char(av)
        return _BYTES - {av}
    if op is C.ANY:
        return _BYTES
    if op is C.IN:
        return _class_codes(list(av))
    if op is C.CATEGORY:
        return _class_codes([(C.CATEGORY, av)])
    if op is C.BRANCH:
        union: set[int] = set()
        for branch in av[1]:
            items = list(branch)
            codes = _atom_codes(*items[0]) if len(items) == 1 else None
            if codes is None:
                return None
            union |= codes
        return frozenset(union)
    if op is C.SUBPATTERN and len(av[3]) == 1 and not av[1] & C.SRE_FLAG_IGNORECASE:
        return _atom_codes(*list(av[3])[0])
    return None


def _class_codes(items: list[Any]) -> frozenset[int]:
    negate = False
    admitted: set[int] = set()
    for op, av in items:
        if op is C.NEGATE:
            negate = True
        elif op is C.LITERAL:
            _char(av)
            admitted.add(av)
        elif op is C.RANGE:
            _char(av[0]), _char(av[1])
            admitted.update(range(av[0], av[1] + 1))
        elif op is C.CATEGORY and av in _CATEGORIES:
            admitted |= _CATEGORIES[av]
        else:
            raise _Unsupported(str(op))
    return _BYTES - admitted if negate else frozenset(admitted)


def _listed(codes: frozenset[int] | set[int]) -> str:
    """A class of exactly these bytes, as ranges."""
    if not codes:
        raise _Unsupported("a class that admits nothing")
    runs: list[str] = []
    ordered = sorted(codes)
    start = prev = ordered[0]
    for code in [*ordered[1:], -1]:
        if code == prev + 1:
            prev = code
            continue
        runs.append(_char(start) if start == prev else f"{_char(start)}-{_char(prev)}")
        start = prev = code
    return "[" + "".join(runs) + "]"


def _char(code: int) -> str:
    """One character of a class, as Hyperscan's byte mode reads the text screen's
    pattern: ``\\xHH`` is a byte. A code point above 0xFF has no such meaning."""
    if code > 0xFF:
        raise _Unsupported(f"code point {code:#x}")
    ch = chr(code)
    return ch if ch.isascii() and ch.isalnum() else f"\\x{code:02x}"
