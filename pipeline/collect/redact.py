"""Secret redaction for every string that enters the lake, and the export firewall's rescan.

Design (why it is shaped like this):

* Each detector family is one regex that starts with a literal (`sk-`, `xox`, `://`, or
  for case-insensitive key names `key`, `pass`... on the lowercased text). Python's `re`
  skips ahead to a leading literal in C, so a family that is absent costs about one fast
  pass, and a string with no secret returns after ~20 such passes with nothing else done.
  (Python's `re` has no multi-literal scan; one alternation of all families measured
  ~35 MB/s, the split families ~80-90 MB/s together.)
* Every string is first checked with one RE2 pass (google-re2, ~1 µs a call, 400+ MB/s;
  `redact_many` uses pyarrow's RE2 kernels over a whole column). A JSON record is
  screened once as a whole, on its orjson text, with the same pattern rewritten for
  JSON escapes; its strings are walked only when that fires. The RE2 pattern is the
  union of the detectors with look-aheads dropped and counts loosened, so it is a strict
  superset: it may say "maybe" wrongly, never "no" wrongly, and output never depends on
  the path taken. A string with a home in it is folded first and the folded text, which
  is what the detectors see, is screened.
* Most records that fire the JSON screen do so only for a home path (a cwd-relative
  path in a tool call or result). Those are folded on the record's JSON text in one go
  and parsed back, instead of walking every string; the fold steps aside (falls back to
  the walk) wherever the JSON text and the string could disagree: next to an escape, a
  Windows home, a folded dict key, anything left for the screen to fire on.
* Validators (entropy, identifier and path shapes, word boundaries) run only on the rare
  regex hits, in Python.
* `redact` repeats detection until nothing matches, so it is idempotent and
  `find_secrets(redact(x)) == []` holds by construction rather than by luck.
* Counts are by kind only; values never leave this module.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import hashlib
import math
import os
import re
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson
import re2

from pipeline.collect import json_superset as json_superset_module

# A compiled module's __file__ is not its path: the package's folder comes from here.
from pipeline.collect._compiled import HERE as PACKAGE_DIR
from pipeline.collect.json_superset import json_superset, text_superset
from pipeline.collect.lines import check_depth
from pipeline.core.hashing import CacheMac
from pipeline.secrets import catalogue
from pipeline.secrets.documented import documented

try:  # optional: a faster screen where its wheel exists
    import hyperscan as _hyperscan
except ImportError:  # pragma: no cover - depends on the platform
    _hyperscan = None  # type: ignore[assignment]

__all__ = ["KINDS", "HOME_KIND", "Redactor", "find_secret_rules", "find_secrets", "placeholder", "relaxed"]

KINDS: tuple[str, ...] = (
    "private_key",
    "jwt",
    "anthropic_api_key",
    "openai_api_key",
    "aws_access_key",
    "aws_secret_key",
    "github_token",
    "gitlab_token",
    "slack_token",
    "google_api_key",
    "stripe_key",
    "huggingface_token",
    "bearer_token",
    "url_password",
    "url_userinfo_token",
    "doppler_token",
    "mailgun_key",
    "twilio_sid",
    "artifactory_token",
    "square_token",
    "notion_token",
    "newrelic_key",
    "elevenlabs_key",
    "google_oauth_secret",
    "sonarqube_token",
    "google_oauth_token",
    "supabase_key",
    "braintree_token",
    "langsmith_key",
    "kubernetes_secret_data",
    "sentry_token",
    "stripe_webhook_secret",
    "discord_token",
    "discord_webhook",
    "telegram_bot_token",
    "netlify_token",
    "mapbox_token",
    "vault_token",
    "azure_client_secret",
    "azure_sas_signature",
    "bitbucket_app_password",
    "fly_token",
    "fcm_server_key",
    "dropbox_token",
    "flutterwave_key",
    "mailchimp_key",
    "asana_token",
    "hubspot_token",
    "nuget_key",
    "crates_token",
    "tailscale_key",
    "resend_key",
    "launchdarkly_key",
    "render_key",
    "url_signature",
    "cli_secret",
    "config_secret",
    "cookie",
    "env_secret_value",
    "password_value",
    "kubernetes_secret_output",
    "high_entropy_assignment",
)
HOME_KIND = "home_path"

_PLACEHOLDER_PREFIX = "[REDACTED:"


def placeholder(kind: str) -> str:
    """The typed marker a secret is replaced by; it contains nothing any detector matches."""
    return f"{_PLACEHOLDER_PREFIX}{kind}]"


# Strings shorter than this cannot hold any detector's match nor a home path worth folding.
_MIN_LEN = 6
# Texts from this size on are worth one batched pyarrow RE2 pass (~1 ms to compile, then
# ~0.5 GB/s) before the detectors; the export firewall batches its rescans by this.
_RE2_MIN_LEN = 192 * 1024

_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_PATH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.~-")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
# JSON string escapes end in a letter; "\nsk-ant-..." in a raw JSON line must still count
# as starting at a boundary.
_ESCAPES = ("\\n", "\\t", "\\r")

_Check = Callable[[str, "re.Match[str]"], bool]


def _entropy(value: str) -> float:
    counts = Counter(value)
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


# Names and code, not secrets: snake/kebab words, dotted attribute chains, bare words.
_IDENTIFIER = re.compile(
    r"_*[a-z0-9]+(?:[_.-]+[a-z0-9]+)*_*"
    r"|_*[A-Z0-9]+(?:[_.-]+[A-Z0-9]+)*_*"
    r"|[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+"
    r"|[A-Za-z_.]+",
    re.ASCII,
)
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_PATHLIKE = re.compile(r"(?:~|\.{1,2})?/[A-Za-z0-9_.@-]+/")
_WORDISH = re.compile(r"[A-Za-z0-9_.]+", re.ASCII)
_PEM_BODY = re.compile(r"[A-Za-z0-9+/]{16}")
_NOT_SECRET_PREFIXES = ("$", "%", "http://", "https://", "file:", "~/", "./", "../")


def _classes(value: str) -> tuple[bool, bool, bool]:
    lower = upper = digit = False
    for ch in value:
        if "a" <= ch <= "z":
            lower = True
        elif "A" <= ch <= "Z":
            upper = True
        elif "0" <= ch <= "9":
            digit = True
    return lower, upper, digit


_HEX_BODY = re.compile(r"(?<=[_-])[0-9a-f]{32,}$", re.ASCII)


def _mixed_token(text: str, m: re.Match[str]) -> bool:
    """Generic prefixes (sk-, hf_) need a random-looking body, not a kebab-case word.
    Random letters alone count too (Hugging Face issues `hf_` + 34 letters): mixed case
    at an entropy no CamelCase name reaches."""
    lower, upper, digit = _classes(m.group(0))
    if lower and upper and digit:
        return True
    body = _HEX_BODY.search(m.group(0))
    if body is not None and all(_classes(body.group(0))[::2]):
        return True  # `sk-` + 32 hex (DeepSeek): a random hex body, whatever the case
    if lower and upper and len(m.group(0)) >= 30 and _entropy(m.group(0)) >= 4.2:
        return True
    return lower + upper + digit >= 2 and _IDENTIFIER.fullmatch(m.group(0)) is None


_AWS_SECRET = re.compile(r"[A-Za-z0-9/+]{40}", re.ASCII)
_AWS_SECRET_NAME = re.compile(r"cret_?(?:access_?)?key", re.ASCII | re.IGNORECASE)


def _assignment_kind(text: str, m: re.Match[str]) -> str:
    """AWS's own names with a 40-char base64 value make an AWS secret key, else generic."""
    if _AWS_SECRET.fullmatch(m.group(1)) is None:
        return "high_entropy_assignment"
    name = text[m.start() : m.start(1)]
    if _AWS_SECRET_NAME.match(name) is None:
        return "high_entropy_assignment"
    if "access" in name.lower():
        return "aws_secret_key"
    before = text[max(0, m.start() - 6) : m.start() - 2].lower()  # before the "se" lead
    return (
        "aws_secret_key" if before.endswith(("aws_", "aws-", "aws")) else "high_entropy_assignment"
    )


_PLACEHOLDER_END = re.compile(r"\[REDACTED:[a-z0-9_]+$")


def _after_placeholder(text: str, m: re.Match[str]) -> bool:
    start = m.start() + 1
    if _PLACEHOLDER_END.search(text, max(0, start - 40), start) is None:
        return False
    return _assignment(text, m)


def _sk_key(text: str, m: re.Match[str]) -> bool:
    """`sk-ant-` is unmistakable; a bare `sk-` also prefixes kebab-case words."""
    return m.group(0).startswith("sk-ant-") or _mixed_token(text, m)


def _credential(text: str, m: re.Match[str], min_len: int) -> bool:
    value = m.group(1)
    if len(value) < min_len or value.startswith(_NOT_SECRET_PREFIXES):
        return False
    lower, upper, digit = _classes(value)
    if not (digit or (lower and upper)):
        return False
    return not _code_like(text, m, value)


def _pem_body(text: str, m: re.Match[str]) -> bool:
    """A BEGIN/END pair quoted in code has no key material between them."""
    return _PEM_BODY.search(m.group(0), len("BEGIN ")) is not None


_HEX_TOKEN = re.compile(r"[0-9a-fA-F]{16,}", re.ASCII)
_HEX_ENTROPY_MIN = 2.5


def _machine_made(value: str) -> bool:
    """Digits scattered through letters at high entropy: no one names a variable so
    (`ax7bdobyimfxzisc72z2...`), many tokens look so."""
    if not (value.isascii() and value.isalnum()):
        return False  # separators (`ed25519.Ed25519PrivateKey`) are how code reads
    digits = sum(ch.isdigit() for ch in value)
    return digits >= 4 and len(value) - digits >= 4 and _entropy(value) >= 3.5


_FLAG = re.compile(r"--?[a-z][a-z0-9]*(?:-[a-z0-9]+)*", re.ASCII)
_PLACEHOLDER_WORDS = ("change", "example", "your", "xxxx", "****", "redacted", "secret", "password")


def _password(text: str, m: re.Match[str]) -> bool:
    """A value where a password goes (`-p...`, `password ...`, `--password=`): at least
    8 characters, letters with digits or symbols, and not a placeholder or a path."""
    value = m.group(1).strip("'\"")
    if len(value) < 8 or value.startswith(_NOT_SECRET_PREFIXES) or _path(value):
        return False
    if _FLAG.fullmatch(value):  # `aws ecr get-login-password --region ...`
        return False
    if value.startswith("<") and value.endswith(">"):  # a template: `<password>`
        return False
    low = value.lower()
    if any(word in low for word in _PLACEHOLDER_WORDS):
        return False
    lower, upper, digit = _classes(value)
    symbol = any(not ch.isalnum() for ch in value)
    if not ((lower or upper) and (digit or symbol or (lower and upper))):
        return False
    if not (_netrc(text, m.start()) or _random_part(value)) and _code_like(text, m, value):
        return False
    return _entropy(value) >= 2.5


def _curl_password(text: str, m: re.Match[str]) -> bool:
    """The password of ``curl -u USER:PASSWORD`` (the user may be a variable): whatever
    stands there, unless a variable, a template or a placeholder as a whole. The place
    says it is a password, so neither its length nor its look is asked (`_password`
    would let `hunter2hunter` in code, or a seven-letter one, through; a string cut after
    two letters of it keeps those two), and a word inside it is not a placeholder
    (`Xsecret29`)."""
    value = m.group(1)
    low = value.lower()
    if low.startswith(("$", "<", "{", "your")) or (len(value) > 1 and value[0] == value[-1] == "%"):
        return False
    return low not in _CURL_PLACEHOLDERS and not any(mark in low for mark in ("xxxx", "****", "redacted"))


_CURL_PLACEHOLDERS = frozenset({"password", "passwd", "pass", "secret", "token", "changeme", "example", "pwd"})


def _random_part(value: str) -> bool:
    """Digits and both cases, or a random-looking piece (`zqclZXPNkn` of
    `zqclZXPNkn.V2UNN`): where a password goes, that is a password with a dot in it,
    not an attribute chain."""
    return all(_classes(value)) or any(len(part) >= 8 and _entropy(part) >= 3.0 and sum(_classes(part)) >= 2
                                       for part in _PARTS.split(value))


_PARTS = re.compile(r"[._-]+")


def _netrc(text: str, at: int) -> bool:
    """`machine HOST login USER password P` (a .netrc, on one line or several): P is a
    password whatever it looks like, `a.b` included."""
    before = text[max(0, at - 200) : at].lower()
    return "machine " in before and "login " in before


def _dash_p_password(text: str, m: re.Match[str]) -> bool:
    """`-p VALUE` after `-u USER`: a password, unless a path (`-u train.py ... -p runs/1`:
    python's -u, then a profile or output folder)."""
    return "/" not in m.group(1) and _password(text, m)


def _secret_value(text: str, m: re.Match[str]) -> bool:
    """What follows a name or flag that says secret: a password check where the name
    says password, the machine-made-value check otherwise."""
    named = text[max(0, m.start() - 2) : m.start(1)].lower()
    if "pass" in named or "pwd" in named:
        return _password(text, m)
    if named.rstrip(" \t=\"'").endswith("secret"):  # `--client-secret`: may be a password too
        return _named_setting(text, m)
    return _assignment(text, m)


def _named_setting(text: str, m: re.Match[str]) -> bool:
    """A value whose setting's name says secret (`<add key="ApiToken" value="..."/>`; the
    name may come after the value): where a password goes, a password is what it holds."""
    return _password(text, m) or _assignment(text, m)


_REGISTRY_LOGIN = re.compile(
    r"(?:^|[^A-Za-z0-9_.-])(?:docker|podman|nerdctl|buildah|skopeo|oras|crane|helm|az|oc|cf)"
    r"(?:[ \t]+[^ \t\r\n|;&]{1,80}){0,4}[ \t]+\Z",
    re.ASCII | re.IGNORECASE,
)
# A host as .pgpass names one: a dotted name or address, localhost or `*` (not
# `cache:3600:views:...`, a colon-separated cache key).
_PGPASS_HOST = re.compile(
    r"(?:^|[^A-Za-z0-9.*_:-])(?:[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})+|localhost|\*)\Z", re.ASCII)


def _registry_login(text: str, m: re.Match[str]) -> bool:
    """`docker login ... -p PASSWORD` (podman, helm registry, az, ...): a password."""
    return _REGISTRY_LOGIN.search(text, max(0, m.start() - 300), m.start()) is not None and _password(text, m)


def _pgpass(text: str, m: re.Match[str]) -> bool:
    """`host:port:database:user:password` to the end of a line (~/.pgpass): the password."""
    return _PGPASS_HOST.search(text, max(0, m.start() - 254), m.start()) is not None and _password(text, m)


