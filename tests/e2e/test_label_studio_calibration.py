"""End to end: the backend learns from annotators through a real Label Studio 1.23.2.

A project of 60 scenes; predictions are retrieved for 40 of them with the model's defaults; the true masks of the
other 20 are submitted as annotations through Label Studio's API (which fires the ANNOTATION_CREATED webhooks the
backend verifies against the API), "Start Training" refits from all of them, and the 40 are retrieved again under
the calibrated model_version. Two projects: scenes off the distribution the defaults were tuned on (tinted
backgrounds, smaller shapes: bench/calibration.py's "shifted" set, split 0) must gain; scenes of that
distribution must not lose more than 0.01 mIoU. The numbers are printed and kept in artifacts/e2e/timings.json.
"""

from __future__ import annotations

import importlib.util
import sys
import time

import numpy as np
import pytest

from .conftest import ROOT, E2EImage, create_project, get_json, record_timing

pytestmark = pytest.mark.e2e

SHAPES = ("circle", "square", "triangle")
CONFIG = """<View>
  <Image name="image" value="$image"/>
  <PolygonLabels name="poly" toName="image">
    <Label value="Circle" predicted_values="circle"/><Label value="Square" predicted_values="square"/>
    <Label value="Triangle" predicted_values="triangle"/>
  </PolygonLabels>
  <BrushLabels name="brush" toName="image">
    <Label value="Circle" predicted_values="circle"/><Label value="Square" predicted_values="square"/>
    <Label value="Triangle" predicted_values="triangle"/>
  </BrushLabels>
</View>"""
N_FIT, N_HELD = 20, 40


