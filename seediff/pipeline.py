"""Load: a diffusers Stable Diffusion 1.x/2.x or SDXL pipeline, from a folder, a single checkpoint file or a hub id.

``builtin:shapes`` names the small model this project trains and ships (``seediff/models/shapes``), so the
CLI, the backend and the tests work offline. Real use means SD 1.5/2.1/SDXL weights from a local folder or file.
The pipeline class follows the model: a folder or config with a second text encoder, or a checkpoint file with
SDXL's OpenCLIP keys, loads as ``StableDiffusionXLPipeline``; anything else with a UNet as
``StableDiffusionPipeline``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .defaults import ModelDefaults, read_model_defaults

__all__ = ["load_model", "load_pipeline", "LoadedModel", "model_defaults", "resolve_device", "resolve_dtype",
           "BUILTIN_MODELS", "ModelLoadError"]

_MODELS_DIR = Path(__file__).parent / "models"
BUILTIN_MODELS: dict[str, Path] = {"builtin:shapes": _MODELS_DIR / "shapes"}
_SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")
MODEL_CONFIG_ENV = "SEEDIFF_MODEL_CONFIG"  # config folder for single-file checkpoints when none is passed


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says what to pass instead."""


@dataclass(frozen=True)
class LoadedModel:
    """A loaded pipeline and the defaults its folder ships (``seediff.json``; reference values when none)."""

    pipe: Any
    defaults: ModelDefaults


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device to run on: the one asked for, else cuda > mps > cpu."""
    if device is not None and str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """fp16 on CUDA, fp32 elsewhere, unless a dtype is given ('fp16', 'bf16', 'fp32' or a torch dtype)."""
    if dtype is None or dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp32": torch.float32, "float32": torch.float32}
    if dtype not in names:
        raise ValueError(f"dtype must be one of {sorted(names)}, got {dtype!r}")
    return names[dtype]


def _looks_like_hub_id(model: str) -> bool:
    """'org/name' or 'name' with no path separators beyond one slash and no file suffix."""
    return model.count("/") <= 1 and not model.startswith((".", "/", "~")) and not model.endswith(_SINGLE_FILE_SUFFIXES)


def _pipeline_class(components: set[str], where: object):
    """(pipeline class, its extra kwargs) for a model with these components: SDXL if it has a second text encoder."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if "unet" not in components:
        raise ModelLoadError(f"{where} has no UNet: seediff reads UNet-based Stable Diffusion 1.x/2.x and SDXL models")
    if "text_encoder_2" in components:
        return StableDiffusionXLPipeline, {"add_watermarker": False}
    return StableDiffusionPipeline, {"safety_checker": None, "requires_safety_checker": False}


def _index_components(folder: Path) -> set[str]:
    """Component names a diffusers folder's ``model_index.json`` lists (those not set to null)."""
    import json

    index = json.loads((folder / "model_index.json").read_text("utf-8"))
    return {k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0] is not None}


def _checkpoint_components(path: Path) -> set[str]:
    """Components a single checkpoint file holds, from its key names (SDXL: OpenCLIP under embedders.1)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    else:
        sd = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
        keys = list(sd.get("state_dict", sd))
    found = {"unet"} if any(k.startswith("model.diffusion_model.") for k in keys) else set()
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        found.add("text_encoder_2")
    return found


def _from_folder(path: Path, dtype: torch.dtype):
    """A diffusers folder (``model_index.json``)."""
    if not (path / "model_index.json").is_file():
        raise ModelLoadError(
            f"{path} is not a diffusers pipeline folder (no model_index.json). Pass a folder saved with "
            "`save_pretrained`, a .safetensors/.ckpt checkpoint file, or a hub id."
        )
    cls, extra = _pipeline_class(_index_components(path), path)
    return cls.from_pretrained(str(path), dtype=dtype, local_files_only=True, **extra)


def _from_single_file(path: Path, dtype: torch.dtype, config: str | None = None):
    """A single SD/SDXL checkpoint file, via diffusers' single-file loading (its config: ``config`` folder or cache)."""
    extra = {"config": str(config)} if config is not None else {}
    try:
        if config is not None and (Path(config) / "model_index.json").is_file():
            cls, kwargs = _pipeline_class(_index_components(Path(config)), config)
        else:
            cls, kwargs = _pipeline_class(_checkpoint_components(path), path)
        return cls.from_single_file(str(path), dtype=dtype, **kwargs, **extra)
    except ModelLoadError:
        raise
    except Exception as exc:  # diffusers raises many types here; one clear message is what users need
        raise ModelLoadError(
            f"could not load checkpoint file {path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. "
            "Single-file loading needs the model's config (cached from the hub, or pass `config=` / set "
            f"{MODEL_CONFIG_ENV} to a local diffusers folder of the same family, e.g. SD 1.5 or SDXL base)."
        ) from exc


