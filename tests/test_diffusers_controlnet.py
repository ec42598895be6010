"""The diffusers adapter on conditioned pipelines, against Eq. 10.

ControlNet and T2I-Adapter variants: each pipeline runs at 2x with UG on; inside every UNet call
the low-resolution call gets the residuals average-pooled to its size (ControlNet:
``down_block_additional_residuals`` and ``mid_block_additional_residual``; T2I-Adapter:
``down_intrablock_additional_residuals``), the ControlNet / adapter itself runs once per step,
and the guided output equals Eq. 10.

UNets with conditioning input channels (inpainting, InstructPix2Pix, the x4 upscaler, IF
super-resolution): the noisy channels follow Eq. 10, the conditioning channels reach the low call
average-pooled and unscaled.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers_models import (
    ForwardRecorder,
    OutputRecorder,
    control_image,
    ddim_scheduler,
    randomize_zero_params,
    sd_call_kwargs,
    sd_family_pipeline,
    sdxl_call_kwargs,
    tiny_controlnet,
    tiny_controlnet_pipeline,
    tiny_sdxl_pipeline,
    tiny_unet,
    tiny_union_controlnet,
    tiny_vae,
)
from test_diffusers_reference import check_eq10, split_calls
from ug_core.adapters.diffusers import apply_upsample_guidance

RESIDUAL_ARGS = (
    "down_block_additional_residuals",
    "mid_block_additional_residual",
    "down_intrablock_additional_residuals",
)


def check_pooled_residuals(high_named: dict, low_named: dict, names: tuple[str, ...]) -> None:
    """Every residual the high call got reaches the low call 2x2 average-pooled."""
    for name in names:
        high, low = high_named[name], low_named[name]
        assert high is not None and low is not None, name
        highs = [high] if isinstance(high, torch.Tensor) else list(high)
        lows = [low] if isinstance(low, torch.Tensor) else list(low)
        assert len(highs) == len(lows) > 0, name
        for r, r_low in zip(highs, lows, strict=True):
            assert r.abs().sum() > 0, name
            torch.testing.assert_close(r_low, F.avg_pool2d(r, 2), rtol=1e-6, atol=1e-6)


def run_and_check(pipe, call_kwargs: dict, names: tuple[str, ...], side_module=None, steps=2):
    """Run ``pipe`` with UG 2x on, then check every UNet call (residuals pooled, Eq. 10)."""
    apply_upsample_guidance(pipe, (2, 2), 1.0)
    rec, out = ForwardRecorder(pipe.unet), OutputRecorder(pipe.unet)
    side = ForwardRecorder(side_module) if side_module is not None else None
    result = pipe(**call_kwargs)
    images = result.images if hasattr(result, "images") else result[0]
    assert torch.isfinite(images).all()
    highs, lows, guided = split_calls(rec, out, (2, 4, 16, 16))
    assert len(highs) == len(lows) == steps
    assert all(tuple(low[0]["sample"].shape) == (2, 4, 8, 8) for low in lows)
    if side is not None:
        assert len(side.calls) == steps  # the ControlNet / adapter is not run again at low res
    for high, low, g in zip(highs, lows, guided, strict=True):
        check_pooled_residuals(high[0], low[0], names)
        check_eq10(high, low, g, pipe.scheduler.alphas_cumprod, (2, 2), 1.0)
    return highs, lows


def sdxl_controlnet_pipeline(cls, base, controlnet):
    """An SDXL ControlNet pipeline of class ``cls`` from a tiny SDXL pipeline and a ControlNet."""
    pipe = cls(
        vae=base.vae,
        text_encoder=None,
        text_encoder_2=None,
        tokenizer=None,
        tokenizer_2=None,
        unet=base.unet,
        controlnet=controlnet,
        scheduler=base.scheduler,
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_sdxl_controlnet():
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline

    base = tiny_sdxl_pipeline()
    torch.manual_seed(3)
    controlnet = ControlNetModel.from_unet(base.unet, conditioning_embedding_out_channels=(8, 8))
    randomize_zero_params(controlnet.eval(), 3)
    pipe = sdxl_controlnet_pipeline(StableDiffusionXLControlNetPipeline, base, controlnet)
    highs, lows = run_and_check(
        pipe,
        dict(image=control_image(32, 32), **sdxl_call_kwargs(steps=2)),
        RESIDUAL_ARGS[:2],
        side_module=pipe.controlnet,
    )
    # The default micro-conditioning describes the low-resolution image (half the size).
    for high, low in zip(highs, lows, strict=True):
        ids, low_ids = (
            high[0]["added_cond_kwargs"]["time_ids"],
            low[0]["added_cond_kwargs"]["time_ids"],
        )
        assert torch.equal(low_ids[:, [0, 1, 4, 5]], ids[:, [0, 1, 4, 5]] / 2)


def test_multi_controlnet_and_guess_mode():
    """Two ControlNets (MultiControlNetModel): summed residuals are pooled, in guess mode too."""
    from diffusers import StableDiffusionControlNetPipeline

    unet = tiny_unet()
    nets = [tiny_controlnet(unet), tiny_controlnet(unet, seed=5)]
    pipe = sd_family_pipeline(StableDiffusionControlNetPipeline, unet, controlnet=nets)
    assert type(pipe.controlnet).__name__ == "MultiControlNetModel"
    images = [control_image(32, 32, seed=0), control_image(32, 32, seed=1)]
    run_and_check(
        pipe,
        dict(image=images, **sd_call_kwargs(steps=2)),
        RESIDUAL_ARGS[:2],
        side_module=pipe.controlnet,
    )
    # Guess mode: the ControlNets see only the conditional half; the unconditional half's
    # residuals are zeros. Both halves go through one low call with pooled residuals.
    highs, _ = run_and_check(
        pipe,
        dict(image=images, guess_mode=True, **sd_call_kwargs(steps=2)),
        RESIDUAL_ARGS[:2],
    )
    for r in highs[0][0]["down_block_additional_residuals"]:
        assert torch.equal(r[0], torch.zeros_like(r[0])) and r[1].abs().sum() > 0


def test_controlnet_img2img():
    from diffusers import StableDiffusionControlNetImg2ImgPipeline

    single = tiny_controlnet_pipeline()
    pipe = StableDiffusionControlNetImg2ImgPipeline(**single.components)
    pipe.set_progress_bar_config(disable=True)
    init = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    kwargs = sd_call_kwargs(steps=4)
    run_and_check(
        pipe,
        dict(image=init, control_image=control_image(32, 32), strength=0.5, **kwargs),
        RESIDUAL_ARGS[:2],
        side_module=pipe.controlnet,
        steps=2,  # strength 0.5 of 4 steps
    )


def test_controlnet_guidance_window():
    """control_guidance_start/end: outside the window the ControlNet residuals are zeroed by the
    pipeline's conditioning scale; UG still matches Eq. 10 at every step."""
    pipe = tiny_controlnet_pipeline()
    run_and_check(
        pipe,
        dict(
            image=control_image(32, 32),
            control_guidance_start=0.0,
            control_guidance_end=0.5,
            **sd_call_kwargs(steps=2),
        ),
        (),
        steps=2,
    )


