"""The README's commands, end to end, as a user types them (real subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.synth import synthesize

PIN = "2026-01-01T00:00:00Z"


def tracelake(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", *args],
        capture_output=True, text=True, cwd=cwd, env={**os.environ, "COLUMNS": "200"},
        check=False,
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    base = tmp_path_factory.mktemp("corpus")
    synthesize(base / "cc", sessions=12, seed=3, fmt="claude-code")
    synthesize(base / "cx", sessions=6, seed=3, fmt="codex")
    return ["--source", f"claude-code:{base / 'cc'}", "--source", f"codex:{base / 'cx'}"]


def _summary(root: Path) -> dict[str, object]:
    runs = sorted(p for p in (root / "receipts").iterdir() if (p / "summary.json").exists())
    return json.loads((runs[-1] / "summary.json").read_text())  # type: ignore[no-any-return]


def test_run_all_twice_is_reproducible_and_cached(tmp_path: Path, corpus: list[str]) -> None:
    first = tracelake("run-all", "--root", str(tmp_path), *corpus, "--recorded-at", PIN)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "collect" in first.stdout and "run_hash" in first.stdout
    s1 = _summary(tmp_path)
    second = tracelake("run-all", "--root", str(tmp_path), *corpus, "--recorded-at", PIN, "--quiet")
    assert second.returncode == 0, second.stderr
    s2 = _summary(tmp_path)
    assert s1["run_hash"] == s2["run_hash"]
    assert all(stage["cache_hit"] for stage in s2["stages"])  # type: ignore[index, union-attr]
    # A fresh lake over the same inputs with the same pin: byte-identical objects.
    other = tmp_path / "other"
    assert tracelake("run-all", "--root", str(other), *corpus, "--recorded-at", PIN, "--quiet").returncode == 0
    s3 = _summary(other)
    assert s3["run_hash"] == s1["run_hash"]
    for name, ref in s1["tables"].items():  # type: ignore[union-attr]
        assert s3["tables"][name]["sha256"] == ref["sha256"], name  # type: ignore[index]
    tables = ("sessions", "messages", "tool_calls", "prompts", "branches", "subagents", "quarantine",
              "scores", "sft", "rag", "preference", "kto", "lineage")
    union = " UNION ALL ".join(f"SELECT '{t}' AS t, count(*) AS n FROM {t}" for t in tables)
    out = tracelake("sql", "--root", str(tmp_path), "--format", "json", union)
    assert out.returncode == 0, out.stderr
    counts = {row["t"]: row["n"] for row in json.loads(out.stdout)}
    assert set(counts) == set(tables)
    assert all(counts[t] > 0 for t in ("sessions", "messages", "tool_calls", "prompts", "scores", "sft"))
    receipts = json.loads(tracelake("sql", "--root", str(tmp_path), "--format", "json",
                                    "SELECT * FROM receipts").stdout)
    assert {r["stage"] for r in receipts} >= {"collect", "score", "export-sft"}
    for r in receipts:
        assert r["records_in"] == r["records_out"] + r["quarantined"] + r["filtered"]
        assert {"started_at", "finished_at", "validation_passed", "cache_hit"} <= set(r)
    assert tracelake("receipts", "verify", "--root", str(tmp_path)).returncode == 0
    drift = tracelake("drift", "--root", str(tmp_path), "--fail-on", "alert")
    assert drift.returncode == 0, drift.stdout


def test_lake_duckdb_serves_ad_hoc_users(tmp_path: Path, corpus: list[str]) -> None:
    import shutil

    first = tmp_path / "lake"
    assert tracelake("run", "collect", "--root", str(first), *corpus, "--quiet").returncode == 0
    moved = tmp_path / "elsewhere" / "lake"
    shutil.move(first, moved)  # a root moved (or copied) keeps a working lake.duckdb
    probe = ("import duckdb; con = duckdb.connect('data/lake.duckdb', read_only=True); "
             "print(con.execute('SELECT count(*) FROM sessions').fetchone()[0]); "
             "print(con.execute('SELECT stage FROM receipts').fetchall())")
    done = subprocess.run([sys.executable, "-c", probe], cwd=moved, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    count, stages = done.stdout.splitlines()
    assert int(count) > 0
    assert stages == "[('collect',)]"  # `run collect` runs nothing downstream


def test_bad_arguments_are_clear_errors(tmp_path: Path) -> None:
    bad = tracelake("run-all", "--root", str(tmp_path), "--source", "nonsense")
    assert bad.returncode == 2 and "KIND:PATH" in bad.stderr
    bad_time = tracelake("run-all", "--root", str(tmp_path), "--source", f"codex:{tmp_path}", "--recorded-at", "yesterday")
    assert bad_time.returncode == 2
    no_run = tracelake("sql", "--root", str(tmp_path), "SELECT 1")
    assert no_run.returncode == 2 and "no runs" in no_run.stderr
    a_file = tmp_path / "lake.txt"
    a_file.write_text("")
    not_a_root = tracelake("run-all", "--root", str(a_file), "--source", f"codex:{tmp_path}")
    assert not_a_root.returncode == 2 and "is a file, not a folder" in not_a_root.stderr
    # a misspelt stage is named as such, before anything about sources (none given here)
    no_stage = tracelake("run", "colect", "--root", str(tmp_path / "fresh"))
    assert no_stage.returncode == 2 and "unknown stage 'colect'" in no_stage.stderr, no_stage.stderr


@pytest.mark.parametrize(("config", "message"), [
    ("[colect]\nworkers = 1\n", "unknown table [colect]; did you mean [collect]?"),
    ("[export-sft]\ninclude_partail = true\n", "unknown setting 'include_partail' in [export-sft]; did you mean 'include_partial'?"),
    ("[collect]\nworkerz = 1\n", "unknown setting 'workerz' in [collect] (settings: fold_home,"),
])
def test_a_misspelt_config_is_an_error_not_ignored(tmp_path: Path, corpus: list[str], config: str, message: str) -> None:
    path = tmp_path / "tracelake.toml"
    path.write_text(config)
    out = tracelake("run-all", "--root", str(tmp_path / "lake"), *corpus, "--config", str(path), "--quiet")
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "lake" / "receipts").exists()  # nothing ran


def test_a_missing_or_empty_source_is_an_error(tmp_path: Path) -> None:
    """A typo'd path or the wrong folder would otherwise give an empty run, exit 0, that
    then becomes the latest run."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a session")
    for source, message in ((f"claude-code:{tmp_path / 'nope'}", "does not exist"),
                            (f"codex:{tmp_path / 'empty'}", "holds no codex files (*.jsonl)")):
        out = tracelake("run-all", "--root", str(tmp_path / "lake"), "--source", source, "--quiet")
        assert out.returncode == 2 and message in out.stderr, out.stderr
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert not (tmp_path / "lake" / "receipts").exists()


