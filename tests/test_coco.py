"""seediff.coco: datasets from masks, shards, validation, atomic deterministic files, read by pycocotools."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from seediff.coco import coco_results, merge_coco, read_coco, to_coco, validate_coco, write_coco, write_json


@dataclass(frozen=True)
class FakeClassMasks:
    """Same fields as seediff.masks.ClassMasks (duck typing: to_coco must not depend on the engine class)."""

    labels: list[str]
    masks: np.ndarray
    scores: list[float]


def box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def sample_images() -> dict:
    """Three images: b.png (ClassMasks, a hole), a.png (tuples), c.png (no masks, size given)."""
    donut = box(20, 30, 2, 12, 2, 12)
    donut[5:8, 5:8] = False  # 9 px hole → RLE
    b = FakeClassMasks(["dog", "cat"], np.stack([donut, box(20, 30, 14, 18, 20, 28)]), [0.9, 0.4])
    a = [("cat", box(10, 10, 0, 5, 0, 4), 0.7)]
    return {"b.png": b, "a.png": a, "c.png": []}


def run_quietly(fn, *args):
    """pycocotools prints progress; keep test output readable."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def check_with_pycocotools(path, predictions=None) -> float:
    """COCO() loads the file, loadRes takes results from it, COCOeval(segm) runs; returns AP@[.5:.95]."""
    gt = run_quietly(COCO, str(path))
    dataset = json.loads(path.read_text())
    preds = predictions if predictions is not None else dataset
    if "score" not in (preds["annotations"][0] if preds["annotations"] else {}):
        preds = {**preds, "annotations": [{**a, "score": 1.0} for a in preds["annotations"]]}
    results = coco_results(preds, dataset)
    dt = run_quietly(gt.loadRes, results)
    ev = COCOeval(gt, dt, iouType="segm")
    run_quietly(ev.evaluate)
    run_quietly(ev.accumulate)
    run_quietly(ev.summarize)
    return float(ev.stats[0])


def test_to_coco_structure_and_hand_values():
    ds = to_coco(sample_images(), sizes={"c.png": (64, 48)})
    assert [(i["id"], i["file_name"], i["width"], i["height"]) for i in ds["images"]] == [
        (1, "a.png", 10, 10), (2, "b.png", 30, 20), (3, "c.png", 64, 48),
    ]
    assert ds["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]  # sorted names
    a_cat, b_dog, b_cat = ds["annotations"]
    assert (a_cat["id"], a_cat["image_id"], a_cat["category_id"]) == (1, 1, 1)
    assert a_cat["segmentation"] == [[0.0, 0.0, 0.0, 5.0, 4.0, 5.0, 4.0, 0.0]]
    assert (a_cat["area"], a_cat["bbox"], a_cat["score"], a_cat["iscrowd"]) == (20.0, [0.0, 0.0, 4.0, 5.0], 0.7, 0)
    assert isinstance(b_dog["segmentation"], dict)  # the hole makes it RLE
    assert (b_dog["area"], b_dog["bbox"], b_dog["category_id"]) == (91.0, [2.0, 2.0, 10.0, 10.0], 2)
    assert (b_cat["area"], b_cat["bbox"], b_cat["score"]) == (32.0, [20.0, 14.0, 8.0, 4.0], 0.4)
    validate_coco(ds)


def test_categories_given_fix_ids_and_reject_unknown_labels():
    ds = to_coco(sample_images(), categories=["dog", "cat", "bird"], sizes={"c.png": (8, 8)})
    assert [(c["id"], c["name"]) for c in ds["categories"]] == [(1, "dog"), (2, "cat"), (3, "bird")]
    assert [a["category_id"] for a in ds["annotations"]] == [2, 1, 2]
    ds = to_coco({"x.png": [("cat", box(4, 4, 0, 2, 0, 2))]}, categories=[{"id": 17, "name": "cat"}])
    assert ds["annotations"][0]["category_id"] == 17 and "score" not in ds["annotations"][0]
    with pytest.raises(ValueError, match="label 'dog' is not among the categories"):
        to_coco({"x.png": [("dog", box(4, 4, 0, 2, 0, 2))]}, categories=["cat"])


def test_sizes_resize_masks_to_the_natural_size():
    ds = to_coco({"x.png": [("cat", box(4, 4, 0, 2, 0, 2))]}, sizes={"x.png": (8, 8)})
    assert (ds["annotations"][0]["area"], ds["annotations"][0]["bbox"]) == (16.0, [0.0, 0.0, 4.0, 4.0])


def test_empty_and_bad_inputs():
    ds = to_coco({"x.png": [("cat", np.zeros((4, 4), bool))]})
    assert ds["annotations"] == [] and ds["images"][0]["width"] == 4
    with pytest.raises(ValueError, match="no masks and no entry in sizes"):
        to_coco({"x.png": []})
    with pytest.raises(ValueError, match="file names must be unique"):
        to_coco([("x.png", []), ("x.png", [])], sizes={"x.png": (2, 2)})
    with pytest.raises(ValueError, match="masks must be N×H×W with N labels"):
        to_coco({"x.png": FakeClassMasks(["cat"], np.zeros((2, 4, 4), bool), [0.1, 0.2])})


def test_written_files_load_in_pycocotools_and_self_evaluation_is_perfect(tmp_path):
    path = tmp_path / "ds.json"
    write_coco(path, to_coco(sample_images(), sizes={"c.png": (8, 8)}))
    assert check_with_pycocotools(path) == pytest.approx(1.0)


def test_results_match_ground_truth_by_file_name_and_category_name(tmp_path):
    gt = to_coco({"a.png": [("cat", box(10, 10, 0, 5, 0, 5))], "b.png": [("dog", box(10, 10, 0, 5, 0, 5))]})
    # Predictions number things differently, include an image and a class the ground truth lacks.
    pred = to_coco(
        {"b.png": [("dog", box(10, 10, 0, 5, 0, 5), 0.8), ("zebra", box(10, 10, 5, 9, 5, 9), 0.5)],
         "z.png": [("dog", box(10, 10, 0, 5, 0, 5), 0.8)]},
        categories=["zebra", "dog"],
    )
    results = coco_results(pred, gt)
    assert [(r["image_id"], r["category_id"], r["score"]) for r in results] == [(2, 2, 0.8)]
    assert isinstance(results[0]["segmentation"]["counts"], str)
    path = tmp_path / "gt.json"
    write_coco(path, gt)
    # dog on b.png found, cat on a.png missed: AP = mean over the two categories = 0.5.
    assert check_with_pycocotools(path, pred) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="prediction size 5x5 differs from ground truth 10x10"):
        coco_results(to_coco({"a.png": [("cat", box(5, 5, 0, 2, 0, 2), 0.5)]}), gt)


