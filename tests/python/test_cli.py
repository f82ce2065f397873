"""The `kvserve` console script, as a user runs it: `kvserve generate` and `kvserve chat` checked
against the offline Engine on the same tiny model; a chat reply interrupted mid-stream frees its
blocks and leaves the history as it was; the server's packages load only when `serve` runs."""

import inspect
import subprocess
import sys

import pytest

import kvserve
from kvserve import Engine, SamplingParams
from kvserve.cli import main
from kvserve.terminal import ChatSession


def test_version():
    out = subprocess.run(["kvserve", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"kvserve {kvserve.__version__}"


def test_help():
    out = subprocess.run(["kvserve", "--help"], capture_output=True, text=True, check=True)
    assert "usage: kvserve" in out.stdout


FLAGS = ["--dtype", "float32", "--kv-cache-memory", "0.01", "--temperature", "0", "--max-tokens", "8"]
GREEDY = SamplingParams(temperature=0, max_tokens=8)


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("LlamaForCausalLM")


@pytest.fixture(scope="module")
def engine(model_dir):
    return Engine(str(model_dir), dtype="float32", kv_cache_memory_gb=0.01)


def run_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvserve.cli", *args], input=stdin, capture_output=True, text=True,
                          timeout=300)


def test_generate_writes_the_completion_to_stdout(model_dir, engine):
    [expected] = engine.generate(["Once upon a time"], GREEDY, use_tqdm=False)
    result = run_cli("generate", str(model_dir), "--prompt", "Once upon a time", *FLAGS)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected.outputs[0].text + "\n"
    assert "loaded" in result.stderr  # what was loaded goes to stderr, out of the text's way


def test_chat_keeps_the_history(model_dir, engine):
    result = run_cli("chat", str(model_dir), *FLAGS, "--system", "Be brief.", stdin="Hi\nWhat now?\n/exit\n")
    assert result.returncode == 0, result.stderr
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    first = engine.chat(history, GREEDY, use_tqdm=False)[0].outputs[0].text
    history += [{"role": "assistant", "content": first}, {"role": "user", "content": "What now?"}]
    second = engine.chat(history, GREEDY, use_tqdm=False)[0].outputs[0].text
    assert result.stdout == f"{first}\n{second}\n"  # only the replies: the prompts go to stderr
    assert result.stderr.count("> ") == 3


def test_chat_template_flag_renders_the_conversation(model_dir, engine, tmp_path):
    template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:"
    path = tmp_path / "template.jinja"
    path.write_text(template)
    result = run_cli("chat", str(model_dir), *FLAGS, "--chat-template", str(path), stdin="Hi\n/exit\n")
    assert result.returncode == 0, result.stderr
    expected = engine.chat([{"role": "user", "content": "Hi"}], GREEDY, use_tqdm=False, chat_template=template)
    assert result.stdout == f"{expected[0].outputs[0].text}\n"
    broken = run_cli("chat", str(model_dir), "--chat-template", "{% for %}")
    assert broken.returncode != 0 and "kvserve chat: chat_template is not a valid Jinja template" in broken.stderr


def test_bad_flags_are_a_clear_error(model_dir):
    result = run_cli("generate", str(model_dir), "--prompt", "Hi", "--max-model-len", "100000")
    assert result.returncode != 0 and "kvserve generate: max_model_len" in result.stderr


@pytest.mark.parametrize("command", [["generate", "--prompt", "Hi"], ["chat"]])
def test_skip_tokenizer_init_is_refused_where_prompts_are_text(model_dir, command):
    result = run_cli(command[0], str(model_dir), *command[1:], "--skip-tokenizer-init", stdin="Hi\n")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"kvserve {command[0]}: --skip-tokenizer-init loads no tokenizer, but {command[0]} takes text" in result.stderr


@pytest.mark.parametrize("command, stdin", [(["generate", "--prompt", "Once upon a time"], None),
                                            (["chat"], "Hi\nMore\nAgain\n")])
def test_a_reader_that_closes_early_ends_the_command_quietly(model_dir, command, stdin):
    """`kvserve generate ... | head -c 5`: exit as a command ended by SIGPIPE does, without a traceback."""
    cli = subprocess.Popen([sys.executable, "-m", "kvserve.cli", command[0], str(model_dir), *command[1:],
                            "--dtype", "float32", "--kv-cache-memory", "0.01", "--temperature", "0",
                            "--max-tokens", "200"],
                           stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    if stdin:
        cli.stdin.write(stdin.encode())
        cli.stdin.close()
    assert len(cli.stdout.read(5)) == 5
    cli.stdout.close()  # the reader goes away mid-reply
    stderr = cli.stderr.read().decode()
    assert cli.wait(timeout=300) == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr


def test_vllms_flags_parse(model_dir):
    from kvserve.cli import build_parser
    from kvserve.engine_args import engine_kwargs

    parser = build_parser()
    for flag, dtype in (("half", "half"), ("float", "float"), ("float16", "float16")):
        assert parser.parse_args(["serve", "--dtype", flag]).dtype == dtype
    args = parser.parse_args(["serve", "-tp", "1", "--trust-remote-code", "--generation-config", "vllm",
                              "--override-generation-config", '{"temperature": 0.5}', "--kv-cache-dtype", "auto",
                              "--disable-log-requests"])
    names = ("tensor_parallel_size", "trust_remote_code", "generation_config", "override_generation_config",
             "kv_cache_dtype")
    assert {k: engine_kwargs(args)[k] for k in names} == {
        "tensor_parallel_size": 1, "trust_remote_code": True, "generation_config": "vllm",
        "override_generation_config": {"temperature": 0.5}, "kv_cache_dtype": "auto"}
    assert engine_kwargs(parser.parse_args(["serve", "--kv-cache-dtype", "fp8_e5m2"]))["kv_cache_dtype"] == "fp8_e5m2"
    result = run_cli("generate", str(model_dir), "--prompt", "Hi", "--kv-cache-dtype", "int8")
    assert result.returncode != 0
    assert "--kv-cache-dtype: invalid choice: 'int8'" in result.stderr
    result = run_cli("generate", str(model_dir), "--prompt", "Hi", "--tensor-parallel-size", "2")
    assert result.returncode != 0
    assert "kvserve generate: tensor_parallel_size must be 1 (kvserve runs on one device), got 2" in result.stderr
    result = run_cli("generate", str(model_dir), "--prompt", "Hi", "--dtype", "half", "--max-tokens", "2")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("flags, message", [
    (["--port", "-1"], "argument --port: expected a port in [0, 65535], got '-1'"),
    (["--port", "70000"], "argument --port: expected a port in [0, 65535], got '70000'"),
    (["--port", "http"], "argument --port: expected a port in [0, 65535], got 'http'"),
    (["--shutdown-timeout", "-1"], "argument --shutdown-timeout: expected a number of seconds >= 0, got '-1'"),
    (["--shutdown-timeout", "inf"], "argument --shutdown-timeout: expected a number of seconds >= 0, got 'inf'"),
    (["--allowed-origins", "*"], "argument --allowed-origins: expected a JSON list of strings, e.g. '[\"*\"]', got '*'"),
    (["--allowed-methods", '["GET", 1]'], "argument --allowed-methods: expected a JSON list of strings"),
    (["--override-generation-config", "temperature=0.5"], "argument --override-generation-config: expected a JSON "
                                                           "object"),
])
def test_serve_refuses_a_bad_port_timeout_or_cors_list(flags, message):
    result = run_cli("serve", *flags)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_serve_refuses_a_model_path_taken_as_a_served_name(model_dir):
    """--served-model-name takes several names: a model given after it would be served as a name."""
    result = run_cli("serve", "--served-model-name", "tiny", str(model_dir))
    assert result.returncode == 1 and "--served-model-name took" in result.stderr and "give the model first" in \
        result.stderr


def test_serve_refuses_auto_tool_choice_without_a_parser(model_dir):
    result = run_cli("serve", str(model_dir), "--enable-auto-tool-choice")
    assert result.returncode == 1 and "--enable-auto-tool-choice needs --tool-call-parser" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_cli("serve", str(model_dir), "--tool-call-parser", "granite")
    assert result.returncode == 2 and "invalid choice: 'granite'" in result.stderr


def test_ctrl_c_while_a_model_loads_ends_quietly(monkeypatch, capsys):
    import kvserve.server.serve

    def loading(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(kvserve.server.serve, "run_server", loading)
    assert main(["serve", "--port", "0"]) == 130
    assert capsys.readouterr().err == "kvserve: interrupted\n"


def test_a_reply_interrupted_mid_step_is_forgotten_and_the_chat_goes_on(engine, monkeypatch):
    session = ChatSession(engine, SamplingParams(temperature=0, max_tokens=50, ignore_eos=True))
    first = session.reply("Hi", lambda text: None)
    kept = list(session.messages)
    launch, calls = engine.runner.launch, []

    def interrupted_on_the_third_step(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C lands in the model's forward pass
        return launch(*args)

    monkeypatch.setattr(engine.runner, "launch", interrupted_on_the_third_step)
    with pytest.raises(KeyboardInterrupt):
        session.reply("Tell me more", lambda text: None)
    assert session.messages == kept and len(kept) == 2
    stats = engine.stats()
    assert not engine.requests and stats.num_free_blocks == stats.num_blocks - 1
    session.clear()
    assert session.messages == [] and session.reply("Hi", lambda text: None) == first


def test_the_server_packages_load_only_when_serve_runs():
    code = ("import sys, kvserve.cli; kvserve.cli.build_parser(); "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette', 'prometheus_client') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr


def test_engine_flags_reach_the_engine(model_dir):
    import torch

    from kvserve.cli import build_parser
    from kvserve.engine_args import engine_from_args
    from kvserve.kv_cache import kv_bytes_per_token

    args = build_parser().parse_args([
        "serve", str(model_dir), "--dtype", "bfloat16", "--max-model-len", "64", "--block-size", "8",
        "--kv-cache-memory", "0.001", "--max-num-seqs", "3", "--max-num-batched-tokens", "100",
        "--no-enable-prefix-caching", "--load-format", "dummy", "--seed", "5"])
    engine = engine_from_args(args)
    assert engine.max_model_len == 64 and engine.dtype == torch.bfloat16
    assert engine.stats().num_blocks == int(0.001 * 2**30 // (8 * kv_bytes_per_token(engine.model_config,
                                                                                         torch.bfloat16)))
    for i in range(5):
        engine.add_request(str(i), {"prompt_token_ids": list(range(10, 30))}, SamplingParams(max_tokens=2))
    engine.step()
    assert engine.scheduler.num_running == 3  # --max-num-seqs
    assert engine.stats().prefix_cache_hits == 0  # five equal prompts, no prefix caching


def test_the_server_prefills_in_smaller_steps_than_offline_commands():
    from kvserve.cli import build_parser
    from kvserve.engine_args import OFFLINE_MAX_NUM_BATCHED_TOKENS, SERVING_MAX_NUM_BATCHED_TOKENS

    parser = build_parser()
    assert parser.parse_args(["serve"]).max_num_batched_tokens == SERVING_MAX_NUM_BATCHED_TOKENS
    assert parser.parse_args(["generate", "--prompt", "x"]).max_num_batched_tokens == OFFLINE_MAX_NUM_BATCHED_TOKENS
    assert parser.parse_args(["bench", "throughput"]).max_num_batched_tokens == OFFLINE_MAX_NUM_BATCHED_TOKENS
    assert inspect.signature(Engine).parameters["max_num_batched_tokens"].default == OFFLINE_MAX_NUM_BATCHED_TOKENS
    assert SERVING_MAX_NUM_BATCHED_TOKENS < OFFLINE_MAX_NUM_BATCHED_TOKENS
