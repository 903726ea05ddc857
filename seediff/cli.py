"""The ``seediff`` command: synthesize, annotate, evaluate, convert, preannotate, calibrate, show.

Long work shows a progress bar (stderr); user errors print one ``error: …`` line and exit 2 (no traceback;
set ``SEEDIFF_DEBUG=1`` for one); an output that cannot be written (disk full, permission denied) prints one
``error: cannot write <file>: <reason>`` line and exits 1, leaving only whole files (rerun to resume);
a job with failed items writes everything else, lists the failures and exits 1 — rerun the same command to
retry them.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
from typer.core import TyperGroup

from .cli_calibrate import EPILOG, CalibrationOpt, calibrate, calibration_params
from .cli_convert import COCO2LS_EPILOG, LS2COCO_EPILOG, coco2ls, ls2coco

__all__ = ["app", "main", "expand_multi"]

_MULTI = ("--classes",)


def expand_multi(args: list[str]) -> list[str]:
    """``--classes dog cat`` → ``--classes dog,cat`` (space-separated values after one flag, as documented)."""
    out: list[str] = []
    i = 0
    while i < len(args):
        tok = args[i]
        if tok in _MULTI:
            values = []
            i += 1
            while i < len(args) and not args[i].startswith("-"):
                values.append(args[i])
                i += 1
            out += [tok, ",".join(values)] if values else [tok]
            continue
        out.append(tok)
        i += 1
    return out


class _Group(TyperGroup):
    """Typer group that accepts space-separated class lists (see :func:`expand_multi`)."""

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, expand_multi(list(args)))


app = typer.Typer(
    cls=_Group, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="SeeDiff: open-vocabulary segmentation masks from Stable Diffusion's own attention.",
    epilog="Example:  seediff synthesize --classes circle square --per-class 4 --out demo/  (then open demo/overlays/)",
)
convert_app = typer.Typer(cls=_Group, no_args_is_help=True, help="Convert between Label Studio and COCO.")
app.add_typer(convert_app, name="convert")


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


def _user_errors(fn: Callable) -> Callable:
    """Turn input errors into ``error: …`` on stderr and exit 2, without a traceback."""
    from .jobs.executors import ExecutorError
    from .jobs.store import JobMismatchError, OutputError
    from .pipeline import ModelLoadError

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if os.environ.get("SEEDIFF_DEBUG"):  # full tracebacks for developers
            return fn(*args, **kwargs)
        try:
            return fn(*args, **kwargs)
        except (UserError, ValueError, TypeError, FileNotFoundError, IsADirectoryError, PermissionError,
                ModelLoadError, JobMismatchError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except ExecutorError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        except OutputError as exc:  # disk full, permission denied, read-only...: nothing half-written
            typer.echo(f"error: {exc}; nothing was left half-written, rerun the same command once it is fixed",
                       err=True)
            raise typer.Exit(1) from None
        except OSError as exc:  # e.g. a path through a regular file (NotADirectoryError)
            where = f": {exc.filename}" if exc.filename else ""
            typer.echo(f"error: {exc.strerror or exc}{where}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _classes(values: List[str] | None) -> list[str]:
    """Class words from repeated/comma-separated/space-separated ``--classes``."""
    from .jobs.datasets import check_classes

    words = [w.strip() for v in (values or []) for w in v.split(",") if w.strip()]
    return check_classes(words)


def _template(prompt: str) -> str:
    """The --prompt template ('{classes}' read as '{}'); ValueError unless :func:`seediff.prompts.check_template`."""
    from .prompts import check_template

    return check_template(prompt)


def _check_method(method: str, mode: str | None = None) -> None:
    """Refuse an unknown --method or --mode before any model is loaded (else every item would fail alike)."""
    from .methods import METHODS
    from .modes import PHOTO_MODES

    if method not in METHODS:
        raise UserError(f"--method must be one of {', '.join(sorted(METHODS))}, got {method!r}")
    if mode is not None and mode not in PHOTO_MODES:
        raise UserError(f"--mode must be one of {', '.join(PHOTO_MODES)}, got {mode!r}")


def _executor(name: str, ray_address: str | None, workers: int | None, batch_size: int):
    from .jobs.executors import make_executor

    return make_executor(name, ray_address=ray_address, workers=workers, batch_size=batch_size)


def _report(report, what: str) -> None:
    """Print a job's outcome; exit 1 when items failed."""
    typer.echo(f"{what}: {len(report.planned)} items, {report.skipped} already done, {len(report.done)} done now, "
               f"{len(report.failed)} failed ({report.seconds:.1f} s)", err=True)
    if report.failed:
        for item_id, err in sorted(report.failed.items()):
            typer.echo(f"  failed {item_id}: {err}", err=True)
        typer.echo("rerun the same command to retry the failed items", err=True)


