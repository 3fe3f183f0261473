"""Positive corpus: fake credentials in each provider's documented shape, in realistic context.

Why: redaction recall can only be measured against secrets it was not written for. Every
body is drawn from ``random.Random(seed)`` (never a real key, never a published example
key), shaped like the token the provider issues (prefix, length, alphabet), and embedded
the way an agent log shows it: an ``export``, a ``.env`` line, JSON or YAML config, a
connection string, a curl header, a CLI argument, a Kubernetes Secret, a PEM file.

``Credential.secret`` is the exact substring that must never reach any output;
``Credential.context`` is the text to plant, and always contains ``secret``. Where a
secret sits inside JSON text in its context (a GCP key file), ``secret`` is written as it
appears there (``\\n`` escapes), since that is the byte sequence a leak would show.
"""

from __future__ import annotations

import base64
import json
import random
import string
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

UPPER = string.ascii_uppercase
LOWER = string.ascii_lowercase
DIGITS = string.digits
LETTERS = UPPER + LOWER
ALNUM = LETTERS + DIGITS
HEX = "0123456789abcdef"
HEX_UP = "0123456789ABCDEF"
B64 = ALNUM + "+/"
URLSAFE = ALNUM + "-_"
BASE32 = UPPER + "234567"
BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
UPPER_ALNUM = UPPER + DIGITS
LOWER_ALNUM = LOWER + DIGITS

USERS = ("alice", "bob", "carol", "dmitri", "farah", "hiro", "deploy", "ci-bot")


@dataclass(frozen=True)
class Credential:
    """One planted secret: ``secret`` must never appear in output; ``context`` embeds it."""

    provider: str
    kind: str
    secret: str
    context: str


# ---------------------------------------------------------------------------------------
# Random bodies.


def rand(rng: random.Random, alphabet: str, n: int) -> str:
    """``n`` characters of ``alphabet``; resampled until every character class the
    alphabet offers (upper, lower, digit) occurs, so bodies look like real random tokens."""
    classes = [c for c in (UPPER, LOWER, DIGITS) if set(c) & set(alphabet)]
    while True:
        s = "".join(rng.choices(alphabet, k=n))
        if n < 12 or all(any(ch in cls for ch in s) for cls in classes):
            return s


def digits(rng: random.Random, n: int) -> str:
    return str(rng.randint(10 ** (n - 1), 10**n - 1))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


def password(rng: random.Random, n: int = 20, slash: bool = False) -> str:
    """A strong random password. Symbols are limited to ones that survive unquoted in
    shell, URL userinfo and YAML; ``slash`` forces a ``/`` inside (URL parsers trip on it)."""
    alphabet = ALNUM + "-_.~!*+="
    while True:
        s = rand(rng, alphabet, n)
        if not any(ch in s for ch in "-_.~!*+="):
            continue
        if slash:
            i = rng.randint(3, n - 3)
            s = s[:i] + "/" + s[i + 1:]
        return s


def _base62(value: int, width: int) -> str:
    alphabet = DIGITS + UPPER + LOWER
    out = ""
    while value:
        value, r = divmod(value, 62)
        out = alphabet[r] + out
    return out.rjust(width, "0")


def github(rng: random.Random, prefix: str) -> str:
    """GitHub's 2021 format: prefix, 30 random base62, then a 6-char base62 CRC32."""
    body = rand(rng, ALNUM, 30)
    return prefix + body + _base62(zlib.crc32(body.encode()), 6)


def jwt(rng: random.Random, payload: dict[str, object], alg: str = "HS256") -> str:
    head = b64url(json.dumps({"alg": alg, "typ": "JWT"}, separators=(",", ":")).encode())
    body = b64url(json.dumps(payload, separators=(",", ":")).encode())
    sig = b64url(rng.randbytes(256 if alg.startswith("RS") else 32))
    return f"{head}.{body}.{sig}"


def _iat(rng: random.Random) -> int:
    return 1_767_225_600 + rng.randint(0, 90 * 86_400)


