"""Attacks on the lake and its receipts, each one a test: what an attacker with write
access to the root (but not the signing key) or a careless operator would try.

Every case ends in a refused cache entry (the stage runs again), a repaired object, or a
`receipts verify` failure naming exactly what differs: never a forged claim re-signed.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from pipeline.audit.verify import verify_run
from pipeline.cli.main import app
from pipeline.core.receipts import cache_entry_path, list_runs, receipt_path
from pipeline.core.runner import Runner, RunOptions, RunResult
from pipeline.core.signing import sign_statement
from pipeline.core.store import LakeLayout
from pipeline.core.trust import UntrustedKey, load_trusted
from tests.core import toy

STAGES = [toy.MAKE, toy.SQUARE, toy.EXPORT]
cli = CliRunner()


def run(root: Path, config: dict[str, dict[str, object]] | None = None) -> RunResult:
    return Runner(STAGES, RunOptions(root=root, sources=[], stage_config=config or {})).run()


def problems(root: Path, run_id: str) -> list[tuple[str, str]]:
    layout = LakeLayout(root)
    return [(p.subject, p.problem) for p in verify_run(layout, run_id, load_trusted(layout)).problems]


def verify_cli(root: Path, *args: str) -> Any:
    return cli.invoke(app, ["receipts", "verify", "--root", str(root), *args])


def payload(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    envelope = json.loads(path.read_text())
    return envelope, json.loads(base64.b64decode(envelope["payload"]))


def rewrite(path: Path, edit: Callable[[dict[str, Any]], None], key: Ed25519PrivateKey | None = None) -> None:
    """Edit a signed statement's predicate; re-sign it with ``key``, or keep the old
    signature (an edit by someone without any key)."""
    envelope, statement = payload(path)
    edit(statement["predicate"])
    if key is not None:
        envelope = sign_statement(statement, key)
    else:
        envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    path.write_text(json.dumps(envelope))


def outcome(result: RunResult, stage: str) -> Any:
    return next(o.receipt for o in result.outcomes if o.stage == stage)


# --- the run cache ------------------------------------------------------------------------


def _more_out(p: dict[str, Any]) -> None:
    p["records_out"] += 1
    p["records_in"] += 1


def _hide_quarantine(p: dict[str, Any]) -> None:
    p["quarantined"] = {"malformed_json": 3}
    p["records_in"] += 3


def _fake_redactions(p: dict[str, Any]) -> None:
    p["stats"] = {"redactions": {"aws_access_key": 0}}


@pytest.mark.parametrize("forge", [_more_out, _hide_quarantine, _fake_redactions],
                         ids=["counts", "quarantine", "redactions"])
@pytest.mark.parametrize("resign", [False, True], ids=["unsigned-edit", "foreign-key"])
def test_a_forged_cache_entry_is_never_re_signed(tmp_path: Path, forge: Any, resign: bool) -> None:
    first = run(tmp_path)
    honest = outcome(first, "make")
    entry = cache_entry_path(LakeLayout(tmp_path), honest.cache_key)
    rewrite(entry, forge, Ed25519PrivateKey.generate() if resign else None)

    second = run(tmp_path)
    receipt = outcome(second, "make")
    assert not receipt.cache_hit  # refused, and the stage ran again
    assert (receipt.records_in, receipt.records_out, receipt.quarantined, receipt.stats) == (
        honest.records_in, honest.records_out, honest.quarantined, honest.stats)
    [rejected] = second.summary.rejected_cache
    assert (rejected.stage, rejected.cache_key) == ("make", honest.cache_key)
    assert "signature" in rejected.reason
    assert problems(tmp_path, second.run_id) == []
    # The entry is honest again, so the next run reuses it.
    third = run(tmp_path)
    assert outcome(third, "make").cache_hit and not third.summary.rejected_cache


def test_an_entry_filed_under_another_key_is_refused(tmp_path: Path) -> None:
    first = run(tmp_path)
    layout = LakeLayout(tmp_path)
    make, square = outcome(first, "make"), outcome(first, "square")
    # A genuine, validly signed entry of another stage, planted under square's key.
    cache_entry_path(layout, square.cache_key).write_bytes(cache_entry_path(layout, make.cache_key).read_bytes())
    second = run(tmp_path)
    assert not outcome(second, "square").cache_hit
    assert "not square" in second.summary.rejected_cache[0].reason
    assert problems(tmp_path, second.run_id) == []


def test_a_flipped_object_byte_is_repaired_by_the_next_run(tmp_path: Path) -> None:
    first = run(tmp_path)
    ref = first.summary.tables["squares"]
    target = tmp_path / ref.path
    good = target.read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0x01
    target.write_bytes(bytes(bad))
    assert any(subject == ref.path and "sha256" in why for subject, why in problems(tmp_path, first.run_id))

    second = run(tmp_path)
    assert second.ok
    assert not outcome(second, "square").cache_hit
    assert "BLAKE3" in second.summary.rejected_cache[0].reason
    assert target.read_bytes() == good  # repaired in place: the old run verifies again too
    assert problems(tmp_path, second.run_id) == []
    assert problems(tmp_path, first.run_id) == []


def test_a_deleted_object_is_rebuilt(tmp_path: Path) -> None:
    first = run(tmp_path)
    (tmp_path / first.summary.tables["numbers"].path).unlink()
    second = run(tmp_path)
    assert not outcome(second, "make").cache_hit and "missing" in second.summary.rejected_cache[0].reason
    assert problems(tmp_path, second.run_id) == []


# --- what verify sees ---------------------------------------------------------------------


def test_an_edited_summary_fails_verify(tmp_path: Path) -> None:
    first = run(tmp_path)
    path = tmp_path / "receipts" / first.run_id / "summary.json"
    summary = json.loads(path.read_text())
    summary["run_hash"] = "0" * 32
    summary["total_records_in"] += 1000
    path.write_text(json.dumps(summary, indent=2) + "\n")
    result = verify_cli(tmp_path)
    assert result.exit_code == 1
    assert f"receipts/{first.run_id}/summary.json: differs from the signed run statement" in result.stdout
    # Readers never take the rendering for the truth.
    rows = cli.invoke(app, ["sql", "--root", str(tmp_path), "--format", "json", "SELECT count(*) AS n FROM squares"])
    assert json.loads(rows.stdout) == [{"n": 5}]


def test_an_edited_statement_fails_verify(tmp_path: Path) -> None:
    first = run(tmp_path)
    rewrite(tmp_path / "receipts" / first.run_id / "run.statement.json",
            lambda p: p.update(run_hash="0" * 32))
    [(subject, why)] = problems(tmp_path, first.run_id)
    assert subject == f"receipts/{first.run_id}/run.statement.json" and "signature" in why
    shown = cli.invoke(app, ["receipts", "show", "--root", str(tmp_path)])
    assert shown.exit_code == 1 and "signature" in shown.output


def test_a_deleted_receipt_fails_verify(tmp_path: Path) -> None:
    first = run(tmp_path)
    receipt = receipt_path(LakeLayout(tmp_path), first.run_id, "square")
    receipt.unlink()
    result = verify_cli(tmp_path)
    assert result.exit_code == 1
    assert f"receipts/{first.run_id}/square.receipt.json: receipt listed in the run statement is missing" in result.stdout
    assert "square is ok but its receipt is missing" in result.stdout


def test_an_appended_export_line_fails_verify(tmp_path: Path) -> None:
    first = run(tmp_path)
    rows = tmp_path / "exports" / first.run_id / "numbers" / "rows.txt"
    with rows.open("a") as handle:
        handle.write("k9999\n")
    result = verify_cli(tmp_path)
    assert result.exit_code == 1
    assert f"exports/{first.run_id}/numbers/rows.txt: export file size is" in result.stdout


def test_a_planted_export_file_fails_verify(tmp_path: Path) -> None:
    first = run(tmp_path)
    planted = tmp_path / "exports" / first.run_id / "numbers" / "extra.txt"
    planted.write_text("k9999\n")
    [(subject, why)] = problems(tmp_path, first.run_id)
    assert subject == f"exports/{first.run_id}/numbers/extra.txt" and "not in the run statement" in why


def test_a_receipt_replayed_from_another_run_fails_verify(tmp_path: Path) -> None:
    first = run(tmp_path)
    second = run(tmp_path, {"make": {"n": 7}})
    layout = LakeLayout(tmp_path)
    replay = receipt_path(layout, second.run_id, "make")
    replay.write_bytes(receipt_path(layout, first.run_id, "make").read_bytes())  # validly signed
    found = dict(problems(tmp_path, second.run_id))
    name = f"receipts/{second.run_id}/make.receipt.json"
    assert "receipt bytes differ from the run statement" in found.values()
    assert any(s == name and f"receipt of run {first.run_id}" in p for s, p in problems(tmp_path, second.run_id))


def test_an_unlisted_receipt_fails_verify(tmp_path: Path) -> None:
    first = run(tmp_path)
    second = run(tmp_path)
    layout = LakeLayout(tmp_path)
    extra = layout.run_dir(second.run_id) / "extra.receipt.json"
    extra.write_bytes(receipt_path(layout, first.run_id, "make").read_bytes())
    found = problems(tmp_path, second.run_id)
    assert (f"receipts/{second.run_id}/extra.receipt.json", "receipt is not listed in the run statement") in found


def test_a_receipt_forged_and_signed_with_a_foreign_key(tmp_path: Path) -> None:
    first = run(tmp_path)
    other = Ed25519PrivateKey.generate()
    path = receipt_path(LakeLayout(tmp_path), first.run_id, "make")
    rewrite(path, _more_out, other)
    result = verify_cli(tmp_path)
    assert result.exit_code == 1 and "make.receipt.json: no signature verifies with a trusted key" in result.stdout
    # Pinning the forger's key does not help: the run statement was signed by ours.
    pem = tmp_path / "other.pub.pem"
    from pipeline.core.signing import public_pem

    pem.write_text(public_pem(other.public_key()))
    pinned = verify_cli(tmp_path, "--pubkey", str(pem))
    assert pinned.exit_code == 1 and "run.statement.json: no signature verifies" in pinned.stdout


# --- keys ---------------------------------------------------------------------------------


def test_verify_never_creates_a_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run(tmp_path)
    (tmp_path / "receipts" / "trusted-keys.pem").unlink()
    fresh = tmp_path / "nowhere" / "signing-key.pem"
    monkeypatch.setenv("TRACELAKE_SIGNING_KEY", str(fresh))
    result = verify_cli(tmp_path)
    assert result.exit_code == 1
    assert "no trusted keys" in result.output
    assert not fresh.exists() and not fresh.parent.exists()
    pub = cli.invoke(app, ["receipts", "pubkey"])
    assert pub.exit_code == 2 and "no signing key" in pub.output and not fresh.exists()


def test_first_run_trusts_its_key_and_others_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = run(tmp_path)
    trusted = (tmp_path / "receipts" / "trusted-keys.pem").read_text()
    assert trusted.count("BEGIN PUBLIC KEY") == 1 and "first run in this root" in trusted
    monkeypatch.setenv("TRACELAKE_SIGNING_KEY", str(tmp_path / "stranger.pem"))
    with pytest.raises(UntrustedKey):
        run(tmp_path)
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "s.jsonl").write_text("")  # an (empty) session file: the source is a valid one
    refused = cli.invoke(app, ["run", "collect", "--root", str(tmp_path), "--quiet",
                               "--source", f"claude-code:{logs}"])
    assert refused.exit_code == 2 and "is not trusted by this root" in refused.output
    assert list_runs(LakeLayout(tmp_path)) == [first.run_id]


def test_rotation_keeps_old_runs_verifiable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = tmp_path / "rotating.pem"
    monkeypatch.setenv("TRACELAKE_SIGNING_KEY", str(key))
    before = run(tmp_path)
    old_pem = cli.invoke(app, ["receipts", "pubkey"]).stdout
    rotated = cli.invoke(app, ["keygen", "--rotate", "--root", str(tmp_path)])
    assert rotated.exit_code == 0, rotated.output
    assert cli.invoke(app, ["receipts", "pubkey"]).stdout != old_pem
    after = run(tmp_path)
    assert (tmp_path / "receipts" / "trusted-keys.pem").read_text().count("BEGIN PUBLIC KEY") == 2
    assert problems(tmp_path, before.run_id) == [] and problems(tmp_path, after.run_id) == []
    # The old run verifies against the old key alone; the new one does not.
    pem = tmp_path / "old.pub.pem"
    pem.write_text(old_pem)
    assert verify_cli(tmp_path, before.run_id, "--pubkey", str(pem)).exit_code == 0
    assert verify_cli(tmp_path, after.run_id, "--pubkey", str(pem)).exit_code == 1


def test_trusting_a_key_explicitly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run(tmp_path)
    other = tmp_path / "teammate.pem"
    assert cli.invoke(app, ["keygen", "--path", str(other)]).exit_code == 0
    pem = tmp_path / "teammate.pub.pem"
    pem.write_text(cli.invoke(app, ["receipts", "pubkey", "--key", str(other)]).stdout)
    assert cli.invoke(app, ["receipts", "trust", str(pem), "--root", str(tmp_path)]).exit_code == 0
    monkeypatch.setenv("TRACELAKE_SIGNING_KEY", str(other))
    assert run(tmp_path).ok


# --- leftovers and output -----------------------------------------------------------------


def test_an_unfinished_run_is_never_listed_and_is_cleared(tmp_path: Path) -> None:
    first = run(tmp_path)
    layout = LakeLayout(tmp_path)
    ghost = "20990101T000000000000Z-dead"
    (layout.run_dir(ghost)).mkdir()
    (layout.run_dir(ghost) / ".unfinished").write_text("killed\n")
    (layout.run_dir(ghost) / "make.receipt.json").write_bytes(
        receipt_path(layout, first.run_id, "make").read_bytes())
    (layout.export_dir(ghost) / "numbers").mkdir(parents=True)
    (layout.export_dir(ghost) / "numbers" / "rows.txt").write_text("half\n")
    debris = layout.objects / ".tmp-stream-numbers-dead"
    debris.write_bytes(b"PAR1" * 1000)
    assert list_runs(layout) == [first.run_id]
    listed = cli.invoke(app, ["receipts", "list", "--root", str(tmp_path), "--format", "json"])
    assert [r["run_id"] for r in json.loads(listed.stdout)] == [first.run_id]

    second = run(tmp_path)
    assert second.summary.cleanup.unfinished_runs == [ghost]
    assert second.summary.cleanup.temp_files == 1 and second.summary.cleanup.temp_bytes == 4000
    assert not layout.run_dir(ghost).exists() and not layout.export_dir(ghost).exists()
    assert not debris.exists()
    assert list_runs(layout) == [first.run_id, second.run_id]


def test_brackets_in_paths_are_printed_as_text(tmp_path: Path) -> None:
    root = tmp_path / "lake[/bold][red]x"
    result = cli.invoke(app, ["receipts", "verify", "--root", str(root)])
    assert result.exit_code == 2
    assert "[/bold][red]x" in result.output and "Traceback" not in result.output
    run(root)
    (root / "receipts").joinpath("trusted-keys.pem").unlink()
    bad = cli.invoke(app, ["receipts", "verify", "--root", str(root)])
    assert bad.exit_code == 1 and "[/bold][red]x" in bad.output


def test_deep_report_prints_details_as_text() -> None:
    from io import StringIO

    from rich.console import Console

    from pipeline.audit.deep import DeepVerifyReport, StageCheck, print_deep_report

    report = DeepVerifyReport(run_id="r", sample=None, passed=False, stages=[
        StageCheck(stage="collect", verdict="error", detail="OSError: [Errno 2] /tmp/[/x]/a.jsonl [bold]")])
    out = StringIO()
    print_deep_report(report, Console(file=out, width=200))
    assert "[/x]/a.jsonl [bold]" in out.getvalue()


def test_keys_never_leak_into_reprs(tmp_path: Path) -> None:
    runner = Runner(STAGES, RunOptions(root=tmp_path, sources=[]))
    assert "key" not in repr(runner.mac).replace("<key>", "")
    assert os.environ["TRACELAKE_SIGNING_KEY"]  # the conftest's throwaway key


# --- found by review: the trusted-keys file, forged statistics, broken folders -----------


def test_a_key_planted_in_trusted_keys_cannot_launder_a_cache_entry(tmp_path: Path) -> None:
    """The trusted-keys file is in the root, so an attacker can add a key to it; a cache
    entry is reused only if the run's own key signed it."""
    from pipeline.core.signing import public_pem

    first = run(tmp_path)
    honest = outcome(first, "make")
    attacker = Ed25519PrivateKey.generate()
    with (tmp_path / "receipts" / "trusted-keys.pem").open("a") as handle:
        handle.write(public_pem(attacker.public_key()))
    rewrite(cache_entry_path(LakeLayout(tmp_path), honest.cache_key), _more_out, attacker)
    second = run(tmp_path)
    receipt = outcome(second, "make")
    assert not receipt.cache_hit and receipt.records_out == honest.records_out
    assert "signature" in second.summary.rejected_cache[0].reason


