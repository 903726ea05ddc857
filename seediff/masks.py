"""Masks: per-class probability maps → exclusive labels (argmax with a background channel) → ``ClassMasks``.

A pixel belongs to class c when c's probability exceeds c's threshold; overlaps go to the most probable
class (ties to the earlier class); pixels no class claims are background. Each mask's score is the mean
probability of its class over the mask (Label Studio's ``score``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "ClassMasks", "assign_labels", "resolve_overlaps", "one_hot", "class_scores", "resize_stack", "box_slices",
]


@dataclass
class ClassMasks:
    """Masks for class words on one image.

    labels: the class words, in request order. masks: bool ``[N, H, W]`` at the image's size, mutually
    exclusive. scores: float32 ``[N]`` mean foreground probability (0 for an empty mask). reasons: why a
    mask is empty (label → text). method: 'seediff' | 'diffumask' | 'daam'. config: the config used.
    notes: anything else worth knowing (e.g. refinement skipped for lack of an image).
    """

    labels: list[str]
    masks: np.ndarray
    scores: np.ndarray
    reasons: dict[str, str] = field(default_factory=dict)
    method: str = "seediff"
    config: object | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.labels = list(self.labels)
        self.masks = np.asarray(self.masks, dtype=bool)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if self.masks.ndim != 3 or self.masks.shape[0] != len(self.labels) or len(self.scores) != len(self.labels):
            raise ValueError(
                f"masks must be N×H×W with N labels and N scores, got masks {self.masks.shape}, "
                f"{len(self.labels)} labels, {len(self.scores)} scores"
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_hw(self) -> tuple[int, int]:
        """(H, W) of the masks."""
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    def mask(self, label: str) -> np.ndarray:
        """The bool ``[H, W]`` mask of one label (KeyError if it was not requested)."""
        if label not in self.labels:
            raise KeyError(f"{label!r} is not among the labels {self.labels}")
        return self.masks[self.labels.index(label)]

    def label_map(self) -> np.ndarray:
        """int32 ``[H, W]``: 0 background, i + 1 for ``labels[i]`` (masks are exclusive, so this is lossless)."""
        out = np.zeros(self.image_hw, np.int32)
        for i, m in enumerate(self.masks):
            out[m] = i + 1
        return out


def assign_labels(probs: torch.Tensor, thresholds: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """int64 ``[H, W]`` labels (0 background, i + 1 class i) from ``[N, H, W]`` probabilities.

    Class i is a candidate where ``probs[i] > thresholds[i]``; among candidates the highest probability wins
    (ties: lower index); no candidate → background. Computed in fp32.
    """
    p = probs.float()
    if p.ndim != 3:
        raise ValueError(f"probs must be [N, H, W], got shape {tuple(p.shape)}")
    t = torch.as_tensor(thresholds, dtype=torch.float32, device=p.device).reshape(-1, 1, 1)
    if t.shape[0] != p.shape[0]:
        raise ValueError(f"{t.shape[0]} thresholds for {p.shape[0]} classes")
    if p.shape[0] == 0:
        return torch.zeros(p.shape[1:], dtype=torch.int64, device=p.device)
    cand = p > t
    score = torch.where(cand, p, torch.full_like(p, -torch.inf))
    best = score.argmax(0)
    return torch.where(cand.any(0), best + 1, torch.zeros_like(best))


def resolve_overlaps(
    probs: torch.Tensor, evidence: torch.Tensor, thresholds: torch.Tensor | Sequence[float]
) -> torch.Tensor:
    """``probs`` with each contested pixel left to one class: the one with the highest ``evidence`` there.

    A pixel is contested when several classes exceed their thresholds; every contender but the one with the
    highest evidence (ties: lower index) gets probability 0 there. Uncontested pixels are unchanged. Used with
    each word's cross-attention as evidence: expansions that spread onto the same object are settled by which
    word names it, not by which expansion happens to be more confident.
    """
    p, e = probs.float(), evidence.float().to(probs.device)
    if p.ndim != 3 or e.shape != p.shape:
        raise ValueError(f"probs and evidence must both be [N, H, W], got {tuple(p.shape)} and {tuple(e.shape)}")
    t = torch.as_tensor(thresholds, dtype=torch.float32, device=p.device).reshape(-1, 1, 1)
    if t.shape[0] != p.shape[0]:
        raise ValueError(f"{t.shape[0]} thresholds for {p.shape[0]} classes")
    cand = p > t
    if p.shape[0] < 2:
        return p
    best = torch.where(cand, e, torch.full_like(e, -torch.inf)).argmax(0)
    loses = cand & (cand.sum(0) > 1)[None] & (torch.arange(p.shape[0], device=p.device)[:, None, None] != best[None])
    return torch.where(loses, torch.zeros_like(p), p)


def one_hot(labels: torch.Tensor, n: int) -> torch.Tensor:
    """fp32 ``[n + 1, H, W]`` indicator stack (channel 0 background) of int labels in ``[0, n]``."""
    return F.one_hot(labels.long(), n + 1).permute(2, 0, 1).float()


def resize_stack(stack: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a ``[C, H, W]`` stack (smooth label boundaries when taken through argmax)."""
    if tuple(stack.shape[-2:]) == tuple(hw):
        return stack
    return F.interpolate(stack.float()[None], size=tuple(hw), mode="bilinear", align_corners=False)[0]


def class_scores(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """fp32 ``[N]``: mean of ``probs[i]`` over the pixels labelled ``i + 1`` (0 where the mask is empty)."""
    n = probs.shape[0]
    if n == 0:
        return torch.zeros(0)
    idx = labels.reshape(-1)
    flat = probs.float().reshape(n, -1)
    own = (idx[None] == torch.arange(1, n + 1, device=idx.device)[:, None]).float()
    count = own.sum(1)
    return torch.where(count > 0, (flat * own).sum(1) / count.clamp_min(1), torch.zeros_like(count))


def box_slices(mask: np.ndarray) -> tuple[slice, slice] | None:
    """(rows, cols) slices of a 2-D mask's bounding box (None when it is empty): work on the box, not the photo."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)
