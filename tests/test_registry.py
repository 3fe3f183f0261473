"""The stage registry: its dependency table matches the stages, and loads only what a run needs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.errors import TracelakeError
from pipeline.core.runner import closure
from pipeline.stages.registry import STAGE_NAMES, load_stages

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_the_table_gives_the_closure_the_stages_declare(name: str) -> None:
    every = load_stages()
    assert [s.name for s in every] == list(STAGE_NAMES)
    assert [s.name for s in load_stages([name])] == [s.name for s in closure(every, [name])]


def test_unknown_stage_is_a_clear_error() -> None:
    with pytest.raises(TracelakeError, match="unknown stage 'colect'; known: collect, score"):
        load_stages(["colect"])


def test_a_collect_run_imports_no_export_code() -> None:
    code = (
        "import sys; from pipeline.stages.registry import load_stages; load_stages(['collect']);"
        "print(sorted(m for m in sys.modules if m.startswith(('pipeline.stages.', 'pipeline.export', 'polars'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['pipeline.stages.collect', 'pipeline.stages.registry']"


def test_collect_workers_take_the_config_field_for_field() -> None:
    """The workers' settings dataclass (pydantic-free, compiled) and the stage's config
    model list the same fields: the config is the one source, the settings its copy."""
    import dataclasses

    from pipeline.collect.tasks import CollectSettings
    from pipeline.stages.collect import CollectConfig, _settings

    assert [f.name for f in dataclasses.fields(CollectSettings)] == list(CollectConfig.model_fields)
    config = CollectConfig(max_line_bytes=123)
    assert _settings(config) == CollectSettings(**config.model_dump())
