"""The shipped demo models by name, for ``ug sample --model NAME`` and the benchmarks.

============== ================================ ===========================================
name           folder (``ug_core/assets/``)     what it is
============== ================================ ===========================================
``shapes``     ``shapes32``                     pixel UNet2DModel, flat shapes, 32×32, DDPM
``textured``   ``textured32``                   the same UNet trained on textured scenes
``latent-flow`` ``latent_flow``                 AutoencoderKL (f = 4) + SD3Transformer2DModel,
                                                flow matching, textured scenes, 32×32
``video``      ``video32``                      UNetMotionModel (AnimateDiff structure), moving
                                                flat shapes, 8 frames of 32×32, DDIM
============== ================================ ===========================================

::

    from ug_core.demo.registry import shipped_model

    entry = shipped_model("textured")
    images = entry.sample_methods(n=4, factors=(2, 2), seed=0)   # naive / ug / bicubic
    truth = entry.ground_truth(256, (64, 64))                     # for the metrics

:meth:`ShippedModel.sample_methods` runs the three methods of ``ug sample`` for either kind of model
from the same seeds: the UNets through the core (:func:`ug_core.demo.model.generate`), the latent
model through the real ``StableDiffusion3Pipeline`` with
:func:`ug_core.adapters.diffusers.apply_upsample_guidance`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import metrics, shapes, textured

__all__ = ["SHIPPED", "ShippedModel", "shipped_model", "shipped_names"]

_ASSETS = Path(__file__).resolve().parent.parent / "assets"


@dataclass(frozen=True)
class ShippedModel:
    """One shipped model: where it lives, what kind it is, and what data it was trained on."""

    name: str
    """Registry name (``--model NAME``)."""
    folder: Path
    """Its folder under ``ug_core/assets``."""
    kind: str
    """``"unet"`` (a :class:`~ug_core.demo.model.DemoModel`), ``"latent-flow"`` or ``"video"``."""
    data: str
    """Training data: ``"flat"`` shapes or ``"textured"`` scenes."""
    default_cfg: float
    """Classifier-free guidance scale used by default."""
    default_steps: int
    """Sampling steps used by default."""
    description: str
    """One line for listings."""

    @property
    def trained_size(self) -> tuple[int, int]:
        """The size it was trained at (height, width), in pixels."""
        return (32, 32)

    @property
    def segment_threshold(self) -> float:
        """The segmentation threshold for its data (``metrics.count_objects(threshold=)``)."""
        return textured.SEGMENT_THRESHOLD if self.data == "textured" else shapes.MIN_CONTRAST / 2

    def load(self, device: str | torch.device = "cpu") -> Any:
        """The model: a ``DemoModel`` (UNets), a ``LatentFlow`` or a ``VideoModel``."""
        if self.kind == "unet":
            from .model import load

            return load(self.folder, device)
        if self.kind == "video":
            from .video import load as load_video

            return load_video(self.folder, device)
        from .latent import load_pipeline

        return load_pipeline(self.folder, device)

    def ground_truth(self, n: int, size: int | Sequence[int], seed: int = 10**6) -> torch.Tensor:
        """``n`` ground-truth images of its data at ``size`` (scenes from ``seed``)."""
        if self.data == "textured":
            return textured.render(textured.sample_scene_params(n, seed), size)
        return shapes.render(shapes.sample_params(n, seed), size)

    def summarize(self, images: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
        """One-object fraction, mean count and area, size W1 and Fréchet against ``reference``."""
        return metrics.summarize(images, reference, threshold=self.segment_threshold)

    def sample_methods(
        self,
        n: int = 4,
        factors: Sequence[Any] = (2, 2),
        seed: int = 0,
        steps: int | None = None,
        scale: float = 1.0,
        eta: float = 1.0,
        cfg: float | None = None,
        labels: torch.Tensor | None = None,
        model: Any = None,
        progress: bool = False,
    ) -> dict[str, torch.Tensor]:
        """``{"naive", "ug", "bicubic"}`` → images (n, 3, H, W) in [-1, 1], from the same seeds.

        Sample ``i`` has seed ``seed + i`` and label ``(seed + i) mod 4`` unless ``labels`` is
        given (``n`` class indices, the null class ``len(CLASSES)`` included); the trained-size run
        starts from ``√k·W[D[x_T]]`` of the same ``x_T`` (``model.low_res_noise``). ``factors``
        are integers or ratios p/q (``(3/2, 3/2)``: 48×48). ``model`` reuses a loaded model
        (:meth:`load`). ``progress`` shows the UNets' progress bars (the latent pipeline's own bar
        follows its ``set_progress_bar_config``).
        """
        from fractions import Fraction

        import torch.nn.functional as F

        from ..factors import normalize_factors
        from .model import generate, initial_noise, low_res_noise

        allowed = "two integers >= 1 or ratios p/q such as 3/2, not both 1"
        if not isinstance(factors, Sequence) or isinstance(factors, str) or len(factors) != 2:
            raise ValueError(f"factors must be {allowed}; got {factors!r}")
        factors = normalize_factors(factors, "factors")
        if factors == (1, 1):
            raise ValueError(f"factors must be {allowed}; got {factors!r}")
        if self.kind == "video":
            raise ValueError(
                f"sample_methods is for image models; {self.name!r} is a video model: use "
                "ug_core.demo.video.sample_methods"
            )
        if not isinstance(n, int) or isinstance(n, bool):
            raise TypeError(f"n must be an int (samples per method), got {type(n).__name__}")
        if n < 1:
            raise ValueError(f"n must be >= 1 (samples per method), got {n}")
        if labels is not None:
            labels = _check_labels(labels, n)
        steps = self.default_steps if steps is None else steps
        cfg = self.default_cfg if cfg is None else cfg
        th, tw = self.trained_size
        exact = (Fraction(th) * factors[0], Fraction(tw) * factors[1])
        if any(s.denominator != 1 for s in exact):
            raise ValueError(
                f"factors {factors!r} take the trained size {th}x{tw} to {exact[0]}x{exact[1]} "
                "pixels, not whole sizes"
            )
        size = (int(exact[0]), int(exact[1]))
        model = self.load() if model is None else model
        if labels is None:
            labels = torch.tensor([(seed + i) % len(shapes.CLASSES) for i in range(n)])
        if self.kind == "unet":
            noise = initial_noise(n, size, seed)
            common = dict(seed=seed, steps=steps, labels=labels, cfg=cfg, progress=progress)
            naive = generate(model, n, size, noise=noise, **common)
            ug = generate(model, n, size, noise=noise, factors=factors, scale=scale, eta=eta,
                          **common)  # fmt: skip
            small = generate(model, n, (th, tw), noise=low_res_noise(noise, factors), **common)
        else:
            from ..adapters.diffusers import apply_upsample_guidance, remove_upsample_guidance

            latents = model.initial_latents(n, size, seed)
            common = dict(labels=labels, steps=steps, cfg=cfg)
            naive = model.generate(size=size, latents=latents, **common)
            apply_upsample_guidance(model.pipe, factors=factors, scale=scale, eta=eta)
            try:
                ug = model.generate(size=size, latents=latents, **common)
            finally:
                remove_upsample_guidance(model.pipe)
            small_latents = low_res_noise(latents, factors)
            small = model.generate(size=(th, tw), latents=small_latents, **common)
        bicubic = F.interpolate(small, size=size, mode="bicubic", align_corners=False)
        return {"naive": naive, "ug": ug, "bicubic": bicubic.clamp(-1, 1)}


def _check_labels(labels: Sequence[int] | torch.Tensor, n: int) -> torch.Tensor:
    """``labels`` as a long tensor of n class indices (the null class included), or an error."""
    lab = torch.as_tensor(labels)
    if lab.is_floating_point() or lab.is_complex() or lab.dtype == torch.bool:
        raise TypeError(f"labels must be integers, got dtype {lab.dtype}")
    if lab.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) for n={n}, got {tuple(lab.shape)}")
    top = len(shapes.CLASSES)  # the null class
    if bool(((lab < 0) | (lab > top)).any()):
        raise ValueError(
            f"labels must lie in 0..{top} ({top} is the null class), got {lab.tolist()}"
        )
    return lab.long()


#: The shipped models, by name.
SHIPPED: dict[str, ShippedModel] = {
    m.name: m
    for m in (
        ShippedModel(
            "shapes",
            _ASSETS / "shapes32",
            "unet",
            "flat",
            2.0,
            30,
            "pixel UNet2DModel (DDPM), flat shapes, trained at 32x32",
        ),
        ShippedModel(
            "textured",
            _ASSETS / "textured32",
            "unet",
            "textured",
            2.0,
            30,
            "pixel UNet2DModel (DDPM), textured scenes, trained at 32x32",
        ),
        ShippedModel(
            "latent-flow",
            _ASSETS / "latent_flow",
            "latent-flow",
            "textured",
            2.0,
            20,
            "AutoencoderKL f=4 + SD3Transformer2DModel (flow matching), textured "
            "scenes, trained at 32x32 (8x8 latents)",
        ),
        ShippedModel(
            "video",
            _ASSETS / "video32",
            "video",
            "flat",
            2.0,
            20,
            "UNetMotionModel (AnimateDiff structure, DDIM), moving flat shapes, trained at 8 "
            "frames of 32x32",
        ),
    )  # fmt: skip
}


def shipped_names() -> tuple[str, ...]:
    """The names ``--model`` accepts for shipped models."""
    return tuple(SHIPPED)


def shipped_model(name: str) -> ShippedModel:
    """The shipped model called ``name``; ValueError naming the allowed names otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in SHIPPED:
        raise ValueError(f"no shipped model {name!r}; shipped models: {', '.join(SHIPPED)}")
    return SHIPPED[name]
