"""The extension loads, and arrays cross into C++ without copies, with clear errors on bad input."""

import numpy as np
import pytest
import torch

import kvserve
from kvserve import _C, ops


def test_version_matches_package_metadata():
    from importlib.metadata import version

    assert kvserve.__version__ == _C.__version__ == version("kvserve")


def _random_cache(num_blocks, make):
    rng = np.random.default_rng(0)
    data = rng.standard_normal((num_blocks, 4, 2, 8)).astype(np.float32)
    return make(data)


@pytest.mark.parametrize("kind", ["numpy", "torch-f32", "torch-bf16", "torch-f16"])
def test_copy_blocks_writes_in_place(kind):
    make = {
        "numpy": lambda a: a.copy(),
        "torch-f32": lambda a: torch.from_numpy(a.copy()),
        "torch-bf16": lambda a: torch.from_numpy(a.copy()).to(torch.bfloat16),
        "torch-f16": lambda a: torch.from_numpy(a.copy()).to(torch.float16),
    }[kind]
    cache = _random_cache(5, make)
    before = cache.copy() if isinstance(cache, np.ndarray) else cache.clone()
    ops.copy_blocks(cache, np.array([[0, 3], [2, 4]], dtype=np.int64))
    assert (cache[3] == before[0]).all() and (cache[4] == before[2]).all()
    for b in (0, 1, 2):
        assert (cache[b] == before[b]).all()


def test_copy_blocks_accepts_torch_pairs():
    cache = _random_cache(3, torch.from_numpy)
    before = cache.clone()
    ops.copy_blocks(cache, torch.tensor([[1, 0]]))
    assert torch.equal(cache[0], before[1])


def test_wrong_dtype_raises_value_error_naming_it():
    cache = _random_cache(3, lambda a: a.astype(np.float64))
    with pytest.raises(ValueError, match=r"cache: expected dtype float32 or float16 or bfloat16 or float8_e4m3fn or "
                                         r"float8_e5m2, got float64"):
        ops.copy_blocks(cache, np.array([[0, 1]], dtype=np.int64))
    with pytest.raises(ValueError, match=r"block_pairs: expected dtype int64, got int32"):
        ops.copy_blocks(_random_cache(3, np.copy), np.array([[0, 1]], dtype=np.int32))


def test_wrong_shape_raises_value_error():
    cache = _random_cache(3, np.copy)
    with pytest.raises(ValueError, match=r"block_pairs: expected 2 dimensions \[num_pairs, 2\], got shape \[2\]"):
        ops.copy_blocks(cache, np.array([0, 1], dtype=np.int64))
    with pytest.raises(ValueError, match=r"dimension 1 must be 2"):
        ops.copy_blocks(cache, np.zeros((1, 3), dtype=np.int64))


def test_out_of_range_block_raises_and_writes_nothing():
    cache = _random_cache(3, np.copy)
    before = cache.copy()
    with pytest.raises(ValueError, match=r"block id 3 out of range \[0, 3\)"):
        ops.copy_blocks(cache, np.array([[0, 1], [0, 3]], dtype=np.int64))
    np.testing.assert_array_equal(cache, before)


def test_non_contiguous_cache_is_rejected():
    cache = _random_cache(4, torch.from_numpy).transpose(1, 2)
    with pytest.raises(ValueError, match="contiguous"):
        ops.copy_blocks(cache, np.array([[0, 1]], dtype=np.int64))


def test_not_an_array_raises_type_error():
    with pytest.raises(TypeError):
        ops.copy_blocks("not an array", np.array([[0, 1]], dtype=np.int64))
    with pytest.raises(TypeError):
        ops.copy_blocks(_random_cache(2, np.copy), [[0, 1]])
    with pytest.raises(TypeError):  # a tensor with no memory cannot cross DLPack
        ops.copy_blocks(torch.empty(3, 4, device="meta"), np.array([[0, 1]], dtype=np.int64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_copy_blocks_on_cuda():
    if not _C.has_cuda:
        pytest.skip("this build has no CUDA kernels")
    cache = _random_cache(4, torch.from_numpy).cuda()
    before = cache.clone()
    ops.copy_blocks(cache, np.array([[1, 2]], dtype=np.int64))
    torch.cuda.synchronize()
    assert torch.equal(cache[2], before[1]) and torch.equal(cache[1], before[1])
    with pytest.raises(ValueError, match="block_pairs: expected a CPU array, got one on cuda:0"):
        ops.copy_blocks(cache, torch.tensor([[1, 2]], device="cuda"))
