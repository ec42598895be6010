"""One small translator per family of diffusers denoisers: where its call keeps what UG needs.

A translator says, for one family, and nothing else:

- which argument holds the sample and which the time, and the time's unit;
- the sample's layout, as a grid ``(B, C, H, W)`` or ``(B, C, F, H, W)`` (packed tokens and
  frames-first video are unpacked to it, and packed back), and its patch size;
- what the low-resolution call's other inputs become (position ids, rotary embeddings, the size
  micro-conditioning, ControlNet residuals).

The guidance itself (time and power matching, Eq. 10) is the core's; the hook plumbing that calls
these translators is in :mod:`ug_core.adapters.diffusers.hooks`. Nothing here imports diffusers at
import time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import torch
from einops import rearrange

from ...config import MICRO_CONDITIONING
from ...factors import check_divisible, low_sizes
from ...operators import downsample
from ...schedules import DiscreteSchedule, FlowSchedule, Schedule

__all__ = ["Family", "FAMILIES", "family_of", "supported_classes", "MICRO_CONDITIONING"]


#: UNet arguments holding ControlNet / T2I-Adapter residuals (grids, pooled for the low call).
UNET_RESIDUALS = (
    "down_block_additional_residuals",
    "mid_block_additional_residual",
    "down_intrablock_additional_residuals",
)


class Call:
    """One denoiser call as the translators see it: its arguments by name and its grid.

    ``named`` maps every argument the call received to its value. ``grid`` is the sample's grid
    size (``(H, W)`` or ``(F, H, W)``, host ints) and ``low_grid`` that of the low-resolution
    call, ``batch`` its batch size, and ``request`` the pipeline's requested
    ``height``/``width``/``num_frames`` in pixels when known.
    """

    __slots__ = ("named", "grid", "low_grid", "batch", "request", "pipe", "module")

    def __init__(self, named: dict, pipe: Any, module: torch.nn.Module, request: dict) -> None:
        self.named = named
        self.pipe = pipe
        self.module = module
        self.request = request
        self.grid: tuple[int, ...] = ()
        self.low_grid: tuple[int, ...] = ()
        self.batch = 0


def pool_grid(r: torch.Tensor, name: str, factors: tuple[int, ...]) -> torch.Tensor:
    """D on a grid-shaped residual ``(N, C, *axes)`` by the trailing factors."""
    if not isinstance(r, torch.Tensor) or r.ndim < len(factors) + 1:
        raise TypeError(f"{name} must hold tensors (N, C, H, W), got {type(r).__name__}")
    check_divisible(r.shape, factors, name)
    return downsample(r, factors)


def pool_tokens(
    r: torch.Tensor, name: str, grid: tuple[int, ...], factors: tuple[int, ...]
) -> torch.Tensor:
    """D on tokens ``(B, N, D)`` laid out row-major on a patch ``grid``: ``(B, N/k, D)``."""
    if not isinstance(r, torch.Tensor) or r.ndim != 3 or r.shape[1] != math.prod(grid):
        raise ValueError(
            f"{name} must hold tokens (batch, {math.prod(grid)}, dim) on the {grid} patch grid, "
            f"got {getattr(r, 'shape', type(r).__name__)}"
        )
    axes = " ".join(f"a{i}" for i in range(len(grid)))
    sizes = {f"a{i}": n for i, n in enumerate(grid)}
    as_grid = rearrange(r, f"b ({axes}) d -> b d {axes}", **sizes)
    low = pool_grid(as_grid, name, factors)
    return rearrange(low, f"b d {axes} -> b ({axes}) d")


def pool_each(value: Any, pool: Any) -> Any:
    """``pool`` applied to a tensor, or to each tensor of a list/tuple (None passes)."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return pool(value)
    if isinstance(value, (list, tuple)):
        return type(value)(pool(r) for r in value)
    raise TypeError(f"expected a tensor or a list of tensors, got {type(value).__name__}")


