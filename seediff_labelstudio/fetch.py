"""Fetch a task's image safely: only from Label Studio, allowed hosts, or files under allowed roots.

No SSRF: an http(s) URL must name the Label Studio host (``LABEL_STUDIO_URL``, trusted as configured) or a host
in ``SEEDIFF_ALLOWED_HOSTS``, matched by name as written. An allowed host's name is resolved and refused when
any address is loopback, private, link-local or otherwise not global, unless the host is also in
``SEEDIFF_ALLOWED_PRIVATE_HOSTS``; the connection then goes to the checked address (no DNS rebinding between
check and connect). Every redirect is checked again. No path traversal: local files are read only when their
real path (symlinks resolved, no '..') lies under an allowed root. Caps on bytes and pixels (decompression
bombs), a short list of raster formats (no EPS/PDF decoders), EXIF orientation applied. The API key is sent
only to Label Studio and never logged; a personal access token (a JWT refresh token) is exchanged for an
access token through Label Studio's ``/api/token/refresh/``.

Bounded in time and memory whatever the server does: the whole fetch (connect, headers, body, redirects) runs
under one wall-clock deadline from the first byte sent, enforced by shutting the sockets down when it passes
(httpx's timeouts are per read: a server dripping one header byte every few seconds never trips them). The body
is read raw and decoded here, at most one layer of gzip/deflate, with the byte cap counted on the decoded bytes
as they are produced (a ``Content-Encoding: gzip, gzip`` bomb is refused before it inflates).
"""

from __future__ import annotations

import io
import ipaddress
import logging
import socket
import threading
import time
import zlib
from pathlib import Path
from urllib.parse import parse_qs, unquote, urljoin, urlsplit, urlunsplit

from PIL import Image, ImageOps

from .pixels import rgb_image
from .settings import Settings, jwt_claims

__all__ = ["FetchError", "Fetcher", "auth_header", "IMAGE_FORMATS", "MAX_REF_CHARS"]

log = logging.getLogger("seediff_labelstudio")
_MAX_REDIRECTS = 3
MAX_REF_CHARS = 8192  # a task's image reference (URL or path) longer than this is refused
_LS_PREFIXES = ("/data/", "/tasks/", "/api/", "/storage-data/")  # paths Label Studio serves
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF", "MPO")  # decoders a task image may use


class FetchError(ValueError):
    """The image could not (or may not) be fetched; the message is safe to show to users."""


def auth_header(key: str) -> str:
    """'Token <key>' for a legacy token, 'Bearer <key>' for a JWT (personal access / access token)."""
    return f"Bearer {key}" if jwt_claims(key) is not None else f"Token {key}"