@pytest.mark.parametrize("multi", [False, True], ids=["adapter", "multi-adapter"])
def test_t2i_adapter(multi):
    """T2I-Adapter residuals (consumed from a list by the UNet) reach the low call pooled."""
    from diffusers import MultiAdapter, StableDiffusionAdapterPipeline, T2IAdapter

    def adapter(seed: int) -> T2IAdapter:
        torch.manual_seed(seed)
        net = T2IAdapter(
            in_channels=3, channels=[16, 32], num_res_blocks=1, downscale_factor=2
        ).eval()
        randomize_zero_params(net, seed)
        return net

    unet = tiny_unet()
    net = MultiAdapter([adapter(4), adapter(5)]) if multi else adapter(4)
    pipe = StableDiffusionAdapterPipeline(
        vae=tiny_vae(),
        text_encoder=None,
        tokenizer=None,
        unet=unet,
        adapter=net,
        scheduler=ddim_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    if multi:  # MultiAdapter takes one weight per adapter
        image = [control_image(32, 32, seed=0), control_image(32, 32, seed=1)]
        extra = dict(image=image, adapter_conditioning_scale=[1.0, 0.5])
    else:
        extra = dict(image=control_image(32, 32))
    run_and_check(pipe, dict(**extra, **sd_call_kwargs(steps=2)), RESIDUAL_ARGS[2:])


def test_guided_unet_keeps_t2i_adapter_residual_lists():
    """The bare-UNet wrapper: the list the UNet consumes still reaches the low call, pooled."""
    from ug_core.adapters.diffusers import guided_denoiser

    unet = tiny_unet()
    guided = guided_denoiser(unet, ddim_scheduler(), (2, 2), 1.0)
    gen = torch.Generator().manual_seed(0)
    x, embeds = torch.randn(2, 4, 16, 16, generator=gen), torch.randn(2, 4, 32, generator=gen)
    residuals = [torch.randn(2, 16, 16, 16, generator=gen), torch.randn(2, 32, 8, 8, generator=gen)]
    rec = ForwardRecorder(unet)
    guided(
        x, 500, encoder_hidden_states=embeds, down_intrablock_additional_residuals=list(residuals)
    )
    (high, _), (low, _) = rec.calls
    assert len(high["down_intrablock_additional_residuals"]) == 2
    check_pooled_residuals(high, low, RESIDUAL_ARGS[2:])


def test_sdxl_controlnet_union():
    from diffusers import StableDiffusionXLControlNetUnionPipeline

    base = tiny_sdxl_pipeline()
    controlnet = tiny_union_controlnet(base.unet)
    pipe = sdxl_controlnet_pipeline(StableDiffusionXLControlNetUnionPipeline, base, controlnet)
    run_and_check(
        pipe,
        dict(control_image=[control_image(32, 32)], control_mode=[1], **sdxl_call_kwargs(steps=2)),
        RESIDUAL_ARGS[:2],
        side_module=pipe.controlnet,
    )


def check_conditioning_channels(pipe, call_kwargs: dict, batch: int, noisy: int = 4) -> None:
    """UG 2x on a UNet whose input is [noisy latent, clean conditioning]: Eq. 10 on the noisy
    channels; the low call gets the conditioning channels 2x2 average-pooled and unscaled."""
    apply_upsample_guidance(pipe, (2, 2), 1.0)
    rec, out = ForwardRecorder(pipe.unet), OutputRecorder(pipe.unet)
    result = pipe(**call_kwargs).images
    assert torch.isfinite(result).all()
    channels = pipe.unet.config.in_channels
    highs, lows, guided = split_calls(rec, out, (batch, channels, 16, 16))
    assert len(highs) == len(lows) == 2 and len(guided) == 2
    for (named, eps), (low_named, eps_low), g in zip(highs, lows, guided, strict=True):
        x, low_x = named["sample"], low_named["sample"]
        assert low_x.shape == (batch, channels, 8, 8)
        condition = x[:, noisy:]
        assert condition.abs().sum() > 0
        pooled = F.avg_pool2d(condition, 2)
        torch.testing.assert_close(low_x[:, noisy:], pooled, rtol=1e-6, atol=1e-6)
        # Eq. 10 on the noisy channels (the sample check inside uses only those).
        high = ({**named, "sample": x[:, :noisy]}, eps)
        low = ({**low_named, "sample": low_x[:, :noisy]}, eps_low)
        check_eq10(high, low, g, pipe.scheduler.alphas_cumprod, (2, 2), 1.0)
    return highs, lows


def test_inpainting_unet():
    """StableDiffusionInpaintPipeline with a 9-channel UNet (latent, mask, masked image)."""
    from diffusers import StableDiffusionInpaintPipeline

    pipe = sd_family_pipeline(StableDiffusionInpaintPipeline, tiny_unet(in_channels=9))
    gen = torch.Generator().manual_seed(8)
    image = torch.rand(1, 3, 32, 32, generator=gen)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 4:20] = 1
    kwargs = dict(image=image, mask_image=mask, strength=1.0, **sd_call_kwargs(steps=2))
    check_conditioning_channels(pipe, kwargs, batch=2)


