"""Learning from annotators through the real backend app: webhooks verified against a Label Studio API played by
a local HTTP server, calibration state in SQLite (durable, safe under concurrent writers), forged payloads refused
or ignored, and the calibration reaching /predict's model_version."""

from __future__ import annotations

import concurrent.futures as cf
import io
import json
import signal
import subprocess
import threading
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from backend_fixtures import FakeHost
from test_backend_process import _command, _env, _free_port
from seediff.calibrate import Calibration, LabelCalibration, Observation, fit, knob_grid, save_calibration
from seediff.lsformat import ls_results
from seediff.testing.shapes import SceneConfig, make_scene
from seediff_labelstudio.calibration_store import CalibrationStore, TaskEvidence
from seediff_labelstudio.model import SeeDiffModel
from seediff_labelstudio.server import create_app
from seediff_labelstudio.settings import Settings

KEY = "0123456789abcdef0123456789abcdef01234567"
AUTH = ("annotator", "s3cret-pass")
CONFIG = """<View><Image name="image" value="$image"/>
<BrushLabels name="brush" toName="image"><Label value="Circle"/><Label value="Square"/><Label value="Triangle"/>
</BrushLabels></View>"""
N_TASKS = 12


class FakeLabelStudio:
    """Projects 1 and 2, tasks with scene images, annotations with the scenes' true masks (brush regions)."""

    def __init__(self) -> None:
        self.host = FakeHost()
        self.url = self.host.url
        self.scenes = {i: make_scene(900_000 + i, SceneConfig(radius=(4.0, 6.0))) for i in range(1, N_TASKS + 1)}
        self.tasks = {i: {"id": i, "project": 1, "data": {"image": f"/data/upload/1/{i}.png"}} for i in self.scenes}
        self.tasks[99] = {"id": 99, "project": 2, "data": {"image": "/data/upload/2/99.png"}}
        self.annotations: dict[int, dict] = {}
        self.lock = threading.Lock()
        for i, scene in self.scenes.items():
            buf = io.BytesIO()
            Image.fromarray(scene.image).save(buf, format="PNG")
            self.host.file(f"/data/upload/1/{i}.png", buf.getvalue(), auth=f"Token {KEY}")
        self.host.routes.update({p: self._api for p in self._paths()})

    def _paths(self):
        yield "/api/projects/1/"
        yield "/api/projects/2/"
        yield "/api/tasks/"
        for t in self.tasks:
            yield f"/api/tasks/{t}/"
            yield f"/api/tasks/{t}/annotations/"
        for a in range(1, 200):
            yield f"/api/annotations/{a}/"

    def annotate(self, task: int, *, ann_id: int | None = None, stamp: str = "2026-12-03T17:00:00Z") -> dict:
        """Store an annotation of ``task`` holding its scene's true masks (what an annotator would submit)."""
        scene = self.scenes.get(task, self.scenes[1])
        h, w = scene.image.shape[:2]
        entries = [(word.capitalize(), mask, 1.0) for word, mask in scene.class_masks().items()]
        result = ls_results(entries, to_name="image", image_size=(w, h), polygon_from_name=None, brush_from_name="brush")
        ann = {"id": ann_id or task + 100, "task": task, "project": self.tasks[task]["project"], "result": result,
               "was_cancelled": False, "ground_truth": False, "created_at": stamp, "updated_at": stamp,
               "lead_time": 1.0, "completed_by": 1}
        with self.lock:
            self.annotations[ann["id"]] = ann
        return ann

    def _api(self, req):
        if req.headers.get("Authorization") != f"Token {KEY}":
            return 401, {"Content-Type": "application/json"}, b'{"detail": "no"}'
        parts = urlsplit(req.path)
        path, query = parts.path, parse_qs(parts.query)
        body = None
        with self.lock:
            if path.startswith("/api/projects/"):
                pid = int(path.split("/")[3])
                body = {"id": pid, "title": f"p{pid}", "label_config": CONFIG}
            elif path == "/api/tasks/":
                pid = int(query.get("project", ["0"])[0])
                page = int(query.get("page", ["1"])[0])
                listed = [t for t in self.tasks.values() if t["project"] == pid] if page == 1 else []
                body = {"tasks": listed, "total": len(listed), "total_annotations": 0, "total_predictions": 0}
            elif path.endswith("/annotations/"):
                tid = int(path.split("/")[3])
                body = [a for a in self.annotations.values() if a["task"] == tid]
            elif path.startswith("/api/tasks/"):
                body = self.tasks.get(int(path.split("/")[3]))
            elif path.startswith("/api/annotations/"):
                body = self.annotations.get(int(path.split("/")[3]))
        if body is None:
            return 404, {"Content-Type": "application/json"}, b'{"detail": "Not found."}'
        return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()

    def close(self):
        self.host.close()


