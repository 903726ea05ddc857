"""The job engine: deterministic items, per-item atomic writes, resumable runs, local or Ray executors.

``plan_*`` turns command arguments into a deterministic item list (ids and per-item seeds); ``run_job``
runs the items not yet done on an executor (``LocalExecutor`` in-process, ``RayExecutor`` as Ray Data
``map_batches`` over an actor pool) and writes ``manifest.json``; ``finish`` merges the items' COCO fragments
into one byte-stable COCO file. See ``store.py`` for the folder layout.
"""

from __future__ import annotations

from .datasets import annotate_spec, finish, merge, plan_annotate, plan_synthesize, synthesize_spec
from .engine import JobReport, records, run_job
from .executors import EXECUTORS, LocalExecutor, RayExecutor, make_executor
from .spec import Item, ItemWorker, JobSpec, derive_seed
from .store import JobMismatchError, JobStore

__all__ = [
    "Item", "ItemWorker", "JobSpec", "JobStore", "JobMismatchError", "JobReport", "derive_seed", "run_job",
    "records", "LocalExecutor", "RayExecutor", "make_executor", "EXECUTORS", "plan_synthesize", "plan_annotate",
    "synthesize_spec", "annotate_spec", "merge", "finish",
]
