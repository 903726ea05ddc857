"""Modes: where the attention comes from — an image the pipeline *generates*, or an existing *photo*.

Photo modes (all without classifier-free guidance: only the conditional branch's attention is needed):
- ``noise``:   encode with the VAE, add noise at one timestep t, **one** UNet pass (cheapest; DiffSeg/iSeg).
- ``denoise``: noise to ``strength``·T and run the short DDIM denoise back to 0, aggregating every step.
- ``invert``:  DDIM-invert the photo's latent to ``strength``·T (diffusers' ``DDIMInverseScheduler``),
  then denoise back as in ``denoise`` — the trajectory stays on the photo instead of random noise.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from .capture import AttentionMaps, CaptureConfig, trace
from .conditioning import noise_scheduler, predicted_noise, unet_conditioning
from .prompts import check_prompt

__all__ = ["Traced", "generate", "read_photo", "photo_size", "input_size", "as_rgb", "rgb_array", "encode_photo",
           "PHOTO_MODES", "MAX_ASPECT"]

PHOTO_MODES = ("noise", "denoise", "invert")


@dataclass
class Traced:
    """Images and the attention recorded while making or reading them."""

    images: list[Image.Image]
    maps: AttentionMaps

    @property
    def image(self) -> Image.Image:
        """The first (often the only) image."""
        return self.images[0]

    def maps_for(self, i: int) -> AttentionMaps:
        """The attention of image ``i`` alone, with that image attached (for refinement)."""
        one = self.maps.select(i) if self.maps.batch_size > 1 else self.maps
        shared = self.maps.image is not None and self.images[i] is self.images[0]  # a read: every row, one photo
        one.image = self.maps.image if shared else np.asarray(self.images[i].convert("RGB"))
        one.original_hw = (self.images[i].height, self.images[i].width)
        return one


def _size_multiple(pipe) -> int:
    """Pixel multiple that keeps every UNet level's grid exact (VAE factor × 2^(levels−1))."""
    return int(pipe.vae_scale_factor) * 2 ** (len(pipe.unet.config.block_out_channels) - 1)


MAX_ASPECT = 16  # longest side : shortest side of a photo that is read (beyond it: refused, see photo_size)


def photo_size(hw: tuple[int, int], native: int, multiple: int) -> tuple[int, int]:
    """(H', W') with the photo's aspect, area ≈ native², each side a positive multiple of ``multiple``.

    The model's input stays bounded whatever the photo: H'·W' ≤ (native + multiple)² (the long side is shortened
    by whole multiples if rounding the short side up would exceed it), so the self-attention recorded, which grows
    with the square of the input's area, is bounded too. A photo whose aspect is over ``MAX_ASPECT``:1 is refused
    (ValueError): read at that bound its short side would be under a quarter of ``native``, a strip the model's
    coarsest attention levels see as one or two cells, so the masks would carry no information.
    """
    h, w = (int(x) for x in hw)
    if h < 1 or w < 1 or native < 1 or multiple < 1:
        raise ValueError(f"sizes must be positive, got photo {w}×{h}, native {native}, multiple {multiple}")
    if max(h, w) > MAX_ASPECT * min(h, w):
        raise ValueError(f"the photo is {w}×{h} pixels, an aspect ratio of {max(h, w) / min(h, w):.1f}:1; photos up "
                         f"to {MAX_ASPECT}:1 are read (a thinner strip gives the model nothing to segment): crop it "
                         "or pad it to a less extreme aspect ratio")
    scale = native / math.sqrt(h * w)
    H = max(multiple, int(round(h * scale / multiple)) * multiple)
    W = max(multiple, int(round(w * scale / multiple)) * multiple)
    cap = (native + multiple) ** 2
    while H * W > cap:  # only when the short side was rounded up to one multiple: shorten the long side
        if H >= W:
            H -= multiple
        else:
            W -= multiple
    return H, W


