"""The model families users have, on random-weight equivalents built offline: v-prediction (SD 2.x 768 px),
single-file checkpoints (SD 1.5- and SDXL-shaped, original LDM key layout) and SDXL (two text encoders, added
time/text conditioning, no attention at level 0) through load, generate, read_photo, segment, presence, the
predictor, the CLI and the Label Studio backend."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image
from safetensors.torch import save_file

import seediff
from seediff.capture import layer_levels
from seediff.conditioning import noise_scheduler, predicted_noise
from seediff.defaults import ModelDefaults
from seediff.families import level_defaults, model_family, with_layout_levels
from seediff.methods import config_with
from seediff.pipeline import ModelLoadError
from seediff.presence import presence_scores, present_classes
from seediff.testing import build_tiny_pipeline
from ldm_format import pipeline_to_ldm

PHOTO = (np.random.default_rng(3).random((40, 48, 3)) * 255).astype(np.uint8)
CLASSES = ["dog", "cat", "car"]


def _as_prediction_type(pipe, kind: str):
    """A pipeline whose UNet predicts ``kind`` ('v_prediction' or 'sample') and is otherwise exactly ``pipe``'s
    ε-UNet: the output is converted analytically (x_t = α·x₀ + σ·ε; v = α·ε − σ·x₀ = (ε − σ·x_t)/α)."""
    unet = copy.deepcopy(pipe.unet)
    abar = noise_scheduler(pipe).alphas_cumprod

    def to_kind(module, args, kwargs, output):
        x_t = (args[0] if args else kwargs["sample"]).float()
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        a = abar[int(torch.as_tensor(t).flatten()[0])]
        alpha, sigma = a.sqrt(), (1 - a).sqrt()
        eps = output.sample.float()
        output.sample = ((eps - sigma * x_t) / alpha if kind == "v_prediction" else (x_t - sigma * eps) / alpha)
        return output

    unet.register_forward_hook(to_kind, with_kwargs=True)
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type=kind)
    return type(pipe)(**{**pipe.components, "unet": unet, "scheduler": scheduler})


# ---- v-prediction ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["v_prediction", "sample"])
def test_predicted_noise_inverts_each_parametrisation(tiny_pipe, kind):
    sched = noise_scheduler(tiny_pipe)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([300])
    x_t = sched.add_noise(x0, eps, t)
    a = sched.alphas_cumprod[300]
    out = a.sqrt() * eps - (1 - a).sqrt() * x0 if kind == "v_prediction" else x0
    sched.register_to_config(prediction_type=kind)
    assert torch.allclose(predicted_noise(sched, out, x_t, t), eps, atol=1e-5)
    sched.register_to_config(prediction_type="flow")
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        predicted_noise(sched, out, x_t, t)


@pytest.mark.parametrize("kind", ["v_prediction", "sample"])
def test_presence_decision_is_the_same_on_the_equivalent_model(tiny_pipe, kind):
    other = _as_prediction_type(tiny_pipe, kind)
    eps_scores = presence_scores(tiny_pipe, PHOTO, CLASSES)
    other_scores = presence_scores(other, PHOTO, CLASSES)
    assert other_scores == pytest.approx(eps_scores, abs=1e-4)
    assert present_classes(other_scores) == present_classes(eps_scores)
    # The test can fail: reading the v/x0 output as noise (what the code did before) gives other scores.
    other.scheduler.register_to_config(prediction_type="epsilon")
    misread = presence_scores(other, PHOTO, CLASSES)
    assert max(abs(misread[c] - eps_scores[c]) for c in CLASSES) > 1e-3  # 10× the tolerance above


@pytest.mark.parametrize("mode", ["invert", "denoise"])
def test_inversion_and_denoise_are_the_same_on_the_v_model(tiny_pipe, mode):
    v = _as_prediction_type(tiny_pipe, "v_prediction")
    a = seediff.read_photo(tiny_pipe, PHOTO, "a photo of a dog", mode=mode, steps=4)
    b = seediff.read_photo(v, PHOTO, "a photo of a dog", mode=mode, steps=4)
    assert torch.allclose(a.maps.meta["final_latents"], b.maps.meta["final_latents"], atol=1e-3)
    for name, m in a.maps.cross.items():
        assert torch.allclose(m, b.maps.cross[name], atol=1e-4), name
    assert (seediff.segment(a.maps, ["dog"]).masks == seediff.segment(b.maps, ["dog"]).masks).mean() > 0.99


# ---- single-file checkpoints ---------------------------------------------------------------------------------
@pytest.mark.parametrize("arch,cls", [("tiny", "StableDiffusionPipeline"), ("sdxl-tiny", "StableDiffusionXLPipeline")])
def test_single_file_checkpoint_loads_every_weight(tmp_path, arch, cls):
    folder = tmp_path / "diffusers"
    pipe = build_tiny_pipeline(folder, arch=arch, seed=5)
    ckpt = tmp_path / "model.safetensors"
    save_file(pipeline_to_ldm(pipe), str(ckpt))
    assert all(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner."))
               for k in pipeline_to_ldm(pipe))
    loaded = seediff.load_pipeline(ckpt, device="cpu", config=folder)
    assert type(loaded).__name__ == cls
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if getattr(pipe, name, None) is None:
            continue
        want, got = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert set(want) == set(got), name
        assert all(torch.equal(want[k], got[k]) for k in want), name
    made = seediff.generate(loaded, "a photo of a dog and a cat", steps=2)
    config = seediff.load_model(ckpt, device="cpu", config=folder).defaults.config("seediff")
    assert seediff.segment(made.maps_for(0), ["dog", "cat"], config=config).masks.shape[0] == 2
    with pytest.raises(ModelLoadError, match="needs the model's config"):
        seediff.load_pipeline(ckpt, device="cpu")  # offline and no config: one clear error


@pytest.mark.parametrize("arch,components", [("tiny", {"unet"}), ("sdxl-tiny", {"unet", "text_encoder_2"})])
def test_checkpoint_family_is_read_from_its_keys_in_both_formats(tmp_path, arch, components):
    from seediff.pipeline import _checkpoint_components

    sd = pipeline_to_ldm(build_tiny_pipeline(arch=arch))
    save_file(sd, str(tmp_path / "m.safetensors"))
    torch.save({"state_dict": sd}, tmp_path / "m.ckpt")  # the old pickled format nests the weights
    assert _checkpoint_components(tmp_path / "m.safetensors") == components
    assert _checkpoint_components(tmp_path / "m.ckpt") == components


def test_cached_sdxl_hub_id_loads_offline(tmp_path, monkeypatch, sdxl_path):
    import shutil

    repo = tmp_path / "hub" / "models--someone--tiny-sdxl"
    shutil.copytree(sdxl_path, repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    loaded = seediff.load_model("someone/tiny-sdxl", device="cpu")
    assert type(loaded.pipe).__name__ == "StableDiffusionXLPipeline"
    assert loaded.defaults.config("seediff").background_levels == (1,)


def test_sdxl_synthesize_writes_a_dataset(tmp_path, sdxl_path):
    from typer.testing import CliRunner

    from seediff.cli import app
    from seediff.coco import read_coco

    out = tmp_path / "data"
    r = CliRunner().invoke(app, ["synthesize", "--classes", "dog", "cat", "--per-class", "1", "--steps", "2",
                                 "--model", str(sdxl_path), "--device", "cpu", "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert [(im["width"], im["height"]) for im in read_coco(out / "coco.json")["images"]] == [(64, 64)] * 2


def test_single_file_config_from_the_environment_serves_the_cli(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from seediff.cli import app

    folder = tmp_path / "diffusers"
    save_file(pipeline_to_ldm(build_tiny_pipeline(folder, arch="sdxl-tiny")), str(tmp_path / "xl.safetensors"))
    monkeypatch.setenv("SEEDIFF_MODEL_CONFIG", str(folder))
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(PHOTO).save(photos / "a.png")
    r = CliRunner().invoke(app, ["annotate", str(photos), "--classes", "dog", "cat", "--out", str(tmp_path / "a.json"),
                                 "--model", str(tmp_path / "xl.safetensors"), "--device", "cpu", "--no-progress"])
    assert r.exit_code == 0, r.output


def test_models_without_a_unet_are_refused_with_the_reason(tmp_path):
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusion3Pipeline", '
                                               '"transformer": ["diffusers", "SD3Transformer2DModel"]}')
    with pytest.raises(ModelLoadError, match="has no UNet: seediff reads UNet-based"):
        seediff.load_pipeline(tmp_path, device="cpu")


# ---- SDXL ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sdxl_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("sdxl") / "pipe"
    build_tiny_pipeline(path, arch="sdxl-tiny")
    return path


@pytest.fixture(scope="module")
def sdxl_model(sdxl_path):
    return seediff.load_model(sdxl_path, device="cpu")


@pytest.fixture(scope="module")
def sdxl(sdxl_model):
    return sdxl_model.pipe


def test_sdxl_folder_loads_as_sdxl_with_its_levels(sdxl_model, tiny_pipe):
    sdxl, defaults = sdxl_model.pipe, sdxl_model.defaults
    assert type(sdxl).__name__ == "StableDiffusionXLPipeline"
    assert model_family(sdxl.unet) == "sdxl" and model_family(tiny_pipe.unet) == "sd-layout"
    assert level_defaults(sdxl.unet) == {"seediff": {"background_levels": (1,)}, "diffumask": {"levels": (2, 1)}}
    assert level_defaults(tiny_pipe.unet) == {}
    assert defaults.config("seediff").background_levels == (1,) and defaults.config("diffumask").levels == (2, 1)
    assert defaults.config("seediff").seed_levels == (2,) and defaults.config("daam").levels is None
    assert with_layout_levels(ModelDefaults(), tiny_pipe.unet) == ModelDefaults()


def test_layout_levels_go_under_the_folders_own_settings(sdxl):
    own = ModelDefaults({"seediff": config_with("seediff", {"threshold": 0.3}),
                         "diffumask": config_with("diffumask", {"levels": [2]})})
    merged = with_layout_levels(own, sdxl.unet)
    assert merged.config("seediff").threshold == 0.3 and merged.config("seediff").background_levels == (1,)
    assert merged.config("diffumask").levels == (2,)  # set by the folder: kept


def test_sdxl_generate_records_every_transformer_block_of_each_level(sdxl, sdxl_model):
    made = seediff.generate(sdxl, "a photo of a dog and a cat", steps=4, guidance=5.0)
    maps = made.maps_for(0)
    assert made.image.size == (64, 64) and maps.latent_hw == (32, 32)
    attn2 = [n for n in layer_levels(sdxl.unet) if n.endswith("attn2")]
    # depth 2 at level 1 (2 down + 3 up attentions), 3 at level 2 (2 down + mid + 3 up): 4 + 6 + 6 + 3 + 9 = 28
    assert len(maps.cross) == len(attn2) == 28
    assert {lv: sum(1 for n in maps.cross if maps.levels[n] == lv) for lv in (1, 2)} == {1: 10, 2: 18}
    assert maps.available_levels("self") == [1, 2]
    assert maps.self_attention(1).shape == (16 * 16, 16 * 16)
    assert maps.prompt_tokens()[:2] == sdxl.tokenizer("a photo", add_special_tokens=False).input_ids
    with pytest.raises(ValueError, match=r"levels \[0\] .* as SDXL at level 0, takes the levels of its loaded model"):
        seediff.segment(maps, ["dog"])  # the reference levels include 0: the error says where SDXL's are
    for method in ("seediff", "diffumask", "daam"):  # the loaded model's defaults: its layout has no level 0
        out = seediff.segment(maps, ["dog", "cat"], method=method, config=sdxl_model.defaults.config(method))
        assert out.masks.shape == (2, 64, 64)


@pytest.mark.parametrize("mode", ["noise", "denoise", "invert"])
def test_sdxl_reads_photos_in_every_mode(sdxl, sdxl_model, mode):
    read = seediff.read_photo(sdxl, PHOTO, "a photo of a dog and a cat", mode=mode, steps=3)
    assert read.maps.original_hw == (40, 48) and read.maps.available_levels("cross") == [1, 2]
    out = seediff.segment(read.maps, ["dog", "cat"], config=sdxl_model.defaults.config("seediff"))
    assert out.masks.shape == (2, 40, 48)


def test_sdxl_presence_and_predictor(sdxl):
    scores = presence_scores(sdxl, PHOTO, CLASSES)
    assert set(scores) == set(CLASSES) and all(np.isfinite(list(scores.values())))
    predictor = seediff.SeeDiffPredictor(sdxl)
    predictor.set_image(PHOTO)
    out = predictor.predict(["dog", "cat"], points={"dog": [(10, 10, 1)]}, drop_absent=True)
    assert out.labels == ["dog", "cat"] and out.masks.shape == (2, 40, 48)


def test_sdxl_served_by_cli_and_backend(sdxl_path, tmp_path):
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from backend_fixtures import BOTH
    from seediff.cli import app
    from seediff.coco import read_coco
    from seediff_labelstudio.model import SeeDiffModel
    from seediff_labelstudio.server import create_app
    from seediff_labelstudio.settings import Settings

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(PHOTO).save(photos / "a.png")
    out = tmp_path / "a.json"
    r = CliRunner().invoke(app, ["annotate", str(photos), "--classes", "dog", "cat", "--out", str(out), "--model",
                                 str(sdxl_path), "--device", "cpu", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert [(im["width"], im["height"]) for im in read_coco(out)["images"]] == [(48, 40)]

    settings = Settings.from_env({"SEEDIFF_MODEL": str(sdxl_path), "SEEDIFF_DEVICE": "cpu",
                                  "SEEDIFF_ALLOWED_ROOTS": str(photos)})
    model = SeeDiffModel(settings)
    model.load()
    assert model.ready, model.error
    client = TestClient(create_app(settings, model))
    body = {"tasks": [{"id": 1, "data": {"image": "/data/local-files/?d=a.png"}}], "label_config": BOTH}
    res = client.post("/predict", json=body)
    assert res.status_code == 200
    (result,) = res.json()["results"]
    assert result["result"] and {r["original_width"] for r in result["result"]} == {48}


# ---- the prepared GPU script ---------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_script_refuses_clearly_without_cuda():
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(["bash", str(root / "bench" / "gpu.sh")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no CUDA GPU here" in r.stderr and "--dry-run" in r.stderr


def test_gpu_bench_dry_run_measures_and_saves_a_loadable_sdxl(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("gpu_bench", Path(__file__).resolve().parents[1] / "bench" / "gpu_bench.py")
    gpu_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_bench)
    row = gpu_bench.measure("sdxl", True, 1, torch.device("cpu"), torch.float32, tmp_path)
    assert row["arch"] == "sdxl-tiny" and row["ratio"] > 0 and set(row["masks"]) == {"seediff", "diffumask", "daam"}
    assert "| sdxl-tiny | 64 |" in gpu_bench.table([row])
    assert type(seediff.load_pipeline(tmp_path / "sdxl", device="cpu")).__name__ == "StableDiffusionXLPipeline"
