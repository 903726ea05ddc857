"""Capture: record Stable Diffusion's cross- and self-attention while an unmodified pipeline runs.

``with trace(pipe) as maps: pipe(prompt)`` installs recording processors (diffusers' sanctioned hook,
``unet.set_attn_processor``) on the layers asked for, keeps the original (fused SDPA) processors everywhere
else and restores them on exit, exceptions included. Attention is reduced on the fly — conditional CFG half,
mean over heads, fp32 running sums per layer over a timestep window — so memory does not grow with steps.

Levels: level ``k`` is the latent downsampled ``k`` times (SD 1.5 at 512 px: 0 → 64², 1 → 32², 2 → 16²,
3 → 8²). Each layer's (h, w) is derived from the latent shape at run time (non-square images work). The
recorded maps and their queries are :class:`seediff.attention.AttentionMaps` (re-exported here).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from .attention import AttentionMaps

__all__ = ["CaptureConfig", "AttentionMaps", "trace", "layer_levels", "RecordingProcessor"]

_LAYER_RE = re.compile(r"^(down_blocks|up_blocks|mid_block)(?:\.(\d+))?\..*\.(attn1|attn2)$")


@dataclass(frozen=True)
class CaptureConfig:
    """What to record. Defaults: what SeeDiff and the DiffuMask/DAAM baselines read, second half of denoising.

    cross_levels: levels whose cross-attention layers are recorded (None = every level).
    self_levels: levels whose *first decoder* self-attention layer is recorded (SeeDiff's expansion and
        background-consistency layers: ``up_blocks.*.attentions.0``); levels the model lacks are skipped.
    self_layers: explicit self-attention layer names instead of ``self_levels`` (e.g. for ablations).
    t_window: recorded timesteps as fractions of the scheduler's training steps, ``lo ≤ t/T < hi``
        (default (0, 0.5): t = T/2 → 0, the follow-up paper's best window).
    record_rows: how many leading (conditional) rows of the UNet batch are recorded (None = all); the rows
        after them run the layer's fused kernel unrecorded — rows read only for their noise prediction (the
        presence test's leave-one-out prompts) then cost what a plain pass costs.
    """

    cross_levels: tuple[int, ...] | None = None
    self_levels: tuple[int, ...] = (0, 1, 2)
    self_layers: tuple[str, ...] | None = None
    t_window: tuple[float, float] = (0.0, 0.5)
    record_rows: int | None = None

    def __post_init__(self) -> None:
        if self.record_rows is not None and (not isinstance(self.record_rows, int) or self.record_rows < 1):
            raise ValueError(f"record_rows must be a positive int or None, got {self.record_rows!r}")
        lo, hi = self.t_window
        if not (0.0 <= lo < hi <= 1.0):
            raise ValueError(f"t_window must satisfy 0 <= lo < hi <= 1, got {self.t_window}")
        for name in ("cross_levels", "self_levels"):
            levels = getattr(self, name)
            if levels is not None and any((not isinstance(v, int)) or v < 0 for v in levels):
                raise ValueError(f"{name} must be non-negative integers, got {levels}")


def layer_levels(unet: torch.nn.Module) -> dict[str, int]:
    """Map each attention layer name (``...attn1``/``...attn2``) to its level, from the UNet's block layout."""
    n = len(unet.config.block_out_channels)
    out: dict[str, int] = {}
    for proc_name in unet.attn_processors:
        name = proc_name.removesuffix(".processor")
        m = _LAYER_RE.match(name)
        if m is None:
            continue
        block, idx = m.group(1), m.group(2)
        if block == "down_blocks":
            out[name] = int(idx)
        elif block == "mid_block":
            out[name] = n - 1
        else:
            out[name] = n - 1 - int(idx)
    return out


def _select_layers(levels: dict[str, int], config: CaptureConfig) -> dict[str, str]:
    """Choose which layers to record: name → 'cross' | 'self'."""
    chosen: dict[str, str] = {}
    for name, level in levels.items():
        if name.endswith("attn2") and (config.cross_levels is None or level in config.cross_levels):
            chosen[name] = "cross"
    if config.self_layers is not None:
        unknown = [n for n in config.self_layers if n not in levels or not n.endswith("attn1")]
        if unknown:
            raise ValueError(f"unknown self-attention layers {unknown}; available: {sorted(n for n in levels if n.endswith('attn1'))}")
        chosen.update({n: "self" for n in config.self_layers})
    else:
        for level in config.self_levels:
            ups = [n for n, lv in levels.items() if lv == level and n.startswith("up_blocks.") and n.endswith("attn1")]
            if ups:
                chosen[ups[0]] = "self"  # attn_processors is in module order: first decoder layer at this level
    return chosen


class _Store:
    """fp32 running sums of head-averaged attention per layer, for the conditional images only."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.active = False
        self.cfg: bool | None = None  # None: ask the pipeline (``do_classifier_free_guidance``)
        self.timesteps: list[int] = []
        self.latent_hw: tuple[int, int] | None = None
        self.input_ids: torch.Tensor | None = None
        self.record_rows: int | None = None

    def add(self, name: str, probs: torch.Tensor, heads: int) -> None:
        """Fold one call's probabilities ``[B·heads, N, M]`` into the running sum (mean over heads, fp32)."""
        bh, n, m = probs.shape
        x = probs.view(bh // heads, heads, n, m).float().mean(1)
        if name in self.sums:
            self.sums[name] += x
            self.counts[name] += 1
        else:
            self.sums[name] = x.clone()
            self.counts[name] = 1


class RecordingProcessor:
    """Mirror of diffusers' ``AttnProcessor`` that also folds the attention probabilities into a store.

    Outside the timestep window it defers to the layer's original processor (fused SDPA), so steps that are
    not recorded cost nothing extra.
    """

    def __init__(self, store: _Store, name: str, original, cfg_getter: Callable[[], bool]) -> None:
        self.store, self.name, self.original, self.cfg_getter = store, name, original, cfg_getter

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if not self.store.active:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        query = attn.head_to_batch_dim(query)
        # Only the conditional rows are recorded (the first ``record_rows`` of them); the unconditional half and
        # unrecorded rows keep the fused SDPA kernel. Rows are (batch, head)-major: halves align.
        h = attn.heads
        split = query.shape[0] // 2 if self.cfg_getter() else 0
        end = query.shape[0] if self.store.record_rows is None else min(query.shape[0], split + self.store.record_rows * h)
        parts = []

        def fused(a: int, b: int) -> torch.Tensor:  # 4-D (batch, heads, tokens, dim): 3-D falls back to slow math
            mask = attention_mask[a:b].unflatten(0, (-1, h)) if attention_mask is not None else None
            return F.scaled_dot_product_attention(
                query[a:b].unflatten(0, (-1, h)), key[a:b].unflatten(0, (-1, h)), value[a:b].unflatten(0, (-1, h)),
                attn_mask=mask, scale=attn.scale).flatten(0, 1)

        if split:
            parts.append(fused(0, split))
        mask_c = attention_mask[split:end] if attention_mask is not None else None
        attention_probs = attn.get_attention_scores(query[split:end], key[split:end], mask_c)
        self.store.add(self.name, attention_probs.detach(), h)
        parts.append(torch.bmm(attention_probs, value[split:end]))
        if end < query.shape[0]:
            parts.append(fused(end, query.shape[0]))
        hidden_states = torch.cat(parts) if len(parts) > 1 else parts[0]
        hidden_states = attn.batch_to_head_dim(hidden_states)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _timestep_value(args: tuple, kwargs: dict) -> float | None:
    """The UNet call's timestep (positional arg 1 or ``timestep=``) as a float, if scalar."""
    t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
    if t is None:
        return None
    if isinstance(t, torch.Tensor):
        return float(t.flatten()[0].item()) if t.numel() else None
    return float(t)


@contextlib.contextmanager
def trace(pipe, config: CaptureConfig | None = None, *, cfg: bool | None = None) -> Iterator[AttentionMaps]:
    """Record attention during pipeline calls inside the block; the yielded maps are filled on exit.

    ``cfg``: whether the UNet batch holds [unconditional, conditional] halves; None asks the pipeline
    (``do_classifier_free_guidance``), as for a normal ``pipe(...)`` call.
    """
    config = config or CaptureConfig()
    unet = pipe.unet
    levels = layer_levels(unet)
    chosen = _select_layers(levels, config)
    store = _Store()
    store.cfg = cfg
    store.record_rows = config.record_rows
    maps = AttentionMaps(levels={n: levels[n] for n in chosen})
    n_train = int(getattr(pipe.scheduler.config, "num_train_timesteps", 1000))
    lo, hi = config.t_window[0] * n_train, config.t_window[1] * n_train

    def cfg_getter() -> bool:
        if store.cfg is not None:
            return store.cfg
        return bool(getattr(pipe, "do_classifier_free_guidance", False))

    def unet_pre_hook(module, args, kwargs):
        t = _timestep_value(args, kwargs)
        sample = args[0] if args else kwargs["sample"]
        store.latent_hw = (int(sample.shape[-2]), int(sample.shape[-1]))
        store.active = t is not None and (lo <= t < hi or (hi >= n_train and t >= lo))
        if store.active:
            store.timesteps.append(int(t))

    def text_pre_hook(module, args, kwargs):
        ids = args[0] if args else kwargs.get("input_ids")
        if store.input_ids is None and ids is not None:  # first call = the prompt; later ones = negative prompt
            store.input_ids = ids.detach().cpu()

    originals = dict(unet.attn_processors)
    procs = dict(originals)
    for name, kind in chosen.items():
        key = name + ".processor"
        procs[key] = RecordingProcessor(store, name, originals[key], cfg_getter)
    handles = [unet.register_forward_pre_hook(unet_pre_hook, with_kwargs=True)]
    text_encoder = getattr(pipe, "text_encoder", None)
    if text_encoder is not None:
        handles.append(text_encoder.register_forward_pre_hook(text_pre_hook, with_kwargs=True))
    unet.set_attn_processor(procs)  # the dict form empties the dict passed; `originals` stays intact
    try:
        yield maps
    finally:
        unet.set_attn_processor(dict(originals))
        for h in handles:
            h.remove()
    _fill(maps, store, chosen, pipe)


def _fill(maps: AttentionMaps, store: _Store, chosen: dict[str, str], pipe) -> None:
    """Turn the store's running sums into means and attach prompt tokens."""
    for name, total in store.sums.items():
        mean = total / store.counts[name]
        (maps.cross if chosen[name] == "cross" else maps.self_attn)[name] = mean
    maps.latent_hw = store.latent_hw
    maps.timesteps = store.timesteps
    tok = getattr(pipe, "tokenizer", None)
    if tok is not None:
        maps.tokenize = lambda w: list(tok(w, add_special_tokens=False).input_ids)
        maps.decode = lambda ids: tok.decode(ids)
        maps.special_ids = frozenset(i for i in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) if i is not None)
    if store.input_ids is not None and maps.cross:
        ids = [row.tolist() for row in store.input_ids]
        b = maps.batch_size
        per = max(1, b // max(1, len(ids)))  # num_images_per_prompt repeats each prompt's embedding
        maps.token_ids = [ids[min(i // per, len(ids) - 1)] for i in range(b)]


def upsample(x: torch.Tensor, size: Sequence[int], mode: str = "bicubic") -> torch.Tensor:
    """Resize a ``[h, w]`` or ``[C, h, w]`` map to ``size`` (fp32), keeping corners aligned like the reference."""
    t = x.float()
    squeeze = t.ndim == 2
    t = t[None, None] if squeeze else t[None]
    out = F.interpolate(t, size=tuple(size), mode=mode, align_corners=False if mode != "nearest" else None)
    return out[0, 0] if squeeze else out[0]
