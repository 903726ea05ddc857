"""Seeds: where a class certainly is, from its cross-attention (Otsu or a fixed α) and from user clicks/boxes.

All maps are cast to fp32 before any normalisation or threshold (fp16 attention would otherwise collide
near the threshold); Otsu's statistics are accumulated in fp64 over the exact fp32 values.
Coordinates: points ``(x, y)`` and boxes ``(x0, y0, x1, y1)`` are in image pixels of the output image
(``W × H``); a grid of ``h × w`` cells covers the whole image, cell ``(r, c)`` spans
``[c·W/w, (c+1)·W/w) × [r·H/h, (r+1)·H/h)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch

__all__ = [
    "minmax", "rescale", "is_flat", "flat_rows", "otsu_threshold", "otsu_thresholds", "aggregate_layers", "otsu_seeds",
    "fixed_seeds", "UserPrompt", "user_prompts", "point_cells", "box_pixels",
]


def is_flat(x: torch.Tensor, eps: float = 1e-4) -> bool:
    """Whether a map carries no location: its range is at most ``eps`` × its largest magnitude (or it is empty)."""
    t = x.float()
    return t.numel() == 0 or bool(flat_rows(t.reshape(1, -1), eps)[0])


def flat_rows(x: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Bool ``[K]``: :func:`is_flat` of each map ``x[k]`` of ``[K, ...]`` non-empty maps, at once."""
    t = x.float().reshape(x.shape[0], -1)
    lo, hi = t.amin(1), t.amax(1)
    scale = torch.maximum(hi.abs(), lo.abs())
    return ((hi - lo) <= eps * scale) | (scale == 0)


def minmax(x: torch.Tensor, eps: float = 1e-4, dims: tuple[int, ...] | None = None) -> torch.Tensor:
    """Min-max normalise to [0, 1] in fp32 (over ``dims``, default all); flat slices (see :func:`is_flat`) → 0."""
    t = x.float()
    if t.numel() == 0:
        return t
    dims = tuple(range(t.ndim)) if dims is None else dims
    lo = t.amin(dim=dims, keepdim=True)
    hi = t.amax(dim=dims, keepdim=True)
    rng = hi - lo
    scale = torch.maximum(lo.abs(), hi.abs())
    ok = (rng > eps * scale) & (scale > 0)
    return torch.where(ok, (t - lo) / torch.where(ok, rng, torch.ones_like(rng)), torch.zeros_like(t))


def rescale(x: torch.Tensor, eps: float = 1e-4, dims: tuple[int, ...] | None = None) -> torch.Tensor:
    """Like :func:`minmax` for probability-like maps: a flat slice keeps its level (clamped to [0, 1]).

    An expansion that reaches every cell is all ones, not "no location"; min-max would zero it.
    """
    t = x.float()
    out = minmax(t, eps, dims)
    if t.numel() == 0:
        return out
    dims = tuple(range(t.ndim)) if dims is None else dims
    flat = ~(out != 0).any(dim=dims, keepdim=True) & (t.amax(dim=dims, keepdim=True) > 0)
    return torch.where(flat, t.clamp(0, 1), out)


def otsu_threshold(x: torch.Tensor) -> float:
    """Exact Otsu threshold of a float map: pixels ``> t`` are the upper class.

    Every split between distinct sorted values is scored by the between-class variance (no histogram, so no
    binning error on float maps); ties go to the lowest split. A flat map returns its value (nothing above).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    return float(otsu_thresholds(x.reshape(1, -1))[0])


def otsu_thresholds(x: torch.Tensor) -> torch.Tensor:
    """fp32 ``[K]``: :func:`otsu_threshold` of each of the ``K`` maps ``x[k]`` at once (one sort, one scan)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 1:
        raise ValueError("otsu_thresholds needs maps [K, ...]")
    v = x.detach().float().reshape(x.shape[0], -1)
    if v.shape[1] == 0:
        raise ValueError("otsu_threshold needs a non-empty map")
    if not bool(torch.isfinite(v).all()):
        raise ValueError("otsu_threshold: the map contains NaN or inf")
    v = torch.sort(v.double(), dim=1).values
    n = v.shape[1]
    if n < 2:
        return v[:, -1].float()
    c = torch.cumsum(v, 1)
    k = torch.arange(1, n, dtype=torch.float64, device=v.device)  # size of the lower class
    mu0 = c[:, :-1] / k
    mu1 = (c[:, -1:] - c[:, :-1]) / (n - k)
    between = (k / n) * (1 - k / n) * (mu0 - mu1) ** 2
    between = torch.where(v[:, 1:] > v[:, :-1], between, torch.full_like(between, -1.0))
    best = v.gather(1, between.argmax(1, keepdim=True))[:, 0]  # first maximum: ties to the lowest split
    return torch.where(v[:, 0] == v[:, -1], v[:, -1], best).float()  # a flat map: its value


def aggregate_layers(layers: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """SeeDiff's cross-attention map: min-max each layer ``[L, h, w]``, sum over layers, min-max again.

    Flat layers contribute zeros (they carry no location); the result is flat only if every layer is.
    """
    if layers.ndim != 3:
        raise ValueError(f"layers must be [L, h, w], got shape {tuple(layers.shape)}")
    norm = minmax(layers, eps, dims=(1, 2))
    return minmax(norm.sum(0), eps)


def otsu_seeds(seed_map: torch.Tensor, power: float = 2.0) -> torch.Tensor:
    """Foreground seeds: cells of ``seed_map ** power`` above its Otsu threshold (reference: squared map)."""
    p = seed_map.float().clamp_min(0) ** power
    return p > otsu_threshold(p)


def fixed_seeds(seed_map: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Foreground seeds: cells of the min-max normalised map above a fixed ``alpha`` (the follow-up's α = 0.5)."""
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    return seed_map.float() > alpha


# ---- user seeds -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserPrompt:
    """One class's user input in image pixels: positive and negative points ``[P, 2]`` (x, y), boxes ``[B, 4]``."""

    positive: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float64))
    negative: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float64))
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float64))

    @property
    def empty(self) -> bool:
        """True when the user gave nothing for this class."""
        return not (len(self.positive) or len(self.negative) or len(self.boxes))


