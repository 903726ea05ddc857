"""Refinement: background consistency carves what looks like the background; PAMR equals the reference
formulation, keeps a mask on a sharp colour edge and pulls an overshooting mask back onto it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mask_fixtures import block_labels, block_self_attention, two_colour_image
from seediff.expand import row_normalize
from seediff.refine import (SNAP_BYTES, background_consistency, background_seeds, image_tensor, pamr, pamr_affinity,
                            snap_labels, snap_size)


def test_background_seeds_below_otsu():
    p = torch.tensor([[0.0, 0.1], [0.9, 1.0]])
    assert background_seeds(p).tolist() == [[True, True], [False, False]]


def test_background_consistency_carves_the_other_block():
    """P leaks into part of block B; background seeds (the low part of B) match all of B, which is carved."""
    lab = block_labels((4, 4))
    hat = row_normalize(block_self_attention(lab))
    prev = torch.where(lab == 0, 1.0, 0.0)
    prev[0, 2] = 0.8  # leak into block B
    prev[1, 2] = 0.7
    out = background_consistency(prev[None], hat, (4, 4))[0]
    assert torch.equal(out[lab == 1], torch.zeros(8))
    assert bool((out[lab == 0] > 0.99).all())


def test_background_consistency_upsampling():
    lab8 = block_labels((8, 8))
    hat = row_normalize(block_self_attention(lab8))
    prev = torch.where(block_labels((4, 4)) == 0, 1.0, 0.0)[None]  # coarser map, upsampled inside
    out = background_consistency(prev, hat, (8, 8))[0]
    assert torch.equal(out > 0, lab8 == 0)
    with pytest.raises(ValueError, match="does not match the 4x4 grid"):
        background_consistency(prev, hat, (4, 4))


def test_background_consistency_batched_equals_each_map_alone():
    """K maps in one step give what each map gives alone (flat maps included); equal up to the rounding of the
    similarity mat-mat, whose BLAS blocking depends on K."""
    g = torch.Generator().manual_seed(2)
    hat = row_normalize(torch.softmax(torch.randn(64, 64, generator=g) * 3, dim=1))
    prev = torch.rand(4, 4, 4, generator=g)
    prev[1] = 0.0  # nothing: no background seeds of its own
    prev[3] = 0.3  # flat but not empty: passed through
    both = background_consistency(prev, hat, (8, 8))
    alone = torch.cat([background_consistency(prev[k : k + 1], hat, (8, 8)) for k in range(4)])
    assert torch.allclose(both, alone, atol=1e-6, rtol=0)
    assert not bool(both[1].any())


def _reference_pamr(image: torch.Tensor, mask: torch.Tensor, iterations: int) -> torch.Tensor:
    """The reference module's computation with conv2d shift kernels (dilation 1), written independently."""
    shift = torch.zeros(8, 1, 3, 3)
    for k, (i, j) in enumerate([(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]):
        shift[k, 0, i, j] = 1
    diff = -shift.clone()
    diff[:, 0, 1, 1] = 1
    nine = torch.zeros(9, 1, 3, 3)
    for k in range(9):
        nine[k, 0, k // 3, k % 3] = 1

    def conv(x, w):  # x [K, H, W] → [K, P, H, W]
        return F.conv2d(F.pad(x[:, None], [1] * 4, mode="replicate"), w)

    x = image
    std = conv(x, nine).std(1, keepdim=True)
    aff = (-conv(x, diff).abs() / (1e-8 + 0.2 * std)).mean(0, keepdim=True)
    aff = torch.softmax(aff, 1)
    m = mask
    for _ in range(iterations):
        m = (conv(m, shift) * aff).sum(1)
    return m


def test_pamr_equals_reference_formulation():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 20, 24, generator=g)
    mask = (torch.rand(2, 20, 24, generator=g) > 0.5).float()
    ours = pamr(mask, pamr_affinity(image), iterations=7)
    assert torch.allclose(ours, _reference_pamr(image, mask, 7), atol=1e-5)


def test_pamr_bit_identical_to_plain_rounds():
    """The planned rounds (views made once) sum the same products in the same order as a plain per-round loop
    over freshly padded neighbours: equal bit for bit, for one and two dilations."""
    from seediff.refine import _shifted

    g = torch.Generator().manual_seed(4)
    image = torch.rand(3, 9, 11, generator=g)
    mask = torch.rand(2, 9, 11, generator=g)
    for dil in ((1,), (1, 2)):
        aff = pamr_affinity(image, dil)
        m = mask
        for _ in range(13):
            out = torch.zeros_like(m)
            k = 0
            for d in dil:
                for nb in _shifted(m, d):
                    out.addcmul_(nb, aff[k])
                    k += 1
            m = out
        assert torch.equal(pamr(mask, aff, dil, 13), m)


def test_pamr_keeps_mask_on_sharp_colour_edge():
    img = image_tensor(two_colour_image((32, 32)))
    lab = block_labels((32, 32))
    mask = (lab == 0).float()[None]
    out = pamr(mask, pamr_affinity(img), iterations=500)
    assert torch.equal(out[0] > 0.5, lab == 0)
    assert (out[0][lab == 1]).max() < 0.01  # next to nothing leaks across the edge in 500 rounds


def test_pamr_pulls_overshoot_back_to_the_edge():
    img = image_tensor(two_colour_image((32, 32)))
    lab = block_labels((32, 32))
    mask = (torch.arange(32) < 19).float().expand(32, 32)[None]  # 3 columns past the colour edge at 16
    out = pamr(mask, pamr_affinity(img), iterations=200)[0]
    assert torch.equal(out > 0.5, lab == 0)


def test_pamr_identity_and_conservation():
    img = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1))
    aff = pamr_affinity(img)
    assert torch.allclose(aff.sum(0), torch.ones(8, 8))
    m = torch.rand(1, 8, 8)
    assert torch.equal(pamr(m, aff, iterations=0), m)
    assert torch.allclose(pamr(torch.full((1, 8, 8), 0.7), aff, iterations=20), torch.full((1, 8, 8), 0.7))


