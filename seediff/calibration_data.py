"""Offline calibration (``seediff calibrate``): observations from a ground-truth file and its images, then the
same fit the Label Studio backend runs on annotations (:mod:`seediff.calibrate`).

Ground truth is a COCO file or a Label Studio JSON export (converted with :func:`seediff.lsexport.ls_to_coco`,
its labeling config fixing the labels). Every image is read once in photo mode with every class word in the
prompt (as the backend and ``seediff preannotate`` read a task), then segmented at each mask-threshold value.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .calibrate import Calibration, FitPrior, Observation, fit, knob_grid, mask_knob, region_scores
from .evidence import sigmoid
from .masks import ClassMasks

__all__ = ["load_ground_truth", "image_path", "truth_masks", "observe", "observe_photo", "fit_from_coco"]


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


def observe(predict: Callable[[object], ClassMasks], base_config, method: str,
            truth: Mapping[str, np.ndarray], words: Sequence[str], presence: Mapping[str, float] | None = None,
            keep_best: bool = True) -> list[Observation]:
    """Observations of ``words`` on one image: ``predict(config)`` (masks from stored attention with every word
    kept: cheap) is called once per grid value of the method's mask threshold; ``truth`` maps a word to its
    annotated mask (a word missing from it was not drawn: absent); ``presence``: each word's P(present), when
    the predictions make a presence decision (``keep_best``: it always keeps the most probable word)."""
    knob = mask_knob(method, base_config)
    grid = knob_grid(getattr(base_config, knob))
    rows: dict[str, list[tuple[float, float, float]]] = {w: [] for w in words}
    gt_area: dict[str, float] = {}
    for value in grid:
        masks = predict(dataclasses.replace(base_config, **{knob: value}))
        scores = region_scores(masks)
        for w in words:
            mask = masks.mask(w)
            gt = truth.get(w)
            if gt is None:
                gt = np.zeros(mask.shape, bool)
            if gt.shape != mask.shape:
                raise ValueError(f"annotated mask of {w!r} is {gt.shape}, the proposal {mask.shape}")
            pixels = float(mask.size)
            gt_area[w] = float(gt.sum()) / pixels
            rows[w].append((scores[w] if mask.any() else 0.0, float(mask.sum()) / pixels,
                            float((mask & gt).sum()) / pixels))
    p = {w: float((presence or {}).get(w, float("nan"))) for w in words}
    known = [w for w in words if not np.isnan(p[w])]
    best = max(known, key=p.get) if keep_best and len(known) > 1 else None
    return [Observation(w, gt_area[w], *map(tuple, zip(*r)), p[w], w == best) for w, r in rows.items()]


def observe_photo(predictor, words: Sequence[str], truth: Mapping[str, np.ndarray], method: str = "seediff",
                  presence: bool = True, drop_absent: bool = False) -> tuple[list[Observation], Any, float | None]:
    """(observations, the model's mask-threshold value, the model's P(present) threshold or None) of a read photo
    (a :class:`seediff.SeeDiffPredictor`) against its annotated masks, predicted as ``predict(words, method,
    presence=, drop_absent=)`` would: each word's P(present) is recorded and every word segmented, so the fit
    can replay the presence decision at any threshold."""
    base = predictor.defaults.config(method)
    decides = presence and not drop_absent
    model = predictor.defaults.presence
    probs = None
    if decides:
        logits = predictor.presence_logits(list(words))
        probs = {w: float(sigmoid(v)) for w, v in logits.items()}
    keep_all = {w: 0.0 for w in words} if decides else None

    def predict(config):
        return predictor.predict(list(words), method=method, config=config, drop_absent=drop_absent,
                                 presence=presence, presence_thresholds=keep_all)

    keep_best = model.keep_best if model is not None else True
    observations = observe(predict, base, method, truth, words, probs, keep_best)
    threshold = (model.threshold if model is not None else 0.5) if decides else None
    return observations, getattr(base, mask_knob(method, base)), threshold


def fit_from_coco(model, dataset: Mapping[str, Any], images_dir: str | Path, *, classes: Sequence[str] | None = None,
                  method: str = "seediff", mode: str = "noise", t: int = 100, prompt_template: str = "a photo of {}",
                  seed: int = 0, presence: bool = True, prior: FitPrior = FitPrior(),
                  progress: Callable[[int, int], None] | None = None) -> Calibration:
    """The calibration the ground truth supports for ``model`` (a :class:`seediff.pipeline.LoadedModel`; classes:
    every category unless given), for predictions made with ``presence`` on or off."""
    from .predictor import SeeDiffPredictor
    from .prompts import class_prompt

    words = list(classes) if classes else [c["name"] for c in dataset.get("categories", [])]
    if not words:
        raise ValueError("no classes: the ground truth has no categories and --classes was not given")
    images = list(dataset.get("images", []))
    if not images:
        raise ValueError("the ground truth has no images")
    observations, default_value, presence_default = [], None, None
    for k, image in enumerate(images):
        predictor = SeeDiffPredictor.from_model(model, prompt_template=prompt_template)
        predictor.set_image(str(image_path(Path(images_dir), image["file_name"])), class_prompt(words, prompt_template),
                            mode=mode, t=t, seed=seed)
        obs, default_value, presence_default = observe_photo(predictor, words, truth_masks(dataset, image), method,
                                                             presence)
        observations += obs
        if progress is not None:
            progress(k + 1, len(images))
    return fit(observations, method, default_value, prior=prior, images=len(images), presence_default=presence_default)
