"""The warm-up text (``pipeline.secrets.warm``): a candidate for every catalogue rule, so
the loading process builds every rule's regex once, before collect forks its workers."""

from __future__ import annotations

import re
import warnings

from hypothesis import given
from hypothesis import strategies as st

from pipeline.collect.redact import PRECOMPILED_SCREENS
from pipeline.secrets import catalogue
from pipeline.secrets.warm import python_form, shortest_match, warm_text

# Pieces of the syntax the catalogue's patterns use, to build patterns from (word
# boundaries apart: where one can stand depends on its neighbours, pinned below).
_PIECES = st.sampled_from([
    "ghp_", r"[A-Za-z0-9]", r"[^A-Za-z0-9/+=]", r"\d", r"\w", r"\s", r"[\w.-]", "(?:a|bc)",
    r"[0-9a-f]{8}", "x{0,3}", r"(?:\\?['\"]|[\s;])", "=", "-", "(?i:key)", ".", "[^a-z]",
])


def test_every_catalogue_pattern_gets_a_candidate_it_matches() -> None:
    patterns = catalogue.screen_patterns(PRECOMPILED_SCREENS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the Python form raises no FutureWarning either
        missed = [p for p in patterns
                  if (text := shortest_match(p)) is None or not re.search(python_form(p), text)]
    assert missed == []
    assert len(warm_text(patterns).splitlines()) == len(patterns)


@given(st.lists(_PIECES, min_size=1, max_size=6))
def test_a_shortest_match_matches_its_pattern(pieces: list[str]) -> None:
    pattern = "".join(pieces)
    text = shortest_match(pattern)
    assert text is not None and re.fullmatch(python_form(pattern), text)


def test_rust_syntax_reads_as_python() -> None:
    assert python_form(r"\bSG\.(?i)[a-z]{3}\z") == r"(?i)\bSG\.[a-z]{3}\Z"
    assert python_form(r"[a--&&b[]x") == r"[a-\-&\&b\[]x"
    assert shortest_match(r"(?:^|[^a-z0-9.-])key\b[ \t]*=") == "key="  # the first branch: the start


def test_word_boundaries_get_the_character_they_need() -> None:
    assert shortest_match(r"(?i:aiven)[\s\S]{0,32}?\b[A-Z]{3}") == "aiven AAA"  # two word characters
    assert shortest_match(r"\bkey\b=") == "key="  # a word and a non-word character
    assert shortest_match(r"\b-x") == "a-x"  # neither side a word character
