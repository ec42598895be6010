"""A procedural shapes dataset that renders at any resolution.

Every image holds exactly one anti-aliased filled shape (disc, square, triangle or cross) with a
random colour, size, rotation and position, on a plain or linear-gradient background. A shape is
described by resolution-free parameters (:class:`ShapeParams`) in relative image coordinates
(``u``, ``v`` in [0, 1], ``u`` along the width), so the same parameters render the same picture at
32×32, 64×64, 96×96 or any ``H×W`` (a non-square size stretches the picture, as upsampling a square
image anisotropically does). Anti-aliasing is pixel-area coverage estimated by supersampling.

The shape always lies inside the image with a margin, and its colour differs from every point of
the background by at least :data:`MIN_CONTRAST` (Euclidean RGB distance in [-1, 1] units), so
:mod:`ug_core.demo.metrics` can segment it and count exactly one object at every resolution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

__all__ = [
    "CLASSES",
    "MIN_CONTRAST",
    "RADIUS_RANGE",
    "ShapeParams",
    "sample_params",
    "render",
    "sample",
    "relative_area",
]

#: Shape classes, in class-label order.
CLASSES = ("disc", "square", "triangle", "cross")
#: Minimum RGB distance between the shape's colour and any point of the background.
MIN_CONTRAST = 0.7
#: Range of the shape's circumradius, relative to the image side.
RADIUS_RANGE = (0.14, 0.28)
#: Gap kept between the shape's circumscribed circle and the image border (relative).
MARGIN = 0.03
#: Largest RGB distance between the two ends of a gradient background.
MAX_GRADIENT = 0.8
#: Cross: arm half-width relative to the circumradius.
CROSS_WIDTH = 0.35

# Area of each class as a multiple of r² (r = circumradius, relative).
_AREA_FACTOR = (
    math.pi,
    2.0,
    3.0 * math.sqrt(3.0) / 4.0,
    # Two rectangles 2r' x 2w with r' = r·cos(asin(w/r)) (arm ends on the circle), minus overlap.
    2 * (2 * math.sqrt(1 - CROSS_WIDTH**2)) * (2 * CROSS_WIDTH) - (2 * CROSS_WIDTH) ** 2,
)


class Batch:
    """A dataclass of batched fields (arrays, or batches), one row per sample.

    ``len`` is the number of rows and ``batch[index]`` the rows ``index`` as the same class (an
    int keeps a batch of one).
    """

    def __len__(self) -> int:
        return len(getattr(self, fields(self)[0].name))  # type: ignore[arg-type]

    def __getitem__(self, index: int | slice | np.ndarray) -> Any:
        if isinstance(index, (int, np.integer)):
            index = slice(int(index), int(index) + 1)
        rows = {f.name: getattr(self, f.name)[index] for f in fields(self)}  # type: ignore[arg-type]
        return type(self)(**rows)


@dataclass
class ShapeParams(Batch):
    """Resolution-free parameters of a batch of shape images (numpy arrays, one row per image)."""

    label: np.ndarray
    """Class index into :data:`CLASSES`, int64, shape (n,)."""
    center: np.ndarray
    """Centre (u, v) relative to the image, float64, shape (n, 2)."""
    radius: np.ndarray
    """Circumradius relative to the image side, float64, shape (n,)."""
    angle: np.ndarray
    """Rotation in radians, float64, shape (n,)."""
    color: np.ndarray
    """Shape colour in [-1, 1], float64, shape (n, 3)."""
    bg_start: np.ndarray
    """Background colour at the start of the gradient, float64, shape (n, 3)."""
    bg_end: np.ndarray
    """Background colour at the end of the gradient (equal to start for a plain one), (n, 3)."""
    bg_direction: np.ndarray
    """Gradient direction in radians, float64, shape (n,)."""

    @property
    def area(self) -> np.ndarray:
        """The shape's area relative to the image area (analytic), float64, shape (n,)."""
        return relative_area(self.label, self.radius)


