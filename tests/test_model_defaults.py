"""A model folder may ship ``seediff.json``: the mask-method settings measured best for that model, used
whenever a caller (backend, CLI, API) passes no config. builtin:shapes ships seed_levels=(1,) and pamr_threshold=0.6."""

from __future__ import annotations

import json

import pytest

from seediff.capture import AttentionMaps
from seediff.pipeline import BUILTIN_MODELS, ModelLoadError, method_defaults
from seediff.segment import DiffuMaskConfig, SeeDiffConfig, default_config


def test_builtin_shapes_ships_its_measured_seed_level():
    assert method_defaults(BUILTIN_MODELS["builtin:shapes"]) == {"seediff": {"seed_levels": [1], "pamr_threshold": 0.6}}


def test_defaults_apply_only_to_their_method_and_lists_become_tuples():
    maps = AttentionMaps(meta={"method_defaults": {"seediff": {"seed_levels": [1], "threshold": 0.3}}})
    assert default_config("seediff", maps) == SeeDiffConfig(seed_levels=(1,), threshold=0.3)
    assert default_config("diffumask", maps) == DiffuMaskConfig()
    assert default_config("seediff", AttentionMaps()) == SeeDiffConfig()


def test_bad_defaults_are_clear_errors(tmp_path):
    assert method_defaults(tmp_path) == {}
    (tmp_path / "seediff.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        method_defaults(tmp_path)
    (tmp_path / "seediff.json").write_text(json.dumps({"seediff": [1]}))
    with pytest.raises(ModelLoadError, match="must map method names"):
        method_defaults(tmp_path)
    (tmp_path / "seediff.json").write_text(json.dumps({"seediff": {"seed_level": [1]}}))
    with pytest.raises(ModelLoadError, match=r"unknown SeeDiffConfig fields \['seed_level'\]"):
        method_defaults(tmp_path)  # refused when the model loads, not at its first mask
    (tmp_path / "seediff.json").write_text(json.dumps({"seediff": {"threshold": 2}}))
    with pytest.raises(ModelLoadError, match="threshold"):
        method_defaults(tmp_path)
    (tmp_path / "seediff.json").write_text(json.dumps({"sam": {}}))
    with pytest.raises(ModelLoadError, match="unknown method 'sam'"):
        method_defaults(tmp_path)
    maps = AttentionMaps(meta={"method_defaults": {"seediff": {"seed_level": [1]}}})
    with pytest.raises(ValueError, match=r"unknown SeeDiffConfig fields \['seed_level'\]"):
        default_config("seediff", maps)


def test_loaded_pipeline_carries_its_defaults_into_the_maps(tiny_pipe_path, tmp_path):
    """A user's model folder with a seediff.json: generate/read_photo put its overrides in the maps."""
    import shutil

    from seediff.modes import read_photo
    from seediff.pipeline import load_pipeline

    folder = tmp_path / "model"
    shutil.copytree(tiny_pipe_path, folder)
    (folder / "seediff.json").write_text(json.dumps({"seediff": {"pamr_iterations": 0}}))
    pipe = load_pipeline(folder, device="cpu")
    import numpy as np

    maps = read_photo(pipe, np.full((64, 64, 3), 128, np.uint8), "a photo of a circle", t=100).maps_for(0)
    assert maps.meta["method_defaults"] == {"seediff": {"pamr_iterations": 0}}
    assert default_config("seediff", maps).pamr_iterations == 0
