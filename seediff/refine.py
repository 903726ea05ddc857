"""Refine: SeeDiff's background consistency at finer levels, and PAMR (pixel-adaptive mask refinement).

Background consistency (levels 1 then 0 on SD 1.5 = 32², 64²): upsample the previous map P (bicubic), take
background seeds B where P² is at or below its Otsu threshold, V_i = Σ_{b∈B} cos(A_i, A_b), and
M = norm((1 − norm(V)) ⊙ norm(P)). Generated images have plain backgrounds that match each other well, so the
background mask is the sharper one; this carves the foreground with it.

PAMR (Araslanov & Roth 2020): affinities to the 8 neighbours (3×3, per dilation) from the image,
k_ij = mean over RGB of −|I_i − I_j| / (σ_scale · std_i) with std_i the local 3×3 standard deviation,
softmax over neighbours; then ``iterations`` times m_i ← Σ_j α_ij m_j. Vectorised over pixels and channels
(8 shifted views per dilation, no per-pixel loop).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .capture import upsample
from .expand import gate_rows, summed_cosine
from .masks import one_hot
from .seeds import flat_rows, otsu_thresholds, rescale

__all__ = ["background_seeds", "background_consistency", "pamr_affinity", "pamr", "image_tensor", "snap_size",
           "snap_labels", "SNAP_BYTES"]


def background_seeds(prob: torch.Tensor, power: float = 2.0) -> torch.Tensor:
    """Bool map of background seeds: cells of ``prob ** power`` at or below its Otsu threshold."""
    return _background_seeds(prob.float()[None], power)[0]


def _background_seeds(probs: torch.Tensor, power: float) -> torch.Tensor:
    """:func:`background_seeds` of each of ``K`` maps ``[K, h, w]`` at once (one batched Otsu)."""
    p = probs.clamp_min(0) ** power
    return p <= otsu_thresholds(p).reshape(-1, *[1] * (p.ndim - 1))


def background_consistency(
    prev: torch.Tensor,
    attn_hat: torch.Tensor,
    hw: tuple[int, int],
    *,
    power: float = 2.0,
    mode: str = "bicubic",
    eps: float = 1e-4,
) -> torch.Tensor:
    """One background-consistency step for ``K`` maps: ``prev`` ``[K, h', w']`` → ``[K, h, w]`` in [0, 1].

    attn_hat: row-normalised self-attention ``[h·w, h·w]`` at the target level.
    A map without background seeds is passed through (upsampled and normalised).
    """
    if prev.ndim != 3:
        raise ValueError(f"prev must be [K, h, w], got shape {tuple(prev.shape)}")
    h, w = hw
    if attn_hat.shape != (h * w, h * w):
        raise ValueError(f"attention {tuple(attn_hat.shape)} does not match the {h}x{w} grid")
    p = upsample(prev, (h, w), mode) if prev.shape[-2:] != (h, w) else prev.float()
    p = rescale(p, eps, dims=(1, 2))
    # a flat map (nothing, or everything) has no background to learn from
    seeds = _background_seeds(p, power) & ~flat_rows(p, eps)[:, None, None]
    v = summed_cosine(attn_hat, seeds.reshape(len(p), -1)).reshape(len(p), h, w)
    return torch.where(seeds.flatten(1).any(1)[:, None, None], gate_rows(p, v, eps), p)


# ---- PAMR ---------------------------------------------------------------------------------------------------


def image_tensor(image: np.ndarray, hw: tuple[int, int] | None = None) -> torch.Tensor:
    """``[3, H, W]`` fp32 in [0, 1] from an ``H×W×3`` uint8 RGB array, resized (area) to ``hw`` if given."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] < 3:
        raise ValueError(f"image must be an HxWx3 RGB array, got shape {arr.shape}")
    arr = arr[..., :3]
    if hw is not None and tuple(arr.shape[:2]) != tuple(hw):
        import cv2

        arr = cv2.resize(np.ascontiguousarray(arr), (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
    t = torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).float()
    return t / 255.0 if arr.dtype == np.uint8 else t


_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]  # row-major 3×3; index 4 is the centre
_NEIGHBOURS = [k for k, off in enumerate(_OFFSETS) if off != (0, 0)]


def _shifted(x: torch.Tensor, dilation: int, with_centre: bool = False) -> list[torch.Tensor]:
    """Views ``[C, H, W]`` of each pixel's 3×3 neighbours at ``dilation`` (replicate padding), row-major.

    Shifted views of one padded copy: same values as ``F.unfold`` but no 9× copy (≈18× faster per PAMR
    iteration at 512², measured).
    """
    d = dilation
    _, h, w = x.shape
    rows = torch.arange(-d, h + d, device=x.device).clamp(0, h - 1)
    cols = torch.arange(-d, w + d, device=x.device).clamp(0, w - 1)
    pad = x.index_select(1, rows).index_select(2, cols)  # replicate padding (F.pad's costs ~15 ms a call on CPU)
    return [pad[:, d + dy * d : d + dy * d + h, d + dx * d : d + dx * d + w]
            for dy, dx in _OFFSETS if with_centre or (dy, dx) != (0, 0)]


