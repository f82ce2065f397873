"""LoRA adapters against PEFT on the same weights: adapters saved by PEFT's save_pretrained (random
A and B, never zeros), applied by kvserve, give PEFT's greedy ids, whichever adapters (and the base
model) share a step; the prefix cache keeps their blocks apart; what kvserve does not apply is
refused by name."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from kvserve import Engine, LoRARequest, SamplingParams
from requires_cuda import requires_cuda

# The GPU machine has no network: peft comes as a carried wheel there, or these tests skip.
peft = pytest.importorskip("peft")

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Lengths cross block boundaries (block_size 4); the last one's prompt is the first one's start.
PROMPTS = [[5, 9, 100, 7, 300, 12, 44, 61, 8], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [42], [5, 9, 100, 7, 300]]
NUM_NEW_TOKENS = 6
GREEDY = SamplingParams(temperature=0, max_tokens=NUM_NEW_TOKENS, ignore_eos=True)


def save_adapter(base_dir, directory, seed: int, r: int = 8, target_modules=ALL_LINEAR, save_options=None, **config):
    """A PEFT LoRA adapter of the model in `base_dir`, its A and B random (PEFT starts B at zero)."""
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0,
                                                  target_modules=target_modules, **config))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    peft_model.save_pretrained(directory, **(save_options or {}))
    return str(directory)


def peft_greedy(base_dir, adapter_dir, prompts, device: str = "cpu") -> list[list[int]]:
    """PEFT's greedy ids for each prompt (the base model's where adapter_dir is None)."""
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    if adapter_dir is not None:
        model = peft.PeftModel.from_pretrained(model, adapter_dir).eval()
    model = model.to(device)
    ids = []
    for prompt in prompts:
        out = model.generate(input_ids=torch.tensor([prompt], device=device), max_new_tokens=NUM_NEW_TOKENS,
                             do_sample=False, eos_token_id=None, pad_token_id=0)
        ids.append(out[0, len(prompt):].tolist())
    return ids


def kvserve_ids(engine: Engine, prompts, loras) -> list[list[int]]:
    outputs = engine.generate([{"prompt_token_ids": p} for p in prompts], GREEDY, use_tqdm=False, lora_request=loras)
    return [output.outputs[0].token_ids for output in outputs]


def _engine(directory, **options) -> Engine:
    return Engine(str(directory), dtype="float32", kv_cache_memory_gb=0.01, block_size=4, enable_lora=True,
                  **options)


@pytest.mark.parametrize("architecture", ["LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"])
def test_adapters_and_the_base_model_in_one_batch_match_peft(tmp_path, tiny_model_dir, architecture):
    base = tiny_model_dir(architecture)
    first = LoRARequest("first", 1, save_adapter(base, tmp_path / "first", seed=1))
    # PEFT's default targets for Llama, with rsLoRA's scaling and a per-module alpha.
    second = LoRARequest("second", 2, save_adapter(base, tmp_path / "second", seed=2, r=4,
                                                   target_modules=["q_proj", "v_proj"], use_rslora=True,
                                                   alpha_pattern={"q_proj|v_proj": 3.0}))
    expected = {None: peft_greedy(base, None, PROMPTS)}
    for lora in (first, second):
        expected[lora] = peft_greedy(base, lora.lora_path, PROMPTS)
        assert expected[lora] != expected[None]  # the adapter changes the replies
    engine = _engine(base, max_loras=2)
    for loras in ([first] * 4, [None, first, second, first], [second, None, None, first]):
        assert kvserve_ids(engine, PROMPTS, loras) == [expected[lora][i] for i, lora in enumerate(loras)], loras


@requires_cuda
@pytest.mark.parametrize("enforce_eager", [False, True], ids=["graphs", "eager"])
def test_on_a_gpu_adapters_match_peft(tmp_path, tiny_model_dir, enforce_eager):
    """Steps with adapters run eagerly on a GPU; the base model's decode steps replay the graphs."""
    base = tiny_model_dir("LlamaForCausalLM")
    first = LoRARequest("first", 1, save_adapter(base, tmp_path / "first", seed=1))
    second = LoRARequest("second", 2, save_adapter(base, tmp_path / "second", seed=2, r=4))
    expected = {lora: peft_greedy(base, lora.lora_path if lora else None, PROMPTS, "cuda")
                for lora in (None, first, second)}
    engine = Engine(str(base), dtype="float32", device="cuda", kv_cache_memory_gb=0.05, block_size=4,
                    enable_lora=True, max_loras=2, enforce_eager=enforce_eager)
    for loras in ([None] * 4, [None, first, second, first]):
        assert kvserve_ids(engine, PROMPTS, loras) == [expected[lora][i] for i, lora in enumerate(loras)], loras


