"""--enable-log-requests (vLLM's): a line for each prompt a request submits, cut to --max-log-len;
no such line without the flag."""

from __future__ import annotations

import subprocess
import sys

import httpx

from server_process import ServerProcess

PROMPTS = ["The capital of France is", "Two plus two"]


def test_each_prompt_is_logged_cut_to_max_log_len(tiny_model_dir):
    with ServerProcess(tiny_model_dir("LlamaForCausalLM"), "--enable-log-requests", "--max-log-len", "5",
                       "--enable-request-id-headers") as server:
        response = httpx.post(server.url + "/v1/completions", headers={"X-Request-Id": "mine"},
                              json={"prompt": PROMPTS, "max_tokens": 3, "temperature": 0})
        assert response.status_code == 200
        lines = [line for line in server.log if "Received request" in line]
    assert len(lines) == 2
    for i, (line, prompt) in enumerate(zip(lines, PROMPTS)):
        assert "Received request cmpl-mine-" in line
        assert f"-{i}: prompt: {prompt[:5]!r}, params: SamplingParams(" in line
        assert "max_tokens=3" in line and "lora_request: None" in line
        token_ids = line.split("prompt_token_ids: [")[1].split("]")[0]
        assert len(token_ids.split(",")) == 5


def test_no_request_lines_by_default(tiny_server):
    response = httpx.post(tiny_server.url + "/v1/completions", json={"prompt": PROMPTS[0], "max_tokens": 2})
    assert response.status_code == 200
    assert not any("Received request" in line for line in tiny_server.log)


def test_a_negative_max_log_len_is_refused(tiny_model_dir):
    result = subprocess.run([sys.executable, "-m", "kvserve.cli", "serve", str(tiny_model_dir("LlamaForCausalLM")),
                             "--enable-log-requests", "--max-log-len", "-1"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0 and "max_log_len must be >= 0, got -1" in result.stderr
