"""preannotate without a Label Studio server: label plans from real configs, model versions, the image fetch
(same-origin only, with the SDK's auth header, size-limited) and CLI input errors. The full run against a
real Label Studio is tests/e2e/test_cli_preannotate.py."""

from __future__ import annotations

import http.server
import io
import threading
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from seediff.cli import app
from seediff_labelstudio.preannotate import fetch_task_image, label_plan, model_version_for

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


def test_label_plan_defaults_and_errors():
    cfg = (Path(__file__).parent / "data" / "ls_export" / "config.xml").read_text()
    plan = label_plan(cfg)  # no predicted_values: the label itself, lower-cased; rectangles are not ours
    assert plan.words == {"cat": ["cat"], "dog": ["dog"], "sky": ["sky"]}
    assert plan.where["dog"] == ["polygon", "brush"] and plan.where["sky"] == ["brush"]
    multi = E2E_CONFIG.replace('predicted_values="circle"', 'predicted_values="circle, ball"')
    assert label_plan(multi).words["Circle"] == ["circle", "ball"]
    with pytest.raises(ValueError, match="no <Image>"):
        label_plan('<View><Text name="t" value="$t"/><Choices name="c" toName="t"><Choice value="a"/></Choices></View>')
    with pytest.raises(ValueError, match="no <PolygonLabels> or <BrushLabels>"):
        label_plan('<View><Image name="i" value="$i"/><RectangleLabels name="r" toName="i"><Label value="a"/>'
                   '</RectangleLabels></View>')


def test_model_version_names_the_settings():
    assert model_version_for("/models/sd15/", "seediff", "noise", 100) == "seediff-sd15-seediff-noise-t100"
    assert model_version_for("builtin:shapes", "daam", "invert", 100) == "seediff-builtin_shapes-daam-invert"


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


def test_fetch_reads_from_label_studio_with_its_auth_and_refuses_other_hosts(server):
    headers = {"Authorization": "Token abc"}
    img = fetch_task_image("/data/upload/1/x.png", server, headers)
    assert img.size == (7, 5) and img.getpixel((0, 0)) == (1, 2, 3)
    assert fetch_task_image(f"{server}/data/upload/2/y.png", server, headers).size == (7, 5)
    assert _Handler.seen == [("/data/upload/1/x.png", "Token abc"), ("/data/upload/2/y.png", "Token abc")]
    with pytest.raises(ValueError, match="HTTP 404"):
        fetch_task_image("/data/missing.png", server, headers)
    for ref in ["http://169.254.169.254/latest/meta-data", "file:///etc/passwd", "s3://bucket/x.png",
                server.replace("127.0.0.1", "localhost") + "/data/upload/1/x.png"]:
        with pytest.raises(ValueError, match="refusing to fetch"):
            fetch_task_image(ref, server, headers)
    assert len(_Handler.seen) == 3  # nothing was requested for the refused references


def test_cli_preannotate_input_errors_are_one_line(tmp_path):
    r = CliRunner().invoke(app, ["preannotate", "--url", "ftp://x", "--api-key", "k", "--project", "1",
                                 "--work-dir", str(tmp_path)])
    assert r.exit_code == 2 and "must start with http:// or https://" in r.output and "Traceback" not in r.output
    missing = CliRunner().invoke(app, ["preannotate", "--project", "1"], env={"LABEL_STUDIO_URL": "",
                                                                                "LABEL_STUDIO_API_KEY": ""})
    assert missing.exit_code == 2 and "--url" in missing.output