def relative_area(label: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Analytic area of shapes of class ``label`` and circumradius ``radius``, relative to 1."""
    factor = np.asarray(_AREA_FACTOR)[np.asarray(label, dtype=np.int64)]
    return factor * np.asarray(radius, dtype=np.float64) ** 2


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distance from points ``p`` to the segments ``[a, b]`` (rows)."""
    ab = b - a
    denom = np.maximum((ab * ab).sum(-1), 1e-12)
    s = np.clip(((p - a) * ab).sum(-1) / denom, 0.0, 1.0)
    return np.linalg.norm(a + s[:, None] * ab - p, axis=-1)


def sample_params(
    n: int,
    seed: int | np.random.Generator = 0,
    labels: Sequence[int] | np.ndarray | None = None,
) -> ShapeParams:
    """Draw ``n`` random shapes from ``seed`` (an int or a numpy Generator); reproducible.

    ``labels`` fixes the class of each shape (ints in ``range(len(CLASSES))``); by default the
    class is uniform.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if labels is None:
        label = rng.integers(0, len(CLASSES), size=n)
    else:
        label = np.asarray(labels, dtype=np.int64).reshape(-1)
        if label.shape[0] != n or (label < 0).any() or (label >= len(CLASSES)).any():
            raise ValueError(
                f"labels must hold {n} class indices in [0, {len(CLASSES) - 1}], got {labels!r}"
            )
    radius = rng.uniform(*RADIUS_RANGE, size=n)
    lo = radius + MARGIN
    center = lo[:, None] + rng.uniform(size=(n, 2)) * (1.0 - 2.0 * lo[:, None])
    angle = rng.uniform(0.0, 2.0 * math.pi, size=n)
    bg_start = rng.uniform(-1.0, 1.0, size=(n, 3))
    gradient = rng.uniform(size=n) < 0.5
    step = rng.normal(size=(n, 3))
    step *= (rng.uniform(0.3, 1.0, size=n) * MAX_GRADIENT / np.linalg.norm(step, axis=1))[:, None]
    bg_end = np.where(gradient[:, None], np.clip(bg_start + step, -1.0, 1.0), bg_start)
    bg_direction = rng.uniform(0.0, 2.0 * math.pi, size=n)
    color = rng.uniform(-1.0, 1.0, size=(n, 3))
    bad = _segment_distance(color, bg_start, bg_end) < MIN_CONTRAST
    while bad.any():  # rejection sampling of the shape colour
        color[bad] = rng.uniform(-1.0, 1.0, size=(int(bad.sum()), 3))
        bad = _segment_distance(color, bg_start, bg_end) < MIN_CONTRAST
    return ShapeParams(label, center, radius, angle, color, bg_start, bg_end, bg_direction)


def _as_size(size: int | Sequence[int]) -> tuple[int, int]:
    """``size`` as (height, width), validated."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        hw = (int(size), int(size))
    elif isinstance(size, Sequence) and len(size) == 2:
        hw = tuple(int(s) for s in size)
    else:
        raise ValueError(f"size must be an int or a (height, width) pair, got {size!r}")
    if min(hw) < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return hw  # type: ignore[return-value]


def _inside(params: ShapeParams, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Boolean mask (n, P) of points (u, v) (each (P,)) inside each shape."""
    t = lambda a: torch.as_tensor(a, dtype=torch.float32)[:, None]  # noqa: E731
    du, dv = u[None, :] - t(params.center[:, 0]), v[None, :] - t(params.center[:, 1])
    r, ang, label = t(params.radius), t(params.angle), torch.as_tensor(params.label)[:, None]
    cos, sin = torch.cos(ang), torch.sin(ang)
    x, y = cos * du + sin * dv, -sin * du + cos * dv  # rotated into the shape's frame
    disc = x * x + y * y <= r * r
    half = r / math.sqrt(2.0)
    square = (x.abs() <= half) & (y.abs() <= half)
    tri = torch.ones_like(disc)
    for k in range(3):
        a = math.pi / 2 + 2 * math.pi * k / 3
        tri &= math.cos(a) * x + math.sin(a) * y <= r / 2
    w = CROSS_WIDTH * r
    arm = r * math.sqrt(1 - CROSS_WIDTH**2)
    cross = ((x.abs() <= arm) & (y.abs() <= w)) | ((x.abs() <= w) & (y.abs() <= arm))
    out = torch.where(label == 0, disc, square)
    out = torch.where(label == 2, tri, out)
    return torch.where(label == 3, cross, out)


def background(params: ShapeParams, h: int, w: int) -> torch.Tensor:
    """The background (n, 3, h, w): a colour ramp from ``bg_start`` to ``bg_end`` across it."""
    uc = (torch.arange(w, dtype=torch.float64) + 0.5) / w
    vc = (torch.arange(h, dtype=torch.float64) + 0.5) / h
    vg, ug = torch.meshgrid(vc, uc, indexing="ij")
    d = torch.as_tensor(params.bg_direction)
    proj = torch.cos(d)[:, None, None] * (ug - 0.5) + torch.sin(d)[:, None, None] * (vg - 0.5)
    extent = (torch.cos(d).abs() + torch.sin(d).abs())[:, None, None] / 2
    ramp = ((proj / extent + 1) / 2).clamp(0, 1).to(torch.float32)[:, None]  # (n, 1, h, w)
    start = torch.as_tensor(params.bg_start, dtype=torch.float32)[:, :, None, None]
    end = torch.as_tensor(params.bg_end, dtype=torch.float32)[:, :, None, None]
    return start + (end - start) * ramp


def render(
    params: ShapeParams, size: int | Sequence[int] = 32, supersample: int = 4
) -> torch.Tensor:
    """Render ``params`` at ``size`` (int or (H, W)): a float32 tensor (n, 3, H, W) in [-1, 1].

    Each pixel's shape coverage is the fraction of a ``supersample``×``supersample`` grid of points
    inside the shape (box-filtered anti-aliasing); the background is evaluated at the pixel centre.
    """
    h, w = _as_size(size)
    if isinstance(supersample, bool) or not isinstance(supersample, int) or supersample < 1:
        raise ValueError(f"supersample must be an integer >= 1, got {supersample!r}")
    n, s = len(params), supersample
    if n == 0:
        return torch.zeros(0, 3, h, w)
    # Supersample points: pixel (i, j) owns sub-points ((j + (b + 0.5)/s)/w, (i + (a + 0.5)/s)/h).
    us = (torch.arange(w * s, dtype=torch.float32) + 0.5) / (w * s)
    vs = (torch.arange(h * s, dtype=torch.float32) + 0.5) / (h * s)
    vv, uu = torch.meshgrid(vs, us, indexing="ij")
    inside = _inside(params, uu.reshape(-1), vv.reshape(-1)).to(torch.float32)
    cover = inside.reshape(n, h, s, w, s).mean(dim=(2, 4))  # (n, h, w)
    bg = background(params, h, w)
    fg = torch.as_tensor(params.color, dtype=torch.float32)[:, :, None, None]
    cover = cover[:, None]
    return (cover * fg + (1 - cover) * bg).clamp(-1, 1)


def sample(
    n: int, size: int | Sequence[int] = 32, seed: int = 0, supersample: int = 4
) -> tuple[torch.Tensor, ShapeParams]:
    """``n`` random images at ``size`` and their parameters (a seed gives the same scenes)."""
    params = sample_params(n, seed)
    return render(params, size, supersample), params
