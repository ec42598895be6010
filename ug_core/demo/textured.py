"""Scenes with detail at every scale: one shape on a background, both filled with fractal texture.

A scene (:class:`SceneParams`) is the flat dataset's shape
(:class:`~ug_core.demo.shapes.ShapeParams`) plus a procedural texture on the background and another
on the shape, all in continuous image coordinates ``(u, v) ∈ [0, 1]²``. A texture is a random-phase
sum of :data:`N_COMPONENTS` plane waves whose frequencies are spread evenly in log-frequency over
:data:`FREQ_RANGE` (cycles per image), with weights giving a power spectrum ∝ 1/f^β: the same
statistics at every scale (scale-invariant), so a 64×64 rendering holds an octave of detail that a
32×32 one cannot. ``anisotropy`` bunches the wave directions around ``orientation`` (grain).

Rendering is exact area sampling for the texture: a pixel of width Δ holds the mean of each wave
over its box, ``sinc(f_u·Δu)·sinc(f_v·Δv)·cos(2π f·c + φ)`` at the pixel centre ``c``; so the 2×2
block mean of a 2N rendering equals the N rendering before the final soft clip,
``t = A·tanh(n)·d`` (``A`` the amplitude, ``d`` a unit RGB direction), which bounds the texture's
colour deviation by ``A``. The shape's edge is anti-aliased by supersampling, as in the flat
dataset.

Colours keep the texture inside [-1, 1] (no clipping) and the shape's colour at least
:data:`MIN_CONTRAST` from every point of the background's gradient, so that the metrics'
segmentation with :data:`SEGMENT_THRESHOLD` finds exactly one object. With zero amplitude a scene
renders bit for bit as :func:`ug_core.demo.shapes.render` does; :func:`sample_scene_params` with
``textured=False`` gives the flat dataset's distribution (for the learned metric), and
``two_objects`` adds a second shape of the same colour and texture (a duplicate, as naive
high-resolution sampling draws).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from . import shapes
from .shapes import CLASSES, Batch, ShapeParams, _as_size, _inside, background

__all__ = [
    "AMPLITUDE_RANGE",
    "BETA_RANGE",
    "COLOR_RANGE",
    "FREQ_RANGE",
    "MIN_CONTRAST",
    "N_COMPONENTS",
    "SEGMENT_THRESHOLD",
    "SceneParams",
    "TextureParams",
    "render",
    "sample",
    "sample_scene_params",
    "sample_texture",
    "texture_noise",
]

#: Lowest and highest wave frequency, in cycles per image side.
FREQ_RANGE = (1.5, 128.0)
#: Plane waves per texture.
N_COMPONENTS = 48
#: Spectral slope β of the power spectrum 1/f^β (2 is typical of natural images).
BETA_RANGE = (1.25, 2.25)
#: Texture amplitude A (largest RGB deviation the texture adds).
AMPLITUDE_RANGE = (0.15, 0.3)
#: Largest anisotropy (0: isotropic; 1: all waves along one direction).
MAX_ANISOTROPY = 0.8
#: Base colours of textured scenes lie in [-c, c]³, so colour ± A stays inside [-1, 1].
COLOR_RANGE = 0.7
#: Minimum RGB distance between the shape's base colour and the background's gradient.
MIN_CONTRAST = 1.2
#: Largest RGB distance between the two ends of a textured scene's background gradient.
MAX_GRADIENT = 0.6
#: Segmentation threshold for textured scenes (``metrics.count_objects(..., threshold=)``):
#: between the largest background deviation (2·A_max) and the smallest shape contrast left.
SEGMENT_THRESHOLD = 0.5
#: Two-object scenes: the shapes' circumradii are scaled by a factor in this range.
TWO_OBJECT_SCALE = (0.6, 0.9)


@dataclass
class TextureParams(Batch):
    """A batch of fractal textures (numpy arrays, one row per scene)."""

    beta: np.ndarray
    """Spectral slope β, float64 (n,)."""
    amplitude: np.ndarray
    """Amplitude A (the texture's largest RGB deviation), float64 (n,); 0 means no texture."""
    anisotropy: np.ndarray
    """0 (isotropic) to :data:`MAX_ANISOTROPY` (directions bunched), float64 (n,)."""
    orientation: np.ndarray
    """Preferred wave direction in radians (mod π), float64 (n,)."""
    color_dir: np.ndarray
    """Unit RGB direction of the deviation, float64 (n, 3)."""
    freq: np.ndarray
    """Wave vectors (f_u, f_v) in cycles per image side, float64 (n, K, 2)."""
    phase: np.ndarray
    """Phases in radians, float64 (n, K)."""
    weight: np.ndarray
    """Wave weights, float64 (n, K); ``sum(weight**2) / 2 = 1`` (unit variance in the continuum)."""


@dataclass
class SceneParams(Batch):
    """Resolution-free parameters of a batch of scenes: a shape, two textures, maybe a duplicate."""

    shape: ShapeParams
    """The (first) shape and the background's base colours."""
    background: TextureParams
    """The background's texture."""
    foreground: TextureParams
    """The shape's texture (a second shape shares it)."""
    second: ShapeParams
    """A second shape (same colour and texture as the first) where ``count == 2``."""
    count: np.ndarray
    """Number of shapes, 1 or 2, int64 (n,)."""

    @property
    def textured(self) -> np.ndarray:
        """Whether each scene has any texture, bool (n,)."""
        return (self.background.amplitude > 0) | (self.foreground.amplitude > 0)


def _check_n(n: object) -> int:
    """``n`` as a non-negative int, or a ValueError naming it."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    return int(n)


def sample_texture(
    n: int, rng: np.random.Generator, amplitude: bool = True, components: int = N_COMPONENTS
) -> TextureParams:
    """Draw ``n`` random textures from ``rng`` (zero amplitude where ``amplitude`` is False)."""
    n = _check_n(n)
    k = components
    beta = rng.uniform(*BETA_RANGE, size=n)
    amp = rng.uniform(*AMPLITUDE_RANGE, size=n) if amplitude else np.zeros(n)
    aniso = rng.uniform(0.0, MAX_ANISOTROPY, size=n)
    orient = rng.uniform(0.0, math.pi, size=n)
    cdir = rng.normal(size=(n, 3))
    cdir /= np.linalg.norm(cdir, axis=1, keepdims=True)
    lo, hi = np.log(FREQ_RANGE[0]), np.log(FREQ_RANGE[1])
    strata = (np.arange(k)[None, :] + rng.uniform(size=(n, k))) / k  # stratified log-frequency
    radius = np.exp(lo + strata * (hi - lo))
    spread = rng.uniform(-math.pi / 2, math.pi / 2, size=(n, k)) * (1.0 - aniso[:, None])
    theta = orient[:, None] + spread
    freq = np.stack([radius * np.cos(theta), radius * np.sin(theta)], axis=-1)
    phase = rng.uniform(0.0, 2.0 * math.pi, size=(n, k))
    # Even spacing in log f: a weight ∝ f^(1 - β/2) gives the 2-D power spectrum 1/f^β.
    weight = radius ** (1.0 - beta[:, None] / 2.0)
    weight *= np.sqrt(2.0 / (weight**2).sum(1, keepdims=True))
    return TextureParams(beta, amp, aniso, orient, cdir, freq, phase, weight)


def _textured_colors(n: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Background gradient ends and shape colours for textured scenes: (bg_start, bg_end, color).

    Colours lie in [-c, c]³ (c = :data:`COLOR_RANGE`) and the shape's colour at least
    :data:`MIN_CONTRAST` from the background's gradient segment. Rejection sampling redraws all
    three where that fails (a background near the cube's centre may leave no colour far enough).
    """
    c = COLOR_RANGE
    bg_start, bg_end, color = np.empty((3, n, 3))
    todo = np.arange(n)
    while len(todo):
        m = len(todo)
        start = rng.uniform(-c, c, size=(m, 3))
        gradient = rng.uniform(size=m) < 0.5
        step = rng.normal(size=(m, 3))
        step *= (rng.uniform(0.3, 1.0, size=m) * MAX_GRADIENT / np.linalg.norm(step, axis=1))[
            :, None
        ]
        end = np.where(gradient[:, None], np.clip(start + step, -c, c), start)
        col = rng.uniform(-c, c, size=(m, 3))
        ok = shapes._segment_distance(col, start, end) >= MIN_CONTRAST
        idx = todo[ok]
        bg_start[idx], bg_end[idx], color[idx] = start[ok], end[ok], col[ok]
        todo = todo[~ok]
    return bg_start, bg_end, color


def _textured_shape_params(
    n: int, rng: np.random.Generator, labels: Sequence[int] | np.ndarray | None
) -> ShapeParams:
    """Flat-dataset shape geometry with colours for textured scenes (inset range, more contrast)."""
    base = shapes.sample_params(n, rng, labels)
    base.bg_start, base.bg_end, base.color = _textured_colors(n, rng)
    return base


def _second_shapes(first: ShapeParams, two: np.ndarray, rng: np.random.Generator) -> ShapeParams:
    """A second, non-overlapping shape per scene (same colour); shrinks both where ``two``."""
    n = len(first)
    second = first[np.arange(n)]
    second = ShapeParams(**{k: np.array(v, copy=True) for k, v in second.__dict__.items()})
    if not two.any():
        return second
    idx = np.nonzero(two)[0]
    first.radius[idx] *= rng.uniform(*TWO_OBJECT_SCALE, size=len(idx))
    same = rng.uniform(size=len(idx)) < 0.5
    second.label[idx] = np.where(same, first.label[idx], rng.integers(0, len(CLASSES), len(idx)))
    second.radius[idx] = rng.uniform(*shapes.RADIUS_RANGE, size=len(idx))
    second.radius[idx] *= rng.uniform(*TWO_OBJECT_SCALE, size=len(idx))
    second.angle[idx] = rng.uniform(0.0, 2.0 * math.pi, size=len(idx))
    for i in idx:  # rejection: inside the image with the margin, apart from the first shape
        r1, r2 = first.radius[i], second.radius[i]
        for _ in range(1000):
            lo = r2 + shapes.MARGIN
            c = lo + rng.uniform(size=2) * (1.0 - 2.0 * lo)
            if np.linalg.norm(c - first.center[i]) > r1 + r2 + shapes.MARGIN:
                break
        else:  # no room: move the first shape to a corner, the second to the opposite one
            first.center[i] = r1 + shapes.MARGIN
            c = 1.0 - (r2 + shapes.MARGIN) * np.ones(2)
        second.center[i] = c
    return second


def sample_scene_params(
    n: int,
    seed: int | np.random.Generator = 0,
    labels: Sequence[int] | np.ndarray | None = None,
    textured: bool = True,
    two_objects: float = 0.0,
) -> SceneParams:
    """Draw ``n`` random scenes from ``seed`` (an int or a numpy Generator); reproducible.

    ``textured=False`` gives the flat dataset (:func:`ug_core.demo.shapes.sample_params`'s colours,
    zero texture amplitude). ``two_objects`` is the fraction of scenes with a second shape.
    """
    n = _check_n(n)
    if not isinstance(textured, bool):
        raise TypeError(f"textured must be a bool, got {type(textured).__name__}")
    if not 0.0 <= float(two_objects) <= 1.0:
        raise ValueError(f"two_objects must be a fraction in [0, 1], got {two_objects!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if textured:
        shape = _textured_shape_params(n, rng, labels)
    else:
        shape = shapes.sample_params(n, rng, labels)
    background = sample_texture(n, rng, amplitude=textured)
    foreground = sample_texture(n, rng, amplitude=textured)
    two = rng.uniform(size=n) < two_objects if two_objects > 0 else np.zeros(n, dtype=bool)
    second = _second_shapes(shape, two, rng)
    return SceneParams(shape, background, foreground, second, np.where(two, 2, 1))


def texture_noise(tex: TextureParams, size: int | Sequence[int]) -> torch.Tensor:
    """The textures' wave sums before the soft clip, area-sampled exactly: float64 (n, H, W).

    Each pixel holds the mean of the continuous field over its box, so the 2×2 block mean of a
    rendering at 2N equals the rendering at N up to rounding. Unit variance in the continuum.
    """
    h, w = _as_size(size)
    freq = torch.as_tensor(tex.freq)
    # Box mean of each wave over a pixel: sinc in each axis (numpy's sinc(x) = sin(πx)/(πx)).
    damp = torch.sinc(freq[..., 0] / w) * torch.sinc(freq[..., 1] / h)
    coef = torch.as_tensor(tex.weight) * damp * torch.exp(1j * torch.as_tensor(tex.phase))
    uc = (torch.arange(w, dtype=torch.float64) + 0.5) / w
    vc = (torch.arange(h, dtype=torch.float64) + 0.5) / h
    eu = torch.exp(2j * math.pi * freq[..., 0, None] * uc)  # (n, K, w)
    ev = torch.exp(2j * math.pi * freq[..., 1, None] * vc)  # (n, K, h)
    return torch.einsum("nkh,nkw->nhw", ev * coef[..., None], eu).real


def _texture_field(tex: TextureParams, h: int, w: int) -> torch.Tensor:
    """The textures' RGB deviation ``A·tanh(noise)·d`` on an h×w grid: float32 (n, 3, h, w)."""
    noise = texture_noise(tex, (h, w))
    amp = torch.as_tensor(tex.amplitude)[:, None, None, None]
    dev = amp * torch.tanh(noise)[:, None] * torch.as_tensor(tex.color_dir)[:, :, None, None]
    return dev.to(torch.float32)


def _coverage(shape: ShapeParams, h: int, w: int, s: int) -> torch.Tensor:
    """Supersampled coverage of each shape, (n, 1, h, w), as in :func:`shapes.render`."""
    us = (torch.arange(w * s, dtype=torch.float32) + 0.5) / (w * s)
    vs = (torch.arange(h * s, dtype=torch.float32) + 0.5) / (h * s)
    vv, uu = torch.meshgrid(vs, us, indexing="ij")
    inside = _inside(shape, uu.reshape(-1), vv.reshape(-1)).to(torch.float32)
    return inside.reshape(len(shape), h, s, w, s).mean(dim=(2, 4))[:, None]


def render(
    params: SceneParams, size: int | Sequence[int] = 32, supersample: int = 4
) -> torch.Tensor:
    """Render ``params`` at ``size`` (int or (H, W)): a float32 tensor (n, 3, H, W) in [-1, 1].

    The shapes' edges are anti-aliased with a ``supersample``×``supersample`` grid per pixel; the
    textures are area-sampled exactly (see the module docstring).
    """
    h, w = _as_size(size)
    if isinstance(supersample, bool) or not isinstance(supersample, int) or supersample < 1:
        raise ValueError(f"supersample must be an integer >= 1, got {supersample!r}")
    if not isinstance(params, SceneParams):
        raise TypeError(f"params must be SceneParams, got {type(params).__name__}")
    n = len(params)
    if n == 0:
        return torch.zeros(0, 3, h, w)
    flat = not params.textured.any()
    if flat and (params.count == 1).all():
        return shapes.render(params.shape, (h, w), supersample)  # the flat dataset's renderer
    cover = _coverage(params.shape, h, w, supersample)
    two = np.nonzero(params.count == 2)[0]
    if len(two):  # shapes never overlap: the union's coverage is the larger one
        cover[two] = torch.maximum(cover[two], _coverage(params.second[two], h, w, supersample))
    fg = torch.as_tensor(params.shape.color, dtype=torch.float32)[:, :, None, None]
    bg = background(params.shape, h, w)
    if not flat:
        fg = fg + _texture_field(params.foreground, h, w)
        bg = bg + _texture_field(params.background, h, w)
    return (cover * fg + (1 - cover) * bg).clamp(-1, 1)


def sample(
    n: int, size: int | Sequence[int] = 32, seed: int = 0, supersample: int = 4
) -> tuple[torch.Tensor, SceneParams]:
    """``n`` random textured one-shape scenes at ``size`` and their parameters."""
    params = sample_scene_params(n, seed)
    return render(params, size, supersample), params
