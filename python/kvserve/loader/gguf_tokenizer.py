"""A `tokenizers.Tokenizer` rebuilt from a GGUF file's tokenizer metadata.

tokenizer.ggml.model names the kind:
  "gpt2"   byte-level BPE (SmolLM, Llama 3, Qwen): token strings, merges, token types, and the
           pre-tokenizer (tokenizer.ggml.pre) named after the model family that defined it, whose
           splitting rules differ: SmolLM splits every digit apart, Llama 3 groups digits by three.
  "llama"  SentencePiece BPE (Llama 2, Mistral, TinyLlama): "▁" marks a space, characters outside
           the vocabulary fall back to <0xNN> byte tokens, and a piece's score ranks its merge.
"""

from __future__ import annotations

import numpy as np
from gguf import GGUFReader, TokenType
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from kvserve.loader.gguf_config import gguf_value
from kvserve.loader.tokenizer_parts import TokenizerParts

# The GPT-4-style split used by Llama 3 and (with single digits) Qwen2.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")


_QWEN2_SPLIT_ALIASES = ("qwen2", "deepseek-r1-qwen")
_LLAMA3_SPLIT_ALIASES = ("llama-bpe", "llama3", "llama-v3", "smaug-bpe", "dbrx", "falcon3")


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
    **{name: lambda: _split_then_bytes(_LLAMA3_SPLIT) for name in _LLAMA3_SPLIT_ALIASES},
    **{name: lambda: _split_then_bytes(_QWEN2_SPLIT) for name in _QWEN2_SPLIT_ALIASES},
}


def tokenizer_from_gguf(reader: GGUFReader) -> TokenizerParts:
    kind = gguf_value(reader, "tokenizer.ggml.model")
    tokens = gguf_value(reader, "tokenizer.ggml.tokens")
    types = np.asarray(gguf_value(reader, "tokenizer.ggml.token_type", [TokenType.NORMAL] * len(tokens)))
    if kind == "gpt2":
        backend = _byte_level_bpe(reader, tokens)
    elif kind == "llama":
        backend = _sentencepiece_bpe(reader, tokens, types)
    else:
        raise ValueError(f"{reader.data.filename}: GGUF tokenizer model {kind!r} is not supported; "
                         f"supported: 'gpt2' (byte-level BPE), 'llama' (SentencePiece BPE)")
    backend.add_tokens([AddedToken(tokens[i], special=types[i] != TokenType.USER_DEFINED, normalized=False)
                        for i in np.flatnonzero(np.isin(types, _ADDED_TYPES))])

    def token(key):
        token_id = gguf_value(reader, f"tokenizer.ggml.{key}_token_id", None)
        return tokens[token_id] if token_id is not None else None

    return TokenizerParts(
        backend=backend,
        chat_template=gguf_value(reader, "tokenizer.chat_template", None),
        bos_token=token("bos"),
        eos_token=token("eos"),
        add_bos_token=bool(gguf_value(reader, "tokenizer.ggml.add_bos_token", kind == "llama")),
    )


# Matched whole in the text; all but USER_DEFINED ones are special (skipped when decoding).
_ADDED_TYPES = (TokenType.CONTROL, TokenType.USER_DEFINED, TokenType.UNKNOWN)


def _byte_level_bpe(reader: GGUFReader, tokens: list[str]) -> Tokenizer:
    pre = gguf_value(reader, "tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise ValueError(f"{reader.data.filename}: GGUF pre-tokenizer {pre!r} is not supported; "
                         f"supported: {', '.join(PRE_TOKENIZERS)}")
    merges = [tuple(m.split(" ", 1)) for m in gguf_value(reader, "tokenizer.ggml.merges", [])]
    # Llama 3's own tokenizer.json looks a whole word up before merging (ignore_merges).
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                     ignore_merges=pre in _LLAMA3_SPLIT_ALIASES)
    backend = Tokenizer(bpe)
    if pre in _QWEN2_SPLIT_ALIASES:
        backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = PRE_TOKENIZERS[pre]()
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return backend


def _sentencepiece_bpe(reader: GGUFReader, tokens: list[str], types: np.ndarray) -> Tokenizer:
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in gguf_value(reader, "tokenizer.ggml.merges", [])]
    if not merges:
        scores = gguf_value(reader, "tokenizer.ggml.scores", None)
        if scores is None:
            raise ValueError(f"{reader.data.filename}: a SentencePiece GGUF tokenizer needs "
                             f"tokenizer.ggml.scores or tokenizer.ggml.merges, found neither")
        merges = _merges_from_scores(tokens, scores, types)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True))
    add_space_prefix = bool(gguf_value(reader, "tokenizer.ggml.add_space_prefix", True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first" if add_space_prefix else "never", split=False)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    backend.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if add_space_prefix else []))
    return backend


def _merges_from_scores(tokens: list[str], scores, types: np.ndarray) -> list[tuple[str, str]]:
    """SentencePiece merges any two adjacent pieces whose concatenation is a piece, best score first:
    every (left, right) split of a normal piece into two pieces, ranked by the joined piece's score."""
    vocab = {t: i for i, t in enumerate(tokens)}
    ranked = []
    for piece_id in np.flatnonzero(types == TokenType.NORMAL):
        piece = tokens[piece_id]
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((-scores[piece_id], vocab[left], vocab[right], left, right))
    return [(left, right) for *_, left, right in sorted(ranked)]
