"""UNets: SD 1.x/2.x, SDXL, ControlNet, inpainting, DeepFloyd IF, AnimateDiff, ..."""

from __future__ import annotations

from typing import Any

import torch

from ....operators import downsample
from .base import UNET_RESIDUALS, Call, Family, _latents, pool_each, pool_grid


def _frame_mean(e: torch.Tensor, batch: int, frames: int, ft: int) -> torch.Tensor:
    """Per-frame rows (``B·F``, ...) averaged over each group of ``ft`` frames (``B·F/ft`` rows)."""
    if e.shape[0] == batch:
        return e
    if e.shape[0] != batch * frames:
        raise ValueError(
            f"encoder_hidden_states has {e.shape[0]} rows; a video UNet with batch {batch} and "
            f"{frames} frames takes {batch} (one per video) or {batch * frames} (one per frame)"
        )
    per_frame = e.reshape(batch, frames, *e.shape[1:]).movedim(1, -1)
    low = downsample(per_frame, (ft,)).movedim(-1, 1)
    return low.reshape(batch * low.shape[1], *low.shape[2:])


def _pool_frames(r: torch.Tensor, name: str, batch: int, frames: int, factors: tuple) -> Any:
    """D on a per-frame residual (``B·F``, C, h, w) over frames and space."""
    if not isinstance(r, torch.Tensor) or r.ndim < 3:
        raise TypeError(f"{name} must hold tensors (N, C, H, W), got {type(r).__name__}")
    if factors[0] == 1:
        return pool_grid(r, name, factors[1:])
    if r.shape[0] != batch * frames:
        raise ValueError(
            f"{name} has {r.shape[0]} rows, expected batch x frames = {batch} x {frames} for "
            "a video UNet"
        )
    video = r.reshape(batch, frames, *r.shape[1:]).transpose(1, 2)
    low = pool_grid(video, name, factors).transpose(1, 2)
    return low.reshape(batch * low.shape[1], *low.shape[2:])


def _low_time_ids(time_ids: torch.Tensor, fh: Any, fw: Any) -> torch.Tensor:
    """SDXL time ids with their pixel sizes divided by the spatial factors.

    SDXL: ``(orig_h, orig_w, crop_top, crop_left, target_h, target_w)``; the refiner's
    ``(orig_h, orig_w, crop_top, crop_left, aesthetic_score)`` keeps its score.
    """
    layout_ok = isinstance(time_ids, torch.Tensor) and time_ids.ndim == 2
    if not layout_ok or time_ids.shape[1] not in (5, 6):
        raise ValueError(
            "added_cond_kwargs['time_ids'] must be a (batch, 6) tensor (SDXL) or (batch, 5) "
            f"(SDXL refiner) to describe the low-resolution image, got "
            f"{getattr(time_ids, 'shape', type(time_ids))}; pass micro_conditioning='high' "
            "to keep them unchanged"
        )
    sizes = 4 if time_ids.shape[1] == 5 else 6
    divisor = torch.tensor([float(fh), float(fw)] * 3, dtype=torch.float32)[:sizes]
    divisor = divisor.to(time_ids.device)
    low = time_ids.clone()
    low[:, :sizes] = (time_ids[:, :sizes].float() / divisor).to(time_ids.dtype)
    return low


class UNet(Family):
    """diffusers UNets on images ``(B, C, H, W)``: SD 1.x/2.x, SDXL, ControlNet, DDPM/IF, ..."""

    name = "UNet"
    classes = ("UNet2DConditionModel", "UNet2DModel")
    sample_arg = "sample"
    predictions = ("epsilon", "sample", "v_prediction")
    consumed_lists = UNET_RESIDUALS

    def patch(self, module: torch.nn.Module) -> tuple[int, ...]:
        """A UNet has no patches."""
        return (1, 1, 1) if self.video else (1, 1)

    def low_inputs(self, low: dict, call: Call, factors: tuple[int, ...], micro: str) -> None:
        """Residuals and hint images pooled; frame embeddings averaged; SDXL size ids divided."""
        frames = call.grid[0] if self.video else None
        for name in UNET_RESIDUALS:
            if self.video:
                low[name] = pool_each(
                    low.get(name),
                    lambda r, n=name: _pool_frames(r, n, call.batch, frames, factors),
                )
            else:
                low[name] = pool_each(low.get(name), lambda r, n=name: pool_grid(r, n, factors))
            if low[name] is None:
                del low[name]
        ehs = low.get("encoder_hidden_states")
        if self.video and factors[0] > 1 and isinstance(ehs, torch.Tensor):
            low["encoder_hidden_states"] = _frame_mean(ehs, call.batch, frames, factors[0])
        added = low.get("added_cond_kwargs")
        if micro == "low" and isinstance(added, dict) and "time_ids" in added:
            added = {**added, "time_ids": _low_time_ids(added["time_ids"], *factors[-2:])}
        hint = added.get("hint") if isinstance(added, dict) and not self.video else None
        if hint is not None:  # Kandinsky 2.2 ControlNet: pixels the UNet embeds onto the grid
            added = {**added, "hint": pool_grid(hint, "added_cond_kwargs['hint']", factors)}
        if isinstance(added, dict):
            low["added_cond_kwargs"] = added

    def request_latents(self, pipe: Any, sizes: dict) -> dict[str, tuple[int, Any]]:
        """Latent height/width = pixels / vae_scale_factor; AnimateDiff frames are frames."""
        scale = getattr(pipe, "vae_scale_factor", None)
        return _latents(sizes, scale, None, frames_as_is=self.video)


class VideoUNet(UNet):
    """diffusers video UNets ``(B, C, F, H, W)``: AnimateDiff's UNetMotionModel, ..."""

    name = "video UNet"
    classes = ("UNetMotionModel", "UNet3DConditionModel", "I2VGenXLUNet")
    video = True


#: The families of this module, in the order they are listed.
FAMILIES: tuple[Family, ...] = (UNet(), VideoUNet())
