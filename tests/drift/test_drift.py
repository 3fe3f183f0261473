"""Drift scenarios over real signed runs of tiny test stages, through the CLI where possible."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import typer
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from pipeline.cli.drift import register
from pipeline.core.receipts import list_runs
from pipeline.core.store import LakeLayout
from pipeline.core.trust import TrustedKeys, load_trusted
from pipeline.drift import compute_drift, resolve_thresholds
from pipeline.drift.metrics import Metrics, compare_metrics, swing_severity
from schemas.drift import DriftReport, DriftThresholds

from . import toy


def make_app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Test app."""

    register(app)
    return app


APP = make_app()


def drift(root: Path, *args: str) -> tuple[int, DriftReport | None, str]:
    result = CliRunner().invoke(APP, ["drift", "--root", str(root), "--format", "json", *args])
    report = None
    if result.exit_code in (0, 1):
        report = DriftReport.model_validate_json(result.stdout)
    return result.exit_code, report, result.output


def kinds(report: DriftReport) -> set[str]:
    return {f.kind for f in report.findings}


def trusted(root: Path) -> TrustedKeys:
    return load_trusted(LakeLayout(root))


def test_identical_rerun_is_ok(tmp_path: Path) -> None:
    toy.run(tmp_path)
    toy.run(tmp_path)
    code, report, _ = drift(tmp_path)
    assert report is not None, _
    assert code == 0
    assert report.severity == "ok"
    assert report.findings == []
    runs = list_runs(LakeLayout(tmp_path))
    assert (report.run_id, report.against_run_id) == (runs[-1], runs[-2])
    assert any(m.group == "category" for m in report.metrics)
    assert "firewall:export-toy" not in report.checks  # toy stage not in the registry
    run_dir = tmp_path / "receipts" / report.run_id
    assert DriftReport.model_validate_json((run_dir / "drift.json").read_text()) == report
    assert (run_dir / "drift.md").read_text().startswith("# tracelake drift: OK")


def test_identical_rerun_without_cache_is_ok(tmp_path: Path) -> None:
    toy.run(tmp_path)
    toy.forget_cache(tmp_path)
    toy.run(tmp_path)
    code, report, _ = drift(tmp_path)
    assert (code, report and report.severity) == (0, "ok")


@pytest.mark.parametrize(
    ("flags", "severity", "code"),
    [
        ([], "warn", 0),  # 30% < 50% alert default; fail-on alert by default
        (["--fail-on", "warn"], "warn", 1),
        (["--alert-pct", "25"], "alert", 1),
        (["--warn-pct", "40"], "ok", 0),
        (["--alert-pct", "25", "--fail-on", "never"], "alert", 0),
    ],
)
def test_thirty_percent_fewer_sessions(tmp_path: Path, flags: list[str], severity: str, code: int) -> None:
    toy.run(tmp_path, sessions=100)
    toy.run(tmp_path, sessions=70)
    got_code, report, output = drift(tmp_path, *flags)
    assert report is not None, output
    assert (report.severity, got_code) == (severity, code)
    if severity != "ok":
        subjects = {f.subject for f in report.findings}
        assert {"stage:seed", "table:scores", "table:tool_calls", "dataset:sft"} <= subjects
        assert all(f.kind == "count_swing" for f in report.findings)
        swing = next(f for f in report.findings if f.subject == "table:scores")
        assert (swing.before, swing.after, swing.change_pct) == (100, 70, -30.0)


def test_small_counts_need_an_absolute_change(tmp_path: Path) -> None:
    toy.run(tmp_path, sessions=8)
    toy.run(tmp_path, sessions=5)  # -37.5% but only 3 rows
    code, report, _ = drift(tmp_path)
    assert report is not None and report.severity == "ok" and code == 0
    code, report, _ = drift(tmp_path, "--min-abs-change", "2")
    assert report is not None and report.severity == "warn"


def test_category_swing(tmp_path: Path) -> None:
    toy.run(tmp_path, sessions=200)
    toy.run(tmp_path, sessions=200, category_skew="docs")
    code, report, _ = drift(tmp_path)
    assert report is not None
    subjects = {f.subject: f.severity for f in report.findings}
    assert subjects["category:docs"] == "alert"  # 50 -> 125
    assert subjects["category:bugfix"] == "alert"  # 50 -> 0 (every even session skewed)
    assert "table:scores" not in subjects
    assert code == 1


