"""Drift, deep verify and lineage over the real stages and the real teich sessions."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb

from pipeline.audit.deep import deep_verify
from pipeline.audit.lineage import lineage_view_sql
from pipeline.core.runner import Runner, RunOptions, RunResult
from pipeline.core.sources import SourceSpec
from pipeline.core.stage import Stage
from pipeline.core.store import LakeLayout
from pipeline.core.trust import load_trusted
from pipeline.drift import compute_drift
from pipeline.stages.registry import STAGES as REGISTERED
from schemas.drift import DriftThresholds

STAGES: list[Stage] = list(REGISTERED)


def run(root: Path, examples: Path) -> RunResult:
    sources = [
        SourceSpec("claude-code", examples / "example_claude_code.jsonl"),
        SourceSpec("codex", examples / "example_codex_session.jsonl"),
    ]
    options = RunOptions(root=root, sources=sources, recorded_at="2026-01-01T00:00:00Z")
    result = Runner(STAGES, options).run()
    assert result.ok, [(o.stage, o.error) for o in result.outcomes]
    return result


def test_planted_row_in_sft_export_is_a_firewall_breach(tmp_path: Path, teich_examples: Path) -> None:
    run(tmp_path, teich_examples)
    second = run(tmp_path, teich_examples)
    layout = LakeLayout(tmp_path)
    key = load_trusted(layout)
    clean = compute_drift(layout, None, None, DriftThresholds(), key, STAGES)
    assert clean.severity == "ok", clean.findings
    assert "firewall:export-sft" in clean.checks

    exports = tmp_path / "exports" / second.run_id / "sft"
    target = next(p for p in sorted(exports.glob("*.jsonl")) if p.name != "tool_schemas.jsonl"
                  and p.read_text().strip())
    row = json.loads(target.read_text().splitlines()[0])
    row.update(row_id="planted", category="rejected")
    with target.open("a") as handle:
        handle.write(json.dumps(row) + "\n")
    report = compute_drift(layout, None, None, DriftThresholds(), key, STAGES)
    assert report.severity == "alert"
    breaches = [f for f in report.findings if f.kind == "firewall_breach"]
    assert [f.stage for f in breaches] == ["export-sft"]
    assert any("planted" in d and "rejected" in d for d in breaches[0].details)


def test_deep_verify_and_lineage_on_real_stages(tmp_path: Path, teich_examples: Path) -> None:
    result = run(tmp_path, teich_examples)
    report = deep_verify(tmp_path, None, None, STAGES)
    assert report.passed
    verdicts = {c.stage: c.verdict for c in report.stages}
    assert verdicts == {s.name: "match" for s in STAGES}, report
    sampled = deep_verify(tmp_path, None, 1, STAGES)
    collect = next(c for c in sampled.stages if c.stage == "collect")
    assert sampled.passed and collect.sampled_files is not None and collect.verdict == "match"

    con = duckdb.connect()
    layout = LakeLayout(tmp_path)
    for name, ref in result.summary.tables.items():
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{layout.root / ref.path}')")
    sql = lineage_view_sql(set(result.summary.tables))
    assert sql is not None
    con.execute(sql)
    files = con.execute("SELECT DISTINCT source_file FROM lineage WHERE dataset = 'sft'").fetchall()
    assert files and all(f[0].endswith(".jsonl") for f in files)
    n_sft = con.execute("SELECT count(DISTINCT row_id) FROM lineage WHERE dataset = 'sft'").fetchone()
    assert n_sft is not None and n_sft[0] == result.summary.datasets["sft"]
