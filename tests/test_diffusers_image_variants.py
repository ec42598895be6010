"""What the low-resolution call gets of the conditioning that rides along with the sample.

The equivalence, ``scale=0``, ``remove`` and host-time tests of these pipelines are in
:mod:`test_diffusers_transformers` (its ``CASES``); here, by hand, per family:

- reference images (Kontext, Flux.2, Klein-KV, Qwen-Image-Edit, Qwen-Image 2.1) are kept at full
  size, bit for bit, with their position ids, shapes or cache; the target's ids are those native
  sampling at the low size builds;
- channel conditioning (Flux Fill) is area-averaged, the mask in pixels;
- ControlNet tokens (SD3, Flux) are pooled on the patch grid; the ControlNet runs once per step;
- img2img and inpainting start mid-schedule;
- CogView4's micro-conditioning describes the low image, and its time map is refused where the
  scheduler's sigmas are not CogView4's shift;
- what is refused, with its error, before any model call.
"""

from __future__ import annotations

import pytest
import torch
from diffusers_image_variants import (
    HUNYUANIMAGE_TRAINED,
    ZIMAGE_TRAINED,
    hunyuanimage_call_kwargs,
    tiny_hunyuanimage_pipeline,
    tiny_zimage_pipeline,
    zimage_call_kwargs,
)
from diffusers_models import ForwardRecorder
from diffusers_transformers import (
    COGVIEW4_TRAINED,
    QWEN_TRAINED,
    cogview4_call_kwargs,
    tiny_cogview4_pipeline,
)
from test_diffusers_transformers import (
    CASES,
    Case,
    D,
    close,
    image,
    pixel_mean,
    recorded,
    reference,
    run,
)
from ug_core.adapters.diffusers import (
    apply_upsample_guidance,
    guided_denoiser,
    remove_upsample_guidance,
)

import ug_core.guidance as guidance_module

F64 = torch.float64


def calls(name: str, w: float = 1.0):
    """The (high, low, guided) triples of a case of :data:`CASES`, and its pipeline."""
    case = CASES[name]
    pipe = case.build()
    return recorded(case, pipe, w)["transformer"], pipe


def target_count(named: dict) -> int:
    """The target's tokens in a Flux-style call: ids with channel 0 equal to 0."""
    ids = named["img_ids"]
    return int(((ids[0] if ids.ndim == 3 else ids)[:, 0] == 0).sum())


def flux_ids(rows: int, cols: int) -> torch.Tensor:
    """Flux's ids (0, row, col) of a patch grid, as FluxPipeline builds them."""
    ids = torch.zeros(rows, cols, 3)
    ids[..., 1] += torch.arange(rows)[:, None]
    ids[..., 2] += torch.arange(cols)[None, :]
    return ids.reshape(-1, 3)


