"""Bounded state and work for the backend: an LRU map capped by entry count and by bytes, a byte count of the
arrays an object holds (what a cached predictor or a project's stored config costs in memory), and a JSON parse
whose time and memory are bounded before it starts."""

from __future__ import annotations

import dataclasses
import gc
import json
import sys
import threading
from collections import OrderedDict
from typing import Any, Callable, Generic, Hashable, Iterator, TypeVar

import numpy as np

__all__ = ["BoundedLRU", "held_bytes", "parse_json", "TooManyValues", "segment_bytes", "SEGMENT_FIXED_BYTES"]

V = TypeVar("V")


def held_bytes(obj: Any) -> int:
    """Bytes of the arrays, tensors, images and strings reachable from ``obj`` through dicts, lists, tuples,
    dataclasses, and the attributes of ``obj`` itself (one level: a model an object points to is not walked).

    Each buffer is counted once: views of one numpy array or one torch storage count as that buffer.
    """
    seen: set[int] = set()
    buffers: set[tuple[str, int]] = set()
    total = 0
    stack: list[tuple[Any, bool]] = [(obj, True)]
    while stack:
        item, top = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        buf = _buffer(item)
        if buf is None:
            stack.extend((child, False) for child in _children(item, top))
        elif buf[0] not in buffers:
            buffers.add(buf[0])
            total += buf[1]
    return total


def _buffer(item: Any) -> tuple[tuple[str, int], int] | None:
    """(a key for the memory ``item`` holds, its bytes) for a buffer-like object; None for anything else."""
    if isinstance(item, (str, bytes, bytearray)):
        return ("id", id(item)), sys.getsizeof(item)
    if isinstance(item, np.ndarray):
        base = item
        while isinstance(base.base, np.ndarray):
            base = base.base
        return ("id", id(base)), int(base.nbytes)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(item, torch.Tensor):
        storage = item.untyped_storage()
        return ("ptr", int(storage.data_ptr())), int(storage.nbytes())
    image = sys.modules.get("PIL.Image")
    if image is not None and isinstance(item, image.Image):
        w, h = item.size
        return ("id", id(item)), w * h * len(item.getbands()) * (4 if item.mode in ("I", "F") else 1)
    return None


def _children(item: Any, top: bool) -> list[Any]:
    """What a container (or, for the top object, its attributes) holds."""
    if isinstance(item, dict):
        return [x for kv in item.items() for x in kv]
    if isinstance(item, (list, tuple, set, frozenset)):
        return list(item)
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return [getattr(item, f.name) for f in dataclasses.fields(item)]
    if top and hasattr(item, "__dict__"):
        return list(vars(item).values())
    return []


class BoundedLRU(Generic[V]):
    """A thread-safe least-recently-used map holding at most ``max_items`` entries and ``max_bytes`` bytes.

    ``size(value)`` gives an entry's bytes; putting a value makes it the most recent and evicts the least recent
    entries until both caps hold. A value over ``max_bytes`` on its own is not kept (``put`` returns False).
    """

    def __init__(self, max_items: int, max_bytes: int, size: Callable[[V], int] = held_bytes) -> None:
        if max_items < 0 or max_bytes < 0:
            raise ValueError(f"caps must be >= 0, got max_items={max_items}, max_bytes={max_bytes}")
        self.max_items, self.max_bytes, self._size = max_items, max_bytes, size
        self._data: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable, default: V | None = None) -> V | None:
        """The value (now the most recent), or ``default``."""
        with self._lock:
            if key not in self._data:
                return default
            self._data.move_to_end(key)
            return self._data[key][0]

    def pop(self, key: Hashable, default: V | None = None) -> V | None:
        """Remove and return the value, or ``default``."""
        with self._lock:
            if key not in self._data:
                return default
            value, size = self._data.pop(key)
            self._bytes -= size
            return value

    def put(self, key: Hashable, value: V) -> bool:
        """Store ``value`` as the most recent; False (and nothing stored) if it alone is over the byte cap."""
        size = int(self._size(value))
        with self._lock:
            if key in self._data:
                self._bytes -= self._data.pop(key)[1]
            if self.max_items == 0 or size > self.max_bytes:
                return False
            self._data[key] = (value, size)
            self._bytes += size
            while len(self._data) > self.max_items or self._bytes > self.max_bytes:
                self._bytes -= self._data.popitem(last=False)[1][1]
            return True

    def trim(self, max_bytes: int) -> None:
        """Evict least recent entries until at most ``max_bytes`` are held (room for a task about to run)."""
        with self._lock:
            while self._data and self._bytes > max(0, max_bytes):
                self._bytes -= self._data.popitem(last=False)[1][1]

    @property
    def nbytes(self) -> int:
        """Bytes of the stored values (as ``size`` measured them)."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    def keys(self) -> Iterator[Hashable]:
        """Keys, least recent first (a snapshot)."""
        with self._lock:
            return iter(list(self._data))


class TooManyValues(ValueError):
    """A JSON body holds more values than the cap allows (refused before parsing)."""


def parse_json(body: bytes, max_values: int) -> Any:
    """``json.loads`` of a request body whose cost is bounded before it starts: at most ``max_values`` values
    (counted as the body's '{', '[' and ',' bytes, an upper bound), parsed with the cyclic garbage collector
    paused (with it running, a body of many small lists takes seconds: each collection walks them all).

    TooManyValues when over the cap; ``json.JSONDecodeError`` (a ValueError) when it is not JSON.
    """
    values = body.count(b"{") + body.count(b"[") + body.count(b",")
    if values > max_values:
        raise TooManyValues(f"the JSON body has up to {values} values, over the {max_values} allowed")
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return json.loads(body)
    finally:
        if was_enabled:
            gc.enable()


SEGMENT_FIXED_BYTES = 96 * 2**20  # bands, probes and allocator slack, whatever the photo's size


def segment_bytes(size: tuple[int, int], classes: int) -> int:
    """Bytes one task needs to be read and segmented at its full size, predictor copies and transients included:
    96 MiB + (classes + 20) per pixel. The 96 MiB also holds the engine's boundary snap
    (``seediff.refine.SNAP_BYTES``, 64 MiB at most), which is freed before the bands of the full-size steps.
    Per pixel: the fetched photo (4 bytes: PIL keeps RGB in 4), the predictor's photo (4) and pixel array (3), the label map (1) and a mask per class (1 each), the largest
    transient, a polygon's half-pixel lattice and OpenCV's copy of it (8 on the mask's bounding box), and the
    allocator's slack. A bound on bench/hostile.py's calibration rows (a fresh backend per photo of shapes, from
    3000×3000 with 5 classes, one mask spanning the photo, to 6000×6000 with 2; results in
    bench/results/hostile.md; checked by tests/test_backend_hardening_process.py)."""
    w, h = size
    return SEGMENT_FIXED_BYTES + w * h * (classes + 20)
