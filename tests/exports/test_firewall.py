"""The firewall: rows planted in written exports are found, and the stage fails loudly."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from pipeline.core.stage import ExportContext, Stage, StageContext, StageResult
from pipeline.stages.export_preference import STAGE as EXPORT_PREFERENCE
from pipeline.stages.export_preference import ExportPreferenceConfig
from pipeline.stages.export_rag import STAGE as EXPORT_RAG
from pipeline.stages.export_rag import ExportRagConfig
from pipeline.stages.export_sft import STAGE as EXPORT_SFT
from pipeline.stages.export_sft import ExportSftConfig
from pipeline.stages.score import STAGE as SCORE
from schemas.records import QUARANTINE
from schemas.tables import TableSpec
from tests.exports.builders import (
    Call,
    Corpus,
    _NoConfig,
    good_task,
    receipt,
    replace_stage,
    run_pipeline,
)

SECRET = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"


def _corpus() -> Corpus:
    corpus = Corpus()
    prompt = "Add input validation to the signup form"
    good_task(corpus.session("good"), prompt, "Validation added to the form and tested.")
    corpus.session("bad").task(prompt, ("", [Call("Bash", {"command": "npm test"}, "boom", True)]), "Broken.")
    return corpus


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    root = tmp_path_factory.mktemp("firewall") / "lake"
    result = run_pipeline(_corpus(), root)
    assert result.ok, [o.receipt.validation.errors for o in result.outcomes if o.receipt]
    return root, result


def _ctx(root: Path, result: Any, stage: Stage, config: Any) -> ExportContext:
    from pipeline.core.store import LakeLayout

    outputs = {n: result.summary.tables[n] for n in stage.output_names}
    return ExportContext(layout=LakeLayout(root), config=config, run_id=result.run_id,
                         outputs=outputs, export_dir=root / "exports" / result.run_id,
                         inputs={n: result.summary.tables[n] for n in stage.inputs})


def _append(path: Path, row: dict[str, Any]) -> Callable[[], None]:
    original = path.read_bytes()
    path.write_bytes(original + json.dumps(row).encode() + b"\n")
    return lambda: path.write_bytes(original)


def _sft_row(path: Path, **changes: Any) -> dict[str, Any]:
    row = json.loads(path.read_text().splitlines()[0])
    row.update(changes)
    return row


def test_clean_exports_validate(lake: tuple[Path, Any]) -> None:
    root, result = lake
    assert EXPORT_SFT.validate(_ctx(root, result, EXPORT_SFT, ExportSftConfig())) == []  # type: ignore[misc]
    assert EXPORT_RAG.validate(_ctx(root, result, EXPORT_RAG, ExportRagConfig())) == []  # type: ignore[misc]
    assert EXPORT_PREFERENCE.validate(_ctx(root, result, EXPORT_PREFERENCE, ExportPreferenceConfig())) == []  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"category": "rejected"}, "not allowed in SFT"),
        ({"category": "needs_human_review"}, "not allowed in SFT"),
        ({"category": "partially_accepted"}, "not allowed in SFT"),
        ({"messages": [{"role": "user", "content": f"token {SECRET}"}]}, "secret"),
        ({"messages": [{"role": "user", "content": "hi <|im_start|>system"}]}, "template token"),
        ({"task_id": ""}, "missing provenance"),
    ],
)
def test_planted_sft_rows_are_caught(lake: tuple[Path, Any], changes: dict[str, Any], expected: str) -> None:
    root, result = lake
    path = root / "exports" / result.run_id / "sft" / "train.jsonl"
    restore = _append(path, _sft_row(path, row_id="planted", **changes))
    try:
        errors = EXPORT_SFT.validate(_ctx(root, result, EXPORT_SFT, ExportSftConfig()))  # type: ignore[misc]
    finally:
        restore()
    assert any(expected in e for e in errors), errors
    assert any("planted: row not in the sft table" in e for e in errors)


def test_sft_table_itself_is_checked(lake: tuple[Path, Any]) -> None:
    root, result = lake
    path = root / result.summary.tables["sft"].path
    original = path.read_bytes()
    table = pq.read_table(path)
    rows = table.to_pylist()
    rows[0]["category"] = "rejected"
    try:
        pq.write_table(table.from_pylist(rows, schema=table.schema), path)
        errors = EXPORT_SFT.validate(_ctx(root, result, EXPORT_SFT, ExportSftConfig()))  # type: ignore[misc]
    finally:
        path.write_bytes(original)
    assert any(e.startswith("table sft") and "not allowed" in e for e in errors), errors


def test_planted_rag_and_preference_rows_are_caught(lake: tuple[Path, Any]) -> None:
    root, result = lake
    out = root / "exports" / result.run_id
    rag = out / "rag" / "playbooks.jsonl"
    restore = _append(rag, {**json.loads(rag.read_text().splitlines()[0]), "category": "rejected"})
    try:
        errors = EXPORT_RAG.validate(_ctx(root, result, EXPORT_RAG, ExportRagConfig()))  # type: ignore[misc]
    finally:
        restore()
    assert any("'rejected' not allowed in RAG" in e for e in errors), errors
    pref = out / "preference" / "preference.jsonl"
    row = json.loads(pref.read_text().splitlines()[0])
    planted = [
        ({**row, "rejected_task_id": row["chosen_task_id"]}, "self-pair"),
        ({**row, "rejected": row["chosen"]}, "identical"),
        ({**row, "chosen_category": "rejected", "rejected_category": "accepted"}, "not allowed"),
    ]
    for bad, expected in planted:
        restore = _append(pref, bad)
        try:
            errors = EXPORT_PREFERENCE.validate(  # type: ignore[misc]
                _ctx(root, result, EXPORT_PREFERENCE, ExportPreferenceConfig()))
        finally:
            restore()
        assert any(expected in e for e in errors), (expected, errors)
    kto = out / "kto" / "kto.jsonl"
    krow = json.loads(kto.read_text().splitlines()[0])
    restore = _append(kto, {**krow, "row_id": "x", "category": "rejected", "label": True})
    try:
        errors = EXPORT_PREFERENCE.validate(_ctx(root, result, EXPORT_PREFERENCE, ExportPreferenceConfig()))  # type: ignore[misc]
    finally:
        restore()
    assert any("label True for 'rejected'" in e for e in errors), errors


# --- end to end: a planted row fails the stage and everything downstream is skipped -----

CONSUMER = TableSpec("consumer_out", _NoConfig, ())


def _consume(ctx: StageContext) -> StageResult:
    return StageResult(tables={"consumer_out": CONSUMER.schema.empty_table(),
                               "quarantine": QUARANTINE.schema.empty_table()},
                       records_in=0, records_out=0)


def test_planted_row_fails_the_stage_and_skips_downstream(tmp_path: Path) -> None:
    def planting_materialize(ctx: ExportContext) -> None:
        assert EXPORT_SFT.materialize is not None
        EXPORT_SFT.materialize(ctx)
        path = ctx.export_dir / "sft" / "train.jsonl"
        rows = path.read_text().splitlines()
        bad = {**json.loads(rows[0]), "row_id": "planted", "category": "rejected"}
        path.write_text("\n".join([*rows, json.dumps(bad)]) + "\n")

    sft = replace_stage(EXPORT_SFT, materialize=planting_materialize)
    consumer = Stage(name="train-consumer", version="1", config_model=_NoConfig, inputs=("sft",),
                     outputs=(CONSUMER,), run=_consume)
    result = run_pipeline(_corpus(), tmp_path / "lake", stages=[SCORE, sft, consumer, EXPORT_RAG])
    statuses = {o.stage: o.status for o in result.outcomes}
    assert statuses == {"collect": "ok", "score": "ok", "export-sft": "failed",
                        "train-consumer": "skipped_upstream_failed", "export-rag": "ok"}
    r = receipt(result, "export-sft")
    assert not r.validation.passed and any("not allowed in SFT" in e for e in r.validation.errors)
    assert not result.ok


def test_each_export_receipt_carries_its_secret_rescan(lake: tuple[Path, Any]) -> None:
    _, result = lake
    for stage in ("export-sft", "export-rag", "export-preference"):
        rescan = receipt(result, stage).validation.secret_rescan
        assert rescan is not None, stage
        assert set(rescan.scanners) == {"kingfisher-secret-scanner", "detect-secrets"}
        assert "missing" not in rescan.scanners.values()
        assert rescan.strings_scanned + rescan.values_vouched > 0, stage
        assert rescan.findings == {}


def test_a_secret_collects_engines_miss_is_caught_by_the_independent_one(
    lake: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The redactor and the firewall used to share blind spots. Blind collect's engines
    entirely: the independent rule set alone still fails the export."""
    import pipeline.export.firewall as firewall

    monkeypatch.setattr(firewall, "_screen", lambda: (lambda texts: list(texts)))
    monkeypatch.setattr(firewall, "_find_secrets", lambda: (lambda text: []))
    root, result = lake
    path = root / "exports" / result.run_id / "sft" / "train.jsonl"
    restore = _append(path, _sft_row(path, row_id="planted",
                                     messages=[{"role": "user", "content": f"token {SECRET}"}]))
    ctx = _ctx(root, result, EXPORT_SFT, ExportSftConfig())
    try:
        errors = EXPORT_SFT.validate(ctx)  # type: ignore[misc]
    finally:
        restore()
    assert any("planted" in e and "secret (detect_secrets:" in e for e in errors), errors
    assert ctx.secret_rescan is not None
    assert any(k.startswith("detect_secrets:") for k in ctx.secret_rescan.findings)


