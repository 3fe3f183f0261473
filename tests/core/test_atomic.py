"""A writer killed with SIGKILL never leaves a partial object or receipt visible."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.core.hashing import sha256_file, table_digest
from pipeline.core.receipts import load_envelope
from pipeline.core.runner import Runner, RunOptions
from tests.core import toy

WRITER = r"""
import sys, itertools
from pathlib import Path
import pyarrow as pa
from pipeline.core.store import LakeLayout, put_table
layout = LakeLayout(Path(sys.argv[1]))
for i in itertools.count():
    n = 400_000
    table = pa.table({"k": pa.array([f"{i}-{j}-" * 4 for j in range(n)], pa.large_string()), "v": pa.array(range(n), pa.int64())})
    put_table(layout, "t", table)
    print(i, flush=True)
"""


def _assert_lake_consistent(root: Path) -> None:
    objects = root / "data" / "objects"
    for path in objects.rglob("*.parquet"):
        assert not path.name.startswith(".tmp-")
        table = pq.read_table(path)  # would raise on a torn file
        assert table_digest(table) == path.stem.split("-")[0]
        assert sha256_file(path)[:16] == path.stem.split("-")[1]
    for receipt in (root / "receipts").rglob("*.json"):
        if not receipt.name.startswith(".tmp-"):
            load_envelope(receipt) if receipt.name.endswith(".receipt.json") else receipt.read_text()


def test_sigkill_mid_write_leaves_no_partial_object(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for delay in (0.6, 1.1, 1.7):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _assert_lake_consistent(tmp_path)
    leftovers = list((tmp_path / "data" / "objects").rglob(".tmp-*"))
    # A killed writer may leave a temp file behind, but never under an object's name.
    assert all(p.name.startswith(".tmp-") for p in leftovers)


def test_next_run_recovers_after_a_killed_run(tmp_path: Path) -> None:
    # Simulate debris from a killed run: temp files beside objects and receipts.
    first = Runner(toy.STAGES, RunOptions(root=tmp_path, sources=[])).run()
    some_object = tmp_path / first.summary.tables["numbers"].path
    (some_object.parent / f".tmp-{some_object.name}-dead").write_bytes(b"PAR1 torn")
    (tmp_path / "receipts" / first.run_id / ".tmp-make.receipt.json-dead").write_text("{")
    some_object.unlink()  # and an object that never got renamed into place
    second = Runner(toy.STAGES, RunOptions(root=tmp_path, sources=[])).run()
    assert second.ok
    assert sha256_file(tmp_path / second.summary.tables["numbers"].path) == second.summary.tables["numbers"].sha256
    _assert_lake_consistent(tmp_path)
