"""What presence costs as the label set grows: UNet prompt rows per task and the measured time of one task.

Rows: a label set of K labels needs G prompts that fit the text encoder (``split_vocabulary``); the read runs the G
prompt rows and, with presence on, each label's leave-one-out row — G + K rows in one batched UNet call (G without
presence). Measured on builtin:shapes (32-token encoder) with the shape words plus made-up labels; the SD 1.5 rows
(77 tokens) follow from the same rule with one-token labels.

    python bench/presence_cost.py --out bench/results/presence_cost.md
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch


def sd15_groups(k: int, tokens_per_label: int = 1, limit: int = 77) -> int:
    """Prompts an SD 1.5 label set needs: '<start> a photo of a x and a y … <end>' ≤ limit tokens."""
    per_prompt = (limit - 2 - 3 + 1) // (2 + tokens_per_label)  # 'a photo of' = 3; the first label has no 'and'
    return -(-k // per_prompt)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 3, 10, 30, 100])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    import seediff
    from seediff.prompts import split_vocabulary
    from seediff.testing.shapes import SHAPES, make_scene

    model = seediff.load_model("builtin:shapes", device="cpu")
    scene = make_scene(200_004, n_objects=2)
    lines = [f"Machine: {platform.machine()}, 1 torch thread, device cpu; model `builtin:shapes` (32-token text encoder), "
             f"one 32 px photo. Command: `python bench/presence_cost.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
             "", "| labels K | prompts G | UNet rows, presence off | UNet rows, presence on | ms / task, off | "
             "ms / task, on | SD 1.5 rows on (one-token labels: G + K) |", "|---|---|---|---|---|---|---|"]
    for k in args.sizes:
        words = (list(SHAPES) + [f"label{i}" for i in range(k)])[:k]
        groups = len(split_vocabulary(model.pipe.tokenizer, words))
        times = {}
        for presence in (False, True):
            runs = []
            for _ in range(args.reps + 1):
                t0 = time.perf_counter()
                predictor = seediff.SeeDiffPredictor.from_model(model)
                predictor.set_image(scene.image)
                predictor.predict(words, presence=presence)
                runs.append(time.perf_counter() - t0)
            times[presence] = min(runs[1:])
        g_sd = sd15_groups(k)
        lines.append(f"| {k} | {groups} | {groups} | {groups + k} | {1000 * times[False]:.0f} | {1000 * times[True]:.0f} | "
                     f"{g_sd + k} (G = {g_sd}) |")
    lines += ["", "Rows are prompt rows of the one batched UNet call that reads the photo (noise mode; each extra row "
              "is one more image-sized UNet evaluation on the GPU). The builtin tokenizer spells unknown words letter "
              "by letter, so its made-up labels need more prompts than real words would; the SD 1.5 column assumes "
              "labels of one CLIP token (COCO's 80 names are mostly one or two). Presence off is one row per prompt."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
