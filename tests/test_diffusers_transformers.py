"""The diffusers adapter on transformer pipelines, against references from docs/maths.md.

For every family (tiny random models built from configs, real diffusers pipelines):

- ``scale=0`` is bit-identical to the plain pipeline, and ``remove`` restores it bit for bit;
- each guided transformer call equals the guidance written in the family's own parameterisation
  (flow velocity §7, ε with a learned variance §4, v §5), from the recorded high- and
  low-resolution calls, with layouts unpacked here by hand (reshape/permute);
- the low call gets the matched time and the right position ids, rotary embeddings or size
  micro-conditioning;
- exactly one low-resolution call per transformer call, whatever the CFG batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from functools import partial

import numpy as np
import pytest
import torch
from diffusers_image_variants import (
    HIDREAM_TRAINED,
    HUNYUANIMAGE_TRAINED,
    QWEN21_TRAINED,
    call_kwargs,
    hidream_call_kwargs,
    hunyuanimage_call_kwargs,
    mask_picture,
    picture,
    qwenimage21_call_kwargs,
    tiny_chroma_img2img_pipeline,
    tiny_cogview4_control_pipeline,
    tiny_flux_control_pipeline,
    tiny_flux_controlnet_pipeline,
    tiny_flux_fill_pipeline,
    tiny_hidream_pipeline,
    tiny_hunyuanimage_pipeline,
    tiny_qwen_edit_pipeline,
    tiny_qwenimage21_pipeline,
    tiny_qwenimage_controlnet_pipeline,
    tiny_sd3_controlnet_pipeline,
    tiny_sd3_inpaint_pipeline,
    variant,
)
from diffusers_models import ForwardRecorder, OutputRecorder
from diffusers_transformers import (
    AURAFLOW_TRAINED,
    CHROMA_TRAINED,
    COGVIDEOX_TRAINED,
    COGVIDEOX_TRAINED_FRAMES,
    COGVIEW4_TRAINED,
    FLUX2_TRAINED,
    FLUX_TRAINED,
    HUNYUAN_TRAINED,
    HUNYUAN_TRAINED_FRAMES,
    LTX_TRAINED,
    LTX_TRAINED_FRAMES,
    LUMINA2_TRAINED,
    MOCHI_TRAINED,
    MOCHI_TRAINED_FRAMES,
    PIXART_ALPHA_MICRO_TRAINED,
    PIXART_TRAINED,
    QWEN_TRAINED,
    SANA_TRAINED,
    SANA_VIDEO_TRAINED,
    SANA_VIDEO_TRAINED_FRAMES,
    SD3_TRAINED,
    SEQ,
    TEXT_DIM,
    WAN_TRAINED,
    WAN_TRAINED_FRAMES,
    auraflow_call_kwargs,
    chroma_call_kwargs,
    cogvideox_call_kwargs,
    cogview4_call_kwargs,
    flux2_call_kwargs,
    flux_call_kwargs,
    hunyuan_video_call_kwargs,
    ltx_call_kwargs,
    lumina2_call_kwargs,
    mochi_call_kwargs,
    pixart_call_kwargs,
    pixel_frames,
    qwenimage_call_kwargs,
    sana_call_kwargs,
    sana_video_call_kwargs,
    sd3_call_kwargs,
    tiny_auraflow_pipeline,
    tiny_chroma_pipeline,
    tiny_cogvideox_pipeline,
    tiny_cogview4_pipeline,
    tiny_flux2_pipeline,
    tiny_flux_pipeline,
    tiny_hunyuan_video_pipeline,
    tiny_ltx_pipeline,
    tiny_lumina2_pipeline,
    tiny_mochi_pipeline,
    tiny_pixart_alpha_pipeline,
    tiny_pixart_sigma_pipeline,
    tiny_qwenimage_pipeline,
    tiny_sana_pipeline,
    tiny_sana_video_pipeline,
    tiny_sd3_pipeline,
    tiny_wan22_pipeline,
    tiny_wan_pipeline,
    wan_call_kwargs,
)
from ug_core.adapters.diffusers import (
    apply_upsample_guidance,
    guided_denoiser,
    is_upsample_guided,
    remove_upsample_guidance,
)

import ug_core.guidance as guidance_module

F64 = torch.float64


# ---------------------------------------------------------------------- layouts, by hand
def unpack_2x2(tokens: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Flux-style packed tokens (B, rows*cols, 4C) -> latent grid (B, C, 2 rows, 2 cols)."""
    b, n, c4 = tokens.shape
    x = tokens.reshape(b, rows, cols, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c4 // 4, 2 * rows, 2 * cols)


@dataclass
class Case:
    """One family: how to build it, call it at 2x, and read its calls."""

    build: object
    kwargs: object
    size: dict
    factors: tuple
    form: str  # "eps_learned", "v", "flow", "flow_reversed" (1 − σ, x0 − ε), "flow_negated"
    flow_scale: float = 1000.0  # model time per unit of sigma (flow forms)
    packed: bool = False  # Flux-style 2x2 packed tokens
    frames_first: bool = False  # CogVideoX (B, F, C, H, W)
    ltx: bool = False  # LTX packed (B, F*H*W, C)
    denoisers: tuple = ("transformer",)
    extra: dict = field(default_factory=dict)
    tokens: bool = False  # unpatched row-major tokens (B, H*W, C) (Qwen-Image 2.1)
    sample_arg: str = "hidden_states"
    time_arg: str = "timestep"
    target: object = None  # (sample, named) -> the target's part (reference tokens dropped)
    sigma: object = None  # (model time, pipe) -> σ, where it is not the time over flow_scale
    low_time: object = None  # (σ', pipe) -> the low call's model time, likewise
    folded_mask: int = 0  # s: the last s² input channels are a mask of s×s sub-pixels (Fill)

    def grid(self, sample: torch.Tensor, named: dict) -> torch.Tensor:
        """A call's sample or output as (B, C, *grid), float64."""
        if self.target is not None:
            sample = self.target(sample, named)
        if self.packed or self.tokens:
            n = sample.shape[1]
            h, w = self.size["height"], self.size["width"]
            rows = math.isqrt(n * h // w)
            if self.tokens:
                return sample.transpose(1, 2).reshape(sample.shape[0], -1, rows, n // rows).to(F64)
            return unpack_2x2(sample, rows, n // rows).to(F64)
        if self.ltx:
            f, h, w = named["num_frames"], named["height"], named["width"]
            b, _, c = sample.shape
            return sample.reshape(b, f, h, w, c).permute(0, 4, 1, 2, 3).to(F64)
        if self.frames_first:
            return sample.transpose(1, 2).to(F64)
        return sample.to(F64)


def image(size):
    return dict(height=2 * size, width=2 * size)


def video(size, frames, temporal):
    latent = (frames - 1) // temporal + 1
    return dict(height=2 * size, width=2 * size, num_frames=pixel_frames(2 * latent, temporal))


CASES = {
    "sd3": Case(tiny_sd3_pipeline, sd3_call_kwargs, image(SD3_TRAINED), (2, 2), "flow"),
    "auraflow": Case(
        tiny_auraflow_pipeline, auraflow_call_kwargs, image(AURAFLOW_TRAINED), (2, 2), "flow", 1.0
    ),
    "flux_dev_dynamic_shift": Case(
        tiny_flux_pipeline, flux_call_kwargs, image(FLUX_TRAINED), (2, 2), "flow", 1.0, True
    ),
    "flux_true_cfg": Case(
        tiny_flux_pipeline,
        lambda **kw: flux_call_kwargs(**kw, true_cfg=4.0),
        image(FLUX_TRAINED),
        (2, 2),
        "flow",
        1.0,
        True,
    ),
    "chroma": Case(
        tiny_chroma_pipeline, chroma_call_kwargs, image(CHROMA_TRAINED), (2, 2), "flow", 1.0, True
    ),
    "flux2": Case(
        tiny_flux2_pipeline, flux2_call_kwargs, image(FLUX2_TRAINED), (2, 2), "flow", 1.0, True
    ),
    "qwenimage": Case(
        tiny_qwenimage_pipeline,
        qwenimage_call_kwargs,
        image(QWEN_TRAINED),
        (2, 2),
        "flow",
        1.0,
        True,
    ),  # fmt: skip
    "pixart_sigma_binning": Case(
        tiny_pixart_sigma_pipeline,
        pixart_call_kwargs,
        image(PIXART_TRAINED),
        (2, 2),
        "eps_learned",
    ),  # fmt: skip
    "pixart_alpha_micro": Case(
        tiny_pixart_alpha_pipeline,
        lambda **kw: pixart_call_kwargs(**kw, binning=False),
        image(PIXART_ALPHA_MICRO_TRAINED),
        (2, 2),
        "eps_learned",
    ),
    "sana_binning": Case(tiny_sana_pipeline, sana_call_kwargs, image(SANA_TRAINED), (2, 2), "flow"),
    "lumina2": Case(
        tiny_lumina2_pipeline,
        lumina2_call_kwargs,
        image(LUMINA2_TRAINED),
        (2, 2),
        "flow_reversed",
        1.0,
    ),  # fmt: skip
    "wan21": Case(
        tiny_wan_pipeline,
        wan_call_kwargs,
        video(WAN_TRAINED, WAN_TRAINED_FRAMES, 4),
        (2, 2, 2),
        "flow",
    ),  # fmt: skip
    "wan22_two_transformers": Case(
        tiny_wan22_pipeline,
        wan_call_kwargs,
        video(WAN_TRAINED, WAN_TRAINED_FRAMES, 4),
        (2, 2, 2),
        "flow",
        denoisers=("transformer", "transformer_2"),
    ),  # fmt: skip
    "mochi_inverted_sigmas": Case(
        tiny_mochi_pipeline,
        mochi_call_kwargs,
        video(MOCHI_TRAINED, MOCHI_TRAINED_FRAMES, 6),
        (2, 2, 2),
        "flow_reversed",
    ),  # fmt: skip
    "mochi_plain_flow": Case(
        lambda: tiny_mochi_pipeline(invert_sigmas=False),
        mochi_call_kwargs,
        video(MOCHI_TRAINED, MOCHI_TRAINED_FRAMES, 6),
        (2, 2, 2),
        "flow",
    ),  # fmt: skip
    "sana_video": Case(
        tiny_sana_video_pipeline,
        sana_video_call_kwargs,
        video(SANA_VIDEO_TRAINED, SANA_VIDEO_TRAINED_FRAMES, 4),
        (2, 2, 2),
        "flow",
    ),  # fmt: skip
    "hunyuan_video_true_cfg": Case(
        tiny_hunyuan_video_pipeline,
        lambda **kw: hunyuan_video_call_kwargs(**kw, true_cfg=4.0),
        video(HUNYUAN_TRAINED, HUNYUAN_TRAINED_FRAMES, 4),
        (1, 2, 2),
        "flow",
    ),
    "cogvideox": Case(
        tiny_cogvideox_pipeline,
        cogvideox_call_kwargs,
        video(COGVIDEOX_TRAINED, COGVIDEOX_TRAINED_FRAMES, 4),
        (2, 2, 2),
        "v",
        frames_first=True,
    ),  # fmt: skip
    "ltx": Case(
        tiny_ltx_pipeline,
        ltx_call_kwargs,
        video(LTX_TRAINED, LTX_TRAINED_FRAMES, 8),
        (2, 2, 2),
        "flow",
        ltx=True,
    ),  # fmt: skip
}


# ---------------------------------------------------------------------- conditioning variants
def ids_target(sample: torch.Tensor, named: dict) -> torch.Tensor:
    """The target's tokens of a Flux-style call: ``img_ids[..., 0] == 0`` (Kontext's and Flux.2's
    references have 1, 10, 20, ...); an output as long as the target is the target."""
    ids = named["img_ids"]
    keep = (ids[0] if ids.ndim == 3 else ids)[:, 0] == 0
    return sample if sample.shape[1] == int(keep.sum()) else sample[:, keep]


def qwen_target(sample: torch.Tensor, named: dict) -> torch.Tensor:
    """Qwen-Image's target: the first ``img_shapes`` entry's tokens."""
    return sample[:, : math.prod(named["img_shapes"][0][0])]


def qwen21_target(sample: torch.Tensor, named: dict) -> torch.Tensor:
    """Qwen-Image 2.1's target: the last ``img_shapes`` entry's tokens, last in the sequence."""
    return sample[:, -math.prod(named["img_shapes"][0][-1]) :]


def conditioned(base: str, condition, **fixed):
    """Call arguments of the family ``base`` plus ``condition(height, width)``'s."""

    def kwargs(**kw):
        kw = {**fixed, **kw}
        return call_kwargs(base, condition(kw["height"], kw["width"]), **kw)

    return kwargs


def kontext(h, w):
    return dict(image=picture(FLUX_TRAINED, FLUX_TRAINED), max_area=h * w, _auto_resize=False)


def references(h, w):  # two references, of different sizes, neither the output's
    return dict(image=[picture(FLUX2_TRAINED, FLUX2_TRAINED), picture(64, 128, seed=1)])


def img2img(h, w):
    return dict(image=picture(h, w), strength=0.7)


def inpaint(h, w):
    return dict(image=picture(h, w), mask_image=mask_picture(h, w), strength=0.7)


def fill(h, w):
    return dict(image=picture(h, w), mask_image=mask_picture(h, w))


def control(h, w):
    return dict(control_image=picture(h, w))


def control_inpaint(h, w):
    return dict(control_image=picture(h, w), control_mask=mask_picture(h, w))


def klein_kv(**kw):
    out = call_kwargs("flux2", dict(image=[picture(FLUX2_TRAINED, FLUX2_TRAINED)]), steps=3, **kw)
    del out["guidance_scale"]  # Klein-KV is distilled: no guidance argument
    return out


def klein(**kw):
    negative = torch.randn(1, SEQ, TEXT_DIM, generator=torch.Generator().manual_seed(5))
    extra = dict(image=[picture(FLUX2_TRAINED, FLUX2_TRAINED)], negative_prompt_embeds=negative)
    return call_kwargs("flux2", extra, **kw)


def hidream(seed=0):
    """HiDream scales every request to the area of ``default_sample_size·vae_scale_factor``
    squared: set to twice the trained size, so that the 2x request is sampled as asked."""
    pipe = tiny_hidream_pipeline(seed)
    pipe.default_sample_size = 2 * HIDREAM_TRAINED // 8
    return pipe


COGVIEW4_SEQ = (2 * COGVIEW4_TRAINED // 8 // 2) ** 2  # image tokens at 2x


def cogview4_mu(tokens: int) -> float:
    """The pipeline's shift for ``tokens`` (its calculate_shift, the tiny scheduler's config)."""
    return math.sqrt(tokens / 4) * 0.75 + 0.25


def cogview4_sigma(t: torch.Tensor, pipe) -> torch.Tensor:
    """σ of the unshifted step ``t``: the linear shift with the 2x request's μ."""
    s, mu = t / 1000, cogview4_mu(COGVIEW4_SEQ)
    return mu * s / (1 + (mu - 1) * s)


def cogview4_low_time(sigma: torch.Tensor, pipe) -> torch.Tensor:
    """The step native sampling at the trained size (4x fewer tokens) pairs with ``sigma``."""
    mu = cogview4_mu(COGVIEW4_SEQ // 4)
    return 1000 * sigma / (sigma + mu * (1 - sigma))


FLUX2_WIDE = dict(height=2 * FLUX2_TRAINED, width=3 * FLUX2_TRAINED)  # 2x of a 128x192 image

CASES.update({
    "flux_kontext": Case(partial(variant, "FluxKontextPipeline", tiny_flux_pipeline),
                         conditioned("flux", kontext), image(FLUX_TRAINED), (2, 2), "flow", 1.0,
                         True, target=ids_target),
    "flux_kontext_two_per_prompt_non_square": Case(
        partial(variant, "FluxKontextPipeline", tiny_flux_pipeline),
        conditioned("flux", lambda h, w: {**kontext(h, w), "num_images_per_prompt": 2}),
        dict(height=2 * FLUX_TRAINED, width=4 * FLUX_TRAINED), (2, 2), "flow", 1.0, True,
        target=ids_target),
    "flux_kontext_1.5x_true_cfg": Case(
        partial(variant, "FluxKontextPipeline", tiny_flux_pipeline),
        conditioned("flux", kontext, true_cfg=4.0), dict(height=48, width=48), (1.5, 1.5),
        "flow", 1.0, True, target=ids_target),
    "flux2_two_references_non_square": Case(tiny_flux2_pipeline, conditioned("flux2", references),
                                            FLUX2_WIDE, (2, 2), "flow", 1.0, True,
                                            target=ids_target),
    "flux2_klein_references_cfg": Case(
        partial(variant, "Flux2KleinPipeline", tiny_flux2_pipeline, is_distilled=False), klein,
        image(FLUX2_TRAINED), (2, 2), "flow", 1.0, True, target=ids_target),
    "flux2_klein_kv_cache": Case(
        partial(variant, "Flux2KleinKVPipeline", tiny_flux2_pipeline, is_distilled=True),
        klein_kv, image(FLUX2_TRAINED), (2, 2), "flow", 1.0, True, target=ids_target),
    "qwen_edit_true_cfg": Case(tiny_qwen_edit_pipeline,
                               conditioned("qwenimage", lambda h, w: dict(image=picture(96, 160))),
                               image(QWEN_TRAINED), (2, 2), "flow", 1.0, True, target=qwen_target),
    "qwen_edit_plus_two_images_non_square": Case(
        partial(tiny_qwen_edit_pipeline, plus=True),
        conditioned("qwenimage", lambda h, w: dict(image=[picture(128, 128), picture(64, 128)],
                                                   num_images_per_prompt=2)),
        dict(height=2 * QWEN_TRAINED, width=QWEN_TRAINED), (2, 2), "flow", 1.0, True,
        target=qwen_target),
    "qwenimage21_kv_cache_true_cfg": Case(tiny_qwenimage21_pipeline, qwenimage21_call_kwargs,
                                          image(QWEN21_TRAINED), (2, 2), "flow", 1.0,
                                          tokens=True, target=qwen21_target),
    "sd3_controlnet": Case(tiny_sd3_controlnet_pipeline, conditioned("sd3", control),
                           image(SD3_TRAINED), (2, 2), "flow"),
    "sd3_controlnet_inpainting": Case(partial(tiny_sd3_controlnet_pipeline, inpainting=True),
                                      conditioned("sd3", control_inpaint), image(SD3_TRAINED),
                                      (2, 2), "flow"),
    "flux_controlnet": Case(tiny_flux_controlnet_pipeline, conditioned("flux", control),
                            image(FLUX_TRAINED), (2, 2), "flow", 1.0, True),
    "flux_fill": Case(tiny_flux_fill_pipeline, conditioned("flux", fill), image(FLUX_TRAINED),
                      (2, 2), "flow", 1.0, True, folded_mask=2),
    "sd3_img2img": Case(partial(variant, "StableDiffusion3Img2ImgPipeline", tiny_sd3_pipeline),
                        conditioned("sd3", img2img, steps=4), image(SD3_TRAINED), (2, 2), "flow"),
    "sd3_inpaint": Case(tiny_sd3_inpaint_pipeline, conditioned("sd3", inpaint, steps=4),
                        image(SD3_TRAINED), (2, 2), "flow"),
    "sd3_inpaint_33_channels": Case(partial(tiny_sd3_inpaint_pipeline, masked_channels=True),
                                    conditioned("sd3", inpaint, steps=4), image(SD3_TRAINED),
                                    (2, 2), "flow"),
    "flux_img2img": Case(partial(variant, "FluxImg2ImgPipeline", tiny_flux_pipeline),
                         conditioned("flux", img2img, steps=4), image(FLUX_TRAINED), (2, 2),
                         "flow", 1.0, True),
    "flux_inpaint": Case(partial(variant, "FluxInpaintPipeline", tiny_flux_pipeline),
                         conditioned("flux", inpaint, steps=4), image(FLUX_TRAINED), (2, 2),
                         "flow", 1.0, True),
    "qwenimage_img2img": Case(partial(variant, "QwenImageImg2ImgPipeline", tiny_qwenimage_pipeline),
                              conditioned("qwenimage", img2img, steps=4), image(QWEN_TRAINED),
                              (2, 2), "flow", 1.0, True),
    "qwenimage_inpaint": Case(partial(variant, "QwenImageInpaintPipeline", tiny_qwenimage_pipeline),
                              conditioned("qwenimage", inpaint, steps=4), image(QWEN_TRAINED),
                              (2, 2), "flow", 1.0, True),
    "flux_control": Case(tiny_flux_control_pipeline, conditioned("flux", control),
                         image(FLUX_TRAINED), (2, 2), "flow", 1.0, True),
    "cogview4_control": Case(tiny_cogview4_control_pipeline,
                             lambda **kw: {**cogview4_call_kwargs(**{"steps": 3, **kw}),
                                           **control(kw["height"], kw["width"])},
                             image(COGVIEW4_TRAINED), (2, 2), "flow", sigma=cogview4_sigma,
                             low_time=cogview4_low_time),
    "chroma_img2img": Case(tiny_chroma_img2img_pipeline, conditioned("chroma", img2img, steps=4),
                           image(CHROMA_TRAINED), (2, 2), "flow", 1.0, True),
    "qwenimage_controlnet": Case(tiny_qwenimage_controlnet_pipeline,
                                 conditioned("qwenimage", control), image(QWEN_TRAINED), (2, 2),
                                 "flow", 1.0, True),
    "hunyuanimage": Case(tiny_hunyuanimage_pipeline, hunyuanimage_call_kwargs,
                         image(HUNYUANIMAGE_TRAINED), (2, 2), "flow"),
    "hidream": Case(hidream, hidream_call_kwargs, image(HIDREAM_TRAINED), (2, 2), "flow_negated",
                    time_arg="timesteps"),
    "cogview4_shifted_sigma": Case(tiny_cogview4_pipeline, partial(cogview4_call_kwargs, steps=3),
                                   image(COGVIEW4_TRAINED), (2, 2), "flow",
                                   sigma=cogview4_sigma, low_time=cogview4_low_time),
})  # fmt: skip


def run(case: Case, pipe, **overrides):
    """One pipeline call at 2x, output as latents (the global generator seeded: SD3's
    ControlNet pipelines sample the control image's latents from it)."""
    torch.manual_seed(0)
    return pipe(**case.kwargs(**{**case.size, **overrides}))[0]


# ---------------------------------------------------------------------- the references
def D(x: torch.Tensor, f: tuple) -> torch.Tensor:
    """Block mean over the trailing len(f) axes, by reshape and mean."""
    lead = x.shape[: x.ndim - len(f)]
    shape, axes = list(lead), []
    for n, m in zip(x.shape[x.ndim - len(f) :], f, strict=True):
        shape += [n // m, m]
        axes.append(len(shape) - 1)
    return x.reshape(shape).mean(dim=axes)


def U(y: torch.Tensor, f: tuple) -> torch.Tensor:
    """Nearest upsampling by repeat_interleave."""
    for axis, m in zip(range(y.ndim - len(f), y.ndim), f, strict=True):
        y = y.repeat_interleave(m, dim=axis)
    return y


def close(got: torch.Tensor, expected: torch.Tensor, extra: float = 0.0) -> None:
    """float32 model arithmetic against float64 references: 2e-5 of the largest magnitude
    (plus ``extra``, where the reference divides by a small σ)."""
    tol = 2e-5 * max(1.0, float(expected.abs().max())) + extra
    torch.testing.assert_close(got, expected, rtol=2e-5, atol=tol)


def per(v, like):
    """A per-sample scalar tensor shaped to broadcast against ``like``."""
    v = torch.as_tensor(v, dtype=F64).reshape(-1)
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def nearest_tau(alphas, t: int, k: int) -> int:
    """The paper's appendix A (m**2 written as k)."""
    a = np.asarray(alphas, dtype=np.float64)
    log_snr = np.log(a / (1 - a + 1e-300) + 1e-300)
    return int(np.argmin(np.abs(log_snr[t] + np.log(k) - log_snr)))


def pixel_mean(mask: torch.Tensor, s: int, Dn) -> torch.Tensor:
    """A mask folded as s×s sub-pixel channels (B, s², h, w) (Flux Fill's: channel sy·s + sx
    holds pixel (y·s + sy, x·s + sx)), unfolded to pixels, area-averaged by ``Dn`` and folded
    back, by reshape and permute."""
    b, _, h, w = mask.shape
    pixels = mask.reshape(b, s, s, h, w).permute(0, 3, 1, 4, 2).reshape(b, h * s, w * s)
    low = Dn(pixels)
    hl, wl = low.shape[-2] // s, low.shape[-1] // s
    return low.reshape(b, hl, s, wl, s).permute(0, 2, 4, 1, 3).reshape(b, s * s, hl, wl)


def operators(factors: tuple):
    """D and U by hand: block means and repetition for integer factors, the dense area-mean
    matrices of :mod:`fractional_reference` for ratios."""
    if all(float(f).is_integer() for f in factors):
        f = tuple(int(v) for v in factors)
        return (lambda x: D(x, f)), (lambda y: U(y, f))
    import fractional_reference as ref

    f = tuple(Fraction(v) for v in factors)
    return partial(ref.D, factors=f), partial(ref.U, factors=f)


def reference(case: Case, pipe, high, low, w: float = 1.0, run_zeta: dict | None = None):
    """The guided output of one call, from its recorded high and low calls (docs/maths.md).

    Also checks the low call's input and time. Returns (expected grid, the number of noisy
    channels, an extra absolute tolerance: the flow references divide float32 terms by σ). For
    a ratio the low input is ``c·(D[x] + σ·ζ)``: ζ is read from the first call and ``run_zeta``
    (one dict per run) checks that every later call of the run uses the same ζ.
    """
    (hn, h_out), (ln, l_out) = high, low
    f, k = case.factors, float(math.prod(Fraction(v) for v in case.factors))
    Dn, Un = operators(f)
    x, x_l = case.grid(hn[case.sample_arg], hn), case.grid(ln[case.sample_arg], ln)
    p, p_l = case.grid(h_out, hn), case.grid(l_out, ln)
    t = torch.as_tensor(hn[case.time_arg], dtype=F64)
    t_l = torch.as_tensor(ln[case.time_arg], dtype=F64)
    channels = p.shape[1]  # the noisy ones: the input may carry conditioning channels after them
    if case.form in ("flow", "flow_reversed", "flow_negated"):
        sign = 1.0 if case.form == "flow" else -1.0  # the negated forms predict x0 − ε
        sigma = case.sigma(t, pipe) if case.sigma else t / case.flow_scale
        if case.form == "flow_reversed":
            sigma = 1 - sigma
        v, v_l = sign * p, sign * p_l
        c = 1 / ((1 - sigma) + sigma / math.sqrt(k))
        sigma_low = sigma / (sigma + math.sqrt(k) * (1 - sigma))  # docs/maths.md §7
        if case.low_time:
            expected_low_t = case.low_time(sigma_low, pipe)
        else:
            expected_low_t = case.flow_scale * (
                (1 - sigma_low) if case.form == "flow_reversed" else sigma_low
            )
        torch.testing.assert_close(
            t_l.reshape(-1),
            expected_low_t.reshape(-1).expand(x.shape[0]),
            rtol=1e-5,
            atol=1e-6 * case.flow_scale,
        )
        x_noisy, folded = x[:, :channels], case.folded_mask**2
        low_in = Dn(x_noisy)
        if not all(float(v).is_integer() for v in f):  # topped up: c·(D[x] + σ·ζ), one ζ a run
            zeta = (x_l[:, :channels].double() / per(c, x) - low_in) / per(sigma, x)
            run_zeta = {} if run_zeta is None else run_zeta
            close(zeta, run_zeta.setdefault("zeta", zeta), 1e-4)
            assert 0.1 < float(zeta.std()) < 0.7  # N(0, I/k − DDᵀ): variance below 1/k
            low_in = low_in + per(sigma, x) * run_zeta["zeta"]
        close(x_l[:, :channels], per(c, x) * low_in, 1e-6)
        if x.shape[1] > channels + folded:  # clean conditioning channels: area-averaged
            end = x.shape[1] - folded
            close(x_l[:, channels:end], Dn(x[:, channels:end]), 1e-6)
        if folded:  # a mask folded into sub-pixel channels: area-averaged in pixels
            close(x_l[:, -folded:], pixel_mean(x[:, -folded:], case.folded_mask, Dn), 1e-6)
        x0 = x_noisy - per(sigma, x) * v
        x0_low = x_l[:, :channels] - per(sigma_low, x_l) * v_l
        x0_new = x0 + w * Un(x0_low - Dn(x0))  # in x0 terms the top-up term is 0
        extra = 1e-6 * float(x.abs().max()) / float(sigma.min())  # float32 terms over σ
        return sign * (x_noisy - x0_new) / per(sigma, x), channels, extra
    channels = x.shape[1]
    alphas = pipe.scheduler.alphas_cumprod.to(F64)
    ti = int(t.reshape(-1)[0])
    a_bar = float(alphas[ti])
    power = a_bar + (1 - a_bar) / k
    assert int(t_l.reshape(-1)[0]) == nearest_tau(alphas, ti, k)
    close(x_l, Dn(x) / math.sqrt(power))
    if case.form == "eps_learned":  # Eq. 10 on the mean half; the variance half is kept
        eps, eps_l = p[:, :channels], p_l[:, :channels]
        return eps + w * Un(eps_l / math.sqrt(k) - Dn(eps)), channels, 0.0
    a, s = math.sqrt(a_bar), math.sqrt(1 - a_bar)  # v-prediction, docs/maths.md §5
    a_l, s_l = a / math.sqrt(power), s / math.sqrt(power * k)
    x0 = a * x - s * p
    x0_low = (a_l * x_l - s_l * p_l) / (a_l**2 + s_l**2)
    x0_new = x0 + w * Un(x0_low - Dn(x0))
    eps_new = (x - a * x0_new) / s
    return a * eps_new - s * x0_new, channels, 0.0


class Outputs(OutputRecorder):
    """The outputs the caller sees, as :class:`OutputRecorder`; a list output (Z-Image's) too."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.outputs = []

        def hook(mod, args, kwargs, out):
            sample = out if isinstance(out, torch.Tensor) else out[0]
            self.outputs.append(sample if isinstance(sample, list) else sample.detach().clone())

        self.handle = module.register_forward_hook(hook, with_kwargs=True)


def recorded(case: Case, pipe, w: float):
    """Run at 2x with UG; return, per denoiser, (high, low, guided) triples and the pipe.

    The calls alternate high, low (the low call runs in the high call's hook); the outputs the
    caller sees alternate low, guided.
    """
    apply_upsample_guidance(pipe, case.factors, w)
    recs = {n: (ForwardRecorder(getattr(pipe, n)), Outputs(getattr(pipe, n))) for n in
            case.denoisers}  # fmt: skip
    run(case, pipe)
    triples = {}
    k = math.prod(Fraction(v) for v in case.factors)
    for name, (rec, out) in recs.items():
        rec.close(), out.close()
        highs, lows, guided = rec.calls[0::2], rec.calls[1::2], out.outputs[1::2]
        triples[name] = list(zip(highs, lows, guided, strict=True))
        assert len(highs) == len(lows) == len(guided)  # one low call per transformer call
        for (hn, _), (ln, _) in zip(highs, lows, strict=True):
            x, x_l = case.grid(hn[case.sample_arg], hn), case.grid(ln[case.sample_arg], ln)
            assert x_l.shape[:2] == x.shape[:2]  # the whole batch, every channel
            assert x_l.numel() * k == x.numel()
    return triples


# ---------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", list(CASES))
def test_scale_zero_is_bit_identical_and_remove_restores(name):
    case = CASES[name]
    pipe = case.build()
    plain = run(case, pipe)
    apply_upsample_guidance(pipe, case.factors, 0.0)
    assert torch.equal(run(case, pipe), plain)
    apply_upsample_guidance(pipe, case.factors, 1.0)
    assert is_upsample_guided(pipe)
    guided = run(case, pipe)
    assert torch.isfinite(guided).all() and not torch.equal(guided, plain)
    remove_upsample_guidance(pipe)
    assert not is_upsample_guided(pipe)
    for n in case.denoisers:
        module = getattr(pipe, n)
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert "_upsample_guidance" not in module.__dict__
    assert "progress_bar" not in pipe.__dict__
    assert torch.equal(run(case, pipe), plain)


@pytest.mark.parametrize("name", list(CASES))
def test_guided_calls_equal_the_hand_written_reference(name):
    case = CASES[name]
    pipe = case.build()
    w = 1.3
    triples = recorded(case, pipe, w)
    assert all(triples.values()), "every denoiser made guided calls"
    run_zeta: dict = {}  # a ratio's ζ: one for the whole run, shared by its denoisers
    for calls in triples.values():
        for high, low, guided in calls:
            expected, channels, extra = reference(case, pipe, high, low, w, run_zeta)
            got = case.grid(guided, high[0])
            close(got[:, :channels], expected, extra)
            if got.shape[1] > channels:  # learned variance: kept bit for bit
                raw = case.grid(high[1], high[0])
                assert torch.equal(got[:, channels:], raw[:, channels:])


def test_flux_img_ids_txt_ids_and_guidance_of_the_low_call():
    case = CASES["flux_dev_dynamic_shift"]
    pipe = case.build()
    assert pipe.scheduler.config.use_dynamic_shifting
    (high, low, _), *_ = recorded(case, pipe, 1.0)["transformer"]
    hn, ln = high[0], low[0]
    rows, cols = case.size["height"] // 8, case.size["width"] // 8  # low patch grid
    ids = torch.zeros(rows, cols, 3)
    ids[..., 1] += torch.arange(rows)[:, None]
    ids[..., 2] += torch.arange(cols)[None, :]
    assert torch.equal(ln["img_ids"], ids.reshape(-1, 3).to(hn["img_ids"].dtype))
    assert ln["txt_ids"] is hn["txt_ids"] and ln["guidance"] is hn["guidance"]
    assert ln["encoder_hidden_states"] is hn["encoder_hidden_states"]


def test_flux2_ids_and_qwen_img_shapes_and_chroma_mask_of_the_low_call():
    case = CASES["flux2"]
    (high, low, _), *_ = recorded(case, case.build(), 1.0)["transformer"]
    b = high[0]["hidden_states"].shape[0]
    rows, cols = FLUX2_TRAINED // 16, FLUX2_TRAINED // 16  # VAE 8, packing 2, at half of 2x
    ids = torch.cartesian_prod(torch.arange(1), torch.arange(rows), torch.arange(cols),
                               torch.arange(1))  # fmt: skip
    assert torch.equal(low[0]["img_ids"], ids.expand(b, -1, -1).to(low[0]["img_ids"].dtype))
    case = CASES["qwenimage"]
    (high, low, _), *_ = recorded(case, case.build(), 1.0)["transformer"]
    rows = QWEN_TRAINED // 16
    assert high[0]["img_shapes"] == [[(1, 2 * rows, 2 * rows)]]
    assert low[0]["img_shapes"] == [[(1, rows, rows)]]
    case = CASES["chroma"]
    (high, low, _), *_ = recorded(case, case.build(), 1.0)["transformer"]
    mask, low_mask = high[0]["attention_mask"], low[0]["attention_mask"]
    tokens = high[0]["hidden_states"].shape[1]
    text = mask[:, :-tokens]
    expected = torch.cat([text, torch.ones(1, tokens // 4, dtype=mask.dtype)], dim=1)
    assert torch.equal(low_mask, expected)


def test_cogvideox_rotary_embeddings_of_the_low_grid():
    case = CASES["cogvideox"]
    pipe = case.build()
    (high, low, _), *_ = recorded(case, pipe, 1.0)["transformer"]
    frames = low[0]["hidden_states"].shape[1]
    h, w = case.size["height"] // 2, case.size["width"] // 2  # pixels of the low grid
    cos, sin = pipe._prepare_rotary_positional_embeddings(h, w, frames, torch.device("cpu"))
    got_cos, got_sin = low[0]["image_rotary_emb"]
    assert torch.equal(got_cos, cos) and torch.equal(got_sin, sin)
    assert got_cos.shape[0] * 8 == high[0]["image_rotary_emb"][0].shape[0]


def test_ltx_grid_arguments_and_rope_scale_of_the_low_call():
    case = CASES["ltx"]
    (high, low, _), *_ = recorded(case, case.build(), 1.0)["transformer"]
    for name in ("num_frames", "height", "width"):
        assert low[0][name] * 2 == high[0][name]
    assert low[0]["rope_interpolation_scale"] == high[0]["rope_interpolation_scale"]
    assert low[0]["encoder_attention_mask"] is high[0]["encoder_attention_mask"]


def test_pixart_alpha_micro_conditioning_describes_the_low_image():
    case = CASES["pixart_alpha_micro"]
    (high, low, _), *_ = recorded(case, case.build(), 1.0)["transformer"]
    hi, lo = high[0]["added_cond_kwargs"], low[0]["added_cond_kwargs"]
    assert torch.equal(lo["resolution"] * 2, hi["resolution"])
    assert torch.equal(lo["aspect_ratio"], hi["aspect_ratio"])
    pipe = case.build()
    apply_upsample_guidance(pipe, case.factors, 1.0, micro_conditioning="high")
    rec = ForwardRecorder(pipe.transformer)
    run(case, pipe)
    assert torch.equal(rec.calls[1][0]["added_cond_kwargs"]["resolution"], hi["resolution"])


def test_pixart_binning_default_samples_the_requested_size():
    """With use_resolution_binning left True, a 2x request is sampled at 2x (not at the bin)."""
    case = CASES["pixart_sigma_binning"]
    pipe = case.build()
    rec = ForwardRecorder(pipe.transformer)
    run(case, pipe, steps=1)
    assert rec.calls[0][0]["hidden_states"].shape[-1] == PIXART_TRAINED // 8  # plain: the bin
    rec.close()
    apply_upsample_guidance(pipe, case.factors, 1.0)
    rec = ForwardRecorder(pipe.transformer)
    latents = run(case, pipe, steps=1)
    assert rec.calls[0][0]["hidden_states"].shape[-1] == 2 * PIXART_TRAINED // 8
    assert rec.calls[1][0]["hidden_states"].shape[-1] == PIXART_TRAINED // 8
    assert latents.shape[-1] == 2 * PIXART_TRAINED // 8
    remove_upsample_guidance(pipe)
    assert "image_processor" in pipe.__dict__ and type(pipe.image_processor).__name__ == (
        "PixArtImageProcessor"
    )


def test_wan22_guides_both_transformers():
    case = CASES["wan22_two_transformers"]
    pipe = case.build()
    triples = recorded(case, pipe, 1.0)
    assert len(triples["transformer"]) >= 1 and len(triples["transformer_2"]) >= 1
    remove_upsample_guidance(pipe)
    assert not pipe.transformer._forward_hooks and not pipe.transformer_2._forward_hooks


def test_every_guided_call_gets_its_time_from_the_host(monkeypatch):
    """The scheduler clock gives every call's time on the host (so t is never read back),
    except a first step whose time is neither a view of the timesteps nor indexed yet (Sana
    scales t, and its DPM scheduler has no step index before its first step; the Flux ControlNet
    and Control pipelines divide t and set no begin index; the core then computes on the
    device, and the first step is always guided). The img2img and inpaint pipelines start
    mid-schedule: their begin index (or t's offset in the timesteps) gives every time."""
    seen = []
    prepare = guidance_module.UpsampleGuidance.prepare

    def spy(self, x, t, *, host_time=None):
        seen.append(host_time)
        return prepare(self, x, t, host_time=host_time)

    monkeypatch.setattr(guidance_module.UpsampleGuidance, "prepare", spy)
    for name, case in CASES.items():
        seen.clear()
        pipe = case.build()
        apply_upsample_guidance(pipe, case.factors, 1.0)
        run(case, pipe)
        assert seen, name
        unknown = [i for i, h in enumerate(seen) if h is None]
        first_unknown = name in ("sana_binning", "flux_controlnet", "flux_control")
        assert unknown == ([0] if first_unknown else []), (name, seen)


@pytest.mark.parametrize(
    ("name", "bad", "match"),
    [
        ("sd3", dict(height=68), r"height=68 gives a latent height of 34; the factor 2 x patch 2 "
                                 r"needs multiples of 4 .*: use height=64 or 72"),
        ("flux_dev_dynamic_shift", dict(width=68), r"width=68 gives a latent width of 34"),
        ("wan21", dict(num_frames=9), r"num_frames=9 gives 3 latent frames \(a temporal factor "
                                      r"counts latent frames\); the factor 2 needs multiples of 2"
                                      r" .*: use num_frames=5 or 13"),
        ("ltx", dict(height=96), r"height=96 gives a latent height of 3"),
        ("cogvideox", dict(width=72), r"width=72 gives a latent width of 9"),
        ("flux_kontext", dict(width=68), r"width=68 gives a latent width of 34; the factor 2 x "
                                         r"patch 2 needs multiples of 4 .*: use width=64 or 72"),
        ("flux_fill", dict(height=68), r"height=68 gives a latent height of 34"),
        ("sd3_img2img", dict(height=68), r"height=68 gives a latent height of 34"),
        ("qwenimage_inpaint", dict(width=272), r"width=272 gives a latent width of 34"),
        ("qwen_edit_true_cfg", dict(height=272), r"height=272 gives a latent height of 34"),
        ("qwenimage21_kv_cache_true_cfg", dict(width=288), r"width=288 gives a latent width of "
                                                           r"18; .*: use width=256 or 320"),
        ("cogview4_shifted_sigma", dict(height=264), r"height=264 gives a latent height of 33"),
        ("flux_kontext_1.5x_true_cfg", dict(width=56), r"width=56 gives a latent width of 28; "
                                                       r"the factor 3/2 x patch 2 needs multiples "
                                                       r"of 6 .*: use width=48 or 60"),
    ],
)  # fmt: skip
def test_a_bad_size_fails_before_any_model_call(name, bad, match):
    case = CASES[name]
    pipe = case.build()
    apply_upsample_guidance(pipe, case.factors, 1.0)
    models = [pipe.vae, *(getattr(pipe, n) for n in case.denoisers)]
    recs = [ForwardRecorder(m) for m in models if m is not None]  # Qwen-Image 2.1's tiny: no VAE
    with pytest.raises(ValueError, match=match):
        run(case, pipe, **bad)
    assert all(r.calls == [] for r in recs)


def test_guided_denoiser_wraps_a_bare_transformer_like_the_pipeline():
    """guided_denoiser on SD3's transformer in an own loop."""
    case = CASES["sd3"]
    pipe = case.build()
    kwargs = case.kwargs(**case.size, steps=3)
    latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(3))
    guided = guided_denoiser(pipe.transformer, pipe.scheduler, (2, 2), 1.0, eta=0.6)
    scheduler = pipe.scheduler
    scheduler.set_timesteps(3)
    embeds = torch.cat([kwargs["negative_prompt_embeds"], kwargs["prompt_embeds"]])
    pooled = torch.cat([kwargs["negative_pooled_prompt_embeds"], kwargs["pooled_prompt_embeds"]])
    x = latents
    for t in scheduler.timesteps:
        out = guided(
            torch.cat([x] * 2),
            timestep=t.expand(2),
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
        ).sample
        uncond, cond = out.chunk(2)
        x = scheduler.step(uncond + 5.0 * (cond - uncond), t, x).prev_sample
    apply_upsample_guidance(pipe, (2, 2), 1.0, eta=0.6)
    expected = pipe(**{**kwargs, "latents": latents})[0]
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)


def test_unsupported_transformers_get_a_clear_error():
    class MyTransformer2DModel(torch.nn.Module):
        pass

    pipe = tiny_sd3_pipeline()
    pipe.transformer = MyTransformer2DModel()
    with pytest.raises(TypeError, match=r"MyTransformer2DModel is not a supported "
                                        r"denoiser\. Supported families: UNet: "):  # fmt: skip
        apply_upsample_guidance(pipe)
    pipe = tiny_ltx_pipeline()
    with pytest.raises(ValueError, match=r"factors=\(2, 2, 2, 2\)|factors must have 2 entries"):
        apply_upsample_guidance(pipe, (2, 2, 2, 2))
    pipe = tiny_sd3_pipeline()
    with pytest.raises(ValueError, match=r"factors=\(2, 2, 2\) has 3 entries .* the SD3 family "
                                         r"takes images"):  # fmt: skip
        apply_upsample_guidance(pipe, (2, 2, 2))
