#!/usr/bin/env python
"""Does a shape word's attention find its object? Photo mode on known scenes, per level, 1 and 2 objects.

For each scene of a fixed split (seeds 0..N-1, ``seediff.testing.shapes``) the photo is read with
``seediff.read_photo`` (noise mode, one UNet pass at ``--t``) with a caption naming the shapes (colours
named or not, ``--colours``). For every shape word and cross-attention level:
- ``right``: the word's map is higher on average inside its own object than inside the other object
  (two-object scenes only; chance = 0.5);
- ``ca IoU``: cross-attention (layers of the level averaged, special tokens excluded, bicubic to image size,
  min-max) thresholded at 0.5, IoU with the exact mask;
- ``ca+sa IoU``: the same map expanded through the first decoder self-attention at that level
  (score_i = Σ_{s∈seeds} cos(A_i, A_s), seeds = map ≥ 0.5; SeeDiff's expansion step) then thresholded at 0.5.
- ``whole``: IoU of the whole image with the mask (the trivial baseline).

    python bench/localisation.py --model builtin:shapes --n 48    (seeds from --offset 600000)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from seediff.capture import CaptureConfig, upsample
from seediff.modes import read_photo
from seediff.pipeline import load_pipeline
from seediff.testing.shapes import make_scene


def _norm(m: torch.Tensor) -> torch.Tensor:
    return (m - m.min()) / (m.max() - m.min()).clamp_min(1e-8)


def _iou(pred: torch.Tensor, gt: torch.Tensor) -> float:
    return float((pred & gt).sum() / (pred | gt).sum().clamp_min(1))


def expand(seed_map: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """SeeDiff expansion at one level: cosine similarity of every pixel's self-attention row to the seeds'."""
    a = torch.nn.functional.normalize(attn.float(), dim=-1)
    seeds = seed_map.flatten() >= 0.5
    if not seeds.any():
        return torch.zeros_like(seed_map)
    return _norm((a @ a[seeds].sum(0)).view(seed_map.shape))


def evaluate(pipe, n: int, n_objects: int, colours: bool, t: int, offset: int = 0) -> dict:
    """Mean metrics over ``n`` scenes with ``n_objects`` objects."""
    cfg = CaptureConfig(cross_levels=None, self_levels=(0, 1, 2), t_window=(0.0, 1.0))
    rows: dict[str, list[float]] = {}
    for seed in range(offset, offset + n):
        scene = make_scene(seed, n_objects=n_objects, name_colours=colours)
        prompt = " and ".join(f"a {o.colour} {o.shape}" if colours else f"a {o.shape}" for o in scene.objects)
        maps = read_photo(pipe, scene.image, prompt, mode="noise", t=t, seed=seed, capture=cfg).maps
        size = scene.image.shape[:2]
        for k, obj in enumerate(scene.objects):
            gt = torch.from_numpy(scene.instance_masks[k])
            rows.setdefault("whole", []).append(float(gt.float().mean()))
            for level in maps.available_levels("cross"):
                small = _norm(maps.cross_maps(obj.shape, level).mean(0))
                m = _norm(upsample(small, size))
                rows.setdefault(f"L{level} ca IoU", []).append(_iou(m >= 0.5, gt))
                if n_objects == 2:
                    other = torch.from_numpy(scene.instance_masks[1 - k])
                    rows.setdefault(f"L{level} right", []).append(float(m[gt].mean() > m[other].mean()))
                if level in maps.available_levels("self"):
                    e = _norm(upsample(expand(small, maps.self_attention(level)), size))
                    rows.setdefault(f"L{level} ca+sa IoU", []).append(_iou(e >= 0.5, gt))
    return {k: float(np.mean(v)) for k, v in sorted(rows.items())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="builtin:shapes")
    p.add_argument("--n", type=int, default=48)
    p.add_argument("--t", type=int, default=100)
    p.add_argument("--offset", type=int, default=600_000, help="first scene seed (disjoint from training and probes)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model, device="cpu", dtype="fp32")
    t0 = time.time()
    print(f"model {args.model}, photo mode noise t={args.t}, {args.n} scenes per row (seeds {args.offset}..{args.offset + args.n - 1})\n")
    for n_objects in (1, 2):
        for colours in (False, True):
            res = evaluate(pipe, args.n, n_objects, colours, args.t, args.offset)
            print(f"{n_objects} object(s), colours {'named' if colours else 'omitted'}: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in res.items()))
    print(f"\n{time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
