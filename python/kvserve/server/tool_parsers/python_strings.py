"""Python string literals read as they stream in: where one opens, and its content as far as the
text so far fixes it (an escape or a closing triple quote cut short waits for more), decoded as
Python decodes it, up to whatever Python would refuse."""

from __future__ import annotations

import ast
import re
import warnings

# A literal's opening: an optional u or r prefix (b and f make bytes and formatted strings, which are
# not plain text), then its quote, tripled or not.
_OPENING = re.compile(r"([uUrR]?)('''|\"\"\"|'|\")")
# An escape of a non-raw literal, and one that more text may still lengthen or complete.
_ESCAPE = re.compile(r"\\(?:N\{[^}]*\}|x[0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|[0-7]{1,3}|.)", re.S)
_OPEN_ESCAPE = re.compile(r"\\(?:x[0-9A-Fa-f]?|u[0-9A-Fa-f]{0,3}|U[0-9A-Fa-f]{0,7}|N(?:\{[^}]*)?|[0-7]{1,2})?")


def open_literal(text: str, at: int, final: bool) -> tuple[str, str, int] | None | bool:
    """(prefix, quote, where the body starts) of the literal opening at text[at]; None where none
    does; False while the text so far cannot tell (a prefix, or a quote that may be the first of
    three, at its end)."""
    m = _OPENING.match(text, at)
    if m is None:
        return False if not final and text[at:] in ("u", "U", "r", "R") else None
    quote = m[2]
    if len(quote) == 1 and not final and text[m.end():] in ("", quote):
        return False
    return m[1], quote, m.end()


def scan_body(text: str, at: int, quote: str) -> tuple[int, int]:
    """(where the body from text[at] stops: at its closing quote, at a line break that ends a
    one-quote literal (which Python refuses), or at the text's end (len(text), or one past it after a
    lone backslash); where its last escape starts, -1 for none)."""
    i, escape = at, -1
    while i < len(text) and not text.startswith(quote, i):
        if text[i] == "\n" and len(quote) == 1:
            break
        if text[i] == "\\":
            escape = i
            i += 2
        else:
            i += 1
    return i, escape


def read_body(text: str, at: int, prefix: str, quote: str) -> tuple[str, int, str]:
    """(the content of the body from text[at], decoded, as far as the text fixes it; where reading
    goes on: past the closing quote, or at what was held back; "closed", "open" (more may come) or
    "bad": Python reads no further (a line break in a one-quote literal, a bad escape, text that is
    not UTF-8), the content being what comes before)."""
    i, escape = scan_body(text, at, quote)
    bad = i < len(text) and text[i] == "\n"
    closed = not bad and i < len(text)
    stop = min(i, len(text))
    if not closed and not bad:
        while len(quote) == 3 and stop > at and text[stop - 1] == quote[0]:
            stop -= 1  # quotes that may begin the closing three
        if escape >= 0 and (stop <= escape + 1 or _OPEN_ESCAPE.fullmatch(text, escape, stop)):
            stop = min(stop, escape)  # an escape cut short, or cut by the held quotes
    content, whole = _decode(prefix, text[at:stop])
    state = "bad" if bad or not whole else "closed" if closed else "open"
    return content, stop + len(quote) if closed else stop, state


def _decode(prefix: str, body: str) -> tuple[str, bool]:
    """(the body as Python reads it, up to what it would refuse; whether all of it reads)."""
    if prefix in ("r", "R"):
        return _up_to_surrogate(body)
    out, at = [], 0
    for escape in _ESCAPE.finditer(body):
        plain, whole = _up_to_surrogate(body[at:escape.start()])
        out.append(plain)
        if not whole:
            return "".join(out), False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an unknown escape stays as written, as Python keeps it
            try:
                decoded = ast.literal_eval('"' + escape[0] + '"')
            except (SyntaxError, ValueError):  # a bad escape; ValueError: a backslash before a lone surrogate
                return "".join(out), False
        if _up_to_surrogate(decoded)[1] is False:
            return "".join(out), False
        out.append(decoded)
        at = escape.end()
    plain, whole = _up_to_surrogate(body[at:])
    return "".join(out) + plain, whole


def _up_to_surrogate(text: str) -> tuple[str, bool]:
    """(`text` up to its first lone surrogate, which UTF-8 cannot carry; whether it has none)."""
    for i, c in enumerate(text):
        if "\ud800" <= c <= "\udfff":
            return text[:i], False
    return text, True