def _bench():
    """bench/calibration.py, whose scene sets the measured numbers in docs/QUALITY.md come from."""
    spec = importlib.util.spec_from_file_location("bench_calibration", ROOT / "bench" / "calibration.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def write_scenes(label_studio, name: str) -> tuple[list[E2EImage], dict[str, dict[str, np.ndarray]]]:
    """The set's split-0 scenes as PNGs under Label Studio's local-files root, and their true masks by path."""
    from PIL import Image

    bench = _bench()
    make, offset = {"shifted": (bench.shifted_scene, bench.SHIFTED_OFFSET),
                    "in_distribution": (bench.in_distribution_scene, bench.IN_DIST_OFFSET)}[name]
    images, truth = [], {}
    for i in range(N_FIT + N_HELD):
        scene = make(offset + i)
        rel = f"e2e/cal-{name}-s{i:02d}.png"  # create_project syncs the e2e/ folder
        path = label_studio.files_root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(scene.image).save(path)
        h, w = scene.image.shape[:2]
        images.append(E2EImage(path, rel, w, h, {}))
        truth[rel] = scene.truth
    return images, truth


def annotation(truth: dict[str, np.ndarray]) -> list[dict]:
    """An annotator's result: each drawn shape's exact mask as a brush region of its label."""
    from seediff.lsformat import brush_region

    return [brush_region(mask, shape.capitalize(), from_name="brush", to_name="image")
            for shape, mask in truth.items() if mask.any()]


def retrieve(ls_client, project_id: int, task_ids: list[int]) -> None:
    """Label Studio's "Retrieve predictions" on the given tasks."""
    ls_client.actions.create(id="retrieve_tasks_predictions", project=project_id,
                             selected_items={"all": False, "included": task_ids})


def score(ls_client, tasks: dict[int, E2EImage], truth, version: str) -> dict:
    """mIoU (dataset-level per class) and spurious regions per image of the stored predictions of ``version``."""
    from .test_label_studio import region_mask

    inter = dict.fromkeys(SHAPES, 0)
    union = dict.fromkeys(SHAPES, 0)
    spurious = 0
    for task_id, image in tasks.items():
        preds = [p for p in ls_client.predictions.list(task=task_id) if p.model_version == version]
        assert len(preds) == 1, f"task {task_id}: {len(preds)} predictions of {version}"
        got: dict[str, np.ndarray] = {}
        for r in preds[0].result:
            m = got.setdefault(r["value"][r["type"]][0].lower(), np.zeros((image.height, image.width), bool))
            m |= region_mask(r, image.width, image.height)
        for c in SHAPES:
            gt = truth[image.rel].get(c, np.zeros((image.height, image.width), bool))
            p = got.get(c, np.zeros_like(gt))
            inter[c] += int((gt & p).sum())
            union[c] += int((gt | p).sum())
            spurious += int(p.any() and not gt.any())
    return {"miou": float(np.mean([inter[c] / union[c] for c in SHAPES if union[c]])),
            "spurious_per_image": spurious / len(tasks)}


@pytest.mark.parametrize("scenes", ["shifted", "in_distribution"])
def test_annotations_calibrate_the_project(label_studio, ls_client, backend, e2e_model, scenes):
    if e2e_model != "builtin:shapes":
        pytest.skip(f"calibration gains are only meaningful on the bundled model, not {e2e_model}")
    images, truth = write_scenes(label_studio, scenes)
    project = create_project(ls_client, label_studio, images, title=f"seediff e2e calibration {scenes}",
                             label_config=CONFIG)
    by_rel = {img.rel: task_id for task_id, img in project.tasks.items()}
    fit_ids = [by_rel[img.rel] for img in images[:N_FIT]]
    held = {by_rel[img.rel]: img for img in images[N_FIT:]}
    ml = ls_client.ml.create(project=project.id, url=backend.url, title="seediff")
    version = ls_client.ml.get(ml.id).model_version

    t0 = time.monotonic()
    retrieve(ls_client, project.id, list(held))
    before = score(ls_client, held, truth, version)

    for task_id, img in zip(fit_ids, images[:N_FIT]):  # fires ANNOTATION_CREATED webhooks (no credentials)
        ls_client.annotations.create(id=task_id, result=annotation(truth[img.rel]), project=project.id)
    ls_client.ml.train(id=ml.id)  # Start Training: the backend refits from the API's annotations
    deadline = time.monotonic() + 120
    state = {}
    while time.monotonic() < deadline:
        status, state = get_json(f"{backend.url}/calibration/{project.id}", timeout=10)
        if status == 200 and state.get("tasks", 0) >= N_FIT:
            break
        time.sleep(1)
    assert state.get("tasks", 0) >= N_FIT and state.get("revision", 0) >= 1, state

    # A forged notification (an annotation id Label Studio does not have) changes nothing.
    import httpx

    forged = httpx.post(f"{backend.url}/webhook", timeout=30, json={
        "action": "ANNOTATION_CREATED", "project": {"id": project.id},
        "task": {"id": fit_ids[0]}, "annotation": {"id": 987654321, "task": fit_ids[0], "result": []}})
    assert forged.status_code in (404, 422), forged.text
    assert get_json(f"{backend.url}/calibration/{project.id}", timeout=10)[1]["revision"] == state["revision"]

    retrieve(ls_client, project.id, list(held))  # Label Studio asks /setup first: the calibrated model_version
    new_version = ls_client.ml.get(ml.id).model_version
    assert new_version != version and new_version.startswith(version), (version, new_version)
    after = score(ls_client, held, truth, new_version)
    record_timing(f"calibration_{scenes}_s", time.monotonic() - t0)
    print(f"calibration e2e ({scenes}, {N_FIT} annotated, {N_HELD} held out): mIoU {before['miou']:.3f} -> "
          f"{after['miou']:.3f}, spurious/image {before['spurious_per_image']:.2f} -> "
          f"{after['spurious_per_image']:.2f}; {version} -> {new_version}")
    if scenes == "shifted":
        assert after["miou"] > before["miou"], (before, after)
    else:
        assert after["miou"] >= before["miou"] - 0.01, (before, after)
