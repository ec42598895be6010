"""Video transformers: Sana-Video, Mochi, Wan, HunyuanVideo, CogVideoX, LTX-Video."""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange

from ....schedules import FlowSchedule, Schedule
from .base import Call, Family, _latents


class SanaVideo(Family):
    """Sana-Video (``SanaVideoTransformer3DModel``): ``(B, C, F, H, W)``, flow, ``1000·σ``."""

    name = "Sana-Video"
    classes = ("SanaVideoTransformer3DModel",)
    video = True
    token_residuals = ("controlnet_block_samples",)


class Mochi(Family):
    """Mochi (``MochiTransformer3DModel``): ``(B, C, F, H, W)``, flow, patch (1, 2, 2).

    With the shipped scheduler (``invert_sigmas=True``) the model gets ``1000·(1 − σ)`` and its
    output is ``x0 − ε``; with a plain flow scheduler, ``1000·σ`` and ``ε − x0``.
    """

    name = "Mochi"
    classes = ("MochiTransformer3DModel",)
    video = True

    def patch(self, module: torch.nn.Module) -> tuple[int, ...]:
        """Mochi patches each frame 2×2."""
        p = module.config.patch_size
        return (1, p, p)

    def sign(self, scheduler: Any) -> float:
        """-1 with inverted sigmas: the model predicts x0 − ε."""
        return -1.0 if _inverted(scheduler) else 1.0

    def schedule(self, scheduler: Any, module: torch.nn.Module) -> tuple[Schedule, str]:
        """Rectified flow, on the reversed time axis with inverted sigmas."""
        schedule, prediction = super().schedule(scheduler, module)
        if _inverted(scheduler):
            return FlowSchedule(time_scale=schedule.time_scale, reverse=True), prediction
        return schedule, prediction


def _inverted(scheduler: Any) -> bool:
    """Whether a flow scheduler counts time from the noise (``invert_sigmas``, Mochi's)."""
    return bool(getattr(getattr(scheduler, "config", None), "invert_sigmas", False))


class Wan(Family):
    """Wan 2.1 / 2.2 (``WanTransformer3DModel``): video ``(B, C, F, H, W)``, flow, ``1000·σ``."""

    name = "Wan"
    classes = ("WanTransformer3DModel",)
    video = True

    def grid_of(self, sample: torch.Tensor, call: Call) -> tuple[int, ...]:
        """The video grid; per-token timesteps (Wan 2.2 TI2V's expand_timesteps) are refused."""
        t = call.named.get(self.time_arg)
        if isinstance(t, torch.Tensor) and t.ndim > 1:
            raise ValueError(
                "Wan with per-token timesteps (expand_timesteps, Wan 2.2 TI2V) is not supported: "
                f"got a timestep of shape {tuple(t.shape)}"
            )
        return super().grid_of(sample, call)


class HunyuanVideo(Family):
    """HunyuanVideo (``HunyuanVideoTransformer3DModel``): ``(B, C, F, H, W)``, flow, ``1000·σ``."""

    name = "HunyuanVideo"
    classes = ("HunyuanVideoTransformer3DModel",)
    video = True

    def patch(self, module: torch.nn.Module) -> tuple[int, ...]:
        """``(patch_size_t, patch_size, patch_size)``."""
        p, pt = module.config.patch_size, getattr(module.config, "patch_size_t", 1) or 1
        return (pt, p, p)


class CogVideoX(Family):
    """CogVideoX (``CogVideoXTransformer3DModel``): ``(B, F, C, H, W)``, VP, v-prediction.

    The pipeline computes rotary embeddings for the whole grid; the low call gets those of the
    low grid, from the pipeline's own ``_prepare_rotary_positional_embeddings``.
    """

    name = "CogVideoX"
    classes = ("CogVideoXTransformer3DModel",)
    video = True
    predictions = ("v_prediction", "epsilon", "sample")

    def patch(self, module: torch.nn.Module) -> tuple[int, ...]:
        """``(patch_size_t or 1, patch_size, patch_size)``."""
        p, pt = module.config.patch_size, getattr(module.config, "patch_size_t", None) or 1
        return (pt, p, p)

    def grid_of(self, sample: torch.Tensor, call: Call) -> tuple[int, ...]:
        """``(F, H, W)`` of a frames-first sample."""
        if sample.ndim != 5:
            raise ValueError(
                f"{type(call.module).__name__} got hidden_states of shape "
                f"{tuple(sample.shape)}; CogVideoX takes (B, F, C, H, W)"
            )
        return (sample.shape[1], *sample.shape[-2:])

    def to_grid(self, sample: torch.Tensor, call: Call) -> torch.Tensor:
        """``(B, F, C, H, W)`` to ``(B, C, F, H, W)``."""
        return sample.transpose(1, 2)

    def from_grid(self, grid: torch.Tensor, call: Call) -> torch.Tensor:
        """``(B, C, F, H, W)`` to ``(B, F, C, H, W)``."""
        return grid.transpose(1, 2)

    def low_inputs(self, low: dict, call: Call, factors: tuple[int, ...], micro: str) -> None:
        """Rotary embeddings of the low grid."""
        if low.get("image_rotary_emb") is None:
            return
        frames, height, width = call.low_grid
        low["image_rotary_emb"] = _cogvideox_rope(call, frames, height, width)


