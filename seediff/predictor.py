"""SeeDiffPredictor: run the diffusion model once per image, then answer many cheap mask queries.

Like Segment Anything's ``SamPredictor``: ``generate(prompt, seed)`` or ``set_image(photo, prompt)`` does the
expensive part (a generation, or reading a photo through the UNet) and keeps the attention; ``predict(classes,
points, boxes)`` is tensor work over the stored maps (row-normalised attention and PAMR affinities are cached).
A photo set without a prompt is read lazily with a prompt made from the requested classes; each distinct
prompt is read once and kept.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from .capture import AttentionMaps, CaptureConfig
from .defaults import ModelDefaults
from .families import with_layout_levels
from .masks import ClassMasks
from . import modes
from .evidence import (decide, loo_errors, loo_gains, loo_prompts, presence_logits, region_edges, region_rows,
                       sigmoid)
from .presence import present_classes, presence_scores
from .prompts import DEFAULT_TEMPLATE, check_classes, check_template, class_prompt, split_vocabulary
from .segment import segment

__all__ = ["SeeDiffPredictor"]


def _only(seeds, kept: list[str]):
    """Per-class points/boxes restricted to the kept classes (None if none are left; a bare list as it is)."""
    if not isinstance(seeds, dict):
        return seeds
    return {c: v for c, v in seeds.items() if c in kept} or None


def _with_empty(out: ClassMasks, words: list[str], reasons: dict[str, str]) -> ClassMasks:
    """``out`` extended to every word in ``words`` order: the words it lacks get an empty mask and a reason."""
    h, w = out.masks.shape[1:]
    scores = [out.scores[out.labels.index(c)] if c in out.labels else 0.0 for c in words]
    if list(out.labels) == list(words):  # every word segmented: no second copy of the masks
        masks = out.masks
    else:
        masks = np.zeros((len(words), h, w), dtype=bool)
        for i, c in enumerate(words):
            if c in out.labels:
                masks[i] = out.masks[out.labels.index(c)]
    return dataclasses.replace(out, labels=words, masks=masks, scores=np.asarray(scores, np.float32),
                               reasons={**out.reasons, **reasons})


def _merge(parts: list[ClassMasks]) -> ClassMasks:
    """One exclusive ClassMasks from several groups' (a pixel two groups claim goes to the higher-scoring region)."""
    if len(parts) == 1:
        return parts[0]
    labels = [c for p in parts for c in p.labels]
    masks = np.concatenate([p.masks for p in parts]).copy()
    scores = np.concatenate([np.asarray(p.scores, np.float32) for p in parts])
    taken = np.zeros(masks.shape[1:], dtype=bool)
    reasons = {k: v for p in parts for k, v in p.reasons.items()}
    for i in np.argsort(-scores, kind="stable"):
        had = bool(masks[i].any())
        masks[i] &= ~taken
        taken |= masks[i]
        if had and not masks[i].any():
            reasons[labels[i]] = f"{labels[i]!r} lost every pixel to higher-scoring regions of other prompts"
            scores[i] = 0.0
    return dataclasses.replace(parts[0], labels=labels, masks=masks, scores=scores, reasons=reasons,
                               notes=[n for p in parts for n in p.notes])


