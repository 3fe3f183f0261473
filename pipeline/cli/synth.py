"""`tracelake synth`: write a deterministic synthetic corpus with a ground-truth manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("synth")
    def synth(
        out: Annotated[Path, typer.Option("--out", help="Directory to write the corpus into.")],
        sessions: Annotated[
            int | None, typer.Option("--sessions", min=0, help="Session slots to generate.")
        ] = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed; same options + seed = same bytes.")] = 0,
        fmt: Annotated[
            str, typer.Option("--format", help="claude-code (~/.claude/projects) or codex (~/.codex/sessions).")
        ] = "claude-code",
        target_mb: Annotated[
            float | None,
            typer.Option("--target-mb", min=0.0, help="Keep generating until about this many MB (10^6 bytes)."),
        ] = None,
        malformed_rate: Annotated[
            float,
            typer.Option("--malformed-rate", min=0.0, max=1.0, help="Chance a session file gets one malformed line."),
        ] = 0.05,
        oversized_lines: Annotated[
            int, typer.Option("--oversized-lines", min=0, help="Number of > 5 MiB lines to plant (default none).")
        ] = 0,
    ) -> None:
        """Write a synthetic Claude Code or Codex corpus plus synth-manifest.json (ground truth)."""
        from pipeline.synth import FORMATS, MANIFEST_NAME, synthesize

        if fmt not in FORMATS:
            raise typer.BadParameter(f"expected one of {', '.join(FORMATS)}", param_hint="--format")
        if sessions is None and target_mb is None:
            raise typer.BadParameter("give --sessions, --target-mb or both", param_hint="--sessions")
        manifest = synthesize(out, sessions, seed, fmt, target_mb=target_mb,
                              malformed_rate=malformed_rate, oversized_lines=oversized_lines)
        typer.echo(
            f"{manifest.session_files} sessions, {manifest.subagent_files} subagent files, "
            f"{manifest.lines} lines, {manifest.bytes / 1e6:.1f} MB, {manifest.prompts} prompts, "
            f"{manifest.tool_calls} tool calls -> {out / MANIFEST_NAME}"
        )
