"""Values that documentation writes where a secret goes, for every scanner alike.

The providers' published example keys (`AKIAIOSFODNN7EXAMPLE`), filler (`ghp_xxxx...`,
`****`, `T00000000`) and template words (`postgres://user:password@...`) are how
READMEs, `.env.example` files and tutorials spell a secret; they are everywhere in
agent logs and are not credentials. Redacting them costs the data, and a firewall that
failed on them would fail on every export.
"""

from __future__ import annotations

import re

_FILLER = re.compile(r"([xX*0.])\1{5,}", re.ASCII)
_TEMPLATE_VALUES = frozenset({
    "password", "passwd", "changeme", "secret", "pass", "your-password", "yourpassword", "mypassword",
    "your_password", "your-api-key", "your_api_key", "your-token", "your_token", "token", "apikey",
})


def documented(value: str) -> bool:
    """Whether ``value`` (a detector's match) is an example, filler or a template word."""
    if "example" in value.lower() or value.lower() in _TEMPLATE_VALUES:
        return True
    filled = sum(m.end() - m.start() for m in _FILLER.finditer(value))
    return filled * 5 >= len(value) * 2
