"""Calibration from annotated images: fit a project's mask threshold, per-label presence thresholds and
score → IoU maps from what annotators kept, shrunk towards the model's defaults when evidence is thin.

An :class:`Observation` is one label on one annotated image: the backend's proposal for it at each value of the
method's mask threshold (its score, whether it proposed anything, its IoU with the annotated mask) and whether
the annotator drew the label at all. :func:`fit` turns observations into a :class:`Calibration`:

- **mask threshold** (one per project: SeeDiff's ``pamr_threshold``, DiffuMask's ``threshold``, DAAM's
  ``tau``): the grid value with the best mIoU over the observations (per label, summed intersections over
  summed unions, as the benchmarks score; a spurious region adds its area to its label's union);
- **presence threshold** (per label): a proposal whose score is at or below it is dropped (0 = keep all, the
  default); chosen on the same label IoU;
- **score → IoU** (per label): isotonic regression of a region's IoU on its score, so the score estimates it.

Shrinkage (empirical Bayes on the gain): nothing moves below ``min_examples`` observations; above, a fitted
value moves from the default by ``w = n / (n + strength)`` of the way, and only when ``w × gain`` (the IoU
gain measured on the observations) is at least ``margin`` and the shrunk value still beats the default there. A few odd annotations therefore change nothing.

Which score is calibrated is :func:`region_scores` (the region scores of ``ClassMasks``): the one place to
change should the presence test expose another per-label score.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection, Mapping, Sequence

import numpy as np

from .masks import ClassMasks

__all__ = [
    "MASK_KNOBS", "FitPrior", "Observation", "class_iou", "LabelCalibration", "Calibration", "mask_knob", "knob_grid",
    "region_scores", "is_kept", "fit", "apply_calibration", "calibrated_config", "load_calibration",
    "save_calibration", "calibrated_version", "calibrated_segment", "FORMAT",
]

FORMAT = "seediff-calibration/1"
MASK_KNOBS = {"seediff": "pamr_threshold", "diffumask": "threshold", "daam": "tau"}
GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # candidate mask thresholds (the model's default is always added)


@dataclass(frozen=True)
class FitPrior:
    """How far evidence may move the defaults: ``min_examples`` before anything moves, ``strength`` (k in
    w = n / (n + k)) and ``margin`` (least shrunk IoU gain worth a change)."""

    min_examples: int = 8
    strength: float = 10.0
    margin: float = 0.01

    def __post_init__(self) -> None:
        if isinstance(self.min_examples, bool) or not isinstance(self.min_examples, int) or self.min_examples < 1:
            raise ValueError(f"min_examples must be an int >= 1, got {self.min_examples!r}")
        if not self.strength >= 0:
            raise ValueError(f"strength must be >= 0, got {self.strength!r}")
        if not self.margin >= 0:
            raise ValueError(f"margin must be >= 0, got {self.margin!r}")

    def weight(self, n: int) -> float:
        """The evidence weight n / (n + strength)."""
        return n / (n + self.strength) if n else 0.0


@dataclass(frozen=True)
class Observation:
    """One label word on one annotated image. ``gt``: the annotated area; per grid value of the mask threshold
    (the tuples): the proposal's score, its area and its intersection with the annotation, every label proposed
    (the presence decision simulated at fit time from ``presence`` and ``best``). Areas are fractions of the
    image, so images of any size weigh alike."""

    word: str
    gt: float
    scores: tuple[float, ...]
    pred: tuple[float, ...]
    inter: tuple[float, ...]
    presence: float = float("nan")  # P(present) of the presence decision (NaN: none was made)
    best: bool = False  # the image's most probable label, which the decision always keeps

    def __post_init__(self) -> None:
        if not (len(self.scores) == len(self.pred) == len(self.inter)) or not self.scores:
            raise ValueError("scores, pred and inter must be non-empty and of one length (the grid's)")

    @property
    def present(self) -> bool:
        """The annotator drew the label."""
        return self.gt > 0

    def proposed(self, i: int) -> bool:
        """The backend proposed a region at grid index ``i``."""
        return self.pred[i] > 0

    def iou(self, i: int) -> float:
        """IoU of the proposal at grid index ``i`` with the annotation (0 when either is empty)."""
        union = self.pred[i] + self.gt - self.inter[i]
        return float(self.inter[i] / union) if self.present and union > 0 else 0.0

    def to_dict(self) -> dict:
        """JSON-able form (stored per task by the backend)."""
        return {"word": self.word, "gt": self.gt, "scores": list(self.scores), "pred": list(self.pred),
                "inter": list(self.inter), "presence": None if np.isnan(self.presence) else self.presence,
                "best": self.best}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Observation":
        """Parse :meth:`to_dict`'s form."""
        p = d.get("presence")
        return cls(str(d["word"]), float(d["gt"]), *(tuple(float(v) for v in d[k]) for k in ("scores", "pred", "inter")),
                   float("nan") if p is None else float(p), bool(d.get("best", False)))

    def presence_kept(self, threshold: float | None) -> bool:
        """Whether the presence decision at ``threshold`` keeps this label (None or no P: no decision)."""
        return threshold is None or np.isnan(self.presence) or self.best or self.presence > threshold


