"""The offline Qwen tokenizer builds the same bytes whatever the process imported first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# transformers' lazy package can hold, as its attribute ``convert_slow_tokenizer``, the
# function of that name instead of the submodule, depending on what was imported in
# which order (a test run once left it so); the build must still find the converter.
_BUILD_AFTER_THE_FUNCTION_WAS_READ = """
import sys
from pathlib import Path
import transformers
import transformers.convert_slow_tokenizer as module
transformers.convert_slow_tokenizer = module.convert_slow_tokenizer  # the state that order leaves
from pipeline.collate.tokenizer import build_offline_qwen
build_offline_qwen(Path(sys.argv[1]))
"""


def test_the_build_does_not_depend_on_what_was_imported_first(qwen_folder: Path, tmp_path: Path) -> None:
    built = subprocess.run([sys.executable, "-c", _BUILD_AFTER_THE_FUNCTION_WAS_READ, str(tmp_path / "q")],
                           cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stderr[-2000:]
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (tmp_path / "q" / name).read_bytes() == (qwen_folder / name).read_bytes(), name
