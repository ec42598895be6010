"""Upsample guidance for k-diffusion-style denoisers, in sigma space (docs/maths.md §6).

A denoiser is any ``inner(x, sigma, **extra_args) -> denoised`` (the x0 estimate of
``x = x0 + σ·noise``). :class:`UpsampleGuidedDenoiser` wraps one and is one, so every
``k_diffusion.sampling.sample_*`` takes it. Per call, with ``k = prod(factors)``::

    denoised' = denoised + w·U[inner(D[x], σ/√k) − D[denoised]]

Importing this module does not import k-diffusion. Design notes: ``docs/design.md``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..config import UpsampleGuidanceConfig, resolve_config
from ..guidance import LowResInputs, UpsampleGuidance
from ..scales import ScaleLike
from ..schedules import SigmaSchedule, discrete_time_fraction

__all__ = [
    "UpsampleGuidedDenoiser",
    "CFGDenoiser",
    "find_discrete_schedule",
    "discrete_time_fraction",
    "EDM_SIGMA_MIN",
    "EDM_SIGMA_MAX",
    "DEFAULT_TIME_MATCHING",
    "FORWARDED_ATTRIBUTES",
]

#: The default sigma range of a continuous (non-discrete) denoiser: EDM's (Karras et al. 2022).
EDM_SIGMA_MIN = 0.002
#: See :data:`EDM_SIGMA_MIN`.
EDM_SIGMA_MAX = 80.0

#: In sigma space ``"exact"`` and ``"nearest"`` agree: the low-resolution call gets ``σ/√k``. A
#: wrapped discrete model then maps that sigma to its own timestep with its ``sigma_to_t``:
#: fractional (log-sigma interpolation, the core's ``"exact"`` VP matching), or the nearest
#: timestep (the paper's appendix A) if the model was built with ``quantize=True``.
DEFAULT_TIME_MATCHING = "exact"

#: Attributes that :class:`UpsampleGuidedDenoiser` and :class:`CFGDenoiser` read through from the
#: wrapped model's discrete schedule (or the wrapped model), so that code written for a
#: k-diffusion ``DiscreteSchedule`` (``guided.get_sigmas(30)``, ``guided.sigma_max``) keeps working.
FORWARDED_ATTRIBUTES = (
    "sigmas",
    "log_sigmas",
    "sigma_min",
    "sigma_max",
    "sigma_data",
    "quantize",
    "get_sigmas",
    "sigma_to_t",
    "t_to_sigma",
)

Denoiser = Callable[..., torch.Tensor]


def find_discrete_schedule(model: object) -> Any | None:
    """Return the discrete noise schedule of a (possibly wrapped) k-diffusion model, or None.

    That is the first of ``model``, ``model.inner_model``, ``model.inner_model.inner_model``, ...
    that has a callable ``sigma_to_t`` and a tensor ``sigmas`` (k-diffusion's
    ``external.DiscreteSchedule`` and its subclasses, seen through CFG wrappers).
    """
    seen: set[int] = set()
    while model is not None and id(model) not in seen:
        seen.add(id(model))
        if callable(getattr(model, "sigma_to_t", None)) and isinstance(
            getattr(model, "sigmas", None), torch.Tensor
        ):
            return model
        model = getattr(model, "inner_model", None)
    return None


def _check_sigma_bound(value: object, name: str) -> float | None:
    """``value`` as a float (None stays None), or a TypeError naming ``name``."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a positive real number (a sigma) or None, got {value!r} "
            f"({type(value).__name__})"
        )
    return float(value)


def _sigma_schedule(
    inner: object,
    sigma_min: float | None,
    sigma_max: float | None,
    fraction: Callable[[torch.Tensor], torch.Tensor] | None,
) -> SigmaSchedule:
    """Build ``inner``'s sigma schedule: its discrete schedule's range and time axis, else EDM's."""
    lo = _check_sigma_bound(sigma_min, "sigma_min")
    hi = _check_sigma_bound(sigma_max, "sigma_max")
    discrete = find_discrete_schedule(inner)
    if discrete is not None:
        sigmas = discrete.sigmas.detach()
        lo = float(sigmas.min()) if lo is None else lo
        hi = float(sigmas.max()) if hi is None else hi
        fraction = discrete_time_fraction(discrete) if fraction is None else fraction
    lo = EDM_SIGMA_MIN if lo is None else lo
    hi = EDM_SIGMA_MAX if hi is None else hi
    return SigmaSchedule(lo, hi, fraction=fraction)


