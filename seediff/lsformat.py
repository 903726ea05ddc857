"""Label Studio formats: results from masks, tasks with predictions, JSON export → COCO, COCO → tasks.

Label Studio stores geometry relative to the image's natural size (``original_width``/``original_height``):
polygon points and rectangles in percent (0–100, corner convention, the same as COCO's pixel corners), brush
masks as the SDK's bit-packed RLE of an RGBA raster at natural size (``label_studio_sdk.converter.brush``;
this is *not* COCO RLE: the mask is the alpha channel, read as foreground where alpha ≥ 128). Results are
written with ``image_rotation: 0`` and coordinates are read as given (Label Studio keeps them in the
unrotated image's frame).

Conversions never stop at the first bad region: :func:`ls_to_coco` and :func:`coco_to_ls` return the converted
data together with a list of :class:`ConversionIssue` naming the task, annotation and region that was skipped.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from numbers import Integral, Real
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from .coco import INFO, Masks, _category_table, _mask_entries, _resize, validate_coco
from .convert import (
    _check_polygons, area_bbox, encode_segmentation, has_holes, mask_to_polygons, polygons_to_mask,
    segmentation_to_mask,
)

__all__ = [
    "ConversionIssue", "new_region_id", "polygon_region", "brush_region", "ls_results", "ls_task",
    "region_to_mask", "categories_from_config", "ls_to_coco", "coco_to_ls",
]

_LABEL_KEYS = ("polygonlabels", "brushlabels", "rectanglelabels", "labels")
_LABEL_CONTROLS = ("PolygonLabels", "BrushLabels", "RectangleLabels", "Labels")


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


class _RegionError(ValueError):
    """A region-level problem, reported as a ConversionIssue by the converters."""


def new_region_id(taken: set[str] | None = None) -> str:
    """A random 10-hex-digit region id (40 bits), not in ``taken``; adds it to ``taken`` when given."""
    while True:
        rid = secrets.token_hex(5)
        if taken is None or rid not in taken:
            if taken is not None:
                taken.add(rid)
            return rid


def _base_region(kind: str, from_name: str, to_name: str, width: int, height: int, score: float | None,
                 region_id: str | None) -> dict[str, Any]:
    """Fields every image region result carries."""
    region = {
        "id": region_id or new_region_id(), "type": kind, "from_name": from_name, "to_name": to_name,
        "original_width": int(width), "original_height": int(height), "image_rotation": 0,
    }
    if score is not None:
        region["score"] = float(score)
    return region


def polygon_region(
    polygon: Sequence[float], label: str, *, width: int, height: int, from_name: str, to_name: str,
    score: float | None = None, region_id: str | None = None,
) -> dict[str, Any]:
    """PolygonLabels result for one COCO polygon ring ``[x0, y0, ...]`` in px of a ``width``×``height`` image."""
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    (coords,) = _check_polygons([polygon])
    points = [[x / width * 100.0, y / height * 100.0] for x, y in zip(coords[0::2], coords[1::2])]
    region = _base_region("polygonlabels", from_name, to_name, width, height, score, region_id)
    region["value"] = {"points": points, "closed": True, "polygonlabels": [label]}
    return region


def brush_region(
    mask: np.ndarray, label: str, *, from_name: str, to_name: str,
    score: float | None = None, region_id: str | None = None,
) -> dict[str, Any]:
    """BrushLabels result: the SDK's brush RLE of the mask as a 0/255 image; the mask must be at natural size."""
    from label_studio_sdk.converter import brush

    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != bool and not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"mask must be a 2-D bool or integer array, got {mask.dtype} {mask.shape}")
    height, width = mask.shape
    rle = brush.mask2rle(np.where(mask != 0, 255, 0).astype(np.uint8))
    region = _base_region("brushlabels", from_name, to_name, width, height, score, region_id)
    region["value"] = {"format": "rle", "rle": [int(v) for v in rle], "brushlabels": [label]}
    return region


