"""segment(): SeeDiff end to end on hand-made block-structured maps (exact blocks), user points/boxes, multi-class,
empty masks with reasons, fp16 = fp32, determinism, config validation, baselines, and the tiny pipeline."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mask_fixtures import (
    block_labels, blocks_map, left_block_map, make_maps, right_block_map, scene_maps, two_colour_image,
)
from seediff.baseline import DAAMConfig, DiffuMaskConfig
from seediff.masks import ClassMasks, assign_labels, class_scores
from seediff.methods import CONFIGS, METHODS, SeeDiffConfig
from seediff.segment import output_hw, segment, working_hw

NO_PAMR = SeeDiffConfig(pamr_iterations=0)
LEFT = (block_labels((16, 16)) == 0).numpy()
RIGHT = ~LEFT


def _dog_maps(**kw):
    return make_maps({"dog": {2: left_block_map(2)}}, **kw)


def test_seediff_block_structure_gives_exact_block():
    r = segment(_dog_maps(), "dog", config=NO_PAMR)
    assert isinstance(r, ClassMasks) and r.labels == ["dog"] and r.method == "seediff"
    assert r.masks.dtype == bool and r.masks.shape == (1, 16, 16)
    assert np.array_equal(r.masks[0], LEFT)
    assert 0.5 < r.scores[0] <= 1.0 and r.scores.dtype == np.float32
    assert r.reasons == {} and r.config == NO_PAMR


def test_seediff_two_classes_exclusive_blocks():
    maps = make_maps({"dog": {2: left_block_map(2)}, "cat": {2: right_block_map(2)}})
    r = segment(maps, ["dog", "cat"], config=NO_PAMR)
    assert np.array_equal(r.masks[0], LEFT) and np.array_equal(r.masks[1], RIGHT)
    assert not (r.masks[0] & r.masks[1]).any()
    assert np.array_equal(r.label_map(), np.where(LEFT, 1, 2))


def test_seediff_follow_up_variants_same_block():
    for cfg in (dataclasses.replace(NO_PAMR, seeds="fixed"), dataclasses.replace(NO_PAMR, expansion="mean"),
                dataclasses.replace(NO_PAMR, seed_levels=(3, 2))):
        maps = make_maps({"dog": {2: left_block_map(2), 3: left_block_map(3)}})
        assert np.array_equal(segment(maps, "dog", config=cfg).masks[0], LEFT), cfg


def test_pamr_snaps_overshooting_mask_to_colour_edge():
    """Attention blocks end 2 cells (8 px) past the colour edge: thresholding overshoots, PAMR pulls it back."""
    img = two_colour_image((64, 64))
    gt = (block_labels((64, 64)) == 0).numpy()
    maps = _dog_maps(original_hw=(64, 64), image=img, split=0.625)
    before = segment(maps, "dog", config=NO_PAMR).masks[0]
    after = segment(maps, "dog").masks[0]
    assert (before != gt).sum() >= 128
    assert (after != gt).sum() <= 0.05 * (before != gt).sum()
    aligned = segment(_dog_maps(original_hw=(64, 64), image=img), "dog").masks[0]
    assert np.array_equal(aligned, gt)  # a mask already on the edge stays there


def test_boundary_snap_follows_the_photo_past_the_attention_grid():
    """A 64-px photo read by a 16-px model: without the snap the mask's edge sits on the grid (column 32), with
    it on the photo's colour edge (column 29); a photo no larger than the working size is left alone."""
    img = two_colour_image((64, 64), split=0.45)
    gt = (block_labels((64, 64), split=0.45) == 0).numpy()
    maps = _dog_maps(original_hw=(64, 64), image=img)
    maps.meta["image_hw"] = (16, 16)
    plain = segment(maps, "dog", config=NO_PAMR)
    snapped = segment(maps, "dog", config=dataclasses.replace(NO_PAMR, snap_iterations=10))
    assert (plain.masks[0] != gt).sum() == 3 * 64
    assert (snapped.masks[0] != gt).sum() <= 5
    assert snapped.notes == ["boundaries snapped to the photo at 64x64"] and plain.notes == []
    small = _dog_maps(image=two_colour_image((16, 16)))
    assert segment(small, "dog", config=SeeDiffConfig(snap_iterations=5)).notes == []