# Options shared by the job commands ---------------------------------------------------------------------
ModelOpt = typer.Option("builtin:shapes", "--model", help="Diffusers folder, .safetensors file, hub id or builtin:shapes.")
DeviceOpt = typer.Option(None, "--device", help="cpu, cuda, cuda:1, mps (default: best available).")
DtypeOpt = typer.Option(None, "--dtype", help="fp16, bf16 or fp32 (default: fp16 on CUDA, else fp32).")
SeedOpt = typer.Option(0, "--seed", help="Job seed; each item's seed is derived from it and the item id.")
MethodOpt = typer.Option("seediff", "--method", help="seediff, diffumask or daam.")
PresenceOpt = typer.Option(True, "--presence/--no-presence", help="Decide which classes each photo shows and segment only those (default; the backend's SEEDIFF_PRESENCE). --no-presence segments every class.")
ThreadsOpt = typer.Option(1, "--threads", min=1, help="Torch CPU threads per worker (results are bit-identical only at the same count).")
ExecutorOpt = typer.Option("local", "--executor", help="local (this process) or ray.")
RayAddressOpt = typer.Option(None, "--ray-address", envvar="RAY_ADDRESS", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray).")
WorkersOpt = typer.Option(None, "--workers", min=1, help="Ray actors (default: one per GPU, or all CPUs but one).")
BatchOpt = typer.Option(1, "--batch-size", min=1, help="Items per Ray batch.")
ProgressOpt = typer.Option(True, "--progress/--no-progress", help="Show a progress bar.")
app.command("calibrate", epilog=EPILOG)(_user_errors(calibrate))  # seediff/cli_calibrate.py


@app.command(epilog="Example:  seediff synthesize --classes dog cat --per-class 10 --prompt 'a photo of a {}' --out data/")
@_user_errors
def synthesize(
    classes: List[str] = typer.Option(..., "--classes", help="Class words, e.g. --classes dog cat."),
    per_class: int = typer.Option(4, "--per-class", min=1, help="Images per class."),
    prompt: str = typer.Option("a photo of a {}", "--prompt", help="Prompt template; {} is the class."),
    out: Path = typer.Option(..., "--out", help="Output folder (coco.json, images/, masks/, overlays/)."),
    model: str = ModelOpt, device: Optional[str] = DeviceOpt, dtype: Optional[str] = DtypeOpt,
    seed: int = SeedOpt,
    steps: int = typer.Option(20, "--steps", min=1, help="Denoising steps."),
    guidance: float = typer.Option(7.5, "--guidance", help="Classifier-free guidance scale."),
    size: Optional[int] = typer.Option(None, "--size", help="Image side in pixels (default: the model's)."),
    method: str = MethodOpt, threads: int = ThreadsOpt, executor: str = ExecutorOpt,
    ray_address: Optional[str] = RayAddressOpt, workers: Optional[int] = WorkersOpt, batch_size: int = BatchOpt,
    progress: bool = ProgressOpt,
) -> None:
    """Generate images per class and their masks: a COCO dataset with previews. Resumable: rerun to finish."""
    from .jobs import finish, plan_synthesize, run_job, synthesize_spec

    names = _classes(classes)
    _check_method(method)
    prompt = _template(prompt)
    items = plan_synthesize(names, per_class, prompt, seed)
    params = dict(model=model, device=device, dtype=dtype, classes=names, prompt=prompt, seed=seed, steps=steps,
                  guidance=guidance, height=size, width=size, method=method, threads=threads)
    spec = synthesize_spec(out, params)
    report = run_job(spec, items, _executor(executor, ray_address, workers, batch_size), progress=progress,
                     desc="synthesize")
    coco_path = Path(spec.root) / "coco.json"
    dataset = finish(spec, items, coco_path)
    _report(report, "synthesize")
    typer.echo(f"COCO: {coco_path} ({len(dataset['images'])} images, {len(dataset['annotations'])} masks); "
               f"overlays: {Path(spec.root) / 'overlays'}")
    if report.failed:
        raise typer.Exit(1)


