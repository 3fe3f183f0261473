"""Write the JSON Schemas of every boundary model into schemas/json/.

Run ``python -m schemas.generate``; a test fails when the checked-in files drift from
the models.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import sys
from pathlib import Path

from pydantic import BaseModel

OUT = Path(__file__).parent / "json"
MODEL_MODULES = ("schemas.receipt", "schemas.records", "schemas.datasets", "schemas.drift", "schemas.sql")


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def boundary_models() -> dict[str, type[BaseModel]]:
    models: dict[str, type[BaseModel]] = {}
    for module_name in MODEL_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseModel)
                and obj.__module__ == module_name
                and obj.__name__ == name
                and not name.startswith("_")  # private bases, not boundaries
            ):
                models[_snake(name)] = obj
    from pipeline.stages.registry import STAGES

    for stage in STAGES:
        models[f"config_{stage.name.replace('-', '_')}"] = stage.config_model
    return dict(sorted(models.items()))


def render(model: type[BaseModel]) -> str:
    return json.dumps(model.model_json_schema(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    OUT.mkdir(exist_ok=True)
    wanted = {f"{name}.json": render(model) for name, model in boundary_models().items()}
    for stale in OUT.glob("*.json"):
        if stale.name not in wanted:
            stale.unlink()
    for filename, text in wanted.items():
        (OUT / filename).write_text(text)
    print(f"wrote {len(wanted)} schemas to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
