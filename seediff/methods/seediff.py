"""SeeDiff as a mask method: seeds from cross-attention, expansion over self-attention, PAMR refinement.

For all classes at once (seed groups of every class go through one mat-mat per level):
seeds (cross-attention at ``seed_levels``, Otsu on the squared map or fixed α) →
expand at ``expand_level`` (summed cosine over row-normalised self-attention, or the mean seed row) →
background consistency at ``background_levels`` → resize to the working size, threshold → exclusive labels
(argmax with a background channel, in :func:`seediff.segment.segment`) → PAMR on the image (:meth:`SeeDiff.refine`).
A class whose word is absent or whose maps are flat gets an empty mask and a reason, never an exception.
Users' clicks and boxes then decide over the words (:mod:`seediff.methods.clicks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F

from ..baseline import check_common, check_levels
from ..capture import AttentionMaps
from ..expand import EXPANSIONS, expand, row_normalize
from ..masks import assign_labels, one_hot, resolve_overlaps
from ..refine import background_consistency, image_tensor, pamr, pamr_affinity
from ..seeds import UserPrompt, aggregate_layers, fixed_seeds, minmax, otsu_seeds, rescale
from .base import MaskMethod, Probs
from .clicks import ClassClicks, class_clicks, click_level, follow_clicks, has_clicks, with_box_clicks

__all__ = ["SeeDiffConfig", "SeeDiff", "seediff_probs", "seed_map", "pamr_labels", "user_clicks"]

_UPSAMPLE = ("bicubic", "bilinear")
_OVERLAP = ("argmax", "attention")


@dataclass(frozen=True)
class SeeDiffConfig:
    """SeeDiff's constants, reference defaults except ``overlap`` (levels as in ``seediff.capture``: SD 1.5 2 = 16²).

    seed_levels: cross-attention levels whose maps seed the class (reference 16² = (2,); follow-up 8²+16² =
        (3, 2)). Each level: per-layer min-max, sum, min-max; levels resized to the expansion grid and summed.
    expand_level: level of the self-attention used to expand the seeds (reference 16²).
    background_levels: levels of the background-consistency steps, in order (reference 32² then 64²).
    seeds: 'otsu' (reference: Otsu on ``map ** seed_power``) or 'fixed' (follow-up: ``map > alpha``).
    expansion: 'cosine' (reference: Σ_s cos(A_i, A_s)) or 'mean' (follow-up: mean of the seed rows).
    background_power: background seeds are cells of ``P ** background_power`` at or below Otsu.
    threshold: final threshold on the min-max normalised map at the working size (reference demo 0.3).
    pamr_iterations: PAMR rounds (0 = off). The reference runs 5000; 100 is near the best IoU on the
        synthetic sharp-edge study (bench/pamr_iterations.py), and quality falls on textured images beyond.
    pamr_threshold: after PAMR a class keeps pixels where its min-max normalised refined mask exceeds this
        (reference 0.8); overlaps go to the larger value.
    pamr_dilations, pamr_sigma_scale: PAMR's neighbourhood dilations (3×3 each) and σ factor (reference 0.2).
    snap_iterations: boundary snap (not in the reference; 0 = off): when the photo is larger than the working
        size, the labels, enlarged, get this many PAMR rounds on the photo at its size (long side at most
        ``snap_max_side``, and within :data:`seediff.refine.SNAP_BYTES`), so edges follow the photo's colours
        instead of the attention grid's blocks. builtin:shapes turns it on (its 128-px scenes read at 32 px:
        shifted dev oracle-class mIoU 0.82 → 0.91 with 5–10 rounds at dilations (1, 2)).
    snap_dilations: the snap's PAMR dilations (3×3 each, in photo pixels).
    clip_to_box: with user boxes, the class's mask is cut to the union of its boxes.
    exclude_special: renormalise cross-attention over the prompt's real tokens.
    flat_eps: relative range below which a map counts as flat (→ empty mask and a reason).
    work_max_side: cap on the long side of the working size; masks are made at most at the size the model
        saw (``model_side``) and at most this, then resized to the image.
    upsample: interpolation between levels and to the working size (reference: bicubic).
    overlap: a pixel several classes' final maps claim goes to the class whose seed map (its cross-attention) is
        highest there ('attention', default) or to the highest final map
        ('argmax', the reference). Previous builtin:shapes, 2-object photo mIoU 0.70 → 0.77 (docs/QUALITY.md).
    """

    seed_levels: tuple[int, ...] = (2,)
    expand_level: int = 2
    background_levels: tuple[int, ...] = (1, 0)
    seeds: str = "otsu"
    seed_power: float = 2.0
    alpha: float = 0.5
    expansion: str = "cosine"
    background_power: float = 2.0
    threshold: float = 0.3
    pamr_iterations: int = 100
    pamr_threshold: float = 0.8
    pamr_dilations: tuple[int, ...] = (1,)
    pamr_sigma_scale: float = 0.2
    snap_iterations: int = 0
    snap_dilations: tuple[int, ...] = (1, 2)
    snap_max_side: int = 1024
    clip_to_box: bool = True
    exclude_special: bool = True
    flat_eps: float = 1e-4
    work_max_side: int = 512
    upsample: str = "bicubic"
    overlap: str = "attention"

    def __post_init__(self) -> None:
        check_levels("seed_levels", self.seed_levels)
        if isinstance(self.expand_level, bool) or not isinstance(self.expand_level, int) or self.expand_level < 0:
            raise ValueError(f"expand_level must be a non-negative int, got {self.expand_level!r}")
        if not isinstance(self.background_levels, tuple) or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in self.background_levels
        ):
            raise ValueError(f"background_levels must be a tuple of non-negative ints, got {self.background_levels!r}")
        if self.seeds not in ("otsu", "fixed"):
            raise ValueError(f"seeds must be 'otsu' or 'fixed', got {self.seeds!r}")
        if self.expansion not in EXPANSIONS:
            raise ValueError(f"expansion must be one of {EXPANSIONS}, got {self.expansion!r}")
        for name in ("seed_power", "background_power", "pamr_sigma_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("alpha", "threshold", "pamr_threshold"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("pamr_iterations", "snap_iterations"):
            its = getattr(self, name)
            if isinstance(its, bool) or not isinstance(its, int) or its < 0:
                raise ValueError(f"{name} must be an int >= 0, got {its!r}")
        for name in ("pamr_dilations", "snap_dilations"):
            dil = getattr(self, name)
            if not isinstance(dil, tuple) or not dil or any(isinstance(d, bool) or not isinstance(d, int) or d < 1
                                                             for d in dil):
                raise ValueError(f"{name} must be a non-empty tuple of positive ints, got {dil!r}")
        if isinstance(self.snap_max_side, bool) or not isinstance(self.snap_max_side, int) or self.snap_max_side < 8:
            raise ValueError(f"snap_max_side must be an int >= 8, got {self.snap_max_side!r}")
        if self.overlap not in _OVERLAP:
            raise ValueError(f"overlap must be one of {_OVERLAP}, got {self.overlap!r}")
        if self.upsample not in _UPSAMPLE:
            raise ValueError(f"upsample must be one of {_UPSAMPLE}, got {self.upsample!r}")
        check_common(self)


def _resize(x: torch.Tensor, hw: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize ``[K, h, w]`` maps: ``mode`` when enlarging, area averaging when shrinking."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x.float()
    shrink = hw[0] < x.shape[-2] or hw[1] < x.shape[-1]
    kw = {} if shrink else {"align_corners": False}
    return F.interpolate(x.float()[None], size=tuple(hw), mode="area" if shrink else mode, **kw)[0]


def _self_hat(maps: AttentionMaps, level: int, batch: int, cache: dict | None) -> torch.Tensor:
    """Row-normalised first-decoder self-attention at ``level`` (memoised in ``cache`` if given)."""
    key = ("self_hat", batch, level)
    if cache is not None and key in cache:
        return cache[key]
    hat = row_normalize(maps.self_attention(level, batch))
    if cache is not None:
        cache[key] = hat
    return hat


def _check_seediff_levels(maps: AttentionMaps, cfg: SeeDiffConfig) -> None:
    """ValueError naming the recorded levels when the config asks for one that was not recorded."""
    cross, self_ = maps.available_levels("cross"), maps.available_levels("self")
    missing = [lv for lv in cfg.seed_levels if lv not in cross]
    if missing:
        raise ValueError(f"seediff: seed_levels {missing} have no recorded cross-attention; recorded: {cross}")
    missing = [lv for lv in (cfg.expand_level, *cfg.background_levels) if lv not in self_]
    if missing:
        raise ValueError(
            f"seediff: levels {missing} (expand_level/background_levels) have no recorded self-attention; "
            f"recorded: {self_} (CaptureConfig.self_levels chooses them; a UNet without attention at a level, "
            "as SDXL at level 0, takes the levels of its loaded model: seediff.load_model(...).defaults.config)"
        )


def seed_map(maps: AttentionMaps, word: str, cfg: SeeDiffConfig, hw: tuple[int, int], batch: int = 0) -> torch.Tensor:
    """The class's cross-attention map on the expansion grid ``hw``, in [0, 1] (zeros when flat)."""
    total = None
    for lv in cfg.seed_levels:
        agg = aggregate_layers(maps.cross_maps(word, lv, batch, exclude_special=cfg.exclude_special), cfg.flat_eps)
        agg = _resize(agg[None], hw, cfg.upsample)[0]
        total = agg if total is None else total + agg
    return minmax(total, cfg.flat_eps)


