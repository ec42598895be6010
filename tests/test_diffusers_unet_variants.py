"""UNet pipeline variants with upsample guidance, each built from tiny random models.

Every variant samples at 2x its UNet's trained size (16x16 latents or pixels, trained at 8x8):

- ``scale=0`` is the plain variant bit for bit;
- guided, every UNet call makes one low-resolution call (8x8), and the guided output equals
  Eq. 10 on the noisy channels (a learned variance is kept as the high call's);
- what the low call gets beside the sample is checked against the high call's:
  ControlNet and T2I-Adapter residuals 2x2 average-pooled (per frame for video UNets),
  conditioning channels (inpainting mask and masked image, image latents, depth map, upscaled
  image) 2x2 average-pooled and unscaled, SDXL size ids halved, Kandinsky's hint image pooled,
  and every other input (text and image embeddings, class labels, guidance embeddings) as is.

Each variant says which of these inputs its UNet call must get, so a check never passes vacuously.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from diffusers_models import (
    ForwardRecorder,
    OutputRecorder,
    control_image,
    ddim_scheduler,
    randomize_zero_params,
    sd_call_kwargs,
    sdxl_call_kwargs,
    tiny_controlnet,
    tiny_sd_pipeline,
    tiny_sdxl_pipeline,
    tiny_sdxl_unet,
    tiny_unet,
    tiny_union_controlnet,
)
from test_diffusers_reference import D, U, nearest_tau
from ug_core.adapters.diffusers import apply_upsample_guidance

HIGH, LOW = (16, 16), (8, 8)  # the UNet's grid at 2x, and its trained size

#: What a UNet call gets beside the sample, as a variant's ``expects`` names it.
RESIDUALS = (
    "down_block_additional_residuals",
    "mid_block_additional_residual",
    "down_intrablock_additional_residuals",
)
CONTROLNET = RESIDUALS[:2]
ADAPTER = RESIDUALS[2:]
CHANNELS = "conditioning channels"  # the sample holds clean channels after the noisy ones
TIME_IDS = "added_cond_kwargs.time_ids"  # SDXL size micro-conditioning
IMAGE_EMBEDS = "added_cond_kwargs.image_embeds"  # Kandinsky 2.2's CLIP image embedding
HINT = "added_cond_kwargs.hint"  # Kandinsky 2.2's control image (pixels)
CLASS_LABELS = "class_labels"  # a noise level or noise-augmented image embeddings, as is
GLIGEN = "cross_attention_kwargs.gligen"  # grounding boxes (normalised) and phrase embeddings


@dataclasses.dataclass(frozen=True)
class Variant:
    """A variant's builder, ``build() -> (pipe, kwargs)`` with ``kwargs()`` fresh call arguments
    (new tensors and generator), and what its UNet calls must get beside the sample."""

    build: Callable[[], tuple[Any, Callable[[], dict]]]
    expects: tuple[str, ...] = ()
    noisy: int = 4  # leading channels of the sample that are the noisy sample
    variance: bool = False  # the UNet also predicts a (learned) variance


VARIANTS: dict[str, Variant] = {}


def variant(name: str, *expects: str, noisy: int = 4, variance: bool = False):
    """Register ``build() -> (pipe, kwargs)`` as the variant ``name``."""

    def register(build):
        VARIANTS[name] = Variant(build, expects, noisy, variance)
        return build

    return register


# ---------------------------------------------------------------------- inputs and tiny models
def seeded(seed: int = 0) -> torch.Generator:
    """A fresh generator."""
    return torch.Generator().manual_seed(seed)


def picture(size: int = 32, seed: int = 3) -> torch.Tensor:
    """An image in [0, 1], (1, 3, size, size)."""
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def mask(size: int = 32) -> torch.Tensor:
    """An inpainting mask: the centre square."""
    m = torch.zeros(1, 1, size, size)
    m[..., size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1.0
    return m


def img2img(kwargs: dict, strength: float = 0.8, **extra) -> dict:
    """``kwargs`` for an image-to-image call: the size is the image's."""
    kwargs = {k: v for k, v in kwargs.items() if k not in ("height", "width")}
    return {**kwargs, "image": picture(), "strength": strength, **extra}


def init_params(cls: type) -> set[str]:
    """The components and options a pipeline class's constructor takes."""
    return set(inspect.signature(cls.__init__).parameters) - {"self"}


