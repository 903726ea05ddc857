"""Settings from the environment, validated at start-up; secrets never appear in logs or reprs."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["Settings", "SettingsError", "mask_secret", "jwt_claims"]

_SECRET_FIELDS = frozenset({"ls_api_key", "basic_auth_pass"})


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the environment variable."""


def mask_secret(value: str | None) -> str:
    """'abcd…' → '****' with the length hidden too; None → 'unset'."""
    return "unset" if not value else "****"


def jwt_claims(token: str) -> dict | None:
    """The unverified claims of a JWT (Label Studio personal access / access token); None for a legacy token."""
    import jwt

    if token.count(".") != 2:
        return None
    try:
        claims = jwt.decode(token, options={"verify_signature": False, "verify_exp": False})
    except jwt.InvalidTokenError:
        return None
    return claims if isinstance(claims, dict) else None


def _hosts(env: dict, name: str) -> tuple[str, ...]:
    return tuple(h.strip().lower().strip("[]") for h in (env.get(name) or "").split(",") if h.strip())


def _int(env: dict, name: str, default: int, lo: int = 1) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < lo:
        raise SettingsError(f"{name} must be >= {lo}, got {value}")
    return value


def _bool(env: dict, name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, got {env.get(name)!r}")


def _float(env: dict, name: str, default: float) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{name} must be > 0, got {value}")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything the backend reads from its environment (names in the comments)."""

    model: str = "builtin:shapes"  # SEEDIFF_MODEL: folder, .safetensors, hub id or builtin:shapes
    device: str | None = None  # SEEDIFF_DEVICE: cpu, cuda, cuda:1, mps (default: best available)
    dtype: str | None = None  # SEEDIFF_DTYPE: fp16, bf16, fp32 (default: fp16 on CUDA)
    method: str = "seediff"  # SEEDIFF_METHOD: seediff | diffumask | daam
    photo_mode: str = "noise"  # SEEDIFF_PHOTO_MODE: noise | denoise | invert
    timestep: int = 100  # SEEDIFF_TIMESTEP: t of the noised pass (noise mode)
    steps: int = 10  # SEEDIFF_STEPS: DDIM steps (denoise / invert modes)
    prompt_template: str = "a photo of {}"  # SEEDIFF_PROMPT_TEMPLATE: {} or {classes} ← "a x and a y"
    seed: int = 0  # SEEDIFF_SEED
    drop_absent: bool = False  # SEEDIFF_DROP_ABSENT: presence test, empty masks for classes decided absent
    control: str = "polygon"  # SEEDIFF_CONTROL: polygon | brush | both — the control type answers use
    presence: bool = True  # SEEDIFF_PRESENCE: decide which labels the photo shows before segmenting (default on)
    ls_url: str | None = None  # LABEL_STUDIO_URL
    ls_api_key: str | None = field(default=None, repr=False)  # LABEL_STUDIO_API_KEY (secret)
    basic_auth_user: str | None = None  # BASIC_AUTH_USER
    basic_auth_pass: str | None = field(default=None, repr=False)  # BASIC_AUTH_PASS (secret)
    allowed_roots: tuple[Path, ...] = ()  # SEEDIFF_ALLOWED_ROOTS: os.pathsep-separated folders
    data_dir: Path | None = None  # SEEDIFF_DATA_DIR: calibration state (learning from annotations)
    calibration_file: Path | None = None  # SEEDIFF_CALIBRATION: a `seediff calibrate` file
    allowed_hosts: tuple[str, ...] = ()  # SEEDIFF_ALLOWED_HOSTS: comma-separated extra image hosts (public)
    allowed_private_hosts: tuple[str, ...] = ()  # SEEDIFF_ALLOWED_PRIVATE_HOSTS: may resolve to private addresses
    max_image_bytes: int = 32 * 2**20  # SEEDIFF_MAX_IMAGE_BYTES
    max_image_pixels: int = 40_000_000  # SEEDIFF_MAX_IMAGE_PIXELS (decompression bombs)
    fetch_timeout: float = 15.0  # SEEDIFF_FETCH_TIMEOUT seconds
    predict_budget: float = 80.0  # SEEDIFF_PREDICT_BUDGET seconds per /predict (Label Studio waits 100 s)
    max_tasks_per_request: int = 10_000  # SEEDIFF_MAX_TASKS
    cache_images: int = 4  # SEEDIFF_CACHE_IMAGES: images whose attention is kept for repeated queries (0: none)
    cache_bytes: int = 256 * 2**20  # SEEDIFF_CACHE_BYTES: bytes those cached images + attention may hold in all
    max_task_bytes: int = 896 * 2**20  # SEEDIFF_MAX_TASK_BYTES: one task (limits.segment_bytes) + the cache
    max_body_bytes: int = 64 * 2**20  # SEEDIFF_MAX_BODY_BYTES of a request body (bytes read, chunked or not)
    max_json_values: int = 2_000_000  # SEEDIFF_MAX_JSON_VALUES in a request body (bounds its parse time, memory)
    max_config_bytes: int = 256 * 2**10  # SEEDIFF_MAX_CONFIG_BYTES of a labeling config (/setup, /predict)
    max_projects: int = 1000  # SEEDIFF_MAX_PROJECTS whose /setup config and token are kept (least recent dropped)
    project_state_bytes: int = 64 * 2**20  # SEEDIFF_PROJECT_STATE_BYTES: bytes of those configs and tokens in all
    host: str = "0.0.0.0"  # SEEDIFF_HOST
    port: int = 9090  # SEEDIFF_PORT (or PORT)
    log_level: str = "INFO"  # LOG_LEVEL

    @classmethod
    def from_env(cls, env: dict | None = None) -> "Settings":
        """Read and validate the environment; SettingsError names the bad variable."""
        env = dict(os.environ if env is None else env)
        from seediff.methods import METHODS
        from seediff.modes import PHOTO_MODES
        from seediff.prompts import DEFAULT_TEMPLATE, check_template

        from .labels import CONTROLS

        method = env.get("SEEDIFF_METHOD", "seediff").strip().lower()
        if method not in METHODS:
            raise SettingsError(f"SEEDIFF_METHOD must be one of {sorted(METHODS)}, got {method!r}")
        mode = env.get("SEEDIFF_PHOTO_MODE", "noise").strip().lower()
        if mode not in PHOTO_MODES:
            raise SettingsError(f"SEEDIFF_PHOTO_MODE must be one of {list(PHOTO_MODES)}, got {mode!r}")
        raw_template = env.get("SEEDIFF_PROMPT_TEMPLATE") or DEFAULT_TEMPLATE
        try:
            template = check_template(raw_template)
        except ValueError:
            raise SettingsError("SEEDIFF_PROMPT_TEMPLATE must contain exactly one '{}' (or '{classes}') and no other "
                                f"braces, got {raw_template!r}") from None
        control = (env.get("SEEDIFF_CONTROL") or "polygon").strip().lower()
        if control not in CONTROLS:
            raise SettingsError(f"SEEDIFF_CONTROL must be one of {', '.join(CONTROLS)}, got {env.get('SEEDIFF_CONTROL')!r}")
        ls_url = (env.get("LABEL_STUDIO_URL") or "").strip().rstrip("/") or None
        if ls_url is not None:
            parts = urlsplit(ls_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise SettingsError(f"LABEL_STUDIO_URL must be an http(s) URL, got {ls_url!r}")
        user, password = env.get("BASIC_AUTH_USER") or None, env.get("BASIC_AUTH_PASS") or None
        if bool(user) != bool(password):
            raise SettingsError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        roots = []
        for raw in filter(None, (env.get("SEEDIFF_ALLOWED_ROOTS") or "").split(os.pathsep)):
            p = Path(raw).expanduser()
            if not p.is_absolute():
                raise SettingsError(f"SEEDIFF_ALLOWED_ROOTS entries must be absolute paths, got {raw!r}")
            roots.append(p.resolve())
        paths = {}
        for name in ("SEEDIFF_DATA_DIR", "SEEDIFF_CALIBRATION"):
            raw = (env.get(name) or "").strip()
            paths[name] = Path(raw).expanduser() if raw else None
            if paths[name] is not None and not paths[name].is_absolute():
                raise SettingsError(f"{name} must be an absolute path, got {raw!r}")
        if paths["SEEDIFF_DATA_DIR"] is not None and paths["SEEDIFF_DATA_DIR"].is_file():
            raise SettingsError(f"SEEDIFF_DATA_DIR must be a folder, got the file {paths['SEEDIFF_DATA_DIR']}")
        if paths["SEEDIFF_CALIBRATION"] is not None:
            from seediff.calibrate import load_calibration

            try:
                load_calibration(paths["SEEDIFF_CALIBRATION"])
            except ValueError as exc:
                raise SettingsError(f"SEEDIFF_CALIBRATION: {exc}") from None
        key = env.get("LABEL_STUDIO_API_KEY") or None
        claims = jwt_claims(key) if key else None
        if claims is not None:
            exp = claims.get("exp")
            if exp is None:
                raise SettingsError("LABEL_STUDIO_API_KEY is a JWT without an expiry; create a new personal access token")
            if isinstance(exp, (int, float)) and exp < time.time():
                raise SettingsError("LABEL_STUDIO_API_KEY is an expired JWT; create a new personal access token")
        level = (env.get("LOG_LEVEL") or "INFO").upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise SettingsError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {level!r}")
        return cls(
            model=env.get("SEEDIFF_MODEL") or "builtin:shapes",
            device=env.get("SEEDIFF_DEVICE") or None,
            dtype=env.get("SEEDIFF_DTYPE") or None,
            method=method, photo_mode=mode,
            timestep=_int(env, "SEEDIFF_TIMESTEP", 100, lo=0),
            steps=_int(env, "SEEDIFF_STEPS", 10),
            prompt_template=template,
            seed=_int(env, "SEEDIFF_SEED", 0, lo=0),
            drop_absent=_bool(env, "SEEDIFF_DROP_ABSENT", False),
            control=control,
            presence=_bool(env, "SEEDIFF_PRESENCE", True),
            ls_url=ls_url, ls_api_key=key,
            basic_auth_user=user, basic_auth_pass=password,
            allowed_roots=tuple(roots), data_dir=paths["SEEDIFF_DATA_DIR"],
            calibration_file=paths["SEEDIFF_CALIBRATION"], allowed_hosts=_hosts(env, "SEEDIFF_ALLOWED_HOSTS"),
            allowed_private_hosts=_hosts(env, "SEEDIFF_ALLOWED_PRIVATE_HOSTS"),
            max_image_bytes=_int(env, "SEEDIFF_MAX_IMAGE_BYTES", 32 * 2**20),
            max_image_pixels=_int(env, "SEEDIFF_MAX_IMAGE_PIXELS", 40_000_000),
            fetch_timeout=_float(env, "SEEDIFF_FETCH_TIMEOUT", 15.0),
            predict_budget=_float(env, "SEEDIFF_PREDICT_BUDGET", 80.0),
            max_tasks_per_request=_int(env, "SEEDIFF_MAX_TASKS", 10_000),
            cache_images=_int(env, "SEEDIFF_CACHE_IMAGES", 4, lo=0),
            cache_bytes=_int(env, "SEEDIFF_CACHE_BYTES", 256 * 2**20, lo=0),
            max_task_bytes=_int(env, "SEEDIFF_MAX_TASK_BYTES", 896 * 2**20),
            max_body_bytes=_int(env, "SEEDIFF_MAX_BODY_BYTES", 64 * 2**20),
            max_json_values=_int(env, "SEEDIFF_MAX_JSON_VALUES", 2_000_000),
            max_config_bytes=_int(env, "SEEDIFF_MAX_CONFIG_BYTES", 256 * 2**10),
            max_projects=_int(env, "SEEDIFF_MAX_PROJECTS", 1000),
            project_state_bytes=_int(env, "SEEDIFF_PROJECT_STATE_BYTES", 64 * 2**20),
            host=env.get("SEEDIFF_HOST") or "0.0.0.0",
            port=_int(env, "SEEDIFF_PORT", _int(env, "PORT", 9090)),
            log_level=level,
        )

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            parts.append(f"{f.name}={mask_secret(value) if f.name in _SECRET_FIELDS else value!r}")
        return f"Settings({', '.join(parts)})"

    __str__ = __repr__
