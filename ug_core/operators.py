"""The linear operators of upsample guidance: the area mean D and its upsampling U.

Both act on the trailing ``len(factors)`` axes of a tensor, by factors that may differ per axis:
``(2, 2)`` for images, ``(2,)`` for sequences, ``(2, 1, 1)`` for video frames only, and ratios
``p/q`` such as ``(3/2, 3/2)`` (:mod:`ug_core.factors`).

- Integer factors: D is the block mean and U nearest upsampling (repetition). With
  ``k = prod(factors)``, ``D(U(y)) == y`` exactly, ``U∘D`` is a projector and ``D = Uᵀ/k``.
- A ratio ``p/q``: D is the exact area mean onto the coarser grid (each coarse cell averages the
  fine cells it covers, weighted by the overlap), and U its natural right inverse
  ``Dᵀ(DDᵀ)⁻¹``: ``D(U(y)) = y`` and ``U∘D`` is the orthogonal projector onto what D keeps. Blocks
  of p fine cells map to q coarse ones, so both act on each block alone.
- :func:`top_up_noise`: ζ ~ N(0, I/k − DDᵀ), the noise that makes ``D[ε] + ζ`` white with
  variance 1/k (``DDᵀ``'s largest eigenvalue is 1/k, so ``I/k − DDᵀ`` is a covariance); 0 for
  integer factors.
- :func:`whiten` and :func:`unwhiten`: ``W = (k·DDᵀ)^(-1/2)`` and its inverse. For a ratio,
  ``D[ε]`` of white noise ε has covariance ``DDᵀ``, which is not ``I/k`` (neighbours that share
  a fine cell are correlated, and the variance differs between coarse cells); ``W·D[ε]`` is
  white with variance ``1/k`` exactly, as ``D[ε]`` is for integer factors, where W is the
  identity (``docs/maths.md``, fractional factors).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import torch
from einops import rearrange, repeat

from .factors import Factor, block_size, check_divisible, format_factors, normalize_factors

__all__ = [
    "normalize_factors",
    "block_size",
    "downsample",
    "upsample",
    "whiten",
    "unwhiten",
    "top_up_noise",
    "check_divisible",
]

_HALF = (torch.float16, torch.bfloat16)


def _patterns(ndim: int) -> tuple[str, str, str]:
    """einops axis names: the low-resolution axes, the high-resolution axes, both interleaved."""
    low = " ".join(f"h{i}" for i in range(ndim))
    high = " ".join(f"(h{i} f{i})" for i in range(ndim))
    split = " ".join(f"h{i} f{i}" for i in range(ndim))
    return low, high, split


def downsample(x: torch.Tensor, factors: object) -> torch.Tensor:
    """D: the area mean over the trailing axes by ``factors`` (same dtype and device).

    For integer factors, the block mean, taken relative to the first element of each block, so
    that a constant block averages to its value exactly and ``downsample(upsample(y, f), f)`` is
    ``y`` bit for bit. Half-precision inputs are averaged in float32.
    """
    factors = normalize_factors(factors)
    check_divisible(x.shape, factors)
    if not _integral(factors):
        return _per_axis(x, factors, "down")
    if all(f == 1 for f in factors):
        return x.clone()
    d = len(factors)
    low, high, split = _patterns(d)
    sizes = {f"f{i}": f for i, f in enumerate(factors)}
    work = x.float() if x.dtype in _HALF else x
    blocks = rearrange(work, f"... {high} -> ... {split}", **sizes)
    ref = blocks[(...,) + (slice(None), slice(0, 1)) * d]
    offset = blocks - ref
    for i in reversed(range(d)):  # one block axis at a time: faster than a multi-axis mean
        offset = offset.mean(dim=-2 * (d - i) + 1, keepdim=True)
    mean = ref + offset
    return mean.reshape(mean.shape[: -2 * d] + tuple(mean.shape[-2 * d :: 2])).to(x.dtype)


def upsample(y: torch.Tensor, factors: object) -> torch.Tensor:
    """U: repetition for integer factors, else D's right inverse ``Dᵀ(DDᵀ)⁻¹`` (trailing axes)."""
    factors = normalize_factors(factors)
    if len(factors) > y.ndim:
        raise ValueError(
            f"{len(factors)} factors {format_factors(factors)} given for a tensor with only "
            f"{y.ndim} axes (shape {tuple(y.shape)}); factors apply to the trailing axes"
        )
    if not _integral(factors):
        return _per_axis(y, factors, "up")
    low, high, _ = _patterns(len(factors))
    sizes = {f"f{i}": f for i, f in enumerate(factors)}
    return repeat(y, f"... {low} -> ... {high}", **sizes)


def whiten(y: torch.Tensor, factors: object) -> torch.Tensor:
    """W: makes ``D[ε]`` white with variance 1/k (``(k·DDᵀ)^(-1/2)``); ``y`` itself for integers."""
    factors = normalize_factors(factors)
    return y if _integral(factors) else _per_axis(y, factors, "whiten")


