"""Label Studio regions: results from masks, tasks with predictions, regions read back, labels from a config.

Label Studio stores geometry relative to the image's natural size (``original_width``/``original_height``):
polygon points and rectangles in percent (0–100, corner convention, the same as COCO's pixel corners), brush
masks as the SDK's bit-packed RLE of an RGBA raster at natural size (``label_studio_sdk.converter.brush``;
this is *not* COCO RLE: the mask is the alpha channel, read as foreground where alpha ≥ 128). Results are
written with ``image_rotation: 0`` and coordinates are read as given (Label Studio keeps them in the
unrotated image's frame). Whole exports ↔ COCO datasets are in :mod:`seediff.lsexport`.
"""

from __future__ import annotations

import math
import secrets
from numbers import Integral, Real
from typing import Any, Mapping, Sequence

import numpy as np

from .coco import Masks, mask_entries
from .convert import check_polygons, has_holes, mask_to_polygons, polygons_to_mask, resize_mask

__all__ = [
    "new_region_id", "polygon_region", "brush_region", "ls_results", "ls_task", "RegionError", "region_geometry",
    "region_labels", "region_size", "region_to_mask", "label_interface", "categories_from_config",
]

_LABEL_KEYS = ("polygonlabels", "brushlabels", "rectanglelabels", "labels")
_LABEL_CONTROLS = ("PolygonLabels", "BrushLabels", "RectangleLabels", "Labels")


class RegionError(ValueError):
    """A problem with one region (its geometry, size or labels); converters report it and skip the region."""


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
    (coords,) = check_polygons([polygon])
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
    rle = brush.mask2rle((mask != 0).view(np.uint8) * np.uint8(255))  # 0/255 bytes, no int64 copy
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
    entries, _ = mask_entries(masks, "masks")
    taken: set[str] = set()
    results = []
    for label, mask, score in entries:
        mask = np.asarray(mask)
        if image_size is not None:
            mask = resize_mask(mask, int(image_size[1]), int(image_size[0]))
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
    """A finite float, or a RegionError naming the field."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise RegionError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def region_size(region: Mapping[str, Any]) -> tuple[int, int]:
    """(width, height) from ``original_width``/``original_height``."""
    w, h = region.get("original_width"), region.get("original_height")
    if not (isinstance(w, Integral) and isinstance(h, Integral) and w > 0 and h > 0):
        raise RegionError(f"original_width/original_height must be positive integers, got {w!r}x{h!r}")
    return int(w), int(h)


def region_geometry(region: Mapping[str, Any]) -> tuple[str, Any] | None:
    """``("polygon", flat px list)``, ``("brush", bool mask)``, ``("rectangle", flat px list)`` or None.

    None for results without image geometry (choices, text areas, relations). Bad geometry → RegionError.
    """
    if not isinstance(region, Mapping):
        raise RegionError(f"region must be a JSON object, got {type(region).__name__}")
    value = region.get("value")
    if not isinstance(value, Mapping):
        return None
    kind = str(region.get("type", "")).lower()
    if "points" in value and kind in ("polygonlabels", "polygon", "labels"):
        width, height = region_size(region)
        points = value["points"]
        if not isinstance(points, list) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in points):
            raise RegionError("polygon points must be a list of [x, y] percent pairs")
        if len(points) < 3:
            raise RegionError(f"polygon has {len(points)} points, needs at least 3")
        flat = []
        for x, y in points:
            flat += [_number(x, "point x") / 100.0 * width, _number(y, "point y") / 100.0 * height]
        return "polygon", flat
    if "rle" in value and kind in ("brushlabels", "brush", "labels"):
        return "brush", _decode_brush(region, value)
    if all(k in value for k in ("x", "y", "width", "height")) and kind in ("rectanglelabels", "rectangle", "labels"):
        width, height = region_size(region)
        x, y = _number(value["x"], "x") / 100 * width, _number(value["y"], "y") / 100 * height
        w, h = _number(value["width"], "width") / 100 * width, _number(value["height"], "height") / 100 * height
        if w <= 0 or h <= 0:
            raise RegionError(f"rectangle has non-positive size {w:g}x{h:g} px")
        angle = math.radians(_number(value.get("rotation", 0.0), "rotation"))
        c, s = math.cos(angle), math.sin(angle)
        # Label Studio rotates clockwise on screen (y down) about the top-left corner (x, y).
        corners = [(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)]
        return "rectangle", [v for dx, dy in corners for v in (x + dx * c - dy * s, y + dx * s + dy * c)]
    return None


def _decode_brush(region: Mapping[str, Any], value: Mapping[str, Any]) -> np.ndarray:
    """Bool mask from a brush result's SDK RLE, checked against original_width × original_height."""
    from label_studio_sdk.converter import brush

    width, height = region_size(region)
    if value.get("format", "rle") != "rle":
        raise RegionError(f"brush format {value.get('format')!r} is not supported (only 'rle')")
    rle = value["rle"]
    if not isinstance(rle, list) or not rle or not all(isinstance(v, Integral) and 0 <= v < 256 for v in rle):
        raise RegionError("brush rle must be a non-empty list of byte values (0-255)")
    try:
        flat = brush.decode_rle(bytes(rle))
    except (ValueError, IndexError) as exc:
        raise RegionError(f"brush rle cannot be decoded ({exc})") from None
    if flat.size != width * height * 4:
        raise RegionError(
            f"brush rle decodes to {flat.size} values, a {width}x{height} RGBA image needs {width * height * 4}"
        )
    return flat.reshape(height, width, 4)[:, :, 3] >= 128


def region_labels(region: Mapping[str, Any]) -> list[str]:
    """Label names of a region, from the first non-empty ``*labels`` list in its value."""
    value = region["value"]
    for key in _LABEL_KEYS:
        labels = value.get(key)
        if labels:
            if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels):
                raise RegionError(f"{key} must be a list of strings, got {labels!r}")
            return labels
    raise RegionError("region has no label")


def region_to_mask(region: Mapping[str, Any]) -> np.ndarray:
    """Bool mask (original_height × original_width) of a polygon, brush or rectangle result."""
    geometry = region_geometry(region)
    if geometry is None:
        raise ValueError("result has no polygon, brush or rectangle geometry")
    kind, payload = geometry
    if kind == "brush":
        return payload
    width, height = region_size(region)
    return polygons_to_mask([payload], height, width)


# ------------------------------------------------------------------------------------------ labeling configs


def label_interface(config: str):
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
    for control in label_interface(config).controls:
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