def pem(rng: random.Random, label: str, der_prefix: bytes, size: int, width: int = 64) -> str:
    """A PEM block whose DER starts like the real structure and is random after it."""
    der = der_prefix + rng.randbytes(size - len(der_prefix))
    text = base64.b64encode(der).decode()
    lines = [text[i:i + width] for i in range(0, len(text), width)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----"


RSA_PKCS1 = bytes.fromhex("308204a40201000282010100")
RSA_PKCS8 = bytes.fromhex("308204be020100300d06092a864886f70d0101010500048204a8308204a40201000282010100")
EC_SEC1 = bytes.fromhex("30770201010420")
OPENSSH_ED25519 = (b"openssh-key-v1\x00\x00\x00\x00\x04none\x00\x00\x00\x04none\x00\x00\x00\x00"
                   b"\x00\x00\x00\x01\x00\x00\x003\x00\x00\x00\x0bssh-ed25519\x00\x00\x00 ")


def rsa_key(rng: random.Random) -> str:
    return pem(rng, "RSA PRIVATE KEY", RSA_PKCS1, 1192)


def pkcs8_key(rng: random.Random) -> str:
    return pem(rng, "PRIVATE KEY", RSA_PKCS8, 1218)


def ec_key(rng: random.Random) -> str:
    return pem(rng, "EC PRIVATE KEY", EC_SEC1, 121)


def openssh_key(rng: random.Random) -> str:
    return pem(rng, "OPENSSH PRIVATE KEY", OPENSSH_ED25519, 294, width=70)


def pgp_key(rng: random.Random) -> str:
    body = base64.b64encode(b"\x95\x03\x98\x04" + rng.randbytes(900)).decode()
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    crc = base64.b64encode(rng.randbytes(3)).decode()
    return ("-----BEGIN PGP PRIVATE KEY BLOCK-----\n\n" + "\n".join(lines) + f"\n={crc}\n"
            "-----END PGP PRIVATE KEY BLOCK-----")


# ---------------------------------------------------------------------------------------
# Context templates. Markers: <S> secret, <ENV> variable name, <KEY> its lower-case form,
# <API> the provider's endpoint, <ID>/<NUM> random digits, <UP> random upper alnum,
# <HEX> 32 random hex, <USER> a user name, <BECH> an age public key body.

ASSIGN = (
    "export <ENV>=<S>",
    "<ENV>=<S>",
    '<ENV>="<S>"',
    '  "<KEY>": "<S>",',
    "<KEY>: <S>",
    '        - name: <ENV>\n          value: "<S>"',
    'os.environ["<ENV>"] = "<S>"',
    "docker run --rm -e <ENV>=<S> ghcr.io/acme/worker:1.4.2",
    "gh secret set <ENV> --body <S>",
    '<KEY> = "<S>"',
    "$ env | grep <ENV>\n<ENV>=<S>",
    "heroku config:set <ENV>=<S> -a acme-api",
    "process.env.<ENV> = '<S>';",
    "fly secrets set <ENV>=<S>",
    'echo "<ENV>=<S>" >> .env.local',
    "<ENV>=<S> python -m app.worker --once",
)
PREFIXED = (
    "<S>",
    "can you check why this token gets a 401? <S>",
    'curl -sS -H "Authorization: Bearer <S>" <API>',
    'client = Client(api_key="<S>")',
    "The key is `<S>` (rotated yesterday).",
    "token=<S>",
)


@dataclass(frozen=True)
class Spec:
    """A provider token shape: its generator, variable name and provider-specific contexts;
    ``generic`` more contexts are drawn from the shared templates."""

    provider: str
    kind: str
    make: Callable[[random.Random], str]
    env: str
    extra: tuple[str, ...] = ()
    api: str = "https://api.example.com/v1/me"
    prefixed: bool = True
    generic: int = 2


def fill(rng: random.Random, template: str, spec: Spec, secret: str) -> str:
    """The template with its markers filled; the secret goes in last so nothing rewrites it."""
    out = template.replace("<ENV>", spec.env).replace("<KEY>", spec.env.lower())
    out = out.replace("<API>", spec.api)
    makers: dict[str, Callable[[], str]] = {
        "<ID>": lambda: digits(rng, rng.randint(6, 7)), "<NUM>": lambda: digits(rng, 7),
        "<UP>": lambda: rand(rng, UPPER_ALNUM, rng.randint(9, 10)), "<HEX>": lambda: rand(rng, HEX, 32),
        "<USER>": lambda: rng.choice(USERS), "<BECH>": lambda: rand(rng, BECH32, 58),
    }
    for marker, make in makers.items():
        while marker in out:
            out = out.replace(marker, make(), 1)
    return out.replace("<S>", secret)


def from_spec(rng: random.Random, spec: Spec) -> list[Credential]:
    pool = [t for t in (PREFIXED + ASSIGN if spec.prefixed else ASSIGN) if t not in spec.extra]
    templates = list(spec.extra) + rng.sample(pool, spec.generic)
    out = []
    for template in templates:
        secret = spec.make(rng)
        out.append(Credential(spec.provider, spec.kind, secret, fill(rng, template, spec, secret)))
    return out


def _r(prefix: str, alphabet: str, n: int, suffix: str = "") -> Callable[[random.Random], str]:
    return lambda rng: prefix + rand(rng, alphabet, n) + suffix


def _grafana_cloud(rng: random.Random) -> str:
    doc = {"o": digits(rng, 6), "n": f"stack-{digits(rng, 6)}-hm-read-{rand(rng, LOWER, 6)}",
           "k": rand(rng, ALNUM, 24), "m": {"r": "prod-us-east-0"}}
    return "glc_" + b64(json.dumps(doc, separators=(",", ":"))).rstrip("=")


def _mapbox(rng: random.Random) -> str:
    doc = {"u": rng.choice(USERS) + digits(rng, 3), "a": rand(rng, LOWER_ALNUM, 25)}
    return "sk." + b64url(json.dumps(doc, separators=(",", ":")).encode()) + "." + rand(rng, URLSAFE, 22)


def _sentry_org(rng: random.Random) -> str:
    doc = {"iat": _iat(rng), "url": "https://sentry.io", "region_url": "https://us.sentry.io",
           "org": rand(rng, LOWER, 8)}
    return "sntrys_" + b64(json.dumps(doc, separators=(",", ":"))).rstrip("=") + "_" + rand(rng, URLSAFE, 43)


def _supabase_jwt(rng: random.Random) -> str:
    iat = _iat(rng)
    return jwt(rng, {"iss": "supabase", "ref": rand(rng, LOWER, 20), "role": "service_role",
                     "iat": iat, "exp": iat + 10 * 365 * 86_400})


def _bearer_jwt(rng: random.Random) -> str:
    iat = _iat(rng)
    return jwt(rng, {"sub": digits(rng, 6), "email": f"{rng.choice(USERS)}@acme.io", "scope": "read write",
                     "iat": iat, "exp": iat + 3600}, rng.choice(["HS256", "RS256"]))


def _discord(rng: random.Random) -> str:
    user_id = b64(digits(rng, 18)).rstrip("=")
    return f"{user_id}.{rand(rng, URLSAFE, 6)}.{rand(rng, URLSAFE, 38)}"


def _azure_sas(rng: random.Random) -> str:
    return b64(rng.randbytes(32)).replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")


def _azure_ad(rng: random.Random) -> str:
    return rand(rng, ALNUM, 3) + str(rng.randint(0, 9)) + "Q~" + rand(rng, ALNUM + "_.~-", 34)


def _age(rng: random.Random) -> str:
    return "AGE-SECRET-KEY-1" + rand(rng, BECH32.upper(), 58)


def _hf(rng: random.Random) -> str:
    return "hf_" + rand(rng, LETTERS, 34)


def _telegram(rng: random.Random) -> str:
    return f"{digits(rng, rng.choice([9, 10]))}:AA{rand(rng, URLSAFE, 33)}"


def _slack_bot(rng: random.Random) -> str:
    return f"xoxb-{digits(rng, 12)}-{digits(rng, 13)}-{rand(rng, ALNUM, 24)}"


def _slack_user(rng: random.Random) -> str:
    return f"xoxp-{digits(rng, 12)}-{digits(rng, 12)}-{digits(rng, 13)}-{rand(rng, HEX, 32)}"


def _slack_app(rng: random.Random) -> str:
    return f"xapp-1-A{rand(rng, UPPER_ALNUM, 10)}-{digits(rng, 13)}-{rand(rng, HEX, 64)}"


def _atlassian(rng: random.Random) -> str:
    return "ATATT3xFfGF0" + rand(rng, URLSAFE, 171) + "=" + rand(rng, HEX_UP, 8)


def _asana(rng: random.Random) -> str:
    return f"2/{digits(rng, 16)}/{digits(rng, 16)}:{rand(rng, HEX, 32)}"


def _braintree(rng: random.Random) -> str:
    return f"access_token$production${rand(rng, LOWER_ALNUM, 16)}${rand(rng, HEX, 32)}"


def _firebase_fcm(rng: random.Random) -> str:
    return "AAAA" + rand(rng, URLSAFE, 7) + ":APA91b" + rand(rng, URLSAFE, 134)


def _uuid(rng: random.Random) -> str:
    h = rand(rng, HEX, 32)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[rng.randint(0, 3)]}{h[17:20]}-{h[20:]}"


def _tailscale(rng: random.Random) -> str:
    return f"tskey-auth-{rand(rng, ALNUM, 11)}CNTRL-{rand(rng, ALNUM, 33)}"


def _ngrok(rng: random.Random) -> str:
    return "2" + rand(rng, ALNUM, 26) + "_" + rand(rng, ALNUM, 21)


def _onepassword(rng: random.Random) -> str:
    doc = {"signInAddress": "acme.1password.com", "email": rand(rng, LOWER_ALNUM, 13) + "@1passwordserviceaccounts.com",
           "srpX": rand(rng, HEX, 64), "muk": {"alg": "A256GCM", "k": rand(rng, URLSAFE, 43), "kty": "oct", "kid": "mp"},
           "secretKey": "A3-" + rand(rng, UPPER_ALNUM, 6) + "-" + rand(rng, UPPER_ALNUM, 6), "deviceUuid": rand(rng, LOWER_ALNUM, 26)}
    return "ops_" + b64url(json.dumps(doc, separators=(",", ":")).encode())


def _doppler(kind: str) -> Callable[[random.Random], str]:
    def make(rng: random.Random) -> str:
        env = rng.choice(["prd", "stg", "dev"])
        middle = f"{kind}.{env}" if kind == "st" else kind
        return f"dp.{middle}." + rand(rng, ALNUM, rng.randint(40, 44))
    return make


# ---------------------------------------------------------------------------------------
# Providers.

