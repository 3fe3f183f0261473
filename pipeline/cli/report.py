"""`tracelake report [RUN_ID]`: write the run's HTML report and print where it went."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.common import ROOT_HELP, console, resolve_root


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report(
        run_id: Annotated[str | None, typer.Argument(help="Run to report on (default: latest).")] = None,
        root: Annotated[Path | None, typer.Option("--root", help=ROOT_HELP)] = None,
        out: Annotated[Path | None, typer.Option("--out", help="HTML file to write "
                                                 "(default: data/reports/<run_id>.html).")] = None,
    ) -> None:
        """One self-contained HTML page for a run: stages, set-aside reasons, category mix,
        tool error rates, redactions, drift against the previous run."""
        from pipeline.core.store import atomic_write_text
        from pipeline.report.facts import gather
        from pipeline.report.page import render

        lake_root = resolve_root(root)
        facts = gather(lake_root, run_id)
        target = out if out is not None else lake_root / "data" / "reports" / f"{facts.run_id}.html"
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, render(facts))
        console.print(f"report    {target}")
