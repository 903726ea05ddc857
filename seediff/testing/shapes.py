"""A world where the truth is known: procedural scenes of 1–2 coloured shapes with exact masks and captions.

Every scene is a pure function of its seed (``make_scene(seed)``): a grey background (plain, striped or
noisy), one or two non-overlapping flat-coloured shapes (circle, square, triangle; six colours; in a
two-object scene the shapes and the colours differ), exact per-instance and per-class masks (pixel-centre
tests, no anti-aliasing, so a mask is exactly the pixels that carry the object's colour) and a caption.

Captions sometimes omit the colours ("a square and a circle") so that the *shape word* has to carry the
meaning — the word-specificity problem: a model trained only on "a red square and a blue circle" can place
objects from the colour words alone and leave the shape words unlocalised. The object order in a two-object
caption is random, so word position says nothing about where an object is.

The class of an object is its shape word; :func:`to_coco_ground_truth` exports scenes as COCO ground truth
(RLE segmentations from pycocotools, exact).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "SHAPES", "COLOURS", "BACKGROUNDS", "VOCABULARY", "SceneConfig", "ShapeObject", "Scene",
    "make_scene", "make_scenes", "render_scene", "caption_for", "place_shapes", "to_coco_ground_truth",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Saturated colours far from every grey (backgrounds are grey), so a colour oracle can find them.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 230),
    "yellow": (235, 215, 30),
    "purple": (150, 40, 200),
    "cyan": (30, 210, 220),
}
BACKGROUNDS: tuple[str, ...] = ("plain", "striped", "noisy")
# Every word a caption can contain (one token each in the model's tokenizer).
VOCABULARY: tuple[str, ...] = (
    ("a", "photo", "of", "and", "on", "background") + SHAPES + tuple(COLOURS) + BACKGROUNDS
)


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn. Sizes are in pixels at ``size`` (shape radius scales with ``size``/32).

    p_two: probability of two objects (else one). p_colour: probability that the caption names colours.
    p_photo: probability of the "a photo of" prefix. p_background: probability of naming the background.
    radius: (min, max) half-extent of a shape at size 32.

    The *rich* options (all off by default, so that default scenes stay what they were, seed for seed) widen the
    world the bundled model is trained on: p_three: probability of three objects (taken from the one-object
    share); p_free_colour: probability that an object gets an unnamed random colour (its caption names no colour);
    p_tinted: probability that the background is tinted (coloured) instead of grey; rotation: max |degrees|
    that a square or triangle is turned.
    """

    size: int = 32
    p_two: float = 0.5
    p_colour: float = 0.5
    p_photo: float = 0.3
    p_background: float = 0.3
    radius: tuple[float, float] = (5.0, 8.5)
    p_three: float = 0.0
    p_free_colour: float = 0.0
    p_tinted: float = 0.0
    rotation: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 16:
            raise ValueError(f"size must be an int >= 16, got {self.size!r}")
        for name in ("p_two", "p_colour", "p_photo", "p_background", "p_three", "p_free_colour", "p_tinted"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        lo, hi = self.radius
        if not 0 < lo <= hi:
            raise ValueError(f"radius must satisfy 0 < min <= max, got {self.radius}")
        if self.p_two + self.p_three > 1.0:
            raise ValueError(f"p_two + p_three must be <= 1, got {self.p_two} + {self.p_three}")
        if not 0.0 <= self.rotation <= 45.0:
            raise ValueError(f"rotation must be in [0, 45] degrees, got {self.rotation}")


@dataclass(frozen=True)
class ShapeObject:
    """One shape: its word, colour word ("" for an unnamed colour), centre (x, y) and half-extent (radius) in
    pixels, turn in degrees (squares and triangles) and its RGB (None: the named colour's)."""

    shape: str
    colour: str
    cx: float
    cy: float
    radius: float
    angle: float = 0.0
    rgb: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class Scene:
    """An image (H×W×3 uint8), one exact bool mask per object (N×H×W), the objects, background and caption."""

    seed: int
    image: np.ndarray
    instance_masks: np.ndarray
    objects: tuple[ShapeObject, ...]
    background: str
    caption: str
    named_colours: bool = field(default=False)

    @property
    def classes(self) -> list[str]:
        """Shape words present, in object order (distinct within a scene)."""
        return [o.shape for o in self.objects]

    def class_mask(self, word: str) -> np.ndarray:
        """Union of the masks of the objects whose shape (or colour) is ``word``; all False if absent."""
        keep = [i for i, o in enumerate(self.objects) if word and word in (o.shape, o.colour)]
        if not keep:
            return np.zeros(self.image.shape[:2], dtype=bool)
        return self.instance_masks[keep].any(0)

    def class_masks(self) -> dict[str, np.ndarray]:
        """Shape word → exact mask."""
        return {o.shape: self.class_mask(o.shape) for o in self.objects}


def _shape_mask(obj: ShapeObject, size: int) -> np.ndarray:
    """Exact mask of one shape: pixel centres inside the circle / square / triangle (upright unless turned)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dx, dy = xx - obj.cx, yy - obj.cy
    if obj.angle:  # turn the pixel grid back by the shape's angle, then test against the upright shape
        c, s = np.cos(np.radians(obj.angle)), np.sin(np.radians(obj.angle))
        dx, dy = dx * c + dy * s, -dx * s + dy * c
    r = obj.radius
    if obj.shape == "circle":
        return dx * dx + dy * dy <= r * r
    if obj.shape == "square":
        half = r * 0.85  # equal area-ish to the circle
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if obj.shape == "triangle":
        # Upright equilateral-ish triangle: apex at (0, -1.1 r), base at y = +0.9 r, half-width 1.2 r.
        top, bottom, half_base = -1.1 * r, 0.9 * r, 1.2 * r
        t = (dy - top) / (bottom - top)  # 0 at the apex, 1 at the base
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= t * half_base)
    raise ValueError(f"unknown shape {obj.shape!r}; known: {SHAPES}")


def _background(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A grey H×W×3 uint8 background: plain, striped (two greys, horizontal/vertical/diagonal) or noisy."""
    level = int(rng.integers(70, 190))
    if kind == "plain":
        grey = np.full((size, size), level, dtype=np.float64)
    elif kind == "striped":
        other = int(np.clip(level + rng.choice([-1, 1]) * rng.integers(35, 60), 20, 235))
        period = int(rng.integers(3, 6)) * max(1, size // 32) * 2
        yy, xx = np.mgrid[0:size, 0:size]
        coord = [yy, xx, yy + xx, yy - xx][int(rng.integers(0, 4))]
        grey = np.where((coord // (period // 2)) % 2 == 0, level, other).astype(np.float64)
    elif kind == "noisy":
        grey = level + rng.normal(0.0, 22.0, size=(size, size))
    else:
        raise ValueError(f"unknown background {kind!r}; known: {BACKGROUNDS}")
    grey = np.clip(np.round(grey), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def place_shapes(shapes: Sequence[str], config: SceneConfig, rng: np.random.Generator,
                 angles: Sequence[float] | None = None) -> list[tuple[float, float, float]]:
    """(cx, cy, r) per shape (turned by ``angles``), each inside the image, at least one pixel apart (rejection)."""
    angles = list(angles) if angles is not None else [0.0] * len(shapes)
    scale = config.size / 32.0
    lo, hi = config.radius[0] * scale, config.radius[1] * scale
    for _ in range(1000):
        out, union = [], np.zeros((config.size, config.size), dtype=bool)
        for shape, angle in zip(shapes, angles):
            r = float(rng.uniform(lo, hi))
            margin = 1.2 * r + 1  # the widest shape (triangle) reaches 1.2 r from its centre
            cx, cy = (float(v) for v in rng.uniform(margin, config.size - margin, size=2))
            mask = _shape_mask(ShapeObject(shape, "red", cx, cy, r, angle), config.size)
            grown = mask.copy()  # one-pixel gap: grow the mask by one pixel (4-neighbourhood) before testing
            grown[1:] |= mask[:-1]; grown[:-1] |= mask[1:]; grown[:, 1:] |= mask[:, :-1]; grown[:, :-1] |= mask[:, 1:]
            if (grown & union).any():
                break
            union |= mask
            out.append((cx, cy, r))
        if len(out) == len(shapes):
            return out
    raise RuntimeError(f"could not place {len(shapes)} shapes in {config.size}px")


def caption_for(objects: Sequence[ShapeObject], background: str, rng: np.random.Generator,
                config: SceneConfig = SceneConfig()) -> tuple[str, bool]:
    """A caption for the objects (random order; colours named with probability ``p_colour``) and that flag."""
    colours = bool(rng.random() < config.p_colour)
    order = list(rng.permutation(len(objects)))
    phrases = [f"a {objects[i].colour} {objects[i].shape}" if colours and objects[i].colour else f"a {objects[i].shape}"
               for i in order]
    text = " and ".join(phrases)
    if rng.random() < config.p_photo:
        text = "a photo of " + text
    if rng.random() < config.p_background:
        text += f" on a {background} background"
    return text, colours


def render_scene(objects: Sequence[ShapeObject], background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Paint flat-coloured shapes on a copy of the background; returns (image, instance masks N×H×W)."""
    size = background.shape[0]
    image = background.copy()
    masks = np.zeros((len(objects), size, size), dtype=bool)
    for i, obj in enumerate(objects):
        masks[i] = _shape_mask(obj, size)
        image[masks[i]] = obj.rgb if obj.rgb is not None else COLOURS[obj.colour]
    if len(objects) > 1 and (masks.sum(0) > 1).any():
        raise ValueError("shapes overlap")
    return image, masks


def make_scene(seed: int, config: SceneConfig = SceneConfig(), *, n_objects: int | None = None,
               name_colours: bool | None = None) -> Scene:
    """The scene of ``seed`` (same seed and config → identical scene). ``n_objects``/``name_colours`` force."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if n_objects is not None and n_objects not in (1, 2, 3):
        raise ValueError(f"n_objects must be 1, 2 or 3, got {n_objects!r}")
    rng = np.random.default_rng([int(seed), 0x5EED])
    n = n_objects if n_objects is not None else (2 if rng.random() < config.p_two else 1)
    if n_objects is None and n == 1 and config.p_three > 0 and rng.random() < config.p_three / (1 - config.p_two):
        n = 3
    shapes = rng.choice(len(SHAPES), size=n, replace=False)
    colours = rng.choice(len(COLOURS), size=n, replace=False)
    names = list(COLOURS)
    angles = rng.uniform(-config.rotation, config.rotation, size=n) if config.rotation else np.zeros(n)
    objects = tuple(
        ShapeObject(SHAPES[int(s)], names[int(c)], cx, cy, r, float(a) if SHAPES[int(s)] != "circle" else 0.0)
        for s, c, a, (cx, cy, r) in zip(shapes, colours, angles,
                                         place_shapes([SHAPES[int(s)] for s in shapes], config, rng, angles))
    )
    kind = BACKGROUNDS[int(rng.integers(0, len(BACKGROUNDS)))]
    background = _background(kind, config.size, rng)
    if config.p_tinted and rng.random() < config.p_tinted:
        background = _tint(background, [COLOURS[o.colour] for o in objects], rng)
    if config.p_free_colour:
        objects = tuple(_free_colour(o, background, rng) if rng.random() < config.p_free_colour else o
                        for o in objects)
    image, masks = render_scene(objects, background)
    if name_colours is not None:
        config = SceneConfig(**{**config.__dict__, "p_colour": 1.0 if name_colours else 0.0})
    caption, named = caption_for(objects, kind, rng, config)
    return Scene(int(seed), image, masks, objects, kind, caption, named)


MIN_CONTRAST = 80.0  # least RGB distance between an object's colour and the background's mean colour


def _tint(background: np.ndarray, keep_clear_of: Sequence[tuple[int, int, int]],
          rng: np.random.Generator) -> np.ndarray:
    """The grey background shifted towards a random colour whose mean stays ≥ MIN_CONTRAST from every object's."""
    for _ in range(50):
        shifted = np.clip(background.astype(np.int16) + rng.integers(-70, 71, size=3), 0, 255).astype(np.uint8)
        mean = shifted.reshape(-1, 3).mean(0)
        if all(np.linalg.norm(mean - np.array(c)) >= MIN_CONTRAST for c in keep_clear_of):
            return shifted
    return background


def _free_colour(obj: ShapeObject, background: np.ndarray, rng: np.random.Generator) -> ShapeObject:
    """``obj`` in a random unnamed colour (any hue, white and black included) that stands out of the background."""
    mean = background.reshape(-1, 3).mean(0)
    for _ in range(100):
        rgb = rng.integers(0, 256, size=3)
        if np.linalg.norm(rgb - mean) >= MIN_CONTRAST:
            return replace(obj, colour="", rgb=(int(rgb[0]), int(rgb[1]), int(rgb[2])))
    return obj


def make_scenes(seeds: Iterable[int], config: SceneConfig = SceneConfig(), **kwargs) -> list[Scene]:
    """Scenes for several seeds (see :func:`make_scene`)."""
    return [make_scene(s, config, **kwargs) for s in seeds]


def to_coco_ground_truth(scenes: Sequence[Scene], *, file_pattern: str = "shapes_{seed:06d}.png") -> dict:
    """COCO ground truth: one annotation per object, category = shape word, exact RLE segmentation."""
    from pycocotools import mask as mask_utils

    categories = [{"id": i, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES, start=1)]
    cat_id = {c["name"]: c["id"] for c in categories}
    images, annotations = [], []
    for image_id, scene in enumerate(scenes, start=1):
        h, w = scene.image.shape[:2]
        images.append({"id": image_id, "file_name": file_pattern.format(seed=scene.seed), "width": w, "height": h,
                       "caption": scene.caption})
        for obj, mask in zip(scene.objects, scene.instance_masks):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            area = float(mask_utils.area(rle))
            bbox = [float(v) for v in mask_utils.toBbox(rle)]
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": cat_id[obj.shape],
                "segmentation": rle, "area": area, "bbox": bbox, "iscrowd": 0,
            })
    return {"info": {"description": "seediff procedural shapes"}, "images": images,
            "annotations": annotations, "categories": categories}
