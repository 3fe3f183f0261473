"""413 planted credentials of 99 providers, through every stage: no byte under the lake
root holds any of them, whole or in part.

Everything is read back the way a consumer (or an attacker with the folder) would:
every string of every Parquet file (objects and exports, nested values included), and
the raw bytes of every other file: receipts, run statements, summaries, JSONL exports,
the DuckDB file, shard containers, the stat cache, manifests, compiled screens.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.runner import Runner, RunOptions, RunResult
from pipeline.core.sources import SourceSpec
from pipeline.sql import write_lake_db
from pipeline.stages.registry import load_stages
from tests.secrets.credentials import Credential, encodings
from tests.secrets.sessions import write_corpus

WINDOW = 12  # a run of this many characters of a secret's body is a partial leak


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


def _parquet_text(path: Path) -> str:
    table = pq.read_table(path)
    parts: list[str] = []
    for column in table.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            parts.extend(v for v in column.to_pylist() if v is not None)
        elif not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
                  or pa.types.is_boolean(column.type)):
            parts.extend(_strings(column.to_pylist()))
    return "\n".join(parts)


def everything_under(root: Path) -> str:
    """All text a reader of the folder can get at, one string."""
    parts = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix == ".parquet":
            parts.append(_parquet_text(path))
        parts.append(path.as_posix())
        parts.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(parts)


def leak_forms(cred: Credential) -> list[str]:
    """The secret as any file might hold it, and windows of its body for partial leaks."""
    forms = list(encodings(cred.secret))
    body = cred.secret
    if len(body) >= 3 * WINDOW and "\n" not in body:
        for start in (len(body) // 3, len(body) // 2, len(body) - WINDOW):
            forms.append(body[start : start + WINDOW])
    return forms


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RunResult, list[Credential]]:
    base = tmp_path_factory.mktemp("planted")
    claude, codex, creds = write_corpus(base / "logs", seed=0)
    root = base / "lake"
    sources = [SourceSpec("claude-code", claude), SourceSpec("codex", codex)]
    result = Runner(load_stages(), RunOptions(root=root, sources=sources, workers=2)).run()
    write_lake_db(result_layout(root), result.run_id)
    return root, result, creds


def result_layout(root: Path):  # type: ignore[no-untyped-def]
    from pipeline.core.store import LakeLayout

    return LakeLayout(root)


def test_the_run_passes_its_firewall(lake: tuple[Path, RunResult, list[Credential]]) -> None:
    _, result, _ = lake
    assert result.ok, [(o.stage, o.error, o.receipt.validation.errors if o.receipt else None)
                       for o in result.outcomes if o.status != "ok"]


def test_no_byte_under_the_root_holds_a_planted_secret(lake: tuple[Path, RunResult, list[Credential]]) -> None:
    root, _, creds = lake
    blob = everything_under(root)
    leaked = sorted({f"{c.provider}/{c.kind}: {form!r}" for c in creds for form in leak_forms(c) if form in blob})
    assert leaked == []


def test_the_collect_receipt_counts_by_kind_and_by_rule(lake: tuple[Path, RunResult, list[Credential]]) -> None:
    _, result, creds = lake
    collect = next(o.receipt for o in result.outcomes if o.stage == "collect")
    assert collect is not None
    kinds, rules = collect.stats["redactions"], collect.stats["redaction_rules"]
    secrets = sum(n for kind, n in kinds.items() if kind != "home_path")
    assert secrets == sum(rules.values()) >= len(creds)
    assert any(rule.startswith("tracelake.") for rule in rules)
    assert any(rule.startswith(("betterleaks.", "veles.")) for rule in rules)


def test_sql_redactions_counts_per_table_column_and_rule(lake: tuple[Path, RunResult, list[Credential]]) -> None:
    """`tracelake sql "select * from redactions"`: counts per table, column and kind with
    the rules behind each kind, and never a value."""
    root, result, creds = lake
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", "sql", "select * from redactions", "--root", str(root),
         "--format", "json"],
        capture_output=True, text=True, check=True,
    ).stdout
    rows = json.loads(out)
    assert rows and set(rows[0]) == {"table_name", "column_name", "kind", "values_redacted", "placeholders",
                                     "rule_ids"}
    assert {"messages", "tool_calls", "prompts"} <= {r["table_name"] for r in rows}
    assert all(r["placeholders"] >= r["values_redacted"] >= 1 for r in rows)
    assert all(r["rule_ids"] for r in rows)
    assert not any(form in out for c in creds for form in encodings(c.secret))
    rules = json.loads(subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", "sql", "select * from redaction_rules", "--root", str(root),
         "--format", "json"],
        capture_output=True, text=True, check=True,
    ).stdout)
    collect = next(o.receipt for o in result.outcomes if o.stage == "collect")
    assert collect is not None
    assert {r["rule_id"]: r["redactions"] for r in rules} == collect.stats["redaction_rules"]


def test_a_path_holding_a_secret_is_withheld_and_deep_verify_says_so(
    lake: tuple[Path, RunResult, list[Credential]],
) -> None:
    """The source manifest does not record a path with a token in it; deep verify cannot
    re-read that file and says why instead of failing."""
    from pipeline.audit.deep import deep_verify

    root, result, _ = lake
    report = deep_verify(root, result.run_id, None)
    collect = next(c for c in report.stages if c.stage == "collect")
    assert collect.verdict == "sources_unavailable", collect
    assert "hold a secret and were not recorded" in collect.detail and "[REDACTED:" in collect.detail
    assert report.passed
