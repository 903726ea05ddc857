"""The Label Studio ML backend through its real HTTP app: configs, safe fetching, bad input, auth, concurrency."""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import logging
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from fastapi.testclient import TestClient
from PIL import Image

from backend_fixtures import BOTH, BRUSH, NO_CONTROL, NO_IMAGE, POLY, FakeHost, huge_png, png
from seediff_labelstudio.model import SeeDiffModel
from seediff_labelstudio.server import create_app
from seediff_labelstudio.settings import Settings, SettingsError

AUTH = ("annotator", "s3cret-pass")
KEY = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    png(d / "a.png")
    png(d / "b.png", 64, 32, seed=1)
    png(d / "c.png", 40, 40, seed=2)
    (d / "notes.txt").write_text("not an image")
    huge_png(d / "huge.png")
    outside = tmp_path_factory.mktemp("outside")
    png(outside / "secret.png")
    (d / "link.png").symlink_to(outside / "secret.png")
    return d


@pytest.fixture(scope="module")
def settings(tiny_pipe_path, root):
    return Settings.from_env({
        "SEEDIFF_MODEL": str(tiny_pipe_path), "SEEDIFF_DEVICE": "cpu", "SEEDIFF_ALLOWED_ROOTS": str(root),
        "LABEL_STUDIO_URL": "http://127.0.0.1:9", "LABEL_STUDIO_API_KEY": KEY,
        "BASIC_AUTH_USER": AUTH[0], "BASIC_AUTH_PASS": AUTH[1],
    })


@pytest.fixture(scope="module")
def model(settings):
    m = SeeDiffModel(settings)
    m.load()
    assert m.ready, m.error
    return m


@pytest.fixture(scope="module")
def client(settings, model):
    return TestClient(create_app(settings, model))


def _predict(client, tasks, config=BOTH, **kw):
    return client.post("/predict", json={"tasks": tasks, "label_config": config, "project": "1.1", **kw}, auth=AUTH)


def _local(name):
    return {"image": f"/data/local-files/?d={name}"}


# ---- protocol ------------------------------------------------------------------------------------------
def test_health_needs_no_auth_and_reports_version(client, model):
    for path in ("/health", "/"):
        r = client.get(path)
        assert r.status_code == 200
        assert r.json() == {"status": "UP", "model_class": "SeeDiff", "model_version": model.model_version}


def test_auth_required_everywhere_but_health(client):
    assert client.post("/setup", json={"schema": BOTH}).status_code == 401
    assert client.post("/predict", json={"tasks": []}).status_code == 401
    assert client.post("/webhook", json={}).status_code == 401
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", auth=(AUTH[0], "wrong")).status_code == 401
    # credentials are checked before the body is read: no 422 / 413 telling an unauthenticated client about it
    bad = client.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 401 and bad.json() == {"detail": "authentication required"}
    assert client.post("/predict", content=b"x", headers={"content-length": str(2**40)}).status_code == 401
    for header in ("Basic !!!", "Basic //46eA==", "Bearer " + AUTH[1], "Basic", ""):  # junk, non-UTF-8, ...
        assert client.get("/metrics", headers={"Authorization": header}).status_code == 401, header
    assert client.get("/openapi.json").status_code == 200  # the API description stays public (no secrets in it)


def test_setup_returns_model_version_and_rejects_bad_configs(client, model):
    r = client.post("/setup", json={"project": "3.1700000000", "schema": BOTH, "hostname": "http://x",
                                    "access_token": "tok", "extra_params": {}}, auth=AUTH)
    assert r.status_code == 200 and r.json() == {"model_version": model.model_version}
    r = client.post("/setup", json={"schema": NO_IMAGE}, auth=AUTH)
    assert r.status_code == 400 and "no <Image>" in r.json()["detail"]
    r = client.post("/setup", json={"schema": NO_CONTROL}, auth=AUTH)
    assert r.status_code == 400 and "PolygonLabels" in r.json()["detail"]
    many = "".join(f'<Label value="Thing number {i}"/>' for i in range(30))
    crowded = f'<View><Image name="i" value="$i"/><PolygonLabels name="p" toName="i">{many}</PolygonLabels></View>'
    r = client.post("/setup", json={"schema": crowded}, auth=AUTH)
    assert r.status_code == 400 and "30 class words do not fit in one prompt" in r.json()["detail"]
    assert "at most 77" in r.json()["detail"]


