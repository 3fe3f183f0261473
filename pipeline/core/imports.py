"""Keep optional heavy imports out of processes that never use them.

pyarrow imports pandas (~0.3-0.4 s) the first time Python objects become an Arrow array,
only to check whether they are pandas objects. The CLI and the collect workers never use
pandas, so they make ``import pandas`` fail as if it were not installed.
"""

from __future__ import annotations

import importlib.abc
import sys
from typing import Any


class _NoPandas(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError("this tracelake process does not use pandas", name=name)
        return None


def block_pandas() -> None:
    """Only for processes that own their imports (console script, pool workers)."""
    if "pandas" not in sys.modules and not any(isinstance(f, _NoPandas) for f in sys.meta_path):
        sys.meta_path.insert(0, _NoPandas())


def allow_pandas() -> None:
    """For a stage that imports a library that needs it (transformers' model classes)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _NoPandas)]


def quiet_transformers() -> None:
    """No progress bars or warnings from transformers on our console: the run's own
    progress is shown by the runner."""
    from transformers.utils import logging

    hush: Any = logging  # untyped library functions
    hush.disable_progress_bar()
    hush.set_verbosity_error()
    import warnings

    # peft asks transformers a question transformers has renamed: its deprecation notice
    # says nothing about the run.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


class LazyModule:
    """A module imported on first use: polars costs ~0.11 s to import, and a stage that
    is a cache hit never touches it (a no-op run imports every stage). Modules write::

        if TYPE_CHECKING:
            import polars as pl
        else:
            pl = LazyModule("polars")

    Attribute access goes through ``importlib.import_module``, so the first use is
    thread-safe (the import lock) and later ones cost a dictionary look-up.
    """

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(importlib.import_module(self._name), attribute)

    def __repr__(self) -> str:
        return f"LazyModule({self._name!r})"
