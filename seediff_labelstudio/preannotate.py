"""Bulk pre-annotation of a Label Studio project (``seediff preannotate``), on the seediff job engine.

What Label Studio's "Retrieve predictions" cannot do for thousands of tasks within its 100 s timeout: page
through every task with the SDK, skip tasks that already hold a prediction of the current
``model_version``, predict each remaining task exactly as the backend does (:mod:`.predict`: same options,
same seed, same model_version) and post the results as predictions in batches while the job runs.
Resumable twice over: tasks already predicted are skipped when listing, and results computed but not yet posted are kept per task in the work folder (the
job engine's records) and posted on the next run without recomputing.

Lives in ``seediff_labelstudio`` so the engine (``seediff``) never imports Label Studio glue; the CLI imports
this module lazily.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from seediff.calibrate import Calibration
from seediff.jobs import Item, ItemWorker, JobSpec, run_job
from seediff.jobs.engine import records
from seediff.jobs.store import JobStore

from .labels import LabelPlan, label_plan  # shared with the backend
from .predict import PredictOptions, model_version_for, predict_photo

__all__ = ["LabelPlan", "label_plan", "model_version_for", "options_of", "preannotate_project", "PreannotateWorker",
           "PreannotateSummary", "make_fetcher"]

IDENTITY = ("model", "dtype", "mode", "t", "steps", "seed", "method", "drop_absent", "presence", "threads", "model_version",
            "plan", "project", "url", "prompt_template", "control", "calibration")


def options_of(params: Mapping[str, Any]) -> PredictOptions:
    """The prediction options a preannotate job's parameters name (the backend's, from its settings)."""
    return PredictOptions(model=str(params["model"]), method=params.get("method", "seediff"),
                          photo_mode=params.get("mode", "noise"), t=int(params.get("t", 100)),
                          steps=int(params.get("steps", 10)), seed=int(params.get("seed", 0)),
                          prompt_template=params.get("prompt_template") or PredictOptions.prompt_template,
                          drop_absent=bool(params.get("drop_absent", False)),
                          control=params.get("control", "polygon"), presence=bool(params.get("presence", True)),
                          calibration=Calibration.from_dict(params["calibration"]) if params.get("calibration") else None)


def _client(url: str, api_key: str):
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=url, api_key=api_key, timeout=120)


def make_fetcher(url: str, api_key: str):
    """The backend's safe fetcher for this Label Studio (allow-lists and caps from the environment, as the
    backend reads them: SEEDIFF_ALLOWED_ROOTS, SEEDIFF_ALLOWED_HOSTS, SEEDIFF_MAX_IMAGE_BYTES, …)."""
    from .fetch import Fetcher
    from .settings import Settings

    return Fetcher(dataclasses.replace(Settings.from_env(), ls_url=url.rstrip("/"), ls_api_key=api_key))


class PreannotateWorker(ItemWorker):
    """Per task: fetch the image, read it in photo mode with every class word, segment, build LS regions."""

    def setup(self) -> None:
        import torch

        from seediff.jobs.datasets import quiet_loaders
        from seediff.pipeline import load_model

        self._threads_before = torch.get_num_threads()
        torch.set_num_threads(int(self.params.get("threads") or 1))
        quiet_loaders()
        self.plan = LabelPlan(**self.params["plan"])
        self.options = options_of(self.params)
        self.model = load_model(self.params["model"], device=self.params.get("device"), dtype=self.params.get("dtype"))
        self.fetcher = make_fetcher(self.params["url"], self.params["api_key"])

    def teardown(self) -> None:
        import torch

        torch.set_num_threads(self._threads_before)

    def process(self, item: Item) -> dict[str, Any]:
        """The task's prediction (:func:`.predict.predict_photo`, as the backend makes it) for posting."""
        image = self.fetcher.fetch(item.data["image"])
        pred = predict_photo(self.model, image, self.plan, self.options, self.params.get("model_version"))
        return {"task": int(item.data["task"]), "result": pred["result"], "score": pred["score"], "files": []}


@dataclass
class PreannotateSummary:
    """What a preannotate run did."""

    project: int
    model_version: str
    tasks: int = 0
    already: int = 0
    posted: int = 0
    failed: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        text = (f"project {self.project}: {self.tasks} tasks, {self.already} already had {self.model_version!r}, "
                f"{self.posted} predictions posted, {len(self.failed)} failed")
        for item_id, err in sorted(self.failed.items()):
            text += f"\n  failed {item_id}: {err}"
        if self.failed:
            text += "\nrerun the same command to retry the failed tasks"
        return text


def _prediction_versions(task: Any) -> set[str]:
    """model_version of every prediction a listed task holds."""
    preds = getattr(task, "predictions", None)
    if preds is None and isinstance(task, Mapping):
        preds = task.get("predictions")
    out = set()
    for p in preds or []:
        v = p.get("model_version") if isinstance(p, Mapping) else getattr(p, "model_version", None)
        if v is not None:
            out.add(str(v))
    return out


def _tasks(client, project: int, page_size: int) -> Iterator[Any]:
    """Every task of the project, page by page (with predictions)."""
    yield from client.tasks.list(project=project, fields="all", page_size=page_size)


