"""Incremental detokenization equals a full decode at every step; stop strings cut the text."""

import random

import pytest
from tiny_tokenizer import byte_fallback_tokenizer, byte_level_bpe, training_text
from tokenizers import decoders

from kvserve.detokenizer import Detokenizer
from kvserve.sampling_params import SamplingParams
from kvserve.text_stream import TextStream
from kvserve.tokenizer import Tokenizer


def _generic_decoder_tokenizer():
    backend = byte_level_bpe(500)
    backend.decoder = decoders.BPEDecoder()  # none of the two decoders with a fast path
    return backend


@pytest.fixture(scope="module", params=["byte_level", "byte_fallback", "generic"])
def tokenizer(request):
    backend = {"byte_level": lambda: byte_level_bpe(700), "byte_fallback": byte_fallback_tokenizer,
               "generic": _generic_decoder_tokenizer}[request.param]()
    tok = Tokenizer(backend)
    assert tok.decode_tables.kind == request.param
    return tok


LINES = training_text()[:200]


def _random_text(rng: random.Random) -> str:
    words = " ".join(" ".join(rng.choice(LINES).split()[: rng.randint(1, 6)]) for _ in range(3))
    rare = "".join(chr(rng.choice([rng.randint(0x4E00, 0x9FFF), rng.randint(0x1F300, 0x1FAFF),
                                   rng.randint(0xC0, 0x24F)])) for _ in range(rng.randint(0, 4)))
    return words[: rng.randint(0, len(words))] + rare + words[rng.randint(0, len(words)):]


def _stream_all(tok, ids, skip, context=(), rng=None):
    """Push ids in random chunks. At every step the text so far is a prefix of the final text, and
    of the full decode so far (where that decode still shows the context's text unchanged)."""
    stream = TextStream(tok.backend, tok.decode_tables, skip, context)
    base = tok.decode(list(context), skip_special_tokens=skip)
    final = tok.decode(list(context) + ids, skip_special_tokens=skip)[len(base):]
    text, i = "", 0
    while i < len(ids):
        step = rng.randint(1, 3) if rng else 1
        text += stream.push(ids[i : i + step])
        i += step
        full = tok.decode(list(context) + ids[:i], skip_special_tokens=skip)
        assert final.startswith(text)
        if full.startswith(base):
            assert full[len(base):].startswith(text), (ids[:i], text, full)
    return text + stream.flush()


def test_random_ids_equal_full_decode_at_every_step(tokenizer):
    # Random ids: byte tokens that split characters, invalid UTF-8, special tokens anywhere.
    rng = random.Random(0)
    vocab = tokenizer.vocab_size
    for _ in range(300):
        ids = [rng.randrange(vocab) for _ in range(rng.randint(1, 16))]
        for skip in (False, True):
            assert _stream_all(tokenizer, ids, skip, rng=rng) == tokenizer.decode(ids, skip_special_tokens=skip)


def test_text_after_a_prompt_equals_the_decode_of_prompt_and_output(tokenizer):
    # Real text split at a random token: the prompt positions the first output token, so
    # SentencePiece's "▁word" after a prompt keeps its space.
    rng = random.Random(1)
    special = sorted(tokenizer.special_token_ids)
    for _ in range(200):
        ids = tokenizer.encode(_random_text(rng), add_special_tokens=False)
        ids.insert(rng.randint(0, len(ids)), rng.choice(special))
        for skip in (False, True):
            # Cut where the prompt's text is final (whole characters, not rewritten by what follows),
            # else "the text after the prompt" is undefined.
            full = tokenizer.decode(ids, skip_special_tokens=skip)
            prompts = [tokenizer.decode(ids[:c], skip_special_tokens=skip) for c in range(len(ids) + 1)]
            cuts = [c for c in range(1, len(ids) + 1)
                    if full.startswith(prompts[c]) and not prompts[c].endswith("\ufffd")]
            cut = rng.choice(cuts)
            prompt, output = ids[:cut], ids[cut:]
            base = tokenizer.decode(prompt, skip_special_tokens=skip)
            assert _stream_all(tokenizer, output, skip, prompt, rng) == full[len(base):]


