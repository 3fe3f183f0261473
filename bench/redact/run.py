"""Micro-benchmark for pipeline.collect.redact: MB/s on agent-log-like text.

Corpus (deterministic, seeded): string leaves of the teich example sessions when present,
Python standard-library source (code), synthetic shell output and JSON, cut into pieces
of log-normal size (median ~1.5 KB, long tail to ~200 KB) the way collect sees message
and tool-result fields. Three cases:
  clean       - that corpus with no secrets at all
  planted     - the same with one secret planted per ~50 KB
  no-anchor   - prose without any gate literal (the pure fast path)

Timing is CPU time (process_time) so a busy shared machine skews it less.
Usage: python bench/redact/run.py [--mb 50] [--teich DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import sysconfig
import time
from pathlib import Path

from pipeline.collect.redact import Redactor

SECRETS = (
    "sk-ant-api03-{r86}AA",
    "sk-proj-{r48}",
    "AKIA{U16}",
    "aws_secret_access_key = {b40}",
    "ghp_{r36}",
    "glpat-{r20}",
    "xoxb-1234567890-{r24}",
    "AIza{r35}",
    "sk_live_{r24}",
    "hf_{r34}",
    "Authorization: Bearer {r32}",
    "postgres://app:{r12}@db.internal:5432/prod",
    'PASSWORD="{r20}"',
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ{r20}.{r43}",
    "-----BEGIN RSA PRIVATE KEY-----\\n{b64}\\n-----END RSA PRIVATE KEY-----",
)
ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _secret(rng: random.Random) -> str:
    def r(n: int, alphabet: str = ALNUM) -> str:
        return "".join(rng.choice(alphabet) for _ in range(n))

    template = rng.choice(SECRETS)
    return template.format(
        r86=r(86),
        r48=r(48),
        U16=r(16, ALNUM[26:]),
        b40=r(40, ALNUM + "/+"),
        r36=r(36),
        r20=r(20),
        r24=r(24),
        r35=r(35),
        r34=r(34),
        r32=r(32),
        r12=r(12),
        r43=r(43),
        b64=r(64, ALNUM + "/+"),
    )


def _leaves(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _leaves(v)]
    if isinstance(value, list):
        return [s for v in value for s in _leaves(v)]
    return []


def _sources(teich: Path | None) -> list[str]:
    texts: list[str] = []
    if teich is not None and teich.is_dir():
        for path in sorted(teich.glob("*.jsonl")):
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    texts.extend(s for s in _leaves(json.loads(line)) if len(s) > 40)
                except ValueError:
                    continue
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py"))[:400]:
        texts.append(path.read_text(encoding="utf-8", errors="replace"))
    rng = random.Random(7)
    for i in range(300):
        rows = [
            f"-rw-r--r--  1 dev dev {rng.randint(100, 99999):>6} Nov {i % 28 + 1:>2} 12:{i % 60:02d} file_{j}.py"
            for j in range(rng.randint(5, 60))
        ]
        texts.append("\n".join(rows))
        texts.append(
            json.dumps(
                {"id": i, "status": "ok", "items": [{"n": j, "name": f"x{j}"} for j in range(20)]}
            )
        )
        texts.append(
            f"============ {rng.randint(1, 400)} passed, {rng.randint(0, 3)} failed in 3.2s ============\n"
            "FAILED tests/test_api.py::test_retry - AssertionError: expected 200, got 503"
        )
    return texts


def corpus(mb: float, teich: Path | None, plant: bool) -> list[str]:
    rng = random.Random(1234)
    pool = "\n".join(_sources(teich))
    target = int(mb * 1_000_000)
    pieces: list[str] = []
    size = 0
    next_secret = 50_000
    while size < target:
        n = min(200_000, max(40, int(rng.lognormvariate(7.3, 1.4))))
        start = rng.randrange(0, max(1, len(pool) - n))
        piece = pool[start : start + n]
        if plant and size + len(piece) >= next_secret:
            cut = rng.randrange(0, len(piece) + 1)
            piece = piece[:cut] + " " + _secret(rng) + " " + piece[cut:]
            next_secret += 50_000
        pieces.append(piece)
        size += len(piece)
    return pieces


def no_anchor(mb: float) -> list[str]:
    rng = random.Random(99)
    words = "the a model then we run it on every file of this repo while tests go green quickly now".split()
    out: list[str] = []
    size = 0
    while size < mb * 1_000_000:
        s = " ".join(rng.choice(words) for _ in range(rng.randint(20, 2000)))
        out.append(s)
        size += len(s)
    return out


def measure(label: str, pieces: list[str], repeat: int = 3) -> None:
    mb = sum(len(p.encode("utf-8")) for p in pieces) / 1e6
    best = float("inf")
    counts = None
    for _ in range(repeat):
        redactor = Redactor()
        t0 = time.process_time()
        for p in pieces:
            redactor.redact(p)
        best = min(best, time.process_time() - t0)
        counts = redactor.counts
    secrets = sum(v for k, v in (counts or {}).items() if k != "home_path")
    print(
        f"{label:10s} {mb:7.1f} MB in {len(pieces):6d} strings  {mb / best:7.1f} MB/s  "
        f"redactions={secrets} home_paths={(counts or {}).get('home_path', 0)}"
    )
    t0 = time.process_time()
    Redactor().redact_many(pieces)
    dt = time.process_time() - t0
    print(f"{'':10s} redact_many: {mb / dt:7.1f} MB/s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=50.0)
    parser.add_argument("--teich", type=Path, default=Path("tests/.cache/teich-0.3.6/examples"))
    args = parser.parse_args()
    Redactor().redact_many(["warm up: import pyarrow and compile once"])
    measure("no-anchor", no_anchor(args.mb))
    measure("clean", corpus(args.mb, args.teich, plant=False))
    measure("planted", corpus(args.mb, args.teich, plant=True))


if __name__ == "__main__":
    main()
