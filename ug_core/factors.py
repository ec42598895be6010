"""Upsampling factors: an integer or a ratio ``p/q`` per trailing axis, parsed and checked.

A factor ``f = p/q`` (``q <= 8``) says that a size ``N`` at the sampled resolution is
``n = N·q/p`` at the trained one, so ``p`` must divide ``N``. Integer factors are plain ints,
others :class:`fractions.Fraction`. This module imports no torch, so that the ``ug`` command
checks its arguments before torch is loaded.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from fractions import Fraction

__all__ = [
    "MAX_DENOMINATOR",
    "Factor",
    "as_factor",
    "normalize_factors",
    "parse_factors",
    "format_factors",
    "block_size",
    "low_sizes",
    "check_divisible",
]

#: The largest denominator q of a factor p/q (3/2, 4/3, 5/4, ..., 9/8).
MAX_DENOMINATOR = 8

#: A normalised factor: an int, or a Fraction p/q with 1 < q <= MAX_DENOMINATOR.
Factor = int | Fraction

_ALLOWED = f"a number >= 1: an integer, or a ratio p/q with q <= {MAX_DENOMINATOR} such as 3/2"


def _ratio(value: object, name: str) -> Fraction:
    """``value`` as an exact Fraction (strings 'p/q', '1.5', '2'; ints; Fractions; floats)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be {_ALLOWED}, got the bool {value!r}")
    if isinstance(value, str):
        text = value.strip()
        try:
            if "/" in text:
                p, q = text.split("/")
                return Fraction(int(p), int(q))
            number = float(text)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"{name} must be {_ALLOWED}, got {value!r}") from None
        return Fraction(int(text)) if text.lstrip("+-").isdigit() else _ratio(number, name)
    if isinstance(value, numbers.Rational):
        return Fraction(int(value.numerator), int(value.denominator))
    if isinstance(value, numbers.Real):
        v = float(value)
        if not math.isfinite(v):
            raise ValueError(f"{name} must be {_ALLOWED}, got {value!r}")
        near = Fraction(v).limit_denominator(MAX_DENOMINATOR)
        if float(near) != v:
            raise ValueError(
                f"{name} must be {_ALLOWED}, got {value!r}, which is not one; the nearest such "
                f"ratio is {near} (= {float(near):.6g}): pass '{near}' to take it"
            )
        return near
    raise TypeError(f"{name} must be {_ALLOWED}, got {value!r} ({type(value).__name__})")


def as_factor(value: object, name: str = "factors") -> Factor:
    """One factor: an int, or a Fraction p/q with q <= 8; a ValueError/TypeError naming ``name``.

    Accepts ints, Fractions, floats equal to such a ratio (1.5, 1.25) and strings ('3/2', '1.5').
    """
    f = _ratio(value, name)
    if f < 1:
        raise ValueError(f"{name} must be {_ALLOWED}, got {value!r} (< 1)")
    if f.denominator > MAX_DENOMINATOR:
        raise ValueError(
            f"{name} must be {_ALLOWED}, got {value!r} = {f}, whose denominator {f.denominator} "
            f"exceeds {MAX_DENOMINATOR}; the nearest allowed ratio is "
            f"{f.limit_denominator(MAX_DENOMINATOR)}"
        )
    return int(f) if f.denominator == 1 else f


def normalize_factors(factors: object, name: str = "factors") -> tuple[Factor, ...]:
    """Validate ``factors`` (one factor, or a sequence with one per trailing axis) as a tuple."""
    if isinstance(factors, str) or not isinstance(factors, (numbers.Real, Sequence)):
        raise TypeError(
            f"{name} must be a number or a sequence of numbers (one per trailing axis), got "
            f"{factors!r} ({type(factors).__name__})"
        )
    seq = (factors,) if isinstance(factors, numbers.Real) else tuple(factors)
    if len(seq) == 0:
        raise ValueError(f"{name} must name at least one axis, got an empty sequence")
    label = f"{name} {factors!r}: each entry" if len(seq) > 1 else name
    return tuple(as_factor(f, label) for f in seq)


