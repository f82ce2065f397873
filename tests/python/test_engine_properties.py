"""The engine under random interleavings of add_request, abort and step: prompts sharing prefixes
(prefix-cache hits), a KV cache small enough to preempt, model runs that fail at random (before the
device's work, as a launch error, or after it, as an error when the results are read) or are
interrupted (Ctrl-C) while their sampler is queued, every output
kind, n = 2, logprobs, stop strings, a repetition penalty (which reads every token sampled so far);
on each way the engine steps (step_modes.py).

Whatever happens, every request ends exactly once: finished (with consistent outputs: lengths,
one logprob entry per token, deltas adding up to the whole), aborted, or ended by a failed step;
its tokens are what a lone run of its prompt and sampling parameters produces (greedy or seeded,
up to where a stop string ended it); no KV block is held at the end. The same with speculative
decoding, on the tiny Llama whose text repeats (drafts taken and refused), where only greedy
requests must equal their lone runs (a seeded one's draws follow its drafts, which the step's
token budget cuts).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

import pytest

from failing_launches import failing_launches
from kvserve import Engine, RequestOutputKind, SamplingParams
from step_modes import STEP_MODES, set_step_mode

MAX_MODEL_LEN = 64
BLOCK_SIZE = 4
PREFIXES = [[random.Random(i).randint(3, 200) for _ in range(13)] for i in range(6)]


@dataclass
class Script:
    ops: list[tuple]
    engine_kwargs: dict
    failure_seed: int


def make_script(seed: int) -> Script:
    rng = random.Random(seed)
    ops, n = [], 0
    for _ in range(200):
        draw = rng.random()
        if draw < 0.4 and n < 40:
            prompt = [rng.randint(3, 200) for _ in range(rng.randint(1, 30))]
            if rng.random() < 0.7:
                prompt = PREFIXES[rng.randrange(len(PREFIXES))] + prompt[:rng.randint(0, 10)]
            params = SamplingParams(temperature=rng.choice([0, 0, 0, 0.8]), seed=rng.randint(0, 9),
                                    max_tokens=rng.randint(1, 40), ignore_eos=True, n=rng.choice([1, 1, 2]),
                                    output_kind=rng.choice(list(RequestOutputKind)), logprobs=rng.choice([None, 2]),
                                    prompt_logprobs=rng.choice([None, None, 1]),
                                    stop=rng.choice([None, None, None, ["e"]]),
                                    repetition_penalty=rng.choice([1.0, 1.0, 1.3]))
            ops.append(("add", f"r{n}", prompt, params))
            n += 1
        elif draw < 0.45 and n:
            ops.append(("abort", f"r{rng.randrange(n)}"))
        else:
            ops.append(("step",))
    # Blocks for 24 to 200 tokens: from a few requests at once (preemption) to all of them.
    kwargs = dict(max_num_seqs=rng.choice([2, 4, 8]), max_num_batched_tokens=rng.choice([8, 16, 64]),
                  kv_blocks=rng.choice([24, 40, 200]))
    return Script(ops, kwargs, seed * 7 + 1)


@dataclass
class Run:
    params: dict[str, SamplingParams] = field(default_factory=dict)
    prompts: dict[str, list[int]] = field(default_factory=dict)
    finals: dict = field(default_factory=dict)
    deltas: dict[str, list[list[int]]] = field(default_factory=dict)
    aborted: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)

    def take(self, outputs) -> None:
        for output in outputs:
            request_id, params = output.request_id, self.params[output.request_id]
            assert request_id not in self.finals, f"{request_id}: an output after its final one"
            if params.output_kind is RequestOutputKind.DELTA:
                tokens = self.deltas.setdefault(request_id, [[] for _ in range(params.n)])
                for completion in output.outputs:
                    tokens[completion.index] += completion.token_ids
            elif params.output_kind is RequestOutputKind.FINAL_ONLY:
                assert output.finished
            if output.finished:
                self.finals[request_id] = output


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("LlamaForCausalLM")


NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 2, "prompt_lookup_min": 1}


def lone_runs(model_dir):
    """lone_run(prompt, params): each sample's tokens of the prompt run alone (no stop strings, no
    prefix cache); seeded sampling draws from the request's own generators, so it repeats too."""
    engine = Engine(str(model_dir), dtype="float32", kv_cache_memory_gb=0.01, device="cpu",
                    max_model_len=MAX_MODEL_LEN, enable_prefix_caching=False)
    known = {}

    def run(prompt: list[int], params: SamplingParams) -> list[list[int]]:
        alone = dataclasses.replace(params, stop=None, logprobs=None, prompt_logprobs=None,
                                    output_kind=RequestOutputKind.FINAL_ONLY)
        key = (tuple(prompt), repr(alone))
        if key not in known:
            [output] = engine.generate([{"prompt_token_ids": prompt}], alone, use_tqdm=False)
            known[key] = [completion.token_ids for completion in output.outputs]
        return known[key]

    return run