@pytest.fixture()
def ls():
    fake = FakeLabelStudio()
    yield fake
    fake.close()


def _settings(ls_url: str, **extra) -> Settings:
    return Settings.from_env({"SEEDIFF_MODEL": "builtin:shapes", "SEEDIFF_DEVICE": "cpu", "LABEL_STUDIO_URL": ls_url,
                              "LABEL_STUDIO_API_KEY": KEY, "SEEDIFF_ALLOWED_PRIVATE_HOSTS": "127.0.0.1", **extra})


@pytest.fixture(scope="module")
def loaded_pipe():
    from seediff.pipeline import load_model

    return load_model("builtin:shapes", device="cpu")


def _app(ls, data_dir, loaded_pipe, **extra):
    settings = _settings(ls.url, SEEDIFF_DATA_DIR=str(data_dir), **extra)
    model = SeeDiffModel(settings)
    model.loaded = loaded_pipe  # loaded once per module: the model is the same bundled one every time
    return TestClient(create_app(settings, model)), model


def _notify(client, action, ann, project=1, **kw):
    return client.post("/webhook", json={"action": action, "annotation": ann, "project": {"id": project},
                                         "task": {"id": ann.get("task")}}, **kw)


def test_annotation_webhooks_learn_from_the_api_and_survive_a_restart(ls, tmp_path, loaded_pipe):
    client, model = _app(ls, tmp_path, loaded_pipe)
    learner = client.app.state.learner
    assert client.get("/calibration/1").json()["revision"] == 0
    for t in range(1, N_TASKS - 1):
        r = _notify(client, "ANNOTATION_CREATED", ls.annotate(t))
        assert r.status_code == 202, r.text
    bulk = [ls.annotate(t) for t in (N_TASKS - 1, N_TASKS)]  # "Create Annotations From Predictions": a list
    r = client.post("/webhook", json={"action": "ANNOTATIONS_CREATED", "annotation": bulk, "project": {"id": 1},
                                      "task": [{"id": a["task"]} for a in bulk]})
    assert r.status_code == 202, r.text
    assert learner.drain(120)
    summary = client.get("/calibration/1").json()
    assert summary["tasks"] == N_TASKS and summary["revision"] >= 1 and summary["calibration"]["images"] == N_TASKS
    # What was learnt is the fit of the evidence the backend made from the API's annotations.
    evidence = learner.store.evidence(1)
    assert [e.task for e in evidence] == list(range(1, N_TASKS + 1))
    for e in evidence:
        present = {o.word for o in e.observations if o.present}
        assert present == set(ls.scenes[e.task].class_masks())
    refit = fit([o for e in evidence for o in e.observations], "seediff", evidence[0].default_value, images=N_TASKS,
                presence_default=learner.presence_threshold())
    assert refit.to_dict() == summary["calibration"]
    # An unchanged annotation notified again costs nothing and changes nothing.
    reads = model.metrics["unet_reads"]
    assert _notify(client, "ANNOTATION_UPDATED", ls.annotations[101]).status_code == 202
    assert learner.drain(60) and model.metrics["unet_reads"] == reads
    assert client.get("/calibration/1").json() == summary
    # A restart (new app, same data dir) finds the same state; reset forgets it.
    client2, model2 = _app(ls, tmp_path, loaded_pipe)
    assert client2.get("/calibration/1").json() == summary
    assert model2.options_for(1).calibration.to_dict() == summary["calibration"]
    _, other = _app(ls, tmp_path, loaded_pipe, SEEDIFF_TIMESTEP="200")  # another model_version
    assert other.options_for(1).calibration is None  # a calibration learnt for other settings never applies
    assert client2.delete("/calibration/1").json()["status"] == "reset"
    assert client2.get("/calibration/1").json()["tasks"] == 0


def test_start_training_refits_from_every_annotated_task(ls, tmp_path, loaded_pipe):
    client, _ = _app(ls, tmp_path, loaded_pipe)
    for t in range(1, 9):
        ls.annotate(t)
    r = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1, "title": "p1"}})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "trained" and r.json()["tasks"] == 8


