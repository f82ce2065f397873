"""The request bodies of the OpenAI API (and vLLM's extras), as pydantic models.

Validation is strict (a string is not a number, 1 is not true) and ranges are OpenAI's, so a bad
field fails with a 400 naming it before anything reaches the engine. Unknown fields are accepted
and ignored, as vLLM does, because clients send fields for features they do not use. A null for
an optional field means its default, as in OpenAI's API (clients that write out every field send
nulls).
"""

from __future__ import annotations

import json
import typing
from functools import cache
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from kvserve.beam_search import BeamSearchParams
from kvserve.engine_args import INT32_MAX, INT32_MIN
from kvserve.sampling_params import INT64_MAX, INT64_MIN, RequestOutputKind, SamplingParams, is_int
from kvserve.structured_outputs import StructuredOutputsParams

MAX_N = 128  # choices per request


def _utf8(text: str) -> str:
    # JSON can spell lone surrogates ("\ud800"), which are not text and which no tokenizer takes.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"invalid UTF-8: {e.reason} at character {e.start}") from None
    return text


Text = Annotated[str, AfterValidator(_utf8)]


def _prompt(value):
    """A completion prompt: a string, a list of strings, a list of token ids or a list of token-id lists."""
    if isinstance(value, str):
        return _utf8(value)
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return [_utf8(v) for v in value]
        if all(is_int(v) for v in value):
            return value
        if all(isinstance(v, list) and v and all(is_int(t) for t in v) for v in value):
            return value
    raise ValueError("expected a string, a non-empty list of strings, a list of token ids (integers) or a list "
                     "of non-empty token-id lists")