def test_new_malformed_line_kind_warns(tmp_path: Path) -> None:
    toy.run(tmp_path, malformed={"invalid_json": 3})
    toy.run(tmp_path, malformed={"invalid_json": 3, "nul_bytes": 1})
    code, report, _ = drift(tmp_path)
    assert report is not None
    assert report.severity == "warn" and code == 0
    (finding,) = report.findings
    assert (finding.kind, finding.subject, finding.stage) == (
        "new_quarantine_reason", "quarantine:seed:nul_bytes", "seed",
    )
    code, _, _ = drift(tmp_path, "--fail-on", "warn")
    assert code == 1


def test_new_error_kind_warns(tmp_path: Path) -> None:
    toy.run(tmp_path, error_kinds=["timeout"])
    toy.run(tmp_path, error_kinds=["timeout", "permission_denied"])
    _, report, _ = drift(tmp_path)
    assert report is not None
    assert {(f.kind, f.subject) for f in report.findings} >= {
        ("new_error_kind", "error_kind:permission_denied")
    }
    assert report.severity == "warn"


def test_nondeterministic_stage_is_an_alert(tmp_path: Path) -> None:
    toy.run(tmp_path, toy.STAGES)
    toy.forget_cache(tmp_path)  # same cache keys, but every stage executes again
    toy.run(tmp_path, toy.STAGES)
    code, report, _ = drift(tmp_path)
    assert report is not None
    assert code == 1 and report.severity == "alert"
    (finding,) = report.findings
    assert finding.kind == "deterministic_violation"
    assert (finding.stage, finding.tables) == ("flaky", ["flaky_out"])


