"""The `lineage` DuckDB view: exported row <-> task <-> session <-> source file.

One row per (exported row, contributing session file). A task's rows come from its own
session and from the subagent sessions it spawned, and a resumed session can span
several files, so "which files fed this row" is a set, and "which rows did this file
feed" is a plain filter on ``source_file``::

    SELECT dataset, row_id FROM lineage WHERE source_file LIKE '%/abc.jsonl';
    SELECT DISTINCT source_file FROM lineage WHERE dataset = 'sft' AND row_id = '...';

The statement is built from whichever views exist, so a run that stopped before the
exports (or has no ``tasks`` table) still gets the parts it can answer.
"""

from __future__ import annotations

# dataset view -> (row id column, task id column, session id column or None)
SINGLE_TASK_DATASETS: dict[str, tuple[str, str, str | None]] = {
    "sft": ("row_id", "task_id", "session_id"),
    "rag": ("doc_id", "task_id", "session_id"),
    "kto": ("row_id", "task_id", "session_id"),
}
# datasets whose rows pair two tasks: view -> (row id column, [(role, task id column)])
PAIRED_DATASETS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "preference": ("pair_id", [("chosen", "chosen_task_id"), ("rejected", "rejected_task_id")]),
}
# views that map task_id -> session_id (and source_file, source_kind), best first
TASK_VIEWS = ("tasks", "scores")

COLUMNS = (
    "dataset", "row_id", "role", "task_id", "session_id",
    "source_session_id", "via", "source_file", "source_kind",
)


def _exported(tables: set[str], task_view: str | None) -> list[str]:
    parts = []
    for view, (row_id, task_id, session_id) in SINGLE_TASK_DATASETS.items():
        if view in tables:
            session = f"CAST({session_id} AS VARCHAR)" if session_id else "CAST(NULL AS VARCHAR)"
            parts.append(
                f"SELECT '{view}' AS dataset, CAST({row_id} AS VARCHAR) AS row_id, "
                f"CAST(NULL AS VARCHAR) AS role, CAST({task_id} AS VARCHAR) AS task_id, "
                f"{session} AS session_id FROM {view}"
            )
    for view, (row_id, roles) in PAIRED_DATASETS.items():
        if view not in tables:
            continue
        for role, task_column in roles:
            if task_view:
                parts.append(
                    f"SELECT '{view}' AS dataset, CAST(p.{row_id} AS VARCHAR) AS row_id, "
                    f"'{role}' AS role, CAST(p.{task_column} AS VARCHAR) AS task_id, "
                    f"CAST(t.session_id AS VARCHAR) AS session_id FROM {view} p "
                    f"LEFT JOIN (SELECT DISTINCT task_id, session_id FROM {task_view}) t "
                    f"ON t.task_id = p.{task_column}"
                )
            else:
                parts.append(
                    f"SELECT '{view}' AS dataset, CAST({row_id} AS VARCHAR) AS row_id, "
                    f"'{role}' AS role, CAST({task_column} AS VARCHAR) AS task_id, "
                    f"CAST(NULL AS VARCHAR) AS session_id FROM {view}"
                )
    return parts


def _session_files(tables: set[str], task_view: str | None) -> str:
    """Every file a session's records came from: ``sessions`` names the first, a resumed
    session's messages name the others."""
    if {"sessions", "messages"} <= tables:
        return (
            "SELECT DISTINCT f.session_id, f.source_file, k.source_kind FROM ("
            "SELECT session_id, source_file FROM sessions "
            "UNION SELECT session_id, source_file FROM messages) f "
            "LEFT JOIN (SELECT session_id, any_value(source_kind) AS source_kind FROM sessions GROUP BY ALL) k "
            "USING (session_id)"
        )
    if "sessions" in tables:
        return "SELECT DISTINCT session_id, source_file, source_kind FROM sessions"
    if task_view:
        return f"SELECT DISTINCT session_id, source_file, source_kind FROM {task_view}"
    return (
        "SELECT CAST(NULL AS VARCHAR) AS session_id, CAST(NULL AS VARCHAR) AS source_file, "
        "CAST(NULL AS VARCHAR) AS source_kind WHERE false"
    )


def _task_sessions(tables: set[str]) -> str:
    """Sessions that fed a task: its own, plus the subagents it spawned."""
    if "tasks" in tables:
        return (
            "SELECT task_id, session_id AS source_session_id, 'session' AS via FROM tasks "
            "UNION ALL SELECT task_id, UNNEST(subagent_session_ids) AS source_session_id, "
            "'subagent' AS via FROM tasks"
        )
    return (
        "SELECT CAST(NULL AS VARCHAR) AS task_id, CAST(NULL AS VARCHAR) AS source_session_id, "
        "CAST(NULL AS VARCHAR) AS via WHERE false"
    )


def lineage_view_sql(tables: set[str]) -> str | None:
    """``CREATE OR REPLACE VIEW lineage`` over the views in ``tables``; None without datasets."""
    task_view = next((v for v in TASK_VIEWS if v in tables), None)
    exported = _exported(tables, task_view)
    if not exported:
        return None
    union = "\n    UNION ALL ".join(exported)
    return f"""CREATE OR REPLACE VIEW lineage AS
WITH exported AS (
    {union}
),
task_sessions AS ({_task_sessions(tables)}),
session_files AS ({_session_files(tables, task_view)}),
fed AS (
    SELECT e.*, COALESCE(ts.source_session_id, e.session_id) AS source_session_id,
           COALESCE(ts.via, 'session') AS via
    FROM exported e LEFT JOIN task_sessions ts ON ts.task_id = e.task_id
)
SELECT f.dataset, f.row_id, f.role, f.task_id, f.session_id, f.source_session_id, f.via,
       sf.source_file, sf.source_kind
FROM fed f LEFT JOIN session_files sf ON sf.session_id = f.source_session_id
"""