def ls_results(
    masks: Masks, *, to_name: str, polygon_from_name: str | None = None, brush_from_name: str | None = None,
    image_size: tuple[int, int] | None = None, tolerance: float = 0.5, min_area: float = 1.0,
) -> list[dict[str, Any]]:
    """Label Studio results for ClassMasks-like masks (or ``(label, mask[, score])`` tuples).

    With both control names, the COCO rule applies: masks with holes → brush, others → one polygon region per
    outer ring. With one name, every mask uses that kind (polygons fill holes). Each label must be a
    ``<Label>`` of the control it lands in. ``image_size`` is the natural ``(width, height)``; masks are
    resized to it (nearest) when they differ. Empty masks give no region.
    """
    if polygon_from_name is None and brush_from_name is None:
        raise ValueError("give polygon_from_name, brush_from_name or both")
    entries, _ = _mask_entries(masks, "masks")
    taken: set[str] = set()
    results = []
    for label, mask, score in entries:
        mask = np.asarray(mask)
        if image_size is not None:
            mask = _resize(mask, int(image_size[1]), int(image_size[0]))
        if not mask.any():
            continue
        height, width = mask.shape
        use_brush = brush_from_name is not None and (polygon_from_name is None or has_holes(mask, min_area))
        if use_brush:
            results.append(brush_region(mask, label, from_name=brush_from_name, to_name=to_name, score=score,
                                        region_id=new_region_id(taken)))
            continue
        for ring in mask_to_polygons(mask, tolerance=tolerance, min_area=min_area):
            results.append(polygon_region(ring, label, width=width, height=height, from_name=polygon_from_name,
                                          to_name=to_name, score=score, region_id=new_region_id(taken)))
    return results


def ls_task(
    image: str, results: Sequence[Mapping[str, Any]], *, data_key: str = "image",
    model_version: str = "seediff", score: float | None = None,
) -> dict[str, Any]:
    """Import-ready task ``{"data": {data_key: image}, "predictions": [...]}``; score defaults to the regions' mean."""
    if score is None:
        scores = [r["score"] for r in results if isinstance(r.get("score"), Real)]
        score = float(np.mean(scores)) if scores else None
    prediction: dict[str, Any] = {"model_version": model_version, "result": [dict(r) for r in results]}
    if score is not None:
        prediction["score"] = float(score)
    return {"data": {data_key: image}, "predictions": [prediction]}


# ---------------------------------------------------------------------------------------------- reading regions


def _number(value: Any, what: str) -> float:
    """A finite float, or a _RegionError naming the field."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise _RegionError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _region_size(region: Mapping[str, Any]) -> tuple[int, int]:
    """(width, height) from ``original_width``/``original_height``."""
    w, h = region.get("original_width"), region.get("original_height")
    if not (isinstance(w, Integral) and isinstance(h, Integral) and w > 0 and h > 0):
        raise _RegionError(f"original_width/original_height must be positive integers, got {w!r}x{h!r}")
    return int(w), int(h)


def _region_geometry(region: Mapping[str, Any]) -> tuple[str, Any] | None:
    """``("polygon", flat px list)``, ``("brush", bool mask)``, ``("rectangle", flat px list)`` or None.

    None for results without image geometry (choices, text areas, relations). Bad geometry → _RegionError.
    """
    if not isinstance(region, Mapping):
        raise _RegionError(f"region must be a JSON object, got {type(region).__name__}")
    value = region.get("value")
    if not isinstance(value, Mapping):
        return None
    kind = str(region.get("type", "")).lower()
    if "points" in value and kind in ("polygonlabels", "polygon", "labels"):
        width, height = _region_size(region)
        points = value["points"]
        if not isinstance(points, list) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in points):
            raise _RegionError("polygon points must be a list of [x, y] percent pairs")
        if len(points) < 3:
            raise _RegionError(f"polygon has {len(points)} points, needs at least 3")
        flat = []
        for x, y in points:
            flat += [_number(x, "point x") / 100.0 * width, _number(y, "point y") / 100.0 * height]
        return "polygon", flat
    if "rle" in value and kind in ("brushlabels", "brush", "labels"):
        return "brush", _decode_brush(region, value)
    if all(k in value for k in ("x", "y", "width", "height")) and kind in ("rectanglelabels", "rectangle", "labels"):
        width, height = _region_size(region)
        x, y = _number(value["x"], "x") / 100 * width, _number(value["y"], "y") / 100 * height
        w, h = _number(value["width"], "width") / 100 * width, _number(value["height"], "height") / 100 * height
        if w <= 0 or h <= 0:
            raise _RegionError(f"rectangle has non-positive size {w:g}x{h:g} px")
        angle = math.radians(_number(value.get("rotation", 0.0), "rotation"))
        c, s = math.cos(angle), math.sin(angle)
        # Label Studio rotates clockwise on screen (y down) about the top-left corner (x, y).
        corners = [(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)]
        return "rectangle", [v for dx, dy in corners for v in (x + dx * c - dy * s, y + dx * s + dy * c)]
    return None


def _decode_brush(region: Mapping[str, Any], value: Mapping[str, Any]) -> np.ndarray:
    """Bool mask from a brush result's SDK RLE, checked against original_width × original_height."""
    from label_studio_sdk.converter import brush

    width, height = _region_size(region)
    if value.get("format", "rle") != "rle":
        raise _RegionError(f"brush format {value.get('format')!r} is not supported (only 'rle')")
    rle = value["rle"]
    if not isinstance(rle, list) or not rle or not all(isinstance(v, Integral) and 0 <= v < 256 for v in rle):
        raise _RegionError("brush rle must be a non-empty list of byte values (0-255)")
    try:
        flat = brush.decode_rle(bytes(rle))
    except (ValueError, IndexError) as exc:
        raise _RegionError(f"brush rle cannot be decoded ({exc})") from None
    if flat.size != width * height * 4:
        raise _RegionError(
            f"brush rle decodes to {flat.size} values, a {width}x{height} RGBA image needs {width * height * 4}"
        )
    return flat.reshape(height, width, 4)[:, :, 3] >= 128


