"""End-to-end fixtures: a real Label Studio server, the seediff backend and headless Chromium, as subprocesses.

Label Studio pins its own dependencies, so it lives in its own venv (`.ls-venv`, made by `.ci/run`) and is
started as a separate process; the backend is started the way users start it (`seediff-labelstudio`).
Missing pieces skip the e2e tests with the reason locally, and fail them when ``CI`` is set: in CI a test
that cannot run must not pass silently. The contract these fixtures assume is docs/BACKEND_CONTRACT.md.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "e2e"

# Polygon and brush controls on one image, labels with predicted_values (the class words SeeDiff prompts with).
LABEL_CONFIG = """<View>
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
# Brush only: every region must then be a brush (with both controls the backend answers SEEDIFF_CONTROL, polygons by default).
BRUSH_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="brush" toName="image">
    <Label value="Circle" predicted_values="circle" background="#e53935"/>
    <Label value="Square" predicted_values="square" background="#1e88e5"/>
  </BrushLabels>
</View>"""
CONTROL_LABELS: dict[str, tuple[str, frozenset[str]]] = {
    "poly": ("polygonlabels", frozenset({"Circle", "Square"})),
    "brush": ("brushlabels", frozenset({"Circle", "Square"})),
}


def in_ci() -> bool:
    """True when running under CI (``CI`` set to anything but empty/0/false), where missing pieces fail."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> None:
    """Skip with ``reason`` locally; fail under CI, where every e2e test must really run."""
    if in_ci():
        pytest.fail(f"CI is set but {reason}", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env_seconds(name: str, default: float) -> float:
    """A positive timeout in seconds from the environment, or ``default``."""
    raw = os.environ.get(name, "")
    if not raw:
        return default
    value = float(raw)
    if value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {raw!r}")
    return value


# Inherited variables Label Studio or the backend would read instead of what a fixture sets (e.g. a
# developer's LABEL_STUDIO_BASE_DATA_DIR would beat --data-dir and point the test at real data).
_LEAKY_PREFIXES = ("LABEL_STUDIO_", "DJANGO_", "DATABASE_", "POSTGRE_", "REDIS_", "SEEDIFF_", "BASIC_AUTH_")
_LEAKY_NAMES = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "HOST", "PORT", "DEBUG", "LOG_LEVEL")


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without Python-path and Label Studio/seediff leaks, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in _LEAKY_NAMES and not k.startswith(_LEAKY_PREFIXES)}
    env.update(extra)
    return env


def get_json(url: str, headers: dict[str, str] | None = None, timeout: float = 2.0) -> tuple[int, object]:
    """GET ``url`` and return (status, parsed JSON or text); (0, error text) when nothing answers."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (local test servers only)
            body = resp.read().decode("utf-8", "replace")
            status = resp.status
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as e:
        return 0, str(e)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


@dataclass
class ServerProcess:
    """A server subprocess in its own process group, with its output in a log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)
    started_at: float = 0.0
    ready_after_s: float | None = None

    def start(self) -> "ServerProcess":
        """Launch the process (new session, so stopping it also stops its children)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT)
        log.close()
        return self

    def log_tail(self, n_chars: int = 6000) -> str:
        """The end of the process output, for failure messages."""
        try:
            text = self.log_path.read_text("utf-8", "replace")
        except OSError:
            return "<no log>"
        return text[-n_chars:]

    def wait_ready(self, probe: Callable[[], tuple[bool, str]], timeout_s: float) -> None:
        """Poll ``probe`` until it reports ready; fail with the log if the process dies or time runs out."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        last = "not probed yet"
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                pytest.fail(f"{self.name} exited with code {code} before it was ready "
                            f"(argv: {shlex.join(self.argv)}).\n--- log tail ---\n{self.log_tail()}", pytrace=False)
            ok, last = probe()
            if ok:
                self.ready_after_s = time.monotonic() - self.started_at
                return
            time.sleep(0.5)
        self.stop()
        pytest.fail(f"{self.name} was not ready after {timeout_s:.0f} s (last probe: {last}).\n"
                    f"--- log tail ---\n{self.log_tail()}", pytrace=False)

    def stop(self, grace_s: float = 15.0) -> int | None:
        """SIGTERM the process group, SIGKILL after ``grace_s``; publish the log; return the exit code."""
        if self.proc is None:
            return None
        code = self.proc.returncode
        if self.proc.poll() is None:
            pgid = self.proc.pid  # start_new_session: the group id is the child's pid
            try:
                os.killpg(pgid, signal.SIGTERM)
                code = self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(pgid, signal.SIGKILL)
                code = self.proc.wait(timeout=10)
            except ProcessLookupError:
                code = self.proc.wait(timeout=10)
        publish_log(self.log_path)
        return code


