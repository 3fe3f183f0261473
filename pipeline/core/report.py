"""Human-readable views of a run: the Markdown summary and the rows of the stage table.

``summary.md`` is a rendering of the signed run statement and its receipts, a pure
function of them, so ``receipts verify`` renders it again and compares.
"""

from __future__ import annotations

from schemas.receipt import RunSummary, StageReceipt


def stage_rows(summary: RunSummary, receipts: list[StageReceipt]) -> list[dict[str, object]]:
    by_stage = {r.stage: r for r in receipts}
    rows: list[dict[str, object]] = []
    for status in summary.stages:
        receipt = by_stage.get(status.stage)
        rows.append(
            {
                "stage": status.stage,
                "status": status.status,
                "in": status.records_in,
                "out": status.records_out,
                "quarantined": status.quarantined,
                "filtered": status.filtered,
                "cache_hit": status.cache_hit,
                "time_s": receipt.timings.duration_s if receipt else None,
            }
        )
    return rows


def summary_markdown(summary: RunSummary, receipts: list[StageReceipt]) -> str:
    lines = [
        f"# tracelake run {summary.run_id}",
        "",
        f"- overall: {'PASSED' if summary.overall_passed else 'FAILED'}",
        f"- run_hash: `{summary.run_hash}`",
        f"- records in/out: {summary.total_records_in} / {summary.total_records_out}, "
        f"quarantined {summary.total_quarantined}, filtered {summary.total_filtered}",
        "",
        "| stage | status | in | out | quarantined | filtered | cache hit | time (s) |",
        "|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for row in stage_rows(summary, receipts):
        lines.append(
            "| {stage} | {status} | {in} | {out} | {quarantined} | {filtered} | "
            "{hit} | {time} |".format(
                **row, hit="yes" if row["cache_hit"] else "no", time=row["time_s"] or ""
            )
        )
    lines += ["", "| table | rows | xxh3-128 |", "|---|---:|---|"]
    for name, ref in summary.tables.items():
        lines.append(f"| {name} | {ref.rows} | `{ref.xxh3_128}` |")
    if summary.rejected_cache:
        lines += ["", "## Cache entries refused", ""]
        for entry in summary.rejected_cache:
            lines.append(f"- **{entry.stage}** `{entry.cache_key}`: {entry.reason}")
    failures = [r for r in receipts if r.status != "ok"]
    if failures:
        lines += ["", "## Failures", ""]
        for r in failures:
            for err in r.validation.errors:
                lines.append(f"- **{r.stage}**: {err.splitlines()[0] if err else ''}")
    return "\n".join(lines) + "\n"