def test_an_object_rewritten_to_read_the_same_is_still_replaced(tmp_path: Path) -> None:
    """Other bytes that read back to the same rows (another compression, forged footer
    statistics a query engine would trust) are damage too: the next run restores ours."""
    import pyarrow.parquet as pq

    first = run(tmp_path)
    ref = first.summary.tables["squares"]
    target = tmp_path / ref.path
    good = target.read_bytes()
    pq.write_table(pq.read_table(target), target, compression="snappy")
    assert target.read_bytes() != good
    second = run(tmp_path)
    assert not outcome(second, "square").cache_hit
    assert target.read_bytes() == good
    assert problems(tmp_path, first.run_id) == [] and problems(tmp_path, second.run_id) == []


def test_verify_reports_a_run_whose_statement_is_gone(tmp_path: Path) -> None:
    first = run(tmp_path)
    second = run(tmp_path)
    (tmp_path / "receipts" / second.run_id / "run.statement.json").unlink()
    result = verify_cli(tmp_path)  # latest complete is now the first run, which is sound
    assert result.exit_code == 1
    assert f"receipts/{second.run_id}: is not a complete run" in result.stdout
    assert f"exports/{second.run_id}: export folder of no complete run" in result.stdout
    explicit = verify_cli(tmp_path, second.run_id)
    assert explicit.exit_code == 2 and "not a complete run" in explicit.output
    assert list_runs(LakeLayout(tmp_path)) == [first.run_id]