SPECS: tuple[Spec, ...] = (
    # Issue 10's misses first.
    Spec("huggingface", "hf_user_access_token", _hf, "HF_TOKEN",
         ("<S>", "huggingface-cli login --token <S>", "HUGGING_FACE_HUB_TOKEN=<S>",
          'from huggingface_hub import login\nlogin(token="<S>")',
          "git clone https://user:<S>@huggingface.co/acme/private-model"),
         api="https://huggingface.co/api/whoami-v2", generic=3),
    Spec("huggingface", "hf_org_token", _r("api_org_", LETTERS, 34), "HF_API_TOKEN",
         ("HF_API_TOKEN=<S>",), api="https://huggingface.co/api/whoami-v2", generic=1),
    Spec("datadog", "dd_api_key", _r("", HEX, 32), "DD_API_KEY",
         ("DD_API_KEY=<S>", 'curl -X POST "https://api.datadoghq.com/api/v2/series" -H "DD-API-KEY: <S>" -d @metrics.json',
          "  api_key: <S>"), prefixed=False),
    Spec("datadog", "dd_app_key", _r("", HEX, 40), "DD_APP_KEY",
         ('-H "DD-APPLICATION-KEY: <S>"', "DD_APPLICATION_KEY=<S>"), prefixed=False),
    Spec("generic_oauth", "client_secret_hex", _r("", HEX, 40), "CLIENT_SECRET",
         ('  "client_secret": "<S>",', '{"client_id": "<HEX>", "client_secret": "<S>", "grant_type": "client_credentials"}',
          "OAUTH_CLIENT_SECRET=<S>"), prefixed=False, generic=1),
    Spec("sendgrid", "sendgrid_api_key", lambda r: f"SG.{rand(r, URLSAFE, 22)}.{rand(r, URLSAFE, 43)}",
         "SENDGRID_API_KEY", ("<S>", "sg.client = SendGridAPIClient('<S>')"),
         api="https://api.sendgrid.com/v3/user/profile"),
    Spec("slack", "slack_webhook", _r("", ALNUM, 24), "SLACK_WEBHOOK_URL",
         ("SLACK_WEBHOOK_URL=https://hooks.slack.com/services/T<UP>/B<UP>/<S>",
          "curl -X POST -H 'Content-type: application/json' --data '{\"text\":\"deploy done\"}' https://hooks.slack.com/services/T<UP>/B<UP>/<S>",
          '  "webhook": "https://hooks.slack.com/services/T<UP>/B<UP>/<S>"',
          "https://hooks.slack.com/services/T<UP>/B<UP>/<S>"), prefixed=False, generic=0),
    Spec("slack", "slack_bot_token", _slack_bot, "SLACK_BOT_TOKEN",
         ('curl -s -H "Authorization: Bearer <S>" -d channel=C0<UP> https://slack.com/api/chat.postMessage',),
         api="https://slack.com/api/auth.test"),
    Spec("slack", "slack_user_token", _slack_user, "SLACK_USER_TOKEN", ("SLACK_USER_TOKEN=<S>",),
         api="https://slack.com/api/auth.test"),
    Spec("slack", "slack_app_token", _slack_app, "SLACK_APP_TOKEN",
         ('app = App(token=os.environ["SLACK_BOT_TOKEN"])\nSocketModeHandler(app, "<S>").start()', "SLACK_APP_TOKEN=<S>"),
         api="https://slack.com/api/apps.connections.open"),
    Spec("npm", "npm_access_token", _r("npm_", ALNUM, 36), "NPM_TOKEN",
         ("npm publish --//registry.npmjs.org/:_authToken=<S>", "//registry.npmjs.org/:_authToken=<S>",
          "npm config set //registry.npmjs.org/:_authToken <S>",
          "curl -fsSL https://npm.pkg.acme.dev/<S>/@acme/ui/-/ui-2.3.1.tgz -o ui.tgz",
          "npm token revoke <S>", "yarn config set npmAuthToken <S>"),
         api="https://registry.npmjs.org/-/whoami"),
    Spec("databricks", "databricks_pat", lambda r: "dapi" + rand(r, HEX, 32) + r.choice(["", "-2", "-3"]),
         "DATABRICKS_TOKEN",
         ("[DEFAULT]\nhost = https://adb-<NUM><NUM>.7.azuredatabricks.net\ntoken = <S>",
          'curl -H "Authorization: Bearer <S>" https://adb-<NUM><NUM>.3.azuredatabricks.net/api/2.0/clusters/list'),
         api="https://dbc-1a2b3c4d-5e6f.cloud.databricks.com/api/2.0/clusters/list"),
    Spec("digitalocean", "do_pat", _r("dop_v1_", HEX, 64), "DIGITALOCEAN_TOKEN",
         ("doctl auth init -t <S>", 'provider "digitalocean" {\n  token = "<S>"\n}'),
         api="https://api.digitalocean.com/v2/account"),
    Spec("digitalocean", "do_oauth", _r("doo_v1_", HEX, 64), "DIGITALOCEAN_ACCESS_TOKEN", (),
         api="https://api.digitalocean.com/v2/droplets"),
    Spec("doppler", "doppler_service_token", _doppler("st"), "DOPPLER_TOKEN",
         ("doppler run --token <S> -- ./bin/start", "doppler configure set token <S> --scope /srv/app"),
         api="https://api.doppler.com/v3/configs/config/secrets/download"),
    Spec("doppler", "doppler_personal_token", _doppler("pt"), "DOPPLER_TOKEN", (),
         api="https://api.doppler.com/v3/me"),
    Spec("shopify", "shopify_access_token", _r("shpat_", HEX, 32), "SHOPIFY_ACCESS_TOKEN",
         ('curl -H "X-Shopify-Access-Token: <S>" https://acme-store.myshopify.com/admin/api/2025-01/products.json',),
         api="https://acme-store.myshopify.com/admin/api/2025-01/shop.json"),
    Spec("shopify", "shopify_shared_secret", _r("shpss_", HEX, 32), "SHOPIFY_API_SECRET",
         ("SHOPIFY_API_SECRET=<S>",), prefixed=True, generic=1),
    Spec("shopify", "shopify_custom_app_token", _r("shpca_", HEX, 32), "SHOPIFY_CUSTOM_APP_TOKEN", (), generic=2),
    Spec("supabase", "supabase_pat", _r("sbp_", HEX, 40), "SUPABASE_ACCESS_TOKEN",
         ("supabase login --token <S>",), api="https://api.supabase.com/v1/projects"),
    Spec("supabase", "supabase_service_role_jwt", _supabase_jwt, "SUPABASE_SERVICE_ROLE_KEY",
         ('const supabase = createClient("https://<UP>.supabase.co", "<S>")', "SUPABASE_SERVICE_ROLE_KEY=<S>"),
         api="https://xyzcompany.supabase.co/rest/v1/profiles"),
    Spec("supabase", "supabase_secret_key", _r("sb_secret_", URLSAFE, 31), "SUPABASE_SECRET_KEY", (), generic=2),
    Spec("mailgun", "mailgun_api_key", _r("key-", HEX, 32), "MAILGUN_API_KEY",
         ("curl -s --user 'api:<S>' https://api.mailgun.net/v3/mg.acme.io/messages -F to=ops@acme.io",),
         api="https://api.mailgun.net/v3/domains"),
    Spec("mailgun", "mailgun_private_key", lambda r: f"{rand(r, HEX, 32)}-{rand(r, HEX, 8)}-{rand(r, HEX, 8)}",
         "MAILGUN_PRIVATE_API_KEY", ("MAILGUN_PRIVATE_API_KEY=<S>",), prefixed=False, generic=1),
    Spec("age", "age_secret_key", _age, "SOPS_AGE_KEY",
         ("# created: 2026-01-04T10:12:44Z\n# public key: age1<BECH>\n<S>", "SOPS_AGE_KEY=<S>", "<S>"), generic=1),
    Spec("sentry", "sentry_dsn_key", _r("", HEX, 32), "SENTRY_DSN",
         ("SENTRY_DSN=https://<S>@o<ID>.ingest.sentry.io/<NUM>",
          'sentry_sdk.init(dsn="https://<S>@o<ID>.ingest.us.sentry.io/<NUM>", traces_sample_rate=0.2)',
          '  "dsn": "https://<S>@o<ID>.ingest.sentry.io/<NUM>",',
          "Sentry.init({ dsn: 'https://<S>@o<ID>.ingest.de.sentry.io/<NUM>' });"), prefixed=False, generic=0),
    Spec("sentry", "sentry_user_token", _r("sntryu_", HEX, 64), "SENTRY_AUTH_TOKEN",
         ("sentry-cli --auth-token <S> releases new 1.4.2",), api="https://sentry.io/api/0/organizations/"),
    Spec("sentry", "sentry_org_token", _sentry_org, "SENTRY_AUTH_TOKEN", (), generic=1),
    # The usual suspects.
    Spec("github", "github_pat_classic", lambda r: github(r, "ghp_"), "GITHUB_TOKEN",
         ("echo <S> | gh auth login --with-token", "git clone https://<S>@github.com/acme/api.git",
          "git remote set-url origin https://x-access-token:<S>@github.com/acme/web.git"),
         api="https://api.github.com/user"),
    Spec("github", "github_oauth_token", lambda r: github(r, "gho_"), "GH_TOKEN",
         ("github.com:\n    oauth_token: <S>\n    user: <USER>\n    git_protocol: https",),
         api="https://api.github.com/user"),
    Spec("github", "github_app_installation_token", lambda r: github(r, "ghs_"), "GITHUB_TOKEN",
         ('{"token": "<S>", "expires_at": "2026-01-04T11:00:00Z"}',), api="https://api.github.com/installation/repositories"),
    Spec("github", "github_refresh_token", lambda r: github(r, "ghr_"), "GITHUB_REFRESH_TOKEN", (), generic=1),
    Spec("github", "github_fine_grained_pat", lambda r: f"github_pat_{rand(r, ALNUM, 22)}_{rand(r, ALNUM, 59)}",
         "GITHUB_PAT", ("go env -w GOPRIVATE=github.com/acme && git config --global url.\"https://<USER>:<S>@github.com/\".insteadOf \"https://github.com/\"",),
         api="https://api.github.com/user"),
    Spec("gitlab", "gitlab_pat", _r("glpat-", URLSAFE, 20), "GITLAB_TOKEN",
         ('curl --header "PRIVATE-TOKEN: <S>" https://gitlab.com/api/v4/projects?owned=true',
          "git clone https://oauth2:<S>@gitlab.com/acme/infra.git"), api="https://gitlab.com/api/v4/user"),
    Spec("gitlab", "gitlab_runner_token", _r("glrt-", URLSAFE, 20), "CI_RUNNER_TOKEN",
         ('gitlab-runner register --url https://gitlab.com --token "<S>" --executor docker',), generic=1),
    Spec("gitlab", "gitlab_deploy_token", _r("gldt-", URLSAFE, 20), "GITLAB_DEPLOY_TOKEN", (), generic=1),
    Spec("openai", "openai_project_key", lambda r: "sk-proj-" + rand(r, URLSAFE, 74) + "T3BlbkFJ" + rand(r, URLSAFE, 74),
         "OPENAI_API_KEY", ("client = OpenAI(api_key=\"<S>\")",), api="https://api.openai.com/v1/models"),
    Spec("openai", "openai_legacy_key", lambda r: "sk-" + rand(r, ALNUM, 20) + "T3BlbkFJ" + rand(r, ALNUM, 20),
         "OPENAI_API_KEY", (), api="https://api.openai.com/v1/models"),
    Spec("openai", "openai_service_account_key",
         lambda r: "sk-svcacct-" + rand(r, URLSAFE, 74) + "T3BlbkFJ" + rand(r, URLSAFE, 74), "OPENAI_API_KEY", (),
         api="https://api.openai.com/v1/models", generic=1),
    Spec("anthropic", "anthropic_api_key", _r("sk-ant-api03-", URLSAFE, 93, "AA"), "ANTHROPIC_API_KEY",
         ('curl https://api.anthropic.com/v1/messages -H "x-api-key: <S>" -H "anthropic-version: 2023-06-01"',
          "claude config set apiKey <S>"), api="https://api.anthropic.com/v1/models"),
    Spec("anthropic", "anthropic_admin_key", _r("sk-ant-admin01-", URLSAFE, 93, "AA"), "ANTHROPIC_ADMIN_KEY", (),
         api="https://api.anthropic.com/v1/organizations/users", generic=1),
    Spec("google", "google_api_key", _r("AIza", URLSAFE, 35), "GOOGLE_API_KEY",
         ("curl 'https://maps.googleapis.com/maps/api/geocode/json?address=Paris&key=<S>'", "GEMINI_API_KEY=<S>"),
         api="https://generativelanguage.googleapis.com/v1beta/models"),
    Spec("google_oauth", "google_client_secret", _r("GOCSPX-", URLSAFE, 28), "GOOGLE_CLIENT_SECRET",
         ('{"installed":{"client_id":"<NUM><NUM>-<HEX>.apps.googleusercontent.com","client_secret":"<S>","redirect_uris":["http://localhost"]}}',)),
    Spec("google_oauth", "google_refresh_token", lambda r: "1//0" + rand(r, URLSAFE, 99), "GOOGLE_REFRESH_TOKEN",
         ('  "refresh_token": "<S>",',), generic=1),
    Spec("google_oauth", "google_access_token", lambda r: "ya29.a0" + rand(r, URLSAFE, 150), "GOOGLE_ACCESS_TOKEN",
         (), api="https://www.googleapis.com/oauth2/v3/userinfo", generic=1),
    Spec("stripe", "stripe_secret_key", lambda r: "sk_live_51" + rand(r, ALNUM, 97), "STRIPE_API_KEY",
         ("curl https://api.stripe.com/v1/charges -u <S>: -d amount=2000", "stripe login --api-key <S>"),
         api="https://api.stripe.com/v1/balance"),
    Spec("stripe", "stripe_secret_key_legacy", _r("sk_live_", ALNUM, 24), "STRIPE_SECRET_KEY", ()),
    Spec("stripe", "stripe_restricted_key", lambda r: "rk_live_51" + rand(r, ALNUM, 97), "STRIPE_RESTRICTED_KEY",
         (), api="https://api.stripe.com/v1/customers"),
    Spec("stripe", "stripe_webhook_secret", _r("whsec_", ALNUM, 32), "STRIPE_WEBHOOK_SECRET",
         ("stripe listen --forward-to localhost:4242/webhook\n> Ready! Your webhook signing secret is <S> (^C to quit)",),
         generic=1),
    Spec("twilio", "twilio_auth_token", _r("", HEX, 32), "TWILIO_AUTH_TOKEN",
         ('curl -X POST https://api.twilio.com/2010-04-01/Accounts/AC<HEX>/Messages.json -u "$TWILIO_ACCOUNT_SID:<S>" -d To=+15550100 -d Body=hi',
          "TWILIO_AUTH_TOKEN=<S>"), prefixed=False, generic=1),
    Spec("twilio", "twilio_api_key_secret", _r("", ALNUM, 32), "TWILIO_API_SECRET",
         ("TWILIO_API_KEY=SK<HEX>\nTWILIO_API_SECRET=<S>",), prefixed=False, generic=1),
    Spec("discord", "discord_bot_token", _discord, "DISCORD_BOT_TOKEN",
         ("client.run('<S>')", 'curl -H "Authorization: Bot <S>" https://discord.com/api/v10/users/@me')),
    Spec("discord", "discord_webhook_token", _r("", URLSAFE, 68), "DISCORD_WEBHOOK_URL",
         ("DISCORD_WEBHOOK_URL=https://discord.com/api/webhooks/<NUM><NUM><NUM>/<S>",
          "curl -H 'Content-Type: application/json' -d '{\"content\":\"build ok\"}' https://discord.com/api/webhooks/<NUM><NUM>/<S>"),
         prefixed=False, generic=0),
    Spec("telegram", "telegram_bot_token", _telegram, "TELEGRAM_BOT_TOKEN",
         ("curl -s https://api.telegram.org/bot<S>/sendMessage -d chat_id=<ID> -d text=hi",
          "bot = telebot.TeleBot('<S>')")),
    Spec("pypi", "pypi_upload_token", _r("pypi-AgEIcHlwaS5vcmc", URLSAFE, 150), "PYPI_TOKEN",
         ("twine upload -u __token__ -p <S> dist/*", "[pypi]\n  username = __token__\n  password = <S>",
          "UV_PUBLISH_TOKEN=<S> uv publish"), api="https://upload.pypi.org/legacy/"),
    Spec("heroku", "heroku_api_key", _r("HRKU-AA", URLSAFE, 58), "HEROKU_API_KEY",
         ("machine api.heroku.com\n  login <USER>@acme.io\n  password <S>",), api="https://api.heroku.com/account"),
    Spec("heroku", "heroku_api_key_legacy", _uuid, "HEROKU_API_KEY", ("HEROKU_API_KEY=<S>",), prefixed=False, generic=1),
    Spec("netlify", "netlify_pat", _r("nfp_", ALNUM, 36), "NETLIFY_AUTH_TOKEN",
         ("netlify deploy --prod --auth <S> --site <HEX>",), api="https://api.netlify.com/api/v1/sites"),
    Spec("vercel", "vercel_token", _r("", ALNUM, 24), "VERCEL_TOKEN",
         ("vercel deploy --prod --token <S>", "VERCEL_TOKEN=<S>", 'curl -H "Authorization: Bearer <S>" https://api.vercel.com/v9/projects'),
         prefixed=False, generic=1),
    Spec("linear", "linear_api_key", _r("lin_api_", ALNUM, 40), "LINEAR_API_KEY",
         ('curl -X POST https://api.linear.app/graphql -H "Authorization: <S>" -d \'{"query":"{ viewer { id } }"}\'',),
         api="https://api.linear.app/graphql"),
    Spec("notion", "notion_integration_secret", _r("secret_", ALNUM, 43), "NOTION_TOKEN",
         ("notion = Client(auth=\"<S>\")",), api="https://api.notion.com/v1/users/me"),
    Spec("notion", "notion_ntn_token", lambda r: "ntn_" + digits(r, 12) + rand(r, ALNUM, 34), "NOTION_API_KEY", (),
         api="https://api.notion.com/v1/users/me"),
    Spec("atlassian", "atlassian_api_token", _atlassian, "JIRA_API_TOKEN",
         ("curl -u <USER>@acme.io:<S> https://acme.atlassian.net/rest/api/3/myself", "CONFLUENCE_API_TOKEN=<S>")),
    Spec("okta", "okta_api_token", _r("00", URLSAFE, 40), "OKTA_API_TOKEN",
         ('curl -H "Authorization: SSWS <S>" https://acme.okta.com/api/v1/users?limit=5',), prefixed=False, generic=2),
    Spec("newrelic", "newrelic_user_key", _r("NRAK-", UPPER_ALNUM, 27), "NEW_RELIC_API_KEY",
         ('curl https://api.newrelic.com/graphql -H "API-Key: <S>"',), api="https://api.newrelic.com/graphql"),
    Spec("newrelic", "newrelic_license_key", _r("", HEX, 36, "NRAL"), "NEW_RELIC_LICENSE_KEY",
         ("license_key: <S>",)),
    Spec("grafana", "grafana_service_account_token", lambda r: "glsa_" + rand(r, ALNUM, 32) + "_" + rand(r, HEX, 8),
         "GRAFANA_TOKEN", (), api="https://grafana.acme.io/api/dashboards/home"),
    Spec("grafana", "grafana_cloud_token", _grafana_cloud, "GRAFANA_CLOUD_TOKEN", ("GRAFANA_CLOUD_API_KEY=<S>",)),
    Spec("cloudflare", "cloudflare_api_token", _r("", URLSAFE, 40), "CLOUDFLARE_API_TOKEN",
         ('curl "https://api.cloudflare.com/client/v4/user/tokens/verify" -H "Authorization: Bearer <S>"',
          "CLOUDFLARE_API_TOKEN=<S> wrangler deploy"), prefixed=False, generic=1),
    Spec("cloudflare", "cloudflare_global_api_key", _r("", HEX, 37), "CF_API_KEY",
         ('-H "X-Auth-Email: <USER>@acme.io" -H "X-Auth-Key: <S>"',), prefixed=False, generic=1),
    Spec("mapbox", "mapbox_secret_token", _mapbox, "MAPBOX_SECRET_TOKEN",
         ("MAPBOX_DOWNLOADS_TOKEN=<S>",), api="https://api.mapbox.com/tokens/v2"),
    Spec("postman", "postman_api_key", lambda r: f"PMAK-{rand(r, HEX, 24)}-{rand(r, HEX, 34)}", "POSTMAN_API_KEY",
         ('curl https://api.getpostman.com/collections -H "X-Api-Key: <S>"',)),
    Spec("terraform", "terraform_cloud_token", lambda r: rand(r, ALNUM, 14) + ".atlasv1." + rand(r, ALNUM, 67),
         "TF_TOKEN_app_terraform_io",
         ('{\n  "credentials": {\n    "app.terraform.io": {\n      "token": "<S>"\n    }\n  }\n}',
          "TF_TOKEN_app_terraform_io=<S>"), api="https://app.terraform.io/api/v2/account/details"),
    Spec("vault", "vault_service_token", lambda r: "hvs." + rand(r, URLSAFE, 24), "VAULT_TOKEN",
         ("vault login <S>", 'curl -H "X-Vault-Token: <S>" https://vault.acme.io:8200/v1/secret/data/app')),
    Spec("vault", "vault_service_token_long", lambda r: "hvs.CAESI" + rand(r, URLSAFE, 86), "VAULT_TOKEN", (),
         api="https://vault.acme.io:8200/v1/auth/token/lookup-self"),
    Spec("vault", "vault_batch_token", lambda r: "hvb.AAAAAQ" + rand(r, URLSAFE, 132), "VAULT_TOKEN", (), generic=1),
    Spec("jwt", "bearer_jwt", _bearer_jwt, "ACCESS_TOKEN",
         ("Authorization: Bearer <S>", '{"access_token": "<S>", "token_type": "Bearer", "expires_in": 3600}',
          "document.cookie = 'session=<S>; path=/'")),
    Spec("docker", "docker_hub_pat", _r("dckr_pat_", URLSAFE, 27), "DOCKERHUB_TOKEN",
         ("echo <S> | docker login -u acme --password-stdin",)),
    Spec("azure_ad", "azure_client_secret", _azure_ad, "AZURE_CLIENT_SECRET",
         ("az login --service-principal -u <HEX> -p <S> --tenant <HEX>", "AZURE_CLIENT_SECRET=<S>"),
         prefixed=False, generic=1),
    Spec("azure_storage", "azure_storage_account_key", lambda r: b64(r.randbytes(64)), "AZURE_STORAGE_KEY",
         ("AZURE_STORAGE_CONNECTION_STRING=DefaultEndpointsProtocol=https;AccountName=acmeprod<ID>;AccountKey=<S>;EndpointSuffix=core.windows.net",
          '"StorageConnection": "DefaultEndpointsProtocol=https;AccountName=stacme<ID>;AccountKey=<S>;EndpointSuffix=core.windows.net"',
          "az storage blob upload --account-name acmelogs --account-key <S> -c logs -f app.log",
          "AccountKey=<S>"), prefixed=False, generic=1),
    Spec("azure_storage", "azure_sas_signature", _azure_sas, "AZURE_SAS_URL",
         ("https://acmeprod.blob.core.windows.net/backups/db.bak?sv=2022-11-02&ss=b&srt=o&sp=r&se=2026-02-01T00:00:00Z&spr=https&sig=<S>",),
         prefixed=False, generic=0),
    Spec("azure_openai", "azure_openai_key", _r("", HEX, 32), "AZURE_OPENAI_API_KEY",
         ('curl https://acme-oai.openai.azure.com/openai/deployments/gpt-4o/chat/completions?api-version=2024-06-01 -H "api-key: <S>"',),
         prefixed=False, generic=1),
    Spec("azure_devops", "azure_devops_pat", _r("", LOWER + "234567", 52), "AZURE_DEVOPS_EXT_PAT",
         ("git clone https://<USER>:<S>@dev.azure.com/acme/platform/_git/api",), prefixed=False, generic=1),
    Spec("cloudflare_r2", "r2_secret_access_key", _r("", HEX, 64), "R2_SECRET_ACCESS_KEY", (), prefixed=False, generic=2),
    # Database and broker URLs: the password, which may hold "/", is the secret.
    Spec("postgres", "postgres_url_password", lambda r: password(r, 18, slash=True), "DATABASE_URL",
         ("DATABASE_URL=postgres://app:<S>@db.internal:5432/app",
          'psql "postgresql://admin:<S>@pg-prod.acme.io:5432/billing?sslmode=require" -c "select 1"',
          'engine = create_engine("postgresql+psycopg://etl:<S>@10.0.4.12:5432/warehouse")',
          "jdbc:postgresql://db:5432/app?user=app&password=<S>"), prefixed=False, generic=0),
    Spec("mysql", "mysql_url_password", lambda r: password(r, 16, slash=r.random() < 0.6), "DATABASE_URL",
         ("DATABASE_URL=mysql://root:<S>@mysql:3306/shop", "mysql -h db.acme.io -u admin -p<S> shop"),
         prefixed=False, generic=0),
    Spec("mongodb", "mongodb_url_password", lambda r: password(r, 20, slash=True), "MONGODB_URI",
         ("MONGODB_URI=mongodb+srv://admin:<S>@cluster0.ab1cd.mongodb.net/app?retryWrites=true&w=majority",
          'client = MongoClient("mongodb://root:<S>@mongo-0.mongo:27017/?authSource=admin")'),
         prefixed=False, generic=0),
    Spec("redis", "redis_url_password", lambda r: password(r, 24, slash=r.random() < 0.5), "REDIS_URL",
         ("REDIS_URL=redis://:<S>@redis.internal:6379/0", "redis-cli -u redis://:<S>@cache:6379 ping",
          "CELERY_BROKER_URL=rediss://default:<S>@eu1-sharp-gnu-12345.upstash.io:6379",
          '  "redis": "redis://:<S>@10.0.2.7:6379"'), prefixed=False, generic=0),
    Spec("rabbitmq", "amqp_url_password", lambda r: password(r, 18, slash=True), "AMQP_URL",
         ("AMQP_URL=amqp://guest-admin:<S>@rabbitmq:5672/%2f",), prefixed=False, generic=0),
    Spec("password", "password_assignment", lambda r: password(r, r.randint(14, 24)), "DB_PASSWORD",
         ("PASSWORD=<S>", '  "password": "<S>",', "POSTGRES_PASSWORD: <S>", "mysql -u root -p<S> -e 'show databases'",
          "sshpass -p '<S>' ssh deploy@10.0.3.4", "spring.datasource.password=<S>", "ADMIN_PASSWORD=\"<S>\"",
          "machine api.acme.io login bot password <S>", "--password=<S>", "smtp_password = \"<S>\""),
         prefixed=False, generic=2),
    # Passwords where a tool's short flag or a config format says what they are.
    Spec("password", "tool_flag_password", lambda r: password(r, r.randint(14, 20)), "REGISTRY_PASSWORD",
         ("docker login -u ci -p <S> ghcr.io", 'echo "<S>" | podman login quay.io -u ci --password-stdin',
          "redis-cli -h cache -a <S> ping", 'ldapsearch -x -D "cn=admin,dc=acme" -w <S> -b dc=acme',
          "mongosh mongodb://db:27017/app -u admin -p <S>", 'sqlcmd -S db -U sa -P <S> -Q "select 1"',
          "keytool -importkeystore -srckeystore a.p12 -storepass <S>", "smbclient //fs/share -U alice%<S>",
          "htpasswd -bc /etc/nginx/.htpasswd admin <S>", "zip -r -P <S> backup.zip data/",
          "7z a -p<S> backup.7z data/", 'ssh-keygen -t ed25519 -N "<S>" -f deploy_key',
          "gpg --batch --passphrase <S> -d secrets.gpg", "printf '%s' '<S>' | docker login -u ci --password-stdin",
          'docker login -u ci --password-stdin <<< "<S>"', "echo '<S>' | sudo -S systemctl restart app",
          "net use Z: \\\\fs\\share /user:ACME\\bob <S>", "rabbitmqctl add_user admin <S>",
          "$pw = ConvertTo-SecureString '<S>' -AsPlainText -Force", "az login --service-principal -u app --client-secret <S>",
          "psql -c \"ALTER USER app WITH PASSWORD '<S>';\"", "CREATE USER 'app'@'%' IDENTIFIED BY '<S>';",
          "openssl enc -aes-256-cbc -k <S> -in db.sql -out db.sql.enc", "redis-cli -h cache\ncache:6379> AUTH default <S>",
          "[Environment]::SetEnvironmentVariable('DB_PASSWORD', '<S>', 'User')", "db:\n  password: !!str <S>\n",
          "psql -c \"ALTER ROLE app PASSWORD '<S>';\"", "echo '<S>' | npx wrangler secret put DB_PASSWORD",
          "read -s DB_PASSWORD <<< '<S>'", "mc alias set prod https://s3.acme.io ci-bot <S>",
          "curl -fsS -u ci:<S> https://api.acme.io/v1/deploy", "API_SECRET=<S>",
          "echo 'deploy:<S>' | sudo chpasswd", "openssl passwd -6 <S>",
          "security add-generic-password -a ci -s deploy -w <S>", "echo '<S>' | htpasswd -i .htpasswd ci",
          "psexec \\\\build01 -u ACME\\ci -p <S> cmd /c deploy.bat", "net user svc_ci <S> /add",
          "xfreerdp /v:10.0.0.5 /u:ci /p:<S>", "sqlplus app/<S>@orcl", "lftp -u ci,<S> sftp://files.acme.io",
          "composer config http-basic.repo.acme.io ci <S>", "bundle config set gems.acme.io ci:<S>",
          'expect "password:"; send "<S>\\r"'),
         prefixed=False, generic=0),
    Spec("password", "config_file_password", lambda r: password(r, r.randint(14, 20)), "DB_PASSWORD",
         ("<server>\n  <id>nexus</id>\n  <username>deploy</username>\n  <password><S></password>\n</server>",
          '<add key="SmtpPassword" value="<S>" />', "define( 'DB_PASSWORD', '<S>' );",
          "db.internal:5432:shop:app:<S>\n*:*:*:replicator:<S>", "<add key='SmtpPassword' value='<S>' />",
          '<add value="<S>" key="ApiToken" />', "<password><![CDATA[<S>]]></password>",
          'dataSource.setPassword("<S>");', 'System.setProperty("javax.net.ssl.keyStorePassword", "<S>");',
          'dotnet user-secrets set "Smtp:Password" "<S>"', "binddn cn=reader,dc=acme,dc=io\nbindpw <S>\n",
          'network={\n  ssid="office"\n  psk="<S>"\n}'), prefixed=False, generic=0),
    # Passwords typed into a form by browser automation, or named by a sibling field.
    Spec("password", "form_field_password", lambda r: password(r, r.randint(14, 20)), "LOGIN_PASSWORD",
         ('await page.fill("#password", "<S>")', "await page.getByLabel('Password').fill('<S>')",
          'driver.find_element(By.NAME, "password").send_keys("<S>")',
          '{"name": "DB_PASSWORD", "value": "<S>"}'), prefixed=False, generic=0),
    Spec("render", "render_api_key", _r("rnd_", ALNUM, 32), "RENDER_API_KEY", ()),
    Spec("aws", "aws_secret_beside_key_id", lambda r: rand(r, B64, 40), "AWS_SECRET_ACCESS_KEY",
         ("User name,Password,Access key ID,Secret access key\nci-bot,,AKIAQ7ZX2MW4NPL3TJ5R,<S>",
          "AWS Access Key ID [None]: AKIAQ7ZX2MW4NPL3TJ5R\nAWS Secret Access Key [None]: <S>\nDefault region name [None]:"),
         prefixed=False, generic=0),
    # Private keys (multi-line: planted only where text is stored verbatim).
    Spec("private_key", "rsa_private_key", rsa_key, "SSH_PRIVATE_KEY",
         ("<S>", "$ cat ~/.ssh/id_rsa\n<S>", "cat > deploy_key <<'EOF'\n<S>\nEOF"), generic=0),
    Spec("private_key", "pkcs8_private_key", pkcs8_key, "TLS_KEY", ("<S>", 'JWT_PRIVATE_KEY="<S>"'), generic=0),
    Spec("private_key", "ec_private_key", ec_key, "EC_KEY", ("<S>", "$ cat certs/server.key\n<S>"), generic=0),
    Spec("private_key", "openssh_private_key", openssh_key, "SSH_KEY",
         ("<S>", "$ cat ~/.ssh/id_ed25519\n<S>", "cat > ~/.ssh/deploy <<'EOF'\n<S>\nEOF"), generic=0),
    Spec("pgp", "pgp_private_key", pgp_key, "GPG_PRIVATE_KEY", ("<S>", "$ gpg --export-secret-keys --armor <USER>@acme.io\n<S>"),
         generic=0),
    # More providers, each in its documented shape.
    Spec("bitbucket", "bitbucket_app_password", lambda r: "ATBB" + rand(r, ALNUM, 28) + rand(r, HEX_UP, 8),
         "BITBUCKET_APP_PASSWORD", ("git clone https://<USER>:<S>@bitbucket.org/acme/api.git",)),
    Spec("circleci", "circleci_pat", lambda r: f"CCIPAT_{rand(r, ALNUM, 22)}_{rand(r, HEX, 40)}", "CIRCLECI_TOKEN", ()),
    Spec("buildkite", "buildkite_api_token", _r("bkua_", HEX, 40), "BUILDKITE_API_TOKEN", ()),
    Spec("sonarqube", "sonar_user_token", _r("squ_", HEX, 40), "SONAR_TOKEN",
         ("mvn sonar:sonar -Dsonar.token=<S>",)),
    Spec("snyk", "snyk_token", _uuid, "SNYK_TOKEN", ("snyk auth <S>",), prefixed=False, generic=1),
    Spec("pulumi", "pulumi_access_token", _r("pul-", HEX, 40), "PULUMI_ACCESS_TOKEN", ()),
    Spec("flyio", "fly_org_token", _r("fo1_", URLSAFE, 43), "FLY_API_TOKEN", ("flyctl deploy --access-token <S>",)),
    Spec("planetscale", "planetscale_password", _r("pscale_pw_", URLSAFE, 43), "PLANETSCALE_PASSWORD",
         ("DATABASE_URL=mysql://<USER>:<S>@aws.connect.psdb.cloud/shop?sslaccept=strict",)),
    Spec("replicate", "replicate_api_token", _r("r8_", ALNUM, 37), "REPLICATE_API_TOKEN", ()),
    Spec("groq", "groq_api_key", _r("gsk_", ALNUM, 52), "GROQ_API_KEY", ()),
    Spec("perplexity", "perplexity_api_key", _r("pplx-", ALNUM, 48), "PERPLEXITY_API_KEY", ()),
    Spec("xai", "xai_api_key", _r("xai-", ALNUM, 80), "XAI_API_KEY", ()),
    Spec("openrouter", "openrouter_api_key", _r("sk-or-v1-", HEX, 64), "OPENROUTER_API_KEY", ()),
    Spec("deepseek", "deepseek_api_key", _r("sk-", HEX, 32), "DEEPSEEK_API_KEY", ("DEEPSEEK_API_KEY=<S>",), generic=1),
    Spec("mistral", "mistral_api_key", _r("", ALNUM, 32), "MISTRAL_API_KEY", (), prefixed=False),
    Spec("cohere", "cohere_api_key", _r("", ALNUM, 40), "COHERE_API_KEY", (), prefixed=False),
    Spec("langsmith", "langsmith_api_key", lambda r: f"lsv2_pt_{rand(r, HEX, 32)}_{rand(r, HEX, 10)}",
         "LANGSMITH_API_KEY", ()),
    Spec("pinecone", "pinecone_api_key", lambda r: f"pcsk_{rand(r, ALNUM, 6)}_{rand(r, ALNUM, 63)}", "PINECONE_API_KEY", ()),
    Spec("wandb", "wandb_api_key", _r("", HEX, 40), "WANDB_API_KEY",
         ("machine api.wandb.ai\n  login user\n  password <S>", "wandb login <S>"), prefixed=False, generic=1),
    Spec("elevenlabs", "elevenlabs_api_key", _r("sk_", HEX, 48), "ELEVENLABS_API_KEY", ()),
    Spec("firebase", "fcm_server_key", _firebase_fcm, "FCM_SERVER_KEY", ('-H "Authorization: key=<S>"',)),
    Spec("algolia", "algolia_admin_key", _r("", HEX, 32), "ALGOLIA_ADMIN_API_KEY", (), prefixed=False),
    Spec("dropbox", "dropbox_access_token", _r("sl.B", URLSAFE, 134), "DROPBOX_ACCESS_TOKEN", ()),
    Spec("square", "square_access_token", _r("EAAA", URLSAFE, 60), "SQUARE_ACCESS_TOKEN", ()),
    Spec("braintree", "braintree_access_token", _braintree, "BRAINTREE_ACCESS_TOKEN", ()),
    Spec("flutterwave", "flutterwave_secret_key", _r("FLWSECK-", HEX, 32, "-X"), "FLW_SECRET_KEY", ()),
    Spec("mailchimp", "mailchimp_api_key", lambda r: f"{rand(r, HEX, 32)}-us{r.randint(1, 21)}", "MAILCHIMP_API_KEY", ()),
    Spec("asana", "asana_pat", _asana, "ASANA_TOKEN", ()),
    Spec("figma", "figma_pat", _r("figd_", URLSAFE, 40), "FIGMA_TOKEN", ()),
    Spec("airtable", "airtable_pat", lambda r: f"pat{rand(r, ALNUM, 14)}.{rand(r, HEX, 64)}", "AIRTABLE_API_KEY", ()),
    Spec("hubspot", "hubspot_private_app_token", lambda r: "pat-na1-" + _uuid(r), "HUBSPOT_ACCESS_TOKEN", ()),
    Spec("rubygems", "rubygems_api_key", _r("rubygems_", HEX, 48), "GEM_HOST_API_KEY",
         ("---\n:rubygems_api_key: <S>",)),
    Spec("nuget", "nuget_api_key", _r("oy2", LOWER_ALNUM, 43), "NUGET_API_KEY",
         ("dotnet nuget push bin/Release/Acme.Core.2.1.0.nupkg --api-key <S> --source https://api.nuget.org/v3/index.json",)),
    Spec("crates", "crates_io_token", _r("cio", ALNUM, 32), "CARGO_REGISTRY_TOKEN", ("cargo login <S>",)),
    Spec("tailscale", "tailscale_auth_key", _tailscale, "TS_AUTHKEY", ("tailscale up --authkey=<S>",)),
    Spec("ngrok", "ngrok_authtoken", _ngrok, "NGROK_AUTHTOKEN", ("ngrok config add-authtoken <S>",), prefixed=False),
    Spec("resend", "resend_api_key", lambda r: f"re_{rand(r, ALNUM, 8)}_{rand(r, ALNUM, 24)}", "RESEND_API_KEY", ()),
    Spec("neon", "neon_api_key", _r("napi_", LOWER_ALNUM, 64), "NEON_API_KEY", ()),
    Spec("linode", "linode_token", _r("", HEX, 64), "LINODE_TOKEN", ("linode-cli configure --token <S>",), prefixed=False),
    Spec("alibaba", "alibaba_access_key_secret", _r("", ALNUM, 30), "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
         ("ALIBABA_CLOUD_ACCESS_KEY_ID=LTAI<UP><UP>\nALIBABA_CLOUD_ACCESS_KEY_SECRET=<S>",), prefixed=False, generic=1),
    Spec("launchdarkly", "launchdarkly_sdk_key", lambda r: "sdk-" + _uuid(r), "LAUNCHDARKLY_SDK_KEY", ()),
    Spec("onepassword", "op_service_account_token", _onepassword,
         "OP_SERVICE_ACCOUNT_TOKEN", (), generic=1),
    # Formats the firewall's independent scanner (detect-secrets) knows.
    Spec("square", "square_oauth_secret", _r("sq0csp-", URLSAFE, 43), "SQUARE_APPLICATION_SECRET", ()),
    Spec("jfrog", "artifactory_api_key", _r("AKCp8", ALNUM, 68), "ARTIFACTORY_API_KEY",
         ('curl -H "X-JFrog-Art-Api: <S>" https://acme.jfrog.io/artifactory/api/repositories',)),
)