@app.command(epilog="Example:  seediff annotate photos/ --classes dog cat --out photos.coco.json")
@_user_errors
def annotate(
    images_dir: Path = typer.Argument(..., help="Folder of images (searched recursively)."),
    classes: List[str] = typer.Option(..., "--classes", help="Class words, e.g. --classes dog cat."),
    out: Path = typer.Option(..., "--out", help="COCO file to write."),
    work_dir: Optional[Path] = typer.Option(None, "--work-dir", help="Per-item files (default: <out>.work/)."),
    prompt: str = typer.Option("a photo of {}", "--prompt", help="Prompt template; {} becomes 'a dog and a cat'."),
    mode: str = typer.Option("noise", "--mode", help="noise (one UNet pass), denoise or invert."),
    t: int = typer.Option(100, "--t", help="Noise timestep for --mode noise."),
    steps: int = typer.Option(10, "--steps", min=1, help="DDIM steps for denoise/invert."),
    strength: float = typer.Option(0.5, "--strength", help="Noise strength for denoise/invert."),
    model: str = ModelOpt, device: Optional[str] = DeviceOpt, dtype: Optional[str] = DtypeOpt,
    seed: int = SeedOpt, method: str = MethodOpt, threads: int = ThreadsOpt, executor: str = ExecutorOpt,
    ray_address: Optional[str] = RayAddressOpt, workers: Optional[int] = WorkersOpt, batch_size: int = BatchOpt,
    progress: bool = ProgressOpt, presence: bool = PresenceOpt, calibration: Optional[Path] = CalibrationOpt,
) -> None:
    """Segment every image of a folder (photo mode) into one COCO file. Resumable: rerun to finish."""
    from .jobs import annotate_spec, finish, plan_annotate, run_job

    names = _classes(classes)
    _check_method(method, mode)
    prompt = _template(prompt)
    items = plan_annotate(images_dir, seed)
    params = dict(model=model, device=device, dtype=dtype, classes=names, prompt=prompt, seed=seed, mode=mode,
                  t=t, steps=steps, strength=strength, method=method, threads=threads, presence=presence,
                  images_dir=str(Path(images_dir).resolve()), calibration=calibration_params(calibration))
    spec = annotate_spec(work_dir or out.with_name(out.name + ".work"), params)
    report = run_job(spec, items, _executor(executor, ray_address, workers, batch_size), progress=progress,
                     desc="annotate")
    dataset = finish(spec, items, out)
    _report(report, "annotate")
    typer.echo(f"COCO: {out} ({len(dataset['images'])} images, {len(dataset['annotations'])} masks); "
               f"overlays: {Path(spec.root) / 'overlays'}")
    if report.failed:
        raise typer.Exit(1)


