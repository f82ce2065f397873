"""The small endpoints (/v1/models, /health, /version, /tokenize, /detokenize) and /metrics on a real
server serving a tiny model under two names, without an API key."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import openai
import pytest

import kvserve
from kvserve.server.async_engine import EngineSnapshot
from kvserve.server.metrics import ServerMetrics
from kvserve.tokenizer import Tokenizer
from server_process import ServerProcess

NAMES = ["tiny", "tiny-alias"]
METRICS = ["num_requests_running", "num_requests_waiting", "kv_cache_usage_perc", "prefix_cache_queries_total",
           "prefix_cache_hits_total", "prompt_tokens_total", "generation_tokens_total",
           "time_to_first_token_seconds_count", "inter_token_latency_seconds_count",
           "e2e_request_latency_seconds_count", "request_queue_time_seconds_count", "num_preemptions_total",
           "request_prompt_tokens_count", "request_generation_tokens_count", "request_prefill_time_seconds_count",
           "request_decode_time_seconds_count", "request_inference_time_seconds_count",
           "request_time_per_output_token_seconds_count", "request_max_num_generation_tokens_count",
           "request_params_n_count", "request_params_max_tokens_count", "iteration_tokens_total_count"]


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("LlamaForCausalLM")


@pytest.fixture(scope="module")
def server(model_dir):
    with ServerProcess(model_dir, "--served-model-name", *NAMES, "--enable-prompt-tokens-details",
                       "--enable-request-id-headers") as server:
        yield server


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return Tokenizer.from_pretrained(model_dir)


def test_models_lists_every_name_and_any_of_them_serves(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")  # no key needed: auth is off
    models = client.models.list().data
    assert [m.id for m in models] == NAMES
    assert all(m.object == "model" and m.owned_by == "kvserve" and m.model_extra["max_model_len"] == 256
               for m in models)
    response = client.completions.create(model=NAMES[1], prompt="Hi", max_tokens=2)
    assert response.model == NAMES[0]
    assert httpx.post(server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2}).status_code == 200


def test_startup_log_says_what_was_loaded_and_where_it_serves(server, model_dir):
    log = "".join(server.log)
    assert f"loaded {model_dir} (LlamaForCausalLM, float32) on cpu" in log
    assert re.search(r"KV cache \(float32\): \d+ blocks of 16 tokens = \d+ tokens", log)
    assert f"serving tiny, tiny-alias (max_model_len 256) at {server.url}/v1 (no API key)" in log


def test_usage_reports_the_prompt_tokens_found_in_the_prefix_cache(server):
    """--enable-prompt-tokens-details: the second request of a prompt finds its full blocks cached."""
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    prompt = "ka lo mi ne ru sa ti vo ze str ing ion 7 42 and then some more words to fill blocks " * 2 + "cached?"
    first, second = (client.completions.create(model=NAMES[0], prompt=prompt, max_tokens=1).usage for _ in range(2))
    assert first.prompt_tokens_details.cached_tokens == 0
    assert second.prompt_tokens_details.cached_tokens == first.prompt_tokens // 16 * 16 > 0


def test_a_cache_salt_keeps_a_users_prefix_to_itself(server):
    """vLLM's cache_salt: a request finds cached blocks of its own salt only."""
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    prompt = "salted words to fill two blocks: ka lo mi ne ru sa ti vo ze and more and more words " * 2

    def cached(salt: str | None) -> int:
        usage = client.completions.create(model=NAMES[0], prompt=prompt, max_tokens=1,
                                          extra_body={"cache_salt": salt} if salt else None).usage
        return usage.prompt_tokens_details.cached_tokens

    first, other, again, unsalted = cached("alice"), cached("bob"), cached("alice"), cached(None)
    assert (first, other, unsalted) == (0, 0, 0) and again > 0
    empty = httpx.post(server.url + "/v1/completions", json={"prompt": "Hi", "cache_salt": ""})
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "cache_salt"


