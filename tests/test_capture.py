"""Capture: the recorder is exact, restores processors, stays flat in steps, and picks the right CFG half."""

from __future__ import annotations

import pytest
import torch

from seediff.capture import AttentionMaps, CaptureConfig, layer_levels, trace


def _unet_inputs(pipe, prompts: list[str], hw=(16, 16), seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn((len(prompts), 4, *hw), generator=g)
    emb, _ = pipe.encode_prompt(prompts, pipe.device, 1, False)
    return latents, emb


@pytest.mark.parametrize("cfg", [False, True])
def test_recorder_output_equals_default_processor(tiny_pipe, cfg):
    """Recording must not change the UNet's output (with CFG the uncond half runs SDPA, the cond half eager)."""
    latents, emb = _unet_inputs(tiny_pipe, ["a photo of a dog", "a cat"] if cfg else ["a photo of a dog"])
    t = torch.tensor([100])
    with torch.no_grad():
        ref = tiny_pipe.unet(latents, t, encoder_hidden_states=emb).sample
        with trace(tiny_pipe, CaptureConfig(t_window=(0.0, 1.0)), cfg=cfg) as maps:
            out = tiny_pipe.unet(latents, t, encoder_hidden_states=emb).sample
    assert maps.cross and maps.self_attn, "the recording processors must have been active"
    assert torch.allclose(out, ref, atol=1e-5, rtol=0), (out - ref).abs().max()


def test_processors_restored_after_exception(tiny_pipe):
    before = {k: type(v) for k, v in tiny_pipe.unet.attn_processors.items()}
    with pytest.raises(RuntimeError, match="boom"):
        with trace(tiny_pipe):
            assert any(type(p).__name__ == "RecordingProcessor" for p in tiny_pipe.unet.attn_processors.values())
            raise RuntimeError("boom")
    after = {k: type(v) for k, v in tiny_pipe.unet.attn_processors.items()}
    assert after == before
    assert all(t.__name__ != "RecordingProcessor" for t in after.values())
    assert not tiny_pipe.unet._forward_pre_hooks


def test_only_requested_layers_record(tiny_pipe):
    cfg = CaptureConfig(cross_levels=(2,), self_levels=(1,))
    with trace(tiny_pipe, cfg) as maps:
        tiny_pipe("a photo of a dog", num_inference_steps=4, height=32, width=32, output_type="np")
    levels = layer_levels(tiny_pipe.unet)
    assert maps.cross and all(levels[n] == 2 and n.endswith("attn2") for n in maps.cross)
    assert list(maps.self_attn) == ["up_blocks.2.attentions.0.transformer_blocks.0.attn1"]


def test_store_size_independent_of_steps(tiny_pipe):
    sizes = []
    for steps in (4, 12):
        with trace(tiny_pipe) as maps:
            tiny_pipe("a photo of a dog", num_inference_steps=steps, height=32, width=32, output_type="np")
        sizes.append((maps.nbytes, len(maps.timesteps)))
    assert sizes[0][0] == sizes[1][0] > 0
    assert sizes[1][1] > sizes[0][1], "more steps must have been recorded"


def test_timestep_window_second_half(tiny_pipe):
    with trace(tiny_pipe) as maps:
        tiny_pipe("a photo of a dog", num_inference_steps=10, height=32, width=32, output_type="np")
    assert maps.timesteps and all(t < 500 for t in maps.timesteps)
    assert len(maps.timesteps) == 5


@pytest.mark.parametrize("guidance", [1.0, 7.5])
def test_cfg_half_and_batch(tiny_pipe, guidance):
    with trace(tiny_pipe) as maps:
        tiny_pipe(["a photo of a dog", "a cat on the grass"], num_inference_steps=4, height=32, width=32,
                  guidance_scale=guidance, output_type="np")
    assert maps.batch_size == 2
    for t in maps.cross.values():
        assert t.shape[0] == 2
    assert maps.has_word("dog", batch=0) and not maps.has_word("dog", batch=1)
    assert maps.has_word("cat", batch=1)


def test_cfg_takes_the_conditional_half(tiny_pipe):
    """With CFG the UNet batch is [uncond, cond]; the maps must equal a cond-only run on the same latents."""
    latents, cond = _unet_inputs(tiny_pipe, ["a photo of a dog"])
    uncond, _ = tiny_pipe.encode_prompt([""], tiny_pipe.device, 1, False)
    t = torch.tensor([100])
    with torch.no_grad():
        with trace(tiny_pipe, CaptureConfig(t_window=(0.0, 1.0)), cfg=True) as both:
            tiny_pipe.unet(torch.cat([latents, latents]), t, encoder_hidden_states=torch.cat([uncond, cond]))
        with trace(tiny_pipe, CaptureConfig(t_window=(0.0, 1.0)), cfg=False) as only_cond:
            tiny_pipe.unet(latents, t, encoder_hidden_states=cond)
        with trace(tiny_pipe, CaptureConfig(t_window=(0.0, 1.0)), cfg=False) as only_uncond:
            tiny_pipe.unet(latents, t, encoder_hidden_states=uncond)
    name = next(iter(both.cross))
    assert both.cross[name].shape[0] == 1
    assert torch.allclose(both.cross[name], only_cond.cross[name], atol=1e-6)
    assert not torch.allclose(both.cross[name], only_uncond.cross[name], atol=1e-4)


def test_non_square_shapes(tiny_pipe):
    with trace(tiny_pipe) as maps:
        tiny_pipe("a photo of a dog", num_inference_steps=4, height=48, width=32, output_type="np")
    assert maps.latent_hw == (24, 16)
    assert maps.level_hw(1) == (12, 8)
    assert maps.cross_maps("dog", 1).shape[1:] == (12, 8)
    assert maps.self_attention(0).shape == (24 * 16, 24 * 16)
    # probabilities: every row of self-attention sums to one
    assert torch.allclose(maps.self_attention(0).sum(-1), torch.ones(24 * 16), atol=1e-4)


def test_multi_token_word_merge(tiny_pipe):
    with trace(tiny_pipe) as maps:
        tiny_pipe("a traffic light near a pottedplant", num_inference_steps=4, height=32, width=32, output_type="np")
    idx = maps.word_token_indices("traffic light")
    assert len(idx) == 2 and idx[1] == idx[0] + 1
    sub = maps.word_token_indices("pottedplant")
    assert len(sub) == 3  # 'potte' 'd' 'plant</w>': sub-word tokens of an out-of-vocabulary word
    a = maps.cross_maps("pottedplant", 1)
    # equals the mean of the sub-token maps
    name = [n for n in maps.cross if maps.levels[n] == 1][0]
    raw = maps.cross[name][0]
    keep = torch.tensor([t not in maps.special_ids for t in maps.token_ids[0]])
    raw = raw / raw[:, keep].sum(-1, keepdim=True)
    assert torch.allclose(a[0], raw[:, sub].mean(-1).view(maps.level_hw(1)), atol=1e-6)


def test_unknown_word_error(tiny_pipe):
    with trace(tiny_pipe) as maps:
        tiny_pipe("a photo of a dog", num_inference_steps=4, height=32, width=32, output_type="np")
    with pytest.raises(ValueError, match=r"word 'zebra' is not in the prompt 'a photo of a dog'"):
        maps.cross_maps("zebra", 1)
    with pytest.raises(ValueError, match="no cross-attention recorded at level 7"):
        maps.cross_maps("dog", 7)


def test_no_steps_in_window_is_a_clear_error(tiny_pipe):
    with trace(tiny_pipe, CaptureConfig(t_window=(0.99, 1.0))) as maps:
        tiny_pipe("a photo of a dog", num_inference_steps=2, height=32, width=32, output_type="np")
    with pytest.raises(RuntimeError, match="t_window"):
        _ = maps.batch_size


@pytest.mark.parametrize("cfg", [False, True])
def test_record_rows_records_the_leading_rows_only(tiny_pipe, cfg):
    """record_rows=1: the UNet output is unchanged, the maps are those of the first row, the other rows unrecorded."""
    prompts = ["a photo of a dog", "a cat", "a dog and a cat"]
    latents, emb = _unet_inputs(tiny_pipe, prompts)
    if cfg:  # [unconditional, conditional] halves
        latents, emb = torch.cat([latents, latents]), torch.cat([torch.zeros_like(emb), emb])
    t = torch.tensor([100])
    with torch.no_grad():
        with trace(tiny_pipe, CaptureConfig(t_window=(0.0, 1.0)), cfg=cfg) as every:
            ref = tiny_pipe.unet(latents, t, encoder_hidden_states=emb).sample
        with trace(tiny_pipe, CaptureConfig(t_window=(0.0, 1.0), record_rows=1), cfg=cfg) as first:
            out = tiny_pipe.unet(latents, t, encoder_hidden_states=emb).sample
    assert torch.allclose(out, ref, atol=1e-5, rtol=0), (out - ref).abs().max()
    assert every.batch_size == 3 and first.batch_size == 1
    for store in ("cross", "self_attn"):
        a, b = getattr(every, store), getattr(first, store)
        assert a.keys() == b.keys() and a
        for name in a:
            assert torch.allclose(b[name][0], a[name][0], atol=1e-6), name
    with pytest.raises(ValueError, match="record_rows"):
        CaptureConfig(record_rows=0)


def test_config_validation():
    with pytest.raises(ValueError, match="t_window"):
        CaptureConfig(t_window=(0.6, 0.5))
    with pytest.raises(ValueError, match="self_levels"):
        CaptureConfig(self_levels=(-1,))
    assert isinstance(AttentionMaps(), AttentionMaps)
