"""A job's folder: atomic writes, per-item records, error records, shard manifests and the job manifest.

Layout under the job root::

    job.json            the job's identity (kind + the parameters that decide an item's output)
    items/<id>.json     one record per finished item, written *last*, after every file it lists
    errors/<id>.json    why an item failed (removed when a rerun succeeds)
    shards/<name>.json  what one worker batch did (ids done / failed), written by the worker
    manifest.json       the run's summary: planned, done, failed, pending (written by the driver)

An item counts as done when its record exists and every file it lists exists; everything is written through
a temporary file in the same folder and ``os.replace``, so a killed run leaves whole files or nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ..coco import write_bytes_atomic, write_json

__all__ = ["JobStore", "JobMismatchError", "OutputError", "writing", "write_output", "png_bytes", "check_item_id",
           "slug", "read_json"]

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_TMP = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")


class JobMismatchError(ValueError):
    """The output folder holds a different job (other parameters); resuming it would mix two jobs."""


class OutputError(OSError):
    """An output file cannot be written (disk full, permission denied, read-only, not a folder, file too large).

    No item could succeed, so a job stops at once instead of failing item after item; what was written is whole
    (temporaries are removed) and a rerun after the cause is fixed resumes. ``filename`` is the file meant, never
    its temporary.
    """

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


@contextmanager
def writing(path: str | os.PathLike):
    """Turn an OSError raised while writing ``path`` into an OutputError naming ``path``."""
    try:
        yield
    except OutputError:
        raise
    except OSError as exc:
        raise OutputError(exc.errno, exc.strerror or str(exc), str(path)) from None


def _write_json(path: Path, obj: Any) -> None:
    """:func:`seediff.coco.write_json` (atomic) with write failures as OutputError naming ``path``."""
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, obj)


def check_item_id(item_id: str) -> str:
    """The id, if it is safe as a file name (letters, digits, '.', '_', '-'; not starting with a dot)."""
    if not isinstance(item_id, str) or not _ID.match(item_id):
        raise ValueError(f"item id must match {_ID.pattern} (it names files), got {item_id!r}")
    return item_id


def slug(text: str) -> str:
    """A file-name-safe form of a class name or path: runs of other characters become '_'."""
    out = re.sub(r"[^A-Za-z0-9._-]+", "_", text.strip()).strip("_.")
    if not out:
        raise ValueError(f"{text!r} has no letters or digits to name a file with")
    return out


def write_output(path: str | os.PathLike, data: bytes) -> None:
    """Write an output file whole or not at all (:func:`seediff.coco.write_bytes_atomic`), making its folder.

    Failures raise OutputError naming ``path``.
    """
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, data)


def png_bytes(image: Any) -> bytes:
    """PNG bytes of a PIL image or a uint8/bool array (bool → 0/255 grey); deterministic for equal pixels."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        arr = image.astype(np.uint8) * 255 if image.dtype == bool else image
        if arr.dtype != np.uint8:
            raise TypeError(f"arrays written as PNG must be uint8 or bool, got {arr.dtype}")
        image = Image.fromarray(arr)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file (UTF-8)."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as {"a.b": value} (to name the parameters two jobs differ in)."""
    if not isinstance(obj, dict):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(_flatten(v, key) if isinstance(v, dict) else {key: v})
    return out


