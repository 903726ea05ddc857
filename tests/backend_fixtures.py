"""Helpers for the backend tests: real labeling configs, image files, and a small local HTTP server that plays
Label Studio (or another image host) and records what it was asked."""

from __future__ import annotations

import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image

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


def png(path, w=48, h=40, seed=0):
    """A random RGB PNG of w×h at ``path``."""
    Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)).save(path)
    return path


def huge_png(path, w=20000, h=20000):
    """A valid 20000×20000 grey PNG, compressed row by row so the 400 MB of pixels never exist (~1.8 MB file)."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    z, row = zlib.compressobj(1), b"\x00" + b"\x80" * w  # filter byte 0, then w grey pixels
    raw = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    return path


class FakeHost:
    """A threaded HTTP server on 127.0.0.1: ``routes[path] = handler(req) -> (status, headers, body)``.

    ``requests`` records (method, path, headers) of every request, in order.
    """

    def __init__(self) -> None:
        self.routes: dict = {}
        self.requests: list[tuple[str, str, dict]] = []
        host = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method):
                length = int(self.headers.get("content-length") or 0)
                self.body = self.rfile.read(length) if length else b""
                host.requests.append((method, self.path, dict(self.headers)))
                route = host.routes.get(self.path.split("?")[0])
                status, headers, body = route(self) if route else (404, {}, b"not found")
                self.send_response(status)
                for k, v in headers.items():
                    if v is not None:  # None: leave the header out (a body that ends when the connection closes)
                        self.send_header(k, v)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self):
                self._serve("GET")

            def do_POST(self):
                self._serve("POST")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def file(self, path: str, data: bytes, **headers):
        """Serve ``data`` at ``path``; with ``auth=`` only to requests whose Authorization header equals it."""
        need = headers.pop("auth", None)

        def handler(req):
            if need is not None and req.headers.get("Authorization") != need:
                return 401, {}, b'{"detail": "Authentication credentials were not provided."}'
            return 200, {"Content-Type": "image/png", **headers}, data
        self.routes[path] = handler

    def redirect(self, path: str, location: str):
        self.routes[path] = lambda req: (302, {"Location": location}, b"")

    def slow(self, path: str, seconds: float):
        def handler(req):
            time.sleep(seconds)
            return 200, {}, b"late"
        self.routes[path] = handler

    def close(self):
        self.server.shutdown()
        self.server.server_close()