def publish_log(path: Path) -> None:
    """Copy a per-session log to artifacts/e2e/ (sessions running side by side each write their own first)."""
    try:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, ARTIFACTS / path.name)
    except OSError:
        pass


def _health_probe(url: str, headers: dict[str, str] | None = None) -> Callable[[], tuple[bool, str]]:
    """A probe that is ready when ``GET url`` answers 200 with a JSON object whose status is "UP"."""
    def probe() -> tuple[bool, str]:
        status, body = get_json(url, headers)
        ok = status == 200 and isinstance(body, dict) and body.get("status") == "UP"
        return ok, f"HTTP {status}: {str(body)[:200]}"
    return probe


_TIMINGS: dict[str, float] = {}


def record_timing(name: str, seconds: float | None) -> None:
    """Keep a measured duration; all of them are written to artifacts/e2e/timings.json at session end."""
    if seconds is not None:
        _TIMINGS[name] = round(float(seconds), 2)


def pytest_sessionfinish(session, exitstatus):
    """Write the e2e timings (server starts, prediction round trips) where CI logs and people can read them."""
    if _TIMINGS:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "timings.json").write_text(json.dumps(_TIMINGS, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------------- Label Studio

@dataclass(frozen=True)
class LabelStudioServer:
    """A running Label Studio: where it is, who can log in, and where its local files live."""

    url: str
    token: str
    username: str
    password: str
    files_root: Path  # LOCAL_FILES_DOCUMENT_ROOT: /data/local-files/?d=<path relative to this>
    log_path: Path
    start_s: float


def label_studio_bin() -> Path | None:
    """The label-studio executable: $SEEDIFF_LS_BIN, else <repo>/.ls-venv/bin/label-studio; None if absent."""
    candidate = Path(os.environ.get("SEEDIFF_LS_BIN") or ROOT / ".ls-venv" / "bin" / "label-studio")
    return candidate if candidate.is_file() and os.access(candidate, os.X_OK) else None


def label_studio_version(exe: Path) -> str | None:
    """The Label Studio version installed in the venv holding ``exe`` (from its dist-info), if findable."""
    infos = sorted(exe.resolve().parent.parent.glob("lib/python3*/site-packages/label_studio-*.dist-info"))
    return infos[-1].name[len("label_studio-"):-len(".dist-info")] if infos else None


def migrated_template(exe: Path, env: dict[str, str]) -> Path | None:
    """A data dir with all migrations applied and no users, cached in <repo>/.ls-data/template-<version>.

    A fresh Label Studio spends 1-3 minutes migrating its database on this 2-core machine; starting from a
    copy of a migrated one takes ~20 s. Built once per Label Studio version (``label-studio version``
    migrates and exits), atomically renamed into place; None (start fresh) when the version is unknown.
    """
    version = label_studio_version(exe)
    if version is None:
        return None
    cache = Path(os.environ.get("SEEDIFF_LS_TEMPLATES") or ROOT / ".ls-data")
    target = cache / f"template-{version}"
    if (target / "label_studio.sqlite3").is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    building = cache / f".building-{version}-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    t0 = time.monotonic()
    log = cache / f".building-{version}-{os.getpid()}.log"
    with open(log, "wb") as out:
        done = subprocess.run([str(exe), "version", "--data-dir", str(building)], env=env, stdout=out,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                              timeout=_env_seconds("SEEDIFF_E2E_LS_TIMEOUT", 600))
    publish_log(log)
    if done.returncode != 0 or not (building / "label_studio.sqlite3").is_file():
        shutil.rmtree(building, ignore_errors=True)
        pytest.fail(f"label-studio could not migrate a fresh database (exit {done.returncode}); see {log}:\n"
                    f"{log.read_text('utf-8', 'replace')[-4000:]}", pytrace=False)
    record_timing("label_studio_migrate_s", time.monotonic() - t0)
    log.unlink(missing_ok=True)
    try:
        building.rename(target)
    except OSError:  # another session got there first
        shutil.rmtree(building, ignore_errors=True)
    return target


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory) -> Iterator[LabelStudioServer]:
    """A real Label Studio 1.23 on 127.0.0.1 with a fresh data dir, a user and a legacy API token."""
    exe = label_studio_bin()
    if exe is None:
        unavailable("Label Studio is not installed: run `bash .ci/run`, or create .ls-venv with "
                    "`python3 -m venv .ls-venv && .ls-venv/bin/pip install label-studio==1.23.2`, "
                    "or point SEEDIFF_LS_BIN at a label-studio executable")
    base = tmp_path_factory.mktemp("label-studio")
    files_root = base / "files"
    files_root.mkdir()
    port = free_port()
    username, password, token = "e2e@seediff.test", secrets.token_urlsafe(16), secrets.token_hex(20)
    env = clean_env({
        "LABEL_STUDIO_USERNAME": username,
        "LABEL_STUDIO_PASSWORD": password,
        "LABEL_STUDIO_USER_TOKEN": token,
        "ML_BLOCK_LOCAL_IP": "false",  # our backend listens on 127.0.0.1
        "SSRF_PROTECTION_ENABLED": "false",
        "LOCAL_FILES_SERVING_ENABLED": "true",
        "LOCAL_FILES_DOCUMENT_ROOT": str(files_root),
        "LATEST_VERSION_CHECK": "false",  # no call to pypi.org at start
        "COLLECT_ANALYTICS": "false",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "DJANGO_DB": "sqlite",
        # Validate stored predictions against the labeling config (LabelInterface.validate_prediction); off
        # by default in 1.23.2. An invalid region from the backend then fails the retrieval instead of
        # being stored and silently dropped by the editor.
        "fflag_feat_utc_210_prediction_validation_15082025": "true",
    })
    template = migrated_template(exe, {k: v for k, v in env.items() if not k.startswith("LABEL_STUDIO_")})
    if template is not None:
        shutil.copytree(template, base / "data")
    argv = [str(exe), "start", "--no-browser", "--data-dir", str(base / "data"), "--internal-host", "127.0.0.1",
            "--port", str(port), "--enable-legacy-api-token", "--log-level", "WARNING"]
    server = ServerProcess("label-studio", argv, env, base / "label-studio.log").start()
    url = f"http://127.0.0.1:{port}"
    try:
        # From the migrated template ~20 s; a fresh database (unknown version) migrates first, 1-3 min.
        server.wait_ready(_health_probe(f"{url}/health"), _env_seconds("SEEDIFF_E2E_LS_TIMEOUT", 600))
        status, who = get_json(f"{url}/api/current-user/whoami", {"Authorization": f"Token {token}"}, timeout=10)
        if status != 200 or not isinstance(who, dict) or who.get("email") != username:
            pytest.fail(f"Label Studio is up but the API token does not work: HTTP {status} {str(who)[:300]}\n"
                        f"--- log tail ---\n{server.log_tail()}", pytrace=False)
        record_timing("label_studio_start_s", server.ready_after_s)
        yield LabelStudioServer(url, token, username, password, files_root, server.log_path,
                                server.ready_after_s or 0.0)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ls_client(label_studio):
    """label_studio_sdk's client for the running server (legacy token auth)."""
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=label_studio.url, api_key=label_studio.token, timeout=300)


