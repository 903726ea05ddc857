"""segment(maps, classes, method) → ClassMasks: any mask method (``seediff.methods``) behind one generic loop.

Sizes (output, working) → class-word checks → user points/boxes → the method's probability maps → the
method's allowed pixels (boxes) cut the maps → exclusive labels (argmax with a background channel) → the method's
refinement → the method's boundary snap at the photo's size, if any → resize to the image size (in bands, about
one byte per pixel: :mod:`seediff.upsample`). A class whose word is absent or whose maps are flat gets an empty
mask and a reason.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .capture import AttentionMaps
from .masks import ClassMasks, assign_labels, class_scores
from .methods import METHODS, get_method
from .prompts import check_classes
from .refine import image_tensor, snap_labels, snap_size
from .seeds import user_prompts
from .upsample import upsample_labels

__all__ = ["segment", "snapped", "output_hw", "working_hw", "model_side", "as_fp32"]

# ---- sizes --------------------------------------------------------------------------------------------------


def output_hw(maps: AttentionMaps) -> tuple[int, int]:
    """(H, W) of the masks: the image's size; else ``meta['image_hw']``; else the latent grid × 8."""
    if maps.original_hw is not None:
        return tuple(int(v) for v in maps.original_hw)
    if maps.meta.get("image_hw") is not None:
        return tuple(int(v) for v in maps.meta["image_hw"])
    if maps.latent_hw is None:
        raise RuntimeError("no attention was recorded")
    factor = int(maps.meta.get("vae_scale_factor", 8))
    return maps.latent_hw[0] * factor, maps.latent_hw[1] * factor


def as_fp32(maps: AttentionMaps) -> AttentionMaps:
    """The maps with every recorded tensor in fp32 (the same object when they already are).

    ``AttentionMaps.cross_maps`` renormalises in the stored dtype, so fp16 maps are upcast first: every
    normalisation and threshold downstream then runs in fp32 and fp16 input gives the fp32 masks.
    """
    tensors = [*maps.cross.values(), *maps.self_attn.values()]
    if all(t.dtype == torch.float32 for t in tensors):
        return maps
    return dataclasses.replace(
        maps,
        cross={k: v.float() for k, v in maps.cross.items()},
        self_attn={k: v.float() for k, v in maps.self_attn.items()},
    )


