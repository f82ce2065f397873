"""Grammars of structured outputs, compiled for one engine's tokenizer, and the per-sequence
matchers that say which tokens may come next.

    compiler = GrammarCompiler(tokenizer, vocab_size, eos_token_ids)   # one per engine
    grammar = compiler.compile(params.structured_outputs)             # ValueError for a bad grammar
    matcher = grammar.matcher(prompt_token_ids)                        # one per output sequence
    matcher.fill_bitmask(sequence.token_ids, row)                      # each step the sequence samples

A matcher follows its sequence's tokens lazily: each fill first consumes the tokens the sequence
gained since the last one. A sequence's token ids are those the scheduler applied, so a token a step
scheduled ahead decoded and then retracted (engine.py) never reaches the matcher. The bitmask is
llguidance's: bit t % 32 of int32 word t // 32 is set when token t may come next; with the grammar
complete, and past its end (ignore_eos), only the end-of-sequence tokens are set.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from kvserve.structured_outputs import StructuredOutputsParams
from kvserve.tokenizer import Tokenizer

logger = logging.getLogger("kvserve")

# Compiled grammars kept per engine (a server sees the same few schemas again and again).
CACHED_GRAMMARS = 256
# A prompt "ends with" the thinking's end token where it is among its last tokens (whitespace after it).
PROMPT_TAIL = 4
# Reasoning models' syntaxes (server/reasoning.py reads their replies): both think in <think>...</think>.
REASONING_PARSERS = ("qwen3", "deepseek_r1")
THINK_START, THINK_END = "<think>", "</think>"


def bitmask_words(vocab_size: int) -> int:
    """int32 words of one row's bitmask."""
    return (vocab_size + 31) // 32


