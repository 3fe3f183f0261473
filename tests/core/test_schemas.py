"""Checked-in JSON Schemas must match the pydantic models they come from."""

from __future__ import annotations

import json

import jsonschema

from schemas.generate import OUT, boundary_models, render


def test_checked_in_schemas_match_models() -> None:
    models = boundary_models()
    assert "stage_receipt" in models and "run_summary" in models
    on_disk = {p.stem for p in OUT.glob("*.json")}
    assert on_disk == set(models), "run `python -m schemas.generate`"
    for name, model in models.items():
        assert (OUT / f"{name}.json").read_text() == render(model), f"{name}: run `python -m schemas.generate`"


def test_a_real_summary_validates_against_its_schema(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pipeline.core.runner import Runner, RunOptions
    from tests.core import toy

    result = Runner(toy.STAGES, RunOptions(root=tmp_path, sources=[])).run()
    schema = json.loads((OUT / "run_summary.json").read_text())
    jsonschema.validate(json.loads(result.summary.model_dump_json()), schema)