def test_pamr_skipped_without_image_is_noted():
    r = segment(_dog_maps(), "dog")
    assert r.notes == ["PAMR skipped: the maps carry no image"]
    assert np.array_equal(r.masks[0], LEFT)


THREE = (0.25, 0.5)  # blocks A = columns 0-3, B = 4-7, C = 8-15 of the 16-px image


def test_positive_click_puts_its_object_in_the_label_whatever_the_word_says():
    """The text finds block A; a click in B says "this one": the label is B (the click's self-attention region,
    not the word's); a second click, in C, adds C (clicks accumulate)."""
    maps = make_maps({"dog": {2: blocks_map(2, (0,), THREE)}}, split=THREE)
    lab = block_labels((16, 16), THREE).numpy()
    assert np.array_equal(segment(maps, "dog", config=NO_PAMR).masks[0], lab == 0)
    r = segment(maps, "dog", config=NO_PAMR, points=[(5, 8, 1)])  # a click in block B
    assert np.array_equal(r.masks[0], lab == 1) and "dog" not in r.reasons
    r = segment(maps, "dog", config=NO_PAMR, points=[(5, 8, 1), (12, 3, 1)])  # and one in C
    assert np.array_equal(r.masks[0], lab >= 1)


def test_a_click_takes_its_object_from_the_other_labels():
    """dog's text is on A, cat's on B and C; a 'dog' click in B gives B to dog, and cat keeps only C."""
    maps = make_maps({"dog": {2: blocks_map(2, (0,), THREE)}, "cat": {2: blocks_map(2, (1, 2), THREE)}}, split=THREE)
    lab = block_labels((16, 16), THREE).numpy()
    r = segment(maps, ["dog", "cat"], config=NO_PAMR, points={"dog": [(5, 8, 1)]})
    assert np.array_equal(r.masks[0], lab == 1) and np.array_equal(r.masks[1], lab == 2)


def test_negative_point_carves_a_region():
    maps = make_maps({"dog": {2: blocks_map(2, (0, 1), THREE)}}, split=THREE)
    lab = block_labels((16, 16), THREE).numpy()
    assert np.array_equal(segment(maps, "dog", config=NO_PAMR).masks[0], lab <= 1)  # text seeds in A and B
    r = segment(maps, "dog", config=NO_PAMR, points={"dog": [(5, 3, 0)]})  # "not this": a click in B
    assert np.array_equal(r.masks[0], lab == 0)


def test_box_moves_seeds_and_clips():
    r = segment(_dog_maps(), "dog", config=NO_PAMR, boxes=[(8, 0, 16, 16)])
    assert np.array_equal(r.masks[0], RIGHT)  # no text seed inside the box: its most attended cell seeds
    r = segment(_dog_maps(), "dog", config=NO_PAMR, boxes={"dog": [(0, 0, 4, 16)]})
    assert np.array_equal(r.masks[0], LEFT & (np.arange(16) < 4)[None])  # clipped to the box
    unclipped = segment(_dog_maps(), "dog", config=dataclasses.replace(NO_PAMR, clip_to_box=False), boxes=[(0, 0, 4, 16)])
    assert np.array_equal(unclipped.masks[0], LEFT)


def test_absent_and_flat_words_give_empty_masks_with_reasons():
    maps = make_maps({"dog": {lv: left_block_map(lv) for lv in (0, 1, 2)},
                      "cat": {lv: torch.full((16 >> lv, 16 >> lv), 0.4) for lv in (0, 1, 2)}})
    for method in METHODS:
        cfg = NO_PAMR if method == "seediff" else None
        r = segment(maps, ["dog", "cat", "car"], method=method, config=cfg)
        assert r.masks.shape == (3, 16, 16)
        assert r.masks[0].any(), method
        assert not r.masks[1].any() and not r.masks[2].any()
        assert "flat" in r.reasons["cat"] and r.reasons["car"] == "'car' is not in the prompt"
        assert r.scores[1] == r.scores[2] == 0.0


