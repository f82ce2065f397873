"""The offline API where vLLM's `LLM` has it: get_tokenizer(), chat's chat_template_kwargs,
seed=None, a hub id as tokenizer=, None meaning the default, clear errors for wrongly typed
arguments, num_cached_tokens, generation_config, and vLLM's flags kvserve honours as far as it can."""

from __future__ import annotations

import logging

import huggingface_hub
import pytest
from test_model_source import _hub_cache
from tiny_tokenizer import save_tiny_tokenizer

from kvserve import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=4)
CONVERSATION = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("LlamaForCausalLM")


@pytest.fixture(scope="module")
def llm(model_dir):
    return make_llm(model_dir)


def make_llm(model_dir, **kwargs) -> LLM:
    return LLM(str(model_dir), dtype="float32", kv_cache_memory_gb=0.01, device="cpu", **kwargs)


def test_get_tokenizer_and_get_default_sampling_params(llm, model_dir):
    assert llm.get_tokenizer() is llm.tokenizer
    assert llm.get_default_sampling_params() == llm.default_sampling_params()
    assert (llm.get_default_sampling_params().temperature, llm.get_default_sampling_params().top_p) == (0.7, 0.9)
    with pytest.raises(ValueError, match="skip_tokenizer_init=True"):
        make_llm(model_dir, skip_tokenizer_init=True).get_tokenizer()


def test_generation_config_vllm_ignores_the_models_sampling_defaults(model_dir):
    default = SamplingParams()
    assert make_llm(model_dir, generation_config="vllm").get_default_sampling_params() == default
    with pytest.raises(ValueError, match=r"generation_config must be one of \['auto', 'vllm'\], got 'x'"):
        make_llm(model_dir, generation_config="x")


def test_override_generation_config_replaces_or_adds_sampling_defaults(model_dir):
    """The tiny model's generation config sets temperature 0.7 and top_p 0.9: an override replaces
    one and adds others (max_new_tokens as max_tokens); with generation_config "vllm" only the
    override counts."""
    merged = make_llm(model_dir, override_generation_config={"temperature": 0.2, "max_new_tokens": 7, "top_k": 5})
    params = merged.get_default_sampling_params()
    assert (params.temperature, params.top_p, params.max_tokens, params.top_k) == (0.2, 0.9, 7, 5)
    alone = make_llm(model_dir, generation_config="vllm", override_generation_config={"top_k": 5})
    assert alone.get_default_sampling_params() == SamplingParams(top_k=5)
    with pytest.raises(ValueError, match=r"generation config keys \['top_q'\] set no sampling default"):
        make_llm(model_dir, override_generation_config={"top_q": 0.5})
    with pytest.raises(ValueError, match=r"temperature must be"):
        make_llm(model_dir, override_generation_config={"temperature": -1})
    with pytest.raises(ValueError, match=r"override_generation_config must be a dict"):
        make_llm(model_dir, override_generation_config=[("temperature", 0.5)])


def test_chat_template_kwargs_become_template_variables(llm):
    template = "{% if enable_thinking %}think {% endif %}{% for m in messages %}{{ m.content }}{% endfor %}"
    [on] = llm.chat(CONVERSATION, GREEDY, use_tqdm=False, chat_template=template,
                    chat_template_kwargs={"enable_thinking": True})
    [off] = llm.chat(CONVERSATION, GREEDY, use_tqdm=False, chat_template=template,
                     chat_template_kwargs={"enable_thinking": False})
    assert (on.prompt, off.prompt) == ("think Hi", "Hi")
    # As vLLM's: they win over chat()'s arguments of the same name.
    [open_turn] = llm.chat(CONVERSATION, GREEDY, use_tqdm=False, chat_template_kwargs={"add_generation_prompt": False})
    assert not open_turn.prompt.endswith("<|im_start|>assistant\n")
    with pytest.raises(ValueError, match=r"chat_template_kwargs cannot set \['tokenize'\]"):
        llm.chat(CONVERSATION, GREEDY, use_tqdm=False, chat_template_kwargs={"tokenize": True})


@pytest.mark.parametrize("messages, match", [
    ("hello", r"messages must be a list of \{'role', 'content'\} dicts.*got str: use generate\(\)"),
    ({"role": "user", "content": "hi"}, "messages must be a list.*got dict"),
    ([], "messages is empty"),
])
def test_chat_with_something_else_than_messages_is_a_clear_error(llm, messages, match):
    with pytest.raises(ValueError, match=match):
        llm.chat(messages, GREEDY, use_tqdm=False)


def test_seed_none_fixes_no_seed(model_dir):
    import torch

    torch.manual_seed(123)
    engine = make_llm(model_dir, seed=None)
    assert torch.initial_seed() == 123  # left as it was
    assert len(engine.generate("Hi", GREEDY, use_tqdm=False)[0].outputs[0].token_ids) == 4
    for seed in ("1", 1.5, True, 2**64):
        with pytest.raises(ValueError, match=rf"seed must be an integer in \[-2\*\*63, 2\*\*64 - 1\] or None, "
                                             rf"got {seed!r}"):
            make_llm(model_dir, seed=seed)