@pytest.fixture(scope="module")
def lone_run(model_dir):
    return lone_runs(model_dir)


def run_script(model_dir, script: Script, mode: str, **engine_kwargs) -> tuple[Engine, Run]:
    kwargs = {**script.engine_kwargs, **engine_kwargs}
    bytes_per_block = BLOCK_SIZE * 512  # the tiny Llama's float32 K and V of one token: 512 bytes
    engine = Engine(str(model_dir), dtype="float32", device="cpu", block_size=BLOCK_SIZE, max_model_len=MAX_MODEL_LEN,
                    kv_cache_memory_gb=kwargs.pop("kv_blocks") * bytes_per_block / 2**30, **kwargs)
    set_step_mode(engine, mode)
    engine.runner.launch = failing_launches(engine.runner.launch, script.failure_seed, before=0.03, after=0.02,
                                            interrupted=0.02)
    run = Run()

    def step() -> None:
        live = set(engine.requests)
        try:
            run.take(engine.step())
        except (RuntimeError, KeyboardInterrupt):
            run.failed |= live - set(engine.requests) - set(run.finals)

    for op in script.ops:
        if op[0] == "add":
            _, request_id, prompt, params = op
            try:
                engine.add_request(request_id, {"prompt_token_ids": prompt}, params)
            except ValueError as error:  # more blocks than the whole cache holds: refused up front
                assert "KV-cache blocks" in str(error)
                continue
            run.params[request_id], run.prompts[request_id] = params, prompt
        elif op[0] == "abort":
            if op[1] in engine.requests:
                run.aborted.add(op[1])
            engine.abort(op[1])
        elif engine.has_unfinished_requests():
            step()
    while engine.has_unfinished_requests():
        step()
    return engine, run


@pytest.mark.parametrize("mode", STEP_MODES)
@pytest.mark.parametrize("seed", range(24))
def test_every_request_ends_once_and_right_and_no_block_leaks(model_dir, lone_run, seed, mode):
    check_run(*run_script(model_dir, make_script(seed), mode), lone_run)


@pytest.mark.parametrize("mode", ["plain", "overlapped"])  # speculation does not schedule ahead
@pytest.mark.parametrize("seed", range(8))
def test_with_speculative_decoding_too(repeating_model_dir, seed, mode):
    engine, run = run_script(repeating_model_dir, make_script(seed), mode, speculative_config=NGRAM)
    check_run(engine, run, lone_runs(repeating_model_dir), greedy_only=True)


def check_run(engine: Engine, run: Run, lone_run, greedy_only: bool = False) -> None:
    """What every script's run must show (the module's docstring); `greedy_only`: only greedy
    requests are held to their lone runs."""
    stats = engine.stats()
    assert not engine.requests and stats.num_free_blocks == stats.num_blocks - 1, stats
    for request_id, params in run.params.items():
        if request_id in run.aborted or (request_id in run.failed and request_id not in run.finals):
            continue  # (a final output may come after a failed step: the outputs of the step before it)
        assert request_id in run.finals, f"{request_id} never finished"
        output = run.finals[request_id]
        for completion in output.outputs:
            delta = params.output_kind is RequestOutputKind.DELTA
            tokens = run.deltas[request_id][completion.index] if delta else completion.token_ids
            assert len(tokens) <= params.max_tokens
            if completion.finish_reason == "length":
                assert len(tokens) == min(params.max_tokens, MAX_MODEL_LEN - len(output.prompt_token_ids))
            else:
                assert completion.finish_reason == "stop" and params.stop, (request_id, completion.finish_reason)
            if params.logprobs is not None and not delta:
                assert len(completion.logprobs) == len(tokens)
            if not (greedy_only and params.temperature > 0):
                alone = lone_run(run.prompts[request_id], params)[completion.index]
                assert tokens == alone[:len(tokens)], request_id
        if params.prompt_logprobs is not None and params.output_kind is not RequestOutputKind.DELTA:
            assert len(output.prompt_logprobs) == len(output.prompt_token_ids)


@pytest.mark.parametrize("speculative", [False, True])
def test_the_scripts_preempt_hit_the_prefix_cache_abort_and_fail(model_dir, repeating_model_dir, speculative):
    """Without these the tests above would pass without testing much."""
    totals = dict(preemptions=0, prefix_cache_hits=0, aborted=0, failed=0)
    for seed in range(6):
        if speculative:
            engine, run = run_script(repeating_model_dir, make_script(seed), "plain", speculative_config=NGRAM)
            totals["accepted_drafts"] = totals.get("accepted_drafts", 0) + engine.stats().num_accepted_tokens
        else:
            engine, run = run_script(model_dir, make_script(seed), mode="ahead")
        totals["preemptions"] += engine.stats().num_preemptions
        totals["prefix_cache_hits"] += engine.stats().prefix_cache_hits
        totals["aborted"] += len(run.aborted)
        totals["failed"] += len(run.failed)
    assert all(totals.values()), totals