# ---------------------------------------------------------------------------------------
# Structured cases: AWS key pairs, GCP key files, Kubernetes Secrets.


def aws(rng: random.Random) -> list[Credential]:
    """Key id and secret key together, as ``~/.aws/credentials``, env and STS output show them."""
    out: list[Credential] = []
    for i in range(4):
        key_id = "AKIA" + rand(rng, BASE32, 16)
        secret = rand(rng, B64, 40)
        ctx = [
            f"[default]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\nregion = eu-west-1",
            f"export AWS_ACCESS_KEY_ID={key_id}\nexport AWS_SECRET_ACCESS_KEY={secret}",
            f'{{"aws_access_key_id": "{key_id}", "aws_secret_access_key": "{secret}"}}',
            f"aws configure set aws_access_key_id {key_id} && aws configure set aws_secret_access_key {secret}",
        ][i]
        out += [Credential("aws", "aws_access_key_id", key_id, ctx),
                Credential("aws", "aws_secret_access_key", secret, ctx)]
    sts_id = "ASIA" + rand(rng, BASE32, 16)
    sts_secret = rand(rng, B64, 40)
    session = "IQoJb3JpZ2luX2VjE" + rand(rng, B64, 340)
    sts = json.dumps({"Credentials": {"AccessKeyId": sts_id, "SecretAccessKey": sts_secret,
                                      "SessionToken": session, "Expiration": "2026-01-04T12:00:00+00:00"}}, indent=4)
    out += [Credential("aws", "aws_sts_access_key_id", sts_id, sts),
            Credential("aws", "aws_secret_access_key", sts_secret, sts),
            Credential("aws", "aws_session_token", session, sts),
            Credential("aws", "aws_secret_access_key", (s := rand(rng, B64, 40)),
                       f"AWS_SECRET_ACCESS_KEY={s} aws s3 sync ./dist s3://acme-static/")]
    return out


