"""Detokenizer: one output sequence's text, built as tokens arrive, with stop strings.

    det = Detokenizer.from_params(tokenizer, params, prompt_token_ids)
    each step:  stop = det.update(new_token_ids, stop_terminated)  # the matched stop string, or None
                det.output_text / det.get_delta()     # text safe to show (streaming: the new part)
    at the end: det.finish()                          # when it ended for another reason (eos, length)

Text is never returned in a form a later token could change: unfinished UTF-8 is held back (see
text_stream.py), and so is a tail that could still become a stop string. When a stop string
completes — possibly across several tokens; the earliest one, on a tie the one listed first — the
text is cut before it (after it with
include_stop_str_in_output) and nothing after it is ever returned. As in vLLM, stop strings only
count once more than min_tokens tokens exist, and the token ids are not cut. Likewise the EOS or
stop token that ends a sequence stays in the token ids, but its text is left out (kept with
include_stop_str_in_output).
"""

from __future__ import annotations

from collections.abc import Sequence

from kvserve.sampling_params import SamplingParams
from kvserve.text_stream import TextStream
from kvserve.tokenizer import Tokenizer


class Detokenizer:
    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        skip_special_tokens: bool = True,
        stop: Sequence[str] = (),
        include_stop_str_in_output: bool = False,
        min_tokens: int = 0,
        prompt_token_ids: Sequence[int] = (),
    ):
        self._stream = TextStream(tokenizer.backend, tokenizer.decode_tables, skip_special_tokens, prompt_token_ids)
        self._stop = tuple(stop)
        self._max_stop_len = max((len(s) for s in self._stop), default=0)
        self._stop_chars = frozenset("".join(self._stop))
        self._include_stop = include_stop_str_in_output
        self._min_tokens = min_tokens
        self._num_tokens = 0
        self._text = ""
        self._held = 0  # length of the tail that may still turn into a stop string
        self._done = False
        self._delta_offset = 0

    @classmethod
    def from_params(
        cls, tokenizer: Tokenizer, params: SamplingParams, prompt_token_ids: Sequence[int] = ()
    ) -> Detokenizer:
        return cls(
            tokenizer,
            skip_special_tokens=params.skip_special_tokens,
            stop=params.stop,
            include_stop_str_in_output=params.include_stop_str_in_output,
            min_tokens=params.min_tokens,
            prompt_token_ids=prompt_token_ids,
        )

    @property
    def output_text(self) -> str:
        """The text so far that no later token can change."""
        return self._text[: len(self._text) - self._held] if self._held else self._text

    @property
    def finished(self) -> bool:
        return self._done

    def get_delta(self) -> str:
        """output_text added since the previous call."""
        text = self.output_text
        delta = text[self._delta_offset:]
        self._delta_offset = len(text)
        return delta

    def update(self, new_token_ids: Sequence[int], stop_terminated: bool = False) -> str | None:
        """Add generated tokens. Returns the stop string they completed (the sequence must end
        now), else None. `stop_terminated`: the last token is the EOS or stop token that ends the
        sequence; as in vLLM its text is left out unless include_stop_str_in_output."""
        if self._done:
            raise ValueError("update() after the sequence finished: the detokenizer takes no more tokens")
        if stop_terminated and not self._include_stop:
            new_token_ids = new_token_ids[:-1]
        self._num_tokens += len(new_token_ids)
        return self._append(self._stream.push(new_token_ids))

    def finish(self) -> str | None:
        """The sequence ended without a stop string: release the held-back text. Returns a stop
        string found in the text released last (it is cut as usual), else None."""
        if self._done:
            return None
        stop = self._append(self._stream.flush())
        self._done, self._held = True, 0
        return stop

    def _append(self, new: str) -> str | None:
        if not new:
            return None
        self._text += new
        if not self._stop:
            return None
        if self._num_tokens > self._min_tokens:
            stop = self._cut_at_stop(len(new))
            if stop is not None:
                return stop
        if not self._include_stop:
            self._held = self._stop_prefix_len()
        return None

    def _cut_at_stop(self, num_new: int) -> str | None:
        # A stop string completed now ends within the new text: search from max_stop_len - 1 before it.
        start = max(0, len(self._text) - num_new - self._max_stop_len + 1)
        found, at = None, len(self._text)
        for stop in self._stop:
            i = self._text.find(stop, start, at + len(stop))
            if i != -1 and i < at:
                found, at = stop, i
        if found is None:
            return None
        self._text = self._text[: at + len(found) if self._include_stop else at]
        self._done, self._held = True, 0
        return found

    def _stop_prefix_len(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        text, longest = self._text, 0
        if text[-1] not in self._stop_chars:  # the common case: no stop string can continue here
            return 0
        for stop in self._stop:
            for k in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:k]):
                    longest = k
                    break
        return longest
