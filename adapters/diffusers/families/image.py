"""Image transformers: SD3, AuraFlow, Flux, Flux.2, Qwen-Image, PixArt, DiT, Sana, Lumina 2."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import torch
from einops import rearrange

from ....factors import low_sizes
from ....schedules import FlowSchedule, Schedule
from .base import Call, Family


class SD3(Family):
    """SD3 / SD3.5 (``SD3Transformer2DModel``): grid latents, patch 2, time ``1000·σ``."""

    name = "SD3"
    classes = ("SD3Transformer2DModel",)
    token_residuals = ("block_controlnet_hidden_states",)


class AuraFlow(Family):
    """AuraFlow (``AuraFlowTransformer2DModel``): grid latents, patch 2, flow, time ``σ``."""

    name = "AuraFlow"
    classes = ("AuraFlowTransformer2DModel",)

    def time_unit(self, module: torch.nn.Module) -> float:
        """The pipeline passes ``t / 1000``."""
        return 1.0 / 1000.0


class Flux(Family):
    """Flux.1 and Chroma: packed 2×2-patch tokens ``(B, N, 4C)``, ``img_ids``, time ``σ``.

    The pipeline passes ``t / 1000`` (the model scales it back); the distilled ``guidance`` input
    passes through. The low call gets ``img_ids`` of the low grid (the high ids, strided and
    divided: for 0-based ids exactly those native low-resolution sampling builds).
    """

    name = "Flux"
    classes = ("FluxTransformer2DModel", "ChromaTransformer2DModel")
    latent_multiple = 2
    token_residuals = ("controlnet_block_samples", "controlnet_single_block_samples")

    def time_unit(self, module: torch.nn.Module) -> float:
        """The pipeline divides the scheduler's ``1000·σ`` by 1000."""
        return 1.0 / 1000.0

    def patch(self, module: torch.nn.Module) -> tuple[int, ...]:
        """Packing makes 2×2 patches of the latent grid."""
        return (2, 2)

    def grid_of(self, sample: torch.Tensor, call: Call) -> tuple[int, ...]:
        """The latent grid ``(H, W)``: from the pipeline's request, else from ``img_ids``."""
        if sample.ndim != 3:
            raise ValueError(
                f"{type(call.module).__name__} got hidden_states of shape "
                f"{tuple(sample.shape)}; the Flux family takes packed tokens (B, N, 4C)"
            )
        tokens = sample.shape[1]
        scale = getattr(call.pipe, "vae_scale_factor", None)
        h, w = call.request.get("height"), call.request.get("width")
        if scale and h and w:
            hp, wp = int(h) // (int(scale) * 2), int(w) // (int(scale) * 2)
            if hp * wp == tokens:
                return (2 * hp, 2 * wp)
        return _grid_from_ids(call.named.get("img_ids"), tokens)

    def to_grid(self, sample: torch.Tensor, call: Call) -> torch.Tensor:
        """Unpack ``(B, N, 4C)`` tokens to the latent grid ``(B, C, H, W)``."""
        h, w = call.grid
        return rearrange(sample, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=h // 2, ph=2, pw=2)

    def from_grid(self, grid: torch.Tensor, call: Call) -> torch.Tensor:
        """Pack a latent grid into 2×2-patch tokens."""
        return rearrange(grid, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2)

    def low_inputs(self, low: dict, call: Call, factors: tuple[int, ...], micro: str) -> None:
        """``img_ids`` of the low grid; ControlNet tokens pooled; Chroma's mask shortened."""
        super().low_inputs(low, call, factors, micro)
        patch_grid = (call.grid[0] // 2, call.grid[1] // 2)
        ids = low.get("img_ids")
        if isinstance(ids, torch.Tensor):
            low["img_ids"] = _low_ids(ids, patch_grid, factors)
        mask = low.get("attention_mask")
        if isinstance(mask, torch.Tensor):
            low["attention_mask"] = _low_image_mask(mask, patch_grid, factors)


def _grid_from_ids(ids: Any, tokens: int) -> tuple[int, int]:
    """The latent grid from Flux-style ``img_ids`` (row, column in channels 1, 2): one read."""
    if not isinstance(ids, torch.Tensor):
        raise ValueError(
            "cannot tell the latent grid of packed tokens: pass img_ids, or call the pipeline "
            "(its requested height and width give the grid)"
        )
    ids = ids[0] if ids.ndim == 3 else ids
    hp, wp = (int(v) + 1 for v in ids[:tokens, 1:3].amax(dim=0).tolist())
    if hp * wp != tokens:
        raise ValueError(
            f"img_ids describe a {hp}x{wp} grid but hidden_states has {tokens} tokens: extra "
            "conditioning tokens (e.g. Kontext's image tokens) are not supported"
        )
    return (2 * hp, 2 * wp)


def _low_index(n_low: int, factor: Any, device: torch.device) -> torch.Tensor:
    """The high-resolution position of each low-resolution one: ``floor(i·f)`` (``::f``)."""
    f = Fraction(factor)
    return torch.arange(n_low, device=device) * f.numerator // f.denominator


def _low_ids(ids: torch.Tensor, patch_grid: tuple[int, int], factors: tuple[Any, ...]) -> Any:
    """Row-major position ids ``([B,] N, C)`` of a patch grid, at the low grid's positions.

    Rows and columns are channels 1 and 2 (Flux's (0, row, col), Flux 2's (t, row, col, l)).
    Integer factors: the ids strided and divided, for 0-based ids exactly those native
    low-resolution sampling builds; a ratio: the low grid's rows and columns counted from the
    first one's position divided by the factor.
    """
    hp, wp = patch_grid
    fh, fw = factors[-2:]
    (lh, lw) = low_sizes((hp, wp), (fh, fw))
    grid = ids.reshape(*ids.shape[:-2], hp, wp, ids.shape[-1])
    rows, cols = _low_index(lh, fh, ids.device), _low_index(lw, fw, ids.device)
    grid = grid.index_select(-3, rows).index_select(-2, cols).clone()
    for channel, f, n, axis in ((1, fh, lh, -3), (2, fw, lw, -2)):
        r = Fraction(f)
        scaled = torch.div(grid[..., channel] * r.denominator, r.numerator, rounding_mode="floor")
        if r.denominator == 1:
            grid[..., channel] = scaled
        else:
            start = scaled.narrow(axis + 1, 0, 1)  # the first row (column) of the low grid
            shape = (n, 1) if axis == -3 else (n,)
            step = torch.arange(n, device=ids.device, dtype=ids.dtype).reshape(shape)
            grid[..., channel] = start + step
    return grid.reshape(*ids.shape[:-2], -1, ids.shape[-1])


def _low_image_mask(mask: torch.Tensor, patch_grid: tuple[int, int], factors: tuple) -> Any:
    """An attention mask ``(B, text + image tokens)`` for the low grid (Chroma's layout).

    The image part is the mask at the first token of each block (Chroma's is all ones).
    """
    tokens = patch_grid[0] * patch_grid[1]
    if mask.ndim != 2 or mask.shape[1] <= tokens:
        raise ValueError(
            f"attention_mask of shape {tuple(mask.shape)} is not (batch, text + {tokens} image "
            "tokens); other masks are not supported"
        )
    text, image = mask[:, :-tokens], mask[:, -tokens:]
    (lh, lw) = low_sizes(patch_grid, factors[-2:])
    low = image.reshape(mask.shape[0], *patch_grid)
    rows, cols = _low_index(lh, factors[-2], mask.device), _low_index(lw, factors[-1], mask.device)
    low = low.index_select(1, rows).index_select(2, cols)
    return torch.cat([text, low.reshape(mask.shape[0], -1)], dim=1)


class Flux2(Flux):
    """Flux.2 (``Flux2Transformer2DModel``): as Flux, with ids ``(B, N, 4)`` = (t, row, col, l)."""

    name = "Flux.2"
    classes = ("Flux2Transformer2DModel",)
    token_residuals = ()

    def grid_of(self, sample: torch.Tensor, call: Call) -> tuple[int, ...]:
        """As Flux; reference-image tokens (``num_ref_tokens``) are refused."""
        if call.named.get("num_ref_tokens"):
            raise ValueError("Flux.2 calls with reference-image tokens are not supported")
        return super().grid_of(sample, call)


class QwenImage(Flux):
    """Qwen-Image (``QwenImageTransformer2DModel``): Flux's packing, the grid in ``img_shapes``.

    ``img_shapes`` (one list of ``(frames, rows, cols)`` per batch element, host ints) gives the
    grid; the low call gets those of the low grid. The pipeline passes ``t / 1000``.
    """

    name = "Qwen-Image"
    classes = ("QwenImageTransformer2DModel",)
    token_residuals = ("controlnet_block_samples",)

    def grid_of(self, sample: torch.Tensor, call: Call) -> tuple[int, ...]:
        """``2 × (rows, cols)`` of the one image in ``img_shapes``."""
        shapes = call.named.get("img_shapes")
        try:
            (frames, rows, cols), *more = {tuple(s) for per in shapes for s in per}
        except (TypeError, ValueError):
            raise ValueError(
                "Qwen-Image calls must give img_shapes with one (frames, rows, cols) per batch "
                f"element, all equal; got {shapes!r}"
            ) from None
        if more or frames != 1 or rows * cols != sample.shape[1]:
            raise ValueError(
                f"img_shapes {shapes!r} do not describe the {sample.shape[1]} tokens of one "
                "image; edit pipelines with several images are not supported"
            )
        return (2 * rows, 2 * cols)

    def out_channels(self, module: torch.nn.Module, channels: int) -> int:
        """Qwen-Image's ``out_channels`` counts latent channels, ``in_channels`` packed ones."""
        return channels

    def low_inputs(self, low: dict, call: Call, factors: tuple[int, ...], micro: str) -> None:
        """``img_shapes`` of the low grid; ControlNet tokens pooled."""
        Family.low_inputs(self, low, call, factors, micro)
        rows, cols = call.low_grid[0] // 2, call.low_grid[1] // 2
        low["img_shapes"] = [[(1, rows, cols)] for _ in low["img_shapes"]]


class PixArt(Family):
    """PixArt-α / Σ (``PixArtTransformer2DModel``): ε with learned variance, VP schedule.

    PixArt-α's resolution / aspect-ratio micro-conditioning describes the low-resolution image
    in the low call (``micro_conditioning="low"``, as for SDXL).
    """

    name = "PixArt"
    classes = ("PixArtTransformer2DModel",)
    predictions = ("epsilon", "v_prediction", "sample")

    def low_inputs(self, low: dict, call: Call, factors: tuple[int, ...], micro: str) -> None:
        """Resolution divided by the factors, aspect ratio of the low image."""
        added = low.get("added_cond_kwargs")
        if micro != "low" or not isinstance(added, dict):
            return
        fh, fw = factors[-2:]
        out = dict(added)
        resolution = added.get("resolution")
        if isinstance(resolution, torch.Tensor):
            divisor = torch.tensor([float(fh), float(fw)], dtype=torch.float32)
            divisor = divisor.to(resolution.device)
            out["resolution"] = (resolution.float() / divisor).to(resolution.dtype)
        ratio = added.get("aspect_ratio")
        if isinstance(ratio, torch.Tensor) and fh != fw:
            out["aspect_ratio"] = ratio * float(fw / fh)
        low["added_cond_kwargs"] = out


class DiT(Family):
    """DiT (``DiTTransformer2DModel``): class-conditional ε with learned variance, VP schedule.

    ``DiTPipeline`` samples at ``transformer.config.sample_size``: load the transformer with the
    larger ``sample_size`` (its sine-cosine positions follow the grid).
    """

    name = "DiT"
    classes = ("DiTTransformer2DModel",)
    predictions = ("epsilon", "v_prediction", "sample")


class Sana(Family):
    """Sana (``SanaTransformer2DModel``): grid latents, flow, time ``1000·σ·timestep_scale``."""

    name = "Sana"
    classes = ("SanaTransformer2DModel",)
    token_residuals = ("controlnet_block_samples",)

    def time_unit(self, module: torch.nn.Module) -> float:
        """The pipeline multiplies the scheduler's time by ``config.timestep_scale``."""
        return float(getattr(module.config, "timestep_scale", 1.0) or 1.0)


class Lumina2(Family):
    """Lumina 2 (``Lumina2Transformer2DModel``): time ``1 − σ`` (0 = noise), output ``x0 − ε``.

    The pipeline passes ``1 − t/1000`` and negates the output before the scheduler step.
    """

    name = "Lumina 2"
    classes = ("Lumina2Transformer2DModel",)
    latent_multiple = 2
    output_sign = -1.0

    def schedule(self, scheduler: Any, module: torch.nn.Module) -> tuple[Schedule, str]:
        """Rectified flow on the reversed time axis ``u = 1 − σ``."""
        _, prediction = super().schedule(scheduler, module)
        return FlowSchedule(time_scale=1.0, reverse=True), prediction

    def model_time(self, scheduler_time: float, module: torch.nn.Module) -> float:
        """``1 − t/1000``."""
        return 1.0 - scheduler_time / 1000.0


#: The families of this module, in the order they are listed.
FAMILIES: tuple[Family, ...] = (
    SD3(),
    AuraFlow(),
    Flux(),
    Flux2(),
    QwenImage(),
    PixArt(),
    DiT(),
    Sana(),
    Lumina2(),
)