def test_a_request_id_header_names_the_response_and_comes_back(server):
    """vLLM's X-Request-Id: it names the response (cmpl-<id>, chatcmpl-<id>), two requests may share it,
    and with --enable-request-id-headers every response carries one."""
    headers = {"X-Request-Id": "trace-42"}
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: httpx.post(server.url + "/v1/completions", headers=headers, json={
            "prompt": "Hi", "max_tokens": 3}), range(2)))
    assert [(a.status_code, a.json()["id"], a.headers["x-request-id"]) for a in answers] == [
        (200, "cmpl-trace-42", "trace-42")] * 2
    chat = httpx.post(server.url + "/v1/chat/completions", headers=headers,
                      json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert chat.json()["id"] == "chatcmpl-trace-42"
    assert re.fullmatch(r"[0-9a-f]{32}", httpx.get(server.url + "/health").headers["x-request-id"])


def test_unknown_fields_are_ignored(server):
    response = httpx.post(server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2, "made_up": 1})
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] <= 2


def test_health_and_version(server):
    health = httpx.get(server.url + "/health")
    assert health.status_code == 200 and health.content == b""
    assert httpx.get(server.url + "/version").json() == {"version": kvserve.__version__}


def test_tokenize_and_detokenize(server, tokenizer):
    text = "Café crème, 東京 and more"
    body = httpx.post(server.url + "/tokenize", json={"prompt": text}).json()
    assert body == {"count": len(tokenizer.encode(text)), "max_model_len": 256, "tokens": tokenizer.encode(text)}
    messages = [{"role": "user", "content": text}]
    chat = httpx.post(server.url + "/tokenize", json={"model": NAMES[0], "messages": messages}).json()
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert chat["tokens"] == tokenizer.encode(rendered, add_special_tokens=False)
    back = httpx.post(server.url + "/detokenize", json={"tokens": body["tokens"]}).json()
    assert back == {"prompt": text}
    for path, payload, param in [("/detokenize", {"tokens": [1, 10**6]}, "tokens"),
                                 ("/tokenize", {"prompt": "x", "messages": messages}, "prompt"),
                                 ("/tokenize", {"prompt": "x", "model": "other"}, "model")]:
        response = httpx.post(server.url + path, json=payload)
        assert response.status_code in (400, 404) and response.json()["error"]["param"] == param


