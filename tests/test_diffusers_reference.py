"""The diffusers adapter against hand-written references, recorded inside the UNet call.

The references are written from the paper (Eq. 10, Eq. 11, appendix A) with plain reshape/mean/
repeat_interleave, independently of ug_core's operators and schedules.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers_models import (
    ForwardRecorder,
    OutputRecorder,
    animatediff_call_kwargs,
    control_image,
    ddim_scheduler,
    sd_call_kwargs,
    sdxl_call_kwargs,
    tiny_animatediff_pipeline,
    tiny_controlnet_pipeline,
    tiny_ddpm_pipeline,
    tiny_sd_pipeline,
    tiny_sdxl_pipeline,
)
from ug_core.adapters.diffusers import apply_upsample_guidance

from ug_core import prediction_to_x0, x0_to_prediction


def D(x: torch.Tensor, f: tuple[int, ...]) -> torch.Tensor:
    """Block mean over the trailing len(f) axes, by reshape and mean."""
    lead = x.shape[: x.ndim - len(f)]
    shape, axes = list(lead), []
    for n, m in zip(x.shape[x.ndim - len(f) :], f, strict=True):
        shape += [n // m, m]
        axes.append(len(shape) - 1)
    return x.reshape(shape).mean(dim=axes)


def U(y: torch.Tensor, f: tuple[int, ...]) -> torch.Tensor:
    """Nearest upsampling by repeat_interleave on the trailing len(f) axes."""
    for axis, m in zip(range(y.ndim - len(f), y.ndim), f, strict=True):
        y = y.repeat_interleave(m, dim=axis)
    return y


def nearest_tau(alphas, t: int, k: int) -> int:
    """The paper's appendix A code (with m**2 written as k)."""
    alphas = np.asarray(alphas, dtype=np.float64)
    snr = alphas / (1 - alphas)
    snr_low = alphas / (1 - alphas) * k
    log_snr, log_snr_low = np.log(snr), np.log(snr_low)
    return int(np.argmin(np.abs(log_snr_low[t] - log_snr)))


def split_calls(rec: ForwardRecorder, out: OutputRecorder, high_shape):
    """Pair each high-resolution call with its low-resolution call and its guided output."""
    highs = [c for c in rec.calls if tuple(c[0]["sample"].shape) == tuple(high_shape)]
    lows = [c for c in rec.calls if tuple(c[0]["sample"].shape) != tuple(high_shape)]
    guided = [
        o
        for o in out.outputs
        if tuple(o.shape[:1] + o.shape[2:]) == tuple(high_shape[:1] + high_shape[2:])
    ]
    return highs, lows, guided


def check_eq10(high, low, guided, alphas, factors, w):
    """One UNet call: the low call's input and time, and the guided output, against Eq. 10."""
    (named, eps), (low_named, eps_low) = high, low
    x, t = named["sample"], int(named["timestep"])
    k = math.prod(factors)
    a = float(alphas[t])
    power = a + (1 - a) / k
    torch.testing.assert_close(low_named["sample"], D(x, factors) / math.sqrt(power))
    assert int(low_named["timestep"]) == nearest_tau(alphas, t, k)
    reference = eps + w * U(eps_low / math.sqrt(k) - D(eps, factors), factors)
    torch.testing.assert_close(guided, reference, rtol=1e-5, atol=1e-5)


