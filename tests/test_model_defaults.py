"""A model folder may ship ``seediff.json``: the mask-method settings (and the presence threshold) measured best
for that model, loaded once as a typed ``ModelDefaults`` with the model and passed to whoever uses them.
builtin:shapes ships seed_levels=(1,), pamr_threshold=0.6 and presence_threshold=0.0005; every path that loads it
(backend, CLI synthesize/annotate/show, preannotate, predictor) gets them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from seediff.baseline import DiffuMaskConfig
from seediff.defaults import ModelDefaults, parse_model_defaults
from seediff.methods import SeeDiffConfig
from seediff.pipeline import BUILTIN_MODELS, ModelLoadError, load_model, model_defaults

SHAPES_CONFIG = SeeDiffConfig(seed_levels=(1,), pamr_threshold=0.6, snap_iterations=5, snap_dilations=(1, 2))


def test_builtin_shapes_ships_its_measured_settings():
    d = model_defaults(BUILTIN_MODELS["builtin:shapes"])
    assert d == ModelDefaults({"seediff": SHAPES_CONFIG}, presence_threshold=0.0005, presence=d.presence)
    assert d.presence is not None and d.presence.level == 1  # fitted by bench/presence.py (tests/test_evidence.py)
    assert d.config("seediff") == SHAPES_CONFIG and d.config("diffumask") == DiffuMaskConfig()


def test_defaults_apply_only_to_their_method_and_lists_become_tuples():
    d = parse_model_defaults({"seediff": {"seed_levels": [1], "threshold": 0.3}, "about": "x"})
    assert d.config("seediff") == SeeDiffConfig(seed_levels=(1,), threshold=0.3)
    assert d.config("diffumask") == DiffuMaskConfig()
    assert ModelDefaults().config("seediff") == SeeDiffConfig()
    assert ModelDefaults().presence_threshold == -0.002
    with pytest.raises(ValueError, match="unknown method 'sam'"):
        ModelDefaults().config("sam")
    with pytest.raises(TypeError, match="takes a SeeDiffConfig"):
        ModelDefaults({"seediff": DiffuMaskConfig()})
    with pytest.raises(ValueError, match="presence_threshold must be a finite number"):
        ModelDefaults(presence_threshold="low")


def test_bad_defaults_are_clear_errors(tmp_path):
    assert model_defaults(tmp_path) == ModelDefaults()
    (tmp_path / "seediff.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        model_defaults(tmp_path)
    (tmp_path / "seediff.json").write_text(json.dumps({"seediff": [1]}))
    with pytest.raises(ModelLoadError, match="must map method names"):
        model_defaults(tmp_path)
    (tmp_path / "seediff.json").write_text(json.dumps({"seediff": {"seed_level": [1]}}))
    with pytest.raises(ModelLoadError, match=r"unknown SeeDiffConfig fields \['seed_level'\]"):
        model_defaults(tmp_path)  # refused when the model loads, not at its first mask
    (tmp_path / "seediff.json").write_text(json.dumps({"seediff": {"threshold": 2}}))
    with pytest.raises(ModelLoadError, match="threshold"):
        model_defaults(tmp_path)
    (tmp_path / "seediff.json").write_text(json.dumps({"sam": {}}))
    with pytest.raises(ModelLoadError, match="unknown method 'sam'"):
        model_defaults(tmp_path)
    (tmp_path / "seediff.json").write_text(json.dumps({"presence_threshold": None}))
    with pytest.raises(ModelLoadError, match="presence_threshold"):
        model_defaults(tmp_path)


def test_loaded_model_carries_its_defaults_not_the_pipe(tiny_pipe_path, tmp_path):
    """A user's model folder with a seediff.json: load_model returns its defaults beside the pipe; nothing is
    glued onto the pipe or the maps, and the predictor uses them when given no config."""
    import shutil

    from seediff.modes import read_photo
    from seediff.predictor import SeeDiffPredictor

    folder = tmp_path / "model"
    shutil.copytree(tiny_pipe_path, folder)
    (folder / "seediff.json").write_text(json.dumps({"seediff": {"pamr_iterations": 0}, "presence_threshold": 0.5}))
    loaded = load_model(folder, device="cpu")
    assert loaded.defaults.config("seediff").pamr_iterations == 0 and loaded.defaults.presence_threshold == 0.5
    assert not hasattr(loaded.pipe, "seediff_defaults")
    maps = read_photo(loaded.pipe, np.full((64, 64, 3), 128, np.uint8), "a photo of a circle", t=100).maps_for(0)
    assert "method_defaults" not in maps.meta
    p = SeeDiffPredictor.from_model(loaded)
    p.set_image(np.full((64, 64, 3), 128, np.uint8), "a photo of a circle", t=100)
    assert p.predict("circle").config.pamr_iterations == 0


def test_builtin_shapes_defaults_reach_every_path(tmp_path):
    """The dataset jobs (CLI synthesize/annotate), preannotate and the backend take segment()'s config and the
    presence threshold from the loaded model (each loads builtin:shapes for real here)."""
    from PIL import Image

    from seediff.jobs.datasets import AnnotateWorker, annotate_spec
    from seediff_labelstudio.labels import label_plan
    from seediff_labelstudio.model import SeeDiffModel
    from seediff_labelstudio.predict import PredictOptions, read_photo_for, task_masks
    from seediff_labelstudio.settings import Settings

    spec = annotate_spec(tmp_path / "work", {"model": "builtin:shapes", "device": "cpu", "classes": ["circle"],
                                             "method": "seediff"})
    worker = AnnotateWorker(spec)
    try:
        assert worker.config == SHAPES_CONFIG
    finally:
        worker.teardown()
    backend = SeeDiffModel(Settings(device="cpu"))
    backend.load()
    assert backend.loaded.defaults == model_defaults(BUILTIN_MODELS["builtin:shapes"])
    plan = label_plan('<View><Image name="i" value="$image"/><BrushLabels name="b" toName="i">'
                      '<Label value="circle"/><Label value="square"/></BrushLabels></View>')
    image = Image.new("RGB", (32, 32), (30, 40, 200))
    predictor = read_photo_for(backend.loaded, image, plan.classes, PredictOptions())
    assert predictor.defaults.presence_threshold == 0.0005
    assert task_masks(predictor, plan.classes, PredictOptions()).config == SHAPES_CONFIG
