"""`tracelake` command line: thin commands over pipeline.core."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from pipeline.cli.alignment import register as register_alignment
from pipeline.cli.common import (
    ROOT_HELP,
    RichTracker,
    check_config_keys,
    check_root,
    check_run_keys,
    console,
    err_console,
    fail,
    load_config_file,
    resolve_root,
)
from pipeline.cli.drift import register as register_drift
from pipeline.cli.report import register as register_report
from pipeline.cli.synth import register as register_synth
from pipeline.core.errors import IntegrityError, SignatureError, TracelakeError
from pipeline.stages.registry import STAGE_NAMES

app = typer.Typer(
    help="Agent session logs -> a signed, content-addressed Parquet lake and training data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    # Plain help: typer's rich help imports rich.markdown and markdown-it (~0.1 s) on
    # every `--help`, which should answer at once.
    rich_markup_mode=None,
)


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            console.print(f"tracelake {version('tracelake')}", highlight=False)
        except PackageNotFoundError:
            console.print("tracelake (not installed: run from a source tree)", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    show_version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Agent session logs -> a signed, content-addressed Parquet lake and training data."""
receipts_app = typer.Typer(help="List, show and verify signed stage receipts.", no_args_is_help=True,
                           rich_markup_mode=None)
app.add_typer(receipts_app, name="receipts")

RootOpt = Annotated[Path | None, typer.Option("--root", help=ROOT_HELP)]
SourceOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--source",
        metavar="KIND:PATH",
        help="KIND:PATH with KIND claude-code, codex or outcomes (repeatable). "
        "Default: the sources the root's last run with --source named, else ~/.claude/projects and ~/.codex/sessions.",
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
NoWaitOpt = Annotated[
    bool,
    typer.Option("--no-wait", help="Exit 2 at once if another run is writing this root (default: wait for it)."),
]
ExternalOpt = Annotated[
    list[str] | None,
    typer.Option("--external", metavar="NAME=PATH",
                 help="Where a stage's external input (a model, tokenizer or chat template) is; "
                 "overrides its config field (repeatable)."),
]
ExecutorOpt = Annotated[
    str | None, typer.Option("--executor", help="Where stages execute: local (this process, the default), "
                             "subprocess (a spawned interpreter per stage), ray (a local Ray cluster), "
                             "ray://HOST:PORT or ray:auto (an existing one); also [run] executor in --config.")
]
PubkeyOpt = Annotated[
    Path | None,
    typer.Option("--pubkey", help="Accept only this PEM public key (default: the root's trusted keys)."),
]


