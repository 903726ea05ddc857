"""Label Studio exports ↔ COCO: a JSON export → COCO dataset (:func:`ls_to_coco`), COCO → import-ready tasks.

Region geometry is read and written by :mod:`seediff.lsformat`. Conversions never stop at the first bad
region: :func:`ls_to_coco` and :func:`coco_to_ls` return the converted data together with a list of
:class:`ConversionIssue` naming the task, annotation and region that was skipped.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from numbers import Integral, Real
from typing import Any, Literal, Mapping

from .coco import INFO, category_table, validate_coco
from .convert import area_bbox, encode_segmentation, mask_to_polygons, polygons_to_mask, segmentation_to_mask
from .lsformat import (
    RegionError, brush_region, categories_from_config, label_interface, ls_task, new_region_id, polygon_region,
    region_geometry, region_labels, region_size,
)

__all__ = ["ConversionIssue", "ls_to_coco", "coco_to_ls"]


@dataclass(frozen=True)
class ConversionIssue:
    """One element that could not be converted; the rest of the input still was."""

    task_id: Any
    message: str
    annotation_id: Any = None
    region_id: Any = None

    def __str__(self) -> str:
        where = f"task {self.task_id}"
        if self.annotation_id is not None:
            where += f", annotation {self.annotation_id}"
        if self.region_id is not None:
            where += f", region {self.region_id!r}"
        return f"{where}: {self.message}"


# ------------------------------------------------------------------------------------------ export → COCO


def _timestamp(annotation: Mapping[str, Any]) -> float:
    """Seconds since the epoch of an annotation's ``updated_at`` (else ``created_at``); -inf when absent."""
    for key in ("updated_at", "created_at"):
        raw = annotation.get(key)
        if isinstance(raw, str):
            try:
                ts = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            except ValueError:
                continue
            return (ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)).timestamp()
    return -math.inf


def _load_tasks(tasks: Any) -> list:
    """Tasks list from a parsed export, a single task object, or a path to a JSON export."""
    if isinstance(tasks, (str, os.PathLike)):
        with open(tasks, encoding="utf-8") as f:
            try:
                tasks = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{tasks}: not valid JSON: {exc}") from None
    if isinstance(tasks, Mapping) and "data" in tasks:
        return [tasks]
    if not isinstance(tasks, list):
        raise ValueError(f"a Label Studio JSON export is a list of tasks, got {type(tasks).__name__}")
    return tasks


def _image_ref(task: Mapping[str, Any], data_key: str | None) -> str:
    """The image reference of a task: ``data[data_key]``, else ``data["image"]``, else its only string."""
    data = task.get("data")
    if not isinstance(data, Mapping):
        raise RegionError("task has no 'data' object")
    if data_key is not None:
        ref = data.get(data_key)
    elif "image" in data:
        ref = data["image"]
    else:
        strings = [v for v in data.values() if isinstance(v, str)]
        ref = strings[0] if len(strings) == 1 else None
    if not isinstance(ref, str):
        raise RegionError(f"task data has no image reference under {data_key or 'image'!r}")
    return ref


def _chosen_annotations(task: Mapping[str, Any], keep: str, source: str = "annotations") -> list[Mapping[str, Any]]:
    """Non-cancelled annotations (or predictions) of a task: the latest one (``updated_at``, then id) or all."""
    anns = task.get(source) or []
    if not isinstance(anns, list) or not all(isinstance(a, Mapping) for a in anns):
        raise RegionError(f"{source!r} must be a list of objects")
    live = [a for a in anns if not a.get("was_cancelled", False)]
    if keep == "latest" and live:
        return [max(live, key=lambda a: (_timestamp(a), a.get("id") if isinstance(a.get("id"), Real) else -1))]
    return live


def _convert_task(
    task: Mapping[str, Any], data_key: str | None, keep: str, known: set[str] | None,
    sizes: Mapping[str, tuple[int, int]], issues: list[ConversionIssue], source: str = "annotations",
) -> tuple | None:
    """One task's image and objects for :func:`ls_to_coco`; problems go to ``issues``; None if nothing usable."""
    task_id = task["id"]
    try:
        ref = _image_ref(task, data_key)
        chosen = _chosen_annotations(task, keep, source)
    except RegionError as exc:
        issues.append(ConversionIssue(task_id, str(exc)))
        return None
    if not chosen:
        return None
    size = tuple(int(v) for v in sizes[ref]) if ref in sizes else None
    objects = []
    for ann in chosen:
        ann_id = ann.get("id")
        results = ann.get("result", [])
        if not isinstance(results, list):
            issues.append(ConversionIssue(task_id, "'result' must be a list", ann_id))
            continue
        for r_index, region in enumerate(results):
            region_id = region.get("id", f"#{r_index}") if isinstance(region, Mapping) else f"#{r_index}"
            try:
                geometry = region_geometry(region)
                if geometry is None:
                    continue
                labels = region_labels(region)
                this_size = region_size(region)
                if size is not None and this_size != size:
                    raise RegionError(f"image size {this_size[0]}x{this_size[1]} differs from "
                                      f"{size[0]}x{size[1]} (image_sizes or the task's other regions)")
                if known is not None and any(n not in known for n in labels):
                    raise RegionError(f"labels {[n for n in labels if n not in known]} are not in the labeling config")
            except RegionError as exc:
                issues.append(ConversionIssue(task_id, str(exc), ann_id, region_id))
                continue
            size = this_size
            objects += [(label, *geometry, ann_id, region_id) for label in labels]
    if size is None:
        issues.append(ConversionIssue(task_id, f"no regions give the size of {ref!r}; pass image_sizes to include it"))
        return None
    return task_id, ref, size, objects


