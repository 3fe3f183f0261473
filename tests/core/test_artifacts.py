"""Artifacts: a stage's folder of files, stored by tree digest, signed, verified, exported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.audit.verify import verify_run
from pipeline.core.artifacts import artifact_problem, put_artifact
from pipeline.core.receipts import load_envelope, receipt_path
from pipeline.core.runner import Runner, RunOptions
from pipeline.core.store import LakeLayout
from pipeline.core.trees import manifest, tree_digest
from pipeline.core.trust import load_trusted
from pipeline.sql import connect
from tests.core import toy

STAGES = [toy.MAKE, toy.SQUARE, toy.ADAPTER]


def _run(root: Path, config: dict[str, dict[str, object]] | None = None):  # type: ignore[no-untyped-def]
    return Runner(STAGES, RunOptions(root=root, sources=[], stage_config=config or {})).run()


def _adapter(result):  # type: ignore[no-untyped-def]
    receipt = next(o.receipt for o in result.outcomes if o.stage == "adapter")
    assert receipt is not None and receipt.status == "ok", receipt
    return receipt


def test_an_artifact_is_stored_signed_exported_and_verified(tmp_path: Path) -> None:
    toy.CALLS.clear()
    result = _run(tmp_path)
    receipt = _adapter(result)
    (ref,) = receipt.artifacts
    assert [f.path for f in ref.files] == [".tmp-notes", "adapter_config.json", "weights/w.bin"]
    assert ref.bytes == sum(f.size for f in ref.files) and ref.path.startswith("data/artifacts/")
    assert receipt.outputs[0].name == "adapter_log" and len(receipt.outputs) == 1  # no quarantine
    # every file is a subject of the signed statement
    envelope = load_envelope(receipt_path(LakeLayout(tmp_path), result.run_id, "adapter"))
    import base64

    statement = json.loads(base64.b64decode(envelope["payload"]))
    names = {s["name"] for s in statement["subject"]}
    assert f"{ref.path}/weights/w.bin" in names and f"{ref.path}/adapter_config.json" in names
    # published into the run's export folder, listed as its export files
    exported = tmp_path / "exports" / result.run_id / "adapter" / "weights" / "w.bin"
    assert exported.read_bytes() == (tmp_path / ref.path / "weights" / "w.bin").read_bytes()
    assert {f.path for f in receipt.exports} == {"adapter/.tmp-notes", "adapter/adapter_config.json",
                                                 "adapter/weights/w.bin"}
    layout = LakeLayout(tmp_path)
    assert verify_run(layout, result.run_id, load_trusted(layout)).passed
    # the SQL view
    con, _ = connect(tmp_path)
    rows = con.execute("SELECT run_id, stage, name, digest, files, bytes FROM artifacts").fetchall()
    assert rows == [(result.run_id, "adapter", "adapter", ref.digest, 3, ref.bytes)]
    # a second run reuses it; a changed config makes another
    again = _run(tmp_path)
    assert _adapter(again).cache_hit and _adapter(again).artifacts == receipt.artifacts
    assert toy.CALLS["adapter"] == 1
    changed = _adapter(_run(tmp_path, {"adapter": {"scale": 5}}))
    assert changed.artifacts[0].digest != ref.digest


def test_a_tampered_artifact_file_is_caught_and_repaired(tmp_path: Path) -> None:
    toy.CALLS.clear()
    result = _run(tmp_path)
    (ref,) = _adapter(result).artifacts
    weights = tmp_path / ref.path / "weights" / "w.bin"
    original = weights.read_bytes()
    weights.write_bytes(bytes([original[0] ^ 0xFF]) + original[1:])
    layout = LakeLayout(tmp_path)
    report = verify_run(layout, result.run_id, load_trusted(layout))
    assert not report.passed
    assert any("w.bin does not match" in p.problem for p in report.problems), report
    # the next run refuses the damaged entry, runs the stage again and repairs the store
    rerun = _run(tmp_path)
    receipt = _adapter(rerun)
    assert not receipt.cache_hit and toy.CALLS["adapter"] == 2
    assert any(r.stage == "adapter" and "artifact" in r.reason for r in rerun.summary.rejected_cache)
    assert artifact_problem(layout, receipt.artifacts[0]) is None


def test_a_planted_file_in_an_artifact_is_caught(tmp_path: Path) -> None:
    result = _run(tmp_path)
    (ref,) = _adapter(result).artifacts
    (tmp_path / ref.path / "extra.bin").write_bytes(b"planted")
    layout = LakeLayout(tmp_path)
    report = verify_run(layout, result.run_id, load_trusted(layout))
    assert any("extra.bin" in p.problem for p in report.problems), report


def test_put_artifact_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    from pipeline.core.errors import TracelakeError

    with pytest.raises(TracelakeError, match="not a folder"):
        put_artifact(LakeLayout(tmp_path), "a", tmp_path / "f")


@settings(max_examples=25, deadline=None)
@given(files=st.dictionaries(st.from_regex(r"[a-z]{1,6}(/[a-z]{1,6})?", fullmatch=True),
                             st.binary(max_size=64), min_size=1, max_size=5))
def test_tree_digest_is_the_content_not_the_place(tmp_path_factory: pytest.TempPathFactory,
                                                  files: dict[str, bytes]) -> None:
    """The same files give the same digest anywhere; any edit gives another."""
    folders = [tmp_path_factory.mktemp("tree"), tmp_path_factory.mktemp("tree")]
    names = sorted(files)
    if any(b.startswith(a + "/") for a in names for b in names):
        return  # a name that is both a file and a folder
    for folder in folders:
        for name, data in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
    first, second = (tree_digest(manifest(f)) for f in folders)
    assert first == second
    (folders[1] / names[0]).write_bytes(files[names[0]] + b"!")
    assert tree_digest(manifest(folders[1])) != first


def test_what_lies_in_the_shared_scratch_area_is_never_signed(tmp_path: Path) -> None:
    """Artifacts are written into a folder made empty for the execution: a file planted
    in data/cache/<stage>/ (by someone with write access, or left by an earlier run)
    is not in the artifact, and a stage that hands back a folder of the shared scratch
    area fails."""
    planted = tmp_path / "data" / "cache" / "adapter" / "adapter" / "weights" / "backdoor.bin"
    planted.parent.mkdir(parents=True)
    planted.write_bytes(b"evil")
    (ref,) = _adapter(_run(tmp_path)).artifacts
    assert "weights/backdoor.bin" not in {f.path for f in ref.files}
    loose = Runner([toy.MAKE, toy.SQUARE, toy.LOOSE_ADAPTER],
                   RunOptions(root=tmp_path / "loose", sources=[])).run()
    outcome = next(o for o in loose.outcomes if o.stage == "adapter")
    assert outcome.status == "failed" and "ctx.artifact_dir('adapter')" in (outcome.error or "")


def test_an_edited_export_never_reaches_the_stored_artifact(tmp_path: Path) -> None:
    """Exports are copies: an operator editing exports/<run>/adapter/... damages that
    export file (verify names it), never the artifact every later run reuses."""
    result = _run(tmp_path)
    (ref,) = _adapter(result).artifacts
    exported = tmp_path / "exports" / result.run_id / "adapter" / "adapter_config.json"
    exported.write_text('{"r": 64}\n')
    layout = LakeLayout(tmp_path)
    assert artifact_problem(layout, ref) is None
    problems = verify_run(layout, result.run_id, load_trusted(layout)).problems
    assert [p.subject for p in problems] == [f"exports/{result.run_id}/adapter/adapter_config.json"]


def test_a_stage_file_named_like_debris_survives_housekeeping(tmp_path: Path) -> None:
    _run(tmp_path)
    again = _run(tmp_path)  # clears what killed runs left, under the lock
    (ref,) = _adapter(again).artifacts
    assert _adapter(again).cache_hit and (tmp_path / ref.path / ".tmp-notes").is_file()


def test_artifact_names_are_one_safe_segment() -> None:
    from schemas.tables import ArtifactSpec

    for bad in ("../escaped", "a/b", ".hidden", "..", ""):
        with pytest.raises(ValueError, match="safe path segment"):
            ArtifactSpec(bad, "x")
    assert ArtifactSpec("lora-adapter_v1.2", "x").name == "lora-adapter_v1.2"


def test_an_empty_artifact_is_stored(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    ref = put_artifact(LakeLayout(tmp_path), "a", tmp_path / "empty")
    assert ref.files == [] and artifact_problem(LakeLayout(tmp_path), ref) is None
