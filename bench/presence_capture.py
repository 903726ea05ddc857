"""Capture for the presence study: per scene, the every-class read, the diffusion-classifier errors and
per-class evidence features; saved as a pickle of plain numpy so analyses rerun without the UNet.

    python bench/presence_capture.py --world dev --n 60 --out /tmp/h4/dev.pkl
"""

from __future__ import annotations

import argparse
import pickle
import time
from pathlib import Path

import numpy as np
import torch

from seediff.testing.shapes import SHAPES


def dc_errors(pipe, image, prompts, timesteps=(100, 300, 500), noises=2, seed=0, resolution=None) -> np.ndarray:
    """Squared noise-prediction error ``[len(timesteps)·noises, len(prompts)]`` (row order t-major)."""
    from seediff.modes import _as_rgb, _embed, _encode_photo, input_size

    rgb = _as_rgb(image)
    latents = _encode_photo(pipe, rgb, input_size(pipe, (rgb.height, rgb.width), resolution))
    emb = _embed(pipe, prompts)
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    draws = [torch.randn(latents.shape, generator=g, dtype=torch.float32).to(latents.device, latents.dtype)
             for _ in range(noises)]
    out = []
    with torch.no_grad():
        for t in timesteps:
            ts = torch.tensor([int(t)])
            for noise in draws:
                x = pipe.scheduler.add_noise(latents, noise, ts).expand(len(prompts), -1, -1, -1)
                eps = pipe.unet(x, ts, encoder_hidden_states=emb).sample
                out.append(((eps.float() - noise.float()) ** 2).mean(dim=(1, 2, 3)).numpy())
    return np.stack(out)


def attention_features(maps, words) -> dict[str, np.ndarray]:
    """Per level: each word's mean-over-layers map ``[K, h, w]``, with and without special-token renorm."""
    out = {}
    for lv in maps.available_levels("cross"):
        out[f"renorm{lv}"] = np.stack([maps.cross_maps(w, lv).mean(0).numpy() for w in words])
        out[f"raw{lv}"] = np.stack([maps.cross_maps(w, lv, exclude_special=False).mean(0).numpy() for w in words])
    return out


def capture(pipe, scenes, template="a photo of {}", t=100, resolution=None):
    import seediff
    from seediff.predictor import class_prompt
    from seediff.presence import presence_prompts

    words = list(SHAPES)
    prompt = class_prompt(words, template)
    recs = []
    for s in scenes:
        traced = seediff.read_photo(pipe, s.image, prompt, mode="noise", t=t, resolution=resolution)
        maps = traced.maps_for(0)
        errs = dc_errors(pipe, s.image, presence_prompts(words, template), resolution=resolution)
        segs = {}
        for k in range(1, 2 ** len(words)):
            sub = tuple(w for j, w in enumerate(words) if k >> j & 1)
            o = seediff.segment(maps, list(sub))
            segs[sub] = (o.masks, o.scores, dict(o.reasons))
        recs.append(dict(seed=s.seed, image=s.image, truth={w: s.class_mask(w) for w in words},
                         n_objects=len(s.objects), errs=errs, att=attention_features(maps, words), maps=maps,
                         segs=segs))
    return recs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", default="dev")
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--resolution", type=int, default=None)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    import seediff
    from seediff.testing.shifted import shifted_split, world_split

    pipe = seediff.load_pipeline("builtin:shapes", device="cpu")
    kind, split = args.world.split("-")
    scenes = world_split(split, args.n) if kind == "world" else shifted_split(split, args.n)
    t0 = time.time()
    recs = capture(pipe, scenes, resolution=args.resolution)
    print(f"{len(recs)} scenes in {time.time() - t0:.0f} s")
    for r in recs:
        r.pop("maps")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(pickle.dumps(recs))


if __name__ == "__main__":
    main()
