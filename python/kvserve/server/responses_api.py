"""POST /v1/responses: OpenAI's Responses API, answered through the chat path. The request becomes a
chat completion request (input items as messages, instructions as the system message, text.format as
response_format, flat function tools as chat tools), and the reply's parts become output items:

    reasoning        {"type": "reasoning", "content": [{"type": "reasoning_text", "text"}]}  (--reasoning-parser)
    message          {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text"}]}
    function_call    {"type": "function_call", "call_id", "name", "arguments"}                  (tools)

Streamed, as OpenAI streams them: response.created and response.in_progress, then per item
response.output_item.added, its content part's added / delta / done events (a call's arguments as
the model writes them), response.output_item.done, and last response.completed (or
response.incomplete where max_output_tokens cut the reply). With include
["message.output_text.logprobs"] the message's output_text holds the log-probability of each token
of the answer (the reply after its thinking), with the top_logprobs likeliest; streamed, each text
delta carries those of the tokens made since the one before. Responses are kept (store, the default) in memory, the most recent
ones (responses_store.py), for previous_response_id and GET / DELETE /v1/responses/{id}; background
is a 400; items other than messages, function calls and their outputs (images, files, built-in
tools) are 400s naming the item.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from kvserve.logprobs import SampleLogprobs
from kvserve.server.chat import chat_reply, start_chat, token_logprobs
from kvserve.server.errors import OpenAIError, as_openai_error, bad_request
from kvserve.server.generation import Generation
from kvserve.server.protocol import ChatCompletionRequest, ResponsesRequest
from kvserve.server.responses import unless_disconnected
from kvserve.server.responses_store import ResponsesStore, StoredResponse
from kvserve.server.served_model import ServedModel

router = APIRouter()

_TEXT_PARTS = ("input_text", "output_text", "text")
OUTPUT_LOGPROBS = "message.output_text.logprobs"  # the includable kvserve answers


def _text(content, where: str) -> str | list[dict]:
    """A message's content as chat takes it: text, or text parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"{where} must be text or a list of content parts", "input")
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in _TEXT_PARTS or not isinstance(part.get("text"), str):
            raise bad_request(f"{where}[{j}] is of type {kind!r}: kvserve serves text models, and takes "
                              f"{', '.join(_TEXT_PARTS)} parts", "input")
        parts.append({"type": "text", "text": part["text"]})
    return parts


def input_items(body: ResponsesRequest) -> list[dict]:
    return [{"role": "user", "content": body.input}] if isinstance(body.input, str) else body.input


def _messages(body: ResponsesRequest, items: list[dict]) -> list[dict]:
    """The conversation `items` hold, as chat messages, the request's instructions first."""
    messages = [{"role": "system", "content": body.instructions}] if body.instructions is not None else []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        kind = item.get("type", "message")
        if kind == "message":
            messages.append({"role": item.get("role"), "content": _text(item.get("content"), f"{where}.content")})
        elif kind == "function_call":
            for key in ("call_id", "name", "arguments"):
                if not isinstance(item.get(key), str):
                    raise bad_request(f"{where} (a function_call) needs its {key}, a string", "input")
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments")}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls") and not last["content"]:
                last["tool_calls"].append(call)  # parallel calls: one assistant turn
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str) or "output" not in item:
                raise bad_request(f"{where} (a function_call_output) needs its call_id and output", "input")
            messages.append({"role": "tool", "tool_call_id": item["call_id"],
                             "content": _text(item["output"], f"{where}.output")})
        elif kind != "reasoning":  # an earlier reply's thinking: templates drop it
            raise bad_request(f"{where} is of type {kind!r}: kvserve takes messages, function_call and "
                              "function_call_output items", "input")
    return messages


# Chat completion fields a Responses request does not have (one reply a response; its own names for
# the rest): refused rather than passed on with vLLM's extras.
_CHAT_ONLY = ("n", "logprobs", "echo", "stream_options", "messages", "max_tokens",
              "max_completion_tokens", "response_format", "functions", "function_call")


