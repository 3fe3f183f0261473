"""Deep verify: re-run stages from the lake (and recorded source files) and compare digests."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.audit.deep import DeepVerifyReport, deep_verify, first_differences, print_deep_report
from pipeline.core.store import LakeLayout
from schemas.tables import from_rows
from tests.drift import toy


def verdicts(report: DeepVerifyReport) -> dict[str, str]:
    return {c.stage: c.verdict for c in report.stages}


def test_lake_stages_match_and_flaky_differs(tmp_path: Path) -> None:
    run = toy.run(tmp_path, toy.STAGES)
    report = deep_verify(tmp_path, None, None, toy.STAGES)
    assert report.run_id == run.run_id
    assert verdicts(report) == {"seed": "match", "flaky": "differs", "export-toy": "match"}
    assert not report.passed
    flaky = next(c for c in report.stages if c.stage == "flaky")
    (table,) = [t for t in flaky.tables if not t.match]
    assert table.table == "flaky_out"
    first = table.first_differences[0]
    assert first.index == 0
    assert first.recorded is not None and first.recomputed is not None
    assert first.recorded["task_id"] == first.recomputed["task_id"] == "t0000"
    assert first.recorded["nonce"] != first.recomputed["nonce"]


def test_stable_run_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toy.run(tmp_path, toy.STABLE)
    report = deep_verify(tmp_path, None, None, toy.STABLE)
    assert report.passed and set(verdicts(report).values()) == {"match"}
    print_deep_report(report)
    assert "deep verify passed" in capsys.readouterr().out


def test_stage_not_installed_or_new_version_is_skipped(tmp_path: Path) -> None:
    toy.run(tmp_path, toy.STABLE)
    report = deep_verify(tmp_path, None, None, [toy.SEED])
    assert verdicts(report) == {"seed": "match", "export-toy": "skipped"}
    assert report.passed


def test_source_stage_rereads_recorded_files(tmp_path: Path) -> None:
    sources = tmp_path / "sessions"
    toy.write_sessions(sources)
    lake = tmp_path / "lake"
    toy.run_sources(lake, sources)
    report = deep_verify(lake, None, None, [toy.LINES_STAGE])
    (check,) = report.stages
    assert check.verdict == "match", check
    assert {t.table: t.recorded_rows for t in check.tables} == {"lines": 14, "lines_quarantine": 4}

    # a sample of one file pulls in the files its sessions continue into
    report = deep_verify(lake, None, 1, [toy.LINES_STAGE])
    (check,) = report.stages
    assert check.verdict == "match", check
    assert check.sampled_files == 2
    assert all(t.recorded_rows < 14 for t in check.tables if t.table == "lines")

    (sources / "f2.jsonl").write_text('{"session_id": "s2", "text": "edited"}\n')
    report = deep_verify(lake, None, None, [toy.LINES_STAGE])
    (check,) = report.stages
    assert check.verdict == "sources_unavailable" and "f2.jsonl" in check.detail
    assert report.passed  # unavailable sources are not a failure


def test_first_differences_finds_rows_past_a_batch() -> None:
    rows = [{"task_id": f"t{i:05d}", "nonce": 0} for i in range(10_000)]
    changed = [dict(r) for r in rows]
    changed[9_000]["nonce"] = 1
    a, b = from_rows(toy.FLAKY, rows), from_rows(toy.FLAKY, changed)
    (diff,) = first_differences(a, b)
    assert diff.index == 9_000 and diff.recomputed == {"task_id": "t09000", "nonce": 1}
    tail = first_differences(a, a.slice(0, 9_999))
    assert [d.index for d in tail] == [9_999] and tail[0].recomputed is None


def test_missing_input_object_is_unavailable(tmp_path: Path) -> None:
    run = toy.run(tmp_path, toy.STABLE)
    seed = next(o for o in run.outcomes if o.stage == "seed").receipt
    assert seed is not None
    scores = next(ref for ref in seed.outputs if ref.name == "scores")
    (LakeLayout(tmp_path).root / scores.path).unlink()
    report = deep_verify(tmp_path, None, None, toy.STABLE)
    assert verdicts(report)["export-toy"] == "inputs_unavailable"


def test_declared_determinism_is_how_a_stage_is_judged(tmp_path: Path) -> None:
    """A stage declared non-deterministic is judged by its validation (skipped, not
    failed); one declared within a tolerance matches when its floats move by less; a
    stage that maps no records has no quarantine table to compare."""
    stages = toy.stage_with("none")
    toy.run(tmp_path / "none", stages)
    report = deep_verify(tmp_path / "none", None, None, stages)
    assert verdicts(report)["flaky"] == "skipped" and report.passed

    loose = toy.stage_with("tolerance", tolerance=1e-9)
    toy.run(tmp_path / "tol", loose)
    report = deep_verify(tmp_path / "tol", None, None, loose)
    train = next(c for c in report.stages if c.stage == "train-toy")
    assert train.verdict == "match" and [t.table for t in train.tables] == ["loss_log"]
    assert train.tables[0].recorded != train.tables[0].recomputed  # moved, within tolerance
    from pipeline.audit.verify import verify_run
    from pipeline.core.receipts import list_runs
    from pipeline.core.trust import load_trusted

    layout = LakeLayout(tmp_path / "tol")  # no quarantine table for train-toy: still verifies
    assert verify_run(layout, list_runs(layout)[-1], load_trusted(layout)).passed

    tight = toy.stage_with("tolerance", tolerance=0.0)
    toy.run(tmp_path / "tight", tight)
    report = deep_verify(tmp_path / "tight", None, None, tight)
    assert verdicts(report)["train-toy"] == "differs" and not report.passed


def test_tolerance_sees_nan_and_nulls() -> None:
    import pyarrow as pa

    from pipeline.audit.deep import within_tolerance

    def table(*values: float | None) -> pa.Table:
        return pa.table({"step": list(range(len(values))), "loss": pa.array(values, pa.float64())})

    assert within_tolerance(table(1.0, 2.0), table(1.0, 2.05), 0.1)
    assert not within_tolerance(table(1.0, 2.0), table(1.0, 2.5), 0.1)
    assert not within_tolerance(table(1.0, 2.0), table(1.0, float("nan")), 0.1)  # a loss gone NaN
    assert not within_tolerance(table(1.0, 2.0), table(1.0, None), 0.1)
    assert within_tolerance(table(1.0, float("nan")), table(1.0, float("nan")), 0.0)
