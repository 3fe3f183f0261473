"""`make demo`: synthesise the demo corpus, run every stage, show where it all went."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rich.console import Console

DEMO_DIR = Path("demo")
SESSIONS = 60
SEED = 7
RECORDED_AT = "2026-01-01T00:00:00Z"
EXAMPLE_QUERIES = (
    (
        "Tool calls and error rate by tool",
        "SELECT name, count(*) AS calls, round(avg(CASE WHEN is_error THEN 1 ELSE 0 END), 3) AS error_rate "
        "FROM tool_calls GROUP BY name ORDER BY calls DESC LIMIT 8",
    ),
    (
        "What was set aside, and why",
        "SELECT stage, reason, count(*) AS n FROM quarantine GROUP BY ALL ORDER BY n DESC LIMIT 10",
    ),
    (
        "Per-stage receipts of this run",
        "SELECT stage, cache_hit, records_in, records_out, quarantined, filtered, validation_passed "
        "FROM receipts",
    ),
)


def corpus_sources(root: Path) -> list[str]:
    from pipeline.synth import synthesize

    sources = []
    for fmt in ("claude-code", "codex"):
        out = root / "corpus" / fmt
        if not (out / "synth-manifest.json").exists():
            synthesize(out, sessions=SESSIONS if fmt == "claude-code" else SESSIONS // 3, seed=SEED, fmt=fmt)
        sources += ["--source", f"{fmt}:{out}"]
    return sources


def tracelake(*args: str) -> int:
    return subprocess.call([sys.executable, "-m", "pipeline.cli.main", *args])


def main() -> int:
    console = Console()
    console.rule("[bold]tracelake demo")
    sources = corpus_sources(DEMO_DIR)
    console.print(f"demo corpus: {DEMO_DIR / 'corpus'} (synthetic, seed {SEED})")
    args = ["run-all", "--root", ".", *sources, "--recorded-at", RECORDED_AT]
    console.print(f"$ tracelake {' '.join(args)}")
    code = tracelake(*args)
    if code != 0:
        return code
    for title, sql in EXAMPLE_QUERIES:
        console.rule(title)
        console.print(f'$ tracelake sql "{sql}"')
        tracelake("sql", "--root", ".", sql)
    console.rule("the run's report")
    console.print("$ tracelake report")
    tracelake("report", "--root", ".")
    console.rule("next")
    console.print("tracelake receipts verify          # every signature and object, re-hashed")
    console.print("tracelake drift                    # compare with the previous run")
    console.print('tracelake sql "SELECT * FROM sessions LIMIT 5"')
    console.print("duckdb data/lake.duckdb            # the same views, for ad-hoc use")
    return 0


if __name__ == "__main__":
    sys.exit(main())
