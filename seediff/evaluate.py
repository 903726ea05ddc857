"""Semantic-segmentation scores between a predicted and a ground-truth COCO file: per-class IoU and mIoU.

Per class, the union of its instances is one mask per image; intersection and union pixels are summed over
all ground-truth images (the usual dataset-level IoU, as in VOC mIoU), so large and small images weigh by
their pixels. Images are matched by ``file_name``, classes by category ``name``. A ground-truth image with no
prediction counts as predicted empty; predicted images the ground truth lacks are ignored (and counted).
mIoU is the mean over the classes that occur in the ground truth or the predictions (union > 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from .coco import validate_coco
from .convert import segmentation_to_mask

__all__ = ["ClassScore", "Evaluation", "evaluate", "format_table"]


@dataclass(frozen=True)
class ClassScore:
    """Pixel counts of one class over the dataset and its IoU (NaN when the class is in neither file)."""

    name: str
    intersection: int
    union: int
    gt_pixels: int
    pred_pixels: int

    @property
    def iou(self) -> float:
        return self.intersection / self.union if self.union else math.nan


@dataclass
class Evaluation:
    """Per-class scores (ground-truth category order), mIoU and what could not be matched."""

    classes: list[ClassScore]
    images: int
    missing_predictions: list[str] = field(default_factory=list)
    extra_predictions: list[str] = field(default_factory=list)

    @property
    def miou(self) -> float:
        values = [c.iou for c in self.classes if c.union]
        return float(np.mean(values)) if values else math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (NaN → null)."""
        nan = lambda x: None if isinstance(x, float) and math.isnan(x) else x  # noqa: E731
        return {
            "miou": nan(self.miou), "images": self.images,
            "classes": {c.name: {"iou": nan(c.iou), "intersection": c.intersection, "union": c.union,
                                 "gt_pixels": c.gt_pixels, "pred_pixels": c.pred_pixels} for c in self.classes},
            "missing_predictions": self.missing_predictions, "extra_predictions": self.extra_predictions,
        }


def _class_masks(dataset: Mapping[str, Any], image: Mapping[str, Any], names: Mapping[int, str]) -> dict[str, np.ndarray]:
    """{class name: union of that class's instances} for one image."""
    h, w = int(image["height"]), int(image["width"])
    out: dict[str, np.ndarray] = {}
    for ann in dataset["_by_image"].get(image["id"], []):
        if not ann.get("segmentation"):
            continue
        m = segmentation_to_mask(ann["segmentation"], h, w)
        name = names[ann["category_id"]]
        out[name] = out[name] | m if name in out else m
    return out


def _index(dataset: Mapping[str, Any]) -> dict[str, Any]:
    """The dataset with annotations grouped by image id (under a private key)."""
    by_image: dict[int, list] = {}
    for ann in dataset["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    return dict(dataset) | {"_by_image": by_image}


def evaluate(predictions: Mapping[str, Any], ground_truth: Mapping[str, Any]) -> Evaluation:
    """Per-class IoU and mIoU of ``predictions`` against ``ground_truth`` (both COCO datasets)."""
    validate_coco(predictions)
    validate_coco(ground_truth)
    gt_images: dict[str, Mapping] = {}
    for img in ground_truth["images"]:
        if img["file_name"] in gt_images:
            raise ValueError(f"ground truth has image {img['file_name']!r} twice")
        gt_images[img["file_name"]] = img
    pred_images: dict[str, Mapping] = {}
    for img in predictions["images"]:
        if img["file_name"] in pred_images:
            raise ValueError(f"predictions have image {img['file_name']!r} twice")
        pred_images[img["file_name"]] = img
    gt_names = {c["id"]: c["name"] for c in ground_truth["categories"]}
    pred_names = {c["id"]: c["name"] for c in predictions["categories"]}
    order = list(dict.fromkeys([*gt_names.values(), *pred_names.values()]))
    counts = {name: [0, 0, 0, 0] for name in order}  # intersection, union, gt, pred
    gt, pred = _index(ground_truth), _index(predictions)
    missing = []
    for file_name in sorted(gt_images):
        g_img = gt_images[file_name]
        g = _class_masks(gt, g_img, gt_names)
        p_img = pred_images.get(file_name)
        if p_img is None:
            missing.append(file_name)
            p = {}
        else:
            if (p_img["width"], p_img["height"]) != (g_img["width"], g_img["height"]):
                raise ValueError(
                    f"{file_name}: prediction size {p_img['width']}x{p_img['height']} differs from ground truth "
                    f"{g_img['width']}x{g_img['height']}"
                )
            p = _class_masks(pred, p_img, pred_names)
        for name in set(g) | set(p):
            gm, pm = g.get(name), p.get(name)
            gm = gm if gm is not None else np.zeros_like(pm)
            pm = pm if pm is not None else np.zeros_like(gm)
            c = counts[name]
            c[0] += int(np.count_nonzero(gm & pm))
            c[1] += int(np.count_nonzero(gm | pm))
            c[2] += int(np.count_nonzero(gm))
            c[3] += int(np.count_nonzero(pm))
    extra = sorted(set(pred_images) - set(gt_images))
    scores = [ClassScore(name, *counts[name]) for name in order]
    return Evaluation(scores, len(gt_images), missing, extra)


def format_table(result: Evaluation) -> str:
    """A Markdown table: class, IoU, pixel counts; then the mIoU line."""
    fmt = lambda x: "n/a" if math.isnan(x) else f"{100 * x:.1f}"  # noqa: E731
    lines = ["| class | IoU % | intersection | union | GT pixels | predicted pixels |",
             "|---|---:|---:|---:|---:|---:|"]
    for c in result.classes:
        lines.append(f"| {c.name} | {fmt(c.iou)} | {c.intersection} | {c.union} | {c.gt_pixels} | {c.pred_pixels} |")
    lines.append(f"| **mIoU** | **{fmt(result.miou)}** | | | | |")
    notes = [f"{result.images} ground-truth images"]
    if result.missing_predictions:
        notes.append(f"{len(result.missing_predictions)} without predictions (counted as empty)")
    if result.extra_predictions:
        notes.append(f"{len(result.extra_predictions)} predicted images not in the ground truth (ignored)")
    return "\n".join(lines) + "\n\n" + "; ".join(notes) + "\n"