class Fetcher:
    """Resolve a task's image reference to a PIL RGB image, within the settings' allow-lists."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ls = urlsplit(settings.ls_url) if settings.ls_url else None
        self._access: dict[str, tuple[str, float]] = {}  # refresh token → (access token, expiry)
        self._lock = threading.Lock()

    # ---- public --------------------------------------------------------------------------------------
    def fetch(self, ref: object, api_key: str | None = None) -> Image.Image:
        """The image ``ref`` points to (task data value): '/data/...', http(s) URL or an allowed local path.

        ``api_key``: the key for Label Studio when ``LABEL_STUDIO_API_KEY`` is unset (the token Label Studio
        sent in ``/setup``); never sent anywhere but ``LABEL_STUDIO_URL``.
        """
        if not isinstance(ref, str) or not ref.strip():
            raise FetchError(f"the task's image reference must be a non-empty string, got {type(ref).__name__}")
        ref = ref.strip()
        _check_ref_text(ref)
        parts = urlsplit(ref)
        if parts.scheme in ("http", "https"):
            return self._decode(self._get(ref, api_key))
        if parts.scheme == "file":
            return self._decode(self._read_local(Path(unquote(parts.path))))
        if parts.scheme:
            raise FetchError(f"unsupported image URL scheme {parts.scheme!r}: use http(s), /data/... or a file under an allowed root")
        if ref.startswith("/data/local-files"):
            local = self._local_files_path(ref)
            if local is not None:
                return self._decode(self._read_local(local))
        elif ref.startswith("/") and "?" not in ref:
            local = self._under_roots(Path(ref))
            if local is not None and local.is_file():  # e.g. a root mounted at /data/images
                return self._decode(self._read_local(local))
        if ref.startswith(_LS_PREFIXES):
            if self._ls is None:
                raise FetchError(f"{ref[:100]!r} is served by Label Studio, but LABEL_STUDIO_URL is not set")
            return self._decode(self._get(urljoin(self.settings.ls_url + "/", ref.lstrip("/")), api_key))
        if ref.startswith("/"):
            return self._decode(self._read_local(Path(ref)))
        raise FetchError(f"cannot fetch {ref[:100]!r}: not a URL, a Label Studio path or an absolute file path")

    def token_opens_project(self, token: str, project: str) -> bool:
        """Whether Label Studio accepts ``token`` for project ``project``: ``GET /api/projects/<id>/`` with it
        answers 200 (within the fetch deadline). How /setup decides that a token really comes from Label Studio."""
        if self._ls is None or not project.isdigit() or not token:
            return False
        try:
            self._get(f"{self.settings.ls_url}/api/projects/{int(project)}/", token)
        except FetchError as exc:
            log.warning("Label Studio did not confirm the token sent to /setup for project %s: %s", project, exc)
            return False
        return True

    # ---- local files ---------------------------------------------------------------------------------
    def _local_files_path(self, ref: str) -> Path | None:
        """'/data/local-files/?d=rel/path' → a file under an allowed root, if one has it."""
        query = parse_qs(urlsplit(ref).query)
        rel = (query.get("d") or [""])[0]
        if not rel:
            raise FetchError(f"{ref[:100]!r} has no ?d= file path")
        for root in self.settings.allowed_roots:
            found = self._under_roots(root / rel.lstrip("/"))
            if found is not None and found.is_file():
                return found
        return None

    def _under_roots(self, path: Path) -> Path | None:
        """The real path of ``path`` if it lies under an allowed root (symlinks and '..' resolved), else None."""
        if ".." in path.parts:
            raise FetchError(f"refusing path with '..': {str(path)[:100]!r}")
        real = path.resolve()
        for root in self.settings.allowed_roots:
            if real == root or root in real.parents:
                return real
        return None

    def _read_local(self, path: Path) -> bytes:
        """Bytes of an allowed local file, within the size cap."""
        real = self._under_roots(path)
        if real is None:
            raise FetchError(f"refusing to read {str(path)[:100]!r}: not under SEEDIFF_ALLOWED_ROOTS")
        if not real.is_file():
            raise FetchError(f"no such file: {str(path)[:100]!r}")
        size = real.stat().st_size
        if size > self.settings.max_image_bytes:
            raise FetchError(f"image file is {size} bytes, over the {self.settings.max_image_bytes}-byte cap")
        with real.open("rb") as fh:
            return fh.read(self.settings.max_image_bytes + 1)[: self.settings.max_image_bytes]

    # ---- http ----------------------------------------------------------------------------------------
    def _is_ls(self, parts) -> bool:
        return self._ls is not None and (parts.scheme, parts.hostname, parts.port) == (
            self._ls.scheme, self._ls.hostname, self._ls.port)

    def _target(self, url: str) -> tuple[bool, str, dict[str, str], dict]:
        """Check ``url``; returns (is Label Studio, URL to connect to, extra headers, httpx extensions).

        Label Studio is reached as configured. Any other host must be allowed by name and, unless it is a
        private host, resolve only to global addresses; it is then reached at the address that was checked.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FetchError(f"refusing to fetch {url[:100]!r}: only http(s) URLs")
        if parts.username is not None or parts.password is not None:
            # httpx would send them as basic auth, replacing Label Studio's key; other hosts got them dropped
            raise FetchError(f"refusing to fetch {_redact(url)}: user:password in a URL is not sent anywhere")
        if self._is_ls(parts):
            return True, url, {}, {}
        host = parts.hostname.lower()
        private_ok = host in self.settings.allowed_private_hosts
        if host not in self.settings.allowed_hosts and not private_ok:
            raise FetchError(
                f"refusing to fetch from host {host!r}: only Label Studio ({self._ls.hostname if self._ls else 'unset'}) "
                "and SEEDIFF_ALLOWED_HOSTS are allowed")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise FetchError(f"cannot resolve image host {host!r}: {exc}") from None
        addrs = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
        bad = [a for a in addrs if not a.is_global]
        if bad and not private_ok:
            raise FetchError(f"refusing to fetch from host {host!r}: it resolves to non-public address {bad[0]} "
                             "(list it in SEEDIFF_ALLOWED_PRIVATE_HOSTS if that is intended)")
        ip = addrs[0]
        netloc = f"[{ip}]" if ip.version == 6 else str(ip)
        pinned = urlunsplit((parts.scheme, f"{netloc}:{port}", parts.path or "/", parts.query, ""))
        host_header = host if parts.port is None else f"{host}:{parts.port}"
        return False, pinned, {"Host": host_header}, {"sni_hostname": host}

    def _auth(self, is_ls: bool, api_key: str | None, renew: bool = False) -> dict[str, str]:
        """The Authorization header for Label Studio: 'Token' for a legacy key, 'Bearer' for a JWT."""
        key = self.settings.ls_api_key or api_key
        if not (is_ls and key):
            return {}
        claims = jwt_claims(key)
        if claims is None:
            return {"Authorization": f"Token {key}"}
        if claims.get("token_type", "access") != "refresh":
            return {"Authorization": f"Bearer {key}"}
        return {"Authorization": f"Bearer {self._access_token(key, renew)}"}

    def _access_token(self, refresh: str, renew: bool) -> str:
        """A personal access token is a JWT *refresh* token: exchange it for an access token (cached to expiry)."""
        import httpx

        with self._lock:
            cached = self._access.get(refresh)
            if cached and cached[1] > time.time() and not renew:
                return cached[0]
            url = f"{self.settings.ls_url}/api/token/refresh/"
            try:
                r = httpx.post(url, json={"refresh": refresh}, timeout=self.settings.fetch_timeout)
            except httpx.HTTPError as exc:
                raise FetchError(f"exchanging LABEL_STUDIO_API_KEY at {_redact(url)} failed: {type(exc).__name__}") from None
            try:
                access = r.json().get("access") if r.status_code == 200 else None
            except ValueError:
                access = None
            if not isinstance(access, str):
                raise FetchError(f"Label Studio refused to exchange the personal access token (LABEL_STUDIO_API_KEY): "
                                 f"POST {_redact(url)} answered HTTP {r.status_code}")
            exp = (jwt_claims(access) or {}).get("exp")
            expiry = float(exp) - 30 if isinstance(exp, (int, float)) else time.time() + 240
            self._access[refresh] = (access, expiry)
            return access

    def _get(self, url: str, api_key: str | None = None) -> bytes:
        """GET with manual redirects (each target re-checked), the byte cap on decoded bytes and one deadline
        (``SEEDIFF_FETCH_TIMEOUT`` from the first byte sent, redirects included)."""
        import httpx

        timeout = self.settings.fetch_timeout
        renewed = False
        redirects = 0
        with _Deadline(timeout) as deadline:
            while True:
                is_ls, target, headers, extensions = self._target(url)
                headers = {**headers, **self._auth(is_ls, api_key, renew=renewed), "Accept-Encoding": "identity"}
                # A pinned (non-LS) target goes direct: a proxy from the environment would resolve the name again.
                client = httpx.Client(timeout=max(0.01, deadline.left()), follow_redirects=False, trust_env=is_ls)
                try:
                    with client, client.stream("GET", target, headers=headers,
                                               extensions={**extensions, "trace": deadline.trace}) as resp:
                        if resp.is_redirect:
                            redirects += 1
                            if redirects > _MAX_REDIRECTS:
                                raise FetchError(f"too many redirects fetching {_redact(url)}")
                            url = urljoin(url, resp.headers.get("location", ""))
                            continue
                        bearer = "Bearer" in headers.get("Authorization", "")
                        if resp.status_code == 401 and is_ls and not renewed and bearer:
                            renewed = True  # the cached access token may have expired early: exchange once more
                            continue
                        if resp.status_code != 200:
                            raise FetchError(f"GET {_redact(url)} answered HTTP {resp.status_code}")
                        return self._body(resp, deadline)
                except FetchError:
                    raise
                except (httpx.HTTPError, OSError) as exc:
                    if deadline.expired or isinstance(exc, httpx.TimeoutException):
                        raise FetchError(f"GET {_redact(url)} timed out after {timeout:g} s "
                                         "(SEEDIFF_FETCH_TIMEOUT, the whole fetch)") from None
                    raise FetchError(f"GET {_redact(url)} failed: {type(exc).__name__}") from None
                except (httpx.InvalidURL, UnicodeError, ValueError) as exc:
                    raise FetchError(f"GET {_redact(url)}: not a valid URL ({_one_line(exc)})") from None

    def _body(self, resp, deadline: "_Deadline") -> bytes:
        """The response body, decoded (at most one gzip/deflate layer) with the byte cap on decoded bytes."""
        cap = self.settings.max_image_bytes
        declared = resp.headers.get("content-length") or "0"
        if declared.isdigit() and int(declared) > cap:
            raise FetchError(f"image is {declared} bytes, over the {cap}-byte cap (SEEDIFF_MAX_IMAGE_BYTES)")
        decoder = _decoder(resp.headers.get("content-encoding", ""))
        data = bytearray()
        raw = 0
        for chunk in resp.iter_raw():
            raw += len(chunk)
            if raw > cap:
                raise FetchError(f"image is over the {cap}-byte cap (SEEDIFF_MAX_IMAGE_BYTES)")
            if decoder is None:
                data += chunk
            else:
                try:
                    data += decoder.decompress(chunk, cap + 1 - len(data))
                except zlib.error:
                    raise FetchError("the image server sent a body that does not decode as its "
                                     "Content-Encoding says") from None
            if len(data) > cap:
                raise FetchError(f"image is over the {cap}-byte cap once decoded (SEEDIFF_MAX_IMAGE_BYTES)")
            if deadline.left() <= 0:
                raise FetchError(f"GET timed out after {self.settings.fetch_timeout:g} s (SEEDIFF_FETCH_TIMEOUT, "
                                 "the whole fetch)")
        return bytes(data)

    # ---- decoding ------------------------------------------------------------------------------------
    def _decode(self, data: bytes) -> Image.Image:
        """Decode with the pixel cap checked before pixels are allocated; EXIF orientation applied."""
        try:
            im = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        except Image.DecompressionBombError as exc:  # PIL's own guard (2× its limit) fired before ours
            raise FetchError(f"image is over the {self.settings.max_image_pixels}-pixel cap ({exc})") from None
        except Exception:
            raise FetchError(f"the file is not an image in a supported format ({', '.join(IMAGE_FORMATS)})") from None
        w, h = im.size
        if w * h > self.settings.max_image_pixels:
            im.close()
            raise FetchError(f"image is {w}×{h} = {w * h} pixels, over the {self.settings.max_image_pixels}-pixel cap")
        try:
            im.load()
            ImageOps.exif_transpose(im, in_place=True)  # in place: no second copy of a large image
            return rgb_image(im)
        except ValueError as exc:  # a mode with no scale to assume
            raise FetchError(str(exc)) from None
        except Exception as exc:
            raise FetchError(f"the image could not be decoded: {type(exc).__name__}") from None


