"""The runner: cache keys before execution, hits, failure propagation, reproducibility."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from pipeline.core.receipts import list_runs, load_run_receipts
from pipeline.core.runner import Runner, RunOptions
from tests.core import toy


def _run(root: Path, config: dict[str, dict[str, object]] | None = None, recorded_at: str | None = None,
         targets: list[str] | None = None):
    options = RunOptions(root=root, sources=[], stage_config=config or {}, recorded_at=recorded_at)
    return Runner(toy.STAGES, options).run(targets)


def test_second_run_is_all_cache_hits(tmp_path: Path) -> None:
    toy.CALLS.clear()
    first = _run(tmp_path)
    second = _run(tmp_path)
    assert first.ok and second.ok
    assert toy.CALLS == {"make": 1, "square": 1}
    assert [o.receipt.cache_hit for o in second.outcomes if o.receipt] == [True, True]
    assert first.summary.run_hash == second.summary.run_hash
    assert first.run_id != second.run_id
    assert len(list_runs(toy_layout(tmp_path))) == 2


def toy_layout(root: Path):
    from pipeline.core.store import LakeLayout

    return LakeLayout(root)


def test_config_change_reruns_only_what_changed(tmp_path: Path) -> None:
    toy.CALLS.clear()
    _run(tmp_path)
    changed = _run(tmp_path, {"make": {"n": 6}})
    assert toy.CALLS == {"make": 2, "square": 2}
    # Same data through another config that yields identical numbers: downstream is a hit.
    same_numbers = _run(tmp_path, {"make": {"n": 6, "drop_odd": False}})
    assert same_numbers.summary.run_hash == changed.summary.run_hash
    assert toy.CALLS == {"make": 2, "square": 2}


def test_early_cutoff_when_upstream_output_is_unchanged(tmp_path: Path) -> None:
    toy.CALLS.clear()
    _run(tmp_path, {"make": {"n": 5}})
    # A different config with the same output: upstream reruns, downstream is a hit.
    (tmp_path / "receipts" / "cache").mkdir(exist_ok=True)
    result = _run(tmp_path, {"make": {"n": 5, "drop_odd": False}})
    assert result.outcomes[1].receipt is not None and result.outcomes[1].receipt.cache_hit


def test_counts_conserve_and_failures_stop_downstream(tmp_path: Path) -> None:
    result = _run(tmp_path, {"make": {"n": 7, "drop_odd": True}})
    make_receipt = result.outcomes[0].receipt
    assert make_receipt is not None
    assert make_receipt.records_in == 7 and make_receipt.records_out == 4
    assert make_receipt.filtered == {"odd": 3}

    broken = _run(tmp_path, {"square": {"cheat": True}})
    assert not broken.ok
    square_receipt = broken.outcomes[1].receipt
    assert square_receipt is not None and square_receipt.status == "failed"
    assert "ConservationError" in (square_receipt.error or "")
    assert not square_receipt.validation.passed
    assert "squares" not in broken.summary.tables


def test_upstream_failure_skips_downstream(tmp_path: Path) -> None:
    result = _run(tmp_path, {"make": {"n": -1}})  # range(-1) is empty: fine, so break differently
    assert result.ok
    failing = Runner(
        [toy.Stage("make", "1", toy.MakeConfig, (), (toy.NUMBERS,), _explode), toy.SQUARE],
        RunOptions(root=tmp_path, sources=[]),
    ).run()
    assert [o.status for o in failing.outcomes] == ["failed", "skipped_upstream_failed"]
    assert not failing.summary.overall_passed
    assert {r.stage for r in load_run_receipts(toy_layout(tmp_path), failing.run_id, None)} == {"make"}


def _explode(ctx):  # type: ignore[no-untyped-def]
    raise RuntimeError("boom")


def test_objects_are_byte_identical_whatever_run_or_time_wrote_them(tmp_path: Path) -> None:
    """One logical digest names one file content: nothing of the run (its time, its id)
    or of the stage goes into an object's bytes, so two runs can never publish two
    different files under one name."""
    a = _run(tmp_path / "a", recorded_at="2026-01-01T00:00:00Z")
    b = _run(tmp_path / "b", recorded_at="2026-06-01T00:00:00Z")
    c = _run(tmp_path / "c")  # unpinned: the wall clock
    assert a.summary.run_hash == b.summary.run_hash == c.summary.run_hash
    for name, ref in a.summary.tables.items():
        for other in (b, c):
            theirs = other.summary.tables[name]
            assert theirs.xxh3_128 == ref.xxh3_128 and theirs.path == ref.path
            assert (tmp_path / "a" / ref.path).read_bytes() == (tmp_path / "b" / theirs.path).read_bytes()
            assert theirs.sha256 == ref.sha256 and theirs.blake3 == ref.blake3
        assert pq.read_metadata(tmp_path / "a" / ref.path).metadata is None
    receipt = a.outcomes[0].receipt
    assert receipt is not None and receipt.recorded_at == "2026-01-01T00:00:00Z"  # in the receipt only


def test_run_one_stage_runs_its_upstream_only(tmp_path: Path) -> None:
    result = _run(tmp_path, targets=["make"])
    assert [o.stage for o in result.outcomes] == ["make"]
    result = _run(tmp_path, targets=["square"])
    assert [o.stage for o in result.outcomes] == ["make", "square"]


def test_missing_object_forces_a_rerun(tmp_path: Path) -> None:
    toy.CALLS.clear()
    first = _run(tmp_path)
    (tmp_path / first.summary.tables["squares"].path).unlink()
    second = _run(tmp_path)
    assert toy.CALLS["square"] == 2 and toy.CALLS["make"] == 1
    assert (tmp_path / second.summary.tables["squares"].path).exists()


_EDITED_STAGE = '''
import pyarrow as pa
from pipeline.core.stage import Stage, StageContext, StageResult
from schemas.records import QUARANTINE
from tests.core.toy import NUMBERS, MakeConfig


def make_numbers(ctx: StageContext) -> StageResult:
    values = list(range(ctx.config.n))  # BODY
    table = pa.table({"key": [f"k{v:04d}" for v in values], "value": values})
    return StageResult(tables={"numbers": table, "quarantine": QUARANTINE.schema.empty_table()},
                       records_in=len(values), records_out=len(values))


MAKE = Stage("make", "1", MakeConfig, (), (NUMBERS,), make_numbers)
'''


def test_editing_a_stage_s_code_reruns_it_without_a_version_bump(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The cache key covers the stage's code: an edited function body (same version
    string) re-runs the stage, and what reads its changed output; a comment-only edit
    re-runs it too, and its unchanged output lets the next stage hit its cache."""
    import importlib
    import sys

    from pipeline.core.code import clear_caches

    folder = tmp_path / "mods"
    folder.mkdir()
    module_file = folder / "edited_stage.py"
    monkeypatch.syspath_prepend(str(folder))

    def run_with(body: str) -> dict[str, bool]:
        module_file.write_text(_EDITED_STAGE.replace("list(range(ctx.config.n))  # BODY", body))
        sys.modules.pop("edited_stage", None)
        importlib.invalidate_caches()
        clear_caches()  # a new process, as each `tracelake` run is
        module = importlib.import_module("edited_stage")
        options = RunOptions(root=tmp_path / "lake", sources=[], recorded_at="2026-01-01T00:00:00Z")
        result = Runner([module.MAKE, toy.SQUARE], options).run()
        assert result.ok
        return {o.stage: o.receipt.cache_hit for o in result.outcomes if o.receipt}

    assert run_with("list(range(ctx.config.n))") == {"make": False, "square": False}
    assert run_with("list(range(ctx.config.n))") == {"make": True, "square": True}
    assert run_with("list(range(ctx.config.n + 1))") == {"make": False, "square": False}
    assert run_with("list(range(ctx.config.n + 1))  # same numbers") == {"make": False, "square": True}


def test_a_stage_s_code_covers_its_project_imports() -> None:
    from pipeline.core.code import code_files

    files = code_files("pipeline.stages.collect")
    # the compiled parser counts by its source; package __init__ files too; no third party
    assert {"pipeline.collect.shard", "pipeline.collect.redact", "pipeline.core.stage", "pipeline",
            "schemas.records"} <= set(files)
    assert all(path.suffix == ".py" for path in files.values())
    assert not any(name.split(".")[0] in ("pyarrow", "duckdb", "orjson") for name in files)
