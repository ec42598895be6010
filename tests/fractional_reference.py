"""Fractional-factor operators written by hand from their definitions (docs/maths.md §13).

Independent of ug_core: the area-mean matrix of one axis from interval overlaps, its right inverse
by numpy's pseudo-inverse, and the whitening ``(k·DDᵀ)^(-1/2)`` by numpy's eigendecomposition, all
as dense matrices over the whole axis, applied with tensordot.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch


def area_mean_matrix(n_high: int, factor: Fraction) -> np.ndarray:
    """The (n_low, n_high) area mean: coarse cell i covers [i·f, (i+1)·f) of the fine cells."""
    f = Fraction(factor)
    n_low = int(n_high / f)
    m = np.zeros((n_low, n_high))
    for i in range(n_low):
        lo, hi = i * f, (i + 1) * f
        for j in range(n_high):
            m[i, j] = max(0.0, float(min(hi, j + 1) - max(lo, j))) / float(f)
    return m


def _apply(x: torch.Tensor, matrices: list[np.ndarray]) -> torch.Tensor:
    """Apply one dense matrix per trailing axis."""
    out = x.double()
    first = x.ndim - len(matrices)
    for axis, m in enumerate(matrices, start=first):
        t = torch.as_tensor(m, dtype=torch.float64)
        out = torch.tensordot(out, t, dims=([axis], [1])).movedim(-1, axis)
    return out.to(x.dtype)


def D(x: torch.Tensor, factors) -> torch.Tensor:
    """The area mean on the trailing axes."""
    n = x.shape[x.ndim - len(factors) :]
    return _apply(x, [area_mean_matrix(s, Fraction(f)) for s, f in zip(n, factors, strict=True)])


def U(y: torch.Tensor, factors) -> torch.Tensor:
    """D's right inverse (the pseudo-inverse of the whole-axis matrix)."""
    n = y.shape[y.ndim - len(factors) :]
    mats = [
        np.linalg.pinv(area_mean_matrix(int(s * Fraction(f)), Fraction(f)))
        for s, f in zip(n, factors, strict=True)
    ]
    return _apply(y, mats)


def _gram_power(n_low: int, factor: Fraction, power: float) -> np.ndarray:
    """(f·DDᵀ)^power over the whole axis."""
    f = Fraction(factor)
    d = area_mean_matrix(int(n_low * f), f)
    values, vectors = np.linalg.eigh(float(f) * d @ d.T)
    return (vectors * values**power) @ vectors.T


def W(y: torch.Tensor, factors) -> torch.Tensor:
    """Whitening of the area mean's noise."""
    n = y.shape[y.ndim - len(factors) :]
    return _apply(y, [_gram_power(s, f, -0.5) for s, f in zip(n, factors, strict=True)])


def W_inv(y: torch.Tensor, factors) -> torch.Tensor:
    """The inverse of :func:`W`."""
    n = y.shape[y.ndim - len(factors) :]
    return _apply(y, [_gram_power(s, f, 0.5) for s, f in zip(n, factors, strict=True)])