def test_sd_with_cfg_matches_eq10_and_eq11():
    theta, eta, steps = 1.3, 0.6, 4
    pipe = tiny_sd_pipeline()
    apply_upsample_guidance(pipe, (2, 2), theta, eta=eta)
    rec, out = ForwardRecorder(pipe.unet), OutputRecorder(pipe.unet)
    pipe(**sd_call_kwargs(height=32, width=32, steps=steps, cfg=5.0))
    high_shape = (2, 4, 16, 16)  # CFG doubles the batch
    highs, lows, guided = split_calls(rec, out, high_shape)
    alphas = pipe.scheduler.alphas_cumprod
    # Eq. 11: guidance on while t >= (1 - eta) T, i.e. during the noisiest eta of the time axis.
    on = [int(h[0]["timestep"]) / 999 >= 1 - eta for h in highs]
    assert len(highs) == steps and sum(on) == 2 and len(lows) == sum(on)
    assert all(tuple(c[0]["sample"].shape) == (2, 4, 8, 8) for c in lows)  # one call per step
    for low in lows:
        assert low[0]["encoder_hidden_states"] is not None
        assert low[0]["encoder_hidden_states"].shape == (2, 4, 32)
    low_iter = iter(lows)
    for high, g, is_on in zip(highs, guided, on, strict=True):
        if is_on:
            check_eq10(high, next(low_iter), g, alphas, (2, 2), theta)
        else:
            assert torch.equal(g, high[1])