def _has_collected(root: Path) -> bool:
    """Whether a run on this root has written a collect receipt (every run includes
    collect: every stage reads its tables). Spelt out rather than imported from
    pipeline.core.receipts (``RECEIPT_SUFFIX``), which would load pydantic before the
    load this decides on could start."""
    return any((root / "receipts").glob("*/collect.receipt.json"))


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
    no_wait: bool,
    external: list[str] | None = None,
    executor: str | None = None,
) -> None:
    import datetime as dt

    lake_root = resolve_root(root)
    if not _has_collected(lake_root):
        # A root's first run parses every file: the secret catalogue's rules (~0.4 s of
        # native code) load while the imports below run. Later runs load them only if
        # collect finds files to parse (see pipeline.stages.collect).
        from pipeline.secrets import catalogue

        catalogue.prefetch()

    from pipeline.core.execute import Executor, make_executor
    from pipeline.core.lock import writer_lock
    from pipeline.core.runner import Runner, RunOptions
    from pipeline.core.sources import (
        SourceSpec,
        check_source,
        default_specs,
        remember_sources,
        remembered_sources,
    )
    from pipeline.sql import write_lake_db
    from pipeline.stages.registry import load_stages

    try:
        # What the command names first (a misspelt stage or executor), then the world.
        stages = load_stages(targets)
        stage_config: dict[str, dict[str, Any]] = load_config_file(config)
        run_config = stage_config.pop("run", {})
        check_run_keys(run_config)
        chosen: Executor = make_executor(executor or str(run_config.get("executor", "local")), workers)
        check_root(lake_root)
        if recorded_at is not None:
            dt.datetime.fromisoformat(recorded_at.replace("Z", "+00:00"))
        remembered = None if source else remembered_sources(lake_root)
        if source:
            specs = [SourceSpec.parse(s) for s in source]
        else:
            specs = remembered if remembered is not None else default_specs()
        for spec in specs:
            check_source(spec)
        check_config_keys(stage_config, stages)
        externals = parse_externals(external or [], stages)
        connect = getattr(chosen, "connect", None)
        if connect is not None:  # a cluster that cannot be reached fails here, before any run
            connect()
    except (ValueError, TracelakeError) as exc:
        raise fail(str(exc)) from exc
    if include_partial:
        stage_config.setdefault("export-sft", {})["include_partial"] = True
    if include_review:
        stage_config.setdefault("export-rag", {})["include_review"] = True
    if not specs:
        console.print("[yellow]no sources given and none found in ~/.claude or ~/.codex[/yellow]")
    elif remembered is not None and not quiet:
        listed = ", ".join(f"{spec.kind}:{spec.path}" for spec in specs)
        err_console.print(Text(f"sources this root remembers: {listed}"))
    try:
        runner = Runner(
            stages,
            RunOptions(
                root=lake_root,
                sources=specs,
                stage_config=stage_config,
                recorded_at=recorded_at,
                workers=workers,
                tracker=RichTracker(enabled=not quiet),
                wait=not no_wait,
                on_wait=lambda message: err_console.print(Text(message)),
                externals=externals,
                executor=chosen,
            ),
        )
        # The lake database is part of what a run writes: it is refreshed under the lock.
        with writer_lock(runner.layout, wait=not no_wait, on_wait=runner.options.on_wait):
            result = runner.run(targets)
            write_lake_db(runner.layout, result.run_id, runner.mac)
            if source:
                remember_sources(lake_root, specs)
    except (TracelakeError, ValueError, OSError) as exc:
        raise fail(str(exc)) from exc
    finally:
        close = getattr(chosen, "close", None)
        if close is not None:
            close()
    if not quiet:
        print_run(lake_root, result.run_id)
    for entry in result.summary.rejected_cache:
        err_console.print(Text(f"cache entry for {entry.stage} refused ({entry.cache_key}): "
                               f"{entry.reason}; the stage ran again", style="yellow"))
    cleanup = result.summary.cleanup
    if cleanup.temp_files or cleanup.unfinished_runs:
        err_console.print(Text(
            f"cleared what killed runs left: {cleanup.temp_files} temp file(s) "
            f"({cleanup.temp_bytes:,} bytes), {len(cleanup.unfinished_runs)} unfinished run folder(s)"
        ))
    for line in failure_lines(result.outcomes, runner.layout.failed_exports / result.run_id):
        err_console.print(Text(line, style="red"))
    if not result.ok:
        raise typer.Exit(1)


def failure_lines(outcomes: list[Any], withheld: Path | None = None, most: int = 5) -> list[str]:
    """Why each stage that did not pass failed, one line per reason (a failed eval gate,
    a firewall finding, an error), so a red row in the table is never left unexplained,
    and where its withheld exports were kept."""
    lines = []
    for outcome in outcomes:
        if outcome.status == "skipped_upstream_failed":
            lines.append(f"{outcome.stage}: not run, a stage it reads from failed")
            continue
        receipt = outcome.receipt
        if outcome.status == "ok" or receipt is None:
            continue
        reasons = [r.splitlines()[0] for r in receipt.validation.errors if r.strip()] or ["failed"]
        lines += [f"{outcome.stage} failed: {reason}" for reason in reasons[:most]]
        if len(reasons) > most:
            lines.append(f"{outcome.stage}: {len(reasons) - most} more in its receipt")
        if withheld is not None and (withheld / outcome.stage).exists():
            lines.append(f"{outcome.stage}: its exports were withheld from exports/, kept at {withheld / outcome.stage}")
    return lines


def parse_externals(given: list[str], stages: list[Any]) -> dict[str, Path]:
    """NAME=PATH pairs, each naming an external input a stage of this run declares."""
    known = {e.name for stage in stages for e in stage.externals}
    out: dict[str, Path] = {}
    for item in given:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise TracelakeError(f"--external {item!r}: expected NAME=PATH")
        if name not in known:
            raise TracelakeError(f"--external {name}: no stage of this run reads an external input "
                                 f"of that name (known: {', '.join(sorted(known)) or 'none'})")
        out[name] = Path(path).expanduser()
    return out