@pytest.mark.parametrize("config,kinds,labels", [
    (BOTH, {"polygonlabels", "brushlabels"}, {"Dog", "Cat"}),
    (POLY, {"polygonlabels"}, {"Traffic light", "Pet"}),
    (BRUSH, {"brushlabels"}, {"Dog"}),
])
def test_predict_regions_follow_the_config(client, model, config, kinds, labels):
    key = "photo" if "$photo" in config else "image"
    r = _predict(client, [{"id": 7, "data": {key: "/data/local-files/?d=a.png"}}], config)
    assert r.status_code == 200
    (res,) = r.json()["results"]
    assert res["model_version"] == model.model_version and isinstance(res["score"], float)
    assert res["result"], "the tiny model's masks are random but not empty"
    for region in res["result"]:
        assert region["type"] in kinds
        assert region["original_width"] == 48 and region["original_height"] == 40
        assert set(region["value"][region["type"]]) <= labels
        if region["type"] == "polygonlabels":
            pts = np.asarray(region["value"]["points"])
            assert len(pts) >= 3 and pts.min() >= 0 and pts.max() <= 100
    if config is BRUSH:
        assert all(isinstance(r["value"]["rle"], list) for r in res["result"])


def test_predict_uses_setup_config_when_label_config_missing(client):
    assert client.post("/setup", json={"project": "42.1", "schema": BRUSH}, auth=AUTH).status_code == 200
    r = client.post("/predict", json={"tasks": [{"id": 1, "data": _local("a.png")}], "project": "42.1"}, auth=AUTH)
    assert r.status_code == 200 and {x["type"] for x in r.json()["results"][0]["result"]} == {"brushlabels"}
    r = client.post("/predict", json={"tasks": [{"id": 1, "data": _local("a.png")}], "project": "99"}, auth=AUTH)
    assert r.status_code == 400 and "label_config" in r.json()["detail"]


def test_one_result_per_task_in_order_and_failures_dont_stop_the_batch(client, caplog):
    tasks = [
        {"id": 1, "data": _local("a.png")},
        {"id": 2, "data": {"image": "http://169.254.169.254/latest/meta-data"}},  # SSRF to another host
        {"id": 3, "data": {"image": "/data/local-files/?d=../../etc/passwd"}},  # traversal
        {"id": 4, "data": _local("huge.png")},  # 400 megapixels: decompression bomb
        {"id": 5, "data": _local("notes.txt")},  # not an image
        {"id": 6, "data": {}},  # no image key
        {"id": 7, "data": _local("link.png")},  # symlink escaping the root: not read locally; asks LS (down here)
        {"id": 8, "data": _local("b.png")},
    ]
    with caplog.at_level(logging.WARNING, logger="seediff_labelstudio"):
        r = _predict(client, tasks)
    assert r.status_code == 200
    results = r.json()["results"]
    assert len(results) == len(tasks)
    assert results[0]["result"] and results[7]["result"]
    assert all(res == [] for res in results[1:7])  # no prediction: Label Studio stores none, asks again later
    log = caplog.text
    for task_id, phrase in [(2, "refusing to fetch from host '169.254.169.254'"), (3, "'..'"),
                            (4, "pixel cap"), (5, "not an image"), (6, "task data has no 'image'"),
                            (7, "GET http://127.0.0.1:9/data/local-files/ failed")]:
        assert f"task {task_id}: " in log and phrase in log, (task_id, phrase, log)
    assert KEY not in log and AUTH[1] not in log


def test_malformed_requests_are_4xx(client):
    bad = client.post("/predict", content=b"{not json", headers={"content-type": "application/json"}, auth=AUTH)
    assert bad.status_code == 422 and bad.json()["detail"] == "malformed request"
    assert client.post("/predict", json={"tasks": "nope"}, auth=AUTH).status_code == 422
    odd = b'{"tasks": [{"id": Infinity, "data": NaN}], "label_config": ' + json.dumps(BOTH).encode() + b"}"
    r = client.post("/predict", content=odd, headers={"content-type": "application/json"}, auth=AUTH)
    assert r.status_code in (200, 422) and r.status_code != 500
    assert client.post("/predict", json={"label_config": BOTH}, auth=AUTH).status_code == 422
    r = _predict(client, [{"id": 1, "data": _local("a.png")}], NO_IMAGE)
    assert r.status_code == 400 and "no <Image>" in r.json()["detail"]
    assert client.post("/webhook", content=b"x", auth=AUTH).status_code == 400
    assert client.post("/webhook", json={"action": "ANNOTATION_CREATED"}, auth=AUTH).json()["status"] == "ok"


