"""``seediff calibrate``: fit a calibration file from a COCO ground truth or a Label Studio export and its images.

The file (:mod:`seediff.calibrate`) is what ``seediff annotate --calibration``, ``seediff preannotate
--calibration`` and the backend (``SEEDIFF_CALIBRATION``) accept. Registered on the CLI by :mod:`seediff.cli`.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

__all__ = ["calibrate", "calibration_params", "CalibrationOpt", "EPILOG"]

EPILOG = "Example:  seediff calibrate gt.coco.json --images photos/ --out calibration.json"
CalibrationOpt = typer.Option(None, "--calibration", help="Calibration file from `seediff calibrate` (mask threshold, per-label presence thresholds, score → IoU).")


def calibration_params(path: Path | None) -> dict | None:
    """A calibration file's content (checked: ValueError naming the file), for a job's parameters; None without."""
    from .calibrate import load_calibration

    return None if path is None else load_calibration(path).to_dict()


def calibrate(
    ground_truth: Path = typer.Argument(..., help="COCO ground-truth file, or a Label Studio JSON export."),
    images: Path = typer.Option(..., "--images", help="Folder holding the images (by file name or base name)."),
    out: Path = typer.Option(..., "--out", help="Calibration file to write."),
    config: Optional[Path] = typer.Option(None, "--config", help="Labeling config XML (for a Label Studio export)."),
    classes: Optional[List[str]] = typer.Option(None, "--classes", help="Class words prompted (default: every category)."),
    prompt: str = typer.Option("a photo of {}", "--prompt", help="Prompt template; {} becomes 'a circle and a square'."),
    mode: str = typer.Option("noise", "--mode", help="noise, denoise or invert (as the runs it will serve)."),
    t: int = typer.Option(100, "--t", help="Noise timestep for --mode noise."),
    model: str = typer.Option("builtin:shapes", "--model", help="Diffusers folder, .safetensors file, hub id or builtin:shapes."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1, mps (default: best available)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="fp16, bf16 or fp32."),
    method: str = typer.Option("seediff", "--method", help="seediff, diffumask or daam."),
    presence: bool = typer.Option(True, "--presence/--no-presence", help="Calibrate for runs that decide presence (the default) or for runs that do not."),
    seed: int = typer.Option(0, "--seed", help="Noise seed of the photo read."),
    min_examples: int = typer.Option(8, "--min-examples", min=1, help="Observations of a label before anything moves."),
    strength: float = typer.Option(10.0, "--strength", min=0.0, help="Shrinkage k: a fit moves n/(n+k) of the way."),
) -> None:
    """Fit the mask threshold, per-label presence thresholds and score → IoU from annotated images."""
    from .calibrate import FitPrior, save_calibration
    from .calibration_data import fit_from_coco, load_ground_truth
    from .jobs.store import writing
    from .methods import METHODS
    from .pipeline import load_model
    from .prompts import check_template

    if method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(sorted(METHODS))}, got {method!r}")
    prompt = check_template(prompt)  # before the model loads
    if not images.is_dir():
        raise ValueError(f"--images {images} is not a folder")
    dataset = load_ground_truth(ground_truth, config.read_text() if config else None)
    words = [w.strip() for c in classes or [] for w in c.split(",") if w.strip()] or None
    loaded = load_model(model, device=device, dtype=dtype)
    loaded.pipe.set_progress_bar_config(disable=True)
    with typer.progressbar(length=len(dataset.get("images", [])), label="calibrate", file=None) as bar:
        calibration = fit_from_coco(loaded, dataset, images, classes=words, method=method, mode=mode, t=t,
                                    prompt_template=prompt, seed=seed, presence=presence,
                                    prior=FitPrior(min_examples=min_examples, strength=strength),
                                    progress=lambda done, total: bar.update(1))
    with writing(out):
        save_calibration(calibration, out)
    moved = calibration.mask_value is not None
    typer.echo(f"wrote {out}: {calibration.images} images; {calibration.knob} "
               f"{calibration.mask_value if moved else 'unchanged (model default)'}; " + ", ".join(
                   f"{w}: n={c.n} threshold={c.threshold:.3g}" for w, c in calibration.labels.items()))