def _tamper(receipt: Path) -> None:
    envelope = json.loads(receipt.read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"]["records_out"] += 1
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    receipt.write_text(json.dumps(envelope))


def test_tampered_receipt_is_an_alert(tmp_path: Path) -> None:
    toy.run(tmp_path)
    second = toy.run(tmp_path)
    _tamper(tmp_path / "receipts" / second.run_id / "seed.receipt.json")
    code, report, _ = drift(tmp_path)
    assert report is not None and code == 1 and report.severity == "alert"
    assert ("signature_invalid", "receipts/" + second.run_id + "/seed.receipt.json") in {
        (f.kind, f.subject) for f in report.findings
    }


def test_unreadable_receipt_and_tampered_object(tmp_path: Path) -> None:
    toy.run(tmp_path)
    second = toy.run(tmp_path, sessions=99)
    run_dir = tmp_path / "receipts" / second.run_id
    (run_dir / "export-toy.receipt.json").write_text("{not json")
    scores = next(r for r in second.outcomes if r.stage == "seed").receipt
    assert scores is not None
    obj = tmp_path / scores.outputs[0].path
    obj.chmod(0o644)
    obj.write_bytes(obj.read_bytes() + b"x")
    code, report, output = drift(tmp_path)
    assert report is not None, output
    assert code == 1
    assert {"signature_invalid", "object_integrity"} <= kinds(report)


def test_failed_and_missing_stages_alert(tmp_path: Path) -> None:
    toy.run(tmp_path, toy.STABLE)
    toy.run(tmp_path, [toy.SEED])  # export-toy did not run
    _, report, _ = drift(tmp_path)
    assert report is not None
    assert [(f.kind, f.subject) for f in report.findings if f.severity == "alert"] == [
        ("stage_missing", "stage:export-toy")
    ]
    toy.run(tmp_path, toy.STABLE, sessions=-1)  # negative count: seed fails, export is skipped
    code, report, _ = drift(tmp_path)
    assert report is not None and code == 1
    assert {(f.kind, f.subject) for f in report.findings} >= {
        ("stage_failed", "stage:seed"), ("stage_failed", "stage:export-toy")
    }


def test_firewall_breach_in_export_file_is_an_alert(tmp_path: Path) -> None:
    first = toy.run(tmp_path)
    second = toy.run(tmp_path)
    layout = LakeLayout(tmp_path)
    thresholds = DriftThresholds()
    clean = compute_drift(layout, None, None, thresholds, trusted(tmp_path), toy.STABLE)
    assert clean.severity == "ok" and "firewall:export-toy" in clean.checks
    export = tmp_path / "exports" / second.run_id / "sft.jsonl"
    planted = {"task_id": "t0000", "session_id": "s0000", "category": "bugfix", "accepted": False}
    with export.open("a") as handle:
        handle.write(json.dumps(planted) + "\n")
    report = compute_drift(layout, None, None, thresholds, trusted(tmp_path), toy.STABLE)
    assert report.severity == "alert"
    (finding,) = [f for f in report.findings if f.kind == "firewall_breach"]
    assert finding.stage == "export-toy"
    assert "t0000" in finding.details[0]
    # The edited file no longer matches what its receipt signed, either (in both runs:
    # an export is one file hard-linked into every run that reuses it).
    integrity = [f for f in report.findings if f.kind == "object_integrity"]
    assert sorted(f.subject for f in integrity) == [f"exports/{r.run_id}/sft.jsonl" for r in (first, second)]


def test_single_run_has_nothing_to_compare(tmp_path: Path) -> None:
    toy.run(tmp_path)
    code, report, _ = drift(tmp_path)
    assert report is not None and code == 0
    assert report.against_run_id is None and report.metrics == []


def test_tool_failures_exit_2(tmp_path: Path) -> None:
    assert drift(tmp_path)[0] == 2  # no runs at all
    toy.run(tmp_path)
    assert drift(tmp_path, "no-such-run")[0] == 2
    assert drift(tmp_path, "--against", "nope")[0] == 2
    assert drift(tmp_path, "--fail-on", "sometimes")[0] == 2
    assert drift(tmp_path, "--warn-pct", "60")[0] == 2  # above the default alert_pct
    bad = tmp_path / "bad.toml"
    bad.write_text("[drift]\nwarn_pcnt = 3\n")
    assert drift(tmp_path, "--config", str(bad))[0] == 2
    result = CliRunner().invoke(APP, ["drift", "--root", str(tmp_path), "--format", "xml"])
    assert result.exit_code == 2


def test_markdown_output(tmp_path: Path) -> None:
    toy.run(tmp_path, sessions=100)
    toy.run(tmp_path, sessions=40)
    result = CliRunner().invoke(APP, ["drift", "--root", str(tmp_path), "--format", "md"])
    assert result.exit_code == 1
    assert result.stdout.startswith("# tracelake drift: ALERT")
    assert "| alert | count_swing | table:scores | table scores rows: 100 -> 40 (-60.0%) |" in result.stdout


# --- threshold precedence ---------------------------------------------------------------


def test_precedence_flag_env_config_default() -> None:
    config = {"drift": {"warn_pct": 10, "alert_pct": 90, "min_abs_change": 1}}
    env = {"TRACELAKE_DRIFT_WARN_PCT": "15", "TRACELAKE_DRIFT_ALERT_PCT": "80"}
    none = {"warn_pct": None, "alert_pct": None, "min_abs_change": None}
    assert resolve_thresholds(none, env={}, config={}) == DriftThresholds(
        warn_pct=20, alert_pct=50, min_abs_change=5
    )
    assert resolve_thresholds(none, env={}, config=config) == DriftThresholds(
        warn_pct=10, alert_pct=90, min_abs_change=1
    )
    assert resolve_thresholds(none, env=env, config=config) == DriftThresholds(
        warn_pct=15, alert_pct=80, min_abs_change=1
    )
    flags = {**none, "warn_pct": 30.0}
    assert resolve_thresholds(flags, env=env, config=config) == DriftThresholds(
        warn_pct=30, alert_pct=80, min_abs_change=1
    )


def test_precedence_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toy.run(tmp_path, sessions=100)
    toy.run(tmp_path, sessions=70)  # a 30% swing
    config = tmp_path / "tracelake.toml"
    config.write_text('[drift]\nalert_pct = 25\nfail_on = "alert"\n')
    assert drift(tmp_path, "--config", str(config))[1].severity == "alert"  # type: ignore[union-attr]
    monkeypatch.setenv("TRACELAKE_DRIFT_ALERT_PCT", "35")
    assert drift(tmp_path, "--config", str(config))[1].severity == "warn"  # type: ignore[union-attr]
    code, report, _ = drift(tmp_path, "--config", str(config), "--alert-pct", "30")
    assert report is not None and report.severity == "alert" and code == 1
    assert report.thresholds == DriftThresholds(warn_pct=20, alert_pct=30, min_abs_change=5)


def test_json_schema_is_current() -> None:
    from schemas.drift import JSON_SCHEMA_PATH, json_schema_text

    assert JSON_SCHEMA_PATH.read_text() == json_schema_text(), "run python -m schemas.drift"


def test_drift_json_validates_against_checked_in_schema(tmp_path: Path) -> None:
    import jsonschema

    from schemas.drift import JSON_SCHEMA_PATH

    toy.run(tmp_path, sessions=100, malformed={"a": 9})
    run = toy.run(tmp_path, sessions=10, malformed={"b": 9})
    drift(tmp_path)
    document = json.loads((tmp_path / "receipts" / run.run_id / "drift.json").read_text())
    jsonschema.validate(document, json.loads(JSON_SCHEMA_PATH.read_text()))
    assert document["severity"] == "alert"


RANK = {None: 0, "warn": 1, "alert": 2}


@given(
    before=st.integers(0, 10_000),
    a=st.integers(0, 10_000),
    b=st.integers(0, 10_000),
    warn=st.floats(0, 100),
    extra=st.floats(0, 100),
    min_abs=st.integers(0, 50),
)
def test_swing_severity_grows_with_the_change(
    before: int, a: int, b: int, warn: float, extra: float, min_abs: int
) -> None:
    thresholds = DriftThresholds(warn_pct=warn, alert_pct=warn + extra, min_abs_change=min_abs)
    small, large = sorted((a, b), key=lambda x: abs(x - before))
    assert swing_severity(before, before, thresholds) is None
    assert RANK[swing_severity(before, small, thresholds)] <= RANK[swing_severity(before, large, thresholds)]
    if abs(large - before) < min_abs:
        assert swing_severity(before, large, thresholds) is None


def test_table_output_fits_80_columns(tmp_path: Path) -> None:
    """The terminal default: tables, nothing wrapped, every line within 80 columns."""
    toy.run(tmp_path, sessions=100)
    toy.run(tmp_path, sessions=40)
    result = CliRunner().invoke(APP, ["drift", "--root", str(tmp_path)], env={"COLUMNS": "80"})
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("drift: ALERT  run ")
    assert max(len(line) for line in lines) <= 80
    assert any("count_swing" in line and "table:scores" in line for line in lines)
    assert any(line.split()[1:-1] == ["table", "│", "scores", "│", "100", "│", "40", "│", "-60", "│", "-60.0"]
               for line in lines)


def _reach(prompts: int, scored: int) -> Metrics:
    metrics = Metrics()
    metrics.scopes.add("reach")
    metrics.put("reach", "codex.prompts", prompts, "reach")
    metrics.put("reach", "codex.scored", scored, "reach")
    metrics.put("reach", "claude-code.prompts", 40, "reach")
    metrics.put("reach", "claude-code.scored", 40, "reach")
    return metrics


@pytest.mark.parametrize(("after", "severity"), [
    ((60, 2), "alert"),  # the Codex Desktop case: 56 of 58 tasks lost
    ((60, 42), "warn"),  # 97% -> 70%: a 28% drop of the share
    ((120, 113), None),  # more prompts, same share: not drift
    ((30, 0), "alert"),
    ((0, 0), "alert"),  # its prompts no longer even collected
])
def test_a_source_whose_prompts_stop_reaching_score_alarms(after: tuple[int, int], severity: str | None) -> None:
    _, findings = compare_metrics(_reach(58, 56), _reach(*after), DriftThresholds())
    reach = [f for f in findings if f.kind == "source_reach_drop"]
    assert [f.severity for f in reach] == ([severity] if severity else [])
    assert all(f.subject == "reach:codex" for f in reach)


def test_a_stage_declared_not_bitwise_deterministic_is_not_drift(tmp_path: Path) -> None:
    """The same flaky stage, re-run on the same inputs, is an alert while it claims to be
    bitwise deterministic; declared otherwise, drift leaves it to deep verify."""
    stages = toy.stage_with("none")
    toy.run(tmp_path, stages)
    toy.forget_cache(tmp_path)
    toy.run(tmp_path, stages)
    layout = LakeLayout(tmp_path)
    thresholds = resolve_thresholds({})
    report = compute_drift(layout, None, None, thresholds, trusted(tmp_path), stages)
    assert report.severity == "ok" and report.findings == []
    # stages drift does not know (train-toy here) are held to bitwise determinism
    strict = compute_drift(layout, None, None, thresholds, trusted(tmp_path), toy.STAGES)
    assert {(f.kind, f.stage) for f in strict.findings} == {
        ("deterministic_violation", "flaky"), ("deterministic_violation", "train-toy")}
