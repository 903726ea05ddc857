"""End to end against a real Label Studio 1.23.2: connect the seediff backend, retrieve predictions, check
what Label Studio stored, and look at the labeling page in headless Chromium.

Needs `.ls-venv` (Label Studio), Debian's chromium and playwright; `.ci/run` provides all three. Locally the
tests skip with the reason when a piece is missing; under ``CI`` they fail instead.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import ARTIFACTS, CONTROL_LABELS, E2EProject, create_project, record_timing, unavailable

pytestmark = pytest.mark.e2e

ML_CONNECTED = "CO"  # MLBackendState.CONNECTED in Label Studio's ml/models.py


def check_region(region: dict, width: int, height: int) -> tuple[str, str]:
    """Assert one stored region is a well-formed polygon or brush of a configured label; return (type, label)."""
    name = region.get("from_name")
    assert name in CONTROL_LABELS, f"region from unknown control {name!r}: {region}"
    kind, labels = CONTROL_LABELS[name]
    assert region["to_name"] == "image" and region["type"] == kind, region
    assert (region["original_width"], region["original_height"]) == (width, height), region
    value = region["value"]
    assert len(value[kind]) == 1 and value[kind][0] in labels, f"label {value[kind]} not in {sorted(labels)}"
    if kind == "polygonlabels":
        points = np.asarray(value["points"], dtype=float)
        assert points.ndim == 2 and points.shape[1] == 2 and len(points) >= 3, value["points"]
        assert points.min() >= 0.0 and points.max() <= 100.0, "polygon points must be percentages"
    else:
        from label_studio_sdk.converter.brush import decode_rle

        assert value["format"] == "rle"
        flat = decode_rle(value["rle"])
        assert flat.size == width * height * 4, f"brush RLE decodes to {flat.size} values, not {width}x{height}x4"
        assert flat.reshape(height, width, 4)[..., 3].any(), "brush mask is empty"
    return kind, value[kind][0]


@pytest.fixture(scope="module")
def predicted(label_studio, ls_client, e2e_images, backend) -> dict:
    """A project with 4 tasks (3 via local-files storage, 1 uploaded), the backend connected, and
    Label Studio's "Retrieve Predictions" action run on all tasks. Returns what the tests check."""
    project = create_project(ls_client, label_studio, e2e_images, title="seediff e2e", upload=e2e_images[0])
    assert len(project.tasks) == 4
    ml = ls_client.ml.create(project=project.id, url=backend.url, title="seediff")
    ml = ls_client.ml.get(ml.id)
    assert ml.state == ML_CONNECTED, f"backend not connected: state={ml.state} error={ml.error_message}"
    from label_studio_sdk.core.api_error import ApiError

    t0 = time.monotonic()
    error = None
    try:
        ls_client.actions.create(id="retrieve_tasks_predictions", project=project.id,
                                 selected_items={"all": True, "excluded": []})
    except ApiError as e:  # e.g. a region that Label Studio's config validation rejects
        error = f"HTTP {e.status_code} {str(e.body)[:3000]}"
    if error is not None:
        tail = backend.log_path.read_text("utf-8", "replace")[-4000:]
        pytest.fail(f"Retrieve Predictions failed: {error}\n--- backend log tail ---\n{tail}", pytrace=False)
    predict_s = time.monotonic() - t0
    record_timing("retrieve_predictions_4_tasks_s", predict_s)
    return {"project": project, "ml": ls_client.ml.get(ml.id), "predict_s": predict_s}


def test_predictions_are_stored_with_configured_labels(ls_client, predicted):
    """Every task gets one stored prediction of the backend's model version with valid, labelled regions."""
    project: E2EProject = predicted["project"]
    version = predicted["ml"].model_version
    assert version, "Label Studio did not record a model_version from /setup"
    preds = ls_client.predictions.list(project=project.id)
    by_task: dict[int, list] = {}
    for p in preds:
        by_task.setdefault(p.task, []).append(p)
    assert set(by_task) == set(project.tasks), f"predictions for tasks {sorted(by_task)}, tasks {sorted(project.tasks)}"
    kinds: set[str] = set()
    for task_id, image in project.tasks.items():
        (pred,) = by_task[task_id]
        assert pred.model_version == version
        assert pred.score is not None and np.isfinite(pred.score)
        assert pred.result, f"task {task_id} ({image.rel}) got no regions"
        for region in pred.result:
            kind, _ = check_region(region, image.width, image.height)
            kinds.add(kind)
    assert kinds == {"polygonlabels", "brushlabels"}, f"region types seen: {sorted(kinds)}"


def test_retrieving_again_skips_predicted_tasks(ls_client, predicted):
    """Label Studio does not ask again for tasks already predicted with the current model version."""
    project: E2EProject = predicted["project"]
    before = sorted(p.id for p in ls_client.predictions.list(project=project.id))
    ls_client.actions.create(id="retrieve_tasks_predictions", project=project.id,
                             selected_items={"all": True, "excluded": []})
    after = sorted(p.id for p in ls_client.predictions.list(project=project.id))
    assert after == before


