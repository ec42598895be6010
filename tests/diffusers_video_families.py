"""Tiny video pipelines with conditioning that rides along with the sample (random weights).

The companions of :mod:`diffusers_transformers` for image-to-video, first-last-frame, VACE,
per-token and per-frame times: Wan 2.1 / 2.2 image-to-video (CLIP image tokens, or two experts
without them), Wan 2.2 TI2V-5B (``expand_timesteps``), Wan VACE, SkyReels-V2 (diffusion forcing),
HunyuanVideo image-to-video (latent concat and token replace), HunyuanVideo 1.5, LTX-Video
image-to-video and conditions. Every builder ``tiny_<name>_pipeline(seed=0, **options)``
returns a real diffusers pipeline built from configs, text encoders None (pass prompt
embeddings), deterministic for a seed, progress bars off; every ``<name>_kwargs(...)`` returns
one call's keyword arguments with ``output_type="latent"`` (so ``pipe(**kwargs)[0]`` is the final
latent) and a seeded generator. Sizes reuse the trained sizes of :mod:`diffusers_transformers`.
"""

from __future__ import annotations

import torch
from diffusers_transformers import (
    HUNYUAN_LATENT_CHANNELS,
    HUNYUAN_TRAINED,
    HUNYUAN_TRAINED_FRAMES,
    LTX_TRAINED,
    LTX_TRAINED_FRAMES,
    POOLED_DIM,
    SEQ,
    TEXT_DIM,
    WAN_LATENT_CHANNELS,
    WAN_TRAINED,
    WAN_TRAINED_FRAMES,
    _build,
    _pipeline,
    _text_mask,
    tiny_ltx_pipeline,
    tiny_wan_transformer,
    tiny_wan_vae,
    wan_scheduler,
)

C = WAN_LATENT_CHANNELS
IMAGE_DIM = 16  # the tiny CLIP vision encoder's width (Wan 2.1 I2V's image_dim)


def pixels(height: int, width: int, seed: int = 7, frames: int | None = None) -> torch.Tensor:
    """A seeded image ``(1, 3, H, W)`` (or video ``(1, 3, F, H, W)``) in [0, 1]."""
    shape = (1, 3, height, width) if frames is None else (1, 3, frames, height, width)
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _texts(seed: int, negatives: bool = True, width: int = TEXT_DIM) -> dict:
    """``prompt_embeds`` (1, SEQ, width) and, with ``negatives``, its negative twin."""
    gen = torch.Generator().manual_seed(seed)
    out = {"prompt_embeds": torch.randn(1, SEQ, width, generator=gen)}
    if negatives:
        out["negative_prompt_embeds"] = torch.randn(1, SEQ, width, generator=gen)
    return out


def _video_call(height, width, frames, steps, cfg, seed, **extra) -> dict:
    """The size, steps, guidance, seeded generator and ``output_type="latent"``."""
    return dict(
        height=height, width=width, num_frames=frames, num_inference_steps=steps,
        guidance_scale=cfg, generator=torch.Generator().manual_seed(seed),
        output_type="latent", **extra,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Wan image-to-video (2.1 with CLIP tokens, 2.2 A14B with two experts), TI2V-5B, VACE
# --------------------------------------------------------------------------------------------


def tiny_clip_vision(seed: int = 3):
    """A CLIPVisionModel (width IMAGE_DIM, 32-pixel images) and its image processor."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=IMAGE_DIM, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, image_size=32, patch_size=16, projection_dim=IMAGE_DIM,
    )  # fmt: skip
    processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_rescale=False
    )
    return CLIPVisionModel(config).eval(), processor


def tiny_wan_i2v_pipeline(seed: int = 0, clip: bool = True, experts: bool = False,
                          flf2v: bool = False):  # fmt: skip
    """A WanImageToVideoPipeline: transformer in_channels = C + 4 + C (noisy latents, the
    4-channel frame mask, the image latents), out C.

    ``clip=True`` is Wan 2.1 I2V (``image_dim``: CLIP image tokens ``encoder_hidden_states_image``
    from a tiny CLIPVisionModel); ``experts=True`` is Wan 2.2 I2V A14B (no CLIP, two experts,
    ``boundary_ratio=0.875``, shift 3 so that 2 steps use one each). ``flf2v=True`` is Wan 2.1
    FLF2V: CLIP tokens of both images, with a position embedding of twice the tokens (5 per
    32-pixel image); call it with ``last_image``.
    """
    from diffusers import WanImageToVideoPipeline

    channels = dict(in_channels=2 * C + 4, out_channels=C)
    image = dict(image_dim=IMAGE_DIM, added_kv_proj_dim=24) if clip else {}
    if flf2v:
        image["pos_embed_seq_len"] = 2 * 5
    encoder, processor = tiny_clip_vision() if clip else (None, None)
    two = {}
    if experts:
        two = dict(transformer_2=tiny_wan_transformer(seed + 1, **channels), boundary_ratio=0.875)
    return _pipeline(
        WanImageToVideoPipeline, seed, transformer=tiny_wan_transformer(seed, **channels, **image),
        scheduler=wan_scheduler(), vae=tiny_wan_vae(), image_encoder=encoder,
        image_processor=processor, **two,
    )  # fmt: skip


def wan_i2v_kwargs(height=WAN_TRAINED, width=WAN_TRAINED, num_frames=WAN_TRAINED_FRAMES,
                   steps=2, cfg=5.0, seed=0, last_image=False) -> dict:  # fmt: skip
    """One Wan image-to-video call: the first image (and ``last_image``) at the request's size."""
    extra = {"last_image": pixels(height, width, seed + 2)} if last_image else {}
    return _video_call(height, width, num_frames, steps, cfg, seed,
                       image=pixels(height, width, seed + 1), **_texts(seed), **extra)  # fmt: skip


def tiny_wan_ti2v_pipeline(seed: int = 0, image: bool = True):
    """Wan 2.2 TI2V-5B: ``expand_timesteps=True`` (one time per token), in_channels C.

    ``image=True``: WanImageToVideoPipeline (the first latent frame is the clean image, time 0);
    else WanPipeline (text-to-video, every token at the step's time).
    """
    from diffusers import WanImageToVideoPipeline, WanPipeline

    cls = WanImageToVideoPipeline if image else WanPipeline
    extra = dict(image_encoder=None, image_processor=None) if image else {}
    return _pipeline(cls, seed, transformer=tiny_wan_transformer(seed), scheduler=wan_scheduler(),
                     vae=tiny_wan_vae(), expand_timesteps=True, **extra)  # fmt: skip


def wan_ti2v_kwargs(height=WAN_TRAINED, width=WAN_TRAINED, num_frames=WAN_TRAINED_FRAMES,
                    steps=2, cfg=5.0, seed=0, image=True) -> dict:  # fmt: skip
    """One TI2V call (with the first image, or text only)."""
    extra = {"image": pixels(height, width, seed + 1)} if image else {}
    return _video_call(height, width, num_frames, steps, cfg, seed, **_texts(seed), **extra)


VACE_LAYERS = (0, 1)


def tiny_wan_vace_pipeline(seed: int = 0):
    """A WanVACEPipeline: WanVACETransformer3DModel with VACE blocks at layers 0 and 1.

    ``control_hidden_states``: (B, 2C + 64, F, h, w): the inactive and reactive video latents
    (C each) and the 8x8-pixel mask packed into 64 channels; reference images add latent frames
    in front of both the sample and the control latents.
    """
    from diffusers import WanVACEPipeline, WanVACETransformer3DModel

    transformer = _build(WanVACETransformer3DModel, seed, dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
        in_channels=C, out_channels=C, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=32,
        num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=64, vace_layers=list(VACE_LAYERS), vace_in_channels=2 * C + 64,
    ))  # fmt: skip
    return _pipeline(WanVACEPipeline, seed, transformer=transformer, scheduler=wan_scheduler(),
                     vae=tiny_wan_vae())  # fmt: skip


