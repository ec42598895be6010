"""The embedded demo model (or any local UNet2DModel / DDPMPipeline folder) and DDIM sampling of it.

:func:`generate` samples with :func:`ug_core.adapters.loops.sample_ddim`, optionally guided by an
:class:`ug_core.UpsampleGuidance` on the model's own schedule::

    model = load()                                               # the embedded 32×32 model
    x = generate(model, n=4, size=64, seed=0, factors=(2, 2))    # UG 2×, images in [-1, 1]
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..adapters.loops import sample_ddim
from ..guidance import UpsampleGuidance
from ..operators import block_size, check_divisible, downsample, normalize_factors, whiten
from ..schedules import DiscreteSchedule

__all__ = [
    "ASSET_DIR",
    "SCHEDULER_CONFIG",
    "DemoModel",
    "ModelLoadError",
    "load",
    "initial_noise",
    "default_labels",
    "generate",
    "low_res_noise",
]

#: The embedded model's folder (``UNet2DModel.save_pretrained`` + ``scheduler_config.json``).
ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "shapes32"

#: The DDPMScheduler's configuration of the embedded image models (shapes32, textured32): 1000
#: linear-beta steps, ε-prediction, x0 clipped to [-1, 1]. Training writes it
#: (``benchmarks/training/train.py``); the video model's DDIM schedule extends it.
SCHEDULER_CONFIG: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_schedule="linear",
    beta_start=1e-4,
    beta_end=0.02,
    prediction_type="epsilon",
    clip_sample=True,
    clip_sample_range=1.0,
)


class ModelLoadError(ValueError):
    """A folder that holds no loadable UNet2DModel or DDPMPipeline."""


class DemoModel:
    """A diffusers UNet2DModel with its noise schedule, as ``model(x, t) -> prediction``.

    ``classes`` names the classes of a class-conditional model (label ``i`` is ``classes[i]``) and
    ``null_class`` is the label trained as "no class" (for classifier-free guidance), if any.
    """

    def __init__(
        self,
        unet: Any,
        scheduler_config: dict[str, Any],
        classes: Sequence[str] | None = None,
        null_class: int | None = None,
    ) -> None:
        from diffusers import DDPMScheduler

        self.unet = unet.eval().requires_grad_(False)
        sched = DDPMScheduler.from_config(scheduler_config)
        self.schedule = DiscreteSchedule(sched.alphas_cumprod.double())
        self.prediction = str(sched.config.prediction_type)
        clip = bool(getattr(sched.config, "clip_sample", False))
        self.clip_sample = float(sched.config.clip_sample_range) if clip else None
        size = unet.config.sample_size
        self.sample_size = (size, size) if isinstance(size, int) else tuple(size)
        self.num_class_embeds = unet.config.num_class_embeds
        n = self.num_class_embeds or 0
        self.classes = tuple(classes) if classes else tuple(f"class {i}" for i in range(n))
        self.null_class = null_class

    @property
    def conditional(self) -> bool:
        """Whether the UNet takes class labels."""
        return bool(self.num_class_embeds)

    @property
    def device(self) -> torch.device:
        """The UNet's device."""
        return next(self.unet.parameters()).device

    def to(self, device: str | torch.device) -> DemoModel:
        """Move the UNet to ``device`` (in place); returns self."""
        self.unet.to(device)
        return self

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One UNet call: the prediction for ``x`` at timesteps ``t``."""
        with torch.no_grad():
            out = self.unet(x, t, class_labels=class_labels, return_dict=False)[0]
        # A learned-variance UNet returns (prediction, variance) stacked on the channels.
        return out[:, : x.shape[1]] if out.shape[1] == 2 * x.shape[1] else out

    def model_fn(
        self, labels: torch.Tensor | None = None, cfg: float = 1.0
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``fn(x, t) -> prediction`` for the given labels, with classifier-free guidance ``cfg``.

        With ``cfg != 1`` the conditional and the null-class halves run as one doubled batch.
        """
        if not self.conditional:
            return lambda x, t: self(x, t)
        if labels is None:
            raise ValueError("labels are required for a class-conditional model")
        if cfg == 1.0:
            return lambda x, t: self(x, t, labels.to(x.device))
        if self.null_class is None:
            raise ValueError(
                f"cfg={cfg!r} needs a model with a null class; this one has none (use cfg=1)"
            )

        def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            """Classifier-free guidance as one doubled batch."""
            y = labels.to(x.device)
            null = torch.full_like(y, self.null_class)
            both = self(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
            cond, uncond = both.chunk(2)
            return uncond + cfg * (cond - uncond)

        return fn


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON file as a dict, with a clear error."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"cannot read {path}: {err}") from err
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} does not hold a JSON object")
    return data


