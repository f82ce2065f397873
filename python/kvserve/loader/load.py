"""One call from a model name to a model with its weights in place.

    loaded = load_model("path/or/Org-Name/or/file.gguf", dtype="auto", load_format="auto")
    loaded.model(input_ids, positions, kv_caches, attn_metadata)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import tokenizers
import torch
from torch import nn

from kvserve.loader.dummy_weights import fill_dummy_weights
from kvserve.loader.gptq_awq import quantized_weights
from kvserve.loader.model_source import resolve_model_path
from kvserve.loader.safetensors_weights import iter_safetensors_weights
from kvserve.loader.tokenizer_parts import TokenizerParts
from kvserve.model_config import ModelConfig
from kvserve.models.layers.embedding import Embedding
from kvserve.models.layers.linear import Linear, onednn_packs
from kvserve.models.registry import POOLING_ONLY, build_model
from kvserve.models.weight_loading import linear_parts
from kvserve.pooling import RUNNERS
from kvserve.quantization import CHECKPOINT_ONLY, check_quantization

if TYPE_CHECKING:
    from kvserve.loader.gguf_weights import GgufWeights

logger = logging.getLogger("kvserve")

LOAD_FORMATS = ("auto", "safetensors", "gguf", "dummy")


@dataclass
class LoadedModel:
    model_config: ModelConfig
    model: nn.Module
    dtype: torch.dtype
    # The Hugging Face directory (its tokenizer files are read from there) or the GGUF file.
    path: Path
    # From GGUF metadata; None for a Hugging Face directory.
    tokenizer: TokenizerParts | None


def _engine_dtype(model_config: ModelConfig, dtype: str | torch.dtype, device: torch.device,
                  is_gguf: bool) -> torch.dtype:
    """model_config.resolve_dtype(dtype), but under "auto":
    - a GGUF file of quantized blocks, which names no dtype, runs in bfloat16 where the device
      multiplies it natively (a CUDA GPU that has it, a CPU with oneDNN's bfloat16 path), as vLLM's
      "auto" runs a float32 checkpoint in 16 bits: the default model served 1.7x the offline
      throughput of float32 (bench/README.md, "int8 weights"); float32 elsewhere;
    - a bfloat16 checkpoint on a CPU without AVX-512 or AVX-NE-CONVERT (oneDNN refuses to block
      bfloat16 weights there) runs in float32: batches of many rows 1.3x faster than kvserve's own
      bfloat16 products, at twice the weights' memory (one stream's decode is 1.2x faster in
      bfloat16; bench/README.md)."""
    auto = isinstance(dtype, str) and dtype == "auto"
    if auto and is_gguf and model_config.checkpoint_dtype is None:
        native = (torch.cuda.is_bf16_supported() if device.type == "cuda"
                  else device.type == "cpu" and onednn_packs(torch.bfloat16))
        resolved = torch.bfloat16 if native else torch.float32
        logger.info("a GGUF file of quantized blocks names no dtype: computing in %s (--dtype to choose)",
                    str(resolved).removeprefix("torch."))
        return resolved
    resolved = model_config.resolve_dtype(dtype)
    if (auto and resolved == torch.bfloat16 and device.type == "cpu"
            and not onednn_packs(torch.bfloat16)):
        logger.warning("this CPU has no AVX-512 bfloat16 path: running the bfloat16 checkpoint in float32 (batches "
                       "faster); --dtype bfloat16 keeps bfloat16 (half the memory, one stream faster)")
        return torch.float32
    return resolved


def _token_ids(directory: Path, tokens: tuple[str, ...]) -> list[int]:
    """Each token's id in the directory's tokenizer.json (classifier_from_token's tokens)."""
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise ValueError(f"classifier_from_token {list(tokens)} needs the tokenizer: no tokenizer.json in {directory}")
    vocabulary = tokenizers.Tokenizer.from_file(str(path))
    ids = [vocabulary.token_to_id(token) for token in tokens]
    unknown = [token for token, token_id in zip(tokens, ids) if token_id is None]
    if unknown:
        raise ValueError(f"classifier_from_token: {unknown} are not tokens of {path} (each must be one token)")
    return ids


def code_kinds(stored: dict[str, set[str]], names: list[str]) -> list[str | None]:
    """Each name's kind of codes in a GGUF file (GgufWeights.coded_names: "uint4", "int8"), None where
    its blocks load as neither."""
    return [next((kind for kind, kind_names in stored.items() if name in kind_names), None) for name in names]


def _keep_codes(module: nn.Module, weights: GgufWeights) -> set[str]:
    """Each product whose parts the file stores all as 4-bit blocks takes them as uint4 codes, all as
    symmetric 8- to 3-bit blocks as int8 codes (Linear.prepare_uint4, prepare_int8), and so does the token
    embedding table (and with it a tied LM head); the names of what is kept. A fused projection with
    parts of different kinds keeps each part's codes in its own kind (Linear.prepare_parts): llama.cpp's
    Q4_K_M stores some v projections as Q6_K beside Q4_K q and k; a part of neither kind (Q3_K_M's Q5_K
    v beside Q3_K q and k) is dequantized alone, a part in the dtype."""
    stored = weights.coded_names()
    holders = list(linear_parts(module, module.packed_modules))
    holders += [(embedding, [f"{name}.weight"]) for name, embedding in module.named_modules()
                if isinstance(embedding, Embedding)]
    kept = set()
    for holder, names in holders:
        kinds = code_kinds(stored, names)
        if set(kinds) == {None}:
            continue
        if len(set(kinds)) == 1:
            getattr(holder, f"prepare_{kinds[0]}")()
        else:
            holder.prepare_parts(kinds)
        kept.update(name for name, kind in zip(names, kinds, strict=True) if kind is not None)
    _log_codes("GGUF", module)
    return kept


def _log_codes(source: str, module: nn.Module) -> None:
    """How many of the products (and embedding tables) hold uint4 or int8 codes, and their bytes with
    their scales."""
    holders = [m for m in module.modules() if isinstance(m, (Linear, Embedding)) and m.weight is not None]
    kinds = {kind: [m for m in holders if m.weight.dtype == dtype]
             for kind, dtype in (("uint4", torch.uint8), ("int8", torch.int8))}
    coded = kinds["uint4"] + kinds["int8"]
    if coded:
        nbytes = sum(m.weight.numel() + 4 * m.weight_scale.numel() * (1 if m.weight_offset is None else 2)
                     for m in coded)
        counts = ", ".join(f"{len(of_kind)} as {kind}" for kind, of_kind in kinds.items() if of_kind)
        logger.info("%s: %d of %d weight matrices read as codes: %s (%.2f GB with their scales)%s", source,
                    len(coded), len(holders), counts, nbytes / 1e9,
                    "" if len(coded) == len(holders) else "; the others widened to the dtype")


def load_model(model: str | Path | None = None, *, dtype: str | torch.dtype = "auto", load_format: str = "auto",
               device: str | torch.device = "cpu", seed: int = 0, hub_cache_dir: str | Path | None = None,
               revision: str | None = None, runner: str = "auto", hf_overrides: dict | None = None,
               quantization: str | None = None) -> LoadedModel:
    """Resolve `model` (None: the default model), read its config, build it and fill its weights.
    load_format "dummy" keeps the real shapes but fills random weights (seeded by `seed`).
    `runner` (kvserve.pooling.RUNNERS): "pooling" builds the model without its LM head; "auto"
    does so for a base model's or a classifier's checkpoint (registry.POOLING_ONLY), which has none. `hf_overrides`:
    config.json keys to replace or add (vLLM's; a Hugging Face directory's only). `quantization`
    "fp8": the decoder layers' weights become e4m3 codes once loaded (kvserve.quantization); a
    checkpoint of quantized weights (fp8, GPTQ, AWQ, compressed-tensors) loads its codes as they are, whatever
    `quantization` says ("gptq", "awq", "compressed-tensors" and "gguf" only name what the checkpoint must be)."""
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"load_format: expected one of {list(LOAD_FORMATS)}, got {load_format!r}")
    if runner not in RUNNERS:
        raise ValueError(f"runner must be one of {list(RUNNERS)}, got {runner!r}")
    quantization = check_quantization(quantization)
    path = resolve_model_path(model, hub_cache_dir=hub_cache_dir, revision=revision)
    is_gguf = path.is_file()
    if quantization == "gguf":  # vLLM's name for a GGUF file's blocks, which load as they are anyway
        if not is_gguf:
            raise ValueError(f"quantization 'gguf' reads a GGUF file's blocks, and {path} is not a GGUF file")
        quantization = None
    wanted = "gguf" if is_gguf else "safetensors"
    if load_format not in ("auto", "dummy", wanted):
        raise ValueError(f"load_format {load_format!r} does not fit {path}: expected 'auto', 'dummy' or {wanted!r}")
    if hf_overrides is not None and not isinstance(hf_overrides, dict):
        raise ValueError(f"hf_overrides must be a dict of config.json keys, e.g. {{'is_matryoshka': True}}, "
                         f"got {hf_overrides!r}")
    if is_gguf:
        if hf_overrides:
            raise ValueError(f"hf_overrides replace config.json keys, and {path} is a GGUF file (it has none)")
        from kvserve.loader.gguf_model import read_gguf  # `gguf` is needed for GGUF files only

        model_config, tokenizer, weights = read_gguf(path)
    else:
        model_config, tokenizer = ModelConfig.from_pretrained(path, hf_overrides), None
        weights = iter_safetensors_weights(path)
    # A checkpoint of quantized weights (ModelConfig.weight_quantization) is read as it is.
    prequantized = model_config.weight_quantization is not None and load_format != "dummy"
    if model_config.weight_quantization is not None:
        quantization = model_config.weight_quantization
        check_quantization(quantization)
    elif quantization in CHECKPOINT_ONLY:
        raise ValueError(f"quantization {quantization!r} reads a {quantization.upper()} checkpoint's weights, and "
                         f"{path} has no {quantization.upper()} quantization_config")
    pools_only = model_config.architecture in POOLING_ONLY
    if pools_only and runner == "generate":
        kind = "a classifier" if model_config.labels is not None else "a base model"
        raise ValueError(f"{path} is {kind} ({model_config.architecture}, no LM head): it generates nothing, "
                         f"and serves with runner 'pooling'")
    resolved = _engine_dtype(model_config, dtype, torch.device(device), is_gguf)
    module = build_model(model_config, resolved, device,
                         lm_head=runner == "generate" or (runner == "auto" and not pools_only))
    if prequantized:
        for linear in module.decoder_linears():
            if quantization == "fp8":
                linear.prepare_fp8()
            elif model_config.weight_scheme.bits == 8:
                linear.prepare_int8()
            else:
                linear.prepare_uint4()
            if model_config.weight_scheme is not None and model_config.weight_scheme.act_order:
                linear.prepare_input_order()
        if quantization in CHECKPOINT_ONLY:
            parts = list(linear_parts(module, module.packed_modules))
            decoder = set(module.decoder_linears())
            projections = {name.split(".")[-2] for linear, names in parts if linear in decoder for name in names}
            bias_free = {name.removesuffix("weight") + "bias" for linear, names in parts if linear.bias is None
                         for name in names}
            weights = quantized_weights(weights, model_config.weight_scheme, projections, bias_free)
            _log_codes(quantization.upper(), module)
    if is_gguf and load_format != "dummy" and quantization is None:
        # A GGUF file's blocks that have codes are read as they are, unless a quantization was asked for.
        weights.kept = _keep_codes(module, weights)
    if load_format == "dummy":
        fill_dummy_weights(module, seed)
    elif model_config.classifier_from_token is not None:
        module.load_weights(weights, score_token_ids=_token_ids(path, model_config.classifier_from_token))
    else:
        module.load_weights(weights)
    if quantization == "fp8":
        for linear in module.decoder_linears():
            linear.quantize_fp8()
        codes = sum(p.numel() for p in module.parameters() if p.dtype == torch.float8_e4m3fn)
        logger.info("quantization fp8: %.2f GB of decoder weights as e4m3 codes, a float32 scale a row", codes / 1e9)
    module.finalize_weights()
    return LoadedModel(model_config, module, resolved, path, tokenizer)
