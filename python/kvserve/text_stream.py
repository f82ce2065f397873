"""Token ids -> text, a few tokens at a time, never emitting text that a later token could change.

Llama-family tokenizers decode in one of two ways, both a left-to-right fold over per-token pieces,
so each step costs a table lookup per token instead of a decode of the sequence:

  byte-level BPE (GPT-2, Llama-3, Qwen, SmolLM; decoder ByteLevel): every token is bytes (its
      characters through GPT-2's byte<->char map); the text is the UTF-8 decoding of all bytes, each
      invalid sequence -> one U+FFFD. An incremental UTF-8 decoder holds back an unfinished character.

  SentencePiece-style BPE (Llama-2, Mistral; decoder Replace("▁", " "), ByteFallback, Fuse,
      Strip(" ", n, 0)): a token is text, or one byte <0xNN>; a run of byte tokens decodes as UTF-8,
      or to one U+FFFD per byte if invalid, so a run is held back until a text token closes it; the
      first n leading spaces of the whole text are stripped.

Any other decoder: the sequence is decoded whole at each step and trailing U+FFFD held back
(correct, but O(length) per step).
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_level_char_to_byte() -> dict[str, int]:
    """GPT-2's map: printable bytes stand for themselves, the other bytes for chars from U+0100 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def _decoder_steps(backend) -> list[dict]:
    decoder = backend.decoder
    if decoder is None:
        return []
    config = json.loads(decoder.__getstate__())
    return config["decoders"] if config["type"] == "Sequence" else [config]


@dataclass(frozen=True)
class DecodeTables:
    """Per-tokenizer pieces, built once. kind: "byte_level", "byte_fallback" or "generic";
    pieces[id]: bytes (byte_level), or str text / int byte value (byte_fallback)."""

    kind: str
    pieces: tuple
    special_ids: frozenset[int]
    strip_left: int = 0

    @classmethod
    def build(cls, backend, special_ids: frozenset[int]) -> DecodeTables:
        vocab = backend.get_vocab(with_added_tokens=True)
        tokens = [""] * (max(vocab.values(), default=-1) + 1)
        for token, token_id in vocab.items():
            tokens[token_id] = token
        steps = _decoder_steps(backend)
        types = [step["type"] for step in steps]
        if types == ["ByteLevel"]:
            char_to_byte = _byte_level_char_to_byte()
            pieces = []
            for token in tokens:
                try:
                    pieces.append(bytes(char_to_byte[c] for c in token))
                except KeyError:  # a token outside the byte alphabet (an added token) stands for its UTF-8
                    pieces.append(token.encode())
            return cls("byte_level", tuple(pieces), special_ids)
        if types[:3] == ["Replace", "ByteFallback", "Fuse"] and types[3:] in ([], ["Strip"]):
            replace = steps[0]
            strip = steps[3] if len(steps) == 4 else {"content": " ", "start": 0, "stop": 0}
            if replace["pattern"].get("String") is not None and strip["content"] == " " and strip["stop"] == 0:
                old, new = replace["pattern"]["String"], replace["content"]
                pieces = []
                for token in tokens:
                    match = _BYTE_TOKEN.fullmatch(token)
                    pieces.append(int(match.group(1), 16) if match else token.replace(old, new))
                return cls("byte_fallback", tuple(pieces), special_ids, strip["start"])
        return cls("generic", (), special_ids)


