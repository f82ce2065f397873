"""Registers the pre-tokenizer of our benchmark checkpoints with llama.cpp's converter.

convert_hf_to_gguf.py identifies a BPE tokenizer by hashing the ids it gives for a fixed text, and
refuses hashes it does not list. Our presets' tokenizer is a plain GPT-2 style byte-level BPE, so its
hash is added, mapped to llama.cpp's "gpt-2" pre-tokenizer, in the cache copy of the converter only.

usage: python register_pretokenizer.py CONVERTER_BASE_PY MODEL_DIR...   (the llama venv's python)
"""

import ast
import sys
from hashlib import sha256
from pathlib import Path

from transformers import AutoTokenizer

MARKER = "        if res is None:\n"


def check_text(source: str) -> str:
    tree = ast.parse(source)
    function = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "get_vocab_base_pre")
    return next(
        n.value.value for n in function.body
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "chktxt"
    )


def main(base_py: Path, model_dirs: list[Path]) -> None:
    source = base_py.read_text()
    text = check_text(source)
    for model_dir in model_dirs:
        digest = sha256(str(AutoTokenizer.from_pretrained(model_dir).encode(text)).encode()).hexdigest()
        if f'"{digest}"' in source:
            continue
        entry = f'        if chkhsh == "{digest}":\n            # kvserve bench presets\n            res = "gpt-2"\n'
        start = source.index("def get_vocab_base_pre")
        at = source.index(MARKER, start)
        source = source[:at] + entry + source[at:]
        print(f"registered {digest} ({model_dir.name}) as gpt-2")
    base_py.write_text(source)


if __name__ == "__main__":
    main(Path(sys.argv[1]), [Path(a) for a in sys.argv[2:]])
