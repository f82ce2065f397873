"""The offline API of vLLM's `LLM`, which Engine inherits: generate, chat and beam_search add their
requests and step the engine until they finish (a tqdm progress bar on long runs), through the
engine's public loop (add_request, step, abort) and two of its own: the ids' counter and
_close_idle_step."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

from kvserve.beam_search import BeamSearchOutput, BeamSearchParams, beam_search
from kvserve.chat_template import chat_template_arguments
from kvserve.lora.request import LoRARequest
from kvserve.outputs import RequestOutput
from kvserve.prompts import PromptInput, normalize_prompts
from kvserve.sampling_params import RequestOutputKind, SamplingParams


class OfflineAPI:
    def generate(self, prompts: PromptInput | Sequence[PromptInput],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None, *,
                 use_tqdm: bool = True,
                 lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
                 priority: Sequence[int] | None = None) -> list[RequestOutput]:
        """Generate for every prompt (a string, {"prompt": str} or {"prompt_token_ids": [...]}, or a
        list of them); returns one finished RequestOutput per prompt, in order. `lora_request`: the
        LoRA adapter every prompt runs with, or one per prompt (None: the base model). `priority`:
        one per prompt, with scheduling_policy "priority" (lower runs first)."""
        normalized = normalize_prompts(prompts, self.tokenizer)
        if sampling_params is None:
            sampling_params = self.default_sampling_params()
        if isinstance(sampling_params, SamplingParams):
            sampling_params = [sampling_params] * len(normalized)
        elif len(sampling_params) != len(normalized):
            raise ValueError(f"sampling_params: expected one per prompt ({len(normalized)}), got {len(sampling_params)}")
        if lora_request is None or isinstance(lora_request, LoRARequest):
            lora_request = [lora_request] * len(normalized)
        elif len(lora_request) != len(normalized):
            raise ValueError(f"lora_request: expected one per prompt ({len(normalized)}), got {len(lora_request)}")
        if priority is None:
            priority = [0] * len(normalized)
        elif len(priority) != len(normalized):
            raise ValueError(f"priority: expected one per prompt ({len(normalized)}), got {len(priority)}")
        ids = []
        try:
            for prompt, params, lora, rank in zip(normalized, sampling_params, lora_request, priority):
                request_id = f"generate-{next(self._request_counter)}"
                final_only = dataclasses.replace(params, output_kind=RequestOutputKind.FINAL_ONLY)
                engine_prompt = {"prompt_token_ids": prompt.token_ids, "prompt": prompt.text}
                if prompt.cache_salt is not None:
                    engine_prompt["cache_salt"] = prompt.cache_salt
                self.add_request(request_id, engine_prompt, final_only, lora_request=lora, priority=rank)
                ids.append(request_id)
            return self._run_to_completion(ids, use_tqdm)
        except BaseException:
            self.abort(ids)
            raise

    def chat(self, messages, sampling_params: SamplingParams | Sequence[SamplingParams] | None = None, *,
             use_tqdm: bool = True, add_generation_prompt: bool = True, continue_final_message: bool = False,
             chat_template: str | None = None, chat_template_kwargs: dict | None = None,
             tools: list[dict] | None = None,
             lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None) -> list[RequestOutput]:
        """Generate replies to one conversation (a list of {"role", "content"} messages) or to a
        list of conversations, with the model's chat template. `tools`: function definitions in
        OpenAI's format, the template's `tools` (the calls come back as the model writes them).
        chat_template_kwargs: more template variables (e.g. {"enable_thinking": False} for Qwen3),
        which win over add_generation_prompt, continue_final_message, chat_template and tools, as in
        vLLM. `lora_request`: as generate()'s."""
        if self.tokenizer is None:
            raise ValueError("chat() needs a tokenizer, but the engine was built with skip_tokenizer_init=True")
        if isinstance(messages, (str, dict)) or not isinstance(messages, Sequence):
            raise ValueError("messages must be a list of {'role', 'content'} dicts, or a list of such lists, "
                             f"got {type(messages).__name__}: use generate() for a plain prompt")
        if not messages:
            raise ValueError("messages is empty: expected a conversation (a list of {'role', 'content'} dicts) "
                             "or a list of conversations")
        arguments = chat_template_arguments(add_generation_prompt, continue_final_message, chat_template,
                                            chat_template_kwargs, tools)
        conversations = [messages] if isinstance(messages[0], dict) else list(messages)
        prompts = []
        for conversation in conversations:
            text = self.tokenizer.apply_chat_template(conversation, **arguments)
            prompts.append({"prompt": text,
                            "prompt_token_ids": self.tokenizer.encode(text, add_special_tokens=False)})
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm, lora_request=lora_request)

    def beam_search(self, prompts, params: BeamSearchParams, *, use_tqdm: bool = False) -> list[BeamSearchOutput]:
        """vLLM's LLM.beam_search (kvserve/beam_search.py): each prompt's beam_width best beams."""
        return beam_search(self, prompts, params, use_tqdm)

    def _run_to_completion(self, request_ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        pending = set(request_ids)
        finished: dict[str, RequestOutput] = {}
        bar = None
        if use_tqdm:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(request_ids), desc="Processed prompts", unit="prompt", dynamic_ncols=True)
        start, output_tokens = time.perf_counter(), 0
        try:
            while pending:
                for output in self.step():
                    if output.finished and output.request_id in pending:
                        pending.discard(output.request_id)
                        finished[output.request_id] = output
                        output_tokens += sum(len(o.token_ids) for o in output.outputs)
                        if bar is not None:
                            bar.update(1)
                            bar.set_postfix_str(f"output: {output_tokens / (time.perf_counter() - start):.1f} tok/s",
                                                refresh=False)
            self._close_idle_step()
        finally:
            if bar is not None:
                bar.close()
        return [finished[i] for i in request_ids]
