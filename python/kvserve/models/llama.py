"""The Llama decoder (also Mistral's, and the base that Qwen2 and Qwen3 adjust).

Module and parameter names follow the Hugging Face checkpoints, except the fused projections:
    self_attn.qkv_proj    = [q_proj; k_proj; v_proj]
    mlp.gate_up_proj      = [gate_proj; up_proj]
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from kvserve import _C, ops
from kvserve.model_config import ModelConfig
from kvserve.models.layers.attention import Attention, AttentionMetadata
from kvserve.models.layers.embedding import Embedding
from kvserve.models.layers.linear import (OPS_MAX_ROWS, Linear, cuda_ops_linear_takes, fast_copies, linear,
                                          quantized_linear)
from kvserve.models.layers.rms_norm import RMSNorm
from kvserve.models.layers.rotary_embedding import RotaryEmbedding
from kvserve.models.registry import BASE_MODELS
from kvserve.models.weight_loading import load_named_weights

if TYPE_CHECKING:
    from kvserve.lora.adapter import LoRAAdapter
    from kvserve.lora.batch import LoRABatch

KVCache = tuple[torch.Tensor, torch.Tensor]


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int, dtype: torch.dtype,
                 qkv_bias: bool, o_bias: bool, qk_norm: bool):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = d = config.head_dim
        q_size, kv_size = self.num_heads * d, self.num_kv_heads * d
        self.qkv_proj = Linear(config.hidden_size, (q_size, kv_size, kv_size), qkv_bias, dtype)
        self.o_proj = Linear(q_size, config.hidden_size, o_bias, dtype)
        self.q_norm = RMSNorm(d, config.rms_norm_eps, dtype) if qk_norm else None
        self.k_norm = RMSNorm(d, config.rms_norm_eps, dtype) if qk_norm else None
        self.attn = Attention(d, config.sliding_windows[layer_index])

    def forward(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor], kv_cache: KVCache,
                metadata: AttentionMetadata, attn_out: torch.Tensor, lora: LoRABatch | None) -> torch.Tensor:
        num_tokens = x.shape[0]
        # A decode step on CUDA (no norm of q and k in between): the few-rows projection rotates q and
        # k and writes the cache itself (ops.linear_rotary_and_cache), one kernel fewer a layer.
        fused = (x.is_cuda and lora is None and self.q_norm is None and self.head_dim % 16 == 0
                 and self.qkv_proj.parts is None and cuda_ops_linear_takes(x, self.qkv_proj.weight, few_rows_only=True))
        if fused:
            qkv = torch.empty(num_tokens, self.qkv_proj.weight.shape[0], dtype=x.dtype, device=x.device)
        else:
            qkv = self.qkv_proj(x, lora)
        # q, k, v stay views of the one projection output (rows strided by the fused width).
        q, k, v = qkv.split(self.qkv_proj.output_sizes, dim=-1)
        q = q.view(num_tokens, self.num_heads, self.head_dim)
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
        if fused:
            ops.linear_rotary_and_cache(qkv, self.qkv_proj.product_input(x), self.qkv_proj.weight, self.qkv_proj.bias,
                                        q, k, v, *cos_sin, *kv_cache, metadata.slot_mapping,
                                        self.qkv_proj.weight_scale, self.qkv_proj.weight_offset)
            out = self.attn.attend(attn_out, q, kv_cache, metadata)
        else:
            head_norms = None if self.q_norm is None else (self.q_norm, self.k_norm)
            out = self.attn(attn_out, q, k, v, cos_sin, kv_cache, metadata, head_norms)
        return self.o_proj(out.view(num_tokens, -1), lora)


# Rows of a CPU prefill that go through the MLP together: the [rows, 2 * intermediate] activation
# then stays in cache between the gate_up GEMM, SiLU-and-mul and the down GEMM (0.5b prefill: 12%
# faster than whole 8192-token steps; bench/README.md).
MLP_CHUNK_ROWS = 512


class LlamaMLP(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype):
        super().__init__()
        size = config.intermediate_size
        self.gate_up_proj = Linear(config.hidden_size, (size, size), config.mlp_bias, dtype)
        self.down_proj = Linear(size, config.hidden_size, config.mlp_bias, dtype)

    def forward(self, x: torch.Tensor, lora: LoRABatch | None) -> torch.Tensor:
        if not x.is_cpu or x.shape[0] <= MLP_CHUNK_ROWS or lora is not None:  # a LoRA batch's rows are the step's
            return self.down_proj(self.gate_up_proj.forward_silu_and_mul(x, lora), lora)
        out = torch.empty_like(x)
        for start in range(0, x.shape[0], MLP_CHUNK_ROWS):
            rows = slice(start, start + MLP_CHUNK_ROWS)
            out[rows] = self.down_proj(self.gate_up_proj.forward_silu_and_mul(x[rows]))
        return out


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int, dtype: torch.dtype, attention_options: dict):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.self_attn = LlamaAttention(config, layer_index, dtype, **attention_options)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.mlp = LlamaMLP(config, dtype)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None, cos_sin, kv_cache: KVCache,
                metadata: AttentionMetadata, attn_out: torch.Tensor,
                lora: LoRABatch | None) -> tuple[torch.Tensor, torch.Tensor]:
        x, residual = self.input_layernorm.add_and_norm(hidden, residual)
        x = self.self_attn(x, cos_sin, kv_cache, metadata, attn_out, lora)
        x, residual = self.post_attention_layernorm.add_and_norm(x, residual)
        return self.mlp(x, lora), residual


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype, attention_options: dict):
        super().__init__()
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, dtype)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, i, dtype, attention_options)
                                    for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)


# CPU steps of up to this many tokens (decode of a few sequences) run every layer in one C++ call,
# ops.DecoderStack: the few-rows kernels in the layers' order (the layers' bits at up to 4 tokens,
# where they call the same kernels), without a Python round trip per kernel, which costs as much as
# a small model's kernels do.
# On AVX-512 CPUs, oneDNN's blocked products beat the stack's few-rows kernel past 4 rows (bench/
# README.md, "Linear"); on AVX2 ones the stack ran steps of 6 to 16 sequences 1.1-1.5x faster than
# the layers (small and 0.5b presets, float32 and bfloat16; bench/README.md).
DECODER_STACK_MAX_TOKENS = OPS_MAX_ROWS if _C.ops.cpu_isa().startswith("avx512") else 16


def stack_products(layer) -> dict[str, Linear]:
    """A decoder layer's four products under the names ops.DecoderStack (and DecoderLoRA) give them."""
    attn, mlp = layer.self_attn, layer.mlp
    return {"qkv": attn.qkv_proj, "o": attn.o_proj, "gate_up": mlp.gate_up_proj, "down": mlp.down_proj}


