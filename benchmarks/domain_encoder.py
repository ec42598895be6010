"""A learned feature extractor for the proving ground, and the "domain Fréchet distance" on it.

FID compares Inception features; none can be downloaded here, and ImageNet features would not know
this domain anyway. :class:`DomainEncoder` is a small CNN trained (``python
benchmarks/training/train_encoder.py``) on procedural scenes, flat and textured, with one or two
shapes, at 32, 64 and 96 pixels (global pooling, so any size works), to predict what defines a
scene:

- the classes present (multi-label), the object count (1 or 2), whether the scene is textured;
- the shapes' area-weighted centre, total area and largest circumradius;
- the shape's and the background's base colours;
- each texture's spectral slope β, amplitude and anisotropy.

Its penultimate layer (:data:`FEATURE_DIM` features after the last hidden activation) is the
feature space of :func:`domain_frechet`, as Inception's pool features are FID's: a set of samples
is compared with ground truth by the Fréchet distance between Gaussians fitted to their features
(no standardisation). Duplicated objects move the count and area features, blur and grain the
texture ones, wrong colours and layouts the rest.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ug_core.demo.shapes import CLASSES
from ug_core.demo.textured import BETA_RANGE, MAX_ANISOTROPY, SceneParams

__all__ = [
    "ENCODER_DIR",
    "ENCODER_CONFIG",
    "FEATURE_DIM",
    "TARGETS",
    "DomainEncoder",
    "scene_targets",
    "load_encoder",
    "domain_frechet",
]

#: The trained encoder's folder (weights, configuration, training log and TRAINING.md).
ENCODER_DIR = Path(__file__).resolve().parent / "assets" / "domain_encoder"

#: Channel widths of the four stages, the hidden width and the feature dimension.
ENCODER_CONFIG = dict(channels=(32, 64, 128, 128), hidden=192, feature_dim=64)
#: Dimension of the features the Fréchet distance uses.
FEATURE_DIM = ENCODER_CONFIG["feature_dim"]

#: Regression targets, in the order of :func:`scene_targets`'s ``regression`` columns.
TARGETS = (
    "center_u", "center_v", "total_area", "max_radius",
    "color_r", "color_g", "color_b", "bg_r", "bg_g", "bg_b",
    "beta_bg", "beta_fg", "amplitude_bg", "amplitude_fg", "anisotropy_bg", "anisotropy_fg",
)  # fmt: skip
#: Regression targets that only exist for textured scenes (masked out for flat ones).
_TEXTURE_ONLY = ("beta_bg", "beta_fg", "anisotropy_bg", "anisotropy_fg")


def scene_targets(params: SceneParams) -> dict[str, torch.Tensor]:
    """The encoder's targets for a batch of scenes (float32 tensors, one row per scene).

    ``classes`` (n, 4) multi-hot, ``count`` (n,) 0 for one shape and 1 for two, ``textured`` (n,),
    ``regression`` (n, 16) roughly unit-scaled (:data:`TARGETS`), ``mask`` (n, 16) where they apply.
    """
    n = len(params)
    two = params.count == 2
    classes = np.zeros((n, len(CLASSES)))
    classes[np.arange(n), params.shape.label] = 1
    classes[np.nonzero(two)[0], params.second.label[two]] = 1
    a1 = params.shape.area
    a2 = np.where(two, params.second.area, 0.0)
    area = a1 + a2
    center = params.shape.center * a1[:, None] + params.second.center * a2[:, None]
    center /= area[:, None]
    radius = np.maximum(params.shape.radius, np.where(two, params.second.radius, 0.0))
    bg = (params.shape.bg_start + params.shape.bg_end) / 2
    beta_mid, beta_half = np.mean(BETA_RANGE), (BETA_RANGE[1] - BETA_RANGE[0]) / 2
    cols = [
        (center[:, 0] - 0.5) * 4, (center[:, 1] - 0.5) * 4, area * 10, (radius - 0.2) * 10,
        *params.shape.color.T, *bg.T,
        (params.background.beta - beta_mid) / beta_half,
        (params.foreground.beta - beta_mid) / beta_half,
        params.background.amplitude * 8, params.foreground.amplitude * 8,
        params.background.anisotropy / MAX_ANISOTROPY * 2 - 1,
        params.foreground.anisotropy / MAX_ANISOTROPY * 2 - 1,
    ]  # fmt: skip
    textured = params.textured
    mask = np.ones((n, len(TARGETS)))
    for name in _TEXTURE_ONLY:
        mask[:, TARGETS.index(name)] = textured
    f32 = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    return dict(
        classes=f32(classes),
        count=f32(two),
        textured=f32(textured),
        regression=f32(np.stack(cols, 1)),
        mask=f32(mask),
    )


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    """3×3 convolution, batch norm, GELU (a per-image norm would divide out colour and contrast)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.GELU()
    )


