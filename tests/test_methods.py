"""Mask methods are plug-ins: a new method is one MaskMethod subclass registered in seediff.methods.METHODS, and
segment() runs it through the same generic loop (sizes, class checks, boxes, labels, refinement, resize)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from mask_fixtures import left_block_map, make_maps
from seediff.methods import METHODS, MaskMethod, get_method
from seediff.segment import segment


@dataclass(frozen=True)
class WholeConfig:
    work_max_side: int = 512
    flat_eps: float = 1e-4


class WholeImage(MaskMethod):
    """Every pixel to the first class whose word is in the prompt; halves the labels in refine."""

    name = "whole"
    config_class = WholeConfig

    def probs(self, maps, classes, config, hw, *, batch=0, prompts=None, image_hw=None, cache=None):
        probs = torch.zeros((len(classes), *hw))
        reasons = {w: f"{w!r} is not in the prompt" for w in classes if not maps.has_word(w, batch)}
        live = [i for i, w in enumerate(classes) if w not in reasons]
        if live:
            probs[live[0]] = 1.0
        return probs, [0.5] * len(classes), reasons

    def refine(self, maps, labels, n, config, hw, boxes_px, cache, notes):
        notes.append("refined")
        out = labels.clone()
        out[:, : hw[1] // 2] = 0
        return out


def test_a_new_method_is_one_class(monkeypatch):
    monkeypatch.setitem(METHODS, "whole", WholeImage())
    maps = make_maps({"dog": {2: left_block_map(2)}})
    r = segment(maps, ["dog", "car"], method="whole")
    h, w = r.masks.shape[1:]
    assert r.method == "whole" and isinstance(r.config, WholeConfig) and r.notes == ["refined"]
    assert r.masks[0][:, w // 2:].all() and not r.masks[0][:, : w // 2].any() and not r.masks[1].any()
    assert r.reasons["car"] == "'car' is not in the prompt"
    boxed = segment(maps, "dog", method="whole", boxes=[(w / 2, 0, w, h / 2)])  # boxes cut every method's maps
    assert boxed.masks[0][: h // 2 - 1, w // 2:].all() and not boxed.masks[0][h // 2 + 1:].any()
    with pytest.raises(ValueError, match="only method='seediff' uses them"):
        segment(maps, "dog", method="whole", points=[(1, 1)])
    with pytest.raises(TypeError, match="takes a WholeConfig"):
        segment(maps, "dog", method="whole", config=get_method("seediff").config_class())


def test_registry_and_protocol():
    assert sorted(METHODS) == ["daam", "diffumask", "seediff"]
    assert [m.accepts_points for m in (get_method("seediff"), get_method("diffumask"), get_method("daam"))] == [
        True, False, False]
    with pytest.raises(ValueError, match="method must be one of"):
        get_method("sam")
    with pytest.raises(TypeError, match="abstract"):
        MaskMethod()
    assert np.isclose(get_method("seediff").config_class().threshold, 0.3)