def load(path: str | Path | None = None, device: str | torch.device = "cpu") -> DemoModel:
    """Load a local UNet2DModel folder or DDPMPipeline folder (default: the embedded model).

    A UNet folder holds ``config.json`` (``_class_name: UNet2DModel``) and its weights, plus an
    optional ``scheduler_config.json`` (default: DDPM's 1000 linear-beta steps, epsilon). A
    pipeline folder holds ``model_index.json`` with ``unet/`` and ``scheduler/`` subfolders.
    Raises :class:`ModelLoadError` for anything else.
    """
    from diffusers import UNet2DModel

    folder = ASSET_DIR if path is None else Path(path)
    if not folder.is_dir():
        raise ModelLoadError(f"model path {str(folder)!r} is not a folder")
    if (folder / "model_index.json").is_file():
        index = _read_json(folder / "model_index.json")
        if "unet" not in index or "text_encoder" in index or "vae" in index:
            raise ModelLoadError(
                f"{folder} is a {index.get('_class_name', 'diffusers')} folder, not a DDPMPipeline"
                " (use --pipeline PATH --prompt TEXT for a Stable Diffusion-style pipeline)"
            )
        unet_dir, sched_file = folder / "unet", folder / "scheduler" / "scheduler_config.json"
    else:
        unet_dir, sched_file = folder, folder / "scheduler_config.json"
    config_file = unet_dir / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(
            f"{folder} holds no UNet2DModel (no {config_file.relative_to(folder.parent)}) and no "
            "model_index.json"
        )
    config = _read_json(config_file)
    if config.get("_class_name") != "UNet2DModel":
        raise ModelLoadError(
            f"{config_file} describes a {config.get('_class_name')!r}, not a UNet2DModel"
        )
    try:
        unet = UNet2DModel.from_pretrained(unet_dir, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as err:
        raise ModelLoadError(f"cannot load the UNet2DModel in {unet_dir}: {err}") from err
    sched = _read_json(sched_file) if sched_file.is_file() else {}
    extra = folder / "classes.json"
    meta = _read_json(extra) if extra.is_file() else {}
    model = DemoModel(unet, sched, meta.get("classes"), meta.get("null_class"))
    return model.to(device)


def initial_noise(
    n: int, size: Sequence[int], seed: int, channels: int = 3, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """x_T for samples ``seed, seed + 1, …``: each drawn from its own generator (batch-free)."""
    h, w = size
    out = [
        torch.randn(channels, h, w, generator=torch.Generator().manual_seed(seed + i))
        for i in range(n)
    ]
    return torch.stack(out).to(device)


def default_labels(model: DemoModel, n: int, seed: int) -> torch.Tensor | None:
    """Labels ``(seed + i) mod classes`` for a conditional model (None for an unconditional one)."""
    if not model.conditional:
        return None
    n_classes = len(model.classes) - (1 if model.null_class is not None else 0)
    n_classes = max(1, n_classes)
    return torch.tensor([(seed + i) % n_classes for i in range(n)], dtype=torch.long)


def generate(
    model: DemoModel,
    n: int,
    size: int | Sequence[int],
    seed: int = 0,
    steps: int = 25,
    factors: object = None,
    scale: float | Callable[[torch.Tensor], torch.Tensor] = 1.0,
    eta: float = 1.0,
    ddim_eta: float = 0.0,
    labels: torch.Tensor | None = None,
    cfg: float = 1.0,
    noise: torch.Tensor | None = None,
    batch_size: int = 64,
    progress: bool = True,
    desc: str = "sampling",
) -> torch.Tensor:
    """``n`` DDIM samples at ``size`` (images in [-1, 1], on the CPU).

    With ``factors`` (e.g. ``(2, 2)``, or ratios such as ``(3/2, 3/2)``), upsample guidance from
    the core with scale ``scale`` and gate ``eta`` (on during the noisiest ``eta`` of the time
    axis); without, plain sampling.
    ``ddim_eta`` is DDIM's stochasticity (0: deterministic DDIM, 1: DDPM-like; its noise is drawn
    from a generator seeded with ``seed``). ``noise`` (n, C, H, W) overrides the per-seed x_T
    (:func:`initial_noise`); ``labels`` default to :func:`default_labels`.
    """
    from tqdm.auto import tqdm

    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if noise is None:
        noise = initial_noise(n, (h, w), seed, model.unet.config.in_channels)
    if labels is None:
        labels = default_labels(model, n, seed)
    guide = None
    if factors is not None:
        factors = normalize_factors(factors)
        check_divisible(noise.shape, factors, "the sample")
        guide = UpsampleGuidance(
            model.schedule, factors, scale, prediction=model.prediction, eta=eta
        )
    gen = torch.Generator(device=model.device).manual_seed(seed)  # used only if ddim_eta > 0
    out = []
    bar = tqdm(total=n * steps, desc=desc, disable=not progress, unit="step")
    for i in range(0, n, batch_size):
        xt = noise[i : i + batch_size].to(model.device)
        lab = labels[i : i + batch_size] if labels is not None else None
        fn = _ticking(model.model_fn(lab, cfg), bar, (h, w), len(xt))

        x = sample_ddim(
            fn, model.schedule, steps, gen, guide, noise=xt, ddim_eta=ddim_eta,
            prediction=model.prediction, clip_sample=model.clip_sample, progress=False,
        )  # fmt: skip
        out.append(x.clamp(-1, 1).cpu())
    bar.close()
    return torch.cat(out)


def _ticking(
    base: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], bar: Any, size: tuple, n: int
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``base``, ticking the progress bar by ``n`` at each call at the full ``size``."""

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The model, ticking the progress bar once per full-resolution call."""
        if tuple(x.shape[-2:]) == tuple(size):
            bar.update(n)
        return base(x, t)

    return fn


def low_res_noise(noise: torch.Tensor, factors: object) -> torch.Tensor:
    """The trained-size x_T that matches a high-resolution one: ``√k·W[D[x_T]]``.

    ``factors`` act on the trailing axes (integers or ratios p/q). For white unit-variance
    ``noise`` the result is white with unit variance exactly: ``D[ε]`` has covariance ``DDᵀ``,
    which the whitening W (:func:`ug_core.operators.whiten`, the identity for integer factors,
    where ``DDᵀ = I/k``) turns into ``I/k``.
    """
    factors = normalize_factors(factors)
    return whiten(downsample(noise, factors), factors) * math.sqrt(block_size(factors))