def wan_vace_kwargs(height=WAN_TRAINED, width=WAN_TRAINED, num_frames=WAN_TRAINED_FRAMES,
                    steps=2, cfg=5.0, seed=0, reference=False) -> dict:  # fmt: skip
    """One VACE call: a control video, a mask (the right half regenerated), a reference image."""
    from PIL import Image

    gen = torch.Generator().manual_seed(seed + 1)
    video = [Image.fromarray((torch.rand(height, width, 3, generator=gen) * 255).byte().numpy())
             for _ in range(num_frames)]  # fmt: skip
    half = torch.zeros(height, width, dtype=torch.uint8)
    half[:, width // 2 :] = 255
    mask = [Image.fromarray(half.numpy()) for _ in range(num_frames)]
    extra = {"reference_images": [video[0]]} if reference else {}
    return _video_call(height, width, num_frames, steps, cfg, seed, video=video, mask=mask,
                       **_texts(seed), **extra)  # fmt: skip


# --------------------------------------------------------------------------------------------
# SkyReels-V2: text- and image-to-video, diffusion forcing (a time per latent frame)
# --------------------------------------------------------------------------------------------


def tiny_skyreels_transformer(seed: int = 0, **overrides):
    """A SkyReelsV2Transformer3DModel: the tiny Wan configuration."""
    from diffusers import SkyReelsV2Transformer3DModel

    return _build(SkyReelsV2Transformer3DModel, seed, dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=C,
        out_channels=C, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=32, num_layers=2,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=64,
    ), overrides)  # fmt: skip


def tiny_skyreels_pipeline(seed: int = 0, kind: str = "df"):
    """A SkyReels-V2 pipeline: ``kind`` "t2v" (SkyReelsV2Pipeline), "i2v" (image-to-video:
    2C + 4 input channels, CLIP image tokens), "df" (SkyReelsV2DiffusionForcingPipeline) or
    "df_i2v" (its image-to-video: the image's latent frame is a clean prefix, time 0). The
    diffusion-forcing checkpoints embed the fps (``inject_sample_info``)."""
    import diffusers

    name = {"t2v": "SkyReelsV2Pipeline", "i2v": "SkyReelsV2ImageToVideoPipeline",
            "df": "SkyReelsV2DiffusionForcingPipeline",
            "df_i2v": "SkyReelsV2DiffusionForcingImageToVideoPipeline"}[kind]  # fmt: skip
    extra, overrides = {}, dict(inject_sample_info=kind.startswith("df"))
    if kind == "i2v":
        encoder, processor = tiny_clip_vision()
        extra = dict(image_encoder=encoder, image_processor=processor)
        overrides.update(in_channels=2 * C + 4, image_dim=IMAGE_DIM, added_kv_proj_dim=24)
    return _pipeline(
        getattr(diffusers, name), seed, transformer=tiny_skyreels_transformer(seed, **overrides),
        scheduler=wan_scheduler(8.0), vae=tiny_wan_vae(), **extra,
    )  # fmt: skip


def skyreels_kwargs(height=WAN_TRAINED, width=WAN_TRAINED, num_frames=WAN_TRAINED_FRAMES,
                    steps=2, cfg=5.0, seed=0, image=False, ar_step=None,
                    causal_block_size=None) -> dict:  # fmt: skip
    """One SkyReels-V2 call; ``ar_step`` (with ``causal_block_size``) makes diffusion forcing
    asynchronous: later blocks of frames lag ``ar_step`` steps behind (times per frame)."""
    extra = {"image": pixels(height, width, seed + 1)} if image else {"prompt": None}
    if ar_step is not None:
        extra.update(ar_step=ar_step, causal_block_size=causal_block_size or 1,
                     base_num_frames=num_frames)  # fmt: skip
    return _video_call(height, width, num_frames, steps, cfg, seed, **_texts(seed), **extra)