def class_iou(obs: Sequence[Observation], i: int, keep: Callable[[Observation], bool] = lambda o: True) -> float:
    """Dataset-level IoU (summed intersections over summed unions) of one word's observations at grid index
    ``i``, proposals for which ``keep`` is False counted as dropped; NaN when nothing is drawn or proposed."""
    inter = union = 0.0
    for o in obs:
        kept = keep(o)
        inter += o.inter[i] if kept else 0.0
        union += o.gt + ((o.pred[i] - o.inter[i]) if kept else 0.0)
    return inter / union if union > 0 else float("nan")


@dataclass(frozen=True)
class LabelCalibration:
    """One label word's fitted settings: threshold on its P(present) (None: the model's), threshold on its region
    score (0: none) and score → IoU knots."""

    n: int
    threshold: float = 0.0
    knots: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    presence_threshold: float | None = None

    def expected_iou(self, score: float) -> float:
        """The score mapped through the knots (unchanged without knots)."""
        if self.knots is None:
            return float(score)
        return float(np.interp(score, self.knots[0], self.knots[1]))


@dataclass(frozen=True)
class Calibration:
    """A project's calibration: the mask threshold (None = the model's default) and per-label settings."""

    method: str
    knob: str
    mask_value: float | None = None
    labels: dict[str, LabelCalibration] = field(default_factory=dict)
    images: int = 0

    def to_dict(self) -> dict:
        """JSON-able form (the calibration file)."""
        return {"format": FORMAT, "method": self.method, "knob": self.knob, "mask_value": self.mask_value,
                "images": self.images,
                "labels": {w: {"n": c.n, "threshold": c.threshold, "presence_threshold": c.presence_threshold,
                               "knots": None if c.knots is None else [list(c.knots[0]), list(c.knots[1])]}
                           for w, c in sorted(self.labels.items())}}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Calibration":
        """Parse :meth:`to_dict`'s form; ValueError names what is wrong."""
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise ValueError(f"not a seediff calibration (expected format {FORMAT!r})")
        method = d.get("method")
        if method not in MASK_KNOBS:
            raise ValueError(f"calibration method must be one of {sorted(MASK_KNOBS)}, got {method!r}")
        labels = {}
        for word, c in (d.get("labels") or {}).items():
            knots = c.get("knots")
            if knots is not None:
                xs, ys = (tuple(float(v) for v in k) for k in knots)
                if len(xs) != len(ys) or not xs or any(b < a for a, b in zip(xs, xs[1:])):
                    raise ValueError(f"label {word!r}: knots must be two equal-length lists, x increasing")
                knots = (xs, ys)
            pt = c.get("presence_threshold")
            labels[str(word)] = LabelCalibration(int(c.get("n", 0)), float(c.get("threshold", 0.0)), knots,
                                                 None if pt is None else float(pt))
        value = d.get("mask_value")
        return cls(method, str(d.get("knob") or MASK_KNOBS[method]), None if value is None else float(value),
                   labels, int(d.get("images", 0)))

    @property
    def digest(self) -> str:
        """8 hex digits naming the content (goes into model_version: same digest, same output)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:8]

    @property
    def is_identity(self) -> bool:
        """True when applying it changes nothing (every setting at the default)."""
        return self.mask_value is None and all(c.threshold == 0.0 and c.knots is None and c.presence_threshold is None
                                               for c in self.labels.values())

    def presence_thresholds(self) -> dict[str, float]:
        """Per-label P(present) thresholds replacing the model's (for ``SeeDiffPredictor.predict``)."""
        return {w: c.presence_threshold for w, c in self.labels.items() if c.presence_threshold is not None}


def is_kept(score: float, threshold: float) -> bool:
    """Whether a proposal with ``score`` survives a presence ``threshold`` (0 keeps every proposal)."""
    return threshold <= 0.0 or score > threshold


def mask_knob(method: str, config) -> str:
    """The config field that sets a method's final mask threshold (SeeDiff without PAMR: ``threshold``)."""
    if method not in MASK_KNOBS:
        raise ValueError(f"unknown method {method!r}; known: {sorted(MASK_KNOBS)}")
    if method == "seediff" and getattr(config, "pamr_iterations", 1) == 0:
        return "threshold"
    return MASK_KNOBS[method]