# ------------------------------------------------------------------------------------------------- images

@dataclass(frozen=True)
class E2EImage:
    """A test image on disk with what is drawn on it (boxes in pixels: x0, y0, x1, y1)."""

    path: Path
    rel: str  # relative to LOCAL_FILES_DOCUMENT_ROOT
    width: int
    height: int
    shapes: dict[str, tuple[int, int, int, int]]


def draw_scene(path: Path, width: int, height: int, shapes: dict[str, tuple[int, int, int, int]]) -> None:
    """Write a PNG: a red circle and/or a blue square in the given boxes on a plain grey background (the bundled
    model's world: seediff.testing.shapes draws on grey)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (128, 128, 128))
    draw = ImageDraw.Draw(img)
    for name, box in shapes.items():
        if name == "circle":
            draw.ellipse(box, fill=(220, 40, 40))
        elif name == "square":
            draw.rectangle(box, fill=(30, 90, 220))
        else:
            raise ValueError(f"unknown shape {name!r}; known: circle, square")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")


@pytest.fixture(scope="session")
def e2e_images(label_studio) -> list[E2EImage]:
    """Three non-square PNG scenes written under Label Studio's local-files document root (folder e2e/)."""
    specs = [
        ("circle.png", 160, 120, {"circle": (40, 20, 120, 100)}),
        ("square.png", 144, 112, {"square": (30, 24, 110, 96)}),
        ("both.png", 192, 128, {"circle": (12, 24, 92, 104), "square": (110, 30, 180, 100)}),
    ]
    images = []
    for name, w, h, shapes in specs:
        path = label_studio.files_root / "e2e" / name
        draw_scene(path, w, h, shapes)
        images.append(E2EImage(path, f"e2e/{name}", w, h, shapes))
    return images


