"""The mark of the tests that need a CUDA GPU: they skip, saying why, where there is none."""

import pytest
import torch

from kvserve import _C

requires_cuda = pytest.mark.skipif(not (_C.has_cuda and torch.cuda.is_available()),
                                   reason="needs a CUDA GPU and a kvserve build with its CUDA kernels")
