"""`seediff evaluate` (hand-computed IoU on hand-made COCO files) and `seediff convert ls2coco|coco2ls`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from seediff.cli import app, expand_multi
from seediff.coco import read_coco, to_coco, write_coco
from seediff.evaluate import evaluate, format_table

DATA = Path(__file__).parent / "data" / "ls_export"


def _box(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.fixture
def pair(tmp_path):
    """GT and predictions on two 20×20 images; IoUs worked out by hand in the test."""
    gt = to_coco({
        "a.png": [("dog", _box(20, 20, 0, 10, 0, 10)), ("cat", _box(20, 20, 10, 20, 10, 20))],
        "b.png": [("dog", _box(20, 20, 0, 4, 0, 5))],
        "c.png": [("cat", _box(20, 20, 0, 2, 0, 2))],  # no prediction for c.png at all
    }, categories=["dog", "cat"])
    pred = to_coco({
        "a.png": [("dog", _box(20, 20, 0, 10, 5, 15), 0.9), ("cat", _box(20, 20, 10, 20, 10, 20), 0.8)],
        "b.png": [("dog", _box(20, 20, 0, 4, 0, 5), 0.7), ("bird", _box(20, 20, 5, 6, 5, 6), 0.1)],
        "z.png": [("dog", _box(20, 20, 0, 1, 0, 1), 0.5)],  # not in the GT: ignored
    }, categories=["cat", "dog", "bird"])  # other category ids than the GT: matched by name
    write_coco(tmp_path / "gt.json", gt)
    write_coco(tmp_path / "pred.json", pred)
    return tmp_path / "pred.json", tmp_path / "gt.json"


def test_per_class_iou_by_hand(pair):
    result = evaluate(read_coco(pair[0]), read_coco(pair[1]))
    scores = {c.name: c for c in result.classes}
    # dog: a.png I = 10×5 = 50, U = 150; b.png I = U = 20 → 70 / 170.
    assert (scores["dog"].intersection, scores["dog"].union) == (70, 170)
    # cat: a.png exact (100/100); c.png GT 4 px, no prediction → 100 / 104.
    assert (scores["cat"].intersection, scores["cat"].union, scores["cat"].gt_pixels) == (100, 104, 104)
    # bird: only predicted (1 px) → IoU 0, and it counts in the mean.
    assert (scores["bird"].intersection, scores["bird"].union) == (0, 1)
    assert result.miou == pytest.approx((70 / 170 + 100 / 104 + 0) / 3)
    assert result.missing_predictions == ["c.png"] and result.extra_predictions == ["z.png"]
    assert [c.name for c in result.classes] == ["dog", "cat", "bird"]  # GT order, then predicted-only
    table = format_table(result)
    assert "| dog | 41.2 | 70 | 170 | 120 | 120 |" in table and "**45.8**" in table


def test_cli_evaluate_table_and_json(pair):
    runner = CliRunner()
    table = runner.invoke(app, ["evaluate", str(pair[0]), str(pair[1])])
    assert table.exit_code == 0, table.output
    assert "| cat | 96.2 |" in table.output and "1 without predictions" in table.output
    js = runner.invoke(app, ["evaluate", str(pair[0]), str(pair[1]), "--json"])
    data = json.loads(js.stdout)
    assert data["classes"]["dog"] == {"iou": 70 / 170, "intersection": 70, "union": 170, "gt_pixels": 120,
                                      "pred_pixels": 120}
    assert math.isclose(data["miou"], (70 / 170 + 100 / 104) / 3)


def test_cli_evaluate_user_errors_have_no_traceback(pair, tmp_path):
    runner = CliRunner()
    missing = runner.invoke(app, ["evaluate", str(tmp_path / "nope.json"), str(pair[1])])
    assert missing.exit_code == 2 and "error:" in missing.output and "Traceback" not in missing.output
    other = to_coco({"a.png": [("dog", _box(10, 10, 0, 5, 0, 5), 1.0)]}, categories=["dog"])
    write_coco(tmp_path / "small.json", other)
    wrong = runner.invoke(app, ["evaluate", str(tmp_path / "small.json"), str(pair[1])])
    assert wrong.exit_code == 2 and "differs from ground truth 20x20" in wrong.output
    (tmp_path / "bad.json").write_text("{not json")
    bad = runner.invoke(app, ["evaluate", str(tmp_path / "bad.json"), str(pair[1])])
    assert bad.exit_code == 2 and "not valid JSON" in bad.output and "Traceback" not in bad.output


def test_cli_convert_ls2coco_and_back(tmp_path):
    runner = CliRunner()
    out = tmp_path / "coco.json"
    r = runner.invoke(app, ["convert", "ls2coco", str(DATA / "polygon_task.json"), "--config", str(DATA / "config.xml"),
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    coco = read_coco(out)
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog", "sky", "car"]
    assert sorted(a["area"] for a in coco["annotations"]) == [20.0, 60.0]  # README: car 20 px, cat 60 px

    tasks_path = tmp_path / "tasks.json"
    r = runner.invoke(app, ["convert", "coco2ls", str(out), "--config", str(DATA / "config.xml"), "--out",
                            str(tasks_path), "--image-prefix", "/data/local-files/?d="])
    assert r.exit_code == 0, r.output
    tasks = json.loads(tasks_path.read_text())
    assert len(tasks) == 1 and tasks[0]["data"]["image"].startswith("/data/local-files/?d=")
    labels = sorted(lab for reg in tasks[0]["predictions"][0]["result"]
                    for lab in reg["value"].get("polygonlabels", []) + reg["value"].get("brushlabels", []))
    assert labels == ["cat"]  # 'car' is in no polygon/brush control: reported, not converted
    assert "warning:" in r.output and "car" in r.output

    bad = runner.invoke(app, ["convert", "ls2coco", str(DATA / "bad_regions.json"), "--out", str(tmp_path / "b.json")])
    assert bad.exit_code == 0 and bad.output.count("warning:") >= 3


def test_cli_ls2coco_from_predictions_and_empty_exports(tmp_path):
    runner = CliRunner()
    tasks = json.loads((DATA / "polygon_task.json").read_text())
    tasks[0]["predictions"] = [{"id": 5, "result": tasks[0].pop("annotations")[0]["result"], "score": 0.5}]
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    out = tmp_path / "coco.json"
    empty = runner.invoke(app, ["convert", "ls2coco", str(export), "--out", str(out)])
    assert empty.exit_code == 2 and not out.exists()
    assert ("error: nothing to convert: no task of " in empty.output
            and "has usable annotations (0 of 1 have any; 1 have predictions: add --from predictions); nothing "
                "written" in empty.output.replace("\n", ""))
    r = runner.invoke(app, ["convert", "ls2coco", str(export), "--from", "predictions", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert sorted(a["area"] for a in read_coco(out)["annotations"]) == [20.0, 60.0]
    bad = runner.invoke(app, ["convert", "ls2coco", str(export), "--from", "drafts", "--out", str(out)])
    assert bad.exit_code == 2 and "--from must be annotations or predictions, got 'drafts'" in bad.output
    export.write_text("[]")
    none = runner.invoke(app, ["convert", "ls2coco", str(export), "--out", str(tmp_path / "n.json")])
    assert none.exit_code == 2 and "(0 of 0 have any); nothing written" in none.output


def test_every_command_has_help_with_an_example():
    runner = CliRunner()
    for cmd in (["synthesize"], ["annotate"], ["evaluate"], ["convert", "ls2coco"], ["convert", "coco2ls"],
                ["preannotate"], ["show"]):
        r = runner.invoke(app, [*cmd, "--help"], env={"COLUMNS": "200"})
        assert r.exit_code == 0, (cmd, r.output)
        assert f"seediff {' '.join(cmd)} " in r.output and "Example" in r.output, r.output


def test_space_separated_classes_are_joined():
    assert expand_multi(["synthesize", "--classes", "dog", "traffic light", "--out", "x"]) == [
        "synthesize", "--classes", "dog,traffic light", "--out", "x"]
    assert expand_multi(["show", "im.png", "--classes=dog", "--out", "o.png"]) == [
        "show", "im.png", "--classes=dog", "--out", "o.png"]
