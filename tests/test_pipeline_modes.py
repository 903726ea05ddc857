"""Loading (offline, clear errors) and the generate / photo modes."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import seediff
from seediff.modes import photo_size
from seediff.pipeline import ModelLoadError, resolve_device, resolve_dtype


def test_tiny_pipeline_save_reload_offline(tiny_pipe_path):
    """A fresh process with HF_HUB_OFFLINE=1 loads the saved folder and tokenizes words as single tokens."""
    code = (
        "import seediff, sys;"
        f"p = seediff.load_pipeline({str(tiny_pipe_path)!r}, device='cpu');"
        "ids = p.tokenizer('triangle', add_special_tokens=False).input_ids;"
        "print(len(ids), type(p).__name__, p.unet.dtype)"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-3:] == ["1", "StableDiffusionPipeline", "torch.float32"]


def test_uncached_hub_id_fails_fast_with_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="Pass a local diffusers folder"):
        seediff.load_pipeline("someone/not-a-cached-model")


def test_bad_paths(tmp_path):
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        seediff.load_pipeline(tmp_path)
    f = tmp_path / "notes.txt"
    f.write_text("x")
    with pytest.raises(ModelLoadError, match="not a checkpoint"):
        seediff.load_pipeline(f)
    with pytest.raises(ModelLoadError, match="does not exist"):
        seediff.load_pipeline(tmp_path / "missing" / "deeper" / "model")
    with pytest.raises(ModelLoadError, match="unknown builtin"):
        seediff.load_pipeline("builtin:nope")


def test_device_and_dtype_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_dtype(None, torch.device("cuda")) == torch.float16
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("int8", torch.device("cpu"))


def test_generate_is_deterministic_by_seed(tiny_pipe):
    a = seediff.generate(tiny_pipe, "a photo of a dog", seed=3, steps=4)
    b = seediff.generate(tiny_pipe, "a photo of a dog", seed=3, steps=4)
    c = seediff.generate(tiny_pipe, "a photo of a dog", seed=4, steps=4)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))
    assert torch.equal(a.maps.cross_maps("dog", 1), b.maps.cross_maps("dog", 1))
    assert a.maps.mode == "generate" and a.maps.original_hw == (32, 32)
    assert a.maps.image.shape == (32, 32, 3)


def test_prompt_over_limit(tiny_pipe):
    with pytest.raises(ValueError, match="takes at most 77"):
        seediff.generate(tiny_pipe, "a dog " * 60, steps=2)
    with pytest.raises(ValueError, match="non-empty"):
        seediff.generate(tiny_pipe, "  ", steps=2)


@pytest.mark.parametrize("mode", ["noise", "denoise", "invert"])
def test_photo_modes_on_odd_sized_file(tiny_pipe, tmp_path, mode):
    """A real PNG of odd size with EXIF rotation: maps align to the photo as the user sees it."""
    rng = np.random.default_rng(0)
    arr = (rng.random((37, 53, 3)) * 255).astype(np.uint8)
    path = tmp_path / "odd.jpg"
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° on display
    img.save(path, exif=exif)
    res = seediff.read_photo(tiny_pipe, path, "a photo of a dog", mode=mode, steps=3)
    maps = res.maps
    assert maps.mode == mode
    assert maps.original_hw == (53, 37)  # EXIF orientation applied: portrait
    assert maps.image.shape == (53, 37, 3)
    H, W = maps.meta["image_hw"]
    assert (H // tiny_pipe.vae_scale_factor, W // tiny_pipe.vae_scale_factor) == maps.latent_hw
    assert H >= W  # aspect kept
    assert maps.cross_maps("dog", 1).shape[1:] == maps.level_hw(1)
    expected_steps = 1 if mode == "noise" else 3
    assert len(maps.timesteps) == expected_steps
    if mode == "noise":
        assert maps.timesteps == [100]
    else:
        assert max(maps.timesteps) < 500


def test_photo_mode_errors(tiny_pipe):
    img = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ValueError, match="mode must be one of"):
        seediff.read_photo(tiny_pipe, img, "a dog", mode="magic")
    with pytest.raises(ValueError, match="t must be in"):
        seediff.read_photo(tiny_pipe, img, "a dog", t=5000)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        seediff.read_photo(tiny_pipe, np.zeros((20, 20), np.float32), "a dog")
    with pytest.raises(TypeError, match="PIL image"):
        seediff.read_photo(tiny_pipe, 42, "a dog")


def test_photo_size_keeps_aspect_and_multiple():
    assert photo_size((512, 512), 512, 64) == (512, 512)
    H, W = photo_size((480, 640), 512, 64)
    assert H % 64 == 0 and W % 64 == 0 and W > H
    assert photo_size((10, 160), 32, 16)[0] == 16  # never below one multiple
    with pytest.raises(ValueError, match="photos up to 16:1 are read"):  # a thinner strip is refused
        photo_size((10, 4000), 512, 64)


def test_corrupt_single_file_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x00not a safetensors file")
    with pytest.raises(ModelLoadError, match="could not load checkpoint file"):
        seediff.load_pipeline(bad, device="cpu")
