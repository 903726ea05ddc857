"""Dataset jobs: *synthesize* (generate images per class, segment them) and *annotate* (segment a folder).

Per item the worker writes, each file atomically: the image (synthesize only), one mask PNG per class
(``masks/<id>/<class>.png``, 0/255), an overlay preview (``overlays/<id>.png``) and, last, its record
(``items/<id>.json``) holding the item's one-image COCO fragment. :func:`merge` joins the fragments with
:func:`seediff.coco.merge_coco` (sorted by file name), so the COCO bytes depend only on the job, never on
the executor, the order items finished in or how often the run was interrupted.

Bit-for-bit reproducibility on CPU needs the same torch thread count (the ``threads`` parameter, default 1
per worker: torch's CPU kernels split reductions by thread), the same device kind and the same library
versions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..calibrate import Calibration, apply_calibration, calibrated_config, calibrated_segment
from ..coco import INFO, merge_coco, to_coco
from ..convert import resize_mask
from ..prompts import check_classes as check_words
from ..prompts import check_template, class_prompt
from . import render
from .spec import Item, ItemWorker, JobSpec, derive_seed
from .store import png_bytes, slug, writing

__all__ = [
    "SYNTH_IDENTITY", "ANNOTATE_IDENTITY", "IMAGE_SUFFIXES", "check_classes", "plan_synthesize", "plan_annotate",
    "synthesize_spec", "annotate_spec", "merge", "finish", "list_images", "quiet_loaders", "SynthesizeWorker",
    "AnnotateWorker",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
_COMMON = ("model", "dtype", "classes", "prompt", "seed", "method", "threads")
SYNTH_IDENTITY = _COMMON + ("steps", "guidance", "height", "width")
ANNOTATE_IDENTITY = _COMMON + ("images_dir", "mode", "t", "steps", "strength", "presence", "calibration")


def check_classes(classes: Sequence[str]) -> list[str]:
    """Class words as given (order kept: it fixes the COCO category ids): :func:`seediff.prompts.check_classes`,
    and no two that give the same file name."""
    if not list(classes):
        raise ValueError("give at least one class (e.g. --classes dog cat)")
    out = check_words([str(c) for c in classes])
    slugs = [slug(c) for c in out]
    if len(set(slugs)) != len(slugs):
        raise ValueError(f"classes {out} give clashing file names {slugs}; rename one")
    return out


def plan_synthesize(classes: Sequence[str], per_class: int, prompt: str, seed: int) -> list[Item]:
    """Items ``<class>-<index>`` (class order, then index), each with a seed derived from ``seed`` and its id."""
    classes = check_classes(classes)
    prompt = check_template(prompt)
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    items = []
    for c in classes:
        for index in range(per_class):
            item_id = f"{slug(c)}-{index:05d}"
            items.append(Item(item_id, derive_seed(seed, item_id), {
                "class": c, "prompt": prompt.format(c), "file_name": f"images/{item_id}.png"}))
    return items


def list_images(images_dir: str | os.PathLike) -> list[str]:
    """Image files under ``images_dir`` (recursively), as sorted POSIX paths relative to it."""
    root = Path(images_dir)
    if not root.is_dir():
        raise ValueError(f"{images_dir} is not a folder")
    found = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not found:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {images_dir}")
    return found


def plan_annotate(images_dir: str | os.PathLike, seed: int) -> list[Item]:
    """One item per image file (sorted by relative path); the id is the path made file-safe plus a short hash."""
    import hashlib

    root = Path(images_dir).resolve()
    items = []
    for rel in list_images(root):
        stem = slug(rel.rsplit(".", 1)[0])[:80]
        item_id = f"{stem}-{hashlib.sha256(rel.encode('utf-8')).hexdigest()[:8]}"
        items.append(Item(item_id, derive_seed(seed, item_id), {"path": str(root / rel), "file_name": rel}))
    return items


def synthesize_spec(out: str | os.PathLike, params: Mapping[str, Any]) -> JobSpec:
    """The synthesize job writing under ``out``."""
    return JobSpec("synthesize", dict(params), str(Path(out).resolve()), "seediff.jobs.datasets:SynthesizeWorker",
                   SYNTH_IDENTITY)


def annotate_spec(work_dir: str | os.PathLike, params: Mapping[str, Any]) -> JobSpec:
    """The annotate job keeping its per-item files under ``work_dir``."""
    return JobSpec("annotate", dict(params), str(Path(work_dir).resolve()), "seediff.jobs.datasets:AnnotateWorker",
                   ANNOTATE_IDENTITY)


def merge(records: Sequence[Mapping[str, Any]], classes: Sequence[str]) -> dict[str, Any]:
    """One COCO dataset from the items' fragments (deterministic: sorted by file name, ids renumbered)."""
    if not records:
        cats = [{"id": i, "name": c} for i, c in enumerate(classes, start=1)]
        return {"info": dict(INFO), "images": [], "annotations": [], "categories": cats}
    return merge_coco([rec["coco"] for rec in records])