def test_a_planted_unfinished_mark_never_deletes_a_signed_run(tmp_path: Path) -> None:
    first = run(tmp_path)
    (tmp_path / "receipts" / first.run_id / ".unfinished").write_text("")
    assert list_runs(LakeLayout(tmp_path)) == []
    listed = cli.invoke(app, ["receipts", "list", "--root", str(tmp_path)])
    assert f"not a run: receipts/{first.run_id} (unfinished" in listed.stdout
    second = run(tmp_path)
    assert second.summary.cleanup.unfinished_runs == []
    assert list_runs(LakeLayout(tmp_path)) == [first.run_id, second.run_id]
    assert problems(tmp_path, first.run_id) == []


def test_links_and_fifos_are_findings_not_crashes(tmp_path: Path) -> None:
    first = run(tmp_path)
    layout = LakeLayout(tmp_path)
    outside = tmp_path.parent / f"{tmp_path.name}-outside.json"
    receipt = receipt_path(layout, first.run_id, "square")
    outside.write_bytes(receipt.read_bytes())
    receipt.unlink()
    receipt.symlink_to(outside)
    os.mkfifo(layout.export_dir(first.run_id) / "numbers" / "extra.txt")
    result = verify_cli(tmp_path)
    assert result.exit_code == 1, result.output
    assert "square.receipt.json: is a link" in result.stdout
    assert "numbers/extra.txt: is in the run's export folder but is not a file of the run" in result.stdout


