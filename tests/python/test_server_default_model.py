"""`kvserve serve` with no model serves the default model (SmolLM2-135M-Instruct), which knows the
capital of France. Skipped when the default model cannot be fetched."""

from __future__ import annotations

import openai
import pytest

from kvserve.loader import default_model_path
from kvserve.loader.default_model import DEFAULT_MODEL_NAME
from server_process import ServerProcess


@pytest.fixture(scope="module")
def server():
    try:
        default_model_path()
    except RuntimeError as error:
        pytest.skip(f"default model unavailable: {error}")
    with ServerProcess(None, "--max-model-len", "512", "--kv-cache-memory", "0.05") as server:
        yield server


def test_the_default_model_answers_paris(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == [DEFAULT_MODEL_NAME]
    reply = client.chat.completions.create(model=DEFAULT_MODEL_NAME, temperature=0, max_tokens=24,
                                           messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in reply.choices[0].message.content
    streamed = client.chat.completions.create(model=DEFAULT_MODEL_NAME, temperature=0, max_tokens=24, stream=True,
                                              messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == reply.choices[0].message.content
