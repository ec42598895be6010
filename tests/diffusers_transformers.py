"""Tiny diffusers transformer (DiT / MMDiT / flow-matching) pipelines with random weights.

The companions of :mod:`diffusers_models` (UNet pipelines) for the transformer families. Every
builder ``tiny_<family>_pipeline(seed=0, **overrides)`` returns a real diffusers pipeline built
from configs (fully offline, no text encoder or tokenizer: every ``text_encoder*`` /
``tokenizer*`` is ``None``), deterministic for a seed, with progress bars disabled; ``overrides``
go to the transformer's config. Every all-zero parameter of the transformer(s) gets small random
values (:func:`diffusers_models.randomize_zero_params`) so that nothing is identically zero; in
diffusers 0.42.1 the constructors zero no output layer of these models, only some LayerNorm
biases (Wan, CogVideoX, HunyuanVideo's token refiner).

Every ``<family>_call_kwargs(...)`` returns the keyword arguments of one pipeline call: random
prompt embeddings shaped like the text encoders' outputs (``SEQ`` tokens, small widths, masks
where the pipeline wants them), ``output_type="latent"`` and a seeded generator, so
``pipe(**kwargs)[0]`` is the final latent. They are the entries of one table, :data:`CALLS`
(a :class:`Call` per family: its trained size, default guidance and the text conditioning it
takes), at the end of the module.

The ``*_TRAINED`` constants are the pixel sizes (and frame counts) each tiny transformer was
"trained" at: its ``sample_size`` (or the scheduler's / binning's reference size) matches them.
Every call at the trained size and at twice it (and twice the latent frames) takes well under
0.2 s on one CPU thread with 2 steps. ``_families()`` lists them all (the self-check's cases);
``python tests/diffusers_transformers.py`` runs the self-check.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import torch
from diffusers_models import randomize_zero_params

SEQ = 8  # text tokens per prompt
TEXT_DIM = 32  # width of every tiny text-encoder hidden state
POOLED_DIM = 32  # width of every tiny pooled text embedding


def _finish(pipe, seed: int):
    """Randomise the zero-initialised parameters of every model in ``pipe``; no progress bars."""
    for i, name in enumerate(("transformer", "transformer_2")):
        model = getattr(pipe, name, None)
        if model is not None:
            model.eval()
            randomize_zero_params(model, seed + 100 + i)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _build(cls, seed: int, config: dict, overrides: dict | None = None):
    """``cls(**config)`` with ``overrides`` applied, built under ``torch.manual_seed(seed)``."""
    config = {**config, **(overrides or {})}
    torch.manual_seed(seed)
    return cls(**config).eval()


def _pipeline(cls, seed: int, text_encoders: int = 1, **components):
    """``cls(**components)`` with ``text_encoders`` text encoders and tokenizers, all None,
    finished by :func:`_finish`."""
    for i in range(1, text_encoders + 1):
        suffix = "" if i == 1 else f"_{i}"
        components.update({f"text_encoder{suffix}": None, f"tokenizer{suffix}": None})
    return _finish(cls(**components), seed)


def tiny_kl_vae(latent_channels: int = 4, seed: int = 1, **config):
    """An AutoencoderKL with spatial scale factor 2 (one downsampling)."""
    from diffusers import AutoencoderKL

    base = dict(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 8), layers_per_block=1, latent_channels=latent_channels,
        norm_num_groups=4, sample_size=32,
    )  # fmt: skip
    return _build(AutoencoderKL, seed, base, config)


# --------------------------------------------------------------------------------------------
# 1. Stable Diffusion 3
# --------------------------------------------------------------------------------------------

SD3_TRAINED = 32  # pixels; latents 16x16 (VAE factor 2), 8x8 tokens (patch 2)
SD3_LATENT_CHANNELS = 4


def tiny_sd3_pipeline(seed: int = 0, **overrides):
    """A StableDiffusion3Pipeline: SD3Transformer2DModel (patch 2), FlowMatchEuler (shift 3).

    - Latents (B, C, h, w), h = height / 2 (VAE factor 2; real SD3: 8, 16 channels). The
      transformer patchifies 2x2 itself (pos-embedding crop of a 96x96 table, so latents up to
      192x192 work). ``height`` / ``width`` must be multiples of 4 (VAE factor x patch).
    - Timestep passed to the transformer: ``t = 1000 * sigma`` (the scheduler's timesteps).
      Scheduler: static ``shift=3.0`` as SD3 ships it (no dynamic shifting).
    - CFG: one doubled batch ``cat([uncond, cond])`` (``prompt_embeds`` and
      ``pooled_projections`` concatenated the same way), split with ``chunk(2)``.
    - Prediction: flow velocity ``v = noise - x0``; ``x0 = x_t - sigma * v``.
    - Text: ``prompt_embeds`` (B, SEQ, TEXT_DIM) (real: 333 tokens x 4096, CLIP padded + T5) and
      ``pooled_prompt_embeds`` (B, POOLED_DIM) (real: 2048), each with a negative twin.
    """
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    transformer = _build(SD3Transformer2DModel, seed, dict(
        sample_size=SD3_TRAINED // 2, patch_size=2, in_channels=SD3_LATENT_CHANNELS,
        out_channels=SD3_LATENT_CHANNELS, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=TEXT_DIM,
        pooled_projection_dim=POOLED_DIM,
    ), overrides)  # fmt: skip
    return _pipeline(
        StableDiffusion3Pipeline,
        seed,
        text_encoders=3,
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=tiny_kl_vae(SD3_LATENT_CHANNELS, shift_factor=0.0609, scaling_factor=1.5035),
    )


# --------------------------------------------------------------------------------------------
# 2. Flux
# --------------------------------------------------------------------------------------------

FLUX_TRAINED = 32  # pixels; latents 16x16 (VAE factor 2), packed into 8x8 = 64 tokens
FLUX_LATENT_CHANNELS = 4  # packed token width 4 * 2 * 2 = 16 (real Flux: 16 -> 64)
_NO_QUANT = dict(use_quant_conv=False, use_post_quant_conv=False)  # Flux's VAE (and Chroma's)
#: The tiny Flux transformer's configuration (Chroma's transformer shares it).
_FLUX_TRANSFORMER = dict(
    patch_size=1, in_channels=4 * FLUX_LATENT_CHANNELS, num_layers=1,
    num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
    joint_attention_dim=TEXT_DIM, axes_dims_rope=(4, 6, 6),
)  # fmt: skip


def flux_scheduler(dynamic: bool = True):
    """FlowMatchEuler as Flux ships it. Flux-dev (``dynamic=True``): dynamic shifting, scaled
    down -- dev's base/max image sequence lengths are 256/4096 tokens (256 / 1024 px), here 4/64
    (8 / 32 px), the same 1:16 ratio, so the trained size gets ``max_shift`` and larger sizes
    extrapolate (as dev at 2048 px). Flux-schnell (``dynamic=False``): ``shift=1.0`` without
    dynamic shifting (the pipeline still computes ``mu``; the scheduler ignores it)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0 if dynamic else 1.0,
        use_dynamic_shifting=dynamic, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=4, max_image_seq_len=(FLUX_TRAINED // 4) ** 2,
    )  # fmt: skip


def tiny_flux_pipeline(seed: int = 0, guidance_embeds: bool = True, **overrides):
    """A FluxPipeline: FluxTransformer2DModel on packed 2x2 tokens, dynamic-shift FlowMatchEuler.

    ``guidance_embeds=True`` is Flux-dev (distilled guidance, ``guidance_scale`` is embedded),
    ``False`` is Flux-schnell (``guidance=None``, static-shift scheduler; see
    :func:`flux_scheduler`).

    - Latents are *packed*: (B, (h/2)*(w/2), 4*C) tokens, h = height / 2 here (VAE factor 2;
      real: 8); the transformer has ``patch_size=1`` and ``in_channels = 4 * C``. The pipeline
      passes ``img_ids`` ((h/2)*(w/2), 3): (0, row, col) of each token, and ``txt_ids`` (SEQ, 3)
      zeros; the 3-axis RoPE is computed from them inside the transformer. ``height``/``width``
      are floored to multiples of 4 (VAE factor x 2) without error.
    - ``mu`` of the dynamic shift is computed from the token count, so dev's sigma schedule
      depends on the resolution; the pipeline passes ``sigmas = linspace(1, 1/steps, steps)``.
    - Timestep passed to the transformer: ``sigma`` in [0, 1] (``t / 1000``); ``guidance``
      (B,) = ``guidance_scale`` (the transformer multiplies both by 1000 internally).
    - CFG: none by default (distilled). ``true_cfg_scale > 1`` with negative embeds runs *two
      separate* transformer calls per step (cond, then uncond with the negative embeds and
      ``negative_text_ids``), ``neg + s * (cond - neg)``; negative and positive prompt_embeds
      must have the same shape.
    - Prediction: flow velocity ``noise - x0``.
    """
    from diffusers import FluxPipeline, FluxTransformer2DModel

    config = dict(
        _FLUX_TRANSFORMER, pooled_projection_dim=POOLED_DIM, guidance_embeds=guidance_embeds
    )
    transformer = _build(FluxTransformer2DModel, seed, config, overrides)
    vae = tiny_kl_vae(FLUX_LATENT_CHANNELS, shift_factor=0.1159, scaling_factor=0.3611, **_NO_QUANT)
    return _pipeline(
        FluxPipeline,
        seed,
        text_encoders=2,
        transformer=transformer,
        scheduler=flux_scheduler(dynamic=guidance_embeds),
        vae=vae,
    )


# --------------------------------------------------------------------------------------------
# 3. PixArt-Sigma / PixArt-Alpha
# --------------------------------------------------------------------------------------------

PIXART_TRAINED = 256  # pixels; latents 32x32 (VAE factor 8), 16x16 tokens (patch 2)
PIXART_ALPHA_MICRO_TRAINED = 1024  # pixels; latents 128x128 (VAE factor 8), 16x16 tokens (patch 8)
PIXART_LATENT_CHANNELS = 4


def tiny_kl_vae_f8(latent_channels: int = 4, seed: int = 1, **config):
    """An AutoencoderKL with spatial scale factor 8 (three downsamplings), as SD / PixArt ship it.

    The transformer pipelines never run it with ``output_type="latent"``: only its scale factor
    matters (and PixArt's resolution bins assume factor 8)."""
    base = dict(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(4, 4, 4, 4),
        norm_num_groups=2,
    )
    base.update(config)
    return tiny_kl_vae(latent_channels, seed, **base)


#: PixArt's and Sana's DPMSolverMultistepScheduler settings, but for the prediction type.
_DPM_SOLVER = dict(
    num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
    algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
    lower_order_final=True, timestep_spacing="linspace", steps_offset=0,
)  # fmt: skip


def pixart_scheduler():
    """PixArt's DPMSolverMultistepScheduler (dpmsolver++ order 2, linear betas 1e-4..0.02, eps).

    The transformer predicts ``[eps, learned variance]``; the pipeline keeps the first half."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(**_DPM_SOLVER, prediction_type="epsilon")


def _tiny_pixart(cls, seed: int, micro_conditions: bool, overrides: dict):
    from diffusers import PixArtTransformer2DModel

    if micro_conditions:
        # The pipeline adds resolution / aspect-ratio micro-conditions only for sample_size 128
        # (PixArt-Alpha 1024px); the model enables them by default for that size too. A patch of
        # 8 keeps the 128x128 latents at 16x16 tokens.
        geometry = dict(sample_size=PIXART_ALPHA_MICRO_TRAINED // 8, patch_size=8)
    else:
        geometry = dict(sample_size=PIXART_TRAINED // 8, patch_size=2)
    transformer = _build(PixArtTransformer2DModel, seed, dict(
        **geometry, in_channels=PIXART_LATENT_CHANNELS,
        out_channels=2 * PIXART_LATENT_CHANNELS,  # epsilon + learned sigma
        num_layers=2, num_attention_heads=2,
        attention_head_dim=12,  # width 24: the micro-conditions need a multiple of 3
        cross_attention_dim=24,  # = width (the caption projection maps to it)
        caption_channels=TEXT_DIM, norm_num_groups=2,
    ), overrides)  # fmt: skip
    vae = tiny_kl_vae_f8(PIXART_LATENT_CHANNELS)
    return _pipeline(cls, seed, transformer=transformer, scheduler=pixart_scheduler(), vae=vae)


_PIXART_DOC = """

    - Latents (B, 4, h, w), h = height / 8 (VAE factor 8, as shipped); the transformer patchifies
      (sincos position embeddings, recomputed with ``interpolation_scale`` for other sizes).
    - Output channels 2 x 4: epsilon and a learned variance; the pipeline keeps ``chunk(2,
      dim=1)[0]`` *after* CFG. Scheduler: DPMSolverMultistep (see :func:`pixart_scheduler`).
    - Timestep passed to the transformer: the integer DDPM timestep in [0, 999] (int64, (B,)).
    - CFG: one doubled batch ``cat([uncond, cond])``, ``prompt_attention_mask`` doubled the same
      way (mask (B, SEQ), 1 = keep; the transformer turns it into a bias).
    - Resolution binning (``use_resolution_binning=True``, the default): the requested size is
      replaced by the bin of the closest aspect ratio in the table chosen by the transformer's
      ``sample_size`` (32 -> ``ASPECT_RATIO_256_BIN``, 64 -> 512, 128 -> 1024, 256 -> 2048 (Sigma
      only); any other sample_size raises "Invalid sample size"). So with binning on, every
      square request -- 2x included -- runs at the trained size: a larger latent needs
      ``use_resolution_binning=False``. Decoded images are resized back to the request, latents
      are not.
"""


def tiny_pixart_sigma_pipeline(seed: int = 0, **overrides):
    """A PixArtSigmaPipeline: PixArtTransformer2DModel (patch 2, sample_size 32 -> 256px bins)."""
    from diffusers import PixArtSigmaPipeline

    return _tiny_pixart(PixArtSigmaPipeline, seed, False, overrides)


tiny_pixart_sigma_pipeline.__doc__ += _PIXART_DOC


def tiny_pixart_alpha_pipeline(seed: int = 0, micro_conditions: bool = True, **overrides):
    """A PixArtAlphaPipeline with resolution / aspect-ratio micro-conditioning (PixArt-Alpha
    1024px: ``sample_size=128``, ``use_additional_conditions=True``; latents 128x128, patch 8,
    1024px bins, trained size :data:`PIXART_ALPHA_MICRO_TRAINED`), or without it
    (``micro_conditions=False``: sample_size 32, patch 2, 256px bins, :data:`PIXART_TRAINED`).

    With micro-conditions the pipeline passes ``added_cond_kwargs={"resolution": (B, 2) [height,
    width] in *pixels* (after binning), "aspect_ratio": (B, 1) height / width}`` (doubled with
    CFG); otherwise both are None. A UG low-resolution pass must decide what to tell it."""
    from diffusers import PixArtAlphaPipeline

    return _tiny_pixart(PixArtAlphaPipeline, seed, micro_conditions, overrides)


tiny_pixart_alpha_pipeline.__doc__ += _PIXART_DOC


# --------------------------------------------------------------------------------------------
# 4. Sana
# --------------------------------------------------------------------------------------------

SANA_TRAINED = 512  # pixels; latents 16x16 (DC-AE factor 32), 16x16 tokens (patch 1)
SANA_LATENT_CHANNELS = 4  # real: 32


def tiny_dc_vae(latent_channels: int = SANA_LATENT_CHANNELS, seed: int = 1):
    """An AutoencoderDC with spatial factor 32 (six stages) as Sana ships it, 8 channels wide."""
    from diffusers import AutoencoderDC

    six = dict(block_out_channels=(8,) * 6, layers_per_block=(1,) * 6, qkv_multiscales=((),) * 6)
    config = dict(
        in_channels=3, latent_channels=latent_channels, attention_head_dim=2,
        encoder_block_types="ResBlock", decoder_block_types="ResBlock",
        **{f"{side}_{key}": value for key, value in six.items() for side in ("encoder", "decoder")},
        downsample_block_type="conv", upsample_block_type="interpolate",
        scaling_factor=0.41407,
    )  # fmt: skip
    return _build(AutoencoderDC, seed, config)


def sana_scheduler():
    """Sana's DPMSolverMultistepScheduler flow config (flow sigmas, flow_shift 3, flow pred)."""
    from diffusers import DPMSolverMultistepScheduler

    flow = dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    return DPMSolverMultistepScheduler(**_DPM_SOLVER, **flow)


def tiny_sana_pipeline(seed: int = 0, **overrides):
    """A SanaPipeline: SanaTransformer2DModel (patch 1, linear attention), DPMSolver (flow).

    - Latents (B, C, h, w), h = height / 32 (AutoencoderDC factor 32, as shipped); no position
      embedding (``interpolation_scale=None``, Sana 1.0): the Mix-FFN convs carry position.
    - Timestep passed to the transformer: ``t * timestep_scale`` with the scheduler's flow
      timesteps ``t = 1000 * sigma`` (``timestep_scale`` 1.0 here and in Sana 1.0).
    - CFG: one doubled batch ``cat([uncond, cond])`` with ``prompt_attention_mask`` doubled.
    - Prediction: flow velocity (``flow_prediction``); the DPMSolver converts it to x0.
    - Resolution binning (default on): ``sample_size`` 16 -> ``ASPECT_RATIO_512_BIN``
      (32 -> 1024, 64 -> 2048, 128 -> 4096 bins); as for PixArt, square requests of any size run
      at the trained size unless ``use_resolution_binning=False``.
    - Text: Gemma hidden states (B, SEQ, TEXT_DIM) (real: 300 tokens x 2304) with a mask.
    """
    from diffusers import SanaPipeline, SanaTransformer2DModel

    transformer = _build(SanaTransformer2DModel, seed, dict(
        sample_size=SANA_TRAINED // 32, patch_size=1, in_channels=SANA_LATENT_CHANNELS,
        out_channels=SANA_LATENT_CHANNELS, num_layers=2, num_attention_heads=2,
        attention_head_dim=8, num_cross_attention_heads=2, cross_attention_head_dim=8,
        cross_attention_dim=16, caption_channels=TEXT_DIM,
    ), overrides)  # fmt: skip
    return _pipeline(
        SanaPipeline, seed, transformer=transformer, scheduler=sana_scheduler(), vae=tiny_dc_vae()
    )


# --------------------------------------------------------------------------------------------
# Video helpers
# --------------------------------------------------------------------------------------------


def pixel_frames(latent_frames: int, temporal_factor: int = 4) -> int:
    """The pixel frame count of ``latent_frames`` latent frames for a causal video VAE (Wan,
    CogVideoX, LTX, HunyuanVideo): the first latent frame holds one frame, every other one
    ``temporal_factor``; inversely ``latent = (frames - 1) // temporal_factor + 1``."""
    return (latent_frames - 1) * temporal_factor + 1


# --------------------------------------------------------------------------------------------
# 5. Wan 2.1 / Wan 2.2 (two experts)
# --------------------------------------------------------------------------------------------

WAN_TRAINED = 64  # pixels; latents 8x8 (VAE factor 8), 4x4 tokens per frame (patch 1x2x2)
WAN_TRAINED_FRAMES = 9  # pixel frames; 3 latent frames (temporal factor 4)
WAN_LATENT_CHANNELS = 4  # real: 16


def tiny_wan_vae(seed: int = 1):
    """An AutoencoderKLWan with the shipped factors (spatial 8, temporal 4), 3 channels wide.

    The pipeline reads the factors from ``config.scale_factor_spatial/temporal``."""
    from diffusers import AutoencoderKLWan

    return _build(AutoencoderKLWan, seed, dict(base_dim=3, **_wan_vae_config(WAN_LATENT_CHANNELS)))


def _wan_vae_config(channels: int) -> dict:
    """The Wan-style causal VAE's tiny configuration (Wan's VAE, and Qwen-Image's)."""
    return dict(
        z_dim=channels, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        temperal_downsample=[False, True, True], latents_mean=[0.0] * channels,
        latents_std=[1.0] * channels,
    )  # fmt: skip


def wan_scheduler(flow_shift: float = 3.0):
    """Wan's UniPCMultistepScheduler flow config (Wan 2.1 480p ships ``flow_shift=3.0``)."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(
        num_train_timesteps=1000, prediction_type="flow_prediction",
        use_flow_sigmas=True, flow_shift=flow_shift, solver_order=2, solver_type="bh2",
        lower_order_final=True, final_sigmas_type="zero", timestep_spacing="linspace",
    )  # fmt: skip


def tiny_wan_transformer(seed: int = 0, **overrides):
    """A WanTransformer3DModel (patch (1, 2, 2), 3-axis RoPE, text width TEXT_DIM)."""
    from diffusers import WanTransformer3DModel

    return _build(WanTransformer3DModel, seed, dict(
        patch_size=(1, 2, 2), num_attention_heads=2,
        attention_head_dim=12,  # RoPE split t/h/w = 4/4/4
        in_channels=WAN_LATENT_CHANNELS, out_channels=WAN_LATENT_CHANNELS,
        text_dim=TEXT_DIM, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=64,
    ), overrides)  # fmt: skip


def tiny_wan_pipeline(seed: int = 0, **overrides):
    """A WanPipeline (Wan 2.1 text-to-video): WanTransformer3DModel + UniPC flow scheduler.

    - Latents (B, C, F, h, w): F = (frames - 1) // 4 + 1 (frames not of the form 4k + 1 are
      rounded down to one, with a warning), h = height / 8; height / width are floored to
      multiples of 16 (VAE factor x patch 2). The transformer patchifies (1, 2, 2) itself and
      computes its RoPE from the latent shape (``rope_max_seq_len`` bounds each axis).
    - Timestep passed to the transformer: ``t = 1000 * sigma`` (flow timesteps), shape (B,).
    - CFG: *two separate* transformer calls per step (cond with ``prompt_embeds``, then uncond
      with ``negative_prompt_embeds``), ``uncond + s * (cond - uncond)``; batch is never doubled.
    - Prediction: flow velocity; UniPC (``flow_shift`` 3) integrates it.
    - Text: UMT5 hidden states (B, SEQ, TEXT_DIM) (real: 512 x 4096), no mask argument.
    """
    from diffusers import WanPipeline

    transformer = tiny_wan_transformer(seed, **overrides)
    return _pipeline(
        WanPipeline, seed, transformer=transformer, scheduler=wan_scheduler(), vae=tiny_wan_vae()
    )


def tiny_wan22_pipeline(
    seed: int = 0, boundary_ratio: float = 0.875, flow_shift: float = 3.0, **overrides
):
    """A WanPipeline as Wan 2.2 A14B: two experts, ``transformer`` (high noise, used while
    ``t >= boundary_ratio * 1000``) and ``transformer_2`` (low noise, the rest), each with its own
    guidance scale (``guidance_scale`` / ``guidance_scale_2``, default equal).

    Wan 2.2 A14B ships ``boundary_ratio=0.875`` and ``flow_shift=12``; with shift 12, 2 steps
    (t = 999, 923) both stay on ``transformer``, so the tiny pipeline uses shift 3 (t = 999, 750:
    one step per expert). Everything else as :func:`tiny_wan_pipeline` (separate CFG calls).
    """
    from diffusers import WanPipeline

    return _pipeline(
        WanPipeline,
        seed,
        transformer=tiny_wan_transformer(seed, **overrides),
        transformer_2=tiny_wan_transformer(seed + 1, **overrides),
        boundary_ratio=boundary_ratio,
        scheduler=wan_scheduler(flow_shift),
        vae=tiny_wan_vae(),
    )


# --------------------------------------------------------------------------------------------
# 6. CogVideoX
# --------------------------------------------------------------------------------------------

COGVIDEOX_TRAINED = 64  # pixels; latents 8x8 (VAE factor 8), 4x4 tokens per frame (patch 2)
COGVIDEOX_TRAINED_FRAMES = 9  # pixel frames; 3 latent frames (temporal factor 4)
COGVIDEOX_LATENT_CHANNELS = 4  # real: 16


def cogvideox_scheduler():
    """CogVideoX-2b's CogVideoXDDIMScheduler (v-prediction, zero-SNR, trailing, snr shift 3)."""
    from diffusers import CogVideoXDDIMScheduler

    return CogVideoXDDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
        beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=True,
        steps_offset=0, prediction_type="v_prediction", rescale_betas_zero_snr=True,
        snr_shift_scale=3.0, timestep_spacing="trailing",
    )  # fmt: skip


