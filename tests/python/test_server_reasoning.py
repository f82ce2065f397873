"""--reasoning-parser: a reply's thinking apart from its answer, whole and streamed in any pieces,
composed with tool calls the model writes; and on a real server, where the tiny model's reply (no
</think>) is all thinking under deepseek_r1 and all answer under qwen3."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest

from kvserve import SamplingParams
from kvserve.server import chat
from kvserve.server.async_engine import EnginePrompt
from kvserve.server.generation import ChoiceDelta
from kvserve.server.protocol import ChatCompletionRequest
from kvserve.server.reasoning import split_reasoning
from server_process import ServerProcess

MESSAGES = [{"role": "user", "content": "Think, then answer."}]
CALL = '<tool_call>{"name": "get_time", "arguments": {"zone": "UTC"}}</tool_call>'
TOOLS = [{"type": "function", "function": {"name": "get_time"}}]


OPENED, CLOSED = "<|im_start|>assistant\n<think>\n", "<|im_start|>assistant\n<think>\n\n</think>\n\n"


@pytest.mark.parametrize("parser, prompt, text, reasoning, content", [
    ("deepseek_r1", "", "<think>Hmm, 2 + 2.</think>It is 4.", "Hmm, 2 + 2.", "It is 4."),
    ("deepseek_r1", OPENED, "Hmm, 2 + 2.</think>\n\nIt is 4.", "Hmm, 2 + 2.", "\n\nIt is 4."),
    ("deepseek_r1", "", "Still thinking <th", "Still thinking <th", ""),
    ("deepseek_r1", CLOSED, "It is 4.", None, "It is 4."),  # the template closed the thinking
    ("qwen3", "", "<think>\nHmm.\n</think>\n\nIt is 4.", "\nHmm.\n", "\n\nIt is 4."),
    ("qwen3", "", "It is 4. </think>", None, "It is 4. </think>"),
    ("qwen3", OPENED, "Hmm.\n</think>\n\nIt is 4.", "Hmm.\n", "\n\nIt is 4."),  # Qwen3-Thinking-2507
    ("qwen3", CLOSED, "<think>x</think>y", None, "<think>x</think>y"),
    ("qwen3", "", "<thi", None, "<thi"),
])
def test_thinking_apart_from_the_answer_whole_and_streamed(parser, prompt, text, reasoning, content):
    assert split_reasoning(parser, text, prompt) == (reasoning, content)
    message, _ = _whole(parser, text, prompt=prompt)
    assert message.get("reasoning") == reasoning and message.get("reasoning_content") == reasoning
    assert message["content"] == (content if content or reasoning is None else None)
    for size in (1, 2, 3, 5, len(text)):
        deltas, _ = _streamed(parser, text, size, prompt=prompt)
        assert "".join(d.get("reasoning", "") for d in deltas) == (reasoning or "")
        assert "".join(d.get("reasoning_content", "") for d in deltas) == (reasoning or "")
        assert "".join(d.get("content", "") for d in deltas) == content


def test_a_forced_call_after_a_prompt_that_closed_the_thinking():
    """The grammar held the reply from its start (the prompt ends with </think>): it is all call,
    under either parser."""
    for parser in ("deepseek_r1", "qwen3"):
        message, reason = _whole(parser, '[{"name":"get_time","parameters":{}}]', tools=TOOLS, prompt=CLOSED,
                                 tool_choice="required")
        assert message.get("reasoning") is None and reason == "tool_calls"
        assert [c["function"]["name"] for c in message["tool_calls"]] == ["get_time"]


def test_calls_in_the_answer_are_read_after_the_thinking():
    text = "<think>The user wants the time.</think>" + CALL
    message, reason = _whole("qwen3", text, tools=TOOLS)
    assert message["reasoning"] == "The user wants the time." and message["content"] is None
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["get_time"] and reason == "tool_calls"
    deltas, reason = _streamed("qwen3", text, 4, tools=TOOLS)
    assert "".join(d.get("reasoning", "") for d in deltas) == "The user wants the time."
    assert [c["function"]["name"] for d in deltas for c in d.get("tool_calls", []) if "id" in c] == ["get_time"]
    assert reason == "tool_calls"


def test_a_forced_call_after_the_thinking():
    """Grammars hold what follows </think> (kvserve.grammar): the thinking is the reply's reasoning
    and the rest its call."""
    message, reason = _whole("qwen3", '<think>Time, then.</think>{"zone":"UTC"}', tools=TOOLS,
                             tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert message["reasoning"] == "Time, then." and message["content"] is None and reason == "stop"
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]] == [
        ("get_time", '{"zone":"UTC"}')]


class _Served:
    def __init__(self, parser, auto_tool_parser=None):
        self.reasoning_parser, self.auto_tool_parser = parser, auto_tool_parser
        self.reasoning_end = 7  # the tokenizer's </think>: grammars follow the thinking


class _Generation:
    """What chat.py reads of a Generation: one choice whose text arrives in the given pieces."""

    num_choices = 1

    def __init__(self, pieces, prompt=""):
        self._pieces = pieces
        self.prompts = [EnginePrompt([1], prompt)]

    async def deltas(self):
        for i, piece in enumerate(self._pieces):
            yield ChoiceDelta(0, 0, piece, [i], None, "stop" if i == len(self._pieces) - 1 else None, None)


def _body(tools, **fields):
    return ChatCompletionRequest.model_validate({"messages": MESSAGES, **({"tools": tools} if tools else {}),
                                                 **fields})


def _whole(parser, text, tools=None, prompt="", **fields):
    served = _Served(parser, "hermes" if tools else None)
    return chat.chat_reply(_body(tools, **fields), served, prompt).message(text, "stop")


def _streamed(parser, text, size, tools=None, prompt=""):
    served = _Served(parser, "hermes" if tools else None)
    pieces = [text[i:i + size] for i in range(0, len(text), size)]

    async def run():
        return [chunk async for chunk in chat._chunk_choices(_Generation(pieces, prompt), _body(tools), served)]

    chunks = asyncio.run(run())[1:]  # after the role chunk
    return [c["delta"] for c in chunks], chunks[-1]["finish_reason"]


@pytest.mark.parametrize("parser", ["deepseek_r1", "qwen3"])
def test_a_server_with_a_reasoning_parser(tiny_model_dir, tiny_engine, parser):
    [offline] = tiny_engine.chat(MESSAGES, SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)
    text = offline.outputs[0].text
    assert "<think>" not in text and "</think>" not in text
    with ServerProcess(tiny_model_dir("LlamaForCausalLM"), "--served-model-name", "tiny", "--reasoning-parser",
                       parser) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
        response = client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0, max_tokens=12)
        message = response.choices[0].message.model_dump()
        streamed = {"reasoning": "", "content": ""}
        for chunk in client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0, max_tokens=12,
                                                    stream=True):
            delta = chunk.choices[0].delta.model_dump()
            for key in streamed:
                streamed[key] += delta.get(key) or ""
        # The Responses API: the thinking is a reasoning item, before the message.
        reply = client.responses.create(model="tiny", input=MESSAGES, temperature=0, max_output_tokens=12)
        events = list(client.responses.create(model="tiny", input=MESSAGES, temperature=0, max_output_tokens=12,
                                              stream=True))
    streamed_thinking = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    if parser == "deepseek_r1":  # all thinking: no </think>
        assert message["reasoning"] == text and message["content"] is None and streamed["reasoning"] == text
        [item] = reply.output
        assert item.type == "reasoning" and item.content[0].text == text == streamed_thinking
        assert reply.usage.output_tokens_details.reasoning_tokens == reply.usage.output_tokens > 0
    else:  # no <think>: all answer
        assert message["content"] == text and message.get("reasoning") is None and streamed["content"] == text
        assert [item.type for item in reply.output] == ["message"] and reply.output_text == text
        assert reply.usage.output_tokens_details.reasoning_tokens == 0
    assert json.dumps(message)  # the openai client's view serializes