def knob_grid(default: float | None) -> tuple[float | None, ...]:
    """The candidate values of a mask threshold: :data:`GRID` plus the default, sorted (None = Otsu first)."""
    values = sorted(set(GRID) | ({float(default)} if default is not None else set()))
    return ((None,) if default is None else ()) + tuple(values)


def region_scores(masks: ClassMasks) -> dict[str, float]:
    """The per-label score that presence thresholds and score → IoU maps act on: the region score."""
    return {w: float(s) for w, s in zip(masks.labels, masks.scores)}


def _isotonic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-decreasing least-squares fit of y on x (pool adjacent violators); returns (x knots, fitted y).

    Twenty lines of numpy rather than a scikit-learn dependency (the only thing seediff would use it for).
    """
    order = np.argsort(x, kind="stable")
    xs, ys = x[order], y[order]
    blocks: list[list[float]] = []  # [sum, count, x_lo, x_hi]
    for xv, yv in zip(xs, ys):
        blocks.append([float(yv), 1.0, float(xv), float(xv)])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c, lo, hi = blocks.pop()
            blocks[-1][0] += s; blocks[-1][1] += c; blocks[-1][3] = hi
    kx, ky = [], []
    for s, c, lo, hi in blocks:
        for v in ((lo,) if lo == hi else (lo, hi)):
            kx.append(v); ky.append(s / c)
    return np.asarray(kx), np.asarray(ky)


Keep = Callable[[Observation], bool]


def _mean_iou(by_word: Mapping[str, Sequence[Observation]], i: int, keep: Keep) -> float:
    """Mean over words of the dataset-level IoU at grid index ``i`` (words with nothing drawn or proposed skipped)."""
    values = [v for v in (class_iou(obs, i, keep) for obs in by_word.values()) if not np.isnan(v)]
    return float(np.mean(values)) if values else 0.0


def _fit_mask_index(by_word: Mapping[str, Sequence[Observation]], grid: Sequence, default_i: int,
                    prior: FitPrior, keep: Keep) -> int:
    """Grid index of the project's mask threshold (``default_i`` unless the shrunk mIoU gain clears the margin)."""
    n = sum(o.present for obs in by_word.values() for o in obs)
    if n < prior.min_examples:
        return default_i
    miou = np.array([_mean_iou(by_word, i, keep) for i in range(len(grid))])
    best = int(np.argmax(miou))
    w = prior.weight(n)
    if w * (miou[best] - miou[default_i]) < prior.margin:
        return default_i
    if grid[default_i] is None or grid[best] is None:
        return best
    target = grid[default_i] + w * (grid[best] - grid[default_i])  # shrink the value, then snap to the grid
    near = min((i for i in range(len(grid)) if grid[i] is not None), key=lambda i: abs(grid[i] - target))
    return near if miou[near] > miou[default_i] else default_i


def _shrunk_threshold(obs: Sequence[Observation], i: int, candidates: Sequence[float], default: float,
                      keep_at: Callable[[float], Keep], n: int, prior: FitPrior) -> float | None:
    """The candidate threshold with the best label IoU, moved n/(n+k) of the way from ``default``; None (keep
    the default) unless that shrunk gain clears the margin and the shrunk value still beats the default."""
    def iou_at(t: float) -> float:
        value = class_iou(obs, i, keep_at(t))
        return -1.0 if np.isnan(value) else value

    best = max([default, *candidates], key=iou_at)  # ties go to the default
    w = prior.weight(n)
    if n < prior.min_examples or w * (iou_at(best) - iou_at(default)) < prior.margin:
        return None
    shrunk = default + w * (best - default)
    return float(shrunk) if iou_at(shrunk) > iou_at(default) else None


def _fit_label(obs: Sequence[Observation], i: int, prior: FitPrior, presence_default: float | None) -> LabelCalibration:
    """One word's P(present) threshold, region-score threshold and score → IoU knots, from its observations at
    grid index ``i`` (the presence decision first, then the region scores of what it keeps)."""
    presence_threshold = None
    judged = np.array([o.presence for o in obs if not np.isnan(o.presence)])
    if presence_default is not None and len(judged):
        u = np.unique(judged)
        presence_threshold = _shrunk_threshold(
            obs, i, [0.0, *((u[:-1] + u[1:]) / 2), float(u[-1])], presence_default,
            lambda t: (lambda o: o.presence_kept(t)), len(judged), prior)
    decided = presence_threshold if presence_threshold is not None else presence_default
    shown = [o for o in obs if o.proposed(i) and o.presence_kept(decided)]
    if len(shown) < prior.min_examples:
        return LabelCalibration(len(obs), presence_threshold=presence_threshold)
    u = np.unique([o.scores[i] for o in shown])
    threshold = _shrunk_threshold(obs, i, [*((u[:-1] + u[1:]) / 2), float(u[-1])], 0.0,
                                  lambda t: (lambda o: o.presence_kept(decided) and is_kept(o.scores[i], t)),
                                  len(shown), prior) or 0.0
    kept = [o for o in shown if is_kept(o.scores[i], threshold)]
    knots = None
    if len(kept) >= prior.min_examples:
        w = prior.weight(len(kept))
        kx, ky = _isotonic(np.array([o.scores[i] for o in kept]), np.array([o.iou(i) for o in kept]))
        knots = (tuple(float(v) for v in kx), tuple(float(w * a + (1 - w) * b) for a, b in zip(ky, kx)))
    return LabelCalibration(len(obs), float(threshold), knots, presence_threshold)


