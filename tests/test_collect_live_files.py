"""A session log that changes while a run reads it: the receipt always names the bytes
the tables were built from; a file that keeps changing is set aside, the run goes on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import xxhash

from pipeline.audit.verify import verify_run
from pipeline.core.hashing import HashingReader
from pipeline.core.receipts import load_run_receipts
from pipeline.core.runner import Runner, RunOptions
from pipeline.core.sources import CHANGED_DURING_RUN, SourceSpec, load_manifest
from pipeline.core.store import LakeLayout
from pipeline.core.trust import load_trusted
from pipeline.stages.collect import STAGE
from pipeline.synth import synthesize

SESSION = "5b1d3f0e-0000-4000-8000-00000000live"


def record(n: int) -> bytes:
    """One Claude Code user record of the live session."""
    return json.dumps({
        "type": "user", "sessionId": SESSION, "uuid": f"00000000-0000-4000-8000-{n:012d}",
        "parentUuid": f"00000000-0000-4000-8000-{n - 1:012d}" if n else None,
        "timestamp": f"2026-01-01T00:{n // 60 % 60:02d}:{n % 60:02d}.000Z", "cwd": "/work/app",
        "message": {"role": "user", "content": f"message number {n}"},
    }).encode() + b"\n"


@pytest.fixture
def corpus(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    folder = tmp_path / "logs"
    synthesize(folder, 6, 11, "claude-code")
    live = folder / "-work-app" / f"{SESSION}.jsonl"
    live.parent.mkdir(parents=True, exist_ok=True)
    live.write_bytes(b"".join(record(n) for n in range(20)))
    yield folder, live


def appending(monkeypatch: pytest.MonkeyPatch, target: Path, times: int) -> list[int]:
    """Make a writer append one record to ``target`` just as a reader starts on it, the
    first ``times`` times: a file that changed after the run digested it."""
    original = HashingReader.readinto
    budget = [times]
    lines = [sum(1 for _ in target.open("rb"))]

    def readinto(self: Any, buffer: Any) -> int:
        if not getattr(self, "_started", False):
            self._started = True
            if self._raw.name == str(target) and budget[0] > 0:
                budget[0] -= 1
                with target.open("ab") as handle:
                    handle.write(record(lines[0]))
                lines[0] += 1
        return int(original(self, buffer))

    monkeypatch.setattr(HashingReader, "readinto", readinto)
    return lines


def collect(root: Path, folder: Path) -> Any:
    options = RunOptions(root=root, sources=[SourceSpec("claude-code", folder)], workers=1)
    result = Runner([STAGE], options).run(["collect"])
    assert result.ok, result.outcomes[0].error
    layout = LakeLayout(root)
    assert verify_run(layout, result.run_id, load_trusted(layout)).problems == []
    return result


def recorded(root: Path, result: Any, live: Path) -> tuple[str, int]:
    """(digest, size) the run's collect receipt names for ``live``."""
    layout = LakeLayout(root)
    receipts = load_run_receipts(layout, result.run_id, load_trusted(layout))
    [receipt] = [r for r in receipts if r.stage == "collect"]
    manifest = load_manifest(layout.cache, receipt.inputs[0].xxh3_128)
    assert manifest is not None
    return next((f.digest, f.size) for f in manifest.files if f.path == live)


def live_messages(root: Path, result: Any) -> int:
    messages = pq.read_table(root / result.summary.tables["messages"].path, columns=["session_id"])
    return int(pc.sum(pc.equal(messages["session_id"], SESSION)).as_py() or 0)


