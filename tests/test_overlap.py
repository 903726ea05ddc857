"""resolve_overlaps (contested pixels go to the word with the strongest cross-attention) and SeeDiff's
``overlap='attention'`` option; hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mask_fixtures import block_labels, left_block_map, make_maps, right_block_map
from seediff.masks import assign_labels, resolve_overlaps
from seediff.methods import SeeDiffConfig
from seediff.segment import segment


def test_contested_pixels_go_to_the_highest_evidence():
    """Pixels 0, 1 are claimed by both classes (evidence decides, against the plain argmax); 2, 3 by one only."""
    probs = torch.tensor([[[0.9, 0.8, 0.2, 0.5]], [[0.7, 0.9, 0.6, 0.1]]])
    evidence = torch.tensor([[[0.2, 0.9, 0.0, 0.0]], [[0.6, 0.3, 1.0, 1.0]]])
    out = resolve_overlaps(probs, evidence, [0.3, 0.3])
    assert torch.equal(out, torch.tensor([[[0.0, 0.8, 0.2, 0.5]], [[0.7, 0.0, 0.6, 0.1]]]))
    assert assign_labels(probs, [0.3, 0.3]).tolist() == [[1, 2, 2, 1]]  # argmax: the more confident expansion
    assert assign_labels(out, [0.3, 0.3]).tolist() == [[2, 1, 2, 1]]  # the word that names the pixel


def test_only_contenders_compete_and_ties_go_to_the_lower_index():
    """Class 1 is below its threshold (0.5 ≤ 0.6): its high evidence does not make it a contender."""
    probs = torch.tensor([[[0.5, 0.4]], [[0.5, 0.9]], [[0.7, 0.8]]])
    evidence = torch.tensor([[[0.4, 0.1]], [[0.9, 0.9]], [[0.4, 0.2]]])
    out = resolve_overlaps(probs, evidence, [0.3, 0.6, 0.3])
    # pixel 0: contenders 0 and 2, evidence tie 0.4 = 0.4 → class 0; pixel 1: all three, class 1 (0.9) wins
    assert torch.equal(out, torch.tensor([[[0.5, 0.0]], [[0.5, 0.9]], [[0.0, 0.0]]]))


def test_single_class_and_bad_shapes():
    p = torch.tensor([[[0.9, 0.1]]])
    assert torch.equal(resolve_overlaps(p, torch.zeros_like(p), [0.3]), p)
    with pytest.raises(ValueError, match=r"must both be \[N, H, W\]"):
        resolve_overlaps(p, torch.zeros(2, 1, 2), [0.3])
    with pytest.raises(ValueError, match="2 thresholds for 1 classes"):
        resolve_overlaps(p, p, [0.3, 0.3])


def test_config_validates_overlap():
    assert SeeDiffConfig().overlap == "attention"
    with pytest.raises(ValueError, match="overlap must be one of"):
        SeeDiffConfig(overlap="vote")


def test_separate_objects_are_unchanged_and_masks_stay_exclusive():
    """Two words on two self-attention blocks: nothing is contested, both options give the exact blocks."""
    maps = make_maps({"dog": {2: left_block_map(2)}, "cat": {2: right_block_map(2)}})
    left = (block_labels((16, 16)) == 0).numpy()
    for overlap in ("argmax", "attention"):
        r = segment(maps, ["dog", "cat"], config=SeeDiffConfig(pamr_iterations=0, overlap=overlap))
        assert np.array_equal(r.masks[0], left) and np.array_equal(r.masks[1], ~left), overlap
