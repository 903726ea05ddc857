"""A second, independent scene world for checking that what was tuned on the shapes world generalises.

Drawn by another generator than :mod:`seediff.testing.shapes`: shapes are rasterised by PIL (not by pixel-centre
tests), rotated a little, at other sizes, 1–3 objects per image (distinct shapes, as a label is present or not;
``repeats=True`` lets a shape repeat, a harder diagnostic), in colours outside the six the shapes world names
(white, orange, pink, brown, teal, black; purple and yellow are words the shapes world uses with other shades; the
bundled model, trained on the shapes world's rich options, saw arbitrary colours only unnamed), with per-object
shade jitter, on plain, striped or noisy backgrounds that are *coloured* (the shapes world's are grey).
Default size 128 px, the size of the Label Studio e2e scenes. Every scene is a pure function of its seed.

Fixed splits (seed ranges) of both worlds live here so that tuning (``dev``) and reporting (``test``) never mix:
:func:`world_split` for the shapes world, :func:`shifted_split` for this one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .shapes import SHAPES, Scene, SceneConfig, ShapeObject, make_scene

__all__ = ["SHIFTED_COLOURS", "SHIFTED_BACKGROUNDS", "ShiftedConfig", "make_shifted_scene", "shifted_split",
           "world_split", "SPLITS"]

SHIFTED_COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "purple": (128, 60, 170),
    "yellow": (250, 225, 60),
    "orange": (245, 140, 20),
    "pink": (240, 120, 180),
    "brown": (120, 75, 35),
    "teal": (20, 130, 120),
    "black": (20, 20, 20),
}
SHIFTED_BACKGROUNDS: tuple[str, ...] = ("plain", "striped", "noisy")
# Seed ranges: (dev, test) per world; far from the shapes benchmark (100000–460000) and training (≥ 1000000).
SPLITS: dict[str, dict[str, int]] = {
    "world": {"dev": 400_000, "test": 100_000},  # test = bench/quality.py's benchmark split (1-object 100000+,
    "shifted": {"dev": 700_000, "test": 800_000},  # 2-object 200000+); dev = its sweep split (1-obj 400000+, 2-obj 450000+)
}


@dataclass(frozen=True)
class ShiftedConfig:
    """size: image side in pixels; objects: (min, max) per image; radius: (min, max) half-extent as a share of
    ``size``; rotation: max |degrees| for squares and triangles; min_contrast: least RGB distance between an
    object's colour and the background's mean colour; repeats: whether a shape may occur more than once."""

    size: int = 128
    objects: tuple[int, int] = (1, 3)
    radius: tuple[float, float] = (0.10, 0.24)
    rotation: float = 15.0
    min_contrast: float = 90.0
    repeats: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 32:
            raise ValueError(f"size must be an int >= 32, got {self.size!r}")
        lo, hi = self.objects
        if not 1 <= lo <= hi <= 3:
            raise ValueError(f"objects must satisfy 1 <= min <= max <= 3, got {self.objects}")
        if not 0 < self.radius[0] <= self.radius[1] < 0.5:
            raise ValueError(f"radius must satisfy 0 < min <= max < 0.5, got {self.radius}")


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]] | None:
    """Vertices of a rotated square / triangle (None for a circle)."""
    if shape == "circle":
        return None
    if shape == "square":
        pts = [(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)]
    else:
        pts = [(0.0, -1.1), (1.2, 0.9), (-1.2, 0.9)]
    c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def _mask(shape: str, cx: float, cy: float, r: float, angle: float, size: int) -> np.ndarray:
    """The object's mask as PIL rasterises it."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    poly = _polygon(shape, cx, cy, r, angle)
    if poly is None:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(poly, fill=255)
    return np.asarray(canvas) > 0


