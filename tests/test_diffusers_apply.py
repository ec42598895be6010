"""apply/remove, bit-identity, the errors, offload and compile hooks, LoRA and IP-Adapter."""

from __future__ import annotations

import subprocess
import sys
import warnings
from types import SimpleNamespace

import pytest
import torch
from diffusers_models import (
    EMBED_DIM,
    ForwardRecorder,
    animatediff_call_kwargs,
    control_image,
    ddim_scheduler,
    sd_call_kwargs,
    tiny_animatediff_pipeline,
    tiny_controlnet_pipeline,
    tiny_ddpm_pipeline,
    tiny_sd_pipeline,
    tiny_unet,
)
from ug_core.adapters.diffusers import (
    apply_upsample_guidance,
    is_upsample_guided,
    remove_upsample_guidance,
)

HOOK_TABLES = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
)


def full_output(pipe, **overrides):
    """A decoded SD image (through the VAE), so that bit-identity covers the whole pipeline."""
    kwargs = sd_call_kwargs(**overrides)
    kwargs["output_type"] = "pt"
    return pipe(**kwargs).images


def snapshot(pipe) -> dict:
    """Everything apply/remove could touch, by identity or by value."""
    unet = pipe.unet
    return {
        "pipe": dict(pipe.__dict__),
        "unet_attrs": set(unet.__dict__),
        "hooks": {name: dict(getattr(unet, name)) for name in HOOK_TABLES},
        "state": {k: v.clone() for k, v in unet.state_dict().items()},
        "config": dict(unet.config),
        "dtype": unet.dtype,
        "device": unet.device,
        "class": type(unet),
    }


def assert_same(before: dict, after: dict) -> None:
    assert after["pipe"].keys() == before["pipe"].keys()
    for key, value in before["pipe"].items():
        if callable(value) or isinstance(value, torch.nn.Module):
            assert after["pipe"][key] is value, key
    assert after["unet_attrs"] == before["unet_attrs"]
    assert after["hooks"] == before["hooks"]
    assert after["state"].keys() == before["state"].keys()
    assert all(torch.equal(after["state"][k], v) for k, v in before["state"].items())
    for key in ("config", "dtype", "device", "class"):
        assert after[key] == before[key], key


def low_calls(recorder, high_hw) -> int:
    return sum(tuple(c[0]["sample"].shape[-2:]) != tuple(high_hw) for c in recorder.calls)


