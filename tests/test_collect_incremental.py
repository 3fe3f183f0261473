"""Order independence and incremental runs: the tables are a function of the file set."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from collect_helpers import collect

from pipeline.synth import synthesize


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("corpora")
    synthesize(base / "cc", 16, 3, "claude-code")
    synthesize(base / "cx", 10, 3, "codex")
    return base


def test_worker_count_and_source_order_do_not_change_tables(corpora: Path, tmp_path: Path) -> None:
    one = collect(tmp_path / "one", [("claude-code", corpora / "cc"), ("codex", corpora / "cx")], workers=1)
    two = collect(tmp_path / "two", [("codex", corpora / "cx"), ("claude-code", corpora / "cc")], workers=2)
    assert one.digests == two.digests
    assert one.receipt.records_in == two.receipt.records_in
    assert one.receipt.filtered == two.receipt.filtered


def test_incremental_equals_from_scratch(corpora: Path, tmp_path: Path) -> None:
    files = sorted((corpora / "cc").rglob("*.jsonl"))
    src = tmp_path / "src"
    first, rest = files[: len(files) // 2], files[len(files) // 2 :]
    for path in first:
        target = src / path.relative_to(corpora / "cc")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    for meta in (corpora / "cc").rglob("*.meta.json"):
        target = src / meta.relative_to(corpora / "cc")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(meta, target)
    lake = tmp_path / "lake"
    before = collect(lake, [("claude-code", src)], workers=2)
    assert before.receipt.stats["files"]["parsed"] == len(first)
    for path in rest:
        target = src / path.relative_to(corpora / "cc")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    after = collect(lake, [("claude-code", src)], workers=2)
    assert after.receipt.stats["files"] == {**after.receipt.stats["files"], "parsed": len(rest),
                                            "cached": len(first)}
    fresh = collect(tmp_path / "fresh", [("claude-code", src)], workers=1)
    assert fresh.receipt.stats["files"]["cached"] == 0
    assert after.digests == fresh.digests
    assert after.receipt.records_in == fresh.receipt.records_in
    assert after.receipt.quarantined == fresh.receipt.quarantined
    assert after.receipt.filtered == fresh.receipt.filtered


def test_changed_file_is_reparsed(corpora: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(corpora / "cx", src)
    lake = tmp_path / "lake"
    collect(lake, [("codex", src)])
    victim = sorted(src.rglob("*.jsonl"))[0]
    victim.write_bytes(victim.read_bytes() + b"\n\n")
    again = collect(lake, [("codex", src)])
    assert again.receipt.stats["files"]["parsed"] == 1
    assert again.receipt.filtered["blank_line"] >= 1
    fresh = collect(tmp_path / "fresh", [("codex", src)])
    assert again.digests == fresh.digests
