"""SeeDiffPredictor: run the diffusion model once per image, then answer many cheap mask queries.

Like Segment Anything's ``SamPredictor``: ``generate(prompt, seed)`` or ``set_image(photo, prompt)`` does the
expensive part (a generation, or reading a photo through the UNet) and keeps the attention; ``predict(classes,
points, boxes)`` is tensor work over the stored maps (row-normalised attention and PAMR affinities are cached).
A photo set without a prompt is read lazily with a prompt made from the requested classes; each distinct
prompt is read once and kept.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from PIL import Image

from .capture import AttentionMaps, CaptureConfig
from .defaults import ModelDefaults
from .families import with_layout_levels
from .masks import ClassMasks
from . import modes
from .presence import present_classes, presence_scores
from .prompts import DEFAULT_TEMPLATE, check_classes, check_template, class_prompt
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
    masks = [out.masks[out.labels.index(c)] if c in out.labels else np.zeros((h, w), dtype=bool) for c in words]
    scores = [out.scores[out.labels.index(c)] if c in out.labels else 0.0 for c in words]
    return dataclasses.replace(out, labels=words, masks=np.stack(masks), scores=np.asarray(scores, np.float32),
                               reasons={**out.reasons, **reasons})


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

    def generate(self, prompt: str, seed: int = 0, **kwargs) -> Image.Image:
        """Generate an image for ``prompt`` (``seediff.modes.generate`` kwargs: steps, guidance, height, width…)
        and keep its attention; returns the image."""
        self.reset_image()
        traced = modes.generate(self.pipe, prompt, seed=seed, capture=self.capture, **kwargs)
        self._image = traced.image
        self._maps = traced.maps_for(0)
        return self._image

    def set_image(self, photo, prompt: str | None = None, **kwargs) -> None:
        """Read an existing photo (PIL image, HxWx3 uint8 array or path) for later queries.

        With ``prompt`` the photo is read now, once (``seediff.modes.read_photo`` kwargs: mode, t, steps…);
        class words must then be words of that prompt. Without it, each ``predict`` reads the photo with a
        prompt made from its classes (once per distinct class list).
        """
        self.reset_image()
        self._photo = modes.as_rgb(photo)
        self._image = self._photo
        self._photo_kwargs = dict(kwargs)
        if prompt is not None:
            traced = modes.read_photo(self.pipe, self._photo, prompt, capture=self.capture, **kwargs)
            self._maps = traced.maps

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
        prompt = class_prompt(classes, self.prompt_template)
        if prompt not in self._by_prompt:
            traced = modes.read_photo(self.pipe, self._photo, prompt, capture=self.capture, **self._photo_kwargs)
            self._by_prompt[prompt] = (traced.maps, {})
        return self._by_prompt[prompt]

    # ---- the cheap part ---------------------------------------------------------------------------------
    def predict(
        self,
        classes: str | Sequence[str],
        points=None,
        boxes=None,
        method: str = "seediff",
        config=None,
        drop_absent: bool = False,
    ) -> ClassMasks:
        """Masks for ``classes`` on the current image; see :func:`seediff.segment.segment` for the arguments.

        ``drop_absent``: run the generative presence test (:mod:`seediff.presence`, 6 batched UNet calls, once per
        class list) and give classes it decides absent an empty mask (reason says so) instead of segmenting them;
        classes with user points or boxes are always kept. ``config`` None: the model's
        (``defaults.config(method)``).
        """
        self._require()
        words = check_classes(classes)
        config = self.defaults.config(method) if config is None else config
        maps, cache = self._maps_for(words)
        if not drop_absent or len(words) < 2:
            return segment(maps, words, method=method, config=config, points=points, boxes=boxes, cache=cache)
        scores = self.presence(words)
        seeded = {c for seeds in (points, boxes) if isinstance(seeds, dict) for c, v in seeds.items() if v}
        present = set(present_classes(scores, self.defaults.presence_threshold))
        kept = [c for c in words if c in present or c in seeded]
        out = segment(maps, kept, method=method, config=config, points=_only(points, kept), boxes=_only(boxes, kept),
                      cache=cache)
        return _with_empty(out, words, {c: f"absent by the presence test (score {scores[c]:.4g})"
                                        for c in words if c not in kept})

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

