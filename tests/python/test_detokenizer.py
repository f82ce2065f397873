"""Incremental detokenization equals a full decode at every step; stop strings cut the text."""

import os
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


def _text_after(tok, context, ids, skip) -> str:
    """The reference text of `ids` after `context`: decode(context + ids) past its common prefix
    with decode(context). Where the context ends in unfinished UTF-8 (or a byte run, SentencePiece)
    its decode shows U+FFFD (or the run's text) that the output may keep — not repeated — or turn
    into other characters, which are then the output's."""
    full = tok.decode(list(context) + list(ids), skip_special_tokens=skip)
    base = tok.decode(list(context), skip_special_tokens=skip)
    return full[len(os.path.commonprefix([full, base])):]


def _stream_all(tok, ids, skip, context=(), rng=None):
    """Push ids in random chunks. At every step the text so far is a prefix of the final text, and
    of the full decode so far (where that decode still shows the context's text unchanged)."""
    stream = TextStream(tok.backend, tok.decode_tables, skip, context)
    base = tok.decode(list(context), skip_special_tokens=skip)
    final = _text_after(tok, context, ids, skip)
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


def test_a_prompt_ending_in_unfinished_utf8_is_not_shown_again(tokenizer):
    # "ꙮ" is outside both vocabularies: three byte tokens. Every cut of the text, the output
    # continuing it (a character, or a byte run, finished across the cut) or going elsewhere
    # (the prompt's unfinished bytes stay invalid).
    rng = random.Random(3)
    ok = tokenizer.encode(" ok", add_special_tokens=False)
    for text in ("Hi ꙮꙮ ok", "ꙮ", "aꙮ🦀 東京 ꙮb"):
        ids = tokenizer.encode(text, add_special_tokens=False)
        for cut in range(1, len(ids)):
            for output in (ids[cut:], ok, ids[cut:cut + 1] + ok, ids[cut - 1:cut] + ok):
                for skip in (False, True):
                    expected = _text_after(tokenizer, ids[:cut], output, skip)
                    assert _stream_all(tokenizer, output, skip, ids[:cut], rng) == expected, (ids[:cut], output)
    if tokenizer.decode_tables.kind == "generic":
        return
    ids = tokenizer.encode("Hi ꙮꙮ ok", add_special_tokens=False)
    ok = ids[-3:]  # " ok" after a prompt (SentencePiece would encode " ok" alone with two spaces)
    shown = [tokenizer.decode(ids[:cut]) for cut in range(len(ids) + 1)]
    # Byte-level shows the unfinished character as one U+FFFD, SentencePiece a byte run as U+FFFD
    # per byte until it is valid UTF-8.
    for cut in range(len(ids)):
        prompt, rest = ids[:cut], ids[cut:]
        if not shown[cut].endswith("\ufffd"):
            continue
        # Output that leaves the prompt's bytes unfinished: its U+FFFD are the prompt's, not repeated.
        assert _stream_all(tokenizer, ok, True, prompt) == " ok", shown[cut]
        # Output that finishes them: the character is new text (the prompt only showed U+FFFD).
        text = _stream_all(tokenizer, rest, True, prompt)
        assert shown[cut] + text != shown[-1] and text.endswith("ꙮ ok"), (shown[cut], text)
    if tokenizer.decode_tables.kind == "byte_fallback":
        # A run that is valid at the end of the prompt ("ꙮ", shown) and goes on past it.
        cut = shown.index("Hi ꙮ")
        assert _stream_all(tokenizer, ids[cut:], True, ids[:cut]) == "ꙮ ok"


def test_random_ids_after_a_random_prompt_equal_the_reference(tokenizer):
    # Prompts cut anywhere: in a character, in a byte run (SentencePiece), after invalid bytes.
    rng = random.Random(4)
    vocab = tokenizer.vocab_size
    byte_ids = [t for t, piece in enumerate(tokenizer.decode_tables.pieces) if type(piece) is int]

    def random_id():
        return rng.choice(byte_ids) if byte_ids and rng.random() < 0.4 else rng.randrange(vocab)

    for _ in range(300):
        prompt = [random_id() for _ in range(rng.randint(1, 6))]
        output = [random_id() for _ in range(rng.randint(1, 8))]
        for skip in (False, True):
            assert _stream_all(tokenizer, output, skip, prompt, rng) == _text_after(tokenizer, prompt, output, skip)


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
