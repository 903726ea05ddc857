"""The model behind the backend: load once, then per task fetch → read photo → segment → Label Studio regions.

Knows nothing of HTTP; knows nothing of attention either (that is ``seediff``'s job).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
from collections import defaultdict
from typing import Any, Mapping, Sequence

from .fetch import Fetcher, FetchError
from .labels import LabelPlan, label_plan
from .limits import BoundedLRU, segment_bytes
from .predict import PredictOptions, read_photo_for, task_masks, task_prediction
from .settings import Settings

__all__ = ["SeeDiffModel", "clicked_labels", "context_seeds", "backend_model_version"]

log = logging.getLogger("seediff_labelstudio")


def backend_model_version(s: Settings) -> str:
    """The model_version for these settings (:attr:`PredictOptions.model_version`, the one ``seediff preannotate``
    uses too), so tasks pre-annotated with the same settings are skipped by Label Studio, not predicted twice."""
    return PredictOptions.from_settings(s).model_version


def _negative(region: Mapping[str, Any], value: Mapping[str, Any]) -> bool:
    """Whether an interactive keypoint is a negative click: ``is_positive`` false on the region (Label Studio's
    place), else in its value; false, 0 and "false" count as negative, anything else (or nothing) as positive."""
    flag = region["is_positive"] if "is_positive" in region else value.get("is_positive", True)
    return flag is False or flag == 0 or (isinstance(flag, str) and flag.strip().lower() in ("false", "0"))


def _pixels_digest(image) -> bytes:
    """A digest of an image's pixels, hashed in bands of rows (no second full copy of a large image)."""
    h = hashlib.blake2b(digest_size=16)
    for y in range(0, image.height, 256):
        h.update(image.crop((0, y, image.width, min(image.height, y + 256))).tobytes())
    return h.digest()


def context_seeds(context: Mapping[str, Any] | None, plan: LabelPlan, size: tuple[int, int]):
    """Interactive context (keypoints / rectangles an annotator drew) → per-class points and boxes in pixels.

    A keypoint or rectangle carries a label; it becomes a seed (or a box) for that label's words (a label the
    plan lacks stands for its lowercased word). A keypoint is negative when ``is_positive`` is false: Label
    Studio puts it on the region itself (an Alt-click), not in ``value``; ``value.is_positive`` is read only
    when the region has none.
    """
    points: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    boxes: dict[str, list[tuple[float, float, float, float]]] = defaultdict(list)
    w, h = size
    for region in _regions(context):
        value, kind = region["value"], str(region.get("type", ""))
        words = [wd for lab in _labels_of(region) for wd in plan.words.get(lab, [lab.lower()]) if wd in plan.classes]
        try:
            x, y = float(value["x"]) * w / 100, float(value["y"]) * h / 100
        except (KeyError, TypeError, ValueError):
            continue
        for word in words:
            if kind.startswith("keypoint"):
                points[word].append((x, y, 0 if _negative(region, value) else 1))
            elif kind.startswith("rectangle") and "width" in value and "height" in value:
                boxes[word].append((x, y, x + float(value["width"]) * w / 100, y + float(value["height"]) * h / 100))
    return dict(points), dict(boxes)