# Dict keys under which a string may be a secret that only the key names: the name's
# last word is what it holds (`password`, `apiKey`, `client_secret`, `Cookie`), so
# `tokenizer`, `secret_name`, `sessionId`, `bypass` and a bare `key` (an S3 object key,
# a React key) are left to the value's own shape. Matched on the snake_case form.
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])", re.ASCII)
_SECRET_NAME = re.compile(
    r"(?:^|[_\-. ])(?:pass|password|passwd|passphrase|pwd|pw|secret|token|credentials?|auth|authorization|pat"
    r"|(?:api|secret|access|private|client|auth|signing|encryption|master|license|app|service|account|admin"
    r"|webhook|subscription|session)[_\-]?key)\Z",
    re.ASCII,
)
_NOT_SECRET_NAME = re.compile(r"(?:^|[_\-. ])(?:page|next|continuation|cursor|sync|csrf_?)[_\-]?token\Z", re.ASCII)
_PASSWORD_NAME = re.compile(r"(?:pass|password|passwd|passphrase|pwd|pw|auth)\Z", re.ASCII)
_WHOLE = re.compile(r"(.*)", re.ASCII | re.DOTALL)


def _relative_path(value: str) -> bool:
    """`uploads/2024/a8f3.png`, `src/tokenizer/vocab.json`: segments a person named. A
    base64 key holds `/` too, but in long runs of every character class."""
    parts = value.strip("/").split("/")
    return len(parts) > 1 and "+" not in value and not any(len(p) >= 12 and all(_classes(p)) for p in parts)


def _pair_kind(obj: dict[Any, Any]) -> str | None:
    """A name/value pair (`{"name": "DB_PASSWORD", "value": "..."}`: a form field, a
    Kubernetes env entry, a settings list): its value is named by its name."""
    if "value" not in obj:
        return None
    name = obj.get("name", obj.get("key"))
    return _named_kind(name) if isinstance(name, str) else None


@lru_cache(maxsize=4096)  # the same few keys in every record
def _named_kind(key: str) -> str | None:
    """What a dict key says its string value is: "password", "cookie", "secret" or None."""
    name = _CAMEL.sub("_", key).lower()
    if name.endswith("cookie"):
        return "cookie"
    if _SECRET_NAME.search(name) is None or _NOT_SECRET_NAME.search(name) is not None:
        return None
    return "password" if _PASSWORD_NAME.search(name) else "secret"


_COOKIE_VALUE = re.compile(r"(?:^|;)[ \t]*[A-Za-z0-9_.%-]{1,128}=([^;, \t\r\n\"'`]{16,})", re.ASCII)


def _cookie(text: str, m: re.Match[str]) -> bool:
    """A cookie header or curl's cookie argument holding a machine-made value (a session
    id, a signed token), not `theme=dark`."""
    for pair in _COOKIE_VALUE.finditer(m.group(1)):
        value = pair.group(1)
        lower, upper, digit = _classes(value)
        if digit and (lower or upper) and _entropy(value) >= 3.0 and not value.startswith(_NOT_SECRET_PREFIXES):
            return True
    return False


def _signature(text: str, m: re.Match[str]) -> bool:
    value = m.group(1)
    lower, upper, digit = _classes(value)
    return digit and (lower or upper) and _entropy(value) >= 3.0


def _aws_secret(text: str, m: re.Match[str]) -> bool:
    """40 characters of base64 where AWS puts its secret key: random, so every class."""
    return all(_classes(m.group(1)))


_KUBECTL_VALUE = re.compile(r"jsonpath|go-template|base64|template=", re.ASCII)


def _kubectl_output(text: str, m: re.Match[str]) -> bool:
    """The line after `kubectl get secret ... -o jsonpath=...` (or `| base64 -d`) is the
    secret's value."""
    command = text[m.start() : m.start(1)]
    return _KUBECTL_VALUE.search(command) is not None and len(m.group(1)) >= 8


_REVEAL_COMMAND = re.compile(
    r"kubectl\b[^\n]{0,200}?\bget[ \t]+secrets?\b[^\n]{0,300}?(?:jsonpath|go-template|base64|template=)",
    re.ASCII | re.IGNORECASE,
)
_REVEALED_KIND = "kubernetes_secret_output"
_REVEALED_FIELDS = frozenset({"content", "text", "output", "stdout", "stderr"})
_REVEALED_VALUE = re.compile(r"[^ \t\r\n]{8,}")


def reveals_secret(command: str) -> bool:
    """`kubectl get secret NAME -o jsonpath=...` (or `| base64 -d`): its output is the
    secret's decoded value, which may look like anything (`4ptiO!=Dce.eYwUW9cg`)."""
    return _REVEAL_COMMAND.search(command) is not None


def _path(value: str) -> bool:
    """`/usr/lib/x`, `./a/b`: a path, not a value, unless a segment is machine-made (a
    base64 key may start with `/` and hold more: `/ZZ4A2WGM.../3ffNzc`)."""
    if _PATHLIKE.match(value) is None:
        return False
    return not any(len(part) >= 16 and all(_classes(part)) and _entropy(part) >= 3.5
                   for part in value.split("/"))


def _literal(text: str, m: re.Match[str]) -> bool:
    """The value is written as data, not code: quoted, or after `NAME=` / `--flag=`
    (shell, .env). `PASSWORD = settings.DB_PASSWORD` and `password=self.pw` are code."""
    start = m.start(1)
    before = text[start - 1 : start]
    if before in ("\"", "'", "`"):
        return True
    if before != "=":
        return False
    name = _NAME_BEFORE.search(text, max(0, start - 80), start - 1)
    return name is not None and (name.group(0).startswith("--") or name.group(0).isupper())


_NAME_BEFORE = re.compile(r"-{0,2}[A-Za-z0-9_-]+$", re.ASCII)


def _code_like(text: str, m: re.Match[str], value: str) -> bool:
    """Identifiers, attribute chains and calls (`x = foo.bar(`) are code, not values.
    Hex with digits and letters under a name that says secret (`DD_API_KEY=8f3a...`,
    `"client_secret": "1fa6..."`) is a key, not an identifier."""
    if _UUID.fullmatch(value) is not None:
        return False
    if _HEX_TOKEN.fullmatch(value) is not None:
        lower, upper, digit = _classes(value)
        if digit and (lower or upper):
            return False
    if len(value) >= 24 and _machine_made(value):
        return False
    if all(_classes(value)) and _literal(text, m):
        return False  # `PASSWORD="hk_DTSJdg0ug.NTZ"`: data with a dot, not an attribute chain
    if _IDENTIFIER.fullmatch(value) is not None:
        return True
    # `getKey2FromVault(` is a call; a value of symbols followed by `(` is still a value.
    return text[m.end() : m.end() + 1] in ("(", "[") and _WORDISH.fullmatch(value) is not None


def _bearer(text: str, m: re.Match[str]) -> bool:
    return _credential(text, m, 16)


def _authorization(text: str, m: re.Match[str]) -> bool:
    return _credential(text, m, 8)


def _basic_credentials(text: str, m: re.Match[str]) -> bool:
    """`Basic <base64>` outside an Authorization header (`AUTH="Basic ..."`), as a value
    (after a quote, `=` or `:`): a credential when the base64 decodes to printable
    `user:password`."""
    if text[max(0, m.start() - 4) : m.start()].rstrip(" \t")[-1:] not in ("\"", "'", "=", ":"):
        return False
    try:
        decoded = base64.b64decode(m.group(1), validate=True).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        return False
    user, colon, password = decoded.partition(":")
    return bool(colon and user and password) and decoded.isprintable()


_URL_PLACEHOLDERS = frozenset({"password", "pass", "passwd", "pwd", "secret", "pw", "token"})


_PORT_PATH = re.compile(r"[0-9]{1,5}(?:/[^ \t/]*)*", re.ASCII)


def _url_password(text: str, m: re.Match[str]) -> bool:
    """Templates (`$PASS`, `{password}`, `****`) are documentation, not credentials; a
    port and a path before an `@` (`host:443/@scope/pkg`) are not one either."""
    value = m.group(2)
    if value.startswith(("$", "{", "%(", "/")) or value.lower() in _URL_PLACEHOLDERS:
        return False
    if "/" in value and _PORT_PATH.fullmatch(value) is not None:
        return False
    return not (len(value) > 1 and len(set(value)) == 1 and value[0] in "*xX.")


def _userinfo_token(text: str, m: re.Match[str]) -> bool:
    """A URL whose user part is a key (a Sentry DSN, `https://<token>@host`): long and
    machine-made, not a user name."""
    value = m.group(1)
    if _HEX_TOKEN.fullmatch(value) is not None:
        return len(value) >= 32
    lower, upper, digit = _classes(value)
    return len(value) >= 24 and digit and lower and upper


def _never(text: str, m: re.Match[str]) -> bool:
    return False


_K8S_SECRET = re.compile(r"kind:[ \t]*[\"']?Secret\b", re.ASCII)
_B64_VALUE = re.compile(r"[A-Za-z0-9+/]{4,}={0,2}", re.ASCII)


def _k8s_data(text: str, m: re.Match[str]) -> bool:
    """In a Kubernetes Secret every `data:` value is a secret by declaration (base64 of a
    password is as secret as the password); elsewhere only what decodes to one counts."""
    return _K8S_SECRET.search(text) is not None and _B64_VALUE.fullmatch(m.group(1)) is not None


_ENTROPY_MIN = 3.0


def _assignment(text: str, m: re.Match[str]) -> bool:
    """Keep code and config names; redact values that look machine-generated. A
    tokenizer is named, not a token (`tokenizer: Qwen/Qwen2.5-0.5B` in a training config)."""
    value = m.group(1)
    if len(value) < 16 or value.startswith(_NOT_SECRET_PREFIXES):
        return False
    if "tokeniz" in text[max(0, m.start() - 2) : m.start(1)].lower():
        return False
    if _assignment_kind(text, m) == "aws_secret_key":
        return True  # AWS's own name and a 40-char base64 value, `/` first or not
    if _path(value):
        return False
    lower, upper, digit = _classes(value)
    if not (digit and (lower or upper)) or _code_like(text, m, value):
        return False
    # Windows, so padding glued to a secret (`...0000000`) cannot dilute it below the bar.
    # Hex has 16 symbols, so a random hex window often stays under the bar: it gets a
    # lower one.
    bar = _HEX_ENTROPY_MIN if _HEX_TOKEN.fullmatch(value) is not None else _ENTROPY_MIN
    return any(_entropy(value[i : i + 16]) >= bar for i in range(0, len(value) - 8, 8))


# `name=value; name=value`: a cookie list, bounded, each pair delimited (no backtracking
# across a long line).
_COOKIE_PAIRS = (r"[a-z0-9_.%-]{1,128}=[^; \t\r\n\"'`]{0,4096}"
                 r"(?:;[ \t]{0,4}[a-z0-9_.%-]{1,128}=[^; \t\r\n\"'`]{0,4096}){0,63}")

# Character classes spelled out so Python re and RE2 agree exactly.
_WS = r"[ \t]{0,4}"
_SEP = r"(?::=|=>|[:=])"
_VALUE = r"([^ \t\r\n\f\v\"'`,;(){}\[\]<>\\]{16,})"
_VALUE8 = r"([^ \t\r\n\f\v\"'`,;(){}\[\]<>\\]{8,})"
_OPEN_Q = r"(?:\\?[\"'`])?"
_CLOSE_Q = r"(?:\\?[\"'])?"
_B64URL = "A-Za-z0-9_-"


def _kind_by_prefix(*pairs: tuple[str, str]) -> Callable[[str, re.Match[str]], str]:
    def kind(text: str, m: re.Match[str]) -> str:
        for prefix, name in pairs:
            if m.group(0).startswith(prefix):
                return name
        return pairs[-1][1]

    return kind


@dataclass(frozen=True)
class _Detector:
    """One family of secrets, found by one regex pass that starts with a literal.

    Python's `re` scans for a leading literal at memchr-like speed, so each family costs
    about one pass over the text when absent. Case-insensitive families are scanned on
    the lowercased text (their regex is written in lowercase), then re-matched on the
    original so validators see the real value.
    """

    kind: str | Callable[[str, re.Match[str]], str]
    core: str  # shared by Python re and RE2: no \s \w \d; look-aheads only as (?!...)
    low: bool = False
    group: int = 0  # which group is the secret (the rest of the match is kept)
    boundary: bool = False  # the char before the match must not be a token char
    before: str = ""  # one of these chars must precede the match, and is redacted with it
    # `lead` + `core` is the real pattern; scanning for `core` alone lets `re` skip ahead on
    # a rarer first character (`J` of `eyJ`, `B` of `-----BEGIN`).
    lead: str = ""
    re2: str | None = None  # a looser RE2 form when `core` is not RE2-compatible
    check: _Check | None = None

    def kind_of(self, text: str, m: re.Match[str]) -> str:
        return self.kind if isinstance(self.kind, str) else self.kind(text, m)


# Names that say secret, shared by the detectors of one format.
_XML_SECRET_TAG = (r"<[a-z0-9_.:-]{0,40}(?:password|passwd|passphrase|secret|token|apikey|api_key|api-key|accesskey"
                   r"|access_key|privatekey|private_key)>")
_ENV_SECRET_NAME = r"[a-z0-9_]*(?:token|key|secret|password|passwd|pass|pwd)[a-z0-9_]*"
# A name that ends in a secret's word (`setPassword(`, `"db.password"`; not `setTokenizer(`).
_SECRET_WORD = (r"(?:password|passwd|passphrase|secret|token|apikey|api_key|api-key|accesskey|access_key|secretkey"
                r"|secret_key|private_key|privatekey|credentials?)")
# A value echoed or printf'd (the secret's group), before the pipe that feeds it to a command.
_ECHOED = (r"(?:echo|printf)[ \t]+(?:-[ne]+[ \t]+|'%s(?:\\n)?'[ \t]+|\"%s(?:\\n)?\"[ \t]+)?[\"']?"
           r"([^ \t\r\n\f\v\"'`;|]{6,})[\"']?")
_NET_KEY = r"key=[\"'][a-z0-9_.:-]{0,40}(?:password|passwd|secret|token|apikey|api_key|key)[a-z0-9_.:-]{0,40}[\"']"

