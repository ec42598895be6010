"""The guidance scale w over time.

A scale is a constant, or a callable from the time fraction (a float in [0, 1], 1 at the noisiest
end of the schedule's time axis) to w. The paper's Eq. 11, ``w_t = θ·H(t − (1 − η)T)``, is
:func:`step_scale`: on during the noisiest η fraction of the *time axis*, which is not the same as
the first η of the sampler's steps for Karras-spaced or shifted schedules.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch

__all__ = ["ScaleLike", "step_scale", "check_scale", "weights_at"]

ScaleLike = float | Callable[[float], float]


def _check_eta(eta: float) -> float:
    """Return eta as a float if it lies in [0, 1], else raise a ValueError naming it."""
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real):
        raise TypeError(f"eta must be a real number in [0, 1], got {type(eta).__name__}")
    if not (0.0 <= float(eta) <= 1.0):
        raise ValueError(f"eta must lie in [0, 1] (the fraction of the time axis), got {eta!r}")
    return float(eta)


def is_on(fraction: float, eta: float) -> bool:
    """H(t − (1 − η)T) on the time fraction: on while ``fraction >= 1 − η``; never for η = 0."""
    return eta > 0.0 and fraction >= 1.0 - eta - 1e-12


def step_scale(theta: float, eta: float = 1.0) -> Callable[[float], float]:
    """The paper's Eq. 11 as a scale: θ during the noisiest η of the time axis, 0 after."""
    check_scale(theta)
    eta = _check_eta(eta)
    theta = float(theta)

    def scale(fraction: float) -> float:
        """w = θ·H(fraction − (1 − η))."""
        return theta if is_on(fraction, eta) else 0.0

    scale.theta, scale.eta = theta, eta  # type: ignore[attr-defined]
    return scale


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
    """w for each time fraction (float64): ``scale(fraction)`` where the η gate is on, else 0.

    A callable scale is called once per distinct fraction, with a Python float.
    """
    eta = _check_eta(eta)
    fractions = fractions.to(torch.float64)
    on = fractions >= 1.0 - eta - 1e-12 if eta > 0 else torch.zeros_like(fractions, dtype=bool)
    if not callable(scale):
        return torch.where(on, torch.full_like(fractions, float(scale)), 0.0)
    out = torch.zeros_like(fractions)
    for f in fractions[on].unique().tolist():
        w = scale(f)
        if isinstance(w, torch.Tensor) and w.numel() == 1:
            w = w.item()
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w):
            raise ValueError(f"scale({f!r}) must return a finite real number, got {w!r}")
        out[on & (fractions == f)] = float(w)
    return out