def pamr_affinity(image: torch.Tensor, dilations: Sequence[int] = (1,), sigma_scale: float = 0.2) -> torch.Tensor:
    """Softmax affinities ``[8·len(dilations), H, W]`` of every pixel to its neighbours, from ``[3, H, W]``."""
    if image.ndim != 3:
        raise ValueError(f"image must be [C, H, W], got shape {tuple(image.shape)}")
    if sigma_scale <= 0:
        raise ValueError(f"sigma_scale must be > 0, got {sigma_scale}")
    x = image.float()
    logits = []
    for d in dilations:
        nine = torch.stack(_shifted(x, d, with_centre=True))  # [9, C, H, W]
        scale = 1e-8 + sigma_scale * nine.std(0)  # [C, H, W], unbiased over 9 like the reference
        logits.append((-(nine[_NEIGHBOURS] - x).abs() / scale).mean(1))  # the 8 neighbours at once
    return torch.softmax(torch.cat(logits), dim=0)


def pamr(
    probs: torch.Tensor, affinity: torch.Tensor, dilations: Sequence[int] = (1,), iterations: int = 10
) -> torch.Tensor:
    """Refine ``[C, H, W]`` masks: ``iterations`` rounds of m_i ← Σ_j α_ij m_j with :func:`pamr_affinity`."""
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if probs.ndim != 3 or probs.shape[-2:] != affinity.shape[-2:]:
        raise ValueError(f"probs [C, H, W] {tuple(probs.shape)} and affinity {tuple(affinity.shape)} must share H, W")
    if affinity.shape[0] != 8 * len(dilations):
        raise ValueError(f"affinity has {affinity.shape[0]} neighbours, expected 8 x {len(dilations)} dilations")
    m = probs.float().contiguous()
    if iterations == 0:
        return m
    a = affinity.float()
    c, h, w = m.shape
    # Per dilation: one replicate-padded buffer filled by a single gather per round, and its 8 neighbour views
    # made once. Same products summed in the same order as out.addcmul_ over _shifted (bit-identical), without
    # re-making indices, pads and views every round (~4x faster at 32², ~2x at 512², measured).
    plan = []
    for d in dilations:
        rows = torch.arange(-d, h + d, device=m.device).clamp(0, h - 1)
        cols = torch.arange(-d, w + d, device=m.device).clamp(0, w - 1)
        pad = torch.empty((c, (h + 2 * d) * (w + 2 * d)), device=m.device)
        p3 = pad.view(c, h + 2 * d, w + 2 * d)
        views = [p3[:, d + dy * d : d + dy * d + h, d + dx * d : d + dx * d + w]
                 for dy, dx in _OFFSETS if (dy, dx) != (0, 0)]
        plan.append(((rows[:, None] * w + cols[None, :]).reshape(-1), pad, views))
    bufs = (torch.empty_like(m), torch.empty_like(m))
    src = m
    for it in range(iterations):
        out = bufs[it % 2]
        k = 0
        for flat, pad, views in plan:
            torch.index_select(src.view(c, -1), 1, flat, out=pad)
            for nb in views:
                if k == 0:
                    torch.mul(nb, a[0], out=out)  # = 0 + nb·a, the first addcmul_ onto zeros
                else:
                    out.addcmul_(nb, a[k])
                k += 1
        src = out
    return src


# ---- boundary snap at the photo's size ----------------------------------------------------------------------

SNAP_BYTES = 64 << 20  # working memory the snap may take (one-hot stack, its buffers, affinities, the image)


def snap_size(out_hw: tuple[int, int], work_hw: tuple[int, int], max_side: int, n: int,
              dilations: Sequence[int]) -> tuple[int, int] | None:
    """(H, W) the boundary snap runs at: the photo's size, its long side capped at ``max_side`` and its pixels
    by :data:`SNAP_BYTES`; None when that is no larger than the working size (nothing to snap)."""
    h, w = out_hw
    per_pixel = 4 * (3 * (n + 1) + 8 * len(dilations) + 64)  # fp32: stack + 2 buffers, affinities, 9×3 image stacks
    s = min(1.0, max_side / max(h, w), (SNAP_BYTES / per_pixel / (h * w)) ** 0.5)
    hw = (max(1, int(h * s)), max(1, int(w * s)))
    return hw if hw[0] > work_hw[0] or hw[1] > work_hw[1] else None


def snap_labels(image: torch.Tensor, labels: torch.Tensor, n: int, dilations: Sequence[int] = (1, 2),
                iterations: int = 10, sigma_scale: float = 0.2, allowed: Sequence[torch.Tensor | None] = ()
                ) -> torch.Tensor:
    """int64 ``[H, W]`` labels moved onto the photo's edges: PAMR of the one-hot labels (background included)
    on the ``[3, H, W]`` image at that size, then argmax; a class keeps out of pixels its ``allowed`` mask
    (user boxes) excludes. Masks made at the attention's size are blocky once enlarged to a larger photo; the
    photo's own colours say where the edges are."""
    if labels.shape != image.shape[-2:]:
        raise ValueError(f"labels {tuple(labels.shape)} and image {tuple(image.shape)} must share H, W")
    refined = pamr(one_hot(labels, n), pamr_affinity(image, dilations, sigma_scale), dilations, iterations)
    for i, b in enumerate(allowed):
        if b is not None:
            refined[i + 1] = torch.where(b, refined[i + 1], torch.zeros_like(refined[i + 1]))
    return refined.argmax(0)
