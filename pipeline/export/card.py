"""A dataset card (``README.md``) in each export folder, as the Hugging Face Hub reads it.

Why: ``datasets.load_dataset(folder)`` guesses its files when nothing says which (it
took the SFT folder's Parquet files, whose nested columns are JSON text, over the JSONL
files a trainer wants). The card's YAML ``configs`` name the files and splits, so the
folder loads as it is, locally or pushed to the Hub; its body says what each column
holds, how many rows each split has, and which signed lake objects the files render, so
a reader can check them against the run's receipt (``tracelake receipts verify``).

The card is written with the files it describes and hashed with them: it holds nothing
that differs between runs that reuse the same export (no run id, no time).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from pipeline import __version__
from pipeline.core.store import atomic_write_text
from schemas.receipt import ObjectRef

CARD = "README.md"


@dataclass(frozen=True)
class Split:
    name: str  # the Hub's split name: train, validation, test
    path: str  # relative to the folder
    rows: int


@dataclass(frozen=True)
class Config:
    name: str
    splits: Sequence[Split]


def write_card(
    folder: Path, title: str, summary: str, configs: Sequence[Config], schema: pa.Schema,
    notes: dict[str, str], stage: str, stage_version: str, objects: Sequence[ObjectRef],
) -> None:
    """``notes``: what a column holds, where its type alone does not say (JSON objects)."""
    atomic_write_text(folder / CARD, render_card(title, summary, configs, schema, notes, stage, stage_version,
                                                 objects))


def render_card(
    title: str, summary: str, configs: Sequence[Config], schema: pa.Schema, notes: dict[str, str],
    stage: str, stage_version: str, objects: Sequence[ObjectRef],
) -> str:
    yaml = ["---", "configs:"]
    for config in configs:
        # An empty split is left out: the Hub's loaders refuse a file with no rows.
        splits = [s for s in config.splits if s.rows]
        if not splits:
            continue
        yaml += [f"- config_name: {config.name}", "  data_files:"]
        for split in splits:
            yaml += [f"  - split: {split.name}", f"    path: {_scalar(split.path)}"]
    yaml += ["tags:", "- tracelake", "- agent-logs", "---", ""]
    body = [f"# {title}", "", summary, "", "## Splits", "", "| config | split | file | rows |",
            "|---|---|---|---:|"]
    for config in configs:
        body += [f"| {config.name} | {s.name} | `{s.path}` | {s.rows} |" for s in config.splits]
    body += ["", "## Columns", "", "| column | type | holds |", "|---|---|---|"]
    for field in schema:
        body.append(f"| `{field.name}` | {field.type} | {notes.get(field.name, '')} |")
    body += ["", "## Provenance", "",
             f"Written by tracelake {__version__}, stage `{stage}` version `{stage_version}`, from "
             "these lake objects (the run's signed receipt lists the same digests, and the digest "
             "of every file in this folder):", "", "| object | rows | sha256 |", "|---|---:|---|"]
    body += [f"| `{ref.name}` | {ref.rows} | `{ref.sha256}` |" for ref in objects]
    body += ["", "Check them with `tracelake receipts verify --root <lake root>`.", ""]
    return "\n".join(yaml + body)


def _scalar(text: str) -> str:
    """A YAML scalar: JSON's string syntax is a subset of YAML's."""
    return json.dumps(text)
