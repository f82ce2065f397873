"""ops.DecoderStack, the CPU decode steps' one-call decoder, against the model's Python layers: the
same kernels in the same order, so the same bits, for every architecture's extras (Qwen2's biases,
Qwen3's q/k norms, Mistral's sliding window) and dtype, with a LoRA adapter and without; and bad
steps and deltas rejected before anything is written."""

import gguf
import pytest
import torch

import kvserve.models.llama as llama
from kvserve import _C
from kvserve.loader import load_model
from kvserve.lora import LoRARequest
from kvserve.lora.adapter import Delta, LoRAAdapter
from kvserve.lora.batch import LoRABatch
from kvserve.models import SUPPORTED_ARCHITECTURES, AttentionMetadata
from paged_greedy import allocate_kv_caches, paged_greedy

# Four requests (decode steps of 4 tokens: the stack's largest) whose lengths cross blocks of 4
# and Mistral's window of 5.
PROMPTS = [[5, 9, 100, 7], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [42], [900 - 37 * i for i in range(17)]]


def greedy(model, monkeypatch, max_tokens: int, **kwargs):
    monkeypatch.setattr(llama, "DECODER_STACK_MAX_TOKENS", max_tokens)
    return paged_greedy(model, PROMPTS, 6, **kwargs)


def assert_same_bits(model, monkeypatch, **kwargs) -> list[list[int]]:
    """Greedy steps through the decoder stack and through the Python layers give the same ids and
    logits, bit for bit; the ids."""
    ids, logits = greedy(model, monkeypatch, 4, **kwargs)
    reference_ids, reference_logits = greedy(model, monkeypatch, 0, **kwargs)
    assert ids == reference_ids
    for ours, theirs in zip(logits, reference_logits, strict=True):
        for a, b in zip(ours, theirs, strict=True):
            assert torch.equal(a, b)
    return ids


def random_adapter(model, seed: int = 0) -> LoRAAdapter:
    """Deltas of rank 4 per part on qkv, gate_up and down (stacked a, block-diagonal b, as
    lora/adapter.py builds them), none on o; random, never zeros."""
    generator = torch.Generator().manual_seed(seed)
    deltas = {}
    for layer in model.model.layers:
        for linear_layer in (layer.self_attn.qkv_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj):
            parts, rank = linear_layer.output_sizes, 4
            a = 0.1 * torch.randn(rank * len(parts), linear_layer.input_size, generator=generator)
            b = torch.block_diag(*(0.1 * torch.randn(size, rank, generator=generator) for size in parts))
            deltas[linear_layer] = Delta(a.to(model.dtype), b.to(model.dtype).contiguous())
    return LoRAAdapter(LoRARequest("random", 1, "unused"), deltas, 4 * 3)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("architecture", SUPPORTED_ARCHITECTURES)
def test_same_bits_as_the_python_layers(tiny_model_dir, architecture, dtype, monkeypatch):
    model = load_model(tiny_model_dir(architecture), dtype=dtype).model
    adapter = random_adapter(model)
    # Prefill chunks of 3 tokens put several tokens of one request in a stack step (causal within it).
    for kwargs in ({}, {"prefill_chunk": 3}, {"lora": LoRABatch((adapter,))}):
        ids = assert_same_bits(model, monkeypatch, **kwargs)
    assert adapter.stack_deltas is not None  # the adapter's steps ran in the stack
    base_ids, _ = greedy(model, monkeypatch, 4)
    assert ids != base_ids  # and its deltas changed them


@pytest.mark.parametrize("dtype, cache_dtype", [
    ("float32", torch.float8_e4m3fn), ("bfloat16", torch.float8_e4m3fn), ("bfloat16", torch.float8_e5m2),
    ("float32", torch.bfloat16)], ids=str)
def test_narrower_caches_same_bits_as_the_python_layers(tiny_model_dir, dtype, cache_dtype, monkeypatch):
    model = load_model(tiny_model_dir("Qwen3ForCausalLM"), dtype=dtype).model
    for kwargs in ({}, {"prefill_chunk": 3}):
        assert_same_bits(model, monkeypatch, cache_dtype=cache_dtype, **kwargs)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("weights", ["fp8", "uint4", "int8", "parts", "parts-with-plain"])
