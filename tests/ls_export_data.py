"""The checked-in Label Studio export of tests/data/ls_export and the masks it holds (shared by the format tests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data" / "ls_export"
CONFIG = (DATA / "config.xml").read_text()


def load(name: str) -> list:
    """One JSON file of the export folder."""
    return json.loads((DATA / name).read_text())


def box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """An h×w mask that is true on rows y0:y1 and columns x0:x1."""
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def dog_brush() -> np.ndarray:
    """The 'dog' brush of brush_task.json (see tests/data/ls_export/README.md)."""
    m = box(10, 20, 2, 8, 3, 10)
    m[4:6, 5:7] = False
    return m
