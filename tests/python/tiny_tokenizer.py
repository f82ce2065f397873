"""Tiny tokenizers for tests, trained in a few milliseconds with `tokenizers` on a built-in text.

`save_tiny_tokenizer(directory)` writes a Hugging Face tokenizer directory (tokenizer.json +
tokenizer_config.json) that both kvserve's `Tokenizer.from_pretrained` and transformers'
`AutoTokenizer` load:

    style "chatml":  byte-level BPE, SmolLM2/Qwen-like: no BOS added, eos <|im_end|>, ChatML template
    style "llama3":  the same BPE, Llama-3-like: the post-processor prepends <|begin_of_text|>,
                     eos <|eot_id|>, a Llama-3 header template

`byte_fallback_tokenizer()` builds a Llama-2/Mistral-like tokenizer (SentencePiece-style BPE with
"▁" for spaces and <0xNN> byte-fallback tokens) for the detokenizer tests.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# The shape of Meta's Llama-3.1 template: bos_token from the context, trimmed content, a date from
# strftime_now, raise_exception for a bad role order, tojson for tools.
LLAMA3_TEMPLATE = """{{- bos_token }}
{%- if not date_string is defined %}{%- set date_string = strftime_now("%d %b %Y") %}{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none %}
    {%- for t in tools %}{{- t | tojson(indent=4) }}{{- "\\n\\n" }}{%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {%- if message['role'] == 'system' %}
        {{- raise_exception('A system message is only allowed first') }}
    {%- endif %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

# Multi-byte text on purpose: accents (2 bytes), CJK (3 bytes) and emoji (4 bytes), some frequent
# enough to be merged into single tokens, the rare ones left as several byte tokens.
_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Paged attention stores keys and values in fixed-size blocks.",
    "A scheduler batches requests continuously, step after step.",
    "Café crème, naïve façade, jalapeño, Größe, smørrebrød.",
    "東京は日本の首都です。北京是中国的首都。",
    "Emoji: 🙂 🚀 🦀 👍🏽 and the flag 🇫🇷.",
    "Numbers like 1234, 3.14159 and 2024-06-01 are split into digits.",
    "def add(a, b):\n    return a + b\n",
    "Привет, мир! Γειά σου κόσμε! مرحبا بالعالم",
]


def training_text(num_words: int = 6000, seed: int = 0) -> list[str]:
    """Built-in sentences plus deterministic pseudo-words, enough for a few thousand merges."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "qu", "str", "ph", "ing", "ent", "ion"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(num_words)]
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    return _SENTENCES * 20 + lines


def byte_level_bpe(vocab_size: int = 1000) -> Tokenizer:
    """A byte-level BPE (GPT-2 / Llama-3 / SmolLM family) with SPECIAL_TOKENS at ids 0..6."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_text(), trainer=trainer)
    if tokenizer.get_vocab_size() != vocab_size:
        raise ValueError(f"vocab_size {vocab_size}: the built-in text yields {tokenizer.get_vocab_size()} tokens")
    return tokenizer


def byte_fallback_tokenizer(vocab_size: int = 800) -> Tokenizer:
    """A Llama-2/Mistral-like BPE: "▁" marks spaces, a "▁" is prepended to the text, and characters
    outside the vocabulary become <0xNN> byte tokens. Special tokens: <unk> 0, <s> 1, </s> 2."""
    specials = ["<unk>", "<s>", "</s>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trainer_tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tokenizer.normalizer = normalizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(byte_tokens), special_tokens=specials, show_progress=False, limit_alphabet=200
    )
    trainer_tokenizer.train_from_iterator(training_text(), trainer=trainer)
    # Rebuild the model with the byte tokens right after the specials (ids 3..258, as in Llama-2).
    trained = json.loads(trainer_tokenizer.to_str())["model"]
    pieces = sorted(trained["vocab"], key=trained["vocab"].get)
    vocab = {t: i for i, t in enumerate(specials + byte_tokens + [p for p in pieces if p not in specials])}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tokenizer.normalizer = normalizer
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tokenizer.add_special_tokens(specials)
    return tokenizer


def save_tiny_tokenizer(directory, vocab_size: int = 1000, *, style: str = "chatml") -> Path:
    """Train a byte-level BPE of exactly `vocab_size` tokens (about 300 to 2000) and save it, in the
    `style` "chatml" or "llama3" described above, as a Hugging Face tokenizer directory. Returns the
    directory."""
    if style not in ("chatml", "llama3"):
        raise ValueError(f"style {style!r}: expected 'chatml' or 'llama3'")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = byte_level_bpe(vocab_size)
    if style == "chatml":
        bos, eos, template = None, "<|im_end|>", CHATML_TEMPLATE
    else:
        bos, eos, template = "<|begin_of_text|>", "<|eot_id|>", LLAMA3_TEMPLATE
        bos_id = tokenizer.token_to_id(bos)
        tokenizer.post_processor = processors.Sequence(
            [
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(
                    single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)]
                ),
            ]
        )
    tokenizer.save(str(directory / "tokenizer.json"))
    added = {
        str(tokenizer.token_to_id(t)): {
            "content": t, "lstrip": False, "rstrip": False, "normalized": False, "single_word": False, "special": True
        }
        for t in SPECIAL_TOKENS
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "chat_template": template,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
        "added_tokens_decoder": added,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    return directory
