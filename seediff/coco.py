"""COCO datasets: build from masks, merge shards, validate, read and write (atomically, byte-for-byte stable).

Conventions of every dataset written here:
- images sorted by ``file_name`` with ids 1..N; annotations ordered by image, then as given, ids 1..M;
- categories with stable ids: the order of the ``categories`` argument (ids 1..K), or ``{"id", "name"}`` dicts
  as given, or, with none given, the sorted label names (ids 1..K);
- ``segmentation`` per annotation by :func:`seediff.convert.encode_segmentation` (holes → RLE, else polygons);
  ``area`` and ``bbox`` from pycocotools on that segmentation; ``iscrowd`` always 0 (pycocotools treats
  ``iscrowd=1`` as an ignore region, so RLE objects keep 0); ``score`` when the masks carry one;
- JSON with sorted keys and no whitespace, so identical inputs give identical bytes.
"""

from __future__ import annotations

import json
import os
import secrets
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Iterable, Mapping, NoReturn, Protocol, Sequence

import numpy as np

from .convert import area_bbox, check_polygons, check_rle, encode_segmentation, resize_mask, segmentation_to_rle

__all__ = ["to_coco", "merge_coco", "coco_results", "validate_coco", "read_coco", "write_coco", "write_json",
           "write_bytes_atomic", "mask_entries", "category_table"]

INFO = {"description": "written by seediff"}


class MasksLike(Protocol):
    """Anything shaped like ``seediff.masks.ClassMasks``: labels, bool masks N×H×W, scores."""

    labels: Sequence[str]
    masks: np.ndarray
    scores: Sequence[float]


Masks = MasksLike | Sequence[tuple]


def mask_entries(masks: Masks, file_name: str) -> tuple[list[tuple[str, np.ndarray, float | None]], tuple | None]:
    """(label, mask, score) triples and the mask (height, width) when known, from ClassMasks-like or tuples."""
    if hasattr(masks, "labels") and hasattr(masks, "masks"):
        labels = list(masks.labels)
        array = np.asarray(masks.masks)
        scores = getattr(masks, "scores", None)
        scores = [None] * len(labels) if scores is None else list(scores)
        if array.ndim != 3 or array.shape[0] != len(labels) or len(scores) != len(labels):
            raise ValueError(
                f"{file_name}: masks must be N×H×W with N labels and N scores, got masks {array.shape}, "
                f"{len(labels)} labels, {len(scores)} scores"
            )
        return list(zip(labels, array, scores)), tuple(array.shape[1:])
    entries = []
    for i, item in enumerate(masks):
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
            raise TypeError(f"{file_name}: mask entry {i} must be (label, mask) or (label, mask, score)")
        label, mask = item[0], np.asarray(item[1])
        score = item[2] if len(item) == 3 else None
        if mask.ndim != 2:
            raise ValueError(f"{file_name}: mask entry {i} must be 2-D (H, W), got shape {mask.shape}")
        entries.append((label, mask, score))
    shapes = {m.shape for _, m, _ in entries}
    if len(shapes) > 1:
        raise ValueError(f"{file_name}: masks have different shapes {sorted(shapes)}")
    return entries, (shapes.pop() if shapes else None)


def category_table(categories: Sequence[str] | Sequence[Mapping] | None, labels: Iterable[str]) -> list[dict]:
    """COCO categories list with stable ids (see module docstring)."""
    if categories is None:
        return [{"id": i, "name": name} for i, name in enumerate(sorted(set(labels)), start=1)]
    table = []
    for i, cat in enumerate(categories, start=1):
        if isinstance(cat, str):
            table.append({"id": i, "name": cat})
        elif isinstance(cat, Mapping) and isinstance(cat.get("id"), Integral) and isinstance(cat.get("name"), str):
            table.append({k: v for k, v in cat.items()} | {"id": int(cat["id"])})
        else:
            raise TypeError(f"category {i - 1} must be a name or a {{'id': int, 'name': str}} dict, got {cat!r}")
    ids = [c["id"] for c in table]
    names = [c["name"] for c in table]
    if len(set(ids)) != len(ids) or len(set(names)) != len(names):
        raise ValueError(f"category ids and names must be unique, got {table}")
    return sorted(table, key=lambda c: c["id"])


