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
        "SEEDIFF_PRESENCE": "false",  # a random model: its presence decisions are noise; this file tests the protocol
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
    assert r.status_code == 200, r.text  # more labels than one prompt holds: read in several prompts
    huge = " ".join(["word"] * 90)
    too_long = (f'<View><Image name="i" value="$i"/><PolygonLabels name="p" toName="i"><Label value="A" '
                f'predicted_values="{huge}"/></PolygonLabels></View>')
    r = client.post("/setup", json={"schema": too_long}, auth=AUTH)
    assert r.status_code == 400 and "1 class words cannot be served" in r.json()["detail"]
    assert "at most 77" in r.json()["detail"]


def test_configs_the_backend_cannot_serve_are_logged_at_warning(client, caplog):
    """Label Studio shows only 'doesn't look like a valid ML backend': the backend's log must say why."""
    with caplog.at_level(logging.WARNING, logger="seediff_labelstudio"):
        assert client.post("/setup", json={"project": "5.17", "schema": NO_CONTROL}, auth=AUTH).status_code == 400
        assert _predict(client, [{"id": 1, "data": _local("a.png")}], NO_IMAGE).status_code == 400
        assert client.post("/predict", json={"tasks": [], "project": "77"}, auth=AUTH).status_code == 400
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "seediff_labelstudio"]
    assert lines[0][0] == "WARNING" and lines[0][1].startswith(
        "/setup project 5 refused: unsupported labeling config: the project's labeling config has no <PolygonLabels> "
        "or <BrushLabels> on an <Image> (it has <RectangleLabels name='box'>)")
    assert lines[1][0] == "WARNING" and lines[1][1].startswith(
        "/predict project 1 refused: unsupported labeling config: the project's labeling config has no <Image> "
        "(it has <Text name='text'>)")
    assert lines[2] == ("WARNING", "/predict project 77 refused: predict needs 'label_config' (or a /setup for this "
                                   "project first)")


def test_one_control_type_per_project(settings, model):
    """BOTH holds each label in a polygon and a brush control: polygons by default, brushes or per-mask choice on
    request (SEEDIFF_CONTROL), and the non-default choices have their own model_version."""
    task = [{"id": 7, "data": _local("a.png")}]
    kinds, versions = {}, {}
    for control in ("polygon", "brush", "both"):
        m = SeeDiffModel(dataclasses.replace(settings, control=control))
        m.loaded = model.loaded
        (res,) = _predict(TestClient(create_app(m.settings, m)), task).json()["results"]
        kinds[control], versions[control] = {r["type"] for r in res["result"]}, res["model_version"]
    assert kinds["polygon"] == {"polygonlabels"} and kinds["brush"] == {"brushlabels"}
    assert kinds["both"] <= {"polygonlabels", "brushlabels"}
    assert versions["polygon"] == model.model_version and len(set(versions.values())) == 3
    assert Settings.from_env({"SEEDIFF_CONTROL": " Brush "}).control == "brush"
    with pytest.raises(SettingsError, match="SEEDIFF_CONTROL must be one of polygon, brush, both, got 'rle'"):
        Settings.from_env({"SEEDIFF_CONTROL": "rle"})


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
    positive = _predict(client, task, POLY, params={"context": click}).json()["results"][0]["result"]
    assert positive != plain
    # an Alt-click: Label Studio puts is_positive on the region, not in its value
    alt = {"result": [{**click["result"][0], "is_positive": False}]}
    negative = _predict(client, task, POLY, params={"context": alt}).json()["results"][0]["result"]
    assert negative != positive
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
    assert Settings.from_env({}).presence and not Settings.from_env({"SEEDIFF_PRESENCE": "false"}).presence
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


# ---- interactive pre-annotation on the bundled model and a real two-object scene ---------------------------
SHAPES_CONFIG = """<View><Image name="image" value="$image"/>
<PolygonLabels name="poly" toName="image"><Label value="Circle"/><Label value="Square"/><Label value="Triangle"/></PolygonLabels>
<BrushLabels name="brush" toName="image"><Label value="Circle"/><Label value="Square"/><Label value="Triangle"/></BrushLabels>
<KeyPointLabels name="kp" toName="image" smart="true"><Label value="Circle"/><Label value="Square"/><Label value="Triangle"/></KeyPointLabels>
<RectangleLabels name="box" toName="image" smart="true"><Label value="Circle"/><Label value="Square"/><Label value="Triangle"/></RectangleLabels>
</View>"""


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """The bundled model behind the real app, and a two-object benchmark scene saved as a task image."""
    from seediff.testing.shapes import SceneConfig, make_scene

    root = tmp_path_factory.mktemp("scenes")
    scenes = {}
    for seed in (200_002, 200_003):  # the text alone finds both objects of the first, not both of the second
        scenes[seed] = make_scene(seed, SceneConfig(size=32), n_objects=2)
        Image.fromarray(scenes[seed].image).save(root / f"{seed}.png")
    s = Settings.from_env({"SEEDIFF_MODEL": "builtin:shapes", "SEEDIFF_DEVICE": "cpu", "SEEDIFF_ALLOWED_ROOTS": str(root)})
    m = SeeDiffModel(s)
    m.load()
    assert m.ready, m.error
    return scenes, m, TestClient(create_app(s, m))