def test_instruct_pix2pix_unet():
    """InstructPix2Pix (8-channel UNet: latent, image latents; CFG triples the batch)."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = sd_family_pipeline(StableDiffusionInstructPix2PixPipeline, tiny_unet(in_channels=8))
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    kwargs = sd_call_kwargs(steps=2)
    kwargs.pop("height"), kwargs.pop("width")
    check_conditioning_channels(pipe, dict(image=image, **kwargs), batch=3)


def test_super_resolution_unet_with_learned_variance():
    """DeepFloyd IF super-resolution layout: [noisy, image] in, [mean, variance] out (6 and 6),
    with a learned-variance scheduler: the noisy half is guided, the image half pooled, the
    variance kept."""
    import math

    from diffusers import DDPMScheduler, UNet2DModel
    from ug_core.adapters.diffusers import guided_denoiser

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=6,
        out_channels=6,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ).eval()
    scheduler = DDPMScheduler(variance_type="learned_range")
    guided = guided_denoiser(unet, scheduler, (2, 2), 1.0)
    x = torch.randn(2, 6, 16, 16, generator=torch.Generator().manual_seed(1))
    rec = ForwardRecorder(unet)
    g = guided(x, 400).sample
    (_, raw), (low_named, raw_low) = rec.calls
    a = float(scheduler.alphas_cumprod[400])
    expected_in = F.avg_pool2d(x[:, :3], 2) / math.sqrt(a + (1 - a) / 4)
    torch.testing.assert_close(low_named["sample"][:, :3], expected_in, rtol=1e-6, atol=1e-6)
    pooled = F.avg_pool2d(x[:, 3:], 2)  # not scaled: the image half carries no noise
    torch.testing.assert_close(low_named["sample"][:, 3:], pooled, rtol=1e-6, atol=1e-6)
    up = F.interpolate(raw_low[:, :3] / 2 - F.avg_pool2d(raw[:, :3], 2), scale_factor=2)
    torch.testing.assert_close(g[:, :3], raw[:, :3] + up, rtol=1e-5, atol=1e-5)
    assert torch.equal(g[:, 3:], raw[:, 3:])
    # The same UNet with a fixed-variance scheduler: all six channels are the noisy sample.
    rec.close()
    rec = ForwardRecorder(unet)
    guided_denoiser(unet, DDPMScheduler(), (2, 2), 1.0)(x, 400)
    assert rec.calls[1][0]["sample"].shape == (2, 6, 8, 8)
    torch.testing.assert_close(
        rec.calls[1][0]["sample"], F.avg_pool2d(x, 2) / math.sqrt(a + (1 - a) / 4)
    )


def test_sd_x4_upscaler_unet():
    """StableDiffusionUpscalePipeline: 7-channel UNet (latent, noisy low-res image), noise level
    as class label; the image channels are pooled for the low call, the label passed as is."""
    from diffusers import DDPMScheduler, StableDiffusionUpscalePipeline

    sd = tiny_controlnet_pipeline()
    sd.vae.register_to_config(scaling_factor=0.08333)
    pipe = StableDiffusionUpscalePipeline(
        vae=sd.vae,
        text_encoder=None,
        tokenizer=None,
        unet=tiny_unet(in_channels=7, num_class_embeds=1000),
        low_res_scheduler=DDPMScheduler(),
        scheduler=sd.scheduler,
        safety_checker=None,
        feature_extractor=None,
        watermarker=None,
    )
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(10))
    kwargs = sd_call_kwargs(steps=2)
    kwargs.pop("height"), kwargs.pop("width")
    call = dict(image=image, noise_level=20, **kwargs)
    highs, lows = check_conditioning_channels(pipe, call, batch=2)
    for high, low in zip(highs, lows, strict=True):
        assert torch.equal(low[0]["class_labels"], high[0]["class_labels"])
        assert high[0]["class_labels"].tolist() == [20, 20]