def ls_to_coco(
    tasks: Any,
    *,
    config: str | None = None,
    keep: Literal["latest", "all"] = "latest",
    image_sizes: Mapping[str, tuple[int, int]] | None = None,
    segmentation: Literal["auto", "polygons", "rle"] = "auto",
    source: Literal["annotations", "predictions"] = "annotations",
) -> tuple[dict[str, Any], list[ConversionIssue]]:
    """COCO dataset from a Label Studio JSON export (list of tasks with ``annotations``), plus issues.

    tasks: the parsed export, or a path to it. Cancelled annotations (``was_cancelled``) are skipped; per task
        the latest annotation is used (``keep="latest"``) or every one (``keep="all"``). Tasks with no usable
        annotation are left out; an annotation with no regions gives an image with no objects.
    config: the labeling config; category ids come from its labels (:func:`categories_from_config`) and the
        image reference from its ``<Image value="$key">``. Without it: sorted label names, ``data["image"]``.
    image_sizes: ``{image reference: (width, height)}`` for images without any region (else skipped).
    segmentation: ``auto`` keeps polygons and rectangles as polygons and writes brushes exactly (outline
        polygon, or RLE when the brush has holes); ``rle`` rasterises everything; ``polygons`` also fills
        brush holes.
    source: convert the tasks' ``annotations`` (default) or their ``predictions`` (e.g. seediff's proposals).
    Images: ``file_name`` is the Label Studio reference (e.g. ``/data/upload/1/x.jpg``), ``id`` the task id.
    Annotations carry ``ls_annotation_id`` and ``ls_region_id`` for tracing back. Bad tasks, annotations or
    regions are reported (task, annotation, region ids) and skipped; the rest converts.
    """
    if keep not in ("latest", "all"):
        raise ValueError(f"keep must be 'latest' or 'all', got {keep!r}")
    if segmentation not in ("auto", "polygons", "rle"):
        raise ValueError(f"segmentation must be 'auto', 'polygons' or 'rle', got {segmentation!r}")
    if source not in ("annotations", "predictions"):
        raise ValueError(f"source must be 'annotations' or 'predictions', got {source!r}")
    tasks = _load_tasks(tasks)
    categories = categories_from_config(config) if config is not None else None
    known = {c["name"] for c in categories} if categories is not None else None
    data_key = None
    if config is not None:
        images = [o for o in label_interface(config).objects if o.tag == "Image"]
        data_key = images[0].value_name if len(images) == 1 else None
    sizes = dict(image_sizes or {})
    issues: list[ConversionIssue] = []
    seen_ids: set = set()
    converted = []  # (task id, image ref, (width, height), [(label, kind, payload, annotation id, region id)])
    for index, task in enumerate(tasks):
        if not isinstance(task, Mapping):
            issues.append(ConversionIssue(f"#{index}", f"task must be a JSON object, got {type(task).__name__}"))
            continue
        task_id = task.get("id")
        if not isinstance(task_id, Integral) or isinstance(task_id, bool):
            issues.append(ConversionIssue(f"#{index}", f"task has no integer 'id' (got {task_id!r})"))
            continue
        if task_id in seen_ids:
            issues.append(ConversionIssue(task_id, "duplicate task id; later copy skipped"))
            continue
        seen_ids.add(task_id)
        record = _convert_task(task, data_key, keep, known, sizes, issues, source)
        if record is not None:
            converted.append(record)
    cats = category_table(categories, (obj[0] for t in converted for obj in t[3]))
    cat_id = {c["name"]: c["id"] for c in cats}
    out_images, out_anns = [], []
    for task_id, ref, (width, height), objects in sorted(converted, key=lambda t: t[0]):
        out_images.append({"id": int(task_id), "file_name": ref, "width": width, "height": height})
        for label, kind, payload, ann_id, region_id in objects:
            if kind == "brush":
                segm = encode_segmentation(payload, segmentation, tolerance=0.0, min_area=0.0)
            elif segmentation == "rle":
                segm = encode_segmentation(polygons_to_mask([payload], height, width), "rle")
            else:
                segm = [payload]
            area, bbox = area_bbox(segm, height, width)
            out_anns.append({
                "id": len(out_anns) + 1, "image_id": int(task_id), "category_id": cat_id[label],
                "segmentation": segm, "area": area, "bbox": bbox, "iscrowd": 0,
                "ls_annotation_id": ann_id, "ls_region_id": region_id,
            })
    return {"info": dict(INFO), "images": out_images, "annotations": out_anns, "categories": cats}, issues


