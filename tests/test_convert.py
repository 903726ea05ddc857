"""seediff.convert: masks ↔ polygons ↔ COCO RLE, checked against pycocotools and hand-computed values."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pycocotools.mask as mask_utils
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from seediff.convert import (
    area_bbox, encode_segmentation, has_holes, mask_to_polygons, mask_to_rle, polygons_to_mask, rle_to_mask,
    segmentation_to_mask,
)

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

small_masks = st.tuples(st.integers(1, 12), st.integers(1, 12)).flatmap(
    lambda hw: arrays(np.bool_, hw, elements=st.booleans())
)


def ring_mask() -> np.ndarray:
    """5×5 mask: a 3×3 square (rows/cols 1–3) with its centre pixel missing (a one-pixel hole)."""
    m = np.zeros((5, 5), bool)
    m[1:4, 1:4] = True
    m[2, 2] = False
    return m


def test_polygon_corners_follow_pycocotools_pixel_convention():
    # Pixels 2..5 span [2, 6): a polygon through those corners rasterises to exactly 4x4 pixels.
    m = polygons_to_mask([[2, 2, 6, 2, 6, 6, 2, 6]], 10, 10)
    expected = np.zeros((10, 10), bool)
    expected[2:6, 2:6] = True
    assert (m == expected).all()


def test_square_outline_is_its_four_corners():
    m = np.zeros((6, 8), bool)
    m[1:4, 2:7] = True  # rows 1-3, cols 2-6
    (poly,) = mask_to_polygons(m, tolerance=0)
    corners = sorted(zip(poly[0::2], poly[1::2]))
    assert corners == [(2.0, 1.0), (2.0, 4.0), (7.0, 1.0), (7.0, 4.0)]


def test_hole_goes_to_rle_with_exact_area():
    m = ring_mask()
    assert has_holes(m)
    segm = encode_segmentation(m)
    assert isinstance(segm, dict) and isinstance(segm["counts"], str) and segm["size"] == [5, 5]
    assert (rle_to_mask(segm) == m).all()
    assert area_bbox(segm, 5, 5) == (8.0, [1.0, 1.0, 3.0, 3.0])
    # Forcing polygons fills the hole: the outline is the 3x3 square.
    polys = encode_segmentation(m, mode="polygons", tolerance=0)
    assert area_bbox(polys, 5, 5) == (9.0, [1.0, 1.0, 3.0, 3.0])


def test_small_holes_below_min_area_do_not_force_rle():
    m = np.ones((8, 8), bool)
    m[3, 3] = False
    assert has_holes(m, min_area=1)
    assert not has_holes(m, min_area=2)
    assert isinstance(encode_segmentation(m, min_area=2), list)


def test_background_touching_the_border_is_not_a_hole():
    m = np.ones((5, 5), bool)
    m[0, 2] = m[1, 2] = False  # a notch from the top edge
    assert not has_holes(m)


def test_min_area_drops_small_components():
    m = np.zeros((20, 20), bool)
    m[1:3, 1:3] = True  # 4 px
    m[10:15, 10:15] = True  # 25 px
    assert len(mask_to_polygons(m, tolerance=0, min_area=1)) == 2
    (kept,) = mask_to_polygons(m, tolerance=0, min_area=10)
    assert min(kept[0::2]) == 10.0
    assert encode_segmentation(np.pad(np.ones((2, 2), bool), 3), min_area=10) == []


def test_thin_line_survives_coarse_tolerance():
    m = np.zeros((5, 40), bool)
    m[2, 3:35] = True
    polys = mask_to_polygons(m, tolerance=3.0)
    assert polys and all(len(p) >= 6 for p in polys)
    assert (polygons_to_mask(polys, 5, 40) == m).all()


def test_empty_mask_gives_nothing():
    m = np.zeros((4, 4), bool)
    assert mask_to_polygons(m) == []
    assert not has_holes(m)
    assert polygons_to_mask([], 4, 4).sum() == 0
    assert area_bbox(mask_to_rle(m), 4, 4) == (0.0, [0.0, 0.0, 0.0, 0.0])


def test_uncompressed_rle_is_column_major():
    # COCO RLE runs go down columns: [1 zero, 2 ones, 1 zero] on 2x2 → [[0, 1], [1, 0]].
    m = rle_to_mask({"size": [2, 2], "counts": [1, 2, 1]})
    assert m.tolist() == [[False, True], [True, False]]


def test_segmentation_to_mask_accepts_polygons_and_rle():
    m = ring_mask()
    assert (segmentation_to_mask(mask_to_rle(m), 5, 5) == m).all()
    assert segmentation_to_mask([[1, 1, 4, 1, 4, 4, 1, 4]], 5, 5).sum() == 9


@pytest.mark.parametrize(
    "polygons, exc, message",
    [
        ([[0, 0, 5, 5]], ValueError, "polygon 0 has 2 points, needs at least 3"),  # pycocotools would read a bbox
        ([[0, 0, 5, 5, 1]], ValueError, "polygon 0 has an odd number of coordinates (5)"),
        ([[0, 0, 5, 0, float("nan"), 5]], ValueError, "polygon 0 has non-finite coordinates"),
        ([["a", 0, 5, 0, 5, 5]], TypeError, "polygon 0 must be a flat list of numbers"),
        ({"size": [2, 2]}, TypeError, "polygons must be a list"),
    ],
)
def test_bad_polygons_raise_clear_errors(polygons, exc, message):
    with pytest.raises(exc, match=message.replace("(", r"\(").replace(")", r"\)")):
        polygons_to_mask(polygons, 10, 10)


def test_bad_masks_and_rle_raise_clear_errors():
    with pytest.raises(TypeError, match="threshold it first"):
        mask_to_polygons(np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match=r"mask must be 2-D \(H, W\), got shape \(1, 3, 3\)"):
        mask_to_rle(np.zeros((1, 3, 3), bool))
    counts = mask_to_rle(ring_mask())["counts"]
    with pytest.raises(ValueError, match="RLE counts cover 25 pixels, size 4x4 needs 16"):
        rle_to_mask({"size": [4, 4], "counts": counts})
    with pytest.raises(ValueError, match="RLE size"):
        segmentation_to_mask(mask_to_rle(ring_mask()), 5, 6)
    with pytest.raises(ValueError, match="truncated"):
        rle_to_mask({"size": [5, 5], "counts": counts[:-1] + "o"})
    with pytest.raises(ValueError, match="summing to 2\\*2 = 4"):
        rle_to_mask({"size": [2, 2], "counts": [1, 2]})


@FAST
@given(small_masks)
def test_rle_round_trip_is_exact_and_matches_pycocotools(mask):
    rle = mask_to_rle(mask)
    assert rle == json.loads(json.dumps(rle))
    assert (rle_to_mask(rle) == mask).all()
    area, bbox = area_bbox(rle, *mask.shape)
    assert area == mask.sum()
    if mask.any():
        ys, xs = np.nonzero(mask)
        assert bbox == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    reference = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert rle["counts"].encode() == reference["counts"]


@FAST
@given(small_masks)
def test_exact_outline_round_trips_unless_there_are_holes(mask):
    polys = mask_to_polygons(mask, tolerance=0, min_area=0)
    back = polygons_to_mask(polys, *mask.shape)
    assert all(len(p) >= 6 and len(p) % 2 == 0 for p in polys)
    assert (back >= mask).all()  # outlines never lose foreground
    assert (back == mask).all() == (not has_holes(mask, min_area=1))


@FAST
@given(small_masks, st.floats(0.0, 3.0))
def test_rings_always_have_three_points(mask, tolerance):
    for poly in mask_to_polygons(mask, tolerance=tolerance, min_area=0):
        assert len(poly) >= 6 and len(poly) % 2 == 0


@FAST
@given(
    st.floats(24, 40), st.floats(24, 40), st.floats(8, 20), st.floats(8, 20), st.floats(0, 180),
)
def test_simplified_polygons_keep_blobs(cx, cy, a, b, angle):
    mask = np.zeros((64, 64), np.uint8)
    cv2.ellipse(mask, ((cx, cy), (2 * a, 2 * b), angle), 1, -1)
    mask = mask.astype(bool)
    back = polygons_to_mask(mask_to_polygons(mask), 64, 64)
    assert (back & mask).sum() / (back | mask).sum() >= 0.95