def from_base(name: str, base, **parts):
    """Pipeline ``name`` from ``base``'s components and ``parts`` (what it takes of them)."""
    import diffusers

    cls = getattr(diffusers, name)
    options = {"add_watermarker": False, "requires_safety_checker": False, "depth_estimator": None}
    given = {**base.components, **options, **parts}
    pipe = cls(**{k: v for k, v in given.items() if k in init_params(cls)})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_tokenizer(kind: str, max_length: int = 8):
    """A tokenizer of a few words, from vocabulary files written here (offline): "clip" or
    "bert". Prompts of the tests are "a"."""
    import json
    import os
    import tempfile

    from transformers import BertTokenizer, CLIPTokenizer

    with tempfile.TemporaryDirectory() as folder:
        files = [os.path.join(folder, name) for name in ("vocab.json", "merges.txt", "vocab.txt")]
        if kind == "clip":
            vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2}
            with open(files[0], "w") as f:
                json.dump(vocab, f)
            with open(files[1], "w") as f:
                f.write("#version: 0.2\n")
            return CLIPTokenizer(files[0], files[1], model_max_length=max_length)
        with open(files[2], "w") as f:
            f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a"]))
        return BertTokenizer(files[2], model_max_length=max_length)


def tiny_clip_text(cls_name: str = "CLIPTextModel", seed: int = 11):
    """A CLIP text encoder for :func:`tiny_tokenizer` ("clip"): 8 tokens, 32 wide."""
    import transformers

    config = transformers.CLIPTextConfig(
        vocab_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=8, projection_dim=32,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )  # fmt: skip
    torch.manual_seed(seed)
    return getattr(transformers, cls_name)(config).eval()


def tiny_clip_vision(cls_name: str = "CLIPVisionModelWithProjection", seed: int = 7, **extra):
    """A CLIP vision tower on 32x32 images (patch 8), 32 wide, projecting to 32."""
    import transformers

    config = transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=32, patch_size=8, projection_dim=32,
    )  # fmt: skip
    torch.manual_seed(seed)
    if cls_name == "PaintByExampleImageEncoder":
        from diffusers.pipelines.deprecated.paint_by_example import PaintByExampleImageEncoder

        return PaintByExampleImageEncoder(config, **extra).eval()
    return getattr(transformers, cls_name)(config, **extra).eval()


def tiny_prior(seed: int = 12):
    """An unCLIP prior: PriorTransformer from 8 text tokens to a 32-wide CLIP image embedding."""
    from diffusers import PriorTransformer

    torch.manual_seed(seed)
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=16, num_layers=1,
                             embedding_dim=32, num_embeddings=8).eval()  # fmt: skip
    randomize_zero_params(prior, seed)
    return prior


def tiny_movq(seed: int = 1, levels: int = 4, latent_channels: int = 4):
    """A VQModel with scale factor 2 ** (levels - 1) (8: Kandinsky's MoVQ)."""
    from diffusers import VQModel

    torch.manual_seed(seed)
    return VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=(8,) * levels,
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        num_vq_embeddings=16,
        vq_embed_dim=latent_channels,
    ).eval()


def tiny_latent_unet(in_channels: int = 4, out_channels: int = 4, seed: int = 0):
    """An unconditional UNet2DModel on latents, trained size 8x8."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=out_channels,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=8,
    ).eval()


def tiny_unet3d(seed: int = 0):
    """A UNet3DConditionModel (ModelScope text-to-video) of two levels, trained size 8x8."""
    from diffusers import UNet3DConditionModel

    torch.manual_seed(seed)
    unet = UNet3DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    ).eval()
    randomize_zero_params(unet, seed)
    return unet


# ---------------------------------------------------------------------- Stable Diffusion
@variant("StableDiffusionImg2ImgPipeline")
def _sd_img2img():
    pipe = from_base("StableDiffusionImg2ImgPipeline", tiny_sd_pipeline())
    return pipe, lambda: img2img(sd_call_kwargs(steps=4))


@variant("LatentConsistencyModelPipeline")
def _lcm():
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler

    unet = tiny_unet(time_cond_proj_dim=8)  # LCM's guidance embedding (w, not CFG)
    pipe = LatentConsistencyModelPipeline.from_pipe(
        tiny_sd_pipeline(), unet=unet, scheduler=LCMScheduler()
    )
    return pipe, lambda: {**sd_call_kwargs(steps=3), "negative_prompt_embeds": None}


@variant("LatentConsistencyModelImg2ImgPipeline")
def _lcm_img2img():
    from diffusers import LatentConsistencyModelImg2ImgPipeline, LCMScheduler

    pipe = LatentConsistencyModelImg2ImgPipeline.from_pipe(
        tiny_sd_pipeline(), unet=tiny_unet(time_cond_proj_dim=8), scheduler=LCMScheduler()
    )
    return pipe, lambda: img2img({**sd_call_kwargs(steps=4), "negative_prompt_embeds": None})


@variant("StableDiffusionDepth2ImgPipeline", CHANNELS)
def _depth2img():
    """A 5-channel UNet: latent, depth map (given: no depth estimator)."""
    base = tiny_sd_pipeline()
    pipe = from_base("StableDiffusionDepth2ImgPipeline", base, unet=tiny_unet(in_channels=5))
    depth = torch.rand(1, 32, 32, generator=torch.Generator().manual_seed(4))
    return pipe, lambda: img2img(sd_call_kwargs(steps=4), depth_map=depth.clone())


@variant("StableDiffusionControlNetInpaintPipeline", *CONTROLNET, CHANNELS)
def _controlnet_inpaint():
    """A 9-channel inpainting UNet (latent, mask, masked image); the ControlNet sees latents."""
    pipe = from_base(
        "StableDiffusionControlNetInpaintPipeline",
        tiny_sd_pipeline(),
        unet=tiny_unet(in_channels=9),
        controlnet=tiny_controlnet(tiny_unet()),
    )
    extra = dict(image=picture(), mask_image=mask(), control_image=control_image())
    return pipe, lambda: {**sd_call_kwargs(steps=2), **extra, "strength": 1.0}


@variant("StableDiffusionInpaintPipelineLegacy")
def _inpaint_legacy():
    """The legacy inpainting pipeline: a 4-channel UNet, the mask blended into the latents."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated by diffusers
        pipe = from_base("StableDiffusionInpaintPipelineLegacy", tiny_sd_pipeline())
    return pipe, lambda: img2img(sd_call_kwargs(steps=4), mask_image=mask())