def tiny_cogvideox_pipeline(seed: int = 0, **overrides):
    """A CogVideoXPipeline: CogVideoXTransformer3DModel (patch 2, rotary embeddings as in
    CogVideoX-5b), CogVideoXDDIMScheduler (v-prediction), tiny AutoencoderKLCogVideoX.

    - Latents (B, F, C, h, w) -- frames *before* channels: F = (frames - 1) // 4 + 1,
      h = height / 8. The transformer patchifies 2x2 (CogVideoX 1.0: no temporal patch).
    - Rotary embeddings come from the *pipeline*: ``image_rotary_emb = (cos, sin)``, each
      (F * h/2 * w/2, head_dim), computed from the pixel height/width and latent frames, with the
      grid cropped relative to ``sample_height/width`` (the trained latent size). A UG
      low-resolution pass must pass embeddings for its own grid.
    - Timestep passed to the transformer: the integer DDPM timestep (trailing spacing), (B,).
    - CFG: one doubled batch ``cat([uncond, cond])``; ``use_dynamic_cfg`` changes the scale per
      step when set.
    - Prediction: v (``v_prediction``, zero terminal SNR).
    """
    from diffusers import AutoencoderKLCogVideoX, CogVideoXPipeline, CogVideoXTransformer3DModel

    transformer = _build(CogVideoXTransformer3DModel, seed, dict(
        num_attention_heads=2, attention_head_dim=16,  # rotary split t/h/w = 4/6/6
        in_channels=COGVIDEOX_LATENT_CHANNELS, out_channels=COGVIDEOX_LATENT_CHANNELS,
        time_embed_dim=8, text_embed_dim=TEXT_DIM, num_layers=2,
        sample_width=COGVIDEOX_TRAINED // 8, sample_height=COGVIDEOX_TRAINED // 8,
        sample_frames=COGVIDEOX_TRAINED_FRAMES, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=SEQ,
        use_rotary_positional_embeddings=True,
    ), overrides)  # fmt: skip
    vae = _build(AutoencoderKLCogVideoX, 1, dict(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8),
        latent_channels=COGVIDEOX_LATENT_CHANNELS, layers_per_block=1,
        norm_num_groups=2, temporal_compression_ratio=4,
    ))  # fmt: skip
    scheduler = cogvideox_scheduler()
    return _pipeline(CogVideoXPipeline, seed, transformer=transformer, scheduler=scheduler, vae=vae)


