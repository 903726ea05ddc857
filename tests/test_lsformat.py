"""seediff.lsformat: Label Studio results and tasks, export → COCO (hand-written exports), COCO → tasks."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from label_studio_sdk.converter import brush
from label_studio_sdk.label_interface import LabelInterface
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from seediff.coco import coco_results, write_coco
from seediff.convert import rle_to_mask, segmentation_to_mask
from seediff.lsformat import (
    ConversionIssue, brush_region, categories_from_config, coco_to_ls, ls_results, ls_task, ls_to_coco,
    polygon_region, region_to_mask,
)

DATA = Path(__file__).parent / "data" / "ls_export"
CONFIG = (DATA / "config.xml").read_text()
FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def load(name: str) -> list:
    return json.loads((DATA / name).read_text())


def box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def dog_brush() -> np.ndarray:
    """The 'dog' brush of brush_task.json (see tests/data/ls_export/README.md)."""
    m = box(10, 20, 2, 8, 3, 10)
    m[4:6, 5:7] = False
    return m


def anns_of(coco: dict, image_id: int) -> list[dict]:
    return [a for a in coco["annotations"] if a["image_id"] == image_id]


def quiet(fn, *args):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def pycocotools_self_eval(path: Path) -> float:
    """COCO() + loadRes + COCOeval(segm) on a written file, predictions = its own annotations; AP."""
    dataset = json.loads(path.read_text())
    gt = quiet(COCO, str(path))
    scored = {**dataset, "annotations": [{**a, "score": 1.0} for a in dataset["annotations"]]}
    dt = quiet(gt.loadRes, coco_results(scored, dataset))
    ev = COCOeval(gt, dt, iouType="segm")
    quiet(ev.evaluate)
    quiet(ev.accumulate)
    quiet(ev.summarize)
    return float(ev.stats[0])


# ---------------------------------------------------------------------------------------- export → COCO


def test_categories_come_from_the_labeling_config():
    assert categories_from_config(CONFIG) == [
        {"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "sky"}, {"id": 4, "name": "car"},
    ]
    explicit = CONFIG.replace('<Label value="dog"/>', '<Label value="dog" category="9"/>', 1)
    assert [(c["id"], c["name"]) for c in categories_from_config(explicit)] == [
        (1, "cat"), (2, "sky"), (3, "car"), (9, "dog"),
    ]
    with pytest.raises(ValueError, match="labeling config does not parse"):
        categories_from_config("<View><Image")


def test_polygon_and_rectangle_task():
    coco, issues = ls_to_coco(load("polygon_task.json"), config=CONFIG)
    assert issues == []
    assert coco["images"] == [{"id": 1, "file_name": "/data/upload/1/cat.jpg", "width": 20, "height": 10}]
    cat, car = coco["annotations"]
    assert (cat["category_id"], cat["area"], cat["bbox"]) == (1, 60.0, [2.0, 2.0, 10.0, 6.0])
    assert cat["segmentation"] == [[2.0, 2.0, 12.0, 2.0, 12.0, 8.0, 2.0, 8.0]]
    assert (cat["ls_annotation_id"], cat["ls_region_id"]) == (11, "pCat01")
    assert (car["category_id"], car["area"], car["bbox"]) == (4, 20.0, [14.0, 1.0, 4.0, 5.0])


def test_brush_task_decodes_with_the_sdk_and_keeps_the_hole():
    coco, issues = ls_to_coco(load("brush_task.json"), config=CONFIG)
    assert issues == []
    dog, sky = coco["annotations"]
    assert isinstance(dog["segmentation"], dict)  # hole → RLE
    assert (rle_to_mask(dog["segmentation"]) == dog_brush()).all()
    assert (dog["category_id"], dog["area"]) == (2, 38.0)
    assert isinstance(sky["segmentation"], list)  # no hole → exact outline polygon
    assert (segmentation_to_mask(sky["segmentation"], 10, 20) == box(10, 20, 0, 2, 0, 20)).all()
    assert (sky["category_id"], sky["area"]) == (3, 40.0)
    rle_only, _ = ls_to_coco(load("brush_task.json"), config=CONFIG, segmentation="rle")
    assert all(isinstance(a["segmentation"], dict) for a in rle_only["annotations"])


def test_two_annotators_latest_or_all():
    latest, _ = ls_to_coco(load("two_annotators.json"), config=CONFIG)
    assert [(a["ls_annotation_id"], a["area"]) for a in latest["annotations"]] == [(32, 50.0)]
    every, _ = ls_to_coco(load("two_annotators.json"), config=CONFIG, keep="all")
    assert sorted((a["ls_annotation_id"], a["area"]) for a in every["annotations"]) == [(31, 48.0), (32, 50.0)]
    assert {a["image_id"] for a in every["annotations"]} == {3}


def test_cancelled_annotations_are_skipped():
    coco, issues = ls_to_coco(load("cancelled.json"), config=CONFIG)
    assert issues == []
    assert [i["id"] for i in coco["images"]] == [4]  # task 7 had only a cancelled annotation
    (ann,) = coco["annotations"]
    assert (ann["ls_annotation_id"], ann["area"], ann["bbox"]) == (42, 50.0, [10.0, 5.0, 10.0, 5.0])


def test_empty_tasks():
    coco, issues = ls_to_coco(load("empty_task.json"), config=CONFIG)
    assert coco["images"] == [] and coco["annotations"] == []
    assert [str(i) for i in issues] == [
        "task 6: no regions give the size of '/data/upload/1/nothing_here.jpg'; pass image_sizes to include it"
    ]
    coco, issues = ls_to_coco(load("empty_task.json"), image_sizes={"/data/upload/1/nothing_here.jpg": (20, 10)})
    assert issues == []
    assert coco["images"] == [{"id": 6, "file_name": "/data/upload/1/nothing_here.jpg", "width": 20, "height": 10}]


def test_bad_input_is_reported_and_the_rest_converts():
    coco, issues = ls_to_coco(load("bad_regions.json"), config=CONFIG)
    assert [str(i) for i in issues] == [
        "task 8, annotation 81, region 'twoPts': polygon has 2 points, needs at least 3",
        "task 8, annotation 81, region 'wrongSize': brush rle decodes to 960 values, a 20x10 RGBA image needs 800",
        "task 8, annotation 81, region 'noLabel': region has no label",
        "task #1: task must be a JSON object, got str",
        "task 9, annotation 91: 'result' must be a list",
        "task 9: no regions give the size of '/data/upload/1/bad_shape.jpg'; pass image_sizes to include it",
    ]
    assert issues[0] == ConversionIssue(8, "polygon has 2 points, needs at least 3", 81, "twoPts")
    (good,) = coco["annotations"]
    assert (good["ls_region_id"], good["area"]) == ("goodOne", 100.0)
    with pytest.raises(ValueError, match="a Label Studio JSON export is a list of tasks, got int"):
        ls_to_coco(42)


def test_predictions_convert_on_request():
    """An export with predictions and no annotations (pre-annotated, not yet reviewed): --from predictions."""
    tasks = load("polygon_task.json")
    ann = tasks[0].pop("annotations")[0]
    tasks[0]["predictions"] = [{"id": 5, "model_version": "seediff-x", "score": 0.7, "result": ann["result"][:1],
                                "created_at": "2024-05-01T10:00:00Z"}]
    nothing, _ = ls_to_coco(tasks, config=CONFIG)
    assert nothing["images"] == [] and nothing["annotations"] == []
    coco, issues = ls_to_coco(tasks, config=CONFIG, source="predictions")
    assert issues == []
    (only,) = coco["annotations"]
    assert (only["ls_annotation_id"], only["ls_region_id"], only["area"]) == (5, "pCat01", 60.0)
    with pytest.raises(ValueError, match="source must be 'annotations' or 'predictions', got 'drafts'"):
        ls_to_coco(tasks, source="drafts")


def test_labels_missing_from_the_config_are_reported():
    tasks = load("polygon_task.json")
    tasks[0]["annotations"][0]["result"][0]["value"]["polygonlabels"] = ["unicorn"]
    coco, issues = ls_to_coco(tasks, config=CONFIG)
    assert [str(i) for i in issues] == [
        "task 1, annotation 11, region 'pCat01': labels ['unicorn'] are not in the labeling config"
    ]
    assert len(coco["annotations"]) == 1


def test_whole_export_without_config_and_pycocotools_reads_it(tmp_path):
    tasks = [t for name in sorted(DATA.glob("*.json")) for t in json.loads(name.read_text())]
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    coco, issues = ls_to_coco(export)  # a path works too
    assert [c["name"] for c in coco["categories"]] == ["car", "cat", "dog", "sky"]  # sorted without config
    assert [i["id"] for i in coco["images"]] == [1, 2, 3, 4, 8]
    assert len(issues) == 7
    path = tmp_path / "coco.json"
    write_coco(path, coco)
    assert pycocotools_self_eval(path) == pytest.approx(1.0)


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


# ---------------------------------------------------------------------------------------- COCO → tasks


def test_coco_to_ls_round_trips_through_an_export():
    tasks = [t for name in ("polygon_task.json", "brush_task.json") for t in load(name)]
    coco, _ = ls_to_coco(tasks, config=CONFIG)
    coco["annotations"] = [a for a in coco["annotations"] if a["category_id"] != 4]  # car: no polygon control
    for ann in coco["annotations"]:
        ann["score"] = 0.5
    ls_tasks, issues = coco_to_ls(coco, config=CONFIG)
    assert issues == []
    li = LabelInterface(CONFIG)
    for task in ls_tasks:
        assert li.validate_prediction(task["predictions"][0]) is True
    assert [t["data"]["image"] for t in ls_tasks] == ["/data/upload/1/cat.jpg", "/data/upload/1/dog.png"]
    kinds = [[r["type"] for r in t["predictions"][0]["result"]] for t in ls_tasks]
    assert kinds == [["polygonlabels"], ["brushlabels", "brushlabels"]]  # sky: only the brush control has it
    # Reviewed in Label Studio and exported again: the same masks come back.
    export = [
        {"id": i + 1, "data": t["data"], "annotations": [{"id": 100 + i, "result": t["predictions"][0]["result"]}]}
        for i, t in enumerate(ls_tasks)
    ]
    again, issues = ls_to_coco(export, config=CONFIG)
    assert issues == []
    before = [segmentation_to_mask(a["segmentation"], 10, 20) for a in coco["annotations"]]
    after = [segmentation_to_mask(a["segmentation"], 10, 20) for a in again["annotations"]]
    assert len(before) == len(after) and all((b == a).all() for b, a in zip(before, after))


def test_coco_to_ls_reports_labels_the_control_lacks():
    coco, _ = ls_to_coco(load("polygon_task.json"), config=CONFIG)
    tasks, issues = coco_to_ls(coco, config=CONFIG)
    assert [str(i) for i in issues] == [
        "task /data/upload/1/cat.jpg, annotation 2: label 'car' is in no polygon or brush control"
    ]
    assert len(tasks[0]["predictions"][0]["result"]) == 1
    with pytest.raises(ValueError, match="no PolygonLabels or BrushLabels control"):
        coco_to_ls(coco)
