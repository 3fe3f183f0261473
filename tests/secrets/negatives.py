"""Negative corpus: token-like text that agent logs are full of and that is NOT a secret.

Why: a redactor tuned only on positives drifts into eating git SHAs, UUIDs, content
hashes, images and minified code, which ruins the training data it protects. Each
generator below draws from ``random.Random(seed)`` so the false-positive rate measured on
this corpus is pinned: same seed, same strings.
"""

from __future__ import annotations

import base64
import hashlib
import random
import struct
import zlib
from collections.abc import Callable

from tests.secrets.credentials import ALNUM, HEX, LOWER, LOWER_ALNUM, UPPER, rand

WORDS = ("retry", "cache", "parser", "config", "loader", "session", "export", "schema", "worker",
         "client", "router", "handler", "metrics", "firewall", "shard", "receipt")
AUTHORS = ("Alice Martin <alice@acme.io>", "Bob Chen <bob@acme.io>", "dependabot[bot] <49699333+dependabot[bot]@users.noreply.github.com>")
PACKAGES = ("lodash", "react", "react-dom", "typescript", "esbuild", "vite", "zod", "@babel/core", "@types/node",
            "eslint", "prettier", "jest", "undici", "semver", "chalk", "commander")
PY_PACKAGES = ("numpy", "pandas", "pyarrow", "duckdb", "pydantic", "orjson", "httpx", "pytest", "ruff", "rich")


def _uuid(rng: random.Random) -> str:
    h = rand(rng, HEX, 32)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[rng.randint(0, 3)]}{h[17:20]}-{h[20:]}"


def _ver(rng: random.Random) -> str:
    return f"{rng.randint(0, 9)}.{rng.randint(0, 40)}.{rng.randint(0, 30)}"


def _msg(rng: random.Random) -> str:
    verb = rng.choice(["fix", "feat", "refactor", "test", "docs", "chore"])
    return f"{verb}({rng.choice(WORDS)}): {rng.choice(['handle', 'drop', 'add', 'speed up'])} {rng.choice(WORDS)} {rng.choice(WORDS)}"


def git(rng: random.Random) -> list[str]:
    """``git log``, ``git show``, rev-parse and commit output lines."""
    out = []
    for _ in range(6):
        out.append(f"commit {rand(rng, HEX, 40)}")
        out.append(f"{rand(rng, HEX, rng.randint(7, 12))} {_msg(rng)}")
        out.append(f"commit {rand(rng, HEX, 40)}\nMerge: {rand(rng, HEX, 7)} {rand(rng, HEX, 7)}\nAuthor: {rng.choice(AUTHORS)}\nDate:   Mon Jan 5 10:{rng.randint(10, 59)}:02 2026 +0100")
        out.append(f"[main {rand(rng, HEX, 7)}] {_msg(rng)}\n 3 files changed, {rng.randint(1, 90)} insertions(+), {rng.randint(1, 40)} deletions(-)")
        out.append(f"index {rand(rng, HEX, 7)}..{rand(rng, HEX, 7)} 100644")
        out.append(f'"commit_hash": "{rand(rng, HEX, 40)}"')
    return out


def uuids(rng: random.Random) -> list[str]:
    """UUIDs as ids in logs and JSON: session ids, request ids, Kubernetes uids."""
    out = []
    for _ in range(6):
        out += [f'"sessionId": "{_uuid(rng)}"', f"request_id={_uuid(rng)}",
                f"x-request-id: {_uuid(rng)}", f"  uid: {_uuid(rng)}\n  resourceVersion: \"{rng.randint(10**5, 10**7)}\"",
                f"x-amzn-RequestId: {_uuid(rng)}"]
    return out


