"""The merge's SQL: every step that spans files, as DuckDB statements.

Kept apart from ``merge`` (which loads shards, links subagents in Python and streams
the results out) so the relational core reads in one place. Order is always explicit:
``(_file, line_no)`` is the merge order (files by display path, lines by number) and
``_row`` (a row's position in that order) breaks any remaining tie, so no result
depends on hash-table or thread scheduling.
"""

from __future__ import annotations

from dataclasses import dataclass

# Lines whose record key another line holds: exact copies (same bytes) and conflicts
# (same key, other bytes). The copy kept is the first valid parse in merge order (a copy
# its parser set aside never hides a valid one: the same file given as two kinds, an
# invalid record reusing a valid one's uuid), else the first. Their rows in other tables
# are dropped.
DUPLICATES = """
CREATE TABLE dups AS
SELECT _file, line_no, _row, outcome, session_id, chash, first_hash, first_file, first_line
FROM (
    SELECT *,
        row_number() OVER w AS rank,
        first_value(chash) OVER w AS first_hash,
        first_value(_file) OVER w AS first_file,
        first_value(line_no) OVER w AS first_line
    FROM lines
    WINDOW w AS (PARTITION BY _k1, _k2
                 ORDER BY starts_with(outcome, 'quarantined:'), _file, line_no, _row
                 ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
)
WHERE rank > 1
"""

DUPLICATE_OUTCOMES = "SELECT outcome, count(*) FROM dups GROUP BY outcome ORDER BY outcome"
EXACT_DUPLICATES = "SELECT count(*) FROM dups WHERE chash = first_hash"
CONFLICTS = """
SELECT _file, line_no, _row, session_id, first_file, first_line
FROM dups WHERE chash <> first_hash ORDER BY _file, line_no, _row
"""

# The (session, file) pairs that kept at least one line: a session row from a file
# whose lines were all duplicates says nothing new.
PRESENT = """
CREATE TABLE present AS
SELECT DISTINCT session_id, _file
FROM lines ANTI JOIN dups USING (_file, line_no)
WHERE session_id IS NOT NULL
"""

# First copy of each message / call in merge order, then positions per session.
MESSAGES = """
CREATE TABLE m AS
SELECT *, row_number() OVER (PARTITION BY session_id ORDER BY _file, line_no, _row) - 1 AS seq
FROM (
    SELECT * FROM messages ANTI JOIN dups USING (_file, line_no)
    QUALIFY row_number() OVER (PARTITION BY session_id, message_id ORDER BY _file, line_no, _row) = 1
)
"""

PROMPTS = """
CREATE TABLE p AS
SELECT *, prompt_digest(session_id, prompt_number) AS prompt_id
FROM (
    SELECT *,
        row_number() OVER (PARTITION BY session_id ORDER BY _file, line_no, _row) - 1 AS prompt_number
    FROM prompts ANTI JOIN dups USING (_file, line_no)
)
"""

CALLS = """
CREATE TABLE c AS
SELECT calls.*, coalesce(m.seq, -1) AS turn_index
FROM (
    SELECT * FROM tool_calls ANTI JOIN dups USING (_file, line_no)
    QUALIFY row_number() OVER (PARTITION BY session_id, tool_use_id ORDER BY _file, line_no, _row) = 1
) AS calls
LEFT JOIN m USING (session_id, message_id)
"""

# Results whose call was not in their file, first copy first per (session, call id);
# the first pairs with a call of the session, in another file, that has no result.
LOOSE = """
CREATE TABLE lr AS
SELECT *, row_number() OVER (PARTITION BY session_id, tool_use_id ORDER BY _file, line_no, _row) AS k
FROM loose_results ANTI JOIN dups USING (_file, line_no)
"""
PAIRED = """
CREATE TABLE paired AS
SELECT lr.session_id, lr.tool_use_id, lr.is_error, lr.result_text, lr.result_truncated_bytes,
    lr.error_kind, CASE WHEN c.name = 'Bash' THEN lr.bash_exit_code END AS exit_code, lr.agent_id
FROM lr JOIN c USING (session_id, tool_use_id)
WHERE lr.k = 1 AND NOT c.has_result
"""
PAIR_CALLS = """
UPDATE c SET has_result = true, _agent_id = coalesce(c._agent_id, paired.agent_id)
FROM paired WHERE c.session_id = paired.session_id AND c.tool_use_id = paired.tool_use_id
"""
# Columns of a call that a result paired across files replaces (``_over_<name>``).
PAIRED_COLUMNS = ("is_error", "result_text", "result_truncated_bytes", "error_kind", "exit_code")

