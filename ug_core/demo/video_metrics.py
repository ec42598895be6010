"""Metrics for moving-shape clips, defined from what :mod:`ug_core.demo.moving_shapes` guarantees.

A ground-truth clip has exactly one shape in every frame, of one class, size and colour, whose
centre moves in a straight line at constant speed and is reflected at the walls (at most one
bounce per axis). Each frame is analysed on its own, then the clip as a whole:

- **objects per frame**: :func:`ug_core.demo.metrics.segment` (pixels farther than half the
  dataset's minimum contrast from an affine background fitted to the border ring) and its
  8-connected components of at least 0.4 % of the frame. The *single-object rate* is the fraction
  of frames with exactly one.
- **the object** of a frame is its largest component: its centroid (u, v) in image sides, its area
  relative to the frame, its colour (the median over the component's interior, one pixel in), and
  its class: the class whose template (the dataset's shape of the same area, at the centroid, at
  the best of a grid of rotations) has the highest intersection-over-union with the component.
- **identity consistency** of a clip: the class is the same in every frame (*class consistent*),
  the colour drift (largest RGB distance of a frame's colour from the clip's median colour, in
  [-1, 1] units) is at most :data:`COLOUR_TOLERANCE`, and the size drift (range of the area over
  its median) is at most :data:`SIZE_TOLERANCE`. A clip is *identity consistent* when every frame
  has exactly one object and all three hold.
- **motion quality**: the centroid track against the best bouncing fit: per axis,
  ``p(t) = a + b·g(t)`` with ``g(t) = t``, or ``g(t) = t`` before a bounce time ``t_b`` and
  ``2 t_b − t`` after (``t_b`` on a grid of :data:`BOUNCE_GRID` times), least squares at the
  frame times ``(i + 0.5)/F``. The *motion residual* is the RMS distance of the track from the
  fit, in % of the image side; the fitted speed is ``|(b_u, b_v)|`` in image sides per clip. A
  *jump* is a frame-to-frame step longer than twice the dataset's fastest step (``2·v_max/F``)
  plus one pixel. A clip has *smooth motion* when it has no jump and its residual is at most
  :data:`RESIDUAL_TOLERANCE`.

The tolerances are set from ground truth (the test suite checks that ground-truth clips at 8 and
16 frames, 32 and 64 pixels pass them all, and that a duplicated object, a teleport, a colour
change or a change of class are caught).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

from .metrics import _background, _components, _to_numpy, segment
from .moving_shapes import SPEED_RANGE
from .shapes import _AREA_FACTOR, CLASSES, MIN_CONTRAST, ShapeParams, _inside

__all__ = [
    "BOUNCE_GRID",
    "COLOUR_TOLERANCE",
    "SIZE_TOLERANCE",
    "RESIDUAL_TOLERANCE",
    "MIN_AREA",
    "frame_objects",
    "classify",
    "fit_track",
    "analyze",
    "summarize",
]

#: Smallest component counted as an object, relative to the frame area.
MIN_AREA = 0.004
#: Largest colour drift of an identity-consistent clip (RGB distance, [-1, 1] units).
COLOUR_TOLERANCE = 0.15
#: Largest size drift (area range over median area) of an identity-consistent clip.
SIZE_TOLERANCE = 0.3
#: Largest motion residual of a smooth clip, in % of the image side.
RESIDUAL_TOLERANCE = 1.5
#: Bounce times tried by the motion fit (in [0, 1], the clip's time span).
BOUNCE_GRID = 201

_EIGHT = np.ones((3, 3), dtype=bool)
# Rotations tried per class: one period of each shape's symmetry.
_ANGLES = (
    np.zeros(1),
    np.linspace(0, math.pi / 2, 12, endpoint=False),
    np.linspace(0, 2 * math.pi / 3, 16, endpoint=False),
    np.linspace(0, math.pi / 2, 12, endpoint=False),
)


def _as_clips(clips: torch.Tensor | np.ndarray) -> np.ndarray:
    """Clips (n, 3, F, H, W) in [-1, 1] as float64 numpy, validated."""
    return _to_numpy(clips, "clips", "frames, H, W")


def classify(alpha: np.ndarray, supersample: int | None = None) -> tuple[int, float]:
    """The class of one object by template matching: (class index, best soft IoU).

    ``alpha`` (H, W) is the object's coverage of each pixel in [0, 1] (a binary mask works too).
    Each class's template has the object's area and centroid (both from ``alpha``) and the best
    rotation of a grid covering one symmetry period; the score is the soft IoU
    ``Σ min(alpha, cover) / Σ max(alpha, cover)`` with the template's pixel coverage. Returns
    (-1, 0.0) for an empty ``alpha``. The templates are anti-aliased on a ``supersample``² grid
    per pixel (default: 128 points across the image's longer side, at least 1 per pixel).
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    h, w = alpha.shape
    total = alpha.sum()
    if total <= 0:
        return -1, 0.0
    rows, cols = np.nonzero(alpha > 0)
    cv = ((np.arange(h) + 0.5) * alpha.sum(1)).sum() / total / h
    cu = ((np.arange(w) + 0.5) * alpha.sum(0)).sum() / total / w
    rel = total / (h * w)
    labels, radii, angles = [], [], []
    for k in range(len(CLASSES)):
        r = math.sqrt(rel / _AREA_FACTOR[k])
        labels += [k] * len(_ANGLES[k])
        radii += [r] * len(_ANGLES[k])
        angles += list(_ANGLES[k])
    n = len(labels)
    # A window around the centroid holding every template and the object.
    reach = 1.2 * max(radii)
    r0 = max(0, min(rows.min(), int(math.floor((cv - reach) * h))))
    r1 = min(h, max(rows.max() + 1, int(math.ceil((cv + reach) * h))))
    c0 = max(0, min(cols.min(), int(math.floor((cu - reach) * w))))
    c1 = min(w, max(cols.max() + 1, int(math.ceil((cu + reach) * w))))
    s = supersample or max(1, 128 // max(h, w))
    us = (c0 + (torch.arange((c1 - c0) * s, dtype=torch.float32) + 0.5) / s) / w
    vs = (r0 + (torch.arange((r1 - r0) * s, dtype=torch.float32) + 0.5) / s) / h
    vv, uu = torch.meshgrid(vs, us, indexing="ij")
    zeros = np.zeros((n, 3))
    params = ShapeParams(
        np.asarray(labels), np.tile([cu, cv], (n, 1)), np.asarray(radii), np.asarray(angles),
        zeros, zeros, zeros, np.zeros(n),
    )  # fmt: skip
    inside = _inside(params, uu.reshape(-1), vv.reshape(-1)).to(torch.float32)
    cover = inside.reshape(n, r1 - r0, s, c1 - c0, s).mean(dim=(2, 4)).double().numpy()
    crop = alpha[r0:r1, c0:c1][None]
    iou = np.minimum(cover, crop).sum((1, 2)) / np.maximum(cover, crop).sum((1, 2))
    best = int(np.argmax(iou))
    return int(labels[best]), float(iou[best])


def frame_objects(clips: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """Per frame of each clip: the object count and the largest object's properties.

    Returns arrays indexed (clip, frame): ``count`` (int), ``area`` (relative, 0 where no object),
    ``centroid`` (u, v in image sides; NaN where no object), ``colour`` (RGB; NaN where none),
    ``label`` (class by :func:`classify`; -1 where none) and ``iou`` (its template IoU).
    """
    x = _as_clips(clips)
    n, _, f, h, w = x.shape
    count = np.zeros((n, f), dtype=np.int64)
    area = np.zeros((n, f))
    centroid = np.full((n, f, 2), np.nan)
    colour = np.full((n, f, 3), np.nan)
    label = np.full((n, f), -1, dtype=np.int64)
    iou = np.zeros((n, f))
    frames = x.transpose(0, 2, 1, 3, 4).reshape(n * f, 3, h, w)
    masks = segment(frames).reshape(n, f, h, w)
    ring = max(1, min(h, w) // 32)
    grow = max(1, min(h, w) // 32)
    for i in range(n):
        for j in range(f):
            comps = _components(masks[i, j], MIN_AREA)
            count[i, j] = len(comps)
            if not comps:
                continue
            obj = max(comps, key=lambda c: c.sum())
            img = x[i, :, j]
            core = ndimage.binary_erosion(obj, structure=_EIGHT)
            core = core if core.any() else obj
            colour[i, j] = np.median(img[:, core], axis=1)
            # Coverage: the pixel's position between background and object colour, near the
            # object only (anti-aliased and motion-blurred edges count fractionally).
            bg = _background(img, ring, MIN_CONTRAST / 2)
            d = colour[i, j][:, None, None] - bg
            alpha = ((img - bg) * d).sum(0) / np.maximum((d * d).sum(0), 1e-6)
            near = ndimage.binary_dilation(obj, structure=_EIGHT, iterations=grow)
            alpha = np.where(near, np.clip(alpha, 0.0, 1.0), 0.0)
            total = alpha.sum()
            area[i, j] = total / (h * w)
            centroid[i, j] = (
                ((np.arange(w) + 0.5) * alpha.sum(0)).sum() / total / w,
                ((np.arange(h) + 0.5) * alpha.sum(1)).sum() / total / h,
            )
            label[i, j], iou[i, j] = classify(alpha)
    return dict(count=count, area=area, centroid=centroid, colour=colour, label=label, iou=iou)


def _bounce_design(times: np.ndarray, grid: int = BOUNCE_GRID) -> np.ndarray:
    """``g(t)`` for every candidate: (grid + 1, len(times)); row 0 is no bounce."""
    tb = np.linspace(0.0, 1.0, grid)[:, None]
    bounced = np.where(times[None] < tb, times[None], 2 * tb - times[None])
    return np.concatenate([times[None], bounced])


def fit_track(times: np.ndarray, track: np.ndarray) -> tuple[float, np.ndarray]:
    """Best bouncing fit of a centroid track: (RMS residual in image sides, velocity (2,)).

    ``track`` (T, 2) holds (u, v) at ``times`` (T,) in [0, 1]; NaN rows are left out. Each axis is
    ``a + b·g(t)`` with at most one bounce (see the module docstring). NaN where fewer than
    three points remain.
    """
    times, track = np.asarray(times, dtype=np.float64), np.asarray(track, dtype=np.float64)
    ok = ~np.isnan(track).any(1)
    if ok.sum() < 3:
        return float("nan"), np.full(2, np.nan)
    t, p = times[ok], track[ok]
    g = _bounce_design(t)  # (K, T)
    gm = g - g.mean(1, keepdims=True)
    denom = np.maximum((gm * gm).sum(1), 1e-12)  # (K,)
    sq = np.zeros(2)
    velocity = np.zeros(2)
    for axis in range(2):
        y = p[:, axis] - p[:, axis].mean()
        b = (gm * y[None]).sum(1) / denom  # (K,)
        resid = ((y[None] - b[:, None] * gm) ** 2).sum(1)
        best = int(np.argmin(resid))
        sq[axis], velocity[axis] = resid[best], b[best]
    return float(math.sqrt(sq.sum() / len(t))), velocity


def analyze(
    clips: torch.Tensor | np.ndarray, labels: np.ndarray | torch.Tensor | None = None
) -> dict[str, np.ndarray]:
    """Per-clip metrics (arrays of length n); see the module docstring.

    Keys: ``one_object`` (fraction of frames with exactly one object), ``class_consistent``,
    ``class_match`` (fraction of frames whose class is ``labels``; NaN without labels),
    ``colour_drift``, ``size_drift``, ``identity`` (identity consistent), ``residual`` (% of the
    image side), ``speed`` (image sides per clip), ``jump`` (has a jump), ``smooth`` (smooth
    motion), ``iou`` (mean template IoU of the frames with an object).
    """
    x = _as_clips(clips)
    n, _, f, h, w = x.shape
    obj = frame_objects(x)
    times = (np.arange(f) + 0.5) / f
    jump_limit = 2 * SPEED_RANGE[1] / f + 1.0 / min(h, w)
    out = {
        k: np.full(n, np.nan)
        for k in (
            "one_object", "class_consistent", "class_match", "colour_drift", "size_drift",
            "identity", "residual", "speed", "jump", "smooth", "iou",
        )
    }  # fmt: skip
    if labels is not None:
        labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
    for i in range(n):
        single = obj["count"][i] == 1
        seen = obj["count"][i] >= 1
        out["one_object"][i] = single.mean()
        cls = obj["label"][i][seen]
        consistent = bool(seen.all()) and len(np.unique(cls)) == 1
        out["class_consistent"][i] = float(consistent)
        if labels is not None:
            out["class_match"][i] = float((obj["label"][i] == labels[i]).mean())
        if seen.any():
            col = obj["colour"][i][seen]
            out["colour_drift"][i] = np.linalg.norm(col - np.median(col, 0), axis=1).max()
            ar = obj["area"][i][seen]
            out["size_drift"][i] = (ar.max() - ar.min()) / np.median(ar)
            out["iou"][i] = obj["iou"][i][seen].mean()
        else:
            out["colour_drift"][i] = out["size_drift"][i] = np.inf
            out["iou"][i] = 0.0
        out["identity"][i] = float(
            bool(single.all())
            and consistent
            and out["colour_drift"][i] <= COLOUR_TOLERANCE
            and out["size_drift"][i] <= SIZE_TOLERANCE
        )
        track = obj["centroid"][i]
        resid, vel = fit_track(times, track)
        out["residual"][i] = 100 * resid
        out["speed"][i] = float(np.hypot(*vel))
        steps = np.linalg.norm(np.diff(track[seen], axis=0), axis=1)
        out["jump"][i] = float(bool((steps > jump_limit).any()) or seen.sum() < f)
        out["smooth"][i] = float(not out["jump"][i] and resid * 100 <= RESIDUAL_TOLERANCE)
    return out


def summarize(
    clips: torch.Tensor | np.ndarray, labels: np.ndarray | torch.Tensor | None = None
) -> dict[str, float]:
    """Aggregate metrics of a set of clips (fractions in [0, 1]; residual in % of the side).

    ``one_object`` is the per-frame single-object rate over all frames; ``identity``,
    ``class_consistent``, ``smooth`` and ``jump_free`` are fractions of clips; ``class_match``
    (with ``labels``) the fraction of frames of the requested class; ``colour_drift``,
    ``size_drift``, ``iou`` and ``speed`` are means over clips (drifts over clips with an object);
    ``residual`` is the median over clips (NaN tracks count as infinite) and ``residual_mean``
    the mean over clips with a track.
    """
    per = analyze(clips, labels)
    finite = lambda a: a[np.isfinite(a)]  # noqa: E731
    resid = np.where(np.isnan(per["residual"]), np.inf, per["residual"])
    out = {
        "one_object": float(per["one_object"].mean()),
        "identity": float(per["identity"].mean()),
        "class_consistent": float(per["class_consistent"].mean()),
        "colour_drift": float(finite(per["colour_drift"]).mean()),
        "size_drift": float(finite(per["size_drift"]).mean()),
        "iou": float(per["iou"].mean()),
        "residual": float(np.median(resid)),
        "residual_mean": float(finite(per["residual"]).mean()),
        "jump_free": float(1 - per["jump"].mean()),
        "smooth": float(per["smooth"].mean()),
        "speed": float(finite(per["speed"]).mean()),
    }
    if labels is not None:
        out["class_match"] = float(per["class_match"].mean())
    return out
