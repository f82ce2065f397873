"""Tokenizer and chat templates against transformers' AutoTokenizer on the same files."""

import json

import pytest
from tiny_tokenizer import CHATML_TEMPLATE, save_tiny_tokenizer

from kvserve.chat_template import load_chat_template
from kvserve.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

TEXTS = [
    "Hello world",
    "  leading spaces and trailing  ",
    "東京は日本の首都です。🦀 👍🏽 café naïve 3.14159",
    "<|im_start|>user\nhi<|im_end|>\n",
    "new\n\nlines\tand tabs",
    "",
]

CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}],
    [
        {"role": "system", "content": "Be brief. "},
        {"role": "user", "content": "  What is 2+2?  "},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 東京?"},
    ],
]


@pytest.fixture(scope="module", params=["chatml", "llama3"])
def pair(request, tmp_path_factory):
    directory = save_tiny_tokenizer(tmp_path_factory.mktemp(request.param), 600, style=request.param)
    return Tokenizer.from_pretrained(directory), transformers.AutoTokenizer.from_pretrained(directory)


def test_encode_decode_and_special_ids_equal_transformers(pair):
    ours, hf = pair
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == hf(text).input_ids, text
        assert ours.encode(text, add_special_tokens=False) == hf(text, add_special_tokens=False).input_ids
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
    assert (ours.bos_token_id, ours.eos_token_id) == (hf.bos_token_id, hf.eos_token_id)
    assert ours.vocab_size == len(hf) == 600
    assert ours.special_token_ids == set(hf.all_special_ids) | {
        i for i, t in hf.added_tokens_decoder.items() if t.special
    }


def test_chat_template_equals_transformers(pair):
    ours, hf = pair
    for messages in CONVERSATIONS:
        for add in (True, False):
            assert ours.apply_chat_template(messages, add_generation_prompt=add) == hf.apply_chat_template(
                messages, add_generation_prompt=add, tokenize=False
            )
        expected = hf.apply_chat_template(messages, continue_final_message=True, tokenize=False)
        assert ours.apply_chat_template(messages, add_generation_prompt=False, continue_final_message=True) == expected
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {"city": "Zürich"}}}]
    assert ours.apply_chat_template(CONVERSATIONS[0], tools=tools, date_string="1 Jan 2025") == (
        hf.apply_chat_template(
            CONVERSATIONS[0], tools=tools, date_string="1 Jan 2025", add_generation_prompt=True, tokenize=False
        )
    )


def test_text_parts_render_as_joined_text(pair):
    ours, _ = pair
    parts = [{"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]}]
    assert ours.apply_chat_template(parts) == ours.apply_chat_template([{"role": "user", "content": "one\ntwo"}])


def test_none_values_are_dropped_as_transformers_does(pair):
    ours, hf = pair
    messages = [{"role": "user", "content": "hi", "name": None}]
    assert ours.apply_chat_template(messages) == hf.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )


@pytest.mark.parametrize(
    "messages, match",
    [
        ([], "non-empty list"),
        ("hello", "non-empty list"),
        (["hello"], r"messages\[0\] must be a dict"),
        ([{"content": "hi"}], r"messages\[0\]\['role'\] is None: expected a role"),
        ([{"role": "", "content": "hi"}], r"messages\[0\]\['role'\] is '': expected a role"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}], "expected a text part"),
    ],
)
def test_bad_conversations_raise_value_error(pair, messages, match):
    ours, _ = pair
    with pytest.raises(ValueError, match=match):
        ours.apply_chat_template(messages)


def test_any_role_reaches_the_template_as_transformers_passes_it(pair):
    ours, hf = pair
    template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
    messages = [{"role": "narrator", "content": "Once"}, {"role": "user", "content": "hi"}]
    assert ours.apply_chat_template(messages, chat_template=template) == "[narrator] Once\n[user] hi\n"
    assert hf.apply_chat_template(messages, chat_template=template, tokenize=False) == "[narrator] Once\n[user] hi\n"


def test_template_errors_become_value_errors(pair):
    ours, _ = pair
    with pytest.raises(ValueError, match="cannot both be True"):
        ours.apply_chat_template(CONVERSATIONS[0], continue_final_message=True)
    with pytest.raises(ValueError, match="not a valid Jinja template"):
        ours.apply_chat_template(CONVERSATIONS[0], chat_template="{% for %}")
    raising = "{{ raise_exception('only user messages') }}"
    with pytest.raises(ValueError, match="only user messages"):
        ours.apply_chat_template(CONVERSATIONS[0], chat_template=raising)
    sandbox_escape = "{{ messages.__class__.__mro__ }}"
    with pytest.raises(ValueError, match="unsafe|access"):
        ours.apply_chat_template(CONVERSATIONS[0], chat_template=sandbox_escape)


def test_load_chat_template_from_a_file_or_inline_and_checked(tmp_path):
    """--chat-template's value, as vLLM reads it: a file's path, or the template itself."""
    template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
    path = tmp_path / "template.jinja"
    path.write_text(template)
    assert load_chat_template(str(path)) == template
    assert load_chat_template(template) == template
    with pytest.raises(ValueError, match=r"chat template: no file 'missing\.jinja'"):
        load_chat_template("missing.jinja")
    with pytest.raises(ValueError, match="not a valid Jinja template"):
        load_chat_template("{% for %}")