def print_run(root: Path, run_id: str) -> None:
    from pipeline.core.receipts import load_run_receipts, load_run_summary
    from pipeline.core.report import stage_rows
    from pipeline.core.store import LakeLayout
    from pipeline.core.trust import load_trusted

    layout = LakeLayout(root)
    keys = load_trusted(layout)
    summary = load_run_summary(layout, run_id, keys)
    from rich.table import Table

    table = Table(title=Text(f"run {run_id}"))
    for column in ("stage", "status", "in", "out", "quarantined", "filtered", "cache hit", "time (s)"):
        left = column in ("stage", "status")
        table.add_column(column, justify="left" if left else "right", no_wrap=left)
    for row in stage_rows(summary, load_run_receipts(layout, run_id, keys)):
        status = str(row["status"])
        table.add_row(
            Text(str(row["stage"])),
            Text(status, style="green" if status == "ok" else "red"),
            f"{row['in']:,}",
            f"{row['out']:,}",
            f"{row['quarantined']:,}",
            f"{row['filtered']:,}",
            "yes" if row["cache_hit"] else "no",
            f"{row['time_s']:.2f}" if row["time_s"] is not None else "-",
        )
    console.print(table)
    lines = [
        f"run_hash  {summary.run_hash}",
        f"receipts  {layout.run_dir(run_id)}",
        f"objects   {layout.objects}",
        f"duckdb    {layout.duckdb_file} (open it from {layout.root})",
    ]
    exports = layout.export_dir(run_id)
    if exports.exists():
        lines.append(f"exports   {exports}")
    for line in lines:
        console.print(Text(line))


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
    no_wait: NoWaitOpt = False,
    external: ExternalOpt = None,
    executor: ExecutorOpt = None,
) -> None:
    """Run every stage; unchanged stages are cache hits. Exit 1 if any stage fails."""
    _run(None, root, source, config, recorded_at, workers, quiet, include_partial, include_review, no_wait,
         external, executor)


@app.command("run")
def run_one(
    stage: Annotated[str, typer.Argument(
        help=f"Stage to run, with what it needs upstream: {', '.join(STAGE_NAMES)}.", metavar="STAGE")],
    root: RootOpt = None,
    source: SourceOpt = None,
    config: ConfigOpt = None,
    recorded_at: RecordedAtOpt = None,
    workers: WorkersOpt = 2,
    quiet: QuietOpt = False,
    include_partial: IncludePartialOpt = False,
    include_review: IncludeReviewOpt = False,
    no_wait: NoWaitOpt = False,
    external: ExternalOpt = None,
    executor: ExecutorOpt = None,
) -> None:
    """Run one stage and its upstream stages."""
    _run([stage], root, source, config, recorded_at, workers, quiet, include_partial, include_review, no_wait,
         external, executor)


@app.command("keygen")
def keygen(
    path: Annotated[Path | None, typer.Option("--path", help="Where to write the key.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing key.")] = False,
    rotate: Annotated[
        bool,
        typer.Option("--rotate", help="Replace the key and trust the new one in --root "
                     "(the old one stays trusted, so old runs still verify)."),
    ] = False,
    root: RootOpt = None,
    no_wait: NoWaitOpt = False,
) -> None:
    """Create an Ed25519 signing key (0600). Default: $TRACELAKE_SIGNING_KEY or
    ~/.config/tracelake/signing-key.pem."""
    from pipeline.core.lock import writer_lock
    from pipeline.core.signing import default_key_path, generate_key, key_id
    from pipeline.core.store import LakeLayout
    from pipeline.core.trust import rotate_key

    target = path or default_key_path()
    if not rotate:
        try:
            generate_key(target, overwrite=force)
        except FileExistsError as exc:
            raise fail(str(exc)) from exc
        except OSError as exc:
            raise fail(f"cannot write {target}: {exc.strerror}") from exc
        console.print(Text(f"wrote {target}"))
        return
    layout = LakeLayout(resolve_root(root))
    try:
        with writer_lock(layout, wait=not no_wait, on_wait=lambda m: err_console.print(Text(m))):
            new, retired = rotate_key(target, layout)
    except (TracelakeError, OSError) as exc:
        raise fail(str(exc)) from exc
    console.print(Text(f"wrote {target}; key {key_id(new)[:16]} is now trusted in {layout.trusted_keys}"
                       + (f"; the old key is kept at {retired}" if retired else "")), soft_wrap=True)


