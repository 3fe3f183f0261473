"""The JSON-text rewrite of the redaction patterns (``pipeline.collect.json_superset``):
wherever a pattern matches a string, its rewrite matches that string's JSON text, at
any nesting depth. The record screen stands on this: a miss lets a secret through."""

from __future__ import annotations

import random
import re
import string
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest
import re2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.collect import redact
from pipeline.collect.json_superset import json_superset, python_syntax, text_superset
from pipeline.secrets import catalogue

# Every pattern the record screen rewrites: this package's detectors, then the catalogue's.
PATTERNS = redact._json_secret_patterns()
_ASCII = st.characters(min_codepoint=0, max_codepoint=0x7F)
# What may stand around a match inside a string: escapable characters above all.
_CONTEXT = st.text(st.sampled_from(['"', "\\", "/", "\n", "\t", "\r", "\x01", "\x1f", " ", "a", "_", "=", ":"]),
                   max_size=3)


@cache
def _generator_form(pattern: str) -> re.Pattern[str]:
    """What hypothesis generates matches from (Python's parser: a ``(?i)`` in
    mid-pattern taken as caseless throughout)."""
    flags = re.ASCII | (re.IGNORECASE if "(?i)" in pattern else 0)
    translated = python_syntax(pattern.replace("(?i)", ""))  # Rust's POSIX classes, `\z`
    assert translated is not None, pattern
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return re.compile(translated, flags)


@cache
def _text_form(pattern: str) -> re2._Regexp | re.Pattern[str]:
    """The pattern as written, on RE2 (the Rust engine's syntax and linear time; RE2
    lacks ``(?x)``, which changes nothing in a pattern without spaces or comments). A
    pattern RE2 refuses (a count above 1000) is read by Python's engine."""
    if pattern.startswith("(?x)") and not re.search(r"[\s#]", pattern):
        pattern = pattern[len("(?x)"):]
    options = re2.Options()
    options.log_errors = False
    try:
        return re2.compile(pattern, options)
    except re2.error:
        return _generator_form(pattern)


@cache
def _scratch(database: Any) -> Any:
    return redact._hyperscan.Scratch(database)


def _rewrite_fires(index: int, data: bytes) -> bool:
    """Whether PATTERNS[index]'s rewrite fires: in the record screen's own Hyperscan
    database (the very one a run scans with), or on RE2 where Hyperscan is missing."""
    if redact._hyperscan is None:
        return _json_screen(PATTERNS[index]).hit_bytes(data)
    return index in _rewrites_matching(data)


def _rewrites_matching(data: bytes) -> set[int]:
    """Indexes (into PATTERNS) of the rewrites the record screen's database matches."""
    screen = redact._json_secrets().rewritten
    screen.prepare()
    matched: set[int] = set()

    def collect(expression: int, *_args: object) -> bool:
        matched.add(expression)
        return False

    screen._database.scan(data, match_event_handler=collect, scratch=_scratch(screen._database))
    return matched


@cache
def _json_screen(pattern: str) -> redact._Screen:
    """The rewrite alone, as the record screen compiles it (Hyperscan, prefilter)."""
    rewritten = json_superset(pattern)
    assert rewritten is not None, pattern
    return redact._Screen(redact.NEVER, (rewritten,))


def _encodings(text: str) -> list[bytes]:
    """The string's JSON text as a record holds it: once, and as JSON text inside a
    string inside a record (Codex's tool output), two and three levels deep."""
    once = orjson.dumps({"text": text})
    twice = orjson.dumps({"output": once.decode()})
    thrice = orjson.dumps([twice.decode()])
    return [once, twice, thrice]


def test_every_pattern_is_rewritten() -> None:
    """None left for the slow path (a copy of each record, undone escapes, a second scan)."""
    assert [p for p in PATTERNS if json_superset(p) is None] == []
    assert redact._json_secrets().left is None


