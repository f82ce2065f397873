"""Embeddings from a decoder model (vLLM's pooling runner: `Engine(runner="pooling").embed(...)`,
`kvserve serve MODEL --runner pooling`, POST /v1/embeddings).

A pooling engine computes each prompt once (prefill, chunked like any other) and pools its final
hidden states (after the model's last norm) into one vector, then ends the request:

    LAST   the last prompt token's (decoder embedders: Qwen3-Embedding, e5-mistral, gte-Qwen2)
    MEAN   the mean over every prompt token
    CLS    the first prompt token's

and, where the pooler normalizes (the default), scales it to unit length. A request's task (vLLM's
pooling tasks, `Engine.encode(..., pooling_task=...)`, POST /pooling) may ask for every prompt
token's state instead, each row as the pooled vector would be (token_embed: each token's
embedding; token_classify: each token's classes, through a classifier's head, kvserve.classify);
such requests skip the prefix cache too. What a checkpoint asks
for is read from its sentence-transformers files (1_Pooling/config.json's pooling_mode_*, a
Normalize module in modules.json), as vLLM reads them; without them LAST and normalized, vLLM's
default for a decoder. MEAN and CLS need every prompt token computed: their requests skip the
prefix cache. A request's `dimensions` keep the vector's first `dimensions` entries (a Matryoshka
model's smaller embedding), normalized again where the pooler normalizes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from kvserve.sampling_params import is_int, truncate_prompt

POOLING_TYPES = ("LAST", "MEAN", "CLS")
# vLLM's pooling tasks: a prompt's one vector, or one per prompt token (the token_ ones).
POOLING_TASKS = ("embed", "classify", "token_embed", "token_classify")
TOKEN_TASKS = ("token_embed", "token_classify")
CLASSIFIER_TASKS = ("classify", "token_classify")
RUNNERS = ("auto", "generate", "pooling")
# sentence-transformers' 1_Pooling/config.json keys, by the pooling they ask for.
_ST_MODES = {"pooling_mode_lasttoken": "LAST", "pooling_mode_mean_tokens": "MEAN", "pooling_mode_cls_token": "CLS"}


@dataclass(frozen=True)
class PoolerConfig:
    """How a pooling engine pools (vLLM's --pooler-config keys): pooling_type and normalize."""

    pooling_type: str = "LAST"
    normalize: bool = True

    def __post_init__(self):
        if self.pooling_type not in POOLING_TYPES:
            raise ValueError(f"pooling_type must be one of {list(POOLING_TYPES)}, got {self.pooling_type!r}")
        if not isinstance(self.normalize, bool):
            raise ValueError(f"normalize must be True or False, got {self.normalize!r}")

    @property
    def needs_every_token(self) -> bool:
        """Whether every prompt token's hidden state is read (its requests skip the prefix cache)."""
        return self.pooling_type != "LAST"

    @classmethod
    def for_model(cls, directory: Path | None, overrides: dict | PoolerConfig | None = None, *,
                  classifier: bool = False) -> PoolerConfig:
        """The checkpoint's own pooling (its sentence-transformers files, if any), with `overrides`
        (a dict of its keys, or a PoolerConfig) over it. A classifier's head reads the last token's
        state as it is (kvserve.classify): LAST, not normalized, unless overridden."""
        if isinstance(overrides, PoolerConfig):
            return overrides
        if overrides is not None and not isinstance(overrides, dict):
            raise ValueError(f"pooler_config must be a dict (e.g. {{'pooling_type': 'MEAN'}}), got {overrides!r}")
        found = _sentence_transformers_pooling(directory) if directory is not None and directory.is_dir() else {}
        unknown = sorted(set(overrides or {}) - {"pooling_type", "normalize"})
        if unknown:
            raise ValueError(f"pooler_config: unknown keys {unknown}; kvserve takes pooling_type and normalize")
        own = {"normalize": False} if classifier else found
        return cls(**{**own, **(overrides or {})})


def _sentence_transformers_pooling(directory: Path) -> dict:
    found = {}
    pooling = directory / "1_Pooling" / "config.json"
    if pooling.is_file():
        modes = [kind for key, kind in _ST_MODES.items() if json.loads(pooling.read_text()).get(key)]
        if len(modes) == 1:
            found["pooling_type"] = modes[0]
    modules = directory / "modules.json"
    if modules.is_file():
        found["normalize"] = any(str(m.get("type", "")).endswith(".Normalize") for m in json.loads(modules.read_text()))
    return found


@dataclass(frozen=True)
class PoolingParams:
    """One pooling request's options (vLLM's): `dimensions`, the embedding's length where the model
    allows fewer than its hidden size (Matryoshka); `normalize`, None for the pooler's own;
    `truncate_prompt_tokens`, the prompt's last that many tokens (-1: as many as the context holds,
    less the placeholder token that ends the request); `use_activation`, a classifier's
    (kvserve.classify): False gives its logits as they are (a reward model's score), None or True
    through its activation; `task`, one of POOLING_TASKS (None: the engine's own, embed or classify).
    """

    dimensions: int | None = None
    normalize: bool | None = None
    truncate_prompt_tokens: int | None = None
    use_activation: bool | None = None
    task: str | None = None

    def __post_init__(self):
        if self.dimensions is not None and (not is_int(self.dimensions) or self.dimensions < 1):
            raise ValueError(f"dimensions must be a positive integer or None, got {self.dimensions!r}")
        for name in ("normalize", "use_activation"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True, False or None, got {getattr(self, name)!r}")
        value = self.truncate_prompt_tokens
        if value is not None and (not is_int(value) or (value < 1 and value != -1)):
            raise ValueError(f"truncate_prompt_tokens must be a positive integer, -1 or None, got {value!r}")
        if self.task is not None and self.task not in POOLING_TASKS:
            raise ValueError(f"task must be one of {list(POOLING_TASKS)} or None, got {self.task!r}")

    @property
    def per_token(self) -> bool:
        """Whether the request pools every prompt token's state (a token_ task), not one vector."""
        return self.task in TOKEN_TASKS

    def truncated_prompt(self, token_ids: list[int], max_model_len: int) -> list[int]:
        return truncate_prompt(token_ids, self.truncate_prompt_tokens, max_model_len)


def check_dimensions(dimensions: int | None, model_config) -> None:
    """ValueError for embedding dimensions the model cannot cut its vectors to (PoolingParams)."""
    allowed = model_config.matryoshka_dimensions
    if dimensions is None:
        return
    if allowed is None:
        raise ValueError(f"dimensions {dimensions}: this model's embeddings are not Matryoshka ones (its "
                         f"config.json has neither is_matryoshka nor matryoshka_dimensions), so they keep "
                         f"their {model_config.hidden_size}")
    if dimensions > model_config.hidden_size or (allowed and dimensions not in allowed):
        wanted = f"one of {list(allowed)}" if allowed else f"in [1, {model_config.hidden_size}]"
        raise ValueError(f"dimensions must be {wanted}, got {dimensions}")


def finish_embedding(pooled: torch.Tensor, params: PoolingParams, pooler: PoolerConfig) -> torch.Tensor:
    """The request's embedding (float32, on the host) from its pooled hidden state: a vector, or
    a row per prompt token (each one cut and normalized alike)."""
    vector = pooled.float()
    if params.dimensions is not None:
        vector = vector[..., :params.dimensions]
    if pooler.normalize if params.normalize is None else params.normalize:
        vector = torch.nn.functional.normalize(vector, dim=-1)
    return vector.cpu()


class PooledState:
    """A pooling request's running pool as its prompt's chunks are computed: rows are added once
    each, by position, so that a chunk computed again (after a preemption) counts once."""

    __slots__ = ("pooler", "params", "prompt_len", "_sum", "_upto", "_rows", "embedding")

    def __init__(self, pooler: PoolerConfig, params: PoolingParams, prompt_len: int):
        self.pooler = pooler
        self.params = params
        self.prompt_len = prompt_len
        self._sum: torch.Tensor | None = None
        self._upto = 0  # positions below this are in the pool (MEAN)
        self._rows: torch.Tensor | None = None  # every position's state (a token_ task)
        self.embedding: torch.Tensor | None = None  # once the last prompt token is computed

    def add(self, hidden: torch.Tensor, first_position: int) -> None:
        """`hidden` [rows, hidden]: the final hidden states of prompt positions first_position...;
        the pool is done with the row of the prompt's last position."""
        kind = self.pooler.pooling_type
        end = first_position + hidden.shape[0]
        if self.params.per_token:
            if self._rows is None:
                self._rows = torch.empty(self.prompt_len, hidden.shape[1], dtype=torch.float32, device=hidden.device)
            self._rows[first_position:end] = hidden[:self.prompt_len - first_position]
            if end >= self.prompt_len:
                self.embedding = finish_embedding(self._rows, self.params, self.pooler)
            return
        if kind == "CLS":
            if first_position == 0:
                self._sum = hidden[0].float()
        elif kind == "MEAN":
            skip = max(0, self._upto - first_position)
            if skip < hidden.shape[0]:
                rows = hidden[skip:].float().sum(0)
                self._sum = rows if self._sum is None else self._sum + rows
                self._upto = end
        if end < self.prompt_len:
            return
        if kind == "LAST":
            pooled = hidden[self.prompt_len - 1 - first_position]
        elif kind == "MEAN":
            pooled = self._sum / self.prompt_len
        else:
            pooled = self._sum
        self.embedding = finish_embedding(pooled, self.params, self.pooler)


def score_pairs(firsts: list, seconds: list) -> list[tuple]:
    """The pairs a score request asks for (vLLM's rule): one first for every second, or one for each."""
    if not seconds:
        raise ValueError("the second texts are empty: expected at least one")
    if len(firsts) == 1:
        return [(firsts[0], second) for second in seconds]
    if len(firsts) != len(seconds):
        raise ValueError(f"{len(firsts)} first texts and {len(seconds)} second ones: expected one first text, or "
                         "one for each second")
    return list(zip(firsts, seconds))


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """How two embeddings score (vLLM's score for an embedding model)."""
    return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=0))