def test_import_does_not_import_diffusers():
    code = (
        "import sys, ug_core.adapters.diffusers as a; "
        "assert 'diffusers' not in sys.modules, 'diffusers imported'; "
        "assert 'transformers' not in sys.modules; print(a.apply_upsample_guidance.__name__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "apply_upsample_guidance" in result.stdout


def test_scale_zero_is_bit_identical_and_remove_restores():
    pipe = tiny_sd_pipeline()
    plain = full_output(pipe)
    before = snapshot(pipe)
    assert apply_upsample_guidance(pipe, (2, 2), 0.0) is pipe
    assert torch.equal(full_output(pipe), plain)
    apply_upsample_guidance(pipe, (2, 2), 1.0)
    assert is_upsample_guided(pipe) and is_upsample_guided(pipe.unet)
    guided = full_output(pipe)
    assert not torch.equal(guided, plain)
    assert "forward" not in pipe.unet.__dict__  # the UNet's forward is never replaced
    assert pipe.unet.config == before["config"] and pipe.unet.dtype == before["dtype"]
    assert remove_upsample_guidance(pipe) is pipe
    assert not is_upsample_guided(pipe)
    assert_same(before, snapshot(pipe))
    assert torch.equal(full_output(pipe), plain)
    remove_upsample_guidance(pipe)  # a no-op when not applied
    assert_same(before, snapshot(pipe))


def test_scale_zero_is_bit_identical_for_pixel_pipelines_and_eta_zero():
    pipe = tiny_ddpm_pipeline(learned_variance=True)

    def run():
        return pipe(
            batch_size=2, num_inference_steps=3, output_type="pt", generator=torch.manual_seed(1)
        ).images

    plain = run()
    apply_upsample_guidance(pipe, (2, 2), 0.0)
    assert torch.equal(run(), plain)
    apply_upsample_guidance(pipe, (2, 2), 1.0, eta=0.0)  # eta=0: guidance never on
    assert torch.equal(run(), plain)
    apply_upsample_guidance(pipe, (2, 2), 1.0)
    assert not torch.equal(run(), plain)


def test_apply_twice_replaces():
    pipe = tiny_sd_pipeline()
    apply_upsample_guidance(pipe, (2, 2), 5.0)
    apply_upsample_guidance(pipe, (2, 2), 1.0, eta=0.6)
    rec = ForwardRecorder(pipe.unet)
    twice = pipe(**sd_call_kwargs(steps=4)).images
    assert low_calls(rec, (16, 16)) == 2  # once per guided step, not stacked
    rec.close()
    fresh = tiny_sd_pipeline()
    apply_upsample_guidance(fresh, (2, 2), 1.0, eta=0.6)
    assert torch.equal(twice, fresh(**sd_call_kwargs(steps=4)).images)
    assert len(pipe.unet._forward_hooks) == 1 and len(pipe.unet._forward_pre_hooks) == 1


def test_a_unet_shared_by_two_pipelines_is_guided_only_by_its_own_application():
    """Applying to one pipeline never changes another that shares its UNet."""
    from diffusers import StableDiffusionPipeline

    first = tiny_sd_pipeline()
    second = StableDiffusionPipeline(**first.components, requires_safety_checker=False)
    second.set_progress_bar_config(disable=True)
    plain = second(**sd_call_kwargs(steps=2)).images
    apply_upsample_guidance(first, (2, 2), 1.0)
    assert is_upsample_guided(first) and not is_upsample_guided(second)
    rec = ForwardRecorder(second.unet)
    assert torch.equal(second(**sd_call_kwargs(steps=2)).images, plain)
    assert low_calls(rec, (16, 16)) == 0
    first_guided = first(**sd_call_kwargs(steps=2)).images
    assert low_calls(rec, (16, 16)) == 2
    # Both applied, each with its own options; removing one leaves the other.
    apply_upsample_guidance(second, (2, 2), 3.0)
    assert is_upsample_guided(first) and is_upsample_guided(second)
    assert torch.equal(first(**sd_call_kwargs(steps=2)).images, first_guided)
    second_guided = second(**sd_call_kwargs(steps=2)).images
    assert not torch.equal(second_guided, first_guided)
    remove_upsample_guidance(first)
    assert not is_upsample_guided(first) and is_upsample_guided(second)
    assert torch.equal(first(**sd_call_kwargs(steps=2)).images, plain)
    assert torch.equal(second(**sd_call_kwargs(steps=2)).images, second_guided)
    remove_upsample_guidance(second)
    assert not second.unet._forward_hooks and "check_inputs" not in second.__dict__
    assert "_upsample_guidance" not in second.unet.__dict__


def test_direct_calls_outside_the_pipeline_are_not_guided():
    pipe = tiny_sd_pipeline()
    x, ehs = torch.randn(2, 4, 16, 16), torch.randn(2, 4, EMBED_DIM)
    plain = pipe.unet(x, 500, encoder_hidden_states=ehs).sample
    apply_upsample_guidance(pipe, (2, 2), 1.0)
    assert torch.equal(pipe.unet(x, 500, encoder_hidden_states=ehs).sample, plain)
    with pipe.progress_bar(total=1):  # while the pipeline samples, its UNet calls are guided
        guided = pipe.unet(x, 500, encoder_hidden_states=ehs).sample
    assert not torch.equal(guided, plain)
    assert torch.equal(pipe.unet(x, 500, encoder_hidden_states=ehs).sample, plain)


def test_cfg_batch_goes_through_one_low_call_per_step():
    pipe = tiny_sd_pipeline()
    apply_upsample_guidance(pipe, (2, 2), 1.0)
    rec = ForwardRecorder(pipe.unet)
    kwargs = sd_call_kwargs(steps=3)
    kwargs["num_images_per_prompt"] = 2
    pipe(**kwargs)
    lows = [c for c in rec.calls if c[0]["sample"].shape[-1] == 8]
    assert len(lows) == 3 and all(c[0]["sample"].shape[0] == 4 for c in lows)


@pytest.mark.parametrize("order", ["offload-then-apply", "apply-then-offload"])
def test_cpu_offload_hooks(order):
    from accelerate.hooks import CpuOffload

    reference = tiny_sd_pipeline()
    plain = reference(**sd_call_kwargs(steps=2)).images
    apply_upsample_guidance(reference, (2, 2), 1.0)
    guided = reference(**sd_call_kwargs(steps=2)).images

    pipe = tiny_sd_pipeline()
    if order == "offload-then-apply":
        pipe.enable_model_cpu_offload(device="cpu")
        apply_upsample_guidance(pipe, (2, 2), 1.0)
    else:
        apply_upsample_guidance(pipe, (2, 2), 1.0)
        pipe.enable_model_cpu_offload(device="cpu")
    assert torch.equal(pipe(**sd_call_kwargs(steps=2)).images, guided)
    remove_upsample_guidance(pipe)
    # the offload hooks (re-made by the pipeline after each call) are still in place
    assert isinstance(pipe.unet._hf_hook, CpuOffload) and "forward" in pipe.unet.__dict__
    assert torch.equal(pipe(**sd_call_kwargs(steps=2)).images, plain)


def test_accelerate_device_hook_on_the_unet():
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module, remove_hook_from_module

    reference = tiny_sd_pipeline()
    apply_upsample_guidance(reference, (2, 2), 1.0)
    guided = reference(**sd_call_kwargs(steps=2)).images
    pipe = tiny_sd_pipeline()
    add_hook_to_module(pipe.unet, AlignDevicesHook(execution_device="cpu", io_same_device=True))
    apply_upsample_guidance(pipe, (2, 2), 1.0)
    assert torch.equal(pipe(**sd_call_kwargs(steps=2)).images, guided)
    remove_hook_from_module(pipe.unet)
    assert torch.equal(pipe(**sd_call_kwargs(steps=2)).images, guided)


def tiny_compile_pipeline():
    """A one-level pixel UNet in a DDPM pipeline: the cheapest UNet for torch.compile on CPU."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8,),
        layers_per_block=1,
        down_block_types=("DownBlock2D",),
        up_block_types=("UpBlock2D",),
        norm_num_groups=4,
    ).eval()
    pipe = DDPMPipeline(unet, DDPMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("how", ["module.compile", "torch.compile"])
def test_torch_compile(how):
    import torch._dynamo

    def run(pipe):
        return pipe(
            batch_size=1, num_inference_steps=2, output_type="pt", generator=torch.manual_seed(0)
        ).images

    reference = tiny_compile_pipeline()
    apply_upsample_guidance(reference, (2, 2), 1.0)
    guided = run(reference)
    torch._dynamo.reset()
    pipe = tiny_compile_pipeline()
    with torch._dynamo.config.patch(automatic_dynamic_shapes=False):
        if how == "module.compile":
            apply_upsample_guidance(pipe, (2, 2), 1.0)
            pipe.unet.compile(backend="eager")
        else:
            pipe.unet = torch.compile(pipe.unet, backend="eager")
            apply_upsample_guidance(pipe, (2, 2), 1.0)
        torch.testing.assert_close(run(pipe), guided)
    torch._dynamo.reset()


def make_ip_adapter_state_dict(unet, image_dim: int = 16):
    """Random IP-Adapter weights for a tiny UNet, in the layout diffusers loads."""
    gen = torch.Generator().manual_seed(5)
    blocks = unet.config.block_out_channels
    layers = {}
    key = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = blocks[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(blocks))[int(name[len("up_blocks.")])]
        else:
            hidden = blocks[int(name[len("down_blocks.")])]
        for kind in ("to_k_ip", "to_v_ip"):
            layers[f"{key}.{kind}.weight"] = torch.randn(hidden, EMBED_DIM, generator=gen) * 0.1
        key += 2
    image_proj = {
        "proj.weight": torch.randn(4 * EMBED_DIM, image_dim, generator=gen) * 0.1,
        "proj.bias": torch.zeros(4 * EMBED_DIM),
        "norm.weight": torch.ones(EMBED_DIM),
        "norm.bias": torch.zeros(EMBED_DIM),
    }
    return {"image_proj": image_proj, "ip_adapter": layers}


def test_ip_adapter_passes_through_untouched():
    pipe = tiny_sd_pipeline()
    pipe.unet._load_ip_adapter_weights([make_ip_adapter_state_dict(pipe.unet)], False)
    image_embeds = [torch.randn(2, 1, 16, generator=torch.Generator().manual_seed(7))]
    plain = pipe(**sd_call_kwargs(steps=2), ip_adapter_image_embeds=image_embeds).images
    apply_upsample_guidance(pipe, (2, 2), 0.0)
    assert torch.equal(
        pipe(**sd_call_kwargs(steps=2), ip_adapter_image_embeds=image_embeds).images, plain
    )
    apply_upsample_guidance(pipe, (2, 2), 1.0)
    rec = ForwardRecorder(pipe.unet)
    guided = pipe(**sd_call_kwargs(steps=2), ip_adapter_image_embeds=image_embeds).images
    assert torch.isfinite(guided).all() and not torch.equal(guided, plain)
    high, low = rec.calls[0][0], rec.calls[1][0]
    assert low["sample"].shape[-1] == 8
    assert low["added_cond_kwargs"]["image_embeds"] is high["added_cond_kwargs"]["image_embeds"]


def test_lora_scale_in_cross_attention_kwargs_passes_through():
    """The LoRA scale travels in cross_attention_kwargs; the low call gets the same dict."""
    pipe = tiny_sd_pipeline()
    apply_upsample_guidance(pipe, (2, 2), 1.0)
    rec = ForwardRecorder(pipe.unet)
    extra = {"scale": 0.5}
    x, ehs = torch.randn(2, 4, 16, 16), torch.randn(2, 4, EMBED_DIM)
    with pipe.progress_bar(total=1):
        pipe.unet(x, 500, encoder_hidden_states=ehs, cross_attention_kwargs=extra)
    high, low = rec.calls[0][0], rec.calls[1][0]
    assert low["sample"].shape == (2, 4, 8, 8)
    assert high["cross_attention_kwargs"] is extra and low["cross_attention_kwargs"] is extra
    assert extra == {"scale": 0.5}


def test_lora_style_weight_changes_reach_both_calls():
    """LoRA (fused or injected) changes the UNet's own layers, which both calls run."""
    pipe = tiny_sd_pipeline()
    apply_upsample_guidance(pipe, (2, 2), 1.0)
    before = pipe(**sd_call_kwargs(steps=2)).images
    layer = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_q
    with torch.no_grad():
        layer.weight += 0.5 * torch.randn(layer.weight.shape, generator=torch.manual_seed(3))
    rec = ForwardRecorder(pipe.unet)
    seen = []
    handle = layer.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))
    after = pipe(**sd_call_kwargs(steps=2)).images
    handle.remove()
    assert not torch.equal(after, before)
    assert len(seen) == len(rec.calls) == 4  # the adapted layer ran in the high and low calls


