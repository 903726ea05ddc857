"""One way to predict a task: the backend (/predict) and `seediff preannotate` give byte-identical proposals and
the same model_version for the same task and settings (builtin:shapes, a real shapes photo, a non-default seed
and the presence test on, so seed, steps and drop_absent must all agree)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from seediff.jobs import Item, JobSpec
from seediff.testing.shapes import SceneConfig, make_scene
from seediff_labelstudio.labels import label_plan
from seediff_labelstudio.model import SeeDiffModel
from seediff_labelstudio.predict import PredictOptions, model_version_for
from seediff_labelstudio.preannotate import IDENTITY, PreannotateWorker, options_of
from seediff_labelstudio.settings import Settings

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <PolygonLabels name="poly" toName="image">
    <Label value="Circle" predicted_values="circle"/><Label value="Square" predicted_values="square"/>
    <Label value="Triangle" predicted_values="triangle"/>
  </PolygonLabels>
  <BrushLabels name="brush" toName="image">
    <Label value="Circle" predicted_values="circle"/><Label value="Square" predicted_values="square"/>
    <Label value="Triangle" predicted_values="triangle"/>
  </BrushLabels>
</View>"""
KEY = "0123456789abcdef0123456789abcdef01234567"


def _no_ids(result: list[dict]) -> list[dict]:
    """Regions without their ids (random by design: seediff.lsformat.new_region_id, unique per region)."""
    return [{k: v for k, v in r.items() if k != "id"} for r in result]


def test_backend_and_preannotate_give_byte_identical_predictions(tmp_path, monkeypatch):
    Image.fromarray(make_scene(400_041, SceneConfig(), n_objects=2).image).save(tmp_path / "scene.png")
    env = {"SEEDIFF_MODEL": "builtin:shapes", "SEEDIFF_DEVICE": "cpu", "SEEDIFF_ALLOWED_ROOTS": str(tmp_path),
           "SEEDIFF_SEED": "7", "SEEDIFF_DROP_ABSENT": "true", "SEEDIFF_PHOTO_MODE": "noise",
           "SEEDIFF_TIMESTEP": "100"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)  # preannotate's fetcher reads the allow-list from the environment, as the backend
    settings = Settings.from_env(env)
    plan = label_plan(CONFIG)
    task = {"id": 3, "data": {"image": "/data/local-files/?d=scene.png"}}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the worker runs with threads=1; CPU reductions depend on the thread count
    try:
        backend = SeeDiffModel(settings)
        backend.load()
        assert backend.ready, backend.error
        served = backend.predict_task(task, plan)
    finally:
        torch.set_num_threads(threads)
    params = dict(model="builtin:shapes", device="cpu", dtype=None, mode="noise", t=100, steps=10, seed=7,
                  method="seediff", drop_absent=True, threads=1, model_version=None, plan=plan.to_dict(), project=1,
                  url="http://127.0.0.1:9", api_key=KEY, prompt_template="a photo of {}")
    spec = JobSpec("preannotate", params, str(tmp_path / "work"), "seediff_labelstudio.preannotate:PreannotateWorker",
                   IDENTITY)
    worker = PreannotateWorker(spec)
    try:
        record = worker.process(Item("task-3", 7, {"task": 3, "image": task["data"]["image"]}))
    finally:
        worker.teardown()
    assert served["result"], "the backend proposed nothing: the comparison would be empty"
    assert json.dumps(_no_ids(record["result"]), sort_keys=True) == json.dumps(_no_ids(served["result"]), sort_keys=True)
    assert record["score"] == served["score"]
    assert options_of(params).model_version == backend.model_version == served["model_version"]


def test_model_version_is_computed_in_one_place():
    base = PredictOptions(model="/models/sd15/")
    assert base.model_version == model_version_for("/models/sd15/", "seediff", "noise", 100)
    seeded = PredictOptions(model="/models/sd15/", seed=7)
    assert seeded.model_version.startswith(base.model_version + "-") and seeded.model_version != base.model_version
    assert PredictOptions(steps=20).model_version == PredictOptions().model_version  # steps unused in noise mode
    assert PredictOptions(photo_mode="invert", steps=20).model_version != PredictOptions(photo_mode="invert").model_version
    assert PredictOptions.from_settings(Settings.from_env({})) == PredictOptions()
    with pytest.raises(ValueError, match="method must be one of"):
        PredictOptions(method="sam")
    with pytest.raises(ValueError, match="exactly once"):
        PredictOptions(prompt_template="no slot")
    assert PredictOptions(prompt_template="a photo of {classes}").prompt(["dog", "cat"]) == "a photo of a dog and a cat"
