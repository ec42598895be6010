"""Every diffusers pipeline with a denoiser: supported, unsupported or not applicable, and why.

A pipeline *has a denoiser* when ``unet`` or ``transformer`` is a parameter of its ``__init__``
(a pipeline's components are its ``__init__`` parameters; ``_optional_components`` only says which
may be None). Prior/decoder cascades (Kandinsky priors, Würstchen, Stable Cascade, unCLIP,
Shap-E), Versatile Diffusion (``image_unet``), LLM-style pipelines (``model``) and latent
upsamplers have none and are not counted. :func:`denoiser_pipelines` walks the pipeline classes
``diffusers.pipelines`` exports (those whose optional dependencies are installed).

Each such class is in exactly one of:

- :data:`SUPPORTED`: class name → (family name, the test that runs it with UG, as a pytest node
  id);
- :data:`UNSUPPORTED`: class name → what it does that UG can't yet do correctly;
- :data:`NOT_APPLICABLE`: class name → why UG does not apply (audio, 3-D, autoregressive, ...).

:func:`apply_upsample_guidance <ug_core.adapters.diffusers.apply_upsample_guidance>` refuses the
last two with a TypeError that gives the reason. ``tests/test_diffusers_census.py`` fails on a
pipeline in none or several of them, so a new diffusers release waits for a decision.
``python -m ug_core.adapters.diffusers.census`` prints the family table of ``docs/families.md``
(``--write docs/families.md`` updates it). Importing this module imports no diffusers.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "SUPPORTED",
    "UNSUPPORTED",
    "NOT_APPLICABLE",
    "FAMILY_DOCS",
    "denoiser_pipelines",
    "has_denoiser",
    "refusal",
    "family_table",
    "reasons_list",
]

#: The ``__init__`` parameters that make a pipeline one with a denoiser.
DENOISER_COMPONENTS = ("unet", "transformer")

_SD = "tests/test_diffusers_apply.py"
_REF = "tests/test_diffusers_reference.py"
_CN = "tests/test_diffusers_controlnet.py"
_TR = "tests/test_diffusers_transformers.py::test_guided_calls_equal_the_hand_written_reference"
_IMG = "tests/test_diffusers_image_variants.py::test_zimage_guided_calls"
_VF = "tests/test_diffusers_video_families.py::test_guided_calls_equal_the_hand_written_reference"
_VP = "tests/test_diffusers_video_families.py::test_vp_calls_equal_the_hand_written_reference"
_CENSUS = "tests/test_diffusers_census.py"
_VARIANTS = "tests/test_diffusers_unet_variants.py::test_unet_variants_sample_with_ug"

#: Pipeline class → (family name, pytest node id of a test that runs it with UG).
SUPPORTED: dict[str, tuple[str, str]] = {
    "AllegroPipeline": ("Allegro", f"{_VP}[allegro]"),
    "AltDiffusionImg2ImgPipeline": ("UNet", f"{_VARIANTS}[AltDiffusionImg2ImgPipeline]"),
    "AltDiffusionPipeline": ("UNet", f"{_VARIANTS}[AltDiffusionPipeline]"),
    "AnimateDiffControlNetPipeline": (
        "video UNet",
        f"{_REF}::test_animatediff_controlnet_residuals_pooled_over_frames_and_pixels",
    ),
    "AnimateDiffPipeline": ("video UNet", f"{_REF}::test_animatediff_matches_eq10"),
    "AnimateDiffSDXLPipeline": ("video UNet", f"{_VARIANTS}[AnimateDiffSDXLPipeline]"),
    "AnimateDiffVideoToVideoControlNetPipeline": (
        "video UNet",
        f"{_VARIANTS}[AnimateDiffVideoToVideoControlNetPipeline]",
    ),
    "AnimateDiffVideoToVideoPipeline": (
        "video UNet",
        f"{_VARIANTS}[AnimateDiffVideoToVideoPipeline]",
    ),
    "AuraFlowPipeline": ("AuraFlow", f"{_TR}[auraflow]"),
    "ChromaImg2ImgPipeline": ("Flux", f"{_TR}[chroma_img2img]"),
    "ChromaPipeline": ("Flux", f"{_TR}[chroma]"),
    "ChronoEditPipeline": ("ChronoEdit", f"{_VF}[chronoedit]"),
    "CogVideoXPipeline": ("CogVideoX", f"{_TR}[cogvideox]"),
    "CogView4ControlPipeline": ("CogView4", f"{_TR}[cogview4_control]"),
    "CogView4Pipeline": ("CogView4", f"{_TR}[cogview4_shifted_sigma]"),
    "DDIMPipeline": ("UNet", f"{_CENSUS}::test_pixel_pipelines_sample_with_ug"),
    "DDPMPipeline": ("UNet", f"{_SD}::test_scale_zero_is_bit_identical_for_pixel_pipelines_and_eta_zero"),  # noqa: E501
    "DiTPipeline": ("DiT", f"{_CENSUS}::test_pixel_pipelines_sample_with_ug"),
    "Flux2KleinKVPipeline": ("Flux.2", f"{_TR}[flux2_klein_kv_cache]"),
    "Flux2KleinPipeline": ("Flux.2", f"{_TR}[flux2_klein_references_cfg]"),
    "Flux2Pipeline": ("Flux.2", f"{_TR}[flux2]"),
    "FluxControlNetPipeline": ("Flux", f"{_TR}[flux_controlnet]"),
    "FluxControlPipeline": ("Flux", f"{_TR}[flux_control]"),
    "FluxFillPipeline": ("Flux", f"{_TR}[flux_fill]"),
    "FluxImg2ImgPipeline": ("Flux", f"{_TR}[flux_img2img]"),
    "FluxInpaintPipeline": ("Flux", f"{_TR}[flux_inpaint]"),
    "FluxKontextPipeline": ("Flux", f"{_TR}[flux_kontext]"),
    "FluxPipeline": ("Flux", f"{_TR}[flux_dev_dynamic_shift]"),
    "HiDreamImagePipeline": ("HiDream", f"{_TR}[hidream]"),
    "HunyuanImagePipeline": ("HunyuanImage", f"{_TR}[hunyuanimage]"),
    "HunyuanVideo15ImageToVideoPipeline": ("HunyuanVideo 1.5", f"{_VF}[hunyuan_video15_i2v]"),
    "HunyuanVideo15Pipeline": ("HunyuanVideo 1.5", f"{_VF}[hunyuan_video15_t2v]"),
    "HunyuanSkyreelsImageToVideoPipeline": (
        "HunyuanVideo",
        f"{_VF}[hunyuan_skyreels_i2v_true_cfg]",
    ),
    "HunyuanVideoImageToVideoPipeline": ("HunyuanVideo", f"{_VF}[hunyuan_i2v_token_replace]"),
    "HunyuanVideoPipeline": ("HunyuanVideo", f"{_TR}[hunyuan_video_true_cfg]"),
    "EasyAnimateInpaintPipeline": ("EasyAnimate", f"{_VF}[easyanimate_inpaint]"),
    "EasyAnimatePipeline": ("EasyAnimate", f"{_VF}[easyanimate]"),
    "IFImg2ImgPipeline": ("UNet", f"{_VARIANTS}[IFImg2ImgPipeline]"),
    "IFImg2ImgSuperResolutionPipeline": ("UNet", f"{_VARIANTS}[IFImg2ImgSuperResolutionPipeline]"),
    "IFInpaintingPipeline": ("UNet", f"{_VARIANTS}[IFInpaintingPipeline]"),
    "IFInpaintingSuperResolutionPipeline": (
        "UNet",
        f"{_VARIANTS}[IFInpaintingSuperResolutionPipeline]",
    ),
    "IFPipeline": ("UNet", f"{_VARIANTS}[IFPipeline]"),
    "IFSuperResolutionPipeline": ("UNet", f"{_VARIANTS}[IFSuperResolutionPipeline]"),
    "Kandinsky5I2IPipeline": ("Kandinsky 5", f"{_VF}[kandinsky5_i2i]"),
    "Kandinsky5I2VPipeline": ("Kandinsky 5", f"{_VF}[kandinsky5_i2v]"),
    "Kandinsky5T2IPipeline": ("Kandinsky 5", f"{_VF}[kandinsky5_t2i]"),
    "Kandinsky5T2VPipeline": ("Kandinsky 5", f"{_VF}[kandinsky5_t2v]"),
    "KandinskyV22ControlnetImg2ImgPipeline": (
        "UNet",
        f"{_VARIANTS}[KandinskyV22ControlnetImg2ImgPipeline]",
    ),
    "KandinskyV22ControlnetPipeline": ("UNet", f"{_VARIANTS}[KandinskyV22ControlnetPipeline]"),
    "KandinskyV22Img2ImgPipeline": ("UNet", f"{_VARIANTS}[KandinskyV22Img2ImgPipeline]"),
    "KandinskyV22Pipeline": ("UNet", f"{_VARIANTS}[KandinskyV22Pipeline]"),
    "LDMPipeline": ("UNet", f"{_VARIANTS}[LDMPipeline]"),
    "LDMSuperResolutionPipeline": ("UNet", f"{_VARIANTS}[LDMSuperResolutionPipeline]"),
    "LDMTextToImagePipeline": ("UNet", f"{_VARIANTS}[LDMTextToImagePipeline]"),
    "LTX2ConditionPipeline": ("LTX-2", f"{_VF}[ltx2_condition_keyframe]"),
    "LatentConsistencyModelImg2ImgPipeline": (
        "UNet",
        f"{_VARIANTS}[LatentConsistencyModelImg2ImgPipeline]",
    ),
    "LattePipeline": ("Latte", f"{_VP}[latte]"),
    "LTX2ImageToVideoPipeline": ("LTX-2", f"{_VF}[ltx2_i2v]"),
    "LucyEditPipeline": ("Wan", f"{_VF}[lucy_edit]"),
    "LTX2Pipeline": ("LTX-2", f"{_VF}[ltx2]"),
    "LTXConditionPipeline": ("LTX-Video", f"{_VF}[ltx_condition]"),
    "LTXImageToVideoPipeline": ("LTX-Video", f"{_VF}[ltx_i2v]"),
    "LatentConsistencyModelPipeline": ("UNet", f"{_VARIANTS}[LatentConsistencyModelPipeline]"),
    "LTXPipeline": ("LTX-Video", f"{_TR}[ltx]"),
    "Lumina2Pipeline": ("Lumina 2", f"{_TR}[lumina2]"),
    "MochiPipeline": ("Mochi", f"{_TR}[mochi_inverted_sigmas]"),
    "PNDMPipeline": ("UNet", f"{_VARIANTS}[PNDMPipeline]"),
    "PaintByExamplePipeline": ("UNet", f"{_VARIANTS}[PaintByExamplePipeline]"),
    "PixArtAlphaPipeline": ("PixArt", f"{_TR}[pixart_alpha_micro]"),
    "PixArtSigmaPipeline": ("PixArt", f"{_TR}[pixart_sigma_binning]"),
    "QwenImage21Pipeline": ("Qwen-Image 2.1", f"{_TR}[qwenimage21_kv_cache_true_cfg]"),
    "QwenImageControlNetPipeline": ("Qwen-Image", f"{_TR}[qwenimage_controlnet]"),
    "QwenImageEditPipeline": ("Qwen-Image", f"{_TR}[qwen_edit_true_cfg]"),
    "QwenImageEditPlusPipeline": ("Qwen-Image", f"{_TR}[qwen_edit_plus_two_images_non_square]"),
    "QwenImageImg2ImgPipeline": ("Qwen-Image", f"{_TR}[qwenimage_img2img]"),
    "QwenImageInpaintPipeline": ("Qwen-Image", f"{_TR}[qwenimage_inpaint]"),
    "QwenImagePipeline": ("Qwen-Image", f"{_TR}[qwenimage]"),
    "SanaPipeline": ("Sana", f"{_TR}[sana_binning]"),
    "SanaImageToVideoPipeline": ("Sana-Video", f"{_VF}[sana_video_i2v]"),
    "SanaVideoPipeline": ("Sana-Video", f"{_TR}[sana_video]"),
    "SkyReelsV2DiffusionForcingImageToVideoPipeline": (
        "SkyReels-V2",
        f"{_VF}[skyreels_df_i2v]",
    ),
    "SkyReelsV2DiffusionForcingPipeline": ("SkyReels-V2", f"{_VF}[skyreels_df_async]"),
    "SkyReelsV2DiffusionForcingVideoToVideoPipeline": ("SkyReels-V2", f"{_VF}[skyreels_df_v2v]"),
    "SkyReelsV2ImageToVideoPipeline": ("SkyReels-V2", f"{_VF}[skyreels_i2v]"),
    "SkyReelsV2Pipeline": ("SkyReels-V2", f"{_VF}[skyreels_t2v]"),
    "StableDiffusion3ControlNetInpaintingPipeline": ("SD3", f"{_TR}[sd3_controlnet_inpainting]"),
    "StableDiffusion3ControlNetPipeline": ("SD3", f"{_TR}[sd3_controlnet]"),
    "StableDiffusion3Img2ImgPipeline": ("SD3", f"{_TR}[sd3_img2img]"),
    "StableDiffusion3InpaintPipeline": ("SD3", f"{_TR}[sd3_inpaint]"),
    "StableDiffusion3Pipeline": ("SD3", f"{_TR}[sd3]"),
    "StableDiffusionAdapterPipeline": ("UNet", f"{_CN}::test_t2i_adapter"),
    "StableDiffusionControlNetImg2ImgPipeline": ("UNet", f"{_CN}::test_controlnet_img2img"),
    "StableDiffusionControlNetInpaintPipeline": (
        "UNet",
        f"{_VARIANTS}[StableDiffusionControlNetInpaintPipeline]",
    ),
    "StableDiffusionControlNetPipeline": ("UNet", f"{_REF}::test_controlnet_residuals_are_pooled"),
    "StableDiffusionDepth2ImgPipeline": ("UNet", f"{_VARIANTS}[StableDiffusionDepth2ImgPipeline]"),
    "StableDiffusionGLIGENPipeline": ("UNet", f"{_VARIANTS}[StableDiffusionGLIGENPipeline]"),
    "StableDiffusionImageVariationPipeline": (
        "UNet",
        f"{_VARIANTS}[StableDiffusionImageVariationPipeline]",
    ),
    "StableDiffusionInpaintPipeline": ("UNet", f"{_CN}::test_inpainting_unet"),
    "StableDiffusionInpaintPipelineLegacy": (
        "UNet",
        f"{_VARIANTS}[StableDiffusionInpaintPipelineLegacy]",
    ),
    "StableDiffusionInstructPix2PixPipeline": ("UNet", f"{_CN}::test_instruct_pix2pix_unet"),
    "StableDiffusionImg2ImgPipeline": ("UNet", f"{_VARIANTS}[StableDiffusionImg2ImgPipeline]"),
    "StableDiffusionLDM3DPipeline": ("UNet", f"{_VARIANTS}[StableDiffusionLDM3DPipeline]"),
    "StableDiffusionModelEditingPipeline": (
        "UNet",
        f"{_VARIANTS}[StableDiffusionModelEditingPipeline]",
    ),
    "StableDiffusionPipeline": ("UNet", f"{_REF}::test_sd_with_cfg_matches_eq10_and_eq11"),
    "StableDiffusionUpscalePipeline": ("UNet", f"{_CN}::test_sd_x4_upscaler_unet"),
    "StableDiffusionXLAdapterPipeline": ("UNet", f"{_VARIANTS}[StableDiffusionXLAdapterPipeline]"),
    "StableDiffusionXLControlNetImg2ImgPipeline": (
        "UNet",
        f"{_VARIANTS}[StableDiffusionXLControlNetImg2ImgPipeline]",
    ),
    "StableDiffusionXLControlNetInpaintPipeline": (
        "UNet",
        f"{_VARIANTS}[StableDiffusionXLControlNetInpaintPipeline]",
    ),
    "StableDiffusionXLControlNetPipeline": ("UNet", f"{_CN}::test_sdxl_controlnet"),
    "StableDiffusionXLControlNetUnionImg2ImgPipeline": (
        "UNet",
        f"{_VARIANTS}[StableDiffusionXLControlNetUnionImg2ImgPipeline]",
    ),
    "StableDiffusionXLControlNetUnionInpaintPipeline": (
        "UNet",
        f"{_VARIANTS}[StableDiffusionXLControlNetUnionInpaintPipeline]",
    ),
    "StableDiffusionXLControlNetUnionPipeline": ("UNet", f"{_CN}::test_sdxl_controlnet_union"),
    "StableDiffusionXLImg2ImgPipeline": ("UNet", f"{_VARIANTS}[StableDiffusionXLImg2ImgPipeline]"),
    "StableDiffusionXLInpaintPipeline": ("UNet", f"{_VARIANTS}[StableDiffusionXLInpaintPipeline]"),
    "StableDiffusionXLInstructPix2PixPipeline": (
        "UNet",
        f"{_VARIANTS}[StableDiffusionXLInstructPix2PixPipeline]",
    ),
    "StableDiffusionXLPipeline": ("UNet", f"{_REF}::test_sdxl_micro_conditioning"),
    "StableUnCLIPImg2ImgPipeline": ("UNet", f"{_VARIANTS}[StableUnCLIPImg2ImgPipeline]"),
    "StableUnCLIPPipeline": ("UNet", f"{_VARIANTS}[StableUnCLIPPipeline]"),
    "TextToVideoSDPipeline": ("video UNet", f"{_VARIANTS}[TextToVideoSDPipeline]"),
    "VideoToVideoSDPipeline": ("video UNet", f"{_VARIANTS}[VideoToVideoSDPipeline]"),
    "WanImageToVideoPipeline": ("Wan", f"{_VF}[wan21_flf2v]"),
    "WanPipeline": ("Wan", f"{_TR}[wan22_two_transformers]"),
    "WanVACEPipeline": ("Wan VACE", f"{_VF}[wan_vace_reference]"),
    "WanVideoToVideoPipeline": ("Wan", f"{_VF}[wan_video2video]"),
    "ZImagePipeline": ("Z-Image", f"{_IMG}_equal_the_hand_written_reference"),
}  # fmt: skip

# ------------------------------------------------------------------ reasons, shared
NO_TRANSLATOR = (
    "its denoiser has no translator yet: the sample's layout, the time the model takes and what "
    "the low-resolution call's other inputs become are not written and tested for it (your own "
    "can be registered with register_family, see docs/families.md)"
)
UNTESTED = (
    "a variant of a supported family that no test runs with upsample guidance yet; its extra "
    "inputs have not been checked for the low-resolution call"
)
COMBINED = (
    "a combined pipeline samples through its sub-pipelines (prior_pipe, then decoder_pipe), "
    "whose progress bars the adapter does not watch, so guidance would never switch on: apply "
    "upsample guidance to pipe.decoder_pipe instead"
)
KANDINSKY_INPAINT = (
    "its UNet takes 9 channels (latent, masked image, mask) and predicts 8 (the noise and a "
    "variance the pipeline discards); from in_channels=9 and out_channels=8 the adapter takes 8 "
    "noisy channels, so the low-resolution call would get the mask and masked-image channels "
    "scaled as noise and the variance guided as noise: telling them apart needs the 4 latent "
    "channels, which the UNet family does not read from the pipeline"
)
IMAGE_TO_IMAGE = (
    "img2img / inpainting variant of a transformer family: starting from a given image (and "
    "blending a mask) is not tested with upsample guidance yet"
)
REFERENCE_TOKENS = (
    "appends reference-image (or reference-video) tokens to the denoiser's sequence: the "
    "low-resolution call would need them on the low grid with their position ids re-derived, "
    "which is not written yet"
)
CHANNEL_CONDITIONING = (
    "concatenates conditioning latents (masked image, mask, control image or first frame) to "
    "the sample as channels: pooling them for the low-resolution call is not tested for this "
    "pipeline yet"
)
TOKEN_CONTROLNET = (
    "its ControlNet adds block samples in token layout: pooling them on the patch grid for the "
    "low-resolution call is not tested for this pipeline yet"
)
IMAGE_TO_VIDEO = (
    "image-to-video: the first-frame latents, its mask and image tokens ride along with the "
    "sample, and some checkpoints keep the first frame clean with a time of its own; neither is "
    "handled for the low-resolution call yet"
)
PER_FRAME_TIMES = (
    "gives frames times of their own (diffusion forcing): the low-resolution call needs the "
    "kernel's time maps, which this family does not pass yet"
)
INVERSION_EDIT = (
    "edits a given image through its inversion at the image's own size; an edit has no larger "
    "size for upsample guidance to sample"
)
EXTRA_GUIDANCE = (
    "its guidance makes extra denoiser calls or reads attention maps (perturbed or masked "
    "attention) that the low-resolution call would also need; not tested with upsample guidance"
)
PAG = (
    "perturbed-attention guidance adds a third batch through swapped attention processors; not "
    "tested with upsample guidance yet"
)
NOT_A_TIMESTEP = (
    "its denoiser is not given a timestep of the scheduler's discrete or flow schedule "
    "(log-sigma, a noise-level class, a consistency or variance-exploding schedule), so time "
    "matching has no schedule to read"
)
TILED = (
    "denoises overlapping windows at the trained size (tiling / panorama): every call already "
    "sees the trained size, so there is nothing for upsample guidance to guide"
)
AUTOREGRESSIVE = (
    "autoregressive: samples chunk after chunk against a cache of earlier chunks (or tokens from "
    "a language model); a low-resolution call would need its own cache"
)
AUDIO = "audio: the sample is a waveform or an audio latent, not an image or video grid"
DISCRETE = "discrete tokens: the model predicts token logits, not a continuous denoised sample"

COSMOS_EDM = (
    "Cosmos wraps its transformer in EDM preconditioning (c_in, c_skip, c_out applied by the "
    "pipeline, the time a rescaled σ; Cosmos 2.5 adds per-frame condition times and a "
    "padding mask): the call returns neither ε, x0, v nor the scheduler's flow velocity, "
    "so the guidance has no parameterisation to read without a translator for the "
    "preconditioning"
)
HELIOS = (
    "autoregressive: samples chunk after chunk against multi-scale histories of earlier latents "
    "(latents_history_short/mid/long); a low-resolution call would need its own histories"
)
LTX2_PER_TOKEN = (
    "passes a video self-attention mask or keyframe markers per LTX-2 video token (in-context "
    "and DFR pipelines): they have no low-resolution counterpart, and the LTX-2 translator "
    "refuses them"
)
MOTIF = (
    "Motif-Video's transformer has no translator yet: its guider-driven calls, image "
    "conditioning and time unit are not written and tested"
)
SANA_WM = (
    "Sana world model: camera-conditioned context frames with a time per token and a "
    "refiner; its camera embeddings and context frames at the low resolution are not written "
    "and tested"
)

#: Pipeline class → what it does that UG can't yet do correctly.
UNSUPPORTED: dict[str, str] = {
    "AnimateDiffPAGPipeline": PAG,
    "AnimateDiffSparseControlNetPipeline": (
        "SparseCtrl conditions a few keyframes through a ControlNet with a mask channel: pooling "
        "its residuals over merged frames is not written"
    ),
    "AnyFlowPipeline": (
        "a flow-map model: each call takes a second time (r_timestep) and predicts the jump from "
        "timestep to r_timestep, not the instantaneous velocity the guidance combines"
    ),
    "BlipDiffusionControlNetPipeline": UNTESTED,
    "BlipDiffusionPipeline": UNTESTED,
    "BriaFibo2Pipeline": NO_TRANSLATOR,
    "BriaFiboEditPipeline": NO_TRANSLATOR,
    "BriaFiboPipeline": NO_TRANSLATOR,
    "BriaPipeline": NO_TRANSLATOR,
    "ChromaInpaintPipeline": IMAGE_TO_IMAGE,
    "CogVideoXFunControlPipeline": CHANNEL_CONDITIONING,
    "CogVideoXImageToVideoPipeline": (
        "untested: the CogVideoX translator area-averages the image-latent channels (as for Wan "
        "image-to-video), but no v-prediction reference with conditioning channels and the ofs "
        "embedding runs this pipeline yet"
    ),
    "CogVideoXVideoToVideoPipeline": UNTESTED,
    "CogView3PlusPipeline": NO_TRANSLATOR,
    "ConsistencyModelPipeline": NOT_A_TIMESTEP,
    "Cosmos2TextToImagePipeline": COSMOS_EDM,
    "Cosmos2VideoToWorldPipeline": COSMOS_EDM,
    "Cosmos2_5_PredictBasePipeline": COSMOS_EDM,
    "Cosmos2_5_TransferPipeline": COSMOS_EDM,
    "CosmosTextToWorldPipeline": COSMOS_EDM,
    "CosmosVideoToWorldPipeline": COSMOS_EDM,
    "CycleDiffusionPipeline": INVERSION_EDIT,
    "DreamLiteMobilePipeline": NO_TRANSLATOR,
    "DreamLitePipeline": NO_TRANSLATOR,
    "EasyAnimateControlPipeline": (
        "untested: the EasyAnimate translator pools control_latents with the sample, but no "
        "tiny test drives the control pipeline (control video, camera video, reference image) "
        "yet"
    ),
    "ErnieImagePipeline": NO_TRANSLATOR,
    "Flux2KleinInpaintPipeline": (
        "appends the image being inpainted, sized with the output, as reference tokens: the "
        "low-resolution call would need it at the low size"
    ),
    "FluxControlImg2ImgPipeline": CHANNEL_CONDITIONING,
    "FluxControlInpaintPipeline": CHANNEL_CONDITIONING,
    "FluxControlNetImg2ImgPipeline": TOKEN_CONTROLNET,
    "FluxControlNetInpaintPipeline": TOKEN_CONTROLNET,
    "FluxKontextInpaintPipeline": (
        "without image_reference it appends the image being inpainted, sized with the output, as "
        "the reference tokens: the low-resolution call would need it at the low size"
    ),
    "GlmImagePipeline": AUTOREGRESSIVE,
    "HeliosPipeline": HELIOS,
    "HeliosPyramidPipeline": HELIOS,
    "HunyuanDiTControlNetPipeline": NO_TRANSLATOR,
    "HunyuanDiTPAGPipeline": NO_TRANSLATOR,
    "HunyuanDiTPipeline": NO_TRANSLATOR,
    "HunyuanImageRefinerPipeline": (
        "refines a given image at its own size (its latents ride along as channels, sized with "
        "the output): there is no larger size for upsample guidance to sample"
    ),
    "I2VGenXLPipeline": IMAGE_TO_VIDEO,
    "Ideogram4Pipeline": NO_TRANSLATOR,
    "JoyImageEditPipeline": NO_TRANSLATOR,
    "JoyImageEditPlusPipeline": NO_TRANSLATOR,
    "Kandinsky3Img2ImgPipeline": NO_TRANSLATOR,
    "Kandinsky3Pipeline": NO_TRANSLATOR,
    "KandinskyCombinedPipeline": COMBINED,
    "KandinskyImg2ImgCombinedPipeline": COMBINED,
    "KandinskyImg2ImgPipeline": UNTESTED,
    "KandinskyInpaintCombinedPipeline": KANDINSKY_INPAINT,
    "KandinskyInpaintPipeline": KANDINSKY_INPAINT,
    "KandinskyPipeline": UNTESTED,
    "KandinskyV22CombinedPipeline": COMBINED,
    "KandinskyV22Img2ImgCombinedPipeline": COMBINED,
    "KandinskyV22InpaintCombinedPipeline": KANDINSKY_INPAINT,
    "KandinskyV22InpaintPipeline": KANDINSKY_INPAINT,
    "KarrasVePipeline": NOT_A_TIMESTEP,
    "Krea2Pipeline": NO_TRANSLATOR,
    "LEditsPPPipelineStableDiffusion": INVERSION_EDIT,
    "LEditsPPPipelineStableDiffusionXL": INVERSION_EDIT,
    "LTX2DFRPipeline": LTX2_PER_TOKEN,
    "LTX2DFRTemporalRefinePipeline": (
        "LTX-2 temporal refinement: samples with LTXEulerAncestralRFScheduler (not a "
        "flow-matching scheduler the adapter reads) and marks keyframe tokens "
        "(video_keyframes_mask), which has no low-resolution counterpart"
    ),
    "LTX2HDRPipeline": (
        "appends reference-video tokens (IC-LoRA, possibly at a reduced size) to the LTX-2 video "
        "sequence: pooling them with their coordinates is not written and tested"
    ),
    "LTX2InContextPipeline": LTX2_PER_TOKEN,
    "LTXI2VLongMultiPromptPipeline": (
        "samples a long video in overlapping temporal windows, each conditioned on the previous "
        "window's latents as reference tokens: not handled for the low-resolution call"
    ),
    "LongCatImageEditPipeline": NO_TRANSLATOR,
    "LongCatImagePipeline": NO_TRANSLATOR,
    "LuminaPipeline": NO_TRANSLATOR,
    "MotifVideoImage2VideoPipeline": MOTIF,
    "MotifVideoPipeline": MOTIF,
    "NucleusMoEImagePipeline": NO_TRANSLATOR,
    "OmniGenPipeline": NO_TRANSLATOR,
    "OvisImagePipeline": NO_TRANSLATOR,
    "PIAPipeline": IMAGE_TO_VIDEO,
    "PRXPipeline": NO_TRANSLATOR,
    "PRXPixelPipeline": NO_TRANSLATOR,
    "PixArtSigmaPAGPipeline": PAG,
    "QwenImageControlNetInpaintPipeline": TOKEN_CONTROLNET,
    "QwenImageEditInpaintPipeline": REFERENCE_TOKENS,
    "QwenImageLayeredPipeline": (
        "decomposes an image into layers sampled as extra frames of one sequence, at the input "
        "image's size"
    ),
    "RePaintPipeline": (
        "RePaint jumps back in time (it re-noises and repeats steps), so the time of a call is "
        "not the scheduler's next timestep; not tested with upsample guidance"
    ),
    "SanaControlNetPipeline": TOKEN_CONTROLNET,
    "SanaPAGPipeline": PAG,
    "SanaSprintImg2ImgPipeline": NOT_A_TIMESTEP,
    "SanaSprintPipeline": NOT_A_TIMESTEP,
    "SanaWMLTX2Refiner": SANA_WM,
    "SanaWMPipeline": SANA_WM,
    "ScoreSdeVePipeline": NOT_A_TIMESTEP,
    "SemanticStableDiffusionPipeline": EXTRA_GUIDANCE,
    "StableDiffusion3PAGImg2ImgPipeline": PAG,
    "StableDiffusion3PAGPipeline": PAG,
    "StableDiffusionAttendAndExcitePipeline": EXTRA_GUIDANCE,
    "StableDiffusionControlNetPAGInpaintPipeline": PAG,
    "StableDiffusionControlNetPAGPipeline": PAG,
    "StableDiffusionControlNetXSPipeline": (
        "fuses the UNet and the ControlNet-XS adapter into one UNetControlNetXSModel, which has "
        "no translator"
    ),
    "StableDiffusionDiffEditPipeline": INVERSION_EDIT,
    "StableDiffusionGLIGENTextImagePipeline": UNTESTED,
    "StableDiffusionLatentUpscalePipeline": NOT_A_TIMESTEP,
    "StableDiffusionPAGImg2ImgPipeline": PAG,
    "StableDiffusionPAGInpaintPipeline": PAG,
    "StableDiffusionPAGPipeline": PAG,
    "StableDiffusionPanoramaPipeline": TILED,
    "StableDiffusionParadigmsPipeline": (
        "ParaDiGMS denoises many timesteps in one batch, so a call has no single time of the "
        "scheduler's to read"
    ),
    "StableDiffusionPipelineSafe": EXTRA_GUIDANCE,
    "StableDiffusionPix2PixZeroPipeline": INVERSION_EDIT,
    "StableDiffusionSAGPipeline": EXTRA_GUIDANCE,
    "StableDiffusionXLControlNetPAGImg2ImgPipeline": PAG,
    "StableDiffusionXLControlNetPAGPipeline": PAG,
    "StableDiffusionXLControlNetXSPipeline": (
        "fuses the UNet and the ControlNet-XS adapter into one UNetControlNetXSModel, which has "
        "no translator"
    ),
    "StableDiffusionXLPAGImg2ImgPipeline": PAG,
    "StableDiffusionXLPAGInpaintPipeline": PAG,
    "StableDiffusionXLPAGPipeline": PAG,
    "StableVideoDiffusionPipeline": NO_TRANSLATOR,
    "TextToVideoZeroPipeline": (
        "Text2Video-Zero warps the first frame's latents and shares its attention across "
        "frames; not tested with upsample guidance"
    ),
    "TextToVideoZeroSDXLPipeline": (
        "Text2Video-Zero warps the first frame's latents and shares its attention across "
        "frames; not tested with upsample guidance"
    ),
    "VisualClozeGenerationPipeline": (
        "samples a grid of in-context example panels together: the trained size is a panel's, "
        "and the panels' positions are not mapped to a low grid"
    ),
    "VisualClozePipeline": (
        "samples a grid of in-context example panels together: the trained size is a panel's, "
        "and the panels' positions are not mapped to a low grid"
    ),
    "WanAnimatePipeline": (
        "Wan-Animate drives its transformer with pose latents beside the sample and face crops "
        "(pixels) through a motion encoder, and samples long videos in segments that reuse "
        "earlier frames: what the low-resolution call's pose, face and reference inputs become "
        "is not written and tested"
    ),
    "ZImageControlNetInpaintPipeline": (
        "its ControlNet's residuals are added to the joint, padded image-and-caption sequence: "
        "pooling them for the low-resolution call is not written"
    ),
    "ZImageControlNetPipeline": (
        "its ControlNet's residuals are added to the joint, padded image-and-caption sequence: "
        "pooling them for the low-resolution call is not written"
    ),
    "ZImageImg2ImgPipeline": (
        "Z-Image's translator is tested with ZImagePipeline only; this variant's start from a "
        "noised image (and the inpaint mask's blending) is not tested with guidance yet"
    ),
    "ZImageInpaintPipeline": (
        "Z-Image's translator is tested with ZImagePipeline only; this variant's start from a "
        "noised image (and the inpaint mask's blending) is not tested with guidance yet"
    ),
    "ZImageOmniPipeline": (
        "omni mode's condition images ride along as nested lists with SigLIP features and noise "
        "masks of their own: not handled for the low-resolution call"
    ),
}

#: Pipeline class → why upsample guidance does not apply to it.
NOT_APPLICABLE: dict[str, str] = {
    "AceStepPipeline": AUDIO,
    "AmusedImg2ImgPipeline": DISCRETE,
    "AmusedInpaintPipeline": DISCRETE,
    "AmusedPipeline": DISCRETE,
    "AnyFlowFARPipeline": AUTOREGRESSIVE,
    "AudioLDM2Pipeline": AUDIO,
    "AudioLDMPipeline": AUDIO,
    "Cosmos3OmniPipeline": AUTOREGRESSIVE,
    "DanceDiffusionPipeline": AUDIO,
    "HunyuanVideoFramepackPipeline": AUTOREGRESSIVE,
    "Kandinsky6SRPipeline": TILED,
    "Kandinsky6TI2VAPipeline": (
        "denoises video and audio latents together in one sequence; the audio has no grid to "
        "upsample"
    ),
    "LongCatAudioDiTPipeline": AUDIO,
    "MarigoldDepthPipeline": (
        "dense prediction (depth) of a given image at its processing resolution, not image "
        "generation"
    ),
    "MarigoldIntrinsicsPipeline": (
        "dense prediction (intrinsics) of a given image at its processing resolution, not "
        "image generation"
    ),
    "MarigoldNormalsPipeline": (
        "dense prediction (normals) of a given image at its processing resolution, not image "
        "generation"
    ),
    "MusicLDMPipeline": AUDIO,
    "RFD4ProteinaPipeline": "3-D protein structures: the sample is a set of atoms, not a grid",
    "StableAudio3AudioToAudioPipeline": AUDIO,
    "StableAudio3InpaintPipeline": AUDIO,
    "StableAudio3Pipeline": AUDIO,
    "StableAudioPipeline": AUDIO,
    "UniDiffuserPipeline": (
        "joint image-text model: one denoiser samples image, CLIP image and text latents together"
    ),
    "VQDiffusionPipeline": DISCRETE,
}

#: Family name → (parameterisation and the time the model gets, layout the adapter unpacks,
#: what the low-resolution call gets): the columns of the family table.
FAMILY_DOCS: dict[str, tuple[str, str, str]] = {
    "UNet": (
        "VP (ε, x0 or v), timestep index (fractional with Karras sigmas)",
        "`(B, C, H, W)`; extra input channels are conditioning, 2× output channels a learned "
        "variance",
        "pooled ControlNet/T2I residuals, block-averaged conditioning channels and Kandinsky "
        "2.2 hint images, SDXL size ids of the low image",
    ),
    "video UNet": (
        "VP",
        "`(B, C, F, H, W)`",
        "per-frame embeddings averaged over merged frames, residuals pooled over frames and pixels",
    ),
    "SD3": ("flow, `1000·σ`", "grid, patch 2", "pooled SD3-ControlNet tokens"),
    "AuraFlow": ("flow, `σ`", "grid, patch 2", ""),
    "Flux": (
        "flow, `σ`",
        "packed 2×2 tokens; Kontext's reference tokens after the target's; Fill's masked image "
        "and mask as channels",
        "`img_ids` of the low grid; Flux's `guidance` unchanged; Chroma's mask for the low "
        "tokens; Kontext's reference at full size; Fill's masked image area-averaged, its mask "
        "in pixels; pooled ControlNet tokens",
    ),
    "Flux.2": (
        "flow, `σ`",
        "packed 2×2 tokens; reference tokens after the target's (Klein-KV: before, then cached)",
        "4-axis `img_ids` of the low grid; references at full size, their cache shared",
    ),
    "Qwen-Image": (
        "flow, `σ`",
        "packed 2×2 tokens; Edit's reference tokens after the target's",
        "`img_shapes` of the low grid; references at full size; pooled ControlNet tokens",
    ),
    "Qwen-Image 2.1": (
        "flow, `σ`",
        "unpatched tokens after the condition images'; output: the joint sequence",
        "the target's `img_shapes` entry and `img_mask` slots of the low grid; conditions and "
        "their cache at full size",
    ),
    "Z-Image": ("flow on `1 − σ`, output `x0 − ε`", "a list of `(C, 1, H, W)`, patch 2", ""),
    "HunyuanImage": ("flow, `1000·σ` (MeanFlow refused)", "grid, patch 2", ""),
    "HiDream": ("flow, `1000·σ`, output `x0 − ε`", "grid, patch 2", ""),
    "CogView4": (
        "flow; the model gets the unshifted step, matched on the shifted σ",
        "grid, patch 2",
        "the step native sampling pairs with the matched σ; sizes of the low image",
    ),
    "PixArt": (
        "VP ε with learned variance",
        "grid, patch 2",
        "PixArt-α's resolution of the low image",
    ),
    "DiT": ("VP ε with learned variance", "grid, patch 2", ""),
    "Sana": ("flow, `1000·σ·timestep_scale`", "grid", "pooled ControlNet tokens"),
    "Sana-Video": ("flow, `1000·σ`", "`(B, C, F, H, W)`, patch (1, 2, 2)", ""),
    "Lumina 2": ("flow on `1 − σ`, output `x0 − ε`", "grid, patch 2", ""),
    "Wan": (
        "flow, `1000·σ`; TI2V-5B: a time per token",
        "`(B, C, F, H, W)`, patch (1, 2, 2); image-to-video channels are conditioning",
        "TI2V: the matched time per token (the clean first frame at 0); the same CLIP tokens",
    ),
    "Mochi": (
        "flow on `1 − σ` with output `x0 − ε` (inverted sigmas), else `1000·σ`",
        "`(B, C, F, H, W)`, patch (1, 2, 2)",
        "",
    ),
    "HunyuanVideo": (
        "flow, `1000·σ`; token-replace image-to-video: the first frame at time 0",
        "`(B, C, F, H, W)`, patch (1, 2, 2); latent-concat channels are conditioning",
        "the noisy frames' matched time",
    ),
    "HunyuanVideo 1.5": (
        "flow, `1000·σ` (mean-flow `timestep_r` refused)",
        "`(B, C, F, H, W)`; first-frame latents and mask channels are conditioning",
        "the same SigLIP image tokens",
    ),
    "SkyReels-V2": (
        "flow, `1000·σ`; diffusion forcing: a time per latent frame",
        "`(B, C, F, H, W)`, patch (1, 2, 2); image-to-video channels are conditioning",
        "the matched time per frame; temporal factors refused with causal blocks",
    ),
    "Latte": (
        "VP ε with learned variance, timestep index",
        "`(B, C, F, H, W)`, patch (1, 2, 2); spatial factors (fixed temporal embedding)",
        "",
    ),
    "Allegro": (
        "VP (ε or v), timestep index",
        "`(B, C, F, H, W)`, patch (1, 2, 2)",
        "rotary embeddings of the low grid",
    ),
    "EasyAnimate": (
        "flow, `1000·σ`",
        "`(B, C, F, H, W)`, patch (1, 2, 2)",
        "`inpaint_latents` / `control_latents` pooled with the sample",
    ),
    "ChronoEdit": (
        "flow, `1000·σ`",
        "`(B, C, F, H, W)`, patch (1, 2, 2); image channels are conditioning (spatial factors)",
        "the same CLIP image tokens",
    ),
    "Kandinsky 5": (
        "flow, `1000·σ`; image-to-video: the image's latent frame at time 0",
        "channels-last `(B, F, H, W, C)`, patch (1, 2, 2); `visual_cond` channels are conditioning",
        "RoPE positions, scale and sparse attention of the low grid (image pipelines snap to "
        "`pipe.resolutions`: list the sizes to sample)",
    ),
    "LTX-2": (
        "flow, `1000·σ`; image-to-video: a time per token",
        "video tokens with `num_frames/height/width` and `video_coords`; audio tokens ride along",
        "the low grid's size and `video_coords` (spatial factors); the high call's audio, audio "
        "time and sigma",
    ),
    "Wan VACE": (
        "flow, `1000·σ`",
        "`(B, C, F, H, W)`, patch (1, 2, 2)",
        "`control_hidden_states` pooled with the sample",
    ),
    "CogVideoX": ("VP v-prediction", "`(B, F, C, H, W)`", "rotary embeddings of the low grid"),
    "LTX-Video": (
        "flow, `1000·σ`; image-to-video and conditions: a time per token",
        "packed tokens with `num_frames/height/width`, or `video_coords` (conditioning clips "
        "prepended as frames)",
        "the low grid's sizes, the same `rope_interpolation_scale`; or the low grid's "
        "`video_coords` (spatial factors)",
    ),
}


def has_denoiser(cls: type) -> bool:
    """Whether a pipeline class takes a ``unet`` or ``transformer`` component."""
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return False
    return any(name in params for name in DENOISER_COMPONENTS)


def denoiser_pipelines() -> dict[str, type]:
    """Every pipeline class ``diffusers.pipelines`` exports that has a denoiser, by name."""
    import diffusers.pipelines
    from diffusers import DiffusionPipeline

    found = {}
    for name in sorted(dir(diffusers.pipelines)):
        value = getattr(diffusers.pipelines, name, None)
        if inspect.isclass(value) and issubclass(value, DiffusionPipeline) and has_denoiser(value):
            found[name] = value
    return found


def refusal(pipe_class: type) -> str | None:
    """Why UG refuses a pipeline class (unsupported or not applicable), or None.

    The class decides by its own name, or a user's subclass by its nearest census-listed base.
    """
    for cls in pipe_class.__mro__:
        name = cls.__name__
        if name in SUPPORTED:
            return None
        if name in UNSUPPORTED:
            return f"{pipe_class.__name__} is not supported yet: {UNSUPPORTED[name]}"
        if name in NOT_APPLICABLE:
            return (
                f"upsample guidance does not apply to {pipe_class.__name__}: {NOT_APPLICABLE[name]}"
            )
    return None


def _pipelines_of(family: str) -> list[str]:
    """The supported pipeline classes of a family, sorted."""
    return sorted(name for name, (f, _) in SUPPORTED.items() if f == family)


def family_table(families: Iterable[Any] | None = None) -> str:
    """The family table (markdown): one row per built-in family with a supported pipeline."""
    if families is None:
        from .families import FAMILIES as families
    header = (
        "| family (denoiser classes) | pipelines tested | parameterisation, time the model gets "
        "| layout the adapter unpacks | what the low call gets |\n"
        "| --- | --- | --- | --- | --- |\n"
    )
    rows = []
    for family in families:
        pipelines = _pipelines_of(family.name)
        if not pipelines:
            continue
        if family.name not in FAMILY_DOCS:
            raise ValueError(
                f"FAMILY_DOCS has no row for the {family.name} family (supported: "
                f"{', '.join(pipelines)}); add its parameterisation, layout and low-call inputs"
            )
        time, layout, low = FAMILY_DOCS[family.name]
        classes = ", ".join(f"`{c}`" for c in family.classes)
        names = ", ".join(f"`{p}`" for p in pipelines)
        rows.append(f"| {family.name} ({classes}) | {names} | {time} | {layout} | {low} |\n")
    counts = (
        f"\n{len(SUPPORTED)} pipelines supported, {len(UNSUPPORTED)} unsupported (with the "
        f"reason), {len(NOT_APPLICABLE)} not applicable.\n"
    )
    return header + "".join(rows) + counts


def reasons_list() -> str:
    """The unsupported and not-applicable pipelines grouped by reason (markdown)."""
    parts = []
    for title, table in (("Not supported yet", UNSUPPORTED), ("Not applicable", NOT_APPLICABLE)):
        by_reason: dict[str, list[str]] = {}
        for name, reason in sorted(table.items()):
            by_reason.setdefault(reason, []).append(name)
        items = [
            f"- {reason[0].upper()}{reason[1:]}: {', '.join(f'`{n}`' for n in names)}.\n"
            for reason, names in sorted(by_reason.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        ]
        parts.append(f"\n{title} ({len(table)}):\n\n" + "".join(items))
    return "".join(parts)


def summary_table() -> str:
    """The short family table of the README: family, number of pipelines, parameterisation."""
    from .families import FAMILIES

    rows = [
        f"| {family.name} | {len(_pipelines_of(family.name))} | {FAMILY_DOCS[family.name][0]} |\n"
        for family in FAMILIES
        if _pipelines_of(family.name)
    ]
    return (
        "| family | pipelines tested | parameterisation, time the model gets |\n"
        "| --- | ---: | --- |\n" + "".join(rows) + f"\n{len(SUPPORTED)} pipelines supported, "
        f"{len(UNSUPPORTED)} unsupported (with the reason), {len(NOT_APPLICABLE)} not applicable: "
        "[docs/families.md](docs/families.md).\n"
    )


BEGIN, END = "<!-- family table: begin -->\n", "<!-- family table: end -->\n"
SUMMARY = "<!-- family summary: begin -->\n", "<!-- family summary: end -->\n"


def _between(text: str, markers: tuple[str, str], body: str) -> str:
    """``text`` with the part between ``markers`` replaced by ``body`` (unchanged if absent)."""
    if markers[0] not in text:
        return text
    head, rest = text.split(markers[0], 1)
    _, tail = rest.split(markers[1], 1)
    return head + markers[0] + body + markers[1] + tail


def with_table(text: str) -> str:
    """``text`` with its family table (or the README's summary) regenerated from the census."""
    if not any(begin in text and end in text for begin, end in ((BEGIN, END), SUMMARY)):
        raise ValueError(f"the page must hold the markers {BEGIN.strip()} and {END.strip()}")
    text = _between(text, (BEGIN, END), family_table() + reasons_list())
    return _between(text, SUMMARY, summary_table())


def main(argv: list[str] | None = None) -> int:
    """Print the family table, or ``--write PAGE`` to update it in a markdown page."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--write", type=Path, help="a markdown page with the table markers")
    args = parser.parse_args(argv)
    if args.write is None:
        sys.stdout.write(family_table() + reasons_list())
    else:
        args.write.write_text(with_table(args.write.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
