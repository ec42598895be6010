"""Metrics for shape images: object count, object size, and a Fréchet distance on defined features.

- :func:`segment`: foreground mask; a pixel is foreground when its colour is farther than
  ``threshold`` from an affine background ``c(u, v) = c0 + c1·u + c2·v`` fitted robustly to the
  image's border ring.
- :func:`count_objects`: 8-connected foreground components covering at least ``min_area`` of the
  image, and the largest one's area relative to the image.
- :func:`size_distance`: Wasserstein-1 distance between two samples of that relative area.
- :func:`features` / :func:`frechet_distance`: 40 hand-crafted, resolution-free features (layout
  and colour, texture, object geometry; :data:`FEATURE_GROUPS`), standardised by the reference
  set, and the Fréchet distance between Gaussians fitted to them.

Why hand-crafted features and not a feature network: ``docs/design.md``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy import linalg, ndimage

from .shapes import MIN_CONTRAST

__all__ = [
    "FEATURE_GROUPS",
    "segment",
    "count_objects",
    "size_distance",
    "features",
    "frechet_distance",
    "summarize",
]

_EIGHT = np.ones((3, 3), dtype=bool)

#: Columns of :func:`features` by what they measure: layout and colour (4×4 luminance, channel
#: means and spreads), texture and sharpness (radial power spectrum, gradient histogram), and
#: object geometry (count, largest area, foreground fraction, compactness).
FEATURE_GROUPS = {"layout": slice(0, 22), "texture": slice(22, 36), "geometry": slice(36, 40)}


def _to_numpy(
    images: torch.Tensor | np.ndarray, name: str = "images", axes: str = "H, W"
) -> np.ndarray:
    """Images (n, 3, H, W) (or clips, with ``axes`` "frames, H, W") in [-1, 1] as float64."""
    x = images.detach().cpu().double().numpy() if isinstance(images, torch.Tensor) else images
    x = np.asarray(x, dtype=np.float64)
    ndim = 2 + len(axes.split(","))
    if x.ndim == ndim - 1:
        x = x[None]
    if x.ndim != ndim or x.shape[1] != 3:
        raise ValueError(f"{name} must have shape (n, 3, {axes}), got {x.shape}")
    return np.clip(x, -1.0, 1.0)


def _background(img: np.ndarray, ring: int, threshold: float) -> np.ndarray:
    """The affine background model of one image (3, H, W), fitted robustly on its border ring."""
    _, h, w = img.shape
    vv, uu = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
    border = np.zeros((h, w), dtype=bool)
    border[:ring], border[-ring:], border[:, :ring], border[:, -ring:] = True, True, True, True
    design = np.stack([np.ones_like(uu), uu, vv], -1)  # (h, w, 3)
    a, y = design[border], img[:, border].T  # (m, 3), (m, 3 channels)
    keep = np.ones(len(a), dtype=bool)
    for _ in range(3):  # refit without border pixels that belong to an object
        coef, *_ = np.linalg.lstsq(a[keep], y[keep], rcond=None)
        resid = np.linalg.norm(a @ coef - y, axis=1)
        new = resid < max(threshold, 3 * np.median(resid))
        if new.sum() < 3 or (new == keep).all():
            break
        keep = new
    return np.einsum("hwk,kc->chw", design, coef)


def segment(images: torch.Tensor | np.ndarray, threshold: float = MIN_CONTRAST / 2) -> np.ndarray:
    """Foreground masks (n, H, W): pixels farther than ``threshold`` from the fitted background.

    The default suits the flat dataset; textured scenes use
    :data:`ug_core.demo.textured.SEGMENT_THRESHOLD`.
    """
    if not isinstance(threshold, (int, float)) or not threshold > 0:
        raise ValueError(f"threshold must be a positive number, got {threshold!r}")
    x = _to_numpy(images)
    ring = max(1, min(x.shape[-2:]) // 32)
    masks = np.empty((x.shape[0],) + x.shape[2:], dtype=bool)
    for i, img in enumerate(x):
        masks[i] = np.linalg.norm(img - _background(img, ring, threshold), axis=0) > threshold
    return masks


def _components(mask: np.ndarray, min_area: float) -> list[np.ndarray]:
    """The 8-connected components of ``mask`` covering at least ``min_area`` of it (as masks)."""
    labels, n = ndimage.label(mask, structure=_EIGHT)
    if n == 0:
        return []
    sizes = np.bincount(labels.ravel())[1:]
    big = np.nonzero(sizes >= max(1.0, min_area * mask.size))[0] + 1
    return [labels == k for k in big]


def count_objects(
    images: torch.Tensor | np.ndarray,
    min_area: float = 0.004,
    threshold: float = MIN_CONTRAST / 2,
) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the number of objects and the largest one's area relative to the image.

    An object is an 8-connected foreground component (see :func:`segment`) covering at least
    ``min_area`` of the image; the area is 0 where there is none. ``threshold``: as in
    :func:`segment`.
    """
    masks = segment(images, threshold)
    counts = np.zeros(len(masks), dtype=np.int64)
    areas = np.zeros(len(masks))
    for i, m in enumerate(masks):
        comps = _components(m, min_area)
        counts[i] = len(comps)
        if comps:
            areas[i] = max(c.sum() for c in comps) / m.size
    return counts, areas


