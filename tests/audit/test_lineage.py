"""The lineage view over real DuckDB views built from the real table specs."""

from __future__ import annotations

import typing
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from pipeline.audit.lineage import COLUMNS, lineage_view_sql
from schemas.datasets import KTO, PREFERENCE, RAG, SCORING_TABLES, SFT
from schemas.records import COLLECT_TABLES
from schemas.tables import TableSpec, from_rows


def _blank(spec: TableSpec) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for field in spec.schema:
        if field.nullable:
            row[field.name] = None
        elif pa.types.is_large_list(field.type):
            row[field.name] = []
        elif pa.types.is_boolean(field.type):
            row[field.name] = False
        elif pa.types.is_integer(field.type) or pa.types.is_floating(field.type):
            row[field.name] = 0
        else:
            row[field.name] = "x"
    return row


def table(spec: TableSpec, *rows: dict[str, Any]) -> pa.Table:
    return from_rows(spec, [{**_blank(spec), **r} for r in rows])


def lake() -> dict[str, pa.Table]:
    """Two sessions in three files: s1 resumed into a second file and spawned subagent a1."""
    sessions = COLLECT_TABLES["sessions"]
    return {
        "sessions": table(
            sessions,
            {"session_id": "s1", "source_file": "~/p/s1.jsonl", "source_kind": "claude-code"},
            {"session_id": "a1", "source_file": "~/p/s1/subagents/a1.jsonl", "source_kind": "claude-code"},
            {"session_id": "s2", "source_file": "~/c/s2.jsonl", "source_kind": "codex"},
        ),
        # one sessions row per session (its first file); the resumed file shows in messages
        "messages": table(
            COLLECT_TABLES["messages"],
            {"session_id": "s1", "message_id": "m1", "source_file": "~/p/s1.jsonl"},
            {"session_id": "s1", "message_id": "m2", "source_file": "~/p/s1-resumed.jsonl"},
        ),
        "tasks": table(
            SCORING_TABLES["tasks"],
            {"task_id": "t1", "session_id": "s1", "subagent_session_ids": ["a1"]},
            {"task_id": "t2", "session_id": "s2"},
        ),
        "scores": table(SCORING_TABLES["scores"], {"task_id": "t1", "session_id": "s1"},
                        {"task_id": "t2", "session_id": "s2"}),
        "sft": table(SFT, {"row_id": "r1", "task_id": "t1", "session_id": "s1"}),
        "rag": table(RAG, {"doc_id": "d2", "task_id": "t2", "session_id": "s2"}),
        "kto": table(KTO, {"row_id": "k2", "task_id": "t2", "session_id": "s2"}),
        "preference": table(PREFERENCE, {"pair_id": "p1", "chosen_task_id": "t1",
                                         "rejected_task_id": "t2"}),
    }


def connect(tables: dict[str, pa.Table]) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    for name, data in tables.items():
        con.register(f"_{name}", data)
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM _{name}")
    sql = lineage_view_sql(set(tables) | {"receipts"})
    assert sql is not None
    con.execute(sql)
    return con


def rows(con: duckdb.DuckDBPyConnection, query: str) -> list[tuple[Any, ...]]:
    return con.execute(query).fetchall()


def test_files_of_an_export_row_include_resumes_and_subagents() -> None:
    con = connect(lake())
    assert [d[0] for d in con.execute("SELECT * FROM lineage LIMIT 0").description] == list(COLUMNS)
    files = rows(con, "SELECT DISTINCT source_file, via FROM lineage "
                      "WHERE dataset = 'sft' AND row_id = 'r1' ORDER BY 1")
    assert files == [("~/p/s1-resumed.jsonl", "session"), ("~/p/s1.jsonl", "session"),
                     ("~/p/s1/subagents/a1.jsonl", "subagent")]


def test_export_rows_of_a_source_file() -> None:
    con = connect(lake())
    fed = rows(con, "SELECT DISTINCT dataset, row_id, role FROM lineage "
                    "WHERE source_file = '~/c/s2.jsonl' ORDER BY 1, 2")
    assert fed == [("kto", "k2", None), ("preference", "p1", "rejected"), ("rag", "d2", None)]
    by_session = rows(con, "SELECT DISTINCT dataset FROM lineage WHERE source_session_id = 'a1'")
    assert sorted(by_session) == [("preference",), ("sft",)]


@pytest.mark.parametrize("drop", [("tasks",), ("tasks", "scores"), ("sessions",), ("messages",),
                                  ("sft", "rag", "kto")])
def test_partial_lakes_still_get_a_view(drop: tuple[str, ...]) -> None:
    tables = {k: v for k, v in lake().items() if k not in drop}
    con = connect(tables)
    found = rows(con, "SELECT dataset, count(*) FROM lineage GROUP BY 1 ORDER BY 1")
    assert {d for d, _ in found} == {d for d in ("kto", "preference", "rag", "sft") if d in tables}
    if "tasks" not in tables and "sessions" in tables and "sft" in tables:
        assert rows(con, "SELECT DISTINCT source_file FROM lineage WHERE row_id = 'r1' ORDER BY 1") == [
            ("~/p/s1-resumed.jsonl",), ("~/p/s1.jsonl",)
        ]


def test_no_datasets_no_view() -> None:
    assert lineage_view_sql({"sessions", "messages", "tasks", "receipts"}) is None


def test_dataset_columns_exist_in_specs() -> None:
    """Fails loudly when an export schema renames a column the view relies on."""
    from pipeline.audit.lineage import PAIRED_DATASETS, SINGLE_TASK_DATASETS

    specs = {"sft": SFT, "rag": RAG, "kto": KTO, "preference": PREFERENCE}
    for view, (row_id, task_id, session_id) in SINGLE_TASK_DATASETS.items():
        names = specs[view].schema.names
        assert {row_id, task_id, session_id} <= set(names), view
    for view, (row_id, roles) in PAIRED_DATASETS.items():
        assert {row_id, *(c for _, c in roles)} <= set(specs[view].schema.names)
    assert typing.get_type_hints(SCORING_TABLES["tasks"].model)["subagent_session_ids"] == list[str]
