"""The offline API of vLLM's `LLM`, which Engine inherits: generate, chat, beam_search, embed, classify,
encode, reward and score add their requests and step the engine until they finish (a tqdm progress
bar on long runs), through the engine's public loop (add_request, step, abort) and two of its own:
the ids' counter and _close_idle_step."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import torch

from kvserve.beam_search import BeamSearchOutput, BeamSearchParams, beam_search
from kvserve.chat_template import chat_template_arguments
from kvserve.lora.request import LoRARequest
from kvserve.outputs import (ClassificationOutput, ClassificationRequestOutput, EmbeddingRequestOutput,
                             PoolingRequestOutput, RequestOutput, ScoringOutput, ScoringRequestOutput)
from kvserve.pooling import PoolingParams, cosine_similarity, score_pairs
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
        if self.pooler is not None:
            raise ValueError("this engine pools (runner='pooling'): use embed()")
        normalized = normalize_prompts(prompts, self.tokenizer)
        if sampling_params is None:
            sampling_params = self.default_sampling_params()
        sampling_params = [dataclasses.replace(params, output_kind=RequestOutputKind.FINAL_ONLY)
                           for params in _per_prompt("sampling_params", sampling_params, SamplingParams, normalized)]
        lora_request = _per_prompt("lora_request", lora_request, (LoRARequest, type(None)), normalized)
        return self._run_requests("generate", normalized, sampling_params, lora_request, priority, use_tqdm)

    def embed(self, prompts: PromptInput | Sequence[PromptInput],
              pooling_params: PoolingParams | Sequence[PoolingParams] | None = None, *,
              truncate_prompt_tokens: int | None = None, use_tqdm: bool = True,
              lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
              priority: Sequence[int] | None = None) -> list[EmbeddingRequestOutput]:
        """vLLM's LLM.embed: each prompt's embedding, in order (a pooling engine's: kvserve.pooling).
        `truncate_prompt_tokens`: the default PoolingParams'; `lora_request`: as generate()'s."""
        if self.classifier is not None:
            raise ValueError("this model is a classifier: classify() its prompts, or score() pairs with a "
                             "cross-encoder")
        outputs, _ = self._pool("embed", prompts, pooling_params, truncate_prompt_tokens, use_tqdm, lora_request,
                                priority, "embed")
        return [EmbeddingRequestOutput.from_base(output) for output in outputs]

    def classify(self, prompts: PromptInput | Sequence[PromptInput],
                 pooling_params: PoolingParams | Sequence[PoolingParams] | None = None, *,
                 truncate_prompt_tokens: int | None = None, use_tqdm: bool = True,
                 lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
                 priority: Sequence[int] | None = None) -> list[ClassificationRequestOutput]:
        """vLLM's LLM.classify: each prompt's class probabilities, in order (a classifier's:
        kvserve.classify; PoolingParams(use_activation=False): its logits); the arguments as embed()'s."""
        if self.classifier is None:
            raise ValueError("classify() needs a classifier's checkpoint (a *ForSequenceClassification "
                             "architecture); this model has no classification head")
        outputs, params = self._pool("classify", prompts, pooling_params, truncate_prompt_tokens, use_tqdm,
                                     lora_request, priority, "classify")
        return [ClassificationRequestOutput(o.request_id, o.prompt, o.prompt_token_ids, ClassificationOutput(
                    self.classifier.probs(o.outputs.data, p.use_activation)))
                for o, p in zip(outputs, params)]

    def encode(self, prompts: PromptInput | Sequence[PromptInput],
               pooling_params: PoolingParams | Sequence[PoolingParams] | None = None, *,
               pooling_task: str | None = None, truncate_prompt_tokens: int | None = None, use_tqdm: bool = True,
               lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
               priority: Sequence[int] | None = None) -> list[PoolingRequestOutput]:
        """vLLM's LLM.encode: each prompt pooled for `pooling_task` (kvserve.pooling.POOLING_TASKS;
        None: the params' task, else the engine's own, embed or classify), in order. outputs.data:
        the embedding [hidden] (embed), each prompt token's [tokens, hidden] (token_embed), the
        class probabilities [classes] (classify), each token's [tokens, classes] (token_classify;
        use_activation False: logits). The other arguments as embed()'s."""
        outputs, params = self._pool("encode", prompts, pooling_params, truncate_prompt_tokens, use_tqdm,
                                     lora_request, priority, pooling_task)
        if self.classifier is not None:
            for output, p in zip(outputs, params):
                output.outputs.data = self.classifier.classes(output.outputs.data, p.use_activation)
        return outputs

    def reward(self, prompts: PromptInput | Sequence[PromptInput],
               pooling_params: PoolingParams | Sequence[PoolingParams] | None = None, *,
               truncate_prompt_tokens: int | None = None, use_tqdm: bool = True,
               lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
               priority: Sequence[int] | None = None) -> list[PoolingRequestOutput]:
        """vLLM's LLM.reward: a classifier's (a reward model's) classes for every prompt token,
        encode(pooling_task="token_classify")."""
        return self.encode(prompts, pooling_params, pooling_task="token_classify",
                           truncate_prompt_tokens=truncate_prompt_tokens, use_tqdm=use_tqdm,
                           lora_request=lora_request, priority=priority)

    def _pool(self, kind: str, prompts, pooling_params, truncate_prompt_tokens: int | None, use_tqdm: bool,
              lora_request, priority,
              task: str | None = None) -> tuple[list[PoolingRequestOutput], list[PoolingParams]]:
        """Pools each prompt (a pooling engine's requests; `task`, where given, set on every prompt's
        params): the outputs in order, and each one's params."""
        if self.pooler is None:
            raise ValueError(f"{kind}() needs a pooling engine (runner='pooling'); this one generates")
        normalized = normalize_prompts(prompts, self.tokenizer)
        if pooling_params is None:
            pooling_params = PoolingParams(truncate_prompt_tokens=truncate_prompt_tokens)
        pooling_params = _per_prompt("pooling_params", pooling_params, PoolingParams, normalized)
        if task is not None:
            pooling_params = [dataclasses.replace(p, task=task) for p in pooling_params]
        lora_request = _per_prompt("lora_request", lora_request, (LoRARequest, type(None)), normalized)
        return self._run_requests(kind, normalized, pooling_params, lora_request, priority, use_tqdm), pooling_params

    def score(self, data_1: str | Sequence[str], data_2: str | Sequence[str], *,
              truncate_prompt_tokens: int | None = None, use_tqdm: bool = True,
              pooling_params: PoolingParams | None = None) -> list[ScoringRequestOutput]:
        """vLLM's LLM.score, data_1 one text for every data_2, or one for each: an embedding
        model's is the cosine similarity of each pair's embeddings (each distinct text embedded
        once), a cross-encoder's the sigmoid of its logit for the pair as one prompt (kvserve.classify;
        `pooling_params`' use_activation False: the logit)."""
        firsts = [data_1] if isinstance(data_1, str) else list(data_1)
        seconds = [data_2] if isinstance(data_2, str) else list(data_2)
        pairs = score_pairs(firsts, seconds)
        if self.classifier is not None:
            if self.tokenizer is None:
                raise ValueError("score() encodes each pair of texts, but the engine was built with "
                                 "skip_tokenizer_init=True")
            self.classifier.check_cross_encoder()
            prompts = [{"prompt_token_ids": self.tokenizer.encode_pair(a, b)} for a, b in pairs]
            outputs, params = self._pool("score", prompts, pooling_params, truncate_prompt_tokens, use_tqdm, None,
                                         None, "classify")
            return [ScoringRequestOutput(f"score-{i}", o.prompt_token_ids,
                                         ScoringOutput(self.classifier.relevance(o.outputs.data, p.use_activation)))
                    for i, (o, p) in enumerate(zip(outputs, params))]
        texts = list(dict.fromkeys(text for pair in pairs for text in pair))
        outputs = dict(zip(texts, self.embed(texts, pooling_params, truncate_prompt_tokens=truncate_prompt_tokens,
                                             use_tqdm=use_tqdm)))
        vectors = {text: torch.tensor(output.outputs.embedding) for text, output in outputs.items()}
        return [ScoringRequestOutput(f"score-{i}", outputs[a].prompt_token_ids + outputs[b].prompt_token_ids,
                                     ScoringOutput(cosine_similarity(vectors[a], vectors[b])))
                for i, (a, b) in enumerate(pairs)]

    def _run_requests(self, kind: str, prompts: list, params: list, lora_requests: list,
                      priority: Sequence[int] | None, use_tqdm: bool) -> list:
        """Adds a request for each prompt and runs them to completion (all aborted if one fails)."""
        priority = [0] * len(prompts) if priority is None else _per_prompt("priority", priority, (), prompts)
        ids = []
        try:
            for prompt, request_params, lora, rank in zip(prompts, params, lora_requests, priority):
                request_id = f"{kind}-{next(self._request_counter)}"
                engine_prompt = {"prompt_token_ids": prompt.token_ids, "prompt": prompt.text}
                if prompt.cache_salt is not None:
                    engine_prompt["cache_salt"] = prompt.cache_salt
                self.add_request(request_id, engine_prompt, request_params, lora_request=lora, priority=rank)
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
                        if isinstance(output, RequestOutput):
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


def _per_prompt(name: str, value, single: type | tuple, prompts: list) -> list:
    """`value` for each prompt: one of type `single` for them all, or a sequence of one per prompt."""
    if single and isinstance(value, single):
        return [value] * len(prompts)
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != len(prompts):
        count = len(value) if isinstance(value, Sequence) else type(value).__name__
        raise ValueError(f"{name}: expected one per prompt ({len(prompts)}), got {count}")
    return list(value)
