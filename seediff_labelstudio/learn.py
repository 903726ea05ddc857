"""Learning from annotators: Label Studio's webhooks → verified annotations → per-project calibration.

Label Studio posts annotation webhooks (ANNOTATION_CREATED / _UPDATED, ANNOTATIONS_CREATED, ANNOTATIONS_DELETED)
without credentials, so a payload is only a notification: the backend reads the annotation, its task and the
project back from Label Studio's API with its own key (``LABEL_STUDIO_URL`` / ``LABEL_STUDIO_API_KEY``) and learns
only from what the API says. A notification naming an annotation the API does not know, or one of another
project, is answered 404 and changes nothing. START_TRAINING ("Start Training" on the model card) refits the
project from every annotated task the API lists.

Learning from one task: read its image as ``/predict`` would, propose masks at each value of the method's mask
threshold, compare with the annotation (:func:`seediff.calibration_data.observe_photo`), store the evidence and refit the
project (:class:`~.calibration_store.CalibrationStore`). The UNet work runs on one background thread, in arrival
order; the webhook answers 202 once the notification is verified. State: ``$SEEDIFF_DATA_DIR/calibration.sqlite``
(``Settings.data_dir``).
A fixed calibration file (``SEEDIFF_CALIBRATION``, written by ``seediff calibrate``) serves projects that have
learnt nothing yet.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from seediff.calibrate import Calibration, fit, load_calibration

from .calibration_store import STORE_NAME, CalibrationStore, TaskEvidence
from .labels import LabelPlan, label_plan

__all__ = ["Learner", "WebhookError", "Calibrations", "annotation_truth", "LEARN_ACTIONS", "webhook_responses",
           "calibration_router"]

log = logging.getLogger("seediff_labelstudio")

LEARN_ACTIONS = frozenset({"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED"})
DELETE_ACTIONS = frozenset({"ANNOTATIONS_DELETED"})
TRAIN_ACTION = "START_TRAINING"


class WebhookError(Exception):
    """A notification that is refused: HTTP ``status`` and a one-line ``detail``; nothing was changed."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def webhook_responses(ok_model, error_model) -> dict:
    """/webhook's answers about learning, for the OpenAPI spec (the app adds 200, 400, 401, 413)."""
    return {202: {"model": ok_model, "description": "verified; learning from it in the background"},
            404: {"model": error_model, "description": "Label Studio's API does not have what it names"},
            422: {"model": error_model, "description": "malformed annotation or training event"},
            502: {"model": error_model, "description": "Label Studio's API could not be read"}}


def calibration_router(learner: "Learner", model, dependencies: list, responses: dict, error_model):
    """``GET /calibration/{project}`` (what was learnt) and ``DELETE /calibration/{project}`` (forget it)."""
    from fastapi import APIRouter, HTTPException

    router = APIRouter(dependencies=dependencies)
    spec = {200: {"content": {"application/json": {"schema": {"type": "object"}}}},
            404: {"model": error_model, "description": "no calibration store (SEEDIFF_DATA_DIR unset)"}, **responses}

    def store() -> CalibrationStore:
        if learner.store is None:
            raise HTTPException(404, "no calibration store (set SEEDIFF_DATA_DIR)")
        return learner.store

    @router.get("/calibration/{project}", responses=spec)
    async def calibration(project: int):
        return {**store().summary(project), "model_version": model.version_for(project)}

    @router.delete("/calibration/{project}", responses=spec)
    async def reset_calibration(project: int):
        store().reset(project)
        return {"project": project, "status": "reset", "model_version": model.version_for(project)}

    return router


class Calibrations:
    """Which calibration a project's predictions use: the one learnt under ``basis`` (the backend's model_version),
    else the fixed file's, else none."""

    def __init__(self, store: CalibrationStore | None, fixed: Calibration | None, basis: str | None = None) -> None:
        self.store, self.fixed, self.basis = store, fixed, basis

    def for_project(self, project: str | int | None) -> Calibration | None:
        """The calibration for ``project`` (a Label Studio project id; '' or None: the fixed one)."""
        if self.store is not None and str(project or "").isdigit():
            learnt, _ = self.store.get(int(project), self.basis)
            if learnt is not None:
                return learnt
        return self.fixed