def test_fp16_maps_give_the_same_masks_as_fp32():
    img = two_colour_image((64, 64))
    for split in (0.5, 0.625):
        words = {"dog": {lv: left_block_map(lv) for lv in (0, 1, 2)}, "cat": {lv: right_block_map(lv) for lv in (0, 1, 2)}}
        m32 = make_maps(words, original_hw=(64, 64), image=img, split=split)
        m16 = make_maps(words, original_hw=(64, 64), image=img, split=split, dtype=torch.float16)
        for method in METHODS:
            a = segment(m32, ["dog", "cat"], method=method)
            b = segment(m16, ["dog", "cat"], method=method)
            assert np.array_equal(a.masks, b.masks), (method, split)


def test_deterministic():
    maps = make_maps({"dog": {2: left_block_map(2)}, "cat": {2: right_block_map(2)}}, original_hw=(40, 56),
                     image=two_colour_image((40, 56)))
    a = segment(maps, ["dog", "cat"])
    b = segment(maps, ["dog", "cat"], cache={})
    assert np.array_equal(a.masks, b.masks) and np.array_equal(a.scores, b.scores)
    assert a.masks.shape == (2, 40, 56)  # non-square image size


def test_baselines_on_block_maps():
    maps = make_maps({"dog": {lv: left_block_map(lv) for lv in (0, 1, 2)}})
    r = segment(maps, "dog", method="diffumask")
    assert np.array_equal(r.masks[0], LEFT) and r.method == "diffumask"
    r = segment(maps, "dog", method="diffumask", config=DiffuMaskConfig(threshold=0.3))
    assert np.array_equal(r.masks[0], LEFT)
    r = segment(maps, "dog", method="daam")
    assert np.array_equal(r.masks[0], LEFT)
    with pytest.raises(ValueError, match="only method='seediff'"):
        segment(maps, "dog", method="daam", points=[(1, 1)])
    boxed = segment(maps, "dog", method="daam", boxes=[(0, 0, 4, 16)])
    assert boxed.masks[0].sum() == 4 * 16


@pytest.mark.parametrize("seed", [0, 2])
def test_seediff_beats_cross_attention_baselines_when_self_attention_knows_the_object(seed):
    """Coarse, blurred cross-attention + colour-coherent self-attention: the expansion recovers the object."""
    maps, truth = scene_maps(seed)

    def iou(method, config=None):
        m = segment(maps, "dog", method=method, config=config).masks[0]
        return (m & truth).sum() / (m | truth).sum()

    seediff_iou = iou("seediff")
    assert seediff_iou > 0.85
    assert seediff_iou > max(iou("diffumask"), iou("daam")) + 0.05


def test_assign_labels_argmax_with_background_channel():
    probs = torch.tensor([[[0.2, 0.6, 0.9]], [[0.5, 0.7, 0.9]]])
    labels = assign_labels(probs, [0.3, 0.6])
    # px0: only class 0 > … no: 0.2 ≤ 0.3, 0.5 ≤ 0.6 → background; px1: 0.6 > 0.3, 0.7 > 0.6 → class 1;
    # px2: tie 0.9/0.9 → the earlier class
    assert labels.tolist() == [[0, 2, 1]]
    assert class_scores(probs, labels).tolist() == pytest.approx([0.9, 0.7])


