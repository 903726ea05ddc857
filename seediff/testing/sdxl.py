"""Offline SDXL-layout pipelines with random weights: the tiny one for tests, SDXL's exact shapes for benchmarks.

SDXL's UNet differs from SD 1.5's where seediff looks: 3 levels (no attention at the finest, level 0), transformer
depth 1/2/10 per level (here: 2 at level 1 and 10 at level 2 for ``arch="sdxl"``, 2 and 3 for the tiny one), two
text encoders whose hidden states are concatenated, and ``added_cond_kwargs`` (pooled text + size/crop time ids).
The scheduler is SDXL's Euler sampler, so code that assumes DDPM's ``add_noise`` is caught by the tests.
"""

from __future__ import annotations

from typing import Iterable

import torch

__all__ = ["sdxl_unet_config", "build_sdxl_pipeline"]


def sdxl_unet_config(arch: str = "sdxl-tiny", sample_size: int = 32) -> dict:
    """UNet2DConditionModel config: 'sdxl' is SDXL base 1.0's exactly; 'sdxl-tiny' keeps its layout at toy widths."""
    common = dict(
        in_channels=4, out_channels=4, layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        addition_embed_type="text_time", use_linear_projection=True,
    )
    if arch == "sdxl":
        return dict(common, sample_size=128, block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
                    attention_head_dim=(5, 10, 20), cross_attention_dim=2048, addition_time_embed_dim=256,
                    projection_class_embeddings_input_dim=6 * 256 + 1280, norm_num_groups=32)
    if arch == "sdxl-tiny":
        return dict(common, sample_size=sample_size, block_out_channels=(16, 32, 32), transformer_layers_per_block=(1, 2, 3),
                    attention_head_dim=(2, 4, 4), cross_attention_dim=32 + 48, addition_time_embed_dim=8,
                    projection_class_embeddings_input_dim=6 * 8 + 48, norm_num_groups=8)
    raise ValueError(f"arch must be 'sdxl' or 'sdxl-tiny', got {arch!r}")


def _text_configs(arch: str, tokenizer) -> tuple[dict, dict]:
    """CLIP ViT-L and OpenCLIP bigG text-encoder configs (toy widths for the tiny arch)."""
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id, vocab_size=len(tokenizer), max_position_embeddings=77)
    if arch == "sdxl":
        one = dict(special, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   hidden_act="quick_gelu")
        two = dict(special, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                   hidden_act="gelu", projection_dim=1280)
        return one, two
    # Different widths, as in SDXL (768 vs 1280): diffusers' single-file loader tells the encoders apart by width.
    one = dict(special, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    return one, dict(one, hidden_size=48, intermediate_size=96, hidden_act="gelu", projection_dim=48)


def build_sdxl_pipeline(arch: str = "sdxl-tiny", *, sample_size: int = 32, words: Iterable[str] | None = None,
                        seed: int = 0, prediction_type: str = "epsilon"):
    """A random-weight ``StableDiffusionXLPipeline`` built offline (no hub): 'sdxl-tiny' or SDXL's shapes ('sdxl')."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from . import DEFAULT_WORDS, build_tokenizer

    torch.manual_seed(seed)
    vocab = tuple(words) if words is not None else DEFAULT_WORDS
    tokenizer = build_tokenizer(vocab)
    tokenizer_2 = build_tokenizer(vocab)
    tokenizer_2.pad_token = "!"  # SDXL's second tokenizer pads with "!" (id 0), not with the end token
    unet = UNet2DConditionModel(**sdxl_unet_config(arch, sample_size))
    one, two = _text_configs(arch, tokenizer)
    two["pad_token_id"] = tokenizer_2.pad_token_id
    if arch == "sdxl":
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            norm_num_groups=32, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
    else:
        vae = AutoencoderKL(block_out_channels=(16, 32), layers_per_block=1, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                            norm_num_groups=8, sample_size=sample_size * 2, scaling_factor=0.13025, force_upcast=True)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading", prediction_type=prediction_type)
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(CLIPTextConfig(**one)),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**two)), tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