def _region_labels(region: Mapping[str, Any]) -> list[str]:
    """Label names of a region, from the first non-empty ``*labels`` list in its value."""
    value = region["value"]
    for key in _LABEL_KEYS:
        labels = value.get(key)
        if labels:
            if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels):
                raise _RegionError(f"{key} must be a list of strings, got {labels!r}")
            return labels
    raise _RegionError("region has no label")


def region_to_mask(region: Mapping[str, Any]) -> np.ndarray:
    """Bool mask (original_height × original_width) of a polygon, brush or rectangle result."""
    geometry = _region_geometry(region)
    if geometry is None:
        raise ValueError("result has no polygon, brush or rectangle geometry")
    kind, payload = geometry
    if kind == "brush":
        return payload
    width, height = _region_size(region)
    return polygons_to_mask([payload], height, width)


# ------------------------------------------------------------------------------------------ labeling configs


def _interface(config: str):
    """Parsed labeling config (``LabelInterface``), with a ValueError for XML that does not parse."""
    from label_studio_sdk.label_interface import LabelInterface

    try:
        return LabelInterface(config)
    except Exception as exc:  # the SDK raises its own exception types for malformed XML
        raise ValueError(f"labeling config does not parse: {exc}") from None


def categories_from_config(config: str) -> list[dict[str, Any]]:
    """COCO categories from a labeling config's ``<Label>`` values (PolygonLabels, BrushLabels,
    RectangleLabels, Labels): config order, ids 1..K; a label's ``category="N"`` attribute fixes its id."""
    explicit: dict[str, int] = {}
    names: list[str] = []
    for control in _interface(config).controls:
        if control.tag not in _LABEL_CONTROLS:
            continue
        for name in control.labels:
            if name in names:
                continue
            names.append(name)
            raw = control.labels_attrs[name].attr.get("category")
            if raw is not None:
                try:
                    explicit[name] = int(raw)
                except ValueError:
                    raise ValueError(f"label {name!r}: category={raw!r} is not an integer") from None
    if len(set(explicit.values())) != len(explicit):
        raise ValueError(f"labels share a category id: {explicit}")
    free = (i for i in range(1, len(names) + len(explicit) + 2) if i not in explicit.values())
    cats = [{"id": explicit[n] if n in explicit else next(free), "name": n} for n in names]
    return sorted(cats, key=lambda c: c["id"])


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
        raise _RegionError("task has no 'data' object")
    if data_key is not None:
        ref = data.get(data_key)
    elif "image" in data:
        ref = data["image"]
    else:
        strings = [v for v in data.values() if isinstance(v, str)]
        ref = strings[0] if len(strings) == 1 else None
    if not isinstance(ref, str):
        raise _RegionError(f"task data has no image reference under {data_key or 'image'!r}")
    return ref


def _chosen_annotations(task: Mapping[str, Any], keep: str, source: str = "annotations") -> list[Mapping[str, Any]]:
    """Non-cancelled annotations (or predictions) of a task: the latest one (``updated_at``, then id) or all."""
    anns = task.get(source) or []
    if not isinstance(anns, list) or not all(isinstance(a, Mapping) for a in anns):
        raise _RegionError(f"{source!r} must be a list of objects")
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
    except _RegionError as exc:
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
                geometry = _region_geometry(region)
                if geometry is None:
                    continue
                labels = _region_labels(region)
                region_size = _region_size(region)
                if size is not None and region_size != size:
                    raise _RegionError(f"image size {region_size[0]}x{region_size[1]} differs from "
                                       f"{size[0]}x{size[1]} (image_sizes or the task's other regions)")
                if known is not None and any(n not in known for n in labels):
                    raise _RegionError(f"labels {[n for n in labels if n not in known]} are not in the labeling config")
            except _RegionError as exc:
                issues.append(ConversionIssue(task_id, str(exc), ann_id, region_id))
                continue
            size = region_size
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
        images = [o for o in _interface(config).objects if o.tag == "Image"]
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
    cats = _category_table(categories, (obj[0] for t in converted for obj in t[3]))
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
    li = _interface(config)
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

