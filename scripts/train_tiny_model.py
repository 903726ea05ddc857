#!/usr/bin/env python
"""Train the bundled ``builtin:shapes`` model from scratch on CPU: VAE, text encoder and UNet, seeded.

Stage 1 trains an AutoencoderKL (32×32×3 → 16×16×4) on procedural scenes (``seediff.testing.shapes``).
Stage 2 pre-encodes a fixed pool of scenes and trains a tiny CLIP text encoder and an SD-layout
UNet2DConditionModel (self- and cross-attention at every level but the last and in the mid block) with epsilon
prediction on SD's noise schedule; captions are re-drawn every time a scene is used (colours named or
omitted, random object order), and 10 % are empty for classifier-free guidance. Every ``--probe-every``
iterations a probe measures how well each *shape word's* cross-attention localises its object in two-object
scenes (noised at t=100, captions without colours) with ``seediff.trace``. ``--ground w`` adds a
TokenCompose-style grounding loss on the cross-attention of the caption's shape and colour words.

Writes a diffusers ``StableDiffusionPipeline`` folder (fp16 safetensors unless ``--fp32``) and TRAINING.md
(recipe, time, losses, probe numbers) into ``--out``.

    python scripts/train_tiny_model.py --out seediff/models/shapes --pool 4000 --batch 16 --minutes 34 --ground 0.2
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from seediff.testing import build_tokenizer
from seediff.testing.shapes import SHAPES, VOCABULARY, SceneConfig, caption_for, make_scene

TRAIN_SEED_OFFSET = 1_000_000  # training scenes use seeds >= this; benchmark splits use small seeds
PROBE_SEEDS = range(0, 48)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("seediff/models/shapes"))
    p.add_argument("--work", type=Path, default=Path("/tmp/seediff_train"), help="cache for the VAE stage")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="1 is ~5x faster than 2 on a contended 2-core machine (measured)")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--vae-iters", type=int, default=400)
    p.add_argument("--vae-batch", type=int, default=32)
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument("--vae-crop", type=int, default=16, help="train the VAE on random crops of this side")
    p.add_argument("--reuse-vae", action="store_true", help="load the VAE from --work if it is there")
    p.add_argument("--pool", type=int, default=20000, help="scenes pre-encoded for the UNet stage")
    p.add_argument("--unet-iters", type=int, default=100000, help="upper bound; --minutes usually stops first")
    p.add_argument("--minutes", type=float, default=40.0, help="wall-clock budget of the UNet stage")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--channels", type=str, default="32,48,64,64")
    p.add_argument("--text-width", type=int, default=64)
    p.add_argument("--text-layers", type=int, default=0)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--p-colour", type=float, default=0.5)
    p.add_argument("--p-two", type=float, default=0.5, help="share of 2-object scenes in the UNet stage's pool")
    p.add_argument("--p-uncond", type=float, default=0.1)
    p.add_argument("--p-three", type=float, default=0.0, help="share of 3-object scenes (rich world)")
    p.add_argument("--p-free-colour", type=float, default=0.0, help="share of objects in an unnamed random colour")
    p.add_argument("--p-tinted", type=float, default=0.0, help="share of coloured (not grey) backgrounds")
    p.add_argument("--rotation", type=float, default=0.0, help="max |degrees| a square or triangle is turned")
    p.add_argument("--radius", type=str, default="5,8.5", help="min,max shape half-extent at 32 px")
    p.add_argument("--init-vae", type=Path, default=None,
                   help="fine-tune the VAE from this folder (e.g. a saved pipeline's vae/) instead of from scratch")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--ema", type=float, default=0.998)
    p.add_argument("--probe-every", type=int, default=500)
    p.add_argument("--ground", type=float, default=0.0,
                   help="weight of a TokenCompose-style grounding loss on the cross-attention of shape/colour words")
    p.add_argument("--init-from", type=Path, default=None,
                   help="continue from a pipeline folder this script saved (its UNet and text encoder; same VAE)")
    p.add_argument("--fp32", action="store_true")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------- data
def world(args, p_two: float | None = None) -> SceneConfig:
    """The training world the options describe (the rich options off: the original shapes world)."""
    lo, hi = (float(v) for v in args.radius.split(","))
    return SceneConfig(size=args.size, p_two=args.p_two if p_two is None else p_two, p_colour=args.p_colour,
                       radius=(lo, hi), p_three=args.p_three, p_free_colour=args.p_free_colour,
                       p_tinted=args.p_tinted, rotation=args.rotation)


def scene_batch(seeds, cfg: SceneConfig) -> tuple[torch.Tensor, list]:
    """Images in [-1, 1] as a [B, 3, H, W] tensor, and the scenes of ``cfg``'s world (a seed whose shapes cannot
    be placed — large radii with three objects, about 1 in 100 at radius 4–10 — is skipped)."""
    scenes = []
    for s in seeds:
        try:
            scenes.append(make_scene(int(s), cfg))
        except RuntimeError:
            continue
    x = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x, scenes


# ---------------------------------------------------------------------------------------------- models
def build_vae(size: int):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=16, sample_size=size,
    )


def build_text_encoder(tokenizer, width: int, layers: int, max_tokens: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
        num_attention_heads=4, max_position_embeddings=max_tokens, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(cfg)


def build_unet(latent: int, channels: tuple[int, ...], cross_dim: int, heads: int):
    from diffusers import UNet2DConditionModel

    n = len(channels)
    return UNet2DConditionModel(
        sample_size=latent, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=channels,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=cross_dim, attention_head_dim=heads, norm_num_groups=16,
    )


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------------------------------------- stage 1
def train_vae(args, log) -> tuple[object, dict]:
    """AutoencoderKL on fresh scenes: L1 + MSE reconstruction + a small KL; returns the VAE and stats."""
    vae_dir = args.work / "vae"
    if args.reuse_vae and (vae_dir / "config.json").is_file():
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(str(vae_dir))
        stats = json.loads((args.work / "vae_stats.json").read_text())
        log(f"VAE reused from {vae_dir}: {stats}")
        return vae, stats
    torch.manual_seed(args.seed)
    vae = build_vae(args.size)
    if args.init_vae is not None:
        from diffusers import AutoencoderKL

        vae.load_state_dict({k: v.float() for k, v in AutoencoderKL.from_pretrained(str(args.init_vae)).state_dict().items()})
        log(f"VAE fine-tuned from {args.init_vae}")
    cfg = world(args, p_two=0.5)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.vae_lr, total_steps=args.vae_iters, pct_start=0.05)
    t0 = time.time()
    rng = np.random.default_rng(args.seed + 1)
    losses = []
    for it in range(args.vae_iters):
        x, _ = scene_batch(TRAIN_SEED_OFFSET + rng.integers(0, 10**8, size=args.vae_batch), cfg)
        if args.vae_crop and args.vae_crop < args.size:  # convolutions are local: crops train ~4x cheaper
            oy, ox = (int(v) for v in 2 * rng.integers(0, (args.size - args.vae_crop) // 2 + 1, size=2))
            x = x[:, :, oy : oy + args.vae_crop, ox : ox + args.vae_crop]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        kl = post.kl().mean() / (x.shape[1] * x.shape[2] * x.shape[3])
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (it + 1) % 100 == 0:
            log(f"vae it {it + 1}/{args.vae_iters} loss {np.mean(losses[-100:]):.4f} kl {kl.item():.3f} "
                f"{time.time() - t0:.0f}s")
    vae.eval()
    with torch.no_grad():
        x, _ = scene_batch(range(10**7, 10**7 + 256), cfg)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.mean).sample.clamp(-1, 1)
        mse = F.mse_loss((rec + 1) / 2, (x + 1) / 2).item()
        std = post.mean.std().item()
    stats = {"psnr_db": 10 * math.log10(1 / mse), "latent_std": std, "scaling_factor": 1.0 / std,
             "seconds": time.time() - t0, "final_loss": float(np.mean(losses[-100:])), "iters": args.vae_iters,
             "params": n_params(vae)}
    vae.register_to_config(scaling_factor=stats["scaling_factor"])
    vae_dir.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(str(vae_dir))
    (args.work / "vae_stats.json").write_text(json.dumps(stats))
    log(f"VAE done: {stats}")
    return vae, stats


# ---------------------------------------------------------------------------------------------- stage 2
@torch.no_grad()
def encode_pool(vae, args, log) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Posterior mean and std of ``--pool`` training scenes (seeded), and the scenes' objects/backgrounds."""
    t0 = time.time()
    means, stds, meta = [], [], []
    seeds = TRAIN_SEED_OFFSET + np.arange(args.pool)
    for i in range(0, args.pool, 256):
        x, scenes = scene_batch(seeds[i : i + 256], world(args))
        post = vae.encode(x).latent_dist
        means.append(post.mean)
        stds.append(post.std)
        meta += [(s.objects, s.background, s.instance_masks) for s in scenes]
    log(f"pool of {args.pool} scenes encoded in {time.time() - t0:.0f}s")
    return torch.cat(means), torch.cat(stds), meta


