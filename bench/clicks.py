"""Click-following on the shapes world's two-object scenes: does a click put the clicked object in the clicked label?

Each scene is read once as the Label Studio backend reads a task (every label-config class in the prompt, "a photo
of a circle and a square and a triangle"); then, per object, the interactions an annotator makes with a smart
KeyPointLabels / RectangleLabels tool, answered from the cached attention (no UNet):

- right label: one positive click at the object's centre with its own shape's label;
- wrong label: the same click with another shape's label (the hand must beat the word);
- near the edge: one click on the interior pixel farthest from the centre;
- two clicks: the centre, then that pixel (clicks accumulate);
- negative: the object's label, positive click on it and an Alt-click on the other object (its region is removed);
  and an Alt-click alone on the other object with that object's own label ("not this one": its region leaves);
- rectangle: the object's box (padded 2 px) with its label: the mask must stay inside.

"inside": share of clicks whose pixel is in the clicked label's mask; IoU: with the clicked object's exact mask.
Latency (``--latency``): the real app served by uvicorn, an interactive ``/predict`` for a task whose image was
already predicted (what Label Studio sends on each click), client wall time.

    python bench/clicks.py --dev 60 --bench 100 --latency 20 --out bench/results/clicks.md
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from seediff.testing.shapes import SHAPES, Scene, SceneConfig, make_scene

MULTI_SEED_OFFSET = 200_000  # quality.py's two-object benchmark split
DEV_SEED_OFFSET = 400_000  # quality.py's dev split (sweeps tune here)
PROMPT_TEMPLATE = "a photo of {}"


def two_object_scenes(offset: int, n: int, size: int = 32) -> list[Scene]:
    """``n`` two-object scenes from seed ``offset`` on (the split quality.py uses at that offset)."""
    return [make_scene(offset + i, SceneConfig(size=size), n_objects=2) for i in range(n)]


def centre_pixel(mask: np.ndarray) -> tuple[float, float]:
    """(x, y) pixel centre of the mask pixel nearest the mask's centroid."""
    ys, xs = np.nonzero(mask)
    k = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    return float(xs[k]) + 0.5, float(ys[k]) + 0.5


def far_pixel(mask: np.ndarray, xy: tuple[float, float]) -> tuple[float, float]:
    """(x, y) of an interior pixel (all 4 neighbours in the mask, if any) farthest from ``xy``."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    ys, xs = np.nonzero(inner if inner.any() else mask)
    k = int(np.argmax((xs + 0.5 - xy[0]) ** 2 + (ys + 0.5 - xy[1]) ** 2))
    return float(xs[k]) + 0.5, float(ys[k]) + 0.5


def padded_box(mask: np.ndarray, pad: int = 2) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the mask's bounding box grown by ``pad`` pixels, inside the image."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return (max(0.0, xs.min() - pad), max(0.0, ys.min() - pad), min(float(w), xs.max() + 1.0 + pad),
            min(float(h), ys.max() + 1.0 + pad))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks (0 when both are empty)."""
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 0.0


@dataclass
class ClickStats:
    """Per-interaction lists, one entry per clicked object."""

    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.values.setdefault(name, []).append(float(value))

    def mean(self, name: str) -> float:
        return float(np.mean(self.values[name])) if self.values.get(name) else float("nan")

    def low(self, name: str) -> float:
        return float(np.min(self.values[name])) if self.values.get(name) else float("nan")


def _mask(out, word: str) -> np.ndarray:
    return np.asarray(out.masks[out.labels.index(word)], dtype=bool)