def flow_or_vp(scheduler: Any, time_unit: float) -> tuple[Schedule, str]:
    """The schedule a diffusers scheduler feeds the model, and the model's prediction type.

    Flow-matching schedulers (``FlowMatch*``, or ``use_flow_sigmas`` / ``flow_prediction``)
    pass ``σ·num_train_timesteps``; the model gets that times ``time_unit``. Others are discrete
    VP schedules over ``alphas_cumprod``, in timestep indices.
    """
    name = type(scheduler).__name__
    config = getattr(scheduler, "config", None)
    if config is None:
        raise TypeError(f"the scheduler {name} has no config: pass a diffusers scheduler")
    prediction = getattr(config, "prediction_type", None)
    flow = (
        name.startswith("FlowMatch")
        or bool(getattr(config, "use_flow_sigmas", False))
        or prediction == "flow_prediction"
    )
    if flow:
        steps = float(getattr(config, "num_train_timesteps", 1000))
        return FlowSchedule(time_scale=steps * time_unit), "flow"
    alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
    if alphas_cumprod is None:
        raise TypeError(
            f"the scheduler {name} has no alphas_cumprod and is not a flow-matching scheduler: "
            "supported are the discrete variance-preserving schedulers (DDIM, DDPM, PNDM, Euler, "
            "Heun, LMS, DPM-Solver, UniPC, LCM, ...) and the flow-matching ones"
        )
    if getattr(config, "timestep_type", "discrete") != "discrete":
        raise ValueError(
            f"the scheduler {name} has timestep_type={config.timestep_type!r}: its timesteps "
            "are not timestep indices; only timestep_type='discrete' is supported"
        )
    if time_unit != 1.0:
        raise ValueError(f"the scheduler {name} is not a flow-matching scheduler")
    return DiscreteSchedule(alphas_cumprod), prediction or "epsilon"