def probe_localisation(pipe, args, level_list=(0, 1, 2), t: int = 100) -> dict:
    """Shape-word localisation in 2-object scenes at t: right-object rate and IoU (min-max, threshold 0.5)."""
    from seediff.capture import CaptureConfig, trace, upsample
    from diffusers import DDIMScheduler

    scenes = [make_scene(s, SceneConfig(size=args.size), n_objects=2) for s in PROBE_SEEDS]
    prompts = [" and ".join(f"a {o.shape}" for o in s.objects) for s in scenes]
    x = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        lat = pipe.vae.encode(x.to(pipe.vae.dtype)).latent_dist.mean * pipe.vae.config.scaling_factor
        noise = torch.randn(lat.shape, generator=g)
        ts = torch.full((len(scenes),), t, dtype=torch.long)
        noisy = sched.add_noise(lat, noise, ts)
        with trace(pipe, CaptureConfig(cross_levels=None, self_levels=(), t_window=(0.0, 1.0)), cfg=False) as maps:
            ids = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
            emb = pipe.text_encoder(ids)[0]
            pipe.unet(noisy, ts, encoder_hidden_states=emb)
    out = {}
    for level in level_list:
        if level not in maps.available_levels("cross"):
            continue
        right, ious = [], []
        for b, s in enumerate(scenes):
            for k, o in enumerate(s.objects):
                m = upsample(maps.cross_maps(o.shape, level, batch=b).mean(0), (args.size, args.size))
                m = (m - m.min()) / (m.max() - m.min() + 1e-8)
                gt = torch.from_numpy(s.instance_masks[k])
                other = torch.from_numpy(s.instance_masks[1 - k])
                right.append(float(m[gt].mean() > m[other].mean()))
                pred = m >= 0.5
                ious.append(float((pred & gt).sum() / (pred | gt).sum().clamp_min(1)))
        out[f"L{level}_right"] = float(np.mean(right))
        out[f"L{level}_iou"] = float(np.mean(ious))
    return out


