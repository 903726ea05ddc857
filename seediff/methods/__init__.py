"""Mask methods as plug-ins: ``METHODS`` maps a name to a :class:`~seediff.methods.base.MaskMethod`.

A new method is one new module with a ``MaskMethod`` subclass, registered here.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

from .base import MaskMethod
from .daam import DAAM
from .diffumask import DiffuMask
from .seediff import SeeDiff, SeeDiffConfig

__all__ = ["METHODS", "CONFIGS", "MaskMethod", "SeeDiffConfig", "get_method", "config_with"]

METHODS: dict[str, MaskMethod] = {m.name: m for m in (SeeDiff(), DiffuMask(), DAAM())}
CONFIGS: dict[str, type] = {name: m.config_class for name, m in METHODS.items()}


def get_method(name: str) -> MaskMethod:
    """The registered method called ``name``; ValueError listing the known ones."""
    if name not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {name!r}")
    return METHODS[name]


def config_with(method: str, overrides: Mapping[str, object]) -> object:
    """The method's config with ``overrides`` (JSON values: lists become tuples); ValueError names bad fields."""
    if method not in CONFIGS:
        raise ValueError(f"unknown method {method!r}; known: {sorted(CONFIGS)}")
    cls = CONFIGS[method]
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"the model's seediff.json sets unknown {cls.__name__} fields {unknown}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