def test_forged_and_malformed_notifications_change_nothing(ls, tmp_path, loaded_pipe):
    client, _ = _app(ls, tmp_path, loaded_pipe)
    learner = client.app.state.learner
    for t in (1, 2, 3):
        _notify(client, "ANNOTATION_CREATED", ls.annotate(t))
    assert learner.drain(60)
    before = client.get("/calibration/1").json()
    db_before = (tmp_path / "calibration.sqlite").read_bytes()
    cases = [
        ({"action": "ANNOTATION_CREATED", "annotation": {"id": 150, "task": 4, "result": []}, "project": {"id": 1}},
         404, "annotation 150 not found"),                         # an annotation Label Studio does not have
        ({"action": "ANNOTATION_CREATED", "annotation": {"id": 101}, "project": {"id": 7}}, 404, "project 7"),
        ({"action": "ANNOTATION_CREATED", "annotation": {"id": 101}}, 422, "'project'"),
        ({"action": "ANNOTATION_UPDATED", "annotation": {"id": True}, "project": {"id": 1}}, 422, "'annotation'"),
        ({"action": "ANNOTATIONS_CREATED", "annotation": [], "project": {"id": 1}}, 422, "1 to 1000 annotations"),
        ({"action": "ANNOTATIONS_CREATED", "annotation": ["x"], "project": {"id": 1}}, 422, "'annotation'"),
        ({"action": "START_TRAINING", "project": {"id": "1"}}, 422, "'project'"),
    ]
    ls.annotate(99, ann_id=199)  # an annotation of project 2 claimed for project 1
    cases.append(({"action": "ANNOTATION_CREATED", "annotation": {"id": 199}, "project": {"id": 1}}, 404,
                  "annotation 199 is not in project 1"))
    for body, status, words in cases:
        r = client.post("/webhook", json=body)
        assert r.status_code == status and words in r.json()["detail"], (body, r.text)
    # A real annotation id with a forged result: the backend learns what the API says, not the payload.
    forged = dict(ls.annotations[101], result=[], updated_at="2026-12-03T17:00:00Z")
    assert _notify(client, "ANNOTATION_UPDATED", forged).status_code == 202
    assert learner.drain(60)
    assert client.get("/calibration/1").json() == before
    assert client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 1}}).json()["status"] == "ok"
    assert (tmp_path / "calibration.sqlite").exists() and db_before  # the file was never replaced or emptied


def test_deletions_are_learnt_only_when_label_studio_agrees(ls, tmp_path, loaded_pipe):
    client, _ = _app(ls, tmp_path, loaded_pipe)
    learner = client.app.state.learner
    for t in (1, 2, 3):
        _notify(client, "ANNOTATION_CREATED", ls.annotate(t))
    assert learner.drain(60) and client.get("/calibration/1").json()["tasks"] == 3
    forged = {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 101}, {"id": 102}], "project": {"id": 1}}
    assert client.post("/webhook", json=forged).status_code == 202  # both still exist in Label Studio
    assert learner.drain(60) and client.get("/calibration/1").json()["tasks"] == 3
    del ls.annotations[102]
    assert client.post("/webhook", json=forged).status_code == 202
    assert learner.drain(60) and [e.task for e in learner.store.evidence(1)] == [1, 3]


def test_unauthenticated_webhooks_are_refused_under_basic_auth(ls, tmp_path, loaded_pipe):
    client, _ = _app(ls, tmp_path, loaded_pipe, BASIC_AUTH_USER=AUTH[0], BASIC_AUTH_PASS=AUTH[1])
    r = _notify(client, "ANNOTATION_CREATED", ls.annotate(1))
    assert r.status_code == 401
    assert client.get("/calibration/1", auth=AUTH).json()["tasks"] == 0


def test_a_calibration_file_changes_model_version_and_proposals(ls, tmp_path, loaded_pipe):
    strict = Calibration("seediff", "pamr_threshold", 0.9, {w: LabelCalibration(20, 1.0) for w in
                                                            ("circle", "square", "triangle")}, 20)
    save_calibration(strict, tmp_path / "cal.json")
    client, model = _app(ls, tmp_path / "state", loaded_pipe, SEEDIFF_CALIBRATION=str(tmp_path / "cal.json"))
    task = ls.tasks[1]
    r = client.post("/predict", json={"tasks": [task], "label_config": CONFIG, "project": "1"}).json()
    version = r["results"][0]["model_version"]
    assert version == f"{model.model_version}-cal{strict.digest}"
    assert r["results"][0]["result"] == []  # no region score exceeds 1
    assert client.post("/setup", json={"project": "1.17", "schema": CONFIG}).json()["model_version"] == version


# ---- the store -------------------------------------------------------------------------------------
def _evidence(task: int, rng) -> TaskEvidence:
    n = len(knob_grid(0.6))
    obs = tuple(Observation(w, float(rng.random() < 0.5) * 0.1, tuple(rng.random(n)), tuple(rng.random(n) * 0.1),
                            tuple(rng.random(n) * 0.05)) for w in ("circle", "square"))
    return TaskEvidence(task, task + 1000, "s", "basis", 0.6, obs)