def test_real_peft_lora_passes_through_untouched():
    """A peft LoRA on the UNet runs in both calls, and its scale reaches both of them."""
    from peft import LoraConfig

    pipe = tiny_sd_pipeline()
    base = pipe(**sd_call_kwargs(steps=2)).images
    torch.manual_seed(5)
    config = LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                        target_modules=["to_q", "to_k", "to_v", "to_out.0"])  # fmt: skip
    pipe.unet.add_adapter(config)
    lora = pipe(**sd_call_kwargs(steps=2)).images
    assert not torch.equal(lora, base)  # the LoRA changes the model
    apply_upsample_guidance(pipe, (2, 2), 0.0)
    assert torch.equal(pipe(**sd_call_kwargs(steps=2)).images, lora)  # scale 0: untouched
    apply_upsample_guidance(pipe, (2, 2), 1.0)
    guided_lora = pipe(**sd_call_kwargs(steps=2)).images
    x, ehs = torch.randn(2, 4, 16, 16), torch.randn(2, 4, EMBED_DIM)
    lora_off = pipe.unet(x, 500, encoder_hidden_states=ehs, cross_attention_kwargs={"scale": 0.0})
    pipe.unet.disable_adapters()
    assert not torch.equal(guided_lora, pipe(**sd_call_kwargs(steps=2)).images)
    # LoRA scale 0 in cross_attention_kwargs switches it off in the high AND the low call:
    no_lora = pipe.unet(x, 500, encoder_hidden_states=ehs)
    torch.testing.assert_close(lora_off.sample, no_lora.sample, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------- errors


def test_error_pipeline_without_a_supported_denoiser():
    with pytest.raises(
        TypeError, match=r"Linear is not a supported denoiser\. Supported families: "
    ):
        apply_upsample_guidance(
            SimpleNamespace(transformer=torch.nn.Linear(2, 2), scheduler=ddim_scheduler())
        )
    with pytest.raises(TypeError, match=r"UNet: UNet2DConditionModel.*Flux: FluxTransformer2D"):
        apply_upsample_guidance(SimpleNamespace(unet=torch.nn.Conv2d(4, 4, 1)))
    with pytest.raises(TypeError, match=r"pipe.unet or pipe.transformer.*\(it has prior\)"):
        apply_upsample_guidance(SimpleNamespace(scheduler=ddim_scheduler(), prior=object()))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"factors": (2, 2, 2)}, ValueError, "takes images"),
        ({"factors": (2,)}, ValueError, "2 entries"),
        ({"factors": "2x"}, ValueError, r"factors .2x.: each entry must be a number >= 1"),
        ({"factors": (0, 2)}, ValueError, r"got 0 \(< 1\)"),
        ({"factors": 1.33}, ValueError, "the nearest such ratio is 4/3"),
        ({"micro_conditioning": "mid"}, ValueError, "micro_conditioning"),
        ({"sdxl_micro_conditioning": "low"}, TypeError, "unknown option"),
        ({"scale": "big"}, TypeError, "scale"),
        ({"eta": 1.5}, ValueError, "eta"),
        ({"time_matching": "closest"}, ValueError, "time_matching"),
        ({"below_range": "wrap"}, ValueError, "below_range"),
    ],
)
def test_error_invalid_options(kwargs, error, match):
    pipe = tiny_sd_pipeline()
    before = snapshot(pipe)
    with pytest.raises(error, match=match):
        apply_upsample_guidance(pipe, **kwargs)
    assert_same(before, snapshot(pipe))  # a failed apply leaves nothing behind