def _chat_fields(body: ResponsesRequest, items: list[dict]) -> dict:
    for name in _CHAT_ONLY:
        if name in (body.model_extra or {}):
            raise bad_request(f"{name} is a chat completions field, which the Responses API does not take", name)
    fields = {**(body.model_extra or {}), "model": body.model, "messages": _messages(body, items), "stream": body.stream,
              "parallel_tool_calls": body.parallel_tool_calls}
    if OUTPUT_LOGPROBS in (body.include or []):
        fields.update(logprobs=True, top_logprobs=body.top_logprobs or 0)
    for name, value in (("temperature", body.temperature), ("top_p", body.top_p), ("user", body.user),
                        ("max_completion_tokens", body.max_output_tokens)):
        if value is not None:
            fields[name] = value
    text_format = (body.text or {}).get("format")
    if isinstance(text_format, dict) and text_format.get("type") == "json_schema":
        if not isinstance(text_format.get("schema"), dict):
            raise bad_request("text.format of type json_schema needs its schema (a JSON schema object)", "text")
        fields["response_format"] = {"type": "json_schema", "json_schema": {
            key: text_format[key] for key in ("name", "description", "schema", "strict") if key in text_format}}
    elif text_format is not None:
        fields["response_format"] = text_format
    if body.tools is not None:
        tools = []
        for i, tool in enumerate(body.tools):
            if tool.get("type") != "function":
                raise bad_request(f"tools[{i}] is of type {tool.get('type')!r}: kvserve runs function tools only",
                                  "tools")
            tools.append({"type": "function", "function": {key: value for key, value in tool.items() if key != "type"}})
        fields["tools"] = tools
    choice = body.tool_choice
    if isinstance(choice, dict) and choice.get("type") == "function" and "function" not in choice:
        choice = {"type": "function", "function": {"name": choice.get("name")}}
    if choice is not None:
        fields["tool_choice"] = choice
    return fields


# The chat fields' names in errors, as a Responses request spells them.
_FIELDS = {"max_completion_tokens": "max_output_tokens", "messages": "input", "response_format": "text",
           "conversation": "input"}


def _in_responses_terms(error: OpenAIError) -> OpenAIError:
    message = error.message
    for chat_name, name in _FIELDS.items():
        message = message.replace(chat_name, name)
    return OpenAIError(error.status_code, message, param=_FIELDS.get(error.param, error.param), code=error.code)


def chat_request(body: ResponsesRequest, items: list[dict]) -> ChatCompletionRequest:
    """The chat completion request that answers `body`, whose conversation is `items`; 400 for what
    kvserve does not take."""
    if body.background:
        raise bad_request("kvserve runs no response in the background", "background")
    try:
        return ChatCompletionRequest.model_validate(_chat_fields(body, items))
    except ValidationError as e:
        error = e.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else None
        raise _in_responses_terms(bad_request(f"{'.'.join(map(str, error['loc']))}: {error['msg']}", field)) from None


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _message_item(item_id: str, text: str, status: str) -> dict:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def _reasoning_item(item_id: str, text: str, status: str) -> dict:
    return {"type": "reasoning", "id": item_id, "status": status, "summary": [],
            "content": [{"type": "reasoning_text", "text": text}]}


def _call_item(call: dict, status: str = "completed") -> dict:
    return {"type": "function_call", "id": _id("fc"), "call_id": call["id"], "name": call["function"]["name"],
            "arguments": call["function"]["arguments"], "status": status}


def _usage(generation: Generation, reasoning_tokens: int) -> dict:
    usage = generation.usage()
    cached = usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)
    return {"input_tokens": usage["prompt_tokens"],
            "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": usage["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": reasoning_tokens}, "total_tokens": usage["total_tokens"]}


def _reasoning_tokens(token_ids: list[int], thought: bool, think_end: int | None) -> int:
    """The reply's tokens up to and with its </think> token (all of them without one) where it thought."""
    if not thought:
        return 0
    return token_ids.index(think_end) + 1 if think_end in token_ids else len(token_ids)


class _Answer:
    """The response object around the output items."""

    def __init__(self, body: ResponsesRequest, generation: Generation, think_end: int | None,
                 items: list[dict], store: ResponsesStore, tokens_as_ids: bool):
        self.body = body
        self.items = items  # the conversation it answers, as input items
        self.store = store
        self.stored = body.store and store.max_size > 0
        self.think_end = think_end  # the model's </think> token, which ends the reasoning tokens
        self.id = _id("resp")
        self.created = int(time.time())
        self.model = generation.model_name
        self.generation = generation
        self.logprobs = OUTPUT_LOGPROBS in (body.include or [])
        self.tokens_as_ids = tokens_as_ids  # logprobs' tokens as "token_id:N"

    def answer_logprobs(self, token_ids: list[int], entries: SampleLogprobs, thought: bool, start: int = 0) -> list[dict]:
        """The output_text entries of the answer's tokens among token_ids[start:] (the reply's
        tokens so far, and their entries)."""
        start = max(start, _reasoning_tokens(token_ids, thought, self.think_end))
        return token_logprobs(token_ids[start:], entries[start:], self.body.top_logprobs or 0, self.tokens_as_ids)

    def status(self, finish_reason: str | None) -> str:
        return "incomplete" if finish_reason == "length" else "completed"

    def object(self, status: str, output: list[dict], usage: dict | None) -> dict:
        body = self.body
        return {"id": self.id, "object": "response", "created_at": self.created, "status": status,
                "model": self.model, "output": output, "usage": usage, "error": None,
                "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
                "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
                "temperature": body.temperature, "top_p": body.top_p, "tools": body.tools or [],
                "tool_choice": body.tool_choice or ("auto" if body.tools else "none"),
                "parallel_tool_calls": body.parallel_tool_calls, "text": body.text or {"format": {"type": "text"}},
                "metadata": body.metadata or {}, "previous_response_id": body.previous_response_id,
                "top_logprobs": body.top_logprobs,
                "reasoning": body.reasoning, "store": self.stored, "truncation": "disabled", "user": body.user}

    def done(self, status: str, output: list[dict], usage: dict) -> dict:
        """The finished response object, stored with its conversation where it is kept."""
        response = self.object(status, output, usage)
        if self.stored:
            self.store.put(self.id, StoredResponse(self.items + output, response))
        return response


