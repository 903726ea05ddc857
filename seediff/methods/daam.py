"""DAAM-style baseline as a mask method (the maths lives in :mod:`seediff.baseline`)."""

from __future__ import annotations

from ..baseline import DAAMConfig, daam_probs
from .base import MaskMethod, Probs

__all__ = ["DAAM"]


class DAAM(MaskMethod):
    """Every layer's cross-attention summed on the latent grid, thresholded at τ; no clicks."""

    name = "daam"
    config_class = DAAMConfig

    def probs(self, maps, classes, config, hw, *, batch=0, prompts=None, image_hw=None, cache=None) -> Probs:
        """:func:`seediff.baseline.daam_probs`."""
        return daam_probs(maps, classes, config, hw, batch)
