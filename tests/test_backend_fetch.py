"""The backend's image fetcher against real files and a real local HTTP server playing Label Studio:
allow-lists, SSRF by DNS, redirects, Token/Bearer auth with the personal-access-token exchange, caps, timeouts,
formats, EXIF orientation."""

from __future__ import annotations

import io
import json
import time

import jwt
import pytest
from PIL import Image

from backend_fixtures import FakeHost, huge_png, png
from seediff_labelstudio.fetch import Fetcher, FetchError, auth_header
from seediff_labelstudio.settings import Settings, SettingsError

KEY = "0123456789abcdef0123456789abcdef01234567"


def _jwt(kind: str, exp_in: float = 3600, **claims) -> str:
    return jwt.encode({"token_type": kind, "exp": int(time.time() + exp_in), "user_id": 1, **claims}, "k" * 32,
                      algorithm="HS256")


def _png_bytes(w=30, h=20) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture()
def ls():
    host = FakeHost()
    yield host
    host.close()


@pytest.fixture()
def other():
    host = FakeHost()
    yield host
    host.close()


def _fetcher(ls_url=None, key=None, **env):
    base = {"LABEL_STUDIO_URL": ls_url or "", "LABEL_STUDIO_API_KEY": key or ""}
    return Fetcher(Settings.from_env({**base, **{k: str(v) for k, v in env.items()}}))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    png(d / "a.png")
    png(d / "b.png", 64, 32, seed=1)
    (d / "notes.txt").write_text("not an image")
    (d / "figure.eps").write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    huge_png(d / "huge.png")
    rotated = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # camera held sideways: display rotated by 90°
    rotated.save(d / "sideways.jpg", exif=exif)
    outside = tmp_path_factory.mktemp("outside")
    png(outside / "secret.png")
    (d / "link.png").symlink_to(outside / "secret.png")
    return d


# ---- local files ---------------------------------------------------------------------------------------
def test_local_files_only_under_allowed_roots(root):
    f = _fetcher("http://127.0.0.1:9", SEEDIFF_ALLOWED_ROOTS=root, SEEDIFF_ALLOWED_HOSTS="images.example.org")
    assert f.fetch(str(root / "a.png")).size == (48, 40)  # absolute path under a root
    assert f.fetch(f"file://{root / 'b.png'}").size == (64, 32)
    assert f.fetch("/data/local-files/?d=b.png").size == (64, 32)  # Label Studio local-files path, read directly
    for ref, msg in [("http://localhost:9/x.png", "host 'localhost'"),  # a name for the LS address is not LS
                     ("https://evil.example.org/x.png", "evil.example.org"),
                     ("gs://bucket/x.png", "scheme 'gs'"),
                     ("/etc/passwd", "not under SEEDIFF_ALLOWED_ROOTS"),
                     (str(root / "link.png"), "not under SEEDIFF_ALLOWED_ROOTS"),  # symlink escape
                     (f"{root}/../outside/secret.png", "'..'"),
                     ("/data/local-files/?d=../../etc/passwd", "'..'"),
                     ("/data/local-files/?x=1", "no \\?d= file path"),
                     ("relative.png", "cannot fetch"),
                     (None, "non-empty string")]:
        with pytest.raises(FetchError, match=msg):
            f.fetch(ref)


def test_caps_formats_and_exif(root):
    f = _fetcher(SEEDIFF_ALLOWED_ROOTS=root)
    with pytest.raises(FetchError, match=r"over the 40000000-pixel cap \(Image size \(400000000 pixels\)"):
        f.fetch(str(root / "huge.png"))
    with pytest.raises(FetchError, match="image is 48×40 = 1920 pixels, over the 1000-pixel cap"):
        _fetcher(SEEDIFF_ALLOWED_ROOTS=root, SEEDIFF_MAX_IMAGE_PIXELS=1000).fetch(str(root / "a.png"))
    with pytest.raises(FetchError, match="not an image"):
        f.fetch(str(root / "notes.txt"))
    with pytest.raises(FetchError, match="not an image in a supported format"):  # no Ghostscript behind EPS
        f.fetch(str(root / "figure.eps"))
    small = _fetcher(SEEDIFF_ALLOWED_ROOTS=root, SEEDIFF_MAX_IMAGE_BYTES=100)
    with pytest.raises(FetchError, match="over the 100-byte cap"):
        small.fetch(str(root / "a.png"))
    assert f.fetch(str(root / "sideways.jpg")).size == (20, 40)  # EXIF orientation 6 applied