@pytest.mark.parametrize(
    ("factors", "core_factors", "frames", "size"),
    [((2, 1, 1), (2, 1, 1), 4, 16), ((2, 2), (1, 2, 2), 2, 32)],
    ids=["temporal", "spatial"],
)
def test_animatediff_matches_eq10(factors, core_factors, frames, size):
    pipe = tiny_animatediff_pipeline()
    apply_upsample_guidance(pipe, factors, 1.0)
    rec, out = ForwardRecorder(pipe.unet), OutputRecorder(pipe.unet)
    pipe(**animatediff_call_kwargs(frames=frames, height=size, width=size, steps=2))
    lat = size // 2
    high_shape = (2, 4, frames, lat, lat)
    highs, lows, guided = split_calls(rec, out, high_shape)
    assert len(highs) == len(lows) == len(guided) == 2
    ft, fh, fw = core_factors
    low_frames = frames // ft
    for high, low, g in zip(highs, lows, guided, strict=True):
        assert tuple(low[0]["sample"].shape) == (2, 4, low_frames, lat // fh, lat // fw)
        check_eq10(high, low, g, pipe.scheduler.alphas_cumprod, core_factors, 1.0)
        # AnimateDiff repeats the text embeddings per frame: B*F rows, frame-major per video.
        ehs, low_ehs = high[0]["encoder_hidden_states"], low[0]["encoder_hidden_states"]
        assert ehs.shape[0] == 2 * frames
        assert low_ehs.shape[0] == 2 * low_frames
        per_video = ehs.reshape(2, frames, *ehs.shape[1:])[:, :1]
        expected = per_video.expand(2, low_frames, *ehs.shape[1:]).reshape(low_ehs.shape)
        assert torch.equal(low_ehs, expected)  # identical frames average to themselves exactly


def test_v_prediction_equals_core_conversion():
    pipe = tiny_sd_pipeline(prediction_type="v_prediction")
    apply_upsample_guidance(pipe, (2, 2), 1.0)
    rec, out = ForwardRecorder(pipe.unet), OutputRecorder(pipe.unet)
    pipe(**sd_call_kwargs(steps=2))
    highs, lows, guided = split_calls(rec, out, (2, 4, 16, 16))
    assert len(highs) == len(lows) == 2
    k, f = 4, (2, 2)
    alphas = pipe.scheduler.alphas_cumprod.double()
    for (named, v), (low_named, v_low), g in zip(highs, lows, guided, strict=True):
        x, t = named["sample"].double(), int(named["timestep"])
        a, s = alphas[t].sqrt(), (1 - alphas[t]).sqrt()
        c = 1 / (alphas[t] + (1 - alphas[t]) / k).sqrt()
        x_low = low_named["sample"].double()
        x0_hat = prediction_to_x0(v.double(), x, a, s, "v_prediction")
        # The low call's input c*D[x] has coefficients (c*a, c*s/sqrt(k)).
        x0_low = prediction_to_x0(v_low.double(), x_low, c * a, c * s / math.sqrt(k), "v")
        x0_new = x0_hat + U(x0_low - D(x0_hat, f), f)
        expected = x0_to_prediction(x0_new, x, a, s, "v_prediction")
        torch.testing.assert_close(g.double(), expected, rtol=1e-4, atol=1e-5)
        # and it is not the epsilon formula
        eps_formula = v + U(v_low / 2 - D(v, f), f)
        assert not torch.allclose(g, eps_formula, atol=1e-4)


def test_learned_variance_guides_the_mean_and_keeps_the_variance():
    pipe = tiny_ddpm_pipeline(learned_variance=True, sample_size=16)
    apply_upsample_guidance(pipe, (2, 2), 1.0)
    rec, out = ForwardRecorder(pipe.unet), OutputRecorder(pipe.unet)
    pipe(batch_size=2, num_inference_steps=3, output_type="pt", generator=torch.manual_seed(0))
    highs, lows, guided = split_calls(rec, out, (2, 3, 16, 16))
    assert len(highs) == len(lows) == 3
    for (_, raw), (_, raw_low), g in zip(highs, lows, guided, strict=True):
        assert raw.shape[1] == 6 and g.shape[1] == 6
        torch.testing.assert_close(
            g[:, :3],
            raw[:, :3] + U(raw_low[:, :3] / 2 - D(raw[:, :3], (2, 2)), (2, 2)),
            rtol=1e-5,
            atol=1e-5,
        )
        assert torch.equal(g[:, 3:], raw[:, 3:])  # the high call's variance, untouched


@pytest.mark.parametrize("mode", ["low", "high"])
def test_sdxl_micro_conditioning(mode):
    pipe = tiny_sdxl_pipeline()
    apply_upsample_guidance(pipe, (2, 3), 1.0, micro_conditioning=mode)
    rec, out = ForwardRecorder(pipe.unet), OutputRecorder(pipe.unet)
    result = pipe(**sdxl_call_kwargs(height=32, width=48, steps=2)).images
    assert torch.isfinite(result).all()
    highs, lows, guided = split_calls(rec, out, (2, 4, 16, 24))
    assert len(highs) == len(lows) == 2
    for (named, eps), (low_named, eps_low), g in zip(highs, lows, guided, strict=True):
        ids = named["added_cond_kwargs"]["time_ids"]
        low_ids = low_named["added_cond_kwargs"]["time_ids"]
        assert ids.tolist() == [[32, 48, 0, 0, 32, 48]] * 2
        if mode == "low":  # (original_size, crop, target_size) of the 16 x 16 pixel image
            assert low_ids.tolist() == [[16, 16, 0, 0, 16, 16]] * 2
        else:
            assert torch.equal(low_ids, ids)
        assert (
            low_named["added_cond_kwargs"]["text_embeds"]
            is named["added_cond_kwargs"]["text_embeds"]
        )
        assert low_named["sample"].shape == (2, 4, 8, 8)
        reference = eps + U(eps_low / math.sqrt(6) - D(eps, (2, 3)), (2, 3))
        torch.testing.assert_close(g, reference, rtol=1e-5, atol=1e-5)


def test_sdxl_micro_conditioning_changes_the_result():
    results = {}
    for mode in ("low", "high"):
        pipe = tiny_sdxl_pipeline()
        apply_upsample_guidance(pipe, (2, 2), 1.0, micro_conditioning=mode)
        results[mode] = pipe(**sdxl_call_kwargs(steps=2)).images
    assert not torch.allclose(results["low"], results["high"])


def test_controlnet_residuals_are_pooled():
    pipe = tiny_controlnet_pipeline()
    apply_upsample_guidance(pipe, (2, 2), 1.0)
    rec, out = ForwardRecorder(pipe.unet), OutputRecorder(pipe.unet)
    cn_calls = ForwardRecorder(pipe.controlnet)
    result = pipe(image=control_image(32, 32), **sd_call_kwargs(steps=2)).images
    assert torch.isfinite(result).all()
    highs, lows, guided = split_calls(rec, out, (2, 4, 16, 16))
    assert len(highs) == len(lows) == 2
    assert len(cn_calls.calls) == 2  # the ControlNet runs once per step: no low-resolution run
    for (named, eps), (low_named, eps_low), g in zip(highs, lows, guided, strict=True):
        down = named["down_block_additional_residuals"]
        low_down = low_named["down_block_additional_residuals"]
        assert len(low_down) == len(down) > 0
        for r, r_low in zip(down, low_down, strict=True):
            assert r.abs().sum() > 0
            assert r_low.shape == (r.shape[0], r.shape[1], r.shape[2] // 2, r.shape[3] // 2)
            torch.testing.assert_close(r_low, F.avg_pool2d(r, 2))
        mid, low_mid = (
            named["mid_block_additional_residual"],
            low_named["mid_block_additional_residual"],
        )
        torch.testing.assert_close(low_mid, F.avg_pool2d(mid, 2))
        check_eq10(
            (named, eps), (low_named, eps_low), g, pipe.scheduler.alphas_cumprod, (2, 2), 1.0
        )


def test_animatediff_controlnet_residuals_pooled_over_frames_and_pixels():
    from diffusers import AnimateDiffControlNetPipeline
    from diffusers_models import tiny_controlnet, tiny_motion_adapter, tiny_unet, tiny_vae

    unet = tiny_unet()
    pipe = AnimateDiffControlNetPipeline(
        vae=tiny_vae(),
        text_encoder=None,
        tokenizer=None,
        unet=unet,
        motion_adapter=tiny_motion_adapter(),
        controlnet=tiny_controlnet(unet),
        scheduler=ddim_scheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    apply_upsample_guidance(pipe, (2, 2, 2), 1.0)
    rec, out = ForwardRecorder(pipe.unet), OutputRecorder(pipe.unet)
    frames = [control_image(32, 32, seed=i) for i in range(4)]
    kwargs = animatediff_call_kwargs(frames=4, height=32, width=32, steps=1)
    result = pipe(conditioning_frames=frames, **kwargs).frames
    assert torch.isfinite(result).all()
    highs, lows, guided = split_calls(rec, out, (2, 4, 4, 16, 16))
    assert len(highs) == len(lows) == 1
    named, low_named = highs[0][0], lows[0][0]
    for r, r_low in zip(
        named["down_block_additional_residuals"],
        low_named["down_block_additional_residuals"],
        strict=True,
    ):
        n, c, h, w = r.shape  # (B*F, C, h, w), frame-major per video
        video = r.reshape(2, 4, c, h, w).transpose(1, 2)  # (B, C, F, h, w)
        expected = D(video, (2, 2, 2)).transpose(1, 2).reshape(4, c, h // 2, w // 2)
        torch.testing.assert_close(r_low, expected)
    check_eq10(highs[0], lows[0], guided[0], pipe.scheduler.alphas_cumprod, (2, 2, 2), 1.0)


def test_fractional_timesteps_are_handled_exactly():
    """Euler with Karras sigmas gives fractional timesteps; the matched time is exact."""
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler.from_config(ddim_scheduler().config, use_karras_sigmas=True)
    pipe = tiny_sd_pipeline(scheduler=scheduler)
    apply_upsample_guidance(pipe, (2, 2), 1.0, time_matching="exact")
    rec, out = ForwardRecorder(pipe.unet), OutputRecorder(pipe.unet)
    pipe(**sd_call_kwargs(steps=4))
    highs, lows, guided = split_calls(rec, out, (2, 4, 16, 16))
    assert len(highs) == len(lows) == 4
    sched = pipe.scheduler
    alphas = sched.alphas_cumprod.double().numpy()
    log_sigmas = 0.5 * np.log((1 - alphas) / alphas)

    def sigma_at(t: float) -> float:  # diffusers' own interpolation of timesteps in log sigma
        return float(np.exp(np.interp(t, np.arange(len(log_sigmas)), log_sigmas)))

    fractional = fractional_tau = 0
    for i, ((named, eps), (low_named, eps_low), g) in enumerate(
        zip(highs, lows, guided, strict=True)
    ):
        t, tau = float(named["timestep"]), float(low_named["timestep"])
        fractional += t != round(t)
        sigma = float(sched.sigmas[i])
        assert sigma_at(t) == pytest.approx(sigma, rel=1e-4)
        # SNR(tau) = k SNR(t) with k = 4, i.e. sigma(tau) = sigma(t) / 2, at a fractional tau;
        # below the schedule's first time it is clamped to 0 (below_range="clamp").
        if sigma / 2 >= sigma_at(0):
            assert sigma_at(tau) == pytest.approx(sigma / 2, rel=1e-4)
            fractional_tau += tau != round(tau)
        else:
            assert tau == 0
        alpha_bar = 1 / (1 + sigma**2)
        power = alpha_bar + (1 - alpha_bar) / 4
        x = named["sample"]
        torch.testing.assert_close(low_named["sample"], D(x, (2, 2)) / math.sqrt(power))
        torch.testing.assert_close(g, eps + U(eps_low / 2 - D(eps, (2, 2)), (2, 2)))
    assert fractional >= 2 and fractional_tau >= 1


def test_fractional_factor_matches_the_topped_up_eq10():
    """SD at 1.5x (8x8 latents trained, 12x12 sampled): docs/maths.md §13, operators by hand.

    The low input is ``(D[x] + s·ζ)/√P`` with one ζ per sample for the whole run (the two CFG
    halves share it), the guided ε is ``ε + U[ε_low/√k − D[ε] − ζ]``, and a rerun from the same
    seed is bit-identical (ζ is drawn again from the same first input)."""
    import fractional_reference as ref

    pipe = tiny_sd_pipeline()
    apply_upsample_guidance(pipe, 1.5, 1.0)
    rec, out = ForwardRecorder(pipe.unet), OutputRecorder(pipe.unet)
    first = pipe(**sd_call_kwargs(height=24, width=24, steps=2, cfg=5.0)).images
    highs, lows, guided = split_calls(rec, out, (2, 4, 12, 12))
    assert len(highs) == len(lows) == 2 and lows[0][0]["sample"].shape == (2, 4, 8, 8)
    alphas, k, f = pipe.scheduler.alphas_cumprod, 2.25, (Fraction(3, 2),) * 2
    zetas = []
    for (named, eps), (low_named, eps_low), g in zip(highs, lows, guided, strict=True):
        x, t = named["sample"], int(named["timestep"])
        power = float(alphas[t]) + (1 - float(alphas[t])) / k
        s = math.sqrt(1 - float(alphas[t]))
        zeta = (low_named["sample"] * math.sqrt(power) - ref.D(x, f)) / s
        zetas.append(zeta)
        torch.testing.assert_close(zeta[0], zeta[1], rtol=0, atol=1e-5)  # CFG halves: one ζ
        assert int(low_named["timestep"]) == nearest_tau(alphas, t, k)
        reference = eps + ref.U(eps_low / math.sqrt(k) - ref.D(eps, f) - zeta, f)
        torch.testing.assert_close(g, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(zetas[0], zetas[1], rtol=0, atol=1e-5)  # one ζ for the run
    assert 0.2 < float(zetas[0].std()) < 0.6  # ζ ~ N(0, I/k − DDᵀ): variance up to 1/k per cell
    again = pipe(**sd_call_kwargs(height=24, width=24, steps=2, cfg=5.0)).images
    assert np.array_equal(np.asarray(first), np.asarray(again))
    expected = r"height=26 gives a latent height of 13; the factor 3/2 needs multiples of 3 .*: "
    with pytest.raises(ValueError, match=expected + r"use height=24 or 30"):
        pipe(**sd_call_kwargs(height=26, width=24, steps=1))
