"""Recall and false positives of secret redaction, and of the export firewall's scanners.

- Recall: the planted-credential generator of the tests (``tests/secrets``: providers'
  documented formats, random bodies) over many seeds. For each credential's context
  text, collect's redaction must remove the secret in every encoding; the catalogue
  alone, detect-secrets alone and the firewall (all three) are measured beside it.
- False positives: strings changed by redaction in (a) the negative corpus of the
  tests (git SHAs, UUIDs, hashes, base64 images, minified code...), (b) every string of
  the real sessions shipped in the teich and claude-code-log sdists (fetched into
  bench/.work, never committed), (c) a ``tracelake synth`` corpus, next to the secrets
  it planted.
- After redaction: how many strings detect-secrets still flags (positives, real, synth).

Usage: .venv/bin/python bench/secrets/quality.py [--seeds 0:20] [--work bench/.work]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import orjson
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import sdist_sessions
from pipeline.collect.redact import Redactor
from pipeline.export.firewall import secret_kinds_many, walk_strings
from pipeline.secrets import catalogue, independent
from pipeline.synth import synthesize
from tests.secrets.credentials import encodings, positive, providers
from tests.secrets.negatives import negatives

REPO = Path(__file__).resolve().parents[2]
SDISTS = {"teich": "teich==0.3.6", "claude-code-log": "claude-code-log==1.7.0"}


def _removed(secret: str, text: str) -> bool:
    return not any(form in text for form in encodings(secret))


def _catalogue_only(text: str) -> str:
    spans = sorted((f.start, f.end) for f in catalogue.find(text))
    out, last = [], 0
    for start, end in spans:
        if start >= last:
            out.append(text[last:start])
            out.append("[X]")
            last = end
    return "".join(out) + text[last:]


def recall(seeds: range) -> dict[str, object]:
    hits: Counter[str] = Counter()
    total = 0
    missed: list[str] = []
    provider_names: set[str] = set()
    for seed in seeds:
        creds = positive(seed)
        provider_names |= providers(creds)
        contexts = [c.context for c in creds]
        firewall = secret_kinds_many(contexts)
        detect = independent.find_many(contexts)
        for cred, fw, ds in zip(creds, firewall, detect, strict=True):
            total += 1
            redacted = Redactor(fold_home=False).redact(cred.context)
            if _removed(cred.secret, redacted):
                hits["collect redaction"] += 1
            else:
                missed.append(f"seed {seed}: {cred.provider}/{cred.kind}")
            hits["catalogue alone"] += _removed(cred.secret, _catalogue_only(cred.context))
            hits["detect-secrets alone (flags)"] += bool(ds)
            hits["firewall, 3 rule sets (flags)"] += bool(fw)
            hits["detect-secrets flags after redaction"] += bool(independent.find(redacted))
    return {"credentials": total, "providers": len(provider_names), "hits": dict(hits), "missed": missed}


def fetch_sessions(work: Path) -> list[Path]:
    return [p for name, requirement in SDISTS.items() for p in sdist_sessions(work, name, requirement)]


def file_strings(files: list[Path]) -> list[str]:
    out: list[str] = []
    for path in files:
        for line in path.read_bytes().splitlines():
            try:
                out.extend(walk_strings(orjson.loads(line)))
            except orjson.JSONDecodeError:
                out.append(line.decode("utf-8", "replace"))
    return out


def false_positives(strings: list[str]) -> dict[str, object]:
    redactor = Redactor(fold_home=False)
    redacted = [redactor.redact(s) for s in strings]
    changed = sum(a != b for a, b in zip(strings, redacted, strict=True))
    flagged_after = sum(bool(k) for k in independent.find_many([r for r in redacted if r]))
    return {"strings": len(strings), "changed": changed, "by_kind": dict(sorted(redactor.counts.items())),
            "detect_secrets_after": flagged_after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0:20", help="first:last (exclusive) generator seeds")
    parser.add_argument("--work", type=Path, default=REPO / "bench" / ".work")
    parser.add_argument("--synth-sessions", type=int, default=200)
    args = parser.parse_args()
    first, last = (int(x) for x in args.seeds.split(":"))
    console = Console(width=80)
    catalogue.prefetch()  # the rules load in a thread; the first scan waits for them
    independent.prepare()

    rec = recall(range(first, last))
    table = Table(title=f"Recall: {rec['credentials']} credentials, {rec['providers']} providers, "
                        f"seeds {first}-{last - 1}")
    table.add_column("engine")
    table.add_column("caught", justify="right")
    table.add_column("share", justify="right")
    hits = rec["hits"]
    assert isinstance(hits, dict)
    for name, n in hits.items():
        table.add_row(name, str(n), f"{100 * n / int(str(rec['credentials'])):.1f}%")
    console.print(table)
    for miss in list(rec["missed"])[:20]:  # type: ignore[call-overload]
        console.print(f"  missed: {miss}")

    sessions = fetch_sessions(args.work)
    synth_dir = args.work / "secrets-synth"
    if not synth_dir.exists():
        synthesize(synth_dir, args.synth_sessions, seed=0)
    planted = json.loads((synth_dir / "synth-manifest.json").read_text())["secrets_by_kind"]
    cases = {
        "negative corpus (tests)": negatives(0),
        f"real sessions ({len(sessions)} files)": file_strings(sessions),
        f"synth ({args.synth_sessions} sessions)": file_strings(sorted(synth_dir.rglob("*.jsonl"))),
    }
    table = Table(title="Strings changed by redaction (false positives unless planted)")
    for column in ("corpus", "strings", "changed", "kinds", "DS after"):
        table.add_column(column, justify="left" if column in ("corpus", "kinds") else "right")
    for name, strings in cases.items():
        fp = false_positives(strings)
        by_kind = fp["by_kind"]
        assert isinstance(by_kind, dict)
        table.add_row(name, str(fp["strings"]), str(fp["changed"]),
                      ", ".join(f"{k} {v}" for k, v in by_kind.items()) or "-", str(fp["detect_secrets_after"]))
    console.print(table)
    console.print(f"synth planted secrets by kind: {planted}")


if __name__ == "__main__":
    main()