def quiet_loaders() -> None:
    """No per-component loading bars from diffusers/transformers (the job shows one bar per item)."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()


class _SegmentWorker(ItemWorker):
    """Loads the pipeline once; segments and writes masks, overlay and the COCO fragment per item."""

    def setup(self) -> None:
        import torch

        from ..pipeline import load_model

        self._threads_before = torch.get_num_threads()
        torch.set_num_threads(int(self.params.get("threads") or 1))
        quiet_loaders()
        loaded = load_model(self.params["model"], device=self.params.get("device"), dtype=self.params.get("dtype"))
        self.loaded = loaded
        self.pipe = loaded.pipe
        self.config = loaded.defaults.config(self.params.get("method", "seediff"))  # the model's seediff.json
        self.classes = list(self.params["classes"])
        cal = self.params.get("calibration")  # a calibration file's content (seediff calibrate), or None
        self.calibration = Calibration.from_dict(cal) if cal else None

    def teardown(self) -> None:
        import torch

        torch.set_num_threads(self._threads_before)

    def segment(self, maps, classes: Sequence[str]):
        """ClassMasks for ``classes`` from the item's attention (the configured method, the model's config,
        calibrated when a calibration file was given)."""
        return calibrated_segment(maps, classes, self.params.get("method", "seediff"), self.config, self.calibration)

    def save(self, item: Item, image, file_name: str, masks, extra_files: Sequence[str] = ()) -> dict[str, Any]:
        """Write mask PNGs and the overlay; return the record (with the COCO fragment)."""
        rgb = np.asarray(image.convert("RGB"))
        h, w = rgb.shape[:2]
        labels = list(masks.labels)
        arrays = [resize_mask(np.asarray(m, bool), h, w) for m in np.asarray(masks.masks)]
        files = list(extra_files)
        for label, m in zip(labels, arrays):
            files.append(self.store.write_file(f"masks/{item.id}/{slug(label)}.png", png_bytes(m)))
        colors = [render.color(self.classes.index(label)) for label in labels]
        preview = render.overlay(rgb, np.asarray(arrays) if arrays else np.zeros((0, h, w), bool), colors)
        files.append(self.store.write_file(f"overlays/{item.id}.png", png_bytes(preview)))
        scores = [float(s) for s in masks.scores]
        entries = [(label, m, s) for label, m, s in zip(labels, arrays, scores)]
        # Exact pixel-corner polygons (holes → RLE): the COCO decodes to the mask PNGs pixel for pixel.
        coco = to_coco([(file_name, entries)], categories=self.classes, sizes={file_name: (w, h)},
                       tolerance=0.0, min_area=0.0)
        reasons = getattr(masks, "reasons", None) or {}
        return {
            "file_name": file_name, "width": w, "height": h, "files": files, "labels": labels, "scores": scores,
            "reasons": {str(k): str(v) for k, v in dict(reasons).items()}, "coco": coco,
        }


class SynthesizeWorker(_SegmentWorker):
    """Generate the item's image from its prompt, then segment its class."""

    def process(self, item: Item) -> dict[str, Any]:
        from ..modes import generate

        p = self.params
        traced = generate(self.pipe, item.data["prompt"], seed=item.seed, steps=int(p.get("steps", 20)),
                          guidance=float(p.get("guidance", 7.5)), height=p.get("height"), width=p.get("width"))
        image = traced.images[0]
        masks = self.segment(traced.maps_for(0), [item.data["class"]])
        image_file = self.store.write_file(item.data["file_name"], png_bytes(image))
        record = self.save(item, image, item.data["file_name"], masks, [image_file])
        return record | {"prompt": item.data["prompt"], "class": item.data["class"]}


class AnnotateWorker(_SegmentWorker):
    """Read the item's photo with every class word in the prompt, decide which classes it shows (unless
    ``presence`` is off), then segment those."""

    def process(self, item: Item) -> dict[str, Any]:
        from ..predictor import SeeDiffPredictor

        p = self.params
        prompt = class_prompt(self.classes, str(p["prompt"]))
        predictor = SeeDiffPredictor.from_model(self.loaded, prompt_template=str(p["prompt"]))
        predictor.set_image(item.data["path"], prompt, mode=p.get("mode", "noise"), t=int(p.get("t", 100)),
                            steps=int(p.get("steps", 10)), strength=float(p.get("strength", 0.5)), seed=item.seed)
        method, cal = p.get("method", "seediff"), self.calibration
        masks = apply_calibration(cal, predictor.predict(
            self.classes, method=method, config=calibrated_config(cal, method, self.config),
            presence=bool(p.get("presence", True)), presence_thresholds=cal.presence_thresholds() if cal else None))
        return self.save(item, predictor.image, item.data["file_name"], masks) | {"prompt": prompt}


def finish(spec: JobSpec, items: Sequence[Item], coco_path: str | os.PathLike) -> dict[str, Any]:
    """Merge the done items' fragments into ``coco_path`` (atomic, deterministic); returns the dataset."""
    from ..coco import write_coco
    from .engine import records

    dataset = merge(records(spec, [i.id for i in items]), spec.params["classes"])
    with writing(coco_path):
        Path(coco_path).parent.mkdir(parents=True, exist_ok=True)
        write_coco(coco_path, dataset)
    return dataset