# --------------------------------------------------------------------------------------------
# HunyuanVideo image-to-video (latent concat, token replace) and HunyuanVideo 1.5
# --------------------------------------------------------------------------------------------


def tiny_hunyuan_vae(seed: int = 1):
    """An AutoencoderKLHunyuanVideo (spatial 8, temporal 4), as the tiny HunyuanVideo pipeline's."""
    from diffusers import AutoencoderKLHunyuanVideo

    return _build(AutoencoderKLHunyuanVideo, seed, dict(
        in_channels=3, out_channels=3, latent_channels=HUNYUAN_LATENT_CHANNELS,
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
        spatial_compression_ratio=8, temporal_compression_ratio=4,
    ))  # fmt: skip


def tiny_hunyuan_i2v_pipeline(seed: int = 0, condition: str = "latent_concat"):
    """A HunyuanVideoImageToVideoPipeline: ``condition`` is the transformer's
    ``image_condition_type``: "latent_concat" (in_channels 2C + 1: the image latents in the
    first frame, and its mask) or "token_replace" (the first latent frame is the clean image;
    the transformer embeds it at time 0)."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoImageToVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )

    h = HUNYUAN_LATENT_CHANNELS
    in_channels = 2 * h + 1 if condition == "latent_concat" else h
    transformer = _build(HunyuanVideoTransformer3DModel, seed, dict(
        in_channels=in_channels, out_channels=h, num_attention_heads=2, attention_head_dim=16,
        num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1,
        guidance_embeds=condition == "token_replace", text_embed_dim=TEXT_DIM,
        pooled_projection_dim=POOLED_DIM, rope_axes_dim=(4, 6, 6),
        image_condition_type=condition,
    ))  # fmt: skip
    vae = tiny_hunyuan_vae()
    return _pipeline(
        HunyuanVideoImageToVideoPipeline, seed, text_encoders=2, transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=7.0), vae=vae,
        image_processor=None,
    )  # fmt: skip


def hunyuan_i2v_kwargs(height=HUNYUAN_TRAINED, width=HUNYUAN_TRAINED,
                       num_frames=HUNYUAN_TRAINED_FRAMES, steps=2, cfg=6.0,
                       seed=0) -> dict:  # fmt: skip
    """One HunyuanVideo image-to-video call (embedded guidance ``cfg``, no true CFG)."""
    gen = torch.Generator().manual_seed(seed)
    texts = dict(
        prompt_embeds=torch.randn(1, SEQ, TEXT_DIM, generator=gen),
        pooled_prompt_embeds=torch.randn(1, POOLED_DIM, generator=gen),
        prompt_attention_mask=_text_mask(),
    )
    return _video_call(height, width, num_frames, steps, cfg, seed,
                       image=pixels(height, width, seed + 1), **texts)  # fmt: skip


HV15_TRAINED = 64  # pixels; latents 4x4 (VAE factor 16), patch 1
HV15_TRAINED_FRAMES = 9  # 3 latent frames (temporal factor 4)
HV15_TEXT_2_DIM = 16  # the tiny ByT5 width
HV15_IMAGE_DIM = 8  # the tiny SigLIP width


def tiny_hunyuan_video15_pipeline(seed: int = 0, image: bool = False, meanflow: bool = False):
    """A HunyuanVideo15Pipeline (``image=True``: HunyuanVideo15ImageToVideoPipeline, with a tiny
    SigLIP image encoder): HunyuanVideo15Transformer3DModel, in_channels 2C + 1 (the noisy
    latents, the first-frame latents, a mask; zeros for text-to-video), out C, patch 1; the
    ``guider`` does CFG (two calls per step). ``meanflow=True`` adds the mean-flow embedding (the
    pipeline then passes ``timestep_r``). The image-to-video pipeline picks its size from the
    image's aspect ratio and ``pipe.target_size`` (64 pixels here)."""
    import diffusers
    from diffusers import (
        AutoencoderKLHunyuanVideo15,
        ClassifierFreeGuidance,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideo15Transformer3DModel,
    )

    transformer = _build(HunyuanVideo15Transformer3DModel, seed, dict(
        in_channels=2 * C + 1, out_channels=C, num_attention_heads=2, attention_head_dim=16,
        num_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1,
        text_embed_dim=TEXT_DIM, text_embed_2_dim=HV15_TEXT_2_DIM,
        image_embed_dim=HV15_IMAGE_DIM, rope_axes_dim=(4, 6, 6), target_size=HV15_TRAINED,
        use_meanflow=meanflow,
    ))  # fmt: skip
    vae = _build(AutoencoderKLHunyuanVideo15, 1, dict(
        latent_channels=C, block_out_channels=(8, 8, 8, 8, 8), layers_per_block=1,
        spatial_compression_ratio=16, temporal_compression_ratio=4,
    ))  # fmt: skip
    extra = {}
    if image:
        from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

        torch.manual_seed(seed + 3)
        config = SiglipVisionConfig(hidden_size=HV15_IMAGE_DIM, intermediate_size=16,
                                    num_hidden_layers=1, num_attention_heads=2, image_size=32,
                                    patch_size=16)  # fmt: skip
        processor = SiglipImageProcessor(size={"height": 32, "width": 32})
        extra = dict(image_encoder=SiglipVisionModel(config).eval(), feature_extractor=processor)
    name = "HunyuanVideo15ImageToVideoPipeline" if image else "HunyuanVideo15Pipeline"
    cls = getattr(diffusers, name)
    return _pipeline(
        cls, seed, text_encoders=2, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=5.0),
        guider=ClassifierFreeGuidance(guidance_scale=6.0), **extra,
    )  # fmt: skip


