"""The model behind the backend: load once, then per task fetch → read photo → segment → Label Studio regions.

Knows nothing of HTTP; knows nothing of attention either (that is ``seediff``'s job).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict, defaultdict
from typing import Any, Mapping, Sequence

import numpy as np

from .fetch import Fetcher, FetchError
from .labels import LabelPlan, label_plan, plan_results
from .preannotate import model_version_for
from .settings import Settings

__all__ = ["SeeDiffModel", "context_seeds", "backend_model_version"]

log = logging.getLogger("seediff_labelstudio")


def backend_model_version(s: Settings) -> str:
    """The model_version for these settings: the preannotate CLI's name for the model, method, photo mode and t,
    plus a short hash of any other non-default setting that changes the masks (prompt template, seed, steps,
    drop_absent).

    With default prompt/seed/steps it equals ``model_version_for`` exactly, so tasks pre-annotated by
    ``seediff preannotate`` with the same settings are skipped by Label Studio, not predicted twice.
    """
    extra: dict[str, Any] = {}
    if s.prompt_template != "a photo of {}":
        extra["prompt_template"] = s.prompt_template
    if s.seed != 0:
        extra["seed"] = s.seed
    if s.photo_mode != "noise" and s.steps != 10:
        extra["steps"] = s.steps
    if s.drop_absent:
        extra["drop_absent"] = True
    base = model_version_for(s.model, s.method, s.photo_mode, s.timestep)
    if not extra:
        return base
    return f"{base}-{hashlib.sha256(json.dumps(extra, sort_keys=True).encode()).hexdigest()[:8]}"


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
    """The loaded pipeline plus the per-task prediction; GPU work is serialised with a lock.

    Memory stays bounded however many requests arrive: at most two tasks hold a decoded image at a time (one
    in the UNet, one fetched and waiting); the rest wait before fetching. The attention of the last
    ``SEEDIFF_CACHE_IMAGES`` images is kept (keyed by pixels and prompt), so an annotator's repeated interactive
    clicks on one task run the UNet once and only the cheap mask step again.
    """

    HELD_IMAGES = 2

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.fetcher = Fetcher(settings)
        self.pipe = None
        self.error: str | None = None
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.HELD_IMAGES)
        self._held = 0
        self._predictors: OrderedDict[tuple, Any] = OrderedDict()  # (pixels digest, prompt) → SeeDiffPredictor
        self.metrics: dict[str, float] = defaultdict(float)
        self._metrics_lock = threading.Lock()
        self.model_version = backend_model_version(settings)
        self.calibrations = None  # set by the app: .for_project(project) → seediff.calibrate.Calibration | None

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
        log.info("model %s loaded on %s in %.1f s; model_version %s", self.settings.model, self.pipe.device,
                 time.perf_counter() - t0, self.model_version)

    @property
    def ready(self) -> bool:
        return self.pipe is not None

    def check_config(self, config: str) -> LabelPlan:
        """The config's label plan; ValueError if it is unsupported or its class words overflow one prompt."""
        from seediff.modes import check_prompt
        from seediff.predictor import class_prompt

        plan = label_plan(config)
        if self.pipe is not None:
            try:
                check_prompt(self.pipe.tokenizer, class_prompt(plan.classes, self.settings.prompt_template))
            except ValueError as exc:
                raise ValueError(f"{len(plan.classes)} class words do not fit in one prompt ({exc}); use fewer "
                                 "labels or shorter predicted_values") from None
        return plan

    def _count(self, **values: float) -> None:
        with self._metrics_lock:
            for k, v in values.items():
                self.metrics[k] += v

    def _hold(self, delta: int) -> None:
        with self._metrics_lock:
            self._held += delta
            self.metrics["images_held_max"] = max(self.metrics["images_held_max"], self._held)

    # ---- prediction ----------------------------------------------------------------------------------
    def _failed(self, interactive: bool) -> dict | list:
        """What a task that got no prediction answers.

        Batch (Retrieve predictions): ``[]``, an empty list of predictions, so Label Studio stores nothing and
        the task is tried again next time (an empty prediction with the current model_version would make Label
        Studio skip the task for good). Interactive: an empty result, which Label Studio shows as no proposal.
        """
        return {"result": [], "score": 0.0, "model_version": self.model_version} if interactive else []

    def calibration_for(self, project: str | int | None):
        """The calibration a project's predictions use (None: the model's defaults)."""
        return self.calibrations.for_project(project) if self.calibrations is not None else None

    def version_for(self, project: str | int | None) -> str:
        """The model_version of a project's predictions (with its calibration's suffix)."""
        from seediff.calibrate import calibrated_version

        return calibrated_version(self.model_version, self.calibration_for(project))

    def read_task(self, task: Mapping[str, Any], plan: LabelPlan, api_key: str | None = None):
        """(SeeDiffPredictor holding the task's image read with every class word, image (width, height)): the
        UNet part of a prediction, for learning from an annotated task."""
        from seediff.predictor import SeeDiffPredictor, class_prompt

        s = self.settings
        ref = task.get("data", {}).get(plan.data_key) if isinstance(task.get("data"), Mapping) else None
        if ref is None:
            raise ValueError(f"task data has no {plan.data_key!r}")
        image = self.fetcher.fetch(ref, api_key)
        with self._lock:
            predictor = SeeDiffPredictor(self.pipe, prompt_template=s.prompt_template)
            predictor.set_image(image, class_prompt(plan.classes, s.prompt_template), mode=s.photo_mode,
                                t=s.timestep, steps=s.steps, seed=s.seed)
            self._count(unet_reads=1)
        return predictor, (image.width, image.height)

    def predict(self, tasks: Sequence[Any], label_config: str, context: Mapping[str, Any] | None = None,
                api_key: str | None = None, deadline: float | None = None,
                project: str | int | None = None) -> list[dict | list]:
        """One entry per task, in order; a task that fails (or is not reached before ``deadline``, a
        ``time.monotonic()`` value) gets an empty entry and a logged reason naming it; the batch goes on."""
        if not self.ready:
            raise RuntimeError(f"model not loaded: {self.error or 'still loading'}")
        plan = label_plan(label_config)
        interactive = bool(context)
        calibration = self.calibration_for(project)
        out: list[dict | list] = []
        for i, task in enumerate(tasks):
            task_id = task.get("id") if isinstance(task, Mapping) else None
            try:
                out.append(self.predict_task(task, plan, context, api_key, deadline, calibration))
                self._count(tasks=1)
            except TimeoutError:
                left = len(tasks) - i
                log.warning("time budget (SEEDIFF_PREDICT_BUDGET=%gs) spent: %d task(s) from task %s on left without "
                            "a prediction; Label Studio asks for them again next time",
                            self.settings.predict_budget, left, task_id)
                self._count(tasks=left, tasks_deferred=left)
                out += [self._failed(interactive) for _ in range(left)]
                break
            except (FetchError, ValueError) as exc:
                log.warning("task %s: %s", task_id, exc)
                self._count(tasks=1, task_errors=1)
                out.append(self._failed(interactive))
            except Exception as exc:  # an engine bug on one task must not lose the batch
                log.exception("task %s: unexpected %s", task_id, type(exc).__name__)
                self._count(tasks=1, task_errors=1)
                out.append(self._failed(interactive))
        return out

    def predict_task(self, task: Any, plan: LabelPlan, context: Mapping[str, Any] | None = None,
                     api_key: str | None = None, deadline: float | None = None, calibration=None) -> dict:
        """Fetch, read the photo with every class word (SeeDiffPredictor), segment, build Label Studio regions;
        a project's ``calibration`` (seediff.calibrate) sets the mask threshold and filters/rescores the regions."""
        from seediff.calibrate import apply_calibration, calibrated_config, calibrated_version
        from seediff.predictor import SeeDiffPredictor, class_prompt
        from seediff.segment import default_config

        if not isinstance(task, Mapping) or not isinstance(task.get("data"), Mapping):
            raise ValueError("task has no 'data' object")
        ref = task["data"].get(plan.data_key)
        if ref is None:
            raise ValueError(f"task data has no {plan.data_key!r} (the <Image value='${plan.data_key}'>)")
        s = self.settings
        classes = plan.classes
        prompt = class_prompt(classes, s.prompt_template)
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._slots.acquire(timeout=wait):
            raise TimeoutError
        self._hold(+1)
        try:
            t0 = time.perf_counter()
            image = self.fetcher.fetch(ref, api_key)
            t1 = time.perf_counter()
            points, boxes = context_seeds(context, plan, (image.width, image.height))
            seeds = (points or None) if s.method == "seediff" else None  # points are SeeDiff seeds
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError
            key = (image.size, hashlib.blake2b(image.tobytes(), digest_size=16).digest(), prompt)
            with self._lock:  # one UNet at a time: GPU memory and CPU threads are shared
                t2 = time.perf_counter()
                predictor = self._predictors.pop(key, None)
                if predictor is None:
                    predictor = SeeDiffPredictor(self.pipe, prompt_template=s.prompt_template)
                    predictor.set_image(image, prompt, mode=s.photo_mode, t=s.timestep, steps=s.steps, seed=s.seed)
                    self._count(unet_reads=1)
                if s.cache_images:
                    self._predictors[key] = predictor
                    while len(self._predictors) > s.cache_images:
                        self._predictors.popitem(last=False)
                t3 = time.perf_counter()
                config = (None if calibration is None else
                          calibrated_config(calibration, s.method, default_config(s.method, predictor.maps)))
                masks = apply_calibration(calibration, predictor.predict(
                    classes, points=seeds, boxes=boxes or None, method=s.method, config=config,
                    drop_absent=s.drop_absent), keep={*(points or {}), *(boxes or {})})
                t4 = time.perf_counter()
            size = (image.width, image.height)
        finally:
            self._hold(-1)
            self._slots.release()
        for word, reason in masks.reasons.items():
            log.info("task %s: %s: %s", task.get("id"), word, reason)
        result = plan_results(plan, masks, size)
        t5 = time.perf_counter()
        self._count(fetch_s=t1 - t0, wait_s=t2 - t1, unet_s=t3 - t2, masks_s=t4 - t3, results_s=t5 - t4)
        scores = [r["score"] for r in result if isinstance(r.get("score"), (int, float))]
        return {"result": result, "score": float(np.mean(scores)) if scores else 0.0,
                "model_version": calibrated_version(self.model_version, calibration)}