def seediff_probs(
    maps: AttentionMaps,
    classes: list[str],
    cfg: SeeDiffConfig,
    hw: tuple[int, int],
    batch: int = 0,
    cache: dict | None = None,
) -> tuple[torch.Tensor, list[float], dict[str, str]]:
    """Per-class SeeDiff maps ``[N, H, W]`` at ``hw`` in [0, 1] from the words alone, their thresholds, and
    reasons for empty ones (users' clicks and boxes are applied by :class:`SeeDiff`)."""
    _check_seediff_levels(maps, cfg)
    grid = maps.level_hw(cfg.expand_level)
    hat = _self_hat(maps, cfg.expand_level, batch, cache)
    device = hat.device
    reasons: dict[str, str] = {}
    live: list[str] = []
    seeds, smaps = [], []
    for word in classes:
        if not maps.has_word(word, batch):
            reasons[word] = f"{word!r} is not in the prompt"
            continue
        smap = seed_map(maps, word, cfg, grid, batch).to(device)
        if not bool(smap.any()):
            reasons[word] = f"the cross-attention of {word!r} is flat (no location)"
            continue
        live.append(word)
        smaps.append(smap)
        seeds.append((otsu_seeds(smap, cfg.seed_power) if cfg.seeds == "otsu" else fixed_seeds(smap, cfg.alpha))
                     .reshape(-1).float())
    if not live:
        return torch.zeros((len(classes), *hw)), [1.0] * len(classes), reasons

    # Expansion: the seeds of every class in one product.
    fg = expand(maps.self_attention(cfg.expand_level, batch), torch.stack(seeds), cfg.expansion, attn_hat=hat,
                eps=cfg.flat_eps)
    prev = fg.reshape(len(live), *grid)
    for lv in cfg.background_levels:
        prev = background_consistency(prev, _self_hat(maps, lv, batch, cache), maps.level_hw(lv),
                                      power=cfg.background_power, mode=cfg.upsample, eps=cfg.flat_eps)
    final = rescale(_resize(prev, hw, cfg.upsample), cfg.flat_eps, dims=(1, 2)).cpu()
    if cfg.overlap == "attention" and len(live) > 1:
        claimed = (final > cfg.threshold).flatten(1).any(1)
        evidence = _resize(torch.stack(smaps), hw, cfg.upsample).cpu()  # each word's cross-attention
        final = resolve_overlaps(final, evidence, [cfg.threshold] * len(live))
        for k, word in enumerate(live):
            if bool(claimed[k]) and not bool((final[k] > cfg.threshold).any()):
                reasons[word] = f"{word!r} lost every pixel to words with stronger cross-attention there"

    probs = torch.zeros((len(classes), *hw))
    for k, word in enumerate(live):
        m = final[k]
        if not bool(m.any()):
            reasons[word] = f"the self-attention expansion of {word!r} is flat"
        probs[classes.index(word)] = m
    thresholds = [cfg.threshold if w not in reasons else 1.0 for w in classes]
    return probs, thresholds, reasons


