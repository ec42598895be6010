"""The translator every family of diffusers denoisers is written as, and what they share.

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
from typing import Any

import torch
from einops import rearrange

from ....factors import check_divisible
from ....operators import downsample
from ....schedules import DiscreteSchedule, FlowSchedule, Schedule

#: UNet arguments holding ControlNet / T2I-Adapter residuals (grids, pooled for the low call).
UNET_RESIDUALS = (
    "down_block_additional_residuals",
    "mid_block_additional_residual",
    "down_intrablock_additional_residuals",
)


class Call:
    """One denoiser call as the translators see it: its arguments by name and its grid.

    ``arguments`` maps every argument the call received to its value. ``grid`` is the sample's grid
    size (``(H, W)`` or ``(F, H, W)``, host ints) and ``low_grid`` that of the low-resolution
    call, ``batch`` its batch size, and ``request`` the pipeline's requested
    ``height``/``width``/``num_frames`` in pixels when known.
    """

    __slots__ = ("arguments", "grid", "low_grid", "batch", "request", "pipe", "module")

    def __init__(self, arguments: dict, pipe: Any, module: torch.nn.Module, request: dict) -> None:
        self.arguments = arguments
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
            f"got {tuple(r.shape) if isinstance(r, torch.Tensor) else type(r).__name__}"
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
        """The patch size per grid axis: grid sizes must be multiples of factor × patch.

        ``patch_size`` as given per axis, or one int for height and width; on a video's frame
        axis ``patch_size_t``, or 1 (each frame patched on its own).
        """
        p = getattr(module.config, "patch_size", 1) or 1
        if not isinstance(p, int):
            return tuple(p)
        frames = getattr(module.config, "patch_size_t", None) or 1
        return (frames, p, p) if self.video else (p, p)

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

    def grid_time(self, t: Any, call: Call) -> Any:
        """The call's time as the core takes it: ``t`` (the model's, or its value on the host).

        A family whose model takes a time per token or per frame returns it as a time map
        ``(B, 1, *grid)`` (axes of size 1 broadcast); :meth:`low_inputs` turns the low call's
        map back into the model's layout.
        """
        return t

    def to_grid(self, sample: torch.Tensor, call: Call) -> torch.Tensor:
        """The sample (or a prediction) as a grid ``(B, C, *grid)``."""
        return sample

    def from_grid(self, grid: torch.Tensor, call: Call) -> torch.Tensor:
        """A grid back in the call's own layout."""
        return grid

    def low_inputs(self, low: dict, call: Call, factors: tuple[int, ...], micro: str) -> None:
        """Adapt the low call's other inputs in place (``low`` is a copy of ``call.arguments``)."""
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
