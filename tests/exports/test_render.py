"""Exports as a trainer sees them: datasets.load_dataset, the Qwen chat template, TRL.

Loading is not enough (nested shapes can load and still render wrongly), so every SFT,
preference and KTO row is rendered through an offline Qwen tokenizer with TRL's training
template, and through TRL's own ``apply_chat_template`` helpers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.exports.builders import agent_corpus, run_pipeline


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("render") / "lake"
    result = run_pipeline(agent_corpus(), root, {"export-sft": {"valid_fraction": 0.5}})
    assert result.ok
    return root / "exports" / result.run_id


def _load(path: Path) -> Any:
    from datasets import load_dataset

    return load_dataset("json", data_files=str(path), split="train")


def _plain(value: Any) -> Any:
    """datasets may hand back a Json feature's values as JSON text: decode to objects."""
    return json.loads(value) if isinstance(value, str) else value


def test_sft_loads_and_renders(exported: Path, qwen_tokenizer: Any) -> None:
    from trl.data_utils import apply_chat_template, maybe_apply_chat_template

    rows = []
    for split in ("train", "valid"):
        path = exported / "sft" / f"{split}.jsonl"
        if path.stat().st_size:
            rows += list(_load(path))
    assert len(rows) == 3
    for row in rows:
        messages, tools = _plain(row["messages"]), _plain(row["tools"])
        assert isinstance(messages, list) and isinstance(tools, list)
        calls = [c for m in messages for c in (m.get("tool_calls") or [])]
        assert all(isinstance(c["function"]["arguments"], dict) for c in calls)
        text = qwen_tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
        body = text[text.index("<|im_start|>user"):]  # after the tools system block
        assert body.count("<tool_call>") == len(calls)
        assert body.count("<tool_response>") == sum(m["role"] == "tool" for m in messages)
        for call in calls:  # the arguments survive as the object they were
            assert json.dumps(call["function"]["arguments"], ensure_ascii=False) in text
        for m in messages:
            if m.get("reasoning_content"):
                assert f"<think>\n{m['reasoning_content']}\n</think>" in text
        ids = qwen_tokenizer.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=True)
        assert len(ids["input_ids"]) > 20
        masked = qwen_tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        assert sum(masked["assistant_masks"]) > 0  # the training template marks assistant spans
        rendered = maybe_apply_chat_template({"messages": messages}, qwen_tokenizer, tools=tools)
        assert rendered["text"] == text
        assert apply_chat_template({"messages": messages}, qwen_tokenizer, tools=tools)["text"] == text


def test_sft_parquet_has_nested_types(exported: Path) -> None:
    """messages a list of structs; arguments and tools as Arrow's JSON type, which
    datasets reads as objects and DuckDB as JSON; the rows equal the JSONL file's."""
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import load_dataset

    path = exported / "sft" / "train.parquet"
    schema = pq.read_schema(path)
    message = schema.field("messages").type.value_type
    assert pa.types.is_struct(message) and {"role", "content", "tool_calls"} <= set(message.names)
    arguments = message.field("tool_calls").type.value_type.field("function").type.field("arguments").type
    assert isinstance(arguments, pa.JsonType) and isinstance(schema.field("tools").type, pa.JsonType)
    from_parquet = load_dataset("parquet", data_files=str(path), split="train")
    from_jsonl = _load(exported / "sft" / "train.jsonl")
    for a, b in zip(from_parquet, from_jsonl, strict=True):
        assert a["task_id"] == b["task_id"]
        strip = lambda ms: [{k: v for k, v in m.items() if v is not None} for m in ms]  # noqa: E731
        calls = [c for m in a["messages"] for c in (m["tool_calls"] or [])]
        assert all(isinstance(c["function"]["arguments"], dict) for c in calls)
        assert strip(a["messages"]) == strip(_plain(b["messages"]))
        assert a["tools"] == _plain(b["tools"])
    first = duckdb.sql(f"SELECT messages[1].role, json_type(tools) FROM '{path}' LIMIT 1").fetchall()
    assert first == [("user", "ARRAY")]