def pool_tokens(tokens: torch.Tensor, rows: int, cols: int, f: int = 2) -> torch.Tensor:
    """Row-major tokens (B, rows·cols, C) block-averaged on their grid, by reshape and mean."""
    b, _, c = tokens.shape
    grid = tokens.reshape(b, rows // f, f, cols // f, f, c).to(F64)
    return grid.mean(dim=(2, 4)).reshape(b, -1, c)


# ---------------------------------------------------------------------- reference images
@pytest.mark.parametrize(
    "name", ["flux_kontext", "flux_kontext_two_per_prompt_non_square", "flux_kontext_1.5x_true_cfg"]
)
def test_kontext_reference_tokens_and_ids_ride_along_at_full_size(name):
    triples, _ = calls(name)
    size = CASES[name].size
    for (hn, h_out), (ln, _), guided in triples:
        n, n_low = target_count(hn), target_count(ln)
        x, x_l = hn["hidden_states"], ln["hidden_states"]
        assert x.shape[1] - n == x_l.shape[1] - n_low == 64  # the 32-pixel reference's 8x8
        assert torch.equal(x_l[:, n_low:], x[:, n:])  # the reference, bit for bit
        assert torch.equal(ln["img_ids"][n_low:], hn["img_ids"][n:])  # and its ids (1, row, col)
        rows, cols = (round(s / 4 / CASES[name].factors[0]) for s in size.values())  # VAE 2, 2x2
        assert torch.equal(ln["img_ids"][:n_low], flux_ids(rows, cols))  # native low ids
        assert guided.shape == h_out.shape  # the whole sequence: its references are their input
        assert torch.equal(guided[:, n:], x[:, n:])
        assert ln["guidance"] is hn["guidance"] and ln["txt_ids"] is hn["txt_ids"]


def test_a_reference_the_factor_does_not_divide_is_no_constraint():
    """Kontext at 1.5x with a 32-pixel reference: its 16x16 latents are no multiple of 3."""
    triples, _ = calls("flux_kontext_1.5x_true_cfg")
    (hn, _), (ln, _), _ = triples[0]
    assert target_count(hn) == 12 * 12 and target_count(ln) == 8 * 8
    assert len(triples) == 4  # two steps, true CFG: two calls each, each with its low call


def test_flux2_references_keep_their_ids_and_the_target_gets_the_low_grid():
    triples, _ = calls("flux2_two_references_non_square")
    for (hn, _), (ln, _), _ in triples:
        n, n_low = target_count(hn), target_count(ln)
        assert (n, n_low) == (16 * 24, 8 * 12)
        refs = hn["img_ids"][0, n:]
        assert sorted(set(refs[:, 0].tolist())) == [10, 20]  # two references, t = 10 and 20
        assert torch.equal(ln["img_ids"][:, n_low:], hn["img_ids"][:, n:])
        assert torch.equal(ln["hidden_states"][:, n_low:], hn["hidden_states"][:, n:])
        low = torch.cartesian_prod(torch.arange(1), torch.arange(8), torch.arange(12),
                                   torch.arange(1))  # fmt: skip
        assert torch.equal(ln["img_ids"][0, :n_low], low.to(ln["img_ids"].dtype))


def test_klein_cfg_guides_both_calls_with_the_reference():
    triples, _ = calls("flux2_klein_references_cfg")
    assert len(triples) == 4  # two steps, CFG: two separate calls each
    prompts = {id(hn["encoder_hidden_states"]) for (hn, _), _, _ in triples}
    assert len(prompts) == 2
    for (hn, _), (ln, _), _ in triples:
        assert ln["encoder_hidden_states"] is hn["encoder_hidden_states"]
        n, n_low = target_count(hn), target_count(ln)
        assert torch.equal(ln["hidden_states"][:, n_low:], hn["hidden_states"][:, n:])


def test_klein_kv_extracts_with_the_references_ahead_then_shares_the_cache():
    triples, _ = calls("flux2_klein_kv_cache")
    modes = [hn["kv_cache_mode"] for (hn, _), _, _ in triples]
    assert modes == ["extract", "cached", "cached"]
    (hn, h_out), (ln, _), guided = triples[0]
    refs = hn["num_ref_tokens"]
    assert refs == 64 and ln["num_ref_tokens"] == refs and ln["kv_cache_mode"] == "extract"
    assert torch.equal(ln["hidden_states"][:, :refs], hn["hidden_states"][:, :refs])
    assert torch.equal(ln["img_ids"][:, :refs], hn["img_ids"][:, :refs])
    assert ln["hidden_states"].shape[1] == refs + 64 and h_out.shape[1] == 256
    assert guided.shape == h_out.shape  # an extracting call returns the target's tokens only
    for (hn, _), (ln, _), _ in triples[1:]:
        assert ln["kv_cache"] is hn["kv_cache"] is not None  # the references' cached K/V
        assert ln["hidden_states"].shape[1] * 4 == hn["hidden_states"].shape[1] == 256


@pytest.mark.parametrize(
    ("name", "references"),
    [("qwen_edit_true_cfg", [(1, 6, 10)]),
     ("qwen_edit_plus_two_images_non_square", [(1, 8, 8), (1, 6, 12)])],
)  # fmt: skip
def test_qwen_edit_references_keep_their_img_shapes(name, references):
    """References sized to the (tiny) 1 MP area by their aspect ratio: 96x160 -> (6, 10) tokens,
    64x128 -> (6, 12)."""
    triples, _ = calls(name)
    size = CASES[name].size
    rows, cols = size["height"] // 16, size["width"] // 16
    for (hn, _), (ln, _), _ in triples:
        assert hn["img_shapes"] == [[(1, rows, cols), *references]]
        assert ln["img_shapes"] == [[(1, rows // 2, cols // 2), *references]]
        n, n_low = rows * cols, rows * cols // 4
        assert torch.equal(ln["hidden_states"][:, n_low:], hn["hidden_states"][:, n:])


def test_qwenimage21_low_call_gets_its_slots_and_shares_the_prefix_cache():
    triples, pipe = calls("qwenimage21_kv_cache_true_cfg")
    n = (2 * 128 // 16) ** 2
    assert [hn["kv_cache_mode"] for (hn, _), _, _ in triples] == ["extract"] * 2 + ["cached"] * 4
    for (hn, h_out), (ln, _), guided in triples:
        assert hn["img_shapes"] == [[(1, 16, 16)]] and ln["img_shapes"] == [[(1, 8, 8)]]
        mask, low_mask = hn["img_mask"], ln["img_mask"]
        assert low_mask.shape[1] == mask.shape[1] - (n - n // 4) // 4
        assert torch.equal(low_mask, mask[:, : low_mask.shape[1]])
        assert ln["kv_cache"] is hn["kv_cache"] is not None
        assert guided.shape == (1, n, 4) and h_out.shape[1] >= n  # the target: what's kept
    prompts = {id(hn["kv_cache"]) for (hn, _), _, _ in triples}
    assert len(prompts) == 2  # cond and uncond, a cache each


# ---------------------------------------------------------------------- channel conditioning
def test_flux_fill_averages_the_masked_image_and_the_mask_in_pixels():
    """Channels (packed 2x2): target 4, masked image 4, mask 4 (2x2 sub-pixels, VAE factor 2)."""
    triples, _ = calls("flux_fill")
    case = CASES["flux_fill"]
    for (hn, _), (ln, _), _ in triples:
        x, x_l = case.grid(hn["hidden_states"], hn), case.grid(ln["hidden_states"], ln)
        assert x.shape[1] == 12
        torch.testing.assert_close(x_l[:, 4:8], D(x[:, 4:8], (2, 2)), rtol=0, atol=1e-6)
        expected = pixel_mean(x[:, 8:], 2, lambda p: D(p, (2, 2)))  # the low image's mask
        torch.testing.assert_close(x_l[:, 8:], expected, rtol=0, atol=1e-6)
        assert not torch.allclose(expected, D(x[:, 8:], (2, 2)))  # a per-channel mean differs
        assert set(x[:, 8:].unique().tolist()) == {0.0, 1.0}


# ---------------------------------------------------------------------- ControlNet tokens
def test_sd3_controlnet_tokens_are_pooled_on_the_patch_grid_and_it_runs_once_per_step():
    case = CASES["sd3_controlnet"]
    pipe = case.build()
    control = ForwardRecorder(pipe.controlnet)
    triples = recorded(case, pipe, 1.0)["transformer"]
    control.close()
    assert len(control.calls) == len(triples) == 2  # one ControlNet call per step, at 2x
    assert control.calls[0][0]["hidden_states"].shape[-1] == 32  # the 2x latents (64 px)
    for (hn, _), (ln, _), _ in triples:  # tokens of the 16x16 patch grid, pooled to 8x8
        high, low = hn["block_controlnet_hidden_states"], ln["block_controlnet_hidden_states"]
        assert len(high) == len(low) == 1 and high[0].shape[1] == 16 * 16
        torch.testing.assert_close(low[0].to(F64), pool_tokens(high[0], 16, 16), rtol=0, atol=1e-6)


def test_flux_controlnet_block_and_single_block_samples_are_pooled():
    triples, _ = calls("flux_controlnet")
    for (hn, _), (ln, _), _ in triples:
        for name in ("controlnet_block_samples", "controlnet_single_block_samples"):
            high, low = hn[name], ln[name]
            assert len(high) == len(low) == 1 and high[0].shape[1] == 16 * 16
            torch.testing.assert_close(low[0].to(F64), pool_tokens(high[0], 16, 16), rtol=0,
                                       atol=1e-6)  # fmt: skip


# ---------------------------------------------------------------------- img2img and inpainting
@pytest.mark.parametrize(
    "name",
    ["sd3_img2img", "sd3_inpaint", "sd3_inpaint_33_channels", "flux_img2img", "flux_inpaint",
     "qwenimage_img2img", "qwenimage_inpaint"],
)  # fmt: skip
def test_image_to_image_starts_mid_schedule_and_guides_every_step(name):
    """strength 0.7 of 4 steps: the last 2 (3 with SD3's shift rounding), from the scheduler's
    begin index; each guided, with the whole batch."""
    triples, pipe = calls(name)
    timesteps = pipe.scheduler.timesteps.tolist()
    unit = 1.0 if name.startswith("sd3") else 1000.0  # Flux and Qwen pass t / 1000
    times = [float(torch.as_tensor(hn["timestep"]).reshape(-1)[0]) * unit
             for (hn, _), _, _ in triples]  # fmt: skip
    steps = len(set(times))
    assert 2 <= steps < 4 and times[0] < timesteps[0]  # started mid-schedule
    assert sorted(set(times), reverse=True) == pytest.approx(timesteps[-steps:], rel=1e-5)


def test_sd3_inpaint_33_channels_averages_the_mask_and_masked_latents():
    triples, _ = calls("sd3_inpaint_33_channels")
    for (hn, _), (ln, _), _ in triples:
        x, x_l = hn["hidden_states"].to(F64), ln["hidden_states"].to(F64)
        assert x.shape[1] == 33 and x_l.shape[1] == 33
        torch.testing.assert_close(x_l[:, 16:], D(x[:, 16:], (2, 2)), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------- CogView4
def test_cogview4_sizes_describe_the_low_image():
    case = CASES["cogview4_shifted_sigma"]
    (high, low, _), *_ = recorded(case, case.build(), 1.0)["transformer"]
    for name in ("original_size", "target_size"):
        assert high[0][name].tolist() == [[2 * COGVIEW4_TRAINED] * 2]
        assert torch.equal(low[0][name] * 2, high[0][name])
    pipe = case.build()
    apply_upsample_guidance(pipe, case.factors, 1.0, micro_conditioning="high")
    rec = ForwardRecorder(pipe.transformer)
    run(case, pipe, steps=1)
    assert torch.equal(rec.calls[1][0]["target_size"], high[0]["target_size"])


def test_cogview4_with_sigmas_that_are_not_its_shift_is_refused():
    pipe = tiny_cogview4_pipeline()
    apply_upsample_guidance(pipe, 2, 1.0)
    rec = ForwardRecorder(pipe.transformer)
    kwargs = cogview4_call_kwargs(2 * COGVIEW4_TRAINED, 2 * COGVIEW4_TRAINED, steps=3)
    with pytest.raises(ValueError, match=r"are not CogView4's shift of its timesteps"):
        pipe(**kwargs, sigmas=[1.0, 0.3, 0.2])
    assert rec.calls == []


# ---------------------------------------------------------------------- Z-Image
def zimage_target(sample, named: dict) -> torch.Tensor:
    """Z-Image's list of (C, 1, H, W) latents (or predictions) stacked to (B, C, H, W)."""
    return torch.stack(list(sample)).squeeze(2)


ZIMAGE = Case(tiny_zimage_pipeline, zimage_call_kwargs, image(ZIMAGE_TRAINED), (2, 2),
              "flow_reversed", 1.0, sample_arg="x", time_arg="t", target=zimage_target)  # fmt: skip


def test_zimage_scale_zero_is_bit_identical_and_remove_restores():
    pipe = ZIMAGE.build()
    plain = run(ZIMAGE, pipe)
    apply_upsample_guidance(pipe, ZIMAGE.factors, 0.0)
    assert torch.equal(run(ZIMAGE, pipe), plain)
    apply_upsample_guidance(pipe, ZIMAGE.factors, 1.0)
    guided = run(ZIMAGE, pipe)
    assert torch.isfinite(guided).all() and not torch.equal(guided, plain)
    remove_upsample_guidance(pipe)
    assert not pipe.transformer._forward_hooks and not pipe.transformer._forward_pre_hooks
    assert torch.equal(run(ZIMAGE, pipe), plain)


def test_zimage_guided_calls_equal_the_hand_written_reference(monkeypatch):
    """CFG doubles the list (prompts, then negatives); the guided output is a list too; every
    call's time is known on the host (the pipeline sets the begin index)."""
    seen = []
    prepare = guidance_module.UpsampleGuidance.prepare

    def spy(self, x, t, *, host_time=None):
        seen.append(host_time)
        return prepare(self, x, t, host_time=host_time)

    monkeypatch.setattr(guidance_module.UpsampleGuidance, "prepare", spy)
    pipe = ZIMAGE.build()
    triples = recorded(ZIMAGE, pipe, 1.3)["transformer"]
    assert len(triples) == len(seen) == 2 and None not in seen
    for high, low, guided in triples:
        assert isinstance(guided, list) and len(guided) == len(high[0]["x"]) == 2
        assert all(a is b for a, b in zip(low[0]["cap_feats"], high[0]["cap_feats"], strict=True))
        expected, channels, extra = reference(ZIMAGE, pipe, high, low, 1.3)
        close(ZIMAGE.grid(guided, high[0]), expected, extra)


# ---------------------------------------------------------------------- refused
def test_hunyuanimage_meanflow_is_refused_before_the_model_runs():
    pipe = tiny_hunyuanimage_pipeline(use_meanflow=True)
    apply_upsample_guidance(pipe, 2, 1.0)
    rec = ForwardRecorder(pipe.transformer)
    size = 2 * HUNYUANIMAGE_TRAINED
    with pytest.raises(ValueError, match=r"with timestep_r \(use_meanflow=True, the distilled "
                                         r"model\) predicts a mean velocity"):  # fmt: skip
        pipe(**hunyuanimage_call_kwargs(size, size))
    assert rec.calls == []


def test_qwen_image_layered_is_refused():
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel

    torch.manual_seed(0)
    model = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(8, 4, 4),
        use_layer3d_rope=True, use_additional_t_cond=True,
    ).eval()  # fmt: skip
    guided = guided_denoiser(model, FlowMatchEulerDiscreteScheduler(), 2, 1.0)
    rows = QWEN_TRAINED // 8  # 2x: two layers and the input image, each 16x16 tokens
    expected = r"Qwen-Image-Layered \(use_layer3d_rope\) is not supported: its input image is "
    with pytest.raises(ValueError, match=expected + "sized with the output"):
        guided(
            torch.randn(1, 3 * rows * rows, 16), timestep=torch.tensor([0.5]),
            encoder_hidden_states=torch.randn(1, 4, 32),
            encoder_hidden_states_mask=torch.ones(1, 4), img_shapes=[[(1, rows, rows)] * 3],
            additional_t_cond=torch.zeros(1, dtype=torch.long),
        )  # fmt: skip


def test_qwen_image_img_shapes_must_describe_the_tokens():
    case = CASES["qwen_edit_true_cfg"]
    pipe = case.build()
    guided = guided_denoiser(pipe.transformer, pipe.scheduler, 2, 1.0)
    with pytest.raises(ValueError, match=r"img_shapes \[\[\(1, 16, 16\)\]\] do not describe the "
                                         r"260 tokens of hidden_states"):  # fmt: skip
        guided(
            torch.randn(1, 260, 16), timestep=torch.tensor([0.5]),
            encoder_hidden_states=torch.randn(1, 8, 32), encoder_hidden_states_mask=None,
            img_shapes=[[(1, 16, 16)]],
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"per batch element, a list of \(frames, rows, cols\)"):
        guided(torch.randn(1, 256, 16), timestep=torch.tensor([0.5]),
               encoder_hidden_states=torch.randn(1, 8, 32), img_shapes=[[(1, 16)]])  # fmt: skip


def test_guided_denoiser_reads_the_flux_grid_from_img_ids():
    """In your own loop there is no pipeline request: the Flux translator reads the target's grid
    from ``img_ids``, and the guided denoiser gives, call for call, what the applied pipeline
    gave (the time read from the call's CPU tensor, float32, hence the tolerance)."""
    case = CASES["flux_dev_dynamic_shift"]
    pipe = case.build()
    (high, _, guided_out), *_ = recorded(case, pipe, 1.0)["transformer"]
    remove_upsample_guidance(pipe)
    arguments = dict(high[0])
    guided = guided_denoiser(pipe.transformer, pipe.scheduler, case.factors, 1.0)
    out = guided(**arguments)
    got = out[0] if isinstance(out, tuple) else out.sample
    close(got, guided_out)
    tokens = arguments["hidden_states"].shape[1]
    with pytest.raises(ValueError, match=r"cannot tell the latent grid of packed tokens: pass "
                                         r"img_ids"):  # fmt: skip
        guided(**{**arguments, "img_ids": None})
    wrong = rf"img_ids of shape \(64, 3\) describe a 4x16 grid in 64 target tokens .* {tokens}"
    with pytest.raises(ValueError, match=wrong):
        guided(**{**arguments, "img_ids": arguments["img_ids"][:64]})
