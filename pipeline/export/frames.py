"""Every task's conversation built column-wise (polars), for score's ``conversations`` table.

The same conversations as :func:`pipeline.export.conversation.build_conversations` (the
reference, per-task Python) and the same bytes once dumped: the JSON is assembled from
per-value fragments (strings encoded by polars exactly as orjson does, tool arguments
dumped once per call), rows are grouped into assistant turns and turns into tasks, so
no Python object is made per message. The exports' features, dedupe text and scan units
come out of the same grouping.

Turns: a kept assistant row (text, thinking or calls) joins the message before it unless
that message already has calls, i.e. a turn ends at the first row with calls; its content
is its rows' non-empty texts joined by a blank line, its reasoning their non-blank
thinking likewise; its calls are followed by one ``tool`` message each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from pipeline.core.imports import LazyModule
from pipeline.export.conversation import COPIED_CONTEXT_PREFIXES

if TYPE_CHECKING:
    import polars as pl
else:
    pl = LazyModule("polars")

# What Python's str.strip()/lstrip() strip (str.isspace), for polars' strip_chars.
PY_WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
                 "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")


def json_str(expr: pl.Expr) -> pl.Expr:
    """JSON text of a string expression (null -> null), byte-identical to orjson."""
    return pl.struct(expr.alias("s")).struct.json_encode().str.slice(5).str.head(-1)


def _blank(expr: pl.Expr) -> pl.Expr:
    return expr.fill_null("").str.strip_chars(PY_WHITESPACE) == ""


@dataclass
class Built:
    """Score's per-task conversation columns and its scan units."""

    tasks: pl.DataFrame  # one row per task: ConversationRow columns except scan and digests, + text
    units: pl.DataFrame  # (_t, string): every string a row holds, for the firewall scan


def dead_rows(msgs: pl.DataFrame, branches: pl.DataFrame | None) -> pl.DataFrame:
    """(task_id, seq) of rows on an abandoned branch: an inactive edit/retry child and,
    transitively through parent_id, everything under it inside the task."""
    empty = pl.DataFrame(schema={"task_id": pl.String, "seq": pl.Int64})
    if branches is None or branches.height == 0:
        return empty
    dead = branches.filter(~pl.col("is_active") & pl.col("kind").is_in(["edit", "retry"])).select(
        "session_id", pl.col("child_message_id").alias("message_id"))
    hit = msgs.join(dead, on=["session_id", "message_id"], how="semi")["task_id"].unique()
    if hit.len() == 0:
        return empty
    dead_set = set(dead.iter_rows())
    out: list[tuple[str, int]] = []
    rows = msgs.filter(pl.col("task_id").is_in(hit.implode())).sort("session_id", "seq", maintain_order=True)
    excluded: dict[str, set[str]] = {}
    for task_id, session_id, message_id, parent_id, seq in rows.select(
            "task_id", "session_id", "message_id", "parent_id", "seq").iter_rows():
        gone = excluded.setdefault(task_id, set())
        if (session_id, message_id) in dead_set or parent_id in gone:
            gone.add(message_id)
            out.append((task_id, seq))
    return pl.DataFrame(out, schema={"task_id": pl.String, "seq": pl.Int64}, orient="row")


def build(tasks: pl.DataFrame, messages: pl.DataFrame, calls: pl.DataFrame,
          branches: pl.DataFrame | None) -> Built:
    """Conversations of ``tasks`` (in (session_id, prompt_number) order); see ``parts``."""
    (part,) = parts(tasks, messages, calls, 1)
    return build_part(*part, branches)


Part: TypeAlias = "tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]"


