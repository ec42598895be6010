"""A procedural "moving shapes" video dataset, defined in continuous space and time.

Each clip holds one shape of :mod:`ug_core.demo.shapes` (class, size, rotation, colour, and the
plain or gradient background: the same distribution as the image dataset) moving at constant
velocity across a still background, and bouncing off the borders. A clip spans the time interval
``[0, 1]`` whatever its frame count, so rendering it with ``2F`` frames samples the **same motion
twice as densely** in time, and its block mean over frame pairs is the ``F``-frame clip: that is
what temporal block-averaging (``D`` on frames, the ``(2, 1, 1)`` factor of upsample guidance)
implies. The velocity is in image sides per clip duration (resolution- and frame-count-free).

A frame is the image integrated over its exposure: frame ``i`` of ``F`` averages the scene over the
times ``[(i + 0.5 - shutter/2)/F, (i + 0.5 + shutter/2)/F]`` (``shutter = 1``: the whole frame
interval, motion blur of one frame's travel; ``shutter = 0``: the instant ``(i + 0.5)/F``), and a
pixel is the scene integrated over its area. Both integrals are estimated on regular grids of
``time_samples`` sub-times and ``supersample``×``supersample`` sub-pixel points, and the grids
nest: the points of a ``(2F, 2H, 2W)`` rendering with ``(time_samples, supersample)`` are exactly
the points of an ``(F, H, W)`` rendering with ``(2·time_samples, 2·supersample)``. So with
``shutter = 1``, ``D_(2,2,2)`` of the fine rendering *is* the coarse rendering up to float rounding
(a test checks it), and it is the coarse rendering at the default sampling up to anti-aliasing.

Guarantees the metrics rely on (:mod:`ug_core.demo.video_metrics`): exactly one shape per frame,
always inside the image with the margin of :data:`~ug_core.demo.shapes.MARGIN`, at least
:data:`~ug_core.demo.shapes.MIN_CONTRAST` from the background; constant class, size, rotation and
colour; a centre track that is a straight line at constant speed in
:data:`SPEED_RANGE` (image sides per clip), folded at the walls (at most one bounce per axis per
clip, since the speed is below the smallest free range).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .shapes import (
    CLASSES,
    MARGIN,
    RADIUS_RANGE,
    Batch,
    ShapeParams,
    _as_size,
    _inside,
    sample_params,
)

__all__ = [
    "CLASSES",
    "SPEED_RANGE",
    "ClipParams",
    "sample_clips",
    "trajectory",
    "frame_times",
    "render_clips",
    "sample",
]

#: Range of the shape's speed, in image sides per clip duration (the clip spans t in [0, 1]).
SPEED_RANGE = (0.15, 0.35)
# The smallest free range of the centre along an axis: 1 - 2 (largest radius + margin). A speed
# below it makes at most one bounce per axis per clip.
_MIN_FREE = 1.0 - 2.0 * (RADIUS_RANGE[1] + MARGIN)
assert SPEED_RANGE[1] < _MIN_FREE


@dataclass
class ClipParams(Batch):
    """Resolution- and frame-count-free parameters of a batch of clips (one row per clip)."""

    shape: ShapeParams
    """The shape and background; ``shape.center`` is the centre at time 0."""
    velocity: np.ndarray
    """Velocity (du/dt, dv/dt) in image sides per clip duration, float64, shape (n, 2)."""

    @property
    def label(self) -> np.ndarray:
        """Class index of each clip's shape, int64, shape (n,)."""
        return self.shape.label

    @property
    def speed(self) -> np.ndarray:
        """Speed in image sides per clip duration, float64, shape (n,)."""
        return np.linalg.norm(self.velocity, axis=1)


def sample_clips(
    n: int,
    seed: int | np.random.Generator = 0,
    labels: Sequence[int] | np.ndarray | None = None,
) -> ClipParams:
    """Draw ``n`` random clips from ``seed`` (an int or a numpy Generator); reproducible.

    The shape and background are :func:`~ug_core.demo.shapes.sample_params` (``labels`` fixes the
    classes); the start position is uniform on the free range, the direction uniform, and the
    speed uniform in :data:`SPEED_RANGE`.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    shape = sample_params(n, rng, labels)
    direction = rng.uniform(0.0, 2.0 * math.pi, size=n)
    speed = rng.uniform(*SPEED_RANGE, size=n)
    velocity = speed[:, None] * np.stack([np.cos(direction), np.sin(direction)], axis=1)
    return ClipParams(shape, velocity)


def _fold(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Reflect ``x`` into ``[lo, hi]`` at the walls (a triangle wave of period 2 (hi - lo))."""
    span = hi - lo
    y = np.mod(x - lo, 2.0 * span)
    return lo + span - np.abs(y - span)