# ------------------------------------------------------------------------------------------------ projects

@dataclass(frozen=True)
class E2EProject:
    """A Label Studio project with image tasks: task id → the image it shows."""

    id: int
    tasks: dict[int, E2EImage]


def create_project(client, label_studio: LabelStudioServer, images: list[E2EImage], title: str,
                   upload: E2EImage | None = None, label_config: str = LABEL_CONFIG) -> E2EProject:
    """A project; ``images`` arrive through a synced local-files storage, ``upload`` by file upload.

    Both ways Label Studio serves images (``/data/local-files/?d=...`` and ``/data/upload/...``) are covered.
    """
    import httpx

    project = client.projects.create(title=title, label_config=label_config)
    folder = label_studio.files_root / "e2e"
    only = "^(?:" + "|".join(re.escape(img.path.name) for img in images) + ")$"  # matched against file names
    storage = client.import_storage.local.create(project=project.id, path=str(folder), regex_filter=only,
                                                 use_blob_urls=True, title="e2e images")
    client.import_storage.local.sync(id=storage.id)
    by_rel = {img.rel: img for img in images}
    tasks: dict[int, E2EImage] = {}
    for task in client.tasks.list(project=project.id, fields="all"):
        ref = str(task.data.get("image", ""))
        rel = ref.split("?d=", 1)[-1] if "?d=" in ref else ""
        if rel not in by_rel:
            raise RuntimeError(f"local storage sync created task {task.id} for an unexpected file: {task.data}")
        tasks[task.id] = by_rel[rel]
    missing = set(by_rel) - {img.rel for img in tasks.values()}
    if missing:
        raise RuntimeError(f"local storage sync did not create tasks for {sorted(missing)}")
    if upload is not None:
        with open(upload.path, "rb") as fh:
            resp = httpx.post(f"{label_studio.url}/api/projects/{project.id}/import",
                              headers={"Authorization": f"Token {label_studio.token}"},
                              files={"file": (f"uploaded-{upload.path.name}", fh, "image/png")}, timeout=60)
        resp.raise_for_status()
        known = set(tasks)
        for task in client.tasks.list(project=project.id, fields="all"):
            if task.id not in known:
                if not str(task.data.get("image", "")).startswith("/data/upload/"):
                    raise RuntimeError(f"uploaded task {task.id} has unexpected data {task.data}")
                tasks[task.id] = upload
    return E2EProject(project.id, tasks)


