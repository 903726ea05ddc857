"""UNet inputs and outputs across model families, for the code that calls the UNet itself (photo modes, presence).

Inputs: SD 1.x/2.x condition on one CLIP encoder's hidden states; SDXL concatenates two encoders' hidden states
and adds the pooled text embedding and six "time ids" (original size, crop corner, target size) through
``added_cond_kwargs``. Outputs: the UNet predicts noise ε, velocity v = α·ε − σ·x₀ (SD 2.x 768 px) or the clean
latent x₀, as the scheduler's ``prediction_type`` says; :func:`predicted_noise` turns any of them into ε.
Noising uses DDPM's ᾱ schedule whatever sampler the pipeline ships (:func:`noise_scheduler`), so
``x_t = α·x₀ + σ·ε`` holds for Euler-type pipelines (SDXL) too.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["PREDICTION_TYPES", "is_sdxl", "noise_scheduler", "unet_conditioning", "predicted_noise"]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def is_sdxl(pipe) -> bool:
    """Whether the pipeline's UNet takes SDXL's added text/time conditioning."""
    return getattr(pipe.unet.config, "addition_embed_type", None) == "text_time"


def noise_scheduler(pipe):
    """A DDIM scheduler with the pipeline's training schedule and prediction type (``add_noise`` = DDPM's)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(pipe.scheduler.config)


def unet_conditioning(pipe, prompts: Sequence[str], size: tuple[int, int]) -> dict:
    """Keyword arguments of a UNet call for ``prompts`` without guidance, for an image of ``size`` = (H, W).

    SD 1.x/2.x: ``encoder_hidden_states``. SDXL: also ``added_cond_kwargs`` (pooled text embedding of the
    second encoder, and time ids = original size, crop corner (0, 0), target size — the photo uncropped).
    """
    prompts = list(prompts)
    if not is_sdxl(pipe):
        emb, _ = pipe.encode_prompt(prompts, pipe.device, 1, False)
        return {"encoder_hidden_states": emb}
    emb, _, pooled, _ = pipe.encode_prompt(prompts, device=pipe.device, num_images_per_prompt=1,
                                           do_classifier_free_guidance=False)
    h, w = (int(v) for v in size)
    time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=emb.dtype, device=emb.device).repeat(len(prompts), 1)
    return {"encoder_hidden_states": emb, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}


def predicted_noise(scheduler, model_output: torch.Tensor, x_t: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
    """The noise ε the UNet's output implies at timestep ``t`` under the scheduler's ``prediction_type``.

    With ᾱ_t the scheduler's ``alphas_cumprod``, α = √ᾱ_t, σ = √(1 − ᾱ_t) and x_t = α·x₀ + σ·ε:
    epsilon → the output; v_prediction (v = α·ε − σ·x₀) → α·v + σ·x_t; sample (x₀) → (x_t − α·x₀) / σ.
    """
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return model_output
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {kind!r}")
    step = int(t.flatten()[0].item()) if isinstance(t, torch.Tensor) else int(t)
    abar = scheduler.alphas_cumprod[step].to(device=model_output.device, dtype=torch.float32)
    alpha, sigma = abar.sqrt(), (1.0 - abar).sqrt()
    out, x = model_output.float(), x_t.float()
    eps = alpha * out + sigma * x if kind == "v_prediction" else (x - alpha * out) / sigma
    return eps.to(model_output.dtype)
