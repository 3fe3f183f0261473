"""Compile the collect parser with mypyc.

The per-line parser is plain typed Python; compiled by mypyc it needs about 17% less
CPU (0.67 s against 0.81 s for the 50 MB bench corpus, best of 7). Compiling is optional:
``make setup`` tries it, and without a C compiler everything runs from the sources,
only slower. ``pipeline.collect._compiled`` decides at import which code runs.

    python -m pipeline.collect.native build    # compile (what `make native` runs)
    python -m pipeline.collect.native status   # compiled, stale, disabled or absent
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.collect._compiled import (
    HERE,
    MODULES,
    PACKAGE,
    STAMP,
    compiled_files,
    source_digest,
    status,
)

_GROUP = "_native"  # the shared library: pipeline/collect/_native__mypyc.*.so


def build() -> None:
    """Compile ``MODULES`` in place with mypyc, then record the sources they came from."""
    from mypyc.build import mypycify
    from setuptools import setup

    root = HERE.parents[1]
    for stale in compiled_files():
        stale.unlink()
    STAMP.unlink(missing_ok=True)
    sources = {name: source_digest(name) for name in MODULES}
    cwd = Path.cwd()
    os.chdir(root)  # mypyc names modules by their path from here
    try:
        paths = [f"pipeline/collect/{name}.py" for name in MODULES]
        setup(
            name="tracelake-native",
            packages=[],
            py_modules=[],
            ext_modules=mypycify(paths, group_name=f"{PACKAGE}.{_GROUP}", opt_level="3"),
            script_args=["build_ext", "--inplace", "--build-temp", "build/native", "--build-lib", "build/native"],
        )
    finally:
        os.chdir(cwd)
    STAMP.write_text(json.dumps({"python": sys.implementation.cache_tag, "sources": sources}, indent=1) + "\n")
    precompile_screens()


def precompile_screens() -> None:
    """The redaction and error screens, compiled once here rather than by every run
    (~0.15 s of a collect's start), with the catalogue's patterns and their JSON-text
    rewrites (so a run neither loads the rules nor rewrites them to find its screens). A
    screen whose pattern differs at run time (another home directory) is compiled then."""
    import shutil

    from pipeline.collect import errors, redact
    from pipeline.secrets import catalogue

    if not redact.hyperscan_available():
        return
    shutil.rmtree(redact.PRECOMPILED_SCREENS, ignore_errors=True)
    catalogue.save_patterns(redact.PRECOMPILED_SCREENS)
    redact.save_json_secrets(redact.PRECOMPILED_SCREENS)
    for fold_home in (True, False):
        redact.prepare_screens(fold_home, redact.PRECOMPILED_SCREENS)
    errors.prepare_screen(redact.PRECOMPILED_SCREENS)


def main(argv: Sequence[str]) -> int:
    command = argv[0] if argv else "status"
    if command == "build":
        build()
        print(f"collect modules: {status()}")
        return 0
    if command == "status":
        print(status())
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