@receipts_app.command("pubkey")
def receipts_pubkey(
    key: Annotated[Path | None, typer.Option("--key", help="Private key file.")] = None,
    model_signing: Annotated[bool, typer.Option(
        "--model-signing", help="The P-256 key adapters are signed with for OpenSSF model_signing instead.")] = False,
) -> None:
    """Print the signing key's public key as PEM, for third-party DSSE verification."""
    from pipeline.core.signing import load_key, public_pem

    try:
        private = load_key(key)
    except TracelakeError as exc:
        raise fail(str(exc)) from exc
    if model_signing:
        from pipeline.core import openssf

        typer.echo(openssf.public_pem(private).decode("ascii"), nl=False)
        return
    typer.echo(public_pem(private.public_key()), nl=False)


@receipts_app.command("trust")
def receipts_trust(
    pem: Annotated[Path, typer.Argument(help="PEM public key to trust (from `tracelake receipts pubkey`).")],
    root: RootOpt = None,
    no_wait: NoWaitOpt = False,
) -> None:
    """Accept signatures by this public key in this root (e.g. after a key rotation)."""
    from pipeline.core.lock import writer_lock
    from pipeline.core.signing import key_id
    from pipeline.core.store import LakeLayout
    from pipeline.core.trust import pinned, trust

    layout = LakeLayout(resolve_root(root))
    try:
        keys = pinned(pem)
        with writer_lock(layout, wait=not no_wait, on_wait=lambda m: err_console.print(Text(m))):
            added = [key_id(k)[:16] for k in keys.keys if trust(layout, k, f"trusted from {pem.name}")]
    except (TracelakeError, OSError) as exc:
        raise fail(str(exc)) from exc
    message = f"now trusted: {', '.join(added)}" if added else "already trusted"
    console.print(Text(f"{message} ({layout.trusted_keys})"))


@receipts_app.command("list")
def receipts_list(
    root: RootOpt = None,
    format: Annotated[str, typer.Option("--format", help="table or json")] = "table",
) -> None:
    """List runs, newest last. A run whose statement does not verify is listed as such."""
    from pipeline.core.receipts import list_runs, load_run_summary, run_folders
    from pipeline.core.store import LakeLayout
    from pipeline.core.trust import load_trusted

    if format not in ("table", "json"):
        raise fail("--format must be table or json")
    layout = LakeLayout(resolve_root(root))
    try:
        keys = load_trusted(layout)
    except TracelakeError as exc:
        raise fail(str(exc)) from exc
    rows: list[dict[str, Any]] = []
    for run_id in list_runs(layout):
        try:
            s = load_run_summary(layout, run_id, keys)
        except TracelakeError as exc:
            rows.append({"run_id": run_id, "passed": None, "stages": None, "cache_hits": None,
                         "records_in": None, "quarantined": None, "run_hash": None,
                         "problem": str(exc)})
            continue
        rows.append(
            {
                "run_id": run_id,
                "passed": s.overall_passed,
                "stages": len(s.stages),
                "cache_hits": sum(st.cache_hit for st in s.stages),
                "records_in": s.total_records_in,
                "quarantined": s.total_quarantined,
                "run_hash": s.run_hash,
                "problem": None,
            }
        )
    others = {run_id: state for run_id, state in run_folders(layout).items() if state != "complete"}
    if format == "json":
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title=Text(f"runs in {layout.receipts}"))
    for column in ("run_id", "passed", "stages", "hits", "records_in", "run_hash"):
        table.add_column(column, overflow="fold")
    for row in rows:
        if row["problem"] is not None:
            table.add_row(Text(row["run_id"]), Text("UNVERIFIED", style="red"), "-", "-", "-",
                          Text(row["problem"], style="red"))
            continue
        table.add_row(Text(row["run_id"]), str(row["passed"]), str(row["stages"]), str(row["cache_hits"]),
                      f"{row['records_in']:,}", row["run_hash"][:16])
    console.print(table)
    meaning = {
        "unfinished": "a run is writing it, or was killed doing so",
        "broken": "its signed run statement is missing",
        "legacy": "written before signed run statements; this version cannot verify it",
    }
    for run_id, state in others.items():
        console.print(Text(f"not a run: receipts/{run_id} ({state}: {meaning[state]})", style="yellow"),
                      soft_wrap=True)


