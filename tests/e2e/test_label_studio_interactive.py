"""End to end: interactive pre-annotation through a real Label Studio 1.23.2 — what its frontend sends when an
annotator clicks with a smart KeyPointLabels tool or drags a smart RectangleLabels box, sent through Label
Studio's own endpoint (``POST /api/ml/<id>/interactive-annotating``), which forwards it to the backend's /predict
with ``params.context`` and answers with the backend's first result.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from .conftest import E2EImage, E2EProject, create_project, get_json, record_timing
from .test_label_studio import object_mask, region_mask

pytestmark = pytest.mark.e2e

INTERACTIVE_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <KeyPointLabels name="kp" toName="image" smart="true">
    <Label value="Circle" predicted_values="circle"/>
    <Label value="Square" predicted_values="square"/>
  </KeyPointLabels>
  <RectangleLabels name="box" toName="image" smart="true">
    <Label value="Circle" predicted_values="circle"/>
    <Label value="Square" predicted_values="square"/>
  </RectangleLabels>
  <PolygonLabels name="poly" toName="image">
    <Label value="Circle" predicted_values="circle"/>
    <Label value="Square" predicted_values="square"/>
  </PolygonLabels>
  <BrushLabels name="brush" toName="image">
    <Label value="Circle" predicted_values="circle"/>
    <Label value="Square" predicted_values="square"/>
  </BrushLabels>
</View>"""


def keypoint(image: E2EImage, x: float, y: float, label: str, positive: bool = True) -> dict:
    """A smart keypoint region as Label Studio's frontend sends it (``is_positive`` on the region itself)."""
    return {"type": "keypointlabels", "from_name": "kp", "to_name": "image", "original_width": image.width,
            "original_height": image.height, "is_positive": positive,
            "value": {"x": 100.0 * x / image.width, "y": 100.0 * y / image.height, "width": 0.5,
                      "keypointlabels": [label]}}


def rectangle(image: E2EImage, box: tuple[int, int, int, int], label: str) -> dict:
    """A smart rectangle region (percentages of the image), as the frontend sends it."""
    x0, y0, x1, y1 = box
    return {"type": "rectanglelabels", "from_name": "box", "to_name": "image", "original_width": image.width,
            "original_height": image.height, "is_positive": True,
            "value": {"x": 100.0 * x0 / image.width, "y": 100.0 * y0 / image.height,
                      "width": 100.0 * (x1 - x0) / image.width, "height": 100.0 * (y1 - y0) / image.height,
                      "rectanglelabels": [label]}}


@pytest.fixture(scope="module")
def interactive(label_studio, ls_client, e2e_images, backend, e2e_model):
    """A project with the two-object image, the backend connected for interactive pre-annotation."""
    if e2e_model != "builtin:shapes":
        pytest.skip(f"click-following is only meaningful on the bundled model, not {e2e_model}")
    image = next(img for img in e2e_images if img.path.name == "both.png")
    project = create_project(ls_client, label_studio, [image], title="seediff e2e interactive",
                             label_config=INTERACTIVE_CONFIG)
    ml = ls_client.ml.create(project=project.id, url=backend.url, title="seediff interactive", is_interactive=True)
    ml = ls_client.ml.get(ml.id)
    (task_id,) = project.tasks
    return {"project": project, "ml": ml, "task": task_id, "image": image}


def ask(label_studio, interactive, regions: list[dict]) -> dict:
    """Label Studio's interactive-annotating call with ``regions`` as the context; the backend's answer."""
    import httpx

    resp = httpx.post(f"{label_studio.url}/api/ml/{interactive['ml'].id}/interactive-annotating",
                      headers={"Authorization": f"Token {label_studio.token}"},
                      json={"task": interactive["task"], "context": {"result": regions}}, timeout=120)
    resp.raise_for_status()
    body = resp.json()
    assert "errors" not in body, body
    return body["data"]