_DETECTORS: tuple[_Detector, ...] = (
    _Detector(
        "private_key",
        r"BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
        r"(?:[\s\S]{0,65536}?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
        r"|[A-Za-z0-9+/=\s\\:,.-]*)",
        lead="-----",
        re2=r"BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY",
        check=_pem_body,
    ),
    _Detector(  # a PuTTY .ppk file: the base64 lines after `Private-Lines: N`
        "private_key", r"rivate-Lines:[ \t]*[0-9]{1,3}\r?\n((?:[A-Za-z0-9+/=]{16,}\r?\n)*[A-Za-z0-9+/=]{16,})",
        lead="P", group=1,
    ),
    _Detector(
        "private_key", r"BEGIN OpenVPN Static key V1-----[0-9a-fA-F\r\n#-]{32,}?-----END OpenVPN Static key V1-----",
        lead="-----",
    ),
    _Detector(
        "jwt", rf"J[{_B64URL}]{{6,}}\.ey[{_B64URL}]{{6,}}\.[{_B64URL}]*", lead="ey", boundary=True
    ),
    _Detector(
        _kind_by_prefix(("sk-ant-", "anthropic_api_key"), ("sk-", "openai_api_key")),
        rf"sk-[{_B64URL}]{{20,}}",
        boundary=True,
        check=_sk_key,
    ),
    _Detector(
        _kind_by_prefix(("AIza", "google_api_key"), ("A", "aws_access_key")),
        rf"A(?:KIA[A-Z0-9]{{16,}}|SIA[A-Z0-9]{{16,}}|Iza[{_B64URL}]{{35,}})",
        boundary=True,
    ),
    _Detector(
        _kind_by_prefix(("glpat-", "gitlab_token"), ("g", "github_token")),
        rf"g(?:h[pousr]_[A-Za-z0-9]{{36,}}|ithub_pat_[A-Za-z0-9_]{{22,}}|lpat-[{_B64URL}]{{20,}})",
        boundary=True,
    ),
    _Detector("slack_token", r"xox[abposr]-[A-Za-z0-9-]{10,}", boundary=True),
    _Detector("stripe_key", r"k_(?:live|test)_[0-9A-Za-z]{16,}", before="sr", boundary=True),
    _Detector(
        "huggingface_token", r"f_[A-Za-z0-9]{30,}", lead="h", boundary=True, check=_mixed_token
    ),
    _Detector(
        "url_password",
        r"://([^ \t\r\n\f\v:/?#@\[\]\"'<>\\]{0,256}):([^ \t\r\n\f\v?#@\[\]\"'<>\\]{1,256})@",
        group=2,
        check=_url_password,
    ),
    _Detector(
        "url_userinfo_token",
        r"://([A-Za-z0-9_-]{24,})@",
        group=1,
        check=_userinfo_token,
    ),
    _Detector(
        "doppler_token",
        r"p\.(?:st|sa|ct|scim|audit|pt)\.(?:[a-z0-9_-]{2,35}\.)?[A-Za-z0-9]{40,44}",
        lead="d",
        boundary=True,
    ),
    _Detector("mailgun_key", r"ey-[0-9a-f]{32}", lead="k", boundary=True),
    # An account or API-key SID names the account a leaked auth token unlocks; the
    # firewall's independent scanner (detect-secrets) treats it as a key, so it goes too.
    _Detector("twilio_sid", r"(?:AC|SK)[0-9a-f]{32}", boundary=True),
    # Artifactory API keys (`AKCp`) and reference tokens (base64 of `reftkn:01:`), and
    # Square's `sq0` OAuth secrets and access tokens: formats detect-secrets knows and the
    # catalogue, at the confidence used, does not.
    _Detector("artifactory_token", r"(?:AKCp[A-Za-z0-9]{60,}|cmVmdGtuOjAxOj[A-Za-z0-9]{40,})", boundary=True),
    _Detector("square_token", r"q0(?:csp|atp)-[0-9A-Za-z_-]{22,}", lead="s", boundary=True),
    # Prefixed formats the catalogue finds only next to a keyword (its rules want the
    # provider's name nearby); agents paste them bare.
    _Detector("notion_token", r"(?:secret_[A-Za-z0-9]{43}|ntn_[A-Za-z0-9]{40,})", boundary=True,
              check=_mixed_token),
    _Detector("newrelic_key", r"(?:NR(?:AK|JS|II)-[A-Za-z0-9]{19,32}|[0-9a-f]{36}NRAL)", boundary=True),
    _Detector("elevenlabs_key", r"k_[0-9a-f]{48}", lead="s", boundary=True),
    _Detector("google_oauth_secret", r"OCSPX-[A-Za-z0-9_-]{28}", lead="G", boundary=True),
    _Detector("sonarqube_token", r"q[upa]_[0-9a-f]{40}", lead="s", boundary=True),
    _Detector("google_oauth_token", r"(?:1//0[A-Za-z0-9_-]{40,}|ya29\.[A-Za-z0-9_-]{40,})", boundary=True,
              check=_mixed_token),
    _Detector("supabase_key", r"b(?:_secret_[A-Za-z0-9_-]{20,}|p_[0-9a-f]{40})", lead="s", boundary=True),
    _Detector("braintree_token", r"ccess_token\$(?:production|sandbox)\$[0-9a-z]{16}\$[0-9a-f]{32}", lead="a"),
    _Detector("langsmith_key", r"sv2_(?:pt|sk)_[0-9a-f]{32}_[0-9a-f]{10}", lead="l", boundary=True),
    _Detector("mailgun_key", r"[0-9a-f]{32}-[0-9a-f]{8}-[0-9a-f]{8}", boundary=True),
    # Provider formats the catalogue (at the confidence used) does not know; each has a
    # case in tests/test_redact.py and tests/secrets/.
    _Detector("sentry_token", r"ntry[su]_[A-Za-z0-9_=-]{20,}", lead="s", boundary=True),
    _Detector("stripe_webhook_secret", r"sec_[A-Za-z0-9]{24,}", lead="wh", boundary=True),
    _Detector(
        "discord_token", r"[MNO][A-Za-z0-9_-]{23,27}\.[A-Za-z0-9_-]{6}\.[A-Za-z0-9_-]{27,40}",
        boundary=True, check=_mixed_token,
    ),
    _Detector(
        "discord_webhook", r"iscord(?:app)?\.com/api/webhooks/[0-9]{5,30}/([A-Za-z0-9_-]{20,})",
        lead="d", group=1,
    ),
    # No boundary: the Bot API puts the token right after `/bot` in its URLs.
    _Detector("telegram_bot_token", r"[0-9]{8,10}:AA[A-Za-z0-9_-]{30,40}"),
    _Detector("netlify_token", r"fp_[A-Za-z0-9]{36,}", lead="n", boundary=True),
    _Detector("mapbox_token", r"k\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{20,}", lead="s", boundary=True),
    _Detector("vault_token", r"v[sbr]\.[A-Za-z0-9_-]{24,}", lead="h", boundary=True),
    _Detector(
        "azure_client_secret", r"[A-Za-z0-9_~.-]{3}[0-9]Q~[A-Za-z0-9_~.-]{31,34}", boundary=True,
    ),
    _Detector("azure_sas_signature", r"ig=([A-Za-z0-9%+/=]{20,})", lead="s", before="?&", group=1),
    # A presigned URL's signature (S3's X-Amz-Signature, CloudFront's Signature): access
    # to the object until it expires.
    _Detector("url_signature", r"ignature=([a-z0-9%~_.+/=-]{32,})", lead="s", before="?&-", low=True, group=1,
              check=_signature),
    _Detector("bitbucket_app_password", r"TBB[A-Za-z0-9]{32,}", lead="A", boundary=True),
    _Detector("fly_token", r"o1_[A-Za-z0-9_-]{40,}", lead="f", boundary=True),
    _Detector("fcm_server_key", r"AAA[A-Za-z0-9_-]{7}:APA91b[A-Za-z0-9_-]{100,}", lead="A", boundary=True),
    _Detector("dropbox_token", r"l\.[A-Za-z0-9_-]{130,}", lead="s", boundary=True),
    _Detector("flutterwave_key", r"LWSECK(?:_TEST)?-[0-9a-f]{32}-X", lead="F", boundary=True),
    _Detector("mailchimp_key", r"[0-9a-f]{32}-us[0-9]{1,2}", boundary=True),
    _Detector("asana_token", r"[0-9]/[0-9]{16}/[0-9]{16}:[0-9a-f]{32}", boundary=True),
    _Detector(
        "hubspot_token",
        r"at-(?:na|eu|ap)[0-9]{1,2}-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        lead="p", boundary=True,
    ),
    _Detector("nuget_key", r"y2[a-z0-9]{43}", lead="o", boundary=True),
    _Detector("crates_token", r"io[A-Za-z0-9]{32}", lead="c", boundary=True, check=_mixed_token),
    _Detector("tailscale_key", r"skey-[a-z]+-[A-Za-z0-9]{6,}-[A-Za-z0-9]{20,}", lead="t", boundary=True),
    _Detector("resend_key", r"e_[A-Za-z0-9]{8}_[A-Za-z0-9]{24}", lead="r", boundary=True),
    _Detector(
        "launchdarkly_key",
        r"(?:sdk|api|mob)-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        boundary=True,
    ),
    _Detector("render_key", r"nd_[A-Za-z0-9]{32}(?![A-Za-z0-9_-])", lead="r", boundary=True, check=_mixed_token),
    # AWS's secret key has no prefix; where its key id sits right before it (a
    # credentials.csv row, a table) or `aws configure` asks for it, the place says what it is.
    _Detector(
        "aws_secret_key",
        r"(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}[\"']?[ \t,;|:\r\n]{1,6}[\"']?"
        r"([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])",
        group=1, check=_aws_secret,
    ),
    _Detector(
        "aws_secret_key",
        r"ecret access key(?:[ \t]*\[[^\]\n]{0,40}\])?[ \t]*:[ \t]*([a-z0-9/+]{40})(?![a-z0-9/+=])",
        lead="s", low=True, group=1, check=_aws_secret,
    ),
    # Structure: where a command line, a manifest or a netrc says what a value is.
    _Detector(
        "cli_secret",
        r"--[a-z0-9-]{0,30}(?:token|key|secret|password|passwd|passphrase|pass|auth|session)(?:=|[ \t]+)[\"']?"
        r"([^ \t\r\n\f\v\"'`,;(){}\[\]<>\\]{8,})",
        low=True, group=1, check=_secret_value,
    ),
    _Detector(
        "cli_secret",
        r"(?:mysql|mysqldump|mariadb)[^\n|;&]{0,200}?[ \t]-p[\"']?([^ \t\r\n\f\v\"'`;]{6,})",
        low=True, group=1, check=_password,
    ),
    _Detector(
        "cli_secret", r"shpass[ \t]+-p[ \t]*[\"']?([^ \t\r\n\f\v\"'`;]{6,})",
        lead="s", low=True, group=1, check=_password,
    ),
    _Detector(
        "cli_secret",
        r"ecret[ \t]+set[ \t]+[a-z0-9_]+[ \t]+(?:--body|-b)[ \t=]+[\"']?([^ \t\r\n\f\v\"'`;]{6,})",
        lead="s", low=True, group=1, check=_password,
    ),
    _Detector(
        "cli_secret",
        r"onfigure[ \t]+set[ \t]+[a-z0-9_.]*(?:secret|key|token)[a-z0-9_]*[ \t]+([^ \t\r\n\f\v\"'`;]{8,})",
        lead="c", low=True, group=1, check=_assignment,
    ),
    _Detector(
        "cli_secret", r"uthtoken[ \t]+([A-Za-z0-9_-]{30,})", lead="a", low=True, group=1,
        check=_assignment,
    ),
    _Detector(
        "cli_secret", r"nyk[ \t]+auth[ \t]+([0-9a-f-]{36})", lead="s", low=True, group=1,
    ),
    _Detector(
        "cli_secret", r"andb[ \t]+login[ \t]+(?:--[a-z-]+[ \t]+)*([0-9a-f]{40})", lead="w", low=True,
        group=1,
    ),
    # Tools whose short flag takes a password: registry logins, database and directory
    # clients, keystores, archivers, key generators.
    # Each starts with a literal, so `re` skips ahead to it (an alternation first would be
    # tried at every position of every screened string); `login` checks its tool after.
    *(
        _Detector("cli_secret",
                  rf"{tool}[ \t](?:[^\n|;&]{{0,200}}?[ \t])??{flag}[\"']?([^ \t\r\n\f\v\"'`;]{{6,}})",
                  low=low, group=1, check=check)
        for tool, flag, low, check in (
            (r"login", r"-p[ \t]*", True, _registry_login),
            (r"redis-cli", r"-a[ \t]*", True, _password),
            (r"ldap(?:search|add|modify|delete|passwd|whoami|compare|modrdn|exop)", r"-w[ \t]*", True, _password),
            (r"mongo(?:sh|dump|restore|import|export|stat|top)?", r"-p[ \t]*", True, _password),
            (r"sqlcmd", r"-P[ \t]*", False, _password),
            (r"bcp", r"-P[ \t]*", False, _password),
            (r"zip", r"-P[ \t]+", False, _password),  # zip and unzip
            (r"7za?[ \t]+[a-z]", r"-p", False, _password),
            (r"ssh-keygen", r"-[NP][ \t]+", False, _password),
        )
    ),
    _Detector(
        "cli_secret", r"-(?:src|dest|new)?(?:store|key)pass[ \t]+[\"']?([^ \t\r\n\f\v\"'`;]{6,})",
        low=True, group=1, check=_password,
    ),
    _Detector(  # smbclient / rpcclient -U user%password
        "cli_secret", r"-U[ \t]+[\"']?[^ \t\r\n%\"'/:]{1,64}%([^ \t\r\n\f\v\"'`;]{6,})",
        group=1, check=_password,
    ),
    _Detector(  # htpasswd -b FILE USER PASSWORD (-b: the password is on the command line)
        "cli_secret",
        r"tpasswd(?:[ \t]+-[A-Za-z]+)*[ \t]+-[A-Za-z]*b[A-Za-z]*(?:[ \t]+-[A-Za-z]+)*"
        r"[ \t]+[^ \t\r\n\"']+[ \t]+[^ \t\r\n\"']+[ \t]+[\"']?([^ \t\r\n\f\v\"'`;]{6,})",
        lead="h", group=1, check=_password,
    ),
    _Detector(  # echo PASSWORD | docker login --password-stdin
        "cli_secret",
        r"cho[ \t]+(?:-[ne]+[ \t]+)?[\"']?([^ \t\r\n\f\v\"'`;|]{6,})[\"']?[ \t]*\|[^\n]{0,200}?password-stdin",
        lead="e", low=True, group=1, check=_password,
    ),
    _Detector(  # printf '%s' PASSWORD | docker login --password-stdin
        "cli_secret",
        r"rintf[ \t]+(?:(?:'%s(?:\\n)?'|\"%s(?:\\n)?\"|%s)[ \t]+)?[\"']?([^ \t\r\n\f\v\"'`;|]{6,})[\"']?[ \t]*\|"
        r"[^\n]{0,200}?password-stdin",
        lead="p", low=True, group=1, check=_password,
    ),
    _Detector(  # docker login --password-stdin <<< PASSWORD, gh auth login --with-token <<< TOKEN
        "cli_secret", r"(?:password-stdin|with-token)[^\n|;&]{0,200}?<<<[ \t]*[\"']?([^ \t\r\n\f\v\"'`;|]{6,})",
        low=True, group=1, check=_password,
    ),
    _Detector(  # sudo -S <<< PASSWORD (-S: the password comes from stdin)
        "cli_secret", r"udo[ \t]+(?:-[a-z]+[ \t]+)*-[a-z]*s[a-z]*[ \t]+<<<[ \t]*[\"']?([^ \t\r\n\f\v\"'`;|]{6,})",
        lead="s", low=True, group=1, check=_password,
    ),
    _Detector(  # echo PASSWORD | sudo -S ...
        "cli_secret",
        _ECHOED + r"[ \t]*\|[ \t]*sudo[ \t]+(?:-[a-z]+[ \t]+)*-[a-z]*s[a-z]*(?:[ \t]|$)",
        low=True, group=1, check=_password,
    ),
    _Detector(  # vault login TOKEN
        "cli_secret", r"ault[ \t]+login[ \t]+(?:-[a-z-]+(?:=[^ \t\r\n]+)?[ \t]+)*([a-z0-9._-]{20,})",
        lead="v", low=True, group=1, check=_assignment,
    ),
    _Detector(  # net use \\srv\share /user:DOMAIN\bob PASSWORD
        "cli_secret", r"et[ \t]+use[ \t][^\n]{0,200}?/user:[^ \t\r\n]{1,100}[ \t]+[\"']?([^ \t\r\n/\"']{6,})",
        lead="n", low=True, group=1, check=_password,
    ),
    _Detector(  # net use Z: \\srv\share PASSWORD /user:bob
        "cli_secret",
        r"et[ \t]+use[ \t]+(?:[a-z]:[ \t]+)?\\\\[^ \t\r\n]+[ \t]+[\"']?([^ \t\r\n/\"']{6,})[\"']?[ \t]+/user:",
        lead="n", low=True, group=1, check=_password,
    ),
    _Detector(  # PowerShell: ConvertTo-SecureString 'PASSWORD' -AsPlainText
        "cli_secret",
        r"onvertto-securestring[ \t]+(?:-string[ \t]+)?[\"']([^\"'\r\n]{6,})[\"'][^\n]{0,80}-asplaintext",
        lead="c", low=True, group=1, check=_password,
    ),
    _Detector(  # openssl enc -k PASSWORD
        "cli_secret", r"penssl[ \t][^\n|;&]{0,200}?[ \t]-k[ \t]+[\"']?([^ \t\r\n\f\v\"'`;]{6,})",
        lead="o", low=True, group=1, check=_password,
    ),
    _Detector(  # Redis: AUTH [user] PASSWORD
        "cli_secret", r"AUTH[ \t]+(?:[A-Za-z0-9_.-]{1,64}[ \t]+)?([^ \t\r\n\"'`]{6,})", boundary=True, group=1,
        check=_password,
    ),
    _Detector(  # Windows: setx NAME VALUE, [Environment]::SetEnvironmentVariable('NAME', 'VALUE')
        "cli_secret",
        rf"etx[ \t]+[\"']?{_ENV_SECRET_NAME}[\"']?[ \t]+[\"']?([^ \t\r\n\f\v\"'`;]{{6,}})",
        lead="s", low=True, group=1, check=_secret_value,
    ),
    _Detector(
        "cli_secret",
        rf"etenvironmentvariable\([ \t]*[\"']{_ENV_SECRET_NAME}[\"'][ \t]*,[ \t]*[\"']([^\"'\r\n]{{6,}})",
        lead="s", low=True, group=1, check=_secret_value,
    ),
    _Detector(  # YAML with a tag: `password: !!str ...`
        "password_value",
        r"(?:password|passwd|secret|token|key)[a-z0-9_]*[\"']?[ \t]*:[ \t]*!!str[ \t]+[\"']?"
        r"([^ \t\r\n\f\v\"'`,;(){}\[\]<>\\]{6,})",
        low=True, group=1, check=_secret_value,
    ),
    _Detector(  # rabbitmqctl add_user NAME PASSWORD
        "cli_secret", r"abbitmqctl[ \t]+(?:add_user|change_password)[ \t]+[^ \t\r\n]+[ \t]+[\"']?([^ \t\r\n\"']{6,})",
        lead="r", low=True, group=1, check=_password,
    ),
    _Detector(  # SQL: ALTER USER ... WITH PASSWORD '...', IDENTIFIED BY '...', CREATE LOGIN ... PASSWORD = '...'
        "password_value",
        r"(?:with[ \t]+(?:encrypted[ \t]+)?password|identified[ \t]+(?:with[ \t]+[a-z0-9_]+[ \t]+)?by)[ \t]*=?[ \t]*"
        r"'([^'\r\n]{6,})",
        low=True, group=1, check=_password,
    ),
    # Config formats that name a value as a secret without `=` or `:`.
    _Detector(  # <password>...</password>, <apiToken>...</apiToken> (Maven settings.xml, ...)
        "config_secret",
        rf"{_XML_SECRET_TAG}[ \t]*([^<>\r\n \t]{{8,}})[ \t]*</",
        low=True, group=1, check=_secret_value,
    ),
    # .NET appSettings: <add key="SmtpPassword" value="..."/>, either quote, either order.
    *(
        _Detector("config_secret", core, low=True, group=1, check=_named_setting)
        for value, close in ((r"value=\"([^\"\r\n]{8,})", "\""), (r"value='([^'\r\n]{8,})", "'"))
        for core in (rf"<add[ \t]+{_NET_KEY}[ \t]+{value}", rf"<add[ \t]+{value}{close}[ \t]+{_NET_KEY}")
    ),
    _Detector(  # <password><![CDATA[...]]></password>
        "config_secret",
        rf"{_XML_SECRET_TAG}[ \t]*<!\[cdata\[([^\r\n]{{8,256}}?)\]\]>",
        low=True, group=1, check=_secret_value,
    ),
    # A browser automation typing into a password field: Playwright's fill/type, Selenium's send_keys.
    _Detector(
        "password_value",
        r"\.(?:fill|type|presssequentially)\([ \t]*[\"'`][^\"'`\r\n]{0,80}(?:password|passwd|pwd|passphrase)"
        r"[^\"'`\r\n]{0,80}[\"'`][ \t]*,[ \t]*[\"'`]([^\"'`\r\n]{6,})",
        low=True, group=1, check=_password,
    ),
    _Detector(
        "password_value",
        r"(?:password|passwd|pwd|passphrase)[^\"'`\r\n]{0,40}[\"'`][ \t]*\)[ \t]*"
        r"\.(?:send_keys|fill|type|presssequentially)\([ \t]*[\"'`]([^\"'`\r\n]{6,})",
        low=True, group=1, check=_password,
    ),
    _Detector(  # {"name": "password", "value": "..."} (form fields, env lists) as text
        "password_value",
        r"\"name\\?\"[ \t]*:[ \t]*\\?\"[a-z0-9_.-]{0,40}(?:password|passwd|pwd|passphrase|secret|token)\\?\"[ \t]*,"
        # (a value cut before its closing quote does not take the blanks or quote after it)
        r"[ \t]*\\?\"value\\?\"[ \t]*:[ \t]*\\?\"([^\"\\\r\n]{5,}[^\"\\\r\n \t'])",
        low=True, group=1, check=_password,
    ),
    _Detector(  # ALTER ROLE app PASSWORD '...', CREATE USER app LOGIN PASSWORD '...' (PostgreSQL, no WITH)
        "password_value",
        r"(?:create|alter)[ \t]+(?:role|user)[ \t][^\n;']{1,200}?[ \t](?:encrypted[ \t]+)?password[ \t]*=?[ \t]*"
        r"'([^'\r\n]{6,})",
        low=True, group=1, check=_password,
    ),
    _Detector(  # a setter named for a secret: ds.setPassword("..."), setClientSecret("...")
        "config_secret",
        rf"set_?[a-z0-9_]{{0,40}}?{_SECRET_WORD}\([ \t]*[\"']([^\"'\r\n]{{6,}})",
        low=True, group=1, check=_named_setting,
    ),
    _Detector(  # a call given a secret's name, then its value: System.setProperty("x.keyStorePassword", "..."),
        # props.put("db.password", "..."), os.environ.get("DB_PASSWORD", "...") (a default is a value too)
        "config_secret",
        rf"\([ \t]*[\"'][a-z0-9_.:-]{{0,60}}{_SECRET_WORD}[\"'][ \t]*,[ \t]*[\"']([^\"' \t\r\n]{{6,}})",
        # The screen is the quoted name and its comma, without the `(` and blanks before:
        # Hyperscan (0.9.1) compiles `(?i:\([ \t]*["'][a-z0-9_.:-]*(?:password|...)["']`
        # so that it misses `System.setProperty('password', ...` (tests/test_redact.py).
        re2=rf"[\"'][a-z0-9_.:-]{{0,60}}{_SECRET_WORD}[\"'][ \t]*,",
        low=True, group=1, check=_named_setting,
    ),
    _Detector(  # echo TOKEN | wrangler secret put NAME, | gh secret set, | vercel env add, | docker secret create
        "cli_secret",
        _ECHOED + r"[ \t]*\|[^\n|;&]{0,200}?(?:secrets?[ \t]+(?:set|put|add|create|import)|create[ \t]+secret"
        r"|env[ \t]+add|env:(?:add|set)|htpasswd[ \t][^\n|;&]{0,100}?-[a-z]*i)",
        low=True, group=1, check=_password,
    ),
    _Detector(  # read -s DB_PASSWORD <<< '...'
        "cli_secret",
        rf"ead[ \t]+(?:-[a-z]+[ \t]+)*{_ENV_SECRET_NAME}[ \t]*<<<[ \t]*[\"']?([^ \t\r\n\f\v\"'`;|]{{6,}})",
        lead="r", low=True, group=1, check=_password,
    ),
    _Detector(  # rclone config create NAME TYPE secret_access_key VALUE (key value pairs)
        "cli_secret",
        r"clone[ \t]+config[ \t]+(?:create|update)[ \t][^\n|;&]{0,300}?[ \t]"
        r"[a-z_]{0,30}(?:secret|pass|password|token|key)[ \t=]+[\"']?([^ \t\r\n\"'`;|]{8,})",
        lead="r", low=True, group=1, check=_named_setting,
    ),
    _Detector(  # curl -u USER:PASSWORD, --user (the catalogue's rule stops at `&`, `%` or `!`,
        # and needs a space or the end after it: a command in quotes, `run('curl -u ci:...')`)
        "cli_secret",
        r"curl[ \t](?:[^\n|;&]{0,300}?[ \t])??(?:-u|--user)(?:[ \t]+|=)[\"']?[^ \t\r\n:\"']{1,100}:"
        r"([^ \t\r\n\"'`]+)",
        low=True, group=1, check=_curl_password,
    ),
    # dotnet user-secrets set NAME VALUE: a user secret by definition (quoted, it may hold spaces)
    *(
        _Detector(
            "cli_secret",
            r"ser-secrets[ \t]+set[ \t]+(?:\"[^\"\r\n]{1,100}\"|'[^'\r\n]{1,100}'|[^ \t\r\n\"']{1,100})[ \t]+" + value,
            lead="u", low=True, group=1, check=_named_setting,
        )
        # (a double-quoted value may hold spaces and single quotes: it is taken only with
        # its closing quote, or an unclosed one would run on through whatever follows)
        for value in (r"\"([^\"\r\n]{8,})\"", r"'([^'\r\n]{8,})", r"([^ \t\r\n\"'`;|&]{8,})")
    ),
    _Detector(  # echo 'user:PASSWORD' | chpasswd
        "cli_secret",
        r"(?:echo|printf)[ \t]+(?:-[ne]+[ \t]+)?[\"']?[^ \t\r\n:\"'|]{1,64}:([^ \t\r\n\"'`|]{6,})[\"']?[ \t]*\|"
        r"[ \t]*(?:sudo[ \t]+)?chpasswd",
        low=True, group=1, check=_password,
    ),
    _Detector(  # openssl passwd -6 [-salt S] PASSWORD (hashes it: the argument is the password)
        "cli_secret",
        r"penssl[ \t]+passwd(?:[ \t]+-(?:1|5|6|apr1|crypt|aixmd5|noverify|quiet|table|salt[ \t]+[^ \t\r\n]+))*"
        r"[ \t]+[\"']?([^ \t\r\n\"'`;|)]{6,})",
        lead="o", low=True, group=1, check=_password,
    ),
    _Detector(  # macOS keychain: security add-generic-password ... -w PASSWORD
        "cli_secret",
        r"ecurity[ \t]+add-(?:generic|internet)-password[^\n|;&]{0,300}?[ \t]-w[ \t]+[\"']?([^ \t\r\n\"'`;|]{6,})",
        lead="s", low=True, group=1, check=_password,
    ),
    _Detector(  # config keywords that hold a password: bindpw/rootpw (LDAP), psk= (wpa_supplicant), wpa_passphrase=
        "password_value",
        r"(?:bindpw|rootpw|psk|wpa_passphrase|sae_password)(?:[ \t]*=[ \t]*|[ \t]+)[\"']?([^ \t\r\n\"'`;]{8,})",
        boundary=True, low=True, group=1, check=_password,
    ),
    _Detector(  # -u USER [up to 4 words] -p PASSWORD (psexec, rdesktop, rabbitmqadmin, twine...)
        "cli_secret",
        r"-u[ \t]+[\"']?[^ \t\r\n\"'-][^ \t\r\n\"']{0,63}[\"']?(?:[ \t]+[^ \t\r\n]{1,100}){0,4}?[ \t]+-p[ \t]+"
        r"[\"']?([^ \t\r\n\"'`;|]{6,})",
        boundary=True, group=1, check=_dash_p_password,
    ),
    _Detector(  # Windows: net user NAME PASSWORD [/add]
        "cli_secret", r"et[ \t]+user[ \t]+[^ \t\r\n/]+[ \t]+[\"']?([^ \t\r\n\"'/]{6,})[\"']?(?:[ \t]+/|[ \t]*$)",
        lead="n", low=True, group=1, check=_password,
    ),
    _Detector(  # RDP clients: /u:USER ... /p:PASSWORD (xfreerdp, wfreerdp)
        "cli_secret", r"/u:[^ \t\r\n]{1,64}(?:[ \t]+/[^ \t\r\n]{1,200}){0,6}?[ \t]+/p:[\"']?([^ \t\r\n\"']{6,})",
        low=True, group=1, check=_password,
    ),
    _Detector(  # Oracle: sqlplus USER/PASSWORD@DB (sqlldr, expdp, impdp alike)
        "cli_secret",
        r"(?:sqlplus|sqlldr|expdp|impdp)[ \t]+(?:-[a-z]+[ \t]+)*[\"']?[a-z0-9_$#]{1,30}/([^ \t\r\n@\"'/]{6,})(?:@|[ \t\"']|$)",
        low=True, group=1, check=_password,
    ),
    _Detector(  # lftp -u USER,PASSWORD
        "cli_secret", r"ftp[ \t][^\n|;&]{0,100}?-u[ \t]+[\"']?[^ \t\r\n,\"']{1,64},([^ \t\r\n\"']{6,})",
        lead="l", low=True, group=1, check=_password,
    ),
    _Detector(  # an ftp session: ftp> user NAME PASSWORD
        "cli_secret", r"tp>[ \t]*user[ \t]+[^ \t\r\n]+[ \t]+([^ \t\r\n\"']{6,})",
        lead="f", low=True, group=1, check=_password,
    ),
    _Detector(  # npm config set //registry/:_authToken TOKEN (a space, not `=`)
        "cli_secret", r":_(?:authtoken|auth|password)[ \t]+[\"']?([^ \t\r\n\"']{8,})",
        low=True, group=1, check=_named_setting,
    ),
    _Detector(  # composer config http-basic.HOST USER PASSWORD
        "cli_secret", r"ttp-basic\.[^ \t\r\n]+[ \t]+[^ \t\r\n]+[ \t]+[\"']?([^ \t\r\n\"']{6,})",
        lead="h", low=True, group=1, check=_password,
    ),
    _Detector(  # bundle config [set] [--global] HOST USER:PASSWORD
        "cli_secret",
        r"undle[ \t]+config[ \t]+(?:set[ \t]+)?(?:--[a-z]+[ \t]+)*[^ \t\r\n]+[ \t]+[\"']?[^ \t\r\n:\"']{1,64}:"
        r"([^ \t\r\n\"']{6,})",
        lead="b", low=True, group=1, check=_password,
    ),
    _Detector(  # cargo login TOKEN
        "cli_secret", r"argo[ \t]+login[ \t]+(?:--registry[ \t=]+[^ \t\r\n]+[ \t]+)?([a-z0-9_-]{20,})",
        lead="c", low=True, group=1, check=_named_setting,
    ),
    _Detector(  # expect: a password prompt, then send "PASSWORD\r"
        "password_value", r"assword[^\n]{0,60}?send[ \t]+(?:--[ \t]+)?[\"']([^\"'\\\r\n]{6,})",
        lead="p", low=True, group=1, check=_password,
    ),
    _Detector(  # MinIO client: mc alias set NAME URL ACCESS_KEY SECRET_KEY
        "cli_secret",
        r"mc[ \t]+(?:alias[ \t]+set|config[ \t]+host[ \t]+add)[ \t]+[^ \t\r\n]+[ \t]+[^ \t\r\n]+[ \t]+"
        r"[^ \t\r\n]+[ \t]+[\"']?([^ \t\r\n\"'`;|]{8,})",
        boundary=True, low=True, group=1, check=_password,
    ),
    _Detector(  # PHP: define('DB_PASSWORD', '...'); (wp-config.php)
        "config_secret",
        r"define\([ \t]*['\"][a-z0-9_]{0,40}(?:password|passwd|secret|token|key|salt)[a-z0-9_]{0,40}['\"]"
        r"[ \t]*,[ \t]*['\"]([^'\"\r\n]{8,})",  # (the value stops at a quote: no closing one needed)
        low=True, group=1, check=_secret_value,
    ),
    _Detector(  # ~/.pgpass: host:port:database:user:password (the host checked after)
        "config_secret",
        r":(?:[0-9]{2,5}|\*):[a-z0-9_*$.-]{1,63}:[a-z0-9_.@*$-]{1,63}:([^ \t\r\n:\"']{8,})(?![^\r\n\"' \t])",
        low=True, group=1, check=_pgpass,
    ),
    _Detector(  # Cookie: / Set-Cookie: headers: session cookies are credentials
        "cookie", rf"ookie{_CLOSE_Q}{_WS}:{_WS}{_OPEN_Q}({_COOKIE_PAIRS})", lead="c", low=True, group=1,
        check=_cookie,
    ),
    _Detector(  # curl -b / --cookie 'name=value; ...'
        "cookie", rf"curl[ \t](?:[^\n|;&]{{0,300}}?[ \t])??(?:-b|--cookie)[ \t=]*[\"']?({_COOKIE_PAIRS})",
        low=True, group=1, check=_cookie,
    ),
    _Detector(
        "env_secret_value",
        r"name:[ \t]*[\"']?[a-z0-9_.-]*(?:key|token|secret|pass|pwd|auth|credential|_pat)[a-z0-9_]*[\"']?"
        r"[ \t]*\n[+-]?[ \t]*value:[ \t]*[\"']?([^ \t\r\n\f\v\"'`,;(){}\[\]<>\\]{8,})",
        low=True, group=1, check=_secret_value,
    ),
    _Detector(
        "password_value", r"password[ \t]+([^ \t\r\n\f\v\"'`,;(){}\[\]<>\\]{8,})",
        low=True, group=1, check=_password,
    ),
    _Detector(
        "kubernetes_secret_output",
        r"et[ \t]+secrets?[ \t][^\n]{0,300}\n([^ \t\r\n]{8,})",  # a decoded value: any characters
        lead="g", low=True, group=1, check=_kubectl_output,
    ),
    # Not a secret: makes the screen pass strings that decode base64, so their runs are
    # decoded and scanned (``_encoded_hits``).
    _Detector("base64_cue", r"(?:base64[ \t]+(?:-d|--decode|-D)|b64decode|atob\()", low=True, check=_never),
    # Not a secret either, and only for the screens (its own pattern is a NUL that never
    # passes its check): a JSON key that names a secret, before a string or a list, so
    # that a record like `{"password": "9k;Xm2P@qL"}` is walked and its value judged
    # under its key (`Redactor._named_value`), whatever the value looks like.
    _Detector(
        "named_value_cue", r"\x00", check=_never,
        re2=r"(?i:(?:pass(?:word|wd|phrase)?|pwd|pw|secret|token|credentials?|auth(?:orization)?|cookie|pat|key)"
            r"\\?\"[ \t]*:[ \t]*\\?[\"\[]"
            # ...or a name/value pair's name: `{"name": "DB_PASSWORD", "value": "..."}`
            r"|(?:name|key)\\?\"[ \t]*:[ \t]*\\?\"[a-z0-9_. -]{0,60}(?:pass(?:word|wd|phrase)?|pwd|pw|secret|token"
            r"|credentials?|auth(?:orization)?|cookie|pat|key)\\?\")",
    ),
    _Detector(
        "kubernetes_secret_data",
        r"\n[ \t]+[A-Za-z0-9._-]{1,253}:[ \t]+([A-Za-z0-9+/]{4,}={0,2})",
        group=1,
        check=_k8s_data,
        # Every indented `key: value` line matches the pattern; the check wants a Secret
        # manifest, so that is what the screens look for.
        re2=r"kind:[ \t]*(?:\\?[\"'])?Secret",
    ),
    _Detector(
        "bearer_token",
        rf"zation{_CLOSE_Q}{_WS}[:=]{_WS}{_OPEN_Q}"
        r"(?:(?:bearer|basic|token|digest|negotiate|ssws|bot)[ \t]+)?([a-z0-9._~+/=-]{8,})",
        lead="authori",
        low=True,
        group=1,
        check=_authorization,
    ),
    _Detector(  # a quoted or assigned `Basic <base64>`; the screen looks for that much
        "bearer_token",
        r"Basic[ \t]+((?:[A-Za-z0-9+/]{4}){2,}(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?)(?![A-Za-z0-9+/=])",
        re2=r"[\"'=:][ \t]{0,3}Basic[ \t]+[A-Za-z0-9+/]{8,}", group=1, check=_basic_credentials,
    ),
    _Detector(
        "bearer_token",
        r"bearer[ \t]+([a-z0-9._~+/-]{16,}=*)",
        low=True,
        group=1,
        check=_bearer,
    ),
    # A key name swallowed by an earlier redaction (`sk-...AWS_SECRET_KEY=v` when pasted
    # without a separator) still marks the value after it.
    _Detector(
        "high_entropy_assignment",
        rf"\]{_WS}{_SEP}{_WS}{_OPEN_Q}{_VALUE}",
        group=1,
        check=_after_placeholder,
    ),
    *(
        _Detector(
            _assignment_kind,
            rf"{core}[a-z0-9_.-]{{0,30}}{_CLOSE_Q}\]?{_WS}{_SEP}{_WS}{_OPEN_Q}{value}",
            lead=lead,
            low=True,
            group=1,
            check=check,
        )
        # Key names that mark a value as a credential (measured: fastest split for `re`).
        # A password may be short; other secrets are machine-made and long.
        for lead, core, value, check in (
            ("", "pass", _VALUE8, _secret_value),
            ("", "pwd", _VALUE8, _secret_value),
            ("se", "cret", _VALUE8, _secret_value),  # `API_SECRET=` may hold a password
            ("to", "ken", _VALUE, _assignment),
            ("", "key", _VALUE, _assignment),
            ("", "credential", _VALUE, _assignment),
            ("bw", "_session", _VALUE, _assignment),  # Bitwarden's BW_SESSION unlocks the vault
            ("op", "_session", _VALUE, _assignment),  # 1Password's OP_SESSION_<account>
            ("", "auth", _VALUE, _assignment),
            ("", r"_pat\b", _VALUE, _assignment),  # `GITHUB_PAT=`, not `file_path":`
        )
    ),
)