def test_quantized_weights_same_bits_as_the_python_layers(tiny_model_dir, gguf_pair, weights, dtype, monkeypatch):
    """quantization="fp8", and a GGUF file's Q4_1 and Q8_0 blocks: the stack reads the e4m3 codes with
    their scales, the uint4 codes with their scales and offsets, and the int8 codes with their scales,
    as the layers' products do, and ("parts") projections of both kinds part by part (Qwen2's q, k, v
    biases too; "parts-with-plain": a part of neither kind, Q5_1, in the dtype, interleaved in
    bfloat16), with a LoRA adapter (its deltas in the model's dtype beside the codes) and without."""
    if weights == "fp8":
        model = load_model(tiny_model_dir("Qwen2ForCausalLM"), dtype=dtype, quantization="fp8").model
    elif weights.startswith("parts"):
        other = gguf.GGMLQuantizationType.Q8_0 if weights == "parts" else gguf.GGMLQuantizationType.Q5_1
        mixed = {"attn_v": other, "ffn_up": other}
        model = load_model(gguf_pair("Qwen2ForCausalLM", gguf.GGMLQuantizationType.Q4_1, mixed)[1], dtype=dtype).model
        parts = model.model.layers[0].self_attn.qkv_proj.parts
        assert parts is not None and (parts[2].weight.dtype == getattr(torch, dtype)) == (weights != "parts")
    else:
        blocks = gguf.GGMLQuantizationType.Q4_1 if weights == "uint4" else gguf.GGMLQuantizationType.Q8_0
        model = load_model(gguf_pair("Qwen2ForCausalLM", blocks)[1], dtype=dtype).model
        codes = torch.uint8 if weights == "uint4" else torch.int8
        assert model.model.layers[0].self_attn.qkv_proj.weight.dtype == codes
    for kwargs in ({}, {"lora": LoRABatch((random_adapter(model),))}):
        assert_same_bits(model, monkeypatch, **kwargs)


@pytest.mark.parametrize("weights", ["float32", "uint4"])
def test_input_orders_same_bits_as_the_python_layers(tiny_model_dir, gguf_pair, weights, monkeypatch):
    """Products that take their input's columns in another order (act-order GPTQ's input_order, here
    random), over plain weights and uint4 codes: the stack gathers the columns as the layers do, with
    a LoRA adapter (which takes the input as it is) and without; the orders change the ids."""
    if weights == "float32":
        model = load_model(tiny_model_dir("Qwen2ForCausalLM"), dtype="float32").model
    else:
        model = load_model(gguf_pair("Qwen2ForCausalLM", gguf.GGMLQuantizationType.Q4_1)[1], dtype="float32").model
    plain_ids, _ = greedy(model, monkeypatch, 4)
    generator = torch.Generator().manual_seed(3)
    for linear in model.decoder_linears():
        linear.prepare_input_order()
        linear.input_order.copy_(torch.randperm(linear.input_size, generator=generator))
    model._decoder_stack = None
    for kwargs in ({}, {"lora": LoRABatch((random_adapter(model),))}):
        ids = assert_same_bits(model, monkeypatch, **kwargs)
    assert ids != plain_ids


@pytest.fixture(scope="module")
def llama_model(tiny_model_dir):
    return load_model(tiny_model_dir("LlamaForCausalLM"), dtype="float32").model


def decode_step(model, num_blocks=8, block_size=4):
    """A one-token step of one request at position 2 (blocks 3, 5) and its freshly allocated caches."""
    caches = allocate_kv_caches(model, num_blocks, block_size)
    for key_cache, value_cache in caches:
        key_cache.normal_()
        value_cache.normal_()
    metadata = AttentionMetadata(slot_mapping=torch.tensor([3 * block_size + 2]),
                                 block_table=torch.tensor([[3, 5]], dtype=torch.int32),
                                 seq_lens=torch.tensor([3], dtype=torch.int32),
                                 query_start_loc=torch.tensor([0, 1], dtype=torch.int32))
    return caches, metadata


def run_stack(model, caches, metadata, hidden=None, cos_sin=None):
    hidden = model.model.embed_tokens(torch.tensor([7])) if hidden is None else hidden
    cos, sin = model.rotary.cos_sin(torch.tensor([2]), model.dtype) if cos_sin is None else cos_sin
    model.decoder_stack(caches)(hidden, cos, sin, metadata.slot_mapping, metadata.block_table, metadata.seq_lens,
                                metadata.query_start_loc)
    return hidden


def test_writes_the_step_into_every_layers_cache(llama_model):
    caches, metadata = decode_step(llama_model)
    before = [(k.clone(), v.clone()) for k, v in caches]
    run_stack(llama_model, caches, metadata)
    for (key, value), (key0, value0) in zip(caches, before):
        for cache, cache0 in ((key, key0), (value, value0)):
            changed = (cache != cache0).flatten(2).any(-1)
            assert changed.nonzero().tolist() == [[3, 2]]


