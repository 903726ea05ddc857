"""The shipped ``builtin:shapes`` model: SD's layout, its vocabulary, and shape words that find their objects.

Floors sit below values measured on the same scenes (stated next to each); they guard against shipping a
model whose attention is no better than chance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from seediff.capture import CaptureConfig, layer_levels, upsample
from seediff.modes import generate, read_photo
from seediff.pipeline import BUILTIN_MODELS, load_pipeline
from seediff.testing.shapes import COLOURS, SHAPES, VOCABULARY, make_scene

MODEL_DIR = BUILTIN_MODELS["builtin:shapes"]
pytestmark = pytest.mark.skipif(not (MODEL_DIR / "model_index.json").is_file(), reason="builtin:shapes not installed")

SEED_OFFSET = 500_000  # disjoint from training (>= 1e6), the training probe (0..47) and bench/quality.py splits


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(1)
    return load_pipeline("builtin:shapes", device="cpu", dtype="fp32")


def test_model_folder_is_small_and_documented():
    size = sum(p.stat().st_size for p in Path(MODEL_DIR).rglob("*") if p.is_file())
    assert size <= 20 * 2**20, f"{size / 2**20:.1f} MiB"
    assert (MODEL_DIR / "TRAINING.md").is_file()


def test_layout_has_self_and_cross_attention_at_several_levels(pipe):
    levels = layer_levels(pipe.unet)
    cross = {lv for n, lv in levels.items() if n.endswith("attn2")}
    first_decoder_self = {lv for n, lv in levels.items() if n.startswith("up_blocks.") and n.endswith("attn1")}
    assert cross >= {0, 1, 2}
    assert first_decoder_self >= {0, 1, 2}  # what SeeDiff's expansion and background steps read
    assert pipe.vae_scale_factor == 2 and pipe.unet.config.sample_size == 16


def test_vocabulary_words_are_single_tokens(pipe):
    for word in VOCABULARY:
        assert len(pipe.tokenizer(word, add_special_tokens=False).input_ids) == 1, word


def _right_object_rate(pipe, n: int, level: int) -> float:
    """How often a shape word's map is higher inside its object than inside the other (2-object scenes)."""
    hits = []
    cfg = CaptureConfig(cross_levels=(level,), self_levels=(), t_window=(0.0, 1.0))
    for i in range(n):
        scene = make_scene(SEED_OFFSET + i, n_objects=2)
        prompt = "a photo of " + " and ".join(f"a {s}" for s in SHAPES if s in scene.classes)
        maps = read_photo(pipe, scene.image, prompt, mode="noise", t=100, seed=i, capture=cfg).maps
        for k, obj in enumerate(scene.objects):
            m = upsample(maps.cross_maps(obj.shape, level).mean(0), scene.image.shape[:2])
            own, other = torch.from_numpy(scene.instance_masks[k]), torch.from_numpy(scene.instance_masks[1 - k])
            hits.append(float(m[own].mean() > m[other].mean()))
    return float(np.mean(hits))


def test_shape_words_pick_their_object_in_two_object_scenes(pipe):
    rate = _right_object_rate(pipe, n=12, level=1)
    assert rate >= RIGHT_OBJECT_FLOOR, rate


def test_generates_the_prompted_colour(pipe):
    traced = generate(pipe, "a red circle", seed=0, steps=15, guidance=5.0)
    rgb = np.asarray(traced.image, dtype=np.float64)
    near = np.linalg.norm(rgb - np.array(COLOURS["red"]), axis=-1) < 100
    assert near.mean() >= 0.03, near.mean()  # measured 0.086 (a 32×32 image: ~88 red pixels)


# Measured on these 12 scenes (24 words) with the shipped model (third training stage): 1.00 at levels 0, 1 and 2
# (the previous model: 0.83 at level 1, 0.79 at 0, 0.75 at 2); chance is 0.5, and the same recipe without the
# grounding loss stayed at chance (see TRAINING.md).
RIGHT_OBJECT_FLOOR = 0.85
