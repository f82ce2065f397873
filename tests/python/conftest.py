"""Shared pytest fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """tiny_model_dir(architecture, **overrides): a saved tiny model directory (see tiny_models.py),
    built once per session for each distinct argument set."""
    from tiny_models import save_tiny_model  # imports transformers: only for the tests that need it

    built = {}

    def get(architecture: str, **overrides):
        key = (architecture, repr(sorted(overrides.items())))
        if key not in built:
            built[key] = save_tiny_model(tmp_path_factory.mktemp(architecture), architecture, **overrides)
        return built[key]

    return get


@pytest.fixture(scope="session")
def gguf_pair(tiny_model_dir, tmp_path_factory):
    """gguf_pair(architecture, quantization, tensor_types=None, **overrides) -> (the tiny model's Hugging
    Face directory, a GGUF file written from it: tiny_gguf.write_tiny_gguf), once per argument set."""
    import gguf

    from tiny_gguf import write_tiny_gguf

    written = {}

    def get(architecture, quantization=gguf.GGMLQuantizationType.F32, tensor_types=None, **overrides):
        key = (architecture, quantization, repr(sorted((tensor_types or {}).items())), repr(sorted(overrides.items())))
        if key not in written:
            directory = tiny_model_dir(architecture, **overrides)
            path = tmp_path_factory.mktemp("gguf") / f"{architecture}-{quantization.name}.gguf"
            written[key] = directory, write_tiny_gguf(directory, path, quantization, tensor_types=tensor_types)
        return written[key]

    return get


@pytest.fixture(scope="session")
def repeating_model_dir(tmp_path_factory):
    """A saved tiny Llama whose text repeats itself (tiny_models.save_repeating_model)."""
    from tiny_models import save_repeating_model

    return save_repeating_model(tmp_path_factory.mktemp("repeating"))


@pytest.fixture(scope="module")
def tiny_server(tiny_model_dir):
    """A `kvserve serve` process (server_process.py) serving the tiny Llama under the name "tiny";
    one per test module that asks for it."""
    from server_process import ServerProcess

    with ServerProcess(tiny_model_dir("LlamaForCausalLM"), "--served-model-name", "tiny") as server:
        yield server


@pytest.fixture(scope="module")
def tiny_engine(tiny_model_dir):
    """The offline Engine on the tiny Llama (float32), whose answers the server's must equal."""
    from kvserve import Engine

    return Engine(str(tiny_model_dir("LlamaForCausalLM")), dtype="float32", kv_cache_memory_gb=0.01)


@pytest.fixture(scope="module")
def tiny_client(tiny_server):
    """An `openai.OpenAI` client of tiny_server."""
    import openai

    return openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="unused")
