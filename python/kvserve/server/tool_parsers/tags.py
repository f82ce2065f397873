"""Tags in text that streams in piece by piece."""


def partial_tag(text: str, tag: str) -> int:
    """How many characters at the end of `text` could begin `tag` (held back while streaming)."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


def opening(text: str, tag: str, final: bool) -> int | None:
    """Where a reply's first word starts, past leading whitespace and `tag` (which a model may open
    its calls with); None while the text so far cannot tell (nothing but whitespace, or the start of
    the tag) and more may come."""
    rest = text.lstrip()
    if rest.startswith(tag):
        rest = rest[len(tag):].lstrip()
    elif rest and tag.startswith(rest) and not final:
        return None
    if not rest and not final:
        return None
    return len(text) - len(rest)