def _per_class(value, classes: Sequence[str], what: str) -> dict[str, object]:
    """``{class: value}`` from a mapping, or from a bare value when there is exactly one class."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        unknown = [k for k in value if k not in classes]
        if unknown:
            raise ValueError(f"{what} given for {unknown}, which are not among the classes {list(classes)}")
        return {k: v for k, v in value.items() if v is not None}
    if len(classes) != 1:
        raise ValueError(f"{what} for several classes must be a dict {{class: {what}}}, got {type(value).__name__}")
    return {classes[0]: value}


def _parse_points(value, image_hw: tuple[int, int], label: str) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative ``[P, 2]`` arrays from rows ``(x, y)`` (positive) or ``(x, y, l)`` (l: 1 pos, 0 neg)."""
    if not isinstance(value, np.ndarray) and len(value) and all(isinstance(r, (tuple, list)) for r in value):
        if any(len(r) not in (2, 3) for r in value):
            raise ValueError(f"points for {label!r} must be rows (x, y) or (x, y, label), got {list(value)!r}")
        value = [tuple(r) + (1,) if len(r) == 2 else tuple(r) for r in value]  # mixed rows: bare (x, y) is positive
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 2)), np.zeros((0, 2))
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] not in (2, 3):
        raise ValueError(f"points for {label!r} must be rows (x, y) or (x, y, label), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"points for {label!r} contain NaN or inf")
    labels = arr[:, 2] if arr.shape[1] == 3 else np.ones(len(arr))
    if not np.isin(labels, (0, 1)).all():
        got = sorted(set(labels.tolist()))
        raise ValueError(f"point labels for {label!r} must be 1 (positive) or 0 (negative), got {got}")
    h, w = image_hw
    xy = arr[:, :2]
    bad = (xy[:, 0] < 0) | (xy[:, 0] > w) | (xy[:, 1] < 0) | (xy[:, 1] > h)
    if bad.any():
        x, y = xy[np.argmax(bad)]
        raise ValueError(f"point ({x:g}, {y:g}) for {label!r} lies outside the {w}x{h} image")
    return xy[labels == 1], xy[labels == 0]


def _parse_boxes(value, image_hw: tuple[int, int], label: str) -> np.ndarray:
    """``[B, 4]`` boxes (x0, y0, x1, y1) from one box or a list of boxes, checked against the image."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4))
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes for {label!r} must be rows (x0, y0, x1, y1), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"boxes for {label!r} contain NaN or inf")
    h, w = image_hw
    for x0, y0, x1, y1 in arr:
        if not (x0 < x1 and y0 < y1):
            raise ValueError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) for {label!r} must have x0 < x1 and y0 < y1")
        if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
            raise ValueError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) for {label!r} lies outside the {w}x{h} image")
    return arr


def user_prompts(classes: Sequence[str], points, boxes, image_hw: tuple[int, int]) -> dict[str, UserPrompt]:
    """Per-class user seeds from ``points``/``boxes`` given per class (dict) or bare for a single class.

    points: rows ``(x, y)`` or ``(x, y, label)`` (label 1 positive, 0 negative); boxes: rows ``(x0, y0, x1, y1)``.
    """
    pts = _per_class(points, classes, "points")
    bxs = _per_class(boxes, classes, "boxes")
    out: dict[str, UserPrompt] = {}
    for c in classes:
        pos, neg = _parse_points(pts[c], image_hw, c) if c in pts else (np.zeros((0, 2)), np.zeros((0, 2)))
        bx = _parse_boxes(bxs[c], image_hw, c) if c in bxs else np.zeros((0, 4))
        out[c] = UserPrompt(pos, neg, bx)
    return out


def point_cells(points: np.ndarray, image_hw: tuple[int, int], grid_hw: tuple[int, int]) -> torch.Tensor:
    """Flat indices (row-major) of the grid cells containing image-pixel points ``[P, 2]`` (x, y)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    H, W = image_hw
    h, w = grid_hw
    cols = np.clip(np.floor(pts[:, 0] * w / W), 0, w - 1).astype(np.int64)
    rows = np.clip(np.floor(pts[:, 1] * h / H), 0, h - 1).astype(np.int64)
    return torch.from_numpy(rows * w + cols)


def box_pixels(boxes: np.ndarray, image_hw: tuple[int, int], hw: tuple[int, int]) -> torch.Tensor | None:
    """Bool ``[h, w]`` at a working size ``hw``: pixels whose centre lies inside any of ``[B, 4]`` image-pixel
    boxes (None when there are no boxes)."""
    if not len(boxes):
        return None
    H, W = image_hw
    h, w = hw
    ys = (torch.arange(h, dtype=torch.float64) + 0.5) * H / h
    xs = (torch.arange(w, dtype=torch.float64) + 0.5) * W / w
    out = torch.zeros((h, w), dtype=torch.bool)
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        out |= ((ys >= y0) & (ys <= y1))[:, None] & ((xs >= x0) & (xs <= x1))[None, :]
    return out