def parse_factors(value: object, name: str = "factors") -> tuple[Factor, ...]:
    """Factors as users write them: one number for (height, width), or 'HxW' / 'FxHxW'.

    ``value`` is a number or string for both spatial axes (``2``, ``1.5``, ``'3/2'``), a string
    with 2 or 3 entries separated by ``x`` or ``,`` (``'2x3'``: height, width; ``'2x2x2'``:
    frames, height, width), or a sequence of 2 or 3 entries. The one parser of the ``ug``
    command, the ComfyUI node and the diffusers adapter.
    """
    if isinstance(value, str):
        parts = value.lower().replace(",", "x").split("x")
        if not 1 <= len(parts) <= 3:
            raise ValueError(
                f"{name} must be F (both sides), HxW or FxHxW with entries that are {_ALLOWED}, "
                f"got {value!r}"
            )
        factors = tuple(as_factor(p, f"{name} {value!r}: each entry") for p in parts)
    else:
        factors = normalize_factors(value, name)
    if len(factors) == 1 and isinstance(value, (str, numbers.Real)):  # both spatial axes
        return factors * 2
    if len(factors) not in (2, 3):
        raise ValueError(
            f"{name} must have 2 entries (height, width) or 3 (frames, height, width), got "
            f"{value!r}"
        )
    return factors


def format_factors(factors: Sequence[Factor]) -> str:
    """``(3/2, 3/2)``: factors as users write them (``(2, 2)`` for integers, as a tuple prints)."""
    return "(" + ", ".join(str(f) for f in factors) + ("," if len(factors) == 1 else "") + ")"


def block_size(factors: object) -> int | float:
    """k: the area ratio, the product of the factors (an int for integer factors)."""
    k = math.prod(Fraction(f) for f in normalize_factors(factors))
    return int(k) if k.denominator == 1 else float(k)


def low_sizes(sizes: Sequence[int], factors: Sequence[Factor]) -> tuple[int, ...]:
    """The trailing sizes at the trained resolution, ``N·q/p`` (sizes already checked)."""
    trailing = sizes[len(sizes) - len(factors) :]
    pairs = zip(trailing, factors, strict=True)
    return tuple(int(n) * Fraction(f).denominator // Fraction(f).numerator for n, f in pairs)


def check_divisible(
    shape: Sequence[int], factors: object, name: str = "x", unit: Sequence[int] | None = None
) -> None:
    """Raise a ValueError unless each trailing size of ``shape`` maps to a whole trained size.

    A factor p/q needs sizes that are multiples of p (an integer factor: of itself); with a
    ``unit`` per axis (a patch, or pixels per latent element) sizes must be multiples of
    ``p·unit`` so that both resolutions are whole numbers of units. The one size check of the
    package: the message names ``name``, the sizes, the factors, and the nearest sizes that
    would do.
    """
    factors = normalize_factors(factors)
    units = tuple(unit) if unit is not None else (1,) * len(factors)
    if len(factors) > len(shape):
        raise ValueError(
            f"{len(factors)} factors {format_factors(factors)} given for {name} with only "
            f"{len(shape)} axes (shape {tuple(shape)}); factors apply to the trailing axes"
        )
    trailing = tuple(int(n) for n in shape[len(shape) - len(factors) :])
    steps = [Fraction(f).numerator * u for f, u in zip(factors, units, strict=True)]
    bad = [(n, p) for n, p in zip(trailing, steps, strict=True) if n % p]
    if not bad:
        return
    what = "sizes" if len(shape) == len(factors) else "trailing sizes"
    fixes = []
    for n, p in dict.fromkeys(bad):  # each (size, step) once
        near = " or ".join(str(m) for m in (n - n % p, n - n % p + p) if m > 0)
        fixes.append(f"{n} % {p} = {n % p}: use {near}")
    shown = format_factors(factors)
    if unit is not None and any(u > 1 for u in units):
        shown += f" x unit {format_factors(units)}"
    if all(isinstance(f, int) for f in factors):
        raise ValueError(
            f"{name} has {what} {trailing} that the factors {shown} do not divide "
            f"({'; '.join(fixes)}); choose sizes that are multiples of the factors"
        )
    raise ValueError(
        f"{name} has {what} {trailing} that the factors {shown} do not map to whole sizes "
        f"({'; '.join(fixes)}); a factor p/q needs sizes that are multiples of p"
    )
