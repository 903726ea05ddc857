"""Labeling config → what to predict: the Image to read, the PolygonLabels/BrushLabels controls on it, and
each label's class words (its ``predicted_values`` attribute, else its value lowercased: "Traffic light" →
"traffic light"). Parsed with label_studio_sdk's ``LabelInterface``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["CONTROLS", "LabelPlan", "label_plan", "plan_results", "pick_control"]

CONTROLS = ("polygon", "brush", "both")  # SEEDIFF_CONTROL: which control type a project's answers use


@dataclass(frozen=True)
class LabelPlan:
    """What to predict for a labeling config: the Image to read, the controls, and label → class words.

    ``polygon`` / ``brush``: the first PolygonLabels / BrushLabels control on the image; ``controls``: for
    each label value, the [polygon control, brush control] its regions go to (the first of each kind that has
    the label; None where no control of that kind has it), so every supported control on the image is served.
    """

    to_name: str
    data_key: str
    polygon: str | None
    brush: str | None
    words: dict[str, list[str]]  # label value → class words (predicted_values, else the label lowercased)
    where: dict[str, list[str]]  # label value → which of 'polygon'/'brush' has it
    controls: dict[str, list[str | None]] | None = None  # label value → [polygon from_name, brush from_name]

    @property
    def classes(self) -> list[str]:
        """Every class word, once, in label order (prompt order)."""
        return list(dict.fromkeys(w for ws in self.words.values() for w in ws))

    def targets(self, label: str) -> tuple[str | None, str | None]:
        """The (polygon, brush) control names a label's regions go to."""
        if self.controls is not None and label in self.controls:
            poly, brush = self.controls[label]
            return poly, brush
        kinds = self.where.get(label, [])
        return (self.polygon if "polygon" in kinds else None), (self.brush if "brush" in kinds else None)

    def to_dict(self) -> dict[str, Any]:
        return {"to_name": self.to_name, "data_key": self.data_key, "polygon": self.polygon, "brush": self.brush,
                "words": self.words, "where": self.where, "controls": self.controls}


_KINDS = {"PolygonLabels": "polygon", "BrushLabels": "brush"}


def label_plan(config: str) -> LabelPlan:
    """The :class:`LabelPlan` of a labeling config: the first Image with PolygonLabels and/or BrushLabels, and
    every such control on it."""
    from label_studio_sdk.label_interface import LabelInterface

    li = LabelInterface(config)
    images = {o.name: o for o in li.objects if o.tag == "Image"}
    if not images:
        found = ", ".join(f"<{o.tag} name={o.name!r}>" for o in li.objects) or "no objects"
        raise ValueError(f"the project's labeling config has no <Image> (it has {found}): seediff pre-annotates images")
    supported = [c for c in li.controls if c.tag in _KINDS and c.to_name and c.to_name[0] in images]
    if not supported:
        found = ", ".join(f"<{c.tag} name={c.name!r}>" for c in li.controls) or "no controls"
        raise ValueError("the project's labeling config has no <PolygonLabels> or <BrushLabels> on an <Image> "
                         f"(it has {found}): seediff answers with polygons or brush masks")
    to_name = supported[0].to_name[0]
    on_image = [c for c in supported if c.to_name[0] == to_name]
    first = {kind: next((c.name for c in on_image if _KINDS[c.tag] == kind), None) for kind in ("polygon", "brush")}
    words: dict[str, list[str]] = {}
    where: dict[str, list[str]] = {}
    controls: dict[str, list[str | None]] = {}
    for control in on_image:
        kind = _KINDS[control.tag]
        for value, label in getattr(control, "labels_attrs", {}).items():
            attrs = getattr(label, "attr", None) or {}
            predicted = str(attrs.get("predicted_values") or value.lower())
            words.setdefault(value, [w.strip() for w in predicted.split(",") if w.strip()])
            if kind not in where.setdefault(value, []):
                where[value].append(kind)
            slot = controls.setdefault(value, [None, None])
            i = 0 if kind == "polygon" else 1
            slot[i] = slot[i] or control.name
    if not words:
        raise ValueError("the project's PolygonLabels/BrushLabels have no <Label>s")
    return LabelPlan(to_name, images[to_name].value_name, first["polygon"], first["brush"], words, where, controls)


def pick_control(targets: tuple[str | None, str | None], control: str) -> tuple[str | None, str | None]:
    """One label's (polygon, brush) control names reduced to the project's control type, so annotators edit
    with one tool: 'polygon' keeps the polygon control when the label has one, 'brush' the brush control;
    'both' keeps both (then a mask with holes becomes a brush, others polygons). A label only one kind of
    control holds keeps that one (Label Studio rejects a region whose label its control lacks)."""
    if control not in CONTROLS:
        raise ValueError(f"control must be one of {', '.join(CONTROLS)}, got {control!r}")
    polygon, brush = targets
    if control == "polygon" and polygon is not None:
        return polygon, None
    if control == "brush" and brush is not None:
        return None, brush
    return polygon, brush


def plan_results(plan: LabelPlan, masks, size: tuple[int, int], control: str = "polygon",
                 only: set[str] | None = None) -> list[dict[str, Any]]:
    """Label Studio regions for a plan from ClassMasks over its class words (a label's words are OR-ed, its
    score is their scores weighted by mask area: the mean foreground probability over the union).

    Each label goes only to the control(s) that hold it (Label Studio rejects a region whose label its control
    lacks), of the type ``control`` picks (:func:`pick_control`); ``only``: the labels to answer (an interactive
    click answers its own label, not every label); ``size`` is the image's natural (width, height).
    """
    from seediff.lsformat import ls_results

    if control not in CONTROLS:
        raise ValueError(f"control must be one of {', '.join(CONTROLS)}, got {control!r}")
    by_word = {w: (np.asarray(m, bool), float(s)) for w, m, s in zip(masks.labels, masks.masks, masks.scores)}
    groups: dict[tuple[str | None, str | None], list[tuple[str, np.ndarray, float]]] = {}
    for label, words in plan.words.items():
        if only is not None and label not in only:
            continue
        parts = [by_word[w] for w in words if w in by_word]
        if not parts:
            continue
        mask = parts[0][0] if len(parts) == 1 else np.logical_or.reduce([m for m, _ in parts])  # no copy of one
        areas = np.array([m.sum() for m, _ in parts], float)  # words with empty masks do not dilute the score
        score = float(np.dot(areas, [s for _, s in parts]) / areas.sum()) if areas.sum() else 0.0
        groups.setdefault(pick_control(plan.targets(label), control), []).append((label, mask, score))
    result: list[dict[str, Any]] = []
    for (polygon, brush), entries in groups.items():
        result += ls_results(entries, to_name=plan.to_name, image_size=size, polygon_from_name=polygon,
                             brush_from_name=brush)
    return result
