"""Each architecture against Hugging Face transformers on the same random weights, in float32:
a batch of prompts of different lengths, prefilled together, then decoded step by step over a paged
KV cache. Logits within 1e-4 relative of HF's at every step; greedy ids equal HF's greedy generate.
With an fp8 KV cache, against transformers whose cache rounds each key and value the same way."""

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

from kvserve import Engine, SamplingParams
from kvserve.kv_cache import KV_CACHE_DTYPES
from kvserve.loader import load_model
from kvserve.models import SUPPORTED_ARCHITECTURES
from paged_greedy import paged_greedy
from tiny_models import save_tiny_model

# Lengths cross block boundaries (block_size 4) and Mistral's window of 5.
PROMPTS = [[5, 9, 100, 7], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [42], [900 - 37 * i for i in range(17)]]
NUM_NEW_TOKENS = 5


class RoundingCache(DynamicCache):
    """transformers' KV cache, holding each key and value rounded to a narrower float (fp8 ones
    saturated, as kvserve's cache writes round them); attention then reads them back, as from
    kvserve's cache."""

    def __init__(self, narrower: torch.dtype, config):
        super().__init__(config=config)
        self.narrower = narrower

    def rounded(self, states: torch.Tensor) -> torch.Tensor:
        largest = torch.finfo(self.narrower).max
        return states.clamp(-largest, largest).to(self.narrower).to(states.dtype)

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return super().update(self.rounded(key_states), self.rounded(value_states), layer_idx, *args, **kwargs)


def rounding_cache(model, narrower_cache) -> dict:
    """The keyword that hands `model` a RoundingCache of `narrower_cache` (none for None):
    past_key_values, the name every transformers 5 release takes (later ones also call it cache)."""
    return {} if narrower_cache is None else {"past_key_values": RoundingCache(narrower_cache, model.config)}


def hf_greedy(directory, prompts, num_new_tokens, use_cache=True, narrower_cache=None, gguf_file=None):
    """transformers' greedy ids and per-step logits, one prompt at a time (no padding);
    `narrower_cache`: the dtype its KV cache rounds to; `gguf_file`: a GGUF file in `directory`,
    read by transformers' own GGUF loader (dequantized to float32)."""
    gguf = {} if gguf_file is None else {"gguf_file": gguf_file}
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, **gguf).eval()
    ids, logits = [], []
    for prompt in prompts:
        out = model.generate(torch.tensor([prompt]), max_new_tokens=num_new_tokens, do_sample=False,
                             eos_token_id=None, output_logits=True, return_dict_in_generate=True,
                             use_cache=use_cache, **rounding_cache(model, narrower_cache))
        ids.append(out.sequences[0, len(prompt):].tolist())
        logits.append([step[0] for step in out.logits])
    return ids, logits


def assert_logits_close(ours, theirs, rtol=1e-4):
    for our_steps, their_steps in zip(ours, theirs, strict=True):
        for step, (a, b) in enumerate(zip(our_steps, their_steps, strict=True)):
            error = ((a - b).abs().max() / b.abs().max()).item()
            assert error <= rtol, f"step {step}: max relative error {error:.2e} > {rtol:.0e}"


@pytest.mark.parametrize("architecture", SUPPORTED_ARCHITECTURES)
def test_matches_transformers(tiny_model_dir, architecture):
    directory = tiny_model_dir(architecture)
    model = load_model(directory, dtype="float32").model
    ids, logits = paged_greedy(model, PROMPTS, NUM_NEW_TOKENS)
    hf_ids, hf_logits = hf_greedy(directory, PROMPTS, NUM_NEW_TOKENS)
    assert_logits_close(logits, hf_logits)
    assert ids == hf_ids


@pytest.mark.parametrize("kv_cache_dtype", ["fp8", "fp8_e5m2", "bfloat16"])
@pytest.mark.parametrize("architecture", SUPPORTED_ARCHITECTURES)
def test_narrower_kv_cache_matches_transformers_rounding_the_same(tiny_model_dir, architecture, kv_cache_dtype):
    directory, narrower = tiny_model_dir(architecture), KV_CACHE_DTYPES[kv_cache_dtype]
    model = load_model(directory, dtype="float32").model
    ids, logits = paged_greedy(model, PROMPTS, NUM_NEW_TOKENS, cache_dtype=narrower)
    hf_ids, hf_logits = hf_greedy(directory, PROMPTS, NUM_NEW_TOKENS, narrower_cache=narrower)
    # kvserve's keys and transformers' differ in float32's last bits: where one sits at a bfloat16
    # rounding boundary the two caches round it 2^-8 apart, which moves logits by up to ~5e-4 (at
    # fp8's coarser grid such a boundary is rarer). Rounding at all moves them by 4e-3 or more.
    rtol = 1e-4 if narrower.itemsize == 1 else 1e-3
    assert_logits_close(logits, hf_logits, rtol=rtol)
    assert ids == hf_ids
    # The rounding shows in the logits: the comparison above would fail without it.
    _, exact_logits = hf_greedy(directory, PROMPTS, NUM_NEW_TOKENS)
    with pytest.raises(AssertionError, match="max relative error"):
        assert_logits_close(logits, exact_logits, rtol=rtol)