@pytest.mark.parametrize("change, message", [
    (dict(slot_mapping=torch.tensor([8 * 4])), "slot_mapping[0] = 32 is outside the cache's 32 slots"),
    (dict(seq_lens=torch.tensor([9], dtype=torch.int32)), "seq_lens[0] = 9 exceeds"),
    (dict(block_table=torch.tensor([[8, 5]], dtype=torch.int32)), "block_table[0][0] = 8 is out of range"),
    (dict(block_table=torch.tensor([[3, 5]])), "block_table: expected dtype int32"),
    (dict(query_start_loc=torch.tensor([0, 1, 1], dtype=torch.int32)), "query_start_loc: dimension 0 must be num_reqs \\+ 1 = 2"),
])
def test_bad_batch_layouts_raise_before_anything_is_written(llama_model, change, message):
    caches, metadata = decode_step(llama_model)
    before = [(k.clone(), v.clone()) for k, v in caches]
    hidden = llama_model.model.embed_tokens(torch.tensor([7]))
    hidden0 = hidden.clone()
    bad = AttentionMetadata(**{**metadata.__dict__, **change})
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        run_stack(llama_model, caches, bad, hidden=hidden)
    assert torch.equal(hidden, hidden0)
    assert all(torch.equal(k, k0) and torch.equal(v, v0) for (k, v), (k0, v0) in zip(caches, before))


@pytest.mark.parametrize("hidden, message", [
    (torch.zeros(1, 64, dtype=torch.bfloat16), "hidden: expected the dtype of the weights \\(float32\\), got bfloat16"),
    (torch.zeros(1, 32), "hidden: dimension 1 must be hidden size of the weights = 64"),
    (torch.zeros(64, 2).t(), "hidden: expected a contiguous"),
    (torch.zeros(64), "hidden: expected 2 dimensions"),
])
def test_bad_hidden_states_raise(llama_model, hidden, message):
    caches, metadata = decode_step(llama_model)
    cos_sin = llama_model.rotary.cos_sin(torch.tensor([2] * hidden.shape[0] if hidden.dim() == 2 else [2]),
                                         llama_model.dtype)
    with pytest.raises(ValueError, match=message):
        run_stack(llama_model, caches, metadata, hidden=hidden, cos_sin=cos_sin)


def layer_arrays(model, caches):
    layer, (key_cache, value_cache) = model.model.layers[0], caches[0]
    return dict(input_norm=layer.input_layernorm.weight, qkv=layer.self_attn.qkv_proj.weight,
                o=layer.self_attn.o_proj.weight, post_norm=layer.post_attention_layernorm.weight,
                gate_up=layer.mlp.gate_up_proj.weight, down=layer.mlp.down_proj.weight,
                key_cache=key_cache, value_cache=value_cache)


@pytest.mark.parametrize("change, error, message", [
    (dict(qkv=None), ValueError, r"layers\[0\]: missing 'qkv'"),
    (dict(qkv="weights"), TypeError, r"layers\[0\]\['qkv'\]: expected an array"),
    (dict(o=torch.zeros(64, 32)), ValueError, "o: dimension 1 must be in_features = 64"),
    (dict(down=torch.zeros(64, 96, dtype=torch.float16)), ValueError,
     r"down: expected the dtype of final_norm \(float32\), float8_e4m3fn codes \(with weight_scale\), uint8 "
     r"bytes of uint4 codes \(with weight_scale and weight_offset\) or int8 codes \(with weight_scale\), got "
     r"float16"),
    (dict(down=torch.zeros(64, 96, dtype=torch.float8_e4m3fn)), ValueError,
     r"layers\[0\]: down_scale is required with a float8_e4m3fn weight"),
    (dict(o_scale=torch.ones(64)), ValueError,
     r"layers\[0\]: o_scale and o_offset are for quantized weights, the weight is of the input's dtype"),
    (dict(down=torch.zeros(64, 48, dtype=torch.uint8), down_scale=torch.ones(64, 3)), ValueError,
     r"layers\[0\]: down_scale and down_offset are required with a uint4 weight"),
    (dict(down=torch.zeros(64, 48, dtype=torch.uint8), down_scale=torch.ones(64, 3), down_offset=torch.ones(64, 2)),
     ValueError, r"down_offset: dimension 1 must be in_features / 32 = 3"),
    (dict(o=torch.zeros(64, 64, dtype=torch.uint8)), ValueError, r"o: dimension 1 must be in_features / 2 = 32"),
    (dict(down=torch.zeros(64, 96, dtype=torch.int8), down_scale=torch.ones(64, 3)), ValueError,
     r"down_scale: dimension 1 must be in_features / 16 = 6"),
    (dict(down=torch.zeros(64, 96, dtype=torch.int8)), ValueError,
     r"layers\[0\]: down_scale is required with an int8 weight"),
    (dict(down=torch.zeros(64, 96, dtype=torch.float8_e4m3fn), down_scale=torch.ones(96)), ValueError,
     r"down_scale: dimension 0 must be out_features of the weight = 64"),
    (dict(key_cache=torch.zeros(8, 4, 3, 16)), ValueError, "key_cache: dimension 2 must be num_kv_heads = 2"),
    (dict(key_cache=torch.zeros(8, 4, 2, 16, dtype=torch.float64)), ValueError,
     r"key_cache: expected the dtype of final_norm \(float32\) or float8_e4m3fn or float8_e5m2 .*, got float64"),
    (dict(key_cache=torch.zeros(8, 4, 2, 16, dtype=torch.float8_e4m3fn)), ValueError,
     r"value_cache: expected the dtype of the first cache \(float8_e4m3fn\), got float32"),
    (dict(q_norm=torch.ones(16)), ValueError, "one of q_norm and k_norm"),
    (dict(o_order=torch.arange(32)), ValueError, "o_order: dimension 0 must be in_features = 64"),
    (dict(o_order=torch.arange(64, dtype=torch.int32)), ValueError, "o_order: expected .*int64"),
    (dict(down_order=torch.arange(96) + 1), ValueError, r"layers\[0\]\['down_order'\]: a column outside"),
    (dict(qkv_parts="parts"), TypeError, r"layers\[0\]\['qkv_parts'\]: expected a list of dicts"),
    (dict(qkv_parts=[dict(w=torch.zeros(64, 64))]), TypeError, r"expected dicts of w, w_scale, w_offset and rows"),
    (dict(qkv_parts=[dict(w=torch.zeros(64, 64), rows=64)]), ValueError,
     r"layers\[0\]\['qkv_parts'\]: the parts' rows add up to 64, expected 128"),
])
def test_bad_weights_are_rejected_when_the_stack_is_built(llama_model, change, error, message):
    caches, _ = decode_step(llama_model)
    arrays = {**layer_arrays(llama_model, caches), **change}
    with pytest.raises(error, match=message):
        _C.ops.DecoderStack([arrays], llama_model.model.norm.weight, 4, 2, 16, 1e-5, 0.25)


