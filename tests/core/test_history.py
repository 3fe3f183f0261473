"""The lake database's run history comes from a MAC'd cache of verified rows: the
same rows as verifying every run, and never a row an attacker wrote."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from pipeline.core.history import history_rows
from pipeline.core.runner import Runner, RunOptions
from pipeline.core.store import LakeLayout
from pipeline.core.trust import TrustedKeys, load_trusted
from pipeline.sql import _ROWS_SHAPE, _run_rows, write_lake_db
from tests.core import toy


@pytest.fixture()
def lake(tmp_path: Path) -> tuple[LakeLayout, Runner]:
    for n in (3, 4, 5):
        runner = Runner([toy.MAKE, toy.SQUARE], RunOptions(root=tmp_path / "lake", sources=[],
                                                           stage_config={"make": {"n": n}}))
        assert runner.run().ok
    return runner.layout, runner


def _rows(layout: LakeLayout, runner: Runner, keys: TrustedKeys | None = None) -> tuple[list[object], int]:
    history = history_rows(layout, keys or load_trusted(layout), _run_rows, runner.mac, _ROWS_SHAPE)
    return [history.receipts, history.artifacts, history.inputs], history.verified


def test_cached_rows_equal_verified_rows_and_only_new_runs_are_verified(lake: tuple[LakeLayout, Runner]) -> None:
    layout, runner = lake
    unmacked = history_rows(layout, load_trusted(layout), _run_rows, None, _ROWS_SHAPE)
    first, verified = _rows(layout, runner)
    assert verified == 3 and first == [unmacked.receipts, unmacked.artifacts, unmacked.inputs]
    again, verified = _rows(layout, runner)
    assert verified == 0 and again == first
    fourth = Runner([toy.MAKE, toy.SQUARE], RunOptions(root=layout.root, sources=[]))
    assert fourth.run().ok  # a fourth run: only it is verified
    _, verified = _rows(layout, runner)
    assert verified == 1


def test_a_forged_cache_entry_is_never_read(lake: tuple[LakeLayout, Runner]) -> None:
    layout, runner = lake
    rows, _ = _rows(layout, runner)
    path = layout.history_cache
    head, _, body = path.read_bytes().partition(b"\n")
    data = json.loads(body)
    for entry in data["runs"].values():
        for row in entry["receipts"]:
            row["records_out"] = 10**9  # a forged claim, with the old tag
    path.write_bytes(head + b"\n" + json.dumps(data, sort_keys=True).encode())
    forged, verified = _rows(layout, runner)
    assert verified == 3 and forged == rows  # the tag failed: every run verified again


def test_an_edited_receipt_is_verified_again_and_left_out(lake: tuple[LakeLayout, Runner]) -> None:
    layout, runner = lake
    rows, _ = _rows(layout, runner)
    run_id = sorted(p.name for p in layout.receipts.iterdir() if p.name.startswith("2"))[0]
    receipt = layout.run_dir(run_id) / "make.receipt.json"
    envelope = json.loads(receipt.read_text())
    envelope["signatures"][0]["sig"] = envelope["signatures"][0]["sig"][::-1]
    receipt.write_text(json.dumps(envelope))
    after, verified = _rows(layout, runner)
    assert verified == 0  # its bytes changed: verified again, and it failed
    assert {r["run_id"] for r in after[0]} == {r["run_id"] for r in rows[0]} - {run_id}  # type: ignore[index,union-attr]


def test_a_changed_trust_set_verifies_every_run_again(lake: tuple[LakeLayout, Runner]) -> None:
    layout, runner = lake
    _rows(layout, runner)
    nobody = TrustedKeys((), "none")
    rows, verified = _rows(layout, runner, nobody)
    assert verified == 0 and rows == [[], [], []]  # nothing verifies under no key


def test_the_lake_database_lists_every_run(lake: tuple[LakeLayout, Runner]) -> None:
    layout, runner = lake
    runs = sorted(p.name for p in layout.receipts.iterdir() if p.name.startswith("2"))
    for _ in range(2):  # built from verified receipts, then from the cache
        write_lake_db(layout, runs[-1], runner.mac)
        con = duckdb.connect(str(layout.duckdb_file), read_only=True)
        listed = [r[0] for r in con.execute("select distinct run_id from receipt_history order by 1").fetchall()]
        con.close()
        assert listed == runs