def label_mask(answer: dict, label: str, image: E2EImage) -> np.ndarray:
    """Union of the answer's regions of ``label``."""
    out = np.zeros((image.height, image.width), bool)
    for r in answer["result"]:
        if r["value"][r["type"]][0] == label:
            out |= region_mask(r, image.width, image.height)
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_a_click_gives_its_object_to_the_clicked_label_only(label_studio, interactive):
    """A positive click on each object: the answer holds only the clicked label, as polygons (the project's
    control, SEEDIFF_CONTROL's default), covering the clicked pixel and the object (IoU >= 0.85)."""
    image: E2EImage = interactive["image"]
    for kind, (x, y) in {"circle": (52, 64), "square": (145, 65)}.items():
        label = kind.capitalize()
        answer = ask(label_studio, interactive, [keypoint(image, x, y, label)])
        assert answer["result"], f"no proposal for a click on the {kind}"
        assert {(r["type"], r["value"][r["type"]][0]) for r in answer["result"]} == {("polygonlabels", label)}
        got = label_mask(answer, label, image)
        assert got[y, x], f"the clicked pixel ({x}, {y}) is not in the {label} proposal"
        truth = object_mask(kind, image.shapes[kind], image.width, image.height)
        print(f"click on {kind}: IoU {iou(got, truth):.3f}")
        assert iou(got, truth) >= 0.85
        assert answer["model_version"] == interactive["ml"].model_version
        assert 0.0 < answer["score"] <= 1.0


def test_the_hand_beats_the_word(label_studio, interactive):
    """A click on the circle with the label "Square" gives the circle to Square; an Alt-click removes its region;
    a rectangle confines the mask; two clicks accumulate."""
    image: E2EImage = interactive["image"]
    circle = object_mask("circle", image.shapes["circle"], image.width, image.height)
    square = object_mask("square", image.shapes["square"], image.width, image.height)

    answer = ask(label_studio, interactive, [keypoint(image, 52, 64, "Square")])
    got = label_mask(answer, "Square", image)
    assert got[64, 52] and iou(got, circle) >= 0.85, iou(got, circle)

    answer = ask(label_studio, interactive, [keypoint(image, 145, 65, "Square", positive=False)])
    assert not label_mask(answer, "Square", image)[65, 145], "an Alt-click's pixel stayed in the proposal"

    x0, y0, x1, y1 = image.shapes["circle"]
    box = (x0 - 3, y0 - 3, x1 + 3, y1 + 3)
    answer = ask(label_studio, interactive, [rectangle(image, box, "Circle")])
    got = label_mask(answer, "Circle", image)
    outside = got.copy()
    outside[box[1]:box[3] + 1, box[0]:box[2] + 1] = False
    assert not outside.any(), "the proposal leaves the rectangle"
    assert iou(got, circle) >= 0.85, iou(got, circle)

    answer = ask(label_studio, interactive, [keypoint(image, 52, 64, "Circle"), keypoint(image, 145, 65, "Circle")])
    got = label_mask(answer, "Circle", image)
    assert got[64, 52] and got[65, 145], "two clicks of one label did not accumulate"
    assert iou(got, circle | square) >= 0.85


def test_repeated_clicks_reuse_the_attention(label_studio, interactive, backend):
    """Clicks on an image already seen run no UNet pass (the backend's unet_reads stays put) and answer fast."""
    image: E2EImage = interactive["image"]
    ask(label_studio, interactive, [keypoint(image, 52, 64, "Circle")])
    _, before = get_json(f"{backend.url}/metrics")
    times = []
    for x, y in ((50, 60), (60, 70), (140, 60)):
        t0 = time.monotonic()
        ask(label_studio, interactive, [keypoint(image, x, y, "Circle")])
        times.append(time.monotonic() - t0)
    _, after = get_json(f"{backend.url}/metrics")
    record_timing("interactive_click_s_max", max(times))
    assert after["unet_reads"] == before["unet_reads"]
    assert max(times) < 1.0, times