def test_template_features_tojson_strftime_generation_loopcontrols(pair):
    ours, _ = pair
    template = (
        "{{ messages[0] | tojson }}|{{ strftime_now('%Y') | length }}|"
        "{% generation %}gen{% endgeneration %}|"
        "{% for m in [1, 2, 3] %}{% if m == 2 %}{% break %}{% endif %}{{ m }}{% endfor %}"
    )
    out = ours.apply_chat_template([{"role": "user", "content": "<é>"}], chat_template=template)
    assert out == '{"role": "user", "content": "<é>"}|4|gen|1'


def test_tokenizer_json_decides_bos_and_chat_template_file_wins(tmp_path):
    directory = save_tiny_tokenizer(tmp_path, 500)
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.update(bos_token="<|endoftext|>", add_bos_token=True)
    config_path.write_text(json.dumps(config))
    (directory / "chat_template.jinja").write_text("{{ bos_token }}{{ messages[0]['content'] }}")
    ours = Tokenizer.from_pretrained(directory)
    hf = transformers.AutoTokenizer.from_pretrained(directory)
    # The config's add_bos_token does not override tokenizer.json's post-processor, in transformers either.
    assert ours.encode("hello") == hf("hello").input_ids == ours.encode("hello", add_special_tokens=False)
    assert ours.apply_chat_template([{"role": "user", "content": "x"}]) == "<|endoftext|>x"
    assert hf.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False) == "<|endoftext|>x"


def test_constructor_checks_and_missing_files(tmp_path):
    directory = save_tiny_tokenizer(tmp_path / "tok", 500)
    backend = Tokenizer.from_pretrained(directory).backend
    with pytest.raises(ValueError, match="eos_token '<nope>' is not in the tokenizer's vocabulary"):
        Tokenizer(backend, eos_token="<nope>")
    with pytest.raises(ValueError, match="add_bos_token=True needs a bos_token"):
        Tokenizer(backend, add_bos_token=True)
    with pytest.raises(ValueError, match="no tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no chat template"):
        Tokenizer(backend).apply_chat_template([{"role": "user", "content": "hi"}])
    gguf_like = Tokenizer(backend, chat_template=CHATML_TEMPLATE, bos_token="<|endoftext|>", add_bos_token=True)
    assert gguf_like.encode("hi")[0] == gguf_like.bos_token_id == 0


def test_transformers_calls_give_transformers_results(pair):
    """The calls code written for a transformers tokenizer makes (vLLM's get_tokenizer() hands one out)."""
    ours, hf = pair
    texts = [t for t in TEXTS if t]
    for text in texts:
        assert ours(text)["input_ids"] == ours(text).input_ids == hf(text)["input_ids"]
        assert ours(text, add_special_tokens=False)["input_ids"] == hf(text, add_special_tokens=False)["input_ids"]
        assert ours(text)["attention_mask"] == hf(text)["attention_mask"]
    assert ours(texts)["input_ids"] == hf(texts)["input_ids"]
    assert ours(texts)["attention_mask"] == hf(texts)["attention_mask"]
    batch = [ours.encode(t) for t in texts]
    for skip in (False, True):
        assert ours.batch_decode(batch, skip_special_tokens=skip) == hf.batch_decode(batch, skip_special_tokens=skip)
    assert len(ours) == len(hf) == 600
    ids = batch[2] + [ours.eos_token_id, 599, 600]  # 600: past the vocabulary
    assert ours.convert_ids_to_tokens(ids) == hf.convert_ids_to_tokens(ids)
    assert ours.convert_ids_to_tokens(ids[0]) == hf.convert_ids_to_tokens(ids[0])
    assert (ours.pad_token_id, ours.bos_token_id, ours.eos_token_id) == (hf.pad_token_id, hf.bos_token_id,
                                                                           hf.eos_token_id)
    assert ours.pad_token_id == 0  # the tiny tokenizers' pad_token <|endoftext|>
    with pytest.raises(ValueError, match="text must be a str or a list of str, got int"):
        ours(5)


def test_apply_chat_template_tokenize_gives_transformers_ids(pair):
    ours, hf = pair
    for messages in CONVERSATIONS:
        text = ours.apply_chat_template(messages)
        assert isinstance(text, str)  # kvserve's default: the text (transformers': the ids)
        expected = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        assert ours.apply_chat_template(messages, tokenize=True) == expected
        assert ours.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"] == expected
        assert ours.apply_chat_template(messages, tokenize=False) == text


def test_a_tokenizer_without_a_pad_token_has_pad_token_id_none(tmp_path):
    directory = save_tiny_tokenizer(tmp_path, 500)
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    del config["pad_token"]
    config_path.write_text(json.dumps(config))
    hf = transformers.AutoTokenizer.from_pretrained(directory)
    assert Tokenizer.from_pretrained(directory).pad_token_id is hf.pad_token_id is None
