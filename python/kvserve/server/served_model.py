"""ServedModel: what the HTTP side knows about the model it serves, and the checks that need it
(its names, tokenizer, context length and vocabulary). Tokenization and chat templates run here,
on the HTTP side (the handlers call them off the event loop: a long prompt or template must not stall
other requests); the engine only ever sees token ids."""

from __future__ import annotations

import asyncio
import time

from kvserve.chat_template import chat_template_arguments
from kvserve.engine import Engine
from kvserve.lora import LoRARequest
from kvserve.lora.adapter import load_adapter
from kvserve.sampling_params import logprobs_wanted
from kvserve.server.async_engine import EnginePrompt
from kvserve.server.errors import OpenAIError, bad_request
from kvserve.server.protocol import ChatTemplateFields


class ServedModel:
    def __init__(self, engine: Engine, names: list[str], root: str, trust_request_chat_template: bool = False,
                 prompt_tokens_details: bool = False, auto_tool_parser: str | None = None,
                 loras: list[LoRARequest] = (), force_include_usage: bool = False, tokens_as_token_ids: bool = False):
        """`loras`: LoRA adapters served by their lora_name, loaded here (an adapter that cannot be
        is a ValueError at once, not a failed request later)."""
        if not names:
            raise ValueError("a served model needs at least one name")
        if engine.tokenizer is None:
            raise ValueError("the server needs the model's tokenizer (the engine was built without one)")
        self.names = list(names)
        self.loras = {lora.lora_name: lora for lora in loras}  # replaced whole on change: readers never see half
        if len(self.loras) < len(loras):
            names = [lora.lora_name for lora in loras]
            raise ValueError(f"LoRA adapter names given twice: {sorted({n for n in names if names.count(n) > 1})}")
        clash = set(self.names) & set(self.loras)
        if clash:
            raise ValueError(f"LoRA adapters and the model share the names {sorted(clash)}")
        if self.loras and engine.loras is None:
            raise ValueError("LoRA adapters need an engine built with enable_lora (--enable-lora)")
        for lora in self.loras.values():
            engine.loras.get(lora)
        self._adapters = engine.loras
        # Ids are never reused: a new adapter never meets an old one's blocks.
        self._next_lora_id = max((lora.lora_int_id for lora in loras), default=0) + 1
        self.lora_updates = asyncio.Lock()  # runtime loads and unloads, one at a time (server/lora_routes.py)
        self.name = self.names[0]  # the name responses carry
        self.root = root
        self.tokenizer = engine.tokenizer
        self.max_model_len = engine.max_model_len
        self.vocab_size = engine.model_config.vocab_size
        self.max_logprobs = engine.max_logprobs  # -1 read already as the vocabulary
        self.default_sampling = dict(engine.model_config.default_sampling)
        self.created = int(time.time())
        # A chat template runs code (Jinja loops) chosen by whoever sends it: refused unless trusted.
        self.trust_request_chat_template = trust_request_chat_template
        self.prompt_tokens_details = prompt_tokens_details  # usage reports prefix-cache hits
        self.force_include_usage = force_include_usage  # every stream ends with a usage chunk
        self.tokens_as_token_ids = tokens_as_token_ids  # logprobs name tokens "token_id:N" unless a request says
        self.auto_tool_parser = auto_tool_parser  # reads tool_choice "auto" replies (server/tools.py)
        self.reasoning_parser = engine.reasoning_parser  # tells chat replies' thinking from their answer
        # The model's </think> token where it thinks: grammars hold what follows it (None: no reasoning
        # parser, or no such token).
        self.reasoning_end = engine.grammars.reasoning_end
        self.pools = engine.pooler is not None  # --runner pooling: embeddings, not generation
        self.classifier = engine.classifier  # a classifier's head (kvserve.classify): /classify, cross-encoding

    def check_name(self, model: str | None) -> LoRARequest | None:
        """The LoRA adapter a request's model names (None: the base model). Requests may leave the
        model out; a name that is not ours is a 404, as OpenAI answers."""
        if model is None or model in self.names:
            return None
        if model in self.loras:
            return self.loras[model]
        raise OpenAIError(404, f"The model `{model}` does not exist: this server serves "
                          f"{', '.join([*self.names, *self.loras])}", param="model", code="model_not_found")

    def name_in_use(self, name: str) -> bool:
        return name in self.names or name in self.loras

    def add_lora(self, name: str, path: str) -> LoRARequest:
        """Serve another adapter under `name`, a name not in use (read once here, a check: the
        engine loads it when a request first runs it). ValueError for an adapter that cannot be
        loaded. Blocks on the adapter's files: call it off the event loop."""
        lora = LoRARequest(name, self._next_lora_id, path)
        load_adapter(lora, self._adapters.model, self._adapters.max_lora_rank)
        self._next_lora_id += 1
        self.loras = {**self.loras, name: lora}
        return lora

    def remove_lora(self, name: str) -> LoRARequest:
        """Stop serving an adapter (requests running with it finish with it); KeyError for none."""
        lora = self.loras[name]
        self.loras = {key: other for key, other in self.loras.items() if key != name}
        return lora

    def response_name(self, lora: LoRARequest | None) -> str:
        """The model name a response carries: the adapter's, or the model's first."""
        return lora.lora_name if lora is not None else self.name

    def encode(self, text: str, add_special_tokens: bool, param: str) -> list[int]:
        token_ids = self.tokenizer.encode(text, add_special_tokens=add_special_tokens)
        if not token_ids:
            raise bad_request(f"{param} is empty: expected at least one token", param)
        return token_ids

    def prompts(self, value, add_special_tokens: bool, param: str) -> list[EnginePrompt]:
        """A completion's prompt field (or an embedding's input): a text, texts, token ids, or lists
        of token ids, as the engine takes them."""
        if isinstance(value, str) or isinstance(value[0], int):
            value = [value]
        return [EnginePrompt(self.encode(p, add_special_tokens, param), p) if isinstance(p, str) else EnginePrompt(p)
                for p in value]

    def check_logprobs(self, count: int | None, param: str) -> None:
        """400 where a request asks for more log-probabilities a position than --max-logprobs allows
        (-1: the whole vocabulary)."""
        if count is not None and (wanted := logprobs_wanted(count, self.vocab_size)) > self.max_logprobs:
            raise bad_request(f"{param} {count} asks for {wanted} log-probabilities a position; this server gives at "
                              f"most {self.max_logprobs} (--max-logprobs)", param)

    def check_token_ids(self, token_ids: list[int], param: str) -> None:
        bad = [t for t in token_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise bad_request(f"{param} has token ids {bad[:8]} outside the vocabulary [0, {self.vocab_size})", param)

    def render_chat(self, fields: ChatTemplateFields) -> str:
        """The prompt text of a conversation, through the model's chat template (or the request's,
        when the server trusts those), with the request's tools as its `tools`. chat_template_kwargs
        are the template's variables and win over the request's own fields, as in vLLM."""
        try:
            arguments = chat_template_arguments(fields.add_generation_prompt, fields.continue_final_message,
                                                fields.chat_template, fields.chat_template_kwargs,
                                                fields.template_tools() or None)
        except ValueError as e:
            raise bad_request(str(e), "chat_template_kwargs") from None
        if arguments["chat_template"] is not None and not self.trust_request_chat_template:
            raise bad_request("this request brings its own chat template, which the server refuses: start it with "
                              "--trust-request-chat-template to accept them", "chat_template")
        if arguments["chat_template"] is None and self.tokenizer.chat_template is None:
            raise bad_request("the model has no chat template: start the server with --chat-template", "messages")
        try:
            return self.tokenizer.apply_chat_template([m.template_message() for m in fields.messages], **arguments)
        except TypeError as e:  # a chat template that is not text
            raise bad_request(f"chat_template_kwargs: {e}", "chat_template_kwargs") from None
        except ValueError as e:
            raise bad_request(str(e), "messages") from None

    def fit_max_tokens(self, longest_prompt: int, requested: int | None, explicit: bool, param: str,
                       max_tokens_param: str = "max_tokens") -> int | None:
        """The max_tokens to run with: a prompt must leave room for one token; an explicit max_tokens
        (the request's field `max_tokens_param`) must fit the context, a default one is cut to fit.
        None: up to the context length."""
        room = self.max_model_len - longest_prompt
        prompt = f"the {'conversation' if param == 'messages' else param} is {longest_prompt} tokens long"
        if room < 1:
            raise bad_request(f"This model's maximum context length is {self.max_model_len} tokens, but {prompt}, "
                              "which leaves no room to generate", param)
        if requested is None or requested <= room:
            return requested
        if explicit:
            raise bad_request(
                f"{max_tokens_param} is {requested}, but this model's maximum context length is {self.max_model_len} "
                f"tokens and {prompt} ({requested} > {self.max_model_len} - {longest_prompt})", max_tokens_param)
        return room