@pytest.mark.filterwarnings("ignore:Possible nested set:FutureWarning")  # Rust's `[[` (hypothesis re-parses)
@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_a_match_in_a_string_is_a_match_in_its_json_text(data: st.DataObject) -> None:
    """For every pattern (drawn), a string it matches (generated from it, set among
    escapable characters): its rewrite fires on the string's JSON text, at three depths,
    in the Hyperscan database the record screen scans with."""
    index = data.draw(st.integers(0, len(PATTERNS) - 1), label="pattern")
    pattern = PATTERNS[index]
    found = data.draw(st.from_regex(_generator_form(pattern), alphabet=_ASCII), label="match")
    text = data.draw(_CONTEXT, label="before") + found + data.draw(_CONTEXT, label="after")
    if _text_form(pattern).search(text) is None:  # generated from the looser form only
        return
    for encoded in _encodings(text):
        assert _rewrite_fires(index, encoded), (pattern, text, encoded)


# Any character but a lone surrogate: Japanese, accents, emoji where a pattern admits any.
_UNICODE = st.characters(codec="utf-8", exclude_categories=("Cs",))
_DETECTOR_COUNT = len(redact._DETECTORS)  # PATTERNS opens with this package's detectors


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_a_match_with_characters_beyond_ascii_fires_every_screen(data: st.DataObject) -> None:
    """Hyperscan counts bytes where ``re`` (the detectors) and RE2 count characters: a
    match holding several-byte characters where a pattern admits any (``[^"']{0,40}``)
    fires the record screen on its JSON text and, for a detector, the text screens
    (``_SECRET_SCREEN``'s family and the redactor's own) on the string."""
    index = data.draw(st.integers(0, len(PATTERNS) - 1), label="pattern")
    pattern = PATTERNS[index]
    found = data.draw(st.from_regex(_generator_form(pattern), alphabet=_UNICODE), label="match")
    text = data.draw(_CONTEXT, label="before") + found + data.draw(_CONTEXT, label="after")
    if _text_form(pattern).search(text) is None:
        return
    for encoded in _encodings(text):
        assert _rewrite_fires(index, encoded), (pattern, text, encoded)
    if index < _DETECTOR_COUNT:
        fired = redact._SECRET_SCREEN.which(text)
        assert fired is None or index in fired, (pattern, text)
        assert redact.Redactor()._screen.hit(text), (pattern, text)


def test_a_password_behind_a_japanese_label_is_redacted() -> None:
    """Found by generating matches beyond ASCII: 20 characters between the name and the
    quote are 42 bytes, and the screen (counting bytes, up to 40) let the password through."""
    text = "await page.getByLabel('Password (パスワード / 密码 / 비밀번호)').fill('Tr0ub4dor&3xyz')"
    assert "Tr0ub4dor" not in redact.Redactor().redact(text)
    record, encoded = redact.Redactor().redact_json({"message": {"content": text}})
    assert "Tr0ub4dor" not in orjson.dumps(record).decode()


def test_an_airtable_token_in_a_record_is_redacted() -> None:
    """The catalogue's ``pat[[:alnum:]]{14}`` is Rust's POSIX class: Python's parser read
    ``[:alnu`` then fourteen ``]``, and the record screen never fired on a real token."""
    token = "patR4nd0mL3tt3rs9." + "0123456789abcdef" * 4
    record = {"type": "user", "message": {"content": f"the token {token} works"}}
    redacted, _ = redact.Redactor().redact_json(record)
    assert token not in orjson.dumps(redacted).decode()


@pytest.mark.parametrize(("rust", "python"), [
    ("pat[[:alnum:]]{14}", "pat[0-9A-Za-z]{14}"),
    (r"[[:xdigit:]_-]\z", r"[0-9A-Fa-f_-]\Z"),
    (r"[\[:alpha:]]", r"[\[:alpha:]]"),  # an escaped bracket opens nothing
    ("[]a]", "[]a]"),  # a bracket first in a class is a member
])
def test_rust_syntax_is_read_as_rust_reads_it(rust: str, python: str) -> None:
    assert python_syntax(rust) == python