def as_rgb(image: Image.Image | np.ndarray | str) -> Image.Image:
    """An RGB PIL image from a PIL image, an HxWx3 uint8 array or a file path, EXIF orientation applied."""
    if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
        with Image.open(image) as im:
            image = ImageOps.exif_transpose(im).convert("RGB")
            image.load()
        return image
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 array, got shape {image.shape} dtype {image.dtype}")
        return Image.fromarray(image[..., :3])
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    raise TypeError(f"image must be a PIL image, a uint8 array or a path, got {type(image).__name__}")


def rgb_array(rgb: Image.Image, rows: int = 256) -> np.ndarray:
    """HxWx3 uint8 pixels of an RGB image, copied a band of rows at a time (``np.asarray`` of a large photo holds
    a second full-size copy while it converts)."""
    out = np.empty((rgb.height, rgb.width, 3), np.uint8)
    for y in range(0, rgb.height, rows):
        out[y:y + rows] = np.asarray(rgb.crop((0, y, rgb.width, min(rgb.height, y + rows))))
    return out


@torch.no_grad()
def input_size(pipe, hw: tuple[int, int], resolution: int | None = None) -> tuple[int, int]:
    """The size a photo of ``hw`` is fed to the model at: its aspect, area ≈ ``resolution``² (default: native),
    never over (``resolution`` + the size multiple)²; ValueError for an aspect over ``MAX_ASPECT``:1 (photo_size)."""
    native = resolution or int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    return photo_size(hw, native, _size_multiple(pipe))