def gcp(rng: random.Random) -> list[Credential]:
    """Service-account key files: ``private_key_id`` (40 hex) and the PEM ``private_key``."""
    out: list[Credential] = []
    for i in range(3):
        project = rng.choice(["acme-prod", "acme-data", "billing-svc"]) + "-" + digits(rng, 6)
        account = rng.choice(["deployer", "ci", "etl-runner"])
        key_id = rand(rng, HEX, 40)
        key = pkcs8_key(rng) + "\n"
        doc = {"type": "service_account", "project_id": project, "private_key_id": key_id,
               "private_key": key, "client_email": f"{account}@{project}.iam.gserviceaccount.com",
               "client_id": digits(rng, 21), "auth_uri": "https://accounts.google.com/o/oauth2/auth",
               "token_uri": "https://oauth2.googleapis.com/token",
               "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
               "client_x509_cert_url": f"https://www.googleapis.com/robot/v1/metadata/x509/{account}%40{project}.iam.gserviceaccount.com",
               "universe_domain": "googleapis.com"}
        text = [json.dumps(doc, indent=2), json.dumps(doc),
                "GOOGLE_CREDENTIALS='" + json.dumps(doc, separators=(",", ":")) + "'"][i]
        escaped = json.dumps(key.rstrip("\n"))[1:-1]
        if i == 0:
            text = "$ cat sa-key.json\n" + text
        out += [Credential("gcp", "gcp_private_key_id", key_id, text),
                Credential("gcp", "gcp_service_account_private_key", escaped, text)]
    lone = rand(rng, HEX, 40)
    out.append(Credential("gcp", "gcp_private_key_id", lone, f'  "private_key_id": "{lone}",'))
    return out


