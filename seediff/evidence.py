"""Which prompted classes a photo shows, and how good each proposed region is, from evidence the read already
holds plus one small batched UNet call.

Presence (per class c of a prompt that names every class of the label set):
- the word's raw cross-attention at one level (no renormalisation over the prompt's words, so the start/end
  tokens keep their share): log of its mean over the image and log of its peak — a word whose object is not
  there gets little attention anywhere;
- the leave-one-out gain: how much the UNet's noise-prediction error rises when c is dropped from the prompt,
  relative to the error with every class, (err(prompt without c) − err(prompt)) / err(prompt), at the read's
  own timestep and noise (one batched UNet call of K + 1 prompt rows; a class that is in the photo explains
  part of it, after Li et al. 2023's diffusion classifier).
A logistic model over these numbers, or a named subset of them (fitted on a dev split, per model: the
``presence`` section of the model folder's ``seediff.json``), gives P(present); a class is kept when it clears
the model's threshold or scores best in its image. The attention mass is partly a property of the word's tokens
(a word spelled in many sub-tokens draws attention everywhere), so a model may leave it out.

Label sets larger than the one the model was fitted on: the fitted bias holds the dev split's prior (m0 of K0
classes present per image); with N classes the prior odds of each one are m0 / (N − m0), so the logit is
shifted by log(m0 / (N − m0)) − log(m0 / (K0 − m0)) (Bayes' rule; :func:`prior_shift`). Without it, 97 absent
labels at a 3-class prior keep a few spurious ones per image by chance alone.

Region quality, in two steps, so the score Label Studio shows estimates each region's IoU with the truth and
can sort tasks worst-first:
- is the region the labelled object at all? A logistic model over the class's presence logit (clipped: past
  ±8 it says nothing more about the region), the share of the word's cross-attention inside the region, its
  area, the number of classes kept and its shape (pieces, outline against a disc's of the same area: ragged or
  broken regions are the wrong ones), fitted on right (IoU ≥ 0.5) / wrong regions;
- how well does it follow the object? The region's *edge disagreement* on the photo: the share of its boundary
  band whose colour sides with the other side (pixels just outside nearer the region's colour than the local
  background's, pixels just inside nearer the background's). 0 when the outline runs along a colour edge.
The IoU estimate is a logistic model over the object model's doubt (its log-odds, capped at 0: a region more
likely right than wrong is ranked by its edges alone, not by how sure the presence test was) and the edge
disagreement, fitted on the regions' IoUs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from .masks import box_slices
from .upsample import share_inside

__all__ = [
    "LogisticModel", "PresenceModel", "RegionModel", "PRESENCE_FEATURES", "REGION_FEATURES", "IOU_FEATURES",
    "presence_logits", "attention_evidence", "prior_shift", "loo_prompts", "loo_errors", "loo_gains",
    "presence_rows", "decide", "region_rows", "edge_disagreement", "region_edges", "iou_rows",
    "fit_region_model", "fit_logistic", "sigmoid",
]

FALLBACK_GAIN_SCALE = 0.01  # without a fitted model: logit = loo_gain / this (a 1 % error change = 1 logit)
PRESENCE_FEATURES = ("log_attention_mass", "log_attention_peak", "loo_gain")
IOU_FEATURES = ("object_doubt", "edge_disagreement")
REGION_FEATURES = ("presence_logit_clipped", "attention_inside", "area", "log_classes_kept", "extra_pieces",
                   "outline_ratio")
LOGIT_CLIP = 8.0  # presence logits beyond ±this say nothing more about a region's quality
EDGE_RING = 4  # px: the local background a region's edge is judged against lies 2..this px outside it
EDGE_MAX_SIDE = 1024  # px: a larger region's box is judged at this size (bounded memory on huge photos)
_TINY = 1e-6


def sigmoid(z):
    """The logistic function of logits (array or float), clipped to ±50 so that no exp overflows."""
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


@dataclass(frozen=True)
class LogisticModel:
    """``P = σ(w · (x − mean) / scale + bias)`` over named features (fitted by :func:`fit_logistic`)."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float

    def __post_init__(self) -> None:
        n = len(self.features)
        if not n or any(len(v) != n for v in (self.mean, self.scale, self.weights)):
            raise ValueError(f"features, mean, scale and weights must have the same non-zero length, got "
                             f"{n}, {len(self.mean)}, {len(self.scale)}, {len(self.weights)}")
        if any(not s > 0 for s in self.scale):
            raise ValueError(f"scale must be > 0, got {self.scale}")

    def logit(self, rows: np.ndarray) -> np.ndarray:
        """Logits ``[N]`` of feature rows ``[N, F]`` (columns in ``features`` order)."""
        x = np.asarray(rows, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise ValueError(f"rows must be [N, {len(self.features)}], got shape {x.shape}")
        z = (x - np.asarray(self.mean)) / np.asarray(self.scale)
        return z @ np.asarray(self.weights) + self.bias

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Probabilities ``[N]`` in (0, 1)."""
        return sigmoid(self.logit(rows))

    def to_dict(self) -> dict:
        """JSON-ready fields."""
        return {"features": list(self.features), "mean": list(self.mean), "scale": list(self.scale),
                "weights": list(self.weights), "bias": self.bias}

    @classmethod
    def from_dict(cls, data: Mapping) -> "LogisticModel":
        """From :meth:`to_dict`'s fields; ValueError names a missing one."""
        missing = [k for k in ("features", "mean", "scale", "weights", "bias") if k not in data]
        if missing:
            raise ValueError(f"logistic model lacks {missing}")
        return cls(tuple(data["features"]), tuple(float(v) for v in data["mean"]),
                   tuple(float(v) for v in data["scale"]), tuple(float(v) for v in data["weights"]),
                   float(data["bias"]))


@dataclass(frozen=True)
class RegionModel:
    """A region's IoU estimate: ``object`` (P(the region is the labelled object) over :data:`REGION_FEATURES`)
    feeding ``iou`` (over :data:`IOU_FEATURES`), see :func:`iou_rows`."""

    object: LogisticModel
    iou: LogisticModel

    def __post_init__(self) -> None:
        if tuple(self.object.features) != REGION_FEATURES:
            raise ValueError(f"the object model's features must be {REGION_FEATURES}, got {self.object.features}")
        if tuple(self.iou.features) != IOU_FEATURES:
            raise ValueError(f"the IoU model's features must be {IOU_FEATURES}, got {self.iou.features}")

    def predict(self, rows: np.ndarray, disagreement: Sequence[float]) -> np.ndarray:
        """IoU estimates ``[N]`` from :func:`region_rows` rows and each region's :func:`edge_disagreement`."""
        return self.iou.predict(iou_rows(self.object.logit(rows), disagreement))

    def to_dict(self) -> dict:
        """JSON-ready fields."""
        return {"object": self.object.to_dict(), "iou": self.iou.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping) -> "RegionModel":
        """From :meth:`to_dict`'s fields."""
        return cls(LogisticModel.from_dict(data["object"]), LogisticModel.from_dict(data["iou"]))


@dataclass(frozen=True)
class PresenceModel:
    """A model's presence decision and region-quality estimate (``seediff.json``'s ``presence`` section).

    fitted_classes / fitted_present: classes per image of the dev split the model was fitted on and how many of
    them were present on average (0: no prior shift for other label-set sizes, see :func:`prior_shift`).

    level: cross-attention level the attention evidence is read at. threshold: P(present) above which a class
    is kept. keep_best: with two or more classes, the best-scoring one is always kept (a photo shows at least
    one label). presence / region: the fitted models (region: None keeps the mask method's scores). about:
    where the numbers come from.
    """

    level: int
    threshold: float
    presence: LogisticModel
    region: RegionModel | None = None
    keep_best: bool = True
    about: str = ""
    fitted_classes: int = 0
    fitted_present: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        feats = tuple(self.presence.features)
        if not feats or any(f not in PRESENCE_FEATURES for f in feats) or len(set(feats)) != len(feats):
            raise ValueError(f"presence features must be distinct names from {PRESENCE_FEATURES}, got {feats}")
        if self.fitted_classes and not 0.0 < self.fitted_present < self.fitted_classes:
            raise ValueError(f"fitted_present must be in (0, fitted_classes={self.fitted_classes}), "
                             f"got {self.fitted_present}")
        if self.region is not None and not isinstance(self.region, RegionModel):
            raise TypeError(f"region must be a RegionModel, got {type(self.region).__name__}")

    def to_dict(self) -> dict:
        """JSON-ready fields."""
        return {"about": self.about, "level": self.level, "threshold": self.threshold, "keep_best": self.keep_best,
                "presence": self.presence.to_dict(), "region": self.region.to_dict() if self.region else None,
                "fitted_classes": self.fitted_classes, "fitted_present": self.fitted_present}

    @classmethod
    def from_dict(cls, data: Mapping) -> "PresenceModel":
        """From :meth:`to_dict`'s fields. A region model of an older release (one logistic model, or features
        other than today's) is left out with a warning: regions then keep the mask method's own scores until
        ``bench/presence.py --write-model`` refits it; the presence decision still works."""
        region = None
        if data.get("region"):
            try:
                region = RegionModel.from_dict(data["region"])
            except (KeyError, TypeError, ValueError) as exc:
                warnings.warn(f"seediff.json's region-score model is not this release's ({exc}; it needs an 'object' "
                              f"model over {REGION_FEATURES} and an 'iou' model over {IOU_FEATURES}): region scores "
                              "fall back to the mask method's until it is refitted (bench/presence.py --write-model)",
                              stacklevel=2)
        return cls(int(data["level"]), float(data["threshold"]), LogisticModel.from_dict(data["presence"]),
                   region, bool(data.get("keep_best", True)),
                   str(data.get("about", "")), int(data.get("fitted_classes", 0)),
                   float(data.get("fitted_present", 0.0)))


# ---- features -----------------------------------------------------------------------------------------------


def _raw_attention(maps, word: str, level: int, batch: int = 0) -> torch.Tensor:
    """The word's cross-attention at ``level``, mean over the level's layers, not renormalised: ``[h, w]``."""
    return maps.cross_maps(word, level, batch, exclude_special=False).float().mean(0)


def attention_evidence(maps, words: Sequence[str], level: int, batch: int = 0) -> np.ndarray:
    """``[K, 2]``: log mean and log peak of each word's raw cross-attention at ``level``."""
    out = []
    for w in words:
        a = _raw_attention(maps, w, level, batch)
        out.append((float(np.log(max(float(a.mean()), _TINY))), float(np.log(max(float(a.max()), _TINY)))))
    return np.asarray(out, dtype=np.float64).reshape(len(words), 2)


def loo_prompts(words: Sequence[str], template: str = "a photo of {}") -> list[str]:
    """The K + 1 prompts of the leave-one-out gain: every class, then every class but each one (when none is
    left: the template without classes, 'a photo of'; 'a photo' for a bare '{}' template)."""
    from .predictor import class_prompt

    words = list(words)
    if not words:
        raise ValueError("no classes")
    rest = [[o for o in words if o != c] for c in words]
    empty = template.format("").strip() or "a photo"
    return [class_prompt(words, template), *(class_prompt(r, template) if r else empty for r in rest)]


@torch.no_grad()
def loo_errors(pipe, image, prompts: Sequence[str], t: int = 100, seed: int = 0, resolution: int | None = None
               ) -> np.ndarray:
    """``[len(prompts)]`` squared noise-prediction errors of the photo noised at ``t`` with the read's own noise
    (``seed``, drawn as ``read_photo`` draws it), one batched UNet call with a row per prompt ('' allowed)."""
    from .conditioning import noise_scheduler, predicted_noise, unet_conditioning
    from .modes import as_rgb, encode_photo, input_size

    n_train = int(pipe.scheduler.config.num_train_timesteps)
    if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < n_train:
        raise ValueError(f"t must be an int in [0, {n_train}), got {t!r}")
    if not prompts or any(not isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    rgb = as_rgb(image)
    size = input_size(pipe, (rgb.height, rgb.width), resolution)
    latents = encode_photo(pipe, rgb, size)
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents.device, latents.dtype)
    ts = torch.tensor([t], device=latents.device)
    scheduler = noise_scheduler(pipe)
    x = scheduler.add_noise(latents, noise, ts).expand(len(prompts), -1, -1, -1)
    eps = predicted_noise(scheduler, pipe.unet(x, ts, **unet_conditioning(pipe, list(prompts), size)).sample, x, ts)
    return ((eps.float() - noise.float()) ** 2).mean(dim=(1, 2, 3)).cpu().numpy().astype(np.float64)


def loo_gains(errors: Sequence[float]) -> np.ndarray:
    """``[K]`` relative error gains from the K + 1 errors of :func:`loo_prompts`' rows."""
    e = np.asarray(errors, dtype=np.float64)
    if e.ndim != 1 or len(e) < 2:
        raise ValueError(f"need the error of the full prompt and of at least one leave-one-out prompt, got {e.shape}")
    return (e[1:] - e[0]) / max(float(e[0]), _TINY)


def presence_rows(evidence: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """``[K, 3]`` rows in :data:`PRESENCE_FEATURES` order."""
    ev, g = np.asarray(evidence, np.float64), np.asarray(gains, np.float64).reshape(-1, 1)
    if ev.shape != (len(g), 2):
        raise ValueError(f"evidence must be [K, 2] for K = {len(g)} gains, got {ev.shape}")
    return np.concatenate([ev, g], axis=1)


def prior_shift(model: PresenceModel | None, n_classes: int | None) -> float:
    """Logit shift for a label set of ``n_classes`` against the one the model was fitted on:
    log(m0 / (N − m0)) − log(m0 / (K0 − m0)) (0 without a fitted prior, or for N ≤ K0: never raised)."""
    if model is None or not model.fitted_classes or n_classes is None or n_classes <= model.fitted_classes:
        return 0.0
    m0, k0 = model.fitted_present, model.fitted_classes
    n = max(float(n_classes), m0 + 1.0)
    return float(np.log(m0 / (n - m0)) - np.log(m0 / (k0 - m0)))


def presence_logits(model: PresenceModel | None, maps, words: Sequence[str], gains: np.ndarray,
                    batch: int = 0, n_classes: int | None = None) -> np.ndarray:
    """``[K]`` presence logits: the model's logistic over its features of :func:`presence_rows`, plus
    :func:`prior_shift` for a label set of ``n_classes`` (default: ``len(words)``); without a fitted model the
    model-agnostic rule ``loo_gain / FALLBACK_GAIN_SCALE`` (positive when naming the class lowers the error)."""
    g = np.asarray(gains, dtype=np.float64)
    if model is None:
        return g / FALLBACK_GAIN_SCALE
    rows = presence_rows(attention_evidence(maps, words, model.level, batch), g)
    cols = [PRESENCE_FEATURES.index(f) for f in model.presence.features]
    shift = prior_shift(model, len(words) if n_classes is None else n_classes)
    return model.presence.logit(rows[:, cols]) + shift


def decide(words: Sequence[str], probs: Sequence[float], threshold: float, keep_best: bool = True,
           forced: Sequence[str] = ()) -> list[str]:
    """Classes kept, in ``words`` order: P above ``threshold``, the best one (``keep_best``, two or more
    classes), and every class in ``forced`` (user points/boxes)."""
    words, p = list(words), np.asarray(probs, dtype=np.float64)
    if len(words) != len(p):
        raise ValueError(f"{len(p)} probabilities for {len(words)} classes")
    best = int(p.argmax()) if keep_best and len(words) > 1 else -1
    return [w for i, w in enumerate(words) if p[i] > threshold or i == best or w in set(forced)]


def region_shape(mask: np.ndarray) -> tuple[int, float]:
    """(pieces beyond the first, outline length ÷ a disc's of the same area) of a non-empty bool mask, worked out
    on its bounding box with a background border (the photo's size would cost a full-size copy and label map)."""
    import cv2

    m = np.asarray(mask, dtype=bool)
    m = np.pad(m[box_slices(m)], 1).view(np.uint8)
    pieces = cv2.connectedComponents(m, connectivity=8)[0] - 1
    outline = sum(cv2.arcLength(c, True) for c in cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0])
    return max(0, pieces - 1), float(outline / (2.0 * np.sqrt(np.pi * max(1, int(m.sum())))))


def region_rows(maps, masks: np.ndarray, labels: Sequence[str], logits: Mapping[str, float], level: int,
                batch: int = 0) -> np.ndarray:
    """``[N, 6]`` rows in :data:`REGION_FEATURES` order for the N masks (``labels[i]`` ↔ ``masks[i]``).

    attention_inside: share of the word's (renormalised) cross-attention at ``level`` inside its mask; area:
    the mask's share of the image; log_classes_kept: log of the number of non-empty masks; extra_pieces and
    outline_ratio: :func:`region_shape`.
    """
    m = np.asarray(masks, dtype=bool)
    if m.ndim != 3 or len(m) != len(labels):
        raise ValueError(f"masks must be [N, H, W] for {len(labels)} labels, got {m.shape}")
    kept = max(1, int(m.reshape(len(m), -1).any(1).sum()))
    rows = []
    for mask, word in zip(m, labels):
        inside = share_inside(maps.cross_maps(word, level, batch).float().mean(0), mask, _TINY)  # full size, banded
        pieces, outline = region_shape(mask) if mask.any() else (0, 0.0)
        rows.append((float(np.clip(logits[word], -LOGIT_CLIP, LOGIT_CLIP)), inside, float(mask.mean()),
                     float(np.log(kept)), float(pieces), outline))
    return np.asarray(rows, dtype=np.float64).reshape(len(m), len(REGION_FEATURES))


def edge_disagreement(image: np.ndarray, mask: np.ndarray) -> float:
    """Share of a non-empty mask's boundary band whose colour sides with the other side: pixels just outside
    nearer the region's mean colour (its core, the mask less its edge) than the local background's (2 to
    :data:`EDGE_RING` px outside), and pixels just inside nearer the background's. 0 when the outline runs along
    a colour edge; 0.5 (no evidence) for a region with no background around it. Worked out on the region's box."""
    import cv2

    m = np.asarray(mask, dtype=bool)
    img = np.asarray(image)
    img = img[..., None] if img.ndim == 2 else img[..., :3]
    if img.shape[:2] != m.shape:
        raise ValueError(f"image {img.shape[:2]} and mask {m.shape} differ in size")
    box = box_slices(m)
    if box is None:
        raise ValueError("the mask is empty")
    pad = EDGE_RING + 1
    (r, c), (h, w) = box, m.shape
    box = slice(max(0, r.start - pad), min(h, r.stop + pad)), slice(max(0, c.start - pad), min(w, c.stop + pad))
    m8, crop = m[box].view(np.uint8), img[box]
    side = max(m8.shape)
    if side > EDGE_MAX_SIDE:
        size = (max(1, round(m8.shape[1] * EDGE_MAX_SIDE / side)), max(1, round(m8.shape[0] * EDGE_MAX_SIDE / side)))
        # area-averaged like the photo, so a pixel is in the mask when most of it was: both see the same edge
        m8 = (cv2.resize(m8.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0.5).view(np.uint8)
        crop = cv2.resize(np.ascontiguousarray(crop), size, interpolation=cv2.INTER_AREA)
    crop = crop.astype(np.float32).reshape(*m8.shape, -1)
    inside, k = m8.astype(bool), np.ones((3, 3), np.uint8)
    eroded = cv2.erode(m8, k).astype(bool)  # outside the photo counts as inside: no edge along the border
    grown = cv2.dilate(m8, k).astype(bool)
    ring = cv2.dilate(m8, k, iterations=EDGE_RING).astype(bool) & ~grown
    core = eroded if eroded.any() else inside
    inner, outer = inside & ~eroded, grown & ~inside
    if not ring.any() or not (inner.any() or outer.any()):
        return 0.5
    obj, bg = crop[core].mean(0), crop[ring].mean(0)

    def nearer_object(px: np.ndarray) -> np.ndarray:
        return np.linalg.norm(px - obj, axis=1) < np.linalg.norm(px - bg, axis=1)

    wrong = int(nearer_object(crop[outer]).sum()) + int((~nearer_object(crop[inner])).sum())
    return float(wrong / (int(outer.sum()) + int(inner.sum())))


def region_edges(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """:func:`edge_disagreement` of each non-empty mask of ``[N, H, W]`` (the photo resized to H×W if it differs)."""
    import cv2

    m, img = np.asarray(masks, dtype=bool), np.asarray(image)
    if img.shape[:2] != m.shape[1:]:
        img = cv2.resize(np.ascontiguousarray(img), (m.shape[2], m.shape[1]), interpolation=cv2.INTER_AREA)
    return np.array([edge_disagreement(img, mask) for mask in m], dtype=np.float64)


def iou_rows(object_logits: Sequence[float], disagreement: Sequence[float]) -> np.ndarray:
    """``[N, 2]`` rows in :data:`IOU_FEATURES` order: the object model's log-odds capped at 0 (only doubt
    counts: regions more likely right than wrong are ranked by their edges) and the edge disagreement."""
    z, d = np.asarray(object_logits, np.float64).reshape(-1), np.asarray(disagreement, np.float64).reshape(-1)
    if len(z) != len(d):
        raise ValueError(f"{len(z)} object logits for {len(d)} edge disagreements")
    return np.c_[np.minimum(z, 0.0), d]


# ---- fitting (bench/presence.py) ------------------------------------------------------------------------------


def fit_logistic(rows: np.ndarray, targets: np.ndarray, features: Sequence[str], l2: float = 1e-2,
                 iterations: int = 100) -> LogisticModel:
    """Logistic regression by Newton's method on standardised features; ``targets`` in [0, 1] (binary labels,
    or fractions such as IoU: the same convex log-loss)."""
    x, y = np.asarray(rows, np.float64), np.asarray(targets, np.float64)
    if x.ndim != 2 or len(x) != len(y) or x.shape[1] != len(features):
        raise ValueError(f"rows must be [N, {len(features)}] with N targets, got {x.shape} and {y.shape}")
    if ((y < 0) | (y > 1)).any():
        raise ValueError("targets must be in [0, 1]")
    mean, scale = x.mean(0), x.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    z = np.c_[(x - mean) / scale, np.ones(len(x))]
    w = np.zeros(z.shape[1])
    reg = l2 * np.r_[np.ones(z.shape[1] - 1), 0.0]
    for _ in range(iterations):
        p = sigmoid(z @ w)
        grad = z.T @ (p - y) + reg * w
        hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return LogisticModel(tuple(features), tuple(float(v) for v in mean), tuple(float(v) for v in scale),
                         tuple(float(v) for v in w[:-1]), float(w[-1]))


def fit_region_model(rows: np.ndarray, disagreement: Sequence[float], ious: Sequence[float]) -> RegionModel:
    """The object model on right (IoU ≥ 0.5) / wrong regions, then the IoU model on its doubt and the edges."""
    y = np.asarray(ious, np.float64)
    obj = fit_logistic(rows, (y >= 0.5).astype(np.float64), REGION_FEATURES)
    return RegionModel(obj, fit_logistic(iou_rows(obj.logit(rows), disagreement), y, IOU_FEATURES))