def size_distance(areas: np.ndarray, reference: np.ndarray) -> float:
    """Wasserstein-1 distance between two samples of relative object area (same unit: fraction)."""
    from scipy.stats import wasserstein_distance

    return float(wasserstein_distance(np.asarray(areas), np.asarray(reference)))


def _radial_spectrum(lum: np.ndarray, bands: int = 8) -> np.ndarray:
    """Mean log power of ``lum`` (H, W) in ``bands`` radial bands (frequency / Nyquist)."""
    h, w = lum.shape
    power = np.abs(np.fft.fft2(lum - lum.mean())) ** 2 / (h * w)
    fy, fx = np.meshgrid(np.fft.fftfreq(h) * 2, np.fft.fftfreq(w) * 2, indexing="ij")
    radius = np.sqrt(fx**2 + fy**2)  # 1 = Nyquist along an axis
    edges = np.linspace(0.0, 1.0, bands + 1)
    out = np.empty(bands)
    for b in range(bands):
        sel = (radius > edges[b]) & (radius <= edges[b + 1])
        out[b] = np.log10(power[sel].mean() + 1e-8)
    return out


def features(
    images: torch.Tensor | np.ndarray,
    min_area: float = 0.004,
    threshold: float = MIN_CONTRAST / 2,
) -> np.ndarray:
    """The 40 features of each image (n, 40), float64; see the module docstring.

    ``threshold`` is the segmentation threshold of :func:`segment`.
    """
    x = _to_numpy(images)
    n, _, h, w = x.shape
    lum = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    masks = segment(x, threshold)
    out = np.empty((n, 40))
    for i in range(n):
        f = []
        blocks = lum[i][: h // 4 * 4, : w // 4 * 4].reshape(4, h // 4, 4, w // 4).mean((1, 3))
        f += list(blocks.ravel())  # 16: layout
        f += list(x[i].mean((1, 2))) + list(x[i].std((1, 2)))  # 6: colour
        f += list(_radial_spectrum(lum[i]))  # 8: sharpness / texture
        gy, gx = np.gradient(lum[i])
        grad = np.sqrt((gx * w) ** 2 + (gy * h) ** 2)  # per image side: resolution-free
        hist = np.histogram(grad, bins=[0, 0.5, 2, 6, 20, 60, np.inf])[0] / grad.size
        f += list(hist)  # 6: edge sharpness
        comps = _components(masks[i], min_area)
        count = min(len(comps), 5)
        largest = max(comps, key=lambda c: c.sum()) if comps else None
        area = largest.sum() / masks[i].size if comps else 0.0
        if largest is not None:
            edge = largest & ~ndimage.binary_erosion(largest, structure=_EIGHT)
            perim = edge.sum() / math.sqrt(masks[i].size)
            compact = 4 * math.pi * area / max(perim**2, 1e-8)
        else:
            compact = 0.0
        f += [count, area, masks[i].mean(), compact]  # 4: geometry
        out[i] = f
    return out


def frechet_distance(feats: np.ndarray, reference: np.ndarray, normalize: bool = True) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows = samples).

    With ``normalize``, both sets are standardised by the reference set's mean and standard
    deviation first (floored at 0.01, so that a feature constant in the
    reference does not dominate).
    """
    a, b = np.asarray(feats, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if normalize:
        mu, sd = b.mean(0), np.maximum(b.std(0), 1e-2)
        a, b = (a - mu) / sd, (b - mu) / sd
    m1, m2 = a.mean(0), b.mean(0)
    ridge = 1e-6 * np.eye(a.shape[1])  # constant features make a covariance singular
    c1, c2 = np.cov(a, rowvar=False) + ridge, np.cov(b, rowvar=False) + ridge
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # near-singular products: the real part is what counts
        covmean = linalg.sqrtm(c1 @ c2)
    covmean = np.real(covmean[0] if isinstance(covmean, tuple) else covmean)
    return float(((m1 - m2) ** 2).sum() + np.trace(c1 + c2 - 2 * covmean))


def summarize(
    images: torch.Tensor | np.ndarray,
    reference: torch.Tensor | np.ndarray | None = None,
    reference_features: np.ndarray | None = None,
    reference_areas: np.ndarray | None = None,
    threshold: float = MIN_CONTRAST / 2,
) -> dict[str, float]:
    """Metrics of a set of images, against a reference set (ground truth) when given.

    Returns ``one_object`` (fraction with exactly one object), ``mean_count`` and ``mean_area``;
    with a reference also ``size_w1`` (:func:`size_distance`) and ``frechet``
    (:func:`frechet_distance`, needs at least 2 images on each side). ``threshold``: the
    segmentation threshold of :func:`segment` (textured scenes need their own).
    """
    counts, areas = count_objects(images, threshold=threshold)
    out = {
        "one_object": float((counts == 1).mean()),
        "mean_count": float(counts.mean()),
        "mean_area": float(areas.mean()),
    }
    if reference is not None:
        if reference_areas is None:
            reference_areas = count_objects(reference, threshold=threshold)[1]
        if reference_features is None:
            reference_features = features(reference, threshold=threshold)
    if reference_areas is not None:
        out["size_w1"] = size_distance(areas, reference_areas)
    if reference_features is not None and len(counts) > 1:
        out["frechet"] = frechet_distance(features(images, threshold=threshold), reference_features)
    return out
