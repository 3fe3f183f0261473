"""`tracelake validate-alignment`: how many tool-error sites the sources yield, and
whether every hinted teacher aligns with its student, on a throwaway lake."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from rich.text import Text

from pipeline.cli.common import console, fail
from pipeline.core.errors import TracelakeError


def _limited(specs: list[Any], max_sessions: int | None, work: Path) -> list[Any]:
    """The first ``max_sessions`` session files of the sources (by path), copied into
    ``work`` with their folders (a subagent's sidecar goes with it)."""
    from pipeline.core.sources import SourceSpec, discover

    if max_sessions is None:
        return specs
    limited = []
    left = max_sessions
    for index, spec in enumerate(specs):
        files, _ = discover(spec)
        target = work / f"source-{index}"
        root = spec.path.resolve()
        for path, _stat in files:
            if left <= 0 and not path.endswith(".meta.json"):
                break
            source = Path(path)
            relative = source.relative_to(root) if source != root else Path(source.name)
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target / relative)
            left -= not path.endswith(".meta.json")
        if (target).exists():
            limited.append(SourceSpec(spec.kind, target))
    return limited


def register(app: typer.Typer) -> None:
    @app.command("validate-alignment")
    def validate_alignment(
        source: Annotated[list[str] | None, typer.Option(
            "--source", metavar="KIND:PATH", help="As for run-all (default: the same defaults).")] = None,
        model: Annotated[Path | None, typer.Option(
            "--model", help="A local model or tokenizer folder (default: the offline Qwen tokenizer).")] = None,
        pass_threshold: Annotated[float, typer.Option(
            "--pass-threshold", min=0.0, max=1.0, help="The alignment ratio that passes (alignment must be "
                                                        "total: lower it only to survey a template).")] = 1.0,
        max_length: Annotated[int, typer.Option(
            "--max-length", min=16, help="Longest student or teacher trace, in tokens.")] = 16384,
        max_sessions: Annotated[int | None, typer.Option(
            "--max-sessions", min=1, help="Only the first N session files (by path).")] = None,
        strip_thinking: Annotated[bool, typer.Option(
            "--strip-thinking", help="Drop thinking from the traces (recoveries with only reasoning stop "
                                     "being sites).")] = False,
    ) -> None:
        """Run collect through collate on the sources in a throwaway lake and print the
        SDPO yield and alignment. Exit 0 on pass, 1 on fail, 2 when there is no error
        site or no chat template."""
        from pipeline.cli.common import resolve_root
        from pipeline.core.runner import Runner, RunOptions
        from pipeline.core.sources import (
            SourceSpec,
            check_source,
            default_specs,
            remembered_sources,
        )
        from pipeline.stages.registry import load_stages

        try:
            # As run-all: the sources the root's last run named, else the agents' folders.
            remembered = None if source else remembered_sources(resolve_root(None))
            specs = ([SourceSpec.parse(s) for s in source] if source
                     else remembered if remembered is not None else default_specs())
            for spec in specs:
                check_source(spec)
        except (ValueError, TracelakeError) as exc:
            raise fail(str(exc)) from exc
        if not specs:
            raise fail("no sources given and none found in ~/.claude or ~/.codex")
        with tempfile.TemporaryDirectory(prefix="tracelake-alignment-") as scratch:
            work = Path(scratch)
            options = RunOptions(
                root=work / "lake", sources=_limited(specs, max_sessions, work),
                stage_config={"collate": {"strip_thinking": strip_thinking, "max_length": max_length}},
                externals={"model": model} if model is not None else {},
                key_path=work / "signing-key.pem",  # a throwaway lake, a throwaway key
            )
            result = Runner(load_stages(["collate"]), options).run(["collate"])
        outcome = next((o for o in result.outcomes if o.stage == "collate"), None)
        if outcome is None or outcome.receipt is None or outcome.status != "ok":
            failed = next((o for o in result.outcomes if o.error), outcome)
            why = (failed.error if failed else None) or "it did not pass its validation"
            raise fail(f"{failed.stage if failed else 'collate'} failed: {why}".splitlines()[0])
        sdpo = cast(dict[str, Any], outcome.receipt.stats["sdpo"])
        from rich.table import Table

        table = Table(title=Text("SDPO yield"))
        table.add_column("measure")
        table.add_column("value", justify="right")
        for label, key in (("sessions", "sessions"), ("conversations", "conversations"),
                           ("error sites (structural is_error)", "error_sites"),
                           ("string-only error flags (not used)", "string_only_flags"),
                           ("empty recoveries (not sites)", "empty_recoveries"),
                           ("aligned rows", "rows"), ("misaligned (refused)", "misaligned")):
            table.add_row(label, f"{sdpo[key]:,}")
        for reason, count in sdpo["refused"].items():
            if reason != "sdpo_misaligned":
                table.add_row(f"refused before alignment: {reason}", f"{count:,}")
        ratio = sdpo["alignment_ratio"]
        table.add_row("alignment ratio", "-" if ratio is None else f"{ratio:.4f}")
        console.print(table)
        console.print(Text(f"thinking {sdpo['thinking']}"))
        if not sdpo["error_sites"] - sdpo["empty_recoveries"]:
            raise fail("no tool-error site with a recovery in these sources")
        if ratio is None:
            console.print(Text("FAIL no site reached the alignment check (see the refusals above)", style="red"))
            raise typer.Exit(1)
        if ratio < pass_threshold:
            console.print(Text(f"FAIL alignment {ratio} < {pass_threshold}", style="red"))
            raise typer.Exit(1)
        console.print(Text(f"PASS alignment {ratio:.4f} >= {pass_threshold}", style="green"))
