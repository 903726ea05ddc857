"""Attention-capture cost on SDXL's UNet at 1024 px: time per UNet pass with ``trace`` vs without, peak extra
memory, and the store's size after 1 and 2 recorded passes (flat: running sums, not per-step copies).

SDXL base 1.0's exact UNet (2.6 B parameters, transformer depth 2/10 at 64²/32², no attention at 128²) with
random weights: the same compute as the real model. The UNet is called directly like ``read_photo`` does (one
conditional image, no guidance), with the default ``CaptureConfig`` (every cross-attention layer, the first
decoder self-attention at 64² and 32²). On CPU the weights are bf16 (fp32 would need 10 GB); peak memory is
the process's resident high-water mark per phase (reset through /proc/self/clear_refs), on CUDA the allocator's.

    python bench/sdxl_capture.py --size 1024 --out bench/results/sdxl_capture.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from seediff.capture import CaptureConfig, trace
from seediff.pipeline import resolve_device, resolve_dtype
from seediff.testing.sdxl import sdxl_unet_config


def _reset_peak(device: torch.device) -> int:
    """Start a peak-memory phase; returns the baseline bytes (CUDA allocated, or resident set on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    return _status_kb("VmRSS") * 1024


def _peak(device: torch.device) -> int:
    """Peak bytes since the last :func:`_reset_peak`."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return _status_kb("VmHWM") * 1024


def _status_kb(field: str) -> int:
    """A field of /proc/self/status in kB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def build(size: int, device: torch.device, dtype: torch.dtype, arch: str = "sdxl"):
    """SDXL's UNet (random weights; ``arch='sdxl-tiny'`` for a dry run) on ``device``, one conditional input."""
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the target dtype: no fp32 copy of 2.6 B parameters
    try:
        with torch.device(device):
            unet = UNet2DConditionModel(**sdxl_unet_config(arch)).eval()
    finally:
        torch.set_default_dtype(default)
    pipe = SimpleNamespace(unet=unet, scheduler=EulerDiscreteScheduler(beta_schedule="scaled_linear"))
    g = torch.Generator("cpu").manual_seed(0)
    cfg = unet.config
    lat = size // 8
    pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim  # 1280 for SDXL
    inputs = dict(
        sample=torch.randn(1, 4, lat, lat, generator=g).to(device, dtype),
        encoder_hidden_states=torch.randn(1, 77, cfg.cross_attention_dim, generator=g).to(device, dtype),
        added_cond_kwargs={"text_embeds": torch.randn(1, pooled, generator=g).to(device, dtype),
                           "time_ids": torch.tensor([[size, size, 0, 0, size, size]], device=device, dtype=dtype)},
    )
    return pipe, inputs


def _passes(pipe, inputs: dict, n: int, capture: bool, device: torch.device):
    """``n`` UNet passes at t = 400 (inside the default window); returns (s per pass, peak extra bytes, maps)."""
    base = _reset_peak(device)
    t0 = time.perf_counter()
    maps = None
    with torch.no_grad():
        if capture:
            with trace(pipe, CaptureConfig(), cfg=False) as maps:
                for _ in range(n):
                    pipe.unet(timestep=400, **inputs)
        else:
            for _ in range(n):
                pipe.unet(timestep=400, **inputs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n, _peak(device) - base, maps


def measure(size: int, device: torch.device, dtype: torch.dtype, arch: str = "sdxl") -> dict:
    """Plain and captured passes interleaved: warm-up, P, C×1, P, C×2 (the last also shows the store is flat)."""
    pipe, inputs = build(size, device, dtype, arch)
    _passes(pipe, inputs, 1, False, device)  # warm-up: kernels, allocator
    p1, mem_plain, _ = _passes(pipe, inputs, 1, False, device)
    c1, mem_c1, maps1 = _passes(pipe, inputs, 1, True, device)
    p2, _, _ = _passes(pipe, inputs, 1, False, device)
    c2, mem_c2, maps2 = _passes(pipe, inputs, 2, True, device)
    plain, captured = statistics.mean([p1, p2]), statistics.mean([c1, c2])
    return dict(
        arch=arch, size=size, device=str(device), dtype=str(dtype).replace("torch.", ""), plain_s=plain, captured_s=captured,
        ratio=captured / plain, cross_layers=len(maps1.cross), self_layers=len(maps1.self_attn),
        store_mb_1=maps1.nbytes / 2**20, store_mb_2=maps2.nbytes / 2**20,
        extra_mb_1=(mem_c1 - mem_plain) / 2**20, extra_mb_2=(mem_c2 - mem_plain) / 2**20,
        plain_peak_mb=mem_plain / 2**20,
    )


def table(r: dict) -> str:
    """Markdown table of one measured row."""
    return (
        "| UNet | px | device/dtype | plain s/pass | captured s/pass | ratio | layers recorded (cross + self) | "
        "store MB after 1 / 2 passes | peak extra MB, 1 / 2 recorded passes |\n|---|---|---|---|---|---|---|---|---|\n"
        f"| {'SDXL base' if r['arch'] == 'sdxl' else r['arch']} (random weights) | {r['size']} | {r['device']}/{r['dtype']} | {r['plain_s']:.2f} | "
        f"{r['captured_s']:.2f} | **{r['ratio']:.3f}** | {r['cross_layers']} + {r['self_layers']} | "
        f"{r['store_mb_1']:.1f} / {r['store_mb_2']:.1f} | {r['extra_mb_1']:.0f} / {r['extra_mb_2']:.0f} |\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--unet", default="sdxl", choices=["sdxl", "sdxl-tiny"], help="sdxl-tiny: a dry run")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None, help="default: fp16 on CUDA, bf16 on CPU")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype or ("fp16" if device.type == "cuda" else "bf16"), device)
    row = measure(args.size, device, dtype, args.unet)
    machine = f"{platform.machine()}, {torch.get_num_threads()} torch threads" + (
        f", {torch.cuda.get_device_name()}" if device.type == "cuda" else "")
    mem = "CUDA allocator peak" if device.type == "cuda" else "resident-set high-water mark (VmHWM)"
    text = (f"Machine: {machine}. Command: `python bench/sdxl_capture.py {' '.join(__import__('sys').argv[1:])}`. "
            f"Peak extra memory: {mem} of a captured phase minus that of a plain pass.\n\n" + table(row))
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