@receipts_app.command("show")
def receipts_show(
    run_id: Annotated[str | None, typer.Argument(help="Run id (default: latest).")] = None,
    root: RootOpt = None,
    format: Annotated[str, typer.Option("--format", help="table or json")] = "table",
) -> None:
    """Show the stage receipts of a run (after their signatures verify)."""
    from pipeline.core.receipts import load_run_receipts, load_run_summary, resolve_run
    from pipeline.core.store import LakeLayout
    from pipeline.core.trust import load_trusted

    if format not in ("table", "json"):
        raise fail("--format must be table or json")
    layout = LakeLayout(resolve_root(root))
    try:
        resolved = resolve_run(layout, run_id)
        keys = load_trusted(layout)
        receipts = load_run_receipts(layout, resolved, keys)
        summary = load_run_summary(layout, resolved, keys)
    except TracelakeError as exc:
        raise fail(f"{exc} (`tracelake receipts verify` names every problem)", 1) from exc
    if format == "json":
        typer.echo(json.dumps([r.model_dump(mode="json") for r in receipts], indent=2))
        return
    print_run(layout.root, resolved)
    for receipt in receipts:
        if receipt.quarantined or receipt.filtered:
            from rich.table import Table

            detail = Table(title=Text(f"{receipt.stage}: set aside"), show_header=True)
            detail.add_column("kind")
            detail.add_column("reason", overflow="fold")
            detail.add_column("count", justify="right")
            for reason, count in receipt.quarantined.items():
                detail.add_row("quarantined", Text(reason), f"{count:,}")
            for reason, count in receipt.filtered.items():
                detail.add_row("filtered", Text(reason), f"{count:,}")
            console.print(detail)
    for entry in summary.rejected_cache:
        console.print(Text(f"cache entry refused for {entry.stage}: {entry.reason}", style="yellow"))
    console.print(Text(f"overall_passed={summary.overall_passed}"))


@receipts_app.command("verify")
def receipts_verify(
    run_id: Annotated[str | None, typer.Argument(help="Run id (default: latest).")] = None,
    root: RootOpt = None,
    pubkey: PubkeyOpt = None,
    deep: Annotated[bool, typer.Option("--deep", help="Re-run stages from the lake and compare digests.")] = False,
    sample: Annotated[int | None, typer.Option("--sample", min=1, help="With --deep: limit re-run size.")] = None,
) -> None:
    """Check the run statement, every receipt, object and export file, and every claim
    they make. Exit 0 when all hold, 1 naming each thing that does not."""
    from pipeline.audit.verify import root_problems, verify_run
    from pipeline.core.receipts import load_run_summary, resolve_run
    from pipeline.core.signing import key_id
    from pipeline.core.store import LakeLayout
    from pipeline.core.trust import load_trusted, pinned

    layout = LakeLayout(resolve_root(root))
    try:
        resolved = resolve_run(layout, run_id)
        keys = pinned(pubkey) if pubkey is not None else load_trusted(layout)
    except (TracelakeError, OSError) as exc:
        raise fail(str(exc)) from exc
    if not keys.keys:
        err_console.print(Text(f"FAIL no trusted keys: {keys.source} (give --pubkey PEM, or "
                               "trust a key with `tracelake receipts trust`)", style="red"), soft_wrap=True)
        raise typer.Exit(1)
    report = verify_run(layout, resolved, keys)
    problems = report.problems + root_problems(layout)
    for problem in problems:
        console.print(Text.assemble(("FAIL ", "red"), f"{problem.subject}: {problem.problem}"), soft_wrap=True)
    if not problems:
        signer = next((k for k in keys.keys if key_id(k) == report.signer), None)
        console.print(Text.assemble(
            ("OK ", "green"),
            f"run {resolved}: statement, {report.receipts} receipts, {report.objects} objects, "
            + (f"{report.artifact_files} artifact files " if report.artifact_files else "")
            + f"and {report.export_files} export files verified (signed by {key_id(signer)[:16] if signer else '?'}, "
            f"trusted via {keys.source})",
        ), soft_wrap=True)
        if pubkey is None:
            console.print(Text("the trusted keys are a file in this root; to check against a key you "
                               "got elsewhere, give --pubkey PEM"), soft_wrap=True)
        summary = load_run_summary(layout, resolved, keys)
        failed = [s.stage for s in summary.stages if s.status != "ok"]
        if failed:
            console.print(Text(f"the run itself failed: {', '.join(failed)} (its receipts say why: "
                               f"tracelake receipts show {resolved})", style="yellow"), soft_wrap=True)
    deep_failed = False
    if deep:
        from pipeline.audit.deep import deep_verify, print_deep_report

        try:
            deep_report = deep_verify(layout.root, resolved, sample, keys=keys)
        except TracelakeError as exc:
            raise fail(str(exc), 1) from exc
        print_deep_report(deep_report, console)
        deep_failed = not deep_report.passed
    if problems or deep_failed:
        raise typer.Exit(1)


