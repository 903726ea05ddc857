"""Test-only converter: a diffusers SD 1.x/2.x or SDXL pipeline → one original-layout (LDM / "single file")
state dict, the format of the .safetensors checkpoints users download.

The inverse of diffusers' own single-file conversion (``diffusers.loaders.single_file_utils``): the fixed
layers come from its ``DIFFUSERS_TO_LDM_MAPPING`` tables; the block renumbering follows the original
``convert_diffusers_to_original_stable_diffusion.py`` / ``..._sdxl.py`` scripts, generalised to any
``layers_per_block`` and number of levels so that the tiny test models convert too.
"""

from __future__ import annotations

import torch
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
          ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]


def _rename(key: str, prefixes: list[tuple[str, str]]) -> str:
    """``key`` with the first matching diffusers prefix replaced by its LDM prefix."""
    for hf, sd in prefixes:
        if key.startswith(hf):
            return sd + key[len(hf):]
    return key


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    """UNet2DConditionModel state dict → ``model.diffusion_model.*`` keys."""
    cfg = unet.config
    n, per = len(cfg.block_out_channels), int(cfg.layers_per_block)
    fixed = dict(DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"])
    if cfg.addition_embed_type == "text_time":
        fixed.update(DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"])
    prefixes: list[tuple[str, str]] = []
    for i in range(n):
        down_attn = cfg.down_block_types[i].startswith("CrossAttn")
        up_attn = cfg.up_block_types[i].startswith("CrossAttn")
        for j in range(per):
            prefixes.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{(per + 1) * i + j + 1}.0."))
            if down_attn:
                prefixes.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{(per + 1) * i + j + 1}.1."))
        for j in range(per + 1):
            prefixes.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{(per + 1) * i + j}.0."))
            if up_attn:
                prefixes.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{(per + 1) * i + j}.1."))
        if i < n - 1:
            prefixes.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(per + 1) * (i + 1)}.0.op."))
            prefixes.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{(per + 1) * i + per}.{2 if up_attn else 1}."))
    prefixes.append(("mid_block.attentions.0.", "middle_block.1."))
    prefixes += [(f"mid_block.resnets.{j}.", f"middle_block.{2 * j}.") for j in range(2)]
    out = {}
    for key, value in unet.state_dict().items():
        if key in fixed:
            new = fixed[key]
        else:
            new = _rename(key, prefixes)
            if ".resnets." in key or "mid_block.resnets" in key:
                for hf, sd in RESNET:
                    new = new.replace(f".{hf}.", f".{sd}.")
        out["model.diffusion_model." + new] = value
    return out


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    """AutoencoderKL state dict → ``first_stage_model.*`` keys (attention projections as 1×1 convolutions)."""
    n, per = len(vae.config.block_out_channels), int(vae.config.layers_per_block)
    fixed = DIFFUSERS_TO_LDM_MAPPING["vae"]
    prefixes: list[tuple[str, str]] = []
    for i in range(n):
        prefixes += [(f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.") for j in range(per)]
        prefixes += [(f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{n - 1 - i}.block.{j}.") for j in range(per + 1)]
        if i < n - 1:
            prefixes.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
            prefixes.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample."))
    for part in ("encoder", "decoder"):
        prefixes += [(f"{part}.mid_block.resnets.{j}.", f"{part}.mid.block_{j + 1}.") for j in range(2)]
        prefixes.append((f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1."))
    attn = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out.")]
    out = {}
    for key, value in vae.state_dict().items():
        new = fixed.get(key) or _rename(key, prefixes)
        if ".mid.attn_1." in new:
            for hf, sd in attn:
                new = new.replace(f".attn_1.{hf}", f".attn_1.{sd}")
            if value.ndim == 2:
                value = value[:, :, None, None]
        elif ".block." in new or ".block_" in new:
            new = new.replace(".conv_shortcut.", ".nin_shortcut.")
        out["first_stage_model." + new] = value
    return out


def clip_to_ldm(text_encoder, prefix: str) -> dict[str, torch.Tensor]:
    """transformers CLIPTextModel → ``{prefix}text_model.*`` (the HF layout the original checkpoints embed)."""
    out = {}
    for key, value in text_encoder.state_dict().items():
        if key.startswith("text_model.") or key.startswith("text_projection"):
            out[prefix + key] = value
        else:  # transformers ≥ 5.6 flattened CLIPTextModel: put text_model. back as in the original files
            out[prefix + "text_model." + key] = value
    return out


def openclip_to_ldm(text_encoder, prefix: str = "conditioner.embedders.1.model.") -> dict[str, torch.Tensor]:
    """transformers CLIPTextModelWithProjection → OpenCLIP keys (fused in_proj, resblocks, ln_*, c_fc/c_proj)."""
    sd = {k if k.startswith(("text_model.", "text_projection")) else "text_model." + k: v
          for k, v in text_encoder.state_dict().items()}
    layers = DIFFUSERS_TO_LDM_MAPPING["openclip"]["layers"]
    swaps = [(a, b) for a, b in DIFFUSERS_TO_LDM_MAPPING["openclip"]["transformer"].items() if not a.startswith("transformer.")]
    out = {}
    for key, value in sd.items():
        if key in layers:
            out[prefix + layers[key]] = value.T.contiguous() if key == "text_projection.weight" else value
        elif ".self_attn.q_proj." in key:
            kind = key.rsplit(".", 1)[1]
            k, v = sd[key.replace("q_proj", "k_proj")], sd[key.replace("q_proj", "v_proj")]
            base = key.split(".self_attn.")[0].replace("text_model.encoder.layers.", "resblocks.")
            out[f"{prefix}transformer.{base}.attn.in_proj_{kind}"] = torch.cat([value, k, v])
        elif ".self_attn.k_proj." in key or ".self_attn.v_proj." in key or "position_ids" in key:
            continue
        else:
            new = key
            for a, b in swaps:
                new = new.replace(a, b)
            out[prefix + "transformer." + new] = value
    return out


def pipeline_to_ldm(pipe) -> dict[str, torch.Tensor]:
    """The whole pipeline as one original-layout state dict (SD 1.x/2.x, or SDXL with its two text encoders)."""
    out = {**unet_to_ldm(pipe.unet), **vae_to_ldm(pipe.vae)}
    if getattr(pipe, "text_encoder_2", None) is not None:
        out.update(clip_to_ldm(pipe.text_encoder, "conditioner.embedders.0.transformer."))
        out.update(openclip_to_ldm(pipe.text_encoder_2))
    else:
        out.update(clip_to_ldm(pipe.text_encoder, "cond_stage_model.transformer."))
    return {k: v.detach().contiguous().clone() for k, v in out.items()}
