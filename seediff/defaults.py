"""Per-model defaults: the settings measured best for one model, shipped in its folder as ``seediff.json``.

``{"seediff": {"seed_levels": [1]}, "presence_threshold": -0.002, "presence": {...}, "about": "..."}``: per mask
method, config fields that override the reference values; ``presence_threshold``, the opt-in diffusion-classifier
test's decision threshold (:mod:`seediff.presence` scores are raw error differences, so it is model-specific);
``presence``, the model's fitted default presence decision and region-quality estimate
(:class:`seediff.evidence.PresenceModel`, written by ``bench/presence.py --write-model``). Read and validated once,
when the model loads (:func:`seediff.pipeline.load_model`), and passed explicitly to whoever uses them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .evidence import PresenceModel
from .methods import CONFIGS, config_with
from .presence import PRESENCE_THRESHOLD

__all__ = ["ModelDefaults", "DEFAULTS_FILE", "read_model_defaults", "parse_model_defaults"]

DEFAULTS_FILE = "seediff.json"
_OTHER_KEYS = frozenset({"about", "presence_threshold", "presence"})


@dataclass(frozen=True)
class ModelDefaults:
    """What a model's folder says to use when a caller passes nothing.

    configs: method name → that method's config with the model's overrides (methods absent here use the
        reference config). presence_threshold: ``drop_absent``'s threshold on presence scores. presence: the
        default presence decision fitted for this model (None: the model-agnostic rule, see
        :func:`seediff.evidence.decide_presence`).
    """

    configs: Mapping[str, object] = field(default_factory=dict)
    presence_threshold: float = PRESENCE_THRESHOLD
    presence: PresenceModel | None = None

    def __post_init__(self) -> None:
        for name, cfg in self.configs.items():
            if name not in CONFIGS:
                raise ValueError(f"unknown method {name!r}; known: {sorted(CONFIGS)}")
            if not isinstance(cfg, CONFIGS[name]):
                raise TypeError(f"method {name!r} takes a {CONFIGS[name].__name__}, got {type(cfg).__name__}")
        t = self.presence_threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            raise ValueError(f"presence_threshold must be a finite number, got {t!r}")
        if self.presence is not None and not isinstance(self.presence, PresenceModel):
            raise TypeError(f"presence must be a PresenceModel, got {type(self.presence).__name__}")

    def config(self, method: str) -> object:
        """The config to use for ``method``: the model's, else the method's reference config."""
        if method in self.configs:
            return self.configs[method]
        return config_with(method, {})


def parse_model_defaults(data: Any) -> ModelDefaults:
    """ModelDefaults from ``seediff.json``'s parsed content; ValueError/TypeError say what is wrong."""
    if not isinstance(data, dict) or not all(isinstance(v, dict) for k, v in data.items() if k not in _OTHER_KEYS):
        raise ValueError("must map method names to objects of config fields")
    configs = {k: config_with(k, v) for k, v in data.items() if k not in _OTHER_KEYS}
    presence = data.get("presence")
    if presence is not None and not isinstance(presence, dict):
        raise ValueError(f"'presence' must be an object, got {type(presence).__name__}")
    try:
        model = PresenceModel.from_dict(presence) if presence else None
    except KeyError as e:
        raise ValueError(f"'presence' lacks {e}") from None
    return ModelDefaults(configs, data.get("presence_threshold", PRESENCE_THRESHOLD), model)


def read_model_defaults(folder: str | Path) -> ModelDefaults:
    """The defaults a model folder ships in ``seediff.json`` (missing file → reference values everywhere).

    Raises ValueError naming the file when it is not valid JSON or sets an unknown method, field or bad value.
    """
    f = Path(folder) / DEFAULTS_FILE
    if not f.is_file():
        return ModelDefaults()
    try:
        data = json.loads(f.read_text("utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{f} is not valid JSON: {e}") from None
    try:
        return parse_model_defaults(data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{f}: {e}") from None