def test_error_unsupported_unet_and_schedulers():
    from diffusers import EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler

    pipe = tiny_sd_pipeline()
    pipe.unet = tiny_unet(in_channels=4, out_channels=6)  # neither variance nor conditioning
    with pytest.raises(ValueError, match="in_channels=4 and out_channels=6"):
        apply_upsample_guidance(pipe)
    pipe = tiny_sd_pipeline(scheduler=FlowMatchEulerDiscreteScheduler())
    expected = "predicts epsilon or sample or v_prediction, but the scheduler FlowMatchEuler"
    with pytest.raises(ValueError, match=expected + "DiscreteScheduler is set up for 'flow'"):
        apply_upsample_guidance(pipe)
    euler = EulerDiscreteScheduler(
        timestep_type="continuous", prediction_type="v_prediction", steps_offset=1
    )
    with pytest.raises(ValueError, match="timestep_type='continuous'"):
        apply_upsample_guidance(tiny_sd_pipeline(scheduler=euler))


def test_error_height_before_any_model_call():
    pipe = tiny_sd_pipeline()
    apply_upsample_guidance(pipe, (3, 3), 1.0)
    rec, vae = ForwardRecorder(pipe.unet), ForwardRecorder(pipe.vae)
    with pytest.raises(
        ValueError,
        match=r"height=32 gives a latent height of 16; the factor 3 needs multiples of 3 to map "
        r"to a whole trained size: use height=30 or 36",
    ):
        pipe(**sd_call_kwargs(height=32, width=48))
    with pytest.raises(ValueError, match=r"width=40 gives a latent width of 20.*width=36 or 42"):
        pipe(**sd_call_kwargs(height=48, width=40))
    assert rec.calls == [] and vae.calls == []
    # a UNet call while the pipeline samples: the check runs before the UNet does
    with pytest.raises(
        ValueError,
        match=r"latent grid \(factors\) has sizes \(16, 18\) that "
        r"the factors \(3, 3\) do not divide \(16 % 3 = 1: use 15 or 18\)",
    ):
        with pipe.progress_bar(total=1):
            pipe.unet(torch.zeros(1, 4, 16, 18), 10, encoder_hidden_states=torch.zeros(1, 4, 32))
    assert rec.calls == []
    pipe(**sd_call_kwargs(height=48, width=48, steps=1))  # 24 x 24 latents: fine
    assert len(rec.calls) == 2  # the high and the low call


