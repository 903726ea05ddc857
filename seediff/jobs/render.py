"""Pictures for people: mask overlays and per-class attention heat maps (uint8 RGB arrays)."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from ..convert import resize_mask

__all__ = ["PALETTE", "color", "overlay", "class_heat", "heat_overlay", "side_by_side"]

# Distinct, colour-blind-friendly-ish colours (Okabe–Ito, then Tableau); class i gets PALETTE[i % len].
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0),
    (204, 121, 167), (148, 103, 189), (140, 86, 75), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)


def color(index: int) -> tuple[int, int, int]:
    """The colour of class number ``index``."""
    return PALETTE[index % len(PALETTE)]


def _rgb(image) -> np.ndarray:
    """HxWx3 uint8 from a PIL image or an array."""
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, got shape {arr.shape} dtype {arr.dtype}")
    return arr


def overlay(image, masks: np.ndarray, colors: Sequence[tuple[int, int, int]], alpha: float = 0.5) -> np.ndarray:
    """The image with each mask tinted in its colour and outlined (masks N×H×W bool, any size: resized)."""
    base = _rgb(image).astype(np.float32)
    hw = base.shape[:2]
    out = base.copy()
    for mask, c in zip(np.asarray(masks), colors):
        m = resize_mask(np.asarray(mask), *hw).astype(bool)
        out[m] = (1 - alpha) * out[m] + alpha * np.asarray(c, np.float32)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    for mask, c in zip(np.asarray(masks), colors):
        m = resize_mask(np.asarray(mask), *hw).astype(bool).astype(np.uint8)
        contours, _ = cv2.findContours(m, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, tuple(int(v) for v in c), 1)
    return out


def class_heat(maps, word: str, hw: tuple[int, int]) -> np.ndarray:
    """A word's cross-attention, averaged over every recorded level and layer, at (h, w), scaled to [0, 1]."""
    import torch

    levels = maps.available_levels("cross")
    if not levels:
        raise ValueError("no cross-attention was recorded")
    acc = None
    for level in levels:
        m = maps.cross_maps(word, level).mean(0)[None, None].float()
        m = torch.nn.functional.interpolate(m, size=hw, mode="bilinear", align_corners=False)[0, 0]
        acc = m if acc is None else acc + m
    heat = acc.numpy()
    lo, hi = float(heat.min()), float(heat.max())
    return (heat - lo) / (hi - lo) if hi - lo > 1e-12 else np.zeros_like(heat)


def heat_overlay(image, heat: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """The image with a [0, 1] heat map blended on top (JET colours)."""
    base = _rgb(image)
    h = cv2.resize(np.asarray(heat, np.float32), (base.shape[1], base.shape[0]), interpolation=cv2.INTER_LINEAR)
    colored = cv2.applyColorMap(np.clip(h * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    return np.clip(np.rint((1 - alpha) * base + alpha * colored), 0, 255).astype(np.uint8)


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    """A tile with a caption strip above it."""
    strip = np.full((18, tile.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, text[: max(1, tile.shape[1] // 8)], (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                cv2.LINE_AA)
    return np.concatenate([strip, tile], axis=0)


def side_by_side(tiles: Sequence[tuple[str, np.ndarray]], gap: int = 4) -> np.ndarray:
    """Captioned tiles in one row (all the same size)."""
    if not tiles:
        raise ValueError("nothing to show")
    labeled = [_label(t, name) for name, t in tiles]
    h = labeled[0].shape[0]
    spacer = np.full((h, gap, 3), 255, np.uint8)
    row = []
    for i, t in enumerate(labeled):
        row += [spacer, t] if i else [t]
    return np.concatenate(row, axis=1)
