"""guided_denoiser: a bare UNet plus scheduler with upsample guidance, for users' own loops."""

from __future__ import annotations

import pytest
import torch
from diffusers_models import (
    EMBED_DIM,
    ForwardRecorder,
    sd_call_kwargs,
    sd_embeds,
    tiny_animatediff_pipeline,
    tiny_sd_pipeline,
)
from ug_core.adapters.diffusers import (
    GuidedDenoiser,
    apply_upsample_guidance,
    guided_denoiser,
    remove_upsample_guidance,
)


def test_own_loop_equals_the_patched_pipeline():
    pipe = tiny_sd_pipeline()
    cfg, steps = 5.0, 3
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(4))
    kwargs = sd_call_kwargs(steps=steps, cfg=cfg)
    kwargs["latents"] = latents

    guided = guided_denoiser(pipe.unet, pipe.scheduler, (2, 2), 1.0, eta=0.6)
    assert isinstance(guided, GuidedDenoiser)
    assert guided.config is pipe.unet.config and guided.dtype == pipe.unet.dtype
    assert "GuidedDenoiser(UNet2DConditionModel" in repr(guided)
    scheduler = pipe.scheduler
    scheduler.set_timesteps(steps)
    embeds = torch.cat([kwargs["negative_prompt_embeds"], kwargs["prompt_embeds"]])
    x = latents * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(torch.cat([x] * 2), t)
        out = guided(x_in, t, encoder_hidden_states=embeds)
        assert type(out).__name__ == "UNet2DConditionOutput"
        uncond, cond = out.sample.chunk(2)
        x = scheduler.step(uncond + cfg * (cond - uncond), t, x).prev_sample
    assert not pipe.unet._forward_hooks  # the UNet itself was not modified

    apply_upsample_guidance(pipe, (2, 2), 1.0, eta=0.6)
    assert torch.equal(pipe(**kwargs).images, x)
    # The wrapper bypasses the pipeline's application: the same UNet is guided once, not twice.
    rec = ForwardRecorder(pipe.unet)
    scheduler.set_timesteps(steps)
    t = scheduler.timesteps[0]
    x_in = torch.randn(2, 4, 16, 16)
    with pipe.progress_bar(total=1):  # the pipeline's application is active meanwhile
        both = guided(x_in, t, encoder_hidden_states=embeds).sample
    assert len(rec.calls) == 2
    rec.close()
    remove_upsample_guidance(pipe)
    assert torch.equal(guided(x_in, t, encoder_hidden_states=embeds).sample, both)


def test_output_types_and_scale_zero():
    pipe = tiny_sd_pipeline()
    x, embeds = torch.randn(2, 4, 16, 16), torch.randn(2, 4, EMBED_DIM)
    plain = pipe.unet(x, 600, encoder_hidden_states=embeds).sample
    off = guided_denoiser(pipe.unet, pipe.scheduler, (2, 2), 0.0)
    assert torch.equal(off(x, 600, encoder_hidden_states=embeds).sample, plain)
    on = guided_denoiser(pipe.unet, pipe.scheduler, (2, 2), 1.0)
    rec = ForwardRecorder(pipe.unet)
    as_tuple = on(x, torch.tensor(600), embeds, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1
    assert len(rec.calls) == 2 and rec.calls[1][0]["sample"].shape == (2, 4, 8, 8)
    by_name = on(sample=x, timestep=600, encoder_hidden_states=embeds).sample
    assert torch.equal(as_tuple[0], by_name) and not torch.equal(by_name, plain)


def test_video_unet_temporal():
    pipe = tiny_animatediff_pipeline()
    guided = guided_denoiser(pipe.unet, pipe.scheduler, (2, 1, 1), 1.0)
    rec = ForwardRecorder(pipe.unet)
    x = torch.randn(1, 4, 4, 8, 8)
    embeds = sd_embeds()[0].repeat_interleave(4, dim=0)  # one row per frame, as AnimateDiff
    out = guided(x, 400, encoder_hidden_states=embeds).sample
    assert out.shape == x.shape and torch.isfinite(out).all()
    low = rec.calls[1][0]
    assert low["sample"].shape == (1, 4, 2, 8, 8)
    assert torch.equal(low["encoder_hidden_states"], embeds[:2])


def test_wrapper_errors():
    pipe = tiny_sd_pipeline()
    with pytest.raises(TypeError, match="denoiser must be a torch.nn.Module"):
        guided_denoiser(lambda x, t: x, pipe.scheduler)
    guided = guided_denoiser(pipe.unet, pipe.scheduler, (2, 2), 1.0)
    rec = ForwardRecorder(pipe.unet)
    with pytest.raises(
        ValueError,
        match=r"latent grid \(factors\) has sizes \(16, 15\) that the factors \(2, 2\) do "
        r"not divide \(15 % 2 = 1: use 14 or 16\)",
    ):
        guided(torch.zeros(1, 4, 16, 15), 10, encoder_hidden_states=torch.zeros(1, 4, EMBED_DIM))
    with pytest.raises(
        ValueError, match=r"got a sample of shape \(1, 4, 2, 16, 16\); the UNet family takes"
    ):
        guided(torch.zeros(1, 4, 2, 16, 16), 10, encoder_hidden_states=torch.zeros(1, 4, 32))
    assert rec.calls == []  # no UNet call before the errors
    with pytest.raises(ValueError, match="outside the schedule's timesteps"):
        guided(torch.zeros(1, 4, 16, 16), 1000, encoder_hidden_states=torch.zeros(1, 4, 32))
