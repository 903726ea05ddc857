"""preannotate without a Label Studio server: the label plan it uses, model versions, image fetching through
the backend's safe fetcher (Label Studio auth, other hosts refused) and CLI input errors. The full run against a
real Label Studio is tests/e2e/test_cli_preannotate.py."""

from __future__ import annotations

import http.server
import io
import re
import threading

import pytest
from PIL import Image
from typer.testing import CliRunner

from seediff.cli import app
from seediff_labelstudio.predict import PredictOptions
from seediff_labelstudio.preannotate import label_plan, make_fetcher, model_version_for, options_of

E2E_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <PolygonLabels name="poly" toName="image">
    <Label value="Circle" predicted_values="circle" background="#e53935"/>
    <Label value="Square" predicted_values="square" background="#1e88e5"/>
  </PolygonLabels>
  <BrushLabels name="brush" toName="image">
    <Label value="Circle" predicted_values="circle" background="#e53935"/>
    <Label value="Square" predicted_values="square" background="#1e88e5"/>
  </BrushLabels>
</View>"""


def test_label_plan_from_the_e2e_config():
    plan = label_plan(E2E_CONFIG)
    assert (plan.to_name, plan.data_key, plan.polygon, plan.brush) == ("image", "image", "poly", "brush")
    assert plan.words == {"Circle": ["circle"], "Square": ["square"]}
    assert plan.where == {"Circle": ["polygon", "brush"], "Square": ["polygon", "brush"]}
    assert plan.classes == ["circle", "square"]


def test_model_version_names_the_settings():
    assert model_version_for("/models/sd15/", "seediff", "noise", 100) == "seediff-sd15-seediff-noise-t100-r4"
    assert model_version_for("builtin:shapes", "daam", "invert", 100) == "seediff-builtin_shapes-daam-invert-r4"


def test_the_control_type_is_a_prediction_option_with_its_own_model_version():
    """--control / SEEDIFF_CONTROL: polygons by default (model_version unchanged), brush or both named in it."""
    default = options_of({"model": "builtin:shapes"})
    assert default.control == "polygon" and default.model_version == "seediff-builtin_shapes-seediff-noise-t100-r4"
    versions = {options_of({"model": "builtin:shapes", "control": c}).model_version for c in ("polygon", "brush", "both")}
    assert len(versions) == 3
    with pytest.raises(ValueError, match="control must be one of polygon, brush, both, got 'rle'"):
        PredictOptions(control="rle")


class _Handler(http.server.BaseHTTPRequestHandler):
    seen: list[tuple[str, str | None]] = []
    png = b""

    def do_GET(self):  # noqa: N802 (http.server API)
        _Handler.seen.append((self.path, self.headers.get("Authorization")))
        if self.path.startswith("/data/upload/"):
            body = _Handler.png
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    buf = io.BytesIO()
    Image.new("RGB", (7, 5), (1, 2, 3)).save(buf, format="PNG")
    _Handler.png, _Handler.seen = buf.getvalue(), []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_fetch_goes_through_the_backend_fetcher_with_label_studio_auth(server, monkeypatch):
    for var in ("SEEDIFF_ALLOWED_ROOTS", "SEEDIFF_ALLOWED_HOSTS"):
        monkeypatch.delenv(var, raising=False)
    fetcher = make_fetcher(server + "/", "abc")
    img = fetcher.fetch("/data/upload/1/x.png")
    assert img.size == (7, 5) and img.getpixel((0, 0)) == (1, 2, 3)
    assert fetcher.fetch(f"{server}/data/upload/2/y.png").size == (7, 5)
    assert _Handler.seen == [("/data/upload/1/x.png", "Token abc"), ("/data/upload/2/y.png", "Token abc")]
    for ref in ["http://169.254.169.254/latest/meta-data", "file:///etc/passwd", "s3://bucket/x.png",
                "http://example.com/data/upload/1/x.png"]:
        with pytest.raises(ValueError):
            fetcher.fetch(ref)
    assert len(_Handler.seen) == 2  # nothing was requested for the refused references


def test_cli_preannotate_input_errors_are_one_line(tmp_path):
    r = CliRunner().invoke(app, ["preannotate", "--url", "ftp://x", "--api-key", "k", "--project", "1",
                                 "--work-dir", str(tmp_path)])
    assert r.exit_code == 2 and "must start with http:// or https://" in r.output and "Traceback" not in r.output
    missing = CliRunner().invoke(app, ["preannotate", "--project", "1"], env={"LABEL_STUDIO_URL": "",
                                                                                "LABEL_STUDIO_API_KEY": ""})
    assert missing.exit_code == 2 and "--url" in missing.output


def test_unreachable_label_studio_is_one_line(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = CliRunner().invoke(app, ["preannotate", "--url", f"http://127.0.0.1:{port}", "--api-key", "k",
                                 "--project", "1", "--work-dir", str(tmp_path), "--no-progress"])
    assert r.exit_code == 2, r.output
    assert f"cannot reach Label Studio at http://127.0.0.1:{port}" in r.output and "Traceback" not in r.output


class _FakeLabelStudio:
    """Just enough of Label Studio's API for preannotate (project, paged task list, uploads with the token,
    prediction import), on a fixed port so it can go away and come back at the same URL."""

    def __init__(self, port: int, tasks: list[dict], png: bytes, posted: list, go_down_after_listing: bool) -> None:
        import json as _json
        from urllib.parse import parse_qs, urlsplit

        state = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _send(self, code, body, ctype="application/json"):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802
                if self.headers.get("Authorization") != "Token k":
                    return self._send(401, b"{}")
                parts = urlsplit(self.path)
                if parts.path == "/api/projects/1/":
                    return self._send(200, _json.dumps({"id": 1, "label_config": E2E_CONFIG}).encode())
                if parts.path == "/api/tasks/":
                    page = int(parse_qs(parts.query).get("page", ["1"])[0])
                    done = {p["task"] for p in posted}
                    listed = [t | {"predictions": [{"model_version": p["model_version"]} for p in posted
                                                   if p["task"] == t["id"]]} for t in tasks] if page == 1 else []
                    self._send(200, _json.dumps({"tasks": listed, "total": len(tasks), "total_annotations": 0,
                                                 "total_predictions": len(done)}).encode())
                    if page > 1 and go_down_after_listing:  # Label Studio goes away after the listing
                        threading.Thread(target=state.close, daemon=True).start()
                    return None
                if parts.path.startswith("/data/upload/"):
                    return self._send(200, png, "image/png")
                return self._send(404, b"{}")

            def do_POST(self):  # noqa: N802
                body = _json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
                if self.path.startswith("/api/projects/1/import/predictions"):
                    posted.extend(body)
                    return self._send(201, _json.dumps({"created": len(body)}).encode())
                return self._send(404, b"{}")

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_label_studio_gone_mid_run_gives_per_task_errors_and_a_rerun_completes(tmp_path, tiny_pipe_path):
    """Label Studio answers the listing, then is unreachable while the images are fetched: every task fails
    with a clear per-task error, nothing is posted; once it is back, the same command predicts and posts all."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    buf = io.BytesIO()
    Image.new("RGB", (40, 32), (200, 30, 30)).save(buf, format="PNG")
    tasks = [{"id": i, "data": {"image": f"/data/upload/1/{i}.png"}} for i in (1, 2, 3)]
    posted: list = []
    argv = ["preannotate", "--url", f"http://127.0.0.1:{port}", "--api-key", "k", "--project", "1",
            "--model", str(tiny_pipe_path), "--device", "cpu", "--work-dir", str(tmp_path / "work"), "--no-progress"]
    ls = _FakeLabelStudio(port, tasks, buf.getvalue(), posted, go_down_after_listing=True)
    try:
        down = CliRunner().invoke(app, argv)
    finally:
        ls.close()  # (already closed by itself after the listing; closing twice is harmless)
    assert down.exit_code == 1, down.output
    assert "Traceback" not in down.output and posted == []
    for i in (1, 2, 3):  # a fetch racing the shutdown may see the connection reset (ReadError) rather than refused
        assert re.search(rf"failed task-{i}: FetchError: GET http://127\.0\.0\.1:{port}/data/upload/1/{i}\.png "
                         r"failed: (ConnectError|ReadError|RemoteProtocolError)", down.output), down.output
    assert "rerun the same command to retry the failed tasks" in down.output

    ls = _FakeLabelStudio(port, tasks, buf.getvalue(), posted, go_down_after_listing=False)
    try:
        back = CliRunner().invoke(app, argv)
        assert back.exit_code == 0, back.output
        assert "3 tasks, 0 already had" in back.output and "3 predictions posted, 0 failed" in back.output
        assert sorted(p["task"] for p in posted) == [1, 2, 3] and all(p["result"] for p in posted)
        again = CliRunner().invoke(app, argv)  # everything is there now: nothing to do
        assert again.exit_code == 0 and "3 already had" in again.output and "0 predictions posted" in again.output
    finally:
        ls.close()
