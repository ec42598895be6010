"""The two linear operators of upsample guidance: block-mean downsampling D, nearest upsampling U.

Both act on the trailing ``len(factors)`` axes of a tensor, by integer factors that may differ per
axis: ``(2, 2)`` for images, ``(2,)`` for sequences, ``(2, 1, 1)`` for video frames only. With
``k = prod(factors)`` they satisfy ``D(U(y)) == y`` exactly, ``U∘D`` is a projector, and
``D = Uᵀ / k``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from einops import rearrange, repeat

__all__ = ["normalize_factors", "block_size", "downsample", "upsample", "check_divisible"]

_HALF = (torch.float16, torch.bfloat16)


def normalize_factors(factors: int | Sequence[int]) -> tuple[int, ...]:
    """Validate ``factors`` and return them as a tuple of positive ints (an int means one axis)."""
    if isinstance(factors, bool) or not isinstance(factors, (numbers.Integral, Sequence)):
        raise TypeError(
            f"factors must be an int or a sequence of ints, got {factors!r} "
            f"({type(factors).__name__})"
        )
    seq = (factors,) if isinstance(factors, numbers.Integral) else tuple(factors)
    if len(seq) == 0:
        raise ValueError("factors must name at least one axis, got an empty sequence")
    for f in seq:
        if isinstance(f, bool) or not isinstance(f, numbers.Integral):
            raise TypeError(
                f"factors must be integers >= 1, got {f!r} ({type(f).__name__}) in {factors!r}"
            )
        if f < 1:
            raise ValueError(f"factors must be integers >= 1, got {f!r} in {factors!r}")
    return tuple(int(f) for f in seq)


def block_size(factors: int | Sequence[int]) -> int:
    """The number k of elements one block-mean averages: the product of the factors."""
    return math.prod(normalize_factors(factors))


def check_divisible(shape: Sequence[int], factors: int | Sequence[int], name: str = "x") -> None:
    """Raise a ValueError unless each trailing size of ``shape`` is divisible by its factor.

    The one divisibility check of the package: the message names ``name``, the sizes, the
    factors, and the nearest sizes that the factors divide.
    """
    factors = normalize_factors(factors)
    if len(factors) > len(shape):
        raise ValueError(
            f"{len(factors)} factors {factors} given for {name} with only {len(shape)} axes "
            f"(shape {tuple(shape)}); factors apply to the trailing axes"
        )
    trailing = tuple(int(n) for n in shape[len(shape) - len(factors) :])
    bad = [(n, f) for n, f in zip(trailing, factors, strict=True) if n % f]
    if bad:
        what = "sizes" if len(shape) == len(factors) else "trailing sizes"
        fixes = []
        for n, f in dict.fromkeys(bad):  # each (size, factor) once
            near = " or ".join(str(m) for m in (n - n % f, n - n % f + f) if m > 0)
            fixes.append(f"{n} % {f} = {n % f}: use {near}")
        raise ValueError(
            f"{name} has {what} {trailing} that the factors {factors} do not divide "
            f"({'; '.join(fixes)}); choose sizes that are multiples of the factors"
        )


def _patterns(ndim: int) -> tuple[str, str, str]:
    """einops axis names: the low-resolution axes, the high-resolution axes, both interleaved."""
    low = " ".join(f"h{i}" for i in range(ndim))
    high = " ".join(f"(h{i} f{i})" for i in range(ndim))
    split = " ".join(f"h{i} f{i}" for i in range(ndim))
    return low, high, split


def downsample(x: torch.Tensor, factors: int | Sequence[int]) -> torch.Tensor:
    """D: the mean over each block of ``factors`` on the trailing axes (same dtype and device).

    The mean is taken relative to the first element of each block, so that a constant block
    averages to its value exactly and ``downsample(upsample(y, f), f)`` is ``y`` bit for bit.
    Half-precision inputs are averaged in float32.
    """
    factors = normalize_factors(factors)
    check_divisible(x.shape, factors)
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


def upsample(y: torch.Tensor, factors: int | Sequence[int]) -> torch.Tensor:
    """U: nearest upsampling, repeating each element over a block of ``factors`` (trailing axes)."""
    factors = normalize_factors(factors)
    if len(factors) > y.ndim:
        raise ValueError(
            f"{len(factors)} factors {factors} given for a tensor with only {y.ndim} axes "
            f"(shape {tuple(y.shape)}); factors apply to the trailing axes"
        )
    low, high, _ = _patterns(len(factors))
    sizes = {f"f{i}": f for i, f in enumerate(factors)}
    return repeat(y, f"... {low} -> ... {high}", **sizes)
