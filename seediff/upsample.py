"""Labels from the working size to the photo's size in O(pixels) bytes, bit for bit what the float stack gave.

The reference (:func:`reference_labels`) is ``argmax(bilinear(one_hot(labels)))``: a float32 ``[n + 1, H, W]``
stack at the photo's size (4·(n + 1) bytes per pixel, plus an int64 argmax and PyTorch's own copies) — about
1 GiB for a 36 MP photo with two classes. :func:`upsample_labels` gives the same label map as uint8 working in
bands, following the kernel PyTorch picks for that stack (``F.interpolate`` on CPU, float32):

- the *channels-last* kernel (a one-hot stack of more than 3 channels is channels-last in memory; 3 channels on
  one thread; any output with H + W <= 128) sums ``w00·e00 + w01·e01 + w10·e10 + w11·e11`` per channel; with
  one-hot ``e`` every product is exact, so rows are summed here in that order from the kernel's weights;
- the *generic* kernel (2 channels; 3 on several threads) nests a width pass inside a height pass, so the
  width pass at the working height, then the height pass on strips of columns (each strip's width left as it
  is: weights 1 and 0, exact), is the same arithmetic.

Both are checked against the reference once per process on a probe (:func:`exact_kinds`); a kind that does not
match (another PyTorch build) falls back to the reference.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["upsample_labels", "reference_labels", "kernel_kind", "exact_kinds", "share_inside", "BAND_PIXELS",
           "EXACT_SUM_PIXELS"]

BAND_PIXELS = 1 << 18  # output pixels per band or strip: ~10 MiB of transients, whatever the photo's size
EXACT_SUM_PIXELS = 1 << 22  # share_inside sums a full-size float map up to this size (bit for bit as before)


def reference_labels(labels: torch.Tensor, n: int, hw: tuple[int, int]) -> torch.Tensor:
    """int64 ``[H, W]``: argmax of the bilinear resize of the one-hot stack (the full-size float reference)."""
    stack = F.one_hot(labels.long(), n + 1).permute(2, 0, 1).float()
    if tuple(stack.shape[-2:]) != tuple(hw):
        stack = F.interpolate(stack[None], size=tuple(hw), mode="bilinear", align_corners=False)[0]
    return stack.argmax(0)


def kernel_kind(channels: int, hw: tuple[int, int], threads: int | None = None) -> str:
    """'channels_last' or 'generic': the CPU kernel ``F.interpolate`` runs for a one-hot stack of ``channels``
    (``permute``d, so channels-last in memory) resized to ``hw`` (PyTorch's UpSampleKernel.cpp dispatch)."""
    threads = torch.get_num_threads() if threads is None else threads
    if channels > 3 or sum(hw) <= 128 or (channels == 3 and threads == 1):
        return "channels_last"
    return "generic"


def _weights(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(i0, i1, lambda0, lambda1) per output index, as PyTorch's ``compute_source_index_and_lambda`` (float32;
    ``scale·(i + 0.5) − 0.5`` rounded once, as the fused multiply-add the kernel is compiled to)."""
    o = torch.arange(n_out)
    if n_in == n_out:
        return o, o, torch.ones(n_out), torch.zeros(n_out)
    scale = torch.tensor(n_in, dtype=torch.float32) / torch.tensor(n_out, dtype=torch.float32)
    x = (o.float() + 0.5).double()
    src = (scale.double() * x - 0.5).float().clamp_min(0.0)  # exact in float64, one rounding to float32
    i0 = torch.clamp(torch.floor(src).long(), max=n_in - 1)
    lam1 = torch.clamp(src - i0.float(), 0.0, 1.0)
    i1 = i0 + (i0 < n_in - 1).long()
    return i0, i1, 1.0 - lam1, lam1


def _channels_last(labels: torch.Tensor, n: int, hw: tuple[int, int], out: np.ndarray) -> None:
    """Fill ``out`` with the channels-last kernel's argmax, a band of rows at a time."""
    (H, W), (h, w) = hw, labels.shape
    hi0, hi1, h0, h1 = _weights(h, H)
    wi0, wi1, w0, w1 = _weights(w, W)
    lab = labels.to(torch.int16)
    rows = max(1, BAND_PIXELS // W)
    for y0 in range(0, H, rows):
        ys = slice(y0, min(H, y0 + rows))
        terms = [(lab[hi][:, ci], hl[ys, None] * wl[None]) for hi, hl in ((hi0[ys], h0), (hi1[ys], h1))
                 for ci, wl in ((wi0, w0), (wi1, w1))]  # (neighbour labels, weight) in the kernel's order
        best = best_c = None
        for c in range(n + 1):
            acc = torch.zeros(terms[0][1].shape)
            for nb, wt in terms:
                acc = acc + torch.where(nb == c, wt, torch.zeros(()))
            if best is None:
                best, best_c = acc, torch.zeros(acc.shape, dtype=torch.int16)
            else:
                better = acc > best  # strict: ties keep the lower channel, as argmax does
                best, best_c = torch.where(better, acc, best), torch.where(better, c, best_c)
        out[ys] = best_c.numpy()


def _generic(labels: torch.Tensor, n: int, hw: tuple[int, int], out: np.ndarray) -> None:
    """Fill ``out`` with the generic kernel's argmax: width pass at the working height, then strips of columns."""
    (H, W), h = hw, labels.shape[0]
    stack = F.one_hot(labels.long(), n + 1).permute(2, 0, 1).float()
    wide = F.interpolate(stack[None], size=(h, W), mode="bilinear", align_corners=False)
    cols = W if H <= 128 else max(1, BAND_PIXELS // H)
    for x0 in range(0, W, cols):
        strip = wide[:, :, :, x0:x0 + cols].contiguous()
        tall = F.interpolate(strip, size=(H, strip.shape[-1]), mode="bilinear", align_corners=False)[0]
        out[:, x0:x0 + cols] = tall.argmax(0).numpy()


_PROBES = ((3, 4), (50, 60)), ((5, 7), (203, 151)), ((37, 53), (611, 487)), ((64, 48), (1000, 750))


@functools.cache
def exact_kinds() -> frozenset[str]:
    """The kinds whose banded arithmetic matches ``F.interpolate`` on this PyTorch build (checked on probes)."""
    ok = set()
    gen = torch.Generator().manual_seed(0)
    for kind, channels, threads in (("channels_last", 4, None), ("generic", 2, None)):
        same = True
        for small, big in _PROBES:
            labels = torch.randint(0, channels, small, generator=gen)
            got = np.empty(big, np.uint8)
            (_channels_last if kind == "channels_last" else _generic)(labels, channels - 1, big, got)
            same &= bool((reference_labels(labels, channels - 1, big).numpy() == got).all())
        if same:
            ok.add(kind)
    return frozenset(ok)


def upsample_labels(labels: torch.Tensor, n: int, hw: tuple[int, int]) -> np.ndarray:
    """uint8 (int16 past 255 classes) ``[H, W]`` labels in ``[0, n]`` at ``hw``: :func:`reference_labels`'s
    values, in about one byte per pixel plus bands of :data:`BAND_PIXELS` (a smaller ``hw``, which
    :func:`seediff.segment.segment` never asks for, takes the reference's way)."""
    if labels.ndim != 2:
        raise ValueError(f"labels must be [h, w], got shape {tuple(labels.shape)}")
    H, W = (int(v) for v in hw)
    h, w = labels.shape
    labels = labels.cpu()
    dtype = np.uint8 if n < 256 else np.int16
    kind = kernel_kind(n + 1, (H, W))
    if (H, W) == (h, w) or H < h or W < w or kind not in exact_kinds() or (kind == "generic" and h + W <= 128):
        return reference_labels(labels, n, (H, W)).numpy().astype(dtype)
    out = np.empty((H, W), dtype)
    (_channels_last if kind == "channels_last" else _generic)(labels, n, (H, W), out)
    return out


def share_inside(att: torch.Tensor, mask: np.ndarray, tiny: float) -> float:
    """Share of ``att`` (``[h, w]``, bilinear to the mask's size, clamped at 0) inside the bool ``mask``.

    Up to :data:`EXACT_SUM_PIXELS` from one full-size float32 map, as it always was; a larger photo's map is made
    in strips of columns (width pass, then height pass: the same values) and summed in float64 strip by strip,
    so no full-size float map exists (the sums then differ from one float32 sum by its rounding, ~1e-7)."""
    H, W = mask.shape
    att = att.float()
    if not mask.any():
        return 0.0
    if H * W <= EXACT_SUM_PIXELS:
        a = F.interpolate(att[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0].clamp_min(0)
        a = a.numpy()
        return float(a[mask].sum() / max(float(a.sum()), tiny))
    wide = F.interpolate(att[None, None], size=(att.shape[0], W), mode="bilinear", align_corners=False)
    inside = total = 0.0
    cols = max(1, BAND_PIXELS // H)
    for x0 in range(0, W, cols):
        strip = wide[:, :, :, x0:x0 + cols].contiguous()
        a = F.interpolate(strip, size=(H, strip.shape[-1]), mode="bilinear", align_corners=False)[0, 0]
        a = a.clamp_min(0).numpy()
        total += float(a.sum(dtype=np.float64))
        inside += float(a[mask[:, x0:x0 + cols]].sum(dtype=np.float64))
    return float(inside / max(total, tiny))
