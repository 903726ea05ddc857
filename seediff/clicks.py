"""Clicks that follow the annotator's hand: a user's click says *this object*, whatever the word's attention says.

A click's region is the set of pixels whose self-attention resembles the clicked cell's (cosine of attention
rows at the finest recorded self-attention level, the same affinity SeeDiff expands seeds with), cut at Otsu on
its square — the "self-attention region" of the click. Then, on the exclusive label map a mask method made:

- a class with positive clicks is exactly the union of its clicks' regions (its text-seeded mask is dropped,
  other classes lose those pixels): one click puts its object in the clicked label, two clicks on one object
  add the second click's region to the first;
- a negative click removes its region from its class, except pixels more like one of the class's positive
  clicks than like the negative one;
- a box confines its class (pixels outside every box of the class are dropped); a box without a positive click
  of its class clicks its own centre (:func:`with_box_clicks`).

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

__all__ = ["click_level", "click_similarity", "click_regions", "follow_clicks", "has_clicks", "with_box_clicks"]


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
    ``tolerance`` (mean absolute RGB difference, in [0, 1]) of the clicked pixel's colour.

    The click's attention is read over these cells together: a cell at an object's edge attends partly to what
    lies beside the object, its same-coloured neighbours inside the object do not pull that way.
    """
    from .refine import image_tensor

    rgb = image_tensor(np.asarray(image)[..., :3])  # [3, H, W] in [0, 1]
    means = image_tensor(np.asarray(image)[..., :3], grid).reshape(3, -1).T  # [n, 3]
    h, w = grid
    out = torch.zeros((len(cells), h * w), dtype=torch.bool)
    for k, (x, y) in enumerate(np.asarray(points, dtype=np.float64).reshape(-1, 2)):
        pixel = rgb[:, min(int(y), rgb.shape[1] - 1), min(int(x), rgb.shape[2] - 1)]
        r, c = divmod(int(cells[k]), w)
        near = torch.tensor([rr * w + cc for rr in range(max(0, r - 1), min(h, r + 2))
                             for cc in range(max(0, c - 1), min(w, c + 2))])
        close = (means[near] - pixel).abs().mean(1) <= tolerance
        out[k, near[close]] = True
        out[k, cells[k]] = True
    return out


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
    cells = point_cells(pts, image_hw, grid)
    if maps.image is not None:
        group = click_neighbourhood(np.asarray(maps.image), pts, cells, grid).to(hat.device)
        rows = torch.nn.functional.normalize(group.float() @ hat, dim=1)  # the group's mean row, unit length
        sim = (rows @ hat.T).clamp_min(0).reshape(len(pts), 1, *grid).float().cpu()
    else:
        sim = click_similarity(hat, cells).reshape(len(pts), 1, *grid).float().cpu()
    if tuple(grid) != tuple(hw):
        sim = F.interpolate(sim, size=tuple(hw), mode="bilinear", align_corners=False)
    sim = minmax(sim[:, 0], eps, dims=(1, 2))
    p = sim ** power
    region = p > otsu_thresholds(p).reshape(-1, 1, 1)
    at = point_cells(pts, image_hw, hw)
    region.view(len(pts), -1)[torch.arange(len(pts)), at] = True
    return region, sim


def _own_and_forbidden(regions, box: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor]:
    """A clicked class's pixels (union of its positive regions; None without positive clicks) and the pixels
    it may not have (its negative regions where they are more like the negative click, and outside its box)."""
    pos, pos_sim, neg, neg_sim = regions
    forbidden = torch.zeros(pos.shape[1:] if len(pos) else neg.shape[1:], dtype=torch.bool)
    if len(neg):
        forbidden = neg.any(0) & (neg_sim.amax(0) > pos_sim.amax(0) if len(pos) else True)
    if box is not None:
        forbidden = forbidden | ~box
    return (pos.any(0) & ~forbidden if len(pos) else None), forbidden


def follow_clicks(
    labels: torch.Tensor,
    classes: Sequence[str],
    regions: Mapping[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
    boxes: Sequence[torch.Tensor | None] | None = None,
    *,
    forbid_only: bool = False,
) -> torch.Tensor:
    """The label map ``[H, W]`` (0 background, i + 1 class i) after the users' clicks (module docstring).

    regions: per clicked class, (positive regions, positive similarities, negative regions, negative
    similarities) from :func:`click_regions`; boxes: per class, bool ``[H, W]`` inside its boxes, or None.
    Classes are applied in order, so of two classes clicked on one object the later keeps it. ``forbid_only``:
    only take away what a class may not have (negative regions, outside its box): after a refinement such as
    PAMR, which may grow a mask back into them.
    """
    out = labels.clone()
    for i, word in enumerate(classes):
        if word not in regions:
            continue
        own, forbidden = _own_and_forbidden(regions[word], boxes[i] if boxes is not None else None)
        if own is not None and not forbid_only:
            out[(out == i + 1) & ~own] = 0
            out[own] = i + 1
        out[(out == i + 1) & forbidden] = 0
    return out