def fit(observations: Sequence[Observation], method: str, default_value: float | None, *,
        prior: FitPrior = FitPrior(), images: int = 0, presence_default: float | None = None) -> Calibration:
    """A :class:`Calibration` from observations (:func:`seediff.calibration_data.observe`) made with a config
    whose mask threshold was ``default_value`` (the model's default for ``method``); ``presence_default``: the
    model's P(present) threshold when the predictions decide presence (None: they do not)."""
    if method not in MASK_KNOBS:
        raise ValueError(f"unknown method {method!r}; known: {sorted(MASK_KNOBS)}")
    grid = knob_grid(default_value)
    if any(len(o.scores) != len(grid) for o in observations):
        raise ValueError(f"observations were not made on the grid of default {default_value!r} ({len(grid)} values)")
    knob = MASK_KNOBS[method]
    default_i = grid.index(default_value if default_value is None else float(default_value))
    by_word: dict[str, list[Observation]] = {}
    for o in observations:
        by_word.setdefault(o.word, []).append(o)
    i = _fit_mask_index(by_word, grid, default_i, prior, lambda o: o.presence_kept(presence_default))
    labels = {w: _fit_label(obs, i, prior, presence_default) for w, obs in sorted(by_word.items())}
    return Calibration(method, knob, None if i == default_i else grid[i], labels, images)


def calibrated_config(calibration: Calibration | None, method: str, config):
    """``config`` with the calibrated mask threshold (unchanged without one or for another method)."""
    if calibration is None or calibration.mask_value is None or calibration.method != method:
        return config
    return dataclasses.replace(config, **{mask_knob(method, config): calibration.mask_value})


def apply_calibration(calibration: Calibration | None, masks: ClassMasks, keep: Collection[str] = ()) -> ClassMasks:
    """``masks`` with each calibrated label's proposal dropped when its score is at or below the label's
    presence threshold (the reason says so; never a label in ``keep``: those the user clicked or boxed) and its
    score mapped to an expected IoU."""
    if calibration is None or calibration.method != masks.method:
        return masks
    out_masks, scores, reasons = masks.masks.copy(), masks.scores.copy(), dict(masks.reasons)
    for k, (word, score) in enumerate(region_scores(masks).items()):
        cal = calibration.labels.get(word)
        if cal is None or not out_masks[k].any():
            continue
        if not is_kept(score, cal.threshold) and word not in keep:
            out_masks[k] = False
            scores[k] = 0.0
            reasons[word] = f"score {score:.3g} at or below the project's calibrated threshold {cal.threshold:.3g}"
        else:
            scores[k] = cal.expected_iou(score)
    return dataclasses.replace(masks, masks=out_masks, scores=scores, reasons=reasons)


def calibrated_version(base: str, calibration: Calibration | None) -> str:
    """A model_version with the calibration's digest as a suffix (``-cal<8 hex>``), so Label Studio keeps each
    calibration's predictions apart; ``base`` itself without a calibration or with one that changes nothing."""
    return base if calibration is None or calibration.is_identity else f"{base}-cal{calibration.digest}"


def calibrated_segment(maps, classes: Sequence[str], method: str, config, calibration: Calibration | None,
                       cache: dict | None = None) -> ClassMasks:
    """:func:`seediff.segment.segment` with ``config`` (the model's, for ``method``), calibrated: the CLI jobs'
    counterpart of the backend's ``task_masks``."""
    from .segment import segment

    config = calibrated_config(calibration, method, config)
    return apply_calibration(calibration, segment(maps, list(classes), method=method, config=config, cache=cache))


def load_calibration(path: str | Path) -> Calibration:
    """Read a calibration file (ValueError naming the file when it is not one)."""
    try:
        return Calibration.from_dict(json.loads(Path(path).read_text()))
    except (OSError, json.JSONDecodeError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"{path}: not a usable calibration file: {exc}") from None


def save_calibration(calibration: Calibration, path: str | Path) -> None:
    """Write a calibration file atomically."""
    from .coco import write_json

    write_json(path, calibration.to_dict())
