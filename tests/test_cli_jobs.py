"""`seediff synthesize`, `annotate` and `show` on the random-weight tiny pipeline (structure, consistency of the
files with the COCO, resume messages, clear errors)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from seediff.cli import app
from seediff.coco import read_coco
from seediff.convert import segmentation_to_mask

pytest.importorskip("seediff.segment", reason="seediff.segment (masks helper) has not landed")


def _invoke(*argv):
    return CliRunner().invoke(app, [str(a) for a in argv])


def test_synthesize_writes_images_masks_overlays_and_a_consistent_coco(tmp_path, tiny_pipe_path):
    out = tmp_path / "data"
    args = ["synthesize", "--classes", "dog", "cat", "--per-class", "2", "--steps", "3", "--model", tiny_pipe_path,
            "--device", "cpu", "--out", out, "--no-progress"]
    r = _invoke(*args)
    assert r.exit_code == 0, r.output
    assert f"COCO: {out / 'coco.json'} (4 images" in r.output
    coco = read_coco(out / "coco.json")
    assert [c["name"] for c in coco["categories"]] == ["dog", "cat"]
    assert [im["file_name"] for im in coco["images"]] == [
        "images/cat-00000.png", "images/cat-00001.png", "images/dog-00000.png", "images/dog-00001.png"]
    for im in coco["images"]:
        item = im["file_name"][len("images/"):-len(".png")]
        cls = item.split("-")[0]
        with Image.open(out / im["file_name"]) as pic:
            assert pic.size == (im["width"], im["height"]) == (32, 32)
        mask = np.asarray(Image.open(out / "masks" / item / f"{cls}.png")) > 0
        anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        decoded = np.zeros_like(mask)
        for a in anns:
            assert coco["categories"][a["category_id"] - 1]["name"] == cls
            decoded |= segmentation_to_mask(a["segmentation"], 32, 32)
        np.testing.assert_array_equal(decoded, mask)  # the mask PNG and the COCO agree pixel for pixel
        assert Image.open(out / "overlays" / f"{item}.png").size == (32, 32)
        record = json.loads((out / "items" / f"{item}.json").read_text())
        assert record["prompt"] == f"a photo of a {cls}" and record["labels"] == [cls]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is True and manifest["planned"] == 4

    before = (out / "coco.json").read_bytes()
    again = _invoke(*args)
    assert "4 items, 4 already done, 0 done now" in again.output
    assert (out / "coco.json").read_bytes() == before

    changed = _invoke(*args[:-1], "--seed", "1", "--no-progress")
    assert changed.exit_code == 2 and "differs in: params.seed" in changed.output and "Traceback" not in changed.output


def test_annotate_folder_keeps_original_sizes(tmp_path, tiny_pipe_path):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    Image.new("RGB", (50, 30), (200, 40, 40)).save(photos / "wide.png")
    Image.new("RGB", (24, 40), (40, 40, 200)).save(photos / "sub" / "tall.jpg")
    out = tmp_path / "photos.json"
    r = _invoke("annotate", photos, "--classes", "circle", "square", "--out", out, "--model", tiny_pipe_path,
                "--device", "cpu", "--no-progress")
    assert r.exit_code == 0, r.output
    coco = read_coco(out)
    assert [(im["file_name"], im["width"], im["height"]) for im in coco["images"]] == [
        ("sub/tall.jpg", 24, 40), ("wide.png", 50, 30)]
    assert [c["name"] for c in coco["categories"]] == ["circle", "square"]
    work = tmp_path / "photos.json.work"
    records = [json.loads(p.read_text()) for p in sorted((work / "items").glob("*.json"))]
    assert {r["prompt"] for r in records} == {"a photo of a circle and a square"}
    for rec in records:
        for label in ("circle", "square"):
            m = Image.open(work / "masks" / rec["id"] / f"{label}.png")
            assert m.size == (rec["width"], rec["height"])


@pytest.mark.parametrize("argv, message", [
    (["annotate", "{tmp}/none", "--classes", "dog", "--out", "{tmp}/x.json"], "is not a folder"),
    (["synthesize", "--classes", "dog", "--prompt", "no slot", "--out", "{tmp}/o"], "exactly once"),
    (["synthesize", "--classes", "dog", "--out", "{tmp}/o", "--model", "{tmp}/missing-model"], "error:"),
    (["synthesize", "--classes", "dog", "--out", "{tmp}/o", "--executor", "spark"], "executor must be one of"),
    (["synthesize", "--classes", "dog", "--out", "{tmp}/o", "--method", "sam"], "--method must be one of daam"),
    (["annotate", "{tmp}", "--classes", "dog", "--out", "{tmp}/x.json", "--mode", "fast"], "--mode must be one of"),
])
def test_user_errors_are_one_line_without_traceback(tmp_path, argv, message):
    r = _invoke(*[a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output


def test_show_writes_masks_and_one_heat_map_per_class(tmp_path, tiny_pipe_path):
    image = tmp_path / "in.png"
    Image.new("RGB", (40, 32), (30, 160, 30)).save(image)
    out = tmp_path / "show.png"
    r = _invoke("show", image, "--classes", "circle", "square", "--out", out, "--model", tiny_pipe_path,
                "--device", "cpu", "--min-side", "64")
    assert r.exit_code == 0, r.output
    assert f"wrote {out}" in r.output
    pic = Image.open(out)
    # 3 tiles (masks, circle, square) of the image upscaled ×2 (min side 64 / 32), 4 px gaps, 18 px captions.
    assert pic.size == (3 * 80 + 2 * 4, 64 + 18)
