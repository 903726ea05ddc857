"""Clicks that follow the annotator's hand: a click says *this object*, whatever the word's attention says.

A click's region is the set of pixels whose self-attention resembles the clicked spot's (cosine of attention rows
at the finest recorded self-attention level, the affinity SeeDiff expands seeds with), cut at Otsu on its square:
the click's "self-attention region". The clicked spot is its cell together with the same-coloured cells around it,
so a click near an object's edge does not pull in what lies beside the object. On the per-class maps a mask
method made (:func:`follow_clicks`):

- a class with positive clicks is exactly the union of its clicks' regions (its text-seeded map is dropped, and
  other classes lose those pixels): one click puts its object in the clicked label, and a second click on the
  same object adds its region to the first;
- a negative click removes its region from its class (:func:`class_clicks` ``forbidden``), except pixels more
  like one of the class's positive clicks than like the negative one; ``forbidden`` also holds after refinement;
- a box without a positive click of its class clicks its own centre (:func:`with_box_clicks`); boxes confine
  every class (``seediff.segment``).

Tensor work over maps already captured: an interactive answer for an image already seen runs no UNet.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..capture import AttentionMaps
from ..expand import row_normalize
from ..refine import image_tensor
from ..seeds import UserPrompt, minmax, otsu_thresholds, point_cells

__all__ = ["ClassClicks", "class_clicks", "click_level", "click_neighbourhood", "click_regions", "click_similarity",
           "follow_clicks", "has_clicks", "with_box_clicks"]


class ClassClicks(NamedTuple):
    """One class's clicks at the working size: ``own`` bool ``[H, W]`` (its positive clicks' regions, less what
    it may not have; None without positive clicks), ``forbidden`` bool ``[H, W]`` (its negative clicks'
    regions), ``similarity`` fp32 ``[H, W]`` (resemblance to its nearest positive click; None without any)."""

    own: torch.Tensor | None
    forbidden: torch.Tensor
    similarity: torch.Tensor | None


def with_box_clicks(prompts: Mapping[str, UserPrompt]) -> dict[str, UserPrompt]:
    """The prompts with each box's centre as a positive click for a class that has boxes but no positive
    click (a rectangle drawn around an object says "this object"; the box then confines it)."""
    out = dict(prompts)
    for c, p in prompts.items():
        if len(p.boxes) and not len(p.positive):
            centres = np.stack([(p.boxes[:, 0] + p.boxes[:, 2]) / 2, (p.boxes[:, 1] + p.boxes[:, 3]) / 2], 1)
            out[c] = UserPrompt(centres, p.negative, p.boxes)
    return out


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


def click_neighbourhood(image: np.ndarray, points: np.ndarray, cells: torch.Tensor, grid: tuple[int, int],
                        tolerance: float = 0.1) -> torch.Tensor:
    """Bool ``[P, n]``: per click, its cell and the cells of its 3×3 neighbourhood whose mean colour is within
    ``tolerance`` (mean absolute RGB difference, in [0, 1]) of the clicked pixel's colour."""
    rgb = image_tensor(np.asarray(image)[..., :3])  # [3, H, W] in [0, 1]
    means = image_tensor(np.asarray(image)[..., :3], grid).reshape(3, -1).T  # [n, 3]
    h, w = grid
    out = torch.zeros((len(cells), h * w), dtype=torch.bool)
    for k, (x, y) in enumerate(np.asarray(points, dtype=np.float64).reshape(-1, 2)):
        pixel = rgb[:, min(int(y), rgb.shape[1] - 1), min(int(x), rgb.shape[2] - 1)]
        r, c = divmod(int(cells[k]), w)
        near = torch.tensor([rr * w + cc for rr in range(max(0, r - 1), min(h, r + 2))
                             for cc in range(max(0, c - 1), min(w, c + 2))])
        out[k, near[(means[near] - pixel).abs().mean(1) <= tolerance]] = True
        out[k, cells[k]] = True
    return out


def _attn_hat(maps: AttentionMaps, level: int, batch: int, cache: dict | None) -> torch.Tensor:
    """Row-normalised self-attention at ``level`` (shared with SeeDiff's own cache entry)."""
    key = ("self_hat", batch, level)
    hat = cache.get(key) if cache is not None else None
    if hat is None:
        hat = row_normalize(maps.self_attention(level, batch))
        if cache is not None:
            cache[key] = hat
    return hat