# ---- Label Studio over HTTP ----------------------------------------------------------------------------
def test_legacy_token_goes_only_to_label_studio(ls, root):
    ls.file("/data/upload/1/a.png", _png_bytes(), auth=f"Token {KEY}")
    f = _fetcher(ls.url, KEY)
    assert f.fetch("/data/upload/1/a.png").size == (30, 20)
    assert f.fetch(f"{ls.url}/data/upload/1/a.png").size == (30, 20)  # absolute URL to LS: same
    assert [r[2].get("Authorization") for r in ls.requests] == [f"Token {KEY}"] * 2
    # no local copy under a root → the local-files path is asked of Label Studio, with the key
    ls.file("/data/local-files/", _png_bytes(12, 10), auth=f"Token {KEY}")
    assert f.fetch("/data/local-files/?d=e2e/x.png").size == (12, 10)
    assert ls.requests[-1][1] == "/data/local-files/?d=e2e/x.png"
    with pytest.raises(FetchError, match=r"answered HTTP 401"):
        _fetcher(ls.url, "wrong-key").fetch("/data/upload/1/a.png")
    with pytest.raises(FetchError, match="LABEL_STUDIO_URL is not set"):
        _fetcher().fetch("/data/upload/1/a.png")


def test_setup_token_used_when_no_key_is_configured(ls):
    ls.file("/data/upload/1/a.png", _png_bytes(), auth="Token from-setup")
    assert _fetcher(ls.url).fetch("/data/upload/1/a.png", api_key="from-setup").size == (30, 20)
    # a configured key wins over the one Label Studio sent
    with pytest.raises(FetchError, match="HTTP 401"):
        _fetcher(ls.url, KEY).fetch("/data/upload/1/a.png", api_key="from-setup")


def test_personal_access_token_is_exchanged_once_and_renewed_on_401(ls):
    refresh = _jwt("refresh", exp_in=86400)
    access = [_jwt("access", exp_in=300, jti="first")]
    calls = []

    def exchange(req):
        calls.append(json.loads(req.body))
        return 200, {"Content-Type": "application/json"}, json.dumps({"access": access[-1]}).encode()

    ls.routes["/api/token/refresh/"] = exchange
    ls.routes["/data/upload/1/a.png"] = lambda req: (
        (200, {}, _png_bytes()) if req.headers.get("Authorization") == f"Bearer {access[-1]}" else (401, {}, b"{}"))
    f = _fetcher(ls.url, refresh)
    assert f.fetch("/data/upload/1/a.png").size == (30, 20)
    assert f.fetch("/data/upload/1/a.png").size == (30, 20)
    assert calls == [{"refresh": refresh}]  # cached until the access token's expiry
    access.append(_jwt("access", exp_in=300, jti="second"))  # server revoked the first access token
    assert f.fetch("/data/upload/1/a.png").size == (30, 20)
    assert len(calls) == 2
    assert all(refresh not in str(r[2].get("Authorization")) for r in ls.requests if r[1].startswith("/data"))


def test_access_jwt_is_sent_as_bearer_without_exchange(ls):
    access = _jwt("access")
    ls.file("/data/upload/2/b.png", _png_bytes(), auth=f"Bearer {access}")
    assert _fetcher(ls.url, access).fetch("/data/upload/2/b.png").size == (30, 20)
    assert [r[1] for r in ls.requests] == ["/data/upload/2/b.png"]


def test_refused_exchange_is_a_clear_error_without_the_key(ls):
    refresh = _jwt("refresh")
    ls.routes["/api/token/refresh/"] = lambda req: (401, {}, b'{"detail": "Token is blacklisted"}')
    with pytest.raises(FetchError, match="refused to exchange the personal access token") as err:
        _fetcher(ls.url, refresh).fetch("/data/upload/1/a.png")
    assert refresh not in str(err.value)


def test_expired_or_expiryless_jwt_is_a_settings_error():
    with pytest.raises(SettingsError, match="LABEL_STUDIO_API_KEY is an expired JWT"):
        Settings.from_env({"LABEL_STUDIO_API_KEY": _jwt("refresh", exp_in=-60)})
    no_exp = jwt.encode({"token_type": "refresh"}, "k" * 32, algorithm="HS256")
    with pytest.raises(SettingsError, match="without an expiry"):
        Settings.from_env({"LABEL_STUDIO_API_KEY": no_exp})
    assert auth_header(KEY) == f"Token {KEY}"
    assert auth_header(_jwt("access")).startswith("Bearer ")


# ---- other hosts: SSRF --------------------------------------------------------------------------------
def test_allowed_host_resolving_to_loopback_is_refused_unless_private_allowed(ls, other):
    other.file("/img.png", _png_bytes(8, 6))
    url = f"http://localhost:{other.port}/img.png"
    with pytest.raises(FetchError, match="'localhost': it resolves to non-public address 127.0.0.1"):
        _fetcher(ls.url, KEY, SEEDIFF_ALLOWED_HOSTS="localhost").fetch(url)
    assert other.requests == []  # refused before connecting
    f = _fetcher(ls.url, KEY, SEEDIFF_ALLOWED_PRIVATE_HOSTS="localhost")
    assert f.fetch(url).size == (8, 6)
    (_, path, headers), = other.requests
    assert path == "/img.png" and headers["Host"] == f"localhost:{other.port}"
    assert "Authorization" not in headers  # the Label Studio key never leaves for another host
    with pytest.raises(FetchError, match="refusing to fetch from host '169.254.169.254'"):
        f.fetch("http://169.254.169.254/latest/meta-data/")


