"""How compare.py runs each engine: every engine in its own process tree (vLLM from its own venv,
llama.cpp as its own binaries), measured from outside for peak RSS (the whole tree, sampled) and
startup. An engine that is not installed yields a note, never a figure.

Where the anchors live is bench/anchors/common.sh's layout under the kvserve cache dir.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from kvserve.bench.checkpoint import cache_dir

HERE = Path(__file__).resolve().parent
ANCHORS = cache_dir() / "anchors"
VLLM_PYTHON = ANCHORS / "vllm-venv" / "bin" / "python"
LLAMA_BIN = ANCHORS / "llama.cpp" / "build" / "bin"
GGUF_DIR = ANCHORS / "gguf"
OFFLINE_ENGINES = ("kvserve", "hf-sequential", "hf-batch", "vllm", "llama.cpp")
SERVE_ENGINES = ("kvserve", "vllm", "llama.cpp")
GGUF_TYPES = {"bfloat16": "bf16", "float32": "f32"}


@dataclass
class Settings:
    threads: int  # cores each engine gets
    vllm_bind: str  # VLLM_CPU_OMP_THREADS_BIND; "auto" leaves vLLM's own binding (and no libgomp preload)
    vllm_memory_utilization: float  # on CPU: the fraction of memory vLLM reserves
    log_dir: Path
    server_args: tuple[str, ...] = ()  # more flags for `kvserve serve`
    load_args: tuple[str, ...] = ()  # more flags for `kvserve bench serve` (its dataset's, say)


@dataclass
class Run:
    engine: str
    result: dict = field(default_factory=dict)  # the figures; empty when skipped
    note: str = ""  # why skipped, or how it ran (threads, binding)
    version: str = ""
    peak_rss_bytes: int = 0
    startup_s: float | None = None
    compute_efficiency: float | None = None  # offline: model FLOPs ÷ wall time ÷ the GEMM rate

    @property
    def output_tok_s(self) -> float:
        return self.result.get("output_tok_s", self.result.get("output_throughput", 0.0))


class Skip(Exception):
    """The engine cannot run here; the message says why."""


class Measured:
    """A process tree, started now, whose summed RSS is sampled until it ends."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path):
        self.spawned = time.time()
        self._log = open(log, "w")
        self.proc = psutil.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.peak_rss_bytes = 0
        self.log = log

    def sample(self) -> bool:
        """Updates the peak; False once the process has exited."""
        try:
            tree = [self.proc, *self.proc.children(recursive=True)]
            rss = 0
            for p in tree:
                try:
                    rss += p.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            self.peak_rss_bytes = max(self.peak_rss_bytes, rss)
        except psutil.NoSuchProcess:
            pass
        return self.proc.poll() is None

    def wait(self, timeout_s: float) -> int:
        deadline = time.time() + timeout_s
        while self.sample():
            if time.time() > deadline:
                self.stop()
                raise RuntimeError(f"{self.proc.args[0]} ran past {timeout_s:.0f} s (log: {self.log})")
            time.sleep(0.2)
        self._log.close()
        return self.proc.returncode

    def stop(self) -> None:
        """Ends the process group this object started (servers fork workers into it)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except psutil.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


def torch_env(s: Settings) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS=str(s.threads))


def vllm_env(s: Settings) -> tuple[dict[str, str], str]:
    """The environment vLLM runs in, and how to say it."""
    if not VLLM_PYTHON.exists():
        raise Skip(f"vLLM is not installed ({VLLM_PYTHON} missing: run bench/anchors/setup_vllm.sh)")
    env = dict(os.environ)
    if s.vllm_bind != "auto":
        # vLLM's own recipe: pin its OpenMP threads and preload the libgomp its torch was built with.
        env["VLLM_CPU_OMP_THREADS_BIND"] = s.vllm_bind
        gomp = sorted(VLLM_PYTHON.parent.parent.glob("lib/python3*/site-packages/torch/lib/libgomp*.so*"))
        if gomp:
            env["LD_PRELOAD"] = str(gomp[0])
    preloaded = ", libgomp preloaded" if "LD_PRELOAD" in env else ""
    return env, f"VLLM_CPU_OMP_THREADS_BIND={s.vllm_bind}{preloaded}"


def llama_binary(name: str) -> Path:
    path = LLAMA_BIN / name
    if not path.exists():
        raise Skip(f"llama.cpp is not built ({path} missing: run bench/anchors/setup_llamacpp.sh)")
    return path


def gguf_path(preset: str, dtype: str) -> Path:
    path = GGUF_DIR / f"{preset}-{GGUF_TYPES[dtype]}.gguf"
    if not path.exists():
        raise Skip(f"{path} missing: run bench/anchors/convert_gguf.sh {GGUF_TYPES[dtype]} {preset}")
    return path


def engine_version(engine: str) -> str:
    if engine == "llama.cpp":
        out = subprocess.run([llama_binary("llama-server"), "--version"], capture_output=True, text=True).stderr
        match = re.search(r"commit (\w+)", out)
        return f"commit {match[1] if match else '?'}"
    python, module = (str(VLLM_PYTHON), "vllm") if engine == "vllm" else (sys.executable, engine)
    module = "transformers" if engine.startswith("hf-") else module
    code = f"import {module}; print({module}.__version__)"
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def _offline_python(engine: str, case, model_dir: Path, dtype: str, prompts: Path, s: Settings) -> Run:
    """kvserve through `kvserve bench throughput` (the one code path that measures it offline; it
    draws the same prompts as `prompts` holds); the other engines through runners/offline.py."""
    python, env, note = sys.executable, torch_env(s), f"OMP_NUM_THREADS={s.threads}"
    result_path = s.log_dir / f"{engine}.json"
    if engine == "kvserve":
        # No tokenizer, so no detokenization: vLLM runs with skip_tokenizer_init and detokenize off.
        cmd = [python, "-m", "kvserve.cli", "bench", "throughput", "--model", str(model_dir), "--dtype", dtype,
               "--case", case.name, "--max-num-seqs", str(case.num_prompts), "--skip-tokenizer-init",
               "--result-json", str(result_path), "--disable-tqdm"]
        note += ", no detokenization"
    else:
        engine_args = {}
        if engine == "vllm":
            python, (env, note) = str(VLLM_PYTHON), vllm_env(s)
            engine_args = {"skip_tokenizer_init": True, "max_num_seqs": case.num_prompts,
                           "gpu_memory_utilization": s.vllm_memory_utilization}
        cmd = [python, str(HERE / "runners" / "offline.py"), "--engine", engine, "--model", str(model_dir),
               "--prompts", str(prompts), "--output-len", str(case.output_len), "--dtype", dtype,
               "--result", str(result_path), "--engine-args", json.dumps(engine_args)]
    proc = Measured(cmd, env, s.log_dir / f"{engine}.log")
    if proc.wait(timeout_s=3600) != 0:
        raise RuntimeError(f"{engine} failed (log: {proc.log})")
    result = json.loads(result_path.read_text())
    if "skipped" in result:
        raise Skip(result["skipped"])
    return Run(engine, result, note, peak_rss_bytes=proc.peak_rss_bytes, startup_s=result["ready_unix_s"] - proc.spawned)


def _offline_llama(case, preset: str, dtype: str, s: Settings) -> Run:
    n, i, o = case.num_prompts, case.input_len, case.output_len
    cmd = [str(llama_binary("llama-batched-bench")), "-m", str(gguf_path(preset, dtype)), "-t", str(s.threads),
           "-c", str(n * (i + o)), "-b", "2048", "-ub", "512", "-npl", str(n), "-npp", str(i), "-ntg", str(o),
           "--output-format", "jsonl"]
    proc = Measured(cmd, dict(os.environ), s.log_dir / "llama.cpp.log")
    if proc.wait(timeout_s=3600) != 0:
        raise RuntimeError(f"llama-batched-bench failed (log: {proc.log})")
    rows = [json.loads(line) for line in proc.log.read_text().splitlines() if line.startswith("{")]
    row = rows[-1]
    result = {"engine": "llama.cpp", "dtype": dtype, "wall_s": row["t"],
              "output_tok_s": n * o / row["t"], "total_tok_s": n * (i + o) / row["t"], "command": " ".join(cmd)}
    note = f"-t {s.threads}, KV cache f16, flash-attn auto; its own prompts of the same lengths"
    return Run("llama.cpp", result, note, peak_rss_bytes=proc.peak_rss_bytes)


def run_offline(engine: str, case, preset: str, model_dir: Path, dtype: str, prompts: Path, s: Settings) -> Run:
    try:
        if engine == "llama.cpp":
            return _offline_llama(case, preset, dtype, s)
        return _offline_python(engine, case, model_dir, dtype, prompts, s)
    except Skip as e:
        return Run(engine, note=f"skipped: {e}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_command(engine: str, case, preset: str, model_dir: Path, dtype: str, port: int, s: Settings):
    """(command, env, note) to serve `model_dir` as model name `preset` on 127.0.0.1:port."""
    common = ["--host", "127.0.0.1", "--port", str(port)]
    if engine == "kvserve":
        probe = subprocess.run([sys.executable, "-m", "kvserve.cli", "serve", "--help"], capture_output=True)
        if probe.returncode != 0:
            raise Skip("kvserve has no `serve` command yet")
        cmd = [sys.executable, "-m", "kvserve.cli", "serve", str(model_dir), *common, "--dtype", dtype,
               "--served-model-name", preset, "--max-num-seqs", str(case.num_prompts), *s.server_args]
        return cmd, torch_env(s), " ".join([f"OMP_NUM_THREADS={s.threads}", *s.server_args])
    if engine == "vllm":
        env, note = vllm_env(s)
        # The api_server module, not the `vllm` script: that looks up the metadata of a package named
        # vllm, and the CPU build is installed as vllm-cpu.
        cmd = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), *common,
               "--dtype", dtype,
               "--served-model-name", preset, "--max-num-seqs", str(case.num_prompts),
               "--gpu-memory-utilization", str(s.vllm_memory_utilization)]
        return cmd, env, note
    slots = case.num_prompts
    cmd = [str(llama_binary("llama-server")), "-m", str(gguf_path(preset, dtype)), *common, "-a", preset,
           "-np", str(slots), "-c", str(slots * (case.input_len + case.output_len)), "-t", str(s.threads),
           "--no-webui"]
    return cmd, dict(os.environ), f"-np {slots} -t {s.threads}, KV cache f16"


def _wait_ready(proc: Measured, base_url: str, timeout_s: float) -> float:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if not proc.sample():
            raise RuntimeError(f"the server exited during startup (log: {proc.log})")
        try:
            with urllib.request.urlopen(f"{base_url}/v1/models", timeout=2) as response:
                if response.status == 200:
                    return time.time() - proc.spawned
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server was not ready after {timeout_s:.0f} s (log: {proc.log})")


def run_serve(engine: str, case, preset: str, model_dir: Path, dtype: str, s: Settings) -> Run:
    try:
        port = _free_port()
        cmd, env, note = _server_command(engine, case, preset, model_dir, dtype, port, s)
    except Skip as e:
        return Run(engine, note=f"skipped: {e}")
    base_url = f"http://127.0.0.1:{port}"
    server = Measured(cmd, env, s.log_dir / f"{engine}-server.log")
    try:
        startup = _wait_ready(server, base_url, timeout_s=600)
        result_path = s.log_dir / f"{engine}.json"
        rate = "inf" if case.request_rate == float("inf") else str(case.request_rate)
        client = subprocess.Popen(
            [sys.executable, "-m", "kvserve.cli", "bench", "serve", "--base-url", base_url, "--model", preset,
             "--tokenizer", str(model_dir), "--num-prompts", str(case.num_prompts),
             "--random-input-len", str(case.input_len), "--random-output-len", str(case.output_len),
             "--request-rate", rate, "--result-json", str(result_path), "--disable-tqdm", *s.load_args],
        )
        while client.poll() is None:  # keep sampling the server's RSS while the load runs
            server.sample()
            time.sleep(0.2)
        if client.returncode != 0:
            raise RuntimeError(f"kvserve bench serve against {engine} failed (server log: {server.log})")
        result = json.loads(result_path.read_text())
        return Run(engine, result, note, peak_rss_bytes=server.peak_rss_bytes, startup_s=startup)
    finally:
        server.stop()