def set_tokens(row: np.ndarray, token_ids: Sequence[int]) -> None:
    """A bitmask row (int32 words) allowing exactly `token_ids`."""
    words = row.view(np.uint32)
    words[:] = 0
    for token_id in token_ids:
        words[token_id // 32] |= np.uint32(1 << (token_id % 32))


class GrammarMatcher:
    """Where one output sequence stands in its grammar."""

    __slots__ = ("_matcher", "_eos_token_ids", "_num_consumed", "num_words", "_reasoning_end")

    def __init__(self, matcher, eos_token_ids: tuple[int, ...], num_words: int, reasoning_end: int | None = None):
        """`reasoning_end`: a token the sequence thinks until, unconstrained (None: it does not think)."""
        self._matcher = matcher
        self._eos_token_ids = eos_token_ids
        self._num_consumed = 0
        self.num_words = num_words  # of its bitmask rows
        self._reasoning_end = reasoning_end

    def fill_bitmask(self, token_ids: Sequence[int], row: np.ndarray, drafts: Sequence[int] = ()) -> None:
        """Consume the tokens of `token_ids` (the sequence's output so far) not yet seen, then write
        the tokens that may come next into `row` (int32 [num_words], C-contiguous). `drafts`: tokens
        past them that the row's sample follows (speculative decoding): the row is the mask after
        them, found on a copy (the matcher stays where the sequence is); where the grammar refuses
        one, any token (the row's sample is dropped: its chain stops at that draft, whose own
        row's mask refuses it)."""
        thinking = not self._consume(token_ids)
        if drafts:
            ahead = GrammarMatcher(self._matcher.deep_copy(), self._eos_token_ids, self.num_words, self._reasoning_end)
            if not ahead._consume(drafts) or ahead._matcher.is_error():
                row[:] = -1
            else:
                ahead._write(row)
        elif thinking:
            row[:] = -1  # still thinking: any token
        else:
            self._write(row)

    def _consume(self, token_ids: Sequence[int]) -> bool:
        """Consume the tokens of `token_ids` not yet seen; False while the sequence still thinks."""
        if self._reasoning_end is not None:
            new = token_ids[self._num_consumed:]
            if self._reasoning_end not in new:
                self._num_consumed = len(token_ids)
                return False
            # The grammar starts after the thinking's end.
            self._num_consumed += list(new).index(self._reasoning_end) + 1
            self._reasoning_end = None
        matcher = self._matcher
        for token_id in token_ids[self._num_consumed:]:
            if matcher.is_stopped():  # past the grammar's end (ignore_eos): only end-of-sequence tokens
                break
            matcher.consume_token(token_id)
        self._num_consumed = len(token_ids)
        return True

    def _write(self, row: np.ndarray) -> None:
        """The tokens that may come next, where the matcher stands."""
        matcher = self._matcher
        if matcher.is_error():
            # Only a token outside the mask gets here, which the sampler never draws: end the
            # sequence rather than let it run on unconstrained.
            logger.error("structured output: the grammar refused the sequence's tokens (%s); ending it",
                         matcher.get_error().splitlines()[0])
        if matcher.is_error() or matcher.is_stopped():
            set_tokens(row, self._eos_token_ids)
            return
        matcher.unsafe_compute_mask_ptr(row.ctypes.data, row.nbytes)


class CompiledGrammar:
    """One checked grammar, for one tokenizer: a matcher at its start, which each sequence that
    follows the grammar copies (microseconds: building one from the grammar again would take the
    engine's thread as long as compiling it)."""

    def __init__(self, prototype, eos_token_ids: tuple[int, ...], num_words: int, reasoning_end: int | None):
        self._prototype = prototype
        self._eos_token_ids = eos_token_ids
        self._num_words = num_words
        self._reasoning_end = reasoning_end
        self._lock = threading.Lock()

    def matcher(self, prompt_token_ids: Sequence[int] = ()) -> GrammarMatcher:
        """A sequence's matcher. Where the engine's model thinks first (GrammarCompiler.reasoning_end),
        the grammar holds the output after the thinking's end token, unless the prompt ends with it
        (a template that closed the thinking, as Qwen3's with enable_thinking off)."""
        with self._lock:
            copy = self._prototype.deep_copy()
        # The prompt's last tokens: </think> and whitespace after it (server/reasoning.py reads it so).
        thinks = self._reasoning_end is not None and self._reasoning_end not in prompt_token_ids[-PROMPT_TAIL:]
        return GrammarMatcher(copy, self._eos_token_ids, self._num_words, self._reasoning_end if thinks else None)


class GrammarCompiler:
    """Compiles and checks structured-output grammars for one engine's tokenizer. Thread-safe: the
    server compiles on a worker thread before a request reaches the engine's."""

    def __init__(self, tokenizer: Tokenizer | None, vocab_size: int, eos_token_ids: Sequence[int]):
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._eos_token_ids = tuple(sorted(eos_token_ids))
        self._llg_tokenizer = None
        self._compiled: OrderedDict[str, CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()
        self.reasoning_end: int | None = None

    def set_reasoning_end(self, token_id: int | None) -> None:
        """The token that ends a reasoning model's thinking (its </think>): grammars then hold only
        what follows it (None: the whole output)."""
        with self._lock:
            self.reasoning_end = token_id
            self._compiled.clear()

    def _tokenizer_for_llguidance(self):
        if self._llg_tokenizer is None:
            from llguidance import LLTokenizer  # importable: compile() built the grammar with it first

            # The larger of the model's vocabulary (logits' width, which may pad the tokenizer's) and
            # the tokenizer's (which may hold ids past the model's, never sampled); and every id that
            # ends a sequence: llguidance allows them where the grammar is complete.
            vocab_size = max(self._vocab_size, self._tokenizer.backend.get_vocab_size(with_added_tokens=True))
            self._llg_tokenizer = LLTokenizer(self._tokenizer.backend.to_str(), n_vocab=vocab_size,
                                              eos_token=list(self._eos_token_ids))
        return self._llg_tokenizer

    def compile(self, params: StructuredOutputsParams) -> CompiledGrammar:
        """The grammar `params` asks for; ValueError naming what is wrong with it."""
        if self._tokenizer is None:
            raise ValueError("structured outputs need the tokenizer, but the engine was built with "
                             "skip_tokenizer_init=True")
        try:
            spec = params.grammar_spec()
        except ImportError:
            raise ValueError("structured outputs need the llguidance package: pip install llguidance") from None
        except ValueError as e:
            raise ValueError(f"structured outputs' {params.kind}: {e}") from None
        with self._lock:
            compiled = self._compiled.get(spec)
            if compiled is not None:
                self._compiled.move_to_end(spec)
                return compiled
            llg_tokenizer = self._tokenizer_for_llguidance()
        from llguidance import LLMatcher

        prototype = LLMatcher(llg_tokenizer, spec, log_level=0)
        if prototype.is_error():
            raise ValueError(f"structured outputs' {params.kind} is not valid: "
                             f"{prototype.get_error().strip().splitlines()[0]}")
        compiled = CompiledGrammar(prototype, self._eos_token_ids, bitmask_words(llg_tokenizer.vocab_size),
                                   self.reasoning_end)
        with self._lock:
            self._compiled[spec] = compiled
            while len(self._compiled) > CACHED_GRAMMARS:
                self._compiled.popitem(last=False)
        return compiled
