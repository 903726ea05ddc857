"""Executors: where a job's items run — in this process (``local``) or on a Ray cluster (``ray``).

Both give the same files: an item's output depends only on the job parameters and the item (its seed), so
the merged COCO is byte-identical whichever executor ran it. Ray runs the items as a Ray Data
``map_batches`` over an actor pool: one model per actor, ``num_gpus=1`` per actor when the cluster has GPUs,
and one CPU left for Ray Data's own tasks (an actor pool holding every CPU hangs).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Protocol, Sequence

from .spec import Item, JobSpec, RayBatchWorker, load_worker_class

__all__ = ["Executor", "ExecutorError", "LocalExecutor", "RayExecutor", "make_executor", "EXECUTORS"]

EXECUTORS = ("local", "ray")
OnResult = Callable[[Mapping[str, Any]], None]


class ExecutorError(RuntimeError):
    """The executor itself stopped (e.g. a Ray actor could not start); finished items are kept."""


class Executor(Protocol):
    """Runs items of a job and reports each item's ``{"id", "status", "error"}`` as it finishes."""

    def run(self, spec: JobSpec, items: Sequence[Item], on_result: OnResult) -> None: ...


class LocalExecutor:
    """In-process: one worker (one model), items in order."""

    def run(self, spec: JobSpec, items: Sequence[Item], on_result: OnResult) -> None:
        if not items:
            return
        worker = load_worker_class(spec.worker)(spec)
        try:
            for item in items:
                on_result(worker.run(item))
        finally:
            worker.teardown()


class RayExecutor:
    """Ray Data ``map_batches`` over an actor pool of ``workers`` actors.

    address: a cluster to join (``ray://…`` or ``host:port``); None uses ``RAY_ADDRESS`` or, without it, starts
    a local Ray. A Ray already initialised in this process is used as it is (and left running).
    workers: actors in the pool; default one per GPU, or every CPU but one.
    """

    def __init__(self, address: str | None = None, workers: int | None = None, batch_size: int = 1) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.address = address
        self.workers = workers
        self.batch_size = batch_size

    def _pool(self, ray) -> tuple[int, float]:
        """(actors, GPUs per actor) for the connected cluster; ValueError if it cannot leave a CPU free."""
        resources = ray.cluster_resources()
        cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
        if gpus:
            workers = self.workers or gpus
            if workers > gpus:
                raise ValueError(f"{workers} workers asked for but the Ray cluster has {gpus} GPUs (one per actor)")
            return workers, 1.0
        free = cpus - 1
        if free < 1:
            raise ValueError(f"the Ray cluster has {cpus} CPU(s); the actor pool needs one and Ray Data another")
        workers = self.workers or free
        if workers > free:
            raise ValueError(
                f"{workers} workers would take every CPU of the Ray cluster ({cpus}); use at most {free} so Ray "
                "Data keeps a CPU for its own tasks (a pool holding all CPUs hangs)"
            )
        return workers, 0.0

    def run(self, spec: JobSpec, items: Sequence[Item], on_result: OnResult) -> None:
        if not items:
            return
        try:
            import ray
            import ray.data
        except ImportError:
            raise ValueError("the ray executor needs Ray: pip install 'seediff[ray]'") from None
        started = False
        if not ray.is_initialized():
            address = self.address or os.environ.get("RAY_ADDRESS") or None
            ray.init(address=address, include_dashboard=False, log_to_driver=True,
                     logging_level="WARNING", configure_logging=True)
            started = True
        try:
            workers, gpus = self._pool(ray)
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = False  # the job shows its own bar, per item
            rows = [item.to_row() for item in items]
            ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), 32 * workers))
            out = ds.map_batches(
                RayBatchWorker, fn_constructor_kwargs={"spec": spec.to_dict()}, batch_size=self.batch_size,
                compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1, num_gpus=gpus,
                batch_format="numpy",
            )
            try:
                for row in out.iter_rows():
                    on_result({k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()})
            except Exception as exc:  # Ray wraps actor failures (e.g. the model failing to load) in its own types
                raise ExecutorError(f"the Ray job stopped: {_root_cause(exc)[:500]} "
                                    "(finished items are kept; rerun to resume)") from exc
        finally:
            if started:
                ray.shutdown()


def _root_cause(exc: BaseException) -> str:
    """The innermost 'SomeError: message' line of an exception chain (Ray nests the worker's traceback)."""
    lines = []
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        lines += [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        exc = exc.__cause__ or getattr(exc, "cause", None)
    errors = [ln for ln in lines if ("Error: " in ln or "Exception: " in ln) and not ln.startswith("File ")]
    return errors[-1] if errors else (lines[0] if lines else "unknown error")


def make_executor(name: str, *, ray_address: str | None = None, workers: int | None = None,
                  batch_size: int = 1) -> Executor:
    """An executor by name ('local' or 'ray')."""
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(ray_address, workers, batch_size)
    raise ValueError(f"executor must be one of {EXECUTORS}, got {name!r}")
