"""Shared pytest setup.

Until the CPU kernels (kvserve.ops.reshape_and_cache / paged_attention) land from the kernels branch,
the model tests run on the float64 reference from reference_attention.py, installed here in their
place. The lead removes this shim when the branches merge.
"""

from __future__ import annotations

import pytest

from kvserve import ops
from reference_attention import reference_paged_attention, reference_reshape_and_cache

if not hasattr(ops, "reshape_and_cache"):
    def _paged_attention(out, query, key_cache, value_cache, block_table, seq_lens, query_start_loc, scale,
                         causal=True, sliding_window=None, softcap=None):
        result = reference_paged_attention(query, key_cache, value_cache, block_table, seq_lens, query_start_loc,
                                           scale, causal=causal, sliding_window=sliding_window, softcap=softcap)
        out.copy_(result.to(out.dtype))

    ops.reshape_and_cache = reference_reshape_and_cache
    ops.paged_attention = _paged_attention


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """tiny_model_dir(architecture, **overrides): a saved tiny model directory (see tiny_models.py),
    built once per session for each distinct argument set."""
    from tiny_models import save_tiny_model  # imports transformers: only for the tests that need it

    built = {}

    def get(architecture: str, **overrides):
        key = (architecture, repr(sorted(overrides.items())))
        if key not in built:
            built[key] = save_tiny_model(tmp_path_factory.mktemp(architecture), architecture, **overrides)
        return built[key]

    return get
