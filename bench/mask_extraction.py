"""Mask extraction time vs the generation it follows, on the SD-1.5-shape pipeline at 512 px (random weights:
the real model's compute).

One traced generation (``steps`` denoising steps, CFG on, attention captured as ``seediff.modes.generate`` does)
gives the maps; each step's time comes from the pipeline's ``callback_on_step_end``. Then ``segment`` runs for
two class words with each method, from scratch (no cache: what one ``predict`` after a fresh image costs),
``--reps`` times; medians are reported. The ratio is against the measured generation and against the same
generation projected to 50 steps (text encoding + decoding + 50 × the median step), the setting the ≤ 5 %
target refers to. Prints a markdown table; ``--out`` writes it too.

    python bench/mask_extraction.py --steps 2 --reps 3 --out bench/results/mask_extraction.md
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from seediff.capture import CaptureConfig, trace
from seediff.methods import SeeDiffConfig
from seediff.segment import segment
from seediff.testing import build_tiny_pipeline

PROMPT = "a photo of a dog and a cat"
CLASSES = ["dog", "cat"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def traced_generation(pipe, steps: int, size: int, device: torch.device):
    """(maps with the image attached, total seconds, per-step seconds)."""
    stamps: list[float] = []

    def on_step(pipe_, i, t, kwargs):
        _sync(device)
        stamps.append(time.perf_counter())
        return kwargs

    g = torch.Generator("cpu").manual_seed(0)
    _sync(device)
    t0 = time.perf_counter()
    with trace(pipe, CaptureConfig()) as maps:
        out = pipe(PROMPT, num_inference_steps=steps, height=size, width=size, generator=g,
                   callback_on_step_end=on_step, output_type="pil")
    _sync(device)
    total = time.perf_counter() - t0
    image = out.images[0]
    maps.image = np.asarray(image.convert("RGB"))
    maps.original_hw = (image.height, image.width)
    per_step = [b - a for a, b in zip([t0] + stamps[:-1], stamps)][1:] or [stamps[0] - t0]
    return maps, total, per_step, stamps[0] - t0


def time_masks(maps, method: str, config, reps: int, device: torch.device) -> tuple[float, object]:
    """Median seconds of ``segment`` from scratch, and the last result."""
    times, result = [], None
    segment(maps, CLASSES, method=method, config=config)  # warm-up
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        result = segment(maps, CLASSES, method=method, config=config)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    from seediff.pipeline import resolve_device, resolve_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(None, device)
    torch.set_grad_enabled(False)
    pipe = build_tiny_pipeline(arch="sd15").to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    maps, total, per_step, first = traced_generation(pipe, args.steps, args.size, device)
    step = statistics.median(per_step)
    fixed = max(0.0, total - step * args.steps)  # text encoding, decoding, capture bookkeeping
    projected = fixed + 50 * step
    del pipe
    gc.collect()

    variants = [
        ("seediff (default, PAMR 100)", "seediff", SeeDiffConfig()),
        ("seediff, no PAMR", "seediff", SeeDiffConfig(pamr_iterations=0)),
        ("diffumask (Otsu)", "diffumask", None),
        ("daam (τ 0.4)", "daam", None),
    ]
    rows = []
    for name, method, cfg in variants:
        secs, res = time_masks(maps, method, cfg, args.reps, device)
        rows.append((name, secs, res))

    machine = f"{platform.machine()}, {torch.get_num_threads()} torch threads" + (
        f", {torch.cuda.get_device_name()}" if device.type == "cuda" else "")
    lines = [
        f"Machine: {machine}, {str(device)}/{str(dtype).replace('torch.', '')}. Command: "
        f"`python bench/mask_extraction.py {' '.join(sys.argv[1:])}`. SD-1.5-shape UNet, random weights, "
        f"{args.size} px, CFG, prompt {PROMPT!r}, classes {CLASSES}.",
        "",
        f"Generation: {args.steps} steps in {total:.2f} s (median step {step:.2f} s, the rest {fixed:.2f} s); "
        f"projected to 50 steps: {projected:.1f} s. Maps recorded: {len(maps.timesteps)} steps, "
        f"{maps.nbytes / 2**20:.1f} MB.",
        "",
        f"| method | mask time s (median of {args.reps}) | vs {args.steps}-step generation | vs 50-step generation |",
        "|---|---|---|---|",
    ]
    for name, secs, _ in rows:
        lines.append(f"| {name} | {secs:.3f} | {100 * secs / total:.1f} % | **{100 * secs / projected:.2f} %** |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