def hunyuan_video15_kwargs(height=HV15_TRAINED, width=HV15_TRAINED,
                           num_frames=HV15_TRAINED_FRAMES, steps=2, seed=0,
                           image=False) -> dict:  # fmt: skip
    """One HunyuanVideo 1.5 call: Qwen and ByT5 embeddings with masks, their negatives; with
    ``image`` an image of the request's size (the pipeline takes no height/width then)."""
    gen = torch.Generator().manual_seed(seed)
    kwargs = {}
    for sign in ("", "negative_"):
        kwargs[f"{sign}prompt_embeds"] = torch.randn(1, SEQ, TEXT_DIM, generator=gen)
        kwargs[f"{sign}prompt_embeds_mask"] = _text_mask()
        kwargs[f"{sign}prompt_embeds_2"] = torch.randn(1, SEQ, HV15_TEXT_2_DIM, generator=gen)
        kwargs[f"{sign}prompt_embeds_mask_2"] = _text_mask()
    if image:
        from PIL import Image

        array = (pixels(height, width, seed + 1)[0].permute(1, 2, 0) * 255).byte().numpy()
        kwargs["image"] = Image.fromarray(array)
    else:
        kwargs.update(height=height, width=width)
    return dict(num_frames=num_frames, num_inference_steps=steps, output_type="latent",
                generator=torch.Generator().manual_seed(seed), **kwargs)  # fmt: skip


# --------------------------------------------------------------------------------------------
# LTX-Video image-to-video (a time per token) and conditions (video_coords, prepended clips)
# --------------------------------------------------------------------------------------------


def tiny_ltx_variant_pipeline(seed: int = 0, kind: str = "i2v"):
    """LTXImageToVideoPipeline (``kind="i2v"``) or LTXConditionPipeline (``"condition"``) with
    the components of :func:`diffusers_transformers.tiny_ltx_pipeline`.

    Image-to-video passes ``num_frames/height/width`` and a time per token (0 on the clean
    first frame). The condition pipeline passes ``video_coords`` (B, 3, N) in pixels and seconds
    instead, with each conditioning clip's tokens in front of the sample's (clean at strength
    1, time 0) and a time per token.
    """
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        LTXConditionPipeline,
        LTXImageToVideoPipeline,
    )

    components = tiny_ltx_pipeline(seed).components
    if kind == "i2v":
        pipe = LTXImageToVideoPipeline(**components)
    else:  # its own sigma schedule (linear-quadratic), with a static shift
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
        pipe = LTXConditionPipeline(**{**components, "scheduler": scheduler})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ltx_variant_kwargs(height=LTX_TRAINED, width=LTX_TRAINED, num_frames=LTX_TRAINED_FRAMES,
                       steps=2, cfg=3.0, seed=0, kind="i2v") -> dict:  # fmt: skip
    """One LTX image-to-video call, or a condition call: the image at frame 0 and a 9-frame
    clip at frame 8 (a prepended clip of 2 latent frames)."""
    gen = torch.Generator().manual_seed(seed)
    texts = {}
    for sign in ("", "negative_"):
        texts[f"{sign}prompt_embeds"] = torch.randn(1, SEQ, TEXT_DIM, generator=gen)
        texts[f"{sign}prompt_attention_mask"] = _text_mask()
    if kind == "i2v":
        extra = {"image": pixels(height, width, seed + 1)}
    else:
        from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition

        clip = pixels(height, width, seed + 2, frames=9)[0].permute(1, 0, 2, 3)  # (F, 3, H, W)
        extra = {"conditions": [LTXVideoCondition(image=pixels(height, width, seed + 1)[0],
                                                  frame_index=0),
                                LTXVideoCondition(video=clip, frame_index=8)]}  # fmt: skip
    return _video_call(height, width, num_frames, steps, cfg, seed, **texts, **extra)


# --------------------------------------------------------------------------------------------
# LTX-2: video and audio latents denoised together
# --------------------------------------------------------------------------------------------

LTX2_TRAINED = 16  # pixels; latents 8x8 (the tiny VAE: factor 2), patch 1
LTX2_TRAINED_FRAMES = 5  # 3 latent frames (temporal factor 2)
LTX2_LAYERS = 2  # text-encoder layers stacked in the prompt embeddings (text_proj_in_factor)


