"""`tracelake drift`: compare a run with an earlier one; exit 0 / 1 (drift) / 2 (tool failed).

Any crash maps to exit 2, never 1: CI must not mistake a broken tool for drift.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from pipeline.cli.common import ROOT_HELP, console, fail, load_config_file, resolve_root

if TYPE_CHECKING:
    from pipeline.core.store import LakeLayout
    from pipeline.core.trust import TrustedKeys
    from schemas.drift import DriftReport

TOOL_FAILURE = 2


def _keys(layout: LakeLayout, pubkey: Path | None) -> TrustedKeys:
    """An explicit PEM, else the root's trusted keys (never a key found elsewhere)."""
    from pipeline.core.trust import load_trusted, pinned

    return pinned(pubkey) if pubkey is not None else load_trusted(layout)


def _run_drift(
    run_id: str | None,
    against: str | None,
    warn_pct: float | None,
    alert_pct: float | None,
    min_abs_change: int | None,
    fail_on: str | None,
    output_format: str,
    root: Path | None,
    config: Path | None,
    pubkey: Path | None,
) -> tuple[DriftReport, int]:
    from pipeline.core.store import LakeLayout
    from pipeline.drift import (
        compute_drift,
        exit_code,
        resolve_fail_on,
        resolve_thresholds,
        write_report,
    )

    if output_format not in ("table", "md", "json"):
        raise ValueError(f"--format must be table, md or json; got {output_format!r}")
    config_data = load_config_file(config)
    thresholds = resolve_thresholds(
        {"warn_pct": warn_pct, "alert_pct": alert_pct, "min_abs_change": min_abs_change},
        config=config_data,
    )
    gate = resolve_fail_on(fail_on, config_data)
    layout = LakeLayout(resolve_root(root))
    report = compute_drift(layout, run_id, against, thresholds, _keys(layout, pubkey))
    write_report(layout, report)
    return report, exit_code(report.severity, gate)


def register(app: typer.Typer) -> None:
    @app.command("drift")
    def drift(
        run_id: Annotated[str | None, typer.Argument(help="Run to check (default: latest).")] = None,
        against: Annotated[
            str | None, typer.Option("--against", help="Earlier run (default: the run before RUN_ID).")
        ] = None,
        warn_pct: Annotated[
            float | None, typer.Option("--warn-pct", help="Swing % for warn (default 20).")
        ] = None,
        alert_pct: Annotated[
            float | None, typer.Option("--alert-pct", help="Swing % for alert (default 50).")
        ] = None,
        min_abs_change: Annotated[
            int | None,
            typer.Option("--min-abs-change", help="Minimum absolute change for a swing (default 5)."),
        ] = None,
        fail_on: Annotated[
            str | None,
            typer.Option("--fail-on", help="warn, alert or never: severity that exits 1 (default alert)."),
        ] = None,
        output_format: Annotated[
            str, typer.Option("--format", help="table (for a terminal), md (drift.md's Markdown) or json")
        ] = "table",
        root: Annotated[Path | None, typer.Option("--root", help=ROOT_HELP)] = None,
        config: Annotated[
            Path | None, typer.Option("--config", help="TOML config; thresholds from its drift table.")
        ] = None,
        pubkey: Annotated[
            Path | None, typer.Option("--pubkey", help="PEM public key for signature checks.")
        ] = None,
    ) -> None:
        """Compare a run with an earlier one: count swings, new failure kinds, firewall
        breaches, nondeterminism, failed stages, bad signatures. Writes drift.json and
        drift.md into receipts/<run_id>/. Exit 0 below --fail-on, 1 at it, 2 on tool failure.
        Thresholds: flag > $TRACELAKE_DRIFT_WARN_PCT / _ALERT_PCT / _MIN_ABS_CHANGE > the config file's drift table > default."""
        try:
            report, code = _run_drift(
                run_id, against, warn_pct, alert_pct, min_abs_change, fail_on,
                output_format, root, config, pubkey,
            )
        except Exception as exc:  # every tool failure is exit 2, distinct from drift
            raise fail(f"drift: {type(exc).__name__}: {exc}", TOOL_FAILURE) from exc
        if output_format == "json":
            typer.echo(report.model_dump_json(indent=2))
        elif output_format == "md":
            from pipeline.drift import markdown

            typer.echo(markdown(report), nl=False)
        else:
            print_tables(report)
        raise typer.Exit(code)


def print_tables(report: DriftReport) -> None:
    """The report as tables that fit 80 columns: long names shortened, never wrapped;
    numbers right-aligned. drift.md beside the run holds every detail."""
    t = report.thresholds
    style = {"ok": "green", "warn": "yellow", "alert": "bold red"}[report.severity]
    head = Text.assemble(("drift: ", "bold"), (report.severity.upper(), style), f"  run {report.run_id}")
    console.print(head, no_wrap=True, overflow="ellipsis")
    console.print(Text(f"against {report.against_run_id or '(no earlier run)'}; warn >= {t.warn_pct:g}%, "
                       f"alert >= {t.alert_pct:g}%, min change {t.min_abs_change}"), overflow="ellipsis")
    from rich.table import Table

    if report.findings:
        findings = Table(title="findings", title_justify="left", expand=False)
        findings.add_column("severity", no_wrap=True, min_width=8)
        findings.add_column("kind", no_wrap=True, overflow="ellipsis", min_width=11, max_width=16)
        findings.add_column("subject", no_wrap=True, overflow="ellipsis", min_width=12, max_width=20)
        findings.add_column("finding", overflow="ellipsis", no_wrap=True)
        for f in report.findings:
            findings.add_row(Text(f.severity, style="yellow" if f.severity == "warn" else "red"),
                             Text(f.kind), Text(f.subject), Text(f.message))
        console.print(findings)
    else:
        console.print("no findings")
    changed = [m for m in report.metrics if m.change != 0]
    counts = Table(title=f"counts: {len(changed)} changed, {len(report.metrics) - len(changed)} unchanged",
                   title_justify="left")
    counts.add_column("group", no_wrap=True, overflow="ellipsis", max_width=12)
    counts.add_column("key", no_wrap=True, overflow="ellipsis", max_width=30)
    for name in ("before", "after", "change", "%"):
        counts.add_column(name, justify="right", no_wrap=True)
    for m in changed:
        pct = f"{m.change_pct:+.1f}" if m.change_pct is not None else "new"
        counts.add_row(Text(m.group), Text(m.key), f"{m.before or 0:,}", f"{m.after or 0:,}", f"{m.change:+,}", pct)
    if changed:
        console.print(counts)