class TextStream:
    """One sequence's text. push(ids) returns the text that is now final; flush() returns the rest
    once the sequence ends, so that all pieces joined equal the full decode of the sequence after
    `context_ids` (e.g. the prompt: it positions the first token, so a leading space stays a
    space, and text the prompt's decode already shows is not returned again)."""

    def __init__(self, backend, tables: DecodeTables, skip_special_tokens: bool, context_ids: Sequence[int] = ()):
        self._backend = backend
        self._tables = tables
        self._skip_special_tokens = skip_special_tokens
        self._skip = tables.special_ids if skip_special_tokens else frozenset()
        self._num_pieces = len(tables.pieces)
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self._byte_run = bytearray()
        self._strip_left = tables.strip_left
        # The context's held tail as its own decode shows it (U+FFFD for unfinished UTF-8, a byte
        # run's text), and the output text held while it may still be repeating it (_pay_owed).
        self._owed = ""
        self._owed_seen = ""
        # generic decoders: all ids so far, the context's final text, the text emitted so far
        self._ids = list(context_ids) if tables.kind == "generic" else []
        self._num_context_ids = len(context_ids)
        self._context_text = ""
        self._emitted = ""
        if not context_ids:
            return
        if tables.kind == "generic":
            context_text = self._decode_all()
            shown = self._context_text = context_text.rstrip("\ufffd")
        else:
            shown = self.push(context_ids)
            held = self._byte_run if tables.kind == "byte_fallback" else self._utf8.getstate()[0]
            if not held:
                return
            context_text = backend.decode(list(context_ids), skip_special_tokens=skip_special_tokens)
        if context_text.startswith(shown):
            self._owed = context_text[len(shown):]

    def _kept(self, token_ids):
        skip, n = self._skip, self._num_pieces
        return [t for t in token_ids if t < n and t not in skip]

    def push(self, token_ids: Sequence[int]) -> str:
        kind = self._tables.kind
        if kind == "byte_level":
            pieces = self._tables.pieces
            text = self._utf8.decode(b"".join([pieces[t] for t in self._kept(token_ids)]))
        elif kind == "byte_fallback":
            text = self._push_byte_fallback(token_ids)
        else:
            self._ids.extend(token_ids)
            text = self._emit(final=False)
        return self._pay_owed(text)

    def flush(self) -> str:
        kind = self._tables.kind
        if kind == "byte_level":
            text = self._utf8.decode(b"", final=True)
        elif kind == "byte_fallback":
            text = self._strip(self._close_byte_run())
        else:
            text = self._emit(final=True)
        text = self._pay_owed(text)
        self._owed = self._owed_seen = ""  # an output that only ever repeated it adds nothing
        return text

    def _pay_owed(self, text: str) -> str:
        r"""Leave out the start of the output's text that repeats the context's held tail as the
        context's decode showed it. The held tokens' text comes with the output's first text:

            context "Hi" + b"\xe6" shows "Hi\ufffd";  output " ok" -> "\ufffd ok": " ok" is new
                                                     output b"\x9d\xb1" -> "\u6771": all new

        so the output's text is decode(context + output) past its common prefix with
        decode(context) (past all of decode(context) when it still starts with that)."""
        if not self._owed or not text:
            return text
        text = self._owed_seen + text
        owed, same = self._owed, 0
        while same < min(len(text), len(owed)) and text[same] == owed[same]:
            same += 1
        if same == len(text) < len(owed):  # all repeated so far: the next text decides
            self._owed_seen = text
            return ""
        self._owed = self._owed_seen = ""
        return text[same:]

    def _push_byte_fallback(self, token_ids) -> str:
        pieces = self._tables.pieces
        out = []
        for t in self._kept(token_ids):
            piece = pieces[t]
            if type(piece) is int:
                self._byte_run.append(piece)
                continue
            if self._byte_run:
                out.append(self._close_byte_run())
            out.append(piece)
        return self._strip("".join(out))

    def _close_byte_run(self) -> str:
        run = bytes(self._byte_run)
        self._byte_run.clear()
        try:
            return run.decode("utf-8")
        except UnicodeDecodeError:
            return "\ufffd" * len(run)

    def _strip(self, text: str) -> str:
        if self._strip_left and text:
            stripped = text.lstrip(" ")
            cut = min(len(text) - len(stripped), self._strip_left)
            text = text[cut:]
            self._strip_left = 0 if text else self._strip_left - cut
        return text

    def _decode_all(self) -> str:
        return self._backend.decode(self._ids, skip_special_tokens=self._skip_special_tokens)

    def _emit(self, final: bool) -> str:
        """Generic decoders: the new text of decode(context + output) past the context's text;
        unfinished characters (U+FFFD) wait for the next push unless `final`."""
        text = self._decode_all()
        if text.startswith(self._context_text):
            text = text[len(self._context_text):]
        else:  # the decoder rewrote the context's text: the output's ids decoded alone
            text = self._backend.decode(self._ids[self._num_context_ids:],
                                        skip_special_tokens=self._skip_special_tokens)
        if not final:
            text = text.rstrip("\ufffd")
        if not text.startswith(self._emitted):
            return ""  # the decoder rewrote text already returned: nothing more can be added safely
        new = text[len(self._emitted):]
        self._emitted = text
        return new