def test_version_and_short_help() -> None:
    import importlib.metadata

    version = tracelake("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"tracelake {importlib.metadata.version('tracelake')}"
    short = tracelake("-h")
    assert short.returncode == 0 and "run-all" in short.stdout and "--version" in short.stdout
    run_help = tracelake("run-all", "-h")
    assert run_help.returncode == 0 and "KIND:PATH" in run_help.stdout and "list[str]" not in run_help.stdout


# What a quick command must not import (issue 15): the ML stack never, and `--help` none
# of the data stack either, so that it answers at once.
_ML = ("torch", "transformers", "datasets", "polars", "peft", "tokenizers")
_DATA = ("pyarrow", "duckdb", "numpy", "pydantic", "kingfisher_sdk", "hyperscan")


def _imported(*args: str, cwd: Path | None = None) -> tuple[int, set[str]]:
    """Exit code and top-level packages loaded by the time a command exits, plus
    ``rules-loaded`` when the secret catalogue's rules were loaded."""
    probe = ("import atexit, sys\n"
             "def report():\n"
             "    names = {m.split('.')[0] for m in sys.modules}\n"
             "    catalogue = sys.modules.get('pipeline.secrets.catalogue')\n"
             "    if catalogue is not None and catalogue.loaded():\n"
             "        names.add('rules-loaded')\n"
             "    print('MODULES ' + ' '.join(sorted(names)), file=sys.stderr)\n"
             "atexit.register(report)\n"
             f"sys.argv = ['tracelake', *{list(args)!r}]\n"
             "from pipeline.cli.main import main\n"
             "sys.exit(main())\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=cwd, check=False)
    line = next(x for x in done.stderr.splitlines() if x.startswith("MODULES "))
    return done.returncode, set(line.split()[1:])


def test_quick_commands_import_only_what_they_use(tmp_path: Path, corpus: list[str]) -> None:
    code, modules = _imported("--help")
    assert code == 0 and not modules & {*_ML, *_DATA}, modules & {*_ML, *_DATA}
    code, modules = _imported("run", "-h")  # typer's own parameter adapters use pydantic
    assert code == 0 and not modules & {*_ML, *_DATA} - {"pydantic"}, modules & {*_ML, *_DATA}
    code, modules = _imported("run", "collect", "--root", str(tmp_path), *corpus, "--quiet")
    assert code == 0 and "rules-loaded" in modules  # a root's first run parses, with the rules
    code, modules = _imported("run", "collect", "--root", str(tmp_path), *corpus, "--quiet")
    assert code == 0 and "rules-loaded" not in modules  # nothing to parse: they never load
    for command in (["sql", "SELECT count(*) FROM sessions"], ["receipts", "list"], ["receipts", "verify"]):
        code, modules = _imported(*command, "--root", str(tmp_path))
        assert code == 0 and not modules & set(_ML), (command, modules & set(_ML))


def test_a_root_that_cannot_be_written_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run would fail on its first write; say so first. (Tests run as root, which
    writes anywhere, so the permission is the one thing stood in for here.)"""
    from pipeline.cli.common import check_root
    from pipeline.core.errors import ConfigError

    a_file = tmp_path / "f"
    a_file.write_text("")
    with pytest.raises(ConfigError, match="is inside .*f, a file"):
        check_root(a_file / "lake")
    check_root(tmp_path / "new" / "lake")  # made on the first write: fine
    monkeypatch.setattr("pipeline.cli.common.os.access", lambda path, mode: False)
    with pytest.raises(ConfigError, match="is not writable"):
        check_root(tmp_path / "lake")


@pytest.mark.parametrize(("fmt", "given"), [("codex", "claude-code"), ("claude-code", "codex")])
def test_logs_of_the_other_kind_are_named(tmp_path: Path, fmt: str, given: str) -> None:
    """A whole source given as the wrong KIND would have every line set aside, exit 0."""
    synthesize(tmp_path / "logs", sessions=2, seed=4, fmt=fmt)
    out = tracelake("run-all", "--root", str(tmp_path / "lake"), "--source", f"{given}:{tmp_path / 'logs'}", "--quiet")
    assert out.returncode == 2, out.stderr
    names = {"codex": "Codex rollouts", "claude-code": "Claude Code sessions"}
    assert f"looks like {names[fmt]}, not {names[given]}" in out.stderr
    assert f"give it as {fmt}:{tmp_path / 'logs'}" in out.stderr and "Traceback" not in out.stderr
    assert tracelake("run", "collect", "--root", str(tmp_path / "lake"), "--source", f"{fmt}:{tmp_path / 'logs'}",
                     "--quiet").returncode == 0


def test_sql_tables_fit_80_columns(tmp_path: Path, corpus: list[str]) -> None:
    assert tracelake("run", "collect", "--root", str(tmp_path), *corpus, "--quiet").returncode == 0
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", "sql", "--root", str(tmp_path),
         "SELECT session_id, source_file, n_messages, n_tool_calls, started_at FROM sessions ORDER BY 1 LIMIT 3"],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "80"}, check=False,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert sum("│" in line for line in lines) == 3  # three rows, none wrapped
    assert lines[-1] == "3 row(s); --format csv or json for whole values"
    header = [h.strip() for h in lines[1].split("┃")[1:-1]]
    assert [h.rstrip("…") for h in header] == [c[: len(h.rstrip("…"))] for c, h in zip(
        ["session_id", "source_file", "n_messages", "n_tool_calls", "started_at"], header, strict=True)]
    row = lines[3].split("│")[1:-1]  # numbers right-aligned, text left
    assert row[2].strip().isdigit() and row[2].endswith(f"{row[2].strip()} ")
    assert row[0].startswith(" ") and not row[0].startswith("  ")


def test_a_root_remembers_its_sources(tmp_path: Path, corpus: list[str]) -> None:
    """A bare run-all in a root reruns the sources its last explicit run named, not
    the logs under ~ (the root's cached stages then hit)."""
    root = str(tmp_path / "lake")
    assert tracelake("run-all", "--root", root, *corpus, "--recorded-at", PIN, "--quiet").returncode == 0
    first = _summary(tmp_path / "lake")
    bare = tracelake("run-all", "--root", root, "--recorded-at", PIN)
    assert bare.returncode == 0, bare.stderr
    assert "sources this root remembers: claude-code:" in bare.stderr
    again = _summary(tmp_path / "lake")
    assert again["run_hash"] == first["run_hash"]
    assert all(stage["cache_hit"] for stage in again["stages"])  # type: ignore[union-attr]
    (tmp_path / "lake" / "data" / "sources.json").write_text('{"not": "a list"}')
    broken = tracelake("run-all", "--root", root, "--quiet")
    assert broken.returncode == 2 and "sources.json is not a list of sources" in broken.stderr


def _as_someone_else() -> list[str]:
    """A prefix that runs a command without root's power to read anything (the tests run
    as root): permissions are then real, not stood in for."""
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []


def test_unreadable_and_unnamed_files_are_quarantined_and_the_run_goes_on() -> None:
    import shutil
    import tempfile

    import pyarrow.parquet as pq

    base = Path(tempfile.mkdtemp(prefix="tracelake-perm-"))
    try:
        base.chmod(0o777)
        src = base / "src"
        synthesize(src / "ok", sessions=3, seed=5, fmt="claude-code")
        synthesize(src / "locked", sessions=1, seed=6, fmt="claude-code")
        synthesize(base / "more", sessions=2, seed=7, fmt="claude-code")
        unreadable, named = sorted((base / "more").rglob("*.jsonl"))
        shutil.move(unreadable, src / "ok" / "secret-perms.jsonl")
        os.rename(named, os.fsencode(src / "ok") + b"/caf\xe9-latin1.jsonl")
        (src / "ok" / "secret-perms.jsonl").chmod(0o000)
        for folder in [base, *base.rglob("*")]:
            if folder.is_dir():
                folder.chmod(0o777)
        locked = next(p for p in (src / "locked").rglob("*") if p.is_dir())
        locked.chmod(0o000)
        root = base / "lake"
        env = {**os.environ, "HOME": str(base), "COLUMNS": "200",
               "TRACELAKE_SIGNING_KEY": str(base / "signing-key.pem")}  # one that user may read
        done = subprocess.run(
            [*_as_someone_else(), sys.executable, "-m", "pipeline.cli.main", "run", "collect",
             "--root", str(root), "--source", f"claude-code:{src}", "--workers", "1"],
            capture_output=True, text=True, env=env, check=False, cwd=Path(__file__).resolve().parents[1])
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        for shown in ("secret-perms.jsonl set aside (unreadable file)",
                      "caf\\xe9-latin1.jsonl set aside (undecodable name)", f"{locked.name} set aside (unreadable dir)"):
            assert shown in done.stderr, done.stderr
        summary = _summary(root)
        tables = summary["tables"]
        assert isinstance(tables, dict)
        rows = pq.read_table(root / tables["collect_quarantine"]["path"]).to_pylist()
        file_rows = {(r["source_file"].rsplit("/", 1)[-1], r["reason"]) for r in rows if r["line_no"] is None}
        assert file_rows == {("secret-perms.jsonl", "unreadable_file"), ("caf\\xe9-latin1.jsonl", "undecodable_name"),
                             (locked.name, "unreadable_dir")}
        stages = summary["stages"]
        assert isinstance(stages, list)
        (collect,) = stages
        # each set-aside file is one record in, quarantined: the counts still add up
        assert collect["quarantined"] == len([r for r in rows if r["reason"] != "conflicting_duplicate"]) >= 3
        assert collect["records_in"] == collect["records_out"] + collect["quarantined"] + collect["filtered"]
        messages = pq.read_table(root / tables["messages"]["path"], columns=["source_file"]).column(0).to_pylist()
        assert {m.rsplit("/", 1)[-1] for m in messages} == {
            p.name for p in (src / "ok").rglob("*.jsonl") if p.parent != src / "ok"}  # the rest were parsed
    finally:
        for path in [base, *base.rglob("*")]:
            if path.is_dir():
                path.chmod(0o777)
        shutil.rmtree(base)


def test_a_source_with_nothing_readable_is_an_error() -> None:
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="tracelake-perm-"))
    try:
        base.chmod(0o777)
        synthesize(base / "src", sessions=1, seed=5, fmt="codex")
        (base / "src").chmod(0o000)
        env = {**os.environ, "HOME": str(base), "TRACELAKE_SIGNING_KEY": str(base / "key.pem")}
        done = subprocess.run(
            [*_as_someone_else(), sys.executable, "-m", "pipeline.cli.main", "run-all", "--root", str(base / "lake"),
             "--source", f"codex:{base / 'src'}"],
            capture_output=True, text=True, env=env, check=False, cwd=Path(__file__).resolve().parents[1])
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert f"has no file tracelake can read: {base / 'src'}: unreadable dir" in done.stderr
    finally:
        (base / "src").chmod(0o777)
        shutil.rmtree(base)