def test_the_prefix_cache_keeps_adapters_apart(tmp_path, tiny_model_dir):
    base = tiny_model_dir("LlamaForCausalLM")
    first = LoRARequest("first", 1, save_adapter(base, tmp_path / "first", seed=1))
    second = LoRARequest("second", 2, save_adapter(base, tmp_path / "second", seed=2))
    engine = _engine(base, max_loras=1)  # each adapter drops the other: they reload
    prompt = [PROMPTS[0]]
    runs = [(lora, kvserve_ids(engine, prompt, [lora])[0]) for lora in (first, None, second, first, None, second)]
    for lora, ids in runs:
        assert [ids] == peft_greedy(base, lora.lora_path if lora else None, prompt), lora
    # Each repeat found its own blocks in the cache (the first run of each computed them).
    again = engine.generate([{"prompt_token_ids": PROMPTS[0]}], GREEDY, use_tqdm=False, lora_request=second)[0]
    assert again.num_cached_tokens == 8 and again.lora_request == second


def test_the_engine_tells_the_adapters_of_running_and_waiting_requests(tmp_path, tiny_model_dir):
    base = tiny_model_dir("LlamaForCausalLM")
    first = LoRARequest("first", 1, save_adapter(base, tmp_path / "first", seed=1))
    second = LoRARequest("second", 2, save_adapter(base, tmp_path / "second", seed=2))
    engine = _engine(base, max_loras=2, max_num_seqs=1)
    for i, lora in enumerate((first, None, second, first)):
        engine.add_request(f"r{i}", {"prompt_token_ids": PROMPTS[0]}, GREEDY, lora_request=lora)
    assert engine.lora_requests() == ((), ("first", "second"))
    engine.step()  # one sequence a step: r0 runs
    assert engine.lora_requests() == (("first",), ("first", "second"))
    while engine.has_unfinished_requests():
        engine.step()
    assert engine.lora_requests() == ((), ())