def to_coco(
    images: Iterable[tuple[str, Masks]] | Mapping[str, Masks],
    *,
    categories: Sequence[str] | Sequence[Mapping] | None = None,
    sizes: Mapping[str, tuple[int, int]] | None = None,
    segmentation: str = "auto",
    tolerance: float = 0.5,
    min_area: float = 1.0,
) -> dict[str, Any]:
    """Build a COCO dataset (or, with scores, a scored prediction set) from per-image masks.

    images: ``(file_name, masks)`` pairs or a ``{file_name: masks}`` mapping; ``masks`` is ClassMasks-like
        (``labels``, bool ``masks`` N×H×W, ``scores``) or a list of ``(label, mask)``/``(label, mask, score)``.
    categories: label names (ids 1..K in this order) or COCO category dicts; every label must be listed.
        None: the sorted set of labels.
    sizes: ``{file_name: (width, height)}``, the images' natural size; masks are resized (nearest) to it.
        Needed for an image with an empty plain list (its size is otherwise unknown).
    segmentation, tolerance, min_area: see :func:`seediff.convert.encode_segmentation`. Empty masks, and
        masks whose every polygon ring is below ``min_area``, give no annotation.
    """
    items = list(images.items()) if isinstance(images, Mapping) else list(images)
    sizes = dict(sizes or {})
    rows = []
    for item in items:
        if not isinstance(item, (tuple, list)) or len(item) != 2 or not isinstance(item[0], str):
            raise TypeError(f"each image must be a (file_name, masks) pair, got {type(item).__name__}")
        file_name, masks = item
        entries, shape = mask_entries(masks, file_name)
        if file_name in sizes:
            width, height = (int(v) for v in sizes[file_name])
        elif shape is not None:
            height, width = (int(v) for v in shape)
        else:
            raise ValueError(f"{file_name}: no masks and no entry in sizes, so the image size is unknown")
        if width <= 0 or height <= 0:
            raise ValueError(f"{file_name}: image size must be positive, got {width}x{height} (w x h)")
        rows.append((file_name, width, height, entries))
    names = [r[0] for r in rows]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"file names must be unique, repeated: {dupes}")
    cats = category_table(categories, (label for r in rows for label, _, _ in r[3]))
    cat_id = {c["name"]: c["id"] for c in cats}
    out_images, out_anns = [], []
    for image_id, (file_name, width, height, entries) in enumerate(sorted(rows, key=lambda r: r[0]), start=1):
        out_images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for label, mask, score in entries:
            if label not in cat_id:
                raise ValueError(f"{file_name}: label {label!r} is not among the categories {sorted(cat_id)}")
            mask = resize_mask(np.asarray(mask), height, width)
            if not mask.any():
                continue
            segm = encode_segmentation(mask, segmentation, tolerance=tolerance, min_area=min_area)
            if isinstance(segm, list) and not segm:
                continue
            area, bbox = area_bbox(segm, height, width)
            ann = {
                "id": len(out_anns) + 1, "image_id": image_id, "category_id": cat_id[label],
                "segmentation": segm, "area": area, "bbox": bbox, "iscrowd": 0,
            }
            if score is not None:
                ann["score"] = float(score)
            out_anns.append(ann)
    return {"info": dict(INFO), "images": out_images, "annotations": out_anns, "categories": cats}