def test_error_controlnet_size_before_any_model_call():
    pipe = tiny_controlnet_pipeline()
    apply_upsample_guidance(pipe, (3, 3), 1.0)
    rec, cn = ForwardRecorder(pipe.unet), ForwardRecorder(pipe.controlnet)
    with pytest.raises(ValueError, match=r"height=32 gives a latent height of 16"):
        pipe(image=control_image(32, 32), **sd_call_kwargs(height=32, width=32))
    assert rec.calls == [] and cn.calls == []


def test_error_controlnet_residual_not_divisible():
    pipe = tiny_controlnet_pipeline()
    apply_upsample_guidance(pipe, (2, 2), 1.0)
    # 20 x 20 latents: the second UNet level is 10 x 10, fine; height 36 -> 18 -> 9 is not.
    with pytest.raises(ValueError, match=r"down_block_additional_residuals has trailing sizes"):
        pipe(image=control_image(36, 36), **sd_call_kwargs(height=36, width=36, steps=1))


def test_error_frames_before_any_model_call():
    pipe = tiny_animatediff_pipeline()
    apply_upsample_guidance(pipe, (2, 1, 1), 1.0)
    rec = ForwardRecorder(pipe.unet)
    with pytest.raises(
        ValueError,
        match=r"num_frames=3 gives 3 latent frames; the factor 2 needs multiples of 2 .*: "
        r"use num_frames=2 or 4",
    ):
        pipe(**animatediff_call_kwargs(frames=3))
    assert rec.calls == []
    pipe(**animatediff_call_kwargs(frames=2, steps=1))
    assert len(rec.calls) == 2


def test_error_controlnet_called_with_undivided_latents():
    pipe = tiny_controlnet_pipeline()
    apply_upsample_guidance(pipe, (3, 3), 1.0)
    rec = ForwardRecorder(pipe.controlnet)
    expected = r"the ControlNet sample has trailing sizes \(16, 18\) that the factors \(3, 3\)"
    with pytest.raises(ValueError, match=expected):
        with pipe.progress_bar(total=1):
            pipe.controlnet(
                torch.zeros(1, 4, 16, 18),
                10,
                encoder_hidden_states=torch.zeros(1, 4, EMBED_DIM),
                controlnet_cond=torch.zeros(1, 3, 32, 36),
            )
    assert rec.calls == []