def test_what_kvserve_does_not_apply_is_refused(tmp_path, tiny_model_dir):
    base = tiny_model_dir("LlamaForCausalLM")
    plain = Engine(str(base), dtype="float32", kv_cache_memory_gb=0.01)
    adapter = save_adapter(base, tmp_path / "plain", seed=1)
    with pytest.raises(ValueError, match="enable_lora"):
        plain.generate("hi", GREEDY, use_tqdm=False, lora_request=LoRARequest("a", 1, adapter))
    engine = _engine(base, max_lora_rank=4)
    cases = {
        "above max_lora_rank 4": LoRARequest("a", 1, adapter),
        "use_dora": LoRARequest("b", 2, save_adapter(base, tmp_path / "dora", seed=1, r=2, use_dora=True)),
        "adapters of the embedding": LoRARequest("c", 3, save_adapter(base, tmp_path / "embed", seed=1, r=2,
                                                                      target_modules=["embed_tokens"])),
        "not a linear layer of the decoder": LoRARequest("d", 4, save_adapter(
            base, tmp_path / "head", seed=1, r=2, target_modules=["lm_head"],
            save_options=dict(save_embedding_layers=False))),
        "no adapter_config.json": LoRARequest("e", 5, str(tmp_path)),
    }
    for message, lora in cases.items():
        with pytest.raises(ValueError, match=message):
            engine.generate("hi", GREEDY, use_tqdm=False, lora_request=lora)
    damaged = tmp_path / "damaged"
    shutil.copytree(adapter, damaged)
    (damaged / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="adapter_model.safetensors cannot be read"):
        engine.generate("hi", GREEDY, use_tqdm=False, lora_request=LoRARequest("f", 7, str(damaged)))
    small = LoRARequest("small", 6, save_adapter(base, tmp_path / "small", seed=1, r=2))
    other = LoRARequest("other", 8, save_adapter(base, tmp_path / "other", seed=2, r=2))
    engine.generate("hi", GREEDY, use_tqdm=False, lora_request=small)
    engine.generate("hi", GREEDY, use_tqdm=False, lora_request=other)  # max_loras 1: small is dropped
    with pytest.raises(ValueError, match="needs an id of its own"):  # an id stays one adapter (and its blocks)
        engine.generate("hi", GREEDY, use_tqdm=False, lora_request=LoRARequest("other", 6, other.lora_path))
    with pytest.raises(ValueError, match="lora_int_id must be a positive integer"):
        LoRARequest("zero", 0, adapter)
    assert not engine.has_unfinished_requests() and engine.stats().num_free_blocks == engine.stats().num_blocks - 1
    config = json.loads((tmp_path / "small" / "adapter_config.json").read_text())
    assert config["r"] == 2 and config["peft_type"] == "LORA"  # what save_pretrained wrote, read as such


def test_the_server_serves_adapters_by_name(tmp_path, tiny_model_dir):
    """`kvserve serve --enable-lora --lora-modules NAME=PATH`: a request whose model is an adapter's
    name runs with it (the offline engine's answer), the model's own name without; /v1/models lists
    the adapters; an adapter that cannot be loaded stops the server at once."""
    import httpx
    import openai

    from server_process import ServerProcess

    base = tiny_model_dir("LlamaForCausalLM")
    first = LoRARequest("first", 1, save_adapter(base, tmp_path / "first", seed=1))
    second = LoRARequest("second", 2, save_adapter(base, tmp_path / "second", seed=2))
    params = SamplingParams(temperature=0, max_tokens=NUM_NEW_TOKENS)
    offline = _engine(base, max_loras=2)
    expected = {lora: offline.generate([{"prompt_token_ids": PROMPTS[1]}], params, use_tqdm=False,
                                       lora_request=lora)[0].outputs[0].text for lora in (None, first, second)}
    assert len(set(expected.values())) == 3
    with ServerProcess(base, "--served-model-name", "tiny", "--enable-lora", "--lora-modules",
                       f"first={first.lora_path}", json.dumps({"name": "second", "path": second.lora_path})) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
        models = {model.id: model for model in client.models.list().data}
        assert set(models) == {"tiny", "first", "second"} and models["first"].parent == "tiny"
        for name, lora in (("first", first), ("tiny", None), ("second", second)):
            response = client.completions.create(model=name, prompt=PROMPTS[1], max_tokens=NUM_NEW_TOKENS,
                                                 temperature=0)
            assert (response.model, response.choices[0].text) == (name, expected[lora])
        streamed = "".join(chunk.choices[0].text for chunk in client.completions.create(
            model="second", prompt=PROMPTS[1], max_tokens=NUM_NEW_TOKENS, temperature=0, stream=True))
        assert streamed == expected[second]
        missing = httpx.post(server.url + "/v1/completions", json={"model": "third", "prompt": "hi"})
        assert missing.status_code == 404 and "tiny, first, second" in missing.json()["error"]["message"]
        # Runtime loading is off unless the server allows it.
        assert httpx.post(server.url + "/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "y"}
                          ).status_code == 404
        # --max-loras defaults to the adapters served: each was read once, at startup.
        assert sum("loaded LoRA adapter" in line for line in server.log) == 2
        # vLLM's lora_requests_info, one series: nothing in flight now.
        [info] = [line for line in httpx.get(server.url + "/metrics").text.splitlines()
                  if line.startswith("kvserve:lora_requests_info{")]
        assert info.startswith('kvserve:lora_requests_info{max_lora="2",running_lora_adapters="",'
                               'waiting_lora_adapters=""} ')
        assert abs(float(info.split()[-1]) - time.time()) < 60
    with pytest.raises(RuntimeError, match="kvserve serve: LoRA adapter .* no adapter_config.json"):
        ServerProcess(base, "--enable-lora", "--lora-modules", f"broken={tmp_path}")
    with pytest.raises(RuntimeError, match="enable_lora"):
        ServerProcess(base, "--lora-modules", f"first={first.lora_path}")
    with pytest.raises(RuntimeError, match=r"names given twice: \['first'\]"):
        ServerProcess(base, "--enable-lora", "--lora-modules", f"first={first.lora_path}", f"first={second.lora_path}")


