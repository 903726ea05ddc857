"""Clicks that follow the annotator's hand: a user's click says *this object*, whatever the word's attention says.

A click's region is the set of pixels whose self-attention resembles the clicked cell's (cosine of attention
rows at the finest recorded self-attention level, the same affinity SeeDiff expands seeds with), cut at Otsu on
its square — the "self-attention region" of the click. Then, on the exclusive label map a mask method made:

- a class with positive clicks is exactly the union of its clicks' regions (its text-seeded mask is dropped,
  other classes lose those pixels): one click puts its object in the clicked label, two clicks on one object
  add the second click's region to the first;
- a negative click removes its region from its class, except pixels more like one of the class's positive
  clicks than like the negative one;
- a box confines its class (cells outside every box of the class are dropped).

Tensor work over maps already captured: an interactive answer for an image already seen runs no UNet.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .capture import AttentionMaps
from .expand import row_normalize
from .seeds import UserPrompt, minmax, otsu_thresholds, point_cells

__all__ = ["click_level", "click_similarity", "click_regions", "follow_clicks", "has_clicks"]


def has_clicks(prompts: Mapping[str, UserPrompt]) -> bool:
    """Whether any class has a positive or negative click (boxes alone are not clicks)."""
    return any(len(p.positive) or len(p.negative) for p in prompts.values())


def click_level(maps: AttentionMaps, levels: Sequence[int]) -> int:
    """The finest of ``levels`` with recorded self-attention (most cells): where a click's region is read."""
    recorded = [lv for lv in levels if lv in maps.available_levels("self")]
    if not recorded:
        raise ValueError(f"clicks need self-attention at one of levels {list(levels)}; recorded: "
                         f"{maps.available_levels('self')}")
    return max(recorded, key=lambda lv: maps.level_hw(lv)[0] * maps.level_hw(lv)[1])


def click_similarity(attn_hat: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """``[P, n]`` cosine between every cell's attention row and each clicked cell's (rows of ``attn_hat`` are
    L2-normalised self-attention ``[n, n]``), so each row is in [0, 1] with 1 at its click."""
    if attn_hat.ndim != 2 or attn_hat.shape[0] != attn_hat.shape[1]:
        raise ValueError(f"attn_hat must be [n, n], got shape {tuple(attn_hat.shape)}")
    return (attn_hat[cells.to(attn_hat.device)] @ attn_hat.T).clamp_min(0)


def click_regions(
    maps: AttentionMaps,
    points: np.ndarray,
    image_hw: tuple[int, int],
    hw: tuple[int, int],
    level: int,
    *,
    power: float = 2.0,
    batch: int = 0,
    cache: dict | None = None,
    eps: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each click's region and similarity at the working size ``hw``: (bool ``[P, H, W]``, fp32 ``[P, H, W]``).

    points: ``[P, 2]`` (x, y) in image pixels. The similarity map (:func:`click_similarity` at ``level``) is
    resized bilinearly, min-max normalised, and cut at Otsu on its ``power``; the clicked pixel is always in.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) == 0:
        return torch.zeros((0, *hw), dtype=torch.bool), torch.zeros((0, *hw))
    grid = maps.level_hw(level)
    key = ("self_hat", batch, level)  # shared with the mask method's own cache entry
    hat = cache.get(key) if cache is not None else None
    if hat is None:
        hat = row_normalize(maps.self_attention(level, batch).float())
        if cache is not None:
            cache[key] = hat
    sim = click_similarity(hat, point_cells(pts, image_hw, grid)).reshape(len(pts), 1, *grid).float().cpu()
    if tuple(grid) != tuple(hw):
        sim = F.interpolate(sim, size=tuple(hw), mode="bilinear", align_corners=False)
    sim = minmax(sim[:, 0], eps, dims=(1, 2))
    p = sim ** power
    region = p > otsu_thresholds(p).reshape(-1, 1, 1)
    at = point_cells(pts, image_hw, hw)
    region.view(len(pts), -1)[torch.arange(len(pts)), at] = True
    return region, sim


def follow_clicks(
    labels: torch.Tensor,
    classes: Sequence[str],
    prompts: Mapping[str, UserPrompt],
    regions: Mapping[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
    boxes: Sequence[torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """The label map ``[H, W]`` (0 background, i + 1 class i) after the users' clicks (module docstring).

    regions: per clicked class, (positive regions, positive similarities, negative regions, negative
    similarities) from :func:`click_regions`; boxes: per class, bool ``[H, W]`` inside its boxes, or None.
    Classes are applied in order, so of two classes clicked on one object the later keeps it.
    """
    out = labels.clone()
    for i, word in enumerate(classes):
        if word not in regions:
            continue
        pos, pos_sim, neg, neg_sim = regions[word]
        box = boxes[i] if boxes is not None else None
        if len(pos):
            own = pos.any(0)
            if len(neg):
                closer_to_neg = neg_sim.amax(0) > pos_sim.amax(0)
                own &= ~(neg.any(0) & closer_to_neg)
            if box is not None:
                own &= box
            out[(out == i + 1) & ~own] = 0
            out[own] = i + 1
        elif len(neg):
            out[(out == i + 1) & neg.any(0)] = 0
    return out


def clicked_pixels(prompts: Mapping[str, UserPrompt], classes: Sequence[str], image_hw, hw) -> list[torch.Tensor]:
    """Per class, flat indices at the working size of its positive clicks (kept in the class after PAMR)."""
    return [point_cells(prompts[c].positive, image_hw, hw) if c in prompts and len(prompts[c].positive)
            else torch.zeros(0, dtype=torch.int64) for c in classes]