@app.command(epilog="Example:  seediff evaluate pred.coco.json gt.coco.json --json")
@_user_errors
def evaluate(
    pred: Path = typer.Argument(..., help="Predicted COCO file."),
    gt: Path = typer.Argument(..., help="Ground-truth COCO file."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Per-class IoU and mIoU of predicted masks against ground truth (images matched by file name)."""
    from .coco import read_coco
    from .evaluate import evaluate as run_eval
    from .evaluate import format_table

    from .jobs.store import writing

    result = run_eval(read_coco(pred), read_coco(gt))
    with writing("<stdout>"):
        if as_json:
            typer.echo(json.dumps(result.to_dict(), indent=2, sort_keys=True))
        else:
            typer.echo(format_table(result), nl=False)


convert_app.command("ls2coco", epilog=LS2COCO_EPILOG)(_user_errors(ls2coco))  # seediff/cli_convert.py
convert_app.command("coco2ls", epilog=COCO2LS_EPILOG)(_user_errors(coco2ls))


@app.command(epilog="Example:  seediff preannotate --url http://localhost:8080 --api-key $LABEL_STUDIO_API_KEY --project 3")
@_user_errors
def preannotate(
    url: str = typer.Option(..., "--url", envvar="LABEL_STUDIO_URL", help="Label Studio URL."),
    api_key: str = typer.Option(..., "--api-key", envvar="LABEL_STUDIO_API_KEY", help="Label Studio API token."),
    project: int = typer.Option(..., "--project", help="Project id."),
    model: str = ModelOpt, device: Optional[str] = DeviceOpt, dtype: Optional[str] = DtypeOpt,
    model_version: Optional[str] = typer.Option(None, "--model-version", help="Stored with the predictions; tasks holding one are skipped (default: derived from model and settings)."),
    prompt: str = typer.Option("a photo of {}", "--prompt", help="Prompt template; {} becomes 'a circle and a square' (the labels' class words)."),
    mode: str = typer.Option("noise", "--mode", help="noise, denoise or invert."),
    t: int = typer.Option(100, "--t", help="Noise timestep for --mode noise."),
    steps: int = typer.Option(10, "--steps", min=1, help="DDIM steps for denoise/invert (the backend's SEEDIFF_STEPS)."),
    drop_absent: bool = typer.Option(False, "--drop-absent/--keep-absent", help="Presence test: empty masks for classes decided absent (the backend's SEEDIFF_DROP_ABSENT)."),
    control: str = typer.Option("polygon", "--control", help="polygon, brush or both: the region type where a label is in a PolygonLabels and a BrushLabels (the backend's SEEDIFF_CONTROL)."),
    presence: bool = PresenceOpt,
    seed: int = SeedOpt, method: str = MethodOpt, threads: int = ThreadsOpt,
    batch: int = typer.Option(32, "--batch", min=1, help="Predictions posted per request."),
    page_size: int = typer.Option(100, "--page-size", min=1, help="Tasks fetched per page."),
    work_dir: Optional[Path] = typer.Option(None, "--work-dir", help="Per-task results kept for resuming (default: ./seediff-preannotate-<project>/)."),
    executor: str = ExecutorOpt, ray_address: Optional[str] = RayAddressOpt, workers: Optional[int] = WorkersOpt,
    batch_size: int = BatchOpt, progress: bool = ProgressOpt, calibration: Optional[Path] = CalibrationOpt,
) -> None:
    """Pre-annotate a whole Label Studio project in batches (skips tasks already predicted by this model version)."""
    _check_method(method, mode)
    prompt = _template(prompt)
    try:
        from seediff_labelstudio.preannotate import preannotate_project
    except ImportError as exc:
        raise UserError(f"preannotate needs the Label Studio backend package ({exc}); pip install 'seediff[server]'")
    summary = preannotate_project(
        url=url, api_key=api_key, project=project, model=model, device=device, dtype=dtype,
        model_version=model_version, mode=mode, t=t, seed=seed, method=method, threads=threads, batch=batch,
        page_size=page_size, work_dir=work_dir, executor=_executor(executor, ray_address, workers, batch_size),
        progress=progress, prompt_template=prompt, steps=steps, drop_absent=drop_absent, control=control,
        presence=presence, calibration=calibration_params(calibration))
    typer.echo(summary.describe())
    if summary.failed:
        raise typer.Exit(1)


@app.command(epilog="Example:  seediff show photo.jpg --classes dog cat --out dog_cat.png")
@_user_errors
def show(
    image: Path = typer.Argument(..., help="An image file."),
    classes: List[str] = typer.Option(..., "--classes", help="Class words."),
    out: Path = typer.Option(..., "--out", help="PNG to write."),
    prompt: str = typer.Option("a photo of {}", "--prompt", help="Prompt template; {} becomes 'a dog and a cat'."),
    mode: str = typer.Option("noise", "--mode", help="noise, denoise or invert."),
    t: int = typer.Option(100, "--t", help="Noise timestep for --mode noise."),
    model: str = ModelOpt, device: Optional[str] = DeviceOpt, dtype: Optional[str] = DtypeOpt,
    seed: int = SeedOpt, method: str = MethodOpt,
    min_side: int = typer.Option(256, "--min-side", min=16, help="Upscale small images to at least this side."),
) -> None:
    """One PNG: the masks over the image, then each class's attention heat map."""
    import numpy as np

    from .jobs import render
    from .jobs.store import png_bytes, write_output
    from .modes import read_photo
    from .pipeline import load_model
    from .prompts import class_prompt
    from .segment import segment

    names = _classes(classes)
    _check_method(method, mode)
    prompt = _template(prompt)
    if not image.is_file():
        raise UserError(f"{image} is not a file")
    loaded = load_model(model, device=device, dtype=dtype)
    traced = read_photo(loaded.pipe, str(image), class_prompt(names, prompt), mode=mode, t=t, seed=seed)
    maps = traced.maps_for(0)
    masks = segment(maps, names, method=method, config=loaded.defaults.config(method))
    rgb = np.asarray(traced.images[0].convert("RGB"))
    h, w = rgb.shape[:2]
    scale = max(1, int(np.ceil(min_side / min(h, w))))
    big = np.repeat(np.repeat(rgb, scale, 0), scale, 1)
    colors = [render.color(names.index(label)) for label in masks.labels]
    tiles = [("masks: " + ", ".join(masks.labels), render.overlay(big, np.asarray(masks.masks, bool), colors))]
    for name in names:
        tiles.append((f"attention: {name}", render.heat_overlay(big, render.class_heat(maps, name, (h, w)))))
    write_output(out, png_bytes(render.side_by_side(tiles)))  # makes the folder; OutputError on failure
    found = ", ".join(f"{lab} {float(s):.2f}" for lab, s in zip(masks.labels, masks.scores)) or "no masks"
    typer.echo(f"wrote {out} ({found})")


def main(argv: list[str] | None = None) -> Any:
    """Console entry point (``seediff``)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    return app(args=argv if argv is not None else sys.argv[1:], prog_name="seediff")


if __name__ == "__main__":
    main()