@variant("StableDiffusionLDM3DPipeline")
def _ldm3d():
    """LDM3D: RGB and depth decoded from one latent by an RGB-D VAE (the UNet is SD's)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    vae = AutoencoderKL(
        in_channels=4, out_channels=4, block_out_channels=(8, 8), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4, norm_num_groups=4, sample_size=16,
    ).eval()  # fmt: skip
    pipe = from_base("StableDiffusionLDM3DPipeline", tiny_sd_pipeline(), vae=vae)
    return pipe, lambda: {**sd_call_kwargs(steps=2), "output_type": "np"}  # no latent output


@variant("AltDiffusionPipeline")
def _alt_diffusion():
    """AltDiffusion: SD with a multilingual text encoder (here: prompt embeddings)."""
    return from_base("AltDiffusionPipeline", tiny_sd_pipeline()), lambda: sd_call_kwargs(steps=2)


@variant("AltDiffusionImg2ImgPipeline")
def _alt_diffusion_img2img():
    pipe = from_base("AltDiffusionImg2ImgPipeline", tiny_sd_pipeline())
    return pipe, lambda: img2img(sd_call_kwargs(steps=4))


@variant("StableDiffusionGLIGENPipeline", GLIGEN)
def _gligen():
    """GLIGEN: gated self-attention over grounding tokens (a box in [0, 1] coordinates and the
    phrase's pooled CLIP embedding): the low call gets them as they are."""
    pipe = from_base(
        "StableDiffusionGLIGENPipeline",
        tiny_sd_pipeline(),
        unet=tiny_unet(attention_type="gated"),
        tokenizer=tiny_tokenizer("clip"),
        text_encoder=tiny_clip_text(),
    )
    boxes = [[0.25, 0.25, 0.75, 0.75]]  # one box per phrase, [0, 1] coordinates
    extra = dict(gligen_phrases=["a"], gligen_boxes=boxes, gligen_scheduled_sampling_beta=1.0)
    return pipe, lambda: {**sd_call_kwargs(steps=2), **extra}


@variant("StableDiffusionModelEditingPipeline")
def _model_editing():
    """TIME model editing changes the text encoder; sampling is SD's (prompt embeddings here)."""
    pipe = from_base(
        "StableDiffusionModelEditingPipeline",
        tiny_sd_pipeline(),
        tokenizer=tiny_tokenizer("clip"),
        text_encoder=tiny_clip_text(),
    )
    return pipe, lambda: sd_call_kwargs(steps=2)


@variant("StableDiffusionImageVariationPipeline")
def _image_variation():
    """The text embeddings are the CLIP image embedding of the given image (one token)."""
    pipe = from_base(
        "StableDiffusionImageVariationPipeline",
        tiny_sd_pipeline(),
        image_encoder=tiny_clip_vision(),
    )

    def kwargs():
        call = {k: v for k, v in sd_call_kwargs(steps=2).items() if "prompt" not in k}
        return {**call, "image": picture(seed=8)}  # already CLIP-sized: no feature extractor

    return pipe, kwargs


@variant("PaintByExamplePipeline", CHANNELS)
def _paint_by_example():
    """A 9-channel inpainting UNet conditioned on an example image's CLIP embedding."""
    pipe = from_base(
        "PaintByExamplePipeline",
        tiny_sd_pipeline(),
        unet=tiny_unet(in_channels=9),
        image_encoder=tiny_clip_vision("PaintByExampleImageEncoder"),
    )

    def kwargs():
        call = {k: v for k, v in sd_call_kwargs(steps=2).items() if "prompt" not in k}
        return {**call, "example_image": picture(seed=8), "image": picture(), "mask_image": mask()}

    return pipe, kwargs


@variant("StableUnCLIPImg2ImgPipeline", CLASS_LABELS)
def _unclip_img2img():
    """Given CLIP image embeddings, noise-augmented and passed as class labels (with the noise
    level's embedding: 2 x 32 wide)."""
    from diffusers import DDPMScheduler
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )

    unet = tiny_unet(class_embed_type="projection", projection_class_embeddings_input_dim=64)
    pipe = from_base(
        "StableUnCLIPImg2ImgPipeline",
        tiny_sd_pipeline(),
        unet=unet,
        image_encoder=tiny_clip_vision(),  # unused with image_embeds (the pipeline reads its dtype)
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=32),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
    )
    embeds = torch.randn(1, 32, generator=torch.Generator().manual_seed(9))
    return pipe, lambda: {**sd_call_kwargs(steps=2), "image_embeds": embeds.clone()}