def _background(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A coloured H×W×3 background: plain, striped (two colours, any angle) or noisy (colour noise)."""
    base = rng.integers(40, 216, size=3).astype(np.float64)
    if kind == "plain":
        img = np.broadcast_to(base, (size, size, 3)).copy()
    elif kind == "striped":
        other = np.clip(base + rng.choice([-1, 1], size=3) * rng.integers(30, 70, size=3), 0, 255)
        period = float(rng.uniform(0.06, 0.2) * size)
        theta = float(rng.uniform(0, np.pi))
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
        band = ((xx * np.cos(theta) + yy * np.sin(theta)) // (period / 2)) % 2 == 0
        img = np.where(band[..., None], base, other)
    elif kind == "noisy":
        img = base + rng.normal(0.0, float(rng.uniform(12, 30)), size=(size, size, 3))
    else:
        raise ValueError(f"unknown background {kind!r}; known: {SHIFTED_BACKGROUNDS}")
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def make_shifted_scene(seed: int, config: ShiftedConfig = ShiftedConfig()) -> Scene:
    """The shifted scene of ``seed``: a :class:`~seediff.testing.shapes.Scene` (caption names the shapes only)."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    rng = np.random.default_rng([int(seed), 0x5A1F7])
    size = config.size
    kind = SHIFTED_BACKGROUNDS[int(rng.integers(0, len(SHIFTED_BACKGROUNDS)))]
    image = _background(kind, size, rng)
    mean_bg = image.reshape(-1, 3).mean(0)
    n = int(rng.integers(config.objects[0], config.objects[1] + 1))
    names = [c for c in SHIFTED_COLOURS if np.linalg.norm(np.array(SHIFTED_COLOURS[c]) - mean_bg) >= config.min_contrast]
    names = names or list(SHIFTED_COLOURS)
    for _ in range(2000):
        objects, masks, union = [], [], np.zeros((size, size), dtype=bool)
        kinds = (rng.integers(0, len(SHAPES), size=n) if config.repeats
                 else rng.choice(len(SHAPES), size=n, replace=False))
        for k in kinds:
            shape = SHAPES[int(k)]
            r = float(rng.uniform(*config.radius) * size)
            margin = 1.25 * r + 1
            if 2 * margin >= size:
                break
            cx, cy = (float(v) for v in rng.uniform(margin, size - margin, size=2))
            angle = float(rng.uniform(-config.rotation, config.rotation))
            m = _mask(shape, cx, cy, r, angle, size)
            grown = m.copy()
            grown[1:] |= m[:-1]; grown[:-1] |= m[1:]; grown[:, 1:] |= m[:, :-1]; grown[:, :-1] |= m[:, 1:]
            if (grown & union).any() or not m.any():
                break
            union |= m
            objects.append(ShapeObject(shape, names[int(rng.integers(0, len(names)))], cx, cy, r))
            masks.append(m)
        if len(objects) == n:
            break
    else:  # pragma: no cover
        raise RuntimeError(f"could not place {n} shapes in {size}px")
    for obj, m in zip(objects, masks):
        jitter = rng.integers(-18, 19, size=3)
        image[m] = np.clip(np.array(SHIFTED_COLOURS[obj.colour]) + jitter, 0, 255).astype(np.uint8)
    caption = " and ".join(f"a {o.shape}" for o in objects)
    return Scene(int(seed), image, np.stack(masks), tuple(objects), kind, caption, False)


def shifted_split(split: str, n: int, config: ShiftedConfig = ShiftedConfig()) -> list[Scene]:
    """``n`` shifted scenes of the fixed ``split`` ('dev' or 'test')."""
    return [make_shifted_scene(_offset("shifted", split) + i, config) for i in range(n)]


def world_split(split: str, n_per_count: int, size: int = 32) -> list[Scene]:
    """Shapes-world scenes of the fixed ``split``: ``n_per_count`` 1-object then as many 2-object scenes.

    'test' is bench/quality.py's benchmark split (seeds 100000+ / 200000+), 'dev' its sweep split (400000+ / 450000+).
    """
    base = _offset("world", split)
    second = 200_000 if split == "test" else 450_000
    cfg = SceneConfig(size=size)
    return ([make_scene(base + i, cfg, n_objects=1) for i in range(n_per_count)]
            + [make_scene(second + i, cfg, n_objects=2) for i in range(n_per_count)])


def _offset(world: str, split: str) -> int:
    """First seed of a split; ValueError for an unknown one."""
    if split not in SPLITS[world]:
        raise ValueError(f"split must be one of {sorted(SPLITS[world])}, got {split!r}")
    return SPLITS[world][split]
