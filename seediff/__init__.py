"""seediff: open-vocabulary segmentation masks from Stable Diffusion's own attention.

capture → seeds → expand → refine → masks → polygons/RLE → export. The public API is small:
``load_model`` (pipeline + the model's ``ModelDefaults``) or ``load_pipeline``, ``trace``/``CaptureConfig``/
``AttentionMaps``, ``generate``/``read_photo``, and (from the mask stages) ``segment``, ``SeeDiffPredictor``,
``ClassMasks``. Mask methods are plug-ins in ``seediff.methods``; prompts are built in ``seediff.prompts``;
formats live in ``seediff.convert``, ``seediff.coco``, ``seediff.lsformat`` (Label Studio regions) and
``seediff.lsexport`` (exports ↔ COCO).
"""

from __future__ import annotations

from .attention import AttentionMaps
from .capture import CaptureConfig, trace
from .masks import ClassMasks
from .modes import generate, read_photo
from .defaults import ModelDefaults
from .pipeline import LoadedModel, ModelLoadError, load_model, load_pipeline
from .predictor import SeeDiffPredictor
from .segment import segment  # the function; the stage module stays importable as seediff.segment

__all__ = [
    "AttentionMaps", "CaptureConfig", "trace", "generate", "read_photo", "load_pipeline", "load_model", "LoadedModel",
    "ModelDefaults", "ModelLoadError",
    "segment", "SeeDiffPredictor", "ClassMasks",
]
__version__ = "0.1.0"