def test_adapters_load_and_unload_at_runtime_where_allowed(tmp_path, tiny_model_dir):
    """vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter: an adapter loaded at runtime serves
    requests; a name reloaded with another adapter serves that one (no block of the old one reused)."""
    import httpx

    from server_process import ServerProcess

    base = tiny_model_dir("LlamaForCausalLM")
    paths = {name: save_adapter(base, tmp_path / name, seed=seed) for name, seed in (("first", 1), ("second", 2))}
    params = SamplingParams(temperature=0, max_tokens=NUM_NEW_TOKENS)
    offline = _engine(base, max_loras=2)
    expected = {name: offline.generate([{"prompt_token_ids": PROMPTS[1]}], params, use_tqdm=False,
                                       lora_request=LoRARequest(name, i + 1, path))[0].outputs[0].text
                for i, (name, path) in enumerate(paths.items())}
    with ServerProcess(base, "--served-model-name", "tiny", "--enable-lora", "--allow-runtime-lora-updating") as server:
        def post(route: str, **body) -> httpx.Response:
            return httpx.post(f"{server.url}/v1/{route}", json=body, timeout=60)

        def complete(model: str) -> httpx.Response:
            return post("completions", model=model, prompt=PROMPTS[1], max_tokens=NUM_NEW_TOKENS, temperature=0)

        loaded = post("load_lora_adapter", lora_name="adapter", lora_path=paths["first"])
        assert loaded.status_code == 200 and "added successfully" in loaded.text
        assert complete("adapter").json()["choices"][0]["text"] == expected["first"]
        again = post("load_lora_adapter", lora_name="adapter", lora_path=paths["second"])
        assert again.status_code == 400 and again.json()["error"]["param"] == "lora_name"
        broken = post("load_lora_adapter", lora_name="broken", lora_path=str(tmp_path))
        assert broken.status_code == 400 and "no adapter_config.json" in broken.json()["error"]["message"]
        damaged = tmp_path / "damaged"
        shutil.copytree(paths["first"], damaged)
        (damaged / "adapter_model.safetensors").write_bytes(b"\0" * 16)
        damaged_load = post("load_lora_adapter", lora_name="damaged", lora_path=str(damaged))
        assert damaged_load.status_code == 400 and "cannot be read" in damaged_load.json()["error"]["message"]
        assert post("unload_lora_adapter", lora_name="adapter").status_code == 200
        assert complete("adapter").status_code == 404
        assert post("unload_lora_adapter", lora_name="adapter").status_code == 404
        assert post("load_lora_adapter", lora_name="adapter", lora_path=paths["second"]).status_code == 200
        assert complete("adapter").json()["choices"][0]["text"] == expected["second"]
        assert [m["id"] for m in httpx.get(server.url + "/v1/models").json()["data"]] == ["tiny", "adapter"]
        # The engine let go of the unloaded adapter's memory (its log line may take a moment to be read).
        deadline = time.monotonic() + 10
        while not any("dropped LoRA adapter 'adapter' (id 1)" in line for line in server.log):
            assert time.monotonic() < deadline, "".join(server.log)
            time.sleep(0.05)


