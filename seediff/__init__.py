"""seediff: open-vocabulary segmentation masks from Stable Diffusion's own attention.

capture → seeds → expand → refine → masks → polygons/RLE → export. The public API is small:
``load_pipeline``, ``trace``/``CaptureConfig``/``AttentionMaps``, ``generate``/``read_photo``, and (from the
mask stages) ``segment``, ``SeeDiffPredictor``, ``ClassMasks``; formats live in ``seediff.convert``,
``seediff.coco`` and ``seediff.lsformat``.
"""

from __future__ import annotations

from .capture import AttentionMaps, CaptureConfig, trace
from .modes import generate, read_photo
from .pipeline import ModelLoadError, load_pipeline

__all__ = [
    "AttentionMaps", "CaptureConfig", "trace", "generate", "read_photo", "load_pipeline", "ModelLoadError",
    "segment", "SeeDiffPredictor", "ClassMasks",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    """Lazy access to the mask stages (keeps ``import seediff`` light and free of cycles)."""
    if name == "segment":
        from .segment import segment

        return segment
    if name == "SeeDiffPredictor":
        from .predictor import SeeDiffPredictor

        return SeeDiffPredictor
    if name == "ClassMasks":
        from .masks import ClassMasks

        return ClassMasks
    raise AttributeError(f"module 'seediff' has no attribute {name!r}")
