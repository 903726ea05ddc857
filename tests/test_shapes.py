"""The procedural shapes world: deterministic by seed, masks that agree with the pixels, honest captions."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from seediff.testing import build_tokenizer
from seediff.testing.shapes import (
    COLOURS, SHAPES, VOCABULARY, SceneConfig, ShapeObject, make_scene, make_scenes, render_scene,
    to_coco_ground_truth,
)


def test_same_seed_same_scene_and_different_seeds_differ():
    a, b = make_scene(7), make_scene(7)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.instance_masks, b.instance_masks)
    assert (a.caption, a.objects, a.background) == (b.caption, b.objects, b.background)
    others = make_scenes(range(8, 16))
    assert all(not np.array_equal(a.image, s.image) for s in others)


def test_masks_are_exactly_the_object_pixels():
    for scene in make_scenes(range(40)):
        fg = scene.instance_masks.any(0)
        assert scene.instance_masks.sum(0).max() <= 1, "instances must not overlap"
        for obj, mask in zip(scene.objects, scene.instance_masks):
            assert mask.sum() > 20
            assert (scene.image[mask] == COLOURS[obj.colour]).all()
        # Background pixels are grey (R = G = B); object colours are not, so no object pixel hides outside a mask.
        bg = scene.image[~fg]
        assert (bg[:, 0] == bg[:, 1]).all() and (bg[:, 1] == bg[:, 2]).all()
        assert scene.image.shape == (32, 32, 3) and scene.image.dtype == np.uint8


def test_hand_computed_square_mask():
    # Half-extent 0.85 * 2 = 1.7 px around 4: pixel centres in [2.3, 5.7] are 2.5, 3.5, 4.5, 5.5 -> rows/cols 2..5.
    obj = ShapeObject("square", "red", 4.0, 4.0, 2.0)
    image, masks = render_scene([obj], np.zeros((16, 16, 3), np.uint8))
    expected = np.zeros((16, 16), bool)
    expected[2:6, 2:6] = True
    assert np.array_equal(masks[0], expected)
    assert (image[2:6, 2:6] == COLOURS["red"]).all() and image.astype(int).sum() == 16 * sum(COLOURS["red"])


def test_two_object_scenes_have_distinct_shapes_and_colours_and_caption_names_shapes():
    for scene in make_scenes(range(30), n_objects=2):
        assert len({o.shape for o in scene.objects}) == 2 and len({o.colour for o in scene.objects}) == 2
        for o in scene.objects:
            assert o.shape in scene.caption.split()
            assert (o.colour in scene.caption.split()) == scene.named_colours
        assert set(scene.class_masks()) == set(scene.classes)


def test_captions_sometimes_omit_colours_and_use_only_vocabulary_words():
    scenes = make_scenes(range(200))
    named = [s.named_colours for s in scenes]
    assert 0.3 < np.mean(named) < 0.7
    assert 0.3 < np.mean([len(s.objects) == 2 for s in scenes]) < 0.7
    vocab = set(VOCABULARY)
    assert all(set(s.caption.split()) <= vocab for s in scenes)
    forced = make_scene(3, name_colours=False)
    assert not any(c in forced.caption.split() for c in COLOURS)


def test_vocabulary_words_are_single_tokens():
    tok = build_tokenizer(VOCABULARY)
    for w in SHAPES + tuple(COLOURS):
        assert len(tok(w, add_special_tokens=False).input_ids) == 1


def test_coco_ground_truth_round_trips_the_masks():
    scenes = make_scenes(range(5))
    coco = to_coco_ground_truth(scenes)
    assert [c["name"] for c in coco["categories"]] == list(SHAPES)
    assert len(coco["annotations"]) == sum(len(s.objects) for s in scenes)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    for ann in coco["annotations"]:
        scene = scenes[ann["image_id"] - 1]
        k = scene.classes.index(names[ann["category_id"]])
        decoded = mask_utils.decode({**ann["segmentation"], "counts": ann["segmentation"]["counts"].encode()})
        assert np.array_equal(decoded.astype(bool), scene.instance_masks[k])
        assert ann["area"] == scene.instance_masks[k].sum()


def test_64px_scenes_scale_the_shapes():
    small, big = make_scene(5, SceneConfig(size=32)), make_scene(5, SceneConfig(size=64))
    assert big.image.shape == (64, 64, 3)
    assert big.instance_masks.sum() > 3 * small.instance_masks.sum()


def test_bad_input_messages():
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        make_scene(-1)
    with pytest.raises(ValueError, match="n_objects must be 1, 2 or 3"):
        make_scene(0, n_objects=4)
    with pytest.raises(ValueError, match="p_two \\+ p_three must be <= 1"):
        SceneConfig(p_two=0.7, p_three=0.4)
    with pytest.raises(ValueError, match="rotation must be in"):
        SceneConfig(rotation=90)
    with pytest.raises(ValueError, match="size must be an int >= 16"):
        SceneConfig(size=8)
    with pytest.raises(ValueError, match="p_colour must be in"):
        SceneConfig(p_colour=1.5)


RICH = SceneConfig(p_two=0.45, p_three=0.25, p_free_colour=0.5, p_tinted=0.5, rotation=15, radius=(3.0, 8.5))


def test_rich_world_scenes_are_exact_and_captioned_by_what_is_there():
    """The rich training world: 1–3 objects, unnamed colours never named in the caption, masks exact and apart."""
    scenes = [make_scene(1_000_000 + i, RICH) for i in range(300)]
    counts = np.bincount([len(s.objects) for s in scenes], minlength=4)
    assert counts[1] and counts[2] and counts[3]
    free = tinted = 0
    for s in scenes:
        assert s.instance_masks.sum(0).max() <= 1, "objects overlap"
        for obj, m in zip(s.objects, s.instance_masks):
            assert m.any()
            rgb = np.array(obj.rgb if obj.rgb is not None else COLOURS[obj.colour])
            assert (s.image[m] == rgb).all(), "a mask is exactly the pixels of its object's colour"
            assert obj.shape in s.caption
            free += obj.rgb is not None
            if obj.rgb is not None:
                assert obj.colour == "" and s.class_mask("").sum() == 0
        for word in COLOURS:  # a colour word in the caption only for an object of that named colour
            assert (word in s.caption.split()) <= any(o.colour == word for o in s.objects)
        grey = s.image[s.instance_masks.sum(0) == 0]
        tinted += bool(np.abs(grey.astype(int) - grey.mean(1, keepdims=True)).max() > 2)
    assert free > 100 and tinted > 80
    assert all((a.image == b.image).all() for a, b in zip(scenes[:20], [make_scene(1_000_000 + i, RICH) for i in range(20)]))


def test_turned_shapes_keep_their_area():
    """A turned square / triangle is the upright one turned: same area within rasterisation error."""
    for shape in ("square", "triangle"):
        upright = render_scene([ShapeObject(shape, "red", 32.0, 32.0, 12.0)], np.zeros((64, 64, 3), np.uint8))[1]
        turned = render_scene([ShapeObject(shape, "red", 32.0, 32.0, 12.0, 30.0)], np.zeros((64, 64, 3), np.uint8))[1]
        assert abs(int(turned.sum()) - int(upright.sum())) < 0.05 * upright.sum()
        assert (turned != upright).sum() > 0.05 * upright.sum()