def _plain(obj: Any) -> Any:
    """An SDK model as a plain dict (dicts as they are)."""
    return obj.model_dump() if hasattr(obj, "model_dump") else obj


def _id(value: Any, what: str) -> int:
    """A positive integer id from a payload field (422 otherwise)."""
    if isinstance(value, Mapping):
        value = value.get("id")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise WebhookError(422, f"webhook {what} must carry a positive integer id, got {value!r}")
    return value


def annotation_truth(result: Any, plan: LabelPlan, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Class word → annotated mask (W×H ``size``) from an annotation's result (polygon, brush and rectangle
    regions on the plan's image; a label's mask goes to each of its words)."""
    from PIL import Image

    from seediff.lsformat import region_to_mask

    w, h = size
    out: dict[str, np.ndarray] = {}
    for region in result if isinstance(result, list) else []:
        if not isinstance(region, Mapping) or region.get("to_name") != plan.to_name:
            continue
        value = region.get("value") if isinstance(region.get("value"), Mapping) else {}
        labels = next((value[k] for k in ("polygonlabels", "brushlabels", "rectanglelabels", "labels")
                       if isinstance(value.get(k), list) and value.get(k)), [])
        words = [wd for lab in labels for wd in plan.words.get(str(lab), [])]
        if not words:
            continue
        try:
            mask = region_to_mask(region)
        except (ValueError, KeyError, TypeError):
            continue
        if mask.shape != (h, w):
            mask = np.asarray(Image.fromarray(mask).resize((w, h), Image.NEAREST), bool)
        for wd in words:
            out[wd] = out.get(wd, np.zeros((h, w), bool)) | mask
    return out


@dataclass(frozen=True)
class _Job:
    """One unit of learning: tasks to observe (or every annotated task: ``replace_all``), annotations to forget."""

    project: int
    plan: LabelPlan
    pairs: tuple[tuple[dict, dict], ...]  # (annotation, task) read back from Label Studio
    replace_all: bool = False
    drop: tuple[int, ...] = ()
    done: threading.Event | None = None


class Learner:
    """Verifies webhook notifications against Label Studio's API and learns from them on a worker thread."""

    def __init__(self, model, store: CalibrationStore | None, client_factory, fixed: Calibration | None = None) -> None:
        self.model, self.store, self._client_factory = model, store, client_factory
        self.calibrations = Calibrations(store, fixed, model.model_version)
        self._queue: queue.Queue[_Job] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings, model) -> "Learner":
        """The learner the settings describe (no store without SEEDIFF_DATA_DIR; no API without the LS key)."""
        store = CalibrationStore(settings.data_dir / STORE_NAME) if settings.data_dir is not None else None
        fixed = load_calibration(settings.calibration_file) if settings.calibration_file is not None else None
        factory = None
        if settings.ls_url and settings.ls_api_key:
            def factory():
                from label_studio_sdk import LabelStudio

                return LabelStudio(base_url=settings.ls_url, api_key=settings.ls_api_key, timeout=30)
        return cls(model, store, factory, fixed)

    @classmethod
    def attach(cls, app, settings, model, dependencies: list, responses: dict, error_model) -> "Learner":
        """The settings' learner on an app: the model's predictions use its calibrations, /calibration serves it."""
        learner = cls.from_settings(settings, model)
        model.calibrations = learner.calibrations
        app.state.learner = learner
        app.include_router(calibration_router(learner, model, dependencies, responses, error_model))
        return learner

    @property
    def enabled(self) -> bool:
        """Learning needs a store (SEEDIFF_DATA_DIR) and Label Studio's API (URL and key)."""
        return self.store is not None and self._client_factory is not None

    # ---- the webhook -------------------------------------------------------------------------------
    def handle(self, body: Any, wait: float = 0.0) -> tuple[int, dict]:
        """(HTTP status, JSON body) for a webhook body; raises nothing (refusals are 4xx answers)."""
        action = body.get("action") if isinstance(body, Mapping) else None
        if action not in LEARN_ACTIONS | DELETE_ACTIONS | {TRAIN_ACTION}:
            return 200, {"status": "ok", "action": action}
        if not self.enabled:
            why = "set SEEDIFF_DATA_DIR, LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY to learn from annotations"
            log.info("webhook %s: calibration off (%s)", action, why)
            return 200, {"status": "ok", "action": action, "calibration": f"off: {why}"}
        try:
            job = self._verify(action, body)
        except WebhookError as exc:
            log.warning("webhook %s refused (%d): %s", action, exc.status, exc.detail)
            return exc.status, {"detail": exc.detail}
        self._submit(job)
        if action == TRAIN_ACTION and job.done is not None and job.done.wait(wait):
            summary = self.store.summary(job.project)
            return 200, {"status": "trained", "action": action, **summary}
        return 202, {"status": "queued", "action": action, "project": job.project}

    def _client(self):
        """A Label Studio SDK client with the backend's key."""
        return self._client_factory()

    def _read(self, kind: str, ident: int) -> dict:
        """GET one object from Label Studio's API (404 WebhookError when it does not exist; 502 when LS fails)."""
        from label_studio_sdk.core.api_error import ApiError

        client = self._client()
        try:
            return _plain(getattr(client, kind).get(id=ident))
        except ApiError as exc:
            if exc.status_code in (403, 404):
                raise WebhookError(404, f"{kind[:-1]} {ident} not found in Label Studio") from None
            raise WebhookError(502, f"Label Studio answered {exc.status_code} for {kind[:-1]} {ident}") from None
        except Exception as exc:  # connection refused, timeout, unparsable answer
            raise WebhookError(502, f"cannot read {kind[:-1]} {ident} from Label Studio: {type(exc).__name__}") from None

    def _project_plan(self, project: int) -> LabelPlan:
        """The project's label plan, read from Label Studio (the payload's config is not trusted)."""
        info = self._read("projects", project)
        try:
            return label_plan(str(info.get("label_config") or ""))
        except Exception as exc:
            raise WebhookError(422, f"project {project}: unsupported labeling config: {exc}") from None

    def _verify(self, action: str, body: Mapping) -> _Job:
        """The job a notification asks for, every id checked against Label Studio's API."""
        project = _id(body.get("project"), "'project'")
        plan = self._project_plan(project)
        if action == TRAIN_ACTION:
            return _Job(project, plan, (), replace_all=True, done=threading.Event())
        key = "annotation" if "annotation" in body else "annotations"  # bulk events carry lists (LS 1.23)
        raw = body.get(key)
        items = raw if isinstance(raw, list) else [raw]
        if not items or len(items) > 1000:
            raise WebhookError(422, f"webhook '{key}' must name 1 to 1000 annotations")
        ids = [_id(a, "'annotation'") for a in items]
        if action in DELETE_ACTIONS:
            gone = []
            for i in ids:
                try:
                    self._read("annotations", i)
                except WebhookError as exc:
                    if exc.status != 404:
                        raise
                    gone.append(i)  # the API agrees it is deleted
            return _Job(project, plan, (), drop=tuple(gone))
        pairs = []
        for i in ids:
            annotation = self._read("annotations", i)
            task = self._read("tasks", _id(annotation.get("task"), "annotation 'task'"))
            if task.get("project") != project:
                raise WebhookError(404, f"annotation {i} is not in project {project}")
            pairs.append((annotation, task))
        return _Job(project, plan, tuple(pairs))

    # ---- the worker --------------------------------------------------------------------------------
    def _submit(self, job: _Job) -> None:
        """Queue a job, starting the worker thread on first use."""
        with self._start_lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, name="seediff-learner", daemon=True)
                self._worker.start()
        self._queue.put(job)

    def drain(self, timeout: float = 60.0) -> bool:
        """Wait until every submitted job is done (tests, shutdown); False on timeout."""
        done = threading.Event()
        self._submit(_Job(0, None, (), done=done))  # type: ignore[arg-type]
        return done.wait(timeout)

    def _run(self) -> None:
        """The worker: jobs in arrival order, forever (a daemon thread)."""
        while True:
            job = self._queue.get()
            try:
                if job.plan is not None:
                    self._learn(job)
            except Exception:  # a bad task must not stop learning
                log.exception("calibration of project %s failed", job.project)
            finally:
                if job.done is not None:
                    job.done.set()

    def _all_pairs(self, project: int) -> list[tuple[dict, dict]]:
        """(latest non-cancelled annotation, task) of every annotated task of the project, from the API."""
        client = self._client()
        out = []
        for task in client.tasks.list(project=project, fields="all"):
            task = _plain(task)
            annotations = [_plain(a) for a in client.annotations.list(id=task["id"])]
            kept = [a for a in annotations if not a.get("was_cancelled")]  # an empty result: every label absent
            if kept:
                out.append((max(kept, key=lambda a: str(a.get("updated_at") or a.get("id"))), task))
        return out

    def _learn(self, job: _Job) -> None:
        """Observe each (annotation, task), store, refit: one transaction per job."""
        pairs = self._all_pairs(job.project) if job.replace_all else job.pairs
        basis = self.model.model_version
        evidence = []
        stored = {e.task: e for e in self.store.evidence(job.project)} if job.replace_all else {}
        for annotation, task in pairs:
            stamp = str(annotation.get("updated_at") or annotation.get("created_at") or "")
            known = self.store.stamp(job.project, task["id"])
            if known == (annotation["id"], stamp, basis) and not job.replace_all:
                continue
            if known == (annotation["id"], stamp, basis):  # a refit keeps what is already observed
                evidence.append(stored[task["id"]])
                continue
            if annotation.get("was_cancelled"):
                continue
            evidence.append(self._observe(job.plan, annotation, task))
        method, presence_default = self.model.options.method, self.presence_threshold()

        def fitter(observations, default_value, images):
            return fit(observations, method, default_value, images=images, presence_default=presence_default)

        calibration, revision = self.store.put(job.project, evidence, fitter, basis, replace_all=job.replace_all,
                                               drop_annotations=job.drop)
        log.info("project %s: calibration revision %d from %d new task(s)%s", job.project, revision, len(evidence),
                 f" ({calibration.digest})" if calibration else "")

    def presence_threshold(self) -> float | None:
        """The model's P(present) threshold when the backend decides presence (None when it does not)."""
        o = self.model.options
        if not o.presence or o.drop_absent:
            return None
        model = self.model.loaded.defaults.presence if self.model.loaded is not None else None
        return model.threshold if model is not None else 0.5

    def _observe(self, plan: LabelPlan, annotation: Mapping, task: Mapping) -> TaskEvidence:
        """What the backend proposes for the task (its options, every label's P(present) recorded, at each value
        of the mask threshold) vs what the annotation kept."""
        from seediff.calibration_data import observe_photo

        options = self.model.options  # the backend's, uncalibrated: evidence is about the model's own proposals
        predictor, size = self.model.read_task(task, plan)
        truth = annotation_truth(annotation.get("result"), plan, size)
        observations, default_value, _ = observe_photo(predictor, plan.classes, truth, options.method,
                                                       options.presence, options.drop_absent)
        stamp = str(annotation.get("updated_at") or annotation.get("created_at") or "")
        return TaskEvidence(int(task["id"]), int(annotation["id"]), stamp, self.model.model_version, default_value,
                            tuple(observations))