def test_preference_and_kto_load_and_render(exported: Path, qwen25_tokenizer: Any, qwen_tokenizer: Any) -> None:
    from trl.data_utils import maybe_apply_chat_template

    pairs = list(_load(exported / "preference" / "preference.jsonl"))
    assert len(pairs) == 2
    for row in pairs:
        example = {k: _plain(row[k]) for k in ("prompt", "chosen", "rejected")}
        tools = _plain(row["tools"])
        for tokenizer in (qwen25_tokenizer, qwen_tokenizer):
            out = maybe_apply_chat_template(example, tokenizer, tools=tools)
            assert out["prompt"].endswith("<|im_start|>assistant\n")
            assert "<tool_call>" in out["chosen"] + out["rejected"]
            assert out["chosen"] != out["rejected"]
    kto = list(_load(exported / "kto" / "kto.jsonl"))
    assert sorted(r["label"] for r in kto) == [False, True, True, True]
    for row in kto:
        example = {"prompt": _plain(row["prompt"]), "completion": _plain(row["completion"])}
        out = maybe_apply_chat_template(example, qwen_tokenizer, tools=_plain(row["tools"]))
        assert out["completion"].strip()


def test_rag_loads(exported: Path) -> None:
    docs = list(_load(exported / "rag" / "playbooks.jsonl"))
    assert len(docs) == 3 and all(d["text"].startswith("## Task") for d in docs)


@pytest.mark.parametrize(("folder", "columns", "splits"), [
    ("sft", {"messages", "tools", "task_id"}, {"train": 2, "validation": 1}),
    ("rag", {"text", "steps", "source_file"}, {"train": 3}),
    ("preference", {"prompt", "chosen", "rejected", "tools"}, {"train": 2}),
    ("kto", {"prompt", "completion", "label", "tools"}, {"train": 4}),
])
def test_each_export_folder_loads_as_it_is(exported: Path, folder: str, columns: set[str],
                                           splits: dict[str, int]) -> None:
    """`load_dataset(folder)` with no arguments, as a user (or the Hub) does: the card's
    configs pick the files (the SFT folder's Parquet twins once won, with JSON text for
    messages), and nested columns come back as objects a chat template takes."""
    from datasets import load_dataset

    loaded = load_dataset(str(exported / folder))
    assert {name: len(split) for name, split in loaded.items()} == splits
    for split in loaded.values():
        assert columns <= set(split.column_names)
        row = split[0]
        for name in columns & {"messages", "prompt", "chosen", "rejected", "completion", "steps", "tools"}:
            value = _plain(row[name])
            assert isinstance(value, list) and all(isinstance(item, dict) for item in value), name


def test_each_export_folder_has_a_dataset_card(exported: Path) -> None:
    import yaml

    for folder in ("sft", "rag", "preference", "kto"):
        card = (exported / folder / "README.md").read_text()
        header, _, body = card.removeprefix("---\n").partition("\n---\n")
        configs = yaml.safe_load(header)["configs"]
        named = {s["path"] for c in configs for s in c["data_files"]}
        assert named and all((exported / folder / path).is_file() for path in named)
        assert "## Columns" in body and "## Provenance" in body and "tracelake 0." in body
        assert "sha256" in body and "receipts verify" in body
    sft_card = (exported / "sft" / "README.md").read_text()
    assert "| default | validation | `valid.jsonl` | 1 |" in sft_card


def test_a_tampered_parquet_row_is_read_back_not_crashed_on() -> None:
    from pipeline.export.nested import flat_row

    row = {"messages": [{"role": "assistant", "content": "", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "Read", "arguments": "{not json"}}]}], "tools": "[]"}
    flat = flat_row(row)
    assert flat["messages"][0]["tool_calls"][0]["function"]["arguments"] == "{not json"  # reported as not an object
    assert flat["tools"] == []