def _regions(context: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """The interactive regions of a request's context (``context.result``) that have a ``value`` object."""
    regions = context.get("result") if isinstance(context, Mapping) else None
    if not isinstance(regions, list):
        return []
    return [r for r in regions if isinstance(r, Mapping) and isinstance(r.get("value"), Mapping)]


def _labels_of(region: Mapping[str, Any]) -> list[str]:
    """The labels an interactive region carries (``value[<type>]``, else keypoint/rectangle labels or labels)."""
    value = region["value"]
    labels = (value.get(str(region.get("type", ""))) or value.get("keypointlabels") or value.get("rectanglelabels")
              or value.get("labels") or [])
    return [str(lab) for lab in labels] if isinstance(labels, list) else []


def clicked_labels(context: Mapping[str, Any] | None, plan: LabelPlan) -> set[str] | None:
    """The labels an interactive request's keypoints / rectangles carry that the plan can answer (an interactive
    answer holds only these: one click, one suggestion); None for a request without interactive regions."""
    regions = _regions(context)
    if not regions:
        return None
    out: set[str] = set()
    for lab in (lab for region in regions for lab in _labels_of(region)):
        out |= {lab} if lab in plan.words else {name for name, words in plan.words.items() if lab.lower() in words}
    return out


class SeeDiffModel:
    """The loaded pipeline plus the per-task prediction; GPU work is serialised with a lock.

    Memory stays bounded however many requests arrive: at most two tasks hold a decoded image at a time (one
    in the UNet, one fetched and waiting); the rest wait before fetching. The predictors (image + attention) of
    the last ``SEEDIFF_CACHE_IMAGES`` images are kept, within ``SEEDIFF_CACHE_BYTES`` in all (keyed by pixels and
    prompt), so an annotator's repeated interactive clicks on one task run the UNet once and only the cheap mask
    step again.
    """

    HELD_IMAGES = 2

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.fetcher = Fetcher(settings)
        self.options = PredictOptions.from_settings(settings)
        self.loaded = None  # seediff.pipeline.LoadedModel: the pipeline and the model's own defaults
        self.error: str | None = None
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.HELD_IMAGES)
        self._held = 0
        # (pixels digest, prompt) → SeeDiffPredictor, bounded by count and by the bytes each holds
        self._predictors: BoundedLRU = BoundedLRU(settings.cache_images, settings.cache_bytes)
        self.metrics: dict[str, float] = defaultdict(float)
        self._metrics_lock = threading.Lock()
        self.model_version = self.options.model_version  # without a project's calibration
        self.calibrations = None  # set by the app: .for_project(project) → seediff.calibrate.Calibration | None

    # ---- lifecycle -----------------------------------------------------------------------------------
    def load(self) -> None:
        """Load the pipeline (once, at start-up); on failure keep the reason for /health and /predict."""
        from seediff.pipeline import load_model

        t0 = time.perf_counter()
        try:
            self.loaded = load_model(self.settings.model, device=self.settings.device, dtype=self.settings.dtype)
        except Exception as exc:  # any load failure must leave a running service that says why
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("model load failed: %s", self.error)
            return
        log.info("model %s loaded on %s in %.1f s; model_version %s", self.settings.model, self.pipe.device,
                 time.perf_counter() - t0, self.model_version)

    @property
    def pipe(self):
        """The loaded diffusers pipeline (None before :meth:`load` succeeds)."""
        return None if self.loaded is None else self.loaded.pipe

    @property
    def ready(self) -> bool:
        return self.loaded is not None

    def check_config(self, config: str) -> LabelPlan:
        """The config's label plan; ValueError if it is unsupported or a class word does not fit a prompt even
        alone (larger label sets are read in several prompts, one per group of classes that fits)."""
        from seediff.prompts import split_vocabulary

        plan = label_plan(config)
        if self.loaded is not None:
            try:
                groups = split_vocabulary(self.pipe.tokenizer, plan.classes, self.options.prompt_template)
            except ValueError as exc:
                raise ValueError(f"{len(plan.classes)} class words cannot be served: {exc}; shorten that label's "
                                 "predicted_values") from None
            if len(groups) > 1:
                log.info("%d class words need %d prompts: each photo is read %d times", len(plan.classes),
                         len(groups), len(groups))
        return plan

    def count(self, **values: float) -> None:
        """Add to the service counters (thread-safe), e.g. ``count(requests=1, request_s=0.2)``."""
        with self._metrics_lock:
            for k, v in values.items():
                self.metrics[k] += v

    def metrics_snapshot(self) -> dict[str, float]:
        """A consistent copy of the service counters, for /metrics."""
        with self._metrics_lock:
            return dict(self.metrics)

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

    def options_for(self, project: str | int | None) -> PredictOptions:
        """The prediction options of a project: the backend's, with the project's calibration if it has one."""
        cal = self.calibrations.for_project(project) if self.calibrations is not None else None
        return dataclasses.replace(self.options, calibration=cal) if cal is not None else self.options

    def version_for(self, project: str | int | None) -> str:
        """The model_version of a project's predictions (with its calibration's suffix)."""
        return self.options_for(project).model_version

    def read_task(self, task: Mapping[str, Any], plan: LabelPlan, api_key: str | None = None):
        """(predictor holding the task's image read with every class word, image (width, height)): the UNet part
        of a prediction, for learning from an annotated task (:mod:`.learn`)."""
        ref = task.get("data", {}).get(plan.data_key) if isinstance(task.get("data"), Mapping) else None
        if ref is None:
            raise ValueError(f"task data has no {plan.data_key!r}")
        image = self.fetcher.fetch(ref, api_key)
        with self._lock:
            predictor = read_photo_for(self.loaded, image, plan.classes, self.options)
            self.count(unet_reads=1)
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
        options = self.options_for(project)
        out: list[dict | list] = []
        for i, task in enumerate(tasks):
            task_id = task.get("id") if isinstance(task, Mapping) else None
            try:
                out.append(self.predict_task(task, plan, context, api_key, deadline, options))
                self.count(tasks=1)
            except TimeoutError:
                left = len(tasks) - i
                log.warning("time budget (SEEDIFF_PREDICT_BUDGET=%gs) spent: %d task(s) from task %s on left without "
                            "a prediction; Label Studio asks for them again next time",
                            self.settings.predict_budget, left, task_id)
                self.count(tasks=left, tasks_deferred=left)
                out += [self._failed(interactive) for _ in range(left)]
                break
            except (FetchError, ValueError) as exc:
                log.warning("task %s: %s", task_id, exc)
                self.count(tasks=1, task_errors=1)
                out.append(self._failed(interactive))
            except Exception as exc:  # an engine bug on one task must not lose the batch
                log.exception("task %s: unexpected %s", task_id, type(exc).__name__)
                self.count(tasks=1, task_errors=1)
                out.append(self._failed(interactive))
        return out

    def predict_task(self, task: Any, plan: LabelPlan, context: Mapping[str, Any] | None = None,
                     api_key: str | None = None, deadline: float | None = None,
                     options: PredictOptions | None = None) -> dict:
        """Fetch, read the photo with every class word, segment, build Label Studio regions (:mod:`.predict`);
        ``options``: a project's (:meth:`options_for`), default the backend's."""
        if not isinstance(task, Mapping) or not isinstance(task.get("data"), Mapping):
            raise ValueError("task has no 'data' object")
        ref = task["data"].get(plan.data_key)
        if ref is None:
            raise ValueError(f"task data has no {plan.data_key!r} (the <Image value='${plan.data_key}'>)")
        s, options = self.settings, options or self.options
        classes = plan.classes
        prompt = options.prompt(classes)
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._slots.acquire(timeout=wait):
            raise TimeoutError
        self._hold(+1)
        try:
            t0 = time.perf_counter()
            image = self.fetcher.fetch(ref, api_key)
            t1 = time.perf_counter()
            points, boxes = context_seeds(context, plan, (image.width, image.height))
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError
            need = segment_bytes(image.size, len(classes))
            if need > s.max_task_bytes:
                raise ValueError(f"a {image.width}×{image.height} image with {len(classes)} class words needs about "
                                 f"{need >> 20} MiB to segment at full size, over SEEDIFF_MAX_TASK_BYTES "
                                 f"({s.max_task_bytes >> 20} MiB)")
            self._predictors.trim(s.max_task_bytes - need)  # cached predictors + this task stay within the budget
            key = (image.size, _pixels_digest(image), prompt)
            size = (image.width, image.height)
            with self._lock:  # one UNet at a time: GPU memory and CPU threads are shared
                t2 = time.perf_counter()
                predictor = self._predictors.pop(key)
                if predictor is None:
                    predictor = read_photo_for(self.loaded, image, classes, options)
                    self.count(unet_reads=1)
                image = None  # the predictor keeps its own copy: do not hold two while segmenting
                t3 = time.perf_counter()
                masks = task_masks(predictor, classes, options, points, boxes)
                t4 = time.perf_counter()
                self._predictors.put(key, predictor)  # measured with what predict cached; dropped if over the caps
        finally:
            self._hold(-1)
            self._slots.release()
        for word, reason in masks.reasons.items():
            log.info("task %s: %s: %s", task.get("id"), word, reason)
        only = clicked_labels(context, plan)
        if only is not None and not only:
            log.warning("task %s: the interactive regions' labels %s are not labels of the <PolygonLabels>/"
                        "<BrushLabels> on the image %s: nothing to suggest", task.get("id"),
                        sorted({lab for r in _regions(context) for lab in _labels_of(r)}), sorted(plan.words))
        prediction = task_prediction(plan, masks, size, options.model_version, control=options.control, only=only)
        t5 = time.perf_counter()
        self.count(fetch_s=t1 - t0, wait_s=t2 - t1, unet_s=t3 - t2, masks_s=t4 - t3, results_s=t5 - t4)
        return prediction
