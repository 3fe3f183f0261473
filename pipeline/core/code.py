"""The code a stage runs, as a digest, so that a change to a stage's logic re-runs it.

Why: a cache key over (name, version, config, inputs) serves old outputs after someone
edits a stage and forgets to bump its version (DVC users meet the same bug). The digest
covers the source of the stage's module and of every project module it imports,
transitively (``pipeline.*`` and ``schemas.*``, package ``__init__`` files included);
the explicit version stays for what the code cannot show (a changed engine, a data
file). A compiled module (mypyc) is digested by its source, which its build recorded
and the import guard checks (``pipeline/collect/_compiled.py``).

Imports are found by a regular expression over the source, not by ``ast``: parsing the
project costs ~0.5 s a run, scanning it ~10 ms. An import the expression finds in a
string or comment only adds a file to the digest: it errs toward re-running.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from functools import cache, lru_cache
from pathlib import Path

PROJECT_PACKAGES = ("pipeline", "schemas")
_PROJECT_ROOT = Path(__file__).resolve().parents[2]
_IMPORT = re.compile(
    rb"^[ \t]*(?:from[ \t]+(\.*[\w.]*)[ \t]+import[ \t]+(\([^)]*\)|[^\n#]*)|import[ \t]+([\w., \t]+))",
    re.MULTILINE,
)
_NAME = re.compile(r"[A-Za-z_]\w*")


@lru_cache(maxsize=64)
def code_digest(module: str) -> str:
    """sha256 (first 16 hex digits) over (module name, sha256 of its source) for
    ``module`` and the project modules it imports, sorted by name."""
    digest = hashlib.sha256()
    for name, path in sorted(code_files(module).items()):
        digest.update(name.encode() + b"\0" + _source_digest(path))
    return digest.hexdigest()[:16]


def clear_caches() -> None:
    """Forget every digest and scan, as a new process would (tests edit sources)."""
    code_digest.cache_clear()
    _source_digest.cache_clear()
    _imports.cache_clear()


# Stages share most of their imports (pipeline.core...): each file is read, hashed and
# scanned once per process, not once per stage (eight stages: ~0.2 s of every run).
@cache
def _source_digest(path: Path) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest()


def code_files(module: str) -> dict[str, Path]:
    """``module``'s source and its project imports' sources, by module name."""
    found: dict[str, Path] = {}
    pending = [module]
    while pending:
        name = pending.pop()
        if name in found:
            continue
        path = _source(name, root=name == module)
        if path is None:
            continue
        found[name] = path
        pending.extend(_parents(name))
        pending.extend(_imports(name, path))
    return found


def _source(name: str, root: bool) -> Path | None:
    """A project module's ``.py`` (also when a compiled one is what gets imported); the
    stage's own module wherever it lives; nothing for third-party modules."""
    if name.split(".", 1)[0] in PROJECT_PACKAGES:
        base = _PROJECT_ROOT.joinpath(*name.split("."))
        for path in (base.with_suffix(".py"), base / "__init__.py"):
            if path.is_file():
                return path
        return None
    if not root:
        return None
    spec = importlib.util.find_spec(name)
    origin = spec.origin if spec is not None else None
    return Path(origin) if origin is not None and origin.endswith(".py") else None


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


@cache
def _imports(name: str, path: Path) -> tuple[str, ...]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: list[str] = []
    for source, names, plain in _IMPORT.findall(path.read_bytes()):
        if plain:
            out += [part.strip().split()[0] for part in plain.decode("utf-8", "replace").split(",") if part.strip()]
            continue
        base = _absolute(source.decode("utf-8", "replace"), package)
        if base is None:
            continue
        out.append(base)
        # ``from pkg import mod``: mod may be a module of its own
        out += [f"{base}.{n}" for n in _NAME.findall(names.decode("utf-8", "replace")) if n != "import"]
    return tuple(out)


def _absolute(source: str, package: str) -> str | None:
    """``from ..x import`` resolved against ``package``; None when it climbs out."""
    dots = len(source) - len(source.lstrip("."))
    if dots == 0:
        return source
    parts = package.split(".") if package else []
    if dots - 1 > len(parts):
        return None
    base = parts[: len(parts) - (dots - 1)]
    rest = source[dots:]
    return ".".join([*base, rest] if rest else base) or None