def test_deep_verify_reruns_the_firewall_on_published_exports(lake: tuple[Path, Any]) -> None:
    from pipeline.audit.deep import deep_verify

    root, result = lake
    report = deep_verify(root, result.run_id, None)
    verdicts = {c.stage: c.verdict for c in report.stages}
    assert verdicts["export-sft"] == "match" and report.passed, report
    path = root / "exports" / result.run_id / "sft" / "train.jsonl"
    restore = _append(path, _sft_row(path, row_id="planted",
                                     messages=[{"role": "user", "content": f"token {SECRET}"}]))
    try:
        report = deep_verify(root, result.run_id, None)
    finally:
        restore()
    sft = next(c for c in report.stages if c.stage == "export-sft")
    assert sft.verdict == "differs" and "firewall" in sft.detail and "secret" in sft.detail, sft
    assert not report.passed


@pytest.mark.parametrize("where", ["content", "arguments", "tools"])
def test_a_secret_planted_in_the_nested_parquet_is_caught(lake: tuple[Path, Any], where: str) -> None:
    """The Parquet twin is nested (messages as structs, arguments and tools as JSON): a
    secret written into any part of it after the export fails the firewall."""
    import pyarrow as pa

    root, result = lake
    path = root / "exports" / result.run_id / "sft" / "train.parquet"
    original = path.read_bytes()
    table = pq.read_table(path)
    rows = table.to_pylist()
    row = rows[0]
    if where == "content":
        row["messages"][0]["content"] += f" token {SECRET}"
    elif where == "arguments":
        call = next(c for m in row["messages"] for c in (m["tool_calls"] or []))
        call["function"]["arguments"] = json.dumps({"token": SECRET})
    else:
        row["tools"] = json.dumps([{"type": "function", "function": {"name": "x", "description": SECRET}}])
    try:
        storage = pa.Table.from_pylist(rows, schema=pa.schema(
            [f.with_type(_storage(f.type)) for f in table.schema]))
        pq.write_table(storage.cast(table.schema), path)
        errors = EXPORT_SFT.validate(_ctx(root, result, EXPORT_SFT, ExportSftConfig()))  # type: ignore[misc]
    finally:
        path.write_bytes(original)
    assert any("train.parquet" in e and "secret" in e for e in errors), errors


def _storage(typ: Any) -> Any:
    """``typ`` with Arrow's JSON extension replaced by its string storage (to build rows)."""
    import pyarrow as pa

    if isinstance(typ, pa.JsonType):
        return pa.string()
    if pa.types.is_list(typ):
        return pa.list_(_storage(typ.value_type))
    if pa.types.is_struct(typ):
        return pa.struct([f.with_type(_storage(f.type)) for f in typ])
    return typ
