"""Tool calling in chat completions, where the request forces it: `tool_choice` naming a function,
or "required". The reply is then held by a grammar (structured outputs) to the JSON that the call
takes, so it always parses into OpenAI's `tool_calls`, as vLLM answers these two choices:

    named function   the reply is the function's arguments (a JSON object of its parameters schema)
    "required"       the reply is a JSON array of {"name": <a tool's name>, "parameters": {...}}
                     (one element when parallel_tool_calls is false)

"none" answers in text (the tools still reach the chat template, which describes them to the
model). "auto", which needs a parser of each model family's own tool-call syntax (vLLM's
--tool-call-parser), is refused with a 400 that says which choices kvserve takes.
"""

from __future__ import annotations

import json
import uuid

from kvserve.server.protocol import NamedToolChoice, Tool, ToolChoice
from kvserve.structured_outputs import StructuredOutputsParams


def check_tool_choice(tools: list[Tool] | None, tool_choice: ToolChoice | None) -> None:
    """ValueError (the field is tool_choice) for a choice kvserve cannot answer or that names no tool."""
    if tool_choice is None or tool_choice == "none":
        if tools and tool_choice is None:
            raise ValueError("tools without a tool_choice mean 'auto', which kvserve does not answer (it would "
                             "need each model family's tool-call parser): set tool_choice to 'required', a named "
                             "function ({'type': 'function', 'function': {'name': ...}}) or 'none'")
        return
    if not tools:
        raise ValueError("tool_choice needs tools")
    if tool_choice == "auto":
        raise ValueError("tool_choice 'auto' is not supported (it would need each model family's tool-call "
                         "parser): use 'required', a named function or 'none'")
    if isinstance(tool_choice, NamedToolChoice):
        names = [tool.function.name for tool in tools]
        if tool_choice.function.name not in names:
            raise ValueError(f"tool_choice names the function {tool_choice.function.name!r}, which is not among "
                             f"the tools {names}")


def forced(tool_choice: ToolChoice | None) -> bool:
    """Whether the reply is a tool call (a named function, or "required")."""
    return isinstance(tool_choice, NamedToolChoice) or tool_choice == "required"


def tool_call_grammar(tools: list[Tool], tool_choice: ToolChoice, parallel_tool_calls: bool) -> StructuredOutputsParams:
    """The structured output that a forced tool choice holds the reply to: compact JSON (arguments are
    read by programs, and whitespace is where a weak model can loop until max_tokens)."""
    if isinstance(tool_choice, NamedToolChoice):
        [tool] = [t for t in tools if t.function.name == tool_choice.function.name][:1]
        return StructuredOutputsParams(json=tool.function.parameters, disable_any_whitespace=True)
    calls = {"anyOf": [{"type": "object", "properties": {"name": {"const": tool.function.name},
                                                         "parameters": tool.function.parameters},
                        "required": ["name", "parameters"], "additionalProperties": False} for tool in tools]}
    array = {"type": "array", "minItems": 1, "items": calls}
    if not parallel_tool_calls:
        array["maxItems"] = 1
    return StructuredOutputsParams(json=array, disable_any_whitespace=True)


def template_tools(tools: list[Tool] | None) -> list[dict] | None:
    """The tools as chat templates read them (OpenAI's format, as transformers passes them)."""
    return None if tools is None else [tool.model_dump(exclude_none=True) for tool in tools]


def _call(name: str, arguments: str) -> dict:
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": name, "arguments": arguments}}


def tool_calls(text: str, tool_choice: ToolChoice) -> list[dict] | None:
    """The reply's tool calls, or None where it does not parse (cut short by max_tokens or a stop
    string: the reply then stays text)."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(tool_choice, NamedToolChoice):
        return [_call(tool_choice.function.name, json.dumps(value, ensure_ascii=False))]
    return [_call(call["name"], json.dumps(call["parameters"], ensure_ascii=False)) for call in value]