class Family:
    """The conventions of one family of denoisers (the defaults are a grid transformer's).

    Subclasses override what differs. ``classes`` are the denoiser class names (a subclass of one
    counts), ``sample_arg`` and ``time_arg`` the argument names of the sample and the time,
    ``video`` whether the grid has a frame axis, ``predictions`` the parameterisations the family
    may have (anything else is a wrong scheduler).
    """

    name = "grid transformer"
    classes: tuple[str, ...] = ()
    sample_arg = "hidden_states"
    time_arg = "timestep"
    video = False
    predictions: tuple[str, ...] = ("flow",)
    token_residuals: tuple[str, ...] = ()
    """Arguments holding ControlNet residual tokens on the patch grid (pooled for the low call)."""
    consumed_lists: tuple[str, ...] = ()
    """List arguments the denoiser consumes as it runs (copied before the high call)."""

    output_sign = 1.0
    """-1 for a family whose output is the negated prediction (Lumina 2 predicts x0 − ε)."""

    def sign(self, scheduler: Any) -> float:
        """The output's sign with this scheduler (:attr:`output_sign` unless it depends on it)."""
        return self.output_sign

    def time_unit(self, module: torch.nn.Module) -> float:
        """The model's time per scheduler timestep (1: the model gets the scheduler's times)."""
        return 1.0

    def model_time(self, scheduler_time: float, module: torch.nn.Module) -> float:
        """The time the model receives for a scheduler timestep (host floats)."""
        return scheduler_time * self.time_unit(module)

    def patch(self, module: torch.nn.Module) -> tuple[int, ...]:
        """The patch size per grid axis: grid sizes must be multiples of factor × patch."""
        p = getattr(module.config, "patch_size", 1) or 1
        return (p, p) if isinstance(p, int) else tuple(p)

    def out_channels(self, module: torch.nn.Module, channels: int) -> int:
        """The output's grid channels for an input grid of ``channels`` (config in/out ratio).

        More output than input channels is a learned variance; fewer means the input carries
        clean conditioning channels after the noisy sample.
        """
        config = getattr(module, "config", None)
        c_in = getattr(config, "in_channels", None)
        c_out = getattr(config, "out_channels", None) or c_in
        if isinstance(c_in, int) and isinstance(c_out, int) and (channels * c_out) % c_in == 0:
            return channels * c_out // c_in
        return channels

    def schedule(self, scheduler: Any, module: torch.nn.Module) -> tuple[Schedule, str]:
        """The schedule and prediction type the scheduler gives this family's model."""
        schedule, prediction = flow_or_vp(scheduler, self.time_unit(module))
        if prediction not in self.predictions:
            raise ValueError(
                f"{type(module).__name__} ({self.name}) predicts {' or '.join(self.predictions)}, "
                f"but the scheduler {type(scheduler).__name__} is set up for {prediction!r}"
            )
        return schedule, prediction

    def grid_of(self, sample: torch.Tensor, call: Call) -> tuple[int, ...]:
        """The grid size of a sample, from its shape or the call (host ints)."""
        axes = 3 if self.video else 2
        if sample.ndim != axes + 2:
            kind = "(B, C, F, H, W)" if self.video else "(B, C, H, W)"
            raise ValueError(
                f"{type(call.module).__name__} got a sample of shape {tuple(sample.shape)}; "
                f"the {self.name} family takes {kind}"
            )
        return tuple(sample.shape[-axes:])

    def to_grid(self, sample: torch.Tensor, call: Call) -> torch.Tensor:
        """The sample (or a prediction) as a grid ``(B, C, *grid)``."""
        return sample

    def from_grid(self, grid: torch.Tensor, call: Call) -> torch.Tensor:
        """A grid back in the call's own layout."""
        return grid

    def low_inputs(self, low: dict, call: Call, factors: tuple[int, ...], micro: str) -> None:
        """Adapt the low call's other inputs in place (``low`` is a copy of ``call.named``)."""
        patch = self.patch(call.module)
        patch_grid = tuple(n // p for n, p in zip(call.grid, patch, strict=True))
        for name in self.token_residuals:
            low[name] = pool_each(
                low.get(name), lambda r, n=name: pool_tokens(r, n, patch_grid, factors)
            )

    latent_multiple = 1
    """The pipeline rounds latent sizes down to multiples of this (Flux-style packing: 2)."""

    def request_latents(self, pipe: Any, sizes: dict) -> dict[str, tuple[int, Any]]:
        """The latent grid a pipeline call will sample for a pixel request, axis by axis.

        Each axis maps to ``(latent size, latent size → pixels)``: the size as the pipeline
        rounds it, and the pixel (or frame) count that samples a given latent size.
        """
        spatial = _first_attr(
            pipe, ("vae_scale_factor_spatial", "vae_spatial_scale_factor", "vae_scale_factor")
        )
        temporal = _first_attr(pipe, ("vae_scale_factor_temporal", "vae_temporal_scale_factor"))
        return _latents(sizes, spatial, temporal if self.video else None, self.latent_multiple)


def _latents(
    sizes: dict, spatial: Any, temporal: Any, multiple: int = 1, frames_as_is: bool = False
) -> dict[str, tuple[int, Any]]:
    """Latent sizes of a pixel request: ``m·(pixels // (m·spatial))``, ``(F − 1)//t + 1``."""
    out: dict[str, tuple[int, Any]] = {}
    for axis in ("height", "width"):
        if sizes.get(axis) is not None and spatial:
            s, m = int(spatial), multiple
            out[axis] = (m * (int(sizes[axis]) // (m * s)), lambda n, s=s: n * s)
    frames = sizes.get("num_frames")
    if frames is not None and frames_as_is:
        out["frames"] = (int(frames), lambda n: n)
    elif frames is not None and temporal:
        t = int(temporal)
        out["frames"] = ((int(frames) - 1) // t + 1, lambda n, t=t: (n - 1) * t + 1)
    return out


def _first_attr(obj: Any, names: Sequence[str]) -> Any:
    """The first of ``obj``'s attributes ``names`` that is set, or None."""
    for name in names:
        value = getattr(obj, name, None)
        if value:
            return value
    return None


# ------------------------------------------------------------------------------------ UNets
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
        """ControlNet residuals pooled; per-frame embeddings averaged; SDXL size ids divided."""
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
            low["added_cond_kwargs"] = {
                **added,
                "time_ids": _low_time_ids(added["time_ids"], *factors[-2:]),
            }

    def request_latents(self, pipe: Any, sizes: dict) -> dict[str, tuple[int, Any]]:
        """Latent height/width = pixels / vae_scale_factor; AnimateDiff frames are frames."""
        scale = getattr(pipe, "vae_scale_factor", None)
        return _latents(sizes, scale, None, frames_as_is=self.video)


class VideoUNet(UNet):
    """diffusers video UNets ``(B, C, F, H, W)``: AnimateDiff's UNetMotionModel, ..."""

    name = "video UNet"
    classes = ("UNetMotionModel", "UNet3DConditionModel", "I2VGenXLUNet")
    video = True


# ------------------------------------------------------------------------- flow transformers
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


class SanaVideo(Family):
    """Sana-Video (``SanaVideoTransformer3DModel``): ``(B, C, F, H, W)``, flow, ``1000·σ``."""

    name = "Sana-Video"
    classes = ("SanaVideoTransformer3DModel",)
    video = True
    token_residuals = ("controlnet_block_samples",)


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


#: Every supported family, in the order they are matched.
FAMILIES: tuple[Family, ...] = (
    UNet(),
    VideoUNet(),
    SD3(),
    AuraFlow(),
    Flux(),
    Flux2(),
    QwenImage(),
    PixArt(),
    DiT(),
    Sana(),
    SanaVideo(),
    Lumina2(),
    Mochi(),
    Wan(),
    HunyuanVideo(),
    CogVideoX(),
    LTXVideo(),
)


def supported_classes() -> dict[str, tuple[str, ...]]:
    """Family name → denoiser class names."""
    return {f.name: f.classes for f in FAMILIES}


def family_of(module: torch.nn.Module) -> Family:
    """The family of a denoiser, by its class (or a base class); a TypeError if unknown."""
    names = {cls.__name__ for cls in type(module).__mro__}
    for family in FAMILIES:
        if names & set(family.classes):
            return family
    listed = "; ".join(f"{f.name}: {', '.join(f.classes)}" for f in FAMILIES)
    raise TypeError(
        f"{type(module).__name__} is not a supported denoiser. Supported families: {listed}"
    )