def preannotate_project(**kwargs: Any) -> PreannotateSummary:
    """Predict every task of a project lacking a ``model_version`` prediction; post them in batches.

    Keyword arguments as :func:`_preannotate`. A Label Studio that cannot be reached is reported as a
    ``ValueError`` (results computed so far are kept in the work folder and posted by the next run).
    """
    import httpx

    try:
        return _preannotate(**kwargs)
    except httpx.TransportError as exc:
        raise ValueError(f"cannot reach Label Studio at {kwargs.get('url')}: {type(exc).__name__}: {exc}; "
                         "rerun the same command to resume") from None


def _preannotate(*, url: str, api_key: str, project: int, model: str, device: str | None = None,
                        dtype: str | None = None, model_version: str | None = None, mode: str = "noise",
                        t: int = 100, seed: int = 0, method: str = "seediff", threads: int = 1, batch: int = 32,
                        page_size: int = 100, work_dir: str | os.PathLike | None = None, executor=None,
                        progress: bool = True, prompt_template: str = PredictOptions.prompt_template,
                        steps: int = 10, drop_absent: bool = False, control: str = "polygon",
                        presence: bool = True, calibration: Mapping[str, Any] | None = None) -> PreannotateSummary:
    """See :func:`preannotate_project`."""
    from label_studio_sdk import PredictionRequest
    from label_studio_sdk.core.api_error import ApiError

    url = url.rstrip("/")
    if not re.match(r"^https?://", url):
        raise ValueError(f"--url must start with http:// or https://, got {url!r}")
    client = _client(url, api_key)
    try:
        proj = client.projects.get(id=project)
    except ApiError as exc:
        raise ValueError(f"cannot read project {project} at {url}: HTTP {exc.status_code} {str(exc.body)[:200]}") from None
    plan = label_plan(proj.label_config)
    options = PredictOptions(model=str(model), method=method, photo_mode=mode, t=t, steps=steps, seed=seed,
                             prompt_template=prompt_template, drop_absent=drop_absent, control=control,
                             presence=presence, calibration=Calibration.from_dict(calibration) if calibration else None)
    version = model_version or options.model_version
    summary = PreannotateSummary(project, version)
    items = []
    from tqdm.auto import tqdm

    listing = tqdm(_tasks(client, project, page_size), desc=f"listing project {project}", unit="task",
                   disable=not progress, file=sys.stderr)
    for task in listing:
        summary.tasks += 1
        if version in _prediction_versions(task):
            summary.already += 1
            continue
        ref = (task.data or {}).get(plan.data_key)
        item_id = f"task-{task.id}"
        if not isinstance(ref, str) or not ref:
            summary.failed[item_id] = f"task data has no {plan.data_key!r} image reference"
            continue
        items.append(Item(item_id, seed, {"task": int(task.id), "image": ref}))  # the options' seed, as the backend
    params = dict(model=model, device=device, dtype=dtype, mode=mode, t=t, steps=steps, seed=seed, method=method,
                  drop_absent=drop_absent, presence=presence, threads=threads, model_version=version, plan=plan.to_dict(),
                  project=project, url=url, api_key=api_key, prompt_template=options.prompt_template, control=control,
                  calibration=calibration)
    root = Path(work_dir or f"seediff-preannotate-{project}").resolve()
    spec = JobSpec("preannotate", params, str(root), "seediff_labelstudio.preannotate:PreannotateWorker", IDENTITY)
    pending: list[dict[str, Any]] = []
    posted_ids: set[str] = set()
    store = JobStore(root)

    def send(chunk: list[dict[str, Any]]) -> None:
        client.projects.import_predictions(id=project, request=[
            PredictionRequest(task=r["task"], result=r["result"], score=r["score"], model_version=version)
            for r in chunk])

    def post(force: bool = False) -> None:
        if not pending or (len(pending) < batch and not force):
            return
        chunk = pending[:]
        pending.clear()
        try:
            send(chunk)
            ok = chunk
        except ApiError:  # one refused prediction fails the whole request: find it, post the others
            ok = []
            for rec in chunk:
                try:
                    send([rec])
                    ok.append(rec)
                except ApiError as exc:
                    summary.failed[str(rec["id"])] = (f"Label Studio refused the prediction: HTTP {exc.status_code} "
                                                      f"{str(exc.body)[:300]}")
        summary.posted += len(ok)
        posted_ids.update(str(r["id"]) for r in ok)

    def on_result(result: Mapping[str, Any]) -> None:
        if result["status"] == "done":
            rec = store.record(str(result["id"]))
            if rec is not None:
                pending.append(rec)
                post()

    report = run_job(spec, items, executor, progress=progress, desc=f"preannotate {project}", on_result=on_result)
    # Items done in an earlier, interrupted run (records kept, never posted) and anything still buffered.
    for rec in records(spec, [i.id for i in items]):
        if rec["id"] not in posted_ids and all(r["id"] != rec["id"] for r in pending):
            pending.append(rec)
    post(force=True)
    summary.failed.update({k: v for k, v in report.failed.items() if k not in summary.failed})
    print(f"posted {summary.posted} predictions ({version})", file=sys.stderr)
    return summary
