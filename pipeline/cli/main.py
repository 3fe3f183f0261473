"""`tracelake` command line: thin commands over pipeline.core."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from pipeline.cli.common import (
    ROOT_HELP,
    RichTracker,
    console,
    fail,
    load_config_file,
    resolve_root,
)
from pipeline.cli.drift import register as register_drift
from pipeline.cli.synth import register as register_synth
from pipeline.core.errors import TracelakeError

app = typer.Typer(
    help="Agent session logs -> a signed, content-addressed Parquet lake and training data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
receipts_app = typer.Typer(help="List, show and verify signed stage receipts.", no_args_is_help=True)
app.add_typer(receipts_app, name="receipts")

RootOpt = Annotated[Path | None, typer.Option("--root", help=ROOT_HELP)]
SourceOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--source",
        help="KIND:PATH with KIND claude-code, codex or outcomes (repeatable). "
        "Default: ~/.claude/projects and ~/.codex/sessions where they exist.",
    ),
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML config, one table per stage.")]
RecordedAtOpt = Annotated[
    str | None,
    typer.Option("--recorded-at", help="Pin the provenance timestamp (ISO 8601) for byte-identical files."),
]
WorkersOpt = Annotated[int, typer.Option("--workers", min=1, help="Worker processes.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or tables.")]
IncludePartialOpt = Annotated[
    bool, typer.Option("--include-partial", help="Opt in: partially_accepted tasks may reach SFT.")
]
IncludeReviewOpt = Annotated[
    bool, typer.Option("--include-review", help="Opt in: needs_human_review tasks may reach RAG.")
]


def _run(
    targets: list[str] | None,
    root: Path | None,
    source: list[str] | None,
    config: Path | None,
    recorded_at: str | None,
    workers: int,
    quiet: bool,
    include_partial: bool,
    include_review: bool,
) -> None:
    import datetime as dt

    from pipeline.core.runner import Runner, RunOptions
    from pipeline.core.sources import SourceSpec, default_specs
    from pipeline.sql import write_lake_db
    from pipeline.stages.registry import load_stages

    try:
        specs = [SourceSpec.parse(s) for s in source] if source else default_specs()
        if recorded_at is not None:
            dt.datetime.fromisoformat(recorded_at.replace("Z", "+00:00"))
        stage_config: dict[str, dict[str, Any]] = load_config_file(config)
    except (ValueError, TracelakeError) as exc:
        raise fail(str(exc)) from exc
    if include_partial:
        stage_config.setdefault("export-sft", {})["include_partial"] = True
    if include_review:
        stage_config.setdefault("export-rag", {})["include_review"] = True
    lake_root = resolve_root(root)
    if not specs:
        console.print("[yellow]no sources given and none found in ~/.claude or ~/.codex[/yellow]")
    try:
        stages = load_stages(targets)
    except TracelakeError as exc:
        raise fail(str(exc)) from exc
    runner = Runner(
        stages,
        RunOptions(
            root=lake_root,
            sources=specs,
            stage_config=stage_config,
            recorded_at=recorded_at,
            workers=workers,
            tracker=RichTracker(enabled=not quiet),
        ),
    )
    try:
        result = runner.run(targets)
    except (TracelakeError, ValueError) as exc:
        raise fail(str(exc)) from exc
    write_lake_db(runner.layout, result.run_id)
    if not quiet:
        print_run(lake_root, result.run_id)
    if not result.ok:
        raise typer.Exit(1)


def print_run(root: Path, run_id: str) -> None:
    from pipeline.core.receipts import load_run_receipts, load_summary
    from pipeline.core.report import stage_rows
    from pipeline.core.store import LakeLayout

    layout = LakeLayout(root)
    summary = load_summary(layout, run_id)
    table = Table(title=f"run {run_id}")
    for column in ("stage", "status", "in", "out", "quarantined", "filtered", "cache hit", "time (s)"):
        left = column in ("stage", "status")
        table.add_column(column, justify="left" if left else "right", no_wrap=left)
    for row in stage_rows(summary, load_run_receipts(layout, run_id)):
        status = str(row["status"])
        color = "green" if status == "ok" else "red"
        table.add_row(
            str(row["stage"]),
            f"[{color}]{status}[/{color}]",
            f"{row['in']:,}",
            f"{row['out']:,}",
            f"{row['quarantined']:,}",
            f"{row['filtered']:,}",
            "yes" if row["cache_hit"] else "no",
            f"{row['time_s']:.2f}" if row["time_s"] is not None else "-",
        )
    console.print(table)
    console.print(f"run_hash  {summary.run_hash}")
    console.print(f"receipts  {layout.run_dir(run_id)}")
    console.print(f"objects   {layout.objects}")
    console.print(f"duckdb    {layout.duckdb_file}")
    exports = layout.exports / run_id
    if exports.exists():
        console.print(f"exports   {exports}")


@app.command("run-all")
def run_all(
    root: RootOpt = None,
    source: SourceOpt = None,
    config: ConfigOpt = None,
    recorded_at: RecordedAtOpt = None,
    workers: WorkersOpt = 2,
    quiet: QuietOpt = False,
    include_partial: IncludePartialOpt = False,
    include_review: IncludeReviewOpt = False,
) -> None:
    """Run every stage; unchanged stages are cache hits. Exit 1 if any stage fails."""
    _run(None, root, source, config, recorded_at, workers, quiet, include_partial, include_review)


@app.command("run")
def run_one(
    stage: Annotated[str, typer.Argument(help="Stage to run, with what it needs upstream.")],
    root: RootOpt = None,
    source: SourceOpt = None,
    config: ConfigOpt = None,
    recorded_at: RecordedAtOpt = None,
    workers: WorkersOpt = 2,
    quiet: QuietOpt = False,
    include_partial: IncludePartialOpt = False,
    include_review: IncludeReviewOpt = False,
) -> None:
    """Run one stage and its upstream stages."""
    _run([stage], root, source, config, recorded_at, workers, quiet, include_partial, include_review)


@app.command("keygen")
def keygen(
    path: Annotated[Path | None, typer.Option("--path", help="Where to write the key.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing key.")] = False,
) -> None:
    """Create an Ed25519 signing key (0600). Default: $TRACELAKE_SIGNING_KEY or
    ~/.config/tracelake/signing-key.pem."""
    from pipeline.core.signing import default_key_path, generate_key

    target = path or default_key_path()
    try:
        generate_key(target, overwrite=force)
    except FileExistsError as exc:
        raise fail(str(exc), 1) from exc
    console.print(f"wrote {target}")


@receipts_app.command("pubkey")
def receipts_pubkey(
    key: Annotated[Path | None, typer.Option("--key", help="Private key file.")] = None,
) -> None:
    """Print the public key as PEM, for third-party DSSE verification."""
    from pipeline.core.signing import load_or_create_key, public_pem

    typer.echo(public_pem(load_or_create_key(key).public_key()), nl=False)


@receipts_app.command("list")
def receipts_list(
    root: RootOpt = None,
    format: Annotated[str, typer.Option("--format", help="table or json")] = "table",
) -> None:
    """List runs, newest last."""
    from pipeline.core.receipts import list_runs, load_summary
    from pipeline.core.store import LakeLayout

    layout = LakeLayout(resolve_root(root))
    rows = []
    for run_id in list_runs(layout):
        s = load_summary(layout, run_id)
        rows.append(
            {
                "run_id": run_id,
                "passed": s.overall_passed,
                "stages": len(s.stages),
                "cache_hits": sum(st.cache_hit for st in s.stages),
                "records_in": s.total_records_in,
                "quarantined": s.total_quarantined,
                "run_hash": s.run_hash,
            }
        )
    if format == "json":
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"runs in {layout.receipts}")
    for column in ("run_id", "passed", "stages", "cache_hits", "records_in", "quarantined", "run_hash"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row[c]) for c in row))
    console.print(table)


@receipts_app.command("show")
def receipts_show(
    run_id: Annotated[str | None, typer.Argument(help="Run id (default: latest).")] = None,
    root: RootOpt = None,
    format: Annotated[str, typer.Option("--format", help="table or json")] = "table",
) -> None:
    """Show the stage receipts of a run."""
    from pipeline.core.receipts import load_run_receipts, load_summary, resolve_run
    from pipeline.core.store import LakeLayout

    layout = LakeLayout(resolve_root(root))
    try:
        resolved = resolve_run(layout, run_id)
    except TracelakeError as exc:
        raise fail(str(exc)) from exc
    receipts = load_run_receipts(layout, resolved)
    if format == "json":
        typer.echo(json.dumps([r.model_dump(mode="json") for r in receipts], indent=2))
        return
    print_run(layout.root, resolved)
    summary = load_summary(layout, resolved)
    for receipt in receipts:
        if receipt.quarantined or receipt.filtered:
            detail = Table(title=f"{receipt.stage}: set aside", show_header=True)
            detail.add_column("kind")
            detail.add_column("reason")
            detail.add_column("count", justify="right")
            for reason, count in receipt.quarantined.items():
                detail.add_row("quarantined", reason, f"{count:,}")
            for reason, count in receipt.filtered.items():
                detail.add_row("filtered", reason, f"{count:,}")
            console.print(detail)
    console.print(f"overall_passed={summary.overall_passed}")


@receipts_app.command("verify")
def receipts_verify(
    run_id: Annotated[str | None, typer.Argument(help="Run id (default: latest).")] = None,
    root: RootOpt = None,
    pubkey: Annotated[Path | None, typer.Option("--pubkey", help="PEM public key to verify with.")] = None,
    deep: Annotated[bool, typer.Option("--deep", help="Re-run stages from the lake and compare digests.")] = False,
    sample: Annotated[int | None, typer.Option("--sample", help="With --deep: limit re-run size.")] = None,
) -> None:
    """Check every signature and re-hash every output object. Exit 1 naming what fails."""
    from pipeline.core.receipts import resolve_run, verify_run
    from pipeline.core.signing import load_or_create_key, load_public_key
    from pipeline.core.store import LakeLayout

    layout = LakeLayout(resolve_root(root))
    try:
        resolved = resolve_run(layout, run_id)
        public = load_public_key(pubkey.read_bytes()) if pubkey else load_or_create_key().public_key()
    except (TracelakeError, OSError) as exc:
        raise fail(str(exc)) from exc
    checked, problems = verify_run(layout, resolved, public)
    for problem in problems:
        console.print(f"[red]FAIL[/red] {problem.subject}: {problem.problem}")
    if not problems:
        console.print(f"[green]OK[/green] run {resolved}: {checked} signatures and objects verified")
    deep_failed = False
    if deep:
        from pipeline.deep_verify import deep_verify, print_deep_report

        report = deep_verify(layout.root, resolved, sample)
        print_deep_report(report)
        deep_failed = not report.passed
    if problems or deep_failed:
        raise typer.Exit(1)


@app.command("sql")
def sql(
    query_text: Annotated[str, typer.Argument(metavar="QUERY", help="DuckDB SQL over the run's views.")],
    root: RootOpt = None,
    run: Annotated[str | None, typer.Option("--run", help="Run id (default: latest).")] = None,
    format: Annotated[str, typer.Option("--format", help="table, csv or json")] = "table",
) -> None:
    """Query a run with DuckDB: one view per table, plus quarantine, receipts, lineage."""
    import duckdb

    from pipeline.sql import connect, format_csv, format_json, query

    if format not in ("table", "csv", "json"):
        raise fail("--format must be table, csv or json")
    try:
        con, _ = connect(resolve_root(root), run)
        columns, rows = query(con, query_text)
    except (TracelakeError, duckdb.Error) as exc:
        raise fail(str(exc), 1) from exc
    if format == "json":
        typer.echo(format_json(columns, rows))
    elif format == "csv":
        typer.echo(format_csv(columns, rows), nl=False)
    else:
        table = Table(show_lines=False)
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*("NULL" if v is None else str(v) for v in row))
        console.print(table)
        console.print(f"{len(rows)} row(s)")


register_synth(app)
register_drift(app)


def main() -> None:
    """Console-script entry point (tests drive ``app`` directly)."""
    from pipeline.core.imports import block_pandas

    block_pandas()
    app()


if __name__ == "__main__":
    main()