def trajectory(clips: ClipParams, times: np.ndarray | Sequence[float]) -> np.ndarray:
    """Centres (u, v) of each clip's shape at ``times`` in [0, 1]: float64 (n, len(times), 2).

    The centre moves at the constant velocity and is reflected at the walls of its free range
    ``[radius + MARGIN, 1 − radius − MARGIN]``, so the shape never leaves the image.
    """
    t = np.asarray(times, dtype=np.float64).reshape(1, -1, 1)
    lo = (clips.shape.radius + MARGIN)[:, None, None]
    free = clips.shape.center[:, None, :] + clips.velocity[:, None, :] * t
    return _fold(free, lo, 1.0 - lo)


def _check_int(name: str, value: object, lo: int = 1) -> int:
    """``value`` as an int >= lo, or ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


def frame_times(frames: int, time_samples: int = 1, shutter: float = 1.0) -> np.ndarray:
    """Sub-times of each frame's exposure: float64 (frames, time_samples), in [0, 1].

    Frame ``i`` is exposed on ``[(i + 0.5 − shutter/2)/F, (i + 0.5 + shutter/2)/F]``; its sub-times
    are the midpoints of ``time_samples`` equal parts of that interval.
    """
    frames = _check_int("frames", frames)
    time_samples = _check_int("time_samples", time_samples)
    if not 0.0 <= float(shutter) <= 1.0:
        raise ValueError(f"shutter must be in [0, 1], got {shutter!r}")
    sub = (np.arange(time_samples) + 0.5) / time_samples - 0.5  # in (-1/2, 1/2)
    return (np.arange(frames)[:, None] + 0.5 + float(shutter) * sub[None, :]) / frames


def render_clips(
    clips: ClipParams,
    frames: int = 8,
    size: int | Sequence[int] = 32,
    supersample: int = 4,
    time_samples: int = 4,
    shutter: float = 1.0,
) -> torch.Tensor:
    """Render ``clips``: a float32 tensor (n, 3, frames, H, W) in [-1, 1].

    ``size`` is an int or (H, W). Each pixel is the mean of the scene over a ``supersample``² grid
    of points in the pixel and ``time_samples`` sub-times of the frame's exposure
    (:func:`frame_times`); the background is evaluated at the same points.
    """
    h, w = _as_size(size)
    frames = _check_int("frames", frames)
    s = _check_int("supersample", supersample)
    times = frame_times(frames, time_samples, shutter)  # (F, T)
    n, nt = len(clips), times.shape[1]
    if n == 0:
        return torch.zeros(0, 3, frames, h, w)
    us = (torch.arange(w * s, dtype=torch.float32) + 0.5) / (w * s)
    vs = (torch.arange(h * s, dtype=torch.float32) + 0.5) / (h * s)
    vv, uu = torch.meshgrid(vs, us, indexing="ij")
    u, v = uu.reshape(-1), vv.reshape(-1)
    # Background at every point (a linear ramp along its direction, as in shapes.render).
    d = torch.as_tensor(clips.shape.bg_direction, dtype=torch.float32)[:, None]
    proj = torch.cos(d) * (u[None] - 0.5) + torch.sin(d) * (v[None] - 0.5)
    extent = (torch.cos(d).abs() + torch.sin(d).abs()) / 2
    ramp = ((proj / extent + 1) / 2).clamp(0, 1)[:, None]  # (n, 1, P)
    start = torch.as_tensor(clips.shape.bg_start, dtype=torch.float32)[:, :, None]
    end = torch.as_tensor(clips.shape.bg_end, dtype=torch.float32)[:, :, None]
    bg = start + (end - start) * ramp  # (n, 3, P)
    fg = torch.as_tensor(clips.shape.color, dtype=torch.float32)[:, :, None, None]  # (n, 3, 1, 1)
    centres = trajectory(clips, times.reshape(-1)).reshape(n, frames, nt, 2)
    out = torch.empty(n, 3, frames, h, w)
    for i in range(n):  # one clip at a time: (F·T, P) points in memory
        rows = np.zeros(frames * nt, dtype=np.int64) + i
        one = clips.shape[rows]
        one.center = centres[i].reshape(-1, 2)
        cover = _inside(one, u, v).to(torch.float32).reshape(frames, nt, -1).mean(1)  # (F, P)
        point = cover[None] * fg[i] + (1 - cover[None]) * bg[i][:, None]  # (3, F, P)
        pix = point.reshape(3, frames, h, s, w, s).mean(dim=(3, 5))
        out[i] = pix.clamp(-1, 1)
    return out


def sample(
    n: int,
    frames: int = 8,
    size: int | Sequence[int] = 32,
    seed: int = 0,
    labels: Sequence[int] | np.ndarray | None = None,
    **render_kwargs: float,
) -> tuple[torch.Tensor, ClipParams]:
    """``n`` random clips (n, 3, frames, H, W) and their parameters (same seed, same clips)."""
    clips = sample_clips(n, seed, labels)
    return render_clips(clips, frames, size, **render_kwargs), clips