def hashes(rng: random.Random) -> list[str]:
    """Content hashes: sha256sum/md5sum output, pip --hash, Cargo/poetry/go.sum checksums, LFS oids."""
    out = []
    for _ in range(5):
        digest = hashlib.sha256(rng.randbytes(32)).hexdigest()
        out += [f"{digest}  dist/tracelake-{_ver(rng)}.tar.gz",
                f"{hashlib.md5(rng.randbytes(16)).hexdigest()}  data/sample.parquet",
                f"    --hash=sha256:{hashlib.sha256(rng.randbytes(8)).hexdigest()}",
                f'checksum = "{hashlib.sha256(rng.randbytes(8)).hexdigest()}"',
                f"golang.org/x/net v0.{rng.randint(10, 40)}.0 h1:{base64.b64encode(hashlib.sha256(rng.randbytes(8)).digest()).decode()}",
                f"oid sha256:{hashlib.sha256(rng.randbytes(8)).hexdigest()}\nsize {rng.randint(1000, 10**8)}",
                f"sha1: {hashlib.sha1(rng.randbytes(8)).hexdigest()}"]
    return out


def lockfiles(rng: random.Random) -> list[str]:
    """npm, yarn, pnpm and pip lockfile lines with integrity hashes."""
    out = []
    for _ in range(6):
        pkg, ver = rng.choice(PACKAGES), _ver(rng)
        sri = base64.b64encode(hashlib.sha512(rng.randbytes(16)).digest()).decode()
        name = pkg.rsplit("/", 1)[-1]
        out += [f'      "integrity": "sha512-{sri}",',
                f'      "resolved": "https://registry.npmjs.org/{pkg}/-/{name}-{ver}.tgz",',
                f'"node_modules/{pkg}": {{\n  "version": "{ver}",\n  "resolved": "https://registry.npmjs.org/{pkg}/-/{name}-{ver}.tgz",\n  "integrity": "sha512-{sri}"\n}}',
                f'{pkg}@^{ver}:\n  version "{ver}"\n  resolved "https://registry.yarnpkg.com/{pkg}/-/{name}-{ver}.tgz#{hashlib.sha1(rng.randbytes(8)).hexdigest()}"',
                f"{rng.choice(PY_PACKAGES)}=={_ver(rng)} \\\n    --hash=sha256:{hashlib.sha256(rng.randbytes(8)).hexdigest()}",
                f'<script src="https://cdn.jsdelivr.net/npm/{pkg}@{ver}" integrity="sha384-{base64.b64encode(hashlib.sha384(rng.randbytes(8)).digest()).decode()}" crossorigin="anonymous"></script>']
    return out


