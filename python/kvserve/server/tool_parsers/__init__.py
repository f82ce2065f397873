"""Tool calls a model writes in its own syntax, read for tool_choice "auto" (`kvserve serve
--enable-auto-tool-choice --tool-call-parser NAME`, vLLM's flags and parser names):

    hermes                          Hermes, Qwen2.5, Qwen3: <tool_call>{...}</tool_call> blocks
    llama3_json, llama4_json        Llama 3.1-3.3, Llama 4: {"name": ..., "parameters": {...}}
    pythonic, llama4_pythonic       Llama 3.2, Llama 4: [get_weather(city="Paris")]
    mistral                         Mistral: [TOOL_CALLS] and its calls

Each module says how its syntax reads. A parser is a CallStream (call_stream.py): a reply fed piece
by piece returns the deltas to send, content as it comes and each call's arguments as the model
writes them (where its syntax names the call first: streamed_call.py), and a whole reply is that
stream over all of it, so the two always agree.
"""

from __future__ import annotations

from kvserve.server.tool_parsers.call_stream import CallStream, parse
from kvserve.server.tool_parsers.hermes import HermesStream
from kvserve.server.tool_parsers.llama3_json import Llama3JsonStream
from kvserve.server.tool_parsers.mistral import MistralStream
from kvserve.server.tool_parsers.pythonic import PythonicStream

_STREAMS: dict[str, type[CallStream]] = {
    "hermes": HermesStream,
    "llama3_json": Llama3JsonStream,
    "llama4_json": Llama3JsonStream,
    "pythonic": PythonicStream,
    "llama4_pythonic": PythonicStream,
    "mistral": MistralStream,
}
TOOL_PARSERS = tuple(_STREAMS)


def call_stream(parser: str) -> CallStream:
    """A fresh stream for one choice's reply, in the syntax `parser` names."""
    return _STREAMS[parser]()


def parse_calls(parser: str, text: str) -> tuple[str | None, list[dict] | None]:
    """(content, tool calls) of a whole reply; (text, None) where it holds no call."""
    return parse(call_stream(parser), text)