def tiny_ltx2_pipeline(seed: int = 0, kind: str = "t2v"):
    """An LTX2Pipeline (``kind="i2v"``: LTX2ImageToVideoPipeline, ``"condition"``:
    LTX2ConditionPipeline, whose keyframes are appended as latent frames; it takes multiples of
    32 pixels): LTX2VideoTransformer3DModel (video tokens ``(B, F·H·W, C)`` with
    ``video_coords``, audio tokens beside them), the tiny LTX-2 video and audio VAEs of
    diffusers' own tests, text connectors, a vocoder, and
    FlowMatchEuler (LTX-2's default). Prompt embeddings are stacked text-encoder layers
    ``(B, SEQ, TEXT_DIM·LTX2_LAYERS)`` with a mask."""
    import diffusers
    from diffusers import (
        AutoencoderKLLTX2Audio,
        AutoencoderKLLTX2Video,
        FlowMatchEulerDiscreteScheduler,
        LTX2VideoTransformer3DModel,
    )
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    transformer = _build(LTX2VideoTransformer3DModel, seed, dict(
        in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2,
        attention_head_dim=8, cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4,
        audio_num_attention_heads=2, audio_attention_head_dim=4, audio_cross_attention_dim=8,
        num_layers=2, qk_norm="rms_norm_across_heads", caption_channels=TEXT_DIM,
        rope_double_precision=False, rope_type="split",
    ))  # fmt: skip
    connectors = _build(LTX2TextConnectors, seed, dict(
        caption_channels=TEXT_DIM, text_proj_in_factor=LTX2_LAYERS,
        video_connector_num_attention_heads=4, video_connector_attention_head_dim=8,
        video_connector_num_layers=1, video_connector_num_learnable_registers=None,
        audio_connector_num_attention_heads=4, audio_connector_attention_head_dim=8,
        audio_connector_num_layers=1, audio_connector_num_learnable_registers=None,
        connector_rope_base_seq_len=32, rope_theta=10000.0, rope_double_precision=False,
        causal_temporal_positioning=False, rope_type="split",
    ))  # fmt: skip
    vae = _build(AutoencoderKLLTX2Video, 1, dict(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,),
        decoder_block_out_channels=(8,), layers_per_block=(1,), decoder_layers_per_block=(1, 1),
        spatio_temporal_scaling=(True,), decoder_spatio_temporal_scaling=(True,),
        decoder_inject_noise=(False, False), downsample_type=("spatial",),
        upsample_residual=(False,), upsample_factor=(1,), timestep_conditioning=False,
        patch_size=1, patch_size_t=1, encoder_causal=True, decoder_causal=False,
    ))  # fmt: skip
    vae.use_framewise_encoding = vae.use_framewise_decoding = False
    audio_vae = _build(AutoencoderKLLTX2Audio, 1, dict(
        base_channels=4, output_channels=2, ch_mult=(1,), num_res_blocks=1,
        attn_resolutions=None, in_channels=2, resolution=32, latent_channels=2,
        norm_type="pixel", causality_axis="height", dropout=0.0, mid_block_add_attention=False,
        sample_rate=16000, mel_hop_length=160, is_causal=True, mel_bins=8,
    ))  # fmt: skip
    vocoder = _build(LTX2Vocoder, 1, dict(
        in_channels=16, hidden_channels=32, out_channels=2, upsample_kernel_sizes=[4, 4],
        upsample_factors=[2, 2], resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]],
        leaky_relu_negative_slope=0.1, output_sampling_rate=16000,
    ))  # fmt: skip
    name = {"t2v": "LTX2Pipeline", "i2v": "LTX2ImageToVideoPipeline",
            "condition": "LTX2ConditionPipeline"}[kind]  # fmt: skip
    pipe = getattr(diffusers, name)(
        transformer=transformer, vae=vae, audio_vae=audio_vae, connectors=connectors,
        vocoder=vocoder, scheduler=FlowMatchEulerDiscreteScheduler(), text_encoder=None,
        tokenizer=None, processor=None, prompt_enhancer=None, duration_head=None,
    )  # fmt: skip
    return _finish_ltx2(pipe, seed)


def _finish_ltx2(pipe, seed: int):
    """Random values for the transformer's zero parameters; no progress bars."""
    from diffusers_models import randomize_zero_params

    randomize_zero_params(pipe.transformer.eval(), seed + 100)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ltx2_kwargs(height=LTX2_TRAINED, width=LTX2_TRAINED, num_frames=LTX2_TRAINED_FRAMES,
                steps=2, cfg=4.0, seed=0, image=False, stg=0.0,
                keyframe=False) -> dict:  # fmt: skip
    """One LTX-2 call: CFG batched (one call), STG when ``stg > 0`` (a perturbed call of its own
    each step), no modality guidance; ``output_type="latent"`` gives ``(video, audio)``."""
    gen = torch.Generator().manual_seed(seed)
    kwargs = {}
    for sign in ("", "negative_"):
        kwargs[f"{sign}prompt_embeds"] = torch.randn(1, SEQ, TEXT_DIM * LTX2_LAYERS, generator=gen)
        kwargs[f"{sign}prompt_attention_mask"] = _text_mask()
    if image:  # a tensor image: no re-compression (image_crf=0)
        kwargs.update(image=pixels(height, width, seed + 1), image_crf=0)
    if keyframe:  # the first frame and a keyframe at pixel frame 2 (appended tokens)
        from diffusers.pipelines.ltx2.pipeline_ltx2_condition import LTX2VideoCondition

        kwargs["conditions"] = [
            LTX2VideoCondition(frames=pixels(height, width, seed + 1), index=0, crf=0),
            LTX2VideoCondition(frames=pixels(height, width, seed + 2), index=2, crf=0),
        ]
    return dict(
        height=height, width=width, num_frames=num_frames, num_inference_steps=steps,
        guidance_scale=cfg, stg_scale=stg, modality_scale=1.0, guidance_rescale=0.0,
        audio_guidance_scale=cfg, audio_stg_scale=stg, audio_modality_scale=1.0,
        frame_rate=25.0, use_cross_timestep=False,
        generator=torch.Generator().manual_seed(seed), output_type="latent", **kwargs,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Kandinsky 5: video and image, channels-last latents
# --------------------------------------------------------------------------------------------

KANDINSKY_TRAINED = 64  # pixels; latents 8x8 (VAE factor 8), 4x4 tokens (patch 1x2x2)
KANDINSKY_TRAINED_FRAMES = 17  # 5 latent frames (image-to-video renormalises the first 4
# latent frames against the later ones)


def tiny_kandinsky5_pipeline(seed: int = 0, kind: str = "t2v"):
    """A Kandinsky 5 pipeline: ``kind`` "t2v", "i2v" (the image's latents written into the first
    latent frame), "t2i" or "i2i" (the source image's latents as conditioning channels). Latents
    are channels-last ``(B, F, H, W, C)`` (images: F = 1); with ``visual_cond`` (i2v, i2i) the
    transformer takes ``[noisy, conditioning, mask]`` = 2C + 1 channels and returns C. Video uses
    the tiny HunyuanVideo VAE (spatial 8, temporal 4), images a tiny AutoencoderKL (factor 8)."""
    import diffusers
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        Kandinsky5Transformer3DModel,
    )
    from diffusers_transformers import tiny_kl_vae_f8

    h = HUNYUAN_LATENT_CHANNELS
    transformer = _build(Kandinsky5Transformer3DModel, seed, dict(
        in_visual_dim=h, out_visual_dim=h, in_text_dim=TEXT_DIM, in_text_dim2=POOLED_DIM,
        time_dim=16, patch_size=(1, 2, 2), model_dim=32, ff_dim=64, num_text_blocks=1,
        num_visual_blocks=2, axes_dims=(4, 6, 6), visual_cond=kind in ("i2v", "i2i"),
    ))  # fmt: skip
    if kind in ("t2v", "i2v"):
        vae = tiny_hunyuan_vae()
    else:
        vae = tiny_kl_vae_f8(h)
    name = {"t2v": "Kandinsky5T2VPipeline", "i2v": "Kandinsky5I2VPipeline",
            "t2i": "Kandinsky5T2IPipeline", "i2i": "Kandinsky5I2IPipeline"}[kind]  # fmt: skip
    return _pipeline(
        getattr(diffusers, name), seed, text_encoders=2, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=5.0),
    )  # fmt: skip