def _png(rng: random.Random, width: int, height: int) -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    raw = b"".join(b"\x00" + rng.randbytes(width * 3) for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def images(rng: random.Random) -> list[str]:
    """Real (tiny, valid) PNGs as data URIs, JSON image blocks and inline source maps."""
    out = []
    for _ in range(14):
        data = base64.b64encode(_png(rng, rng.randint(4, 12), rng.randint(4, 12))).decode()
        out.append(rng.choice([f"data:image/png;base64,{data}",
                               f'{{"type": "image", "source": {{"type": "base64", "media_type": "image/png", "data": "{data}"}}}}',
                               f'<img src="data:image/png;base64,{data}" alt="chart">']))
    for _ in range(6):
        jpeg = base64.b64encode(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + rng.randbytes(300)).decode()
        out.append(f"data:image/jpeg;base64,{jpeg}")
        smap = base64.b64encode(f'{{"version":3,"sources":["src/{rng.choice(WORDS)}.ts"],"mappings":"AAAA,SAAS{rand(rng, "ABCDEFGIKMOQSWYacegikmoqsuwy", 40)}"}}'.encode()).decode()
        out.append(f"//# sourceMappingURL=data:application/json;base64,{smap}")
    return out


def minified(rng: random.Random) -> list[str]:
    """Minified JavaScript and bundle names with content hashes."""
    out = []
    for _ in range(12):
        a, b, c = (rand(rng, LOWER, 1) + rand(rng, ALNUM, rng.randint(0, 2)) for _ in range(3))
        out.append(f'!function(e,t){{"object"==typeof exports&&"undefined"!=typeof module?module.exports=t():"function"==typeof define&&define.amd?define(t):(e=e||self).{a}=t()}}(this,function(){{"use strict";var {b}=Object.freeze({{}}),{c}=/^[{rand(rng, LOWER, 6)}]+$/;return function(n){{return {b}[n]||{c}.test(n)}}}});')
        out.append(f'(self.webpackChunk_N_E=self.webpackChunk_N_E||[]).push([[{rng.randint(100, 999)}],{{{rng.randint(1000, 99999)}:function(e,t,n){{"use strict";n.d(t,{{Z:function(){{return {a}}}}});var r=n({rng.randint(1000, 99999)}),o="{rand(rng, ALNUM, 20)}";function {a}(e){{return(0,r.jsx)("div",{{className:"{rand(rng, LOWER, 5)}_{rand(rng, ALNUM, 5)}",children:o+e}})}}}}}}]);')
        out.append(f'<script src="/_next/static/chunks/pages/_app-{rand(rng, HEX, 16)}.js" defer=""></script>')
    return out


def css(rng: random.Random) -> list[str]:
    """CSS with hex colours and hashed class names."""
    out = []
    for _ in range(10):
        out.append(f".{rand(rng, LOWER, 6)}-{rand(rng, LOWER_ALNUM, 6)}{{color:#{rand(rng, HEX, 6)};background:#{rand(rng, HEX, 3)};border-color:#{rand(rng, HEX, 8)}}}")
        out.append(f"  --color-primary-{rng.randint(1, 9)}00: #{rand(rng, HEX, 6)};")
    return out


def docker(rng: random.Random) -> list[str]:
    """Image digests, image ids, container ids and pod names."""
    out = []
    for _ in range(6):
        digest = hashlib.sha256(rng.randbytes(16)).hexdigest()
        out += [f"ghcr.io/acme/api@sha256:{digest}",
                f"Digest: sha256:{hashlib.sha256(rng.randbytes(16)).hexdigest()}\nStatus: Downloaded newer image for python:3.12-slim",
                f"acme/worker   {_ver(rng)}   {rand(rng, HEX, 12)}   2 days ago   {rng.randint(80, 900)}MB",
                f"{rand(rng, HEX, 12)}   postgres:16   \"docker-entrypoint.s…\"   Up 3 hours   0.0.0.0:5432->5432/tcp   db-1",
                f"api-{rand(rng, LOWER_ALNUM, 10)}-{rand(rng, LOWER_ALNUM, 5)}   1/1   Running   0   {rng.randint(2, 59)}m",
                f"FROM node:20-alpine@sha256:{hashlib.sha256(rng.randbytes(16)).hexdigest()}"]
    return out


def versions_and_paths(rng: random.Random) -> list[str]:
    """Semver, pinned requirements, file paths and long identifiers."""
    out = []
    for _ in range(6):
        out += [f'"{rng.choice(PACKAGES)}": "^{_ver(rng)}",', f"{rng.choice(PY_PACKAGES)}=={_ver(rng)}",
                f"v{_ver(rng)}-rc.{rng.randint(1, 9)}+build.{rand(rng, HEX, 7)}",
                f"/home/alice/src/tracelake/pipeline/{rng.choice(WORDS)}/{rng.choice(WORDS)}_{rng.choice(WORDS)}.py",
                f"node_modules/.pnpm/@babel+core@{_ver(rng)}_{rand(rng, LOWER_ALNUM, 26)}/node_modules/@babel/core/lib/index.js",
                f"~/.cache/huggingface/hub/models--acme--{rng.choice(WORDS)}-7b/snapshots/{rand(rng, HEX, 40)}/config.json",
                "Test" + "".join(w.capitalize() for w in rng.sample(WORDS, 6)) + "WhenInputIsEmpty",
                "test_" + "_".join(rng.sample(WORDS, 7)) + "_fails_closed",
                "".join(w.capitalize() for w in rng.sample(WORDS, 5)) + "FactoryBeanProxyImpl"]
    return out


def tracebacks(rng: random.Random) -> list[str]:
    out = []
    for _ in range(8):
        mod, fn = rng.choice(WORDS), rng.choice(WORDS)
        out.append(f'Traceback (most recent call last):\n  File "/home/bob/src/app/{mod}.py", line {rng.randint(10, 900)}, in {fn}_{rng.choice(WORDS)}\n'
                   f'    return self._{fn}(payload, timeout={rng.randint(1, 60)})\n  File "/usr/lib/python3.11/json/decoder.py", line 355, in raw_decode\n'
                   f"    raise JSONDecodeError(\"Expecting value\", s, err.value) from None\njson.decoder.JSONDecodeError: Expecting value: line 1 column {rng.randint(1, 99)} (char {rng.randint(0, 999)})")
        out.append(f"    at {rng.choice(WORDS).capitalize()}Service.{fn} (/app/dist/{mod}.js:{rng.randint(1, 900)}:{rng.randint(1, 80)})")
        out.append(f"goroutine {rng.randint(1, 400)} [running]:\nmain.(*{mod.capitalize()}).{fn.capitalize()}(0xc000{rand(rng, HEX, 6)}, 0x{rand(rng, HEX, 6)})")
    return out


PLACEHOLDER_VALUES = (
    "your-api-key-here", "changeme", "xxxxxxxx", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "<your-token>", "${API_KEY}",
    "{{ secrets.GITHUB_TOKEN }}", "REPLACE_ME", "TODO", "sk-...", "ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "sk_test_XXXXXXXXXXXXXXXXXXXXXXXX", "hf_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "password", "secret", "example",
    "<REDACTED>", "********", "null", "insert-key", "$(cat /run/secrets/api_key)", "op://Private/Stripe/credential",
)
ENV_NAMES = ("API_KEY", "OPENAI_API_KEY", "GITHUB_TOKEN", "STRIPE_SECRET_KEY", "HF_TOKEN", "DB_PASSWORD", "SECRET_KEY",
             "SLACK_WEBHOOK_URL", "AWS_SECRET_ACCESS_KEY", "SENTRY_DSN")


def placeholders(rng: random.Random) -> list[str]:
    """``.env.example`` lines and docs that name a secret without holding one."""
    out = [f"{rng.choice(ENV_NAMES)}={v}" for v in PLACEHOLDER_VALUES]
    out += ["DATABASE_URL=postgres://user:password@localhost:5432/mydb", "REDIS_URL=redis://localhost:6379/0",
            'password: "${DB_PASSWORD}"', "token: !vault |", "api_key = os.environ[\"API_KEY\"]",
            "export GITHUB_TOKEN=$(gh auth token)", "SENTRY_DSN=https://examplePublicKey@o0.ingest.sentry.io/0",
            "SLACK_WEBHOOK_URL=https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"]
    rng.shuffle(out)
    return out


def redacted(rng: random.Random) -> list[str]:
    """Output of an earlier redaction pass, and masked key displays."""
    kinds = ("github_token", "aws_access_key", "openai_key", "private_key", "jwt", "password", "slack_token")
    out = [f"export TOKEN=[REDACTED:{k}]" for k in kinds]
    out += [f'"authorization": "Bearer [REDACTED:{rng.choice(kinds)}]"' for _ in range(4)]
    out += [f"sk-...{rand(rng, ALNUM, 4)}", f"Using key ending in ...{rand(rng, ALNUM, 4)}", "password=********",
            f"ghp_****************************{rand(rng, ALNUM, 4)}", "AKIA****************"]
    return out


def aws_examples(rng: random.Random) -> list[str]:
    """The documented AWS example credentials and other documentation values."""
    out = ["AKIAIOSFODNN7EXAMPLE", "aws_access_key_id = AKIAIOSFODNN7EXAMPLE",
           "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
           "export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\nexport AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
           "AKIAI44QH8DHBEXAMPLE", "je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY",
           f"arn:aws:iam::{rng.randint(10**11, 10**12 - 1)}:role/{rng.choice(WORDS)}-deployer",
           f"arn:aws:s3:::acme-{rng.choice(WORDS)}-{rand(rng, LOWER_ALNUM, 8)}"]
    return out


def ids(rng: random.Random) -> list[str]:
    """Agent-log ids that look random: message, tool, request and call ids, trace ids."""
    b58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
    out = []
    for _ in range(5):
        out += [f'"id": "msg_01{rand(rng, b58, 22)}"', f'"tool_use_id": "toolu_01{rand(rng, b58, 22)}"',
                f'"requestId": "req_011C{rand(rng, b58, 20)}"', f'"call_id": "call_{rand(rng, ALNUM, 24)}"',
                f"traceparent: 00-{rand(rng, HEX, 32)}-{rand(rng, HEX, 16)}-01",
                f'"id": "chatcmpl-{rand(rng, ALNUM, 29)}"', f"Request-Id: req_{rand(rng, ALNUM, 14)}",
                f'"encrypted_content": "gAAAAAB{rand(rng, ALNUM, 60)}"']
    return out


def public_material(rng: random.Random) -> list[str]:
    """Public keys and certificates: key-shaped but meant to be shared."""
    out = []
    for _ in range(4):
        ed = base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00 " + rng.randbytes(32)).decode()
        out.append(f"ssh-ed25519 {ed} {rng.choice(['alice', 'bob', 'ci'])}@laptop")
        cert = base64.b64encode(b"0\x82\x03\x1d0\x82\x02\x05\xa0\x03\x02\x01\x02" + rng.randbytes(780)).decode()
        lines = "\n".join(cert[i:i + 64] for i in range(0, len(cert), 64))
        out.append(f"-----BEGIN CERTIFICATE-----\n{lines}\n-----END CERTIFICATE-----")
        pub = base64.b64encode(b"0\x82\x01\"0\r\x06\t*\x86H\x86\xf7\r\x01\x01\x01\x05\x00\x03\x82\x01\x0f\x000\x82\x01\n\x02\x82\x01\x01\x00" + rng.randbytes(260)).decode()
        lines = "\n".join(pub[i:i + 64] for i in range(0, len(pub), 64))
        out.append(f"-----BEGIN PUBLIC KEY-----\n{lines}\n-----END PUBLIC KEY-----")
        out.append(f"age1{rand(rng, 'qpzry9x8gf2tvdw0s3jn54khce6mua7l', 58)}")
    return out


def misc(rng: random.Random) -> list[str]:
    """Everything else: base64 of plain text, numbers, timestamps, colour-free hex dumps."""
    out = []
    for _ in range(4):
        text = f"{rng.choice(WORDS)} {rng.choice(WORDS)} finished in {rng.randint(1, 900)} ms"
        out += [f"echo {base64.b64encode(text.encode()).decode()} | base64 -d",
                f"00000{rng.randint(0, 9)}0: {' '.join(rand(rng, HEX, 4) for _ in range(8))}  ................",
                f"2026-01-0{rng.randint(1, 9)}T{rng.randint(10, 23)}:{rng.randint(10, 59)}:{rng.randint(10, 59)}.{rng.randint(100, 999)}Z INFO {rng.choice(WORDS)} id={rand(rng, UPPER, 3)}-{rng.randint(1000, 9999)}",
                f"https://github.com/acme/api/pull/{rng.randint(10, 9999)}/commits/{rand(rng, HEX, 40)}",
                f"https://www.youtube.com/watch?v={rand(rng, ALNUM + '-_', 11)}",
                f"pk_test_{rand(rng, ALNUM, 24)}"]
    return out


GENERATORS: tuple[Callable[[random.Random], list[str]], ...] = (
    git, uuids, hashes, lockfiles, images, minified, css, docker, versions_and_paths, tracebacks,
    placeholders, redacted, aws_examples, ids, public_material, misc,
)


def negatives(seed: int = 0) -> list[str]:
    """The negative corpus for ``seed``: same seed, same list, no duplicates. Its own
    stream (not ``Random(seed)``, which ``positive`` uses), so no draw repeats a secret's."""
    rng = random.Random(f"negatives:{seed}")
    out: list[str] = []
    for gen in GENERATORS:
        out += gen(rng)
    return list(dict.fromkeys(out))