def test_error_unreadable_calls_and_inputs():
    from ug_core.adapters.diffusers import guided_denoiser
    from ug_core.adapters.diffusers.families.unet import _frame_mean, _low_time_ids, _pool_frames

    pipe = tiny_sd_pipeline()
    with pytest.raises(TypeError, match="has no scheduler"):
        apply_upsample_guidance(SimpleNamespace(unet=pipe.unet, scheduler=None))
    apply_upsample_guidance(pipe, (2, 2), 1.0)
    with pytest.raises(TypeError, match="called with 20 positional arguments; its forward takes"):
        with pipe.progress_bar(total=1):
            pipe.unet(*[None] * 20)
    remove_upsample_guidance(pipe)
    # per-frame embeddings with neither B nor B*F rows
    with pytest.raises(ValueError, match="encoder_hidden_states has 3 rows"):
        _frame_mean(torch.zeros(3, 4, 32), batch=1, frames=4, ft=2)
    # video residuals with the wrong number of rows, and a non-tensor residual
    with pytest.raises(ValueError, match="has 6 rows, expected batch x frames = 1 x 4"):
        _pool_frames(torch.zeros(6, 8, 4, 4), "down_block_additional_residuals", 1, 4, (2, 2, 2))
    with pytest.raises(TypeError, match="must hold tensors"):
        _pool_frames([1.0], "mid_block_additional_residual", 1, 4, (1, 2, 2))
    # SDXL refiner ids (aesthetic score kept) and an unknown layout
    refiner = torch.tensor([[1024.0, 768.0, 64.0, 32.0, 6.0]])
    assert _low_time_ids(refiner, 2, 4).tolist() == [[512.0, 192.0, 32.0, 8.0, 6.0]]
    with pytest.raises(ValueError, match="micro_conditioning='high'"):
        _low_time_ids(torch.zeros(1, 4), 2, 2)
    # the SDXL path in a real call with a bad layout
    from diffusers_models import tiny_sdxl_pipeline

    sdxl = tiny_sdxl_pipeline()
    guided = guided_denoiser(sdxl.unet, sdxl.scheduler, (2, 2), 1.0)
    added = {"text_embeds": torch.zeros(1, 16), "time_ids": torch.zeros(1, 6)}
    out = guided(
        torch.zeros(1, 4, 16, 16), 500, torch.zeros(1, 4, EMBED_DIM), added_cond_kwargs=added
    )
    assert torch.isfinite(out.sample).all()


def test_a_failed_reapply_keeps_the_previous_application():
    pipe = tiny_sd_pipeline()
    apply_upsample_guidance(pipe, (2, 2), 1.0)
    guided = pipe(**sd_call_kwargs(steps=2)).images
    with pytest.raises(ValueError, match="eta"):
        apply_upsample_guidance(pipe, (2, 2), 1.0, eta=-1.0)
    assert is_upsample_guided(pipe)
    assert torch.equal(pipe(**sd_call_kwargs(steps=2)).images, guided)


# ---------------------------------------------------------------------- found by diffusers' suites
ROUNDING = ["flux", "flux2", "chroma", "qwenimage", "lumina2"]


def _rounding_pipeline(name: str):
    """A tiny pipeline of a family whose pipeline rounds latents to 2·(pixels // (2·vae))."""
    import diffusers_transformers as T

    builders = {
        "flux": T.tiny_flux_pipeline,
        "flux2": T.tiny_flux2_pipeline,
        "chroma": T.tiny_chroma_pipeline,
        "qwenimage": T.tiny_qwenimage_pipeline,
        "lumina2": T.tiny_lumina2_pipeline,
    }
    return builders[name](), T.CALLS[name]


@pytest.mark.parametrize("name", ROUNDING)
def test_sizes_the_pipeline_rounds_are_checked_as_it_samples_them(name):
    """One latent more than 2x (``pixels // vae`` odd) is rounded down by the pipeline: it samples
    the 2x latents, guided, as the 2x request does; Lumina 2 refuses such sizes itself."""
    pipe, call = _rounding_pipeline(name)
    size, vae = 2 * call.size, pipe.vae_scale_factor
    apply_upsample_guidance(pipe, 2, 1.0)
    expected = pipe(**call(size, size))[0]
    if name == "lumina2":
        with pytest.raises(ValueError, match=r"have to be divisible by"):  # Lumina 2's own check
            pipe(**call(size, size + vae))
    else:
        assert torch.equal(pipe(**call(size + vae, size + vae))[0], expected)
    rec = ForwardRecorder(pipe.transformer)
    with pytest.raises(
        ValueError,
        match=rf"width={size + 2 * vae} gives a latent width of {size // vae + 2}; the factor 2 x "
        rf"patch 2 needs multiples of 4 to map to a whole trained size: use width={size} or "
        rf"{size + 4 * vae}$",
    ):
        pipe(**call(size, size + 2 * vae))
    assert rec.calls == []
    for width in (size, size + 4 * vae):  # the suggestions, in pixels, sample
        pipe(**call(size, width))
    rec.close()


