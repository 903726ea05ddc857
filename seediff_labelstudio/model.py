"""The model behind the backend: load once, then per task fetch → read photo → segment → Label Studio regions.

Knows nothing of HTTP; knows nothing of attention either (that is ``seediff``'s job).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from typing import Any, Mapping, Sequence

import numpy as np

from .fetch import Fetcher, FetchError
from .labels import LabelPlan, label_plan, plan_results
from .preannotate import model_version_for
from .settings import Settings

__all__ = ["SeeDiffModel", "context_seeds"]

log = logging.getLogger("seediff_labelstudio")


def context_seeds(context: Mapping[str, Any] | None, plan: LabelPlan, size: tuple[int, int]):
    """Interactive context (keypoints / rectangles an annotator drew) → per-class points and boxes in pixels.

    A keypoint or rectangle carries a label; it becomes a positive seed (or a box) for that label's words.
    """
    points: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    boxes: dict[str, list[tuple[float, float, float, float]]] = defaultdict(list)
    if not context:
        return {}, {}
    regions = context.get("result") if isinstance(context, Mapping) else None
    if not isinstance(regions, list):
        return {}, {}
    w, h = size
    for region in regions:
        if not isinstance(region, Mapping) or not isinstance(region.get("value"), Mapping):
            continue
        value, kind = region["value"], region.get("type", "")
        labels = value.get(kind) or value.get("keypointlabels") or value.get("rectanglelabels") or value.get("labels") or []
        words = [wd for lab in labels for wd in plan.words.get(lab, [str(lab).lower()])]
        words = [wd for wd in words if wd in plan.classes]
        try:
            x, y = float(value["x"]) * w / 100, float(value["y"]) * h / 100
        except (KeyError, TypeError, ValueError):
            continue
        for word in words:
            if kind.startswith("keypoint"):
                points[word].append((x, y, 0 if value.get("is_positive") is False else 1))
            elif kind.startswith("rectangle") and "width" in value and "height" in value:
                boxes[word].append((x, y, x + float(value["width"]) * w / 100, y + float(value["height"]) * h / 100))
    return dict(points), dict(boxes)


class SeeDiffModel:
    """The loaded pipeline plus the per-task prediction; GPU work is serialised with a lock."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.fetcher = Fetcher(settings)
        self.pipe = None
        self.error: str | None = None
        self._lock = threading.Lock()
        self.metrics: dict[str, float] = defaultdict(float)
        self._metrics_lock = threading.Lock()

    # ---- lifecycle -----------------------------------------------------------------------------------
    def load(self) -> None:
        """Load the pipeline (once, at start-up); on failure keep the reason for /health and /predict."""
        from seediff.pipeline import load_pipeline

        t0 = time.perf_counter()
        try:
            self.pipe = load_pipeline(self.settings.model, device=self.settings.device, dtype=self.settings.dtype)
        except Exception as exc:  # any load failure must leave a running service that says why
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("model load failed: %s", self.error)
            return
        log.info("model %s loaded on %s in %.1f s", self.settings.model, self.pipe.device, time.perf_counter() - t0)

    @property
    def ready(self) -> bool:
        return self.pipe is not None

    @property
    def model_version(self) -> str:
        """Same settings → same version, so Label Studio skips tasks already predicted by it."""
        s = self.settings
        return model_version_for(s.model, s.method, s.photo_mode, s.timestep)

    def _count(self, **values: float) -> None:
        with self._metrics_lock:
            for k, v in values.items():
                self.metrics[k] += v

    # ---- prediction ----------------------------------------------------------------------------------
    def predict(self, tasks: Sequence[Any], label_config: str, context: Mapping[str, Any] | None = None) -> list[dict]:
        """One result per task, in order; a failing task gets an empty result and a logged reason."""
        if not self.ready:
            raise RuntimeError(f"model not loaded: {self.error or 'still loading'}")
        plan = label_plan(label_config)
        out = []
        for task in tasks:
            task_id = task.get("id") if isinstance(task, Mapping) else None
            try:
                out.append(self.predict_task(task, plan, context))
                self._count(tasks=1)
            except (FetchError, ValueError) as exc:
                log.warning("task %s: %s", task_id, exc)
                self._count(tasks=1, task_errors=1)
                out.append({"result": [], "score": 0.0, "model_version": self.model_version})
            except Exception as exc:  # an engine bug on one task must not lose the batch
                log.exception("task %s: unexpected %s", task_id, type(exc).__name__)
                self._count(tasks=1, task_errors=1)
                out.append({"result": [], "score": 0.0, "model_version": self.model_version})
        return out

    def predict_task(self, task: Any, plan: LabelPlan, context: Mapping[str, Any] | None = None) -> dict:
        """Fetch, read in photo mode with every class word, segment, and build Label Studio regions."""
        from seediff.modes import read_photo
        from seediff.predictor import class_prompt
        from seediff.segment import segment

        if not isinstance(task, Mapping) or not isinstance(task.get("data"), Mapping):
            raise ValueError("task has no 'data' object")
        ref = task["data"].get(plan.data_key)
        if ref is None:
            raise ValueError(f"task data has no {plan.data_key!r} (the <Image value='${plan.data_key}'>)")
        s = self.settings
        t0 = time.perf_counter()
        image = self.fetcher.fetch(ref)
        t1 = time.perf_counter()
        classes = plan.classes
        points, boxes = context_seeds(context, plan, (image.width, image.height))
        with self._lock:  # one UNet at a time: GPU memory and CPU threads are shared
            t2 = time.perf_counter()
            traced = read_photo(self.pipe, image, class_prompt(classes, s.prompt_template), mode=s.photo_mode,
                                t=s.timestep, steps=s.steps, seed=s.seed)
            t3 = time.perf_counter()
            seeds = (points or None) if s.method == "seediff" else None  # points are SeeDiff seeds
            masks = segment(traced.maps_for(0), classes, method=s.method, points=seeds, boxes=boxes or None)
            t4 = time.perf_counter()
        for word, reason in masks.reasons.items():
            log.info("task %s: %s: %s", task.get("id"), word, reason)
        result = plan_results(plan, masks, (image.width, image.height))
        t5 = time.perf_counter()
        self._count(fetch_s=t1 - t0, wait_s=t2 - t1, unet_s=t3 - t2, masks_s=t4 - t3, results_s=t5 - t4)
        scores = [r["score"] for r in result if isinstance(r.get("score"), (int, float))]
        return {"result": result, "score": float(np.mean(scores)) if scores else 0.0, "model_version": self.model_version}
