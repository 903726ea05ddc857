"""The numbers behind tests/test_quality.py's floors (12 one-object, 24 two-object photo scenes, 24 generated
images on builtin:shapes): mIoU per split for SeeDiff (BENCH_CONFIG), its overlap='argmax' variant, DiffuMask-style
and the whole image, printed to 6 decimals so two trees can be compared exactly (e.g. before/after a refactor).

    OMP_NUM_THREADS=1 python bench/quality_subset.py [TREE]   # TREE: a checkout to import seediff and bench from
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path


def main(root: Path) -> None:
    """Print the tree's mIoU per split and method (about 3 min on one CPU thread)."""
    sys.path[:0] = [str(root), str(root / "bench")]
    import torch

    import seediff

    spec = importlib.util.spec_from_file_location("quality", root / "bench" / "quality.py")
    q = importlib.util.module_from_spec(spec)
    sys.modules["quality"] = q
    spec.loader.exec_module(q)
    torch.set_num_threads(1)
    pipe = seediff.load_pipeline("builtin:shapes", device="cpu")
    methods = {"SeeDiff": q.segment_method("seediff", q.BENCH_CONFIG),
               "SeeDiff argmax": q.segment_method("seediff", dataclasses.replace(q.BENCH_CONFIG, overlap="argmax")),
               "DiffuMask-style": q.segment_method("diffumask"), "whole image": q.whole_image}
    generated, _ = q.capture_generate(pipe, q.generate_specs(24))
    splits = {"single": q.capture_photo(pipe, q.benchmark_scenes(12, 1)),
              "multi": q.capture_photo(pipe, q.benchmark_scenes(24, 2)), "generate": generated}
    print(f"seediff from {Path(seediff.__file__).parent}")
    for name, records in splits.items():
        print(name, {k: f"{v.miou():.6f}" for k, v in q.evaluate(records, methods).items()})


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]).resolve())
