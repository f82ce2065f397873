"""Sampler against plain per-row references: greedy, truncation sets, distributions, seeds,
penalties, logit_bias, min_tokens and logprobs."""

import math
import random

import numpy as np
import pytest
import torch

from kvserve.logprobs import Logprob, prompt_logprobs, top_entries
from kvserve.sampler import Sampler, apply_penalties
from kvserve.sampling_metadata import SamplingMetadata, request_generator
from kvserve.sampling_params import SamplingParams
from requires_cuda import requires_cuda


def sample(logits, params, outputs=None, prompts=None, generators=None, eos=(0,)):
    n = len(params)
    md = SamplingMetadata.from_requests(
        params,
        outputs or [[] for _ in range(n)],
        prompts or [[] for _ in range(n)],
        generators or [None] * n,
        vocab_size=logits.shape[1],
        eos_token_ids=eos,
        device=logits.device,
    )
    return Sampler()(logits.clone(), md)


def reference_allowed(row: np.ndarray, p: SamplingParams, slack=1e-5) -> set[int]:
    """Tokens vLLM's filters keep (min_p, then top_k, then top_p renormalized), in float64, with
    a little slack at the boundaries for float32 rounding."""
    logits = row.astype(np.float64) / p.temperature
    order = np.argsort(-logits, kind="stable")
    keep = np.ones(len(row), dtype=bool)
    if p.min_p > 0:
        keep &= logits >= logits.max() + math.log(p.min_p) - slack
    if p.top_k > 0:
        keep[order[p.top_k:]] = False
    if p.top_p < 1:
        probs = np.where(keep, np.exp(logits - logits.max()), 0.0)
        probs /= probs.sum()
        before = np.cumsum(probs[order]) - probs[order]
        keep[order[before >= p.top_p + slack]] = False
    return set(np.flatnonzero(keep).tolist())


def test_greedy_is_argmax_with_and_without_random_rows():
    torch.manual_seed(0)
    logits = torch.randn(64, 1000)
    out = sample(logits, [SamplingParams(temperature=0.0)] * 64)
    assert out.sampled_token_ids.dtype == torch.int32 and out.logprobs is None
    assert torch.equal(out.sampled_token_ids, logits.argmax(1).to(torch.int32))
    mixed = [SamplingParams(temperature=0.0) if i % 3 else SamplingParams(temperature=1.5) for i in range(64)]
    out = sample(logits, mixed)
    greedy_rows = [i for i in range(64) if i % 3]
    assert torch.equal(out.sampled_token_ids[greedy_rows], logits.argmax(1).to(torch.int32)[greedy_rows])


TRUNCATIONS = [
    dict(top_k=5),
    dict(top_p=0.3),
    dict(top_p=0.9, temperature=0.5),
    dict(min_p=0.3),
    dict(min_p=0.05, top_k=40, top_p=0.8),
    dict(top_k=3, top_p=0.99),
]


