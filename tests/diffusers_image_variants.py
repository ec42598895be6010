"""Tiny diffusers image pipelines with conditioning that rides along with the sample.

The companions of :mod:`diffusers_transformers`: the editing, fill, ControlNet, img2img and
inpainting variants of its families (built with ``Variant.from_pipe`` from its tiny pipelines,
sharing their transformer, VAE and scheduler), and the image families it does not build
(Z-Image, HunyuanImage, HiDream, Qwen-Image 2.1). Every builder is deterministic for a seed, has
no text encoder, and takes its call arguments from :func:`call_kwargs`: the base family's
(:data:`diffusers_transformers.CALLS`) plus the conditioning (reference images as PIL images,
masks, control images, ``strength``).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from diffusers_models import randomize_zero_params
from diffusers_transformers import (
    _FLUX_TRANSFORMER,
    CALLS,
    FLUX_LATENT_CHANNELS,
    POOLED_DIM,
    QWEN_TRAINED,
    SEQ,
    TEXT_DIM,
    _build,
    _finish,
    _pipeline,
    tiny_chroma_pipeline,
    tiny_cogview4_pipeline,
    tiny_flux_pipeline,
    tiny_kl_vae,
    tiny_kl_vae_f8,
    tiny_qwenimage_pipeline,
    tiny_sd3_pipeline,
)
from PIL import Image


def picture(height: int, width: int, seed: int = 0) -> Image.Image:
    """A random RGB PIL image (reference, init or control image)."""
    rgb = np.random.default_rng(seed).random((height, width, 3))
    return Image.fromarray((rgb * 255).astype(np.uint8))


def mask_picture(height: int, width: int) -> Image.Image:
    """A black mask with a white rectangle whose edges fall mid-block: at 2 (mod 4) pixels, inside
    the 2x2 latent blocks of a 2x factor for a VAE factor of 2 (sizes multiples of 32)."""
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[height // 4 + 2 : 3 * height // 4 + 2, width // 8 + 2 : 3 * width // 4 + 2] = 255
    return Image.fromarray(mask)


def variant(cls_name: str, base, seed: int = 0, **components):
    """``cls.from_pipe(base(seed), **components)``, progress bars off."""
    import diffusers

    pipe = getattr(diffusers, cls_name).from_pipe(base(seed), **components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_qwen_edit_pipeline(seed: int = 0, plus: bool = False):
    """QwenImageEdit(Plus)Pipeline on the tiny Qwen-Image (``processor=None``).

    The pipelines size every reference image (and by default the output) to an area of 1 MP,
    hard-coded; this subclass, of the same name, scales that area to the tiny family's trained
    one (:data:`QWEN_TRAINED` squared) while it samples, as the tiny models scale everything.
    """
    import importlib
    from unittest import mock

    import diffusers

    name = "QwenImageEditPlusPipeline" if plus else "QwenImageEditPipeline"
    module = importlib.import_module(
        "diffusers.pipelines.qwenimage.pipeline_qwenimage_edit" + ("_plus" if plus else "")
    )
    original = module.calculate_dimensions
    scale = (QWEN_TRAINED / 1024) ** 2

    def __call__(self, *args, **kwargs):
        def scaled(area, ratio):
            return original(area * scale, ratio)

        with mock.patch.object(module, "calculate_dimensions", scaled):
            return getattr(diffusers, name).__call__(self, *args, **kwargs)

    cls = type(name, (getattr(diffusers, name),), {"__call__": __call__})
    pipe = cls(**{**tiny_qwenimage_pipeline(seed).components, "processor": None})
    pipe.set_progress_bar_config(disable=True)
    return pipe


class _Qwen3VLProcessorStandIn:
    """What QwenImage21Pipeline's constructor reads from its processor (the system prompt's
    token count and the image-pad token id); the tests pass prompt embeddings."""

    class tokenizer:  # noqa: N801 (the processor's attribute)
        @staticmethod
        def encode(text: str) -> list[int]:
            return [151655]

    @staticmethod
    def apply_chat_template(*args, **kwargs) -> list[list[int]]:
        return [[0] * 5]


QWEN21_TRAINED = 128  # pixels; latents 8x8 tokens (VAE factor 16, unpatched)


def tiny_qwenimage21_pipeline(seed: int = 0, **overrides):
    """A QwenImage21Pipeline: QwenImage21Transformer2DModel (unpatched tokens, block-causal
    attention with a prefix KV cache), FlowMatchEuler (dynamic shift), no VAE or text encoder.

    - Latents (B, h*w, C) row-major, h = height / 16; the transformer appends the target to the
      text (and condition images) in one joint sequence and returns all of it; the pipeline
      keeps the last h*w tokens. ``img_mask`` marks image slots of 2x2 tokens.
    - Timestep: ``σ`` (``t / 1000``); true CFG with negative embeds (two calls, each with its
      own KV cache: the first step extracts it, the others read it).
    """
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        QwenImage21Pipeline,
        QwenImage21Transformer2DModel,
    )

    transformer = _build(QwenImage21Transformer2DModel, seed, dict(
        patch_size=1, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=16,
        num_attention_heads=2, context_in_dim=TEXT_DIM, axes_dims_rope=(8, 4, 4),
    ), overrides)  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5,
        max_shift=0.9, base_image_seq_len=4, max_image_seq_len=(QWEN21_TRAINED // 16) ** 2,
    )  # fmt: skip
    processor = _Qwen3VLProcessorStandIn()
    pipe = QwenImage21Pipeline(scheduler=scheduler, vae=None, text_encoder=None,
                               processor=processor, transformer=transformer)  # fmt: skip
    return _finish(pipe, seed)


def tiny_sd3_inpaint_pipeline(seed: int = 0, masked_channels: bool = False):
    """A StableDiffusion3InpaintPipeline: it takes only transformers of 16 input channels
    (latents, blended with the image's outside the mask) or 33 (latents, the mask at latent
    size and the masked image's latents, as channels); 16 latent channels here too."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3InpaintPipeline

    base = tiny_sd3_pipeline(seed)
    config = {k: v for k, v in base.transformer.config.items() if not k.startswith("_")}
    config.update(in_channels=33 if masked_channels else 16, out_channels=16)
    transformer = _build(SD3Transformer2DModel, seed, config)
    vae = tiny_kl_vae(16, shift_factor=0.0609, scaling_factor=1.5035)
    parts = {**base.components, "transformer": transformer, "vae": vae}
    return _finish(StableDiffusion3InpaintPipeline(**parts), seed)


# --------------------------------------------------------------------------------------------
# ControlNets and Flux Fill
# --------------------------------------------------------------------------------------------


def tiny_sd3_controlnet_pipeline(seed: int = 0, inpainting: bool = False):
    """StableDiffusion3ControlNet(Inpainting)Pipeline: the tiny SD3 and an SD3ControlNetModel
    of one layer (the inpainting ControlNet takes the mask as one extra channel)."""
    from diffusers import SD3ControlNetModel

    base = tiny_sd3_pipeline(seed)
    config = {k: v for k, v in base.transformer.config.items() if not k.startswith("_")}
    keep = ("sample_size", "patch_size", "in_channels", "attention_head_dim",
            "num_attention_heads", "joint_attention_dim", "caption_projection_dim",
            "pooled_projection_dim", "out_channels", "pos_embed_max_size")  # fmt: skip
    config = {k: config[k] for k in keep}
    config.update(num_layers=1, extra_conditioning_channels=1 if inpainting else 0)
    controlnet = _build(SD3ControlNetModel, seed + 3, config)
    randomize_zero_params(controlnet, seed + 3)
    name = (
        "StableDiffusion3ControlNetInpaintingPipeline"
        if inpainting
        else "StableDiffusion3ControlNetPipeline"
    )
    return _pipeline_from(name, base, controlnet=controlnet)


def tiny_flux_controlnet_pipeline(seed: int = 0):
    """FluxControlNetPipeline: the tiny Flux-dev and a FluxControlNetModel (one double and one
    single block; control images through the VAE, packed as the latents)."""
    from diffusers import FluxControlNetModel

    base = tiny_flux_pipeline(seed)
    config = dict(_FLUX_TRANSFORMER, pooled_projection_dim=POOLED_DIM, guidance_embeds=True)
    controlnet = _build(FluxControlNetModel, seed + 3, config)
    randomize_zero_params(controlnet, seed + 3)
    return _pipeline_from("FluxControlNetPipeline", base, controlnet=controlnet)


def _pipeline_from(cls_name: str, base, **components):
    """``cls(**base.components, **components)``, progress bars off."""
    import diffusers

    parts = {**base.components, **components}
    pipe = getattr(diffusers, cls_name)(
        **{k: v for k, v in parts.items() if k in _init_params(cls_name)}
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _init_params(cls_name: str) -> set[str]:
    """The component names a pipeline class takes."""
    import inspect

    import diffusers

    return set(inspect.signature(getattr(diffusers, cls_name).__init__).parameters) - {"self"}


def tiny_flux_fill_pipeline(seed: int = 0):
    """FluxFillPipeline: the tiny Flux with a transformer taking ``4·(C + C + s²)`` packed
    channels (target, masked image, mask folded as s×s sub-pixels; s = 2 here, 8 in FLUX.1
    Fill) and returning ``4·C``."""
    c = FLUX_LATENT_CHANNELS
    base = partial(tiny_flux_pipeline, in_channels=4 * (2 * c + 4), out_channels=4 * c)
    return variant("FluxFillPipeline", base, seed)


def tiny_flux_control_pipeline(seed: int = 0):
    """FluxControlPipeline (Flux Depth/Canny): the tiny Flux with a transformer taking the
    control image's packed latents as channels after the target's (twice the channels)."""
    c = FLUX_LATENT_CHANNELS
    base = partial(tiny_flux_pipeline, in_channels=8 * c, out_channels=4 * c)
    return variant("FluxControlPipeline", base, seed)


def tiny_cogview4_control_pipeline(seed: int = 0):
    """CogView4ControlPipeline: the tiny CogView4 with twice the input channels (the control
    image's latents after the target's)."""
    from diffusers import CogView4ControlPipeline, CogView4Transformer2DModel

    base = tiny_cogview4_pipeline(seed)
    config = {k: v for k, v in base.transformer.config.items() if not k.startswith("_")}
    config.update(in_channels=2 * config["in_channels"])
    transformer = _build(CogView4Transformer2DModel, seed, config)
    return _finish(CogView4ControlPipeline(**{**base.components, "transformer": transformer}), seed)


def tiny_chroma_img2img_pipeline(seed: int = 0):
    """ChromaImg2ImgPipeline on the tiny Chroma, with Flux's VAE shift and scale (it encodes)."""
    vae = tiny_kl_vae(FLUX_LATENT_CHANNELS, shift_factor=0.1159, scaling_factor=0.3611,
                      use_quant_conv=False, use_post_quant_conv=False)  # fmt: skip
    return variant("ChromaImg2ImgPipeline", tiny_chroma_pipeline, seed, vae=vae)


def tiny_qwenimage_controlnet_pipeline(seed: int = 0):
    """QwenImageControlNetPipeline: the tiny Qwen-Image and a one-layer QwenImageControlNetModel
    (its ``img_shapes`` are one bare tuple per batch element)."""
    from diffusers import QwenImageControlNetModel

    base = tiny_qwenimage_pipeline(seed)
    config = dict(patch_size=2, in_channels=16, out_channels=4, num_layers=1,
                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=TEXT_DIM,
                  axes_dims_rope=(8, 4, 4))  # fmt: skip
    controlnet = _build(QwenImageControlNetModel, seed + 3, config)
    randomize_zero_params(controlnet, seed + 3)
    return _pipeline_from("QwenImageControlNetPipeline", base, controlnet=controlnet)


# --------------------------------------------------------------------------------------------
# Families of their own: Z-Image, HunyuanImage, HiDream
# --------------------------------------------------------------------------------------------

ZIMAGE_TRAINED = 64  # pixels; latents 8x8 (VAE factor 8), 4x4 tokens (patch 2)
HUNYUANIMAGE_TRAINED = 64  # pixels; latents 8x8 (VAE factor 8), 4x4 tokens (patch 2)
HIDREAM_TRAINED = 64  # pixels; latents 8x8 (VAE factor 8), 4x4 tokens (patch 2)


def tiny_zimage_pipeline(seed: int = 0, **overrides):
    """A ZImagePipeline: ZImageTransformer2DModel (patch 2), FlowMatchEuler (shift 3).

    - The transformer takes a *list* of latents (C, 1, h, w), ``t = (1000 - timestep)/1000``
      (``1 - σ``) and a list of caption features; it returns a list, which the pipeline stacks
      and negates (the model predicts ``x0 - ε``).
    - CFG: one call with the list doubled (prompts, then negatives).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

    transformer = _build(ZImageTransformer2DModel, seed, dict(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=32, n_layers=1,
        n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=TEXT_DIM,
        axes_dims=[8, 4, 4], axes_lens=[64, 32, 32],
    ), overrides)  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return _pipeline(ZImagePipeline, seed, transformer=transformer, scheduler=scheduler,
                     vae=tiny_kl_vae_f8(4))  # fmt: skip


def tiny_hunyuanimage_pipeline(seed: int = 0, **overrides):
    """A HunyuanImagePipeline (2.1 base): HunyuanImageTransformer2DModel (patch 2), FlowMatch
    Euler (shift 4), the CFG guider; grid latents, ``timestep`` = ``1000·σ``."""
    from diffusers import (
        ClassifierFreeGuidance,
        FlowMatchEulerDiscreteScheduler,
        HunyuanImagePipeline,
        HunyuanImageTransformer2DModel,
    )

    transformer = _build(HunyuanImageTransformer2DModel, seed, dict(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16,
        num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=(2, 2),
        text_embed_dim=TEXT_DIM, text_embed_2_dim=TEXT_DIM, rope_axes_dim=(8, 8),
        guidance_embeds=False,
    ), overrides)  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=4.0)
    vae = tiny_kl_vae_f8(4)
    vae.config.spatial_compression_ratio = 8
    guider = ClassifierFreeGuidance(guidance_scale=3.5)
    pipe = HunyuanImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None,
        tokenizer_2=None, transformer=transformer, guider=guider, ocr_guider=None,
    )  # fmt: skip
    return _finish(pipe, seed)


def tiny_hidream_pipeline(seed: int = 0, **overrides):
    """A HiDreamImagePipeline: HiDreamImageTransformer2DModel (patch 2, MoE off), FlowMatch
    Euler; the pipeline negates the output (the model predicts ``x0 - ε``); ``timesteps`` =
    ``1000·σ``; CFG: one doubled batch."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        HiDreamImagePipeline,
        HiDreamImageTransformer2DModel,
    )

    transformer = _build(HiDreamImageTransformer2DModel, seed, dict(
        patch_size=2, in_channels=4, out_channels=4, num_layers=1, num_single_layers=1,
        attention_head_dim=8, num_attention_heads=4, caption_channels=[TEXT_DIM, TEXT_DIM],
        text_emb_dim=POOLED_DIM, num_routed_experts=2, num_activated_experts=1,
        axes_dims_rope=(4, 2, 2), max_resolution=(32, 32), llama_layers=(0, 1),
    ), overrides)  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return _pipeline(HiDreamImagePipeline, seed, text_encoders=4, transformer=transformer,
                     scheduler=scheduler, vae=tiny_kl_vae_f8(4))  # fmt: skip


# --------------------------------------------------------------------------------------------
# Call arguments
# --------------------------------------------------------------------------------------------


def call_kwargs(base: str, extra: dict | None = None, **options) -> dict:
    """The base family's call (:data:`CALLS`) with ``options``, updated by ``extra``."""
    return {**CALLS[base](**options), **(extra or {})}


def _embeds(seed: int, *shapes) -> list[torch.Tensor]:
    """Random tensors of ``shapes`` from one generator."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=gen) for shape in shapes]


def zimage_call_kwargs(height=None, width=None, *, steps=2, cfg=4.0, seed=0) -> dict:
    """Z-Image's call: lists of caption features (SEQ, TEXT_DIM), negatives for CFG."""
    pos, neg = _embeds(seed, (SEQ, TEXT_DIM), (SEQ, TEXT_DIM))
    return dict(
        prompt_embeds=[pos], negative_prompt_embeds=[neg], height=height or ZIMAGE_TRAINED,
        width=width or ZIMAGE_TRAINED, num_inference_steps=steps, guidance_scale=cfg,
        generator=torch.Generator().manual_seed(seed), output_type="latent",
    )  # fmt: skip


def hunyuanimage_call_kwargs(height=None, width=None, *, steps=2, seed=0) -> dict:
    """HunyuanImage's call: Qwen and ByT5 (glyph) embeddings with masks, and their negatives
    (the pipeline's CFG guider runs cond and uncond)."""
    pos, pos2, neg, neg2 = _embeds(seed, *[(1, SEQ, TEXT_DIM)] * 4)
    mask = torch.ones(1, SEQ, dtype=torch.long)
    return dict(
        prompt_embeds=pos, prompt_embeds_mask=mask, prompt_embeds_2=pos2,
        prompt_embeds_mask_2=mask.clone(), negative_prompt_embeds=neg,
        negative_prompt_embeds_mask=mask.clone(), negative_prompt_embeds_2=neg2,
        negative_prompt_embeds_mask_2=mask.clone(), height=height or HUNYUANIMAGE_TRAINED,
        width=width or HUNYUANIMAGE_TRAINED, num_inference_steps=steps,
        generator=torch.Generator().manual_seed(seed), output_type="latent",
    )  # fmt: skip


def qwenimage21_call_kwargs(height=None, width=None, *, steps=3, true_cfg=4.0, seed=0) -> dict:
    """Qwen-Image 2.1's call: embeddings (B, SEQ, TEXT_DIM) and negatives (true CFG)."""
    pos, neg = _embeds(seed, (1, SEQ, TEXT_DIM), (1, SEQ, TEXT_DIM))
    return dict(
        prompt_embeds=pos, negative_prompt_embeds=neg, true_cfg_scale=true_cfg,
        height=height or QWEN21_TRAINED, width=width or QWEN21_TRAINED,
        num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
        output_type="latent",
    )  # fmt: skip


def hidream_call_kwargs(height=None, width=None, *, steps=2, cfg=5.0, seed=0) -> dict:
    """HiDream's call: T5 and Llama embeddings (Llama's per layer), pooled CLIP, negatives."""
    t5, llama, pooled, nt5, nllama, npooled = _embeds(
        seed, (1, SEQ, TEXT_DIM), (2, 1, SEQ, TEXT_DIM), (1, POOLED_DIM),
        (1, SEQ, TEXT_DIM), (2, 1, SEQ, TEXT_DIM), (1, POOLED_DIM),
    )  # fmt: skip
    return dict(
        prompt_embeds_t5=t5, prompt_embeds_llama3=llama, pooled_prompt_embeds=pooled,
        negative_prompt_embeds_t5=nt5, negative_prompt_embeds_llama3=nllama,
        negative_pooled_prompt_embeds=npooled, height=height or HIDREAM_TRAINED,
        width=width or HIDREAM_TRAINED, num_inference_steps=steps, guidance_scale=cfg,
        generator=torch.Generator().manual_seed(seed), output_type="latent",
    )  # fmt: skip
