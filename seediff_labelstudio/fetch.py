"""Fetch a task's image safely: only from Label Studio, allowed hosts, or files under allowed roots.

No SSRF: an http(s) URL must name the Label Studio host or a host in ``SEEDIFF_ALLOWED_HOSTS``, matched by
name as written (a DNS answer can never widen the allow-list), and every redirect is checked again. No path
traversal: local files are read only when their real path (symlinks resolved, no '..') lies under an allowed
root. Caps on bytes and pixels (decompression bombs); EXIF orientation applied. The API key is sent only to Label Studio and never logged.
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, unquote, urljoin, urlsplit

from PIL import Image, ImageOps

from .settings import Settings

__all__ = ["FetchError", "Fetcher", "auth_header"]

_MAX_REDIRECTS = 3
_LS_PREFIXES = ("/data/", "/tasks/", "/api/", "/storage-data/")  # paths Label Studio serves


class FetchError(ValueError):
    """The image could not (or may not) be fetched; the message is safe to show to users."""


def auth_header(key: str) -> str:
    """'Token <key>' for a legacy token, 'Bearer <key>' for a JWT (personal access / access token)."""
    return f"Bearer {key}" if key.count(".") == 2 and key.startswith("eyJ") else f"Token {key}"


class Fetcher:
    """Resolve a task's image reference to a PIL RGB image, within the settings' allow-lists."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ls = urlsplit(settings.ls_url) if settings.ls_url else None
        self._access: tuple[str, float] | None = None  # exchanged JWT access token and its expiry
        self._lock = threading.Lock()

    # ---- public --------------------------------------------------------------------------------------
    def fetch(self, ref: object) -> Image.Image:
        """The image ``ref`` points to (task data value): '/data/...', http(s) URL or an allowed local path."""
        if not isinstance(ref, str) or not ref.strip():
            raise FetchError(f"the task's image reference must be a non-empty string, got {type(ref).__name__}")
        ref = ref.strip()
        parts = urlsplit(ref)
        if parts.scheme in ("http", "https"):
            return self._decode(self._get(ref))
        if parts.scheme == "file":
            return self._decode(self._read_local(Path(unquote(parts.path))))
        if parts.scheme:
            raise FetchError(f"unsupported image URL scheme {parts.scheme!r}: use http(s), /data/... or a file under an allowed root")
        if ref.startswith("/data/local-files"):
            local = self._local_files_path(ref)
            if local is not None:
                return self._decode(self._read_local(local))
        if ref.startswith(_LS_PREFIXES):
            if self._ls is None:
                raise FetchError(f"{ref[:100]!r} is served by Label Studio, but LABEL_STUDIO_URL is not set")
            return self._decode(self._get(urljoin(self.settings.ls_url + "/", ref.lstrip("/"))))
        if ref.startswith("/"):
            return self._decode(self._read_local(Path(ref)))
        raise FetchError(f"cannot fetch {ref[:100]!r}: not a URL, a Label Studio path or an absolute file path")

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
        return real.read_bytes()

    # ---- http ----------------------------------------------------------------------------------------
    def _is_ls(self, parts) -> bool:
        return self._ls is not None and (parts.scheme, parts.hostname, parts.port) == (
            self._ls.scheme, self._ls.hostname, self._ls.port)

    def _check_url(self, url: str) -> bool:
        """Raise FetchError unless ``url`` may be fetched; returns whether it is Label Studio (gets the key)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FetchError(f"refusing to fetch {url[:100]!r}: only http(s) URLs")
        if self._is_ls(parts):
            return True
        host = parts.hostname.lower()
        if host not in self.settings.allowed_hosts:
            raise FetchError(
                f"refusing to fetch from host {host!r}: only Label Studio ({self._ls.hostname if self._ls else 'unset'}) "
                "and SEEDIFF_ALLOWED_HOSTS are allowed")
        return False

    def _headers(self, is_ls: bool) -> dict[str, str]:
        key = self.settings.ls_api_key
        if not (is_ls and key):
            return {}
        if key.count(".") == 2 and key.startswith("eyJ"):
            return {"Authorization": f"Bearer {self._access_token(key)}"}
        return {"Authorization": f"Token {key}"}

    def _access_token(self, key: str) -> str:
        """A personal access token is a JWT *refresh* token: exchange it once for an access token (cached)."""
        import httpx

        with self._lock:
            if self._access and self._access[1] > time.time():
                return self._access[0]
            try:
                r = httpx.post(f"{self.settings.ls_url}/api/token/refresh", json={"refresh": key},
                               timeout=self.settings.fetch_timeout)
                if r.status_code == 200 and isinstance(r.json().get("access"), str):
                    self._access = (r.json()["access"], time.time() + 240)
                    return self._access[0]
            except (httpx.HTTPError, ValueError):
                pass
            return key  # already an access token, or an LS that takes the JWT directly

    def _get(self, url: str) -> bytes:
        """GET with manual redirects (each target re-checked), timeouts and a byte cap."""
        import httpx

        for _ in range(_MAX_REDIRECTS + 1):
            is_ls = self._check_url(url)  # by host name: a name that merely resolves to an allowed address is not allowed
            try:
                with httpx.stream("GET", url, headers=self._headers(is_ls), timeout=self.settings.fetch_timeout,
                                  follow_redirects=False) as resp:
                    if resp.is_redirect:
                        url = urljoin(url, resp.headers.get("location", ""))
                        continue
                    if resp.status_code != 200:
                        raise FetchError(f"GET {_redact(url)} answered HTTP {resp.status_code}")
                    declared = int(resp.headers.get("content-length") or 0)
                    if declared > self.settings.max_image_bytes:
                        raise FetchError(f"image is {declared} bytes, over the {self.settings.max_image_bytes}-byte cap")
                    data = bytearray()
                    for chunk in resp.iter_bytes():
                        data += chunk
                        if len(data) > self.settings.max_image_bytes:
                            raise FetchError(f"image is over the {self.settings.max_image_bytes}-byte cap")
                    return bytes(data)
            except httpx.TimeoutException:
                raise FetchError(f"GET {_redact(url)} timed out after {self.settings.fetch_timeout:g} s") from None
            except httpx.HTTPError as exc:
                raise FetchError(f"GET {_redact(url)} failed: {type(exc).__name__}") from None
        raise FetchError(f"too many redirects fetching {_redact(url)}")

    # ---- decoding ------------------------------------------------------------------------------------
    def _decode(self, data: bytes) -> Image.Image:
        """Decode with the pixel cap checked before pixels are allocated; EXIF orientation applied."""
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            raise FetchError(f"image is over the {self.settings.max_image_pixels}-pixel cap") from None
        except Exception:
            raise FetchError("the file is not an image PIL can read") from None
        with im:
            w, h = im.size
            if w * h > self.settings.max_image_pixels:
                raise FetchError(f"image is {w}×{h} = {w * h} pixels, over the {self.settings.max_image_pixels}-pixel cap")
            try:
                out = ImageOps.exif_transpose(im).convert("RGB")
                out.load()
            except Exception as exc:
                raise FetchError(f"the image could not be decoded: {type(exc).__name__}") from None
        return out


def _redact(url: str) -> str:
    """A URL for messages: no query string (may carry tokens), no userinfo."""
    p = urlsplit(url)
    return f"{p.scheme}://{p.hostname}{':' + str(p.port) if p.port else ''}{p.path[:80]}"