def test_redirects_are_checked_again(ls, other):
    ls.file("/data/upload/1/a.png", _png_bytes(), auth=f"Token {KEY}")
    ls.redirect("/data/upload/moved.png", "/data/upload/1/a.png")  # same host: followed, key kept
    ls.redirect("/data/upload/away.png", f"http://localhost:{other.port}/x.png")  # another host: refused
    ls.redirect("/data/upload/meta.png", "http://169.254.169.254/latest/meta-data/")
    ls.redirect("/data/upload/loop.png", "/data/upload/loop.png")
    f = _fetcher(ls.url, KEY)
    assert f.fetch("/data/upload/moved.png").size == (30, 20)
    with pytest.raises(FetchError, match="refusing to fetch from host 'localhost'"):
        f.fetch("/data/upload/away.png")
    with pytest.raises(FetchError, match="'169.254.169.254'"):
        f.fetch("/data/upload/meta.png")
    with pytest.raises(FetchError, match="too many redirects"):
        f.fetch("/data/upload/loop.png")
    assert other.requests == []


def test_http_byte_cap_and_timeout(ls):
    big = b"\x89PNG" + b"0" * 5000
    ls.file("/data/upload/declared.png", big)
    ls.file("/data/upload/undeclared.png", big, **{"Content-Length": None})  # body until close
    ls.slow("/data/upload/slow.png", 3.0)
    f = _fetcher(ls.url, KEY, SEEDIFF_MAX_IMAGE_BYTES=1000, SEEDIFF_FETCH_TIMEOUT=0.5)
    with pytest.raises(FetchError, match="image is 5004 bytes, over the 1000-byte cap"):
        f.fetch("/data/upload/declared.png")
    with pytest.raises(FetchError, match="over the 1000-byte cap"):
        f.fetch("/data/upload/undeclared.png")
    t0 = time.monotonic()
    with pytest.raises(FetchError, match="timed out after 0.5 s"):
        f.fetch("/data/upload/slow.png")
    assert time.monotonic() - t0 < 2.5
    with pytest.raises(FetchError, match="answered HTTP 404"):
        f.fetch("/data/upload/missing.png")


# ---- secrets ---------------------------------------------------------------------------------------------
def test_secrets_never_in_errors_or_logs_even_when_a_redirect_or_error_body_carries_them(ls, other, caplog):
    """The key goes only in the Authorization header to Label Studio; when a redirect's Location or an error
    body carries it back (or a token in a query string, or user:password in a URL), no error message or log
    line repeats it."""
    import logging

    ls.redirect("/data/upload/a.png", f"http://evil.example.org/steal.png?token={KEY}")  # another host
    ls.redirect("/data/upload/b.png", f"/data/upload/gone.png?access_token={KEY}")  # same host, then 404
    ls.redirect("/data/upload/c.png", f"http://admin:{KEY}@127.0.0.1:{ls.port}/data/upload/gone.png")  # userinfo
    ls.redirect("/data/upload/d.png", f"http://localhost:{other.port}/x.png?key={KEY}")  # allowed name → loopback
    ls.routes["/data/upload/e.png"] = lambda req: (500, {}, f"bad {req.headers.get('Authorization')}".encode())
    ls.routes["/data/upload/f.png"] = lambda req: (200, {}, f"<html>{KEY}</html>".encode())  # not an image
    from seediff_labelstudio.server import quiet_libraries

    quiet_libraries()  # as the server's main() does: LOG_LEVEL=DEBUG must not let httpcore print headers
    f = _fetcher(ls.url, KEY, SEEDIFF_ALLOWED_HOSTS="localhost")
    expected = {"a": "refusing to fetch from host 'evil.example.org'", "b": "/data/upload/gone.png answered HTTP 404",
                "c": "user:password in a URL is not sent anywhere", "d": "resolves to non-public address 127.0.0.1",
                "e": "answered HTTP 500", "f": "not an image"}
    with caplog.at_level(logging.DEBUG):
        for name, phrase in expected.items():
            with pytest.raises(FetchError, match=phrase) as err:
                f.fetch(f"/data/upload/{name}.png")
            assert KEY not in str(err.value) and "admin" not in str(err.value), str(err.value)
            logging.getLogger("seediff_labelstudio").warning("task 1: %s", err.value)  # what the model logs
    assert KEY not in caplog.text
    assert other.requests == []  # the loopback redirect was refused before connecting
    assert {r[2].get("Authorization") for r in ls.requests} == {f"Token {KEY}"}  # the key went only to LS
