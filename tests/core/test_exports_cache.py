"""Export files are built and validated once per cache key, then linked into each run."""

from __future__ import annotations

from pathlib import Path

from pipeline.core.runner import Runner, RunOptions
from tests.core import toy

STAGES = [toy.MAKE, toy.EXPORT]


def _run(root: Path, config: dict[str, dict[str, object]] | None = None):  # type: ignore[no-untyped-def]
    return Runner(STAGES, RunOptions(root=root, sources=[], stage_config=config or {})).run()


def test_cache_hit_links_without_rebuilding(tmp_path: Path) -> None:
    toy.CALLS.clear()
    first = _run(tmp_path)
    second = _run(tmp_path)
    assert first.ok and second.ok
    assert toy.CALLS["materialize"] == 1 and toy.CALLS["validate"] == 1
    for result in (first, second):
        rows = tmp_path / "exports" / result.run_id / "numbers" / "rows.txt"
        assert rows.read_text().split() == [f"k{i:04d}" for i in range(5)]


def test_an_edited_export_is_rebuilt_and_revalidated(tmp_path: Path) -> None:
    toy.CALLS.clear()
    first = _run(tmp_path)
    rows = tmp_path / "exports" / first.run_id / "numbers" / "rows.txt"
    rows.write_text(rows.read_text() + "k9999\n")  # planted after the run
    second = _run(tmp_path)
    assert second.ok
    assert toy.CALLS["materialize"] == 2 and toy.CALLS["validate"] == 2
    fresh = tmp_path / "exports" / second.run_id / "numbers" / "rows.txt"
    assert "k9999" not in fresh.read_text()


def test_failed_validation_is_never_published(tmp_path: Path) -> None:
    result = _run(tmp_path, {"export": {"forbidden": "k0003"}})
    assert not result.ok
    run_dir = tmp_path / "exports" / result.run_id
    assert not (run_dir / "numbers").exists()
    assert not list(run_dir.rglob("*.txt"))  # nothing of it under exports/, where clients look
    assert (tmp_path / "data" / "failed-exports" / result.run_id / "export" / "numbers" / "rows.txt").exists()
    receipt = result.outcomes[-1].receipt
    assert receipt is not None and receipt.validation.errors == ["forbidden key k0003"]


def test_published_files_follow_the_umask(tmp_path: Path) -> None:
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    expected = 0o666 & ~mask
    result = _run(tmp_path)
    rows = tmp_path / "exports" / result.run_id / "numbers" / "rows.txt"
    assert rows.stat().st_mode & 0o777 == expected
    for ref in result.summary.tables.values():
        assert (tmp_path / ref.path).stat().st_mode & 0o777 == expected
