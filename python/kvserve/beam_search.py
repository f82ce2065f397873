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

from collections.abc import Sequence
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


def beam_search(engine: Engine, prompts: PromptInput | Sequence[PromptInput], params: BeamSearchParams,
                use_tqdm: bool = False) -> list[BeamSearchOutput]:
    normalized = normalize_prompts(prompts, engine.tokenizer)
    width = params.beam_width
    live = [[BeamSearchSequence(list(p.token_ids))] for p in normalized]
    finished: list[list[BeamSearchSequence]] = [[] for _ in normalized]
    step_params = SamplingParams(logprobs=2 * width, max_tokens=1, temperature=params.temperature, ignore_eos=True)
    # Room in the context for every step: a beam is never longer than max_model_len.
    steps = min(params.max_tokens, engine.max_model_len - max(len(p.token_ids) for p in normalized))
    for _ in tqdm(range(steps), desc="Beam search", disable=not use_tqdm):
        beams = [beam for prompt_beams in live for beam in prompt_beams]
        if not beams:
            break
        outputs = iter(engine.generate([{"prompt_token_ids": beam.tokens} for beam in beams], step_params,
                                       use_tqdm=False))
        for index, prompt_beams in enumerate(live):
            candidates = []
            for beam in prompt_beams:
                [entry] = next(outputs).outputs[0].logprobs
                for token_id, logprob in entry.items():
                    extended = BeamSearchSequence(beam.tokens + [token_id], beam.logprobs + [entry],
                                                  beam.cum_logprob + logprob.logprob)
                    if not params.ignore_eos and token_id in engine.eos_token_ids:
                        extended.finish_reason = "stop"
                        finished[index].append(extended)
                    else:
                        candidates.append(extended)
            candidates.sort(key=lambda beam: beam.cum_logprob, reverse=True)
            live[index] = candidates[:width]
    results = []
    for prompt, prompt_beams, done in zip(normalized, live, finished):
        for beam in prompt_beams:
            beam.finish_reason = "length"
        ranked = sorted(done + prompt_beams, key=lambda b: beam_score(b, engine.eos_token_ids, params.length_penalty),
                        reverse=True)[:width]
        for beam in ranked:
            own = beam.tokens[len(prompt.token_ids):]
            if beam.finish_reason == "stop" and not params.include_stop_str_in_output:
                own = own[:-1]
            beam.text = engine.tokenizer.decode(own) if engine.tokenizer is not None else None
        results.append(BeamSearchOutput(ranked))
    return results