def test_a_hub_id_as_tokenizer_resolves_from_the_local_cache(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # any download attempt fails
    cache = _hub_cache(tmp_path, save_tiny_tokenizer(tmp_path / "llama3", 1000, style="llama3"), "TinyOrg/tok")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    engine = make_llm(model_dir, tokenizer="TinyOrg/tok")
    assert engine.tokenizer.bos_token == "<|begin_of_text|>"  # the llama3-style one, not the model's own


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_num_seqs=2.5), r"max_num_seqs must be an integer in \[1, 2147483647\], got 2.5"),
    (dict(max_num_seqs=0), r"max_num_seqs must be an integer in \[1, 2147483647\], got 0"),
    (dict(max_num_batched_tokens=2**31), r"max_num_batched_tokens must be an integer in \[1, 2147483647\]"),
    (dict(gpu_memory_utilization=None), r"gpu_memory_utilization must be in \(0, 1\], got None"),
    (dict(gpu_memory_utilization="0.5"), r"gpu_memory_utilization must be in \(0, 1\], got '0.5'"),
    (dict(max_model_len="64"), "max_model_len must be an integer or None, got '64'"),
    (dict(enable_prefix_caching="yes"), "enable_prefix_caching must be True, False or None, got 'yes'"),
    (dict(long_prefill_token_threshold=-1), r"long_prefill_token_threshold must be an integer in \[0, 2147483647\]"),
    (dict(long_prefill_token_threshold=8, enable_chunked_prefill=False),
     "long_prefill_token_threshold 8 needs chunked prefill"),
    (dict(tensor_parallel_size=2), "tensor_parallel_size must be 1 \\(kvserve runs on one device\\), got 2"),
])
def test_wrongly_typed_arguments_are_clear_errors(model_dir, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_llm(model_dir, **kwargs)


def test_none_means_the_default_where_vllms_default_is_none(model_dir):
    engine = make_llm(model_dir, enable_prefix_caching=None, enable_chunked_prefill=None, max_num_seqs=None,
                      max_num_batched_tokens=None, block_size=None)
    assert engine.max_num_seqs == 256
    prompt = {"prompt_token_ids": list(range(10, 50))}
    engine.generate(prompt, GREEDY, use_tqdm=False)
    # Prefix caching on, in blocks of 16: the second run finds the prompt's two full blocks.
    assert engine.generate(prompt, GREEDY, use_tqdm=False)[0].num_cached_tokens == 32


def test_vllms_one_device_flags_are_accepted(model_dir, caplog):
    with caplog.at_level(logging.INFO, logger="kvserve"):
        make_llm(model_dir, tensor_parallel_size=1, trust_remote_code=True)
    assert "kvserve never runs a checkpoint's code" in caplog.text


def test_an_integer_request_id_is_a_clear_error(llm):
    with pytest.raises(ValueError, match="request_id must be a str, got int 7"):
        llm.add_request(7, "Hi", GREEDY)
    assert not llm.has_unfinished_requests()


def test_num_cached_tokens_counts_the_prompts_prefix_cache_hit(llm):
    prompt = {"prompt_token_ids": list(range(10, 50))}  # 40 tokens: two full blocks of 16 to share
    [first] = llm.generate(prompt, GREEDY, use_tqdm=False)
    [second] = llm.generate(prompt, GREEDY, use_tqdm=False)
    assert (first.num_cached_tokens, second.num_cached_tokens) == (0, 32)
    llm.add_request("streamed", {"prompt_token_ids": list(range(10, 30)) + [7]}, GREEDY)
    outputs = []
    while llm.has_unfinished_requests():
        outputs += llm.step()
    assert outputs and all(o.num_cached_tokens == 16 for o in outputs)


def test_reset_prefix_cache_makes_the_next_prompt_compute_from_scratch(llm):
    prompt = {"prompt_token_ids": list(range(300, 340))}
    llm.generate(prompt, GREEDY, use_tqdm=False)
    assert llm.generate(prompt, GREEDY, use_tqdm=False)[0].num_cached_tokens == 32
    llm.add_request("holding", prompt, GREEDY)
    llm.step()
    assert llm.reset_prefix_cache() is False  # a request holds blocks: nothing dropped
    llm.abort("holding")
    while llm.has_unfinished_requests():
        llm.step()
    assert llm.reset_prefix_cache() is True
    [cold] = llm.generate(prompt, GREEDY, use_tqdm=False)
    assert cold.num_cached_tokens == 0 and llm.stats().num_free_blocks == llm.stats().num_blocks - 1


def test_a_cache_salt_shares_blocks_only_with_its_own(llm):
    tokens = list(range(60, 100))  # 40 tokens: two full blocks of 16
    salted = [{"prompt_token_ids": tokens, "cache_salt": salt} for salt in ("alice", "bob", "alice")]
    hits = [o.num_cached_tokens for o in llm.generate(salted[:1], GREEDY, use_tqdm=False)
            + llm.generate(salted[1:], GREEDY, use_tqdm=False)
            + llm.generate({"prompt_token_ids": tokens}, GREEDY, use_tqdm=False)]
    assert hits == [0, 0, 32, 0]  # alice's blocks serve alice only; unsalted prompts have their own
    with pytest.raises(ValueError, match="cache_salt must be a non-empty string"):
        llm.generate({"prompt": "Hi", "cache_salt": ""}, GREEDY, use_tqdm=False)
