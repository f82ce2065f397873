"""Beam search over the engine (vLLM's LLM.beam_search): each step asks the engine for one token of
every live beam with its top 2 x beam_width log-probabilities and extends each beam by those
tokens; every extension that ends (an end-of-sequence token, unless ignore_eos) is set aside as
finished, and the beam_width other extensions of the highest cumulative log-probability live on.
After max_tokens steps the finished and live beams are ranked by
cum_logprob / len(tokens) ** length_penalty (the prompt counted in the length, a final
end-of-sequence token not, as vLLM ranks them); a beam's text is that of its own tokens.

A beam's tokens are its prompt's and its own, so the engine's prefix cache serves each step's
prompts from the step before: a step costs about one decode step per beam.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tqdm import tqdm

from kvserve.logprobs import Logprob
from kvserve.prompts import PromptInput, normalize_prompts
from kvserve.sampling_params import SamplingParams, is_int

if TYPE_CHECKING:
    from kvserve.engine import Engine


@dataclass(frozen=True)
class BeamSearchParams:
    """vLLM's BeamSearchParams. temperature scales the logits of the token each step samples besides
    its top 2 x beam_width (0: none besides them)."""

    beam_width: int
    max_tokens: int
    ignore_eos: bool = False
    temperature: float = 0.0
    length_penalty: float = 1.0
    include_stop_str_in_output: bool = False

    def __post_init__(self):
        for name in ("beam_width", "max_tokens"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


@dataclass
class BeamSearchSequence:
    """One beam: its tokens (the prompt's, then its own), the log-probabilities of each of its own
    tokens' candidates, their sum, and (in outputs) the text of its own tokens."""

    tokens: list[int]
    logprobs: list[dict[int, Logprob]] = field(default_factory=list)
    cum_logprob: float = 0.0
    text: str | None = None
    finish_reason: str | None = None


@dataclass
class BeamSearchOutput:
    """A prompt's best beams, best first (beam_width of them)."""

    sequences: list[BeamSearchSequence]


def beam_score(beam: BeamSearchSequence, eos_token_ids: set[int], length_penalty: float) -> float:
    length = len(beam.tokens) - (1 if beam.tokens[-1] in eos_token_ids else 0)
    return beam.cum_logprob / length ** length_penalty


class BeamSearch:
    """The search over several prompts, one step at a time, for whoever runs the steps on an engine
    (beam_search below, offline; the server's beam_search_stream.py): next_step() gives every live
    beam's tokens to run with step_params (none once the search is over), advance() takes each one's
    log-probabilities entry, outputs() ranks the beams."""

    def __init__(self, prompts: list[list[int]], params: BeamSearchParams, eos_token_ids: set[int],
                 max_model_len: int):
        self.prompts = prompts
        self.params = params
        self.eos_token_ids = eos_token_ids
        self.step_params = SamplingParams(logprobs=2 * params.beam_width, max_tokens=1,
                                          temperature=params.temperature, ignore_eos=True)
        # Room in the context for every step: a beam is never longer than max_model_len.
        self.num_steps = min(params.max_tokens, max_model_len - max(len(p) for p in prompts))
        self._steps_taken = 0
        self._live = [[BeamSearchSequence(list(p))] for p in prompts]
        self._finished: list[list[BeamSearchSequence]] = [[] for _ in prompts]

    def next_step(self) -> list[list[int]]:
        """The tokens of every live beam, prompt by prompt; [] once the search is over."""
        if self._steps_taken >= self.num_steps:
            return []
        return [beam.tokens for prompt_beams in self._live for beam in prompt_beams]

    def advance(self, entries: list[dict[int, Logprob]]) -> None:
        """Each beam of next_step()'s extended by its step's log-probabilities entry (its candidates)."""
        self._steps_taken += 1
        entries = iter(entries)
        for index, prompt_beams in enumerate(self._live):
            candidates = []
            for beam in prompt_beams:
                entry = next(entries)
                for token_id, logprob in entry.items():
                    extended = BeamSearchSequence(beam.tokens + [token_id], beam.logprobs + [entry],
                                                  beam.cum_logprob + logprob.logprob)
                    if not self.params.ignore_eos and token_id in self.eos_token_ids:
                        extended.finish_reason = "stop"
                        self._finished[index].append(extended)
                    else:
                        candidates.append(extended)
            candidates.sort(key=lambda beam: beam.cum_logprob, reverse=True)
            self._live[index] = candidates[:self.params.beam_width]
        if not any(self._live):
            self._steps_taken = self.num_steps

    def outputs(self, decode: Callable[[list[int]], str] | None) -> list[BeamSearchOutput]:
        """Each prompt's beam_width best beams, their text decoded by `decode` (None: no text)."""
        results = []
        for prompt, prompt_beams, done in zip(self.prompts, self._live, self._finished):
            for beam in prompt_beams:
                beam.finish_reason = "length"
            ranked = sorted(done + prompt_beams, reverse=True,
                            key=lambda b: beam_score(b, self.eos_token_ids, self.params.length_penalty))
            for beam in ranked[:self.params.beam_width]:
                own = beam.tokens[len(prompt):]
                if beam.finish_reason == "stop" and not self.params.include_stop_str_in_output:
                    own = own[:-1]
                beam.text = decode(own) if decode is not None else None
            results.append(BeamSearchOutput(ranked[:self.params.beam_width]))
        return results


def beam_search(engine: Engine, prompts: PromptInput | Sequence[PromptInput], params: BeamSearchParams,
                use_tqdm: bool = False) -> list[BeamSearchOutput]:
    normalized = normalize_prompts(prompts, engine.tokenizer)
    search = BeamSearch([list(p.token_ids) for p in normalized], params, engine.eos_token_ids, engine.max_model_len)
    for _ in tqdm(range(search.num_steps), desc="Beam search", disable=not use_tqdm):
        beams = search.next_step()
        if not beams:
            break
        outputs = engine.generate([{"prompt_token_ids": tokens} for tokens in beams], search.step_params,
                                  use_tqdm=False)
        search.advance([output.outputs[0].logprobs[0] for output in outputs])
    return search.outputs(engine.tokenizer.decode if engine.tokenizer is not None else None)
