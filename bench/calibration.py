"""Calibration from annotations, measured: mIoU and spurious regions per image before vs after calibrating on
annotated scenes, as a Label Studio project would (every label of the config in the prompt).

Three scene sets, each split into "annotated" (the calibration's evidence) and "held out" (scored):
- **shifted**: other backgrounds, colours and sizes than builtin:shapes' defaults were tuned on (tinted
  instead of grey backgrounds, smaller shapes, 1–3 objects; 32 px, drawn here);
- **independent**: another generator's world (:mod:`seediff.testing.shifted`: 128 px, unseen colours, coloured
  plain/striped/noisy backgrounds, rotated shapes), seeds past those its presence models were fitted on;
- **in-distribution**: the scenes the defaults were tuned on (``SceneConfig()``).

Per image every class word of the config is prompted ("a photo of a circle and a square and a triangle"), the
proposals are made with the model's defaults (presence decided, as the backend does by default), then with the
calibration fitted on the annotated split
(``seediff.calibrate.fit``). IoU is dataset-level per class (summed intersections and unions), mIoU the mean
over classes; a spurious region is a non-empty proposal for a class the image lacks.

    python bench/calibration.py --out bench/results/calibration.md
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from seediff.calibrate import FitPrior, apply_calibration, calibrated_config, fit
from seediff.calibration_data import observe_photo
from seediff.predictor import SeeDiffPredictor
from seediff.prompts import class_prompt
from seediff.testing.shapes import COLOURS, SHAPES, SceneConfig, ShapeObject, render_scene

PROMPT_TEMPLATE = "a photo of {}"
SHIFTED_OFFSET = 700_000
INDEPENDENT_OFFSET = 701_000  # seediff.testing.shifted's dev split starts at 700000; its first scenes fitted h4's models
IN_DIST_OFFSET = 800_000


@dataclass(frozen=True)
class Image_:
    """A scene: RGB uint8 image and its class masks."""

    image: np.ndarray
    truth: dict[str, np.ndarray]


def shifted_scene(seed: int, size: int = 32) -> Image_:
    """A scene off the defaults' distribution: a tinted (coloured, not grey) plain or gradient background,
    smaller shapes (radius 3.5–5.5 px at 32 px), 1–3 objects in distinct colours."""
    from seediff.testing.shapes import place_shapes as place  # the generator's own placement (non-overlapping)

    rng = np.random.default_rng([seed, 0xCA1])
    n = int(rng.integers(1, 4))
    shapes = [SHAPES[int(i)] for i in rng.choice(len(SHAPES), size=n, replace=False)]
    colours = [list(COLOURS)[int(i)] for i in rng.choice(len(COLOURS), size=n, replace=False)]
    cfg = SceneConfig(size=size, radius=(3.5, 5.5))
    objects = [ShapeObject(s, c, cx, cy, r) for s, c, (cx, cy, r) in zip(shapes, colours, place(shapes, cfg, rng))]
    tint = rng.uniform(0.35, 1.0, size=3) * rng.uniform(90, 200)
    ramp = np.linspace(0.8, 1.2, size)[None, :, None] if rng.random() < 0.5 else np.ones((1, size, 1))
    background = np.clip(np.broadcast_to(tint, (size, size, 3)) * ramp, 0, 255).astype(np.uint8)
    image, masks = render_scene(objects, np.ascontiguousarray(background))
    return Image_(image, {o.shape: m for o, m in zip(objects, masks)})


def independent_scene(seed: int) -> Image_:
    """A scene of the independent world (:mod:`seediff.testing.shifted`: another generator, 128 px, 1–3 shapes,
    unseen colours, coloured backgrounds), from seeds past its dev split's first 1000."""
    from seediff.testing.shifted import make_shifted_scene

    scene = make_shifted_scene(seed)
    return Image_(scene.image, scene.class_masks())


def in_distribution_scene(seed: int) -> Image_:
    """A scene of the generator the defaults were tuned on (``SceneConfig()``)."""
    from seediff.testing.shapes import make_scene

    scene = make_scene(seed)
    return Image_(scene.image, scene.class_masks())


def read(model, scene: Image_, method: str) -> tuple[SeeDiffPredictor, object]:
    """A predictor holding the scene read with every class word, and the model's config for the method."""
    predictor = SeeDiffPredictor.from_model(model, prompt_template=PROMPT_TEMPLATE)
    predictor.set_image(scene.image, class_prompt(SHAPES, PROMPT_TEMPLATE), mode="noise", t=100, seed=0)
    return predictor, model.defaults.config(method)


def score(results: Sequence[tuple[Image_, dict[str, np.ndarray]]]) -> dict:
    """Dataset-level per-class IoU, mIoU, spurious regions per image and missed objects per image."""
    inter = {c: 0 for c in SHAPES}
    union = {c: 0 for c in SHAPES}
    spurious = missed = 0
    for scene, pred in results:
        for c in SHAPES:
            gt = scene.truth.get(c, np.zeros(scene.image.shape[:2], bool))
            p = pred.get(c, np.zeros_like(gt))
            inter[c] += int((gt & p).sum())
            union[c] += int((gt | p).sum())
            spurious += int(p.any() and not gt.any())
            missed += int(gt.any() and not p.any())
    ious = {c: inter[c] / union[c] for c in SHAPES if union[c]}
    n = len(results)
    return {"miou": float(np.mean(list(ious.values()))), "iou": ious, "spurious_per_image": spurious / n,
            "missed_per_image": missed / n, "images": n}