def kandinsky5_kwargs(height=KANDINSKY_TRAINED, width=KANDINSKY_TRAINED,
                      num_frames=KANDINSKY_TRAINED_FRAMES, steps=2, cfg=5.0, seed=0,
                      kind="t2v") -> dict:  # fmt: skip
    """One Kandinsky 5 call: Qwen embeddings with their ``cu_seqlens``, CLIP pooled ones, their
    negatives; an image for i2v / i2i; no ``num_frames`` for images."""
    gen = torch.Generator().manual_seed(seed)
    kwargs = {}
    for sign in ("", "negative_"):
        kwargs[f"{sign}prompt_embeds_qwen"] = torch.randn(1, SEQ, TEXT_DIM, generator=gen)
        kwargs[f"{sign}prompt_embeds_clip"] = torch.randn(1, POOLED_DIM, generator=gen)
        kwargs[f"{sign}prompt_cu_seqlens"] = torch.tensor([0, SEQ], dtype=torch.int32)
    if kind in ("i2v", "i2i"):
        from PIL import Image

        array = (pixels(height, width, seed + 1)[0].permute(1, 2, 0) * 255).byte().numpy()
        kwargs["image"] = Image.fromarray(array)
    if kind in ("t2v", "i2v"):
        kwargs["num_frames"] = num_frames
    generator = torch.Generator().manual_seed(seed)
    return dict(height=height, width=width, num_inference_steps=steps, guidance_scale=cfg,
                generator=generator, output_type="latent", **kwargs)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Variants: Wan video-to-video, Lucy Edit, ChronoEdit, SkyReels-V2 DF video-to-video,
# HunyuanVideo (SkyReels) image-to-video, Sana-Video image-to-video
# --------------------------------------------------------------------------------------------


def frames_of(height: int, width: int, count: int, seed: int = 11) -> list:
    """A seeded video: ``count`` PIL frames of the request's size."""
    from PIL import Image

    video = pixels(height, width, seed, frames=count)[0].permute(1, 2, 3, 0)  # (F, H, W, 3)
    return [Image.fromarray((f * 255).byte().numpy()) for f in video]


def tiny_wan_variant_pipeline(seed: int = 0, kind: str = "v2v"):
    """``kind`` "v2v": WanVideoToVideoPipeline (the noised latents of a given video, strength
    0.8); "lucy": LucyEditPipeline (the video to edit as C conditioning channels, TI2V-style
    ``expand_timesteps``); "chronoedit": ChronoEditPipeline (Wan with image-to-video channels,
    CLIP tokens and a temporal-reasoning RoPE)."""
    import diffusers

    if kind == "v2v":
        return _pipeline(diffusers.WanVideoToVideoPipeline, seed, transformer=tiny_wan_transformer(
            seed), scheduler=wan_scheduler(), vae=tiny_wan_vae())  # fmt: skip
    if kind == "lucy":
        transformer = tiny_wan_transformer(seed, in_channels=2 * C, out_channels=C)
        return _pipeline(diffusers.LucyEditPipeline, seed, transformer=transformer,
                         scheduler=wan_scheduler(), vae=tiny_wan_vae(),
                         expand_timesteps=True)  # fmt: skip
    from diffusers import ChronoEditTransformer3DModel

    transformer = _build(ChronoEditTransformer3DModel, seed, dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
        in_channels=2 * C + 4, out_channels=C, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=32,
        num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=64, image_dim=IMAGE_DIM, added_kv_proj_dim=24,
    ))  # fmt: skip
    encoder, processor = tiny_clip_vision()
    return _pipeline(diffusers.ChronoEditPipeline, seed, transformer=transformer,
                     scheduler=wan_scheduler(), vae=tiny_wan_vae(), image_encoder=encoder,
                     image_processor=processor)  # fmt: skip


def wan_variant_kwargs(height=WAN_TRAINED, width=WAN_TRAINED, num_frames=WAN_TRAINED_FRAMES,
                       steps=2, cfg=5.0, seed=0, kind="v2v") -> dict:  # fmt: skip
    """One call of :func:`tiny_wan_variant_pipeline`'s pipeline (3 steps for video-to-video:
    strength 0.8 keeps 2)."""
    texts = _texts(seed)
    if kind == "chronoedit":
        return _video_call(height, width, num_frames, steps, cfg, seed,
                           image=pixels(height, width, seed + 1), **texts)  # fmt: skip
    video = frames_of(height, width, num_frames, seed + 1)
    if kind == "lucy":
        return _video_call(height, width, num_frames, steps, cfg, seed, video=video, **texts)
    return dict(video=video, height=height, width=width, num_inference_steps=steps + 1,
                strength=0.8, guidance_scale=cfg, output_type="latent",
                generator=torch.Generator().manual_seed(seed), **texts)  # fmt: skip


