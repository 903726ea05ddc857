"""Model families and the mask levels each one reads: SD 1.x/2.x (4 UNet levels, attention at 0–3) and SDXL
(3 levels, no attention at level 0, transformer depth 2 at level 1 and 10 at level 2).

The methods' reference levels are SD 1.5's at 512 px (latent 64²): seeds and expansion at level 2 (16², a
quarter of the latent side), background consistency at levels 1 then 0 (32², 64²), DiffuMask over 2, 1, 0. A
level is a downsampling factor of the latent, so the same level index covers the same fraction of the image
in every family: SDXL at 1024 px (latent 128²) seeds and expands at level 2 (32², 60 transformer blocks of
its 70) and runs background consistency at level 1 (64²) only, because its level 0 (128²) has no attention at
all. These are derived from the UNet's layout, not tuned on real SDXL weights (none can be downloaded here).
:func:`with_layout_levels` puts them into a loaded model's :class:`~seediff.defaults.ModelDefaults`.
"""

from __future__ import annotations

import dataclasses

from .capture import layer_levels
from .defaults import ModelDefaults
from .methods import config_with

__all__ = ["model_family", "attention_levels", "level_defaults", "with_layout_levels"]

_REFERENCE = {"seediff": {"seed_levels": (2,), "expand_level": 2, "background_levels": (1, 0)},
              "diffumask": {"levels": (2, 1, 0)}}


def model_family(unet) -> str:
    """'sdxl' (added text/time conditioning), 'sd2' (1024-d text context), 'sd1' (768-d) or 'sd-layout' (other)."""
    cfg = unet.config
    if getattr(cfg, "addition_embed_type", None) == "text_time":
        return "sdxl"
    return {768: "sd1", 1024: "sd2"}.get(int(cfg.cross_attention_dim), "sd-layout")


def attention_levels(unet, kind: str) -> list[int]:
    """Levels with cross-attention ('cross'), or with decoder self-attention ('self', what expansion reads)."""
    if kind not in ("cross", "self"):
        raise ValueError(f"kind must be 'cross' or 'self', got {kind!r}")
    levels = layer_levels(unet)
    if kind == "cross":
        return sorted({lv for n, lv in levels.items() if n.endswith("attn2")})
    return sorted({lv for n, lv in levels.items() if n.endswith("attn1") and n.startswith("up_blocks.")})


def level_defaults(unet) -> dict[str, dict]:
    """Overrides of the methods' reference levels for a UNet lacking attention at some of them (SDXL: level 0);
    {} for SD 1.x/2.x. ValueError when even the seed/expansion level is missing (no sensible default)."""
    cross, self_ = set(attention_levels(unet, "cross")), set(attention_levels(unet, "self"))
    ref = _REFERENCE["seediff"]
    if not set(ref["seed_levels"]) <= cross or ref["expand_level"] not in self_:
        raise ValueError(f"this UNet has cross-attention at levels {sorted(cross)} and decoder self-attention at "
                         f"{sorted(self_)}: no default seed/expansion level; pass a SeeDiffConfig")
    out: dict[str, dict] = {}
    background = tuple(lv for lv in ref["background_levels"] if lv in self_)
    if background != ref["background_levels"]:
        out["seediff"] = {"background_levels": background}
    diffumask = tuple(lv for lv in _REFERENCE["diffumask"]["levels"] if lv in cross)
    if diffumask != _REFERENCE["diffumask"]["levels"]:
        out["diffumask"] = {"levels": diffumask}
    return out


def with_layout_levels(defaults: ModelDefaults, unet) -> ModelDefaults:
    """``defaults`` with the UNet layout's level overrides (:func:`level_defaults`) under the folder's own
    settings: a level field the folder's ``seediff.json`` leaves at its reference value takes the layout's."""
    try:
        layout = level_defaults(unet)
    except ValueError:
        return defaults  # an unusual layout: segment names the missing levels when a method asks for them
    configs = dict(defaults.configs)
    for method, fields in layout.items():
        reference = config_with(method, {})
        current = configs.get(method, reference)
        unset = {k: v for k, v in fields.items() if getattr(current, k) == getattr(reference, k)}
        configs[method] = dataclasses.replace(current, **unset)
    return dataclasses.replace(defaults, configs=configs)