def run(pipe, scenes: Sequence[Image_], n_fit: int, method: str, prior: FitPrior) -> dict:
    """Fit on the first ``n_fit`` scenes, score the rest before and after."""
    observations, default_value, presence_default = [], None, None
    for scene in scenes[:n_fit]:
        predictor, _ = read(pipe, scene, method)
        obs, default_value, presence_default = observe_photo(predictor, SHAPES, scene.truth, method)
        observations += obs
    calibration = fit(observations, method, default_value, prior=prior, images=n_fit,
                      presence_default=presence_default)
    before, after = [], []
    for scene in scenes[n_fit:]:
        predictor, base = read(pipe, scene, method)
        plain = predictor.predict(list(SHAPES), method=method, config=base)
        tuned = apply_calibration(calibration, predictor.predict(
            list(SHAPES), method=method, config=calibrated_config(calibration, method, base),
            presence_thresholds=calibration.presence_thresholds()))
        before.append((scene, {c: plain.mask(c) for c in SHAPES}))
        after.append((scene, {c: tuned.mask(c) for c in SHAPES}))
    return {"before": score(before), "after": score(after), "calibration": calibration.to_dict()}


def table(report: dict) -> str:
    """The markdown section: per set and split, before → after, then the means."""
    lines = [f"Machine: {platform.machine()}, 1 torch thread, cpu. Model `{report['model']}`, method {report['method']}, "
             f"every label in the prompt. Command: `{report['command']}`. Per split: calibrated on {report['fit_images']} "
             f"annotated scenes, scored on {report['held_out_images']} others (dataset-level IoU per class; a spurious "
             "region is a proposal for a class the image lacks). Default shrinkage (FitPrior()): nothing moves below 8 "
             "observations of a label, a fit moves n/(n+10) of the way and only for a shrunk gain >= 0.01.",
             "", "| set | split | mIoU before | mIoU after | spurious/img before | after | missed/img before | after | "
             "calibration |", "|---|---|---|---|---|---|---|---|---|"]
    names = [n for n in ("shifted", "independent", "in_distribution") if n in report["mean"]]
    for name in names:
        for k, run_ in enumerate(report[name]):
            b, a, c = run_["before"], run_["after"], run_["calibration"]
            moved = [f"{c['knob']} {c['mask_value']}"] if c["mask_value"] is not None else []
            moved += [f"{w} P > {v['presence_threshold']:.2f}" for w, v in c["labels"].items()
                      if v.get("presence_threshold") is not None]
            moved += [f"{w} score > {v['threshold']:.2f}" for w, v in c["labels"].items() if v["threshold"] > 0]
            lines.append(f"| {name.replace('_', '-')} | {k} | {b['miou']:.3f} | {a['miou']:.3f} | "
                         f"{b['spurious_per_image']:.2f} | {a['spurious_per_image']:.2f} | {b['missed_per_image']:.2f} | "
                         f"{a['missed_per_image']:.2f} | {', '.join(moved) or 'defaults kept'} |")
    for name in names:
        m = report["mean"][name]
        lines.append(f"| {name.replace('_', '-')} | mean | {m['before']:.3f} | {m['after']:.3f} | "
                     f"{m['spurious_before']:.2f} | {m['spurious_after']:.2f} | | | |")
    u = report.get("unshrunk") or {}
    if u:
        verdict = lambda name: "better" if report["mean"][name]["after"] > u[name] else "not better"  # noqa: E731
        lines += ["", "The same splits without shrinkage (FitPrior(strength=0, margin=0)), mean mIoU after: " + "; ".join(
            f"{n.replace('_', '-')} {u[n]:.3f} (shrinkage {verdict(n)})" for n in names) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:shapes")
    ap.add_argument("--method", default="seediff")
    ap.add_argument("--fit", type=int, default=20, help="annotated scenes per split")
    ap.add_argument("--held-out", type=int, default=40, help="scored scenes per split")
    ap.add_argument("--splits", type=int, default=3, help="independent scene draws per set")
    ap.add_argument("--sets", nargs="+", default=["shifted", "independent", "in_distribution"])
    ap.add_argument("--out", type=Path, default=None, help="markdown section to write (JSON beside it)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from seediff.pipeline import load_model

    pipe = load_model(args.model, device="cpu")  # the pipeline and the model's own defaults
    pipe.pipe.set_progress_bar_config(disable=True)
    n = args.fit + args.held_out
    t0 = time.perf_counter()
    report = {"command": "python bench/calibration.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "model": args.model, "method": args.method, "fit_images": args.fit, "held_out_images": args.held_out}
    sets = {"shifted": (shifted_scene, SHIFTED_OFFSET), "independent": (independent_scene, INDEPENDENT_OFFSET),
            "in_distribution": (in_distribution_scene, IN_DIST_OFFSET)}
    sets = {k: v for k, v in sets.items() if k in args.sets}
    scenes = {name: [[make(off + 10_000 * k + i) for i in range(n)] for k in range(args.splits)]
              for name, (make, off) in sets.items()}
    report["mean"], unshrunk = {}, {}
    for name in sets:
        report[name] = [run(pipe, split, args.fit, args.method, FitPrior()) for split in scenes[name]]
        free = [run(pipe, split, args.fit, args.method, FitPrior(strength=0.0, margin=0.0)) for split in scenes[name]]
        mean = lambda runs, key, what: float(np.mean([r[key][what] for r in runs]))  # noqa: E731
        report["mean"][name] = {"before": mean(report[name], "before", "miou"),
                                "after": mean(report[name], "after", "miou"),
                                "spurious_before": mean(report[name], "before", "spurious_per_image"),
                                "spurious_after": mean(report[name], "after", "spurious_per_image")}
        unshrunk[name] = mean(free, "after", "miou")
    report["unshrunk"] = unshrunk
    report["seconds"] = round(time.perf_counter() - t0, 1)
    text = table(report)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    return report


if __name__ == "__main__":
    main()