def test_pamr_dilations_and_errors():
    img = torch.rand(3, 16, 16)
    aff = pamr_affinity(img, dilations=(1, 2))
    assert aff.shape == (16, 16, 16)
    assert pamr(torch.rand(2, 16, 16), aff, dilations=(1, 2), iterations=3).shape == (2, 16, 16)
    with pytest.raises(ValueError, match="expected 8 x 1 dilations"):
        pamr(torch.rand(2, 16, 16), aff, dilations=(1,))
    with pytest.raises(ValueError, match="iterations must be >= 0"):
        pamr(torch.rand(2, 16, 16), aff, dilations=(1, 2), iterations=-1)
    with pytest.raises(ValueError, match="sigma_scale"):
        pamr_affinity(img, sigma_scale=0)
    with pytest.raises(ValueError, match="HxWx3"):
        image_tensor(np.zeros((4, 4)))


# ---- boundary snap ------------------------------------------------------------------------------------------


def test_snap_size_is_the_photo_capped_by_side_and_memory():
    assert snap_size((128, 96), (32, 24), 1024, 3, (1, 2)) == (128, 96)
    assert snap_size((32, 24), (32, 24), 1024, 3, (1, 2)) is None  # no larger than the working size: nothing to do
    assert snap_size((4000, 3000), (256, 192), 1024, 3, (1, 2)) == (493, 369)  # the 64 MiB budget binds first
    assert snap_size((20000, 20000), (512, 512), 20000, 50, (1, 2)) is None  # the budget allows less than 512²
    h, w = snap_size((20000, 20000), (128, 128), 20000, 50, (1, 2))  # a huge photo, many classes: the byte cap
    assert h == w and h * w * 4 * (3 * 51 + 16 + 64) <= SNAP_BYTES and h > 200


def test_snap_moves_a_blocky_boundary_onto_the_colour_edge():
    """Labels made on a 16-px grid put the edge at column 32 of a 64-px photo whose colours change at 29."""
    img = image_tensor(two_colour_image((64, 64), split=0.45))
    truth = block_labels((64, 64), split=0.45) == 0
    blocky = torch.where(torch.arange(64)[None].expand(64, 64) < 32, 1, 2)
    out = snap_labels(img, blocky, 2, iterations=10)
    assert out.dtype == torch.int64 and out.shape == (64, 64) and set(out.unique().tolist()) == {1, 2}
    assert ((blocky == 1) != truth).sum() == 3 * 64
    assert ((out == 1) != truth).sum() <= 5  # of 192 (measured: 3, single pixels the image's noise holds)
    # a class kept out of a region (its user box) loses those pixels to the next best channel
    box = torch.zeros(64, 64, dtype=torch.bool); box[:, :20] = True
    cut = snap_labels(img, blocky, 2, iterations=10, allowed=[box, None])
    assert not ((cut == 1) & ~box).any() and (cut == 1).sum() == 64 * 20
    with pytest.raises(ValueError, match="must share H, W"):
        snap_labels(img, blocky[:32], 2)
