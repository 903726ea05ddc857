"""The mask-method protocol: what every method in ``seediff.methods`` provides to :func:`seediff.segment.segment`.

In the spirit of diffusers' attention processors: one small object per method, looked up by name. A method owns
its config class, turns recorded attention into per-class probability maps (with their thresholds and the
reasons classes came out empty), says what user input it takes, and may refine the exclusive labels.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Mapping

import torch

from ..capture import AttentionMaps
from ..seeds import UserPrompt, box_pixels

__all__ = ["MaskMethod", "Probs"]

Probs = tuple[torch.Tensor, list[float], dict[str, str]]


class MaskMethod(ABC):
    """A mask method. Subclasses set the class attributes and implement :meth:`probs`.

    name: the registry name ('seediff'). config_class: its frozen config dataclass (reference defaults).
    accepts_points: whether positive/negative clicks are used (else segment() refuses them).
    Boxes are accepted by every method: segment() cuts each class's map to its boxes (see :meth:`allowed`).
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = object
    accepts_points: ClassVar[bool] = False

    @abstractmethod
    def probs(self, maps: AttentionMaps, classes: list[str], config, hw: tuple[int, int], *, batch: int = 0,
              prompts: Mapping[str, UserPrompt] | None = None, image_hw: tuple[int, int] | None = None,
              cache: dict | None = None) -> Probs:
        """Per-class maps ``[N, H, W]`` at ``hw`` in [0, 1], their thresholds, and reasons for empty classes."""

    def allowed(self, maps: AttentionMaps, classes: list[str], config, hw: tuple[int, int], *, batch: int = 0,
                prompts: Mapping[str, UserPrompt] | None = None, image_hw: tuple[int, int] | None = None,
                cache: dict | None = None) -> list[torch.Tensor | None]:
        """Per class, bool ``[H, W]`` at ``hw``: the pixels its mask may take (None: anywhere). segment() cuts
        each class's map to it and :meth:`refine` gets it; default: inside the class's boxes when
        :meth:`clips_to_boxes`."""
        if not self.clips_to_boxes(config) or not prompts:
            return [None] * len(classes)
        return [box_pixels(prompts[c].boxes, image_hw or hw, hw) if c in prompts else None for c in classes]

    def clips_to_boxes(self, config) -> bool:
        """Whether a class's map is cut to its user boxes (default: always)."""
        return True

    def refine(self, maps: AttentionMaps, labels: torch.Tensor, n: int, config, hw: tuple[int, int],
               boxes_px: list, cache: dict | None, notes: list[str]) -> torch.Tensor:
        """Refined exclusive labels ``[H, W]`` (0 = background); the default keeps them as they are."""
        return labels

    def snap(self, config) -> tuple[int, tuple[int, ...], float, int] | None:
        """The boundary snap at the photo's size (:func:`seediff.refine.snap_labels`): (iterations, dilations,
        sigma_scale, max_side), or None (the default: labels are only resized)."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