@variant("StableUnCLIPPipeline", CLASS_LABELS)
def _unclip():
    """The prior (text to CLIP image embedding) runs at its own size; the decoder's UNet gets
    the noise-augmented embedding as class labels."""
    from diffusers import DDPMScheduler, StableUnCLIPPipeline
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )

    unet = tiny_unet(class_embed_type="projection", projection_class_embeddings_input_dim=64)
    pipe = StableUnCLIPPipeline(
        prior_tokenizer=tiny_tokenizer("clip"),
        prior_text_encoder=tiny_clip_text("CLIPTextModelWithProjection"), prior=tiny_prior(),
        prior_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="sample",
                                      clip_sample=True, clip_sample_range=5.0),
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=32),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=tiny_tokenizer("clip"), text_encoder=tiny_clip_text(), unet=unet,
        scheduler=ddim_scheduler(), vae=tiny_sd_pipeline().vae,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe, lambda: dict(prompt="a", height=32, width=32, num_inference_steps=2,
                              prior_num_inference_steps=2, guidance_scale=5.0, generator=seeded(),
                              output_type="latent")  # fmt: skip


# ---------------------------------------------------------------------- SDXL
@variant("StableDiffusionXLImg2ImgPipeline", TIME_IDS)
def _sdxl_img2img():
    pipe = from_base("StableDiffusionXLImg2ImgPipeline", tiny_sdxl_pipeline())
    return pipe, lambda: img2img(sdxl_call_kwargs(steps=4))


@variant("StableDiffusionXLInpaintPipeline", TIME_IDS)
def _sdxl_inpaint():
    pipe = from_base("StableDiffusionXLInpaintPipeline", tiny_sdxl_pipeline())
    return pipe, lambda: {**sdxl_call_kwargs(steps=4), "image": picture(), "mask_image": mask(),
                          "strength": 0.8}  # fmt: skip


@variant("StableDiffusionXLInstructPix2PixPipeline", TIME_IDS, CHANNELS)
def _sdxl_pix2pix():
    """An 8-channel UNet (latent, image latents); CFG triples the batch."""
    pipe = from_base(
        "StableDiffusionXLInstructPix2PixPipeline",
        tiny_sdxl_pipeline(),
        unet=tiny_sdxl_unet(in_channels=8),
    )
    return pipe, lambda: {**sdxl_call_kwargs(steps=2), "image": picture()}


@variant("StableDiffusionXLControlNetImg2ImgPipeline", *CONTROLNET, TIME_IDS)
def _sdxl_controlnet_img2img():
    base = tiny_sdxl_pipeline()
    net = tiny_controlnet(base.unet)
    pipe = from_base("StableDiffusionXLControlNetImg2ImgPipeline", base, controlnet=net)
    return pipe, lambda: img2img(
        sdxl_call_kwargs(steps=4), strength=0.5, control_image=control_image()
    )


@variant("StableDiffusionXLControlNetInpaintPipeline", *CONTROLNET, TIME_IDS, CHANNELS)
def _sdxl_controlnet_inpaint():
    """A 9-channel SDXL inpainting UNet; the ControlNet (from a 4-channel UNet) sees latents."""
    base = tiny_sdxl_pipeline()
    net = tiny_controlnet(base.unet)
    pipe = from_base(
        "StableDiffusionXLControlNetInpaintPipeline",
        base,
        unet=tiny_sdxl_unet(in_channels=9),
        controlnet=net,
    )
    extra = dict(image=picture(), mask_image=mask(), control_image=control_image(), strength=1.0)
    return pipe, lambda: {**sdxl_call_kwargs(steps=2), **extra}


@variant("StableDiffusionXLControlNetUnionImg2ImgPipeline", *CONTROLNET, TIME_IDS)
def _sdxl_union_img2img():
    base = tiny_sdxl_pipeline()
    net = tiny_union_controlnet(base.unet)
    pipe = from_base("StableDiffusionXLControlNetUnionImg2ImgPipeline", base, controlnet=net)
    return pipe, lambda: img2img(
        sdxl_call_kwargs(steps=4), strength=0.5, control_image=[control_image()], control_mode=[1]
    )