def _from_hub(model_id: str, dtype: torch.dtype):
    """A hub id: from the local cache first; the network only when the hub is not marked offline."""
    from huggingface_hub import hf_hub_download

    def load(local_files_only: bool):
        index = Path(hf_hub_download(model_id, "model_index.json", local_files_only=local_files_only))
        cls, extra = _pipeline_class(_index_components(index.parent), model_id)
        return cls.from_pretrained(model_id, dtype=dtype, local_files_only=local_files_only, **extra)

    try:
        return load(local_files_only=True)
    except Exception as cached_exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
        hint = (
            f"model {model_id!r} is not a local folder or file and is not in the Hugging Face cache. "
            "Pass a local diffusers folder (e.g. one saved with `save_pretrained`), a .safetensors/.ckpt file, "
            "or 'builtin:shapes' for the bundled demo model."
        )
        if offline:
            raise ModelLoadError(hint + " (HF_HUB_OFFLINE is set, so the hub was not contacted.)") from None
        os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
        os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
        try:
            return load(local_files_only=False)
        except Exception as exc:
            raise ModelLoadError(hint + f" Downloading it failed: {type(exc).__name__}.") from None


def load_model(model: str | os.PathLike = "builtin:shapes", device: str | torch.device | None = None,
               dtype: str | torch.dtype | None = None, *, config: str | os.PathLike | None = None) -> LoadedModel:
    """Load a Stable Diffusion 1.x/2.x or SDXL pipeline from a folder, a checkpoint file, a hub id or a builtin name,
    with the model's own defaults (its folder's ``seediff.json``, validated here).

    Device: cuda > mps > cpu unless given; dtype: fp16 on CUDA, fp32 elsewhere unless given.
    ``config``: for a single checkpoint file offline, a local diffusers folder (or cached hub id) with its configs;
    default: the ``SEEDIFF_MODEL_CONFIG`` environment variable (how the CLI, the backend and jobs pass it).
    Raises ModelLoadError with what to pass instead when the model cannot be found or its defaults are bad.
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    name = os.fspath(model)
    if name in BUILTIN_MODELS:
        path = BUILTIN_MODELS[name]
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(f"{name} is not installed at {path}: reinstall seediff, or pass a model folder")
    elif name.startswith("builtin:"):
        raise ModelLoadError(f"unknown builtin model {name!r}; known: {sorted(BUILTIN_MODELS)}")
    else:
        path = Path(name).expanduser()
    defaults = model_defaults(path) if path.is_dir() else ModelDefaults()  # refuse a bad file before loading
    if path.is_dir():
        pipe = _from_folder(path, dt)
    elif path.is_file():
        if not name.endswith(_SINGLE_FILE_SUFFIXES):
            raise ModelLoadError(f"{path} is a file but not a checkpoint ({', '.join(_SINGLE_FILE_SUFFIXES)})")
        pipe = _from_single_file(path, dt, config if config is not None else os.environ.get(MODEL_CONFIG_ENV) or None)
    elif _looks_like_hub_id(name):
        pipe = _from_hub(name, dt)
    else:
        raise ModelLoadError(f"model path {path} does not exist")
    pipe = pipe.to(dev)
    pipe.set_progress_bar_config(disable=True)
    from .families import with_layout_levels

    return LoadedModel(pipe, with_layout_levels(defaults, pipe.unet))  # SDXL: no level-0 attention


def load_pipeline(model: str | os.PathLike = "builtin:shapes", device: str | torch.device | None = None,
                  dtype: str | torch.dtype | None = None, *, config: str | os.PathLike | None = None):
    """The diffusers pipeline alone (:func:`load_model` without the model's defaults), same arguments."""
    return load_model(model, device, dtype, config=config).pipe


def model_defaults(folder: str | os.PathLike) -> ModelDefaults:
    """The defaults a model folder ships (:func:`seediff.defaults.read_model_defaults`); ModelLoadError if bad."""
    try:
        return read_model_defaults(folder)
    except (TypeError, ValueError) as e:
        raise ModelLoadError(str(e)) from None
