"""Which collect modules run compiled, and the guard that keeps compiled code honest.

``pipeline.collect.native`` compiles the parser's modules with mypyc (a C extension per
module, from the unchanged typed sources). A compiled module that no longer matches its
source would silently run old code, so the build records each source's digest, and
importing ``pipeline.collect`` loads every one of them from its source whenever a
digest differs (or ``TRACELAKE_PURE_PYTHON=1``).
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

PACKAGE = "pipeline.collect"
HERE = Path(__file__).resolve().parent
# The modules a collect worker spends its time in (all of them typed throughout).
MODULES = ("claude_code", "codex", "content", "errors", "lines", "redact", "shard")
STAMP = HERE / "_native.json"


def source_digest(name: str) -> str:
    return hashlib.sha256((HERE / f"{name}.py").read_bytes()).hexdigest()


def compiled_files() -> list[Path]:
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return sorted(p for p in HERE.iterdir() if p.name.endswith(suffixes))


def status() -> str:
    """'compiled' (in use), 'stale' (sources changed since), 'disabled' or 'absent'."""
    if not compiled_files():
        return "absent"
    if os.environ.get("TRACELAKE_PURE_PYTHON") == "1":
        return "disabled"
    try:
        recorded = json.loads(STAMP.read_text())
    except (OSError, ValueError):
        return "stale"
    current = {name: source_digest(name) for name in MODULES}
    if recorded.get("sources") != current or recorded.get("python") != sys.implementation.cache_tag:
        return "stale"
    return "compiled"


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the compiled modules' names in their ``.py`` files (ahead of the ``.so``)."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        prefix, _, module = name.rpartition(".")
        if prefix != PACKAGE or module not in MODULES:
            return None
        return importlib.util.spec_from_file_location(name, HERE / f"{module}.py")


def guard() -> None:
    """Called when ``pipeline.collect`` is imported, before any of its modules."""
    state = status()
    if state in ("compiled", "absent"):
        return
    if state == "stale":
        print(
            "tracelake: compiled collect modules are older than their sources; running the "
            "sources (make native rebuilds them)",
            file=sys.stderr,
        )
    if not any(isinstance(f, _SourceFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceFinder())