# --------------------------------------------------------------------------------------------
# 7. LTX-Video
# --------------------------------------------------------------------------------------------

LTX_TRAINED = 128  # pixels; latents 4x4 (VAE factor 32), 16 tokens per frame (patch 1)
LTX_TRAINED_FRAMES = 9  # pixel frames; 2 latent frames (temporal factor 8)
LTX_LATENT_CHANNELS = 8  # real: 128
LTX_TRAINED_TOKENS = 2 * 4 * 4


def ltx_scheduler():
    """LTX-Video's FlowMatchEuler: dynamic shifting (base/max shift 0.95/2.05), terminal shift
    0.1. LTX ships base/max image sequence lengths 1024/4096 tokens; here 1/4 of the trained
    token count and the trained token count."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True,
        base_shift=0.95, max_shift=2.05, base_image_seq_len=LTX_TRAINED_TOKENS // 4,
        max_image_seq_len=LTX_TRAINED_TOKENS, shift_terminal=0.1,
    )  # fmt: skip


def tiny_ltx_pipeline(seed: int = 0, **overrides):
    """An LTXPipeline: LTXVideoTransformer3DModel on packed tokens, FlowMatchEuler (dynamic).

    - Latents are *packed* tokens (B, F*h*w, C) in the loop *and in the output* with
      ``output_type="latent"``: F = (frames - 1) // 8 + 1, h = height / 32 (VAE factors 8 / 32
      as shipped; patch 1x1x1). Unpack with ``pipe._unpack_latents(x, F, h, w, 1, 1)`` into
      (B, C, F, h, w). height / width must be multiples of 32.
    - The pipeline passes ``num_frames=F, height=h, width=w`` (latent sizes) and
      ``rope_interpolation_scale = (8 / frame_rate, 32, 32)`` to the transformer, which builds
      its RoPE from them; a UG low-resolution pass must pass its own F/h/w.
    - ``mu`` of the dynamic shift comes from F*h*w (token count), so the schedule depends on size.
    - Timestep passed to the transformer: ``t = 1000 * sigma``, (B,).
    - CFG: one doubled batch ``cat([uncond, cond])`` with ``prompt_attention_mask`` doubled;
      optional ``guidance_rescale``.
    """
    from diffusers import AutoencoderKLLTXVideo, LTXPipeline, LTXVideoTransformer3DModel

    transformer = _build(LTXVideoTransformer3DModel, seed, dict(
        in_channels=LTX_LATENT_CHANNELS, out_channels=LTX_LATENT_CHANNELS,
        patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=12,
        cross_attention_dim=24, num_layers=2, caption_channels=TEXT_DIM,
    ), overrides)  # fmt: skip
    both = dict(
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, False),
    )
    vae = _build(
        AutoencoderKLLTXVideo,
        1,
        dict(
            latent_channels=LTX_LATENT_CHANNELS,
            **both,
            **{f"decoder_{key}": value for key, value in both.items()},
            patch_size=4,
            patch_size_t=1,
        ),
    )
    return _pipeline(LTXPipeline, seed, transformer=transformer, scheduler=ltx_scheduler(), vae=vae)


# --------------------------------------------------------------------------------------------
# 8. HunyuanVideo
# --------------------------------------------------------------------------------------------

HUNYUAN_TRAINED = 64  # pixels; latents 8x8 (VAE factor 8), 4x4 tokens per frame (patch 1x2x2)
HUNYUAN_TRAINED_FRAMES = 9  # pixel frames; 3 latent frames (temporal factor 4)
HUNYUAN_LATENT_CHANNELS = 4  # real: 16


def tiny_hunyuan_video_pipeline(seed: int = 0, **overrides):
    """A HunyuanVideoPipeline: HunyuanVideoTransformer3DModel (guidance-distilled), FlowMatchEuler
    (shift 7.0 as shipped), tiny AutoencoderKLHunyuanVideo.

    - Latents (B, C, F, h, w): F = (frames - 1) // 4 + 1, h = height / 8; patch (1, 2, 2) inside
      the transformer, which builds its 3-axis RoPE from the latent shape.
    - Timestep passed to the transformer: ``t = 1000 * sigma``; ``guidance`` =
      ``guidance_scale * 1000`` (embedded, distilled guidance, (B,)).
    - CFG: none by default; ``true_cfg_scale > 1`` with negative embeds runs *two separate*
      calls per step (as Flux).
    - Text: Llama hidden states (B, SEQ, TEXT_DIM) + ``prompt_attention_mask`` (B, SEQ) and CLIP
      pooled (B, POOLED_DIM); the transformer's token refiner consumes the mask.
    """
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )

    transformer = _build(HunyuanVideoTransformer3DModel, seed, dict(
        in_channels=HUNYUAN_LATENT_CHANNELS, out_channels=HUNYUAN_LATENT_CHANNELS,
        num_attention_heads=2, attention_head_dim=16, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1,
        guidance_embeds=True, text_embed_dim=TEXT_DIM,
        pooled_projection_dim=POOLED_DIM, rope_axes_dim=(4, 6, 6),
    ), overrides)  # fmt: skip
    vae = _build(AutoencoderKLHunyuanVideo, 1, dict(
        in_channels=3, out_channels=3, latent_channels=HUNYUAN_LATENT_CHANNELS,
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
        spatial_compression_ratio=8, temporal_compression_ratio=4,
    ))  # fmt: skip
    return _pipeline(
        HunyuanVideoPipeline,
        seed,
        text_encoders=2,
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=7.0),
        vae=vae,
    )


# --------------------------------------------------------------------------------------------
# 9. Qwen-Image, Chroma, CogView4, Lumina 2, Flux 2
# --------------------------------------------------------------------------------------------

QWEN_TRAINED = 128  # pixels; latents 16x16 (VAE factor 8), packed into 8x8 = 64 tokens
QWEN_LATENT_CHANNELS = 4  # packed token width 16 (real: 16 -> 64)


def tiny_qwenimage_pipeline(seed: int = 0, **overrides):
    """A QwenImagePipeline: QwenImageTransformer2DModel on packed 2x2 tokens (as Flux), the
    shipped FlowMatchEuler (exponential dynamic shift, base/max shift 0.5/0.9, terminal 0.02;
    image sequence lengths scaled 256/8192 -> 2/64 tokens), tiny AutoencoderKLQwenImage.

    - Latents packed (B, (h/2)*(w/2), 4*C), h = height / 8 (the pipeline's factor is
      ``2 ** len(vae.temperal_downsample)``). The pipeline passes
      ``img_shapes=[[(1, h/2, w/2)]] * B`` (the token grid, from which the transformer builds
      its RoPE) and ``encoder_hidden_states_mask`` (B, SEQ).
    - Timestep passed to the transformer: ``sigma`` (``t / 1000``); no guidance embedding.
    - CFG: ``true_cfg_scale`` (default 4.0!) with negative embeds: *two separate* calls, then
      ``neg + s * (cond - neg)`` rescaled to the norm of ``cond`` over the channel (last) dim.
      Without negative embeds, no CFG (a warning).
    """
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )

    transformer = _build(QwenImageTransformer2DModel, seed, dict(
        patch_size=2, in_channels=4 * QWEN_LATENT_CHANNELS,
        out_channels=QWEN_LATENT_CHANNELS, num_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=TEXT_DIM, guidance_embeds=False,
        axes_dims_rope=(8, 4, 4),
    ), overrides)  # fmt: skip
    vae = _build(
        AutoencoderKLQwenImage, 1, dict(base_dim=8, **_wan_vae_config(QWEN_LATENT_CHANNELS))
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5,
        max_shift=0.9, base_image_seq_len=2,
        max_image_seq_len=(QWEN_TRAINED // 16) ** 2, shift_terminal=0.02,
        time_shift_type="exponential",
    )  # fmt: skip
    return _pipeline(QwenImagePipeline, seed, transformer=transformer, scheduler=scheduler, vae=vae)


CHROMA_TRAINED = FLUX_TRAINED  # as Flux: 32 px, 8x8 packed tokens


def tiny_chroma_pipeline(seed: int = 0, **overrides):
    """A ChromaPipeline: ChromaTransformer2DModel (Flux-like, no pooled text, timestep through a
    distilled "approximator"), Flux's dynamic-shift scheduler, the Flux tiny VAE.

    - Latents packed as Flux (B, (h/2)*(w/2), 4*C); ``img_ids`` / ``txt_ids`` as Flux.
    - The pipeline passes ``attention_mask`` (B, SEQ + n_image_tokens): the text mask extended
      with ones for every image token -- its length depends on the resolution, so a UG
      low-resolution pass must rebuild it for its own token count.
    - Timestep passed to the transformer: ``sigma`` (``t / 1000``); no guidance embedding.
    - CFG (``guidance_scale > 1``): *two separate* calls (cond, uncond with negative embeds and
      mask), ``neg + s * (cond - neg)``.
    """
    from diffusers import ChromaPipeline, ChromaTransformer2DModel

    approximator = dict(
        approximator_num_channels=16, approximator_hidden_dim=32, approximator_layers=1
    )
    transformer = _build(
        ChromaTransformer2DModel, seed, dict(_FLUX_TRANSFORMER, **approximator), overrides
    )
    return _pipeline(
        ChromaPipeline,
        seed,
        transformer=transformer,
        scheduler=flux_scheduler(),
        vae=tiny_kl_vae(FLUX_LATENT_CHANNELS, **_NO_QUANT),
        image_encoder=None,
        feature_extractor=None,
    )


COGVIEW4_TRAINED = 128  # pixels; latents 16x16 (VAE factor 8), 8x8 tokens (patch 2)
COGVIEW4_LATENT_CHANNELS = 4  # real: 16


def tiny_cogview4_pipeline(seed: int = 0, **overrides):
    """A CogView4Pipeline: CogView4Transformer2DModel (patch 2), FlowMatchEuler with CogView4's
    linear dynamic shift (base/max shift 0.25/0.75; ``base_image_seq_len`` 256 -> 4 tokens).

    - Latents (B, C, h, w), h = height / 8; the transformer patchifies 2x2 and builds 2-axis RoPE.
      The pipeline's mu is ``sqrt(tokens / base_image_seq_len) * 0.75 + 0.25`` (its own formula).
    - Micro-conditions ``original_size`` / ``target_size`` (B, 2) in *pixels* (default: the
      requested height, width) and ``crop_coords`` (B, 2).
    - Timestep passed to the transformer: the pipeline's *unshifted* ``linspace(1000, 1, steps)``
      (cast to int), while the scheduler steps with *shifted* sigmas: 4 steps give t = 1000,
      667, 334, 1 but sigma = 1, 0.87, 0.62, 0.003 -- here t != 1000 * sigma.
    - CFG: *two separate* calls (cond, then uncond with ``negative_prompt_embeds``).
    """
    from diffusers import (
        CogView4Pipeline,
        CogView4Transformer2DModel,
        FlowMatchEulerDiscreteScheduler,
    )

    transformer = _build(CogView4Transformer2DModel, seed, dict(
        patch_size=2, in_channels=COGVIEW4_LATENT_CHANNELS,
        out_channels=COGVIEW4_LATENT_CHANNELS, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, text_embed_dim=TEXT_DIM, time_embed_dim=8,
        condition_dim=4, sample_size=COGVIEW4_TRAINED // 8,
    ), overrides)  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True,
        base_shift=0.25, max_shift=0.75, base_image_seq_len=4,
        time_shift_type="linear",
    )  # fmt: skip
    vae = tiny_kl_vae_f8(COGVIEW4_LATENT_CHANNELS)
    return _pipeline(CogView4Pipeline, seed, transformer=transformer, scheduler=scheduler, vae=vae)


LUMINA2_TRAINED = 128  # pixels; latents 16x16 (factor fixed at 8 by the pipeline), 8x8 tokens


def tiny_lumina2_pipeline(seed: int = 0, **overrides):
    """A Lumina2Pipeline: Lumina2Transformer2DModel (patch 2, caption refiner), FlowMatchEuler.

    - Latents (B, C, h, w), h = height / 8: the pipeline *hard-codes* ``vae_scale_factor = 8``
      whatever the VAE (the tiny VAE has factor 8 to agree).
    - Timestep passed to the transformer: ``1 - t / 1000`` = ``1 - sigma`` (0 = noise,
      1 = clean: reversed!), and the pipeline negates the prediction before the Euler step (the
      model predicts ``x0 - noise``).
    - CFG: *two separate* calls; skipped for the last steps where ``(i + 1) / steps >
      cfg_trunc_ratio`` (default 1.0: never); optional ``cfg_normalization`` (default False).
    - Shift: the pipeline always computes ``mu`` from the token count, but the shipped scheduler
      has ``use_dynamic_shifting=False`` (static ``shift=6.0``), so mu is ignored.
    - Text: Gemma hidden states (B, SEQ, TEXT_DIM) + ``prompt_attention_mask``.
    """
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        Lumina2Pipeline,
        Lumina2Transformer2DModel,
    )

    transformer = _build(Lumina2Transformer2DModel, seed, dict(
        sample_size=LUMINA2_TRAINED // 8, patch_size=2, in_channels=4, hidden_size=24,
        num_layers=2, num_refiner_layers=1, num_attention_heads=2, num_kv_heads=1,
        multiple_of=16, axes_dim_rope=(4, 4, 4), axes_lens=(64, 64, 64),
        cap_feat_dim=TEXT_DIM,
    ), overrides)  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=6.0)
    vae = tiny_kl_vae_f8(4)
    return _pipeline(Lumina2Pipeline, seed, transformer=transformer, scheduler=scheduler, vae=vae)


FLUX2_TRAINED = 128  # pixels; latents 16x16 (VAE factor 8), packed into 8x8 = 64 tokens
FLUX2_LATENT_CHANNELS = 4  # packed token width 16 (real: 32 -> 128)


def tiny_flux2_pipeline(seed: int = 0, **overrides):
    """A Flux2Pipeline (FLUX.2 [dev]): Flux2Transformer2DModel on packed tokens with 4-axis RoPE,
    FlowMatchEuler (dynamic), tiny AutoencoderKLFlux2.

    - Latents packed (B, (h/2)*(w/2), 4*C), h = height / 8; the pipeline passes ``img_ids``
      (B, n_tokens, 4) = (t=0, row, col, l=0) and ``txt_ids`` (B, SEQ, 4).
    - ``mu`` comes from the pipeline's ``compute_empirical_mu(tokens, steps)`` (it depends on the
      step count too), not from the scheduler's seq-len config.
    - Timestep passed to the transformer: ``sigma`` (``t / 1000``); ``guidance`` (B,) =
      ``guidance_scale`` (guidance-distilled, embedded).
    - CFG: none (one call per step).
    """
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2Pipeline,
        Flux2Transformer2DModel,
    )

    transformer = _build(Flux2Transformer2DModel, seed, dict(
        patch_size=1, in_channels=4 * FLUX2_LATENT_CHANNELS, num_layers=1,
        num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=TEXT_DIM, timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4), guidance_embeds=True,
    ), overrides)  # fmt: skip
    vae = _build(
        AutoencoderKLFlux2,
        1,
        dict(
            block_out_channels=(4, 4, 4, 4),
            layers_per_block=1,
            latent_channels=FLUX2_LATENT_CHANNELS,
            norm_num_groups=2,
            sample_size=32,
        ),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
        max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096,
        time_shift_type="exponential",
    )  # fmt: skip
    return _pipeline(Flux2Pipeline, seed, transformer=transformer, scheduler=scheduler, vae=vae)


# --------------------------------------------------------------------------------------------
# AuraFlow
# --------------------------------------------------------------------------------------------

AURAFLOW_TRAINED = 32  # pixels; latents 16x16 (VAE factor 2), 8x8 tokens (patch 2)


def tiny_auraflow_pipeline(seed: int = 0, **overrides):
    """An AuraFlowPipeline: AuraFlowTransformer2DModel (patch 2), FlowMatchEuler (shift 1.73).

    - Latents (B, 4, h, w), h = height / 2; the transformer picks its positions from a
      ``pos_embed_max_size`` table for the grid it gets.
    - Timestep passed to the transformer: ``sigma`` (the pipeline builds ``t / 1000``).
    - CFG: one doubled batch ``cat([uncond, cond])``.
    """
    from diffusers import (
        AuraFlowPipeline,
        AuraFlowTransformer2DModel,
        FlowMatchEulerDiscreteScheduler,
    )

    transformer = _build(AuraFlowTransformer2DModel, seed, dict(
        sample_size=AURAFLOW_TRAINED // 2, patch_size=2, in_channels=4,
        num_mmdit_layers=1, num_single_dit_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=TEXT_DIM, caption_projection_dim=16,
        out_channels=4, pos_embed_max_size=256,
    ), overrides)  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.73)  # AuraFlow's shipped shift
    vae = tiny_kl_vae(4)
    return _pipeline(AuraFlowPipeline, seed, transformer=transformer, scheduler=scheduler, vae=vae)


# --------------------------------------------------------------------------------------------
# Sana-Video
# --------------------------------------------------------------------------------------------

SANA_VIDEO_TRAINED = WAN_TRAINED  # pixels; latents 8x8 (Wan VAE, factor 8), patch (1, 2, 2)
SANA_VIDEO_TRAINED_FRAMES = WAN_TRAINED_FRAMES  # 9 pixel frames: 3 latent frames


def tiny_sana_video_pipeline(seed: int = 0, **overrides):
    """A SanaVideoPipeline: SanaVideoTransformer3DModel (patch (1, 2, 2)), Sana's flow DPM++
    scheduler, the tiny Wan VAE (spatial 8, temporal 4).

    - Latents (B, C, F, H, W), as Wan; timestep passed: the scheduler's ``1000·σ``.
    - CFG: one doubled batch; text embeddings with a Gemma-style mask.
    """
    from diffusers import SanaVideoPipeline, SanaVideoTransformer3DModel

    transformer = _build(SanaVideoTransformer3DModel, seed, dict(
        in_channels=WAN_LATENT_CHANNELS, out_channels=WAN_LATENT_CHANNELS,
        num_attention_heads=2, attention_head_dim=8, num_layers=1,
        num_cross_attention_heads=2, cross_attention_head_dim=8,
        cross_attention_dim=16, caption_channels=TEXT_DIM,
        sample_size=SANA_VIDEO_TRAINED // 8, patch_size=(1, 2, 2), rope_max_seq_len=32,
    ), overrides)  # fmt: skip
    return _pipeline(
        SanaVideoPipeline,
        seed,
        transformer=transformer,
        scheduler=sana_scheduler(),
        vae=tiny_wan_vae(),
    )


# --------------------------------------------------------------------------------------------
# Mochi
# --------------------------------------------------------------------------------------------

MOCHI_TRAINED = 16  # pixels; latents 2x2 (VAE factor 8), one 2x2 patch per frame
MOCHI_TRAINED_FRAMES = 7  # pixel frames; 2 latent frames (temporal factor 6)
MOCHI_LATENT_CHANNELS = 12


def tiny_mochi_pipeline(seed: int = 0, invert_sigmas: bool = True, **overrides):
    """A MochiPipeline: MochiTransformer3DModel (patch 2), FlowMatchEuler, tiny Mochi VAE.

    - Latents (B, 12, F, H, W); the VAE compresses 8x in space and 6x in time (F = (f - 1)/6 + 1).
    - With Mochi's shipped scheduler (``invert_sigmas=True``) the transformer gets
      ``1000·(1 − σ)`` and predicts ``x0 − ε``; ``invert_sigmas=False`` is the plain flow form.
    - CFG: one doubled batch.
    """
    from diffusers import (
        AutoencoderKLMochi,
        FlowMatchEulerDiscreteScheduler,
        MochiPipeline,
        MochiTransformer3DModel,
    )

    transformer = _build(MochiTransformer3DModel, seed, dict(
        patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=1,
        pooled_projection_dim=16, in_channels=MOCHI_LATENT_CHANNELS, out_channels=None,
        qk_norm="rms_norm", text_embed_dim=TEXT_DIM, time_embed_dim=4,
        activation_fn="swiglu", max_sequence_length=SEQ,
    ), overrides)  # fmt: skip
    vae = _build(
        AutoencoderKLMochi,
        seed + 1,
        dict(
            latent_channels=MOCHI_LATENT_CHANNELS,
            out_channels=3,
            encoder_block_out_channels=(32, 32, 32, 32),  # its group norms have 32 groups
            decoder_block_out_channels=(32, 32, 32, 32),
            layers_per_block=(1, 1, 1, 1, 1),
        ),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(invert_sigmas=invert_sigmas)
    return _pipeline(MochiPipeline, seed, transformer=transformer, scheduler=scheduler, vae=vae)


# --------------------------------------------------------------------------------------------
# Call arguments: one table
# --------------------------------------------------------------------------------------------


def _text_mask(batch: int = 1, pad: int = 2) -> torch.Tensor:
    """A T5-style attention mask (B, SEQ): ones, then ``pad`` zeros (padding tokens)."""
    mask = torch.ones(batch, SEQ, dtype=torch.long)
    mask[:, SEQ - pad :] = 0
    return mask


@dataclass(frozen=True)
class Call:
    """How one family's pipeline is called; ``call(height, width, ...)`` returns the arguments.

    The text embeddings come from one generator seeded with ``seed``: the prompt's hidden states
    (1, SEQ, TEXT_DIM), then (``pooled``) the pooled embedding (1, POOLED_DIM). A family that
    always takes negative embeddings draws each right after its positive twin; one that takes
    them only for true CFG (``negatives="true_cfg"``: with ``true_cfg > 1``, adding
    ``true_cfg_scale``; ``"cfg"``: with ``cfg > 1``) draws them after all positives. Masks are
    :func:`_text_mask`, for the negative prompt too. Then the size (``num_frames`` for video),
    ``num_inference_steps``, the guidance scale (``cfg_name``), ``generator`` (seeded with
    ``seed``), ``output_type="latent"`` and the family's constant arguments (``extra``).
    """

    size: int  # trained pixels: the default height and width
    cfg: float  # default guidance scale
    output: str  # what pipe(**kwargs)[0] is, for pixel size h x w (and F latent frames)
    frames: int | None = None  # trained pixel frames: a video family, which takes num_frames
    temporal: int = 4  # the video VAE's temporal factor
    steps: int = 2
    pooled: bool = False  # pooled text embeddings besides the hidden states
    mask: str | None = None  # the text mask's argument name
    float_mask: bool = False
    negatives: str = "always"  # "always", "true_cfg", "cfg" or "never"
    cfg_name: str = "guidance_scale"
    frames_name: str = "num_frames"
    binning: bool = False  # takes binning=False: use_resolution_binning=False
    extra: tuple = ()  # (name, value) pairs passed as they are

    def __call__(self, height=None, width=None, *, num_frames=None, steps=None, cfg=None, seed=0,
                 true_cfg=None, binning=None) -> dict:  # fmt: skip
        if num_frames is not None and self.frames is None:
            raise TypeError("num_frames= is for video families")
        if true_cfg is not None and self.negatives != "true_cfg":
            raise TypeError("true_cfg= is for families with true CFG (Flux, HunyuanVideo)")
        if binning is not None and not self.binning:
            raise TypeError("binning= is for families with resolution binning (PixArt, Sana)")
        cfg = self.cfg if cfg is None else cfg
        negatives = {"always": True, "never": False, "cfg": cfg > 1,
                     "true_cfg": (true_cfg or 1.0) > 1}[self.negatives]  # fmt: skip
        texts = [("prompt_embeds", (SEQ, TEXT_DIM))]
        if self.pooled:
            texts.append(("pooled_prompt_embeds", (POOLED_DIM,)))
        negative = [("negative_" + name, shape) for name, shape in texts] if negatives else []
        if self.negatives == "always":  # each negative right after its positive twin
            texts = [t for pair in zip(texts, negative, strict=True) for t in pair]
        else:
            texts += negative
        gen = torch.Generator().manual_seed(seed)
        kwargs = {name: torch.randn(1, *shape, generator=gen) for name, shape in texts}
        if self.mask is not None:
            mask = _text_mask().float() if self.float_mask else _text_mask()
            names = [self.mask, "negative_" + self.mask] if negatives else [self.mask]
            kwargs.update({name: mask.clone() for name in names})
        if self.negatives == "true_cfg" and negatives:
            kwargs["true_cfg_scale"] = true_cfg
        if binning is False:
            kwargs["use_resolution_binning"] = False
        if self.frames is not None:
            kwargs[self.frames_name] = self.frames if num_frames is None else num_frames
        kwargs.update(
            height=self.size if height is None else height,
            width=self.size if width is None else width,
            num_inference_steps=self.steps if steps is None else steps,
            generator=torch.Generator().manual_seed(seed),
            output_type="latent",
        )
        kwargs[self.cfg_name] = cfg
        return {**kwargs, **dict(self.extra)}

    def sizes(self) -> tuple[dict, dict]:
        """The trained-size and the doubled-size arguments (a video doubles its *latent* frames:
        Wan 9 -> 21 pixel frames, 3 -> 6 latent frames)."""
        trained = dict(height=self.size, width=self.size)
        doubled = dict(height=2 * self.size, width=2 * self.size)
        if self.frames is not None:
            latent = (self.frames - 1) // self.temporal + 1
            trained["num_frames"] = self.frames
            doubled["num_frames"] = pixel_frames(2 * latent, self.temporal)
        return trained, doubled


_MASK = "prompt_attention_mask"
#: PixArt's / Sana's default negative_prompt "" clashes with negative_prompt_embeds.
_NO_PROMPT = (("negative_prompt", None),)

#: Every family's call. ``true_cfg``: Flux / HunyuanVideo embed ``cfg`` (distilled guidance; the
#: Flux-schnell variant ignores it) and run two calls per step with ``true_cfg > 1``.
CALLS = {
    "sd3": Call(SD3_TRAINED, 5.0, "latents (1, 4, h/2, w/2)", pooled=True),
    "flux": Call(FLUX_TRAINED, 3.5, "packed latents (1, (h/4)*(w/4), 16)", pooled=True,
                 negatives="true_cfg"),
    # PixArt, Alpha or Sigma: the *binned* size (PixArt-Alpha with micro-conditions: call it at
    # PIXART_ALPHA_MICRO_TRAINED).
    "pixart": Call(PIXART_TRAINED, 4.5, "latents (1, 4, h/8, w/8)", mask=_MASK, binning=True,
                   extra=_NO_PROMPT),
    "sana": Call(SANA_TRAINED, 4.5, "latents (1, 4, h/32, w/32) of the binned size", mask=_MASK,
                 binning=True, extra=_NO_PROMPT),
    "wan": Call(WAN_TRAINED, 5.0, "latents (1, 4, F, h/8, w/8)", frames=WAN_TRAINED_FRAMES),
    "cogvideox": Call(COGVIDEOX_TRAINED, 6.0, "latents (1, F, 4, h/8, w/8)",
                      frames=COGVIDEOX_TRAINED_FRAMES),
    "ltx": Call(LTX_TRAINED, 3.0, "packed latents (1, F*h*w, 8)", frames=LTX_TRAINED_FRAMES,
                temporal=8, mask=_MASK),
    "hunyuan_video": Call(HUNYUAN_TRAINED, 6.0, "latents (1, 4, F, h/8, w/8)",
                          frames=HUNYUAN_TRAINED_FRAMES, pooled=True, mask=_MASK,
                          negatives="true_cfg"),
    # cfg is true_cfg_scale; negative embeds are passed when cfg > 1.
    "qwenimage": Call(QWEN_TRAINED, 4.0, "packed latents (1, (h/16)*(w/16), 16)",
                      mask="prompt_embeds_mask", negatives="cfg", cfg_name="true_cfg_scale"),
    # Chroma's own encoder returns a float mask (an int64 one fails in SDPA).
    "chroma": Call(CHROMA_TRAINED, 5.0, "packed latents (1, (h/4)*(w/4), 16)", mask=_MASK,
                   float_mask=True),
    "cogview4": Call(COGVIEW4_TRAINED, 5.0, "latents (1, 4, h/8, w/8)"),
    "lumina2": Call(LUMINA2_TRAINED, 4.0, "latents (1, 4, h/8, w/8)", mask=_MASK,
                    extra=_NO_PROMPT),
    # cfg is the embedded guidance.
    "flux2": Call(FLUX2_TRAINED, 4.0, "packed latents (1, (h/16)*(w/16), 16)", negatives="never"),
    "auraflow": Call(AURAFLOW_TRAINED, 3.5, "latents (1, 4, h/2, w/2)", mask=_MASK,
                     extra=_NO_PROMPT),
    # Sana-Video names num_frames "frames"; its bins need sample_size 30 or 22 (480p / 720p).
    "sana_video": Call(SANA_VIDEO_TRAINED, 4.5, "latents (1, 4, F, h/8, w/8)",
                       frames=SANA_VIDEO_TRAINED_FRAMES, mask=_MASK, frames_name="frames",
                       extra=(*_NO_PROMPT, ("use_resolution_binning", False))),
    "mochi": Call(MOCHI_TRAINED, 4.5, "latents (1, 12, F, h/8, w/8)", frames=MOCHI_TRAINED_FRAMES,
                  temporal=6, steps=3, mask=_MASK),
}  # fmt: skip

# The per-family helpers the tests import: ``sd3_call_kwargs(height, width, steps=..., cfg=...,
# seed=...)`` and so on.
auraflow_call_kwargs, chroma_call_kwargs = CALLS["auraflow"], CALLS["chroma"]
cogvideox_call_kwargs, cogview4_call_kwargs = CALLS["cogvideox"], CALLS["cogview4"]
flux_call_kwargs, flux2_call_kwargs = CALLS["flux"], CALLS["flux2"]
hunyuan_video_call_kwargs, ltx_call_kwargs = CALLS["hunyuan_video"], CALLS["ltx"]
lumina2_call_kwargs, mochi_call_kwargs = CALLS["lumina2"], CALLS["mochi"]
pixart_call_kwargs, qwenimage_call_kwargs = CALLS["pixart"], CALLS["qwenimage"]
sana_call_kwargs, sana_video_call_kwargs = CALLS["sana"], CALLS["sana_video"]
sd3_call_kwargs, wan_call_kwargs = CALLS["sd3"], CALLS["wan"]


# --------------------------------------------------------------------------------------------
# Registry and self-check
# --------------------------------------------------------------------------------------------


def _families() -> dict:
    """Every family: name -> (builder, call_kwargs, trained-size kwargs, doubled-size kwargs).

    Binning families are listed twice: with the default binning (the doubled request runs at the
    trained size) and with ``binning=False``; true-CFG families with and without it."""
    alpha = replace(CALLS["pixart"], size=PIXART_ALPHA_MICRO_TRAINED)  # with micro-conditions
    true_cfg, nobin = dict(true_cfg=4.0), dict(binning=False)
    table = {  # name: (builder, call, options)
        "sd3": (tiny_sd3_pipeline, CALLS["sd3"], {}),
        "flux_dev": (tiny_flux_pipeline, CALLS["flux"], {}),
        "flux_dev_true_cfg": (tiny_flux_pipeline, CALLS["flux"], true_cfg),
        "flux_schnell_true_cfg": (partial(tiny_flux_pipeline, guidance_embeds=False),
                                  CALLS["flux"], true_cfg),
        "pixart_sigma": (tiny_pixart_sigma_pipeline, CALLS["pixart"], {}),
        "pixart_sigma_nobin": (tiny_pixart_sigma_pipeline, CALLS["pixart"], nobin),
        "pixart_alpha_micro": (tiny_pixart_alpha_pipeline, alpha, {}),
        "pixart_alpha_micro_nobin": (tiny_pixart_alpha_pipeline, alpha, nobin),
        "sana": (tiny_sana_pipeline, CALLS["sana"], {}),
        "sana_nobin": (tiny_sana_pipeline, CALLS["sana"], nobin),
        "wan21": (tiny_wan_pipeline, CALLS["wan"], {}),
        "wan22": (tiny_wan22_pipeline, CALLS["wan"], {}),
        "cogvideox": (tiny_cogvideox_pipeline, CALLS["cogvideox"], {}),
        "ltx": (tiny_ltx_pipeline, CALLS["ltx"], {}),
        "hunyuan_video": (tiny_hunyuan_video_pipeline, CALLS["hunyuan_video"], {}),
        "hunyuan_video_true_cfg": (tiny_hunyuan_video_pipeline, CALLS["hunyuan_video"], true_cfg),
        "qwenimage": (tiny_qwenimage_pipeline, CALLS["qwenimage"], {}),
        "chroma": (tiny_chroma_pipeline, CALLS["chroma"], {}),
        "cogview4": (tiny_cogview4_pipeline, CALLS["cogview4"], {}),
        "lumina2": (tiny_lumina2_pipeline, CALLS["lumina2"], {}),
        "flux2": (tiny_flux2_pipeline, CALLS["flux2"], {}),
        "auraflow": (tiny_auraflow_pipeline, CALLS["auraflow"], {}),
        "sana_video": (tiny_sana_video_pipeline, CALLS["sana_video"], {}),
        "mochi": (tiny_mochi_pipeline, CALLS["mochi"], {}),
    }  # fmt: skip
    return {name: (builder, partial(call, **options), *call.sizes())
            for name, (builder, call, options) in table.items()}  # fmt: skip


def _self_check() -> None:
    """Build every family, run the trained and the doubled size twice each (determinism), and
    print latent shapes, seconds, and what the transformer(s) received per call."""
    import logging
    import time
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from diffusers_models import ForwardRecorder

    warnings.filterwarnings("ignore")
    diffusers_logging.set_verbosity(logging.ERROR)
    torch.set_num_threads(1)
    start = time.perf_counter()
    for name, (builder, call_kwargs, trained, doubled) in _families().items():
        t0 = time.perf_counter()
        pipe = builder()
        built = time.perf_counter() - t0
        models = [m for m in (pipe.transformer, getattr(pipe, "transformer_2", None)) if m]
        for label, size in (("trained", trained), ("2x", doubled)):
            recorders = [ForwardRecorder(m) for m in models]
            t0 = time.perf_counter()
            out = pipe(**call_kwargs(**size))[0]
            seconds = time.perf_counter() - t0
            for r in recorders:
                r.close()
            again = pipe(**call_kwargs(**size))[0]
            assert torch.isfinite(out).all(), name
            assert torch.equal(out, again), name
            calls = []
            for i, r in enumerate(recorders):
                for args, _ in r.calls:
                    t = args["timestep"]
                    t = t.flatten()[0].item() if isinstance(t, torch.Tensor) else t
                    tag = f"T{i + 1}:" if len(models) > 1 else ""
                    calls.append(f"{tag}b{args['hidden_states'].shape[0]}@{t:.4g}")
            print(
                f"{name:26s} {label:7s} {str(size):45s} -> {str(tuple(out.shape)):20s}"
                f" {seconds:5.2f}s (build {built:.1f}s) calls: {' '.join(calls)}"
            )
    print(f"total {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    import os
    import sys

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    _self_check()