def _redact(url: str) -> str:
    """A URL for messages: no query string (may carry tokens), no userinfo."""
    p = urlsplit(url)
    return f"{p.scheme}://{p.hostname}{':' + str(p.port) if p.port else ''}{p.path[:80]}"


def _one_line(exc: BaseException) -> str:
    """An exception as one short line (no newlines, at most 200 characters)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def _check_ref_text(ref: str) -> None:
    """FetchError for a reference no client should send: control characters (tab, CR, LF…) or over the length cap."""
    if len(ref) > MAX_REF_CHARS:
        raise FetchError(f"the image reference is {len(ref)} characters long; at most {MAX_REF_CHARS} are accepted")
    bad = next((i for i, c in enumerate(ref) if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise FetchError(f"the image reference has a control character {ref[bad]!r} at position {bad}: "
                         f"{ref[:60]!r}")


def _decoder(content_encoding: str):
    """A zlib decompressor for one layer of gzip/deflate, None for identity; FetchError for anything else
    (several layers, br, zstd…): a server that stacks encodings is refused rather than inflated."""
    layers = [e.strip().lower() for e in content_encoding.split(",") if e.strip() and e.strip().lower() != "identity"]
    if not layers:
        return None
    if len(layers) > 1:
        raise FetchError(f"the image server sent {len(layers)} layers of Content-Encoding ({content_encoding[:60]!r}); "
                         "at most one (gzip or deflate) is decoded")
    if layers[0] in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header, detected
    raise FetchError(f"unsupported Content-Encoding {layers[0][:30]!r} from the image server (gzip or deflate only)")


class _Deadline:
    """One wall-clock limit for a whole fetch: when it passes, every socket the fetch opened is shut down, which
    wakes a read blocked on a server that drips bytes (per-read timeouts would restart at each byte)."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.expired = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def left(self) -> float:
        """Seconds left (negative once passed)."""
        return self.end - time.monotonic()

    def trace(self, event: str, info: dict) -> None:
        """httpcore's trace hook: remember each connection's socket as it opens (shut at once if already late)."""
        if not event.endswith(("connect_tcp.complete", "start_tls.complete")):
            return
        stream = info.get("return_value")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            with self._lock:
                self._socks.append(sock)
                late = self.expired
            if late:
                _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            socks = list(self._socks)
        for sock in socks:
            _shut(sock)

    def __enter__(self) -> "_Deadline":
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()


def _shut(sock: socket.socket) -> None:
    """Shut a socket down both ways (wakes a blocked recv); a socket already closed is left alone."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