def measure_scene(stats: ClickStats, maps, scene: Scene, config=None, cache: dict | None = None) -> None:
    """Every interaction of the module docstring on one scene's objects (classes: every shape word)."""
    from seediff.segment import segment

    classes = list(SHAPES)
    cache = {} if cache is None else cache

    def run(points=None, boxes=None):
        return segment(maps, classes, "seediff", config, points=points, boxes=boxes, cache=cache)

    plain = run()
    for k, (obj, own) in enumerate(zip(scene.objects, scene.instance_masks)):
        other = scene.instance_masks[1 - k]
        x, y = centre_pixel(own)
        px = (int(y), int(x))
        stats.add("no click: IoU", iou(_mask(plain, obj.shape), own))
        out = run(points={obj.shape: [(x, y, 1)]})
        mine = _mask(out, obj.shape)
        stats.add("right label: inside", mine[px])
        stats.add("right label: IoU", iou(mine, own))
        stats.add("right label: others keep none of it", not any(_mask(out, c)[own].any() for c in classes
                                                                if c != obj.shape))
        wrong = next(c for c in classes[classes.index(obj.shape) + 1:] + classes if c != obj.shape)
        out = run(points={wrong: [(x, y, 1)]})
        stats.add("wrong label: inside", _mask(out, wrong)[px])
        stats.add("wrong label: IoU", iou(_mask(out, wrong), own))
        x2, y2 = far_pixel(own, (x, y))
        edge = _mask(run(points={obj.shape: [(x2, y2, 1)]}), obj.shape)
        stats.add("edge click: inside", edge[int(y2), int(x2)])
        stats.add("edge click: IoU", iou(edge, own))
        out2 = run(points={obj.shape: [(x, y, 1), (x2, y2, 1)]})
        two = _mask(out2, obj.shape)
        stats.add("two clicks: both inside", two[px] and two[int(y2), int(x2)])
        stats.add("two clicks: IoU", iou(two, own))
        stats.add("two clicks: keeps the first click's mask", not (mine & ~two).any())
        nx, ny = centre_pixel(other)
        out = run(points={obj.shape: [(x, y, 1), (nx, ny, 0)]})
        mixed = _mask(out, obj.shape)
        stats.add("click + Alt-click on the other: IoU", iou(mixed, own))
        stats.add("click + Alt-click on the other: other object left out", not (mixed & other).any())
        theirs = scene.objects[1 - k].shape  # Alt-click on the other object with its own label: "not this one"
        before = _mask(plain, theirs)
        out = run(points={theirs: [(nx, ny, 0)]})
        alone = _mask(out, theirs)
        stats.add("Alt-click alone: its pixel left out", not alone[int(ny), int(nx)])
        stats.add("Alt-click alone: object pixels before", (before & other).sum())
        stats.add("Alt-click alone: object pixels after", (alone & other).sum())
        x0, y0, x1, y1 = padded_box(own)
        out = run(boxes={obj.shape: [(x0, y0, x1, y1)]})
        boxed = _mask(out, obj.shape)
        inside_box = np.zeros_like(own)
        inside_box[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = True
        stats.add("rectangle: mask inside the box", not (boxed & ~inside_box).any())
        stats.add("rectangle: IoU", iou(boxed, own))


def click_stats(pipe, scenes: Sequence[Scene], config=None, *, mode: str = "noise", t: int = 100,
                template: str = PROMPT_TEMPLATE) -> ClickStats:
    """:func:`measure_scene` over scenes, each read once as the backend reads a task (every shape word)."""
    import seediff
    from seediff.predictor import class_prompt

    stats = ClickStats()
    for scene in scenes:
        traced = seediff.read_photo(pipe, scene.image, class_prompt(list(SHAPES), template), mode=mode, t=t)
        measure_scene(stats, traced.maps_for(0), scene, config)
    return stats


ROWS = [  # (row, statistic, how it is shown)
    ("no click (the text alone): IoU with the object", "no click: IoU", "mean"),
    ("positive click, its own label: clicked pixel inside", "right label: inside", "pct"),
    ("positive click, its own label: IoU with the clicked object", "right label: IoU", "mean"),
    ("positive click, its own label: lowest IoU", "right label: IoU", "low"),
    ("positive click: no other label keeps any of the object", "right label: others keep none of it", "pct"),
    ("positive click, another shape's label: clicked pixel inside", "wrong label: inside", "pct"),
    ("positive click, another shape's label: IoU with the clicked object", "wrong label: IoU", "mean"),
    ("one click near the object's edge (an interior pixel far from the centre): IoU", "edge click: IoU", "mean"),
    ("one click near the edge: lowest IoU", "edge click: IoU", "low"),
    ("two clicks on the object (centre, then near the edge): both pixels inside", "two clicks: both inside", "pct"),
    ("two clicks on the object: IoU", "two clicks: IoU", "mean"),
    ("two clicks: the mask keeps all of the first click's mask", "two clicks: keeps the first click's mask", "pct"),
    ("click + Alt-click on the other object: IoU", "click + Alt-click on the other: IoU", "mean"),
    ("click + Alt-click on the other object: none of the other object kept",
     "click + Alt-click on the other: other object left out", "pct"),
    ("Alt-click alone on an object, its own label: clicked pixel left out", "Alt-click alone: its pixel left out", "pct"),
    ("Alt-click alone: the object's pixels in that label, before → after", "Alt-click alone: object pixels", "arrow"),
    ("rectangle with its label: mask inside the box", "rectangle: mask inside the box", "pct"),
    ("rectangle with its label: IoU with the object", "rectangle: IoU", "mean"),
]


def _cell(stats: ClickStats, name: str, how: str) -> str:
    if how == "pct":
        return f"{100 * stats.mean(name):.1f} %"
    if how == "low":
        return f"{stats.low(name):.3f}"
    if how == "arrow":
        return f"{stats.mean(name + ' before'):.1f} → {stats.mean(name + ' after'):.1f}"
    return f"{stats.mean(name):.3f}"


def click_table(columns: dict[str, ClickStats]) -> str:
    """Markdown table: one row per interaction statistic, one column per split."""
    lines = ["| interaction (per clicked object) | " + " | ".join(columns) + " |",
             "|---|" + "---|" * len(columns)]
    for label, name, how in ROWS:
        lines.append(f"| {label} | " + " | ".join(_cell(s, name, how) for s in columns.values()) + " |")
    return "\n".join(lines)


def interactive_latency(model_name: str, n: int, size: int = 32) -> list[float]:
    """Seconds per interactive /predict (a keypoint, as Label Studio sends it) on tasks already predicted once,
    through the real app served by uvicorn over loopback HTTP."""
    import socket
    import tempfile
    import threading

    import httpx
    import uvicorn
    from PIL import Image

    from seediff_labelstudio.model import SeeDiffModel
    from seediff_labelstudio.server import create_app
    from seediff_labelstudio.settings import Settings

    config = ('<View><Image name="image" value="$image"/><PolygonLabels name="poly" toName="image">'
              + "".join(f'<Label value="{s.title()}"/>' for s in SHAPES) + '</PolygonLabels>'
              '<KeyPointLabels name="kp" toName="image" smart="true">'
              + "".join(f'<Label value="{s.title()}"/>' for s in SHAPES) + "</KeyPointLabels></View>")
    root = Path(tempfile.mkdtemp(prefix="seediff-clicks-"))
    scenes = two_object_scenes(MULTI_SEED_OFFSET, max(1, n // 2), size)
    for i, scene in enumerate(scenes):
        Image.fromarray(scene.image).save(root / f"s{i}.png")
    settings = Settings.from_env({"SEEDIFF_MODEL": model_name, "SEEDIFF_DEVICE": "cpu", "SEEDIFF_ALLOWED_ROOTS": str(root)})
    model = SeeDiffModel(settings)
    model.load()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings, model), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    walls = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        for i, scene in enumerate(scenes):
            task = {"id": i + 1, "data": {"image": f"/data/local-files/?d=s{i}.png"}}
            client.post("/predict", json={"tasks": [task], "label_config": config})  # the task is opened: read once
            for obj, own in zip(scene.objects, scene.instance_masks):
                x, y = centre_pixel(own)
                region = {"type": "keypointlabels", "from_name": "kp", "to_name": "image", "original_width": size,
                          "original_height": size, "is_positive": True,
                          "value": {"x": 100 * x / size, "y": 100 * y / size, "width": 1,
                                    "keypointlabels": [obj.shape.title()]}}
                t0 = time.perf_counter()
                r = client.post("/predict", json={"tasks": [task], "label_config": config,
                                                  "params": {"context": {"result": [region]}}})
                walls.append(time.perf_counter() - t0)
                assert r.status_code == 200 and r.json()["results"][0]["result"], r.text[:300]
    server.should_exit = True
    return walls


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:shapes")
    ap.add_argument("--dev", type=int, default=60, help="two-object dev scenes")
    ap.add_argument("--bench", type=int, default=100, help="two-object benchmark scenes")
    ap.add_argument("--latency", type=int, default=20, help="interactive requests timed (0: none)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    import seediff.pipeline

    loaded = seediff.pipeline.load_model(args.model, device="cpu")
    config = loaded.defaults.config("seediff")  # the model's own settings, as the backend uses them
    t0 = time.time()
    columns = {f"dev ({args.dev} scenes)": click_stats(loaded.pipe, two_object_scenes(DEV_SEED_OFFSET, args.dev), config),
               f"benchmark ({args.bench} scenes)": click_stats(loaded.pipe, two_object_scenes(MULTI_SEED_OFFSET,
                                                                                           args.bench), config)}
    command = "python bench/clicks.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = [f"Click-following on two-object scenes. Generated by `{command}` on {platform.machine()}, "
            f"1 torch thread, model `{args.model}`, {time.time() - t0:.0f} s; splits as in quality.py (dev seeds "
            f"{DEV_SEED_OFFSET}+, benchmark seeds {MULTI_SEED_OFFSET}+). Every shape word is in the prompt, as the "
            "backend prompts a task.", "", click_table(columns), ""]
    if args.latency:
        walls = np.asarray(interactive_latency(args.model, args.latency)) * 1000
        text += [f"Interactive `/predict` on a task already read (uvicorn, loopback HTTP, {len(walls)} clicks): "
                 f"median {np.median(walls):.0f} ms, max {walls.max():.0f} ms.", ""]
    report = "\n".join(text)
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
