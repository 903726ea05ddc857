"""Expansion: the vectorised summed cosine equals the reference's per-seed loop; block-structured attention
expands seeds to exactly their block; the follow-up's mean-of-rows; the background gate; fp16 safety."""

from __future__ import annotations

import pytest
import torch

from mask_fixtures import block_labels, block_self_attention
from seediff.expand import expand, gate, gate_rows, mean_rows, row_normalize, summed_cosine


def _random_attention(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, n, generator=g) * 3, dim=1)


def test_summed_cosine_equals_reference_loop():
    """The reference loops over seeds: vis += CosineSimilarity(dim=1)(A, A[s]). One product must match it."""
    a = _random_attention(64)
    seeds = torch.zeros(64, dtype=torch.bool)
    seeds[[3, 10, 11, 40]] = True
    cos = torch.nn.CosineSimilarity(dim=1)
    ref = torch.zeros(64)
    for s in torch.where(seeds)[0]:
        ref += cos(a, a[s][None])
    ours = summed_cosine(row_normalize(a), seeds)[0]
    assert torch.allclose(ours, ref, atol=1e-5)


def test_block_attention_expands_to_exact_block():
    lab = block_labels((4, 4))  # left two columns = block A
    a = block_self_attention(lab)
    seeds = torch.zeros(16, dtype=torch.bool)
    seeds[[0, 5]] = True  # cells (0,0) and (1,1): both in block A
    for method in ("cosine", "mean"):
        out = expand(a, seeds, method)[0]
        assert torch.equal(out, (lab.reshape(-1) == 0).float()), method


def test_groups_are_one_product_and_independent():
    lab = block_labels((4, 4))
    a = block_self_attention(lab)
    groups = torch.zeros(2, 16)
    groups[0, 0] = groups[0, 1] = 1  # block A
    groups[1, 3] = 1  # block B
    out = expand(a, groups)
    assert torch.equal(out[0], (lab.reshape(-1) == 0).float())
    assert torch.equal(out[1], (lab.reshape(-1) == 1).float())


def test_mean_rows_hand_computed():
    a = torch.tensor([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.2, 0.2, 0.6]])
    seeds = torch.tensor([True, False, True])
    assert torch.allclose(mean_rows(a, seeds)[0], torch.tensor([0.35, 0.35, 0.3]))


def test_gate_hand_computed():
    p = torch.tensor([0.0, 0.5, 1.0, 1.0])
    v = torch.tensor([0.0, 0.0, 0.0, 2.0])  # the last cell looks exactly like the background
    # (1 − norm V) ⊙ norm P = [0, 0.5, 1, 0] → min-max → itself
    assert torch.allclose(gate(p, v), torch.tensor([0.0, 0.5, 1.0, 0.0]))


def test_gate_rows_equal_gate_of_each_row():
    """The batched gate is the per-map gate, bit for bit, including a flat similarity and an all-ones map."""
    g = torch.Generator().manual_seed(1)
    p = torch.rand(4, 5, 6, generator=g)
    v = torch.rand(4, 5, 6, generator=g)
    v[1] = 0.5  # flat similarity
    p[2] = 1.0  # a map that reached every cell
    assert torch.equal(gate_rows(p, v), torch.stack([gate(pk, vk) for pk, vk in zip(p, v)]))


def test_flat_group_gives_zeros():
    a = torch.full((4, 4), 0.25)  # every row identical: no structure to expand through
    assert not bool(expand(a, torch.tensor([True, False, False, False])).any())


def test_fp16_attention_same_result_as_fp32():
    a = _random_attention(256, seed=3)
    seeds = torch.zeros(256, dtype=torch.bool)
    seeds[::17] = True
    a16 = a.half()
    out16 = expand(a16, seeds)
    out32 = expand(a16.float(), seeds)
    assert out16.dtype == torch.float32
    assert torch.equal(out16, out32)
    agree = ((out16 > 0.3) == (expand(a, seeds) > 0.3)).float().mean()
    assert agree >= 0.99  # fp16 rounding of the attention itself moves at most a cell or two


def test_errors():
    with pytest.raises(ValueError, match="square"):
        row_normalize(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="seeds cover 5 cells but the attention has 4 rows"):
        summed_cosine(torch.eye(4), torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="expansion must be one of"):
        expand(torch.eye(4), torch.ones(4, dtype=torch.bool), "median")