@pytest.mark.parametrize("rust", ["[a[bc]]", "[a-z&&[^aeiou]]", "[a-z--b]", "[[:^alpha:]]", "[[:nosuch:]]",
                                  r"\b{start}key", r"\<key\>"])
def test_rust_classes_python_reads_otherwise_are_not_rewritten(rust: str) -> None:
    assert python_syntax(rust) is None
    assert json_superset(rust) is None and text_superset(rust) is None


def test_every_detector_has_its_bytes_form() -> None:
    """A detector ``text_superset`` could not rewrite would be screened as written,
    counting bytes: none may be."""
    assert [d.kind for d in redact._DETECTORS if text_superset(redact._hyperscan_alternative(d)) is None] == []


def test_without_hyperscan_the_record_screen_reads_bytes_too() -> None:
    """Where Hyperscan is missing (its wheel is x86-64 only) or refuses a database, RE2
    screens; the rewrite's classes list bytes, so RE2 reads the JSON text as Latin-1
    (in UTF-8, ``[\x00-\xff]`` would not match a Japanese character)."""
    text = "await page.getByLabel('Password (パスワード / 密码 / 비밀번호)').fill('Tr0ub4dor&3xyz')"
    record = orjson.dumps({"message": {"content": text}})
    fallback = redact._json_secrets().rewritten.reference()
    assert fallback.engine == "re2" and fallback.hit_bytes(record)
    assert redact.Redactor()._json_screen.reference().verdict(record) == redact.EXTRA
    assert not fallback.hit_bytes(orjson.dumps({"message": {"content": "ただのテキスト hello"}}))
    assert redact._SECRET_SCREEN.reference().hit(text) and redact.Redactor()._screen.reference().hit(text)


def test_a_counted_class_beyond_ascii_counts_characters() -> None:
    rewritten = text_superset(r"pw[^'\n]{0,10}'x")
    assert rewritten is not None
    assert re.search(rewritten.encode(), "pwパスワードパスワ'x".encode())  # 7 characters, 21 bytes
    assert not re.search(rewritten.encode(), ("pw" + "a" * 41 + "'x").encode())  # still bounded
    assert text_superset(r"c=[^;]{0,4096};") == r"c\x3d[\x00-\x3a\x3c-\xff]*\x3b"  # past the largest bound: any


@pytest.mark.parametrize(("text", "pattern"), [
    ("x\nghp_" + "a" * 36, r"\bghp_[A-Za-z0-9]{36}\b"),  # `\n` leaves `n` before the boundary
    ("x\x01ghp_" + "a" * 36, r"\bghp_[A-Za-z0-9]{36}\b"),  # `\u0001`: a hex digit before it
    ('key = "' + "b" * 20 + '"', r"key\s*=\s*\"([^\"\s]{16,})\""),  # quotes become `\"`
    ("k:\t\t" + "c" * 40, r"k:[ \t]{1,2}[a-z]{40}"),  # a bounded run of escaped tabs
    ("pw=a\\b\\c\\d\\e\\f\\g\\h", r"pw=(?:[a-h]\\){7}[a-h]"),  # backslashes, any depth
    ("line\nSK" + "0" * 32, r"(?m)^SK[0-9a-f]{32}$"),  # anchors go
])
def test_escapes_boundaries_and_anchors(text: str, pattern: str) -> None:
    assert re.search(pattern, text, re.ASCII)
    for encoded in _encodings(text):
        assert _json_screen(pattern).hit_bytes(encoded), encoded