def test_a_file_changed_once_is_read_again_and_recorded_as_read(
    corpus: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, live = corpus
    lines = appending(monkeypatch, live, times=1)
    result = collect(tmp_path / "lake", folder)
    assert lines[0] == 21
    # The receipt names the bytes parsed (21 records), not the 20 digested before.
    assert recorded(tmp_path / "lake", result, live) == (
        xxhash.xxh3_128_hexdigest(live.read_bytes()), live.stat().st_size)
    assert live_messages(tmp_path / "lake", result) == 21
    receipt = result.outcomes[0].receipt
    assert "source_changed_during_run" not in receipt.quarantined


def test_a_file_that_keeps_changing_is_set_aside_and_the_run_goes_on(
    corpus: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, live = corpus
    original = HashingReader.readinto
    appending(monkeypatch, live, times=10)
    root = tmp_path / "lake"
    result = collect(root, folder)
    receipt = result.outcomes[0].receipt
    assert receipt.quarantined["source_changed_during_run"] == 1
    assert live_messages(root, result) == 0
    assert recorded(root, result, live)[0].startswith(CHANGED_DURING_RUN)
    quarantine = pq.read_table(root / result.summary.tables["collect_quarantine"].path).to_pylist()
    [row] = [r for r in quarantine if r["reason"] == "source_changed_during_run"]
    assert row["source_file"].endswith(f"{SESSION}.jsonl") and "different bytes" in row["detail"]
    assert receipt.records_out > 0  # the other sessions are in
    # Once it stops changing, the next run reads it like any other file.
    monkeypatch.setattr(HashingReader, "readinto", original)
    again = collect(root, folder)
    assert not again.outcomes[0].receipt.cache_hit
    assert live_messages(root, again) == sum(1 for _ in live.open("rb"))


WRITER = r"""
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from tests.test_collect_live_files import record
target, stop = Path(sys.argv[1]), Path(sys.argv[2])
n = sum(1 for _ in target.open("rb"))
while not stop.exists():
    with target.open("ab") as handle:
        handle.write(record(n))
    n += 1
    time.sleep(0.002)
"""


def test_run_all_with_a_writer_appending_meanwhile(corpus: tuple[Path, Path], tmp_path: Path) -> None:
    """A real writer process appends to a session all through `tracelake run-all`:
    whatever the timing, the rows of that session are exactly the records of the
    file's prefix whose digest the receipt names, or the file is set aside."""
    folder, live = corpus
    root, stop = tmp_path / "lake", tmp_path / "stop"
    repo = str(Path(__file__).resolve().parents[1])
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(live), str(stop), repo])
    try:
        time.sleep(0.2)
        run = subprocess.run(
            [sys.executable, "-m", "pipeline.cli.main", "run-all", "--root", str(root), "--quiet",
             "--source", f"claude-code:{folder}"],
            capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": repo},
        )
    finally:
        stop.touch()
        writer.wait(timeout=30)
    assert run.returncode == 0, run.stderr
    layout = LakeLayout(root)
    from pipeline.core.receipts import list_runs, load_run_summary

    [run_id] = list_runs(layout)
    summary = load_run_summary(layout, run_id, load_trusted(layout))
    assert verify_run(layout, run_id, load_trusted(layout)).problems == []
    result = type("R", (), {"run_id": run_id, "summary": summary})()
    digest, size = recorded(root, result, live)
    if digest.startswith(CHANGED_DURING_RUN):
        assert live_messages(root, result) == 0
        return
    prefix = live.read_bytes()[:size]  # the file only grows: what it was when it was read
    assert xxhash.xxh3_128_hexdigest(prefix) == digest, "the recorded digest is of no state the file was in"
    assert live_messages(root, result) == sum(1 for line in prefix.splitlines() if _parses(line))


def _parses(line: bytes) -> bool:
    """A line the writer finished (one cut mid-write is quarantined, not a message)."""
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def test_an_outcomes_file_changed_after_digesting_is_recorded_as_read(
    corpus: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """score reads an outcomes file once; if it changed since the runner digested it, the
    receipt names the bytes score read."""
    from pipeline.core import sources
    from pipeline.stages.registry import load_stages

    folder, _ = corpus
    outcomes = tmp_path / "outcomes.jsonl"
    outcomes.write_text(json.dumps({"session_id": "nope", "verdict": "pass", "created_at": "2026-01-01"}) + "\n")
    extra = json.dumps({"session_id": "other", "verdict": "fail", "created_at": "2026-01-02"}) + "\n"
    original = sources.read_source

    def appended_first(file: Any) -> Any:
        with outcomes.open("a") as handle:
            handle.write(extra)
        return original(file)

    monkeypatch.setattr("pipeline.stages.score.read_source", appended_first)
    options = RunOptions(root=tmp_path / "lake", workers=1, sources=[
        SourceSpec("claude-code", folder), SourceSpec("outcomes", outcomes)])
    result = Runner(load_stages(["score"]), options).run(["score"])
    assert result.ok
    layout = LakeLayout(tmp_path / "lake")
    assert verify_run(layout, result.run_id, load_trusted(layout)).problems == []
    score = next(o.receipt for o in result.outcomes if o.stage == "score")
    manifest = load_manifest(layout.cache, next(i.xxh3_128 for i in score.inputs if i.name == "source:outcomes"))
    assert manifest is not None
    [recorded] = manifest.files
    assert recorded.digest == xxhash.xxh3_128_hexdigest(outcomes.read_bytes())  # two rows, as parsed
    assert score.stats["outcome_rows"] == 2
