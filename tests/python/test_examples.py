"""examples/python/ run as a user runs them, on the tiny test model (and its server)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "python"


def run_example(name: str, *args: str) -> list[str]:
    result = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_offline_inference_prints_each_prompt_and_the_chat_reply(tiny_model_dir):
    lines = run_example("offline_inference.py", str(tiny_model_dir("LlamaForCausalLM")))
    assert [line.split(" -> ")[0] for line in lines] == [
        "'The capital of France is'", "'Three things to pack for a day at the beach:'", "'def fibonacci(n):'", "chat",
        "json"]
    assert lines[-2].endswith(("(length)", "(stop)"))
    assert lines[-1].startswith("json -> {'city': ")  # the tiny model's greedy reply closes within 64 tokens


def test_openai_client_completes_and_streams_a_chat(tiny_server):
    lines = run_example("openai_client.py", "--base-url", tiny_server.url + "/v1")
    assert lines[0].startswith("completion -> ") and lines[0].endswith("(16 tokens)")
    assert lines[1].startswith("chat -> ") and len(lines[1]) > len("chat -> ")


def test_embeddings_prints_a_score_for_each_document(tiny_model_dir):
    lines = run_example("embeddings.py", str(tiny_model_dir("LlamaForCausalLM")))
    assert lines[0] == "4 embeddings of 64 dimensions" and len(lines) == 4
    assert all(-1 <= float(line.split()[0]) <= 1 for line in lines[1:])


def test_speculative_decoding_gives_the_same_answer_with_drafts(repeating_model_dir):
    lines = run_example("speculative_decoding.py", str(repeating_model_dir))
    assert lines[0].startswith("without drafts: ") and lines[1].startswith("with drafts: ")
    accepted, drafted = map(int, lines[2].split()[1:4:2])
    assert 0 < accepted <= drafted
    assert lines[3] == "same answer: True"
