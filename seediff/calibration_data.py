"""Offline calibration (``seediff calibrate``): observations from a ground-truth file and its images, then the
same fit the Label Studio backend runs on annotations (:mod:`seediff.calibrate`).

Ground truth is a COCO file or a Label Studio JSON export (converted with :func:`seediff.lsexport.ls_to_coco`,
its labeling config fixing the labels). Every image is read once in photo mode with every class word in the
prompt (as the backend and ``seediff preannotate`` read a task), then segmented at each mask-threshold value.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .calibrate import Calibration, FitPrior, fit, mask_knob, observe

__all__ = ["load_ground_truth", "image_path", "truth_masks", "fit_from_coco"]


def load_ground_truth(path: str | Path, config: str | None = None) -> dict[str, Any]:
    """A COCO dataset from a COCO file, or from a Label Studio export (a JSON list of tasks) and its config."""
    data = json.loads(Path(path).read_text())
    if isinstance(data, list):
        from .lsexport import ls_to_coco

        dataset, _issues = ls_to_coco(data, config=config)
        return dataset
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path}: neither a COCO file (no 'images' list) nor a Label Studio export (a list of tasks)")
    return data


def image_path(images_dir: Path, file_name: str) -> Path:
    """Where an image of the ground truth is: ``images_dir/file_name``, else ``images_dir/<its base name>`` (a
    Label Studio reference such as ``/data/upload/1/x.png``); ValueError when neither exists."""
    for candidate in (images_dir / str(file_name).lstrip("/"), images_dir / Path(str(file_name).split("?")[-1]).name):
        if candidate.is_file():
            return candidate
    raise ValueError(f"image {file_name!r} not found under {images_dir}")


def truth_masks(dataset: Mapping[str, Any], image: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """{category name: union of its instances} on one image of a COCO dataset."""
    from .convert import segmentation_to_mask

    names = {c["id"]: c["name"] for c in dataset.get("categories", [])}
    h, w = int(image["height"]), int(image["width"])
    out: dict[str, np.ndarray] = {}
    for ann in dataset.get("annotations", []):
        if ann.get("image_id") != image["id"] or not ann.get("segmentation"):
            continue
        name = names[ann["category_id"]]
        mask = segmentation_to_mask(ann["segmentation"], h, w)
        out[name] = out[name] | mask if name in out else mask
    return out


def fit_from_coco(model, dataset: Mapping[str, Any], images_dir: str | Path, *, classes: Sequence[str] | None = None,
                  method: str = "seediff", mode: str = "noise", t: int = 100, prompt_template: str = "a photo of {}",
                  seed: int = 0, prior: FitPrior = FitPrior(),
                  progress: Callable[[int, int], None] | None = None) -> Calibration:
    """The calibration the ground truth supports for ``model`` (a :class:`seediff.pipeline.LoadedModel`; classes:
    every category unless given)."""
    from .modes import read_photo
    from .prompts import class_prompt
    from .segment import segment

    words = list(classes) if classes else [c["name"] for c in dataset.get("categories", [])]
    if not words:
        raise ValueError("no classes: the ground truth has no categories and --classes was not given")
    prompt = class_prompt(words, prompt_template)
    observations, default_value = [], None
    images = list(dataset.get("images", []))
    for k, image in enumerate(images):
        traced = read_photo(model.pipe, str(image_path(Path(images_dir), image["file_name"])), prompt, mode=mode, t=t,
                            seed=seed)
        maps, cache = traced.maps_for(0), {}
        base = model.defaults.config(method)
        default_value = getattr(base, mask_knob(method, base))
        truth = truth_masks(dataset, image)

        def predict(config, maps=maps, cache=cache):
            return segment(maps, words, method=method, config=config, cache=cache)

        observations += observe(predict, base, method, truth, words)
        if progress is not None:
            progress(k + 1, len(images))
    if not images:
        raise ValueError("the ground truth has no images")
    return fit(observations, method, default_value, prior=prior, images=len(images))