def _forwarded(module: nn.Module, name: str) -> Any:
    """``name`` read from the wrapped model's discrete schedule, else from the wrapped model."""
    inner = module.__dict__.get("_modules", {}).get("inner_model")
    if inner is None:
        inner = module.__dict__.get("inner_model")
    source = find_discrete_schedule(inner)
    for obj in (source, inner):
        if obj is not None and hasattr(obj, name):
            return getattr(obj, name)
    raise AttributeError(f"{type(module).__name__!r} object has no attribute {name!r}")


def _forwarding_getattr(self: nn.Module, name: str) -> Any:
    """nn.Module's attributes, then :data:`FORWARDED_ATTRIBUTES` of the wrapped model."""
    try:
        return nn.Module.__getattr__(self, name)
    except AttributeError:
        if name not in FORWARDED_ATTRIBUTES:
            raise
    return _forwarded(self, name)


class UpsampleGuidedDenoiser(nn.Module):
    """A k-diffusion denoiser with upsample guidance: ``guided(x, sigma, **extra_args)``.

    - ``inner``: the denoiser trained at the low resolution, ``inner(x, σ, **extra_args) -> x0``.
    - The options: an :class:`~ug_core.UpsampleGuidanceConfig` (``config=``), or its fields as
      keywords: ``factors`` (default ``(2, 2)``: ``k = 4``; one number means both spatial axes;
      ratios such as 1.5 or '3/2' too), ``scale``
      (θ, or a callable of the time fraction, 1 = noisiest), ``eta`` (η: on while the time
      fraction is ``>= 1 − η``), ``below_range`` (where ``σ/√k < sigma_min``: ``"clamp"`` calls
      at ``sigma_min``, ``"skip"``, ``"error"``), ``time_matching`` (``"exact"`` by default here;
      ``"nearest"`` is the same in sigma space, ``"off"`` an ablation) and ``device_time``
      (``"read"`` by default here: one copy of a GPU sigma to the host per call, so steps
      outside the η window make no low call; k-diffusion's samplers read sigmas on the host
      every step anyway; ``"compute"`` copies nothing and calls at every step).
    - The time fraction of σ is ``sigma_to_t(σ)/(N − 1)`` for a discrete model (found on
      ``inner`` or down its ``inner_model`` chain), else the position of ``log σ`` in
      ``[log sigma_min, log sigma_max]`` (default EDM's 0.002 to 80); ``fraction`` replaces
      either mapping.
    - ``low_res_inputs(args, kwargs, factors) -> (args, kwargs)``: adapts resolution-dependent
      extra_args for the low-resolution call.

    Attributes: ``inner_model``, ``guidance`` (the core :class:`~ug_core.UpsampleGuidance`), and
    :data:`FORWARDED_ATTRIBUTES` read through from the wrapped model's discrete schedule.
    """

    def __init__(
        self,
        inner: Denoiser,
        factors: Any = None,
        scale: ScaleLike | None = None,
        *,
        config: UpsampleGuidanceConfig | None = None,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        fraction: Callable[[torch.Tensor], torch.Tensor] | None = None,
        low_res_inputs: LowResInputs | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        if not callable(inner):
            raise TypeError(
                "inner must be a callable denoiser inner(x, sigma, **extra_args) -> denoised, "
                f"got {type(inner).__name__}"
            )
        if low_res_inputs is not None and not callable(low_res_inputs):
            raise TypeError(
                "low_res_inputs must be None or a callable (args, kwargs, factors) -> "
                f"(args, kwargs), got {type(low_res_inputs).__name__}"
            )
        if config is None:  # this adapter's defaults for the short form
            options.setdefault("time_matching", DEFAULT_TIME_MATCHING)
            options.setdefault("device_time", "read")
        config = resolve_config(config, factors=factors, scale=scale, **options)
        schedule = _sigma_schedule(inner, sigma_min, sigma_max, fraction)
        self.inner_model = inner
        self.low_res_inputs = low_res_inputs
        self.guidance = UpsampleGuidance(schedule, prediction="sample", config=config)

    __getattr__ = _forwarding_getattr

    def extra_repr(self) -> str:
        """Describe the guidance's settings, for ``repr``."""
        return repr(self.guidance)

    def weight(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """Return w at sigma(s): θ (or ``scale(fraction)``) gated by η, float64 on the CPU."""
        return self.guidance.weight(sigma)

    def forward(
        self, x: torch.Tensor, sigma: torch.Tensor | float, **extra_args: Any
    ) -> torch.Tensor:
        """Return the guided x0 estimate of ``x`` at noise level ``sigma`` (one or per element).

        A plain number ``sigma`` is passed on as a tensor of one sigma per batch element, as the
        k-diffusion samplers pass it (``sigma * s_in``).
        """
        host_time = None
        if isinstance(sigma, numbers.Real) and not isinstance(sigma, bool):
            host_time = float(sigma)
            sigma = torch.full((x.shape[0],), host_time, dtype=x.dtype, device=x.device)
        return self.guidance(
            self.inner_model,
            x,
            sigma,
            low_res_inputs=self.low_res_inputs,
            host_time=host_time,
            **extra_args,
        )


def _cat_halves(uncond: Any, cond: Any) -> Any:
    """``uncond`` and ``cond`` concatenated on the batch axis (tensors, or dicts/lists of them)."""
    if isinstance(uncond, torch.Tensor) and isinstance(cond, torch.Tensor):
        if uncond.shape[1:] != cond.shape[1:]:
            raise ValueError(
                f"uncond and cond must match beyond the batch axis, got shapes "
                f"{tuple(uncond.shape)} and {tuple(cond.shape)}"
            )
        return torch.cat([uncond, cond])
    if isinstance(uncond, dict) and isinstance(cond, dict) and uncond.keys() == cond.keys():
        return {key: _cat_halves(uncond[key], cond[key]) for key in cond}
    if (
        isinstance(uncond, (list, tuple))
        and type(uncond) is type(cond)
        and len(uncond) == len(cond)
    ):
        return type(cond)(_cat_halves(u, c) for u, c in zip(uncond, cond, strict=True))
    raise TypeError(
        "uncond and cond must be tensors, or dicts/lists of tensors with the same structure, "
        f"got {type(uncond).__name__} and {type(cond).__name__}"
    )


class CFGDenoiser(nn.Module):
    """Classifier-free guidance for a k-diffusion denoiser, both halves in one call.

    ``cfg(x, σ, uncond=..., cond=..., cond_scale=...)`` calls
    ``inner(cat[x, x], cat[σ, σ], cond=cat[uncond, cond], **extra_args)`` once and returns
    ``u + (c − u)·cond_scale``; ``uncond``/``cond`` are tensors or dicts/lists of tensors. It
    composes with :class:`UpsampleGuidedDenoiser` in either order, with the same result and one
    low-resolution call per denoiser call (docs/maths.md §10).
    """

    def __init__(self, inner: Denoiser) -> None:
        super().__init__()
        if not callable(inner):
            raise TypeError(
                "inner must be a callable denoiser inner(x, sigma, cond=..., **extra_args), got "
                f"{type(inner).__name__}"
            )
        self.inner_model = inner

    __getattr__ = _forwarding_getattr

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor | float,
        uncond: Any,
        cond: Any,
        cond_scale: float | torch.Tensor,
        **extra_args: Any,
    ) -> torch.Tensor:
        """Return the CFG x0 estimate ``u + (c − u)·cond_scale`` at noise level ``sigma``."""
        batch = x.shape[0]
        sigma = torch.as_tensor(sigma, device=x.device)
        if sigma.ndim > 1 or sigma.numel() not in (1, batch):
            raise ValueError(
                f"sigma must be a number or hold 1 or {batch} values, got shape "
                f"{tuple(sigma.shape)}"
            )
        sigma_in = torch.cat([sigma.reshape(-1).expand(batch)] * 2)
        x_in = torch.cat([x, x])
        out = self.inner_model(x_in, sigma_in, cond=_cat_halves(uncond, cond), **extra_args)
        u, c = out.chunk(2)
        return u + (c - u) * cond_scale
