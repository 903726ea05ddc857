"""A model-free job for checking an executor or a cluster: per item, optionally wait, write a seeded PNG.

Its output depends only on the item seed, like the real jobs, so it shows whether a cluster reproduces the
in-process COCO byte for byte, and ``fail`` (item ids) exercises failure reporting and retry.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..coco import to_coco
from .spec import Item, ItemWorker, JobSpec, derive_seed
from .store import png_bytes

__all__ = ["plan_probe", "probe_spec", "ProbeWorker", "PROBE_CLASSES"]

PROBE_CLASSES = ("bright", "dark")


def plan_probe(n: int, seed: int = 0) -> list[Item]:
    """Items ``probe-00000`` … with derived seeds."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [Item(f"probe-{i:05d}", derive_seed(seed, f"probe-{i:05d}")) for i in range(n)]


def probe_spec(root: str | os.PathLike, *, sleep: float = 0.0, fail: Sequence[str] = (), size: int = 16) -> JobSpec:
    """The probe job under ``root``; items in ``fail`` raise (until the job is rerun without them)."""
    params = {"sleep": float(sleep), "fail": list(fail), "size": int(size), "classes": list(PROBE_CLASSES)}
    return JobSpec("probe", params, str(Path(root).resolve()), "seediff.jobs.probe:ProbeWorker", ("size",))


class ProbeWorker(ItemWorker):
    """Writes ``images/<id>.png`` (random from the seed) and its record with a two-class COCO fragment."""

    def process(self, item: Item) -> dict[str, Any]:
        if item.id in self.params.get("fail", []):
            raise RuntimeError(f"probe failure requested for {item.id}")
        time.sleep(float(self.params.get("sleep", 0.0)))
        n = int(self.params.get("size", 16))
        image = np.random.default_rng(item.seed).integers(0, 256, (n, n, 3), dtype=np.uint8)
        grey = image.mean(-1)
        file_name = f"images/{item.id}.png"
        files = [self.store.write_file(file_name, png_bytes(image))]
        entries = [("bright", grey >= 128, float(grey[grey >= 128].mean() / 255) if (grey >= 128).any() else 0.0),
                   ("dark", grey < 128, float(1 - grey[grey < 128].mean() / 255) if (grey < 128).any() else 0.0)]
        coco = to_coco([(file_name, entries)], categories=list(PROBE_CLASSES))
        return {"file_name": file_name, "files": files, "coco": coco}
