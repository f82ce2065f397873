"""Tool calling in chat completions. What a reply becomes depends on the request's tool_choice:

    a named function   the reply is held by a grammar (structured outputs) to the function's
                       arguments, a JSON object of its parameters schema, and is that one call
    "required"         held to a JSON array of {"name": <a tool's name>, "parameters": {...}} (one
                       element when parallel_tool_calls is false): those calls
    "auto"             the model writes calls in its own syntax, read by the server's tool-call
                       parser (tool_parsers/; `--enable-auto-tool-choice --tool-call-parser`), or
                       answers in text; without the flags, a 400 (the default with tools), as vLLM
    "none"             text (the tools still reach the chat template, which describes them)

The first two are what vLLM answers for them. Streaming, every call's arguments go out as the model
writes them (tool_parsers/), so a forced reply cut short (max_tokens, a stop string) is a call whose
arguments stop where it stopped, as vLLM's, but for a "required" one cut before its first call opened,
which is text.
"""

from __future__ import annotations

from kvserve.server.protocol import NamedToolChoice, Tool, ToolChoice
from kvserve.server.tool_parsers import call_stream, parse_calls
from kvserve.server.tool_parsers.call_stream import CallStream, parse
from kvserve.server.tool_parsers.forced import CallArrayStream, NamedCallStream
from kvserve.structured_outputs import StructuredOutputsParams


def check_tool_choice(tools: list[Tool] | None, tool_choice: ToolChoice | None, auto_parser: str | None) -> None:
    """ValueError (the field is tool_choice) for a choice this server cannot answer or that names no tool."""
    if tool_choice is None or tool_choice == "none":
        if tools and tool_choice is None and auto_parser is None:
            raise ValueError("tools without a tool_choice mean 'auto', which needs the server started with "
                             "--enable-auto-tool-choice --tool-call-parser: set tool_choice to 'required', a "
                             "named function ({'type': 'function', 'function': {'name': ...}}) or 'none'")
        return
    if not tools:
        raise ValueError("tool_choice needs tools")
    if tool_choice == "auto" and auto_parser is None:
        raise ValueError("tool_choice 'auto' needs the server started with --enable-auto-tool-choice "
                         "--tool-call-parser: use 'required', a named function or 'none'")
    if isinstance(tool_choice, NamedToolChoice):
        names = [tool.function.name for tool in tools]
        if tool_choice.function.name not in names:
            raise ValueError(f"tool_choice names the function {tool_choice.function.name!r}, which is not among "
                             f"the tools {names}")


def forced(tool_choice: ToolChoice | None) -> bool:
    """Whether the reply is a tool call (a named function, or "required")."""
    return isinstance(tool_choice, NamedToolChoice) or tool_choice == "required"


def parses_calls(tools: list[Tool] | None, tool_choice: ToolChoice | None, auto_parser: str | None) -> bool:
    """Whether the reply is read for calls in the model's own syntax ("auto", the default with tools)."""
    return bool(tools) and auto_parser is not None and tool_choice in (None, "auto")


def tool_call_grammar(tools: list[Tool], tool_choice: ToolChoice, parallel_tool_calls: bool) -> StructuredOutputsParams:
    """The structured output that a forced tool choice holds the reply to: compact JSON (arguments are
    read by programs, and whitespace is where a weak model can loop until max_tokens), and objects
    with the properties their schema lists, unless it allows others (SmolLM2 asked for a city's
    weather added a "country" the function does not take)."""
    if isinstance(tool_choice, NamedToolChoice):
        [tool] = [t for t in tools if t.function.name == tool_choice.function.name][:1]
        return StructuredOutputsParams(json=tool.function.parameters, disable_any_whitespace=True,
                                       disable_additional_properties=True)
    # Each tool's parameters schema sits in the array's $defs, its own references ("#/$defs/...",
    # "#") pointed there: nested under the array they would point at the array's root.
    definitions = {f"tool_{i}": _rebased(tool.function.parameters, f"#/$defs/tool_{i}") for i, tool in enumerate(tools)}
    calls = {"anyOf": [{"type": "object", "properties": {"name": {"const": tool.function.name},
                                                         "parameters": {"$ref": f"#/$defs/tool_{i}"}},
                        "required": ["name", "parameters"], "additionalProperties": False}
                       for i, tool in enumerate(tools)]}
    array = {"type": "array", "minItems": 1, "items": calls, "$defs": definitions}
    if not parallel_tool_calls:
        array["maxItems"] = 1
    return StructuredOutputsParams(json=array, disable_any_whitespace=True, disable_additional_properties=True)