class JobStore:
    """Files of one job under ``root`` (see the module docstring)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    # ---- paths ---------------------------------------------------------------------------------------
    def path(self, rel: str) -> Path:
        """Absolute path of a file given relative to the root (refuses to leave the root)."""
        p = (self.root / rel).resolve()
        if self.root.resolve() not in p.parents and p != self.root.resolve():
            raise ValueError(f"{rel!r} is outside the job folder {self.root}")
        return p

    def record_path(self, item_id: str) -> Path:
        return self.root / "items" / f"{check_item_id(item_id)}.json"

    def error_path(self, item_id: str) -> Path:
        return self.root / "errors" / f"{check_item_id(item_id)}.json"

    # ---- job identity --------------------------------------------------------------------------------
    def claim(self, identity: Mapping[str, Any]) -> bool:
        """Write ``job.json`` for a new job, or check it matches; True when the folder already held this job.

        Raises JobMismatchError naming the parameters that differ.
        """
        with writing(self.root):
            self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / "job.json"
        if path.exists():
            old = read_json(path)
            new = json.loads(json.dumps(identity))
            if old != new:
                flat_old, flat_new = _flatten(old), _flatten(new)
                keys = sorted(k for k in set(flat_old) | set(flat_new) if flat_old.get(k) != flat_new.get(k))
                raise JobMismatchError(
                    f"{self.root} already holds a different job (differs in: {', '.join(keys)}); "
                    "rerun with the same arguments to resume it, or choose another output folder"
                )
            return True
        _write_json(path, dict(identity))
        return False

    def clean_temporaries(self) -> int:
        """Remove temporary files a killed run left behind; returns how many."""
        n = 0
        if not self.root.exists():
            return 0
        for dirpath, _, files in os.walk(self.root):
            for name in files:
                if _TMP.match(name):
                    Path(dirpath, name).unlink(missing_ok=True)
                    n += 1
        return n

    # ---- items ---------------------------------------------------------------------------------------
    def write_file(self, rel: str, data: bytes) -> str:
        """Atomically write an item's file (path relative to the root); returns ``rel``."""
        write_output(self.path(rel), data)
        return rel

    def write_record(self, item_id: str, record: Mapping[str, Any]) -> None:
        """Mark an item done: its record (listing its files under ``files``), written last; clears its error."""
        for rel in record.get("files", []):
            if not self.path(rel).is_file():
                raise RuntimeError(f"item {item_id}: record lists {rel} but it was not written")
        _write_json(self.record_path(item_id), dict(record) | {"id": item_id})
        self.error_path(item_id).unlink(missing_ok=True)

    def write_error(self, item_id: str, error: str, detail: str = "") -> None:
        """Record why an item failed (its record, if any, is left alone)."""
        _write_json(self.error_path(item_id), {"id": item_id, "error": error, "traceback": detail})

    def record(self, item_id: str) -> dict[str, Any] | None:
        """The item's record if the item is done (record readable and its files present), else None."""
        path = self.record_path(item_id)
        try:
            rec = read_json(path)
        except (OSError, ValueError):
            return None
        if not isinstance(rec, dict) or rec.get("id") != item_id:
            return None
        if not all(self.path(rel).is_file() for rel in rec.get("files", [])):
            return None
        return rec

    def error(self, item_id: str) -> str | None:
        """The recorded error of an item, if any."""
        try:
            return str(read_json(self.error_path(item_id)).get("error", "unknown error"))
        except (OSError, ValueError, AttributeError):
            return None

    def done_ids(self, ids: Iterable[str]) -> set[str]:
        """Those of ``ids`` that are done."""
        return {i for i in ids if self.record(i) is not None}

    # ---- manifests -----------------------------------------------------------------------------------
    def write_shard(self, results: list[Mapping[str, Any]], worker: str) -> str:
        """A worker's summary of one batch, named by the batch's ids (same batch → same file); returns the name."""
        ids = sorted(str(r["id"]) for r in results)
        name = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
        _write_json(self.root / "shards" / f"{name}.json", {
            "ids": ids, "worker": worker,
            "done": sorted(str(r["id"]) for r in results if r["status"] == "done"),
            "failed": {str(r["id"]): str(r["error"]) for r in results if r["status"] == "failed"},
        })
        return name

    def write_manifest(self, planned: list[str], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Rebuild ``manifest.json`` from the records and error files of the planned items; returns it."""
        done, failed, pending = [], {}, []
        for item_id in planned:
            if self.record(item_id) is not None:
                done.append(item_id)
            elif (err := self.error(item_id)) is not None:
                failed[item_id] = err
            else:
                pending.append(item_id)
        manifest = {"planned": len(planned), "done": done, "failed": failed, "pending": pending,
                    "complete": not failed and not pending} | dict(extra or {})
        _write_json(self.root / "manifest.json", manifest)
        return manifest
