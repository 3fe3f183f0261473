"""The catalogue's engine reads bytes: a match may start or end inside a character. Its
findings still come back as whole characters, never an exception (one user message
with a Sentry token before a Japanese bracket used to fail the whole collect stage)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.collect import redact
from pipeline.secrets import catalogue

# A Sentry org token as betterleaks' rule matches it; its pattern ends on a class that
# takes one byte of whatever follows.
SENTRY = ("sntrys_eyJpYXQiO+/+8L9+t+5mXwfq/+/+2bw+1N3+V/+94/p/fd1/QcEe+/+LCJyZWdpb25fdXJs/Z+/3/n2tYk+=_/"
          "YBZ++NSa++O3M29/++E53tll/A+Nv6+0Ke++J+++++")



@pytest.mark.parametrize("after", ["」を使って", "é", "€", "😀", " ok"])
def test_a_match_ending_inside_a_character_is_widened_to_it(after: str) -> None:
    text = f"トークン「{SENTRY}{after}"
    findings = [f for f in catalogue.find(text) if f.kind.startswith("sentry")]
    assert findings, text
    for finding in findings:
        assert text[finding.start : finding.end].startswith(SENTRY)
    assert SENTRY not in redact.Redactor().redact(text)


def _ends_the_token(after: str) -> bool:
    return not (after[0].isascii() and (after[0].isalnum() or after[0] in "+/=_-"))


@settings(max_examples=200, deadline=None)
@given(before=st.text(max_size=5).map(lambda s: s + " "),
       after=st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=3)
       .filter(_ends_the_token))
def test_findings_are_character_spans_whatever_surrounds_them(before: str, after: str) -> None:
    text = before + SENTRY + after
    for finding in catalogue.find(text):
        assert 0 <= finding.start < finding.end <= len(text)
    assert SENTRY not in redact.Redactor().redact(text)
