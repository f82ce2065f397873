"""ModelRunner's choice of the rows to sample."""

import numpy as np
import torch

from kvserve.model_runner import sampled_rows


def test_a_decode_step_samples_every_row_as_a_view():
    hidden = torch.randn(5, 8)
    rows = sampled_rows(hidden, np.arange(5, dtype=np.int64))
    assert rows.data_ptr() == hidden.data_ptr() and torch.equal(rows, hidden)


def test_other_steps_gather_their_rows():
    hidden = torch.randn(3, 8)
    # A prompt completing with n = 2 samples repeats its last token; a prefill chunk samples nothing.
    for indices in ([0, 0, 2], [2], [0, 0], [1, 2]):
        rows = sampled_rows(hidden, np.array(indices, dtype=np.int64))
        assert torch.equal(rows, hidden[indices])
