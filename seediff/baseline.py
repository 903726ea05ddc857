"""Baselines from cross-attention alone: DiffuMask-style (mean over layers per level, averaged over levels) and
DAAM-style (every layer upsampled to the latent grid and summed, τ = 0.4). The methods SeeDiff must beat.

DiffuMask (training-free part): for each level (SD 1.5: 16², 32², 64²) the class token's cross-attention
averaged over all layers there, bicubic to image size, divided by its max; the levels averaged; threshold γ
(the paper sweeps 0.30–0.54) or Otsu. DAAM: each layer's map bicubic to the latent grid, clamped at 0,
summed; bicubic to image size, clamped, min-max normalised; threshold τ = 0.4.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .capture import AttentionMaps, upsample
from .seeds import is_flat, minmax, otsu_threshold

__all__ = ["DiffuMaskConfig", "DAAMConfig", "check_levels", "check_common", "diffumask_map", "daam_map",
           "diffumask_probs", "daam_probs"]


def check_levels(name: str, levels, allow_none: bool = False) -> None:
    """ValueError unless ``levels`` is a non-empty tuple of non-negative ints (or None when allowed)."""
    if levels is None and allow_none:
        return
    bad = any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in levels) if isinstance(levels, tuple) else True
    if bad or not levels:
        raise ValueError(f"{name} must be a non-empty tuple of non-negative ints, got {levels!r}")


def check_common(cfg) -> None:
    """Validation shared by every method config."""
    if not 0.0 < cfg.flat_eps < 1.0:
        raise ValueError(f"flat_eps must be in (0, 1), got {cfg.flat_eps}")
    if isinstance(cfg.work_max_side, bool) or not isinstance(cfg.work_max_side, int) or cfg.work_max_side < 8:
        raise ValueError(f"work_max_side must be an int >= 8, got {cfg.work_max_side!r}")


@dataclass(frozen=True)
class DiffuMaskConfig:
    """DiffuMask-style baseline.

    levels: cross-attention levels averaged (SD 1.5: 2, 1, 0 = 16², 32², 64²).
    threshold: γ in [0, 1); None → Otsu on the averaged map.
    exclude_special: renormalise attention over the prompt's real tokens (see ``AttentionMaps.cross_maps``).
    flat_eps: relative range below which a map counts as flat (no location → empty mask with a reason).
    work_max_side: cap on the long side of the working size (also at most the size the model saw), then
        resized to the image.
    """

    levels: tuple[int, ...] = (2, 1, 0)
    threshold: float | None = None
    exclude_special: bool = True
    flat_eps: float = 1e-4
    work_max_side: int = 512

    def __post_init__(self) -> None:
        check_levels("levels", self.levels)
        if self.threshold is not None and not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1) or None (Otsu), got {self.threshold}")
        check_common(self)


@dataclass(frozen=True)
class DAAMConfig:
    """DAAM-style baseline.

    levels: cross-attention levels summed (None = every recorded level). tau: threshold on the min-max
    normalised map (DAAM: 0.4). Other fields as in :class:`DiffuMaskConfig`.
    """

    levels: tuple[int, ...] | None = None
    tau: float = 0.4
    exclude_special: bool = True
    flat_eps: float = 1e-4
    work_max_side: int = 512

    def __post_init__(self) -> None:
        check_levels("levels", self.levels, allow_none=True)
        if not 0.0 <= self.tau < 1.0:
            raise ValueError(f"tau must be in [0, 1), got {self.tau}")
        check_common(self)


def _require_levels(maps: AttentionMaps, levels, what: str) -> list[int]:
    """The requested cross levels, or ValueError naming the recorded ones."""
    have = maps.available_levels("cross")
    levels = have if levels is None else list(levels)
    missing = [lv for lv in levels if lv not in have]
    if missing:
        raise ValueError(f"{what}: no cross-attention recorded at levels {missing}; recorded: {have}")
    return levels


def diffumask_map(
    maps: AttentionMaps, word: str, hw: tuple[int, int], config: DiffuMaskConfig, batch: int = 0
) -> torch.Tensor:
    """DiffuMask-style map ``[H, W]`` (max-normalised per level, averaged); zeros if every level is flat."""
    parts = []
    for lv in _require_levels(maps, config.levels, "diffumask"):
        layer_mean = maps.cross_maps(word, lv, batch, exclude_special=config.exclude_special).float().mean(0)
        if is_flat(layer_mean, config.flat_eps):
            continue
        up = upsample(layer_mean, hw, "bicubic")
        parts.append(up / up.max())
    if not parts:
        return torch.zeros(hw)
    return torch.stack(parts).sum(0) / len(config.levels)


def daam_map(maps: AttentionMaps, word: str, hw: tuple[int, int], config: DAAMConfig, batch: int = 0) -> torch.Tensor:
    """DAAM-style map ``[H, W]`` in [0, 1]; zeros if it is flat."""
    grid = maps.level_hw(0)
    total = None
    for lv in _require_levels(maps, config.levels, "daam"):
        layers = maps.cross_maps(word, lv, batch, exclude_special=config.exclude_special).float()
        up = upsample(layers, grid, "bicubic").clamp_min(0).sum(0)
        total = up if total is None else total + up
    if total is None or is_flat(total, config.flat_eps):
        return torch.zeros(hw)
    return minmax(upsample(total, hw, "bicubic").clamp_min(0), config.flat_eps)


def _probs(maps, classes, hw, batch, make, threshold_of) -> tuple[torch.Tensor, list[float], dict[str, str]]:
    """Shared loop: per-class map, threshold and reason (absent word / flat map)."""
    probs, thresholds, reasons = [], [], {}
    for word in classes:
        if not maps.has_word(word, batch):
            reasons[word] = f"{word!r} is not in the prompt"
            probs.append(torch.zeros(hw))
            thresholds.append(1.0)
            continue
        m = make(word)
        if not bool(m.any()):
            reasons[word] = f"the cross-attention of {word!r} is flat (no location)"
            thresholds.append(1.0)
        else:
            thresholds.append(threshold_of(m))
        probs.append(m.cpu())
    return torch.stack(probs) if probs else torch.zeros((0, *hw)), thresholds, reasons


def diffumask_probs(
    maps: AttentionMaps, classes: list[str], config: DiffuMaskConfig, hw: tuple[int, int], batch: int = 0
):
    """Per-class DiffuMask-style maps ``[N, H, W]``, thresholds (γ or Otsu) and reasons for empty classes."""
    def threshold_of(m: torch.Tensor) -> float:
        """γ when configured, else Otsu on the class's map."""
        return config.threshold if config.threshold is not None else otsu_threshold(m)

    return _probs(maps, classes, hw, batch, lambda w: diffumask_map(maps, w, hw, config, batch), threshold_of)


def daam_probs(maps: AttentionMaps, classes: list[str], config: DAAMConfig, hw: tuple[int, int], batch: int = 0):
    """Per-class DAAM-style maps ``[N, H, W]``, thresholds (τ) and reasons for empty classes."""
    return _probs(maps, classes, hw, batch, lambda w: daam_map(maps, w, hw, config, batch), lambda m: config.tau)