@dataclass(frozen=True)
class _Compiled:
    det: _Detector
    rank: int
    scan: re.Pattern[str]  # run on the text (or its lowercase form when det.low)
    exact: re.Pattern[str]  # re-match on the original text when det.low


def _compile(rank: int, det: _Detector) -> _Compiled:
    scan = re.compile(det.core, re.ASCII)
    exact = re.compile(det.core, re.ASCII | re.IGNORECASE) if det.low else scan
    return _Compiled(det, rank, scan, exact)


_COMPILED: tuple[_Compiled, ...] = tuple(_compile(i, d) for i, d in enumerate(_DETECTORS))
_RAW = tuple(c for c in _COMPILED if not c.det.low)
_LOW = tuple(c for c in _COMPILED if c.det.low)
_LOOKAHEAD = re.compile(r"\(\?![^()]*\)")
_COUNTED = re.compile(r"\{(\d+)(?:,\d*)?\}")
_RE2_MAX_COUNT = 16


def _relax_count(m: re.Match[str]) -> str:
    return f"{{{min(int(m.group(1)), _RE2_MAX_COUNT)},}}"


def _re2_alternative(det: _Detector) -> str:
    """A strict superset of the detector for RE2.

    Look-aheads go (RE2 has none); every count `{m}`, `{m,n}` becomes `{min(m,16),}`:
    lowering a lower bound and dropping an upper one only admits more, and counts above
    ~16 blow RE2's DFA budget (measured: the union fell from ~500 MB/s to ~12 MB/s).
    """
    return _alternative(det, relax_counts=True)