def test_multibyte_characters_are_held_until_complete():
    tok = Tokenizer(byte_level_bpe(700))
    text = "a🦀b"
    ids = tok.encode(text)
    assert len(ids) > 3  # the crab is split into byte tokens
    det = Detokenizer(tok)
    shown = []
    for token in ids:
        det.update([token])
        shown.append(det.output_text)
    assert all("\ufffd" not in s for s in shown)
    assert shown[-1] == text and "a" in shown[0]


def _detokenize(tok, ids, **kw):
    det = Detokenizer(tok, **kw)
    seen, deltas, stop = [], [], None
    for token in ids:
        stop = det.update([token])
        seen.append(det.output_text)
        deltas.append(det.get_delta())
        if stop is not None:
            break
    else:
        stop = det.finish()
        deltas.append(det.get_delta())
    assert "".join(deltas) == det.output_text
    assert all(det.output_text.startswith(s) for s in seen)
    return det.output_text, stop, seen


@pytest.mark.parametrize("include", [False, True])
def test_stop_strings_across_tokens(include):
    tok = Tokenizer(byte_level_bpe(700))
    ids = tok.encode("The quick brown fox jumps over the lazy dog.")
    for stop in ("n fox j", "lazy", "g.", "The"):
        text, matched, seen = _detokenize(tok, ids, stop=["zzz", stop], include_stop_str_in_output=include)
        full = tok.decode(ids)
        at = full.index(stop)
        assert matched == stop
        assert text == full[: at + len(stop) if include else at]
        if not include:
            assert all(stop not in s and not s.endswith(stop[0]) for s in seen[:-1])


def test_stop_strings_against_a_reference_on_random_text():
    tok = Tokenizer(byte_level_bpe(700))
    rng = random.Random(2)
    for _ in range(200):
        ids = tok.encode(_random_text(rng))
        full = tok.decode(ids)
        stops = [full[i : i + rng.randint(1, 6)] for i in sorted(rng.sample(range(len(full)), min(2, len(full))))]
        # Reference: the first token after which a stop string appears; the earliest one there
        # (on a tie, the one listed first).
        expected_text, expected_stop = full, None
        for k in range(1, len(ids) + 1):
            text = tok.decode(ids[:k])
            hits = [(text.find(s), j, s) for j, s in enumerate(stops) if s in text]
            if hits:
                at, _, expected_stop = min(hits)
                expected_text = text[:at]
                break
        assert _detokenize(tok, ids, stop=stops)[:2] == (expected_text, expected_stop)


def test_held_stop_prefix_is_released_at_finish_and_min_tokens_delays_stops():
    tok = Tokenizer(byte_level_bpe(700))
    ids = tok.encode("hello wor")
    text, stop, seen = _detokenize(tok, ids, stop=["world"])
    assert (text, stop) == ("hello wor", None) and seen[-1] == "hello "
    ids = tok.encode("ab ab ab")
    text, stop, _ = _detokenize(tok, ids, stop=["ab"], min_tokens=len(tok.encode("ab ab")))
    assert stop == "ab" and text == "ab ab "


def test_skip_special_tokens_and_params():
    tok = Tokenizer(byte_level_bpe(700))
    ids = tok.encode("hi") + [tok.backend.token_to_id("<|im_end|>")] + tok.encode(" there")
    params = SamplingParams(skip_special_tokens=False, stop=["there"], include_stop_str_in_output=True)
    det = Detokenizer.from_params(tok, params, prompt_token_ids=tok.encode("say"))
    assert det.update(ids) == "there" and det.finished
    assert det.output_text == "hi<|im_end|> there"
    with pytest.raises(ValueError, match="after the sequence finished"):
        det.update([1])
    det = Detokenizer.from_params(tok, SamplingParams())
    det.update(ids)
    assert det.finish() is None and det.output_text == "hi there"