def _keypoint(x, y, label, positive=True, size=32):
    """A smart KeyPointLabels region as Label Studio 1.23 sends it: is_positive on the region (Alt-click: false)."""
    return {"type": "keypointlabels", "from_name": "kp", "to_name": "image", "original_width": size,
            "original_height": size, "is_positive": positive,
            "value": {"x": 100 * x / size, "y": 100 * y / size, "width": 0.5, "keypointlabels": [label]}}


def _ask(client, seed, *regions):
    task = [{"id": seed, "data": {"image": f"/data/local-files/?d={seed}.png"}}]
    r = client.post("/predict", json={"tasks": task, "label_config": SHAPES_CONFIG, "project": "5",
                                      "params": {"context": {"result": list(regions)} if regions else None}})
    assert r.status_code == 200, r.text[:300]
    return r.json()["results"][0]


def _union(result, label):
    from seediff.lsformat import region_to_mask

    masks = [region_to_mask(r) for r in result if r["value"][r["type"]] == [label]]
    return np.logical_or.reduce(masks) if masks else np.zeros((32, 32), bool)


def _centre(mask):
    ys, xs = np.nonzero(mask)
    k = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    return float(xs[k]) + 0.5, float(ys[k]) + 0.5


def test_a_click_answers_its_label_only_with_the_clicked_object(shapes):
    """One click, one suggestion: only the clicked label, as polygons (the project's control type, though the
    label is also in a BrushLabels), covering the clicked object; answered from the cached attention."""
    scenes, model, client = shapes
    scene = scenes[200_003]
    plain = _ask(client, 200_003)["result"]
    assert not all(_union(plain, o.shape.title())[own].any() for o, own in zip(scene.objects, scene.instance_masks))
    reads = model.metrics["unet_reads"]
    for obj, own in zip(scene.objects, scene.instance_masks):
        x, y = _centre(own)
        label = obj.shape.title()
        t0 = time.perf_counter()
        answer = _ask(client, 200_003, _keypoint(x, y, label))
        wall = time.perf_counter() - t0
        assert {r["value"][r["type"]][0] for r in answer["result"]} == {label}
        assert {r["type"] for r in answer["result"]} == {"polygonlabels"}
        mask = _union(answer["result"], label)
        assert mask[int(y), int(x)] and (mask & own).sum() / (mask | own).sum() >= 0.85
        assert answer["model_version"] == model.model_version and 0 < answer["score"] <= 1
        assert wall < 1.0, wall  # bench/clicks.py measures it (0.3 s is the target; a loaded CI box is slower)
        other = next(s for s in ("Circle", "Square", "Triangle") if s != label)  # the hand beats the word
        mask = _union(_ask(client, 200_003, _keypoint(x, y, other))["result"], other)
        assert mask[int(y), int(x)] and (mask & own).sum() / (mask | own).sum() >= 0.85
    assert model.metrics["unet_reads"] == reads  # every click answered without the UNet


def test_alt_clicks_remove_boxes_confine_and_clicks_accumulate(shapes, caplog):
    scenes, _, client = shapes
    scene, seed = scenes[200_002], 200_002
    a, own_a = scene.objects[0], scene.instance_masks[0]
    xa, ya = _centre(own_a)
    plain = _ask(client, seed)["result"]
    for o, own in zip(scene.objects, scene.instance_masks):
        label = o.shape.title()
        assert _union(plain, label)[own].mean() > 0.5  # the text alone finds it ...
        alt = _union(_ask(client, seed, _keypoint(*_centre(own), label, positive=False))["result"], label)
        assert alt[own].mean() < 0.1  # ... an Alt-click says "not this one": the object leaves its label
        # (builtin:shapes' 4th stage leaves a few edge pixels of one object; the 3rd stage left none)
    ys, xs = np.nonzero(own_a)
    box = {"type": "rectanglelabels", "from_name": "box", "to_name": "image", "original_width": 32,
           "original_height": 32, "value": {"x": 100 * (xs.min() - 1) / 32, "y": 100 * (ys.min() - 1) / 32,
                                             "width": 100 * (xs.max() - xs.min() + 3) / 32,
                                             "height": 100 * (ys.max() - ys.min() + 3) / 32,
                                             "rectanglelabels": [a.shape.title()]}}
    boxed = _union(_ask(client, seed, box)["result"], a.shape.title())
    inside = np.zeros_like(own_a)
    inside[ys.min() - 1: ys.max() + 2, xs.min() - 1: xs.max() + 2] = True
    assert boxed.any() and not (boxed & ~inside).any() and (boxed & own_a).sum() / (boxed | own_a).sum() >= 0.85
    edge = (float(xs[np.argmax(xs)]) + 0.5 - 1, float(ys[np.argmax(xs)]) + 0.5)  # a pixel near the right edge
    one = _union(_ask(client, seed, _keypoint(xa, ya, a.shape.title()))["result"], a.shape.title())
    two = _union(_ask(client, seed, _keypoint(xa, ya, a.shape.title()), _keypoint(*edge, a.shape.title()))["result"],
                 a.shape.title())
    assert two[int(ya), int(xa)] and two[int(edge[1]), int(edge[0])] and (one & two).sum() >= 0.95 * one.sum()
    with caplog.at_level(logging.WARNING, logger="seediff_labelstudio"):
        stray = _ask(client, seed, _keypoint(xa, ya, "Hexagon"))
    assert stray["result"] == [] and "labels ['Hexagon'] are not labels of the <PolygonLabels>/<BrushLabels>" in caplog.text
