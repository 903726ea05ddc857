"""A hostile image server on 127.0.0.1 for the hardening tests and bench/hostile.py: raw HTTP written by hand so
it can do what a well-behaved server never does — stack Content-Encodings, drip headers or a body one byte at a
time, inflate to gigabytes. Every loop is bounded (by a byte count or a time limit) and stops when the client
hangs up; only loopback traffic."""

from __future__ import annotations

import gzip
import io
import socket
import socketserver
import threading
import time
import zlib

from PIL import Image

__all__ = ["HostileHost", "gzip_of_zeros", "png_bytes"]


def png_bytes(w: int = 40, h: int = 30, mode: str = "RGB") -> bytes:
    """A small valid PNG."""
    buf = io.BytesIO()
    Image.new(mode, (w, h), 90).save(buf, "PNG")
    return buf.getvalue()


def gzip_of_zeros(size: int, layers: int = 1) -> bytes:
    """``size`` zero bytes gzip-compressed ``layers`` times, built in 1 MiB steps (never ``size`` bytes at once)."""
    z = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    block = bytes(2**20)
    out = bytearray()
    for _ in range(size // len(block)):
        out += z.compress(block)
    out += z.compress(bytes(size % len(block))) + z.flush()
    data = bytes(out)
    for _ in range(layers - 1):
        data = gzip.compress(data, 9)
    return data


class HostileHost:
    """``routes[path] = behaviour(send, path)``; ``send(bytes)`` writes to the client (False once it hung up).

    Helpers register the behaviours the tests need: :meth:`encoded`, :meth:`drip_headers`, :meth:`drip_body`.
    """

    def __init__(self) -> None:
        self.routes: dict = {}
        self.hits: list[str] = []
        host = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                self.request.settimeout(30)
                head = b""
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    try:
                        part = self.request.recv(4096)
                    except OSError:
                        return
                    if not part:
                        return
                    head += part
                path = head.split(b" ", 2)[1].decode("latin-1") if head.count(b" ") >= 2 else "/"
                host.hits.append(path)

                def send(data: bytes) -> bool:
                    try:
                        self.request.sendall(data)
                        return True
                    except OSError:
                        return False
                route = host.routes.get(path.split("?")[0])
                if route is None:
                    send(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                else:
                    route(send, path)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def encoded(self, path: str, body: bytes, encoding: str) -> None:
        """Serve ``body`` as is with ``Content-Encoding: encoding`` (e.g. 'gzip, gzip' over a double-gzipped body)."""
        def behaviour(send, _):
            send(f"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Encoding: {encoding}\r\n"
                 f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        self.routes[path] = behaviour

    def drip_headers(self, path: str, every: float, limit_s: float = 120.0) -> None:
        """Send a status line, then one header byte every ``every`` seconds (never finishing), for ``limit_s``."""
        def behaviour(send, _):
            if not send(b"HTTP/1.1 200 OK\r\n"):
                return
            end = time.monotonic() + limit_s
            while time.monotonic() < end and send(b"X"):
                time.sleep(every)
        self.routes[path] = behaviour

    def drip_body(self, path: str, every: float, limit_s: float = 120.0) -> None:
        """Send complete headers announcing 1 MB, then one body byte every ``every`` seconds, for ``limit_s``."""
        def behaviour(send, _):
            if not send(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 1000000\r\n\r\n"):
                return
            end = time.monotonic() + limit_s
            while time.monotonic() < end and send(b"\x00"):
                time.sleep(every)
        self.routes[path] = behaviour

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