def click_regions(maps: AttentionMaps, points: np.ndarray, image_hw: tuple[int, int], hw: tuple[int, int],
                  level: int, *, power: float = 2.0, batch: int = 0, cache: dict | None = None,
                  eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Each click's region and similarity at the working size ``hw``: (bool ``[P, H, W]``, fp32 ``[P, H, W]``).

    points: ``[P, 2]`` (x, y) in image pixels. The similarity to the clicked spot (its cell and the
    same-coloured cells around it, :func:`click_neighbourhood`, when the maps carry the image) at ``level`` is
    resized bilinearly, min-max normalised, and cut at Otsu on its ``power``; the clicked pixel is always in.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) == 0:
        return torch.zeros((0, *hw), dtype=torch.bool), torch.zeros((0, *hw))
    grid = maps.level_hw(level)
    hat = _attn_hat(maps, level, batch, cache)
    cells = point_cells(pts, image_hw, grid)
    if maps.image is not None:
        group = click_neighbourhood(np.asarray(maps.image), pts, cells, grid).to(hat.device)
        rows = F.normalize(group.float() @ hat, dim=1)  # the spot's mean attention row, unit length
        sim = (rows @ hat.T).clamp_min(0)
    else:
        sim = click_similarity(hat, cells)
    sim = sim.reshape(len(pts), 1, *grid).float().cpu()
    if tuple(grid) != tuple(hw):
        sim = F.interpolate(sim, size=tuple(hw), mode="bilinear", align_corners=False)
    sim = minmax(sim[:, 0], eps, dims=(1, 2))
    p = sim ** power
    region = p > otsu_thresholds(p).reshape(-1, 1, 1)
    region.view(len(pts), -1)[torch.arange(len(pts)), point_cells(pts, image_hw, hw)] = True
    return region, sim


def class_clicks(maps: AttentionMaps, prompt: UserPrompt, image_hw: tuple[int, int], hw: tuple[int, int],
                 level: int, *, power: float = 2.0, batch: int = 0, cache: dict | None = None,
                 eps: float = 1e-4) -> ClassClicks:
    """One class's :class:`ClassClicks` from its positive and negative points (memoised in ``cache``)."""
    key = ("clicks", batch, level, tuple(image_hw), tuple(hw), power, prompt.positive.tobytes(),
           prompt.negative.tobytes())
    if cache is not None and key in cache:
        return cache[key]
    kw = dict(power=power, batch=batch, cache=cache, eps=eps)
    pos, pos_sim = click_regions(maps, prompt.positive, image_hw, hw, level, **kw)
    neg, neg_sim = click_regions(maps, prompt.negative, image_hw, hw, level, **kw)
    forbidden = torch.zeros(hw, dtype=torch.bool)
    if len(neg):
        forbidden = neg.any(0) & (neg_sim.amax(0) > pos_sim.amax(0) if len(pos) else True)
    out = ClassClicks(pos.any(0) & ~forbidden if len(pos) else None, forbidden,
                      pos_sim.amax(0) if len(pos) else None)
    if cache is not None:
        cache[key] = out
    return out


def follow_clicks(probs: torch.Tensor, thresholds: Sequence[float], classes: Sequence[str],
                  clicks: Mapping[str, ClassClicks]) -> tuple[torch.Tensor, list[float]]:
    """Per-class maps ``[N, H, W]`` and thresholds after the users' clicks (module docstring).

    A class with positive clicks gets its similarity map on its own pixels and 0 elsewhere, with threshold 0
    (so exactly its own pixels are candidates, and its score is how much its mask resembles what was clicked);
    every other class gets 0 there. Classes are applied in order: of two classes clicked on one object the later
    keeps it. A class's forbidden pixels get 0.
    """
    out = probs.clone()
    thr = list(thresholds)
    for i, word in enumerate(classes):
        if word not in clicks:
            continue
        own, forbidden, sim = clicks[word]
        if own is not None:
            out[:, own] = 0.0
            out[i] = torch.where(own, sim.clamp_min(1e-6), torch.zeros_like(sim))
            thr[i] = 0.0
        out[i, forbidden] = 0.0
    return out, thr
