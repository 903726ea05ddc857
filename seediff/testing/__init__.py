"""Offline test models: a locally written CLIP tokenizer and tiny Stable-Diffusion-layout pipelines.

No hub files are read: every component is built from a config with random weights, so tests and benchmarks
run where no model hub is reachable. ``build_tiny_pipeline(arch="sd15")`` gives the real SD 1.5 UNet shapes
(same compute as the real model, random weights) for benchmarks.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Iterable

import torch

__all__ = ["DEFAULT_WORDS", "bytes_to_unicode", "build_tokenizer", "build_tiny_pipeline", "bpe_merges_for"]

# Words the test tokenizer knows as single tokens; anything else falls back to characters, as in real CLIP.
DEFAULT_WORDS: tuple[str, ...] = (
    "a", "an", "the", "photo", "of", "and", "on", "in", "with", "background", "picture", "image",
    "dog", "cat", "car", "person", "bird", "horse", "sheep", "cow", "bottle", "chair", "table", "sofa",
    "traffic", "light", "potted", "plant", "tree", "sky", "road", "grass", "water", "house",
    "red", "green", "blue", "yellow", "white", "black", "circle", "square", "triangle", "striped", "plain",
)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte → printable-unicode table, so every byte string has a BPE spelling."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _bpe(word: tuple[str, ...], ranks: dict[tuple[str, str], int]) -> tuple[str, ...]:
    """Apply CLIP's BPE (lowest-rank pair first, all occurrences) to a symbol tuple."""
    while len(word) > 1:
        pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
        best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        merged: list[str] = []
        i = 0
        while i < len(word):
            if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                merged.append(word[i] + word[i + 1])
                i += 2
            else:
                merged.append(word[i])
                i += 1
        word = tuple(merged)
    return word


def _symbols(word: str) -> tuple[str, ...]:
    """A word as CLIP's BPE sees it before merging: byte symbols, the last one marked with ``</w>``."""
    table = bytes_to_unicode()
    chars = [table[b] for b in word.lower().encode("utf-8")]
    return tuple(chars[:-1]) + (chars[-1] + "</w>",)


def bpe_merges_for(words: Iterable[str]) -> list[tuple[str, str]]:
    """Merges, lowest rank first, under which every word becomes exactly one token.

    Each new merge is appended at the highest rank, so words already solved keep their merge sequence
    (BPE only reaches a higher-ranked pair when no lower one applies).
    """
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in dict.fromkeys(w.lower() for w in words if w):
        while len(pieces := _bpe(_symbols(word), ranks)) > 1:
            pair = (pieces[0], pieces[1])
            ranks[pair] = len(merges)
            merges.append(pair)
    return merges


def build_tokenizer(words: Iterable[str] = DEFAULT_WORDS, save_to: str | Path | None = None):
    """A CLIP tokenizer written locally, each of ``words`` one token (transformers 5: pass vocab=/merges=)."""
    from transformers import CLIPTokenizer

    words = [w for w in words]
    for w in words:
        if not w.isalpha():
            raise ValueError(f"tokenizer words must be single alphabetic words, got {w!r}")
    merges = bpe_merges_for(words)
    symbols = list(bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    tok = CLIPTokenizer(vocab=vocab, merges=list(merges), model_max_length=77)
    for w in words:
        ids = tok(w, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise RuntimeError(f"tokenizer build failed: {w!r} → {tok.convert_ids_to_tokens(ids)}")
    if save_to is not None:
        tok.save_pretrained(str(save_to))
    return tok


def _tiny_unet_config(arch: str, sample_size: int) -> dict:
    """UNet2DConditionModel configs: 'tiny' keeps SD's 4-level layout at toy widths; 'sd15' is SD 1.5 exactly."""
    if arch == "sd15":
        return dict(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
        )
    if arch == "tiny":
        return dict(
            sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(16, 16, 32, 32),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
        )
    raise ValueError(f"arch must be 'tiny', 'sd15', 'sdxl-tiny' or 'sdxl', got {arch!r}")


def build_tiny_pipeline(
    path: str | Path | None = None,
    *,
    arch: str = "tiny",
    sample_size: int = 16,
    words: Iterable[str] = DEFAULT_WORDS,
    seed: int = 0,
    prediction_type: str = "epsilon",
):
    """Build a random-weight SD-layout pipeline offline; save it to ``path`` if given.

    ``arch="tiny"``: 4 UNet levels (latent 16² → 8² → 4² → 2²), VAE factor 2, 2-layer CLIP text encoder.
    ``arch="sd15"``: SD 1.5's UNet, VAE and CLIP ViT-L/14 text encoder shapes (same compute), random weights.
    ``arch="sdxl-tiny"`` / ``"sdxl"``: a ``StableDiffusionXLPipeline`` (:mod:`seediff.testing.sdxl`).
    ``prediction_type``: the scheduler's ('epsilon', 'v_prediction' as SD 2.x 768 px, or 'sample').
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if arch in ("sdxl", "sdxl-tiny"):
        from .sdxl import build_sdxl_pipeline

        pipe = build_sdxl_pipeline(arch, sample_size=2 * sample_size, words=words, seed=seed,
                                   prediction_type=prediction_type)
        if path is not None:
            pipe.save_pretrained(str(path))
        return pipe
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(words)
    unet = UNet2DConditionModel(**_tiny_unet_config(arch, sample_size))
    special = dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    if arch == "sd15":
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            norm_num_groups=32, sample_size=512,
        )
        text_cfg = CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", **special,
        )
    else:
        vae = AutoencoderKL(
            block_out_channels=(16, 32), layers_per_block=1, latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            norm_num_groups=8, sample_size=sample_size * 2,
        )
        text_cfg = CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77, **special,
        )
    text_encoder = CLIPTextModel(text_cfg)
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type,
    )
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    if path is not None:
        pipe.save_pretrained(str(path))
    return pipe