def test_rotation_with_a_malformed_trust_file_keeps_the_old_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = tmp_path / "k.pem"
    monkeypatch.setenv("TRACELAKE_SIGNING_KEY", str(key))
    run(tmp_path)
    before = key.read_bytes()
    trusted = tmp_path / "receipts" / "trusted-keys.pem"
    trusted.write_text(trusted.read_text() + "-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
    result = cli.invoke(app, ["keygen", "--rotate", "--root", str(tmp_path)])
    assert result.exit_code == 2 and key.read_bytes() == before
    trusted.write_text(trusted.read_text().split("-----BEGIN PUBLIC KEY-----\nnot a key")[0])
    assert cli.invoke(app, ["keygen", "--rotate", "--root", str(tmp_path)]).exit_code == 0
    assert key.read_bytes() != before
    [retired] = tmp_path.glob("k.pem.*.retired")
    assert retired.read_bytes() == before


def test_execution_claims_that_cannot_be_true_are_refused(tmp_path: Path) -> None:
    """The executor's record is a claim too: more failed units than units, a task_failed
    file with no failed unit, or an execution recorded on a cache hit."""
    from pipeline.core.cache import claims_problem
    from schemas.receipt import Execution

    receipt = outcome(run(tmp_path / "lake"), "make")
    assert receipt.execution == Execution(executor="local") and claims_problem(receipt) is None
    failed = receipt.model_copy(update={"execution": Execution(executor="ray", tasks=2, failed=3)})
    assert claims_problem(failed) == "it records more failed units than units"
    quarantined = receipt.model_copy(update={
        "execution": Execution(executor="ray", tasks=4), "records_in": receipt.records_in + 1,
        "quarantined": {**receipt.quarantined, "task_failed": 1}})
    assert claims_problem(quarantined) == "it quarantines more task_failed files than units failed"
    hit = receipt.model_copy(update={"cache_hit": True})
    assert claims_problem(hit) == "it is a cache hit, yet it records an execution"
    again = outcome(run(tmp_path / "lake"), "make")
    assert again.cache_hit and again.execution is None
