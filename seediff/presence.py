"""Which prompted classes are in a photo: a generative presence test (after Li et al. 2023, "Your Diffusion Model
is Secretly a Zero-Shot Classifier").

The photo's latent is noised at a few timesteps with fixed noise, and the UNet predicts that noise (converted from
v or x₀ for models that predict those, :func:`seediff.conditioning.predicted_noise`) under
2K+1 prompts at once (one batched call per timestep and noise draw): every class ("a photo of a circle and a
square and a triangle"), every class but c, and c alone. A class the photo contains explains part of it, so
removing it raises the prediction error and naming it alone lowers the error below the other classes' alone:

    score(c) = mean over (t, noise) of [err(all but c) − err(all)] + [mean_{o≠c} err(o alone) − err(c alone)]

Scores are in the UNet's squared-error units, so the threshold is model-specific (measured on
``builtin:shapes``, see docs/QUALITY.md).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from .conditioning import noise_scheduler, predicted_noise, unet_conditioning
from .modes import as_rgb, encode_photo, input_size
from .prompts import DEFAULT_TEMPLATE, check_classes, check_prompt, class_prompt

__all__ = ["PRESENCE_TIMESTEPS", "PRESENCE_NOISES", "PRESENCE_THRESHOLD", "presence_prompts", "presence_scores",
           "present_classes"]

PRESENCE_TIMESTEPS: tuple[int, ...] = (100, 300, 500)
PRESENCE_NOISES = 2  # noise draws per timestep: 3 × 2 = 6 batched UNet calls
# Chosen on the dev split (40 + 40 scenes, every class in the prompt) for builtin:shapes; a raw error difference.
# The fallback for a model whose seediff.json sets none (``ModelDefaults.presence_threshold``).
PRESENCE_THRESHOLD = -0.002


def presence_prompts(classes: Sequence[str], template: str = DEFAULT_TEMPLATE) -> list[str]:
    """The 2K+1 prompts of the test: all classes, then all but each class, then each class alone."""
    words = list(classes)
    if len(words) < 2:
        raise ValueError(f"the presence test needs at least 2 classes, got {words}")
    loo = [class_prompt([o for o in words if o != c], template) for c in words]
    return [class_prompt(words, template), *loo, *(class_prompt([c], template) for c in words)]


@torch.no_grad()
def presence_scores(pipe, image, classes: Sequence[str], prompt_template: str = DEFAULT_TEMPLATE, *,
                    timesteps: Sequence[int] = PRESENCE_TIMESTEPS, noises: int = PRESENCE_NOISES,
                    seed: int = 0) -> dict[str, float]:
    """``{class: score}`` for a photo (PIL image, uint8 array or path); higher means more likely present.

    One batched UNet call of 2K+1 prompts per (timestep, noise draw); the noise is fixed by ``seed`` and shared
    by every prompt, so the error differences compare prompts, not noise.
    """
    words = check_classes(classes)
    if noises < 1:
        raise ValueError(f"noises must be >= 1, got {noises}")
    n_train = int(pipe.scheduler.config.num_train_timesteps)
    if not timesteps or any(not 0 <= int(t) < n_train for t in timesteps):
        raise ValueError(f"timesteps must be a non-empty list in [0, {n_train}), got {list(timesteps)}")
    if len(words) == 1:
        return {words[0]: 0.0}
    prompts = check_prompt(pipe.tokenizer, presence_prompts(words, prompt_template))
    rgb = as_rgb(image)
    size = input_size(pipe, (rgb.height, rgb.width))
    latents = encode_photo(pipe, rgb, size)
    cond = unet_conditioning(pipe, prompts, size)
    scheduler = noise_scheduler(pipe)  # x_t = α·x₀ + σ·ε whatever sampler the pipeline ships
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    draws = [torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents.device, latents.dtype)
             for _ in range(noises)]
    errors = []
    for t in timesteps:
        ts = torch.tensor([int(t)], device=latents.device)
        for noise in draws:
            x = scheduler.add_noise(latents, noise, ts).expand(len(prompts), -1, -1, -1)
            eps = predicted_noise(scheduler, pipe.unet(x, ts, **cond).sample, x, ts)  # ε whatever the UNet predicts
            errors.append(((eps.float() - noise.float()) ** 2).mean(dim=(1, 2, 3)).cpu().numpy())
    err = np.mean(errors, axis=0)  # [2K+1]
    k = len(words)
    full, loo, alone = err[0], err[1:k + 1], err[k + 1:]
    out = {}
    for i, c in enumerate(words):
        others = np.delete(alone, i)
        out[c] = float((loo[i] - full) + (others.mean() - alone[i]))
    return out


def present_classes(scores: Mapping[str, float], threshold: float = PRESENCE_THRESHOLD) -> list[str]:
    """Classes decided present: score above ``threshold``, and always the best-scoring one (a photo shows
    at least one prompted class); in the scores' order."""
    if not scores:
        raise ValueError("no presence scores")
    best = max(scores, key=scores.get)
    return [c for c, s in scores.items() if s > threshold or c == best]