class _Model(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _null_is_the_default(cls, data):
        if isinstance(data, dict):
            defaulted = _defaulted_on_null(cls)
            data = {key: value for key, value in data.items() if value is not None or key not in defaulted}
        return data


@cache
def _defaulted_on_null(model: type[BaseModel]) -> frozenset[str]:
    """The optional fields of `model` whose type has no None: a null sent for one means its default."""
    return frozenset(name for name, f in model.model_fields.items()
                     if not f.is_required() and type(None) not in typing.get_args(f.annotation))


class StreamOptions(_Model):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM's: with include_usage, every chunk carries its choice's usage so far


class JsonSchemaFormat(_Model):
    name: str | None = None
    description: str | None = None
    schema_: dict = Field(default_factory=dict, alias="schema")  # absent: any JSON value
    strict: bool | None = None


class ResponseFormat(_Model):
    """OpenAI's response_format: plain text, any JSON object, or JSON matching a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("a response_format of type 'json_schema' needs its json_schema")
        return self

    def structured_outputs(self) -> StructuredOutputsParams | None:
        if self.type == "json_object":
            return StructuredOutputsParams(json_object=True)
        if self.type == "json_schema":
            return StructuredOutputsParams(json=self.json_schema.schema_)
        return None


# vLLM's earlier request fields for structured outputs, each one kind of structured_outputs.
GUIDED_FIELDS = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice",
                 "guided_grammar": "grammar"}


# The sampling fields beam search has no use for: set to anything but their default, a 400.
BEAM_SEARCH_IGNORES = ("top_p", "stop", "seed", "presence_penalty", "frequency_penalty", "logit_bias", "top_k",
                       "min_p", "repetition_penalty", "min_tokens", "stop_token_ids", "allowed_token_ids",
                       "bad_words")


class GenerationRequest(_Model):
    """What completions and chat completions share: the model and how to sample."""

    model: str | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: Text | list[Text] | None = None
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # vLLM's extras
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0)
    min_tokens: int = Field(0, ge=0)
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    truncate_prompt_tokens: int | None = Field(None, ge=-1)  # -1: all the context holds; not 0
    # vLLM's, for clients that train on what the model saw and wrote: each choice's token ids (and
    # its prompt's) beside its text; logprobs' tokens as "token_id:N" (None: the server's
    # --return-tokens-as-token-ids).
    return_token_ids: bool = False
    return_tokens_as_token_ids: bool | None = None
    # vLLM's: each prompt token's log-probability and the k likeliest there (-1: the vocabulary),
    # as "prompt_logprobs" (a completion's choices, a chat response); not with stream.
    prompt_logprobs: int | None = Field(None, ge=-1)
    # The prefix cache shares blocks only between requests of equal salts (a secret per user keeps
    # others from timing what is cached).
    cache_salt: str | None = Field(None, min_length=1)
    # Lower runs first, with --scheduling-policy priority (vLLM's); refused otherwise.
    priority: int = Field(0, ge=INT32_MIN, le=INT32_MAX)
    # vLLM's beam search (beam_search_stream.py): n beams, ranked with length_penalty.
    use_beam_search: bool = False
    length_penalty: float = 1.0
    # Structured outputs: OpenAI's response_format, vLLM's structured_outputs (its
    # StructuredOutputsParams' fields), or vLLM's earlier guided_* fields; one of them at most.
    response_format: ResponseFormat | None = None
    structured_outputs: dict | None = None
    guided_json: str | dict | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    guided_whitespace_pattern: str | None = None

    @field_validator("truncate_prompt_tokens")
    @classmethod
    def _keeps_tokens(cls, keep: int | None) -> int | None:
        if keep == 0:
            raise ValueError("truncate_prompt_tokens must be an integer >= 1, or -1 for all the context holds")
        return keep

    @property
    def structured_outputs_field(self) -> str | None:
        """The request field that asks for structured output (ValueError when several do)."""
        fields = [name for name in ("structured_outputs", *GUIDED_FIELDS) if getattr(self, name) is not None]
        if self.response_format is not None and self.response_format.type != "text":
            fields.append("response_format")
        if len(fields) > 1:
            raise ValueError(f"structured output is asked for by {', '.join(fields)}: give one of them")
        if self.guided_whitespace_pattern is not None and not (fields and fields[0] in GUIDED_FIELDS):
            raise ValueError("guided_whitespace_pattern goes with guided_json (structured_outputs and "
                             "response_format take whitespace_pattern in structured_outputs)")
        return fields[0] if fields else None

    def structured_outputs_params(self) -> StructuredOutputsParams | None:
        """What the request's structured-output field asks for (ValueError for a bad value)."""
        field = self.structured_outputs_field
        if field is None:
            return None
        if field == "response_format":
            return self.response_format.structured_outputs()
        if field == "structured_outputs":
            if "structural_tag" in self.structured_outputs:
                raise ValueError("structured_outputs' structural_tag is not supported: kvserve takes json, regex, "
                                 "choice, grammar and json_object")
            known = StructuredOutputsParams.__dataclass_fields__
            unknown = sorted(set(self.structured_outputs) - set(known))
            if unknown:
                raise ValueError(f"structured_outputs has unknown fields {unknown}; it takes {sorted(known)}")
            return StructuredOutputsParams(**self.structured_outputs)
        return StructuredOutputsParams(**{GUIDED_FIELDS[field]: getattr(self, field)},
                                       whitespace_pattern=self.guided_whitespace_pattern)

    def stream_usage(self, forced: bool) -> tuple[bool, bool]:
        """What usage a stream carries, as vLLM decides it: (a last chunk of usage, usage in every
        chunk). forced: the server's --enable-force-include-usage, a last chunk whatever the request says."""
        options = self.stream_options or StreamOptions()
        last = options.include_usage or forced
        return last, last and options.continuous_usage_stats

    def tokens_as_ids(self, server_default: bool) -> bool:
        """Whether logprobs name tokens "token_id:N" (the request's return_tokens_as_token_ids, else the server's)."""
        return server_default if self.return_tokens_as_token_ids is None else self.return_tokens_as_token_ids

    def sampling_params(self, *, max_tokens: int | None, logprobs: int | None, prompt_logprobs: int | None,
                        defaults: dict, structured_outputs: StructuredOutputsParams | None = None) -> SamplingParams:
        """SamplingParams (DELTA outputs); fields the request leaves unset come from `defaults`
        (the model's generation_config), then from SamplingParams' own defaults.
        Raises ValueError for values that only SamplingParams checks (e.g. min_tokens > max_tokens)."""
        picked = {name: getattr(self, name) if getattr(self, name) is not None else defaults.get(name)
                  for name in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")}
        return SamplingParams(
            n=self.n, presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
            seed=self.seed, stop=self.stop, stop_token_ids=self.stop_token_ids, ignore_eos=self.ignore_eos,
            max_tokens=max_tokens, min_tokens=self.min_tokens, logprobs=logprobs, prompt_logprobs=prompt_logprobs,
            logit_bias=self._logit_bias(), skip_special_tokens=self.skip_special_tokens,
            include_stop_str_in_output=self.include_stop_str_in_output, allowed_token_ids=self.allowed_token_ids,
            bad_words=self.bad_words, truncate_prompt_tokens=self.truncate_prompt_tokens,
            structured_outputs=structured_outputs, output_kind=RequestOutputKind.DELTA,
            **{name: value for name, value in picked.items() if value is not None})

    def beam_search_params(self, max_tokens: int) -> BeamSearchParams:
        """use_beam_search's parameters, as vLLM maps them (beam_width = n); ValueError naming the
        sampling fields set that beam search does not follow (vLLM ignores them)."""
        ignored = [name for name in BEAM_SEARCH_IGNORES if getattr(self, name) != type(self).model_fields[name].default]
        if self.structured_outputs_field is not None:
            ignored.append(self.structured_outputs_field)
        if ignored:
            raise ValueError(f"use_beam_search does not follow {', '.join(ignored)}: it takes n (the beams), "
                             "max_tokens, temperature, length_penalty, ignore_eos, include_stop_str_in_output and "
                             "logprobs")
        return BeamSearchParams(beam_width=self.n, max_tokens=max_tokens, ignore_eos=self.ignore_eos,
                                temperature=self.temperature or 0.0, length_penalty=self.length_penalty,
                                include_stop_str_in_output=self.include_stop_str_in_output)

    def _logit_bias(self) -> dict[int, float] | None:
        if self.logit_bias is None:
            return None
        bias = {}
        for key, value in self.logit_bias.items():
            try:
                bias[int(key)] = value
            except ValueError:
                raise ValueError(f"logit_bias is keyed by token ids, got the key {key!r}") from None
        return bias


class CompletionRequest(GenerationRequest):
    prompt: Annotated[object, AfterValidator(_prompt)]
    max_tokens: int | None = Field(16, ge=0)  # OpenAI's default for completions; 0 with echo: the prompt alone
    logprobs: int | None = Field(None, ge=-1)  # -1: the vocabulary; at most --max-logprobs
    echo: bool = False
    suffix: str | None = None
    add_special_tokens: bool = True


class TextPart(_Model):
    type: Literal["text"]
    text: Text


class ChatMessage(_Model):
    role: Annotated[str, Field(min_length=1)]  # OpenAI's roles, or any other the chat template knows
    content: Text | list[TextPart] | None = None
    name: str | None = None

    def template_message(self) -> dict:
        """The message as chat templates see it: "developer" is OpenAI's newer name for "system", and
        no content (an assistant's tool calls) is empty text, as vLLM passes it, and tool calls'
        arguments are objects."""
        message = self.model_dump(exclude_none=True)
        if message["role"] == "developer":
            message["role"] = "system"
        message.setdefault("content", "")
        if "reasoning" in message:  # vLLM's name for an earlier reply's thinking; templates read this one
            message.setdefault("reasoning_content", message["reasoning"])
        for call in message.get("tool_calls") or []:
            # An assistant's earlier calls: templates iterate their arguments (vLLM parses them too).
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                try:
                    function["arguments"] = json.loads(function["arguments"] or "{}")
                except ValueError:
                    pass  # left as the client wrote it
        return message


class FunctionDefinition(_Model):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    parameters: dict = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _empty_is_none(cls, parameters: dict) -> dict:
        # {} as "no parameters" (vLLM's reading), not JSON Schema's "any value".
        return parameters or {"type": "object", "properties": {}}


class Tool(_Model):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(_Model):
    name: str


class NamedToolChoice(_Model):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class ChatTemplateFields(_Model):
    """How a conversation becomes a prompt (shared by chat completions and /tokenize)."""

    messages: list[ChatMessage]
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False  # the template writes the special tokens
    chat_template: str | None = None  # instead of the model's; only where the server trusts them
    chat_template_kwargs: dict | None = None
    tools: list[Tool] | None = None  # the template's `tools`

    def template_tools(self) -> list[dict] | None:
        """The tools as chat templates read them (OpenAI's format, as transformers passes them)."""
        return None if self.tools is None else [tool.model_dump(exclude_none=True) for tool in self.tools]

    @field_validator("messages")
    @classmethod
    def _not_empty(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if messages is not None and not messages:
            raise ValueError("messages must hold at least one message")
        return messages


class ChatCompletionRequest(GenerationRequest, ChatTemplateFields):
    max_completion_tokens: int | None = Field(None, ge=1)  # OpenAI's newer name for max_tokens
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=-1)  # -1: the vocabulary; at most --max-logprobs
    tool_choice: ToolChoice | None = None  # server/tools.py
    parallel_tool_calls: bool = True

    @model_validator(mode="after")
    def _required_of_no_tools(self):
        """"required" with an empty tools list answers as "none", as OpenAI and vLLM do."""
        if self.tool_choice == "required" and self.tools == []:
            self.tool_choice, self.tools = "none", None
        return self

    @property
    def structured_outputs_field(self) -> str | None:
        """As GenerationRequest's, and "tool_choice" where it forces a tool call (server/tools.py)."""
        from kvserve.server.tools import forced

        field = GenerationRequest.structured_outputs_field.fget(self)
        if forced(self.tool_choice):
            if field is not None:
                raise ValueError(f"tool_choice and {field} both say what the reply must be: give one of them")
            return "tool_choice"
        return field

    def structured_outputs_params(self) -> StructuredOutputsParams | None:
        from kvserve.server.tools import tool_call_grammar

        if self.structured_outputs_field == "tool_choice":
            return tool_call_grammar(self.tools, self.tool_choice, self.parallel_tool_calls)
        return super().structured_outputs_params()


class TokenizeRequest(ChatTemplateFields):
    """vLLM's /tokenize: a prompt, or messages rendered with the chat template."""

    model: str | None = None
    prompt: Text | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool | None = None  # None: True for a prompt, False for messages


class EmbeddingRequest(ChatTemplateFields):
    """OpenAI's POST /v1/embeddings (server/embeddings.py), with vLLM's extras: truncate_prompt_tokens,
    normalize, priority, and a conversation (`messages`, rendered with the chat template, as vLLM's
    chat embedding requests) instead of `input`."""

    model: str | None = None
    input: Annotated[object, AfterValidator(_prompt)] = None  # as a completion's prompt
    messages: list[ChatMessage] | None = None
    add_generation_prompt: bool = False
    add_special_tokens: bool | None = None  # None: True for input, False for messages
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None
    truncate_prompt_tokens: int | None = Field(None, ge=-1)
    normalize: bool | None = None
    priority: int = Field(0, ge=INT32_MIN, le=INT32_MAX)


class PoolingRequest(EmbeddingRequest):
    """vLLM's POST /pooling (server/pooling.py): an embedding request's fields, for a pooling task
    (None: every token's, token_embed or token_classify as the model is an embedder or a classifier);
    use_activation as a classification request's."""

    task: Literal["embed", "classify", "token_embed", "token_classify"] | None = None
    use_activation: bool | None = None


class ClassificationRequest(_Model):
    """vLLM's POST /classify (server/classify.py): each input's class probabilities."""

    model: str | None = None
    input: Annotated[object, AfterValidator(_prompt)]  # as a completion's prompt
    user: str | None = None
    truncate_prompt_tokens: int | None = Field(None, ge=-1)
    priority: int = Field(0, ge=INT32_MIN, le=INT32_MAX)
    use_activation: bool | None = None  # False: the classes' logits, not their probabilities


class LoadLoRARequest(_Model):
    """vLLM's POST /v1/load_lora_adapter."""

    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)


class UnloadLoRARequest(_Model):
    """vLLM's POST /v1/unload_lora_adapter."""

    lora_name: str = Field(min_length=1)


class DetokenizeRequest(_Model):
    model: str | None = None
    tokens: list[int]


def _texts(value):
    """One text or a non-empty list of them."""
    if isinstance(value, str):
        return [_utf8(value)]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return [_utf8(v) for v in value]
    raise ValueError("expected a string or a non-empty list of strings")


class ScoreRequest(_Model):
    """vLLM's POST /score: each text_1 (one for all, or one for each) against each text_2."""

    model: str | None = None
    text_1: Annotated[object, AfterValidator(_texts)]
    text_2: Annotated[object, AfterValidator(_texts)]
    truncate_prompt_tokens: int | None = Field(None, ge=-1)
    priority: int = Field(0, ge=INT32_MIN, le=INT32_MAX)
    use_activation: bool | None = None  # a cross-encoder's: False scores by its logit


class RerankRequest(_Model):
    """POST /rerank (Jina's and Cohere's API, as vLLM serves it): the documents by relevance to the query."""

    model: str | None = None
    query: Text
    documents: Annotated[list[Text], Field(min_length=1)]
    top_n: int = Field(0, ge=0)  # 0: every document
    truncate_prompt_tokens: int | None = Field(None, ge=-1)
    priority: int = Field(0, ge=INT32_MIN, le=INT32_MAX)
    use_activation: bool | None = None  # a cross-encoder's: False scores by its logit


class ResponsesRequest(_Model):
    """OpenAI's POST /v1/responses, as far as kvserve answers it (server/responses_api.py); vLLM's
    sampling extras (top_k, seed, ...) ride along as they do on chat completions."""

    model: str | None = None
    input: Text | list[dict]
    instructions: Text | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool = False
    text: dict | None = None  # {"format": {"type": "text" | "json_object" | "json_schema", ...}}
    tools: list[dict] | None = None  # function tools: {"type": "function", "name", "parameters", ...}
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool = True
    store: bool = True  # accepted; kvserve keeps no responses
    previous_response_id: str | None = None
    background: bool = False
    metadata: dict | None = None
    reasoning: dict | None = None  # accepted; a reasoning model thinks as its template says
    user: str | None = None
    # "message.output_text.logprobs" puts each answer token's log-probability, with its top_logprobs
    # likeliest, in the message's output_text; the other includables name outputs kvserve never makes.
    include: list[str] | None = None
    top_logprobs: int | None = Field(None, ge=0)