class GroundingProcessor:
    """Cross-attention that keeps its head-averaged probabilities ``[B, h·w, T]`` (with grad) for the grounding loss."""

    def __init__(self, store: list) -> None:
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        b, n, _ = hidden_states.shape
        q = attn.to_q(hidden_states)
        k = attn.to_k(encoder_hidden_states)
        v = attn.to_v(encoder_hidden_states)
        h = attn.heads
        q, k, v = (x.view(b, -1, h, x.shape[-1] // h).transpose(1, 2) for x in (q, k, v))
        probs = (q @ k.transpose(-1, -2) * attn.scale).softmax(-1)
        self.store.append(probs.mean(1))
        out = (probs @ v).transpose(1, 2).reshape(b, n, -1)
        return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor


def grounding_targets(prompts_objects, ids: torch.Tensor, tokenizer, masks: list, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token object masks ``[B, T, H, W]`` and a validity flag ``[B, T]`` for each object's shape and colour words."""
    B, T = ids.shape
    target = torch.zeros(B, T, size, size)
    valid = torch.zeros(B, T, dtype=torch.bool)
    vocab = tokenizer.get_vocab()
    for b, objects in enumerate(prompts_objects):
        if objects is None:
            continue
        row = ids[b].tolist()
        for k, obj in enumerate(objects):
            for word in (obj.shape, obj.colour):
                tid = vocab.get(word + "</w>")
                if tid in row:
                    p = row.index(tid)
                    target[b, p] = torch.from_numpy(masks[b][k]).float()
                    valid[b, p] = True
    return target, valid


def grounding_loss(store: list, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """TokenCompose-style token loss: (1 − share of each grounded word's attention inside its object)², mean."""
    if not valid.any():
        return torch.zeros(())
    losses = []
    for probs in store:  # [B, hw, T]
        hw = probs.shape[1]
        side = int(round(math.sqrt(hw)))
        m = F.adaptive_avg_pool2d(target, side).flatten(2)  # [B, T, hw]
        a = probs.transpose(1, 2)  # [B, T, hw]
        inside = (a * m).sum(-1) / a.sum(-1).clamp_min(1e-8)
        losses.append(((1 - inside) ** 2)[valid].mean())
    return torch.stack(losses).mean()


def make_pipe(vae, text_encoder, unet, tokenizer):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, num_train_timesteps=1000,
    )
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def train_unet(vae, vae_stats, args, log):
    """Text encoder + UNet, epsilon prediction, AdamW + cosine, EMA; stops at --minutes or --unet-iters."""
    from diffusers import DDPMScheduler

    torch.manual_seed(args.seed + 2)
    rng = random.Random(args.seed + 3)
    nrng = np.random.default_rng(args.seed + 4)
    tokenizer = build_tokenizer(VOCABULARY)
    tokenizer.model_max_length = args.max_tokens
    channels = tuple(int(c) for c in args.channels.split(","))
    text_encoder = build_text_encoder(tokenizer, args.text_width, args.text_layers, args.max_tokens)
    unet = build_unet(args.size // 2, channels, args.text_width, args.heads)
    if args.init_from is not None:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        unet.load_state_dict({k: v.float() for k, v in UNet2DConditionModel.from_pretrained(str(args.init_from / "unet")).state_dict().items()})
        text_encoder.load_state_dict({k: v.float() for k, v in CLIPTextModel.from_pretrained(str(args.init_from / "text_encoder")).state_dict().items()})
        log(f"continuing from {args.init_from}")
    log(f"text encoder {n_params(text_encoder)} params ({args.text_layers} layers), UNet {n_params(unet)} params")
    noise_sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                num_train_timesteps=1000)
    means, stds, meta = encode_pool(vae, args, log)
    scale = vae.config.scaling_factor
    caption_cfg = SceneConfig(size=args.size, p_colour=args.p_colour)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    ema_u = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    ema_t = {k: v.detach().clone() for k, v in text_encoder.state_dict().items()}
    attn_store: list = []
    if args.ground > 0:
        procs = {name: (GroundingProcessor(attn_store) if name.endswith("attn2.processor") else proc)
                 for name, proc in unet.attn_processors.items()}
        unet.set_attn_processor(procs)
    budget = args.minutes * 60
    # The cosine schedule needs a length: estimate it from the first 20 iterations' speed.
    total = args.unet_iters
    t0 = time.time()
    losses, history, ground_losses = [], [], []
    it = 0
    while it < total:
        lr_scale = min(1.0, (it + 1) / 100) * (0.5 * (1 + math.cos(math.pi * min(1.0, it / total))) * 0.9 + 0.1)
        for g in opt.param_groups:
            g["lr"] = args.lr * lr_scale
        idx = torch.from_numpy(nrng.integers(0, len(means), size=args.batch))
        lat = (means[idx] + stds[idx] * torch.randn_like(means[idx])) * scale
        prompts, grounded, masks = [], [], []
        for i in idx.tolist():
            objects, background, inst = meta[i]
            uncond = rng.random() < args.p_uncond
            prompts.append("" if uncond else caption_for(objects, background, nrng, caption_cfg)[0])
            grounded.append(None if uncond else objects)
            masks.append(inst)
        ids = tokenizer(prompts, padding="max_length", max_length=args.max_tokens, truncation=True,
                        return_tensors="pt").input_ids
        emb = text_encoder(ids)[0]
        noise = torch.randn_like(lat)
        ts = torch.from_numpy(nrng.integers(0, 1000, size=args.batch)).long()
        attn_store.clear()
        pred = unet(noise_sched.add_noise(lat, noise, ts), ts, encoder_hidden_states=emb).sample
        loss = F.mse_loss(pred, noise)
        losses.append(loss.item())  # the denoising loss alone; the grounding term is logged apart
        if args.ground > 0:
            gl = grounding_loss(attn_store, *grounding_targets(grounded, ids, tokenizer, masks, args.size))
            ground_losses.append(gl.item())
            loss = loss + args.ground * gl
            attn_store.clear()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        it += 1
        decay = min(args.ema, (1 + it) / (10 + it))
        with torch.no_grad():
            for ema, model in ((ema_u, unet), (ema_t, text_encoder)):
                for k, v in model.state_dict().items():
                    if v.dtype.is_floating_point:
                        ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
        elapsed = time.time() - t0
        if it == 20:
            total = min(args.unet_iters, int(budget / (elapsed / 20)))
            log(f"{elapsed / 20:.2f} s/it → {total} iterations in {args.minutes} min")
        if it % 50 == 0:
            gtxt = f" ground {np.mean(ground_losses[-50:]):.3f}" if ground_losses else ""
            log(f"unet it {it}/{total} loss {np.mean(losses[-50:]):.4f}{gtxt} lr {args.lr * lr_scale:.2e} {elapsed:.0f}s")
        if args.probe_every and (it % args.probe_every == 0 or it == total):
            pipe = _ema_pipe(vae, text_encoder, unet, tokenizer, ema_u, ema_t, args, channels)
            probe = probe_localisation(pipe, args)
            history.append({"iter": it, "seconds": round(elapsed), "loss": float(np.mean(losses[-50:])), **probe})
            log(f"probe {history[-1]}")
    pipe = _ema_pipe(vae, text_encoder, unet, tokenizer, ema_u, ema_t, args, channels)
    stats = {"iters": it, "seconds": time.time() - t0, "final_loss": float(np.mean(losses[-100:])),
             "unet_params": n_params(unet), "text_params": n_params(text_encoder), "history": history,
             "loss_curve": [round(float(np.mean(losses[i : i + 100])), 4) for i in range(0, len(losses), 100)],
             "ground_curve": [round(float(np.mean(ground_losses[i : i + 100])), 4) for i in range(0, len(ground_losses), 100)]}
    return pipe, stats


def _ema_pipe(vae, text_encoder, unet, tokenizer, ema_u, ema_t, args, channels):
    """A pipeline built from copies of the models holding the EMA weights."""
    te = build_text_encoder(tokenizer, args.text_width, args.text_layers, args.max_tokens)
    te.load_state_dict(ema_t)
    un = build_unet(args.size // 2, channels, args.text_width, args.heads)
    un.load_state_dict(ema_u)
    te.eval()
    un.eval()
    return make_pipe(vae, te, un, tokenizer)


# ---------------------------------------------------------------------------------------------- output
def world_text(args) -> str:
    """One sentence on the training world's options (the rich ones, when on)."""
    if not (args.p_three or args.p_free_colour or args.p_tinted or args.rotation):
        return f"the original shapes world (grey backgrounds, six named colours, radius {args.radius} px)."
    return (f"the rich world — {args.p_three:.0%} three-object scenes, {args.p_free_colour:.0%} of objects in an unnamed "
            f"random colour (captions then name no colour for them), {args.p_tinted:.0%} tinted (coloured) backgrounds, "
            f"squares/triangles turned up to ±{args.rotation:g}°, radius {args.radius} px at 32 px; captions name only "
            "objects that are in the scene, so nothing is learnt about absent words.")


def write_report(out: Path, args, vae_stats, unet_stats, total_seconds: float) -> None:
    hist = unet_stats["history"]
    rows = "\n".join(
        f"| {h['iter']} | {h['seconds']} | {h['loss']:.4f} | "
        + " | ".join(f"{h.get(f'L{lv}_right', float('nan')):.2f} / {h.get(f'L{lv}_iou', float('nan')):.2f}" for lv in (0, 1, 2))
        + " |"
        for h in hist
    )
    grounding = (
        f"weight {args.ground} × TokenCompose-style token loss (Wang et al., CVPR 2024): for every shape and colour "
        "word of a caption and every cross-attention layer, (1 − share of the word's head-averaged attention that "
        "falls inside its object's mask, area-pooled to the layer's grid)², averaged. It stands in for the "
        "grounding real SD learns from billions of captions, which this budget cannot reproduce; "
        f"final value {np.mean(unet_stats['ground_curve'][-1:]) if unet_stats['ground_curve'] else float('nan'):.3f}."
        if args.ground > 0 else "none (words are grounded only by the denoising loss)."
    )
    text = f"""# builtin:shapes — how this model was trained

Generated by `scripts/train_tiny_model.py` (do not edit by hand). A tiny Stable-Diffusion-layout model trained
from scratch on CPU on the procedural scenes of `seediff.testing.shapes` (32×32 RGB, {'1–3' if args.p_three else '1–2'} shapes), so that the
engine, CLI, backend and tests run offline on a model whose attention means something. It is a demo and test
model only: real use means SD 1.5/2.1 weights from a local folder.

Command: `python scripts/train_tiny_model.py {' '.join(sys.argv[1:])}`
Machine: {platform.machine()}, torch {torch.__version__}, {args.threads} threads (CPU shared with other jobs).
Total wall time: {total_seconds / 60:.1f} min.

## Recipe
- Data: fresh scenes (seeds ≥ {TRAIN_SEED_OFFSET}); UNet stage on a pool of {args.pool} scenes ({args.p_two:.0%} with two objects), captions re-drawn
  each use: colours named with p={args.p_colour}, random object order, "a photo of" / background sometimes; {args.p_uncond:.0%} empty
  captions (classifier-free guidance). World: {world_text(args)}
- VAE: AutoencoderKL (32, 64) channels, 1 layer per block, 4 latent channels, factor 2 (32² → 16²×4);
  {vae_stats['params']} params; {vae_stats['iters']} iterations (batch {args.vae_batch}, AdamW one-cycle lr {args.vae_lr}),
  random {args.vae_crop}² crops, loss MSE + 0.5·L1 + 1e-4·KL; {vae_stats['seconds'] / 60:.1f} min; reconstruction PSNR {vae_stats['psnr_db']:.1f} dB on 256 held-out scenes;
  scaling_factor {vae_stats['scaling_factor']:.3f} (1/std of the latents).
- Text encoder: CLIPTextModel, width {args.text_width}, {args.text_layers} transformer layers (token + position embedding,
  final LayerNorm), {unet_stats['text_params']} params; tokenizer `seediff.testing.build_tokenizer` (each vocabulary word
  one token), {args.max_tokens} tokens max.
- UNet: UNet2DConditionModel, channels {args.channels}, 1 layer per block, CrossAttnDownBlock2D ×{len(args.channels.split(',')) - 1}
  + DownBlock2D, self- and cross-attention at every level but the last and in the mid block, {args.heads} heads; {unet_stats['unet_params']} params.
- Objective: epsilon prediction, DDPM scaled-linear betas (0.00085–0.012, 1000 steps, SD's), t uniform; AdamW lr {args.lr}
  (100-iteration warm-up, cosine to 10 %), weight decay 0.01, grad-norm clip 1, batch {args.batch}, EMA {args.ema}
  (the saved weights); {unet_stats['iters']} iterations in {unet_stats['seconds'] / 60:.1f} min; final loss {unet_stats['final_loss']:.4f}.
- Grounding: {grounding}
- Saved {'fp32' if args.fp32 else 'fp16'} safetensors with a DDIM scheduler; seed {args.seed}.

Loss every 100 iterations: {unet_stats['loss_curve']}

## Localisation probe during training
48 two-object scenes (seeds 0–47), caption "a <shape> and a <shape>" (no colours), noised at t=100, one UNet
pass, shape word's cross-attention averaged over the layers of a level, special tokens excluded, min-max
normalised, bicubic to 32². "right": the mean map is higher inside the word's object than inside the other
object (chance 0.5); "IoU": map ≥ 0.5 against the object's exact mask. Level 0 = 16², 1 = 8², 2 = 4².

| iter | s | loss | L0 right / IoU | L1 right / IoU | L2 right / IoU |
|---|---|---|---|---|---|
{rows}
"""
    if args.init_from is not None and (args.init_from / "TRAINING.md").is_file():
        earlier = (args.init_from / "TRAINING.md").read_text().split("\n", 1)[1].replace("\n## ", "\n### ")
        text += f"\n## Earlier stage: this run continued from `{args.init_from}`, trained as follows\n{earlier}"
    (out / "TRAINING.md").write_text(text)
    (out / "training_stats.json").write_text(json.dumps({"vae": vae_stats, "unet": unet_stats}, indent=1))


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.work.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t_start:7.0f}s] {msg}", flush=True)

    vae, vae_stats = train_vae(args, log)
    vae.eval().requires_grad_(False)
    pipe, unet_stats = train_unet(vae, vae_stats, args, log)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.fp32:
        pipe = pipe.to(torch.float16)
    pipe.save_pretrained(str(args.out), safe_serialization=True)
    write_report(args.out, args, vae_stats, unet_stats, time.time() - t_start)
    log(f"saved to {args.out}")


if __name__ == "__main__":
    main()