def parts(tasks: pl.DataFrame, messages: pl.DataFrame, calls: pl.DataFrame, n: int) -> list[Part]:
    """The builder's inputs in ``n`` parts of whole sessions, consecutive in output order
    (a task's messages and calls all belong to its session), to be built side by side.

    ``messages``: main-session messages with ``task_id`` (tasks.assemble). ``calls``: every
    call with ``task_id``, ``is_main`` and the per-call columns ``call_json``, ``call_text``,
    ``call_strings``, ``chars``, ``repeated``, ``category``, ``missing``, ``step_json``,
    ``touched`` (see prepare), in the calls table's canonical order. Tasks are keyed by
    their output position ``_t`` (integer keys group and sort far faster than ids).
    """
    t = tasks.select("task_id", "session_id", "prompt_number", "source_kind", "prompt_text", "seq_start").sort(
        "session_id", "prompt_number", "task_id").with_row_index("_t")
    c = calls.with_row_index("_k").filter(pl.col("is_main") & pl.col("task_id").is_not_null()).select(
        "_k", "session_id", "message_id", "tool_use_id", "name", "input_truncated_bytes",
        pl.col("result_text").fill_null("").alias("result"), "call_json", "call_text", "call_strings", "chars",
        "repeated", "category", "missing", "step_json", "touched")
    m = messages.filter(pl.col("task_id").is_not_null()).select(
        "task_id", "session_id", "message_id", "parent_id", pl.col("seq").cast(pl.Int64), "role",
        "is_sidechain", "is_compact_summary", pl.col("text").fill_null(""),
        pl.col("thinking").fill_null(""))
    sessions = t["session_id"].to_list()
    cuts = [sessions[len(sessions) * k // n] for k in range(1, n) if sessions]
    bounds: list[str | None] = [None, *cuts, None]
    out = []
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        keep = pl.lit(True)
        if lo is not None:
            keep = keep & (pl.col("session_id") >= lo)
        if hi is not None:
            keep = keep & (pl.col("session_id") < hi)
        out.append((t.filter(keep), m.filter(keep), c.filter(keep)))
    return out


def build_part(t: pl.DataFrame, m: pl.DataFrame, c: pl.DataFrame, branches: pl.DataFrame | None) -> Built:
    """One part's conversations (``tasks`` keeps ``_t``; units are keyed by it)."""
    m = m.join(t.select("task_id", "_t", "seq_start"), on="task_id", how="inner").filter(
        pl.col("seq") > pl.col("seq_start"))
    m = m.join(dead_rows(m, branches), on=["task_id", "seq"], how="anti")
    copied = pl.col("is_compact_summary") | _copied(pl.col("text"))
    copied_tasks = m.filter(copied).select("_t").unique()
    m = m.filter(~copied & (pl.col("role") == "assistant") & ~pl.col("is_sidechain"))
    n_calls = c.group_by("session_id", "message_id").agg(n_row_calls=pl.len())
    m = m.join(n_calls, on=["session_id", "message_id"], how="left").with_columns(
        pl.col("n_row_calls").fill_null(0), text_kept=~_blank(pl.col("text")),
        thinking_kept=~_blank(pl.col("thinking")))
    m = m.filter(pl.col("text_kept") | pl.col("thinking_kept") | (pl.col("n_row_calls") > 0))
    m = m.sort("session_id", "seq", maintain_order=True).with_row_index("_r")
    has_calls = (pl.col("n_row_calls") > 0).cast(pl.Int64)
    m = m.with_columns(turn=(has_calls.cum_sum() - has_calls).over("_t"))
    m = m.with_columns(last_turn=pl.col("turn").max().over("_t"))

    # Calls of kept rows, in row order then call order (a row gets every call of its message).
    tc = m.select("_t", "turn", "last_turn", "_r", "session_id", "message_id").join(
        c, on=["session_id", "message_id"], how="inner").sort("_r", "_k")
    tc = tc.with_columns(last_piece=(pl.col("turn") == pl.col("last_turn"))
                         & (pl.int_range(pl.len()).over("_t", "turn") == pl.len().over("_t", "turn") - 1))
    turn_calls = tc.group_by("_t", "turn").agg(
        calls_json=pl.col("call_json").str.join(","), n_calls=pl.len())
    turns = m.group_by("_t", "turn").agg(
        content=pl.col("text").filter(pl.col("text") != "").str.join("\n\n"),
        reasoning=pl.col("thinking").filter(pl.col("thinking_kept")).str.join("\n\n"),
        has_reasoning=pl.col("thinking_kept").any(),
        last_turn=pl.col("last_turn").first(),
    ).join(turn_calls, on=["_t", "turn"], how="left").with_columns(pl.col("n_calls").fill_null(0))
    with_calls = pl.col("n_calls") > 0
    # Each task's completion is its pieces joined by commas; the brackets ride on its first
    # piece (turn 0's message) and its last (the last turn's last tool message, or message).
    assistant_json = pl.concat_str([
        pl.when(pl.col("turn") == 0).then(pl.lit("[")).otherwise(pl.lit("")),
        pl.lit('{"content":'), json_str(pl.col("content")),
        pl.when(pl.col("has_reasoning")).then(pl.lit(',"reasoning_content":') + json_str(pl.col("reasoning")))
        .otherwise(pl.lit("")),
        pl.lit(',"role":"assistant"'),
        pl.when(with_calls).then(pl.lit(',"tool_calls":[') + pl.col("calls_json") + pl.lit("]"))
        .otherwise(pl.lit("")),
        pl.lit("}"),
        pl.when((pl.col("turn") == pl.col("last_turn")) & ~with_calls).then(pl.lit("]")).otherwise(pl.lit("")),
    ])
    tool_json = pl.concat_str([
        pl.struct(pl.col("result").alias("content"), "name", pl.lit("tool").alias("role"),
                  pl.col("tool_use_id").alias("tool_call_id")).struct.json_encode(),
        pl.when(pl.col("last_piece")).then(pl.lit("]")).otherwise(pl.lit("")),
    ])
    # Messages and texts as ordered pieces (turn, slot, row, call), joined once per task.
    key = ["_t", "turn", "slot", "_r", "_k"]
    no_row = [pl.lit(-1, pl.Int64).alias("_r"), pl.lit(-1, pl.Int64).alias("_k")]
    turn_key = [pl.col("_t"), pl.col("turn").cast(pl.Int64), *no_row]
    call_key = [pl.col("_t"), pl.col("turn").cast(pl.Int64), pl.col("_r").cast(pl.Int64),
                pl.col("_k").cast(pl.Int64)]
    json_pieces = pl.concat([
        turns.select(*turn_key, pl.lit(0).alias("slot"), assistant_json.alias("s")),
        tc.select(*call_key, pl.lit(1).alias("slot"), tool_json.alias("s")),
    ]).sort(key)
    text_pieces = pl.concat([
        t.select(pl.col("_t"), pl.lit(-1, pl.Int64).alias("turn"), *no_row, pl.lit(0).alias("slot"),
                 pl.col("prompt_text").alias("s")),
        turns.select(*turn_key, pl.lit(0).alias("slot"), pl.col("content").alias("s")),
        turns.filter(pl.col("has_reasoning")).select(*turn_key, pl.lit(1).alias("slot"),
                                                     pl.col("reasoning").alias("s")),
        tc.select(*call_key, pl.lit(2).alias("slot"), pl.col("call_text").alias("s")),
        tc.select(*call_key, pl.lit(3).alias("slot"), pl.col("result").alias("s")),
    ]).filter(pl.col("s").is_not_null() & (pl.col("s") != "")).sort(key)
    per_task = turns.group_by("_t").agg(
        n_assistant_turns=pl.len(),
        n_turn_calls=pl.col("n_calls").sum(),
        has_thinking=pl.col("has_reasoning").any(),
        final_answer=pl.when(pl.col("n_calls").sort_by("turn").last() == 0)
        .then(pl.col("content").sort_by("turn").last()).otherwise(pl.lit("")),
    )
    bodies = json_pieces.group_by("_t").agg(completion=pl.col("s").str.join(","))
    texts = text_pieces.group_by("_t").agg(text=pl.col("s").str.join("\n"))
    out = (
        t.join(per_task, on="_t", how="left")
        .join(bodies, on="_t", how="left")
        .join(texts, on="_t", how="left")
        .join(_call_features(tc), on="_t", how="left")
        .join(copied_tasks.with_columns(copied_row=pl.lit(True)), on="_t", how="left")
        .sort("_t")
    )
    out = out.select(
        "_t", "task_id", "session_id", "prompt_number", "source_kind",
        (pl.lit("[") + pl.struct(pl.col("prompt_text").alias("content"), pl.lit("user").alias("role"))
         .struct.json_encode() + pl.lit("]")).alias("prompt"),
        pl.col("completion").fill_null("[]"),
        pl.col("tool_names").fill_null(pl.lit([], pl.List(pl.String))),
        (1 + pl.col("n_assistant_turns").fill_null(0) + pl.col("n_turn_calls").fill_null(0))
        .cast(pl.Int64).alias("n_messages"),
        pl.col("n_tool_calls").fill_null(0).cast(pl.Int64),
        pl.col("n_assistant_turns").fill_null(0).cast(pl.Int64),
        pl.col("has_thinking").fill_null(False),
        (_copied(pl.col("prompt_text").fill_null("")) | pl.col("copied_row").fill_null(False)).alias("copied_context"),
        pl.col("truncated_args").fill_null(False),
        pl.col("final_answer").fill_null(""),
        pl.col("max_arg_chars").fill_null(0).cast(pl.Int64),
        pl.col("max_repeated_line").fill_null(0).cast(pl.Int64),
        "empty_args_tool",
        pl.col("cap_category").fill_null("text"),
        pl.col("steps").fill_null("[]"),
        pl.col("files_touched").fill_null(pl.lit([], pl.List(pl.String))),
        pl.col("text").fill_null(""),
    )
    units = pl.concat([
        text_pieces.filter(pl.col("slot") != 2).select("_t", "s"),
        tc.select("_t", pl.col("call_strings").alias("s")).explode("s"),
    ]).filter(pl.col("s").is_not_null() & (pl.col("s") != ""))
    return Built(tasks=out, units=units)


def _copied(text: pl.Expr) -> pl.Expr:
    stripped = text.str.strip_chars_start(PY_WHITESPACE)
    hit = pl.lit(False)
    for prefix in COPIED_CONTEXT_PREFIXES:
        hit = hit | stripped.str.starts_with(prefix)
    return hit.fill_null(False)


def _call_features(tc: pl.DataFrame) -> pl.DataFrame:
    """Per task, the row features of its calls (see conversation.features_of); ``tc`` is in
    call order."""
    per_task = tc.group_by("_t", maintain_order=True).agg(
        tool_names=pl.col("name").unique(maintain_order=True),
        n_tool_calls=pl.len(),
        max_arg_chars=pl.col("chars").max(),
        max_repeated_line=pl.col("repeated").max(),
        empty_args_tool=pl.col("name").filter(pl.col("missing")).first(),
        steps=pl.lit("[") + pl.col("step_json").str.join(",") + pl.lit("]"),
        files_touched=pl.col("touched").list.explode(keep_nulls=False, empty_as_null=False)
        .unique(maintain_order=True),
        truncated_args=(pl.col("input_truncated_bytes") != 0).any(),
    )
    top = (
        tc.group_by("_t", "category").agg(n=pl.len())
        .sort(["_t", "n", "category"], descending=[False, True, False])
        .group_by("_t", maintain_order=True).agg(cap_category=pl.col("category").first())
    )
    return per_task.join(top, on="_t", how="left")
