"""DiffuMask-style baseline as a mask method (the maths lives in :mod:`seediff.baseline`)."""

from __future__ import annotations

from ..baseline import DiffuMaskConfig, diffumask_probs
from .base import MaskMethod, Probs

__all__ = ["DiffuMask"]


class DiffuMask(MaskMethod):
    """Cross-attention averaged over layers and levels, thresholded by γ or Otsu; no clicks."""

    name = "diffumask"
    config_class = DiffuMaskConfig

    def probs(self, maps, classes, config, hw, *, batch=0, prompts=None, image_hw=None, cache=None) -> Probs:
        """:func:`seediff.baseline.diffumask_probs`."""
        return diffumask_probs(maps, classes, config, hw, batch)
