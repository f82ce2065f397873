"""TokenizerParts: the pieces a tokenizer is built from when a checkpoint carries its own (GGUF).

Kept apart from the GGUF reader so that loading a Hugging Face directory never imports `gguf`.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Tokenizer


@dataclass
class TokenizerParts:
    """What kvserve.tokenizer.Tokenizer is built from: Tokenizer(backend, chat_template=..., ...)."""

    backend: Tokenizer
    chat_template: str | None
    bos_token: str | None
    eos_token: str | None
    add_bos_token: bool