class LlamaForCausalLM(nn.Module):
    # checkpoint projection -> (our fused module, its index in the stack)
    packed_modules = {
        "q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
        "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, config: ModelConfig, dtype: torch.dtype, lm_head: bool = True):
        """lm_head=False: the final hidden states only (a pooling engine's model; registry.build_model)."""
        super().__init__()
        self.config = config
        self.dtype = dtype
        self.model = LlamaModel(config, dtype, self.attention_options(config))
        self.has_lm_head = lm_head
        self.lm_head = (Linear(config.hidden_size, config.vocab_size, False, dtype)
                        if lm_head and not config.tie_word_embeddings else None)
        # A classifier's head (registry.CLASSIFIERS), applied to the pooled hidden state by kvserve.classify.
        self.score = (nn.Linear(config.hidden_size, len(config.labels), bias=False, dtype=dtype)
                      if config.labels is not None else None)
        self.rotary = RotaryEmbedding(config.rope, config.head_dim, config.max_model_len)
        # A tied LM head's fast_copies of the embedding (an untied one is a Linear, which keeps its own).
        self.tied_lm_head_copies: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
        # The C++ stack over the weights and the caches list it was built for (rebuilt for another).
        self._decoder_stack: tuple[list[KVCache], _C.ops.DecoderStack] | None = None

    @classmethod
    def attention_options(cls, config: ModelConfig) -> dict:
        """Which optional pieces the attention block has; subclasses for other architectures override."""
        return dict(qkv_bias=config.attention_bias, o_bias=config.attention_bias, qk_norm=False)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[KVCache],
                attn_metadata: AttentionMetadata, lora: LoRABatch | None = None) -> torch.Tensor:
        """input_ids, positions: [T] (every request's new tokens, concatenated) -> final hidden [T, hidden].
        `lora`: the step's LoRA adapters (a CPU step of one adapter runs in the decoder stack like the
        base model's; others layer by layer, in torch between the kernels)."""
        if len(kv_caches) != len(self.model.layers):
            raise ValueError(f"kv_caches: expected {len(self.model.layers)} (one per layer), got {len(kv_caches)}")
        adapter = lora.every_row if lora is not None else None
        if input_ids.is_cpu and input_ids.shape[0] <= DECODER_STACK_MAX_TOKENS and (lora is None or adapter):
            cos_sin = self.rotary.cos_sin(positions, self.dtype)
            hidden = self.model.embed_tokens(input_ids)
            stack = self.decoder_stack(kv_caches)
            stack(hidden, *cos_sin, attn_metadata.slot_mapping.long(), attn_metadata.block_table,
                  attn_metadata.seq_lens, attn_metadata.query_start_loc,
                  lora=self.stack_deltas(stack, adapter) if adapter is not None else None)
            return hidden
        # One attention output buffer serves every layer: each layer's o_proj consumes it before the next.
        attn_out = torch.empty(input_ids.shape[0], self.config.num_attention_heads, self.config.head_dim,
                               dtype=self.dtype, device=input_ids.device)
        cos_sin = self.rotary.cos_sin(positions, self.dtype)
        hidden, residual = self.model.embed_tokens(input_ids), None
        for layer, kv_cache in zip(self.model.layers, kv_caches):
            hidden, residual = layer(hidden, residual, cos_sin, kv_cache, attn_metadata, attn_out, lora)
        hidden, _ = self.model.norm.add_and_norm(hidden, residual)
        return hidden

    def decoder_stack(self, kv_caches: list[KVCache]) -> _C.ops.DecoderStack:
        """The C++ decoder stack over this model's weights and `kv_caches` (built on first use)."""
        if self._decoder_stack is None or self._decoder_stack[0] is not kv_caches:
            layers = []
            for layer, (key_cache, value_cache) in zip(self.model.layers, kv_caches):
                attn, products = layer.self_attn, stack_products(layer)
                layers.append(dict(
                    input_norm=layer.input_layernorm.weight,
                    q_norm=attn.q_norm.weight if attn.q_norm is not None else None,
                    k_norm=attn.k_norm.weight if attn.k_norm is not None else None,
                    post_norm=layer.post_attention_layernorm.weight,
                    key_cache=key_cache, value_cache=value_cache, sliding_window=attn.attn.sliding_window,
                    **{key: product.few_rows_weight for key, product in products.items() if product.parts is None},
                    **{f"{key}_parts": [dict(w=part.few_rows_weight, w_scale=part.weight_scale,
                                             w_offset=part.weight_offset,
                                             rows=sum(part.output_sizes)) for part in product.parts]
                       for key, product in products.items() if product.parts is not None},
                    **{f"{key}_bias": product.bias for key, product in products.items()},
                    **{f"{key}_scale": product.weight_scale for key, product in products.items()},
                    **{f"{key}_offset": product.weight_offset for key, product in products.items()},
                    **{f"{key}_order": product.input_order for key, product in products.items()}))
            first = self.model.layers[0].self_attn
            stack = _C.ops.DecoderStack(layers, self.model.norm.weight, first.num_heads, first.num_kv_heads,
                                        first.head_dim, self.config.rms_norm_eps, first.attn.scale)
            self._decoder_stack = (kv_caches, stack)
        return self._decoder_stack[1]

    def stack_deltas(self, stack: _C.ops.DecoderStack, adapter: LoRAAdapter) -> _C.ops.DecoderLoRA:
        """`adapter`'s deltas as `stack` takes them (built on first use, kept with the adapter)."""
        if adapter.stack_deltas is None or adapter.stack_deltas[0] is not stack:
            layers = []
            for layer in self.model.layers:
                layers.append({name: (delta.a, delta.b) for name, linear_layer in stack_products(layer).items()
                               if (delta := adapter.deltas.get(linear_layer)) is not None})
            adapter.stack_deltas = (stack, _C.ops.DecoderLoRA(stack, layers))
        return adapter.stack_deltas[1]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden] (only the rows to sample) -> logits [N, vocab] in the model dtype (the
        sampler upcasts when it needs to; greedy rows take the argmax as they are)."""
        if not self.has_lm_head:
            raise ValueError("this model was built without its LM head (for pooling): it computes no logits")
        if self.lm_head is not None:
            return self.lm_head(hidden)
        embed = self.model.embed_tokens
        if embed.weight_scale is not None:
            return quantized_linear(hidden, embed.weight, embed.weight_scale, embed.weight_offset)
        return linear(hidden, embed.weight, None, *self.tied_lm_head_copies)

    def decoder_linears(self) -> Iterator[Linear]:
        """The decoder layers' products: the weights quantization="fp8" stores as e4m3 codes (the
        embeddings, norms and LM head keep the dtype)."""
        return (module for module in self.model.layers.modules() if isinstance(module, Linear))

    def finalize_weights(self) -> None:
        """Once the weights are in place (loaded or dummy): per-device copies the products want."""
        self._decoder_stack = None
        for module in self.modules():
            if isinstance(module, Linear):
                module.finalize_weights()
        if self.has_lm_head and self.lm_head is None and self.model.embed_tokens.weight_scale is None:
            self.tied_lm_head_copies = fast_copies(self.model.embed_tokens.weight)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]],
                     score_token_ids: Sequence[int] | None = None) -> None:
        """Copy checkpoint tensors (Hugging Face names) into the parameters, fusing and casting; a
        base model's names (registry.BASE_MODELS) are the inner model's. `score_token_ids`: a
        classifier read from a causal LM's checkpoint (ModelConfig.classifier_from_token), whose
        score head is made of those tokens' LM-head rows."""
        skip = {"lm_head.weight"} if self.lm_head is None else set()
        if any(linear.weight_scale is not None for linear in self.decoder_linears()):
            # An fp8 checkpoint's activation scales (static schemes): the products take the activations
            # as they are (kvserve.quantization).
            weights = ((name, tensor) for name, tensor in weights if not name.endswith(".input_scale"))
        if self.config.architecture in BASE_MODELS:
            weights = ((f"model.{name}", tensor) for name, tensor in weights)
        if score_token_ids is not None:
            weights = _score_from_lm_head(weights, score_token_ids, self.config.tie_word_embeddings)
        load_named_weights(self, weights, self.packed_modules, skip)


def _score_from_lm_head(weights: Iterable[tuple[str, torch.Tensor]], token_ids: Sequence[int],
                        tied: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """The checkpoint's tensors with a score head [1, hidden] made of its LM head's rows (the
    embedding's, where they are tied) in place of the LM head: the row of one token, or the second
    token's less the first's (a two-way softmax's logit of the second)."""
    source = "model.embed_tokens.weight" if tied else "lm_head.weight"
    for name, tensor in weights:
        if name == source:
            rows = tensor[list(token_ids)].float()
            yield "score.weight", (rows if len(token_ids) == 1 else rows[1:] - rows[:1])
        if name != "lm_head.weight":
            yield name, tensor
