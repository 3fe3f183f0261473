"""`tracelake report` in a real headless browser (Debian's Chromium, driven by Playwright):
the page renders offline with no console error, its charts load, and every number in it
equals what the run's SQL views say."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline.synth import synthesize

CHROMIUM = "/usr/bin/chromium"  # Debian's package: `make test` installs it where missing


def _tracelake(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "pipeline.cli.main", *args], capture_output=True, text=True,
                          check=False, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("report")
    synthesize(base / "cc", sessions=24, seed=11, fmt="claude-code")
    synthesize(base / "cx", sessions=8, seed=11, fmt="codex")
    root = base / "lake"
    sources = ["--source", f"claude-code:{base / 'cc'}", "--source", f"codex:{base / 'cx'}"]
    _tracelake("run-all", "--root", str(root), *sources, "--quiet")
    synthesize(base / "cc2", sessions=16, seed=12, fmt="claude-code")  # a second run: half as many again
    _tracelake("run-all", "--root", str(root), *sources, "--source", f"claude-code:{base / 'cc2'}", "--quiet")
    out = _tracelake("report", "--root", str(root))
    page = Path(out.split("report", 1)[1].strip())
    assert page.is_file() and page.parent == root / "data" / "reports"
    return root, page


def _page_facts(page: Path) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    requests: list[str] = []
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM)
        try:
            tab = browser.new_page()
            tab.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            tab.on("pageerror", lambda e: problems.append(str(e)))
            tab.on("request", lambda r: requests.append(r.url))
            tab.goto(page.as_uri())
            facts: dict[str, Any] = tab.evaluate("""() => {
                const rows = (attr) => Object.fromEntries([...document.querySelectorAll(`tr[${attr}]`)].map(tr => [
                    tr.getAttribute(attr),
                    Object.fromEntries([...tr.querySelectorAll('td[data-metric]')].map(
                        td => [td.dataset.metric, Number(td.textContent)]))]));
                return {
                    stages: rows('data-stage'), setAside: rows('data-set-aside'), categories: rows('data-category'),
                    tools: rows('data-tool'), redactions: rows('data-redaction'),
                    images: [...document.images].map(i => i.complete && i.naturalWidth > 0),
                    lossShown: document.querySelector('img[alt="training loss"]') !== null,
                    drift: document.querySelector('[data-drift-severity]').dataset.driftSeverity,
                    findings: [...document.querySelectorAll('tr[data-finding]')].length,
                    evaluation: Object.fromEntries([...document.querySelectorAll('tr[data-eval]')].map(
                        tr => [tr.dataset.eval, tr.querySelector('[data-gate]').dataset.gate])),
                    title: document.title,
                };
            }""")
        finally:
            browser.close()
    facts["problems"], facts["requests"] = problems, requests
    return facts


def test_the_report_renders_offline_and_agrees_with_sql(reported: tuple[Path, Path]) -> None:
    from pipeline.sql import connect

    root, page = reported
    shown = _page_facts(page)
    assert shown["problems"] == []
    assert all(url.startswith(("file:", "data:")) for url in shown["requests"]), shown["requests"]
    con, run_id = connect(root)
    trained = con.execute("SELECT count(*) FROM train_steps").fetchone() != (0,)
    # categories, tool errors, redactions, and the loss curve when the run trained
    assert len(shown["images"]) == 3 + trained and all(shown["images"])
    assert shown["lossShown"] == trained
    assert run_id in shown["title"]

    def query(sql: str) -> list[tuple[Any, ...]]:
        return con.execute(sql).fetchall()

    assert shown["stages"] == {stage: {"records_in": i, "records_out": o, "quarantined": q, "filtered": f}
                               for stage, i, o, q, f in query(
                                   "SELECT stage, records_in, records_out, quarantined, filtered FROM receipts")}
    assert shown["setAside"] == {f"{s}:{r}": {"count": n} for s, r, n in query(
        "SELECT stage, reason, count(*) FROM quarantine GROUP BY ALL")}
    assert shown["categories"] == {c: {"count": n} for c, n in query("SELECT category, count(*) FROM scores GROUP BY ALL")}
    calls = {t: {"calls": n, "errors": e} for t, n, e in query(
        "SELECT name, count(*), count(*) FILTER (WHERE is_error) FROM tool_calls GROUP BY ALL")}
    assert shown["tools"] == calls  # fewer tools than the page's top 15: each has its own row
    assert shown["redactions"] == {k: {"values": v, "placeholders": p} for k, v, p in query(
        "SELECT kind, sum(values_redacted), sum(placeholders) FROM redactions GROUP BY ALL")}
    assert sum(shown["stages"]["collect"].values()) > 0 and shown["redactions"]
    assert shown["drift"] in ("warn", "alert") and shown["findings"] >= 1  # half as many sessions again
    # the eval scorecard, every measure with its gate's verdict (None: no gate, or not judged)
    assert shown["evaluation"] == {m: str(p) for m, p in query("SELECT metric, passed FROM eval")}
    assert shown["evaluation"]["loop_rate"] in ("True", "None")


def test_a_report_for_an_unknown_run_is_a_clear_error(reported: tuple[Path, Path]) -> None:
    root, _ = reported
    done = subprocess.run([sys.executable, "-m", "pipeline.cli.main", "report", "no-such-run", "--root", str(root)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "no-such-run" in done.stderr


def test_chart_labels_from_logs_are_text_not_math() -> None:
    """matplotlib reads `$...$` in a label as math: a tool named so once made the report fail."""
    from pipeline.report.charts import bar_chart

    uri = bar_chart(["mcp__cost_$5_or_$6", "a$\\frac$b", "x$^$y", "Bash"], [0.5, 0.25, 0.0, 1.0], "t", percent=True)
    assert uri.startswith("data:image/png;base64,") and len(uri) > 1000
