"""Attention-capture overhead: generation time with ``trace`` vs without, in one run, plus the store's size.

Runs on the SD-1.5-architecture pipeline at 512 px (random weights: the same compute as the real model) and on
the tiny test model. Timings alternate plain/captured runs and report the ratio of medians, so machine noise
hits both sides alike. Prints a markdown table; ``--out`` writes it to a file.

    python bench/capture_overhead.py --arch sd15 --steps 4 --reps 2 --out bench/results/capture_overhead.md
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import time
from pathlib import Path

import torch

from seediff.capture import CaptureConfig, trace
from seediff.pipeline import resolve_device, resolve_dtype
from seediff.testing import build_tiny_pipeline


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _run(pipe, prompt: str, steps: int, size: int, capture: bool, device: torch.device):
    """One generation; returns (seconds, maps or None, peak CUDA bytes above the start or None)."""
    g = torch.Generator("cpu").manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    _sync(device)
    t0 = time.perf_counter()
    maps = None
    if capture:
        with trace(pipe, CaptureConfig()) as maps:
            pipe(prompt, num_inference_steps=steps, height=size, width=size, generator=g, output_type="latent")
    else:
        pipe(prompt, num_inference_steps=steps, height=size, width=size, generator=g, output_type="latent")
    _sync(device)
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() - base if device.type == "cuda" else None
    return dt, maps, peak


def measure(arch: str, steps: int, reps: int, device: torch.device, dtype: torch.dtype) -> dict:
    """Median time plain vs captured, the ratio, and the store size for ``steps`` and ``4·steps``."""
    pipe = build_tiny_pipeline(arch=arch).to(device, dtype)
    size = 512 if arch == "sd15" else 32
    prompt = "a photo of a dog and a cat"
    _run(pipe, prompt, 2, size, True, device)  # warm-up (allocations, kernels)
    plain, captured, peaks = [], [], []
    maps = None
    for _ in range(reps):
        dt, _, p0 = _run(pipe, prompt, steps, size, False, device)
        plain.append(dt)
        dt, maps, p1 = _run(pipe, prompt, steps, size, True, device)
        captured.append(dt)
        if p0 is not None:
            peaks.append(p1 - p0)
    long_steps = 4 * steps if arch == "tiny" else steps + 2
    _, maps_long, _ = _run(pipe, prompt, long_steps, size, True, device)
    row = dict(
        arch=arch, size=size, steps=steps, device=str(device), dtype=str(dtype).replace("torch.", ""),
        plain_s=statistics.median(plain), captured_s=statistics.median(captured),
        store_mb=maps.nbytes / 2**20, store_mb_long=maps_long.nbytes / 2**20, long_steps=long_steps,
        recorded=len(maps.timesteps), peak_extra_mb=(statistics.median(peaks) / 2**20) if peaks else None,
    )
    row["ratio"] = row["captured_s"] / row["plain_s"]
    del pipe, maps, maps_long
    gc.collect()
    return row


def table(rows: list[dict]) -> str:
    """Markdown table of the measured rows."""
    head = ("| model | px | steps (recorded) | device/dtype | plain s | captured s | ratio | store MB | "
            "store MB at more steps | peak extra MB (CUDA) |\n|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        peak = f"{r['peak_extra_mb']:.0f}" if r["peak_extra_mb"] is not None else "n/a (CPU)"
        lines.append(
            f"| {r['arch']} | {r['size']} | {r['steps']} ({r['recorded']}) | {r['device']}/{r['dtype']} | "
            f"{r['plain_s']:.2f} | {r['captured_s']:.2f} | **{r['ratio']:.3f}** | {r['store_mb']:.1f} | "
            f"{r['store_mb_long']:.1f} ({r['long_steps']} steps) | {peak} |"
        )
    return head + "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+", default=["tiny", "sd15"], choices=["tiny", "sd15"])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    torch.set_grad_enabled(False)
    rows = [measure(a, args.steps, args.reps if a == "tiny" else max(1, args.reps - 1), device, dtype) for a in args.arch]
    machine = f"{platform.machine()}, {torch.get_num_threads()} torch threads" + (
        f", {torch.cuda.get_device_name()}" if device.type == "cuda" else "")
    text = f"Machine: {machine}. Command: `python bench/capture_overhead.py {' '.join(__import__('sys').argv[1:])}`\n\n" + table(rows)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
