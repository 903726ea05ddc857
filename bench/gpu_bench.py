"""GPU rows: SD-1.5- and SDXL-shaped random-weight pipelines (same compute as the real models) in fp16 —
plain diffusers generation vs the same call inside ``trace`` (ratio, target ≤ 1.10), peak extra memory of the
captured call, and mask extraction time per method on the recorded maps. Run by ``bench/gpu.sh``, which adds
/predict latency from ``bench/predict_latency.py``.

Plain and captured generations alternate (``--reps`` each after a warm-up of both), same seed and prompt, and the
ratio is of medians. ``--tiny`` swaps in the tiny test models at toy sizes: a CPU dry run of every code path.

    python bench/gpu_bench.py --out bench/results/gpu_generation.md --save-dir /tmp/seediff-gpu-models
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from seediff.capture import CaptureConfig, trace
from seediff.defaults import ModelDefaults
from seediff.families import with_layout_levels
from seediff.pipeline import resolve_device, resolve_dtype
from seediff.segment import segment
from seediff.testing import build_tiny_pipeline

PROMPT = "a photo of a dog and a cat"
CLASSES = ["dog", "cat"]
# arch → (tiny stand-in, image side, steps): SD 1.5 at 512 px / 50 steps (the A100 anchor: ≈ 1.6 s with
# diffusers + SDPA), SDXL at 1024 px / 30 steps (its usual sampler setting).
ARCHS = {"sd15": ("tiny", 512, 50), "sdxl": ("sdxl-tiny", 1024, 30)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(arch: str, device: torch.device, dtype: torch.dtype):
    """The random-weight pipeline, initialised directly on ``device`` in ``dtype`` (no fp32 host copy)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            pipe = build_tiny_pipeline(arch=arch)
    finally:
        torch.set_default_dtype(default)
    pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generation(pipe, size: int, steps: int, capture: bool, device: torch.device):
    """One ``pipe(...)`` call (CFG, latent output); returns (seconds, peak bytes above the start, maps or None)."""
    g = torch.Generator("cpu").manual_seed(0)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    kwargs = dict(num_inference_steps=steps, height=size, width=size, generator=g, output_type="latent")
    t0 = time.perf_counter()
    maps = None
    if capture:
        with trace(pipe, CaptureConfig()) as maps:
            pipe(PROMPT, **kwargs)
    else:
        pipe(PROMPT, **kwargs)
    _sync(device)
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() - base if device.type == "cuda" else 0
    return dt, peak, maps


def mask_times(maps, defaults, device: torch.device, reps: int = 3) -> dict[str, float]:
    """Median seconds of ``segment`` per method on the recorded maps (no image: PAMR is skipped)."""
    out = {}
    for method in ("seediff", "diffumask", "daam"):
        config = defaults.config(method)
        segment(maps, CLASSES, method=method, config=config)  # warm-up
        times = []
        for _ in range(reps):
            _sync(device)
            t0 = time.perf_counter()
            segment(maps, CLASSES, method=method, config=config)
            _sync(device)
            times.append(time.perf_counter() - t0)
        out[method] = statistics.median(times)
    return out


def measure(arch: str, tiny: bool, reps: int, device: torch.device, dtype: torch.dtype, save_dir: Path | None) -> dict:
    """One row: plain vs captured generation, peak extra memory, mask times; optionally saves the pipeline."""
    stand_in, size, steps = ARCHS[arch]
    name, size, steps = (stand_in, 64, 4) if tiny else (arch, size, steps)
    pipe = build(name, device, dtype)

    generation(pipe, size, 2, False, device)  # warm-up: kernels, allocator, text encoder
    generation(pipe, size, 2, True, device)
    plain, captured, extra, maps = [], [], [], None
    for _ in range(reps):
        dt, p0, _ = generation(pipe, size, steps, False, device)
        plain.append(dt)
        dt, p1, maps = generation(pipe, size, steps, True, device)
        captured.append(dt)
        extra.append(p1 - p0)
    maps.original_hw = (size, size)
    masks = mask_times(maps, with_layout_levels(ModelDefaults(), pipe.unet), device)  # SDXL: no level-0 attention
    if save_dir is not None:  # for bench/predict_latency.py, which loads it as users do
        pipe.save_pretrained(str(save_dir / arch))
    row = dict(arch=name, size=size, steps=steps, recorded=len(maps.timesteps), plain_s=statistics.median(plain),
               captured_s=statistics.median(captured), extra_mb=statistics.median(extra) / 2**20,
               store_mb=maps.nbytes / 2**20, masks=masks)
    row["ratio"] = row["captured_s"] / row["plain_s"]
    del pipe, maps
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def table(rows: list[dict]) -> str:
    """Markdown: generation ratio and memory, then mask extraction times."""
    lines = ["| model (random weights) | px | steps (recorded) | plain s | captured s | ratio (target ≤ 1.10) | "
             "peak extra MB | store MB | masks ms: seediff / diffumask / daam |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["masks"]
        lines.append(f"| {r['arch']} | {r['size']} | {r['steps']} ({r['recorded']}) | {r['plain_s']:.2f} | "
                     f"{r['captured_s']:.2f} | **{r['ratio']:.3f}** | {r['extra_mb']:.0f} | {r['store_mb']:.1f} | "
                     f"{1000 * m['seediff']:.0f} / {1000 * m['diffumask']:.0f} / {1000 * m['daam']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+", default=["sd15", "sdxl"], choices=sorted(ARCHS))
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None, help="default: fp16 on CUDA, fp32 elsewhere")
    ap.add_argument("--tiny", action="store_true", help="tiny stand-ins at 64 px, 4 steps: a dry run")
    ap.add_argument("--save-dir", type=Path, default=None, help="save each pipeline here (for predict_latency)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    device = resolve_device(args.device)
    if device.type != "cuda" and not args.tiny:
        sys.exit("bench/gpu_bench.py measures a CUDA GPU: no CUDA device here (torch.cuda.is_available() is "
                 "False). Use --tiny for a CPU dry run.")
    dtype = resolve_dtype(args.dtype, device)
    torch.set_grad_enabled(False)
    rows = [measure(a, args.tiny, args.reps, device, dtype, args.save_dir) for a in args.arch]
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "no GPU (dry run)"
    text = (f"Machine: {platform.machine()}, {gpu}, torch {torch.__version__}, {str(dtype).replace('torch.', '')}, "
            f"SDPA attention. Command: `python bench/gpu_bench.py {' '.join(sys.argv[1:])}`. Peak extra MB: CUDA "
            "allocator peak of the captured call minus the plain call's.\n\n" + table(rows))
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