def _hyperscan_alternative(det: _Detector) -> str:
    """``_re2_alternative`` with the counts as written: Hyperscan takes them, and a
    screen that needs 32 hex digits fires less, and scans faster, than one that needs 16."""
    return _alternative(det, relax_counts=_hyperscan is None)


def _alternative(det: _Detector, relax_counts: bool) -> str:
    body = det.re2 if det.re2 is not None else det.core
    body = _LOOKAHEAD.sub("", body)
    if relax_counts:
        body = _COUNTED.sub(_relax_count, body)
    body = re.escape(det.lead) + body
    if det.before:
        body = f"[{det.before}]{body}"
    return f"(?i:{body})" if det.low else f"(?:{body})"


_SECRET_RE2 = "|".join(_re2_alternative(d) for d in _DETECTORS)


def _in_bytes(pattern: str) -> str:
    """A detector's screen pattern as Hyperscan's byte mode must read it on UTF-8 text,
    where the detector reads characters (``text_superset``)."""
    return text_superset(pattern) or pattern


# The detectors' text screens: RE2's forms, and Hyperscan's (counts as written, in bytes).
_SECRET_RE2_FORMS = tuple(_re2_alternative(d) for d in _DETECTORS)
_SECRET_IN_BYTES = tuple(_in_bytes(_hyperscan_alternative(d)) for d in _DETECTORS)


def _secret_text_screen(home_patterns: Sequence[str], extra: tuple[str, ...]) -> _Screen:
    """A home, a detector (each its own expression: their bytes forms are too long to
    join into one) or an ``extra`` expression (the catalogue's rules, read as they
    are by both engines)."""
    homes = "|".join(home_patterns) or NEVER
    return _Screen(homes, (*_SECRET_RE2_FORMS, *extra), (homes, *_SECRET_IN_BYTES, *extra))



# `-` does not glue: Claude Code names a project folder by its path with `/` as `-`, so a
# token that was a path segment follows a `-` (`-home-alice-hf_...`).
_GLUE_CHARS = _TOKEN_CHARS - {"-"}


def _at_boundary(text: str, start: int) -> bool:
    if start == 0 or text[start - 1] not in _GLUE_CHARS:
        return True
    return text[start - 2 : start] in _ESCAPES


def _scan(pattern: re.Pattern[str], text: str) -> list[re.Match[str]]:
    """Every match, including ones that start inside a rejected earlier match."""
    out: list[re.Match[str]] = []
    m = pattern.search(text)
    while m is not None:
        out.append(m)
        m = pattern.search(text, m.start() + 1)
    return out


def _accept(comp: _Compiled, text: str, m: re.Match[str]) -> _Hit | None:
    det = comp.det
    start = m.start()
    if det.lead:
        start -= len(det.lead)
        if start < 0 or text[start : m.start()].lower() != det.lead.lower():
            return None
    if det.before:
        if start == 0 or text[start - 1] not in det.before:
            return None
        start -= 1
    if det.boundary and not _at_boundary(text, start):
        return None
    if det.check is not None and not det.check(text, m):
        return None
    kind = det.kind_of(text, m)
    if det.group:
        return (m.start(det.group), m.end(det.group), comp.rank, kind, OWN_RULES + kind)
    return (start, m.end(), comp.rank, kind, OWN_RULES + kind)


def _quoted_end(text: str, start: int, end: int) -> int:
    """Where a quoted value really ends: a value class stops at `(` or `,`, but a quoted
    secret may hold them (Django's `SECRET_KEY = '...(-_=+)...'`), and its tail would be
    left. So a value found right after a quote runs to the closing quote on its line, or
    to the string's end where it has none (an escaped opening quote, `\\"`, closes at the
    escaped one, before its backslash). The caller keeps the short span as well: where
    the long one overlaps another secret, that secret and the short span win."""
    quote = text[start - 1 : start]
    if quote not in ("\"", "'", "`") or text[end : end + 1] in (quote, ""):
        return end
    escaped = text[start - 2 : start - 1] == "\\"
    close = text.find("\\" + quote if escaped else quote, end, end + 256)
    if close == -1:
        # A string cut before its closing quote (a cap, a split record) ends the value
        # where it ends, as a closing quote right there would.
        if escaped or len(text) - end > 255 or "\n" in text[end:] or text.endswith("\\"):
            return end
        return len(text)
    if "\n" in text[end:close] or (not escaped and text[close - 1] == "\\"):
        return end
    return close


def _with_quoted_end(hits: list[_Hit], hit: _Hit, text: str, grouped: bool) -> None:
    """The hit, and for a value a detector took from after a name (its group) the same
    value to its closing quote."""
    hits.append(hit)
    if not grouped:
        return
    end = _quoted_end(text, hit[0], hit[1])
    if end != hit[1]:
        hits.append((hit[0], end, hit[2], hit[3], hit[4]))


# (start, end, rank, kind, rule id)
_Hit = tuple[int, int, int, str, str]
OWN_RULES = "tracelake."  # rule ids of this module's detectors: "tracelake.<kind>"
_PLACEHOLDER = re.compile(r"\[REDACTED:[a-z0-9_]+\]")