def user_clicks(maps: AttentionMaps, classes: list[str], cfg: SeeDiffConfig, hw: tuple[int, int],
                prompts: Mapping[str, UserPrompt] | None, image_hw: tuple[int, int], batch: int = 0,
                cache: dict | None = None) -> dict[str, ClassClicks]:
    """Per clicked class, its :class:`~seediff.methods.clicks.ClassClicks` (a box without a click clicks its
    centre), read at the finest of the config's self-attention levels; {} when nobody clicked."""
    prompts = with_box_clicks(prompts or {})
    if not has_clicks(prompts):
        return {}
    level = click_level(maps, (cfg.expand_level, *cfg.background_levels))
    return {c: class_clicks(maps, prompts[c], image_hw, hw, level, power=cfg.seed_power, batch=batch, cache=cache,
                            eps=cfg.flat_eps)
            for c in classes if c in prompts and (len(prompts[c].positive) or len(prompts[c].negative))}


def pamr_labels(maps, labels, n, cfg: SeeDiffConfig, hw, boxes_px, cache, notes) -> torch.Tensor:
    """PAMR on the class indicator masks, then the reference decision (min-max normalised > pamr_threshold)."""
    if maps.image is None:
        notes.append("PAMR skipped: the maps carry no image")
        return labels
    key = ("pamr_affinity", hw, cfg.pamr_dilations, cfg.pamr_sigma_scale)
    device = next(iter(maps.self_attn.values()), torch.zeros(0)).device  # refine where the maps live (GPU if any)
    aff = cache.get(key) if cache is not None else None
    if aff is None:
        aff = pamr_affinity(image_tensor(maps.image, hw).to(device), cfg.pamr_dilations, cfg.pamr_sigma_scale)
        if cache is not None:
            cache[key] = aff
    refined = pamr(one_hot(labels, n)[1:].to(aff.device), aff, cfg.pamr_dilations, cfg.pamr_iterations).cpu()
    normed = minmax(refined, cfg.flat_eps, dims=(1, 2))
    flat = ~normed.flatten(1).any(1)  # a constant channel (all or nothing of the image) keeps its value
    refined = torch.where(flat[:, None, None], refined, normed)
    for i, b in enumerate(boxes_px):
        if b is not None:
            refined[i] = torch.where(b, refined[i], torch.zeros_like(refined[i]))
    return assign_labels(refined, [cfg.pamr_threshold] * n)


