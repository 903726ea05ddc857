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

Region quality: a second logistic model estimates each proposed region's IoU with the truth from the class's
presence logit (clipped: past ±8 it says nothing more about the region), the share of the word's
cross-attention that falls inside the region, the region's area, the number of classes kept, and the region's
shape — how many pieces it falls into and how long its outline is against a disc's of the same area (ragged or
broken regions are the wrong ones) — so the score Label Studio shows can sort tasks worst-first.
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
    "LogisticModel", "PresenceModel", "PRESENCE_FEATURES", "REGION_FEATURES", "presence_logits",
    "attention_evidence", "prior_shift", "loo_prompts", "loo_errors", "loo_gains", "presence_rows", "decide",
    "region_rows", "fit_logistic", "sigmoid",
]

FALLBACK_GAIN_SCALE = 0.01  # without a fitted model: logit = loo_gain / this (a 1 % error change = 1 logit)
PRESENCE_FEATURES = ("log_attention_mass", "log_attention_peak", "loo_gain")
REGION_FEATURES = ("presence_logit_clipped", "attention_inside", "area", "log_classes_kept", "extra_pieces",
                   "outline_ratio")
LOGIT_CLIP = 8.0  # presence logits beyond ±this say nothing more about a region's quality
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
class PresenceModel:
    """A model's presence decision and region-quality estimate (``seediff.json``'s ``presence`` section).

    fitted_classes / fitted_present: classes per image of the dev split the model was fitted on and how many of
    them were present on average (0: no prior shift for other label-set sizes, see :func:`prior_shift`).

    level: cross-attention level the attention evidence is read at. threshold: P(present) above which a class
    is kept. keep_best: with two or more classes, the best-scoring one is always kept (a photo shows at least
    one label). presence / region: the fitted logistic models. about: where the numbers come from.
    """

    level: int
    threshold: float
    presence: LogisticModel
    region: LogisticModel | None = None
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
        if self.region is not None and tuple(self.region.features) != REGION_FEATURES:
            raise ValueError(f"region features must be {REGION_FEATURES}, got {self.region.features}")

    def to_dict(self) -> dict:
        """JSON-ready fields."""
        return {"about": self.about, "level": self.level, "threshold": self.threshold, "keep_best": self.keep_best,
                "presence": self.presence.to_dict(), "region": self.region.to_dict() if self.region else None,
                "fitted_classes": self.fitted_classes, "fitted_present": self.fitted_present}

    @classmethod
    def from_dict(cls, data: Mapping) -> "PresenceModel":
        """From :meth:`to_dict`'s fields. A region model fitted on other features than today's
        :data:`REGION_FEATURES` (an older release's) is left out with a warning: regions then keep the mask
        method's own scores until ``bench/presence.py --write-model`` refits it; the presence decision still works."""
        region = LogisticModel.from_dict(data["region"]) if data.get("region") else None
        if region is not None and tuple(region.features) != REGION_FEATURES:
            warnings.warn(f"seediff.json's region-score model uses features {tuple(region.features)}, this release "
                          f"computes {REGION_FEATURES}: region scores fall back to the mask method's until it is "
                          "refitted (bench/presence.py --write-model)", stacklevel=2)
            region = None
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
