"""Signed receipts: third-party verification, and tamper detection by `receipts verify`."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_public_key
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.core.runner import Runner, RunOptions
from schemas.receipt import RECEIPT_PREDICATE_TYPE, RUN_PREDICATE_TYPE, STATEMENT_TYPE
from tests.core import toy

cli = CliRunner()


def _lake(tmp_path: Path) -> tuple[Path, str]:
    result = Runner(toy.STAGES, RunOptions(root=tmp_path, sources=[])).run()
    return tmp_path, result.run_id


def test_envelopes_verify_with_securesystemslib_and_the_printed_pem(tmp_path: Path) -> None:
    root, run_id = _lake(tmp_path)
    pem = cli.invoke(app, ["receipts", "pubkey"]).stdout
    key = SSlibKey.from_crypto(load_pem_public_key(pem.encode()))
    receipts = sorted((root / "receipts" / run_id).glob("*.receipt.json"))
    assert len(receipts) == 2
    for path in receipts:
        envelope = Envelope.from_dict(json.loads(path.read_text()))
        assert key.keyid in envelope.verify([key], 1)
        statement = json.loads(envelope.pae().split(b" ", 4)[4])
        assert statement["_type"] == STATEMENT_TYPE
        assert statement["predicateType"] == RECEIPT_PREDICATE_TYPE
        for subject in statement["subject"]:
            assert set(subject["digest"]) == {"sha256", "blake3", "xxh3_128"}
            assert (root / subject["name"]).is_file()
    # The run statement too: a third party checks every receipt file against it.
    envelope = Envelope.from_dict(json.loads((root / "receipts" / run_id / "run.statement.json").read_text()))
    assert key.keyid in envelope.verify([key], 1)
    statement = json.loads(envelope.pae().split(b" ", 4)[4])
    assert statement["predicateType"] == RUN_PREDICATE_TYPE
    listed = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
    assert listed == {
        f"receipts/{run_id}/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest() for p in receipts
    }


def test_key_is_created_on_first_run_with_0600(tmp_path: Path) -> None:
    key_path = Path(os.environ["TRACELAKE_SIGNING_KEY"])
    _lake(tmp_path)
    assert key_path.exists()
    assert key_path.stat().st_mode & 0o777 == 0o600


def test_verify_passes_then_fails_on_a_flipped_object_byte(tmp_path: Path) -> None:
    root, run_id = _lake(tmp_path)
    ok = cli.invoke(app, ["receipts", "verify", "--root", str(root)])
    assert ok.exit_code == 0, ok.stdout
    summary = json.loads((root / "receipts" / run_id / "summary.json").read_text())
    target = root / summary["tables"]["squares"]["path"]
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    bad = cli.invoke(app, ["receipts", "verify", run_id, "--root", str(root)])
    assert bad.exit_code == 1
    assert summary["tables"]["squares"]["path"] in bad.stdout


def test_verify_fails_on_an_edited_receipt(tmp_path: Path) -> None:
    root, run_id = _lake(tmp_path)
    path = root / "receipts" / run_id / "make.receipt.json"
    envelope = json.loads(path.read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"]["records_out"] += 1
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    path.write_text(json.dumps(envelope))
    bad = cli.invoke(app, ["receipts", "verify", "--root", str(root)])
    assert bad.exit_code == 1
    assert "make.receipt.json" in bad.stdout


def test_verify_fails_with_someone_elses_key(tmp_path: Path) -> None:
    root, _ = _lake(tmp_path)
    other = tmp_path / "other.pem"
    assert cli.invoke(app, ["keygen", "--path", str(other)]).exit_code == 0
    pub = tmp_path / "other.pub.pem"
    pub.write_text(cli.invoke(app, ["receipts", "pubkey", "--key", str(other)]).stdout)
    bad = cli.invoke(app, ["receipts", "verify", "--root", str(root), "--pubkey", str(pub)])
    assert bad.exit_code == 1
    good_pub = tmp_path / "mine.pub.pem"
    good_pub.write_text(cli.invoke(app, ["receipts", "pubkey"]).stdout)
    assert cli.invoke(app, ["receipts", "verify", "--root", str(root), "--pubkey", str(good_pub)]).exit_code == 0


def test_show_and_list_and_sql(tmp_path: Path) -> None:
    root, run_id = _lake(tmp_path)
    listed = cli.invoke(app, ["receipts", "list", "--root", str(root), "--format", "json"])
    assert json.loads(listed.stdout)[0]["run_id"] == run_id
    shown = cli.invoke(app, ["receipts", "show", "--root", str(root), "--format", "json"])
    assert {r["stage"] for r in json.loads(shown.stdout)} == {"make", "square"}
    rows = cli.invoke(app, ["sql", "--root", str(root), "--format", "json",
                            "SELECT stage, cache_hit, records_in, records_out FROM receipts ORDER BY stage"])
    assert rows.exit_code == 0, rows.stdout
    assert json.loads(rows.stdout) == [
        {"stage": "make", "cache_hit": False, "records_in": 5, "records_out": 5},
        {"stage": "square", "cache_hit": False, "records_in": 5, "records_out": 5},
    ]
    csv_out = cli.invoke(app, ["sql", "--root", str(root), "--format", "csv", "SELECT count(*) AS n FROM squares"])
    assert csv_out.stdout == "n\n5\n"
    bad = cli.invoke(app, ["sql", "--root", str(root), "SELECT * FROM nope"])
    assert bad.exit_code == 2  # a query that does not run is an input error, not a finding
