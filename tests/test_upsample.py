"""Labels upsampled in bands (seediff.upsample) are bit for bit the full-size float stack's argmax, on both of
PyTorch's CPU kernels, at any size and thread count, without the stack's memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seediff.upsample import BAND_PIXELS, exact_kinds, kernel_kind, reference_labels, upsample_labels


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def test_both_kernels_are_reproduced_on_this_build():
    assert exact_kinds() == {"channels_last", "generic"}


@pytest.mark.parametrize("n_threads", [1, 2])
def test_banded_labels_equal_the_full_stack_argmax(threads, n_threads):
    threads(n_threads)
    rng = np.random.default_rng(n_threads)
    kinds = set()
    for trial in range(60):
        n = int(rng.integers(1, 7))
        h, w = int(rng.integers(1, 40)), int(rng.integers(1, 40))
        H, W = h + int(rng.integers(0, 400)), w + int(rng.integers(0, 400))
        # blocky labels, like real masks, and noise, which makes the most ties
        labels = torch.from_numpy(rng.integers(0, n + 1, (h, w)) if trial % 2 else
                                  np.kron(rng.integers(0, n + 1, (h // 4 + 1, w // 4 + 1)), np.ones((4, 4)))[:h, :w])
        kinds.add(kernel_kind(n + 1, (H, W)))
        got = upsample_labels(labels, n, (H, W))
        assert got.dtype == np.uint8 and got.shape == (H, W)
        np.testing.assert_array_equal(got, reference_labels(labels, n, (H, W)).numpy(), err_msg=f"{(h, w, H, W, n)}")
    assert kinds == {"channels_last", "generic"}


def test_bands_split_large_photos_and_odd_sizes_stay_exact(threads):
    threads(1)
    labels = torch.from_numpy(np.random.default_rng(0).integers(0, 3, (64, 43)))
    for n, hw in ((2, (3001, 1999)), (1, (2017, 1411)), (4, (1500, 1500))):
        assert hw[0] * hw[1] > 4 * BAND_PIXELS
        lab = labels.clamp(max=n)
        np.testing.assert_array_equal(upsample_labels(lab, n, hw), reference_labels(lab, n, hw).numpy())


def test_same_size_and_bad_input():
    labels = torch.tensor([[0, 1], [2, 1]])
    np.testing.assert_array_equal(upsample_labels(labels, 2, (2, 2)), labels.numpy())
    with pytest.raises(ValueError, match=r"labels must be \[h, w\], got shape \(4,\)"):
        upsample_labels(labels.reshape(-1), 2, (4, 4))