def test_interactive_context_steers_the_label(client):
    """An annotator's keypoint seeds its label; a rectangle confines it (both in Label Studio percent)."""
    from seediff.convert import polygons_to_mask

    task = [{"id": 1, "data": {"photo": "/data/local-files/?d=a.png"}}]
    plain = _predict(client, task, POLY).json()["results"][0]["result"]
    reads = client.get("/metrics", auth=AUTH).json()["unet_reads"]
    click = {"result": [{"type": "keypointlabels", "value": {"x": 10.0, "y": 10.0, "keypointlabels": ["Traffic light"]}}]}
    assert _predict(client, task, POLY, params={"context": click}).json()["results"][0]["result"] != plain
    assert client.get("/metrics", auth=AUTH).json()["unet_reads"] == reads  # same photo: attention reused
    box = {"result": [{"type": "rectanglelabels", "value": {"x": 0, "y": 0, "width": 50, "height": 50,
                                                            "rectanglelabels": ["Traffic light"]}}]}
    boxed = _predict(client, task, POLY, params={"context": box}).json()["results"][0]["result"]
    light = [r for r in boxed if r["value"]["polygonlabels"] == ["Traffic light"]]
    assert light, "the box's most attended cell seeds the label"
    polys = [[c * s / 100 for p in r["value"]["points"] for c, s in zip(p, (48, 40))] for r in light]
    mask = polygons_to_mask(polys, 40, 48)
    assert mask.any() and not mask[21:].any() and not mask[:, 25:].any()  # inside the 24×20 px box


def test_50_concurrent_predicts_all_answered_with_bounded_memory_and_fast_health(client):
    """50 requests at once over three images: every one answered 200 with its result, at most two decoded
    images held at a time, the UNet run once per image (cached attention), and /health answering well within
    Label Studio's 1 s meanwhile."""
    bodies = [{"tasks": [{"id": i, "data": _local("abc"[i % 3] + ".png")}], "label_config": BOTH} for i in range(50)]
    reads = client.get("/metrics", auth=AUTH).json().get("unet_reads", 0)
    stop, health = threading.Event(), []

    def probe():
        while not stop.is_set():
            t0 = time.perf_counter()
            code = client.get("/health").status_code
            health.append((code, time.perf_counter() - t0))
            time.sleep(0.05)

    prober = threading.Thread(target=probe)
    with cf.ThreadPoolExecutor(50) as pool:
        prober.start()
        answers = list(pool.map(lambda body: client.post("/predict", json=body, auth=AUTH), bodies))
        stop.set()
    prober.join()
    assert [r.status_code for r in answers] == [200] * 50
    assert all(len(r.json()["results"]) == 1 and r.json()["results"][0]["result"] for r in answers)
    m = client.get("/metrics", auth=AUTH).json()
    assert m["requests"] >= 50 and m["unet_s"] > 0 and m["unet_reads"] - reads <= 3
    assert 1 <= m["images_held_max"] <= SeeDiffModel.HELD_IMAGES
    slow = sorted(t for _, t in health)
    assert health and all(code == 200 for code, _ in health)
    assert slow[int(0.9 * (len(slow) - 1))] < 1.0, slow[-5:]


def test_time_budget_leaves_late_tasks_unpredicted(settings, model):
    """Past SEEDIFF_PREDICT_BUDGET the rest of the batch answers [] (stored as nothing, retried next time)."""
    c = TestClient(create_app(dataclasses.replace(settings, predict_budget=1e-6), model))
    before = model.metrics["tasks_deferred"]
    r = _predict(c, [{"id": i, "data": _local("a.png")} for i in range(3)])
    assert r.status_code == 200 and r.json()["results"] == [[], [], []]
    assert model.metrics["tasks_deferred"] - before == 3
    ctx = {"result": [{"type": "keypointlabels", "value": {"x": 1, "y": 1, "keypointlabels": ["Dog"]}}]}
    (entry,) = _predict(c, [{"id": 1, "data": _local("a.png")}], params={"context": ctx}).json()["results"]
    assert entry == {"result": [], "score": 0.0, "model_version": model.model_version}  # interactive: empty result


def test_request_size_limits(settings, model):
    c = TestClient(create_app(dataclasses.replace(settings, max_tasks_per_request=3, max_body_bytes=20_000), model))
    r = _predict(c, [{"id": i, "data": {}} for i in range(4)])
    assert r.status_code == 413 and "SEEDIFF_MAX_TASKS" in r.json()["detail"]
    r = _predict(c, [{"id": 1, "data": {"image": "x" * 30_000}}])
    assert r.status_code == 413 and "SEEDIFF_MAX_BODY_BYTES" in r.json()["detail"]
    assert _predict(c, [{"id": 1, "data": {}}]).json()["results"] == [[]]