@app.command("sql")
def sql(
    query_text: Annotated[str, typer.Argument(metavar="QUERY", help="DuckDB SQL over the run's views.")],
    root: RootOpt = None,
    run: Annotated[str | None, typer.Option("--run", help="Run id (default: latest).")] = None,
    format: Annotated[str, typer.Option("--format", help="table, csv or json")] = "table",
) -> None:
    """Query a run with DuckDB: one view per table, plus quarantine, receipts, redactions, lineage."""
    import duckdb

    from pipeline.sql import connect, format_csv, format_json, query

    if format not in ("table", "csv", "json"):
        raise fail("--format must be table, csv or json")
    try:
        con, _ = connect(resolve_root(root), run)
        columns, rows = query(con, query_text)
    except (SignatureError, IntegrityError) as exc:  # a finding: the lake does not verify
        raise fail(str(exc), 1) from exc
    except (TracelakeError, duckdb.Error, OSError) as exc:  # no runs, a bad query: input
        raise fail(str(exc)) from exc
    if format == "json":
        typer.echo(format_json(columns, rows))
    elif format == "csv":
        typer.echo(format_csv(columns, rows), nl=False)
    else:
        # Fits the terminal: long names and values shortened (never wrapped), numbers
        # right-aligned; csv and json give whole values.
        cells = [["NULL" if v is None else str(v).replace("\n", " ") for v in row] for row in rows]
        widths = _column_widths(columns, cells, console.width)
        from rich.table import Table

        table = Table(show_lines=False)
        for i, column in enumerate(columns):
            numeric = bool(rows) and all(isinstance(r[i], int | float) and not isinstance(r[i], bool)
                                         for r in rows if r[i] is not None)
            table.add_column(Text(column), justify="right" if numeric else "left", no_wrap=True,
                             overflow="ellipsis", width=widths[i])
        for row in cells:  # values are data, never markup
            table.add_row(*(Text(v) for v in row))
        console.print(table)
        console.print(f"{len(rows)} row(s); --format csv or json for whole values")


def _column_widths(columns: list[str], cells: list[list[str]], total: int) -> list[int]:
    """Each column's width: its widest cell or name where the table fits in ``total``;
    else the widest columns shortened in turn (never below 6) until it does."""
    natural = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    room = total - (3 * len(columns) + 1)  # borders and padding
    widths = list(natural)
    while sum(widths) > room and max(widths) > 6:
        widest = max(range(len(widths)), key=lambda i: widths[i])
        widths[widest] -= 1
    return widths


register_synth(app)
register_drift(app)
register_alignment(app)
register_report(app)


def main() -> None:
    """Console-script entry point (tests drive ``app`` directly). Whatever goes wrong
    ends in one line and exit 2, never a traceback (TRACELAKE_DEBUG=1 shows it)."""
    import os
    import sys

    from pipeline.core.imports import block_pandas

    block_pandas()
    try:
        app()
    except SystemExit:
        raise
    except KeyboardInterrupt:
        err_console.print(Text("interrupted", style="red"))
        sys.exit(130)
    except BaseException as exc:  # the last guard: one clear line, exit 2
        if os.environ.get("TRACELAKE_DEBUG"):
            raise
        err_console.print(Text.assemble(("error: ", "red"), f"{type(exc).__name__}: {exc}"))
        sys.exit(2)


if __name__ == "__main__":
    main()