def test_flux_width_1000_samples_a_124_wide_latent():
    """The issue's example: ``pixels // vae`` is 125, the pipeline samples 124 = 2·(1000 // 16).

    The tiny Flux has a VAE factor of 2, so width 250 is the same latent arithmetic as 1000 with
    Flux's 8: 2·(250 // 4) = 124, refused before as 125."""
    pipe, call = _rounding_pipeline("flux")
    assert pipe.vae_scale_factor == 2
    apply_upsample_guidance(pipe, 2, 1.0)
    rec = ForwardRecorder(pipe.transformer)
    pipe(**call(32, 250, steps=1))
    rec.close()
    tokens = [c[0]["hidden_states"].shape[1] for c in rec.calls]
    assert tokens == [8 * 62, 4 * 31]  # (16 x 124 latents) / 4, and the low call's (8 x 62) / 4


@pytest.mark.parametrize("options", [dict(scale=0.0), dict(scale=1.0, eta=0.0)])
def test_scale_or_eta_zero_is_a_no_op_at_sizes_the_factors_dont_divide(options):
    """No check runs and nothing changes: a UNet (factor 3 of 16 latents) and a transformer
    pipeline (SD3: factor 3 x patch 2 of 16 latents, and a fractional 4/3)."""
    import diffusers_transformers as T

    pipe = tiny_sd_pipeline()
    plain = full_output(pipe)
    apply_upsample_guidance(pipe, 3, **options)
    assert torch.equal(full_output(pipe), plain)
    apply_upsample_guidance(pipe, 3, 1.0)  # the check is still there for a guidance that runs
    with pytest.raises(ValueError, match=r"height=32 gives a latent height of 16"):
        full_output(pipe)
    sd3 = T.tiny_sd3_pipeline()
    kwargs = T.sd3_call_kwargs(height=32, width=32)
    plain = sd3(**kwargs)[0]
    for factors in (3, "4/3"):
        apply_upsample_guidance(sd3, factors, **options)
        assert torch.equal(sd3(**T.sd3_call_kwargs(height=32, width=32))[0], plain)
    apply_upsample_guidance(sd3, 3, 1.0)
    with pytest.raises(ValueError, match=r"height=32 gives a latent height of 16"):
        sd3(**T.sd3_call_kwargs(height=32, width=32))


def tiny_clip_text_encoder(seed: int = 0):
    """A CLIPTokenizer on printable ASCII (each character a token, no merges) and a tiny
    CLIPTextModel whose hidden states are EMBED_DIM wide (the tiny UNet's cross-attention)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    chars = [chr(i) for i in range(33, 127)]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in chars + [c + "</w>" for c in chars]:
        vocab[token] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=SEQ_TOKENS)
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=EMBED_DIM, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=SEQ_TOKENS, bos_token_id=0,
        eos_token_id=1, pad_token_id=1, projection_dim=EMBED_DIM,
    )  # fmt: skip
    return tokenizer, CLIPTextModel(config).eval()


SEQ_TOKENS = 8  # the tiny tokenizer's model_max_length


def test_text_encoder_lora_with_ug():
    """A text-encoder LoRA through transformers' own peft integration (``add_adapter``, as
    diffusers' LoRA training scripts add it; it checks peft's version, which the CI pins must
    satisfy) changes the prompt embeddings, and UG guides the pipeline that uses them: scale 0 is
    the LoRA pipeline bit for bit, and both calls of a step get the LoRA's embeddings."""
    from peft import LoraConfig

    tokenizer, text_encoder = tiny_clip_text_encoder()
    pipe = tiny_sd_pipeline()
    pipe.register_modules(tokenizer=tokenizer, text_encoder=text_encoder)

    def run():
        gen = torch.Generator().manual_seed(0)
        return pipe("a red cube", height=32, width=32, num_inference_steps=2, generator=gen,
                    output_type="latent").images  # fmt: skip

    base = run()
    torch.manual_seed(5)
    config = LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                        target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])  # fmt: skip
    text_encoder.add_adapter(config, adapter_name="te")
    lora = run()
    assert not torch.equal(lora, base)  # the LoRA reaches the prompt embeddings
    apply_upsample_guidance(pipe, 2, 0.0)
    assert torch.equal(run(), lora)
    apply_upsample_guidance(pipe, 2, 1.0)
    rec = ForwardRecorder(pipe.unet)
    guided = run()
    rec.close()
    assert torch.isfinite(guided).all() and not torch.equal(guided, lora)
    (high, _), (low, _) = rec.calls[:2]
    assert low["sample"].shape[-2:] == (8, 8) and high["sample"].shape[-2:] == (16, 16)
    assert low["encoder_hidden_states"] is high["encoder_hidden_states"]
    text_encoder.disable_adapters()
    remove_upsample_guidance(pipe)
    assert torch.equal(run(), base)