# A reply's text by key, in output order: its output item's id prefix and maker, and its stream
# events' prefix (an output_text's events carry its logprobs too).
_TEXT_ITEMS = {"reasoning": ("rs", _reasoning_item, "response.reasoning_text"),
               "content": ("msg", _message_item, "response.output_text")}


def _output(message: dict, status: str, logprobs: list[dict]) -> list[dict]:
    """The output items of a whole reply; `logprobs`: its answer's, for the message's output_text."""
    output = [make_item(_id(id_prefix), message[key], status)
              for key, (id_prefix, make_item, _) in _TEXT_ITEMS.items() if message.get(key)]
    for item in output:
        if item["type"] == "message":
            item["content"][0]["logprobs"] = logprobs
    output += [_call_item(call) for call in message.get("tool_calls") or []]
    return output


class _EventWriter:
    """A streamed reply's events: its deltas ({"content"}, {"reasoning"}, {"tool_calls": a call's
    opening or more of its arguments}) open, fill and close output items."""

    def __init__(self):
        self.sequence = 0
        self.output: list[dict] = []
        self._open: tuple[str, dict] | None = None  # (the delta key that fills it, the item)

    def event(self, kind: str, **fields) -> str:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"

    @property
    def thought(self) -> bool:
        return any(item["type"] == "reasoning" for item in self.output)

    def add_logprobs(self, logprobs: list[dict]) -> None:
        """More of the message's logprobs, without an event (the message's output_text shows them)."""
        messages = [item for item in self.output if item["type"] == "message"]
        if messages:
            messages[-1]["content"][0]["logprobs"] += logprobs

    def _where(self, item: dict) -> dict:
        return {"item_id": item["id"], "output_index": len(self.output) - 1, "content_index": 0}

    def delta(self, delta: dict, logprobs: list[dict] | None = None) -> list[str]:
        """The events of one delta; `logprobs`: the entries of its content's tokens, where asked for."""
        events = []
        for key, (id_prefix, make_item, events_prefix) in _TEXT_ITEMS.items():
            if delta.get(key):
                if self._open is None or self._open[0] != key:
                    events += self.close()
                    item = make_item(_id(id_prefix), "", "in_progress")
                    part = item["content"][0]
                    self.output.append(item)
                    self._open = (key, item)
                    events.append(self.event("response.output_item.added", output_index=len(self.output) - 1,
                                             item={**item, "content": []}))
                    events.append(self.event("response.content_part.added", part=dict(part), **self._where(item)))
                item = self._open[1]
                part = item["content"][0]
                part["text"] += delta[key]
                extra = {}
                if "logprobs" in part:
                    extra["logprobs"] = logprobs or []
                    part["logprobs"] += extra["logprobs"]
                events.append(self.event(f"{events_prefix}.delta", delta=delta[key], **extra, **self._where(item)))
        for part in delta.get("tool_calls") or []:
            if "id" in part:  # a call opens (whole, or its arguments to follow)
                events += self.close()
                item = _call_item(part, "in_progress")
                self.output.append(item)
                self._open = ("tool_calls", item)
                events.append(self.event("response.output_item.added", output_index=len(self.output) - 1,
                                         item={**item, "arguments": ""}))
            else:
                item = self._open[1]
                item["arguments"] += part["function"]["arguments"]
            if part["function"]["arguments"]:
                events.append(self.event("response.function_call_arguments.delta", item_id=item["id"],
                                         output_index=len(self.output) - 1, delta=part["function"]["arguments"]))
        return events

    def close(self, status: str = "completed") -> list[str]:
        if self._open is None:
            return []
        key, item = self._open
        self._open = None
        index = len(self.output) - 1
        if key == "tool_calls":
            item["status"] = "completed"  # a call is whole once the next item opens, or the reply ends
            return [self.event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                               name=item["name"], arguments=item["arguments"]),
                    self.event("response.output_item.done", output_index=index, item=item)]
        item["status"] = status
        part, where = item["content"][0], self._where(item)
        _, _, events_prefix = _TEXT_ITEMS[key]
        extra = {"logprobs": part["logprobs"]} if "logprobs" in part else {}
        return [self.event(f"{events_prefix}.done", text=part["text"], **extra, **where),
                self.event("response.content_part.done", part=part, **where),
                self.event("response.output_item.done", output_index=where["output_index"], item=item)]


