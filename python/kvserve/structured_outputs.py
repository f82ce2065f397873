"""StructuredOutputsParams: what a request's output must match (vLLM's structured outputs).

Exactly one of: a JSON schema (`json`), any JSON object (`json_object=True`), a regular expression
(`regex`), one of a list of strings (`choice`), or a context-free grammar (`grammar`, in Lark or
llama.cpp's GBNF syntax). The engine holds the output to it by masking, at every step, each token
the grammar cannot take next (kvserve.grammar); once the grammar is complete only the end-of-sequence
token is left. An output cut short (max_tokens, a stop string) is a prefix of a match, as in vLLM.

The grammar engine is llguidance (vLLM's "guidance" backend), imported when a request first asks
for structured output.
"""

from __future__ import annotations

import json as json_module
from dataclasses import dataclass

KINDS = ("json", "regex", "choice", "grammar", "json_object")


# The JSON Schema keywords whose values are schemas: one, a list of them, or a name -> schema map.
_SUBSCHEMA = ("items", "not", "additionalProperties", "contains", "if", "then", "else", "propertyNames",
              "unevaluatedProperties", "unevaluatedItems")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def _closed_objects(schema):
    """The schema with `additionalProperties: false` on every object schema that lists its properties
    and says nothing of others (vLLM's disable_additional_properties), through every subschema.
    Only schemas are touched: values (`const`, `enum`, `default`) stay as they are."""
    if not isinstance(schema, dict):
        return schema
    closed = dict(schema)
    for key in _SUBSCHEMA:
        if isinstance(closed.get(key), dict):
            closed[key] = _closed_objects(closed[key])
    for key in _SUBSCHEMA_LISTS:
        if isinstance(closed.get(key), list):
            closed[key] = [_closed_objects(item) for item in closed[key]]
    for key in _SUBSCHEMA_MAPS:
        if isinstance(closed.get(key), dict):
            closed[key] = {name: _closed_objects(item) for name, item in closed[key].items()}
    listed = isinstance(closed.get("properties"), dict) or isinstance(closed.get("patternProperties"), dict)
    if listed and "additionalProperties" not in closed:
        closed["additionalProperties"] = False
    return closed


@dataclass
class StructuredOutputsParams:
    """vLLM's `StructuredOutputsParams`.

    json: a JSON schema, as a dict or its JSON text.
    regex: a regular expression the whole output matches (Rust `regex` syntax, as vLLM's backends).
    choice: a non-empty list of strings; the output is one of them.
    grammar: a Lark or GBNF grammar.
    json_object: True for any JSON object.
    disable_any_whitespace: JSON without whitespace between tokens (default: any whitespace, which a
        small model may repeat without end).
    disable_additional_properties: objects of the schema take only the properties it lists, unless
        the schema says otherwise.
    whitespace_pattern: a regex for the whitespace JSON may hold between tokens.
    disable_fallback: accepted for vLLM's scripts; kvserve has one grammar engine and no fallback.
    """

    json: str | dict | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None
    disable_fallback: bool = False

    def __post_init__(self) -> None:
        given = [kind for kind in KINDS if getattr(self, kind) not in (None, False)]
        if len(given) != 1:
            raise ValueError(f"structured outputs take exactly one of {', '.join(KINDS)}; got "
                             f"{', '.join(given) if given else 'none'}")
        if self.json is not None:
            if isinstance(self.json, str):
                try:
                    self.json = json_module.loads(self.json)
                except ValueError as e:
                    raise ValueError(f"structured outputs' json must be a JSON schema; its text does not parse: {e}") \
                        from None
            if not isinstance(self.json, dict):
                raise ValueError(f"structured outputs' json must be a JSON schema (an object), got {self.json!r}")
        for name in ("regex", "grammar", "whitespace_pattern"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"structured outputs' {name} must be a non-empty string, got {value!r}")
        if self.choice is not None and (not isinstance(self.choice, (list, tuple)) or not self.choice
                                        or not all(isinstance(c, str) and c for c in self.choice)):
            raise ValueError(f"structured outputs' choice must be a non-empty list of non-empty strings, "
                             f"got {self.choice!r}")
        for name in ("json_object", "disable_any_whitespace", "disable_additional_properties", "disable_fallback"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"structured outputs' {name} must be True or False, got {value!r}")

    @property
    def kind(self) -> str:
        return next(kind for kind in KINDS if getattr(self, kind) not in (None, False))

    def grammar_spec(self) -> str:
        """The grammar as llguidance takes it (not yet checked: GrammarCompiler does that)."""
        from llguidance import LLMatcher, grammar_from

        if self.regex is not None:
            return LLMatcher.grammar_from_regex(self.regex)
        if self.choice is not None:
            return grammar_from("choice", list(self.choice))
        if self.grammar is not None:
            return grammar_from("grammar", self.grammar)
        schema = {"type": "object"} if self.json_object else self.json
        if self.disable_additional_properties:
            schema = _closed_objects(schema)
        options = {"whitespace_flexible": not self.disable_any_whitespace}
        if self.whitespace_pattern is not None:
            options["whitespace_pattern"] = self.whitespace_pattern
        return LLMatcher.grammar_from_json_schema(schema, defaults=options)
