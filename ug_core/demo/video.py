"""The embedded video model: a class-conditional AnimateDiff-structured pixel model, and sampling.

The model is a diffusers ``UNetMotionModel`` (a 2-D UNet with motion modules) trained on
:mod:`ug_core.demo.moving_shapes` clips of 8 frames of 32×32 pixels. It runs through the real
``AnimateDiffPipeline``, set up as follows:

- **no text encoder**: the class enters as learned class-token embeddings (``TOKENS`` tokens of
  width ``TOKEN_DIM`` per class) passed as ``prompt_embeds``; the null class's tokens are the
  ``negative_prompt_embeds``, so the pipeline's ``guidance_scale`` is classifier-free guidance;
- **pixel space**: the pipeline's ``vae`` is a one-block ``AutoencoderKL`` (scale factor
  ``2**0 = 1``, so the "latent" grid is the pixel grid); it is never run, because sampling uses
  ``output_type="latent"``, which returns the 3-channel samples in [-1, 1] as they are;
- the scheduler is a ``DDIMScheduler`` on the training schedule (1000 linear-beta steps,
  epsilon prediction, x0 clipped to [-1, 1], trailing timesteps).

Upsample guidance is :func:`ug_core.adapters.diffusers.apply_upsample_guidance` on that pipeline,
with factors on (frames, height, width). Example::

    from ug_core.demo import video

    model = video.load()                                   # the embedded 8×32×32 model
    clips = model.sample([0, 1], seeds=[0, 1], frames=16, size=64, factors=(2, 2, 2))
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..operators import downsample, normalize_factors
from .shapes import CLASSES

__all__ = [
    "ASSET_DIR",
    "MODEL_CONFIG",
    "SCHEDULER_CONFIG",
    "TOKENS",
    "TOKEN_DIM",
    "TRAINED_FRAMES",
    "TRAINED_SIZE",
    "VideoModel",
    "build_unet",
    "build_vae",
    "load",
    "initial_noise",
    "low_res_noise",
]

#: The embedded model's folder.
ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "video32"
#: Frames and pixels per side the model is trained at.
TRAINED_FRAMES, TRAINED_SIZE = 8, 32
#: Class tokens per class and their width (the UNet's cross-attention width).
TOKENS, TOKEN_DIM = 4, 32

#: The UNetMotionModel's configuration (about 2.0 M parameters, 8.2 MB in float32). Its 2-D part
#: matches the embedded shapes model's UNet (blocks of 32, 64 and 64 channels), cross-attention
#: carries the class tokens at 8×8, and motion modules (temporal transformers) run at 16×16 and
#: 8×8; the 32×32 level's motion modules have no transformer layer (a per-pixel linear residual),
#: which keeps a CPU training step affordable.
MODEL_CONFIG: dict[str, Any] = dict(
    sample_size=TRAINED_SIZE,
    in_channels=3,
    out_channels=3,
    down_block_types=("DownBlockMotion", "DownBlockMotion", "CrossAttnDownBlockMotion"),
    up_block_types=("CrossAttnUpBlockMotion", "UpBlockMotion", "UpBlockMotion"),
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    norm_num_groups=8,
    cross_attention_dim=TOKEN_DIM,
    num_attention_heads=2,
    motion_num_attention_heads=2,
    motion_max_seq_length=32,
    use_motion_mid_block=True,
    temporal_transformer_layers_per_block=(0, 1, 1),
)

#: The DDIMScheduler's configuration (the training schedule is its DDPM schedule).
SCHEDULER_CONFIG: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_schedule="linear",
    beta_start=1e-4,
    beta_end=0.02,
    prediction_type="epsilon",
    clip_sample=True,
    clip_sample_range=1.0,
    set_alpha_to_one=True,
    steps_offset=0,
    timestep_spacing="trailing",
)


def build_unet(seed: int = 0) -> Any:
    """A freshly initialised ``UNetMotionModel`` with :data:`MODEL_CONFIG` (seeded)."""
    from diffusers import UNetMotionModel

    torch.manual_seed(seed)
    return UNetMotionModel(**MODEL_CONFIG)


def build_vae() -> Any:
    """The pipeline's one-block ``AutoencoderKL``: scale factor 1, never run (see the module)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(8,),
        layers_per_block=1,
        latent_channels=3,
        norm_num_groups=4,
        sample_size=TRAINED_SIZE,
    ).eval()