def test_bench_serve_spreads_requests_over_the_adapters(tmp_path, tiny_model_dir):
    """`kvserve bench serve --lora-modules A B` (vLLM's flag): each request names one of them."""
    from kvserve.cli import main
    from server_process import ServerProcess

    base = tiny_model_dir("LlamaForCausalLM")
    paths = [save_adapter(base, tmp_path / name, seed=seed) for name, seed in (("first", 1), ("second", 2))]
    # One adapter loaded at a time: each switch between the two reloads one, and says so in the log.
    with ServerProcess(base, "--served-model-name", "tiny", "--enable-lora", "--max-loras", "1", "--lora-modules",
                       f"first={paths[0]}", f"second={paths[1]}") as server:
        status = main(["bench", "serve", "--base-url", server.url, "--model", "tiny", "--lora-modules", "first",
                       "second", "--tokenizer", str(base), "--num-prompts", "12", "--random-input-len", "8",
                       "--random-output-len", "4", "--max-concurrency", "1", "--result-json",
                       str(tmp_path / "result.json"), "--disable-tqdm"])
        result = json.loads((tmp_path / "result.json").read_text())
        loads = sum("loaded LoRA adapter" in line for line in server.log)
    assert status == 0 and (result["completed"], result["failed"]) == (12, 0)
    assert loads > 2  # the two at startup, and reloads as requests took turns


def test_a_pooling_engine_embeds_with_an_adapter_as_peft(tmp_path, tiny_model_dir):
    """vLLM's pooling runner takes LoRA adapters too: the last token's final hidden state of PEFT's
    adapted model, normalized, for every prompt; the base model's where a prompt names none."""
    directory = tiny_model_dir("LlamaForCausalLM")
    adapter = save_adapter(directory, tmp_path / "adapter", seed=3)
    engine = _engine(directory, runner="pooling")
    loras = [LoRARequest("a", 1, adapter), None, LoRARequest("a", 1, adapter), None]
    ours = engine.embed([{"prompt_token_ids": p} for p in PROMPTS], use_tqdm=False, lora_request=loras)
    base = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    adapted = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32),
                                             adapter).eval()
    for prompt, lora, output in zip(PROMPTS, loras, ours):
        model = adapted if lora is not None else base
        with torch.no_grad():
            hidden = model(torch.tensor([prompt]), output_hidden_states=True).hidden_states[-1][0, -1]
        torch.testing.assert_close(torch.tensor(output.outputs.embedding), torch.nn.functional.normalize(hidden, dim=0),
                                   atol=1e-5, rtol=0)
    assert not engine.requests


def test_a_pooling_server_embeds_with_the_adapter_a_request_names(tmp_path, tiny_model_dir):
    import numpy as np
    import openai

    from server_process import ServerProcess

    base = tiny_model_dir("LlamaForCausalLM")
    lora = LoRARequest("first", 1, save_adapter(base, tmp_path / "first", seed=1))
    offline = _engine(base, runner="pooling")
    expected = {name: offline.embed(["Hello there"], use_tqdm=False, lora_request=request)[0].outputs.embedding
                for name, request in (("tiny", None), ("first", lora))}
    assert not np.allclose(expected["tiny"], expected["first"], atol=1e-3)  # the adapter tells
    with ServerProcess(base, "--served-model-name", "tiny", "--runner", "pooling", "--enable-lora",
                       "--lora-modules", f"first={lora.lora_path}") as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
        for name in ("first", "tiny"):
            response = client.embeddings.create(model=name, input="Hello there")
            assert response.model == name
            np.testing.assert_allclose(response.data[0].embedding, expected[name], atol=1e-5)