def merge_coco(datasets: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Merge COCO shards into one dataset; the result does not depend on the order of the shards.

    Categories must agree by id (same id → same entry); an image (by ``file_name``) may appear in one shard
    only. Images are re-numbered by sorted ``file_name``, annotations by image then their id in the shard.
    """
    categories: dict[int, dict] = {}
    images: dict[str, tuple[dict, list[dict]]] = {}
    for k, ds in enumerate(datasets):
        validate_coco(ds)
        for cat in ds["categories"]:
            if cat["id"] in categories and categories[cat["id"]] != dict(cat):
                raise ValueError(f"shard {k}: category {dict(cat)} conflicts with {categories[cat['id']]}")
            categories[cat["id"]] = dict(cat)
        anns_by_image: dict[int, list[dict]] = {}
        for ann in ds["annotations"]:
            anns_by_image.setdefault(ann["image_id"], []).append(ann)
        for img in ds["images"]:
            if img["file_name"] in images:
                raise ValueError(f"shard {k}: image {img['file_name']!r} is also in an earlier shard")
            anns = sorted(anns_by_image.get(img["id"], []), key=lambda a: a["id"])
            images[img["file_name"]] = (img, anns)
    names = [c["name"] for c in categories.values()]
    if len(set(names)) != len(names):
        raise ValueError(f"category names differ in id across shards: {sorted(categories.values(), key=str)}")
    out_images, out_anns = [], []
    for image_id, name in enumerate(sorted(images), start=1):
        img, anns = images[name]
        out_images.append(dict(img) | {"id": image_id})
        for ann in anns:
            out_anns.append(dict(ann) | {"id": len(out_anns) + 1, "image_id": image_id})
    cats = [categories[i] for i in sorted(categories)]
    return {"info": dict(INFO), "images": out_images, "annotations": out_anns, "categories": cats}


def coco_results(predictions: Mapping[str, Any], ground_truth: Mapping[str, Any]) -> list[dict[str, Any]]:
    """COCO results list (``COCO.loadRes`` input) from a scored prediction dataset, matched to ground truth.

    Images are matched by ``file_name`` and categories by ``name``; predictions on images or categories the
    ground truth lacks are left out (COCOeval could not score them). Segmentations become compressed RLE
    (``loadRes`` accepts nothing else); prediction and ground-truth image sizes must agree. Note that
    ``loadRes`` cannot take an empty list.
    """
    validate_coco(predictions)
    validate_coco(ground_truth)
    gt_images: dict[str, dict] = {}
    for img in ground_truth["images"]:
        if img["file_name"] in gt_images:
            raise ValueError(f"ground truth has image {img['file_name']!r} twice; cannot match predictions")
        gt_images[img["file_name"]] = img
    gt_cats = {c["name"]: c["id"] for c in ground_truth["categories"]}
    pred_images = {img["id"]: img for img in predictions["images"]}
    pred_cats = {c["id"]: c["name"] for c in predictions["categories"]}
    out = []
    for ann in predictions["annotations"]:
        img = pred_images[ann["image_id"]]
        gt = gt_images.get(img["file_name"])
        name = pred_cats[ann["category_id"]]
        if gt is None or name not in gt_cats:
            continue
        if (img["width"], img["height"]) != (gt["width"], gt["height"]):
            raise ValueError(
                f"{img['file_name']}: prediction size {img['width']}x{img['height']} differs from ground truth "
                f"{gt['width']}x{gt['height']}; resize the masks (to_coco(sizes=...))"
            )
        if not isinstance(ann.get("score"), Real):
            raise ValueError(f"prediction annotation {ann['id']} has no numeric score")
        rle = segmentation_to_rle(ann["segmentation"], img["height"], img["width"])
        segm = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
        out.append({"image_id": gt["id"], "category_id": gt_cats[name], "segmentation": segm,
                    "score": float(ann["score"])})
    return out


def _fail(where: str, message: str) -> NoReturn:
    """Raise the validation error for one element."""
    raise ValueError(f"invalid COCO: {where}: {message}")


def validate_coco(dataset: Mapping[str, Any]) -> None:
    """Check a COCO dataset's structure and references; raise ``ValueError`` naming the first bad element.

    Checks types, unique ids, that annotations reference existing images and categories, polygon rings
    (≥ 3 points) and that RLE decodes to its image's size. Does not rasterise polygons.
    """
    if not isinstance(dataset, Mapping):
        raise ValueError(f"invalid COCO: expected a JSON object, got {type(dataset).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key), list):
            _fail(key, "missing or not a list")
    images: dict[int, tuple[int, int]] = {}
    for i, img in enumerate(dataset["images"]):
        where = f"images[{i}]"
        if not isinstance(img, Mapping) or not isinstance(img.get("id"), Integral):
            _fail(where, "must be an object with an integer 'id'")
        if img["id"] in images:
            _fail(where, f"duplicate image id {img['id']}")
        if not isinstance(img.get("file_name"), str):
            _fail(where, "'file_name' must be a string")
        w, h = img.get("width"), img.get("height")
        if not (isinstance(w, Integral) and isinstance(h, Integral) and w > 0 and h > 0):
            _fail(where, f"'width' and 'height' must be positive integers, got {w!r}x{h!r}")
        images[img["id"]] = (int(h), int(w))
    cats = set()
    for i, cat in enumerate(dataset["categories"]):
        if not (isinstance(cat, Mapping) and isinstance(cat.get("id"), Integral) and isinstance(cat.get("name"), str)):
            _fail(f"categories[{i}]", "must be an object with an integer 'id' and a string 'name'")
        if cat["id"] in cats:
            _fail(f"categories[{i}]", f"duplicate category id {cat['id']}")
        cats.add(cat["id"])
    ann_ids = set()
    for i, ann in enumerate(dataset["annotations"]):
        where = f"annotations[{i}]"
        if not isinstance(ann, Mapping) or not isinstance(ann.get("id"), Integral):
            _fail(where, "must be an object with an integer 'id'")
        where = f"annotation id {ann['id']}"
        if ann["id"] in ann_ids:
            _fail(where, "duplicate annotation id")
        ann_ids.add(ann["id"])
        if ann.get("image_id") not in images:
            _fail(where, f"image_id {ann.get('image_id')!r} is not an image")
        if ann.get("category_id") not in cats:
            _fail(where, f"category_id {ann.get('category_id')!r} is not a category")
        bbox = ann.get("bbox")
        if bbox is not None and not (isinstance(bbox, list) and len(bbox) == 4
                                     and all(isinstance(v, Real) for v in bbox)):
            _fail(where, f"'bbox' must be [x, y, w, h], got {bbox!r}")
        if "score" in ann and not isinstance(ann["score"], Real):
            _fail(where, f"'score' must be a number, got {ann['score']!r}")
        segm = ann.get("segmentation")
        try:
            if isinstance(segm, Mapping):
                size = list(check_rle(dict(segm))["size"])
                if size != list(images[ann["image_id"]]):
                    image_hw = list(images[ann["image_id"]])
                    raise ValueError(f"RLE size {size} does not match its image (h x w) {image_hw}")
            elif segm is not None:
                check_polygons(segm)
        except (TypeError, ValueError) as exc:
            _fail(where, f"segmentation: {exc}")


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes through a temporary file in the same folder, fsync, ``os.replace``, fsync the folder.

    Readers never see a partial file: it is the whole new file or the old one; the temporary is removed on failure.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (:func:`write_bytes_atomic`) with sorted keys.

    Readers never see a partial file; identical objects give identical bytes; NaN/Infinity are refused.
    """
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))


def write_coco(path: str | os.PathLike, dataset: Mapping[str, Any]) -> None:
    """Validate a COCO dataset and write it atomically and deterministically (see :func:`write_json`)."""
    validate_coco(dataset)
    write_json(path, dataset)


def read_coco(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a COCO dataset file; ``ValueError`` names the file and the bad element."""
    try:
        with open(path, encoding="utf-8") as f:
            dataset = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    try:
        validate_coco(dataset)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return dataset
