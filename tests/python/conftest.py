"""Shared pytest fixtures."""

from __future__ import annotations

import pytest


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
