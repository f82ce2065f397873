"""GGUF files: a tiny model written with gguf's writer (as llama.cpp's converter would) loads back with
the same config, weights, logits and tokenizer; a quantized one matches transformers' own GGUF loader."""

import json

import gguf
import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from kvserve.loader import load_model
from kvserve.loader.gguf_tokenizer import tokenizer_from_gguf
from kvserve.loader.gguf_weights import undo_rope_permutation
from paged_greedy import paged_greedy
from test_models import PROMPTS, assert_logits_close, hf_greedy
from tiny_gguf import llama_cpp_permute, write_sentencepiece_gguf, write_tiny_gguf

TEXTS = ["The capital of France is Paris.", "Numbers 12345 and 3.14!", "Café 東京 🙂",
         "<|im_start|>user\nHi<|im_end|>\n", "  two  spaces\n\nnewlines"]

ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")


def test_undo_rope_permutation_inverts_llama_cpp():
    rows = torch.randn(6 * 8, 5)
    assert torch.equal(undo_rope_permutation(torch.from_numpy(llama_cpp_permute(rows.numpy(), 6)), 6), rows)
    bias = torch.randn(2 * 4)
    assert torch.equal(undo_rope_permutation(torch.from_numpy(llama_cpp_permute(bias.numpy(), 2)), 2), bias)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_float32_round_trip_gives_identical_logits(gguf_pair, architecture):
    directory, path = gguf_pair(architecture)
    from_directory, from_gguf = load_model(directory), load_model(path)
    ours, theirs = from_gguf.model_config, from_directory.model_config
    assert ours.architecture == architecture and from_gguf.dtype == torch.float32
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "max_position_embeddings", "tie_word_embeddings",
                  "eos_token_ids"):
        assert getattr(ours, field) == getattr(theirs, field), field
    # Llama 3's scaling arrives precomputed (frequency_factors), YaRN's as parameters.
    assert ours.rope.rope_type == theirs.rope.rope_type and ours.rope.theta == theirs.rope.theta
    ids, logits = paged_greedy(from_gguf.model, PROMPTS, 3)
    expected_ids, expected_logits = paged_greedy(from_directory.model, PROMPTS, 3)
    assert ids == expected_ids
    assert_logits_close(logits, expected_logits, rtol=1e-6)


@pytest.mark.parametrize("bfloat16_native", [True, False])
def test_auto_dtype_of_a_quantized_file_is_bfloat16_where_the_cpu_multiplies_it(gguf_pair, bfloat16_native,
                                                                                 monkeypatch):
    """A file of quantized blocks names no dtype: "auto" takes bfloat16 where oneDNN has its bfloat16
    path (AVX-512), float32 elsewhere; a float file keeps its own, and --dtype wins."""
    from kvserve.loader import load as load_module

    monkeypatch.setattr(load_module, "onednn_packs", lambda dtype: bfloat16_native)
    _, quantized = gguf_pair("LlamaForCausalLM", gguf.GGMLQuantizationType.Q8_0, rope_scaling=None)
    _, float_file = gguf_pair("LlamaForCausalLM")
    assert load_model(quantized, load_format="dummy").dtype == (torch.bfloat16 if bfloat16_native else torch.float32)
    assert load_model(float_file, load_format="dummy").dtype == torch.float32
    assert load_model(quantized, dtype="float16", load_format="dummy").dtype == torch.float16


def test_quantized_file_matches_transformers_gguf_loader(gguf_pair):
    # transformers reads no rope scaling from GGUF files, so this model has none.
    _, path = gguf_pair("LlamaForCausalLM", gguf.GGMLQuantizationType.Q8_0, rope_scaling=None)
    loaded = load_model(path, dtype="float32")
    ids, logits = paged_greedy(loaded.model, PROMPTS[:2], 3)
    hf_ids, hf_logits = hf_greedy(path.parent, PROMPTS[:2], 3, gguf_file=path.name)
    assert ids == hf_ids
    assert_logits_close(logits, hf_logits)


def test_tokenizer_round_trip(gguf_pair):
    directory, path = gguf_pair("Qwen3ForCausalLM")
    parts = load_model(path, load_format="dummy").tokenizer
    original = Tokenizer.from_file(str(directory / "tokenizer.json"))
    config = json.loads((directory / "tokenizer_config.json").read_text())
    for text in TEXTS:
        expected = original.encode(text)
        assert parts.backend.encode(text).ids == expected.ids, text
        assert parts.backend.decode(expected.ids, skip_special_tokens=False) == text
    assert parts.backend.decode(original.encode(TEXTS[3]).ids, skip_special_tokens=True) == "user\nHi\n"
    assert (parts.chat_template, parts.eos_token, parts.bos_token, parts.add_bos_token) == \
        (config["chat_template"], "<|im_end|>", None, False)


@pytest.mark.parametrize("pre_tokenizer, pieces", [
    ("default", ["Hello", "Ġ12345", "Ġworld", "!!", "ĊĊ"]),
    ("smollm", ["Hello", "Ġ", "1", "2", "3", "4", "5", "Ġworld", "!!", "ĊĊ"]),
    ("llama-bpe", ["Hello", "Ġ", "123", "45", "Ġworld", "!!ĊĊ"]),
    ("qwen2", ["Hello", "Ġ", "1", "2", "3", "4", "5", "Ġworld", "!!ĊĊ"]),
])
def test_pre_tokenizer_rules(gguf_pair, tmp_path, pre_tokenizer, pieces):
    directory, _ = gguf_pair("Qwen3ForCausalLM")
    path = write_tiny_gguf(directory, tmp_path / "tiny.gguf", pre_tokenizer=pre_tokenizer)
    backend = load_model(path, load_format="dummy").tokenizer.backend
    assert [piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str("Hello 12345 world!!\n\n")] == pieces


def test_sentencepiece_tokenizer_matches_transformers(tmp_path):
    path = write_sentencepiece_gguf(tmp_path / "spm.gguf")
    parts = tokenizer_from_gguf(gguf.GGUFReader(path))
    reference = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in TEXTS + [" leading space", "<s>inside</s> text", "unseen Ωж≈ bytes"]:
        ids = parts.backend.encode(text).ids
        assert ids == reference.encode(text, add_special_tokens=False), text
        assert parts.backend.decode(ids, skip_special_tokens=False) == reference.decode(ids), text
    assert parts.backend.encode("Ωж").tokens[1:] == ["<0xCE>", "<0xA9>", "<0xD0>", "<0xB6>"]  # byte fallback
    assert (parts.bos_token, parts.eos_token, parts.add_bos_token, parts.chat_template) == ("<s>", "</s>", True, None)


def test_unsupported_pre_tokenizer_is_named(gguf_pair, tmp_path):
    directory, _ = gguf_pair("Qwen3ForCausalLM")
    path = write_tiny_gguf(directory, tmp_path / "odd.gguf", pre_tokenizer="deepseek-coder")
    with pytest.raises(ValueError, match=r"GGUF pre-tokenizer 'deepseek-coder' is not supported; supported: "
                                         r"default, gpt-2, smollm, llama-bpe, .*qwen2"):
        load_model(path)


def test_unsupported_gguf_architecture(tmp_path):
    writer = gguf.GGUFWriter(tmp_path / "gemma.gguf", "gemma")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match=r"GGUF architecture 'gemma' is not supported; supported: llama, qwen2, qwen3"):
        load_model(tmp_path / "gemma.gguf")


def test_not_a_gguf_file(tmp_path):
    (tmp_path / "broken.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match=r"broken.gguf: not a readable GGUF file"):
        load_model(tmp_path / "broken.gguf")
