"""The shortcuts behind the fast exports hold: byte normalisation equals Python's, the batch
secret screen equals find_secrets, and validation's known-clean lookups never hide a
tampered table or depend on the score receipt being there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.collect.redact import find_secrets
from pipeline.core.receipts import receipt_path
from pipeline.core.stage import ExportContext
from pipeline.core.store import LakeLayout
from pipeline.export.dedupe import DedupeConfig, Deduper, normalise
from pipeline.export.firewall import StringScan
from pipeline.secrets import independent
from pipeline.stages.export_preference import STAGE as EXPORT_PREFERENCE
from pipeline.stages.export_preference import ExportPreferenceConfig
from pipeline.stages.export_sft import STAGE as EXPORT_SFT
from pipeline.stages.export_sft import ExportSftConfig
from tests.exports.builders import Call, Corpus, good_task, run_pipeline

SECRET = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("aZ \t\n\r\x0b\x0c\x1c\x1f-.")), max_size=40))
def test_normalise_equals_python_for_ascii(text: str) -> None:
    assert normalise(text) == " ".join(text.split()).lower()


def test_dedupe_keeps_first_and_finds_near_copies() -> None:
    base = "Fix the flaky date test in utils. Read utils.py, edit it, run pytest. " * 6
    items = [("a", base), ("b", base.upper()), ("c", base + "Done."),
             ("d", "An unrelated task about the billing export and its CSV header. " * 6)]
    result = Deduper(DedupeConfig()).run(items)
    assert result.kept == ["a", "d"] and result.exact == {"b": "a"} and result.near == {"c": "a"}
    assert Deduper(DedupeConfig()).run(items[::-1]).kept == ["d", "c"]


def test_string_scan_equals_both_scanners_per_string() -> None:
    strings = ["plain text", f"token {SECRET}", "export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE",
               "hi <|im_start|>system", "", "password=hunter2hunter2hunter2"]
    scan = StringScan()
    for s in strings:
        scan.add([s])
    for s, (kinds, token) in zip(strings, scan.results(), strict=True):
        expected = sorted({k for k, _, _ in find_secrets(s)} | set(independent.find(s))) if s else []
        assert kinds == expected
        assert (token is not None) == ("<|im_start|>" in s)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    corpus = Corpus()
    prompt = "Add input validation to the signup form"
    good_task(corpus.session("good"), prompt, "Validation added to the form and tested.")
    good_task(corpus.session("other"), "Rename the settings module", "Renamed and imports fixed.")
    corpus.session("bad").task(prompt, ("", [Call("Bash", {"command": "npm test"}, "boom", True)]), "Broken.")
    root = tmp_path_factory.mktemp("fast") / "lake"
    result = run_pipeline(corpus, root)
    assert result.ok
    return root, result


def _ctx(root: Path, result: Any, stage: Any, config: Any) -> ExportContext:
    outputs = {n: result.summary.tables[n] for n in stage.output_names}
    return ExportContext(layout=LakeLayout(root), config=config, run_id=result.run_id,
                         outputs=outputs, export_dir=root / "exports" / result.run_id,
                         inputs={n: result.summary.tables[n] for n in stage.inputs})


def _tamper(path: Path, column: str, value: str) -> bytes:
    original = path.read_bytes()
    table = pq.read_table(path)
    rows = table.to_pylist()
    rows[0][column] = value
    pq.write_table(table.from_pylist(rows, schema=table.schema), path)
    return original


def test_secret_planted_in_the_table_is_rescanned(lake: tuple[Path, Any]) -> None:
    root, result = lake
    path = root / result.summary.tables["sft"].path
    original = _tamper(path, "messages", f'[{{"content":"key {SECRET}","role":"user"}}]')
    try:
        errors = EXPORT_SFT.validate(_ctx(root, result, EXPORT_SFT, ExportSftConfig()))  # type: ignore[misc]
    finally:
        path.write_bytes(original)
    assert any(e.startswith("table sft") and "secret (detect_secrets:github_token, github_token)" in e for e in errors), errors
    kto = root / result.summary.tables["kto"].path
    original = _tamper(kto, "completion", f'[{{"content":"{SECRET}","role":"assistant"}}]')
    try:
        errors = EXPORT_PREFERENCE.validate(  # type: ignore[misc]
            _ctx(root, result, EXPORT_PREFERENCE, ExportPreferenceConfig()))
    finally:
        kto.write_bytes(original)
    assert any(e.startswith("table kto") and "secret" in e for e in errors), errors


def test_validation_without_the_score_receipt_scans_everything(lake: tuple[Path, Any]) -> None:
    root, result = lake
    receipt = receipt_path(LakeLayout(root), result.run_id, "score")
    moved = receipt.with_suffix(".moved")
    receipt.rename(moved)
    try:
        sft = _ctx(root, result, EXPORT_SFT, ExportSftConfig())
        pref = _ctx(root, result, EXPORT_PREFERENCE, ExportPreferenceConfig())
        assert EXPORT_SFT.validate(sft) == []  # type: ignore[misc]
        assert EXPORT_PREFERENCE.validate(pref) == []  # type: ignore[misc]
        path = root / result.summary.tables["sft"].path
        original = _tamper(path, "messages", '[{"content":"hi <|im_start|>system","role":"user"}]')
        try:
            errors = EXPORT_SFT.validate(sft)  # type: ignore[misc]
        finally:
            path.write_bytes(original)
        assert any("template token" in e for e in errors), errors
    finally:
        moved.rename(receipt)
