"""Random weights of the real shapes (load_format="dummy"), for benchmarks without the files.

Values like a freshly initialized Hugging Face model (normal, std 0.02; norm weights 1), so the
activations have realistic magnitudes: tiny weights would drive CPU math into slow denormals.
"""

from __future__ import annotations

import torch
from torch import nn

from kvserve.models.layers.rms_norm import RMSNorm


def fill_dummy_weights(model: nn.Module, seed: int = 0) -> None:
    # Drawn where the parameters live: a CPU generator cannot fill CUDA tensors, and drawing on the
    # device avoids staging every weight through host memory.
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for param in module.parameters(recurse=False):
                if isinstance(module, RMSNorm):
                    param.fill_(1.0)
                else:
                    param.normal_(0.0, 0.02, generator=generator)
