"""A byte-level BPE tokenizer of an exact vocab size, built without training data.

Benchmarks feed token ids, so what the merges are does not matter; what matters is that the
tokenizer is a real `tokenizers` BPE that transformers, vLLM and llama.cpp's converter all load, that
it has exactly the model's vocab size, and that it is the same on every machine. So the merges are
enumerated, not learned:

    ids 0..2      <unk> <s> </s>               (Llama-2 layout: bos 1, eos 2)
    ids 3..258    the 256 byte-level symbols
    ids 259..     "Ġe" "Ġt" ... "et" ... "Ġet" ... breadth first: every merge joins an existing
                  token and one lowercase letter, so each merge's parts exist before it
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
BOS_TOKEN_ID = 1
EOS_TOKEN_ID = 2
_LETTERS = "etaoinsrhldcumfpgwybvkxjqz"  # English letter frequency: short, common tokens first
_SPACE = "Ġ"  # how the byte-level alphabet spells a space


def _merges(count: int) -> list[tuple[str, str]]:
    merges: list[tuple[str, str]] = []
    parents = [_SPACE, *_LETTERS]
    while True:
        children = []
        for parent in parents:
            for letter in _LETTERS:
                if len(merges) == count:
                    return merges
                merges.append((parent, letter))
                children.append(parent + letter)
        parents = children


def byte_level_bpe(vocab_size: int) -> Tokenizer:
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    num_base = len(SPECIAL_TOKENS) + len(alphabet)
    if vocab_size <= num_base:
        raise ValueError(f"vocab_size={vocab_size}: expected more than {num_base} (specials + 256 bytes)")
    merges = _merges(vocab_size - num_base)
    tokens = [*SPECIAL_TOKENS, *alphabet, *(a + b for a, b in merges)]
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tokenizer


def save_tokenizer(directory: Path, vocab_size: int, model_max_length: int) -> None:
    """Writes tokenizer.json and the tokenizer_config.json that lets AutoTokenizer load it."""
    byte_level_bpe(vocab_size).save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": SPECIAL_TOKENS[0],
        "bos_token": SPECIAL_TOKENS[BOS_TOKEN_ID],
        "eos_token": SPECIAL_TOKENS[EOS_TOKEN_ID],
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
