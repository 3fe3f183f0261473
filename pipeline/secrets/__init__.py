"""Secret detection: a maintained catalogue (Kingfisher's rules), tracelake's own rules,
and an independent rule set (detect-secrets) for the export firewall.

collect's redaction (``pipeline.collect.redact``) uses the first two; the export
firewall (``pipeline.export.firewall``) rescans with all three. See docs/SECRETS.md for
why, what each catches and what they cost.
"""

from __future__ import annotations

import importlib.metadata
from functools import lru_cache

# The distributions whose rules decide what the firewall finds; their versions are part
# of every firewalled stage's version (so its cache key), so upgrading one re-runs them.
SCANNER_DISTRIBUTIONS = ("kingfisher-secret-scanner", "detect-secrets")


@lru_cache(maxsize=1)
def scanner_table() -> dict[str, str]:
    """Each scanner distribution's version, ``missing`` when absent."""
    out = {}
    for name in SCANNER_DISTRIBUTIONS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def scanner_versions() -> str:
    """``name-version`` of each scanner distribution, joined: a stage's engines."""
    return "+".join(f"{name}-{version}" for name, version in scanner_table().items())


def redact_texts(texts: list[str]) -> list[str]:
    """Each text with every secret collect's redaction finds replaced by its placeholder
    (no home folding): for names tracelake writes outside the tables, such as paths."""
    from pipeline.collect.redact import Redactor

    return [str(out) for out in Redactor(fold_home=False).redact_many(texts)]
