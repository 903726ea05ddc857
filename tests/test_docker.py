"""docker/: no Docker engine runs here, so check statically what can be checked."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


def _settings_env_names() -> set[str]:
    src = (ROOT / "seediff_labelstudio" / "settings.py").read_text()
    return set(re.findall(r'"((?:SEEDIFF|LABEL_STUDIO|BASIC_AUTH)_[A-Z_]+|LOG_LEVEL|PORT)"', src))


def test_env_example_names_are_read_by_settings():
    names = {line.split("=", 1)[0] for line in (DOCKER / ".env.example").read_text().splitlines()
             if line and not line.startswith("#")}
    known = _settings_env_names() | {"LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD"}  # the latter: for LS itself
    assert names - known == set(), f"unknown variables in .env.example: {names - known}"
    assert {"SEEDIFF_MODEL", "LABEL_STUDIO_API_KEY", "BASIC_AUTH_USER"} <= names


def test_compose_wires_label_studio_and_backend():
    compose = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"label-studio", "seediff"}
    backend = services["seediff"]
    assert backend["build"]["dockerfile"] == "docker/Dockerfile"
    assert (DOCKER / backend["build"]["context"] / backend["build"]["dockerfile"]).resolve().is_file()
    env = dict(e.split("=", 1) for e in backend["environment"])
    assert set(env) <= _settings_env_names()
    assert env["LABEL_STUDIO_URL"].startswith("http://label-studio:")
    assert "9090:9090" in backend["ports"]
    assert "label-studio:1.23.2" in services["label-studio"]["image"]


def test_dockerfile_copies_what_exists_and_runs_the_console_script():
    text = (DOCKER / "Dockerfile").read_text()
    for src in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for part in src.split():
            assert (ROOT / part).exists(), f"COPY source {part} missing"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "seediff-labelstudio" in scripts and "seediff-labelstudio" in text
    assert "EXPOSE 9090" in text and "ARG BASE=" in text and "torch==2.13.0" in text
