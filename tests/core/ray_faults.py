"""Faults planted in Ray workers by the tests (a ``worker_process_setup_hook``).

Nothing in tracelake reads these: the hook wraps collect's parse in each worker the
test cluster starts, and acts on files in the folder ``TRACELAKE_TEST_FAULTS`` names:
- ``kill-once``: the first worker to claim it is killed with SIGKILL mid-task;
- ``jitter``: every unit (collect's parse, score's partitions) sleeps a random few ms
  first, so units finish out of order;
- ``break-all``: every parse raises (a node that cannot read the root, say);
- ``other-code``: the worker's installed collect code reads as another version;
and a source file named ``poison*.jsonl`` makes every parse that includes it raise.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import Any

FAULTS_ENV = "TRACELAKE_TEST_FAULTS"


def install() -> None:
    import pipeline.core.code as code
    import pipeline.export.prepare as prepare
    import pipeline.stages.collect as collect

    original = collect.build_batch
    conversations = prepare._conversations
    digest = code.code_digest

    def other_digest(module: str) -> str:
        if (Path(os.environ[FAULTS_ENV]) / "other-code").exists():
            return "0" * 32
        return digest(module)

    def faulty(batch: list[Any]) -> list[dict[str, Any]]:
        folder = Path(os.environ[FAULTS_ENV])
        if (folder / "break-all").exists():
            raise OSError(f"cannot read {batch[0].path}")
        if (folder / "jitter").exists():
            time.sleep(random.random() * 0.05)
        if any(Path(task.display_path).name.startswith("poison") for task in batch):
            raise RuntimeError("parser crashed on a poisoned file")
        claim = folder / f"killed-{os.getpid()}"
        try:
            os.rename(folder / "kill-once", claim)  # atomic: one worker wins
        except FileNotFoundError:
            pass
        else:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(batch)

    def jittered(branches: Any, piece: Any) -> Any:
        if (Path(os.environ[FAULTS_ENV]) / "jitter").exists():
            time.sleep(random.random() * 0.05)
        return conversations(branches, piece)

    collect.build_batch = faulty
    prepare._conversations = jittered
    code.code_digest = other_digest