def working_hw(hw: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``hw`` scaled down (aspect kept) so its long side is at most ``max_side``."""
    h, w = hw
    s = min(1.0, max_side / max(h, w))
    return max(1, round(h * s)), max(1, round(w * s))


def model_side(maps: AttentionMaps, out_hw: tuple[int, int]) -> int:
    """Long side of the image the model saw (``meta['image_hw']``; else the output size).

    Masks are worked out at most at this size: the attention holds no finer detail, and PAMR's reach is
    counted in pixels, so refining a 32-px model's maps on a 4× larger photo would spread them 4× less far.
    """
    seen = maps.meta.get("image_hw") or out_hw
    return int(max(seen))


def snapped(maps: AttentionMaps, labels: torch.Tensor, n: int, snap, hw: tuple[int, int], out_hw: tuple[int, int],
            boxes_px: list, notes: list[str]) -> torch.Tensor:
    """``labels`` moved onto the photo's edges at the snap's size (:func:`seediff.refine.snap_labels`), or as they
    are when the method has no snap, the maps carry no image, nothing is labelled or the photo is no larger."""
    if snap is None or maps.image is None or not bool(labels.any()):
        return labels
    iterations, dilations, sigma_scale, max_side = snap
    size = snap_size(out_hw, hw, max_side, n, dilations)
    if size is None:
        return labels
    big = torch.from_numpy(upsample_labels(labels, n, size).astype(np.int64))
    allowed = [None if b is None else F.interpolate(b[None, None].float(), size=size, mode="nearest")[0, 0] > 0
               for b in boxes_px]
    notes.append(f"boundaries snapped to the photo at {size[1]}x{size[0]}")
    return snap_labels(image_tensor(maps.image, size), big, n, dilations, iterations, sigma_scale, allowed)


def segment(
    maps: AttentionMaps,
    classes: str | Sequence[str],
    method: str = "seediff",
    config=None,
    points=None,
    boxes=None,
    *,
    batch: int = 0,
    cache: dict | None = None,
) -> ClassMasks:
    """Exclusive masks for ``classes`` (words of the prompt) from recorded attention, at the image's size.

    method: a name in :data:`seediff.methods.METHODS` ('seediff' | 'diffumask' | 'daam'); config: the method's
    config (default: its reference values; a loaded model's own values: ``ModelDefaults.config(method)``).
    points: per class ``{class: [(x, y, label), ...]}`` in image pixels (label 1 positive, 0 negative; bare
    ``(x, y)`` is positive), or a bare list for a single class. boxes: ``{class: [(x0, y0, x1, y1), ...]}``
    likewise. Points go to methods that accept them (SeeDiff: a positive click puts its object in its class,
    whatever the word says; a negative one takes its region away); boxes cut every method's maps.
    ``cache``: a dict kept across calls on the same maps (row-normalised attention, PAMR affinities).
    """
    mask_method = get_method(method)
    config = mask_method.config_class() if config is None else config
    if not isinstance(config, mask_method.config_class):
        raise TypeError(f"method {method!r} takes a {mask_method.config_class.__name__}, got {type(config).__name__}")
    classes = check_classes(classes)
    maps = as_fp32(maps)
    out_hw = output_hw(maps)
    hw = working_hw(out_hw, min(config.work_max_side, model_side(maps, out_hw)))
    prompts = user_prompts(classes, points, boxes, out_hw)
    if not mask_method.accepts_points and any(len(p.positive) or len(p.negative) for p in prompts.values()):
        takers = [name for name, m in METHODS.items() if m.accepts_points]
        raise ValueError(f"points are seeds and only method={takers[0]!r} uses them (got method={method!r})"
                         if len(takers) == 1 else f"method {method!r} takes no points; methods that do: {takers}")

    with torch.no_grad():
        probs, thresholds, reasons = mask_method.probs(maps, classes, config, hw, batch=batch, prompts=prompts,
                                                       image_hw=out_hw, cache=cache)
        probs = probs.float().cpu()
        boxes_px = mask_method.allowed(maps, classes, config, hw, batch=batch, prompts=prompts, image_hw=out_hw,
                                       cache=cache)
        for i, b in enumerate(boxes_px):
            if b is not None:
                probs[i] = torch.where(b, probs[i], torch.zeros_like(probs[i]))
        labels = assign_labels(probs, thresholds)
        candidates = [bool((probs[i] > thresholds[i]).any()) for i in range(len(classes))]
        notes: list[str] = []
        labels = mask_method.refine(maps, labels, len(classes), config, hw, boxes_px, cache, notes)
        scores = class_scores(probs, labels)
        labels = snapped(maps, labels, len(classes), mask_method.snap(config), hw, out_hw, boxes_px, notes)
        final = upsample_labels(labels, len(classes), out_hw)  # ~1 byte per pixel at the photo's size
    masks = np.empty((len(classes), *final.shape), dtype=bool)
    for i in range(len(classes)):
        np.equal(final, i + 1, out=masks[i])
    del final
    for i, c in enumerate(classes):
        if not masks[i].any() and c not in reasons:
            reasons[c] = (f"{c!r} lost every pixel to other classes" if candidates[i]
                          else f"no pixel of {c!r} exceeded the threshold {thresholds[i]:g}")
        if not masks[i].any():
            scores[i] = 0.0
    return ClassMasks(labels=classes, masks=masks, scores=scores.numpy(), reasons=reasons, method=method,
                      config=config, notes=notes)