@variant("StableDiffusionXLControlNetUnionInpaintPipeline", *CONTROLNET, TIME_IDS)
def _sdxl_union_inpaint():
    """A 4-channel UNet (the union inpaint pipeline blends the mask into the latents)."""
    base = tiny_sdxl_pipeline()
    net = tiny_union_controlnet(base.unet)
    pipe = from_base("StableDiffusionXLControlNetUnionInpaintPipeline", base, controlnet=net)
    extra = dict(image=picture(), mask_image=mask(), control_image=[control_image()],
                 control_mode=[1], strength=1.0)  # fmt: skip
    return pipe, lambda: {**sdxl_call_kwargs(steps=2), **extra}


@variant("StableDiffusionXLAdapterPipeline", *ADAPTER, TIME_IDS)
def _sdxl_adapter():
    """A T2I-Adapter (full_adapter: one downsampling per level, as the 2-level UNet needs)."""
    from diffusers import T2IAdapter

    torch.manual_seed(4)
    adapter = T2IAdapter(in_channels=3, channels=[16, 32], num_res_blocks=1, downscale_factor=2)
    randomize_zero_params(adapter.eval(), 4)
    pipe = from_base("StableDiffusionXLAdapterPipeline", tiny_sdxl_pipeline(), adapter=adapter)
    return pipe, lambda: {**sdxl_call_kwargs(steps=2), "image": control_image()}


# ---------------------------------------------------------------------- video UNets
FRAMES = 2


def clip(frames: int = FRAMES, size: int = 32, seed: int = 5) -> torch.Tensor:
    """A video in [0, 1], (frames, 3, size, size)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(frames, 3, size, size, generator=gen)


def video_kwargs(steps: int = 2, **extra) -> dict:
    """A tiny SD call for ``FRAMES`` frames of 32x32 pixels (16x16 latents)."""
    return {**sd_call_kwargs(steps=steps), "num_frames": FRAMES, **extra}


def motion_pipeline(name: str, unet=None, **parts):
    """An AnimateDiff pipeline ``name`` around the tiny UNet (or ``unet``) and motion adapter."""
    from diffusers_models import tiny_motion_adapter

    unet = unet if unet is not None else tiny_unet()
    return from_base(name, tiny_sd_pipeline(), unet=unet, motion_adapter=tiny_motion_adapter(),
                     **parts)  # fmt: skip


@variant("AnimateDiffSDXLPipeline", TIME_IDS)
def _animatediff_sdxl():
    """SDXL's UNet with the motion adapter (a UNetMotionModel with SDXL micro-conditioning)."""
    from diffusers_models import tiny_motion_adapter

    base = tiny_sdxl_pipeline()
    pipe = from_base("AnimateDiffSDXLPipeline", base, motion_adapter=tiny_motion_adapter())
    return pipe, lambda: {**sdxl_call_kwargs(steps=2), "num_frames": FRAMES}


@variant("AnimateDiffVideoToVideoPipeline")
def _animatediff_v2v():
    pipe = motion_pipeline("AnimateDiffVideoToVideoPipeline")

    def kwargs():
        call = video_kwargs(steps=4, video=clip(), strength=0.5)
        return {k: v for k, v in call.items() if k != "num_frames"}

    return pipe, kwargs


@variant("AnimateDiffVideoToVideoControlNetPipeline", *CONTROLNET)
def _animatediff_v2v_controlnet():
    unet = tiny_unet()
    pipe = motion_pipeline(
        "AnimateDiffVideoToVideoControlNetPipeline", unet, controlnet=tiny_controlnet(unet)
    )
    frames = [control_image(seed=i) for i in range(FRAMES)]

    def kwargs():
        call = video_kwargs(steps=4, video=clip(), strength=0.5, conditioning_frames=frames)
        return {k: v for k, v in call.items() if k != "num_frames"}

    return pipe, kwargs


@variant("TextToVideoSDPipeline")
def _text_to_video():
    pipe = from_base("TextToVideoSDPipeline", tiny_sd_pipeline(), unet=tiny_unet3d())
    return pipe, lambda: video_kwargs()


@variant("VideoToVideoSDPipeline")
def _video_to_video():
    pipe = from_base("VideoToVideoSDPipeline", tiny_sd_pipeline(), unet=tiny_unet3d())

    def kwargs():
        call = {k: v for k, v in sd_call_kwargs(steps=4).items() if k not in ("height", "width")}
        return {**call, "video": clip(), "strength": 0.5}

    return pipe, kwargs


# ---------------------------------------------------------------------- Kandinsky 2.2 decoders
KANDINSKY_PIXELS = 128  # MoVQ factor 8: 16x16 latents


