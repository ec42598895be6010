"""The latent flow model: AutoencoderKL + class-conditional SD3Transformer2DModel, in diffusers.

The shipped folder ``ug_core/assets/latent_flow`` is a ``StableDiffusion3Pipeline.save_pretrained``
folder without text encoders: ``vae/`` (an ``AutoencoderKL`` with f = 4, trained on 32×32 textured
scenes), ``transformer/`` (an ``SD3Transformer2DModel`` trained by flow matching on the VAE's 8×8
latents), ``scheduler/`` (``FlowMatchEulerDiscreteScheduler``) and ``class_embeddings.safetensors``:
the learned class tokens the transformer was trained with, passed to the pipeline as
``prompt_embeds`` / ``pooled_prompt_embeds`` (row ``null_class`` is the "no class" tokens used for
classifier-free guidance)::

    from ug_core.demo.latent import load_pipeline

    lf = load_pipeline()                                   # the shipped model, on the CPU
    images = lf.generate([0, 1, 2, 3], size=64, seed=0)    # (4, 3, 64, 64) in [-1, 1]

Latent scaling is SD3's: the transformer sees ``(z − shift_factor) · scaling_factor`` for a VAE
latent ``z`` (the mean of the posterior), and the pipeline decodes ``latents / scaling_factor +
shift_factor``; :func:`latent_scaling` measures both on the training data, and the training script
writes them into ``vae/config.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .shapes import CLASSES

__all__ = [
    "LATENT_DIR",
    "VAE_CONFIG",
    "TRANSFORMER_CONFIG",
    "SCHEDULER_CONFIG",
    "CONTEXT_TOKENS",
    "ClassEmbeddings",
    "LatentFlow",
    "build_vae",
    "build_transformer",
    "latent_scaling",
    "load_pipeline",
]

#: The shipped latent flow model's folder.
LATENT_DIR = Path(__file__).resolve().parent.parent / "assets" / "latent_flow"

#: AutoencoderKL: f = 4 (three blocks), 4 latent channels, no attention (convolutional: any size).
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=16,
    sample_size=32,
    mid_block_add_attention=False,
)

#: SD3Transformer2DModel on 8×8×4 latents, patch size 1 (64 tokens at the trained size).
TRANSFORMER_CONFIG = dict(
    sample_size=8,
    patch_size=1,
    in_channels=4,
    out_channels=4,
    num_layers=4,
    attention_head_dim=32,
    num_attention_heads=3,
    joint_attention_dim=64,
    caption_projection_dim=96,
    pooled_projection_dim=64,
    pos_embed_max_size=32,
    qk_norm="rms_norm",
)

#: FlowMatchEulerDiscreteScheduler: SD3's, with shift 1 (8×8 latents are small).
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=1.0)

#: Class tokens per class (the ``prompt_embeds`` sequence length).
CONTEXT_TOKENS = 4


def build_vae(seed: int = 0) -> Any:
    """A freshly initialised AutoencoderKL with :data:`VAE_CONFIG` (seeded)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**VAE_CONFIG)


def build_transformer(seed: int = 0) -> Any:
    """A freshly initialised SD3Transformer2DModel with :data:`TRANSFORMER_CONFIG` (seeded)."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(**TRANSFORMER_CONFIG)


class ClassEmbeddings(torch.nn.Module):
    """Learned class tokens: ``labels -> (prompt_embeds (B, L, D), pooled_prompt_embeds (B, P))``.

    Rows ``0 … len(CLASSES) − 1`` are the classes, row ``len(CLASSES)`` the null class.
    """

    def __init__(
        self,
        num_classes: int = len(CLASSES) + 1,
        tokens: int = CONTEXT_TOKENS,
        dim: int = TRANSFORMER_CONFIG["joint_attention_dim"],
        pooled_dim: int = TRANSFORMER_CONFIG["pooled_projection_dim"],
    ) -> None:
        super().__init__()
        self.tokens = torch.nn.Parameter(torch.randn(num_classes, tokens, dim) * 0.5)
        self.pooled = torch.nn.Parameter(torch.randn(num_classes, pooled_dim) * 0.5)

    @property
    def num_classes(self) -> int:
        """Rows in the table (the classes and the null class)."""
        return int(self.tokens.shape[0])

    def forward(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt embeddings of ``labels`` (int64, (B,))."""
        labels = torch.as_tensor(labels, dtype=torch.long, device=self.tokens.device)
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"labels must lie in [0, {self.num_classes - 1}], got {labels.tolist()!r}"
            )
        return self.tokens[labels], self.pooled[labels]


@torch.no_grad()
def latent_scaling(vae: Any, images: torch.Tensor, batch_size: int = 256) -> tuple[float, float]:
    """SD3-style ``(scaling_factor, shift_factor)``: 1 / std and mean of the latents of images."""
    z = torch.cat(
        [
            vae.encode(images[i : i + batch_size]).latent_dist.mode()
            for i in range(0, len(images), batch_size)
        ]
    )
    shift = float(z.mean())
    return float(1.0 / (z - shift).std()), shift