def test_setup_token_fetches_uploads_when_no_key_is_configured(settings, model):
    """Label Studio sends its token to /setup; without LABEL_STUDIO_API_KEY it is used for that project."""
    ls = FakeHost()
    try:
        ls.file("/data/upload/1/a.png", (png_path := settings.allowed_roots[0] / "a.png").read_bytes(),
                auth="Token token-from-setup")
        s = dataclasses.replace(settings, ls_url=ls.url, ls_api_key=None)
        m = SeeDiffModel(s)
        m.loaded = model.loaded  # the pipeline already loaded once for this module
        c = TestClient(create_app(s, m))
        task = [{"id": 5, "data": {"image": "/data/upload/1/a.png"}}]
        assert _predict(c, task).json()["results"] == [[]]  # no key yet: Label Studio says 401
        assert c.post("/setup", json={"project": "1.17", "schema": BOTH, "access_token": "token-from-setup"},
                      auth=AUTH).status_code == 200
        (res,) = _predict(c, task).json()["results"]
        assert res["result"] and res["result"][0]["original_width"] == Image.open(png_path).width
        assert ls.requests[-1][2]["Authorization"] == "Token token-from-setup"
    finally:
        ls.close()


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                     max_leaves=8)
_refs = st.sampled_from(["http://10.0.0.1/x.png", "/etc/passwd", "/data/local-files/?d=../x", "", "file:///etc/shadow",
                         "/data/local-files/?d=notes.txt", "javascript:alert(1)"])
_tasks = st.lists(st.fixed_dictionaries({}, optional={"id": _json, "data": st.dictionaries(
    st.sampled_from(["image", "photo", "x"]), _refs | _json, max_size=2)}), max_size=3)


@given(body=st.fixed_dictionaries({}, optional={
    "tasks": _tasks | _json, "label_config": st.sampled_from([BOTH, POLY, NO_IMAGE, "<View/>", "not xml", ""]) | _json,
    "project": _json, "params": st.fixed_dictionaries({}, optional={"context": _json}) | _json}))
@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_fuzzed_predict_bodies_are_answered_never_500(client, body):
    r = client.post("/predict", json=body, auth=AUTH)
    assert r.status_code in (200, 400, 413, 422), (r.status_code, r.text[:300])
    if r.status_code == 200:
        assert len(r.json()["results"]) == len(body["tasks"])


# ---- settings and failures -----------------------------------------------------------------------------
def test_settings_validation_and_masking():
    with pytest.raises(SettingsError, match="SEEDIFF_METHOD"):
        Settings.from_env({"SEEDIFF_METHOD": "magic"})
    with pytest.raises(SettingsError, match="BASIC_AUTH_PASS"):
        Settings.from_env({"BASIC_AUTH_USER": "u"})
    with pytest.raises(SettingsError, match="LABEL_STUDIO_URL"):
        Settings.from_env({"LABEL_STUDIO_URL": "ftp://x"})
    with pytest.raises(SettingsError, match="SEEDIFF_ALLOWED_ROOTS"):
        Settings.from_env({"SEEDIFF_ALLOWED_ROOTS": "relative/dir"})
    with pytest.raises(SettingsError, match="SEEDIFF_TIMESTEP must be an integer"):
        Settings.from_env({"SEEDIFF_TIMESTEP": "soon"})
    for bad in ("a photo", "{} and {}", "a {} of {kind}", "a {0} photo"):
        with pytest.raises(SettingsError, match="SEEDIFF_PROMPT_TEMPLATE must contain exactly one"):
            Settings.from_env({"SEEDIFF_PROMPT_TEMPLATE": bad})
    assert Settings.from_env({"SEEDIFF_PROMPT_TEMPLATE": "a photo of {classes}"}).prompt_template == "a photo of {}"
    with pytest.raises(SettingsError, match="SEEDIFF_MAX_IMAGE_PIXELS must be >= 1"):
        Settings.from_env({"SEEDIFF_MAX_IMAGE_PIXELS": "0"})
    with pytest.raises(SettingsError, match="SEEDIFF_FETCH_TIMEOUT must be > 0"):
        Settings.from_env({"SEEDIFF_FETCH_TIMEOUT": "-1"})
    with pytest.raises(SettingsError, match="LOG_LEVEL"):
        Settings.from_env({"LOG_LEVEL": "chatty"})
    s = Settings.from_env({"LABEL_STUDIO_API_KEY": KEY, "BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": "pw-123"})
    assert KEY not in repr(s) and "pw-123" not in str(s) and "****" in repr(s)


def test_model_load_failure_is_reported_not_fatal(tmp_path):
    s = Settings.from_env({"SEEDIFF_MODEL": str(tmp_path / "missing"), "SEEDIFF_DEVICE": "cpu"})
    m = SeeDiffModel(s)
    m.load()
    c = TestClient(create_app(s, m))
    h = c.get("/health")
    assert h.status_code == 503 and h.json()["status"] == "ERROR" and "does not exist" in h.json()["reason"]
    r = c.post("/predict", json={"tasks": [{"id": 1, "data": {}}], "label_config": BOTH})
    assert r.status_code == 503 and "model not loaded" in r.json()["detail"]