def kandinsky_pipeline(name: str, in_channels: int = 4, **config):
    """A Kandinsky 2.2 decoder ``name``: a UNet conditioned on image embeddings (projected to
    cross-attention tokens and added to the time embedding) predicting noise and a variance
    (8 channels; the pipeline keeps the first 4), DDPM, the tiny MoVQ."""
    import diffusers
    from diffusers import DDPMScheduler

    config = {"addition_embed_type": "image", **config}
    unet = tiny_unet(in_channels=in_channels, out_channels=8, encoder_hid_dim=32,
                     encoder_hid_dim_type="image_proj", **config)  # fmt: skip
    scheduler = DDPMScheduler(beta_schedule="linear", beta_start=0.00085, beta_end=0.012,
                              clip_sample=False, steps_offset=1)  # fmt: skip
    pipe = getattr(diffusers, name)(unet=unet, scheduler=scheduler, movq=tiny_movq())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def kandinsky_kwargs(steps: int = 2, **extra) -> dict:
    """Image embeddings (from a prior) and the size for a Kandinsky 2.2 decoder call."""
    gen = torch.Generator().manual_seed(6)
    return dict(
        image_embeds=torch.randn(1, 32, generator=gen),
        negative_image_embeds=torch.randn(1, 32, generator=gen),
        height=KANDINSKY_PIXELS,
        width=KANDINSKY_PIXELS,
        num_inference_steps=steps,
        guidance_scale=4.0,
        generator=seeded(),
        output_type="latent",
        **extra,
    )


@variant("KandinskyV22Pipeline", IMAGE_EMBEDS, variance=True)
def _kandinsky():
    return kandinsky_pipeline("KandinskyV22Pipeline"), lambda: kandinsky_kwargs()


@variant("KandinskyV22Img2ImgPipeline", IMAGE_EMBEDS, variance=True)
def _kandinsky_img2img():
    pipe = kandinsky_pipeline("KandinskyV22Img2ImgPipeline")
    return pipe, lambda: kandinsky_kwargs(4, image=picture(KANDINSKY_PIXELS), strength=0.5)


@variant("KandinskyV22ControlnetPipeline", IMAGE_EMBEDS, HINT, variance=True)
def _kandinsky_controlnet():
    """The hint (a pixel image) is embedded 8x down inside the UNet and concatenated to the
    sample (8 input channels)."""
    pipe = kandinsky_pipeline(
        "KandinskyV22ControlnetPipeline", in_channels=8, addition_embed_type="image_hint"
    )
    hint = control_image(KANDINSKY_PIXELS, KANDINSKY_PIXELS)
    return pipe, lambda: {**kandinsky_kwargs(hint=hint), "output_type": "pt"}  # no latent output


@variant("KandinskyV22ControlnetImg2ImgPipeline", IMAGE_EMBEDS, HINT, variance=True)
def _kandinsky_controlnet_img2img():
    pipe = kandinsky_pipeline(
        "KandinskyV22ControlnetImg2ImgPipeline", in_channels=8, addition_embed_type="image_hint"
    )
    hint = control_image(KANDINSKY_PIXELS, KANDINSKY_PIXELS)
    extra = dict(image=picture(KANDINSKY_PIXELS), strength=0.5, hint=hint)
    return pipe, lambda: {**kandinsky_kwargs(4, **extra), "output_type": "pt"}


