"""Tokenizer: a `tokenizers.Tokenizer` plus what a model directory says about it (special tokens,
whether a BOS token is prepended, the chat template).

Encoding and decoding give the same ids and text as transformers' tokenizer loaded from the same
directory (fast-tokenizer semantics: no clean_up_tokenization_spaces). The calls code written for a
transformers tokenizer makes most (`tok(text)["input_ids"]`, `len(tok)`, `batch_decode`,
`convert_ids_to_tokens`, `pad_token_id`) work the same here; apply_chat_template returns text unless
tokenize=True (transformers' default is ids).
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import tokenizers
from tokenizers import processors

from kvserve.chat_template import render_chat_template
from kvserve.text_stream import DecodeTables


def _token_content(value) -> str | None:
    """tokenizer_config.json writes special tokens as a string or as {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value


class Encoding(dict):
    """What calling a tokenizer returns, as transformers' BatchEncoding does: {"input_ids",
    "attention_mask"}, each also an attribute (`tok(text).input_ids`)."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _pick_template(value) -> str | None:
    """tokenizer_config.json's chat_template: a string, or a list of {"name", "template"}."""
    if isinstance(value, list):
        named = {entry.get("name"): entry.get("template") for entry in value}
        return named.get("default")
    return value


class Tokenizer:
    """Text <-> token ids for one model.

    backend: the `tokenizers.Tokenizer` (tokenizer.json, or one rebuilt from GGUF metadata).
    chat_template: Jinja source, or None when the model has none.
    bos_token, eos_token, pad_token: the special tokens' text (must be in the backend's vocabulary);
        their ids are None when the model has none.
    add_bos_token: None keeps the backend's post-processor as it is; True / False replaces it (in
        place) with one that does / does not prepend bos_token, for backends built without one
        (GGUF metadata carries the flag).
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        chat_template: str | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        add_bos_token: bool | None = None,
    ):
        self.backend = backend
        self.chat_template = chat_template
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.pad_token = pad_token
        self.bos_token_id = self._token_id("bos_token", bos_token)
        self.eos_token_id = self._token_id("eos_token", eos_token)
        self.pad_token_id = self._token_id("pad_token", pad_token)
        if add_bos_token is not None:
            if add_bos_token and bos_token is None:
                raise ValueError("add_bos_token=True needs a bos_token")
            single = f"{bos_token}:0 $A:0" if add_bos_token else "$A:0"
            pair = f"{single} {bos_token}:1 $B:1" if add_bos_token else "$A:0 $B:1"
            special = [(bos_token, self.bos_token_id)] if add_bos_token else []
            self.backend.post_processor = processors.TemplateProcessing(
                single=single, pair=pair, special_tokens=special
            )

    def _token_id(self, name: str, token: str | None) -> int | None:
        if token is None:
            return None
        token_id = self.backend.token_to_id(token)
        if token_id is None:
            raise ValueError(f"{name} {token!r} is not in the tokenizer's vocabulary")
        return token_id

    @classmethod
    def from_pretrained(cls, model_dir) -> Tokenizer:
        """Load tokenizer.json, tokenizer_config.json (special tokens, added tokens, chat_template)
        and chat_template.jinja (which wins over the config's template). Whether a BOS token is
        prepended is up to tokenizer.json's post-processor: transformers (5.x) ignores the config's
        add_bos_token too."""
        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise ValueError(f"no tokenizer.json in {model_dir}: kvserve loads Hugging Face fast tokenizers")
        backend = tokenizers.Tokenizer.from_file(str(path))
        config_path = model_dir / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        # Tokens the config declares but tokenizer.json lacks are added, as transformers does.
        for token_id, entry in sorted(config.get("added_tokens_decoder", {}).items(), key=lambda kv: int(kv[0])):
            if backend.token_to_id(entry["content"]) is None:
                token = tokenizers.AddedToken(
                    entry["content"],
                    single_word=entry.get("single_word", False),
                    lstrip=entry.get("lstrip", False),
                    rstrip=entry.get("rstrip", False),
                    normalized=entry.get("normalized", False),
                    special=entry.get("special", True),
                )
                backend.add_tokens([token])
        bos_token = _token_content(config.get("bos_token"))
        eos_token = _token_content(config.get("eos_token"))
        pad_token = _token_content(config.get("pad_token"))
        for token in (bos_token, eos_token, pad_token):
            if token is not None and backend.token_to_id(token) is None:
                backend.add_special_tokens([token])
        template_path = model_dir / "chat_template.jinja"
        chat_template = (
            template_path.read_text(encoding="utf-8")
            if template_path.is_file()
            else _pick_template(config.get("chat_template"))
        )
        return cls(
            backend,
            chat_template=chat_template,
            bos_token=bos_token,
            eos_token=eos_token,
            pad_token=pad_token,
        )

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included (transformers' len(tokenizer))."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    @cached_property
    def special_token_ids(self) -> frozenset[int]:
        """Ids of the special added tokens (those skip_special_tokens leaves out)."""
        return frozenset(i for i, token in self.backend.get_added_tokens_decoder().items() if token.special)

    @cached_property
    def decode_tables(self) -> DecodeTables:
        """Per-token pieces for incremental detokenization (built on first use)."""
        return DecodeTables.build(self.backend, self.special_token_ids)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; add_special_tokens applies the post-processor (e.g. the BOS token).
        Encode a rendered chat template with add_special_tokens=False: the template wrote them."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_pair(self, text: str, pair: str, add_special_tokens: bool = True) -> list[int]:
        """The ids of a pair of texts, as transformers' tokenizer(text, text_pair) gives them (a
        cross-encoder's input)."""
        return self.backend.encode(text, pair, add_special_tokens=add_special_tokens).ids

    def decode(self, token_ids, skip_special_tokens: bool = False) -> str:
        """The text of `token_ids`; invalid UTF-8 becomes U+FFFD, unknown ids are ignored."""
        return self.backend.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    # ---- transformers' names, for code written against a transformers tokenizer --------------------

    def __call__(self, text: str | list[str], add_special_tokens: bool = True) -> Encoding:
        """{"input_ids", "attention_mask"} of a text, or of each of a list of texts (no padding)."""
        if isinstance(text, str):
            ids = self.encode(text, add_special_tokens=add_special_tokens)
            return Encoding(input_ids=ids, attention_mask=[1] * len(ids))
        if not isinstance(text, (list, tuple)) or not all(isinstance(t, str) for t in text):
            raise ValueError(f"text must be a str or a list of str, got {type(text).__name__}")
        batch = [e.ids for e in self.backend.encode_batch(list(text), add_special_tokens=add_special_tokens)]
        return Encoding(input_ids=batch, attention_mask=[[1] * len(ids) for ids in batch])

    def batch_decode(self, sequences, skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(ids, skip_special_tokens=skip_special_tokens) for ids in sequences]

    def convert_ids_to_tokens(self, ids: int | list[int]) -> str | None | list[str | None]:
        """The vocabulary's token strings (byte-level: "Ġ" for a space); None for an unknown id."""
        if isinstance(ids, int):
            return self.backend.id_to_token(ids)
        return [self.backend.id_to_token(i) for i in ids]

    def apply_chat_template(
        self,
        messages,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        *,
        chat_template: str | None = None,
        tokenize: bool = False,
        return_dict: bool = False,
        **template_kwargs,
    ) -> str | list[int] | Encoding:
        """Render a conversation ([{"role", "content"}, ...]; content a string or a list of text
        parts) into the prompt text. add_generation_prompt opens an assistant turn;
        continue_final_message leaves the last message open instead. `chat_template` overrides the
        model's; template_kwargs (tools, documents, ...) become template variables.

        Unlike transformers, the defaults are tokenize=False (the text: what kvserve's callers
        want) and add_generation_prompt=True. tokenize=True returns the text's token ids (encoded
        without adding special tokens: the template wrote them), as a list, or with return_dict=True
        as {"input_ids", "attention_mask"} (transformers 5's default form)."""
        template = chat_template if chat_template is not None else self.chat_template
        if template is None:
            raise ValueError("this tokenizer has no chat template: pass chat_template=")
        variables = {name: value for name, value in (("bos_token", self.bos_token), ("eos_token", self.eos_token))
                     if value is not None}
        variables.update(template_kwargs)
        text = render_chat_template(
            template,
            messages,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            variables=variables,
        )
        if not tokenize:
            return text
        return self(text, add_special_tokens=False) if return_dict else self.encode(text, add_special_tokens=False)