def unwhiten(y: torch.Tensor, factors: object) -> torch.Tensor:
    """W⁻¹ = ``(k·DDᵀ)^(1/2)``, the inverse of :func:`whiten`; ``y`` itself for integer factors."""
    factors = normalize_factors(factors)
    return y if _integral(factors) else _per_axis(y, factors, "unwhiten")


def top_up_noise(normal: torch.Tensor, factors: object) -> torch.Tensor:
    """ζ = ``(I/k − DDᵀ)^(1/2)·n``: the top-up noise made from standard normal ``normal`` (coarse).

    ``D[ε] + ζ`` is white with variance 1/k (ε white, ζ independent of it): the noise of an
    integer factor's block mean. Zeros for integer factors. Computed in float64 block by block
    (``∏q`` coarse cells per block); the result has ``normal``'s dtype and device.
    """
    factors = normalize_factors(factors)
    if _integral(factors):
        return torch.zeros_like(normal)
    q = tuple(Fraction(f).denominator for f in factors)
    check_divisible(normal.shape, q, "the coarse tensor (a factor p/q needs multiples of q)")
    root = torch.as_tensor(_top_up_root(factors), device=normal.device)
    d = len(factors)
    low, _, split = _patterns(d)
    blocked = " ".join(f"(h{i} f{i})" for i in range(d))
    sizes = {f"f{i}": n for i, n in enumerate(q)}
    cells = " ".join(f"f{i}" for i in range(d))
    blocks = rearrange(normal.double(), f"... {blocked} -> ... {low} ({cells})", **sizes)
    mixed = blocks @ root.T
    return rearrange(mixed, f"... {low} ({cells}) -> ... {blocked}", **sizes).to(normal.dtype)


@functools.lru_cache(maxsize=64)
def _top_up_root(factors: tuple[Factor, ...]) -> np.ndarray:
    """``(I/k − DDᵀ)^(1/2)`` over one block of ``∏q`` coarse cells (row-major), float64."""
    down = np.ones((1, 1))
    for f in factors:
        down = np.kron(down, axis_matrices(f)["down"])
    gap = np.eye(len(down)) / float(block_size(factors)) - down @ down.T
    values, vectors = np.linalg.eigh(gap)
    return (vectors * np.sqrt(values.clip(min=0.0))) @ vectors.T


def _integral(factors: Sequence[Factor]) -> bool:
    """Whether every factor is an integer (the block-mean and repetition paths)."""
    return all(isinstance(f, int) for f in factors)


@functools.lru_cache(maxsize=64)
def axis_matrices(factor: Factor) -> dict[str, np.ndarray]:
    """The per-block matrices of one axis with factor p/q, float64: q coarse cells, p fine.

    ``down`` (q×p): the area mean, ``B[i, j] = |fine j ∩ coarse i| / |coarse i|``; ``up`` (p×q):
    ``Bᵀ(BBᵀ)⁻¹``; ``whiten`` and ``unwhiten`` (q×q): ``(f·BBᵀ)^(∓1/2)`` with ``f = p/q``.
    """
    f = Fraction(factor)
    p, q = f.numerator, f.denominator
    # In units of 1/q of a fine cell: fine j covers [j·q, (j+1)·q), coarse i covers [i·p, (i+1)·p).
    down = np.zeros((q, p))
    for i in range(q):
        for j in range(p):
            overlap = min((j + 1) * q, (i + 1) * p) - max(j * q, i * p)
            down[i, j] = max(overlap, 0) / p
    gram = down @ down.T
    up = down.T @ np.linalg.inv(gram)
    values, vectors = np.linalg.eigh(float(f) * gram)
    power = {"whiten": -0.5, "unwhiten": 0.5}
    out = {"down": down, "up": up}
    for name, e in power.items():
        out[name] = (vectors * values**e) @ vectors.T
    return out


_SHAPES = {"down": (1, 0), "up": (0, 1), "whiten": (1, 1), "unwhiten": (1, 1)}


def _per_axis(x: torch.Tensor, factors: Sequence[Factor], kind: str) -> torch.Tensor:
    """Apply one of :func:`axis_matrices` on every trailing axis, block by block."""
    if kind != "down":
        q = tuple(Fraction(f).denominator for f in factors)
        check_divisible(x.shape, q, "the coarse tensor (a factor p/q needs multiples of q)")
    work = torch.float32 if x.dtype in _HALF else x.dtype
    out = x.to(work)
    first = x.ndim - len(factors)
    for axis, f in enumerate(factors, start=first):
        if f == 1 or (kind in ("whiten", "unwhiten") and isinstance(f, int)):
            continue
        matrix = axis_matrices(f)[kind]
        rows, cols = matrix.shape
        m = torch.as_tensor(matrix, dtype=work, device=x.device)
        moved = out.movedim(axis, -1)
        blocks = moved.reshape(*moved.shape[:-1], moved.shape[-1] // cols, cols)
        mixed = blocks @ m.T
        out = mixed.reshape(*moved.shape[:-1], -1).movedim(-1, axis)
    return out.to(x.dtype)