# A branch survives when its child message does (from the same file); one row per
# (session, parent, child), the first in merge order.
BRANCHES = """
CREATE TABLE b AS
SELECT * FROM branches
SEMI JOIN m ON branches.session_id = m.session_id
    AND branches.child_message_id = m.message_id AND branches._file = m._file
QUALIFY row_number() OVER (
    PARTITION BY session_id, parent_message_id, child_message_id
    ORDER BY _file, child_rank, _row
) = 1
"""

# One row per session: the first non-null value of each field in merge order.
_FIRST = (
    "source_kind", "_file", "agent_version", "cwd", "git_branch", "model", "title", "agent_id",
    "_root_session_id", "_meta_tool_use_id", "_spawn_digest",
)
SESSIONS = f"""
CREATE TABLE s AS
SELECT session_id,
    {", ".join(f"first({c} ORDER BY _file, _row) FILTER (WHERE {c} IS NOT NULL) AS {c}" for c in _FIRST)},
    min(started_at) AS started_at,
    max(ended_at) AS ended_at,
    bool_or(is_subagent) AS is_subagent
FROM sessions SEMI JOIN present USING (session_id, _file)
GROUP BY session_id
"""

SUBAGENT_SESSIONS = """
SELECT session_id, source_kind, agent_id, _root_session_id, _meta_tool_use_id, _spawn_digest
FROM s WHERE is_subagent ORDER BY session_id
"""

# Spawning calls with the prompt each was made under (for subagents to inherit).
SPAWN_CALLS = """
SELECT c.session_id, c.tool_use_id, c._agent_id, c._spawn_digest, p.prompt_id
FROM c LEFT JOIN p ON c.session_id = p.session_id AND c._file = p._file AND c._prompt_line = p.line_no
WHERE c.name IN ('Task', 'Agent')
ORDER BY c.session_id, c.turn_index, c.turn_subindex, c._row
"""


@dataclass(frozen=True)
class FinalQuery:
    """One output table in canonical order. ``{where}`` takes a predicate on
    ``column``: a table keyed by session first (``base`` names the merge table whose
    per-session counts cut the ranges) is sorted one range of sessions at a time, so no
    sort ever holds more than a range, whatever the corpus size. Tables without a base
    have a row per session or per subagent file at most and sort in one go."""

    sql: str
    base: str | None = None
    column: str = "session_id"