class SeeDiff(MaskMethod):
    """SeeDiff: the words' maps, then the users' clicks (a click's object goes to its class, Alt-clicks remove,
    a box without a click clicks its centre: :mod:`seediff.methods.clicks`); refines with PAMR."""

    name = "seediff"
    config_class = SeeDiffConfig
    accepts_points = True

    def probs(self, maps, classes, config, hw, *, batch=0, prompts=None, image_hw=None, cache=None) -> Probs:
        """:func:`seediff_probs`, then :func:`~seediff.methods.clicks.follow_clicks` when someone clicked."""
        probs, thresholds, reasons = seediff_probs(maps, classes, config, hw, batch, cache)
        clicks = user_clicks(maps, classes, config, hw, prompts, image_hw or hw, batch, cache)
        if not clicks:
            return probs, thresholds, reasons
        probs, thresholds = follow_clicks(probs, thresholds, classes, clicks)
        for word, c in clicks.items():
            if c.own is not None:
                reasons.pop(word, None)
        return probs, thresholds, reasons

    def allowed(self, maps, classes, config, hw, *, batch=0, prompts=None, image_hw=None, cache=None) -> list:
        """Boxes (when ``config.clip_to_box``) less each class's Alt-clicked regions, which PAMR must not regrow."""
        allowed = super().allowed(maps, classes, config, hw, batch=batch, prompts=prompts, image_hw=image_hw,
                                  cache=cache)
        clicks = user_clicks(maps, classes, config, hw, prompts, image_hw or hw, batch, cache)
        for i, word in enumerate(classes):
            if word in clicks and bool(clicks[word].forbidden.any()):
                keep = ~clicks[word].forbidden
                allowed[i] = keep if allowed[i] is None else allowed[i] & keep
        return allowed

    def clips_to_boxes(self, config: SeeDiffConfig) -> bool:
        """``config.clip_to_box``."""
        return config.clip_to_box

    def snap(self, config: SeeDiffConfig) -> tuple[int, tuple[int, ...], float, int] | None:
        """The boundary snap's (iterations, dilations, sigma_scale, max_side), or None when it is off."""
        if config.snap_iterations <= 0:
            return None
        return config.snap_iterations, config.snap_dilations, config.pamr_sigma_scale, config.snap_max_side

    def refine(self, maps, labels, n, config: SeeDiffConfig, hw, boxes_px, cache, notes) -> torch.Tensor:
        """PAMR (:func:`pamr_labels`) when ``config.pamr_iterations`` > 0 and some pixel is labelled."""
        if config.pamr_iterations > 0 and bool(labels.any()):
            return pamr_labels(maps, labels, n, config, hw, boxes_px, cache, notes)
        return labels
