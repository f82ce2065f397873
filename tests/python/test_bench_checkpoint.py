"""Model presets written as HF checkpoints: loadable by transformers, deterministic, exact vocab."""

import json

import pytest
import torch
from safetensors.torch import load_file

from kvserve.bench.checkpoint import ensure_model, weight_shapes, write_checkpoint
from kvserve.bench.presets import MODEL_PRESETS, ModelPreset, model_preset
from kvserve.bench.tokenizer import byte_level_bpe

transformers = pytest.importorskip("transformers")

MICRO = ModelPreset("micro", 64, 96, 2, 4, 2, vocab_size=1000, max_position_embeddings=128)


@pytest.fixture(scope="module")
def micro_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("models") / "micro"
    write_checkpoint(MICRO, directory)
    return directory


def test_workload_md_parameter_counts():
    counts = {name: sum(torch.Size(s).numel() for s in weight_shapes(p).values()) for name, p in MODEL_PRESETS.items()}
    assert round(counts["tiny"] / 1e6) == 19
    assert round(counts["small"] / 1e6) == 56
    assert round(counts["0.5b"] / 1e6) == 415
    assert round(counts["1b"] / 1e9) == 1  # "~1.0 B": 1.10 B with its shapes
    assert round(counts["8b"] / 1e9, 2) == 8.03


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown model preset '7b'"):
        model_preset("7b")


def test_transformers_loads_the_same_weights(micro_dir):
    model = transformers.AutoModelForCausalLM.from_pretrained(micro_dir, dtype=torch.bfloat16)
    state = load_file(micro_dir / "model.safetensors")
    assert set(state) == set(weight_shapes(MICRO))
    assert all(t.dtype == torch.bfloat16 for t in state.values())
    torch.testing.assert_close(model.lm_head.weight, state["lm_head.weight"], rtol=0, atol=0)
    assert not torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"])  # untied
    assert model.config.vocab_size == 1000 and not model.config.tie_word_embeddings
    q = state["model.layers.1.self_attn.q_proj.weight"].float()
    assert abs(q.std().item() - 0.02) < 0.002 and q.shape == (64, 64)
    assert torch.equal(state["model.norm.weight"], torch.ones(64, dtype=torch.bfloat16))
    ids = model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3, do_sample=False)
    assert ids.shape == (1, 6)


def test_weights_are_reproducible(micro_dir, tmp_path):
    write_checkpoint(MICRO, tmp_path / "again")
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (micro_dir / "model.safetensors").read_bytes()


def test_tokenizer_has_exact_vocab_and_loads_in_transformers(micro_dir):
    tokenizer = transformers.AutoTokenizer.from_pretrained(micro_dir)
    assert len(tokenizer) == 1000
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (1, 2)
    assert json.loads((micro_dir / "config.json").read_text())["eos_token_id"] == 2
    text = "the rain in spain stays mainly"
    ids = tokenizer(text).input_ids
    assert len(ids) < len(text) and tokenizer.decode(ids) == text  # merges apply, round trip holds


@pytest.mark.parametrize("vocab_size", [32000, 128256])
def test_preset_vocab_sizes(vocab_size):
    tokenizer = byte_level_bpe(vocab_size)
    assert tokenizer.get_vocab_size() == vocab_size
    assert tokenizer.decode(tokenizer.encode("Zürich 2024!").ids) == "Zürich 2024!"


def test_vocab_too_small():
    with pytest.raises(ValueError, match="vocab_size=259"):
        byte_level_bpe(259)


def test_ensure_model_writes_once(tmp_path, monkeypatch):
    monkeypatch.setitem(MODEL_PRESETS, "micro", MICRO)
    directory = ensure_model("micro", tmp_path)
    assert directory == tmp_path / "micro"
    stamp = (directory / "model.safetensors").stat().st_mtime_ns
    assert ensure_model("micro", tmp_path) == directory
    assert (directory / "model.safetensors").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["micro"]