def test_a_scheduler_time_that_disagrees_with_the_call_warns_once_and_the_call_wins():
    """The host clock reads the scheduler's time at its step index; where the time the model got
    is on the CPU and says otherwise, it warns once (HostTimeWarning) and the model's time is
    used: the result equals that of a guided denoiser whose scheduler tells no time."""
    from diffusers import EulerDiscreteScheduler
    from ug_core.adapters.diffusers import guided_denoiser
    from ug_core.adapters.diffusers.hooks import HostTimeWarning

    pipe = tiny_sd_pipeline()
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    x, embeds = torch.randn(1, 4, 16, 16), torch.randn(1, 4, EMBED_DIM)
    pipe.scheduler.set_timesteps(10)
    reference = guided_denoiser(pipe.unet, pipe.scheduler, (2, 2), 1.0)(x, 500, embeds).sample
    pipe.scheduler.set_begin_index(0)  # the clock now says timesteps[0], not 500
    assert int(pipe.scheduler.timesteps[0]) != 500
    guided = guided_denoiser(pipe.unet, pipe.scheduler, (2, 2), 1.0)
    with pytest.warns(HostTimeWarning, match=r"differs from the time the UNet2DConditionModel "
                                             r"received \(500\)"):  # fmt: skip
        first = guided(x, torch.tensor(500), embeds).sample
    assert torch.equal(first, reference)
    with warnings.catch_warnings():
        warnings.simplefilter("error", HostTimeWarning)
        assert torch.equal(guided(x, torch.tensor(500), embeds).sample, reference)


def test_unreadable_outputs_samples_and_a_shared_branch_parallel_denoiser_are_refused():
    from ug_core.adapters.diffusers import guided_denoiser
    from ug_core.adapters.diffusers.hooks import Session, attach, output_sample

    from ug_core import UpsampleGuidanceConfig

    with pytest.raises(TypeError, match=r"the denoiser returned int; expected a tensor, a tuple "
                                        r"or an output object with \.sample"):  # fmt: skip
        output_sample(3)
    pipe = tiny_sd_pipeline()
    guided = guided_denoiser(pipe.unet, pipe.scheduler, (2, 2), 1.0)
    with pytest.raises(TypeError, match=r"the UNet2DConditionModel call has no tensor 'sample': "
                                        r"got NoneType"):  # fmt: skip
        guided(None, 500, torch.zeros(1, 4, EMBED_DIM))
    apply_upsample_guidance(pipe, (2, 2), 1.0)
    config = UpsampleGuidanceConfig(factors=(2, 2), scale=1.0)
    branch = Session(None, lambda: pipe.scheduler, config, SimpleNamespace(role="high"))
    shared = r"a branch-parallel application cannot share its denoiser with another application"
    with pytest.raises(ValueError, match=shared):
        attach(branch, pipe.unet)  # the other application came first
    remove_upsample_guidance(pipe)
    attach(branch, pipe.unet)
    with pytest.raises(ValueError, match=shared):
        apply_upsample_guidance(pipe, (2, 2), 1.0)  # the branch-parallel one came first


def test_a_refused_pipeline_also_names_its_unsupported_denoiser_and_pipes_need_weakrefs():
    from diffusers import StableDiffusionPanoramaPipeline

    pipe = StableDiffusionPanoramaPipeline.__new__(StableDiffusionPanoramaPipeline)
    pipe.__dict__["unet"] = torch.nn.Linear(2, 2)
    both = r"StableDiffusionPanoramaPipeline is not supported yet: denoises overlapping windows"
    with pytest.raises(TypeError, match=both + r".*\. Linear is not a supported denoiser"):
        apply_upsample_guidance(pipe)
    sd = tiny_sd_pipeline()
    with pytest.raises(TypeError, match=r"pipe must be a diffusers pipeline, got SimpleNamespace"):
        apply_upsample_guidance(SimpleNamespace(unet=sd.unet, scheduler=sd.scheduler))