def test_the_stack_follows_the_caches_it_is_given(llama_model):
    first, metadata = decode_step(llama_model)
    stack = llama_model.decoder_stack(first)
    assert llama_model.decoder_stack(first) is stack
    second, _ = decode_step(llama_model)
    assert llama_model.decoder_stack(second) is not stack
    assert llama_model.decoder_stack(second).num_layers == len(llama_model.model.layers)


@pytest.mark.parametrize("change, error, message", [
    (dict(layers=[]), ValueError, r"layers: expected one per layer of the stack \(2\), got 0"),
    (dict(qkv="deltas"), TypeError, r"layers\[0\]\['qkv'\]: expected a pair of arrays"),
    (dict(qkv=(torch.zeros(4, 32), torch.zeros(128, 4))), ValueError,
     r"layers\[0\]\['qkv'\] a: dimension 1 must be in_features of the product = 64"),
    (dict(qkv=(torch.zeros(4, 64), torch.zeros(128, 3))), ValueError,
     r"layers\[0\]\['qkv'\] b: dimension 1 must be the rank \(rows of a\) = 4"),
    (dict(down=(torch.zeros(4, 96, dtype=torch.bfloat16), torch.zeros(64, 4))), ValueError,
     r"layers\[0\]\['down'\] a: expected the dtype of the stack's weights \(float32\), got bfloat16"),
    (dict(o=(torch.zeros(0, 64), torch.zeros(64, 0))), ValueError, "expected a rank of at least 1"),
])
def test_bad_lora_deltas_are_rejected_when_built(llama_model, change, error, message):
    caches, _ = decode_step(llama_model)
    stack = llama_model.decoder_stack(caches)
    layers = change.pop("layers", None)
    if layers is None:
        layers = [change, {}]
    with pytest.raises(error, match=message):
        _C.ops.DecoderLoRA(stack, layers)


def test_a_steps_lora_deltas_belong_to_its_stack(llama_model):
    caches, metadata = decode_step(llama_model)
    other = _C.ops.DecoderStack([layer_arrays(llama_model, caches)] * 2, llama_model.model.norm.weight, 4, 2, 16,
                                1e-5, 0.25)
    deltas = _C.ops.DecoderLoRA(other, [{}, {}])
    hidden = llama_model.model.embed_tokens(torch.tensor([7]))
    cos, sin = llama_model.rotary.cos_sin(torch.tensor([2]), llama_model.dtype)
    with pytest.raises(ValueError, match="lora: built for another decoder stack"):
        llama_model.decoder_stack(caches)(hidden, cos, sin, metadata.slot_mapping, metadata.block_table,
                                          metadata.seq_lens, metadata.query_start_loc, lora=deltas)
