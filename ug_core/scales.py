"""The guidance scale w over time.

A scale is a constant, or a callable from the time fraction (a float in [0, 1], 1 at the noisiest
end of the schedule's time axis) to w. The paper's Eq. 11, ``w_t = θ·H(t − (1 − η)T)``, is a
constant θ gated by η: on during the noisiest η fraction of the *time axis*, which is not the same
as the first η of the sampler's steps for Karras-spaced or shifted schedules. The gate is applied
in one place, :func:`weights_at`; :func:`step_scale` only packs (θ, η) into one value.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch

__all__ = ["ScaleLike", "StepScale", "step_scale", "check_scale", "check_eta", "weights_at"]

ScaleLike = float | Callable[[float], float]


def check_eta(eta: object) -> float:
    """Return eta as a float if it lies in [0, 1], else raise naming it."""
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real):
        raise TypeError(f"eta must be a real number in [0, 1], got {type(eta).__name__}")
    if not (0.0 <= float(eta) <= 1.0):
        raise ValueError(f"eta must lie in [0, 1] (the fraction of the time axis), got {eta!r}")
    return float(eta)


def gate(fractions: torch.Tensor, eta: float) -> torch.Tensor:
    """H(t − (1 − η)T) on time fractions: on while ``fraction >= 1 − η``; never for η = 0."""
    if eta <= 0.0:
        return torch.zeros_like(fractions, dtype=torch.bool)
    return fractions >= 1.0 - eta - 1e-12


class StepScale:
    """The paper's Eq. 11 as one value: θ during the noisiest η of the time axis, 0 after.

    Calling it on a time fraction gives w; :class:`~ug_core.UpsampleGuidance` unpacks it into
    its constant scale θ and its gate η, so the gate is applied once.
    """

    def __init__(self, theta: float, eta: float = 1.0) -> None:
        if callable(theta):
            raise TypeError("step_scale's theta must be a real number, got a callable")
        self.theta = float(check_scale(theta))  # type: ignore[arg-type]
        self.eta = check_eta(eta)

    def __call__(self, fraction: float) -> float:
        """w = θ·H(fraction − (1 − η))."""
        on = self.eta > 0.0 and fraction >= 1.0 - self.eta - 1e-12
        return self.theta if on else 0.0

    def __repr__(self) -> str:
        return f"step_scale({self.theta}, eta={self.eta})"


def step_scale(theta: float, eta: float = 1.0) -> StepScale:
    """The paper's Eq. 11 as a scale: θ during the noisiest η of the time axis, 0 after."""
    return StepScale(theta, eta)


def check_scale(scale: object) -> ScaleLike:
    """Return ``scale`` if it is a finite real number or a callable, else raise naming it."""
    if callable(scale):
        return scale  # type: ignore[return-value]
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(
            f"scale must be a real number or a callable of the time fraction, got "
            f"{type(scale).__name__}"
        )
    if not math.isfinite(float(scale)):
        raise ValueError(f"scale must be finite, got {scale!r}")
    return float(scale)


def weights_at(scale: ScaleLike, eta: float, fractions: torch.Tensor) -> torch.Tensor:
    """w for each time fraction: ``scale(fraction)`` where the η gate is on, else 0.

    A constant scale is computed on the fractions' own device, reading nothing back. A callable
    scale is called once per distinct fraction with a Python float, so its fractions are read
    on the host (for device fractions, that is one device-to-host copy).
    """
    on = gate(fractions, eta)
    if not callable(scale):
        return torch.where(on, torch.full_like(fractions, float(scale)), 0.0)
    host = fractions.detach().to(device="cpu", dtype=torch.float64)
    host_on = on.to("cpu")
    out = torch.zeros_like(host)
    for f in host[host_on].unique().tolist():
        w = scale(f)
        if isinstance(w, torch.Tensor) and w.numel() == 1:
            w = w.item()
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w):
            raise ValueError(f"scale({f!r}) must return a finite real number, got {w!r}")
        out[host_on & (host == f)] = float(w)
    return out.to(device=fractions.device, dtype=fractions.dtype)