def test_a_boundary_after_a_word_character_is_kept() -> None:
    """`_pat\\b` must not fire inside `file_path` (the reason it has a boundary)."""
    rewritten = json_superset(r"_pat\b[a-z0-9_.-]{0,}=[a-z]{16,}")
    assert rewritten is not None and r"t\b" in rewritten
    assert not re.search(rewritten.encode(), orjson.dumps({"file_path": "=" + "a" * 20}))
    assert re.search(rewritten.encode(), orjson.dumps({"t": "gh_pat=" + "a" * 20}))


@pytest.mark.parametrize("pattern", [r"(?<=x)ab", r"(a)\1", "caf\u00e9[0-9]{4}", r"(?!x)ab", r"\p{L}+"])
def test_constructs_it_cannot_rewrite_give_none(pattern: str) -> None:
    assert json_superset(pattern) is None


def test_a_pattern_left_unrewritten_is_screened_on_relaxed_json() -> None:
    screens = redact._JsonSecrets.of([r"(?<=key=)zq[0-9]{6}"])
    assert screens.left is not None
    nested = orjson.dumps([orjson.dumps({"cfg": 'key="zq123456"'}).decode()])
    assert screens.hit_bytes(nested)
    assert not screens.hit_bytes(orjson.dumps(["nothing here"]))


def test_rewrites_are_read_back_only_for_the_same_patterns(tmp_path: Path) -> None:
    patterns = [r"ghp_[A-Za-z0-9]{36}", r"(?<=x)ab"]
    built = redact._JsonSecrets.of(patterns)
    built.save(tmp_path, patterns)
    [saved] = tmp_path.glob("json-*.json")
    again = redact._JsonSecrets.of(patterns, tmp_path)
    assert again.rewritten.extra == built.rewritten.extra and again.left is not None
    other = redact._JsonSecrets.of([r"sk-[a-z]{20}"], tmp_path)  # another key: not read
    assert other.rewritten.extra == (json_superset(r"sk-[a-z]{20}"),)
    saved.write_text("{not json")  # a torn file: rewritten again
    assert redact._JsonSecrets.of(patterns, tmp_path).rewritten.extra == built.rewritten.extra


def test_catalogue_patterns_are_read_back_for_the_same_engine(tmp_path: Path) -> None:
    catalogue.save_patterns(tmp_path)
    [saved] = tmp_path.glob("catalogue-*.json")
    assert catalogue.identity() in saved.name
    assert catalogue.screen_patterns(tmp_path) == catalogue.screen_patterns()
    saved.write_text("[1, 2]")  # not patterns: loaded from the rules instead
    catalogue.screen_patterns.cache_clear()
    assert catalogue.screen_patterns(tmp_path) == catalogue.screen_patterns()


_LAZY_PROBE = """
import sys
from pipeline.collect.redact import Redactor
from pipeline.secrets import catalogue
redactor = Redactor(fold_home=True)
clean = {"type": "tool_result", "content": "src/app.py:12: def main():\\n    return 0\\n" * 50}
redactor.redact_json(clean)
print(catalogue.loaded())
print(redactor.redact(sys.argv[1]), catalogue.loaded())
"""


def test_the_rules_load_only_when_a_screen_flags_a_string() -> None:
    """A worker whose records are clean (most real logs) never pays the rules' load, nor
    one whose flagged strings hold only what this package's detectors find (a GitHub
    token); a secret only the catalogue knows (Shippo's) loads them."""
    import subprocess
    import sys

    rng = random.Random(7)
    github = "ghp_" + "".join(rng.choices(string.ascii_letters + string.digits, k=36))
    shippo = "shippo_live_" + "".join(rng.choices("0123456789abcdef", k=40))
    for token, loads in ((github, "False"), (shippo, "True")):
        done = subprocess.run([sys.executable, "-c", _LAZY_PROBE, f"token {token}"], capture_output=True,
                              text=True, check=True, cwd=Path(__file__).resolve().parents[1])
        clean_loaded, flagged = done.stdout.splitlines()
        assert clean_loaded == "False"
        assert token not in flagged and flagged.endswith(" " + loads), (token, flagged)
