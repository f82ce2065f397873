"""A `tokenizers.Tokenizer` rebuilt from a GGUF file's tokenizer metadata.

GGUF stores a byte-level BPE (tokenizer.ggml.model = "gpt2") as its token strings, merges and token
types, and names the pre-tokenizer (tokenizer.ggml.pre) by the model family that defined it: the
splitting rules differ, e.g. SmolLM splits every digit apart, Llama 3 groups digits by three.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGUFReader, TokenType
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from kvserve.loader.gguf_config import gguf_value

# The GPT-4-style split used by Llama 3 and (with single digits) Qwen2.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")


def _gpt2():
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _split_then_bytes(pattern: str):
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


# tokenizer.ggml.pre -> the equivalent `tokenizers` pre-tokenizer
PRE_TOKENIZERS = {
    "default": _gpt2,
    "gpt-2": _gpt2,
    "smollm": lambda: pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _gpt2()]),
    "llama-bpe": lambda: _split_then_bytes(_LLAMA3_SPLIT),
    "qwen2": lambda: _split_then_bytes(_QWEN2_SPLIT),
}


@dataclass
class TokenizerParts:
    """What kvserve.tokenizer.Tokenizer is built from: Tokenizer(backend, chat_template=..., ...)."""

    backend: Tokenizer
    chat_template: str | None
    bos_token: str | None
    eos_token: str | None
    add_bos_token: bool


def tokenizer_from_gguf(reader: GGUFReader) -> TokenizerParts:
    source = reader.data.filename
    kind = gguf_value(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"{source}: GGUF tokenizer model {kind!r} is not supported; supported: 'gpt2' (byte-level BPE)")
    pre = gguf_value(reader, "tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise ValueError(f"{source}: GGUF pre-tokenizer {pre!r} is not supported; supported: {', '.join(PRE_TOKENIZERS)}")
    tokens = gguf_value(reader, "tokenizer.ggml.tokens")
    types = np.asarray(gguf_value(reader, "tokenizer.ggml.token_type", [TokenType.NORMAL] * len(tokens)))
    merges = [tuple(m.split(" ", 1)) for m in gguf_value(reader, "tokenizer.ggml.merges", [])]

    # Llama 3's own tokenizer.json looks a whole word up before merging (ignore_merges).
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, ignore_merges=pre == "llama-bpe")
    backend = Tokenizer(bpe)
    if pre == "qwen2":
        backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = PRE_TOKENIZERS[pre]()
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    special = (TokenType.CONTROL, TokenType.USER_DEFINED)
    backend.add_tokens([AddedToken(tokens[i], special=types[i] == TokenType.CONTROL, normalized=False)
                        for i in np.flatnonzero(np.isin(types, special))])

    def token(key):
        token_id = gguf_value(reader, f"tokenizer.ggml.{key}_token_id", None)
        return tokens[token_id] if token_id is not None else None

    return TokenizerParts(
        backend=backend,
        chat_template=gguf_value(reader, "tokenizer.chat_template", None),
        bos_token=token("bos"),
        eos_token=token("eos"),
        add_bos_token=bool(gguf_value(reader, "tokenizer.ggml.add_bos_token", False)),
    )