def test_labeling_page_shows_proposals(label_studio, predicted, browser):
    """Headless Chromium logs in, opens a task's labeling page and saves a screenshot with the proposals."""
    project: E2EProject = predicted["project"]
    task_id = next(t for t, img in project.tasks.items() if img.path.name == "both.png")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"labeling-task-{task_id}.png"
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        page.goto(f"{label_studio.url}/user/login/", wait_until="domcontentloaded")
        page.fill("input[name=email]", label_studio.username)
        page.fill("input[name=password]", label_studio.password)
        with page.expect_navigation():
            page.click("button[type=submit]")
        page.goto(f"{label_studio.url}/projects/{project.id}/data?task={task_id}", wait_until="domcontentloaded")
        # The editor is up when the task image has loaded and the regions list shows the proposals.
        page.wait_for_function(
            "() => [...document.images].some(i => i.complete && i.naturalWidth === 192 && i.naturalHeight === 128)",
            timeout=120_000)
        page.get_by_text("Circle").first.wait_for(timeout=60_000)
        page.wait_for_timeout(1500)  # let the canvas draw the regions before the screenshot
        page.screenshot(path=str(shot), full_page=True)
        body = page.inner_text("body")
    finally:
        page.close()
    assert shot.stat().st_size > 10_000
    assert "Circle" in body or "Square" in body, "no proposed region label visible on the labeling page"


def test_predictions_pushed_through_the_api_are_stored(ls_client, preannotate_target):
    """The preannotation path (what `seediff preannotate` does): results posted as predictions are stored,
    and Label Studio rejects a region whose label is not in the config, so the checks above are meaningful."""
    from label_studio_sdk.converter.brush import mask2rle

    project = preannotate_target.project
    task_id, image = next(iter(project.tasks.items()))
    w, h = image.width, image.height
    x0, y0, x1, y1 = next(iter(image.shapes.values()))
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[y0:y1, x0:x1] = 255
    pct = lambda x, y: [100.0 * x / w, 100.0 * y / h]  # noqa: E731
    result = [
        {"from_name": "poly", "to_name": "image", "type": "polygonlabels", "original_width": w,
         "original_height": h, "image_rotation": 0, "score": 0.5,
         "value": {"points": [pct(x0, y0), pct(x1, y0), pct(x1, y1), pct(x0, y1)], "closed": True,
                   "polygonlabels": ["Circle"]}},
        {"from_name": "brush", "to_name": "image", "type": "brushlabels", "original_width": w,
         "original_height": h, "image_rotation": 0, "score": 0.5,
         "value": {"format": "rle", "rle": mask2rle(mask), "brushlabels": ["Circle"]}},
    ]
    ls_client.predictions.create(task=task_id, result=result, score=0.5, model_version="e2e-push")
    (stored,) = ls_client.predictions.list(task=task_id)
    assert stored.model_version == "e2e-push"
    assert [check_region(r, w, h) for r in stored.result] == [("polygonlabels", "Circle"), ("brushlabels", "Circle")]

    from label_studio_sdk.core.api_error import ApiError

    bad = [dict(result[0], value=dict(result[0]["value"], polygonlabels=["Dog"]))]
    with pytest.raises(ApiError) as err:
        ls_client.predictions.create(task=task_id, result=bad, model_version="e2e-bad")
    assert err.value.status_code == 400
    assert len(ls_client.predictions.list(task=task_id)) == 1


def _preannotate_missing() -> str | None:
    """Why `seediff preannotate` cannot run yet (None when it can): CLI command and implementation module."""
    import importlib.util

    exe = Path(sys.executable).parent / "seediff"
    if not exe.is_file():
        return f"the seediff command is not installed next to {sys.executable}"
    done = subprocess.run([str(exe), "preannotate", "--help"], capture_output=True, timeout=120)
    if done.returncode != 0:
        return "the seediff CLI has no `preannotate` command yet"
    if importlib.util.find_spec("seediff_labelstudio") is None or \
            importlib.util.find_spec("seediff_labelstudio.preannotate") is None:
        return "seediff_labelstudio.preannotate (the CLI's implementation) does not exist yet"
    return None


def test_cli_preannotate(ls_client, preannotate_target, tmp_path):
    """`seediff preannotate` fills a real project with valid predictions, and a rerun adds none
    (flags: docs/BACKEND_CONTRACT.md)."""
    missing = _preannotate_missing()
    if missing:
        if "command yet" in missing:
            pytest.skip(f"{missing} (cli owner; see docs/BACKEND_CONTRACT.md)")
        unavailable(missing)
    target = preannotate_target
    argv = [str(Path(sys.executable).parent / "seediff"), "preannotate", "--url", target.url, "--api-key",
            target.api_key, "--project", str(target.project.id), "--model", target.model, "--device", "cpu",
            "--work-dir", str(tmp_path / "work")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for attempt in ("first run", "rerun"):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
        assert done.returncode == 0, f"{attempt} of {shlex.join(argv[:2])} failed (exit {done.returncode}):\n" \
                                     f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        preds = ls_client.predictions.list(project=target.project.id)
        assert sorted(p.task for p in preds) == sorted(target.project.tasks), f"after {attempt}"
    for p in preds:
        image = target.project.tasks[p.task]
        assert p.model_version and p.result, f"task {p.task}: empty prediction"
        for region in p.result:
            check_region(region, image.width, image.height)