def test_errors():
    maps = _dog_maps()
    with pytest.raises(ValueError, match="method must be one of"):
        segment(maps, "dog", method="sam")
    with pytest.raises(TypeError, match="takes a DiffuMaskConfig"):
        segment(maps, "dog", method="diffumask", config=NO_PAMR)
    with pytest.raises(ValueError, match="duplicate class words"):
        segment(maps, ["dog", "dog"])
    with pytest.raises(ValueError, match="non-empty list"):
        segment(maps, [])
    with pytest.raises(ValueError, match=r"levels \[0\] .* no recorded self-attention; recorded: \[1, 2\]"):
        segment(make_maps({"dog": {2: left_block_map(2)}}, self_levels=(1, 2)), "dog")
    with pytest.raises(ValueError, match=r"seed_levels \[3\] have no recorded cross-attention"):
        segment(maps, "dog", config=SeeDiffConfig(seed_levels=(3,)))


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(seed_levels=()), "seed_levels"), (dict(expand_level=-1), "expand_level"),
        (dict(background_levels=[1, 0]), "background_levels"), (dict(seeds="kmeans"), "seeds must be"),
        (dict(expansion="max"), "expansion must be"), (dict(threshold=1.0), "threshold"),
        (dict(alpha=-0.1), "alpha"), (dict(pamr_iterations=-1), "pamr_iterations"),
        (dict(pamr_iterations=2.5), "pamr_iterations"), (dict(pamr_dilations=(0,)), "pamr_dilations"),
        (dict(pamr_sigma_scale=0.0), "pamr_sigma_scale"), (dict(seed_power=0), "seed_power"),
        (dict(upsample="nearest"), "upsample"), (dict(work_max_side=4), "work_max_side"),
        (dict(flat_eps=0), "flat_eps"), (dict(snap_iterations=-1), "snap_iterations"),
        (dict(snap_dilations=()), "snap_dilations"), (dict(snap_max_side=4), "snap_max_side"),
    ],
)
def test_seediff_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        SeeDiffConfig(**kw)


def test_baseline_config_validation_and_defaults():
    assert SeeDiffConfig().pamr_iterations == 100 and SeeDiffConfig().threshold == 0.3
    assert DAAMConfig().tau == 0.4 and DiffuMaskConfig().levels == (2, 1, 0)
    with pytest.raises(ValueError, match="tau"):
        DAAMConfig(tau=1.5)
    with pytest.raises(ValueError, match="threshold"):
        DiffuMaskConfig(threshold=-0.1)
    with pytest.raises(ValueError, match="levels"):
        DiffuMaskConfig(levels=())
    assert set(METHODS) == set(CONFIGS) == {"seediff", "diffumask", "daam"}


def test_sizes():
    maps = _dog_maps(original_hw=None)
    assert output_hw(maps) == (128, 128)  # latent × 8 when nothing else is known
    maps.meta["image_hw"] = (96, 80)
    assert output_hw(maps) == (96, 80)
    assert working_hw((1024, 768), 512) == (512, 384) and working_hw((100, 60), 512) == (100, 60)


# ---- the tiny pipeline, end to end --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def traced(tiny_pipe):
    from seediff.modes import generate

    return generate(tiny_pipe, "a photo of a dog and a cat", seed=0, steps=4, height=32, width=48)


def test_tiny_pipeline_end_to_end(traced):
    maps = traced.maps
    for method in METHODS:
        r = segment(maps, ["dog", "cat", "car"], method=method)
        assert r.masks.shape == (3, 32, 48) and r.masks.dtype == bool
        assert r.scores.shape == (3,) and r.scores.dtype == np.float32
        assert not (r.masks.sum(0) > 1).any()
        assert r.reasons["car"] == "'car' is not in the prompt"
        assert all(0.0 <= s <= 1.0 for s in r.scores)


def test_tiny_pipeline_fp16_maps_equal_fp32(traced):
    maps = traced.maps
    m16 = dataclasses.replace(maps, cross={k: v.half() for k, v in maps.cross.items()},
                              self_attn={k: v.half() for k, v in maps.self_attn.items()})
    m32 = dataclasses.replace(m16, cross={k: v.float() for k, v in m16.cross.items()},
                              self_attn={k: v.float() for k, v in m16.self_attn.items()})
    for method in METHODS:
        assert np.array_equal(segment(m16, ["dog", "cat"], method=method).masks,
                              segment(m32, ["dog", "cat"], method=method).masks), method
