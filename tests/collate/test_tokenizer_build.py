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


_LOAD_AND_REPORT = """
import json, sys
from pathlib import Path
from pipeline.collate.tokenizer import load_tokenizer
tokenizer = load_tokenizer(Path(sys.argv[1]))
messages = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "hi"}]
ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)["input_ids"]
print(json.dumps({"torch": "torch" in sys.modules, "class": type(tokenizer).__name__, "ids": ids}))
"""


def test_the_offline_tokenizer_loads_as_autotokenizer_would_without_torch(qwen_folder: Path) -> None:
    """Collate's processes load the generic fast tokenizer class directly: the class and
    ids AutoTokenizer gives, without importing torch (hundreds of MB in each process)."""
    import json

    from transformers import AutoTokenizer

    done = subprocess.run([sys.executable, "-c", _LOAD_AND_REPORT, str(qwen_folder)],
                          cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["torch"] is False
    reference = AutoTokenizer.from_pretrained(str(qwen_folder), local_files_only=True)
    messages = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "hi"}]
    assert report["class"] == type(reference).__name__
    assert report["ids"] == reference.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)["input_ids"]
    assert report["ids"][:11] == [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198]
