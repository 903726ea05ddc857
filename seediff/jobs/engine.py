"""Run a job: claim the folder, skip finished items, run the rest on an executor, write the manifest.

Resumption needs nothing but rerunning with the same arguments: the item list is derived from them, an item
is done when its record (written last) and files exist, temporaries of a killed run are removed, and failed
items are simply pending again.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from .executors import Executor, LocalExecutor
from .spec import Item, JobSpec
from .store import JobStore, OutputError

__all__ = ["JobReport", "run_job"]


@dataclass
class JobReport:
    """What a run did: planned item ids, those already done before it, done and failed ones now."""

    planned: list[str]
    skipped: int
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        """Every planned item is done."""
        return not self.failed and not self.pending


def _progress(total: int, initial: int, desc: str, enabled: bool):
    """A tqdm bar on stderr (a no-op object when disabled)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="item", disable=not enabled, file=sys.stderr,
                dynamic_ncols=True)


def run_job(spec: JobSpec, items: Sequence[Item], executor: Executor | None = None, *,
            progress: bool = True, desc: str | None = None,
            on_result: Callable[[Mapping[str, Any]], None] | None = None) -> JobReport:
    """Run the items of ``spec`` not yet done on ``executor`` (default in-process); returns the report.

    A failing item is reported (id and error) and listed as failed in ``manifest.json``; the other items
    still run. Rerunning retries failed and unfinished items only. ``on_result`` is called in this process
    with each item's ``{"id", "status", "error"}`` as it finishes (e.g. to upload results while the job runs).
    """
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"item ids must be unique, repeated: {dupes[:10]}")
    store = JobStore(spec.root)
    store.claim(spec.identity())
    store.clean_temporaries()
    done_before = store.done_ids(ids)
    todo = [item for item in items if item.id not in done_before]
    report = JobReport(planned=ids, skipped=len(done_before))
    start = time.perf_counter()
    bar = _progress(len(ids), len(done_before), desc or spec.kind, progress)

    def handle(result) -> None:
        if result["status"] == "done":
            report.done.append(str(result["id"]))
        else:
            report.failed[str(result["id"])] = str(result["error"])
            bar.write(f"item {result['id']} failed: {result['error']}", file=sys.stderr)
        bar.update(1)
        if on_result is not None:
            on_result(result)

    stopped: BaseException | None = None
    try:
        (executor or LocalExecutor()).run(spec, todo, handle)
    except BaseException as exc:
        stopped = exc
        raise
    finally:
        bar.close()
        try:
            manifest = store.write_manifest(ids, {"kind": spec.kind})
        except OutputError:
            if stopped is None:
                raise
            manifest = None  # the disk that stopped the job refuses the manifest too: report the first error
        if manifest is not None:
            report.failed = dict(manifest["failed"])
            report.pending = list(manifest["pending"])
        report.seconds = time.perf_counter() - start
    return report


def records(spec: JobSpec, ids: Sequence[str]) -> list[dict[str, Any]]:
    """The records of the done items among ``ids``, in that order."""
    store = JobStore(spec.root)
    out = []
    for item_id in ids:
        rec = store.record(item_id)
        if rec is not None:
            out.append(rec)
    return out
