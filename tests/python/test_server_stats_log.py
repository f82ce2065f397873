"""The server's periodic stats line (server/stats_logger.py), as vLLM logs it: throughputs while it
works, then quiet at INFO while idle; none with --disable-log-stats; a bad interval refused."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import httpx

from server_process import ServerProcess

LINE = re.compile(r"Avg prompt throughput: ([\d.]+) tokens/s, Avg generation throughput: ([\d.]+) tokens/s, "
                  r"Running: (\d+) reqs, Waiting: (\d+) reqs, KV cache usage: ([\d.]+)%, "
                  r"Prefix cache hit rate: ([\d.]+)%")


def stats_lines(server: ServerProcess) -> list[tuple[float, ...]]:
    return [tuple(map(float, match.groups())) for line in list(server.log) if (match := LINE.search(line))]


def complete(server: ServerProcess, max_tokens: int) -> None:
    response = httpx.post(server.url + "/v1/completions", timeout=60,
                          json={"prompt": "The capital of France is", "max_tokens": max_tokens, "ignore_eos": True})
    assert response.status_code == 200


def test_a_line_each_interval_while_it_works_then_quiet(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("KVSERVE_LOG_STATS_INTERVAL", "0.3")
    with ServerProcess(tiny_model_dir("LlamaForCausalLM")) as server:
        time.sleep(1.0)
        assert stats_lines(server) == []  # idle from the start: DEBUG, not shown
        complete(server, 40)
        deadline = time.monotonic() + 10
        while not any(line[1] > 0 for line in stats_lines(server)) and time.monotonic() < deadline:
            time.sleep(0.1)
        worked = [line for line in stats_lines(server) if line[1] > 0]
        assert worked and all(line[0] > 0 or line[1] > 0 for line in worked)
        time.sleep(1.5)  # idle again: one more line at INFO (the interval after), then none
        settled = len(stats_lines(server))
        time.sleep(1.0)
        assert len(stats_lines(server)) == settled
        assert stats_lines(server)[-1][:3] == (0.0, 0.0, 0.0)


def test_disable_log_stats_and_a_bad_interval(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("KVSERVE_LOG_STATS_INTERVAL", "0.2")
    with ServerProcess(tiny_model_dir("LlamaForCausalLM"), "--disable-log-stats") as server:
        complete(server, 20)
        time.sleep(0.5)
        assert stats_lines(server) == []
    monkeypatch.setenv("KVSERVE_LOG_STATS_INTERVAL", "soon")
    result = subprocess.run([sys.executable, "-m", "kvserve.cli", "serve", str(tiny_model_dir("LlamaForCausalLM"))],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "KVSERVE_LOG_STATS_INTERVAL must be a number of seconds > 0, got 'soon'" in result.stderr
