"""Video families whose conditioning rides along with the sample, against hand-written references.

Image-to-video, first-last-frame and VACE (Wan), TI2V-5B's time per token (Wan 2.2), diffusion
forcing's time per frame (SkyReels-V2), HunyuanVideo image-to-video (latent concat, token
replace), HunyuanVideo 1.5, LTX-Video image-to-video and conditions (tiny random models, real
diffusers pipelines). For every case:

- ``scale=0`` is bit-identical to the plain pipeline, and ``remove`` restores it bit for bit;
- each guided call equals the flow guidance of docs/maths.md §7 written by hand from the recorded
  high- and low-resolution calls, element by element where times differ (§14): the x0 form on
  noisy elements, §5's flow row at σ = 0 (clean frames); the low call's input is ``c·D[x]`` on
  the noisy channels and ``D[x]`` on the conditioning channels, at the matched time per element;
- exactly one low-resolution call per transformer call.

Then each family's own low-call conditioning, and the errors (each before any transformer call).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from diffusers_models import ForwardRecorder
from diffusers_video_families import (
    ALLEGRO_TRAINED,
    ALLEGRO_TRAINED_FRAMES,
    EASYANIMATE_TRAINED,
    EASYANIMATE_TRAINED_FRAMES,
    HUNYUAN_TRAINED,
    HUNYUAN_TRAINED_FRAMES,
    HV15_TRAINED,
    HV15_TRAINED_FRAMES,
    KANDINSKY_TRAINED,
    KANDINSKY_TRAINED_FRAMES,
    LATTE_FRAMES,
    LATTE_TRAINED,
    LTX2_TRAINED,
    LTX2_TRAINED_FRAMES,
    LTX_TRAINED,
    LTX_TRAINED_FRAMES,
    WAN_TRAINED,
    WAN_TRAINED_FRAMES,
    allegro_kwargs,
    easyanimate_inpaint_kwargs,
    easyanimate_kwargs,
    hunyuan_i2v_kwargs,
    hunyuan_skyreels_i2v_kwargs,
    hunyuan_video15_kwargs,
    kandinsky5_kwargs,
    latte_kwargs,
    ltx2_kwargs,
    ltx_variant_kwargs,
    sana_video_i2v_kwargs,
    skyreels_kwargs,
    skyreels_v2v_kwargs,
    tiny_allegro_pipeline,
    tiny_easyanimate_inpaint_pipeline,
    tiny_easyanimate_pipeline,
    tiny_hunyuan_i2v_pipeline,
    tiny_hunyuan_skyreels_i2v_pipeline,
    tiny_hunyuan_video15_pipeline,
    tiny_kandinsky5_pipeline,
    tiny_latte_pipeline,
    tiny_ltx2_pipeline,
    tiny_ltx_variant_pipeline,
    tiny_sana_video_i2v_pipeline,
    tiny_skyreels_pipeline,
    tiny_skyreels_v2v_pipeline,
    tiny_wan_i2v_pipeline,
    tiny_wan_ti2v_pipeline,
    tiny_wan_vace_pipeline,
    tiny_wan_variant_pipeline,
    wan_i2v_kwargs,
    wan_ti2v_kwargs,
    wan_vace_kwargs,
    wan_variant_kwargs,
)
from test_diffusers_transformers import Case as TransformerCase
from test_diffusers_transformers import D, U, close, recorded, run
from test_diffusers_transformers import reference as vp_reference
from torch.utils._pytree import tree_leaves
from ug_core.adapters.diffusers import (
    apply_upsample_guidance,
    guided_denoiser,
    is_upsample_guided,
    remove_upsample_guidance,
)

F64 = torch.float64


@dataclass
class Case:
    """One pipeline: how to build and call it at 2x, and how to read its calls by hand."""

    build: object
    kwargs: object
    size: dict
    factors: tuple = (1, 2, 2)
    times: str = "scalar"  # "tokens" (one per patch, flat or as a patch grid), "frames" (one per
    # latent frame),
    # "first_clean" (scalar, but the first latent frame is the clean image at time 0)
    patch: tuple = (1, 2, 2)
    ltx: bool = False  # packed tokens (B, F*H*W, C), patch 1
    channels_last: bool = False  # Kandinsky 5: (B, F, H, W, C)
    denoisers: tuple = ("transformer",)
    sample_arg: str = "hidden_states"

    def grid(self, sample: torch.Tensor, named: dict) -> torch.Tensor:
        """A call's sample or output as (B, C, F, H, W), float64."""
        if self.channels_last:
            return sample.permute(0, 4, 1, 2, 3).to(F64)
        if not self.ltx:
            return sample.to(F64)
        if named.get("height") is not None:
            h, w = named["height"], named["width"]
        else:  # LTX conditions: rows and columns from the pixel coordinates (VAE 32, patch 1)
            coords = named["video_coords"]
            h, w = int(coords[0, 1].max()) // 32 + 1, int(coords[0, 2].max()) // 32 + 1
        b, n, c = sample.shape
        return sample.reshape(b, n // (h * w), h, w, c).permute(0, 4, 1, 2, 3).to(F64)

    def sigma(self, named: dict, shape: tuple) -> torch.Tensor:
        """The call's σ per grid element (B, 1, F, H, W), from its timestep, by hand."""
        t = torch.as_tensor(named["timestep"]).to(F64) / 1000
        b, _, f, h, w = shape
        if self.times == "tokens":
            pt, ph, pw = self.patch
            blocks = t.reshape(b, 1, f // pt, 1, h // ph, 1, w // pw, 1)
            return blocks.expand(b, 1, f // pt, pt, h // ph, ph, w // pw, pw).reshape(b, 1, f, h, w)
        if self.times == "frames":
            return t.reshape(b, 1, f, 1, 1).expand(b, 1, f, h, w)
        out = t.reshape(-1, 1, 1, 1, 1).expand(b, 1, f, h, w).clone()
        if self.times == "first_clean":
            out[:, :, 0] = 0.0
        return out


def video(size, frames, temporal=4):
    """A 2x spatial request (the trained frame count)."""
    return dict(height=2 * size, width=2 * size, num_frames=frames)


WAN = video(WAN_TRAINED, WAN_TRAINED_FRAMES)
WAN_2X_FRAMES = dict(WAN, num_frames=21)  # 6 latent frames: a temporal factor 2 fits


def _kandinsky5(kind: str):
    """A Kandinsky 5 pipeline; the image ones with their resolution list at twice the trained
    size (they snap every request to ``pipe.resolutions``). The pipelines step their latents in
    place after each call; the transformer gets a copy, so that the recorded calls keep their
    input."""
    pipe = tiny_kandinsky5_pipeline(kind=kind)
    pipe.transformer.register_forward_pre_hook(_copy_sample, with_kwargs=True)
    if kind in ("t2i", "i2i"):
        pipe.resolutions = [(2 * KANDINSKY_TRAINED, 2 * KANDINSKY_TRAINED)]
    return pipe


def _copy_sample(module, args, kwargs):
    """A forward pre-hook: the call gets a copy of its ``hidden_states``."""
    return args, {**kwargs, "hidden_states": kwargs["hidden_states"].clone()}


def _hv15_i2v(seed: int = 0):
    """HunyuanVideo 1.5 image-to-video sized by ``target_size``: twice the trained 64 pixels."""
    pipe = tiny_hunyuan_video15_pipeline(seed, image=True)
    pipe.target_size = 2 * HV15_TRAINED
    return pipe


CASES = {
    "wan21_i2v_clip": Case(tiny_wan_i2v_pipeline, wan_i2v_kwargs, WAN),
    "wan21_flf2v": Case(
        lambda: tiny_wan_i2v_pipeline(flf2v=True),
        lambda **kw: wan_i2v_kwargs(**kw, last_image=True),
        WAN,
    ),
    "wan22_i2v_two_experts": Case(
        lambda: tiny_wan_i2v_pipeline(clip=False, experts=True),
        wan_i2v_kwargs,
        WAN,
        denoisers=("transformer", "transformer_2"),
    ),
    "wan21_i2v_temporal": Case(tiny_wan_i2v_pipeline, wan_i2v_kwargs, WAN_2X_FRAMES, (2, 2, 2)),
    "wan22_ti2v_image": Case(tiny_wan_ti2v_pipeline, wan_ti2v_kwargs, WAN, times="tokens"),
    "wan22_ti2v_text_temporal": Case(
        lambda: tiny_wan_ti2v_pipeline(image=False),
        lambda **kw: wan_ti2v_kwargs(**kw, image=False),
        WAN_2X_FRAMES,
        (2, 2, 2),
        times="tokens",
    ),
    "wan_video2video": Case(tiny_wan_variant_pipeline, wan_variant_kwargs, WAN),
    "lucy_edit": Case(
        lambda: tiny_wan_variant_pipeline(kind="lucy"),
        lambda **kw: wan_variant_kwargs(**kw, kind="lucy"),
        WAN,
        times="tokens",
    ),
    "chronoedit": Case(
        lambda: tiny_wan_variant_pipeline(kind="chronoedit"),
        lambda **kw: wan_variant_kwargs(**kw, kind="chronoedit"),
        WAN,
    ),
    "wan_vace": Case(tiny_wan_vace_pipeline, wan_vace_kwargs, WAN),
    "wan_vace_reference": Case(
        tiny_wan_vace_pipeline, lambda **kw: wan_vace_kwargs(**kw, reference=True), WAN
    ),
    "skyreels_t2v": Case(lambda: tiny_skyreels_pipeline(kind="t2v"), skyreels_kwargs, WAN),
    "skyreels_i2v": Case(
        lambda: tiny_skyreels_pipeline(kind="i2v"),
        lambda **kw: skyreels_kwargs(**kw, image=True),
        WAN,
    ),
    "skyreels_df_sync_temporal": Case(
        tiny_skyreels_pipeline, skyreels_kwargs, WAN_2X_FRAMES, (2, 2, 2), times="frames"
    ),
    "skyreels_df_async": Case(
        tiny_skyreels_pipeline,
        lambda **kw: skyreels_kwargs(**kw, ar_step=1),
        WAN,
        times="frames",
    ),
    "skyreels_df_i2v": Case(
        lambda: tiny_skyreels_pipeline(kind="df_i2v"),
        lambda **kw: skyreels_kwargs(**kw, image=True),
        WAN,
        times="frames",
    ),
    "skyreels_df_v2v": Case(tiny_skyreels_v2v_pipeline, skyreels_v2v_kwargs, WAN, times="frames"),
    "sana_video_i2v": Case(
        tiny_sana_video_i2v_pipeline, sana_video_i2v_kwargs, WAN, times="tokens"
    ),
    "hunyuan_skyreels_i2v_true_cfg": Case(
        tiny_hunyuan_skyreels_i2v_pipeline,
        hunyuan_skyreels_i2v_kwargs,
        video(HUNYUAN_TRAINED, HUNYUAN_TRAINED_FRAMES),
    ),
    "hunyuan_i2v_latent_concat": Case(
        tiny_hunyuan_i2v_pipeline,
        hunyuan_i2v_kwargs,
        video(HUNYUAN_TRAINED, HUNYUAN_TRAINED_FRAMES),
    ),
    "hunyuan_i2v_token_replace": Case(
        lambda: tiny_hunyuan_i2v_pipeline(condition="token_replace"),
        hunyuan_i2v_kwargs,
        video(HUNYUAN_TRAINED, HUNYUAN_TRAINED_FRAMES),
        times="first_clean",
    ),
    "hunyuan_video15_t2v": Case(
        tiny_hunyuan_video15_pipeline,
        hunyuan_video15_kwargs,
        video(HV15_TRAINED, HV15_TRAINED_FRAMES),
        patch=(1, 1, 1),
    ),
    "hunyuan_video15_i2v": Case(
        _hv15_i2v,
        lambda **kw: hunyuan_video15_kwargs(**kw, image=True),
        video(HV15_TRAINED, HV15_TRAINED_FRAMES),
        patch=(1, 1, 1),
    ),
    "kandinsky5_t2v": Case(
        lambda: _kandinsky5("t2v"),
        kandinsky5_kwargs,
        video(KANDINSKY_TRAINED, KANDINSKY_TRAINED_FRAMES),
        channels_last=True,
    ),
    "kandinsky5_i2v": Case(
        lambda: _kandinsky5("i2v"),
        lambda **kw: kandinsky5_kwargs(**kw, kind="i2v"),
        video(KANDINSKY_TRAINED, KANDINSKY_TRAINED_FRAMES),
        times="first_clean",
        channels_last=True,
    ),
    "kandinsky5_t2i": Case(
        lambda: _kandinsky5("t2i"),
        lambda num_frames=None, **kw: kandinsky5_kwargs(**kw, kind="t2i"),
        dict(height=2 * KANDINSKY_TRAINED, width=2 * KANDINSKY_TRAINED),
        (2, 2),
        channels_last=True,
    ),
    "kandinsky5_i2i": Case(
        lambda: _kandinsky5("i2i"),
        lambda num_frames=None, **kw: kandinsky5_kwargs(**kw, kind="i2i"),
        dict(height=2 * KANDINSKY_TRAINED, width=2 * KANDINSKY_TRAINED),
        (2, 2),
        channels_last=True,
    ),
    "easyanimate": Case(
        tiny_easyanimate_pipeline,
        easyanimate_kwargs,
        video(EASYANIMATE_TRAINED, EASYANIMATE_TRAINED_FRAMES),
    ),
    "easyanimate_inpaint": Case(
        tiny_easyanimate_inpaint_pipeline,
        easyanimate_inpaint_kwargs,
        video(EASYANIMATE_TRAINED, EASYANIMATE_TRAINED_FRAMES),
    ),
    "ltx_i2v": Case(
        tiny_ltx_variant_pipeline,
        ltx_variant_kwargs,
        video(LTX_TRAINED, LTX_TRAINED_FRAMES),
        times="tokens",
        patch=(1, 1, 1),
        ltx=True,
    ),
    "ltx2": Case(
        tiny_ltx2_pipeline,
        ltx2_kwargs,
        video(LTX2_TRAINED, LTX2_TRAINED_FRAMES),
        patch=(1, 1, 1),
        ltx=True,
    ),
    "ltx2_i2v": Case(
        lambda: tiny_ltx2_pipeline(kind="i2v"),
        lambda **kw: ltx2_kwargs(**kw, image=True),
        video(LTX2_TRAINED, LTX2_TRAINED_FRAMES),
        times="tokens",
        patch=(1, 1, 1),
        ltx=True,
    ),
    "ltx2_condition_keyframe": Case(
        lambda: tiny_ltx2_pipeline(kind="condition"),
        lambda **kw: ltx2_kwargs(**kw, keyframe=True),
        video(LTX2_TRAINED, LTX2_TRAINED_FRAMES),
        times="tokens",
        patch=(1, 1, 1),
        ltx=True,
    ),
    "ltx_condition": Case(
        lambda: tiny_ltx_variant_pipeline(kind="condition"),
        lambda **kw: ltx_variant_kwargs(**kw, kind="condition"),
        video(LTX_TRAINED, LTX_TRAINED_FRAMES),
        times="tokens",
        patch=(1, 1, 1),
        ltx=True,
    ),
}

#: The VP families (discrete timesteps), read with :mod:`test_diffusers_transformers`' own
#: references (ε with a learned variance: Eq. 10 on the mean half, the variance kept).
VP_CASES = {
    "latte": TransformerCase(
        tiny_latte_pipeline,
        latte_kwargs,
        dict(height=2 * LATTE_TRAINED, width=2 * LATTE_TRAINED, num_frames=LATTE_FRAMES),
        (1, 2, 2),
        "eps_learned",
    ),
    "allegro": TransformerCase(
        tiny_allegro_pipeline,
        allegro_kwargs,
        video(ALLEGRO_TRAINED, ALLEGRO_TRAINED_FRAMES),
        (1, 2, 2),
        "eps_learned",
    ),
}


# ---------------------------------------------------------------------- the reference
def reference(case: Case, high, low, w: float) -> tuple[torch.Tensor, float]:
    """The guided output of one call (flow, docs/maths.md §7 per element), from its two calls.

    Also checks the low call's input (``c·D[x]`` on the noisy channels, ``D[x]`` on the
    conditioning ones) and its time per element. Returns the expected prediction on the grid
    and an extra absolute tolerance (the x0 form divides float32 terms by σ).
    """
    (hn, h_out), (ln, l_out) = high, low
    f, k = case.factors, math.prod(case.factors)
    x, x_l = case.grid(hn["hidden_states"], hn), case.grid(ln["hidden_states"], ln)
    p, p_l = case.grid(h_out, hn), case.grid(l_out, ln)
    n = p.shape[1]  # the noisy channels; the rest of the input is conditioning
    sigma = case.sigma(hn, x.shape)
    block = D(sigma, f)
    assert torch.equal(U(block, f), sigma), "one time per block"
    c = 1 / ((1 - block) + block / math.sqrt(k))
    sigma_low = block / (block + math.sqrt(k) * (1 - block))  # docs/maths.md §7, per element
    close(case.sigma(ln, x_l.shape), sigma_low)
    close(x_l[:, :n], c * D(x[:, :n], f))
    if x.shape[1] > n:  # clean conditioning channels: area-averaged, not scaled
        close(x_l[:, n:], D(x[:, n:], f))
    x0 = x[:, :n] - sigma * p
    x0_low = x_l[:, :n] - sigma_low * p_l
    x0_new = x0 + w * U(x0_low - D(x0, f), f)
    noisy = (x[:, :n] - x0_new) / sigma
    clean = p + w * U(p_l / math.sqrt(k) - D(p, f) - (1 - 1 / math.sqrt(k)) * D(x[:, :n], f), f)
    positive = sigma[sigma > 0]
    extra = 1e-6 * float(x.abs().max()) / float(positive.min()) if positive.numel() else 0.0
    return torch.where(sigma > 0, noisy, clean), extra


# ---------------------------------------------------------------------- every case
@pytest.mark.parametrize("name", [*CASES, *VP_CASES])
def test_scale_zero_is_bit_identical_and_remove_restores(name):
    case = CASES.get(name) or VP_CASES[name]
    pipe = case.build()
    plain = run(case, pipe)
    modules = [getattr(pipe, n) for n in case.denoisers]
    hooks = [(list(m._forward_hooks), list(m._forward_pre_hooks)) for m in modules]
    apply_upsample_guidance(pipe, case.factors, 0.0)
    assert torch.equal(run(case, pipe), plain)
    apply_upsample_guidance(pipe, case.factors, 1.0)
    assert is_upsample_guided(pipe)
    guided = run(case, pipe)
    assert torch.isfinite(guided).all() and not torch.equal(guided, plain)
    remove_upsample_guidance(pipe)
    assert [(list(m._forward_hooks), list(m._forward_pre_hooks)) for m in modules] == hooks
    assert all("_upsample_guidance" not in m.__dict__ for m in modules)
    assert torch.equal(run(case, pipe), plain)


@pytest.mark.parametrize("name", list(CASES))
def test_guided_calls_equal_the_hand_written_reference(name):
    """``recorded`` also asserts one low call per transformer call, for the whole batch."""
    case = CASES[name]
    w = 1.3
    triples = recorded(case, case.build(), w)
    assert all(triples.values()), "every denoiser made guided calls"
    for calls in triples.values():
        for high, low, guided in calls:
            expected, extra = reference(case, high, low, w)
            close(case.grid(guided, high[0]), expected, extra)


@pytest.mark.parametrize("name", list(VP_CASES))
def test_vp_calls_equal_the_hand_written_reference(name):
    """Latte and Allegro: ε (Latte's with a learned variance, kept bit for bit), discrete
    timesteps with the nearest matched time; one low call per transformer call."""
    case = VP_CASES[name]
    pipe = case.build()
    w = 1.3
    for high, low, guided in recorded(case, pipe, w)["transformer"]:
        expected, channels, extra = vp_reference(case, pipe, high, low, w)
        got = case.grid(guided, high[0])
        close(got[:, :channels], expected, extra)
        raw = case.grid(high[1], high[0])
        assert torch.equal(got[:, channels:], raw[:, channels:])


def first_call(name: str, **options):
    """The first (high, low) calls of a case at 2x with UG (scale 1), and the pipeline."""
    case = CASES[name]
    pipe = case.build()
    apply_upsample_guidance(pipe, case.factors, 1.0, **options)
    rec = ForwardRecorder(pipe.transformer)
    run(case, pipe)
    rec.close()
    return rec.calls[0][0], rec.calls[1][0], pipe


# ---------------------------------------------------------------------- each family's conditioning
def test_wan_image_to_video_mask_image_latents_and_clip_tokens_of_the_low_call():
    """The 4 mask channels (one per pixel frame of a latent frame) are the high call's at the
    low size: the first image's frame conditioned (and the last pixel frame for FLF2V), the
    others not; the image latents are area-averaged; the CLIP image tokens are the high call's
    own."""
    for name in ("wan21_i2v_clip", "wan21_flf2v"):
        high, low, _ = first_call(name)
        mask = low["hidden_states"][:, 4:8]
        assert torch.equal(mask, high["hidden_states"][:, 4:8, :, ::2, ::2])
        assert torch.equal(mask[:, :, 0], torch.ones_like(mask[:, :, 0]))
        last = mask[:, 3, -1]  # the last pixel frame: conditioned by FLF2V's last image
        assert torch.equal(last, torch.full_like(last, float("flf2v" in name)))
        image = D(high["hidden_states"][:, 8:].to(F64), (1, 2, 2))
        close(low["hidden_states"][:, 8:].to(F64), image)
        assert low["encoder_hidden_states_image"] is high["encoder_hidden_states_image"]
        assert low["encoder_hidden_states_image"].shape[0] == (2 if name == "wan21_flf2v" else 1)


def test_wan22_ti2v_clean_first_frame_stays_clean_at_the_low_size():
    """Per token: the first latent frame's tokens at time 0, the others at the matched time; the
    low input's first frame is the area mean of the clean image latents, unscaled (c = 1)."""
    high, low, _ = first_call("wan22_ti2v_image")
    f, h, w = low["hidden_states"].shape[2:]
    tokens = low["timestep"].reshape(1, f, h // 2, w // 2)
    assert torch.equal(tokens[:, 0], torch.zeros_like(tokens[:, 0]))
    t = float(high["timestep"].max())
    sigma_low = (t / 1000) / (t / 1000 + 2 * (1 - t / 1000))
    close(tokens[:, 1:].to(F64), torch.full_like(tokens[:, 1:], 1000 * sigma_low, dtype=F64))
    first = D(high["hidden_states"][:, :, :1].to(F64), (1, 2, 2))
    close(low["hidden_states"][:, :, :1].to(F64), first)


def test_wan22_ti2v_temporal_factor_merging_the_clean_frame_is_refused_or_combined():
    case = CASES["wan22_ti2v_image"]
    pipe = case.build()
    apply_upsample_guidance(pipe, (2, 2, 2), 1.0)
    rec = ForwardRecorder(pipe.transformer)
    with pytest.raises(ValueError, match=r"different times inside one block of the factors "
                                         r"\(2, 2, 2\) .* from 0\.0 to 999\.0\); pass "
                                         r"mixed_times="):  # fmt: skip
        pipe(**case.kwargs(**WAN_2X_FRAMES))
    assert rec.calls == []  # before any transformer call
    apply_upsample_guidance(pipe, (2, 2, 2), 1.0, mixed_times="max")
    pipe(**case.kwargs(**WAN_2X_FRAMES))
    (high, _), (low, _) = rec.calls[:2]
    assert low["hidden_states"].shape[2] * 2 == high["hidden_states"].shape[2]
    first = low["timestep"].reshape(1, 3, 4, 4)[:, 0]  # the clean and a noisy frame merged
    assert torch.equal(first, low["timestep"].reshape(1, 3, 4, 4)[:, 1])  # the noisiest's time
    assert bool((first > 0).all())


def test_vace_control_latents_are_pooled_with_the_sample():
    for name in ("wan_vace", "wan_vace_reference"):
        high, low, _ = first_call(name)
        control, low_control = high["control_hidden_states"], low["control_hidden_states"]
        assert control.shape[1:3] == low_control.shape[1:3]  # channels, frames (+ reference)
        close(low_control.to(F64), D(control.to(F64), (1, 2, 2)))
        assert low["control_hidden_states_scale"] is high["control_hidden_states_scale"]


def test_skyreels_diffusion_forcing_times_per_frame_of_the_low_call():
    """Asynchronous diffusion forcing: frames at different times; each low frame gets its own
    matched time, fps and the forcing flag are the high call's."""
    case = CASES["skyreels_df_async"]
    triples = recorded(case, case.build(), 1.0)["transformer"]
    differing = [h for h, _, _ in triples if h[0]["timestep"].unique().numel() > 1]
    assert differing, "some calls have frames at different times"
    for (hn, _), (ln, _), _ in triples:
        assert ln["timestep"].shape == hn["timestep"].shape  # (B, F): spatial factors
        sigma = hn["timestep"].to(F64) / 1000
        expected = 1000 * sigma / (sigma + 2 * (1 - sigma))
        close(ln["timestep"].to(F64), expected)
        assert ln["enable_diffusion_forcing"] is True and ln["fps"] == hn["fps"]


def test_skyreels_temporal_factor_with_causal_blocks_is_refused():
    pipe = tiny_skyreels_pipeline()
    apply_upsample_guidance(pipe, (2, 2, 2), 1.0)
    rec = ForwardRecorder(pipe.transformer)
    kwargs = skyreels_kwargs(**WAN_2X_FRAMES, ar_step=0, causal_block_size=2)
    with pytest.raises(ValueError, match=r"SkyReels-V2 diffusion forcing with causal blocks of 2 "
                                         r"frames takes spatial factors only: the latent grid "
                                         r"\(6, 16, 16\) would become \(3, 8, 8\)"):  # fmt: skip
        pipe(**kwargs)
    assert rec.calls == []
    with pytest.raises(ValueError, match=r"different times inside one block"):  # asynchronous
        pipe(**skyreels_kwargs(**WAN_2X_FRAMES, ar_step=1))  # frames: a pair at two times


def test_hunyuan_token_replace_keeps_the_first_frame_clean_and_unscaled():
    high, low, _ = first_call("hunyuan_i2v_token_replace")
    t = float(high["timestep"][0]) / 1000
    close(low["timestep"].to(F64), torch.full((1,), 1000 * t / (t + 2 * (1 - t)), dtype=F64))
    first = D(high["hidden_states"][:, :, :1].to(F64), (1, 2, 2))
    close(low["hidden_states"][:, :, :1].to(F64), first)  # the clean image: c = 1
    assert low["guidance"] is high["guidance"]
    pipe = tiny_hunyuan_i2v_pipeline(condition="token_replace")
    apply_upsample_guidance(pipe, (2, 2, 2), 1.0)
    rec = ForwardRecorder(pipe.transformer)
    match = (
        r"image_condition_type='token_replace' takes spatial factors only: .* clean first .*\(1, fh"
    )
    with pytest.raises(ValueError, match=match):
        pipe(**hunyuan_i2v_kwargs(height=128, width=128, num_frames=21))
    assert rec.calls == []


def test_hunyuan_video15_image_tokens_and_masks_are_kept_and_meanflow_is_refused():
    high, low, _ = first_call("hunyuan_video15_i2v")
    for name in ("image_embeds", "encoder_attention_mask", "encoder_attention_mask_2"):
        assert low[name] is high[name]
    pipe = tiny_hunyuan_video15_pipeline(image=True, meanflow=True)
    pipe.target_size = 2 * HV15_TRAINED
    apply_upsample_guidance(pipe, (1, 2, 2), 1.0)
    rec = ForwardRecorder(pipe.transformer)
    with pytest.raises(ValueError, match=r"HunyuanVideo 1\.5 with use_meanflow \(a timestep_r\) "
                                         r"is not supported"):  # fmt: skip
        pipe(**hunyuan_video15_kwargs(height=128, width=128, image=True))
    assert rec.calls == []


def test_kandinsky5_rope_positions_scale_and_the_clean_first_frame_of_the_low_call():
    """The low call's RoPE positions are those of the low patch grid and its RoPE scale the
    pipeline's for the low size; image-to-video keeps the image's latent frame clean (unscaled)
    and gives the low call the noisy frames' time."""
    high, low, pipe = first_call("kandinsky5_i2v")
    positions = [torch.arange(n) for n in (5, 4, 4)]  # frames, rows, columns of 2x2 patches
    assert all(torch.equal(a, b) for a, b in zip(low["visual_rope_pos"], positions, strict=True))
    assert low["scale_factor"] == pipe._get_scale_factor(KANDINSKY_TRAINED, KANDINSKY_TRAINED)
    assert low["text_rope_pos"] is high["text_rope_pos"]
    first = D(high["hidden_states"][:, :1, ..., :4].permute(0, 4, 1, 2, 3).to(F64), (1, 2, 2))
    close(low["hidden_states"][:, :1, ..., :4].permute(0, 4, 1, 2, 3).to(F64), first)
    t = float(high["timestep"][0]) / 1000
    close(low["timestep"].to(F64), torch.full((1,), 1000 * t / (t + 2 * (1 - t)), dtype=F64))
    mask = low["hidden_states"][..., -1]  # the conditioning mask: the first frame's
    assert torch.equal(mask[:, 0], torch.ones_like(mask[:, 0]))
    assert torch.equal(mask[:, 1:], torch.zeros_like(mask[:, 1:]))


def test_ltx2_keyframe_tokens_are_pooled_as_frames_with_their_coordinates():
    """The condition pipeline appends a keyframe's tokens after the video's: a fourth latent
    frame of the same size, pooled with the others; its low tokens keep the keyframe's time
    coordinate and are clean (time 0), as the first frame."""
    high, low, _ = first_call("ltx2_condition_keyframe")
    assert high["hidden_states"].shape[1] == 4 * 16 * 16 and low["hidden_states"].shape[1] == 4 * 64
    coords = high["video_coords"].reshape(2, 3, 4, 16, 16, 2)
    low_coords = low["video_coords"].reshape(2, 3, 4, 8, 8, 2)
    assert torch.equal(low_coords, coords[:, :, :, :8, :8])  # rows and columns 0..7 of the grid
    times = low["timestep"].reshape(2, 4, 64)
    for frame in (0, 3):  # the first image and the keyframe
        assert torch.equal(times[:, frame], torch.zeros_like(times[:, frame]))
    assert bool((times[:, 1:3] > 0).all())


def test_allegro_rotary_embeddings_and_latte_frames():
    """Allegro's low call gets the pipeline's rotary embeddings of the low grid; Latte's fixed
    temporal embedding refuses a temporal factor before any transformer call."""
    case = VP_CASES["allegro"]
    pipe = case.build()
    (high, low, _), *_ = recorded(case, pipe, 1.0)["transformer"]
    expected = pipe._prepare_rotary_positional_embeddings(
        2, ALLEGRO_TRAINED, ALLEGRO_TRAINED, 2, torch.device("cpu")
    )
    got = low[0]["image_rotary_emb"]
    leaves, expected_leaves = tree_leaves(got), tree_leaves(expected)
    assert len(leaves) == len(expected_leaves) > 0
    assert all(torch.equal(a, b) for a, b in zip(leaves, expected_leaves, strict=True))
    assert got[1][0].shape[-1] * 4 == high[0]["image_rotary_emb"][1][0].shape[-1]
    pipe = tiny_latte_pipeline()
    apply_upsample_guidance(pipe, (2, 2, 2), 1.0)
    rec = ForwardRecorder(pipe.transformer)
    with pytest.raises(ValueError, match=r"Latte takes spatial factors only: .* its temporal "
                                         r"position embedding holds 4 frames"):  # fmt: skip
        pipe(**latte_kwargs(height=128, width=128))
    assert rec.calls == []


def test_chronoedit_refuses_temporal_factors_before_any_call():
    """ChronoEdit's first and last latent frames are the input and the edit: a temporal factor
    would merge them with the frames between, so it is refused before the transformer runs."""
    pipe = tiny_wan_variant_pipeline(kind="chronoedit")
    apply_upsample_guidance(pipe, (2, 2, 2), 1.0)
    rec = ForwardRecorder(pipe.transformer)
    match = (
        r"ChronoEdit takes spatial factors only: the latent grid \(2, 16, 16\) would become "
        r"\(1, 8, 8\), and its first and last latent frames are the input and the edit"
    )
    with pytest.raises(ValueError, match=match):
        pipe(**wan_variant_kwargs(**WAN_2X_FRAMES, kind="chronoedit"))
    assert rec.calls == []


def test_easyanimate_inpaint_latents_are_pooled_with_the_sample():
    high, low, _ = first_call("easyanimate_inpaint")
    close(low["inpaint_latents"].to(F64), D(high["inpaint_latents"].to(F64), (1, 2, 2)))


def test_ltx_image_to_video_times_per_token_and_sizes_of_the_low_call():
    high, low, _ = first_call("ltx_i2v")
    assert (low["num_frames"], low["height"], low["width"]) == (2, 4, 4)
    assert low["rope_interpolation_scale"] == high["rope_interpolation_scale"]
    frames = low["timestep"].reshape(2, 2, 16)  # CFG batch, latent frames, tokens
    assert torch.equal(frames[:, 0], torch.zeros_like(frames[:, 0]))  # the clean image
    assert bool((frames[:, 1] > 0).all())


def test_ltx_condition_clips_are_pooled_with_coordinates_of_the_low_grid():
    """The prepended clip and the sample: pooled 2x2 as frames of one grid; the low tokens'
    coordinates are those of the 4x4 low grid (pixel rows and columns 0, 32, 64, 96), each
    frame keeping its own time coordinate."""
    high, low, _ = first_call("ltx_condition")
    coords, low_coords = high["video_coords"], low["video_coords"]
    frames = coords.shape[2] // 64  # 8x8 tokens a frame at 2x
    assert low_coords.shape == (2, 3, frames * 16)
    grid = low_coords.reshape(2, 3, frames, 4, 4)
    rows = torch.arange(4.0).mul(32).reshape(1, 1, 4, 1).expand(2, frames, 4, 4)
    assert torch.equal(grid[:, 1], rows) and torch.equal(grid[:, 2], rows.transpose(-1, -2))
    seconds = coords.reshape(2, 3, frames, 8, 8)[:, 0, :, :1, :1].expand(2, frames, 4, 4)
    assert torch.equal(grid[:, 0], seconds)
    tokens = low["timestep"].reshape(2, frames, 16)
    assert torch.equal(tokens[:, 0], torch.zeros_like(tokens[:, 0]))  # the clip: clean
    pipe = tiny_ltx_variant_pipeline(kind="condition")
    apply_upsample_guidance(pipe, (2, 2, 2), 1.0)
    rec = ForwardRecorder(pipe.transformer)
    with pytest.raises(ValueError, match=r"video_coords \(LTXConditionPipeline\) takes spatial "
                                         r"factors only"):  # fmt: skip
        pipe(**ltx_variant_kwargs(height=256, width=256, num_frames=25, kind="condition"))
    assert rec.calls == []


def ltx2_calls(name: str, **options):
    """An LTX-2 case at 2x with UG (call ``options`` added): its recorded calls, the raw (video,
    audio) outputs of every call, the outputs the pipeline saw (the guided ones), and the
    transformer."""
    base = CASES[name]
    case = Case(base.build, lambda **kw: base.kwargs(**kw, **options), base.size, ltx=True)
    pipe = case.build()
    apply_upsample_guidance(pipe, case.factors, 1.0)
    module, raw, seen = pipe.transformer, [], []
    forward = module.forward

    def recording(*args, **kwargs):
        raw.append(forward(*args, **kwargs))
        return raw[-1]

    module.forward = recording
    hook = module.register_forward_hook(lambda m, a, out: seen.append(out))
    rec = ForwardRecorder(module)
    run(case, pipe)
    hook.remove(), rec.close()  # (close deletes the instance's forward)
    return rec.calls, raw, seen, module


def test_ltx2_audio_rides_along_and_the_video_gets_the_low_grid():
    """The low call keeps the audio latents, the audio's time and sigma; the video gets the low
    grid's size, the coordinates ``rope.prepare_video_coords`` gives the low grid, its matched
    time and sigma; the guided call returns the high call's audio bit for bit; with STG (a
    perturbed call of its own each step) too."""
    for name in ("ltx2", "ltx2_i2v"):
        calls, raw, seen, module = ltx2_calls(name, stg=1.0)
        (high, _), (low, _) = calls[:2]
        assert low["audio_hidden_states"] is high["audio_hidden_states"]
        audio_t = high["audio_timestep"] if name == "ltx2_i2v" else high["timestep"]
        assert torch.equal(low["audio_timestep"], audio_t)
        assert torch.equal(low["audio_sigma"], high["sigma"])
        t = float(high["sigma"][0]) / 1000
        expected = torch.full((2,), 1000 * t / (t + 2 * (1 - t)), dtype=F64)
        close(low["sigma"].to(F64), expected)
        assert (low["num_frames"], low["height"], low["width"]) == (3, 8, 8)
        coords = module.rope.prepare_video_coords(2, 3, 8, 8, torch.device("cpu"), fps=25.0)
        assert torch.equal(low["video_coords"], coords.to(low["video_coords"].dtype))
        assert len(seen) == len(raw) == 2 * len(calls[0::2])  # (low, guided) after each high
        for out, high_out in zip(seen[1::2], raw[0::2], strict=True):
            assert torch.equal(out[1], high_out[1])  # the audio prediction: the high call's
    pipe = tiny_ltx2_pipeline()
    apply_upsample_guidance(pipe, (2, 2, 2), 1.0)
    rec = ForwardRecorder(pipe.transformer)
    with pytest.raises(ValueError, match=r"LTX-2 takes spatial factors only: .* its audio spans "
                                         r"the video's duration"):  # fmt: skip
        pipe(**ltx2_kwargs(height=32, width=32, num_frames=7))
    assert rec.calls == []


# ---------------------------------------------------------------------- errors of a bare call
def test_time_layouts_of_the_wrong_shape_are_refused():
    """A bare transformer (guided_denoiser): a per-token timestep of the wrong length, a
    per-frame one of the wrong frame count, and video_coords without the pipeline's size."""
    pipe = tiny_wan_ti2v_pipeline(image=False)
    pipe.scheduler.set_timesteps(2)
    guided = guided_denoiser(pipe.transformer, pipe.scheduler, (1, 2, 2), 1.0)
    x = torch.randn(1, 4, 3, 16, 16)
    text = torch.randn(1, 8, 32)
    with pytest.raises(ValueError, match=r"a per-token timestep must have shape \(batch, 192\): "
                                         r"one time per token of the \(3, 8, 8\) patch grid; got "
                                         r"\(1, 190\)"):  # fmt: skip
        guided(x, torch.full((1, 190), 999.0), text)
    pipe = tiny_skyreels_pipeline()
    pipe.scheduler.set_timesteps(2)
    guided = guided_denoiser(pipe.transformer, pipe.scheduler, (1, 2, 2), 1.0)
    with pytest.raises(ValueError, match=r"a per-frame timestep must have shape \(batch, 3\): one "
                                         r"time per latent frame; got \(1, 4\)"):  # fmt: skip
        guided(x, torch.full((1, 4), 999), text, enable_diffusion_forcing=True, fps=[1])
    pipe = tiny_ltx_variant_pipeline(kind="condition")
    pipe.scheduler.set_timesteps(2)
    guided = guided_denoiser(pipe.transformer, pipe.scheduler, (1, 2, 2), 1.0)
    with pytest.raises(ValueError, match=r"video_coords need the pipeline's requested height and "
                                         r"width"):  # fmt: skip
        guided(torch.randn(1, 64, 8), text, torch.full((1, 64), 999.0),
               torch.ones(1, 8), video_coords=torch.zeros(1, 3, 64))  # fmt: skip