def final_queries() -> dict[str, FinalQuery]:
    """``links`` and ``files`` are registered by the caller. Tables with passthrough
    columns also return ``_row`` (their key); session-keyed tables return ``_file``,
    mapped to its path as the rows stream out (a path per row would only widen the sort)."""
    prompt_of = """LEFT JOIN p AS lookup ON t.session_id = lookup.session_id
        AND t._file = lookup._file AND t._prompt_line = lookup.line_no
        LEFT JOIN links ON t.session_id = links.session_id"""
    counts = """LEFT JOIN (SELECT session_id, count(*) AS n FROM m GROUP BY ALL) AS nm USING (session_id)
        LEFT JOIN (SELECT session_id, count(*) AS n FROM c GROUP BY ALL) AS nc USING (session_id)
        LEFT JOIN (SELECT session_id, count(*) AS n FROM p GROUP BY ALL) AS np USING (session_id)"""
    return {
        "messages": FinalQuery(f"""
            SELECT t.session_id, t.message_id, t.seq, t.line_no, t._file,
                coalesce(lookup.prompt_id, links.inherited_prompt) AS prompt_id, t._row
            FROM m AS t {prompt_of} WHERE {{where}}
            ORDER BY t.session_id, t.seq, t.message_id""", "m", "t.session_id"),
        "tool_calls": FinalQuery(f"""
            SELECT t.session_id, t.tool_use_id, t.message_id, t.turn_index, t.turn_subindex,
                t.name, t.line_no, t._file, t.has_result,
                coalesce(lookup.prompt_id, links.inherited_prompt) AS prompt_id, t._row,
                pr.tool_use_id IS NOT NULL AS _over,
                {", ".join(f"pr.{n} AS _over_{n}" for n in PAIRED_COLUMNS)}
            FROM c AS t {prompt_of}
                LEFT JOIN paired AS pr ON t.session_id = pr.session_id AND t.tool_use_id = pr.tool_use_id
            WHERE {{where}}
            ORDER BY t.session_id, t.turn_index, t.turn_subindex, t.tool_use_id""", "c", "t.session_id"),
        "prompts": FinalQuery("""
            SELECT session_id, prompt_id, prompt_number, text, timestamp, message_id, _file, line_no
            FROM p WHERE {where}
            ORDER BY session_id, prompt_number""", "p"),
        "branches": FinalQuery("""
            SELECT session_id, parent_message_id, child_message_id, kind, child_rank, is_active
            FROM b WHERE {where}
            ORDER BY session_id, parent_message_id, child_rank, _file, _row""", "b"),
        "sessions": FinalQuery(f"""
            SELECT s.session_id, s.source_kind, s._file, s.agent_version, s.cwd,
                s.git_branch, s.model, s.title, s.started_at, s.ended_at, s.is_subagent,
                links.parent_session_id, s.agent_id,
                coalesce(nm.n, 0) AS n_messages, coalesce(nc.n, 0) AS n_tool_calls,
                coalesce(np.n, 0) AS n_prompts
            FROM s LEFT JOIN links USING (session_id) {counts}
            WHERE {{where}}
            ORDER BY s.session_id"""),
        "subagents": FinalQuery("""
            SELECT * FROM (
                SELECT s.session_id, coalesce(links.parent_session_id, s._root_session_id) AS parent_session_id,
                    s.agent_id, links.spawn_tool_use_id, coalesce(links.link_method, 'none') AS link_method,
                    s._file
                FROM s LEFT JOIN links USING (session_id)
                WHERE s.is_subagent
            ) WHERE parent_session_id IS NOT NULL AND {where}
            ORDER BY parent_session_id, session_id"""),
        "quarantine": FinalQuery("""
            SELECT stage, files.source_file, line_no, record_id, session_id, reason, detail
            FROM (
                SELECT stage, _file, line_no, record_id, session_id, reason, detail, 0 AS part, _row
                FROM quarantine ANTI JOIN dups USING (_file, line_no)
                UNION ALL
                SELECT stage, _file, line_no, record_id, session_id, reason, detail, 1 AS part, _row
                FROM conflict_rows
                UNION ALL
                SELECT stage, _file, line_no, record_id, session_id, reason, detail, 2 AS part, _row
                FROM file_rows
                UNION ALL
                SELECT 'collect', lr._file, lr.line_no, lr.tool_use_id, lr.session_id,
                    CASE WHEN c.tool_use_id IS NULL THEN 'unpaired_tool_result' ELSE 'duplicate_tool_result' END,
                    CASE WHEN c.tool_use_id IS NULL THEN 'tool_result without a tool_use in its session'
                        ELSE 'another result for this call is kept' END,
                    3 AS part, lr._row
                FROM lr LEFT JOIN c USING (session_id, tool_use_id)
                    LEFT JOIN paired AS pr USING (session_id, tool_use_id)
                WHERE NOT (lr.k = 1 AND pr.tool_use_id IS NOT NULL)
            ) JOIN files USING (_file)
            WHERE {where}
            ORDER BY stage, reason, files.source_file, line_no, record_id, detail, part, _row"""),
    }