def _rebased(schema, base: str):
    """`schema` with its local references ("#..." ) made relative to `base` instead of its root."""
    if isinstance(schema, list):
        return [_rebased(item, base) for item in schema]
    if not isinstance(schema, dict):
        return schema
    return {key: base + value[1:] if key == "$ref" and isinstance(value, str) and value.startswith("#")
            else value if key in ("const", "enum", "default", "examples") else _rebased(value, base)
            for key, value in schema.items()}


class Reply:
    """How one choice's text becomes its message: whole (`message`) or delta by delta (`feed`, then
    `finish`, each returning the deltas to send). Plain text here; the tool modes below."""

    holds_text = False  # whether a delta may send nothing

    def message(self, text: str, finish_reason: str | None) -> tuple[dict, str | None]:
        return {"content": text}, finish_reason

    def feed(self, piece: str) -> list[dict]:
        return [{"content": piece}] if piece else []

    def finish(self, finish_reason: str | None) -> tuple[list[dict], str | None]:
        return [], finish_reason


class ForcedCallReply(Reply):
    """tool_choice a named function or "required": the reply is the calls' JSON (tool_parsers/forced.py)."""

    holds_text = True

    def __init__(self, tool_choice: ToolChoice):
        self._tool_choice = tool_choice
        self._stream = self._new_stream()

    def _new_stream(self) -> CallStream:
        if isinstance(self._tool_choice, NamedToolChoice):
            return NamedCallStream(self._tool_choice.function.name)
        return CallArrayStream()

    def _reason(self, called: bool, finish_reason: str | None) -> str | None:
        # OpenAI's reasons: "tool_calls" when the model chose to call ("required"), "stop" when told which.
        return "tool_calls" if called and self._tool_choice == "required" and finish_reason == "stop" else finish_reason

    def message(self, text: str, finish_reason: str | None) -> tuple[dict, str | None]:
        content, calls = parse(self._new_stream(), text)
        if calls is None:
            return {"content": text}, finish_reason
        return {"content": content, "tool_calls": calls}, self._reason(True, finish_reason)

    def feed(self, piece: str) -> list[dict]:
        return self._stream.feed(piece)

    def finish(self, finish_reason: str | None) -> tuple[list[dict], str | None]:
        return self._stream.finish(), self._reason(self._stream.called, finish_reason)


class ParsedCallReply(Reply):
    """tool_choice "auto": calls in the model's own syntax, read by the server's parser (tool_parsers/)."""

    holds_text = True

    def __init__(self, parser: str):
        self._parser = parser
        self._stream = call_stream(parser)

    def message(self, text: str, finish_reason: str | None) -> tuple[dict, str | None]:
        content, calls = parse_calls(self._parser, text)
        if calls is None:
            return {"content": text}, finish_reason
        return {"content": content, "tool_calls": calls}, "tool_calls"  # vLLM's reason, however it ended

    def feed(self, piece: str) -> list[dict]:
        return self._stream.feed(piece)

    def finish(self, finish_reason: str | None) -> tuple[list[dict], str | None]:
        deltas = self._stream.finish()
        return deltas, "tool_calls" if self._stream.called else finish_reason


def reply_for(tools: list[Tool] | None, tool_choice: ToolChoice | None, auto_parser: str | None) -> Reply:
    """A fresh Reply for one choice of a request."""
    if forced(tool_choice):
        return ForcedCallReply(tool_choice)
    if parses_calls(tools, tool_choice, auto_parser):
        return ParsedCallReply(auto_parser)
    return Reply()