@dataclass
class LatentFlow:
    """A latent flow model as a ready ``StableDiffusion3Pipeline`` and its class tokens."""

    pipe: Any
    """The ``StableDiffusion3Pipeline`` (no text encoders)."""
    embeddings: ClassEmbeddings
    """The class tokens."""
    classes: tuple[str, ...]
    """Class names, label order (the null class last)."""
    null_class: int
    """The label of the "no class" tokens (classifier-free guidance)."""

    @property
    def sample_size(self) -> tuple[int, int]:
        """The trained image size (height, width) in pixels."""
        s = self.pipe.transformer.config.sample_size * self.pipe.vae_scale_factor
        return (s, s)

    def prompt_kwargs(self, labels: Sequence[int] | torch.Tensor) -> dict[str, torch.Tensor]:
        """``prompt_embeds``, ``pooled_prompt_embeds`` and their null-class negatives."""
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        cond, pooled = self.embeddings(labels)
        null, null_pooled = self.embeddings(torch.full_like(labels, self.null_class))
        return dict(
            prompt_embeds=cond,
            pooled_prompt_embeds=pooled,
            negative_prompt_embeds=null,
            negative_pooled_prompt_embeds=null_pooled,
        )

    def initial_latents(self, n: int, size: int | Sequence[int], seed: int) -> torch.Tensor:
        """x_1 (pure noise) for samples ``seed, seed + 1, …`` at image ``size``."""
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        f, c = self.pipe.vae_scale_factor, self.pipe.transformer.config.in_channels
        gens = [torch.Generator().manual_seed(seed + i) for i in range(n)]
        return torch.stack([torch.randn(c, h // f, w // f, generator=g) for g in gens])

    @torch.no_grad()
    def generate(
        self,
        labels: Sequence[int] | torch.Tensor,
        size: int | Sequence[int],
        seed: int = 0,
        steps: int = 20,
        cfg: float = 1.0,
        latents: torch.Tensor | None = None,
        batch_size: int = 64,
        pipe: Any = None,
    ) -> torch.Tensor:
        """Samples through the pipeline (``pipe``, default the plain one): (n, 3, H, W) in [-1, 1].

        ``latents`` overrides the per-seed noise (:meth:`initial_latents`). Apply upsample guidance
        to the pipeline (``ug_core.adapters.diffusers.apply_upsample_guidance``) to guide it.
        """
        pipe = self.pipe if pipe is None else pipe
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        f, c = self.pipe.vae_scale_factor, self.pipe.transformer.config.in_channels
        if h % f or w % f:
            raise ValueError(f"size must be a multiple of the VAE factor {f}, got {h}x{w}")
        if latents is None:
            latents = self.initial_latents(len(labels), (h, w), seed)
        if tuple(latents.shape) != (len(labels), c, h // f, w // f):
            raise ValueError(
                f"latents must have shape {(len(labels), c, h // f, w // f)} for {len(labels)} "
                f"labels at size {h}x{w}, got {tuple(latents.shape)}"
            )
        out = []
        for i in range(0, len(labels), batch_size):
            lab = labels[i : i + batch_size]
            images = pipe(
                height=h, width=w, num_inference_steps=steps, guidance_scale=cfg,
                latents=latents[i : i + batch_size], output_type="pt",
                **self.prompt_kwargs(lab),
            ).images  # fmt: skip
            out.append(images.float().cpu() * 2 - 1)
        return torch.cat(out).clamp(-1, 1)


def load_pipeline(path: str | Path | None = None, device: str | torch.device = "cpu") -> LatentFlow:
    """Load a latent flow folder (default: the shipped ``latent_flow``) as a :class:`LatentFlow`."""
    from diffusers import StableDiffusion3Pipeline
    from safetensors.torch import load_file

    folder = LATENT_DIR if path is None else Path(path)
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"path {str(folder)!r} holds no model_index.json (a pipeline folder)")
    none = dict.fromkeys(
        ["text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"]
        + ["text_encoder_3", "tokenizer_3"]
    )
    pipe = StableDiffusion3Pipeline.from_pretrained(folder, local_files_only=True, **none)
    pipe.set_progress_bar_config(disable=True)
    weights = load_file(folder / "class_embeddings.safetensors")
    emb = ClassEmbeddings(*weights["tokens"].shape, weights["pooled"].shape[1])
    emb.load_state_dict(weights)
    meta = json.loads((folder / "classes.json").read_text())
    pipe.to(device)
    return LatentFlow(pipe, emb.requires_grad_(False).to(device), tuple(meta["classes"]),
                      int(meta["null_class"]))  # fmt: skip