async def _events(answer: _Answer, chat: ChatCompletionRequest, raw_request: Request) -> AsyncIterator[str]:
    generation = answer.generation
    writer = _EventWriter()
    reply = chat_reply(chat, raw_request.app.state.model, generation.prompts[0].text)
    started = answer.object("in_progress", [], None)
    try:
        yield writer.event("response.created", response=started)
        yield writer.event("response.in_progress", response=started)
        finish_reason, token_ids, entries = None, [], []
        given = 0  # tokens whose logprobs went out
        async for delta in generation.deltas():
            token_ids += delta.token_ids
            entries += delta.logprobs or []
            pieces = reply.feed(delta.text)
            if delta.finish_reason is not None:
                more, finish_reason = reply.finish(delta.finish_reason)
                pieces += more
            for piece in pieces:
                logprobs = None
                if answer.logprobs and piece.get("content"):
                    logprobs = answer.answer_logprobs(token_ids, entries, writer.thought, given)
                    given = len(token_ids)
                for event in writer.delta(piece, logprobs):
                    yield event
        if answer.logprobs:  # tokens without text of their own (the end of sequence token) end the message's
            writer.add_logprobs(answer.answer_logprobs(token_ids, entries, writer.thought, given))
        status = answer.status(finish_reason)
        for event in writer.close(status):
            yield event
        done = "response.incomplete" if status == "incomplete" else "response.completed"
        usage = _usage(generation, _reasoning_tokens(token_ids, writer.thought, answer.think_end))
        yield writer.event(done, response=answer.done(status, writer.output, usage))
    except Exception as error:
        body = as_openai_error(error).body()["error"]
        yield writer.event("error", code=body.get("code"), message=body["message"], param=body.get("param"))
    finally:
        generation.close()


def _stored(raw_request: Request, response_id: str, param: str | None = None) -> StoredResponse:
    stored = raw_request.app.state.responses.get(response_id)
    if stored is None:
        raise OpenAIError(404, f"Response with id '{response_id}' not found (kvserve keeps the most recent "
                          f"{raw_request.app.state.responses.max_size})", param=param, code="not_found")
    return stored


@router.get("/v1/responses/{response_id}")
async def get_response(response_id: str, raw_request: Request) -> dict:
    return _stored(raw_request, response_id).response


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, raw_request: Request) -> dict:
    _stored(raw_request, response_id)
    raw_request.app.state.responses.delete(response_id)
    return {"id": response_id, "object": "response", "deleted": True}


@router.post("/v1/responses")
async def create_response(body: ResponsesRequest, raw_request: Request):
    earlier = [] if body.previous_response_id is None else _stored(raw_request, body.previous_response_id,
                                                                   "previous_response_id").items
    items = earlier + input_items(body)
    chat = chat_request(body, items)
    try:
        generation = await start_chat(chat, raw_request)
    except OpenAIError as error:
        raise _in_responses_terms(error) from None
    served: ServedModel = raw_request.app.state.model
    answer = _Answer(body, generation, served.reasoning_end, items, raw_request.app.state.responses,
                     chat.tokens_as_ids(served.tokens_as_token_ids))
    if body.stream:
        return StreamingResponse(_events(answer, chat, raw_request), media_type="text/event-stream")
    choices = await unless_disconnected(raw_request, generation, generation.collect())
    if choices is None:
        return Response(status_code=499)  # nobody will read it: the client is gone
    [choice] = choices
    message, finish_reason = chat_reply(chat, served, generation.prompts[0].text).message(choice.text,
                                                                                           choice.finish_reason)
    status = answer.status(finish_reason)
    thought = bool(message.get("reasoning"))
    usage = _usage(generation, _reasoning_tokens(choice.token_ids, thought, answer.think_end))
    logprobs = answer.answer_logprobs(choice.token_ids, choice.logprobs, thought) if answer.logprobs else []
    return JSONResponse(answer.done(status, _output(message, status, logprobs), usage))
