"""The Label Studio ML backend through its real HTTP app: configs, safe fetching, bad input, auth, concurrency."""

from __future__ import annotations

import concurrent.futures as cf
import logging
import struct
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from seediff_labelstudio.fetch import Fetcher, FetchError, auth_header
from seediff_labelstudio.model import SeeDiffModel
from seediff_labelstudio.server import create_app
from seediff_labelstudio.settings import Settings, SettingsError

AUTH = ("annotator", "s3cret-pass")
KEY = "0123456789abcdef0123456789abcdef01234567"

BOTH = """<View><Image name="image" value="$image"/>
<PolygonLabels name="poly" toName="image"><Label value="Dog"/><Label value="Cat"/></PolygonLabels>
<BrushLabels name="brush" toName="image"><Label value="Dog"/><Label value="Cat"/></BrushLabels></View>"""
POLY = """<View><Image name="img" value="$photo"/>
<PolygonLabels name="poly" toName="img"><Label value="Traffic light" predicted_values="traffic light"/>
<Label value="Pet" predicted_values="dog,cat"/></PolygonLabels></View>"""
BRUSH = """<View><Image name="image" value="$image"/>
<BrushLabels name="brush" toName="image"><Label value="Dog"/></BrushLabels></View>"""
NO_IMAGE = """<View><Text name="text" value="$text"/>
<Labels name="lab" toName="text"><Label value="Dog"/></Labels></View>"""
NO_CONTROL = """<View><Image name="image" value="$image"/>
<RectangleLabels name="box" toName="image"><Label value="Dog"/></RectangleLabels></View>"""


def _png(path, w=48, h=40, seed=0):
    Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)).save(path)
    return path


def _huge_png(path, w=20000, h=20000):
    """A valid 20000×20000 grey PNG written without allocating it (compresses to ~400 KB)."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    raw = zlib.compress((b"\x00" + b"\x80" * w) * h, 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    _png(d / "a.png")
    _png(d / "b.png", 64, 32, seed=1)
    (d / "notes.txt").write_text("not an image")
    _huge_png(d / "huge.png")
    outside = tmp_path_factory.mktemp("outside")
    _png(outside / "secret.png")
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


def test_setup_returns_model_version_and_rejects_bad_configs(client, model):
    r = client.post("/setup", json={"project": "3.1700000000", "schema": BOTH, "hostname": "http://x",
                                    "access_token": "tok", "extra_params": {}}, auth=AUTH)
    assert r.status_code == 200 and r.json() == {"model_version": model.model_version}
    r = client.post("/setup", json={"schema": NO_IMAGE}, auth=AUTH)
    assert r.status_code == 400 and "no <Image>" in r.json()["detail"]
    r = client.post("/setup", json={"schema": NO_CONTROL}, auth=AUTH)
    assert r.status_code == 400 and "PolygonLabels" in r.json()["detail"]


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
    assert all(res["result"] == [] for res in results[1:7])
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
    assert client.post("/predict", json={"label_config": BOTH}, auth=AUTH).status_code == 422
    r = _predict(client, [{"id": 1, "data": _local("a.png")}], NO_IMAGE)
    assert r.status_code == 400 and "no <Image>" in r.json()["detail"]
    r = _predict(client, [{"id": 1, "data": _local("a.png")}] * 65)
    assert r.status_code == 413
    assert client.post("/webhook", content=b"x", auth=AUTH).status_code == 400
    assert client.post("/webhook", json={"action": "ANNOTATION_CREATED"}, auth=AUTH).json()["status"] == "ok"


def test_interactive_context_steers_the_label(client):
    """An annotator's keypoint seeds its label; a rectangle confines it (both in Label Studio percent)."""
    from seediff.convert import polygons_to_mask

    task = [{"id": 1, "data": {"photo": "/data/local-files/?d=a.png"}}]
    plain = _predict(client, task, POLY).json()["results"][0]["result"]
    click = {"result": [{"type": "keypointlabels", "value": {"x": 10.0, "y": 10.0, "keypointlabels": ["Traffic light"]}}]}
    assert _predict(client, task, POLY, params={"context": click}).json()["results"][0]["result"] != plain
    box = {"result": [{"type": "rectanglelabels", "value": {"x": 0, "y": 0, "width": 50, "height": 50,
                                                            "rectanglelabels": ["Traffic light"]}}]}
    boxed = _predict(client, task, POLY, params={"context": box}).json()["results"][0]["result"]
    light = [r for r in boxed if r["value"]["polygonlabels"] == ["Traffic light"]]
    assert light, "the box's most attended cell seeds the label"
    polys = [[c * s / 100 for p in r["value"]["points"] for c, s in zip(p, (48, 40))] for r in light]
    mask = polygons_to_mask(polys, 40, 48)
    assert mask.any() and not mask[21:].any() and not mask[:, 25:].any()  # inside the 24×20 px box


def test_concurrent_predicts_all_answered(client):
    body = {"tasks": [{"id": 1, "data": _local("a.png")}], "label_config": BOTH}
    with cf.ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda _: client.post("/predict", json=body, auth=AUTH).status_code, range(50)))
    assert codes == [200] * 50
    m = client.get("/metrics", auth=AUTH).json()
    assert m["requests"] >= 50 and m["unet_s"] > 0


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


def test_fetcher_rules(root):
    s = Settings.from_env({"SEEDIFF_ALLOWED_ROOTS": str(root), "LABEL_STUDIO_URL": "http://127.0.0.1:9",
                           "SEEDIFF_ALLOWED_HOSTS": "images.example.org"})
    f = Fetcher(s)
    assert f.fetch(str(root / "a.png")).size == (48, 40)  # absolute path under a root
    assert f.fetch(f"file://{root / 'b.png'}").size == (64, 32)
    for ref, msg in [("http://localhost:9/x.png", "host 'localhost'"),  # a name for the LS address is not LS
                     ("https://evil.example.org/x.png", "evil.example.org"),
                     ("gs://bucket/x.png", "scheme 'gs'"),
                     ("/etc/passwd", "not under SEEDIFF_ALLOWED_ROOTS"),
                     (str(root / "link.png"), "not under SEEDIFF_ALLOWED_ROOTS"),  # symlink escape
                     ("relative.png", "cannot fetch"),
                     (None, "non-empty string")]:
        with pytest.raises(FetchError, match=msg):
            f.fetch(ref)
    with pytest.raises(FetchError, match="failed|refused|timed out|HTTP"):
        f.fetch("http://127.0.0.1:9/data/upload/1/x.png")  # Label Studio unreachable: clear error
    assert auth_header(KEY) == f"Token {KEY}"
    assert auth_header("eyJhbGciOi.eyJzdWIiOjF9.sig").startswith("Bearer ")
