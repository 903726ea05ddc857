"""seediff.lsexport: Label Studio export → COCO (hand-written exports), COCO → tasks."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from label_studio_sdk.label_interface import LabelInterface
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from seediff.coco import coco_results, write_coco
from seediff.convert import rle_to_mask, segmentation_to_mask
from seediff.lsexport import ConversionIssue, coco_to_ls, ls_to_coco
from seediff.lsformat import categories_from_config

from ls_export_data import CONFIG, DATA, box, dog_brush, load

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
