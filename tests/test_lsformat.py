"""seediff.lsformat: Label Studio results and tasks from masks, regions read back (brush RLE, polygons, rectangles)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from label_studio_sdk.converter import brush
from label_studio_sdk.label_interface import LabelInterface

from seediff.lsexport import ls_to_coco
from seediff.lsformat import brush_region, ls_results, ls_task, polygon_region, region_to_mask

from ls_export_data import CONFIG, box, dog_brush, load

FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------- results and tasks


def test_ls_results_follow_the_holes_rule_and_validate_in_label_studio():
    li = LabelInterface(CONFIG)
    cat = box(10, 20, 1, 9, 1, 9)
    results = ls_results(
        [("dog", dog_brush(), 0.9), ("cat", cat, 0.6), ("cat", np.zeros((10, 20), bool), 0.1)],
        to_name="image", polygon_from_name="poly", brush_from_name="brush",
    )
    assert [r["type"] for r in results] == ["brushlabels", "polygonlabels"]  # the empty mask gives nothing
    dog_r, cat_r = results
    assert (dog_r["original_width"], dog_r["original_height"], dog_r["image_rotation"]) == (20, 10, 0)
    assert (dog_r["score"], cat_r["score"]) == (0.9, 0.6)
    assert cat_r["value"]["points"] == [[5.0, 10.0], [5.0, 90.0], [45.0, 90.0], [45.0, 10.0]]
    assert cat_r["value"]["closed"] is True
    assert (region_to_mask(dog_r) == dog_brush()).all() and (region_to_mask(cat_r) == cat).all()
    task = ls_task("/data/upload/1/x.jpg", results)
    assert task["data"] == {"image": "/data/upload/1/x.jpg"}
    assert task["predictions"][0]["score"] == pytest.approx(0.75)
    assert li.validate_prediction(task["predictions"][0]) is True
    only_poly = ls_results([("dog", dog_brush(), 0.9)], to_name="image", polygon_from_name="poly")
    assert [r["type"] for r in only_poly] == ["polygonlabels"]  # hole filled, as documented
    assert li.validate_prediction({"result": only_poly}) is True
    # Border-touching masks reach exactly 0 and 100 percent, which Label Studio accepts.
    (full,) = ls_results([("cat", np.ones((10, 20), bool), 0.3)], to_name="image", polygon_from_name="poly")
    assert full["value"]["points"] == [[0.0, 0.0], [0.0, 100.0], [100.0, 100.0], [100.0, 0.0]]
    assert li.validate_prediction({"result": [full]}) is True


def test_region_ids_are_unique_random_hex():
    masks = [("cat", box(40, 40, i, i + 1, 0, 40), 0.5) for i in range(0, 40, 2)]
    results = ls_results(masks, to_name="image", polygon_from_name="poly")
    ids = [r["id"] for r in results]
    assert len(ids) == 20 == len(set(ids))
    assert all(len(i) == 10 and int(i, 16) >= 0 for i in ids)


def test_masks_are_resized_to_the_natural_size():
    (region,) = ls_results([("dog", box(4, 4, 0, 2, 0, 2), 0.5)], to_name="image", brush_from_name="brush",
                           image_size=(8, 8))
    assert (region["original_width"], region["original_height"]) == (8, 8)
    assert (region_to_mask(region) == box(8, 8, 0, 4, 0, 4)).all()


def test_brush_rle_is_the_sdk_format_not_coco():
    region = brush_region(dog_brush(), "dog", from_name="brush", to_name="image")
    assert region["value"]["rle"] == load("brush_task.json")[0]["annotations"][0]["result"][0]["value"]["rle"]
    rgba = brush.decode_rle(bytes(region["value"]["rle"])).reshape(10, 20, 4)
    assert set(np.unique(rgba[:, :, 3])) == {0, 255}


def test_brush_foreground_is_the_alpha_channel():
    # A painted layer: colour everywhere, alpha 255 only where the annotator brushed (partial alpha 100 is not).
    mask = dog_brush()
    rgba = np.zeros((10, 20, 4), np.uint8)
    rgba[:, :, 0] = 255
    rgba[:, :, 3] = np.where(mask, 255, 0)
    rgba[0, 0, 3] = 100
    region = {"type": "brushlabels", "original_width": 20, "original_height": 10,
              "value": {"format": "rle", "rle": brush.encode_rle(rgba.ravel()), "brushlabels": ["dog"]}}
    assert (region_to_mask(region) == mask).all()


def test_long_brush_runs_round_trip():
    # 300x300x4 values in one run: longer than the SDK's 16-bit run field, so it is split.
    full = np.ones((300, 300), bool)
    full[299, 299] = False
    assert (region_to_mask(brush_region(full, "sky", from_name="brush", to_name="image")) == full).all()


@FAST
@given(st.tuples(st.integers(1, 16), st.integers(1, 16)).flatmap(
    lambda hw: arrays(np.bool_, hw, elements=st.booleans())))
def test_brush_round_trip_is_exact(mask):
    region = brush_region(mask, "dog", from_name="brush", to_name="image")
    region = json.loads(json.dumps(region))
    assert (region_to_mask(region) == mask).all()


@FAST
@given(
    st.integers(1, 4000), st.integers(1, 4000),
    st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=3, max_size=12),
)
def test_polygon_percent_to_pixels_within_half_a_pixel(width, height, unit_points):
    # Pixels → percent (our results) → pixels (export reader), as Label Studio hands them back.
    px = [c for x, y in unit_points for c in (x * width, y * height)]
    region = json.loads(json.dumps(polygon_region(px, "cat", width=width, height=height, from_name="poly",
                                                  to_name="image")))
    task = {"id": 1, "data": {"image": "x.jpg"}, "annotations": [{"id": 1, "result": [region]}]}
    coco, issues = ls_to_coco([task])
    assert issues == []
    (segm,) = coco["annotations"][0]["segmentation"]
    assert np.max(np.abs(np.array(segm) - np.array(px))) <= 0.5
    # And percent values as the UI stores them land on the same pixel positions.
    back = [c for p in region["value"]["points"] for c in (p[0] / 100 * width, p[1] / 100 * height)]
    assert np.max(np.abs(np.array(back) - np.array(px))) <= 0.5


def test_rotated_rectangle_turns_clockwise_about_its_top_left_corner():
    region = {
        "id": "r", "type": "rectanglelabels", "original_width": 100, "original_height": 100,
        "value": {"x": 50, "y": 10, "width": 20, "height": 10, "rotation": 90, "rectanglelabels": ["car"]},
    }
    # 20x10 px box at (50, 10) turned 90° clockwise on screen: spans x 40-50, y 10-30.
    assert (region_to_mask(region) == box(100, 100, 10, 30, 40, 50)).all()