def _detect(text: str, depth: int = 0) -> list[_Hit]:
    """Candidate spans from this module's detectors (where their screen fires), from
    the catalogue (where its screen fires) and from base64 runs that decode to text
    holding either (two layers deep); none inside a placeholder."""
    fired = _SECRET_SCREEN.which(text)
    hits = _own_hits(text, fired) if fired is None or fired else []
    if hits:
        hits = [h for h in hits if not documented(text[h[0] : h[1]])]
    if _catalogue_screen().hit(text):
        scanned = _masked(text, hits) if hits else text
        if scanned is text or _catalogue_screen().hit(scanned):
            rank = len(_COMPILED)
            hits.extend((f.start, f.end, rank, f.kind, f.rule) for f in catalogue.find(scanned))
    if depth < _BASE64_DEPTH:
        hits.extend(_encoded_hits(text, depth))
    if "\\" in text and depth < _BASE64_DEPTH:
        plain, origin = _unescaped(text)
        if plain != text:
            for start, end, rank, kind, rule in _detect(plain, depth + 1):
                hits.append((origin[start], origin[end], rank, kind, rule))
    if hits:
        hits = [h for h in hits if not documented(text[h[0] : h[1]])]
    if hits and "[REDACTED:" in text:
        taken = [m.span() for m in _PLACEHOLDER.finditer(text)]
        hits = [h for h in hits if all(h[1] <= s or h[0] >= e for s, e in taken)]
    return hits


def _masked(text: str, hits: list[_Hit]) -> str:
    """``text`` with what this module's detectors found blanked out (same length, so
    offsets hold): the catalogue's engine is asked only about what is left. Its call
    costs ~0.2 ms inside a run (its tables go cold between calls), and most texts its
    screen flags hold a secret a detector here has found already."""
    parts: list[str] = []
    last = 0
    for start, end in sorted((h[0], h[1]) for h in hits):
        if end <= last:
            continue
        start = max(start, last)
        parts.append(text[last:start])
        parts.append(_BLANK * (end - start))
        last = end
    parts.append(text[last:])
    return "".join(parts)


_BLANK = "\0"


# Base64 inside a string the screens already look at (a Kubernetes `data:` block, a
# `... | base64 -d`, a config value): decoded and scanned again, two layers deep. Where
# the decoded text holds a secret, the whole encoded run goes.
_BASE64_DEPTH = 2
_B64_RUN = re.compile(r"[A-Za-z0-9+/_-]{16,}={0,2}", re.ASCII)


def _decoded(run: str) -> str | None:
    """The text a base64 run encodes, or None when it is not base64 of text."""
    body = run.rstrip("=")
    if len(body) % 4 == 1:
        return None
    padded = body + "=" * (-len(body) % 4)
    try:
        raw = base64.urlsafe_b64decode(padded) if ("-" in body or "_" in body) else base64.b64decode(padded, validate=True)
        decoded = raw.decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    if len(decoded) < 6:
        return None
    printable = sum(1 for ch in decoded if ch.isprintable() or ch in "\n\r\t")
    return decoded if printable >= 0.95 * len(decoded) else None


def _encoded_hits(text: str, depth: int) -> list[_Hit]:
    hits: list[_Hit] = []
    for m in _B64_RUN.finditer(text):
        decoded = _decoded(m.group(0))
        if decoded is None:
            continue
        inner = _resolve(_detect(decoded, depth + 1))
        if inner:
            kind, _start, _end, rule = inner[0]
            hits.append((m.start(), m.end(), len(_COMPILED) + 1, "base64_" + kind, f"{OWN_RULES}base64/{rule}"))
    return hits


def _own_hits(text: str, fired: frozenset[int] | None = None) -> list[_Hit]:
    """Candidate spans (start, end, rank, kind, rule); one `re` pass per detector family,
    for the families ``fired`` names (their ranks; None: all). A long tool output that
    one family's screen flags costs that family's pass, not a hundred."""
    hits: list[_Hit] = []
    for comp in _RAW:
        if fired is not None and comp.rank not in fired:
            continue
        for m in _scan(comp.scan, text):
            hit = _accept(comp, text, m)
            if hit is not None:
                _with_quoted_end(hits, hit, text, comp.det.group > 0)
    low_fired = [c for c in _LOW if fired is None or c.rank in fired]
    if not low_fired:
        return hits
    low = text.lower()
    aligned = len(low) == len(text)  # lowercasing U+0130 adds a char; then scan directly
    for comp in low_fired:
        if aligned:
            found = [comp.exact.match(text, m.start()) for m in _scan(comp.scan, low)]
        else:
            found = [*_scan(comp.exact, text)]
        for match in found:
            if match is not None:
                hit = _accept(comp, text, match)
                if hit is not None:
                    _with_quoted_end(hits, hit, text, comp.det.group > 0)
    return hits


# Context-only kinds lose to a provider-specific match they overlap: `key=AIza...&q=1` is a
# Google key, not an opaque assignment, and the `&q=1` after it is kept.
_GENERIC = frozenset({
    "high_entropy_assignment", "bearer_token", "url_password", "kubernetes_secret_data", "cli_secret",
    "env_secret_value", "password_value", "kubernetes_secret_output", "config_secret", "cookie",
})


def _generic(kind: str) -> bool:
    return kind in _GENERIC or "generic" in kind


_URL_PARTS = frozenset({"url_password", "url_userinfo_token"})


def _keep_url_parts(hits: list[_Hit]) -> list[_Hit]:
    """A connection string whose password this module found keeps its scheme, user and
    host: the catalogue's whole-URI match around that password goes."""
    parts = [h for h in hits if h[3] in _URL_PARTS]
    if not parts:
        return hits
    def whole_uri(h: _Hit) -> bool:
        return (not h[4].startswith(OWN_RULES) and ("uri" in h[3] or "connection_string" in h[3])
                and any(h[0] <= p[0] and p[1] <= h[1] for p in parts))

    return [h for h in hits if not whole_uri(h)]


def _resolve(hits: list[_Hit]) -> list[tuple[str, int, int, str]]:
    """Non-overlapping (kind, start, end, rule) in text order.

    One span found by several detectors is labelled by the one listed first (this
    module's before the catalogue's: stable labels). Then specific kinds first, generic
    ones after; within each, leftmost, then longest, then the detector listed first.
    """
    hits = _keep_url_parts(hits)
    first: dict[tuple[int, int], _Hit] = {}
    for hit in sorted(set(hits), key=lambda h: (h[2], h[4])):
        first.setdefault((hit[0], hit[1]), hit)
    ordered = sorted(first.values(), key=lambda h: (_generic(h[3]), h[0], h[0] - h[1], h[2], h[4]))
    taken: list[tuple[str, int, int, str]] = []
    starts: list[int] = []  # the taken spans' starts and ends, in text order (they are disjoint)
    ends: list[int] = []
    for start, stop, _rank, kind, rule in ordered:
        if stop <= start:
            continue
        at = bisect.bisect_right(starts, start)
        if (at > 0 and ends[at - 1] > start) or (at < len(starts) and starts[at] < stop):
            continue  # overlaps the span before it or the one after
        starts.insert(at, start)
        ends.insert(at, stop)
        taken.append((kind, start, stop, rule))
    return sorted(taken, key=lambda t: t[1])