@pytest.mark.parametrize("vocab, scale", [(512, 3.0), (4096, 4.0), (4096, 0.3)])
def test_truncation_never_samples_outside_the_allowed_set(vocab, scale):
    # vocab 4096: peaked logits stay within the first 64 or 1024 candidates, flat ones (scale 0.3)
    # need the whole sorted vocabulary for top_p and min_p.
    torch.manual_seed(1)
    rows_per_case = 64
    base = torch.randn(len(TRUNCATIONS), vocab) * scale
    params = [SamplingParams(**kw) for kw in TRUNCATIONS for _ in range(rows_per_case)]
    logits = base.repeat_interleave(rows_per_case, dim=0)
    seen = [set() for _ in TRUNCATIONS]
    for _ in range(4):
        ids = sample(logits, params).sampled_token_ids.tolist()
        for i, token in enumerate(ids):
            seen[i // rows_per_case].add(token)
    for case, kw in enumerate(TRUNCATIONS):
        allowed = reference_allowed(base[case].numpy(), SamplingParams(**kw))
        assert seen[case] <= allowed, (kw, sorted(seen[case] - allowed))
        if len(allowed) <= 5:
            assert seen[case] == allowed, (kw, "a small allowed set is fully reached in 256 draws")
        if len(allowed) > 2048:  # most of the mass lies past the first candidates: some draws must too
            ranks = torch.argsort(base[case], descending=True).argsort()
            assert max(ranks[t].item() for t in seen[case]) >= 1024, kw


@pytest.mark.parametrize("kw", [dict(temperature=0.7), dict(top_k=4, temperature=1.3), dict(top_p=0.8)])
def test_sampled_frequencies_follow_the_renormalized_distribution(kw):
    torch.manual_seed(2)
    row = torch.randn(1, 8) * 1.5
    params = SamplingParams(**kw)
    allowed = sorted(reference_allowed(row[0].numpy(), params))
    expected = np.zeros(8)
    logits64 = row[0].double().numpy() / params.temperature
    expected[allowed] = np.exp(logits64[allowed] - logits64.max())
    expected /= expected.sum()
    draws = 20000
    ids = sample(row.expand(draws, 8).contiguous(), [params] * draws).sampled_token_ids.numpy()
    frequencies = np.bincount(ids, minlength=8) / draws
    np.testing.assert_allclose(frequencies, expected, atol=0.015)


def test_seeded_row_is_identical_alone_and_inside_random_batches():
    vocab, steps = 4096, 5
    rng = random.Random(3)
    torch.manual_seed(3)
    target_logits = [torch.randn(vocab) * s for s in (0.3, 3.0, 1.0, 5.0, 0.5)]
    for kw in (dict(), dict(top_p=0.9), dict(top_k=20, min_p=0.01), dict(min_p=0.02, temperature=0.8)):
        target = SamplingParams(seed=1234, **kw)
        alone_gen = request_generator(target)
        alone = [sample(target_logits[s][None].clone(), [target], generators=[alone_gen]).sampled_token_ids.item()
                 for s in range(steps)]
        batch_gen = request_generator(target)
        batched = []
        for s in range(steps):
            size = rng.randint(2, 12)
            others = [
                SamplingParams(
                    temperature=rng.choice([0.0, 0.5, 1.0]), top_k=rng.choice([0, 2, 2000]),
                    top_p=rng.choice([1.0, 0.5]), min_p=rng.choice([0.0, 0.1]),
                    seed=rng.choice([None, 7]),
                )
                for _ in range(size)
            ]
            position = rng.randrange(size + 1)
            params = others[:position] + [target] + others[position:]
            generators = [request_generator(p) for p in others[:position]] + [batch_gen] + [
                request_generator(p) for p in others[position:]
            ]
            logits = torch.randn(size + 1, vocab) * 2
            logits[position] = target_logits[s]
            batched.append(sample(logits, params, generators=generators).sampled_token_ids[position].item())
        assert alone == batched, kw


def test_samples_of_one_seeded_request_differ_by_index():
    torch.manual_seed(4)
    logits = torch.randn(1, 1000)
    params = SamplingParams(n=3, seed=42)
    generators = [request_generator(params, i) for i in range(3)]
    runs = [[sample(logits, [params], generators=[g]).sampled_token_ids.item() for _ in range(8)] for g in generators]
    assert len({tuple(r) for r in runs}) == 3
    again = request_generator(params, 1)
    assert [sample(logits, [params], generators=[again]).sampled_token_ids.item() for _ in range(8)] == runs[1]
    assert request_generator(SamplingParams()) is None


def reference_penalties(row, prompt, output, p):
    row = row.copy()
    for token in set(prompt) | set(output):
        row[token] = row[token] / p.repetition_penalty if row[token] > 0 else row[token] * p.repetition_penalty
    for token in set(output):
        row[token] -= p.frequency_penalty * output.count(token) + p.presence_penalty
    return row


@pytest.mark.parametrize("prompt_form", ["lists", "int64 arrays"])
def test_penalties_match_a_per_row_reference(prompt_form):
    """Prompts and outputs of 0 to 30 tokens; prompts as lists or as the engine passes them
    (RequestState.prompt_token_array)."""
    rng = random.Random(5)
    vocab = 300
    torch.manual_seed(5)
    params, prompts, outputs = [], [], []
    for i in range(12):
        params.append(SamplingParams(
            presence_penalty=rng.uniform(-2, 2) if i % 4 else 0.0,
            frequency_penalty=rng.uniform(-2, 2) if i % 3 else 0.0,
            repetition_penalty=rng.uniform(0.5, 2.0) if i % 2 else 1.0,
        ))
        prompts.append([rng.randrange(vocab) for _ in range(rng.randint(0, 30))])
        outputs.append([rng.randrange(40) for _ in range(rng.randint(0, 30))])  # repeats on purpose
    logits = torch.randn(12, vocab) * 3
    given = prompts if prompt_form == "lists" else [np.asarray(prompt, dtype=np.int64) for prompt in prompts]
    md = SamplingMetadata.from_requests(params, outputs, given, [None] * 12, vocab_size=vocab)
    penalized = logits.clone()
    apply_penalties(penalized, md.penalties)
    for i in range(12):
        expected = reference_penalties(logits[i].numpy(), prompts[i], outputs[i], params[i])
        np.testing.assert_allclose(penalized[i].numpy(), expected, rtol=1e-6, atol=1e-5)
    greedy = [SamplingParams(temperature=0, **{k: getattr(p, k) for k in (
        "presence_penalty", "frequency_penalty", "repetition_penalty")}) for p in params]
    ids = sample(logits, greedy, outputs, prompts).sampled_token_ids
    assert torch.equal(ids, penalized.argmax(1).to(torch.int32))


def test_logit_bias_and_min_tokens():
    torch.manual_seed(6)
    logits = torch.randn(3, 100)
    eos = 0
    logits[:, eos] = 50.0
    params = [
        SamplingParams(temperature=0, logit_bias={7: 100.0}),
        SamplingParams(temperature=0, min_tokens=2, stop_token_ids=[9]),
        SamplingParams(temperature=0, min_tokens=2, ignore_eos=True),
    ]
    logits[1:, 9] = 49.0
    out = sample(logits, params, outputs=[[], [5], [5]], eos=[eos]).sampled_token_ids.tolist()
    masked = logits[1].clone()
    masked[[eos, 9]] = float("-inf")
    assert out == [7, masked.argmax().item(), eos]
    out = sample(logits, params, outputs=[[], [5, 6], [5, 6]], eos=[eos]).sampled_token_ids.tolist()
    assert out[1:] == [eos, eos]


def test_allowed_token_ids_greedy_picks_the_best_allowed_token():
    torch.manual_seed(11)
    logits = torch.randn(5, 100, dtype=torch.bfloat16)
    allowed = [[3, 50, 97], [8], [1, 2, 3, 4, 5, 2], [60, 61]]
    params = [SamplingParams(temperature=0, allowed_token_ids=a) for a in allowed]
    params.append(SamplingParams(temperature=0))  # unrestricted: its plain argmax
    params[3] = SamplingParams(temperature=0, allowed_token_ids=allowed[3], logit_bias={61: 100.0, 5: 100.0})
    out = sample(logits, params).sampled_token_ids.tolist()
    masked = torch.full_like(logits.float(), float("-inf"))
    for row, ids in enumerate(allowed):
        masked[row, ids] = logits[row, ids].float()
    masked[4] = logits[4].float()
    assert out[:3] + out[4:] == masked.argmax(1)[[0, 1, 2, 4]].tolist()
    assert out[3] == 61  # the bias lifts an allowed token; token 5's bias can't unmask it


def test_allowed_token_ids_with_min_tokens_and_logprobs():
    torch.manual_seed(12)
    logits = torch.randn(2, 40)
    logits[:, 0] = 30.0  # eos, the best token
    params = [SamplingParams(temperature=0, allowed_token_ids=[0, 7, 9], min_tokens=1, logprobs=2),
              SamplingParams(temperature=0, allowed_token_ids=[0, 7, 9], logprobs=2)]
    out = sample(logits, params, eos=[0])
    best = 7 if logits[0, 7] > logits[0, 9] else 9
    assert out.sampled_token_ids.tolist() == [best, 0]
    # Logprobs are the model's: the top ones include tokens that were not allowed.
    reference = logits.double().log_softmax(1)
    assert out.logprobs.token_ids[:, 1:].tolist() == reference.topk(2, dim=1).indices.tolist()
    torch.testing.assert_close(out.logprobs.logprobs[0, 0].double(), reference[0, best], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", [{}, {"top_k": 2}, {"top_p": 0.5}, {"min_p": 0.3}, {"top_k": 50, "top_p": 0.9}])
def test_allowed_token_ids_random_rows_only_sample_allowed_ids(kw):
    torch.manual_seed(13)
    vocab = 300
    allowed = [5, 17, 150, 299]
    params = [SamplingParams(temperature=1.5, seed=3, allowed_token_ids=allowed, logit_bias={17: -3.0}, **kw),
              SamplingParams(temperature=0.8, seed=4, **kw),
              SamplingParams(temperature=0, allowed_token_ids=allowed)]
    generators = [request_generator(p) for p in params]
    seen = set()
    for _ in range(200):
        logits = torch.randn(3, vocab) * 3
        out = sample(logits, params, generators=generators).sampled_token_ids.tolist()
        assert out[0] in allowed and out[2] in allowed, out
        assert out[2] == max(allowed, key=lambda t: logits[2, t].item())
        seen.add(out[0])
    assert len(seen) >= (2 if "top_k" in kw or "top_p" in kw or "min_p" in kw else 4)


def test_logprobs_come_from_the_raw_logits_with_ranks():
    torch.manual_seed(7)
    logits = torch.randn(4, 50)
    params = [
        SamplingParams(temperature=0, logprobs=3),
        SamplingParams(temperature=0.9, logprobs=0, seed=1),
        SamplingParams(temperature=0, repetition_penalty=5.0),
        SamplingParams(top_k=10, logprobs=5),
    ]
    out = sample(logits, params, outputs=[[], [], [int(logits[2].argmax())], []],
                 generators=[request_generator(p) for p in params])
    reference = logits.double().log_softmax(1)
    lp = out.logprobs
    assert lp.token_ids.shape == (4, 6) and lp.token_ids.dtype == torch.int32 and lp.ranks.dtype == torch.int32
    sampled = out.sampled_token_ids.long()
    assert torch.equal(lp.token_ids[:, 0].long(), sampled)
    torch.testing.assert_close(lp.logprobs.double(), reference.gather(1, lp.token_ids.long()), rtol=1e-5, atol=1e-5)
    ranks = (reference > reference.gather(1, sampled[:, None])).sum(1) + 1
    assert lp.ranks.tolist() == ranks.tolist()
    assert lp.token_ids[:, 1:].tolist() == reference.topk(5, dim=1).indices.tolist()
    dicts = lp.to_dicts([3, 0, 0, 5], decode=lambda t: f"<{t}>")
    assert [len(d) for d in dicts][:2] == [3, 1]  # row 0 is greedy: its token is the top one
    first = int(sampled[0])
    assert dicts[0][first] == Logprob(lp.logprobs[0, 0].item(), 1, f"<{first}>")
    top = lp.token_ids[3, 1:].tolist()
    assert len(dicts[3]) in (5, 6) and all(dicts[3][t].rank == r + 1 for r, t in enumerate(top))


def test_top_entries_keep_the_token_and_the_k_likeliest():
    """An entry made for 3 candidates as a request for fewer sees it; -1 keeps them all."""
    entry = {7: Logprob(-3.0, 9), 1: Logprob(-0.1, 1), 4: Logprob(-1.0, 2), 2: Logprob(-2.0, 3)}
    assert list(top_entries(entry, 7, 1)) == [7, 1]
    assert list(top_entries(entry, 4, 2)) == [4, 1]
    assert list(top_entries(entry, 7, 0)) == [7]
    assert top_entries(entry, 7, -1) == entry and list(top_entries(entry, 2, -1)) == [2, 7, 1, 4]


def test_prompt_logprobs_helper():
    torch.manual_seed(8)
    logits = torch.randn(6, 40, dtype=torch.bfloat16)
    targets = torch.tensor([3, 1, 4, 1, 5, 9])
    lp = prompt_logprobs(logits, targets, 2)
    reference = logits.double().log_softmax(1)
    torch.testing.assert_close(lp.logprobs[:, 0].double(), reference[torch.arange(6), targets], rtol=1e-5, atol=1e-5)
    assert lp.token_ids[:, 0].tolist() == targets.tolist()
    assert lp.ranks.tolist() == ((reference >= reference[torch.arange(6), targets][:, None]).sum(1)).tolist()


def test_bad_input_is_a_value_error():
    params = [SamplingParams()]
    md = SamplingMetadata.from_requests(params, [[]], [[]], [None], vocab_size=10)
    with pytest.raises(ValueError, match="floating point"):
        Sampler()(torch.zeros(1, 10, dtype=torch.int64), md)
    with pytest.raises(ValueError, match=r"\[num_rows, vocab\]"):
        Sampler()(torch.zeros(10), md)
    with pytest.raises(ValueError, match="one entry per row"):
        SamplingMetadata.from_requests(params, [[], []], [[]], [None], vocab_size=10)


@requires_cuda
def test_metadata_reaches_a_cuda_sampler_intact():
    """The metadata goes to the GPU by non-blocking copies from pinned memory: greedy rows under
    penalties, logit_bias and the min_tokens mask pick there what they pick on the CPU, and a
    logprobs row reports the same values."""
    torch.manual_seed(11)
    logits = torch.randn(6, 300)
    params = [SamplingParams(temperature=0.0, repetition_penalty=1.3, frequency_penalty=0.5, presence_penalty=0.2,
                             logit_bias={5: 3.0, 9: -2.0}, min_tokens=4, stop_token_ids=[7], logprobs=2)] * 6
    outputs = [[1, 2, 2, 3][:i % 5] for i in range(6)]
    prompts = [[4, 5, 9] for _ in range(6)]
    cpu = sample(logits, params, outputs, prompts)
    gpu = sample(logits.cuda(), params, outputs, prompts)
    assert torch.equal(gpu.sampled_token_ids.cpu(), cpu.sampled_token_ids)
    torch.testing.assert_close(gpu.logprobs.logprobs.cpu(), cpu.logprobs.logprobs, rtol=1e-5, atol=1e-5)


def test_rows_left_to_settle_get_what_settling_at_once_gives():
    """Sampler(..., settle=False) leaves the rows whose first candidates may fall short (flat logits:
    top-p needs most of the vocabulary) to settle(): the same tokens and logprobs, from the same
    draws, as a sampler that settles at once; settle() names the rows it changed."""
    logits = torch.randn(6, 4096) * 0.3
    params = [SamplingParams(temperature=0.9, top_p=0.9, seed=i, logprobs=2) for i in range(3)]
    params += [SamplingParams(temperature=0.0), SamplingParams(temperature=0.8, min_p=0.01, seed=5),
               SamplingParams(temperature=0.8, seed=6)]
    outputs = []
    for settle in (True, False):
        generators = [request_generator(p, 0) for p in params]
        md = SamplingMetadata.from_requests(params, [[]] * 6, [[]] * 6, generators, vocab_size=4096)
        out = Sampler()(logits.clone(), md, settle=settle)
        assert bool(out.rechecks) == (not settle)
        before = out.sampled_token_ids.clone()
        changed = out.settle()  # the rows whose token settling changed
        assert changed == (before != out.sampled_token_ids).nonzero().squeeze(1).tolist()
        assert bool(changed) == (not settle) and out.settle() == []
        outputs.append(out)
    assert torch.equal(outputs[0].sampled_token_ids, outputs[1].sampled_token_ids)
    assert torch.equal(outputs[1].logprobs.token_ids[:, 0], outputs[1].sampled_token_ids)  # redone rows' logprobs too
    assert torch.equal(outputs[0].logprobs.token_ids, outputs[1].logprobs.token_ids)
    assert torch.equal(outputs[0].logprobs.ranks, outputs[1].logprobs.ranks)


@requires_cuda
def test_the_sampler_does_not_wait_for_the_gpu():
    """Which rows are random and which are cut is known from the parameters, and whether a top-p
    row's first candidates held its mass is left to settle(): a batch mixing greedy and random rows,
    top-p, seeded rows, penalties, a bias and logprobs samples without a device-to-host read, so the
    engine's host work is never held behind the forward pass (set_sync_debug_mode raises on one)."""
    torch.manual_seed(12)
    logits = torch.randn(8, 500, device="cuda")
    params = [SamplingParams(temperature=0.0, repetition_penalty=1.2, logprobs=2), SamplingParams(temperature=0.9),
              SamplingParams(temperature=0.7, seed=3, logit_bias={4: 1.0}), SamplingParams(temperature=0.8, top_p=0.9)]
    params *= 2
    generators = [request_generator(p, 0, "cuda") for p in params]
    metadata = SamplingMetadata.from_requests(params, [[1, 2]] * 8, [[3]] * 8, generators, vocab_size=500,
                                              device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = Sampler()(logits.clone(), metadata, settle=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    out.settle()
    assert out.sampled_token_ids.shape == (8,) and out.logprobs is not None
