"""What a job is: a kind, its parameters, a folder and a worker class; items with ids and derived seeds."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import socket
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Mapping

from .store import JobStore, OutputError, check_item_id

__all__ = ["Item", "JobSpec", "ItemWorker", "derive_seed", "load_worker_class"]


def derive_seed(global_seed: int, item_id: str) -> int:
    """A per-item seed in [0, 2^31) from the job seed and the item id (stable across processes and machines)."""
    digest = hashlib.sha256(f"{int(global_seed)}:{item_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@dataclass(frozen=True)
class Item:
    """One unit of work: an id (names its files), its seed, and what the worker needs (JSON-able)."""

    id: str
    seed: int
    data: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_item_id(self.id)

    def to_row(self) -> dict[str, Any]:
        """A flat row for Ray Data (data as JSON text, so every row has the same simple schema)."""
        return {"id": self.id, "seed": int(self.seed), "data": json.dumps(dict(self.data), sort_keys=True)}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "Item":
        """Inverse of :meth:`to_row`."""
        return cls(str(row["id"]), int(row["seed"]), json.loads(str(row["data"])))


@dataclass(frozen=True)
class JobSpec:
    """A job: ``kind``, parameters, output ``root`` and the ``worker`` class ("module:Class") that runs items.

    ``identity_keys``: the parameters that decide an item's output; a folder holding a job whose identity
    differs is refused (resuming would mix two jobs). Other parameters (device, executor) may change between
    a run and its resumption.
    """

    kind: str
    params: Mapping[str, Any]
    root: str
    worker: str
    identity_keys: tuple[str, ...] = ()

    def identity(self) -> dict[str, Any]:
        """The ``job.json`` content: kind and the identity parameters."""
        return {"kind": self.kind, "params": {k: self.params.get(k) for k in sorted(self.identity_keys)}}

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (sent to Ray actors)."""
        return {"kind": self.kind, "params": dict(self.params), "root": str(self.root), "worker": self.worker,
                "identity_keys": list(self.identity_keys)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "JobSpec":
        return cls(d["kind"], dict(d["params"]), str(d["root"]), d["worker"], tuple(d.get("identity_keys", ())))


def load_worker_class(path: str) -> type["ItemWorker"]:
    """Import ``"package.module:Class"``."""
    module, _, name = path.partition(":")
    if not module or not name:
        raise ValueError(f"worker must be 'module:Class', got {path!r}")
    cls = getattr(importlib.import_module(module), name, None)
    if not (isinstance(cls, type) and issubclass(cls, ItemWorker)):
        raise TypeError(f"{path} is not an ItemWorker subclass")
    return cls


class ItemWorker:
    """Runs items of one job: ``setup`` once (load the model), then ``process`` per item.

    ``process(item)`` writes the item's files through ``self.store.write_file`` and returns its record
    (a JSON-able dict with ``files``: the paths it wrote); :meth:`run` writes the record last and turns an
    exception into a failed result naming the item, so one bad item never stops the others — except an
    :class:`~seediff.jobs.store.OutputError` (disk full, permission denied), which stops the job.
    """

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.params = dict(spec.params)
        self.store = JobStore(spec.root)
        self.setup()

    def setup(self) -> None:
        """Load what every item needs (once per worker)."""

    def teardown(self) -> None:
        """Undo process-wide settings made in ``setup`` (called by the in-process executor)."""

    def process(self, item: Item) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def run(self, item: Item) -> dict[str, Any]:
        """Process one item and record the outcome: ``{"id", "status": "done"|"failed", "error"}``."""
        start = time.perf_counter()
        try:
            record = self.process(item)
            record = dict(record) | {"seed": item.seed}
            self.store.write_record(item.id, record)
        except OutputError:
            raise  # the output folder cannot be written: no other item can succeed either, the job stops
        except Exception as exc:  # noqa: BLE001 - any item failure is reported, the job goes on
            message = f"{type(exc).__name__}: {exc}"
            self.store.write_error(item.id, message, traceback.format_exc())
            return {"id": item.id, "status": "failed", "error": message, "seconds": time.perf_counter() - start}
        return {"id": item.id, "status": "done", "error": "", "seconds": time.perf_counter() - start}


class RayBatchWorker:
    """Ray Data actor: builds the job's worker once, runs each batch's items, writes a shard manifest,
    and returns only ids and statuses (no images travel through the object store)."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        job = JobSpec.from_dict(spec)
        self.worker = load_worker_class(job.worker)(job)
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, list]:
        rows = [dict(zip(batch.keys(), values)) for values in zip(*batch.values())]
        results = [self.worker.run(Item.from_row(row)) for row in rows]
        self.worker.store.write_shard(results, self.name)
        return {"id": [r["id"] for r in results], "status": [r["status"] for r in results],
                "error": [r["error"] for r in results], "seconds": [float(r["seconds"]) for r in results]}
