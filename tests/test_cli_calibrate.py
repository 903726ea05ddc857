"""``seediff calibrate`` from a COCO ground truth or a Label Studio export, and the file reaching ``annotate``."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from seediff.calibrate import Calibration, LabelCalibration, load_calibration, save_calibration
from seediff.cli import app
from seediff.lsformat import ls_results
from seediff.testing.shapes import SceneConfig, make_scene, to_coco_ground_truth

CONFIG = """<View><Image name="image" value="$image"/>
<BrushLabels name="brush" toName="image"><Label value="circle"/><Label value="square"/><Label value="triangle"/>
</BrushLabels></View>"""


@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("scenes")
    scenes = [make_scene(950_000 + i, SceneConfig(radius=(4.0, 6.0))) for i in range(10)]
    for s in scenes:
        Image.fromarray(s.image).save(d / f"shapes_{s.seed:06d}.png")
    (d.parent / "gt.json").write_text(json.dumps(to_coco_ground_truth(scenes)))
    tasks = []
    for k, s in enumerate(scenes, start=1):
        entries = [(w, m, 1.0) for w, m in s.class_masks().items()]
        result = ls_results(entries, to_name="image", image_size=(32, 32), polygon_from_name=None,
                            brush_from_name="brush")
        tasks.append({"id": k, "data": {"image": f"/data/upload/1/shapes_{s.seed:06d}.png"},
                      "annotations": [{"id": k, "result": result, "was_cancelled": False,
                                       "updated_at": "2026-12-03T17:00:00Z"}]})
    (d.parent / "export.json").write_text(json.dumps(tasks))
    (d.parent / "config.xml").write_text(CONFIG)
    return d


def test_calibrate_from_coco_and_from_a_label_studio_export_agree(scenes_dir, tmp_path):
    r = CliRunner().invoke(app, ["calibrate", str(scenes_dir.parent / "gt.json"), "--images", str(scenes_dir),
                                 "--out", str(tmp_path / "coco.cal.json"), "--device", "cpu", "--min-examples", "4"])
    assert r.exit_code == 0, r.output
    assert "10 images" in r.output and "circle: n=" in r.output
    from_coco = load_calibration(tmp_path / "coco.cal.json")
    assert from_coco.images == 10 and set(from_coco.labels) == {"circle", "square", "triangle"}
    r = CliRunner().invoke(app, ["calibrate", str(scenes_dir.parent / "export.json"), "--config",
                                 str(scenes_dir.parent / "config.xml"), "--images", str(scenes_dir),
                                 "--out", str(tmp_path / "ls.cal.json"), "--device", "cpu", "--min-examples", "4"])
    assert r.exit_code == 0, r.output
    from_ls = load_calibration(tmp_path / "ls.cal.json")
    assert from_ls.images == 10 and from_ls.mask_value == from_coco.mask_value
    assert {w: c.n for w, c in from_ls.labels.items()} == {w: c.n for w, c in from_coco.labels.items()}


def test_calibrate_input_errors_are_one_line(scenes_dir, tmp_path):
    (tmp_path / "junk.json").write_text(json.dumps({"not": "coco"}))
    r = CliRunner().invoke(app, ["calibrate", str(tmp_path / "junk.json"), "--images", str(scenes_dir),
                                 "--out", str(tmp_path / "c.json")])
    assert r.exit_code == 2 and "neither a COCO file" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["annotate", str(scenes_dir), "--classes", "circle", "--out", str(tmp_path / "a.json"),
                                 "--calibration", str(tmp_path / "junk.json")])
    assert r.exit_code == 2 and "not a usable calibration file" in r.output


def test_annotate_applies_a_calibration_file(scenes_dir, tmp_path):
    strict = Calibration("seediff", "pamr_threshold", None, {"square": LabelCalibration(20, 1.0)}, 20)
    save_calibration(strict, tmp_path / "strict.json")
    outs = {}
    for name, extra in (("plain", []), ("strict", ["--calibration", str(tmp_path / "strict.json")])):
        r = CliRunner().invoke(app, ["annotate", str(scenes_dir), "--classes", "circle", "square", "triangle",
                                     "--out", str(tmp_path / f"{name}.json"), "--device", "cpu", "--no-progress",
                                     *extra])
        assert r.exit_code == 0, r.output
        outs[name] = json.loads((tmp_path / f"{name}.json").read_text())
    square = lambda d: [a for a in d["annotations"] if a["category_id"] == 2]  # noqa: E731
    assert square(outs["plain"]) and not square(outs["strict"])  # no region score exceeds 1
    assert len(outs["strict"]["annotations"]) + len(square(outs["plain"])) == len(outs["plain"]["annotations"])