def test_metrics_count_tokens_requests_and_latencies(server, tokenizer):
    before = server.metrics()
    for name in METRICS:
        assert f'kvserve:{name}{{model_name="{NAMES[0]}"}}' in before, name
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    shared = "ka lo mi ne ru sa ti vo ze str ing ion 7 42 and then some more words to fill two blocks " * 2
    usages = []
    for prompt, max_tokens in [(shared + "alpha", 5), (shared + "beta", 7), ("Hi", 3)]:
        usages.append(client.completions.create(model=NAMES[0], prompt=prompt, max_tokens=max_tokens, temperature=0,
                                                extra_body={"ignore_eos": True}).usage)
    stopped = client.completions.create(model=NAMES[0], prompt="Hi", max_tokens=8, temperature=0,
                                        extra_body={"logit_bias": {"2": 100}})  # end-of-sequence first
    assert stopped.choices[0].finish_reason == "stop"
    after = server.metrics()

    def grew(name: str, **labels) -> float:
        key = f'kvserve:{name}{{' + ",".join(f'{k}="{v}"' for k, v in {**labels, "model_name": NAMES[0]}.items()) + "}"
        return after[key] - before.get(key, 0.0)

    assert grew("prompt_tokens_total") == sum(u.prompt_tokens for u in usages) + stopped.usage.prompt_tokens
    assert grew("generation_tokens_total") == 5 + 7 + 3 + 1
    assert grew("request_success_total", finished_reason="length") == 3
    assert grew("request_success_total", finished_reason="stop") == 1
    for name in ("time_to_first_token_seconds", "e2e_request_latency_seconds", "request_queue_time_seconds"):
        assert grew(f"{name}_count") == 4, name
    assert grew("inter_token_latency_seconds_count") == 4 + 6 + 2 + 0
    # Per finished request: its prompt and generated tokens, its prefill, decode and inference times,
    # and its time per output token (0 for the one-token request, as vLLM records it).
    assert grew("request_prompt_tokens_sum") == grew("prompt_tokens_total")
    assert grew("request_generation_tokens_sum") == 5 + 7 + 3 + 1
    for name in ("request_prompt_tokens", "request_generation_tokens", "request_prefill_time_seconds",
                 "request_decode_time_seconds", "request_inference_time_seconds"):
        assert grew(f"{name}_count") == 4, name
    assert grew("request_time_per_output_token_seconds_count") == 4
    assert grew("request_max_num_generation_tokens_sum") == 5 + 7 + 3 + 1
    assert grew("request_params_n_sum") == 4 and grew("request_params_max_tokens_sum") == 5 + 7 + 3 + 8
    # Each step's tokens: every prompt token computed (after the prefix cache's) and every decoded one.
    computed = grew("prompt_tokens_total") - grew("prefix_cache_hits_total")
    assert grew("iteration_tokens_total_sum") == computed + (5 - 1) + (7 - 1) + (3 - 1)
    assert grew("num_preemptions_total") == 0
    # The second prompt finds the first one's full blocks in the prefix cache.
    assert grew("prefix_cache_hits_total") >= 16 and grew("prefix_cache_queries_total") >= grew("prefix_cache_hits_total")
    idle = {k: v for k, v in after.items() if k.split("{")[0] in (
        "kvserve:num_requests_running", "kvserve:num_requests_waiting", "kvserve:kv_cache_usage_perc")}
    assert list(idle.values()) == [0.0, 0.0, 0.0]


def test_preemptions_come_from_the_engines_count_and_token_buckets_from_the_context():
    metrics = ServerMetrics("m", max_model_len=256)
    engine = SimpleNamespace(snapshot=EngineSnapshot(num_preemptions=3), num_waiting=0)
    metrics.render(engine)
    engine.snapshot = EngineSnapshot(num_preemptions=5)
    text = metrics.render(engine).decode()
    assert 'kvserve:num_preemptions_total{model_name="m"} 5.0' in text
    buckets = re.findall(r'kvserve:request_prompt_tokens_bucket\{le="([^"]+)"', text)
    assert buckets == ["1.0", "2.0", "5.0", "10.0", "20.0", "50.0", "100.0", "200.0", "+Inf"]


def test_step_token_buckets_end_at_the_budget_and_the_cache_config_is_labels():
    metrics = ServerMetrics("m", max_model_len=256, max_num_batched_tokens=100,
                            cache_config={"block_size": "16", "num_gpu_blocks": "7"})
    text = metrics.render(SimpleNamespace(snapshot=EngineSnapshot(), num_waiting=0)).decode()
    buckets = re.findall(r'kvserve:iteration_tokens_total_bucket\{le="([^"]+)"', text)
    assert buckets == ["1.0", "8.0", "16.0", "32.0", "64.0", "100.0", "+Inf"]
    assert 'kvserve:cache_config_info{block_size="16",num_gpu_blocks="7"} 1.0' in text


def test_metrics_have_no_created_series_and_no_lora_info_without_lora(server):
    text = httpx.get(server.url + "/metrics").text
    assert "_created" not in text and "lora_requests_info" not in text
    [info] = [line for line in text.splitlines() if line.startswith("kvserve:cache_config_info{")]
    assert 'block_size="16"' in info and 'cache_dtype="float32"' in info and 'enable_prefix_caching="True"' in info


def test_any_origin_may_call_the_api_by_default(server):
    preflight = httpx.options(server.url + "/v1/completions", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == "*"
    answer = httpx.post(server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 1},
                        headers={"Origin": "https://app.example"})
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "*"