# ------------------------------------------------------------------------------------------ COCO → tasks


def _control_names(config: str | None) -> dict[str, Any]:
    """Polygon/brush control names, their labels, the image tag name and data key from a labeling config."""
    found: dict[str, Any] = {}
    if config is None:
        return found
    li = label_interface(config)
    images = {o.name: o for o in li.objects if o.tag == "Image"}
    for control in li.controls:
        kind = {"PolygonLabels": "polygon", "BrushLabels": "brush"}.get(control.tag)
        if kind is None or kind in found or not control.to_name or control.to_name[0] not in images:
            continue
        found[kind] = (control.name, set(control.labels))
        found.setdefault("to_name", control.to_name[0])
        found.setdefault("data_key", images[control.to_name[0]].value_name)
    return found


def coco_to_ls(
    dataset: Mapping[str, Any],
    *,
    config: str | None = None,
    polygon_from_name: str | None = None,
    brush_from_name: str | None = None,
    to_name: str | None = None,
    data_key: str | None = None,
    model_version: str = "seediff",
) -> tuple[list[dict[str, Any]], list[ConversionIssue]]:
    """Label Studio tasks with predictions from a COCO dataset (one task per image, in image id order).

    Control names come from ``config`` (its PolygonLabels/BrushLabels on an Image) unless given explicitly.
    Polygon segmentations → one PolygonLabels region per ring; RLE → BrushLabels. When that control is missing
    or (per ``config``) lacks the label, the other kind is used (RLE → exact outline polygons, holes filled;
    polygons → brush). ``score`` becomes the region score. Problems (a label no control has, a bbox-only
    annotation) are reported with the image's file name as task id and the annotation id; the rest converts.
    """
    validate_coco(dataset)
    found = _control_names(config)
    polygon_from_name = polygon_from_name or found.get("polygon", (None,))[0]
    brush_from_name = brush_from_name or found.get("brush", (None,))[0]
    to_name = to_name or found.get("to_name", "image")
    data_key = data_key or found.get("data_key", "image")
    if polygon_from_name is None and brush_from_name is None:
        raise ValueError("no PolygonLabels or BrushLabels control: pass config or polygon/brush_from_name")
    allowed = {kind: found[kind][1] for kind in ("polygon", "brush") if kind in found}
    names = {"polygon": polygon_from_name, "brush": brush_from_name}
    cat_name = {c["id"]: c["name"] for c in dataset["categories"]}
    anns_by_image: dict[int, list] = {}
    for ann in dataset["annotations"]:
        anns_by_image.setdefault(ann["image_id"], []).append(ann)
    tasks, issues = [], []
    for img in sorted(dataset["images"], key=lambda i: i["id"]):
        width, height = img["width"], img["height"]
        taken: set[str] = set()
        results = []
        for ann in sorted(anns_by_image.get(img["id"], []), key=lambda a: a["id"]):
            label, score, segm = cat_name[ann["category_id"]], ann.get("score"), ann.get("segmentation")
            if not segm:
                issues.append(ConversionIssue(img["file_name"], "annotation has no segmentation", ann["id"]))
                continue
            preferred = "polygon" if isinstance(segm, list) else "brush"
            usable = [k for k in (preferred, "brush" if preferred == "polygon" else "polygon")
                      if names[k] is not None and (k not in allowed or label in allowed[k])]
            if not usable:
                issues.append(ConversionIssue(img["file_name"], f"label {label!r} is in no polygon or brush control",
                                              ann["id"]))
                continue
            kind = usable[0]
            if kind == "polygon":
                rings = segm if isinstance(segm, list) else mask_to_polygons(
                    segmentation_to_mask(segm, height, width), tolerance=0.0, min_area=0.0)
                for ring in rings:
                    results.append(polygon_region(ring, label, width=width, height=height,
                                                  from_name=polygon_from_name, to_name=to_name, score=score,
                                                  region_id=new_region_id(taken)))
            else:
                results.append(brush_region(segmentation_to_mask(segm, height, width), label,
                                            from_name=brush_from_name, to_name=to_name, score=score,
                                            region_id=new_region_id(taken)))
        tasks.append(ls_task(img["file_name"], results, data_key=data_key, model_version=model_version))
    return tasks, issues