# -------------------------------------------------------------------------------------------- model, backend

@pytest.fixture(scope="session")
def e2e_model(request) -> str:
    """The model the backend serves: $SEEDIFF_E2E_MODEL (``tiny`` = the session's random-weight pipeline
    folder from tests/conftest.py), else the backend's own default, the bundled ``builtin:shapes``, whose
    proposals mean something (test_proposals_cover_their_objects checks them)."""
    chosen = os.environ.get("SEEDIFF_E2E_MODEL", "") or "builtin:shapes"
    return str(request.getfixturevalue("tiny_pipe_path")) if chosen == "tiny" else chosen


@dataclass(frozen=True)
class BackendServer:
    """The running seediff-labelstudio service."""

    url: str
    log_path: Path
    start_s: float


def backend_argv(port: int) -> list[str]:
    """How the backend is started: $SEEDIFF_E2E_BACKEND_CMD (a command prefix) or the installed script."""
    custom = os.environ.get("SEEDIFF_E2E_BACKEND_CMD", "")
    if custom:
        prefix = shlex.split(custom)
    else:
        script = Path(sys.executable).parent / "seediff-labelstudio"
        if not script.is_file():
            unavailable(f"the seediff-labelstudio command is not installed next to {sys.executable} "
                        "(pip install -e '.[server]')")
        try:
            import seediff_labelstudio.server  # noqa: F401
        except ImportError as e:
            unavailable(f"seediff_labelstudio.server cannot be imported ({e}); the backend is not built yet")
        prefix = [str(script)]
    return [*prefix, "--host", "127.0.0.1", "--port", str(port)]


@pytest.fixture(scope="session")
def backend(label_studio, e2e_model, tmp_path_factory) -> Iterator[BackendServer]:
    """seediff-labelstudio on a free port, configured to read images from the running Label Studio."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("backend") / "backend.log"
    env = clean_env({
        "SEEDIFF_MODEL": e2e_model,
        "SEEDIFF_DEVICE": "cpu",
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.token,
        "SEEDIFF_ALLOWED_ROOTS": str(label_studio.files_root),
        "SEEDIFF_DATA_DIR": str(tmp_path_factory.mktemp("backend-data")),  # calibration learnt from annotations
        "HF_HUB_OFFLINE": "1",
    })
    server = ServerProcess("seediff-labelstudio", backend_argv(port), env, log_path).start()
    url = f"http://127.0.0.1:{port}"
    try:
        server.wait_ready(_health_probe(f"{url}/health"), _env_seconds("SEEDIFF_E2E_BACKEND_TIMEOUT", 180))
        record_timing("backend_start_s", server.ready_after_s)
        yield BackendServer(url, server.log_path, server.ready_after_s or 0.0)
    finally:
        code = server.stop()
        if code not in (None, 0, -signal.SIGTERM):
            print(f"seediff-labelstudio exited with {code} on SIGTERM; log: {server.log_path}")


# ------------------------------------------------------------------------------------ preannotation target

@dataclass(frozen=True)
class PreannotateTarget:
    """What a preannotation client needs: server, key, a fresh project with image tasks, the model."""

    url: str
    api_key: str
    project: E2EProject
    model: str


@pytest.fixture
def preannotate_target(label_studio, ls_client, e2e_images, e2e_model, request) -> PreannotateTarget:
    """A fresh project (LABEL_CONFIG, local-files tasks, no predictions) for the preannotation CLI to fill."""
    project = create_project(ls_client, label_studio, e2e_images[:2], title=f"preannotate {request.node.name}"[:50])
    return PreannotateTarget(label_studio.url, label_studio.token, project, e2e_model)


# ------------------------------------------------------------------------------------------------- browser

def chromium_executable() -> str | None:
    """Debian's chromium (never a downloaded browser): $SEEDIFF_CHROMIUM or the first one on PATH."""
    explicit = os.environ.get("SEEDIFF_CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium driven by playwright, using the system browser binary."""
    exe = chromium_executable()
    if exe is None:
        unavailable("no Chromium found (apt-get install chromium, or set SEEDIFF_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