def test_trusted_request_templates_render_off_the_event_loop_and_cors_flags(model_dir, tokenizer):
    """--trust-request-chat-template: a request's template renders the chat (any role goes to it),
    in a thread: /health answers while a slow template renders. --allowed-origins limits CORS."""
    template = "{% for m in messages %}<{{ m.role }}> {{ m.content }}\n{% endfor %}"
    messages = [{"role": "narrator", "content": "Once"}, {"role": "user", "content": "Hi there"}]
    with ServerProcess(model_dir, "--trust-request-chat-template", "--allowed-origins", '["https://app.example"]',
                       "--allowed-methods", '["POST"]') as server:
        rendered = httpx.post(server.url + "/tokenize", json={"messages": messages, "chat_template": template}).json()
        assert rendered["tokens"] == tokenizer.encode("<narrator> Once\n<user> Hi there\n", add_special_tokens=False)
        in_kwargs = httpx.post(server.url + "/tokenize", json={"messages": messages,
                                                               "chat_template_kwargs": {"chat_template": template}})
        assert in_kwargs.json() == rendered

        # About 125 million loop steps: seconds of rendering (jinja runs ~50 million a second here).
        slow = "{% for i in range(500) %}{% for j in range(500) %}{% for k in range(500) %}{% endfor %}{% endfor %}" \
               "{% endfor %}x"

        def render_slowly():
            response = httpx.post(server.url + "/tokenize", json={"messages": messages, "chat_template": slow},
                                  timeout=600)
            return response, time.monotonic()

        with ThreadPoolExecutor(1) as pool:
            rendering = pool.submit(render_slowly)
            time.sleep(0.3)  # the template is rendering
            assert httpx.get(server.url + "/health", timeout=60).status_code == 200
            answered = time.monotonic()
            response, rendered = rendering.result()
        assert response.json()["tokens"] == tokenizer.encode("x", add_special_tokens=False)
        assert rendered - answered > 0.5  # /health did not wait for the template (seconds of rendering)

        def preflight(origin: str) -> httpx.Response:
            return httpx.options(server.url + "/v1/completions", headers={
                "Origin": origin, "Access-Control-Request-Method": "POST"})

        assert preflight("https://app.example").headers["access-control-allow-origin"] == "https://app.example"
        refused = preflight("https://elsewhere.example")
        assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers


def test_chat_template_flag_replaces_the_models(model_dir, tokenizer, tmp_path):
    """--chat-template: a file's template renders the chat; a broken one stops the server at once."""
    template = "{% for m in messages %}<{{ m.role }}> {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<bot>{% endif %}"
    path = tmp_path / "template.jinja"
    path.write_text(template)
    messages = [{"role": "user", "content": "Hi there"}]
    with ServerProcess(model_dir, "--chat-template", str(path)) as server:
        chat = httpx.post(server.url + "/tokenize", json={"messages": messages}).json()
    assert chat["tokens"] == tokenizer.encode("<user> Hi there\n<bot>", add_special_tokens=False)
    with pytest.raises(RuntimeError, match="kvserve serve: chat template: no file 'nowhere.jinja'"):
        ServerProcess(model_dir, "--chat-template", "nowhere.jinja")


def test_api_docs_follow_the_root_path_and_can_be_turned_off(server, model_dir):
    assert httpx.get(server.url + "/docs").status_code == 200
    with ServerProcess(model_dir, "--root-path", "/api", "--disable-log-requests") as proxied:
        docs = httpx.get(proxied.url + "/docs")
        assert docs.status_code == 200 and "/api/openapi.json" in docs.text
    with ServerProcess(model_dir, "--disable-fastapi-docs", "--disable-uvicorn-access-log") as bare:
        assert [httpx.get(bare.url + path).status_code for path in ("/docs", "/redoc", "/openapi.json")] == [404] * 3
        assert httpx.get(bare.url + "/health").status_code == 200
