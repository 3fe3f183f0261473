"""Order independence and incremental runs: the tables are a function of the file set."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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


def test_sorting_by_ranges_of_sessions_and_a_tiny_merge_memory_change_nothing(
    corpora: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The merge's bounded-memory paths (final sorts cut into session ranges, DuckDB
    held to a small limit) give the tables of a single sort."""
    import pipeline.collect.merge as merge

    sources = [("claude-code", corpora / "cc"), ("codex", corpora / "cx")]
    whole = collect(tmp_path / "whole", sources)
    monkeypatch.setattr(merge, "_RANGE_ROWS", 7)
    monkeypatch.setenv("TRACELAKE_MERGE_MEMORY", "64MB")
    ranged = collect(tmp_path / "ranged", sources, workers=2)
    assert ranged.digests == whole.digests
    assert ranged.receipt.stats["rows"] == whole.receipt.stats["rows"]


def test_fork_server_workers_give_the_same_tables(
    corpora: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start method used when fork is unsafe (threaded libraries loaded) changes nothing."""
    one = collect(tmp_path / "one", [("claude-code", corpora / "cc"), ("codex", corpora / "cx")], workers=1)
    monkeypatch.setenv("TRACELAKE_COLLECT_START", "forkserver")
    served = collect(tmp_path / "served", [("claude-code", corpora / "cc"), ("codex", corpora / "cx")], workers=2)
    assert served.digests == one.digests


_DYING_WORKERS = """
import json, os, sys
if __name__ == "__mp_main__":
    os._exit(3)  # every pool worker dies while it starts: the pool breaks
from pathlib import Path
from pipeline.core.runner import Runner, RunOptions
from pipeline.core.sources import SourceSpec
from pipeline.stages.collect import STAGE

if __name__ == "__main__":
    root, cc, cx = map(Path, sys.argv[1:4])
    options = RunOptions(root=root, sources=[SourceSpec("claude-code", cc), SourceSpec("codex", cx)],
                         workers=2, recorded_at="2026-01-01T00:00:00Z")
    result = Runner([STAGE], options).run(["collect"])
    print(json.dumps({"status": result.outcomes[0].status, "digests": dict(result.summary.stages[0].outputs)}))
"""


def test_a_broken_pool_falls_back_to_parsing_in_process(corpora: Path, tmp_path: Path) -> None:
    script = tmp_path / "dying_workers.py"
    script.write_text(_DYING_WORKERS)
    env = {**os.environ, "TRACELAKE_COLLECT_START": "spawn"}
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "lake"), str(corpora / "cc"), str(corpora / "cx")],
        capture_output=True, text=True, env=env, check=True, cwd=Path(__file__).parent.parent,
    )
    assert "worker pool broke" in done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    one = collect(tmp_path / "one", [("claude-code", corpora / "cc"), ("codex", corpora / "cx")], workers=1)
    assert out["status"] == "ok" and out["digests"] == one.digests


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


def test_torn_and_foreign_containers_are_parsed_again(corpora: Path, tmp_path: Path) -> None:
    """A shard container cut short (a crash mid-copy, a full disk) or a stray file in the
    cache is never read as rows: its files are parsed again, and the tables are those
    of a fresh run."""
    src = tmp_path / "src"
    shutil.copytree(corpora / "cx", src)
    lake = tmp_path / "lake"
    first = collect(lake, [("codex", src)], workers=2)
    containers = sorted((lake / "data" / "cache" / "collect" / "shards" / "batches").glob("*.batch"))
    assert len(containers) >= 2
    torn = containers[0]
    torn.write_bytes(torn.read_bytes()[:-5])
    (torn.parent / "stray.batch").write_bytes(b"not a container")
    victim = sorted(src.rglob("*.jsonl"))[0]
    victim.write_bytes(victim.read_bytes() + b"\n")  # so the stage runs again
    again = collect(lake, [("codex", src)], workers=2)
    files = again.receipt.stats["files"]
    assert files["parsed"] > 1 and files["cached"] > 0
    assert files["parsed"] + files["cached"] == first.receipt.stats["files"]["parsed"]
    fresh = collect(tmp_path / "fresh", [("codex", src)])
    assert again.digests == fresh.digests


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


def test_merge_spill_folders_do_not_outlive_their_process(corpora: Path, tmp_path: Path) -> None:
    """A killed run leaves its DuckDB spill folder behind: the next run removes it, and
    removes its own once the tables are written."""
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    spill = tmp_path / "lake" / "data" / "cache" / "collect" / "spill"
    stale = spill / finished.stdout.strip()
    stale.mkdir(parents=True)
    (stale / "duckdb_temp_block.tmp").write_bytes(b"x" * 100)
    collect(tmp_path / "lake", [("claude-code", corpora / "cc")])
    assert [p.name for p in spill.iterdir()] == []