def tiny_hunyuan_skyreels_i2v_pipeline(seed: int = 0):
    """A HunyuanSkyreelsImageToVideoPipeline: HunyuanVideoTransformer3DModel with in_channels 2C
    (the noisy latents, then the image latents in the first frame and zeros), true CFG."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        HunyuanSkyreelsImageToVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )

    h = HUNYUAN_LATENT_CHANNELS
    transformer = _build(HunyuanVideoTransformer3DModel, seed, dict(
        in_channels=2 * h, out_channels=h, num_attention_heads=2, attention_head_dim=16,
        num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1,
        guidance_embeds=True, text_embed_dim=TEXT_DIM, pooled_projection_dim=POOLED_DIM,
        rope_axes_dim=(4, 6, 6),
    ))  # fmt: skip
    vae = tiny_hunyuan_vae()
    return _pipeline(
        HunyuanSkyreelsImageToVideoPipeline, seed, text_encoders=2, transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=7.0), vae=vae,
    )  # fmt: skip


def hunyuan_skyreels_i2v_kwargs(height=HUNYUAN_TRAINED, width=HUNYUAN_TRAINED,
                                num_frames=HUNYUAN_TRAINED_FRAMES, steps=2, cfg=1.0,
                                seed=0) -> dict:  # fmt: skip
    """One call: true CFG 4 (two calls a step, each with its own embeddings and masks)."""
    gen = torch.Generator().manual_seed(seed)
    kwargs = {}
    for sign in ("", "negative_"):
        kwargs[f"{sign}prompt_embeds"] = torch.randn(1, SEQ, TEXT_DIM, generator=gen)
        kwargs[f"{sign}pooled_prompt_embeds"] = torch.randn(1, POOLED_DIM, generator=gen)
        kwargs[f"{sign}prompt_attention_mask"] = _text_mask()
    return _video_call(height, width, num_frames, steps, cfg, seed, true_cfg_scale=4.0,
                       image=pixels(height, width, seed + 1), **kwargs)  # fmt: skip


def tiny_skyreels_v2v_pipeline(seed: int = 0):
    """A SkyReelsV2DiffusionForcingVideoToVideoPipeline with :func:`tiny_skyreels_pipeline`'s
    diffusion-forcing components: the last latent frames of a given video are a clean prefix
    (time 0), and the new frames are generated after them."""
    from diffusers import SkyReelsV2DiffusionForcingVideoToVideoPipeline

    pipe = SkyReelsV2DiffusionForcingVideoToVideoPipeline(**tiny_skyreels_pipeline(seed).components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def skyreels_v2v_kwargs(height=WAN_TRAINED, width=WAN_TRAINED, num_frames=WAN_TRAINED_FRAMES,
                        steps=2, cfg=5.0, seed=0) -> dict:  # fmt: skip
    """One call: a 5-frame video (2 latent frames), of which ``overlap_history=5`` pixel frames
    are kept as the clean prefix; ``num_frames`` new frames follow."""
    return _video_call(height, width, num_frames, steps, cfg, seed, prompt=None,
                       video=frames_of(height, width, 5, seed + 1), overlap_history=5,
                       **_texts(seed))  # fmt: skip


def tiny_sana_video_i2v_pipeline(seed: int = 0):
    """A SanaImageToVideoPipeline with the components of the tiny Sana-Video pipeline: the first
    latent frame is the image (clean, never stepped), and the time is a map on the patch grid
    ``(B, 1, F, H/2, W/2)`` with that frame at 0."""
    from diffusers import SanaImageToVideoPipeline
    from diffusers_transformers import tiny_sana_video_pipeline

    pipe = SanaImageToVideoPipeline(**tiny_sana_video_pipeline(seed).components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sana_video_i2v_kwargs(height=WAN_TRAINED, width=WAN_TRAINED, num_frames=WAN_TRAINED_FRAMES,
                          steps=2, cfg=4.5, seed=0) -> dict:  # fmt: skip
    """One Sana-Video image-to-video call (``frames``; no resolution binning)."""
    from diffusers_transformers import sana_video_call_kwargs

    kwargs = sana_video_call_kwargs(height, width, num_frames=num_frames, steps=steps, cfg=cfg,
                                    seed=seed)  # fmt: skip
    return {**kwargs, "image": pixels(height, width, seed + 1)}


# --------------------------------------------------------------------------------------------
# Latte, Allegro (VP, discrete timesteps) and EasyAnimate (flow, conditioning latents)
# --------------------------------------------------------------------------------------------

LATTE_TRAINED = 64  # pixels; latents 8x8 (VAE factor 8), 4x4 patches per frame
LATTE_FRAMES = 4  # the temporal position embedding's frames (video_length)
ALLEGRO_TRAINED = 64  # pixels; latents 8x8 (VAE factor 8)
ALLEGRO_TRAINED_FRAMES = 8  # 2 latent frames (temporal factor 4)
EASYANIMATE_TRAINED = 64  # pixels; latents 8x8 (VAE factor 8)
EASYANIMATE_TRAINED_FRAMES = 5  # 2 latent frames (temporal factor 4)


def tiny_latte_pipeline(seed: int = 0):
    """A LattePipeline: LatteTransformer3DModel (patch 2, ε with a learned variance: out 2C),
    DDIM, latents (B, C, F, h, w) with F = video_length = 4 (its temporal embedding's size)."""
    from diffusers import DDIMScheduler, LattePipeline, LatteTransformer3DModel
    from diffusers_transformers import tiny_kl_vae_f8

    transformer = _build(LatteTransformer3DModel, seed, dict(
        sample_size=LATTE_TRAINED // 8, num_layers=1, patch_size=2, attention_head_dim=8,
        num_attention_heads=3, caption_channels=TEXT_DIM, in_channels=4, cross_attention_dim=24,
        out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False,
        norm_eps=1e-6, video_length=LATTE_FRAMES,
    ))  # fmt: skip
    return _pipeline(LattePipeline, seed, transformer=transformer, scheduler=DDIMScheduler(),
                     vae=tiny_kl_vae_f8(4))  # fmt: skip


def latte_kwargs(height=LATTE_TRAINED, width=LATTE_TRAINED, num_frames=LATTE_FRAMES, steps=2,
                 cfg=5.0, seed=0) -> dict:  # fmt: skip
    """One Latte call (``video_length`` frames; T5 embeddings, no mask feature)."""
    return dict(height=height, width=width, video_length=num_frames, num_inference_steps=steps,
                guidance_scale=cfg, generator=torch.Generator().manual_seed(seed),
                output_type="latent", mask_feature=False, clean_caption=False,
                negative_prompt=None, **_texts(seed))  # fmt: skip


def tiny_allegro_pipeline(seed: int = 0):
    """An AllegroPipeline: AllegroTransformer3DModel (patch 2, rotary embeddings from the
    pipeline), DDIM (ε), the tiny AutoencoderKLAllegro of diffusers' tests (tiled)."""
    from diffusers import (
        AllegroPipeline,
        AllegroTransformer3DModel,
        AutoencoderKLAllegro,
        DDIMScheduler,
    )

    transformer = _build(AllegroTransformer3DModel, seed, dict(
        num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        num_layers=1, cross_attention_dim=24, sample_width=8, sample_height=8, sample_frames=8,
        caption_channels=TEXT_DIM,
    ))  # fmt: skip
    vae = _build(AutoencoderKLAllegro, 1, dict(
        in_channels=3, out_channels=3, down_block_types=("AllegroDownBlock3D",) * 4,
        up_block_types=("AllegroUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8),
        latent_channels=4, layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
    ))  # fmt: skip
    vae.enable_tiling()
    return _pipeline(AllegroPipeline, seed, transformer=transformer, scheduler=DDIMScheduler(),
                     vae=vae)  # fmt: skip


def allegro_kwargs(height=ALLEGRO_TRAINED, width=ALLEGRO_TRAINED,
                   num_frames=ALLEGRO_TRAINED_FRAMES, steps=2, cfg=6.0,
                   seed=0) -> dict:  # fmt: skip
    """One Allegro call: T5 embeddings with masks (``negative_prompt`` None: its default "" and
    the negative embeddings clash)."""
    texts = dict(_texts(seed), negative_prompt=None)
    texts.update(prompt_attention_mask=_text_mask(), negative_prompt_attention_mask=_text_mask())
    return _video_call(height, width, num_frames, steps, cfg, seed, **texts)


def tiny_easyanimate_pipeline(seed: int = 0):
    """An EasyAnimatePipeline: EasyAnimateTransformer3DModel (patch 2 per frame), the tiny
    AutoencoderKLMagvit of diffusers' tests (spatial 8, temporal 4), FlowMatchEuler."""
    from diffusers import (
        AutoencoderKLMagvit,
        EasyAnimatePipeline,
        EasyAnimateTransformer3DModel,
        FlowMatchEulerDiscreteScheduler,
    )

    transformer = _build(EasyAnimateTransformer3DModel, seed, dict(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
        time_embed_dim=2, text_embed_dim=TEXT_DIM, num_layers=1, sample_width=16,
        sample_height=16, patch_size=2,
    ))  # fmt: skip
    vae = _build(AutoencoderKLMagvit, 1, dict(
        in_channels=3, out_channels=3,
        down_block_types=("SpatialDownBlock3D",) + ("SpatialTemporalDownBlock3D",) * 3,
        up_block_types=("SpatialUpBlock3D",) + ("SpatialTemporalUpBlock3D",) * 3,
        block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1,
        norm_num_groups=2, spatial_group_norm=False,
    ))  # fmt: skip
    return _pipeline(EasyAnimatePipeline, seed, transformer=transformer,
                     scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae)  # fmt: skip


def easyanimate_kwargs(height=EASYANIMATE_TRAINED, width=EASYANIMATE_TRAINED,
                       num_frames=EASYANIMATE_TRAINED_FRAMES, steps=2, cfg=6.0,
                       seed=0) -> dict:  # fmt: skip
    """One EasyAnimate call: Qwen embeddings with masks."""
    texts = _texts(seed)
    texts.update(prompt_attention_mask=_text_mask(), negative_prompt_attention_mask=_text_mask())
    return _video_call(height, width, num_frames, steps, cfg, seed, **texts)


def tiny_easyanimate_inpaint_pipeline(seed: int = 0):
    """An EasyAnimateInpaintPipeline: the transformer of :func:`tiny_easyanimate_pipeline` with
    in_channels 4 + 1 + 4 (the sample, then ``inpaint_latents``: the mask and the masked video's
    latents, passed as their own argument)."""
    from diffusers import EasyAnimateInpaintPipeline, EasyAnimateTransformer3DModel

    base = tiny_easyanimate_pipeline(seed)
    config = {**base.transformer.config, "in_channels": 9}
    transformer = _build(EasyAnimateTransformer3DModel, seed, {
        k: v for k, v in config.items() if not k.startswith("_")})  # fmt: skip
    base.vae.register_to_config(cache_mag_vae=True)  # the pipeline reads it; checkpoints set it
    return _pipeline(EasyAnimateInpaintPipeline, seed, transformer=transformer,
                     scheduler=base.scheduler, vae=base.vae)  # fmt: skip


def easyanimate_inpaint_kwargs(height=EASYANIMATE_TRAINED, width=EASYANIMATE_TRAINED,
                               num_frames=EASYANIMATE_TRAINED_FRAMES, steps=2, cfg=6.0,
                               seed=0) -> dict:  # fmt: skip
    """One inpainting call: a video (B, 3, F, H, W) in [0, 1] and a mask video (B, 1, F, H, W)
    of 0 / 255 (the right half regenerated)."""
    mask = torch.zeros(1, 1, num_frames, height, width)
    mask[..., width // 2 :] = 255.0
    kwargs = easyanimate_kwargs(height, width, num_frames, steps, cfg, seed)
    return {**kwargs, "video": pixels(height, width, seed + 1, frames=num_frames),
            "mask_video": mask}  # fmt: skip