def kubernetes(rng: random.Random) -> list[Credential]:
    """Secrets whose ``data:`` values are base64: the base64 text is the secret (and, once,
    the decoded value printed by ``base64 -d``)."""
    out: list[Credential] = []
    for i in range(3):
        pw = password(rng, rng.randint(16, 24))
        enc = b64(pw)
        name = rng.choice(["db-credentials", "postgres-auth", "app-secrets"]) + f"-{i}"
        doc = (f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: prod\ntype: Opaque\n"
               f"data:\n  username: {b64(rng.choice(USERS))}\n  password: {enc}\n")
        out.append(Credential("kubernetes", "k8s_secret_data_password", enc, doc))
    token = "sk_live_" + rand(rng, ALNUM, 24)
    enc = b64(token)
    out.append(Credential("kubernetes", "k8s_secret_data_token", enc,
                          f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: stripe\ntype: Opaque\ndata:\n  api-key: {enc}\n"))
    gh = github(rng, "ghp_")
    auth = b64(f"acme-bot:{gh}")
    config = json.dumps({"auths": {"ghcr.io": {"username": "acme-bot", "password": gh, "auth": auth}}})
    enc = b64(config)
    out.append(Credential("kubernetes", "k8s_dockerconfigjson", enc,
                          "apiVersion: v1\nkind: Secret\nmetadata:\n  name: ghcr-pull\n"
                          f"type: kubernetes.io/dockerconfigjson\ndata:\n  .dockerconfigjson: {enc}\n"))
    pw = password(rng, 20)
    enc = b64(pw)
    out.append(Credential("kubernetes", "k8s_secret_json", enc,
                          json.dumps({"apiVersion": "v1", "kind": "Secret", "data": {"password": enc},
                                      "metadata": {"name": "redis-auth", "namespace": "cache"}, "type": "Opaque"}, indent=4)))
    pw = password(rng, 22)
    out.append(Credential("kubernetes", "k8s_secret_decoded", pw,
                          f"$ kubectl get secret db-credentials -o jsonpath='{{.data.password}}' | base64 -d\n{pw}"))
    token = rand(rng, ALNUM, 40)
    enc = b64(token)
    out.append(Credential("kubernetes", "k8s_secret_data_token", enc,
                          f"$ kubectl get secret api-token -o jsonpath='{{.data.token}}'\n{enc}"))
    return out


def positive(seed: int = 0) -> list[Credential]:
    """The positive corpus for ``seed``: same seed, same list."""
    rng = random.Random(seed)
    creds: list[Credential] = []
    for spec in SPECS:  # each spec its own stream: a spec added or extended changes no other
        creds += from_spec(random.Random(f"{seed}/{spec.provider}/{spec.kind}"), spec)
    creds += aws(rng) + gcp(rng) + kubernetes(rng)
    return creds


def providers(creds: Iterable[Credential]) -> set[str]:
    return {c.provider for c in creds}


def encodings(secret: str) -> tuple[str, ...]:
    """The forms a secret takes in files: raw, inside one JSON string (a JSONL record) and
    inside two (a Codex ``arguments`` string in a record). A leak check looks for all."""
    once = json.dumps(secret, ensure_ascii=False)[1:-1]
    twice = json.dumps(once, ensure_ascii=False)[1:-1]
    return tuple(dict.fromkeys((secret, once, twice)))