class SeeDiffPredictor:
    """Masks for any class words of one image, from a Stable Diffusion pipeline's own attention.

    ``pipe``: a diffusers Stable Diffusion pipeline (``seediff.load_pipeline``). ``capture``: what to record
    (default: ``CaptureConfig()``). ``prompt_template``: used to read a photo set without a prompt.
    ``defaults``: the model's own settings (``seediff.load_model(...).defaults``): the method config used when
    ``predict`` gets none, and the presence threshold of ``drop_absent`` (default: reference values, at the
    levels the UNet has: :func:`seediff.families.with_layout_levels`).
    :meth:`from_model` takes both from a :class:`seediff.pipeline.LoadedModel`.
    """

    def __init__(self, pipe, capture: CaptureConfig | None = None, prompt_template: str = DEFAULT_TEMPLATE,
                 defaults: ModelDefaults | None = None) -> None:
        self.pipe = pipe
        self.capture = capture
        self.prompt_template = check_template(prompt_template)
        # No defaults given: the reference values at the levels this UNet has (SDXL: no level-0 attention).
        self.defaults = with_layout_levels(ModelDefaults(), pipe.unet) if defaults is None else defaults
        self.reset_image()

    @classmethod
    def from_model(cls, model, capture: CaptureConfig | None = None,
                   prompt_template: str = DEFAULT_TEMPLATE) -> "SeeDiffPredictor":
        """A predictor for a :class:`seediff.pipeline.LoadedModel` (its pipeline and its defaults)."""
        return cls(model.pipe, capture, prompt_template, model.defaults)

    # ---- the expensive part -----------------------------------------------------------------------------
    def reset_image(self) -> None:
        """Forget the current image and its attention."""
        self._image: Image.Image | None = None
        self._photo = None
        self._photo_kwargs: dict = {}
        self._maps: AttentionMaps | None = None
        self._by_prompt: dict[str, tuple[AttentionMaps, dict]] = {}
        self._cache: dict = {}
        self._presence: dict[tuple[str, ...], dict[str, float]] = {}
        self._logits: dict[tuple[str, ...], dict[str, float]] = {}
        self._loo: dict[tuple[str, ...], list[float]] = {}  # class group → noise errors of its loo_prompts rows

    def generate(self, prompt: str, seed: int = 0, **kwargs) -> Image.Image:
        """Generate an image for ``prompt`` (``seediff.modes.generate`` kwargs: steps, guidance, height, width…)
        and keep its attention; returns the image."""
        self.reset_image()
        traced = modes.generate(self.pipe, prompt, seed=seed, capture=self.capture, **kwargs)
        self._image = traced.image
        self._maps = traced.maps_for(0)
        return self._image

    def set_image(self, photo, prompt: str | None = None, classes: Sequence[str] | None = None, **kwargs) -> None:
        """Read an existing photo (PIL image, HxWx3 uint8 array or path) for later queries.

        With ``prompt`` the photo is read now, once (``seediff.modes.read_photo`` kwargs: mode, t, steps…);
        class words must then be words of that prompt. Without it, each ``predict`` reads the photo with a
        prompt made from its classes (once per distinct class list). ``classes``: the classes ``predict`` will
        be asked for, when ``prompt`` is their :func:`~seediff.prompts.class_prompt`: the presence test's
        leave-one-out rows then ride in the read's own UNet call.
        """
        self.reset_image()
        self._photo = modes.as_rgb(photo)
        self._image = self._photo
        self._photo_kwargs = dict(kwargs)
        if prompt is not None:
            words = check_classes(classes) if classes is not None else []
            rows = loo_prompts(words, self.prompt_template) if words else []
            extra = rows[1:] if rows and rows[0] == prompt and kwargs.get("mode", "noise") == "noise" else []
            traced = modes.read_photo(self.pipe, self._photo, [prompt, *extra] if extra else prompt,
                                      capture=self._recording(1), **kwargs)
            self._maps = traced.maps_for(0) if extra else traced.maps
            if extra:
                self._loo[tuple(words)] = list(traced.maps.meta["noise_errors"])

    @property
    def is_image_set(self) -> bool:
        """Whether an image was generated or set."""
        return self._image is not None

    @property
    def image(self) -> Image.Image:
        """The current image (RuntimeError if none)."""
        self._require()
        return self._image

    @property
    def maps(self) -> AttentionMaps | None:
        """The attention of the current image (None for a photo set without a prompt, before a predict)."""
        return self._maps

    def _require(self) -> None:
        """RuntimeError unless an image was generated or set."""
        if self._image is None:
            raise RuntimeError("no image is set: call .generate(prompt, seed) or .set_image(photo, prompt) first")

    def _maps_for(self, classes: list[str]) -> tuple[AttentionMaps, dict]:
        """Maps (and their cache) that contain the classes: the stored ones, or a photo read for them."""
        if self._maps is not None:
            return self._maps, self._cache
        self._read([classes])
        return self._by_prompt[class_prompt(classes, self.prompt_template)]

    def _recording(self, rows: int) -> CaptureConfig:
        """The capture config recording attention of the first ``rows`` prompt rows only (the leave-one-out rows
        after them are read for their noise prediction alone)."""
        return dataclasses.replace(self.capture or CaptureConfig(), record_rows=rows)

    def _read(self, groups: Sequence[Sequence[str]], loo: bool = False) -> None:
        """Read the photo for every group's prompt not read yet, all in one batched UNet call (with ``loo`` and
        noise mode, each group's leave-one-out rows too, their errors kept for the presence test)."""
        todo = [list(g) for g in groups if class_prompt(g, self.prompt_template) not in self._by_prompt]
        if not todo:
            return
        prompts = [class_prompt(g, self.prompt_template) for g in todo]
        loo = loo and self._photo_kwargs.get("mode", "noise") == "noise"
        extras = [loo_prompts(g, self.prompt_template)[1:] if loo else [] for g in todo]
        rows = prompts + [q for e in extras for q in e]
        traced = modes.read_photo(self.pipe, self._photo, rows if len(rows) > 1 else rows[0],
                                  capture=self._recording(len(prompts)), **self._photo_kwargs)
        errors, start = traced.maps.meta.get("noise_errors"), len(prompts)
        for i, (g, p, e) in enumerate(zip(todo, prompts, extras)):
            self._by_prompt[p] = (traced.maps_for(i) if len(rows) > 1 else traced.maps, {})
            if e and errors is not None:
                self._loo[tuple(g)] = [errors[i], *errors[start:start + len(e)]]
            start += len(e)

    # ---- the cheap part ---------------------------------------------------------------------------------
    def predict(
        self,
        classes: str | Sequence[str],
        points=None,
        boxes=None,
        method: str = "seediff",
        config=None,
        drop_absent: bool = False,
        presence: bool = True,
        presence_thresholds: Mapping[str, float] | None = None,
    ) -> ClassMasks:
        """Masks for ``classes`` on the current image; see :func:`seediff.segment.segment` for the arguments.

        ``presence`` (default on, photos only): first decide which classes the photo shows
        (:mod:`seediff.evidence`: the read's own cross-attention plus one batched UNet call of K + 1 prompt rows,
        once per class list) and segment only those; a class judged absent gets an empty mask and a reason, and
        with a fitted region model (the model's ``seediff.json``) each region's score estimates its IoU. Classes
        with user points or boxes are always kept. ``presence_thresholds``: per-class P(present) thresholds
        instead of the model's (a project's calibration, :mod:`seediff.calibrate`). ``presence=False`` segments
        every class. ``drop_absent``: the
        slower diffusion-classifier test (:mod:`seediff.presence`, 6 UNet calls) decides instead. ``config``
        None: the model's (``defaults.config(method)``). A photo set without a prompt whose classes do not fit
        one prompt is read once per group of classes that fits (:func:`seediff.prompts.split_vocabulary`);
        a pixel two groups claim goes to the region with the higher score.
        """
        self._require()
        words = check_classes(classes)
        config = self.defaults.config(method) if config is None else config
        seeded = {c for seeds in (points, boxes) if isinstance(seeds, dict) for c, v in seeds.items() if v}
        groups = [words] if self._maps is not None else split_vocabulary(self.pipe.tokenizer, words,
                                                                         self.prompt_template)
        if self._maps is None:
            self._read(groups, loo=presence and not drop_absent)
        logits: dict[str, float] = {}
        if drop_absent and len(words) > 1:
            if len(groups) > 1:
                raise ValueError(f"drop_absent needs every class in one prompt; {len(words)} classes need {len(groups)}")
            scores = self.presence(words)
            present = set(present_classes(scores, self.defaults.presence_threshold))
            reasons = {c: f"absent by the presence test (score {scores[c]:.4g})" for c in words if c not in present}
        elif presence and self._photo is not None:
            logits = self.presence_logits(words, groups)
            reasons = self._absent(words, logits, seeded, presence_thresholds or {})
        else:
            reasons = {}
        kept = [c for c in words if c not in reasons or c in seeded]
        parts = []
        for group in groups:
            mine = [c for c in group if c in kept]
            if mine:
                maps, cache = self._maps_for(group)
                out = segment(maps, mine, method=method, config=config, points=_only(points, mine),
                              boxes=_only(boxes, mine), cache=cache)
                parts.append(self._region_scores(out, maps, logits) if logits else out)
        merged = _merge(parts) if parts else ClassMasks(
            labels=[], masks=np.zeros((0, self._image.height, self._image.width), bool), scores=np.zeros(0),
            method=method, config=config)
        return _with_empty(merged, words, {c: r for c, r in reasons.items() if c not in kept})

    def _absent(self, words: list[str], logits: dict[str, float], seeded: set[str],
                thresholds: Mapping[str, float]) -> dict[str, str]:
        """Reasons for the classes the presence decision drops (classes without logits are never dropped);
        ``thresholds``: per-class thresholds replacing the model's."""
        model = self.defaults.presence
        default = model.threshold if model is not None else 0.5
        keep_best = model.keep_best if model is not None else True
        judged = [c for c in words if c in logits]
        probs = {c: float(sigmoid(logits[c])) for c in judged}
        kept = set(decide(judged, [probs[c] for c in judged], 1.0, keep_best, sorted(seeded)))  # best + seeded
        kept |= {c for c in judged if probs[c] > thresholds.get(c, default)}
        return {c: f"judged absent (P(present) {probs[c]:.2f} <= {thresholds.get(c, default):.2f})"
                for c in judged if c not in kept}

    def _region_scores(self, out: ClassMasks, maps: AttentionMaps, logits: dict[str, float]) -> ClassMasks:
        """``out`` with each non-empty region's score replaced by the model's IoU estimate (if it ships one; the
        estimate reads the region's edges on the photo, so maps without a photo keep the method's scores)."""
        model = self.defaults.presence
        if model is None or model.region is None or maps.image is None:
            return out
        live = [i for i, c in enumerate(out.labels) if out.masks[i].any() and c in logits]
        if not live:
            return out
        scores = np.asarray(out.scores, np.float32).copy()
        masks = out.masks if live == list(range(len(out.labels))) else out.masks[live]  # no copy when all live
        rows = region_rows(maps, masks, [out.labels[i] for i in live], logits, model.level)
        scores[live] = model.region.predict(rows, region_edges(maps.image, masks))
        return dataclasses.replace(out, scores=scores)

    def presence_logits(self, classes: Sequence[str], groups: Sequence[Sequence[str]] | None = None
                        ) -> dict[str, float]:
        """Presence logits of ``classes`` on the current photo (:func:`seediff.evidence.presence_logits`), each
        class judged within its group's prompt (``groups``; default one group). The leave-one-out rows of every
        group go through the UNet in one batched call (groups + K rows) at the read's timestep and noise;
        cached per class list."""
        self._require()
        words = tuple(check_classes(classes))
        if words not in self._logits:
            parts = []
            for group in groups or [list(words)]:
                maps, _ = self._maps_for(list(group))
                judged = [c for c in group if maps.has_word(c)]
                if judged:
                    parts.append((maps, judged, loo_prompts(judged, self.prompt_template)))
            missing = [qs for _, judged, qs in parts if tuple(judged) not in self._loo]
            if missing:  # rows the read did not carry: one batched UNet call for all of them
                kw = self._photo_kwargs
                t = int(kw.get("t", 100)) if kw.get("mode", "noise") == "noise" else 100
                errors = loo_errors(self.pipe, self._photo, [q for qs in missing for q in qs], t=t,
                                    seed=int(kw.get("seed", 0)), resolution=kw.get("resolution"))
                start = 0
                for _, judged, qs in parts:
                    if tuple(judged) not in self._loo:
                        self._loo[tuple(judged)] = list(errors[start:start + len(qs)])
                        start += len(qs)
            out: dict[str, float] = {}
            for maps, judged, _ in parts:
                logits = presence_logits(self.defaults.presence, maps, judged, loo_gains(self._loo[tuple(judged)]),
                                         n_classes=len(words))
                out.update({c: float(v) for c, v in zip(judged, logits)})
            self._logits[words] = out
        return self._logits[words]

    def presence(self, classes: Sequence[str]) -> dict[str, float]:
        """Presence scores of ``classes`` on the current image (:func:`seediff.presence.presence_scores`), cached."""
        self._require()
        words = tuple(check_classes(classes))
        if words not in self._presence:
            seed = int(self._photo_kwargs.get("seed", 0))
            self._presence[words] = presence_scores(self.pipe, self._image, words, self.prompt_template, seed=seed)
        return self._presence[words]

    def __repr__(self) -> str:
        state = "no image" if self._image is None else f"image {self._image.width}x{self._image.height}"
        return f"SeeDiffPredictor({type(self.pipe).__name__}, {state})"