# ---------------------------------------------------------------------- DeepFloyd IF
def if_scheduler():
    """DeepFloyd IF's scheduler: DDPM with a learned-range variance."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range")


def if_pipeline(name: str, **config):
    """A DeepFloyd IF pipeline ``name``: a pixel UNet predicting noise and a variance."""
    import diffusers
    from diffusers import DDPMScheduler

    cls = getattr(diffusers, name)
    unet = tiny_unet(**{"in_channels": 3, "out_channels": 6, **config})
    parts = dict(
        tokenizer=None, text_encoder=None, unet=unet, scheduler=if_scheduler(),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        safety_checker=None, feature_extractor=None, watermarker=None,
        requires_safety_checker=False,
    )  # fmt: skip
    pipe = cls(**{k: v for k, v in parts.items() if k in init_params(cls)})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def if_kwargs(steps: int = 2, **extra) -> dict:
    """T5 embeddings (here 32 wide), 16x16 pixels, tensors out."""
    call = sd_call_kwargs(16, 16, steps=steps)
    return {**call, "output_type": "pt", **extra}


@variant("IFPipeline", noisy=3, variance=True)
def _if():
    return if_pipeline("IFPipeline"), lambda: if_kwargs()


@variant("IFImg2ImgPipeline", noisy=3, variance=True)
def _if_img2img():
    pipe = if_pipeline("IFImg2ImgPipeline")

    def kwargs():
        call = {k: v for k, v in if_kwargs(4).items() if k not in ("height", "width")}
        return {**call, "image": picture(16), "strength": 0.5}

    return pipe, kwargs


@variant("IFInpaintingPipeline", noisy=3, variance=True)
def _if_inpainting():
    """IF inpainting blends the mask into the noisy image (a 3-channel UNet)."""
    pipe = if_pipeline("IFInpaintingPipeline")

    def kwargs():
        call = {k: v for k, v in if_kwargs(2).items() if k not in ("height", "width")}
        return {**call, "image": picture(16), "mask_image": mask(16), "strength": 1.0}

    return pipe, kwargs


@variant("IFSuperResolutionPipeline", CHANNELS, CLASS_LABELS, noisy=3, variance=True)
def _if_super_resolution():
    """A 6-channel UNet (noisy image, upscaled image) with the noise level as class label."""
    pipe = if_pipeline("IFSuperResolutionPipeline", in_channels=6, class_embed_type="timestep")
    return pipe, lambda: if_kwargs(image=picture(8))


@variant("IFImg2ImgSuperResolutionPipeline", CHANNELS, CLASS_LABELS, noisy=3, variance=True)
def _if_img2img_super_resolution():
    pipe = if_pipeline(
        "IFImg2ImgSuperResolutionPipeline", in_channels=6, class_embed_type="timestep"
    )

    def kwargs():
        call = {k: v for k, v in if_kwargs(4).items() if k not in ("height", "width")}
        return {**call, "image": picture(8), "original_image": picture(16, 4), "strength": 0.5}

    return pipe, kwargs


@variant("IFInpaintingSuperResolutionPipeline", CHANNELS, CLASS_LABELS, noisy=3, variance=True)
def _if_inpainting_super_resolution():
    pipe = if_pipeline(
        "IFInpaintingSuperResolutionPipeline", in_channels=6, class_embed_type="timestep"
    )

    def kwargs():
        call = {k: v for k, v in if_kwargs(2).items() if k not in ("height", "width")}
        extra = dict(image=picture(8), original_image=picture(16, 4), mask_image=mask(16))
        return {**call, **extra, "strength": 1.0}

    return pipe, kwargs


# ---------------------------------------------------------------------- LDM and PNDM
@variant("LDMPipeline")
def _ldm():
    """Unconditional latent diffusion (latent size from the UNet's config: 2x its trained size)."""
    from diffusers import LDMPipeline

    unet = tiny_latent_unet()
    unet.register_to_config(sample_size=16)
    pipe = LDMPipeline(vqvae=tiny_movq(levels=2), unet=unet, scheduler=ddim_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe, lambda: dict(num_inference_steps=2, generator=seeded(), output_type="np")


@variant("LDMTextToImagePipeline")
def _ldm_text_to_image():
    """LDM's text-to-image pipeline (LDMBert on a prompt; latents are pixels / 8)."""
    from diffusers import LDMTextToImagePipeline
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import (
        LDMBertConfig,
        LDMBertModel,
    )

    torch.manual_seed(10)
    bert = LDMBertModel(LDMBertConfig(
        vocab_size=8, max_position_embeddings=77, encoder_layers=1, encoder_ffn_dim=64,
        encoder_attention_heads=2, head_dim=16, d_model=32,
    )).eval()  # fmt: skip
    pipe = LDMTextToImagePipeline(
        vqvae=tiny_movq(), bert=bert, tokenizer=tiny_tokenizer("bert"), unet=tiny_unet(),
        scheduler=ddim_scheduler(),
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe, lambda: dict(prompt="a", height=128, width=128, num_inference_steps=2,
                              guidance_scale=5.0, generator=seeded(), output_type="np")  # fmt: skip


@variant("LDMSuperResolutionPipeline", CHANNELS, noisy=3)
def _ldm_super_resolution():
    """A 6-channel UNet (3 latent channels, the low-resolution image in pixels); the latents
    have the image's size."""
    from diffusers import LDMSuperResolutionPipeline

    unet = tiny_latent_unet(in_channels=6, out_channels=3)
    vqvae = tiny_movq(levels=2, latent_channels=3)
    pipe = LDMSuperResolutionPipeline(vqvae=vqvae, unet=unet, scheduler=ddim_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe, lambda: dict(
        image=picture(16),
        num_inference_steps=2,
        generator=seeded(),
        output_type="np",
    )


@variant("PNDMPipeline", noisy=3)
def _pndm():
    """A pixel UNet2DModel (size from its config: 2x its trained size), PNDM (PRK steps, repeating
    timesteps, then PLMS: 13 calls for 4 steps)."""
    from diffusers import PNDMPipeline, PNDMScheduler
    from diffusers_models import tiny_pixel_unet

    unet = tiny_pixel_unet(sample_size=8)
    unet.register_to_config(sample_size=16)  # the size the pipeline samples
    pipe = PNDMPipeline(unet=unet, scheduler=PNDMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe, lambda: dict(num_inference_steps=4, generator=seeded(), output_type="np")


# ---------------------------------------------------------------------- the test
def _one(x: Any) -> Any:
    """A timestep as one number (a tensor broadcast over the batch holds one value)."""
    if isinstance(x, torch.Tensor):
        assert bool((x == x.reshape(-1)[0]).all())
        return x.reshape(-1)[0]
    return x


def check_low_call(v: Variant, high: tuple, low: tuple, guided: torch.Tensor, alphas) -> None:
    """One UNet call of a variant: Eq. 10 on the noisy channels, and the low call's other inputs."""
    (named, out), (low_named, low_out) = high, low
    n = v.noisy
    x, low_x = named["sample"], low_named["sample"]
    if x.ndim == 5:  # a video UNet: (B, C, F, h, w); the frames are not pooled (factors 1, 2, 2)
        assert x.shape[2] == low_x.shape[2] == FRAMES
    t, low_t = int(_one(named["timestep"])), int(_one(low_named["timestep"]))
    power = float(alphas[t]) + (1 - float(alphas[t])) / 4
    torch.testing.assert_close(low_x[:, :n], D(x[:, :n], (2, 2)) / math.sqrt(power))
    assert low_t == nearest_tau(alphas, t, 4)
    eps, low_eps = out[:, :n], low_out[:, :n]
    reference = eps + U(low_eps / 2 - D(eps, (2, 2)), (2, 2))
    torch.testing.assert_close(guided[:, :n], reference, rtol=1e-5, atol=1e-5)
    assert (out.shape[1] == 2 * n) == v.variance
    if v.variance:
        assert torch.equal(guided[:, n:], out[:, n:])
    # Clean conditioning channels: pooled, unscaled.
    assert (x.shape[1] > n) == (CHANNELS in v.expects)
    if x.shape[1] > n:
        assert x[:, n:].abs().sum() > 0
        torch.testing.assert_close(low_x[:, n:], D(x[:, n:], (2, 2)), rtol=1e-6, atol=1e-6)
    # ControlNet / T2I-Adapter residuals: pooled (per frame: (B·F, C, h, w) rows).
    for name in RESIDUALS:
        value = named.get(name)
        assert (value is not None and len(value) > 0) == (name in v.expects), name
        if value is None:
            assert low_named.get(name) is None, name
            continue
        highs = [value] if isinstance(value, torch.Tensor) else list(value)
        lows = low_named[name]
        lows = [lows] if isinstance(lows, torch.Tensor) else list(lows)
        assert len(lows) == len(highs), name
        for r, r_low in zip(highs, lows, strict=True):
            assert r.abs().sum() > 0, name
            torch.testing.assert_close(r_low, D(r, (2, 2)), rtol=1e-6, atol=1e-6)
    # Micro-conditioning: SDXL sizes halved, the rest (pooled text, image embeds) as is.
    added, low_added = (
        named.get("added_cond_kwargs") or {},
        low_named.get("added_cond_kwargs") or {},
    )
    assert set(added) == set(low_added)
    for key in ("time_ids", "image_embeds", "hint"):
        assert (key in added) == (f"added_cond_kwargs.{key}" in v.expects), key
    for key, value in added.items():
        if key == "time_ids":
            sizes = 4 if value.shape[1] == 5 else 6  # the refiner keeps its aesthetic score
            torch.testing.assert_close(low_added[key][:, :sizes], value[:, :sizes] / 2)
            assert torch.equal(low_added[key][:, sizes:], value[:, sizes:])
        elif key == "hint":
            torch.testing.assert_close(low_added[key], D(value, (2, 2)), rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(low_added[key], value), key
    assert (named.get("class_labels") is not None) == (CLASS_LABELS in v.expects)
    attention = named.get("cross_attention_kwargs") or {}
    assert ("gligen" in attention) == (GLIGEN in v.expects)
    assert low_named.get("cross_attention_kwargs") is named.get("cross_attention_kwargs")
    for key in ("encoder_hidden_states", "class_labels", "timestep_cond"):
        if isinstance(named.get(key), torch.Tensor):
            assert torch.equal(low_named[key], named[key]), key


UNET_VARIANTS = sorted(VARIANTS)


@pytest.mark.parametrize("name", UNET_VARIANTS)
def test_unet_variants_sample_with_ug(name):
    """scale=0 is the plain variant bit for bit; guided, one low call (8x8) per UNet call (16x16)
    checked against Eq. 10 and the high call's inputs; a different, finite result."""
    v = VARIANTS[name]
    pipe, kwargs = v.build()
    assert type(pipe).__name__ == name
    plain = torch.as_tensor(pipe(**kwargs())[0])
    apply_upsample_guidance(pipe, 2, 0.0)
    assert torch.equal(torch.as_tensor(pipe(**kwargs())[0]), plain)
    apply_upsample_guidance(pipe, 2, 1.0, eta=1.0)
    rec, out = ForwardRecorder(pipe.unet), OutputRecorder(pipe.unet)
    guided = torch.as_tensor(pipe(**kwargs())[0])
    rec.close(), out.close()
    sizes = [tuple(c[0]["sample"].shape[-2:]) for c in rec.calls]
    assert sizes and sizes == [HIGH, LOW] * (len(sizes) // 2)
    outputs = [o for o in out.outputs if tuple(o.shape[-2:]) == HIGH]  # the guided ones
    assert len(outputs) == len(sizes) // 2
    alphas = pipe.scheduler.alphas_cumprod
    for high, low, g in zip(rec.calls[::2], rec.calls[1::2], outputs, strict=True):
        check_low_call(v, high, low, g, alphas)
    assert torch.isfinite(guided).all() and not torch.equal(guided, plain)
