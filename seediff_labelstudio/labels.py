"""Labeling config → what to predict: the Image to read, the PolygonLabels/BrushLabels controls on it, and
each label's class words (its ``predicted_values`` attribute, else its value lowercased: "Traffic light" →
"traffic light"). Parsed with label_studio_sdk's ``LabelInterface``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LabelPlan", "label_plan", "plan_results"]


@dataclass(frozen=True)
class LabelPlan:
    """What to predict for a labeling config: the Image to read, the controls, and label → class words."""

    to_name: str
    data_key: str
    polygon: str | None
    brush: str | None
    words: dict[str, list[str]]  # label value → class words (predicted_values, else the label lowercased)
    where: dict[str, list[str]]  # label value → which of 'polygon'/'brush' has it

    @property
    def classes(self) -> list[str]:
        """Every class word, once, in label order (prompt order)."""
        return list(dict.fromkeys(w for ws in self.words.values() for w in ws))

    def to_dict(self) -> dict[str, Any]:
        return {"to_name": self.to_name, "data_key": self.data_key, "polygon": self.polygon, "brush": self.brush,
                "words": self.words, "where": self.where}


def label_plan(config: str) -> LabelPlan:
    """The :class:`LabelPlan` of a labeling config: its first Image with PolygonLabels and/or BrushLabels."""
    from label_studio_sdk.label_interface import LabelInterface

    li = LabelInterface(config)
    images = {o.name: o for o in li.objects if o.tag == "Image"}
    if not images:
        raise ValueError("the project's labeling config has no <Image>: seediff pre-annotates images")
    controls: dict[str, Any] = {}
    for control in li.controls:
        kind = {"PolygonLabels": "polygon", "BrushLabels": "brush"}.get(control.tag)
        if kind and kind not in controls and control.to_name and control.to_name[0] in images:
            if not controls or control.to_name[0] == next(iter(controls.values())).to_name[0]:
                controls[kind] = control
    if not controls:
        raise ValueError("the project's labeling config has no <PolygonLabels> or <BrushLabels> on an <Image>")
    to_name = next(iter(controls.values())).to_name[0]
    words: dict[str, list[str]] = {}
    where: dict[str, list[str]] = {}
    for kind, control in controls.items():
        for value, label in getattr(control, "labels_attrs", {}).items():
            attrs = getattr(label, "attr", None) or {}
            predicted = str(attrs.get("predicted_values") or value.lower())
            words.setdefault(value, [w.strip() for w in predicted.split(",") if w.strip()])
            where.setdefault(value, []).append(kind)
    if not words:
        raise ValueError("the project's PolygonLabels/BrushLabels have no <Label>s")
    return LabelPlan(to_name, images[to_name].value_name, getattr(controls.get("polygon"), "name", None),
                     getattr(controls.get("brush"), "name", None), words, where)


def plan_results(plan: LabelPlan, masks, size: tuple[int, int]) -> list[dict[str, Any]]:
    """Label Studio regions for a plan from ClassMasks over its class words (a label's words are OR-ed).

    Each label goes only to the control(s) that hold it (Label Studio rejects a region whose label its control
    lacks); ``size`` is the image's natural (width, height).
    """
    from seediff.lsformat import ls_results

    by_word = {w: (np.asarray(m, bool), float(s)) for w, m, s in zip(masks.labels, masks.masks, masks.scores)}
    groups: dict[tuple[str, ...], list[tuple[str, np.ndarray, float]]] = {}
    for label, words in plan.words.items():
        parts = [by_word[w] for w in words if w in by_word]
        if not parts:
            continue
        mask = np.logical_or.reduce([m for m, _ in parts])
        score = float(np.mean([s for _, s in parts]))
        groups.setdefault(tuple(plan.where[label]), []).append((label, mask, score))
    result: list[dict[str, Any]] = []
    for kinds, entries in groups.items():
        result += ls_results(entries, to_name=plan.to_name, image_size=size,
                             polygon_from_name=plan.polygon if "polygon" in kinds else None,
                             brush_from_name=plan.brush if "brush" in kinds else None)
    return result
