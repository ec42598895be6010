"""What only the benchmarks need: the baselines UG is compared with, and model-call counting.

- :func:`lanczos`: Lanczos upscaling of trained-size samples (PIL), next to bicubic;
- :func:`sdedit`: SDEdit at the images' size (noise to timestep ``strength·(N − 1)``, then DDIM
  back to 0), the second half of HiRes.fix; it samples a :class:`TruncatedSchedule` view of the
  demo model.
- :class:`CallCounter`: counts the UNet calls of a demo model and the pixels they process, through
  a forward pre-hook on the UNet (:meth:`CallCounter.attach`), so the sampling code carries no
  counter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ug_core.demo.model import DemoModel, default_labels, generate, initial_noise
from ug_core.schedules import DiscreteSchedule


@dataclass
class CallCounter:
    """Counts model calls and the pixels they process (batch × height × width per call)."""

    calls: int = 0
    pixels: int = 0
    by_size: dict[tuple[int, int], int] = field(default_factory=dict)

    def add(self, x: torch.Tensor) -> None:
        """Record one call on input ``x`` (n, C, H, W)."""
        self.calls += 1
        self.pixels += x.shape[0] * x.shape[-2] * x.shape[-1]
        key = (int(x.shape[-2]), int(x.shape[-1]))
        self.by_size[key] = self.by_size.get(key, 0) + 1

    def reset(self) -> None:
        """Zero the counts."""
        self.calls, self.pixels, self.by_size = 0, 0, {}

    def attach(self, model: DemoModel) -> Any:
        """Count every call of ``model.unet`` from now on; returns the hook (``.remove()`` it)."""
        return model.unet.register_forward_pre_hook(lambda module, args: self.add(args[0]))


class TruncatedSchedule:
    """A :class:`DemoModel` seen through its schedule cut at timestep ``t0`` (for :func:`sdedit`).

    Timesteps keep their indices, so the UNet gets the same ``t`` as in the full schedule.
    """

    def __init__(self, model: DemoModel, t0: int) -> None:
        self._model = model
        self.schedule = DiscreteSchedule(model.schedule.alphas_cumprod[: t0 + 1])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def sdedit(
    model: DemoModel,
    images: torch.Tensor,
    strength: float,
    seed: int = 0,
    steps: int = 25,
    labels: torch.Tensor | None = None,
    cfg: float = 1.0,
    batch_size: int = 64,
    progress: bool = True,
    factors: int | Sequence[int] | None = None,
    scale: float = 1.0,
    eta: float = 1.0,
) -> torch.Tensor:
    """SDEdit at the images' size: noise to timestep ``strength·(N − 1)``, then DDIM back to 0.

    Deterministic DDIM on the schedule truncated at that timestep, with ``round(strength·steps)``
    steps; the noise comes from seeds ``seed + 10**6 + i``. With ``factors``, that pass is
    upsample-guided (``scale``, ``eta`` as in ``generate``; η is a fraction of the truncated time
    axis): HiRes.fix with UG in its high-resolution pass.
    """
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength!r}")
    n = images.shape[0]
    ac = model.schedule.alphas_cumprod
    t0 = int(round(strength * (len(ac) - 1)))
    k = max(1, int(round(strength * steps)))
    eps = initial_noise(n, images.shape[-2:], seed + 10**6, images.shape[1])
    xt = ac[t0].sqrt().float() * images + (1 - ac[t0]).sqrt().float() * eps
    if labels is None:
        labels = default_labels(model, n, seed)
    return generate(
        TruncatedSchedule(model, t0), n, images.shape[-2:], seed, k, labels=labels, cfg=cfg,
        noise=xt, batch_size=batch_size, progress=progress, desc=f"SDEdit {strength}",
        factors=factors, scale=scale, eta=eta,
    )  # fmt: skip


def lanczos(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Lanczos upscaling (PIL, per channel in float32)."""
    from PIL import Image

    out = np.empty((images.shape[0], images.shape[1], *size), dtype=np.float32)
    arr = images.numpy().astype(np.float32)
    for i in range(arr.shape[0]):
        for c in range(arr.shape[1]):
            img = Image.fromarray(arr[i, c], mode="F")
            out[i, c] = np.asarray(img.resize((size[1], size[0]), Image.LANCZOS))
    return torch.from_numpy(out).clamp(-1, 1)