def _cogvideox_rope(call: Call, frames: int, height: int, width: int) -> tuple:
    """CogVideoX's rotary embeddings for a latent grid, by the pipeline's own method."""
    from diffusers import CogVideoXPipeline

    module = call.module
    device = call.named["hidden_states"].device
    shim = type("Shim", (), {})()
    shim.transformer = module
    shim.vae_scale_factor_spatial = 1  # latent sizes in, so the pixel scale is 1
    return CogVideoXPipeline._prepare_rotary_positional_embeddings(
        shim, height, width, frames, device
    )


class LTXVideo(Family):
    """LTX-Video (``LTXVideoTransformer3DModel``): packed tokens, grid in the call's arguments.

    The call carries ``num_frames``, ``height`` and ``width`` of the latent grid; the low call
    gets those of the low grid, and the same ``rope_interpolation_scale`` (the same frame rate
    and VAE compression, as native low-resolution sampling would pass).
    """

    name = "LTX-Video"
    classes = ("LTXVideoTransformer3DModel",)
    video = True

    def patch(self, module: torch.nn.Module) -> tuple[int, ...]:
        """``(patch_size_t, patch_size, patch_size)``."""
        p, pt = module.config.patch_size, getattr(module.config, "patch_size_t", 1) or 1
        return (pt, p, p)

    def grid_of(self, sample: torch.Tensor, call: Call) -> tuple[int, ...]:
        """``(num_frames, height, width)`` from the call."""
        if call.named.get("video_coords") is not None:
            raise ValueError(
                "LTX-Video calls with video_coords (LTXConditionPipeline) are not supported; "
                "LTXPipeline and LTXImageToVideoPipeline pass num_frames/height/width"
            )
        grid = tuple(call.named.get(n) for n in ("num_frames", "height", "width"))
        if any(not isinstance(n, int) for n in grid) or sample.ndim != 3:
            raise ValueError(
                "LTX-Video calls must give num_frames, height and width as ints with packed "
                f"hidden_states (B, N, C), got {grid} and shape {tuple(sample.shape)}"
            )
        return grid  # type: ignore[return-value]

    def to_grid(self, sample: torch.Tensor, call: Call) -> torch.Tensor:
        """Tokens to the latent grid ``(B, C, F, H, W)``."""
        pt, p, _ = self.patch(call.module)
        f, h, w = (n // q for n, q in zip(call.grid, (pt, p, p), strict=True))
        return rearrange(
            sample,
            "b (f h w) (c pt ph pw) -> b c (f pt) (h ph) (w pw)",
            f=f, h=h, w=w, pt=pt, ph=p, pw=p,
        )  # fmt: skip

    def from_grid(self, grid: torch.Tensor, call: Call) -> torch.Tensor:
        """The latent grid back to tokens."""
        pt, p, _ = self.patch(call.module)
        return rearrange(
            grid, "b c (f pt) (h ph) (w pw) -> b (f h w) (c pt ph pw)", pt=pt, ph=p, pw=p
        )

    def low_inputs(self, low: dict, call: Call, factors: tuple[int, ...], micro: str) -> None:
        """The low grid's num_frames, height and width."""
        for name, n in zip(("num_frames", "height", "width"), call.low_grid, strict=True):
            low[name] = n

    def request_latents(self, pipe: Any, sizes: dict) -> dict[str, tuple[int, Any]]:
        """LTX's compression ratios: latent frames ``(F − 1)/r_t + 1``."""
        spatial = getattr(pipe, "vae_spatial_compression_ratio", None)
        temporal = getattr(pipe, "vae_temporal_compression_ratio", None)
        return _latents(sizes, spatial, temporal)


#: The families of this module, in the order they are listed.
FAMILIES: tuple[Family, ...] = (
    SanaVideo(),
    Mochi(),
    Wan(),
    HunyuanVideo(),
    CogVideoX(),
    LTXVideo(),
)