def encode_photo(pipe, rgb: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """VAE latents (mean of the posterior, scaled) of the photo resized to ``size``."""
    H, W = size
    x = np.asarray(rgb.resize((W, H), Image.BICUBIC), dtype=np.float32) / 127.5 - 1.0
    vae = pipe.vae
    upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    if upcast:  # SDXL's VAE overflows in fp16 (diffusers' pipelines upcast it the same way)
        vae.to(torch.float32)
    try:
        x = torch.from_numpy(x).permute(2, 0, 1)[None].to(pipe.device, vae.dtype)
        latents = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
    finally:
        if upcast:
            vae.to(torch.float16)
    return latents.to(pipe.unet.dtype)


@torch.no_grad()
def generate(
    pipe,
    prompt: str | Sequence[str],
    *,
    seed: int = 0,
    steps: int = 20,
    guidance: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str | Sequence[str] | None = None,
    capture: CaptureConfig | None = None,
) -> Traced:
    """Generate image(s) from prompt(s) with an unmodified pipeline call, recording attention."""
    prompts = check_prompt(pipe.tokenizer, prompt)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    with trace(pipe, capture) as maps:
        out = pipe(
            prompts, num_inference_steps=steps, guidance_scale=guidance, height=height, width=width,
            negative_prompt=negative_prompt, generator=generator, output_type="pil",
        )
    images = list(out.images)
    maps.mode = "generate"
    maps.meta.update(seed=int(seed), steps=steps, guidance=guidance, prompts=prompts,
                     image_hw=(images[0].height, images[0].width))
    maps.original_hw = (images[0].height, images[0].width)
    if len(images) == 1:
        maps.image = np.asarray(images[0].convert("RGB"))
    return Traced(images, maps)


@torch.no_grad()
def read_photo(
    pipe,
    image: Image.Image | np.ndarray | str,
    prompt: str | Sequence[str],
    *,
    mode: str = "noise",
    t: int = 100,
    steps: int = 10,
    strength: float = 0.5,
    seed: int = 0,
    resolution: int | None = None,
    capture: CaptureConfig | None = None,
) -> Traced:
    """Read an existing photo: attention aligned to the photo (``maps.original_hw`` = its size).

    ``mode``: 'noise' (one UNet pass at timestep ``t``), 'denoise' or 'invert' (``steps`` DDIM steps from
    ``strength``·T to 0). ``resolution``: the side of the square whose area the photo is resized to
    (default: the model's native size). Several prompts read the same photo with the same noise in one
    batched UNet call per step (maps batch i ↔ prompt i, each with the photo: :meth:`Traced.maps_for`). In noise
    mode ``maps.meta['noise_errors']`` holds each prompt's squared noise-prediction error (the presence evidence
    of :mod:`seediff.evidence`).
    """
    from diffusers import DDIMInverseScheduler

    if mode not in PHOTO_MODES:
        raise ValueError(f"mode must be one of {PHOTO_MODES}, got {mode!r}")
    prompts = check_prompt(pipe.tokenizer, prompt)
    n_train = int(pipe.scheduler.config.num_train_timesteps)
    if not 0 <= t < n_train:
        raise ValueError(f"t must be in [0, {n_train}), got {t}")
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    rgb = image if isinstance(image, Image.Image) and image.mode == "RGB" else as_rgb(image)  # read, not copied
    size = input_size(pipe, (rgb.height, rgb.width), resolution)
    latents = encode_photo(pipe, rgb, size)
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents.device, latents.dtype)
    latents, noise = (v.expand(len(prompts), -1, -1, -1) for v in (latents, noise))
    scheduler = noise_scheduler(pipe)  # DDIM with the model's schedule and prediction_type; step() converts v/x0
    capture = dataclasses.replace(capture or CaptureConfig(), t_window=(0.0, 1.0))

    n_steps = max(steps, int(round(steps / strength)))
    scheduler.set_timesteps(n_steps, device=latents.device)
    run = [s for s in scheduler.timesteps if int(s) < strength * n_train][:steps]
    start = None
    if mode == "denoise":
        start = scheduler.add_noise(latents, noise, run[0].reshape(1))
    elif mode == "invert":  # inversion passes run outside the trace: only the denoise back is recorded
        inverse = DDIMInverseScheduler.from_config(pipe.scheduler.config, prediction_type="epsilon")
        inverse.set_timesteps(n_steps, device=latents.device)
        start = _invert(pipe, scheduler, inverse, latents, unet_conditioning(pipe, prompts, size), run)

    with trace(pipe, capture, cfg=False) as maps:
        cond = unet_conditioning(pipe, prompts, size)  # inside the trace: the prompt's tokens are recorded
        if mode == "noise":
            ts = torch.tensor([t], device=latents.device)
            x_t = scheduler.add_noise(latents, noise, ts)
            eps = predicted_noise(scheduler, pipe.unet(x_t, ts, **cond).sample, x_t, ts)
            errors = ((eps.float() - noise.float()) ** 2).mean(dim=(1, 2, 3)).cpu().tolist()
            timesteps = [t]
        else:
            x = start
            for s in run:  # the scheduler reads the output as its prediction_type says (epsilon, v, sample)
                out = pipe.unet(x, s, **cond).sample
                x = scheduler.step(out, s, x).prev_sample
            timesteps = [int(s) for s in run]
    maps.meta["final_latents"] = x if mode != "noise" else None
    maps.meta["noise_errors"] = errors if mode == "noise" else None
    maps.mode = mode
    maps.image = rgb_array(rgb)
    maps.original_hw = (rgb.height, rgb.width)
    maps.meta.update(t=t if mode == "noise" else None, steps=len(timesteps), strength=strength, seed=int(seed),
                     prompts=prompts, image_hw=size, timesteps=timesteps)
    return Traced([rgb] * len(prompts), maps)


def _invert(pipe, scheduler, inverse, latents: torch.Tensor, cond: dict, run: list[torch.Tensor]) -> torch.Tensor:
    """DDIM-invert clean latents up to the first timestep of ``run`` (ascending through ``run`` reversed).

    ``cond``: the UNet's conditioning kwargs (:func:`seediff.conditioning.unet_conditioning`). The UNet runs at
    the target timestep s on the latent of s − T/N, so its output is turned into noise here, at s (the timestep
    it was given; ``scheduler`` carries the model's prediction_type), and ``inverse`` takes ε: diffusers'
    inverse step would convert v or x₀ at s − T/N instead."""
    x = latents
    # The inverse scheduler steps t − T/N → t on the same grid as the denoise that follows (same N).
    for s in reversed(run):
        eps = predicted_noise(scheduler, pipe.unet(x, s, **cond).sample, x, s)
        x = inverse.step(eps, s, x).prev_sample
    return x
