"""SFT rows with their natural nested types, for the exported Parquet files.

The lake keeps ``messages`` and ``tools`` as JSON text (one string column digests and
sorts cheaply). A Parquet reader wants the structure: ``messages`` as a list of structs,
each tool call's ``arguments`` an object. Arguments differ in shape from tool to tool
(and ``tools`` holds arbitrary JSON Schemas), so those two are Arrow's canonical JSON
extension type (``arrow.json``): Hugging Face ``datasets`` reads it as its ``Json``
feature (objects back), DuckDB as ``JSON``, polars as an extension of strings.
"""

from __future__ import annotations

from typing import Any

import orjson
import pyarrow as pa

from pipeline.core.errors import TracelakeError


def _messages_type(arguments: pa.DataType) -> pa.DataType:
    function = pa.struct([("name", pa.string()), ("arguments", arguments)])
    call = pa.struct([("id", pa.string()), ("type", pa.string()), ("function", function)])
    return pa.list_(pa.struct([
        ("role", pa.string()),
        ("content", pa.string()),
        ("reasoning_content", pa.string()),
        ("tool_calls", pa.list_(call)),
        ("tool_call_id", pa.string()),
        ("name", pa.string()),
    ]))


MESSAGES = _messages_type(pa.json_(pa.string()))
_MESSAGES_STORAGE = _messages_type(pa.string())
_MESSAGE_KEYS = frozenset(MESSAGES.value_type.names)
_CALL_KEYS = frozenset({"id", "type", "function"})
JSON = pa.json_(pa.string())


def nested_sft(table: pa.Table) -> pa.Table:
    """``table`` (the lake's ``sft`` rows) with ``messages`` nested and ``tools`` as JSON."""
    messages = [_storage_form(orjson.loads(text)) for text in table.column("messages").to_pylist()]
    nested = pa.array(messages, _MESSAGES_STORAGE).cast(MESSAGES)
    tools = pa.ExtensionArray.from_storage(JSON, table.column("tools").combine_chunks().cast(pa.string()))
    out = table.set_column(table.schema.get_field_index("messages"), pa.field("messages", MESSAGES, False), nested)
    return out.set_column(out.schema.get_field_index("tools"), pa.field("tools", JSON, False), tools)


def flat_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row read back from the nested Parquet, as the JSONL files hold it (arguments and
    tools as objects, absent fields left out), for the firewall's checks."""
    messages = []
    for message in row["messages"] or []:
        out = {k: v for k, v in message.items() if v is not None}
        if out.get("tool_calls") is not None:
            out["tool_calls"] = [
                {**call, "function": {**call["function"], "arguments": _json_or_text(call["function"]["arguments"])}}
                for call in out["tool_calls"]
            ]
        messages.append(out)
    return {**row, "messages": messages, "tools": _json_or_text(row["tools"])}


def _json_or_text(value: Any) -> Any:
    """JSON text decoded; text that is not JSON (a tampered file) kept as it is, for the
    checks to report rather than crash on."""
    if not isinstance(value, str):
        return value
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return value


def _storage_form(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Arguments as JSON text; a field this layout has no column for is an error, never
    dropped silently."""
    out = []
    for message in messages:
        unknown = message.keys() - _MESSAGE_KEYS
        if unknown:
            raise TracelakeError(f"sft message has fields the Parquet layout lacks: {sorted(unknown)}")
        calls = message.get("tool_calls")
        if calls:
            stored = []
            for call in calls:
                extra = call.keys() - _CALL_KEYS
                if extra:
                    raise TracelakeError(f"sft tool call has fields the Parquet layout lacks: {sorted(extra)}")
                function = call["function"]
                stored.append({**call, "function": {"name": function["name"],
                                                    "arguments": orjson.dumps(function["arguments"]).decode()}})
            message = {**message, "tool_calls": stored}
        out.append(message)
    return out