class DomainEncoder(nn.Module):
    """A VGG-style CNN with global mean and max pooling; ``features`` are its penultimate layer.

    Stages of two 3×3 convolutions, 2×2 max pooling between them (the last stage has one
    convolution); the input gets two extra channels holding each pixel's relative coordinates.
    """

    def __init__(
        self,
        channels: tuple[int, ...] = ENCODER_CONFIG["channels"],
        hidden: int = ENCODER_CONFIG["hidden"],
        feature_dim: int = ENCODER_CONFIG["feature_dim"],
    ) -> None:
        super().__init__()
        c = list(channels)
        # Full resolution first, to see pixel-scale detail; the two extra input channels hold the
        # pixel's relative coordinates (u, v) in [-1, 1], so that pooled features carry position.
        layers: list[nn.Module] = [_conv(5, c[0]), _conv(c[0], c[0])]
        for a, b in zip(c[:-2], c[1:-1], strict=True):
            layers += [nn.MaxPool2d(2), _conv(a, b), _conv(b, b)]
        layers += [nn.MaxPool2d(2), _conv(c[-2], c[-1])]
        self.body = nn.Sequential(*layers)
        self.neck = nn.Sequential(
            nn.Linear(2 * c[-1], hidden), nn.GELU(), nn.Linear(hidden, feature_dim), nn.GELU()
        )
        self.heads = nn.Linear(feature_dim, len(CLASSES) + 2 + len(TARGETS))
        self.config = dict(channels=tuple(c), hidden=hidden, feature_dim=feature_dim)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features (n, feature_dim) of images (n, 3, H, W) in [-1, 1], H, W ≥ 16."""
        if images.ndim != 4 or images.shape[1] != 3 or min(images.shape[-2:]) < 16:
            raise ValueError(
                f"images must have shape (n, 3, H, W) with H, W >= 16, got {tuple(images.shape)}"
            )
        n, _, hh, ww = images.shape
        v = torch.linspace(-1, 1, hh, dtype=images.dtype, device=images.device)
        u = torch.linspace(-1, 1, ww, dtype=images.dtype, device=images.device)
        grid = torch.stack(torch.meshgrid(u, v, indexing="xy")).expand(n, 2, hh, ww)
        h = self.body(torch.cat([images, grid], 1))
        pooled = torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)
        return self.neck(pooled)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Head outputs: ``classes``, ``count`` and ``textured`` (logits), ``regression``."""
        out = self.heads(self.embed(images))
        k = len(CLASSES)
        return dict(
            classes=out[:, :k],
            count=out[:, k],
            textured=out[:, k + 1],
            regression=out[:, k + 2 :],
        )

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 128) -> np.ndarray:
        """Penultimate features of ``images`` as float64 numpy (n, feature_dim), in eval mode."""
        was = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            parts = [
                self.embed(images[i : i + batch_size].to(device, torch.float32)).double().cpu()
                for i in range(0, len(images), batch_size)
            ]
        finally:
            self.train(was)
        return torch.cat(parts).numpy() if parts else np.zeros((0, self.config["feature_dim"]))


def load_encoder(
    path: str | Path | None = None, device: str | torch.device = "cpu"
) -> DomainEncoder:
    """Load the trained encoder (or one saved by the training script in ``path``)."""
    from safetensors.torch import load_file

    folder = ENCODER_DIR if path is None else Path(path)
    if not (folder / "config.json").is_file():
        raise ValueError(f"path {str(folder)!r} holds no config.json of a domain encoder")
    config = json.loads((folder / "config.json").read_text())
    model = DomainEncoder(tuple(config["channels"]), config["hidden"], config["feature_dim"])
    model.load_state_dict(load_file(folder / "model.safetensors"))
    return model.eval().requires_grad_(False).to(device)


def domain_frechet(
    images: torch.Tensor | np.ndarray,
    reference: torch.Tensor | np.ndarray,
    encoder: DomainEncoder | None = None,
) -> float:
    """Fréchet distance between the encoder's features of ``images`` and of ``reference``.

    Either argument may be images (n, 3, H, W) in [-1, 1] or features already computed
    (n, :data:`FEATURE_DIM`). Needs at least 2 rows on each side.
    """
    from ug_core.demo.metrics import frechet_distance

    encoder = encoder or load_encoder()

    def feats(x: torch.Tensor | np.ndarray) -> np.ndarray:
        if not isinstance(x, (np.ndarray, torch.Tensor)):
            x = torch.as_tensor(x)
        if x.ndim == 2:  # features already computed
            return x if isinstance(x, np.ndarray) else x.detach().double().cpu().numpy()
        return encoder.features(torch.as_tensor(x))

    a, b = feats(images), feats(reference)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 images on each side, got {len(a)} and {len(b)}")
    return frechet_distance(a, b, normalize=False)