# config.json edits whose sliding window transformers reads per architecture: Qwen's applies only
# under use_sliding_window (configs before transformers 5 may have neither it nor layer_types), and
# from max_window_layers on; Llama has none, whatever the config carries. The reference runs without
# a KV cache: generate()'s DynamicCache trims any layer to a `sliding_window` the config names, for
# every model, so a Llama would attend through the window while decoding but not in prefill.
@pytest.mark.parametrize("architecture, drop, update", [
    ("Qwen2ForCausalLM", ("use_sliding_window", "layer_types"), dict(sliding_window=5)),
    ("Qwen3ForCausalLM", ("use_sliding_window", "layer_types"), dict(sliding_window=5)),
    ("LlamaForCausalLM", (), dict(sliding_window=5)),
    ("Qwen2ForCausalLM", ("layer_types",), dict(sliding_window=5, use_sliding_window=True, max_window_layers=1)),
], ids=["qwen2-no-use_sliding_window", "qwen3-no-use_sliding_window", "llama-sliding_window-key",
        "qwen2-window-from-layer-1"])
def test_sliding_window_as_transformers_reads_it(tmp_path, tiny_model_dir, architecture, drop, update):
    directory = shutil.copytree(tiny_model_dir(architecture), tmp_path / "edited")
    config = json.loads((directory / "config.json").read_text())
    for key in drop:
        config.pop(key, None)
    (directory / "config.json").write_text(json.dumps({**config, **update}))
    model = load_model(directory, dtype="float32").model
    ids, logits = paged_greedy(model, PROMPTS, NUM_NEW_TOKENS)
    hf_ids, hf_logits = hf_greedy(directory, PROMPTS, NUM_NEW_TOKENS, use_cache=False)
    assert_logits_close(logits, hf_logits)
    assert ids == hf_ids


# Rope scalings that stretch the positions give a longer context than max_position_embeddings, as
# vLLM derives it (linear: times the factor; yarn: original_max_position_embeddings times it).
@pytest.mark.parametrize("rope_scaling, max_model_len", [
    ({"rope_type": "linear", "factor": 2.0}, 64),
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}, 64),
], ids=["linear", "yarn"])
def test_a_stretched_rope_serves_past_max_position_embeddings(tmp_path, rope_scaling, max_model_len):
    directory = save_tiny_model(tmp_path / "stretched", "Qwen2ForCausalLM", max_position_embeddings=32,
                                rope_scaling=rope_scaling)
    engine = Engine(str(directory), dtype="float32", kv_cache_memory_gb=0.01)
    assert engine.max_model_len == max_model_len
    prompt = [(7 * i) % 900 + 10 for i in range(50)]  # past the 32 positions the config names
    [output] = engine.generate([{"prompt_token_ids": prompt}], SamplingParams(temperature=0, max_tokens=8,
                                                                              ignore_eos=True), use_tqdm=False)
    [hf_ids], _ = hf_greedy(directory, [prompt], 8)
    assert output.outputs[0].token_ids == hf_ids


@pytest.mark.parametrize("architecture", ["LlamaForCausalLM", "Qwen3ForCausalLM"])
def test_chunked_prefill_and_block_size_do_not_change_results(tiny_model_dir, architecture):
    model = load_model(tiny_model_dir(architecture)).model
    ids, logits = paged_greedy(model, PROMPTS, NUM_NEW_TOKENS)
    for block_size, chunk in [(1, 3), (16, 5)]:
        other_ids, other_logits = paged_greedy(model, PROMPTS, NUM_NEW_TOKENS, block_size=block_size,
                                               prefill_chunk=chunk, seed=1)
        assert other_ids == ids
        assert_logits_close(other_logits, logits, rtol=1e-5)


@pytest.mark.parametrize("architecture", ["LlamaForCausalLM", "Qwen2ForCausalLM"])
def test_tied_embeddings(tiny_model_dir, architecture):
    directory = tiny_model_dir(architecture, tie_word_embeddings=True)
    model = load_model(directory).model
    assert model.lm_head is None
    assert not any("lm_head" in name for name, _ in model.named_parameters())
    ids, logits = paged_greedy(model, PROMPTS[:2], NUM_NEW_TOKENS)
    hf_ids, hf_logits = hf_greedy(directory, PROMPTS[:2], NUM_NEW_TOKENS)
    assert_logits_close(logits, hf_logits)
    assert ids == hf_ids


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_stays_close_to_float32(tiny_model_dir, dtype):
    directory = tiny_model_dir("Qwen2ForCausalLM")
    _, reference = paged_greedy(load_model(directory).model, PROMPTS, 1)
    model = load_model(directory, dtype=dtype).model
    assert model.model.embed_tokens.weight.dtype == dtype
    _, logits = paged_greedy(model, PROMPTS, 1)
    assert logits[0][0].dtype == dtype  # compute_logits keeps the model dtype; the sampler upcasts
    assert_logits_close(logits, reference, rtol=5e-2)


def test_wrong_number_of_kv_caches_is_rejected(tiny_model_dir):
    model = load_model(tiny_model_dir("LlamaForCausalLM")).model
    with pytest.raises(ValueError, match=r"kv_caches: expected 2 \(one per layer\), got 1"):
        model(torch.tensor([1]), torch.tensor([0]), [None], None)