def _re2_may_match(texts: Sequence[str | None], pattern: str) -> list[bool]:
    """Which texts the RE2 superset pattern matches (False for None)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    mask = pc.match_substring_regex(pa.array(texts, type=pa.large_string()), pattern)
    return [bool(v) for v in mask.to_pylist()]


# Non-ASCII characters that case-fold or lowercase to ASCII letters (sharp s, dotted and
# dotless i, the long s, the Kelvin sign, ligatures...): a case-insensitive detector may
# match them where a byte-level ASCII scan would not, so the Hyperscan screen fires on
# any of them. A test recomputes this list from the Unicode tables.
ASCII_FOLDING = (
    "\u00df\u0130\u0131\u0149\u017f\u01f0\u1e96\u1e97\u1e98\u1e99\u1e9a\u1e9e\u212a"
    "\ufb00\ufb01\ufb02\ufb03\ufb04\ufb05\ufb06"
)


class _Screen:
    """One search that only answers "may match" (no captures, no positions), compiled
    on first use (a command that never redacts pays nothing for it).

    Hyperscan (a SIMD multi-pattern matcher, ~2x RE2 here: 0.11 s against 0.23 s for
    64 MB of record JSON in 98K calls) when its wheel is installed, compiled in
    prefilter mode: it may fire where the pattern would not, never the other way. It
    works on bytes without Unicode case folding, so any character that folds to ASCII
    fires it too. RE2 otherwise, or for a pattern Hyperscan refuses. ``extra`` holds
    more expressions (the catalogue's rule patterns), each its own Hyperscan expression
    and a branch of the RE2 union. ``in_bytes`` holds the same expressions (``pattern``
    first) as Hyperscan's byte mode must read them where that differs (this module's
    detectors count characters: ``text_superset``); RE2 always takes the others.
    """

    def __init__(self, pattern: str, extra: tuple[str, ...] = (), in_bytes: tuple[str, ...] | None = None,
                 byte_classes: bool = False) -> None:
        self.pattern = pattern
        self.extra = extra
        # Every expression is written for bytes (the JSON rewrite's classes list bytes up
        # to \xff): RE2 then reads the text as Latin-1, one character per byte, as
        # Hyperscan does; in UTF-8, [\x00-\xff] would not match a Japanese character.
        self.byte_classes = byte_classes
        if in_bytes is not None and len(in_bytes) != 1 + len(extra):
            raise ValueError("in_bytes holds the pattern and every extra expression")
        self.in_bytes = in_bytes if in_bytes is not None else (pattern, *extra)
        self._ready = False
        self._database: Any = None
        self._local = threading.local()
        self._compiled: Any = None
        self._regexp: Any = None
        self._unanchored: Any = None

    @property
    def engine(self) -> str:
        self.prepare()
        return "hyperscan" if self._database is not None else "re2"

    def prepare(self, cache_dir: Path | None = None, mac: CacheMac | None = None) -> None:
        """Compile now (before a fork, so that workers inherit it). With ``cache_dir``,
        the Hyperscan database is kept there between runs (compiling one costs ~45 ms,
        ~4 s with the catalogue's patterns; loading it nothing), keyed by its patterns
        and Hyperscan's version; with ``mac`` each file there carries a tag, and one
        without a valid tag is compiled again (a planted database that matches nothing
        would let every secret through)."""
        if self._ready:
            return
        if _hyperscan is not None:
            self._database = _hyperscan_database(self.in_bytes, cache_dir, mac)
        if self._database is None:
            self._compile_re2()
        self._ready = True

    def _compile_re2(self) -> None:
        """The RE2 form: the screen where Hyperscan is missing, and its reference. Only
        compiled when needed (with the catalogue's patterns it costs ~0.3 s)."""
        options = re2.Options()
        options.max_mem = 256 << 20  # room for the union's DFA; RE2 falls back to its NFA, never to "no"
        options.log_errors = False
        options.never_capture = True
        if self.byte_classes:
            options.encoding = re2.Options.Encoding.LATIN1
            self._compiled = re2.compile(_re2_union(self.pattern, self.extra, options, True).encode("utf-8"), options)
        else:
            self._compiled = re2.compile(_re2_union(self.pattern, self.extra, options), options)
        # The public search() spends ~1.5 µs of Python per call (offset bookkeeping for
        # match objects); the wrapped RE2 object answers the yes/no question directly.
        # Kept behind a fallback so a google-re2 without it still works, only slower.
        self._regexp = getattr(self._compiled, "_regexp", None)
        self._unanchored = getattr(getattr(re2, "_Anchor", None), "UNANCHORED", None)
        if self._regexp is None or self._unanchored is None:
            self._regexp = None

    def hit(self, text: str) -> bool:
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate cannot go to RE2: look with the detectors
            return True
        return self.hit_bytes(data)

    def _scratch(self) -> Any:
        """This thread's Hyperscan scratch space (one per thread), made on first use."""
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = _hyperscan.Scratch(self._database)
        return scratch

    def hit_bytes(self, data: bytes) -> bool:
        if not self._ready:
            self.prepare()
        if self._database is not None:
            try:
                self._database.scan(data, match_event_handler=_stop, scratch=self._scratch())
            except _hyperscan.ScanTerminated:
                return True
            return False
        if self._regexp is None:
            return self._compiled.search(data) is not None
        spans = self._regexp.Match(self._unanchored, data, 0, len(data))
        return bool(spans[0][0] >= 0)

    def verdict(self, data: bytes) -> int:
        """``hit_bytes`` told apart in one scan: ``CLEAN``; ``PATTERN_ONLY`` where only
        ``pattern`` may match; ``EXTRA`` where an ``extra`` expression (or a character
        folding to ASCII) may. RE2 cannot tell them apart: a hit is ``EXTRA`` there."""
        if not self._ready:
            self.prepare()
        if self._database is None:
            return EXTRA if self.hit_bytes(data) else CLEAN
        seen = [CLEAN]
        pattern_id = 0 if self.pattern != NEVER else -1

        def on_match(expression: int, *_args: Any) -> bool:
            if expression == pattern_id:
                seen[0] = PATTERN_ONLY
                return False  # read on: an extra expression may match further on
            seen[0] = EXTRA
            return True

        try:
            self._database.scan(data, match_event_handler=on_match, scratch=self._scratch())
        except _hyperscan.ScanTerminated:
            return EXTRA
        return seen[0]

    def which(self, text: str) -> frozenset[int] | None:
        """The indices of the ``extra`` expressions that may match ``text``, all of them
        in one scan (for a screen without ``pattern``); None where that cannot be told
        apart, so every one may: on RE2, for a lone surrogate (UTF-8 cannot hold it) and
        where a character folding to ASCII is present."""
        if self.pattern != NEVER:
            raise ValueError("which() is for a screen of extra expressions only")
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            return None
        if not self._ready:
            self.prepare()
        if self._database is None:
            return None if self.hit_bytes(data) else frozenset()
        found: set[int] = set()
        folding = len(self.extra)

        def on_match(expression: int, *_args: Any) -> bool:
            found.add(expression)
            return expression == folding  # stop: every family runs anyway

        try:
            self._database.scan(data, match_event_handler=on_match, scratch=self._scratch())
        except _hyperscan.ScanTerminated:
            return None
        return frozenset(found)

    def reference(self) -> _Screen:
        """The same screen on RE2 alone (what the Hyperscan screen must cover)."""
        twin = _Screen(self.pattern, self.extra, byte_classes=self.byte_classes)  # the forms RE2 takes
        twin._compile_re2()
        twin._ready = True
        return twin


# A branch no text matches: the screen of the catalogue alone has no pattern of ours.
NEVER = "(?!)"
# ``_Screen.verdict``'s answers.
CLEAN, PATTERN_ONLY, EXTRA = 0, 1, 2


def _re2_union(pattern: str, extra: tuple[str, ...], options: Any, as_bytes: bool = False) -> str:
    """``pattern`` and every extra expression RE2 takes (one catalogue pattern of 488
    uses a construct RE2 lacks: RE2 screens only where Hyperscan is not installed)."""
    parts = [pattern] if pattern != NEVER else []
    for expression in extra:
        try:
            re2.compile(expression.encode("utf-8") if as_bytes else expression, options)
        except Exception:  # google-re2 raises its own error type
            continue
        parts.append(f"(?:{expression})")
    return "|".join(parts) if parts else r"\b\B"  # RE2 for "never"


# Screens compiled by the build (``python -m pipeline.collect.native build``), read-only;
# a run looks here before its own cache.
PRECOMPILED_SCREENS = PACKAGE_DIR / "_screens"


def _hyperscan_database(
    expressions: tuple[str, ...], cache_dir: Path | None, mac: CacheMac | None = None
) -> Any:
    """The compiled screen, loaded when the build or an earlier run compiled it (into
    ``PRECOMPILED_SCREENS``, part of the installation, or ``cache_dir``, whose files must
    carry ``mac``'s tag when one is given); None when Hyperscan refuses a pattern."""
    folding = "|".join(re.escape(c) for c in ASCII_FOLDING)
    encoded = [e.encode() for e in (*expressions, folding) if e != NEVER]
    flags = _hyperscan.HS_FLAG_SINGLEMATCH | _hyperscan.HS_FLAG_PREFILTER
    version = getattr(_hyperscan, "__version__", "?")
    name = hashlib.sha256(b"\0".join([*encoded, b"%d" % flags, version.encode()])).hexdigest()[:32] + ".hsdb"
    for folder, tagged in ((PRECOMPILED_SCREENS, False), (cache_dir, mac is not None)):
        if folder is None or not (folder / name).exists():
            continue
        try:
            data = (folder / name).read_bytes()
            if tagged:
                assert mac is not None
                data, tag = data[: -CacheMac.SIZE], data[-CacheMac.SIZE:]
                if not mac.same(tag, mac.tag(data)):
                    continue
            return _hyperscan.loadb(data, _hyperscan.HS_MODE_BLOCK)
        except (OSError, _hyperscan.error):  # torn, or built for another CPU: compile again
            continue
    database = _hyperscan.Database()
    try:
        database.compile(expressions=encoded, ids=list(range(len(encoded))), flags=[flags] * len(encoded))
    except _hyperscan.error:
        return None
    if cache_dir is not None:
        with contextlib.suppress(OSError, _hyperscan.error):
            cache_dir.mkdir(parents=True, exist_ok=True)
            data = _hyperscan.dumpb(database)
            if mac is not None:
                data += mac.tag(data)
            temp = cache_dir / f".tmp-{name}.{os.getpid()}"
            temp.write_bytes(data)
            temp.replace(cache_dir / name)  # atomic: a reader sees the whole database or none
    return database


def _stop(*_args: Any) -> bool:
    """Hyperscan match callback: the first match answers the question."""
    return True


# One expression per detector (its rank is its id): ``which`` tells the families to run.
_SECRET_SCREEN = _Screen(NEVER, _SECRET_RE2_FORMS, (NEVER, *_SECRET_IN_BYTES))
_CLEAN_MAX_LEN = 64
_CLEAN_MAX_SIZE = 1 << 16


@lru_cache(maxsize=1)
def _catalogue_screen() -> _Screen:
    """Where the catalogue may find something: its rules' own patterns (prefilter)."""
    return _Screen(NEVER, _catalogue_patterns())


@lru_cache(maxsize=16)
def _screen_for(home_marks: tuple[str, ...], json: bool = False) -> _Screen:
    """Secrets (this module's and the catalogue's) or any home mark, in text or (``json``)
    in orjson's JSON text, at any depth (``_json_secrets``: its patterns the rewrite left
    are not in here).

    Cached because a worker makes one Redactor per file.
    """
    if json:
        marks = [re.escape(orjson.dumps(m).decode("utf-8")[1:-1]) for m in home_marks]
        return _Screen("|".join(marks) if marks else NEVER, _json_secrets().rewritten.extra, byte_classes=True)
    return _secret_text_screen([re.escape(m) for m in home_marks], _catalogue_patterns())


class _JsonSecrets:
    """Where a string inside a record's JSON text may hold a secret (this module's or the
    catalogue's), in one scan of that text: each pattern rewritten by ``json_superset``.
    A pattern it cannot rewrite is screened on ``relaxed_all`` JSON, as before the
    rewrite (a copy of the record and a second scan: none of today's patterns needs it).
    """

    def __init__(self, rewritten: Sequence[str], left: Sequence[str]) -> None:
        self.rewritten = _Screen(NEVER, tuple(rewritten), byte_classes=True)
        self.left = _Screen(NEVER, tuple(left)) if left else None

    @classmethod
    def of(cls, patterns: Sequence[str], saved: Path | None = None) -> _JsonSecrets:
        """Rewritten here (~0.15 s for the catalogue), or read from ``saved`` where the
        build wrote them for these patterns and this rewriter."""
        name = _rewrites_name(patterns)
        if saved is not None:
            with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
                listed = orjson.loads((saved / name).read_bytes())
                rewritten, left = listed["rewritten"], listed["left"]
                if all(isinstance(p, str) for p in [*rewritten, *left]):
                    return cls(rewritten, left)
        rewritten, left = [], []
        for pattern in patterns:
            superset = json_superset(pattern)
            if superset is None:
                left.append(pattern)
            else:
                rewritten.append(superset)
        return cls(rewritten, left)

    def save(self, folder: Path, patterns: Sequence[str]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        listed = {"rewritten": list(self.rewritten.extra), "left": list(self.left.extra if self.left else ())}
        (folder / _rewrites_name(patterns)).write_bytes(orjson.dumps(listed))

    def screens(self) -> tuple[_Screen, ...]:
        return (self.rewritten,) if self.left is None else (self.rewritten, self.left)

    def hit_bytes(self, data: bytes) -> bool:
        if self.rewritten.hit_bytes(data):
            return True
        return self.left is not None and self.left.hit_bytes(relaxed_all(data))


def _rewrites_name(patterns: Sequence[str]) -> str:
    """Keyed by the patterns and by the rewriter's own source."""
    digest = hashlib.sha256(Path(json_superset_module.__file__).read_bytes())
    for pattern in patterns:
        digest.update(b"\0" + pattern.encode("utf-8", "surrogatepass"))
    return f"json-{digest.hexdigest()[:32]}.json"


def _json_secret_patterns() -> list[str]:
    return [*(_hyperscan_alternative(d) for d in _DETECTORS), *_catalogue_patterns()]


@lru_cache(maxsize=1)
def _json_secrets() -> _JsonSecrets:
    return _JsonSecrets.of(_json_secret_patterns(), PRECOMPILED_SCREENS)


def save_json_secrets(folder: Path) -> None:
    """Write the rewritten patterns into ``folder`` (the build does, beside the screens)."""
    patterns = _json_secret_patterns()
    _JsonSecrets.of(patterns).save(folder, patterns)


def _catalogue_patterns() -> tuple[str, ...]:
    return catalogue.screen_patterns(PRECOMPILED_SCREENS)


def relaxed(data: bytes) -> bytes:
    """orjson's JSON text with the escapes it writes inside strings undone (``\\"``,
    ``\\\\``, ``\\n``, ``\\t``, ``\\r``): every string's text then stands in it as is, so
    a pattern written for plain text (the catalogue's: word boundaries, quotes, spaces)
    matches it wherever it matches a string inside."""
    if b"\\" not in data:
        return data
    parts = data.split(b"\\\\")
    for i, part in enumerate(parts):
        if b"\\" in part:
            parts[i] = (part.replace(b'\\"', b'"').replace(b"\\n", b"\n")
                        .replace(b"\\t", b"\t").replace(b"\\r", b"\r"))
    return b"\\".join(parts)


def relaxed_all(data: bytes) -> bytes:
    """``relaxed`` until nothing changes (JSON text inside a JSON string inside a record:
    Codex keeps tool output as JSON text), at most three levels."""
    for _ in range(3):
        plain = relaxed(data)
        if plain is data or plain == data:
            return plain
        data = plain
    return data


def _loosened(text: str) -> str:
    """A string's JSON escapes undone, roughly (for screening only: ``_unescaped`` is
    the exact form): a string that holds JSON text still shows its secrets."""
    if "\\u" in text:
        return _unescaped(text)[0]
    return (text.replace('\\"', '"').replace("\\n", "\n").replace("\\t", "\t")
            .replace("\\r", "\r").replace("\\/", "/").replace("\\\\", "\\"))


_ESCAPED = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _unescaped(text: str) -> tuple[str, list[int]]:
    """``text`` with JSON escapes undone, and where each character came from: a string
    holding JSON text (escaped quotes, ``\\n``, ``\\u0041``) is scanned as what it says,
    and a span found there maps back onto the escaped original."""
    out: list[str] = []
    origin: list[int] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\" and i + 1 < n:
            nxt = text[i + 1]
            if nxt in _ESCAPED:
                out.append(_ESCAPED[nxt])
                origin.append(i)
                i += 2
                continue
            if nxt == "u" and i + 5 < n and _HEX4.fullmatch(text, i + 2, i + 6):
                out.append(chr(int(text[i + 2 : i + 6], 16)))
                origin.append(i)
                i += 6
                continue
        out.append(ch)
        origin.append(i)
        i += 1
    origin.append(n)
    return "".join(out), origin


_HEX4 = re.compile(r"[0-9a-fA-F]{4}", re.ASCII)


@lru_cache(maxsize=1)
def _secrets_screen() -> _Screen:
    """This module's detectors and the catalogue, no home marks: one pass."""
    return _secret_text_screen([], _catalogue_patterns())


def hyperscan_available() -> bool:
    """Whether screens run on Hyperscan here (its wheel exists for x86-64 only)."""
    return _hyperscan is not None


def prepare_screens(fold_home: bool = True, cache_dir: Path | None = None, mac: CacheMac | None = None) -> None:
    """Compile the screens a collect worker uses (see ``_Screen.prepare``), before workers
    fork. The catalogue's rules are not loaded here: a worker loads them when a screen
    first flags a string (``catalogue.find``)."""
    redactor = Redactor(fold_home=fold_home)
    for screen in (_SECRET_SCREEN, _catalogue_screen(), _secrets_screen(), *_json_secrets().screens(),
                   redactor._screen, redactor._json_screen):
        screen.prepare(cache_dir, mac)


def find_secrets(text: str) -> list[tuple[str, int, int]]:
    """(kind, start, end) of every secret, non-overlapping and in order; placeholders never match."""
    return [(kind, start, end) for kind, start, end, _rule in find_secret_rules(text)]


def find_secret_rules(text: str) -> list[tuple[str, int, int, str]]:
    """``find_secrets`` with the id of the rule that found each secret."""
    if len(text) < _MIN_LEN:
        return []
    return _resolve(_detect(text))


def _splice(
    text: str, spans: Sequence[tuple[str, int, int, str]], counts: Counter[str], rules: Counter[str]
) -> str:
    parts: list[str] = []
    last = 0
    for kind, start, end, rule in spans:
        parts.append(text[last:start])
        parts.append(placeholder(kind))
        counts[kind] += 1
        rules[rule] += 1
        last = end
    parts.append(text[last:])
    return "".join(parts)


# Generic home directories. The user name is kept out of the lake; the rest of the path stays.
# Each with a substring every match contains, checked first (`in` is far cheaper than `re`).
_HOME_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("/home/", re.compile(r"/home/[A-Za-z0-9._-]+", re.ASCII)),
    ("/Users/", re.compile(r"/Users/[A-Za-z0-9._-]+", re.ASCII)),
    ("\\Users\\", re.compile(r"\\(?:\\)?Users\\{1,2}[A-Za-z0-9._-]+", re.ASCII)),
)
_HOME_MARKS = tuple(mark for mark, _ in _HOME_PATTERNS)
_HOME_RE2 = r"/home/[A-Za-z0-9._-]|/Users/[A-Za-z0-9._-]|\\Users\\"
_NOT_HOMES = frozenset({"Shared", "Public", "Default"})
_DRIVE = re.compile(r"[A-Za-z]:", re.ASCII)
_JSON_SPECIAL = re.compile(r'["\\\x00-\x1f]')
# The same tables for folding on JSON bytes (``_fold_json``): POSIX patterns only.
_HOME_PATTERNS_JSON: tuple[tuple[bytes, re.Pattern[bytes]], ...] = (
    (b"/home/", re.compile(rb"/home/([A-Za-z0-9._-]+)")),
    (b"/Users/", re.compile(rb"/Users/([A-Za-z0-9._-]+)")),
)
_NOT_HOMES_JSON = frozenset(n.encode() for n in _NOT_HOMES)
# ``_HOME_PATTERNS_JSON`` with ``_home_span_json``'s boundary test written into the
# pattern (after the leading slash, so ``re`` can skip ahead to it), for the cases that
# need no counting of backslash runs: a preceding character
# that is neither a path character, a colon (drive letters) nor a backslash, or an escape
# (``\\n``, ``\\u001b``) whose backslash follows no other backslash. Anything else is
# left unfolded here (the caller's screen then sees the mark and takes the exact path).
_FAST_HOMES_JSON = re.compile(
    rb"/(?:(?<![A-Za-z0-9_.~:\\-]/)|(?<=(?<!\\)\\[ntrbf\"]/)|(?<=(?<!\\)\\u00[0-9a-fA-F]{2}/))"
    rb"(?:home|Users)/(?!(?:Shared|Public|Default)(?![A-Za-z0-9._-]))[A-Za-z0-9._-]+"
)
_LETTER_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_PATH_BYTES = frozenset(map(ord, _PATH_CHARS))
_NAME_BYTES = frozenset(map(ord, _NAME_CHARS))
_COLON, _U, _BACKSLASH = ord(":"), ord("u"), ord("\\")


def _home_literals(home_dirs: Sequence[str] | None) -> tuple[str, ...]:
    """Real home directories, longest first; '/' and empty are never folded."""
    dirs = [str(Path.home())] if home_dirs is None else [str(h) for h in home_dirs]
    out: set[str] = set()
    for d in dirs:
        d = d.rstrip("/\\")
        if len(d) < 2:
            continue
        out.add(d)
        if "\\" in d:
            out.add(d.replace("\\", "\\\\"))
    return tuple(sorted(out, key=lambda s: (-len(s), s)))


def _secret_may(text: str) -> bool:
    """Whether this module's detectors or the catalogue may find a secret in ``text``
    (or in what it says, when it holds escaped JSON text)."""
    screen = _secrets_screen()
    return screen.hit(text) or ("\\" in text and screen.hit(_loosened(text)))


class Redactor:
    """Redacts secrets (and folds home directories) and counts what it did, by kind
    (``counts``, the placeholder labels, home folds included) and by rule (``rules``).

    One instance per stage run: the counts accumulate over every call, so a stage can
    put the totals in its receipt without ever seeing a value.
    """

    def __init__(self, fold_home: bool = True, home_dirs: Sequence[str] | None = None) -> None:
        self.fold_home = fold_home
        self.counts: Counter[str] = Counter()
        self.rules: Counter[str] = Counter()
        self._homes = _home_literals(home_dirs) if fold_home else ()
        re2_parts = [_SECRET_RE2]
        if fold_home:
            re2_parts.append(_HOME_RE2)
            re2_parts.extend(re.escape(h) for h in self._homes)
        self._re2 = "|".join(re2_parts)
        self._min_len = min([_MIN_LEN, *(len(h) for h in self._homes)])
        # Every home fold needs one of these substrings (the patterns' literal parts).
        self._home_marks = (*_HOME_MARKS, *self._homes) if fold_home else ()
        self._screen = _screen_for(self._home_marks)
        self._json_screen = _screen_for(self._home_marks, json=True)
        # The JSON-text fold assumes a home spells the same in a string and in its JSON.
        self._json_fold = fold_home and all(
            h.startswith("/") and _JSON_SPECIAL.search(h) is None for h in self._homes
        )
        self._homes_json = tuple(h.encode("utf-8") for h in self._homes)
        self._clean: set[str] = set()

    def redact(self, text: str) -> str:
        """The text with every secret replaced by its placeholder; idempotent.

        The common case costs one RE2 screen (secrets or homes); a string with a home and
        no secret costs the fold and a second screen. Both return what ``_redact_all``
        would: with the secret screen silent on the folded text the detectors find nothing
        there, and a fold that is already stable ends the loop. Short strings found clean
        (dict keys, tool names, ids: the same few again and again) are remembered, since
        a clean string redacts to itself and counts nothing.
        """
        if len(text) < self._min_len or text in self._clean:
            return text
        if not self._screen.hit(text) and not ("\\" in text and self._screen.hit(_loosened(text))):
            if len(text) <= _CLEAN_MAX_LEN:
                if len(self._clean) >= _CLEAN_MAX_SIZE:
                    self._clean.clear()
                self._clean.add(text)
            return text
        folded, folds = self._fold_count(text)
        if folds == 0 or _secret_may(text) or _secret_may(folded) or self._fold_count(folded)[1]:
            return self._redact_all(text)
        self.counts[HOME_KIND] += folds
        return folded

    def _redact_all(self, text: str) -> str:
        # Replacing a secret or folding a home can change what the neighbours look like
        # (a boundary appears), so repeat until a full round changes nothing. The RE2
        # screen (a superset of the detectors) spares the detectors' ~20 passes where it
        # is silent: on the text left once the secrets are replaced, typically.
        # Secrets are looked for before homes are folded too: a fold can break a
        # secret's shape (with HOME=/root, `mysql://root:pw@db` folds to `mysql:/~:pw@db`).
        fold = self._fold if self.fold_home else _same
        for _ in range(8):
            spans = _resolve(_detect(text))
            if spans:
                text = _splice(text, spans, self.counts, self.rules)
                continue
            refolded = fold(text)
            if refolded is text:
                return text
            text = refolded
        return text

    def redact_revealed(self, obj: Any) -> Any:
        """The output of a command that prints a secret (``reveals_secret``): every
        value in it goes, whatever it looks like, since the command said what it is.
        The command and its output are separate records (a tool call and its result), so
        the detector that reads both in one text never sees them together."""
        if isinstance(obj, str):
            text = self.redact(obj)
            spans = [(_REVEALED_KIND, m.start(), m.end(), OWN_RULES + _REVEALED_KIND)
                     for m in _REVEALED_VALUE.finditer(text) if _PLACEHOLDER.fullmatch(m.group(0)) is None]
            return _splice(text, spans, self.counts, self.rules) if spans else text
        if isinstance(obj, dict):  # a block: its payload goes, its structure (`type`, ids) stays
            return {self.redact(k) if isinstance(k, str) else k:
                    self.redact_revealed(v) if k in _REVEALED_FIELDS else self.redact_obj(v)
                    for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [self.redact_revealed(v) for v in obj]
        return obj

    def redact_obj(self, obj: Any) -> Any:
        """A JSON-like value with every string redacted, dict keys included.

        Copy on write: a container in which nothing changed is returned as is, so the
        common clean record allocates nothing.
        """
        return self.redact_json(obj)[0]

    def redact_json(self, obj: Any) -> tuple[Any, bytes | None]:
        """``(redact_obj(obj), its canonical JSON)``; the JSON is None when not at hand.

        A container is first serialised (orjson, sorted keys: the form the lake stores)
        and screened once as a whole; only when the screen fires are its strings walked
        one by one. The JSON screen matches wherever the per-string screen matches on a
        string inside, so a silent screen means no string would change.
        """
        if isinstance(obj, str):
            return self.redact(obj), None
        if not isinstance(obj, dict | list | tuple):
            return obj, None
        try:
            data: bytes | None = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
        except TypeError as error:  # beyond orjson (an int over 64 bits, a lone surrogate): walk
            check_depth(error)  # ...but never a walk 255 levels down
            data = None
        if data is not None:
            verdict = self._json_verdict(data)
            if verdict == CLEAN:
                # An exact-size copy: orjson's bytes keep the buffer it reserved for the
                # worst case (~10x the text for long strings), and callers keep these.
                return obj, bytes(memoryview(data))
            if verdict == PATTERN_ONLY and self._json_fold:  # homes, no secret
                folded = self._fold_json(data)
                if folded is not None:
                    return folded
        out = self._redact_list(list(obj)) if isinstance(obj, tuple) else self._walk(obj)
        return out, bytes(memoryview(data)) if out is obj and data is not None else None

    def _json_verdict(self, data: bytes) -> int:
        """Whether a string inside this orjson text (at any depth of JSON text inside
        strings) may hold a secret (``EXTRA``), only a home (``PATTERN_ONLY``) or
        neither (``CLEAN``): one scan."""
        verdict = self._json_screen.verdict(data)
        if verdict != EXTRA:
            left = _json_secrets().left
            if left is not None and left.hit_bytes(relaxed_all(data)):
                return EXTRA
        return verdict

    def _json_may(self, data: bytes) -> bool:
        return self._json_verdict(data) != CLEAN

    def _fold_json(self, data: bytes) -> tuple[Any, bytes] | None:
        """Fold homes on a record's JSON text: ``(walked value, its JSON)`` as the
        per-string walk would give them, or None where that is not certain.

        Only for a record whose screen found homes and no possible secret (a fold can
        hide a secret's shape: ``mysql://root:pw@db`` with HOME=/root). Then a screen
        silent on the folded JSON means every string redacts to its folded self.

        Works on the UTF-8 bytes (no decode, no re-encode). A home match holds only
        literal ASCII characters (no quote, backslash or control character), so it is the
        same match in the string and in its JSON text; only the characters before it (the
        boundary and drive-letter checks) may be the end of an escape, and those are read
        as the escaped character. A Windows home (backslashes mean two things here), a
        fold leaving a mark the screen still fires on, or a folded dict key that reorders
        or merges keys (the re-serialisation check) send the record to the walk.
        """
        if b"Users\\\\" in data:
            return None
        folded, folds = self._fold_json_fast(data)
        if folds == 0 or self._json_may(folded):
            spans = self._json_home_spans(data)
            if not spans:
                return None
            parts: list[bytes] = []
            last = 0
            for start, end in spans:
                parts.append(data[last:start])
                parts.append(b"~")
                last = end
            parts.append(data[last:])
            folded, folds = b"".join(parts), len(spans)
            if self._json_may(folded):
                return None
        value = orjson.loads(folded)
        if orjson.dumps(value, option=orjson.OPT_SORT_KEYS) != folded:
            return None
        self.counts[HOME_KIND] += folds
        return value, folded

    def _fold_json_fast(self, data: bytes) -> tuple[bytes, int]:
        """The common folds in one C-level pass: matches whose boundary needs no reading
        of escape runs (see ``_FAST_HOMES_JSON``). It may leave folds undone, never make
        one ``_json_home_spans`` would not: ``(data, 0)`` where a drive letter or a
        literal home could be involved."""
        if b":/home/" in data or b":/Users/" in data or any(h in data for h in self._homes_json):
            return data, 0
        return _FAST_HOMES_JSON.subn(b"~", data)

    def _json_home_spans(self, data: bytes) -> list[tuple[int, int]]:
        """``_home_spans`` on JSON text bytes, POSIX homes only (see ``_fold_json``)."""
        spans: list[tuple[int, int]] = []
        for home in self._homes_json:
            pos = data.find(home)
            while pos != -1:
                end = pos + len(home)
                if end >= len(data) or data[end] not in _NAME_BYTES:
                    spans.append(_home_span_json(data, pos, end))
                pos = data.find(home, pos + 1)
        for mark, pattern in _HOME_PATTERNS_JSON:
            if mark not in data:
                continue
            for m in pattern.finditer(data):
                if m.group(1) not in _NOT_HOMES_JSON:
                    spans.append(_home_span_json(data, m.start(), m.end()))
        return _disjoint(spans)

    def _walk(self, obj: Any) -> Any:
        if isinstance(obj, str):
            return self.redact(obj)
        if isinstance(obj, dict):
            return self._redact_dict(obj)
        if isinstance(obj, list):
            return self._redact_list(obj)
        if isinstance(obj, tuple):
            return self._redact_list(list(obj))
        return obj

    def _redact_dict(self, obj: dict[Any, Any]) -> dict[Any, Any]:
        redact, walk = self.redact, self._walk
        changed = False
        items = []
        pair = _pair_kind(obj)
        for key, value in obj.items():
            new_key = redact(key) if isinstance(key, str) else key
            named = _named_kind(key) if isinstance(key, str) else None
            if named is None and key == "value":
                named = pair
            new_value: Any
            if isinstance(value, str):
                new_value = redact(value)
                if new_value is value and named is not None:
                    new_value = self._named_value(named, value)
            elif isinstance(value, list) and named is not None:
                walked = walk(value)  # `{"auth": ["bob", "<password>"]}`: each string as named
                named_list = [self._named_value(named, v) if isinstance(v, str) and v is o else v
                              for v, o in zip(walked, value, strict=True)]
                same = all(a is b for a, b in zip(named_list, value, strict=True))
                new_value = value if same else named_list
            elif value is None or isinstance(value, bool | int | float):
                new_value = value
            else:
                new_value = walk(value)
            changed = changed or new_key is not key or new_value is not value
            items.append((new_key, new_value))
        return dict(items) if changed else obj

    def _named_value(self, kind: str, value: str) -> str:
        """A string under a key that names a secret (`{"password": "..."}` in an MCP
        tool call's input; ``kind`` is ``_named_kind`` of the key): the key and the value
        are separate strings, so neither alone says what the value is. The whole value is
        judged as what the key names (a password may hold `;` or `(` anywhere), and goes
        whole."""
        m = _WHOLE.match(value)
        if m is None or len(value) < 8 or "\n" in value:
            return value
        if kind == "password":
            secret = _password(value, m)
        elif kind == "cookie":
            secret = _cookie(value, m)
        else:
            secret = _assignment(value, m) and not _relative_path(value)  # a UUID under `apiKey` is one
        if not secret:
            return value
        label = "cookie" if kind == "cookie" else "high_entropy_assignment"
        self.counts[label] += 1
        self.rules[OWN_RULES + label] += 1
        return placeholder(label)

    def _redact_list(self, obj: list[Any]) -> list[Any]:
        out = [self._walk(v) for v in obj]
        if all(a is b for a, b in zip(out, obj, strict=True)):
            return obj
        return out

    def redact_many(self, texts: Sequence[str | None]) -> list[str | None]:
        """Redact a column: one RE2 pass (pyarrow) over all rows picks the rows to look at.

        The RE2 pattern is the union of every detector without its validators, so a row it
        rejects cannot hold a match; the result equals ``[redact(t) for t in texts]``.
        """
        if not texts:
            return []
        out = list(texts)
        screen = _catalogue_screen()
        for i, maybe in enumerate(_re2_may_match(texts, self._re2)):
            text = texts[i]
            if text is not None and (maybe or screen.hit(text)):
                out[i] = self._redact_all(text)
        return out

    def _fold(self, text: str) -> str:
        """Home directories to `~` (counted); returns `text` itself when nothing changed."""
        folded, folds = self._fold_count(text)
        if folds:
            self.counts[HOME_KIND] += folds
        return folded

    def _fold_count(self, text: str) -> tuple[str, int]:
        """(text with home directories as `~`, folds made); `text` itself when none."""
        spans = self._home_spans(text)
        if not spans:
            return text, 0
        return _apply_folds(text, spans), len(spans)

    def _home_spans(self, text: str) -> list[tuple[int, int]]:
        """The (start, end) of each home to fold, in order and non-overlapping."""
        if not any(mark in text for mark in self._home_marks):
            return []
        spans: list[tuple[int, int]] = []
        for home in self._homes:
            if home not in text:
                continue
            pos = text.find(home)
            while pos != -1:
                end = pos + len(home)
                if end >= len(text) or text[end] not in _NAME_CHARS:
                    spans.append(_home_span(text, pos, end))
                pos = text.find(home, pos + 1)
        for mark, pattern in _HOME_PATTERNS:
            if mark not in text:
                continue
            for m in pattern.finditer(text):
                name = m.group(0).replace("\\", "/").rsplit("/", 1)[-1]
                if name not in _NOT_HOMES:
                    spans.append(_home_span(text, m.start(), m.end()))
        return _disjoint(spans)


def _disjoint(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Fold spans in text order, longest first at a tie; drop rejected (-1) spans and those
    inside an earlier fold."""
    if len(spans) > 1:
        spans.sort(key=lambda s: (s[0], -s[1]))
    out: list[tuple[int, int]] = []
    last = 0
    for start, end in spans:
        if start < last:
            continue
        out.append((start, end))
        last = end
    return out


def _apply_folds(text: str, spans: list[tuple[int, int]]) -> str:
    parts: list[str] = []
    last = 0
    for start, end in spans:
        parts.append(text[last:start])
        parts.append("~")
        last = end
    parts.append(text[last:])
    return "".join(parts)


def _same(text: str) -> str:
    return text


def _home_span(text: str, start: int, end: int) -> tuple[int, int]:
    """Widen to a drive letter; a path that continues another path is not a home (-1)."""
    if start >= 2 and _DRIVE.fullmatch(text, start - 2, start):
        start -= 2
    if start > 0 and text[start - 1] in _PATH_CHARS:
        return (-1, end)
    return (start, end)


def _home_span_json(data: bytes, start: int, end: int) -> tuple[int, int]:
    """``_home_span`` on a string's JSON bytes: a character ending an escape (``\\n``,
    ``\\u001b``) is the control character it stands for, neither a drive letter nor a path
    character. Bytes of multi-byte characters are never ASCII, as those are neither."""
    if (
        start >= 2 and data[start - 1] == _COLON and data[start - 2] in _LETTER_BYTES
        and not _ends_escape(data, start - 1)
    ):
        start -= 2
    if start > 0 and data[start - 1] in _PATH_BYTES and not _ends_escape(data, start):
        return (-1, end)
    return (start, end)


def _ends_escape(data: bytes, pos: int) -> bool:
    """Whether ``data[pos - 1]`` ends a JSON escape (``\\X`` or ``\\u00XX``): its lead
    backslash closes an odd run (after an even run it is an escaped backslash, and what
    follows is a literal)."""
    if _odd_backslashes(data, pos - 2):
        return True
    return pos >= 6 and data[pos - 5] == _U and _odd_backslashes(data, pos - 6)


def _odd_backslashes(data: bytes, last: int) -> bool:
    """Whether the run of backslashes ending at ``data[last]`` is odd (an escape's lead)."""
    n = 0
    while last >= 0 and data[last] == _BACKSLASH:
        n += 1
        last -= 1
    return n % 2 == 1
