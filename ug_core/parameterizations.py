"""What a model predicts, and the guidance written in each parameterisation.

A noisy sample is ``x = a·x0 + s·ε`` (see :mod:`ug_core.schedules`). The four predictions are:

- ``"epsilon"``: ε;
- ``"sample"``: x0;
- ``"v_prediction"``: ``a·ε − s·x0`` (Salimans & Ho; diffusers' ``v_prediction``);
- ``"flow"``: the rectified-flow velocity ``ε − x0``.

Each is linear in ``(x, x0)``. Upsample guidance is one object in all of them (docs/maths.md
§5): convert both predictions to x0, set ``x0' = x0̂ + w·U[x0_low − D[x0̂]]``, convert back.
Written in the prediction's own terms this is always

``p' = p + w·U[r·p_low − D[p] + q·D[x]]``

with two scalars ``r, q`` (:func:`guidance_coefficients`), which are finite for every ``(a, s)``,
including the clean (``s = 0``) and pure-noise (``a = 0``) ends where converting to x0 divides by 0.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "PREDICTIONS",
    "normalize_prediction",
    "prediction_to_x0",
    "x0_to_prediction",
    "guidance_coefficients",
    "top_up_coefficient",
]

#: The prediction names, as diffusers spells them, plus ``"flow"``.
PREDICTIONS = ("epsilon", "sample", "v_prediction", "flow")
_ALIASES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction", "flow_prediction": "flow"}


def normalize_prediction(prediction: str) -> str:
    """The canonical prediction name (aliases: eps, x0, v), or a ValueError naming the value."""
    if not isinstance(prediction, str):
        raise TypeError(f"prediction must be a string, got {type(prediction).__name__}")
    name = _ALIASES.get(prediction, prediction)
    if name not in PREDICTIONS:
        raise ValueError(
            f"prediction must be one of {PREDICTIONS} (or an alias in {tuple(_ALIASES)}), "
            f"got {prediction!r}"
        )
    return name


def prediction_to_x0(pred, x, a, s, prediction: str):
    """x0 implied by a prediction of ``x = a·x0 + s·ε`` (undefined where it divides by 0)."""
    prediction = normalize_prediction(prediction)
    if prediction == "epsilon":
        return (x - s * pred) / a
    if prediction == "sample":
        return pred
    if prediction == "v_prediction":
        return (a * x - s * pred) / (a * a + s * s)
    return (x - s * pred) / (a + s)


def x0_to_prediction(x0, x, a, s, prediction: str):
    """The prediction implied by an x0 estimate, given ``x = a·x0 + s·ε``."""
    prediction = normalize_prediction(prediction)
    eps = (x - a * x0) / s if prediction != "sample" else None
    if prediction == "epsilon":
        return eps
    if prediction == "sample":
        return x0
    if prediction == "v_prediction":
        return a * eps - s * x0
    return eps - x0


def guidance_coefficients(
    prediction: str, a: torch.Tensor, s: torch.Tensor, scale: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(r, q)`` of ``p' = p + w·U[r·p_low − D[p] + q·D[x]]`` for one parameterisation.

    ``a, s`` are the coefficients at the model's time t and ``scale`` is the input scale c of the
    low-resolution call, whose input ``c·D[x]`` has coefficients ``(c·a, c·s/√k)``. Derived from
    ``p = A·x + B·x0``: ``r = B(a, s)/B(c·a, c·s/√k)`` and ``q = A(a, s) − r·c·A(c·a, c·s/√k)``,
    simplified so that no case divides by zero.
    """
    prediction = normalize_prediction(prediction)
    rk = math.sqrt(k)
    if prediction == "epsilon":  # Eq. 10: ε_low/√k.
        return torch.full_like(a, 1.0 / rk), torch.zeros_like(a)
    if prediction == "sample":
        return torch.ones_like(a), torch.zeros_like(a)
    if prediction == "v_prediction":
        low_power = a * a + s * s / k  # P: equals 1/c² for a VP schedule.
        r = (a * a + s * s) / (scale * rk * low_power)
        q = -a * s * (1.0 - 1.0 / k) / low_power
        return r, q
    r = (a + s) / (rk * a + s)
    q = -(1.0 - 1.0 / rk) / (a + s / rk)
    return r, q


def top_up_coefficient(
    prediction: str,
    a: torch.Tensor,
    s: torch.Tensor,
    scale: torch.Tensor,
    k: float,
    r: torch.Tensor,
) -> torch.Tensor:
    """z of the top-up term ``+ w·U[z·ζ]``: what noise ζ added to the low input puts in ``r·p_low``.

    The low call gets ``c·(D[x] + s·ζ)`` (ratio factors, ``docs/maths.md`` §13); ``r·p_low +
    q·D[x]`` then holds ``r·c·A(c·a, c·s/√k)·s·ζ`` more than the trajectory's own coarse
    prediction (``p = A·x + B·x0``), and ``z = −r·c·A(c·a, c·s/√k)·s`` takes it out: ``−r·√k``
    for ε and flow, ``−r·c·a·√k`` for v, 0 for x0 (finite at both ends of the schedule).
    """
    prediction = normalize_prediction(prediction)
    rk = math.sqrt(k)
    if prediction == "sample":
        return torch.zeros_like(a)
    if prediction == "v_prediction":
        return -r * scale * a * rk
    return -r * rk + torch.zeros_like(a)