def _fitter(observations, default_value, images):
    return fit(observations, "seediff", default_value, images=images)


def test_store_survives_concurrent_writers_and_reopening(tmp_path):
    store = CalibrationStore(tmp_path / "c.sqlite")
    rng = np.random.default_rng(0)
    batches = [[_evidence(t * 10 + k, rng) for k in range(10)] for t in range(8)]

    def write(batch):
        mine = CalibrationStore(tmp_path / "c.sqlite")  # a second handle, as a second process would have
        for e in batch:
            mine.put(5, [e], _fitter, "basis")

    with cf.ThreadPoolExecutor(8) as pool:
        list(pool.map(write, batches))
    reopened = CalibrationStore(tmp_path / "c.sqlite")
    assert len(reopened.evidence(5)) == 80 and reopened.summary(5)["tasks"] == 80
    calibration, revision = reopened.get(5)
    expected = _fitter([o for e in reopened.evidence(5) for o in e.observations], 0.6, 80)
    assert calibration.to_dict() == expected.to_dict() and revision >= 1
    assert reopened.get(6) == (None, 0)
    # A refit that changes nothing keeps the revision; evidence of another model is not fitted on.
    assert reopened.put(5, [], _fitter, "basis")[1] == revision
    assert reopened.put(5, [], _fitter, "other-model") == (None, revision)


def test_bad_calibration_settings_name_the_variable(tmp_path):
    from seediff_labelstudio.settings import SettingsError

    with pytest.raises(SettingsError, match="SEEDIFF_DATA_DIR must be an absolute path, got 'state'"):
        Settings.from_env({"SEEDIFF_DATA_DIR": "state"})
    with pytest.raises(SettingsError, match="SEEDIFF_CALIBRATION must be an absolute path"):
        Settings.from_env({"SEEDIFF_CALIBRATION": "cal.json"})
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(SettingsError, match="SEEDIFF_CALIBRATION: .*x.json: not a usable calibration file"):
        Settings.from_env({"SEEDIFF_CALIBRATION": str(tmp_path / "x.json")})
    with pytest.raises(SettingsError, match="SEEDIFF_DATA_DIR must be a folder"):
        Settings.from_env({"SEEDIFF_DATA_DIR": str(tmp_path / "x.json")})

def _serve(env: dict, log_path):
    """Start `seediff-labelstudio` on a free port; (process, url) once /health answers UP."""
    port = _free_port()
    with log_path.open("a") as fh:
        proc = subprocess.Popen(_command() + ["--host", "127.0.0.1", "--port", str(port)], env=_env(**env),
                                stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        assert proc.poll() is None, log_path.read_text()[-3000:]
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, log_path.read_text()[-3000:]
        time.sleep(0.5)


def test_real_process_learns_on_start_training_and_keeps_it_across_a_restart(ls, tmp_path):
    env = dict(SEEDIFF_MODEL="builtin:shapes", SEEDIFF_DEVICE="cpu", LABEL_STUDIO_URL=ls.url, LABEL_STUDIO_API_KEY=KEY,
               SEEDIFF_DATA_DIR=str(tmp_path / "state"), BASIC_AUTH_USER=AUTH[0], BASIC_AUTH_PASS=AUTH[1])
    bad = subprocess.run(_command() + ["--port", "1"], env=_env(**{**env, "SEEDIFF_DATA_DIR": "rel"}),
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "bad setting: SEEDIFF_DATA_DIR must be an absolute path" in bad.stderr
    for t in range(1, N_TASKS + 1):
        ls.annotate(t)
    log = tmp_path / "backend.log"
    proc, url = _serve(env, log)
    try:
        r = httpx.post(f"{url}/webhook", json={"action": "START_TRAINING", "project": {"id": 1}}, auth=AUTH, timeout=100)
        assert r.status_code == 200 and r.json()["status"] == "trained" and r.json()["tasks"] == N_TASKS, r.text
        learnt = httpx.get(f"{url}/calibration/1", auth=AUTH).json()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    proc, url = _serve(env, log)
    try:
        assert httpx.get(f"{url}/calibration/1", auth=AUTH).json() == learnt
        r = httpx.post(f"{url}/predict", json={"tasks": [ls.tasks[1]], "project": 1, "label_config": CONFIG},
                       auth=AUTH, timeout=100).json()
        assert r["results"][0]["model_version"] == learnt["model_version"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)

