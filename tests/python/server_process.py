"""A real `kvserve serve` process for the server tests: on 127.0.0.1, on a port the OS picks (read
back from the server's "serving ... at URL" log line), float32 and a small KV cache.

    with ServerProcess(model_dir, "--api-key", "k") as server:
        httpx.get(server.url + "/health"); openai.OpenAI(base_url=server.url + "/v1", api_key="k")
        server.metrics()["kvserve:num_requests_running"]
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time

import httpx

_URL = re.compile(r"serving .* at (https?://[^ ]+)/v1 ")


class ServerProcess:
    def __init__(self, model, *flags: str, startup_timeout_s: float = 120.0, verify=True):
        """verify: how the health check trusts an HTTPS server (httpx's verify: a CA file, an SSLContext)."""
        command = [sys.executable, "-m", "kvserve.cli", "serve", *([str(model)] if model is not None else []),
                   "--host", "127.0.0.1", "--port", "0", "--dtype", "float32", "--kv-cache-memory", "0.02",
                   "--uvicorn-log-level", "warning", *flags]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._verify = verify
        self.log: list[str] = []
        self.url: str | None = None
        self._ready = threading.Event()
        threading.Thread(target=self._read_log, daemon=True).start()
        self._wait_until_healthy(startup_timeout_s)

    def _read_log(self) -> None:
        for line in self.process.stdout:
            self.log.append(line)
            match = _URL.search(line)
            if match:
                self.url = match.group(1)
                self._ready.set()
        self._ready.set()

    def _wait_until_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        self._ready.wait(timeout_s)
        while self.url is not None and time.monotonic() < deadline and self.process.poll() is None:
            try:
                if httpx.get(self.url + "/health", timeout=5, verify=self._verify).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop(signal.SIGKILL)
        raise RuntimeError("kvserve serve did not start:\n" + "".join(self.log[-40:]))

    def metrics(self) -> dict[str, float]:
        """The /metrics samples, keyed by name with labels: 'kvserve:x{model_name="m"}' -> value."""
        samples = {}
        for line in httpx.get(self.url + "/metrics").text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                samples[name] = float(value)
        return samples

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the served model, e.g. metric("kvserve:request_success_total", finished_reason="stop");
        0 when it has not been recorded yet."""
        for key, value in self.metrics().items():
            if key.split("{")[0] == name and all(f'{k}="{v}"' in key for k, v in labels.items()):
                return value
        return 0.0

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
