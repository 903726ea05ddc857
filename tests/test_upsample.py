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


def test_share_inside_is_the_full_map_share_and_bands_past_the_exact_size(monkeypatch):
    """Region scores' attention_inside: the old one-map float32 sum up to EXACT_SUM_PIXELS; beyond it the map is
    made in strips (no full-size float copy) and agrees to float rounding."""
    import torch.nn.functional as F

    from seediff import upsample

    gen = torch.Generator().manual_seed(0)
    att = torch.rand(16, 12, generator=gen) - 0.2  # some negative attention, clamped away
    mask = np.zeros((700, 530), bool)
    mask[100:400, 50:300] = True
    full = F.interpolate(att[None, None], size=mask.shape, mode="bilinear", align_corners=False)[0, 0]
    a = full.clamp_min(0).numpy()
    exact = float(a[mask].sum() / max(float(a.sum()), 1e-6))
    assert upsample.share_inside(att, mask, 1e-6) == exact
    assert upsample.share_inside(att, np.zeros_like(mask), 1e-6) == 0.0
    monkeypatch.setattr(upsample, "EXACT_SUM_PIXELS", 1000)
    monkeypatch.setattr(upsample, "BAND_PIXELS", 700 * 37)  # strips of 37 columns
    assert upsample.share_inside(att, mask, 1e-6) == pytest.approx(exact, rel=1e-6)
