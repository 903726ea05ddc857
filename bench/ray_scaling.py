"""Ray scaling: the same synthesize job in-process and on a Ray actor pool of 1 and 2 workers.

Work where per-item time dominates: the tiny random-weight pipeline with many denoising steps, one torch
thread per worker (the job default), so each actor is one core's worth of work. Ray is started locally with
``workers + 1`` logical CPUs (one left for Ray Data's own tasks). Each configuration writes into a fresh
folder; the table reports wall time of ``run_job`` (actor start and model load included, Ray start not),
throughput, speed-up over one Ray worker, and whether the merged COCO is byte-identical to the in-process
run. Prints a markdown table; ``--out`` writes it to a file.

    python bench/ray_scaling.py --items 8 --steps 40 --out bench/results/ray_scaling.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from seediff.jobs import LocalExecutor, RayExecutor, finish, plan_synthesize, run_job, synthesize_spec  # noqa: E402
from seediff.testing import build_tiny_pipeline  # noqa: E402


def _job(root: Path, model: Path, items_n: int, steps: int):
    classes = ["dog", "cat"]
    items = plan_synthesize(classes, (items_n + 1) // 2, "a photo of a {}", seed=0)[:items_n]
    params = dict(model=str(model), device="cpu", dtype=None, classes=classes, prompt="a photo of a {}", seed=0,
                  steps=steps, guidance=7.5, height=None, width=None, method="seediff", threads=1)
    return synthesize_spec(root, params), items


def _run(name: str, executor, root: Path, model: Path, items_n: int, steps: int) -> tuple[float, float, bytes]:
    """(wall seconds, median seconds per item inside the worker, merged COCO bytes)."""
    spec, items = _job(root / name, model, items_n, steps)
    per_item: list[float] = []
    t0 = time.perf_counter()
    report = run_job(spec, items, executor, progress=False, on_result=lambda r: per_item.append(float(r["seconds"])))
    seconds = time.perf_counter() - t0
    if not report.complete:
        raise RuntimeError(f"{name}: items failed: {report.failed}")
    finish(spec, items, root / name / "coco.json")
    return seconds, statistics.median(per_item), (root / name / "coco.json").read_bytes()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=8)
    ap.add_argument("--steps", type=int, default=40, help="denoising steps per item (per-item cost)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import ray

    load_before = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="seediff-ray-bench-"))
    try:
        model = root / "tiny"
        build_tiny_pipeline(model)
        local_s, local_item, local_coco = _run("local", LocalExecutor(), root, model, args.items, args.steps)
        rows = [("in-process", 1, local_s, local_item, True)]
        ray.init(num_cpus=max(args.workers) + 1, include_dashboard=False, logging_level="ERROR",
                 configure_logging=True, log_to_driver=False)
        try:
            for w in args.workers:
                s, item_s, coco = _run(f"ray{w}", RayExecutor(workers=w), root, model, args.items, args.steps)
                rows.append(("ray", w, s, item_s, coco == local_coco))
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    base = next(s for kind, w, s, _, _ in rows if kind == "ray" and w == min(args.workers))
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, 1-min load average {load_before:.1f} at start "
        f"(other processes compete for the cores), Python {platform.python_version()}; "
        f"tiny random-weight pipeline, {args.items} items × {args.steps} steps, 1 torch thread per worker.",
        f"Command: `python bench/ray_scaling.py --items {args.items} --steps {args.steps} "
        f"--workers {' '.join(map(str, args.workers))}`",
        "",
        "| executor | workers | wall s | items/s | s per item (in worker, median) | speed-up vs 1 Ray worker "
        "| COCO identical to in-process |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for kind, w, s, item_s, same in rows:
        speed = f"{base / s:.2f}x" if kind == "ray" else "—"
        lines.append(f"| {kind} | {w} | {s:.1f} | {args.items / s:.2f} | {item_s:.2f} | {speed} | "
                     f"{'yes' if same else 'NO'} |")
    lines += ["", "Per-item time in the worker rising with more workers means the workers compete for cores "
              "(compare the load average above); Ray overhead shows as wall time beyond items × per-item time."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
