"""Chat templates: the Jinja templates of Hugging Face tokenizers, rendered the way transformers'
`apply_chat_template` renders them (same environment, same variables), in jinja2's immutable
sandbox since templates come with downloaded models.

The environment: trim_blocks and lstrip_blocks, the loop-controls extension, `{% generation %}`
blocks (rendered as their body), `raise_exception(message)`, `strftime_now(format)`, and a `tojson`
filter that does not escape HTML (json.dumps with ensure_ascii=False, indent, separators, sort_keys).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Appended to the message being continued, then cut from the rendered text together with whatever
# the template writes after the message. The trailing space tells whether the template trimmed it.
_CONTINUE_MARKER = "<kvserve:continue-final-message> "


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks; rendering
    only needs its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


def _raise_exception(message):
    raise jinja2.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format):
    return datetime.now().strftime(format)


@lru_cache(maxsize=32)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(f"chat_template is not a valid Jinja template: {e.message} (line {e.lineno})") from None


def _text_content(content, index: int):
    """A message's content as the string text-only templates expect: a list of OpenAI text parts
    becomes their texts joined by newlines (as vLLM does)."""
    if isinstance(content, str) or not isinstance(content, Sequence):
        return content
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ValueError(
                f"messages[{index}]['content'][{j}] is {part!r}: expected a text part {{'type': 'text', 'text': str}}"
            )
        texts.append(part["text"])
    return "\n".join(texts)


def normalize_messages(messages) -> list[dict]:
    """Copies of the messages as templates get them: keys whose value is None dropped (as
    transformers does), text parts joined. Any role the template knows goes (system, user, assistant,
    tool, or another); empty conversations and messages without a role raise ValueError."""
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise ValueError(f"messages must be a non-empty list of {{'role', 'content'}} dicts, got {messages!r}")
    normalized = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content', got {message!r}")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise ValueError(f"messages[{i}]['role'] is {role!r}: expected a role, such as 'user' or 'assistant'")
        copy = {key: value for key, value in message.items() if value is not None}
        if "content" in copy:
            copy["content"] = _text_content(copy["content"], i)
        normalized.append(copy)
    return normalized


# apply_chat_template's own arguments: chat_template_kwargs, which are template variables, cannot set them.
_NOT_VARIABLES = ("messages", "tokenize", "return_dict", "self")


def chat_template_arguments(add_generation_prompt: bool, continue_final_message: bool, chat_template: str | None,
                            chat_template_kwargs: Mapping | None, tools: list[dict] | None = None) -> dict:
    """Tokenizer.apply_chat_template's keyword arguments for a chat (Engine.chat, the server): `tools`
    (OpenAI's function definitions) as the template's `tools`, and the chat_template_kwargs (the
    template's variables, e.g. {"enable_thinking": False}) winning over the arguments of the same
    names, as in vLLM. ValueError for kwargs that are not a dict of variables."""
    if chat_template_kwargs is not None and not isinstance(chat_template_kwargs, Mapping):
        raise ValueError(f"chat_template_kwargs must be a dict, got {type(chat_template_kwargs).__name__}")
    arguments = {"add_generation_prompt": add_generation_prompt, "continue_final_message": continue_final_message,
                 "chat_template": chat_template, **({"tools": tools} if tools is not None else {}),
                 **(chat_template_kwargs or {})}
    taken = sorted(set(_NOT_VARIABLES) & set(arguments))
    if taken:
        raise ValueError(f"chat_template_kwargs cannot set {taken}: they are apply_chat_template's own arguments, "
                         "not template variables")
    return arguments


def load_chat_template(value: str) -> str:
    """The chat template that `--chat-template VALUE` names, as vLLM reads it: the file at path VALUE,
    or VALUE itself when it is Jinja source (holds "{{" or "{%"). Checked by compiling it."""
    path = Path(value).expanduser()
    if path.is_file():
        template = path.read_text()
    elif "{{" in value or "{%" in value:
        template = value
    else:
        raise ValueError(f"chat template: no file {value!r}, and the text is not a Jinja template")
    _compile(template)
    return template


def render_chat_template(
    template: str,
    messages,
    *,
    add_generation_prompt: bool,
    continue_final_message: bool,
    variables: Mapping[str, object],
) -> str:
    """Render `messages` with `template`. `variables` holds the special tokens (bos_token, ...)
    and any extra template inputs (tools, documents, date_string, ...)."""
    if add_generation_prompt and continue_final_message:
        raise ValueError(
            "add_generation_prompt and continue_final_message cannot both be True: "
            "continuing the final message means no new assistant turn"
        )
    chat = normalize_messages(messages)
    if continue_final_message:
        if not isinstance(chat[-1].get("content"), str):
            raise ValueError("continue_final_message needs a final message with text content")
        chat[-1]["content"] += _CONTINUE_MARKER
    context = {"tools": None, "documents": None, **variables}
    try:
        rendered = _compile(template).render(messages=chat, add_generation_prompt=add_generation_prompt, **context)
    except jinja2.TemplateError as e:
        raise ValueError(f"the chat template rejected the messages: {e}") from None
    if continue_final_message:
        marker = _CONTINUE_MARKER.strip()
        at = rendered.rfind(marker)
        if at < 0:
            raise ValueError("continue_final_message: the chat template dropped the final message's text")
        if rendered.startswith(_CONTINUE_MARKER, at):
            rendered = rendered[:at]
        else:
            # The template trimmed the message, so its trailing whitespace goes too.
            rendered = rendered[:at].rstrip()
    return rendered