def test_output_is_byte_identical_whatever_the_input_order(tmp_path):
    items = list(sample_images().items())
    write_coco(tmp_path / "1.json", to_coco(items, sizes={"c.png": (8, 8)}))
    write_coco(tmp_path / "2.json", to_coco(items[::-1], sizes={"c.png": (8, 8)}))
    assert (tmp_path / "1.json").read_bytes() == (tmp_path / "2.json").read_bytes()


def test_merged_shards_equal_the_whole_in_any_order(tmp_path):
    images = sample_images()
    cats = ["cat", "dog"]
    whole = to_coco(images, categories=cats, sizes={"c.png": (8, 8)})
    s1 = to_coco({"b.png": images["b.png"]}, categories=cats)
    s2 = to_coco({"c.png": [], "a.png": images["a.png"]}, categories=cats, sizes={"c.png": (8, 8)})
    write_coco(tmp_path / "whole.json", whole)
    write_coco(tmp_path / "m12.json", merge_coco([s1, s2]))
    write_coco(tmp_path / "m21.json", merge_coco([s2, s1]))
    assert (tmp_path / "m12.json").read_bytes() == (tmp_path / "whole.json").read_bytes()
    assert (tmp_path / "m21.json").read_bytes() == (tmp_path / "whole.json").read_bytes()
    with pytest.raises(ValueError, match="image 'b.png' is also in an earlier shard"):
        merge_coco([s1, s1])
    with pytest.raises(ValueError, match="category .* conflicts"):
        merge_coco([s1, to_coco({"q.png": [("x", box(2, 2, 0, 1, 0, 1))]})])


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "out.json"
    write_json(path, {"b": 1, "a": [1.5, "é"]})
    assert path.read_bytes() == '{"a":[1.5,"é"],"b":1}\n'.encode()
    with pytest.raises(ValueError):
        write_json(path, {"score": float("nan")})
    assert json.loads(path.read_text()) == {"a": [1.5, "é"], "b": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left behind


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("images"), "images: missing or not a list"),
        (lambda d: d["annotations"][0].update(image_id=99), "annotation id 1: image_id 99 is not an image"),
        (lambda d: d["annotations"][0].update(category_id=7), "annotation id 1: category_id 7 is not a category"),
        (lambda d: d["annotations"][0].update(segmentation=[[0, 0, 1, 1]]), "polygon 0 has 2 points"),
        (lambda d: d["annotations"][1].update(segmentation={"size": [5, 5], "counts": "25"}),
         "annotation id 2: segmentation: RLE counts cover"),
        (lambda d: d["images"][0].update(width=0), "images\\[0\\]: 'width' and 'height' must be positive"),
        (lambda d: d["annotations"].append(dict(d["annotations"][0])), "annotation id 1: duplicate"),
    ],
)
def test_read_coco_names_the_bad_element(tmp_path, mutate, message):
    ds = to_coco(sample_images(), sizes={"c.png": (8, 8)})
    mutate(ds)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(ds))
    with pytest.raises(ValueError, match=message):
        read_coco(path)
    with pytest.raises(ValueError, match="invalid COCO"):
        write_coco(tmp_path / "never.json", ds)
    assert not (tmp_path / "never.json").exists()


def test_read_coco_round_trip_and_bad_json(tmp_path):
    ds = to_coco(sample_images(), sizes={"c.png": (8, 8)})
    write_coco(tmp_path / "ok.json", ds)
    assert read_coco(tmp_path / "ok.json") == json.loads(json.dumps(ds))
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        read_coco(tmp_path / "broken.json")
