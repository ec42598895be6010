"""The embedded video model: a class-conditional AnimateDiff-structured pixel model, and sampling.

The model is a diffusers ``UNetMotionModel`` (a 2-D UNet with motion modules) trained on
:mod:`ug_core.demo.moving_shapes` clips of 8 frames of 32×32 pixels. It runs through the real
``AnimateDiffPipeline``, set up as follows:

- **no text encoder**: the class enters as learned class-token embeddings (``TOKENS`` tokens of
  width ``TOKEN_DIM`` per class) passed as ``prompt_embeds``; the null class's tokens are the
  ``negative_prompt_embeds``, so the pipeline's ``guidance_scale`` is classifier-free guidance;
- **pixel space**: the pipeline's ``vae`` is a one-block ``AutoencoderKL`` (scale factor
  ``2**0 = 1``, so the "latent" grid is the pixel grid); it is never run, because sampling uses
  ``output_type="latent"``, which returns the 3-channel samples in [-1, 1] as they are;
- the scheduler is a ``DDIMScheduler`` on the training schedule (1000 linear-beta steps,
  epsilon prediction, x0 clipped to [-1, 1], trailing timesteps).

Upsample guidance is :func:`ug_core.adapters.diffusers.apply_upsample_guidance` on that pipeline,
with factors on (frames, height, width). Example::

    from ug_core.demo import video

    model = video.load()                                   # the embedded 8×32×32 model
    clips = model.sample([0, 1], seeds=[0, 1], frames=16, size=64, factors=(2, 2, 2))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..operators import normalize_factors
from .model import SCHEDULER_CONFIG as IMAGE_SCHEDULER_CONFIG
from .model import (  # the trained-size x_T: factors on (frames, height, width)
    _read_json,
    low_res_noise,
)

__all__ = [
    "ASSET_DIR",
    "MODEL_CONFIG",
    "SCHEDULER_CONFIG",
    "TOKENS",
    "TOKEN_DIM",
    "TRAINED_FRAMES",
    "TRAINED_SIZE",
    "VideoModel",
    "build_unet",
    "build_vae",
    "load",
    "initial_noise",
    "low_res_noise",
    "save_clips",
]

#: The embedded model's folder.
ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "video32"
#: Frames and pixels per side the model is trained at.
TRAINED_FRAMES, TRAINED_SIZE = 8, 32
#: Class tokens per class and their width (the UNet's cross-attention width).
TOKENS, TOKEN_DIM = 4, 32

#: The UNetMotionModel's configuration (about 2.0 M parameters, 8.2 MB in float32). Its 2-D part
#: matches the embedded shapes model's UNet (blocks of 32, 64 and 64 channels), cross-attention
#: carries the class tokens at 8×8, and motion modules (temporal transformers) run at 16×16 and
#: 8×8; the 32×32 level's motion modules have no transformer layer (a per-pixel linear residual),
#: which keeps a CPU training step affordable.
MODEL_CONFIG: dict[str, Any] = dict(
    sample_size=TRAINED_SIZE,
    in_channels=3,
    out_channels=3,
    down_block_types=("DownBlockMotion", "DownBlockMotion", "CrossAttnDownBlockMotion"),
    up_block_types=("CrossAttnUpBlockMotion", "UpBlockMotion", "UpBlockMotion"),
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    norm_num_groups=8,
    cross_attention_dim=TOKEN_DIM,
    num_attention_heads=2,
    motion_num_attention_heads=2,
    motion_max_seq_length=32,
    use_motion_mid_block=True,
    temporal_transformer_layers_per_block=(0, 1, 1),
)

#: The DDIMScheduler's configuration (the training schedule is its DDPM schedule).
SCHEDULER_CONFIG: dict[str, Any] = dict(
    IMAGE_SCHEDULER_CONFIG, set_alpha_to_one=True, steps_offset=0, timestep_spacing="trailing"
)


def build_unet(seed: int = 0) -> Any:
    """A freshly initialised ``UNetMotionModel`` with :data:`MODEL_CONFIG` (seeded)."""
    from diffusers import UNetMotionModel

    torch.manual_seed(seed)
    return UNetMotionModel(**MODEL_CONFIG)


def build_vae() -> Any:
    """The pipeline's one-block ``AutoencoderKL``: scale factor 1, never run (see the module)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(8,),
        layers_per_block=1,
        latent_channels=3,
        norm_num_groups=4,
        sample_size=TRAINED_SIZE,
    ).eval()


class VideoModel:
    """The embedded video model in its ``AnimateDiffPipeline``, with its class tokens.

    ``pipe`` is the pipeline (see the module docstring for its set-up), ``class_tokens`` the
    learned embeddings (classes + 1, :data:`TOKENS`, :data:`TOKEN_DIM`), ``classes`` the class
    names and ``null_class`` the index of the "no class" tokens used for classifier-free guidance.
    """

    def __init__(
        self,
        pipe: Any,
        class_tokens: torch.Tensor,
        classes: Sequence[str],
        null_class: int,
        trained_frames: int = TRAINED_FRAMES,
        trained_size: int = TRAINED_SIZE,
        name: str = "video",
    ) -> None:
        self.pipe = pipe
        self.name = name
        self.class_tokens = class_tokens
        self.classes = tuple(classes)
        self.null_class = int(null_class)
        self.trained_frames = int(trained_frames)
        self.trained_size = int(trained_size)

    @property
    def device(self) -> torch.device:
        """The UNet's device."""
        return next(self.pipe.unet.parameters()).device

    def to(self, device: str | torch.device) -> VideoModel:
        """Move the pipeline and the class tokens to ``device`` (in place); returns self."""
        self.pipe.to(device)
        self.class_tokens = self.class_tokens.to(device)
        return self

    def embeds(self, labels: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(prompt_embeds, negative_prompt_embeds)`` for class ``labels``: (n, TOKENS, DIM).

        A label is a class index, or ``null_class`` for unconditional samples.
        """
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        n_labels = len(self.class_tokens)
        if labels.numel() and (labels.min() < 0 or labels.max() >= n_labels):
            raise ValueError(
                f"labels must be class indices in [0, {n_labels - 1}] "
                f"({', '.join(self.classes)}), got {labels.tolist()}"
            )
        tokens = self.class_tokens
        null = tokens[self.null_class].expand(len(labels), -1, -1)
        return tokens[labels.to(tokens.device)], null

    def sample(
        self,
        labels: Sequence[int] | torch.Tensor,
        noise: torch.Tensor,
        steps: int = 20,
        cfg: float = 2.0,
        factors: Sequence[int] | None = None,
        scale: float = 1.0,
        eta: float = 1.0,
        progress: bool = False,
        desc: str | None = None,
    ) -> torch.Tensor:
        """Clips (n, 3, F, H, W) in [-1, 1] on the CPU, from the initial noise ``noise``.

        ``noise`` (n, 3, F, H, W) sets the frame count and size; with ``factors`` on (frames,
        height, width), upsample guidance (scale θ ``scale``, gate ``eta``) is applied to the
        pipeline for this call and removed after it. ``cfg`` is the pipeline's guidance scale
        (1: no classifier-free guidance); ``desc`` labels the progress bar.
        """
        from ..adapters.diffusers import apply_upsample_guidance, remove_upsample_guidance

        if noise.ndim != 5 or noise.shape[1] != 3:
            raise ValueError(
                f"noise must have shape (n, 3, frames, H, W), got {tuple(noise.shape)}"
            )
        prompt, negative = self.embeds(labels)
        if len(prompt) != len(noise):
            raise ValueError(f"got {len(prompt)} labels for {len(noise)} noise clips")
        _, _, frames, h, w = noise.shape
        pipe = self.pipe
        pipe.set_progress_bar_config(disable=not progress, desc=desc)
        if factors is not None:
            apply_upsample_guidance(pipe, normalize_factors(factors), scale, eta=eta)
        try:
            with torch.no_grad():
                out = pipe(
                    prompt_embeds=prompt,
                    negative_prompt_embeds=negative,
                    latents=noise.to(self.device),
                    num_frames=frames,
                    height=h,
                    width=w,
                    num_inference_steps=steps,
                    guidance_scale=cfg,
                    output_type="latent",
                ).frames
        finally:
            if factors is not None:
                remove_upsample_guidance(pipe)
        return out.float().clamp(-1, 1).cpu()


def load(path: str | Path | None = None, device: str | torch.device = "cpu") -> VideoModel:
    """Load the embedded video model (or a folder written by ``train_video``) in its pipeline.

    The folder holds the ``UNetMotionModel`` (``config.json`` and its safetensors),
    ``class_embeddings.safetensors``, ``scheduler_config.json`` (a ``DDIMScheduler``) and
    ``classes.json``. Raises ValueError for a folder that lacks them.
    """
    from diffusers import AnimateDiffPipeline, DDIMScheduler, UNetMotionModel
    from safetensors.torch import load_file

    folder = ASSET_DIR if path is None else Path(path)
    needed = (
        "config.json",
        "class_embeddings.safetensors",
        "scheduler_config.json",
        "classes.json",
    )
    missing = [n for n in needed if not (folder / n).is_file()]
    if missing:
        raise ValueError(f"video model folder {str(folder)!r} lacks {', '.join(missing)}")
    unet = UNetMotionModel.from_pretrained(folder, local_files_only=True).eval()
    scheduler = DDIMScheduler.from_config(_read_json(folder / "scheduler_config.json"))
    meta = _read_json(folder / "classes.json")
    tokens = load_file(folder / "class_embeddings.safetensors")["class_tokens"]
    pipe = AnimateDiffPipeline(
        vae=build_vae(),
        text_encoder=None,
        tokenizer=None,
        unet=unet,
        motion_adapter=None,
        scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    model = VideoModel(
        pipe, tokens, meta["classes"], meta["null_class"],
        meta.get("trained_frames", TRAINED_FRAMES), meta.get("trained_size", TRAINED_SIZE),
        "video32" if path is None else str(folder),
    )  # fmt: skip
    return model.to(device)


def initial_noise(n: int, frames: int, size: int | Sequence[int], seed: int) -> torch.Tensor:
    """x_T (n, 3, frames, H, W) for samples ``seed, seed + 1, …``, each from its own generator."""
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    gens = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    return torch.stack([torch.randn(3, frames, h, w, generator=g) for g in gens])


def video_factors(factors: int | Sequence[int]) -> tuple[int, int, int]:
    """``factors`` as (frames, height, width), validated.

    An int means ``(1, f, f)`` and two factors ``(1, h, w)``. Raises TypeError for non-integers
    and ValueError for anything else that is not three factors >= 1 with one > 1.
    """
    if isinstance(factors, (int,)) and not isinstance(factors, bool):
        factors = (1, factors, factors)
    f = normalize_factors(factors)
    if len(f) == 2:
        f = (1, *f)
    if len(f) != 3:
        raise ValueError(
            f"factors must be (frames, height, width), (height, width) or an int, got {factors!r}"
        )
    if f == (1, 1, 1):
        raise ValueError(f"factors {factors!r} do not upsample: at least one must be > 1")
    return f  # type: ignore[return-value]


def interpolate_frames(clips: torch.Tensor, factor: int) -> torch.Tensor:
    """Linear blending to ``factor``× the frames of the same time span: (n, C, F·factor, H, W).

    Frame ``i`` of ``F`` shows the time ``(i + 0.5)/F``; a new frame at time ``t`` blends the two
    nearest source frames linearly in time (the first or last one beyond the ends).
    """
    if clips.ndim != 5:
        raise ValueError(f"clips must have shape (n, C, frames, H, W), got {tuple(clips.shape)}")
    if isinstance(factor, bool) or not isinstance(factor, int):
        raise TypeError(f"factor must be an int, got {type(factor).__name__} {factor!r}")
    if factor < 1:
        raise ValueError(f"factor must be an integer >= 1, got {factor}")
    f = clips.shape[2]
    g = f * factor
    pos = ((torch.arange(g, dtype=torch.float64) + 0.5) / g * f - 0.5).clamp(0, f - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=f - 1)
    wgt = (pos - lo).to(clips.dtype).view(1, 1, g, 1, 1)
    lo, hi, wgt = lo.to(clips.device), hi.to(clips.device), wgt.to(clips.device)
    return clips[:, :, lo] * (1 - wgt) + clips[:, :, hi] * wgt


def upscale_bicubic(clips: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Each frame upscaled bicubically to ``size`` (H, W), clamped to [-1, 1]."""
    import torch.nn.functional as F

    n, c, f, h, w = clips.shape
    frames = clips.permute(0, 2, 1, 3, 4).reshape(n * f, c, h, w)
    up = F.interpolate(frames, size=tuple(size), mode="bicubic", align_corners=False)
    return up.reshape(n, f, c, *up.shape[-2:]).permute(0, 2, 1, 3, 4).clamp(-1, 1)


def baseline_name(factors: Sequence[int]) -> str:
    """``interp`` (frames only), ``bicubic`` (space only) or ``interp-bicubic`` (both)."""
    ff, fh, fw = video_factors(factors)
    if ff > 1 and (fh, fw) != (1, 1):
        return "interp-bicubic"
    return "interp" if ff > 1 else "bicubic"


def sample_methods(
    model: VideoModel,
    factors: Sequence[int],
    seeds: Sequence[int],
    labels: Sequence[int] | None = None,
    steps: int = 20,
    cfg: float = 2.0,
    scale: float = 1.0,
    eta: float = 1.0,
    methods: Sequence[str] = ("naive", "ug", "baseline"),
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Clips of each method at ``factors`` × the trained size, from the same seeds.

    ``naive``: the pipeline at the large size; ``ug``: the same with upsample guidance by
    ``factors``; ``baseline``: the trained size from the matching low-resolution noise
    (:func:`low_res_noise`), frames linearly blended (:func:`interpolate_frames`) and upscaled
    bicubically (:func:`upscale_bicubic`) as the factors need. Every method starts from the
    per-seed noise of :func:`initial_noise`. Labels default to ``seed mod classes``.
    ``progress`` shows the pipeline's progress bars, labelled naive, UG and the baseline's name.
    """
    ff, fh, fw = video_factors(factors)
    unknown = set(methods) - {"naive", "ug", "baseline"}
    if unknown:
        raise ValueError(f"methods must be among naive, ug, baseline; got {sorted(unknown)}")
    seeds = list(seeds)
    n_real = len(model.classes) - 1
    labels = [s % n_real for s in seeds] if labels is None else list(labels)
    frames, size = model.trained_frames * ff, (model.trained_size * fh, model.trained_size * fw)
    noise = torch.cat([initial_noise(1, frames, size, s) for s in seeds])
    out: dict[str, torch.Tensor] = {}

    def run(x: torch.Tensor, guided: bool, desc: str) -> torch.Tensor:
        parts = []
        for i in range(0, len(x), batch_size):
            parts.append(
                model.sample(
                    labels[i : i + batch_size],
                    x[i : i + batch_size],
                    steps,
                    cfg,
                    factors=(ff, fh, fw) if guided else None,
                    scale=scale,
                    eta=eta,
                    progress=progress,
                    desc=desc,
                )  # fmt: skip
            )
        return torch.cat(parts)

    for method in methods:
        if method == "naive":
            out[method] = run(noise, False, "naive")
        elif method == "ug":
            out[method] = run(noise, True, "UG")
        else:
            low = run(low_res_noise(noise, (ff, fh, fw)), False, baseline_name((ff, fh, fw)))
            if ff > 1:
                low = interpolate_frames(low, ff)
            if (fh, fw) != (1, 1):
                low = upscale_bicubic(low, size)
            out[method] = low
    return out


def _uint8_frames(clip: torch.Tensor) -> Any:
    """One clip (3, F, H, W) in [-1, 1] as uint8 numpy frames (F, H, W, 3)."""
    return ((clip.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).numpy()


def save_strip(clip: torch.Tensor, path: str | Path) -> Path:
    """A PNG frame strip of one clip (3, F, H, W): frames left to right, at their pixel size."""
    import numpy as np
    from PIL import Image

    frames = _uint8_frames(clip)
    Image.fromarray(np.concatenate(list(frames), axis=1)).save(path)
    return Path(path)


def save_gif(clip: torch.Tensor, path: str | Path, seconds: float = 2.0, zoom: int = 1) -> Path:
    """An animated GIF of one clip (3, F, H, W), looping.

    The clip lasts ``seconds`` whatever its frame count (a dataset clip spans a fixed time); each
    frame is magnified ``zoom``× (nearest).
    """
    from PIL import Image

    frames = [Image.fromarray(f) for f in _uint8_frames(clip)]
    if zoom > 1:
        frames = [f.resize((f.width * zoom, f.height * zoom), Image.NEAREST) for f in frames]
    duration = max(20, round(1000 * seconds / len(frames)))
    frames[0].save(
        path, save_all=True, append_images=frames[1:], duration=duration, loop=0, optimize=False
    )
    return Path(path)


def save_clips(
    clips: dict[str, torch.Tensor], seeds: Sequence[int], folder: str | Path
) -> list[str]:
    """``{method}-seed{N}.png`` (frame strip) and ``.gif`` for each method's clips (n, 3, F, H, W).

    Clip ``i`` of each method belongs to ``seeds[i]``; returns the paths written.
    """
    folder = Path(folder)
    files = []
    for name, batch in clips.items():
        for seed, clip in zip(seeds, batch, strict=True):
            files.append(str(save_strip(clip, folder / f"{name}-seed{seed}.png")))
            files.append(str(save_gif(clip, folder / f"{name}-seed{seed}.gif")))
    return files


def sample_cli(
    out: str | Path,
    seeds: Sequence[int] = (0, 1, 2, 3),
    factors: int | Sequence[int] = (2, 1, 1),
    steps: int = 20,
    scale: float = 1.0,
    eta: float = 1.0,
    cfg: float = 2.0,
    labels: Sequence[int] | None = None,
    model: VideoModel | str | Path | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """``ug sample --model video``: sample naive | UG | baseline and write their files.

    For each seed and method, writes ``{method}-seed{N}.png`` (a frame strip, frames left to
    right) and ``{method}-seed{N}.gif`` (animated) into ``out``, where the method is ``naive``,
    ``ug`` and the baseline :func:`baseline_name` (``interp``, ``bicubic`` or
    ``interp-bicubic``). ``factors`` are on (frames, height, width) (see :func:`video_factors`);
    the size is the trained size (8 frames of 32×32) times the factors. ``model`` is a loaded
    :class:`VideoModel`, a folder, or None for the embedded model. Returns a dict: the settings,
    ``files`` (the paths written), ``seconds`` per method and ``metrics`` (per method,
    :func:`ug_core.demo.video_metrics.summarize` with the requested classes).
    """
    import time

    from . import video_metrics

    ff, fh, fw = video_factors(factors)
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must name at least one seed, got an empty sequence")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not isinstance(model, VideoModel):
        model = load(model, device)
    n_real = len(model.classes) - 1
    labels = [s % n_real for s in seeds] if labels is None else [int(c) for c in labels]
    if len(labels) != len(seeds):
        raise ValueError(f"labels must hold one class per seed ({len(seeds)}), got {labels}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = baseline_name((ff, fh, fw))
    clips, seconds = {}, {}
    for method in ("naive", "ug", "baseline"):
        start = time.perf_counter()
        clips[base if method == "baseline" else method] = sample_methods(
            model, (ff, fh, fw), seeds, labels, steps, cfg, scale, eta, methods=(method,)
        )[method]
        seconds[base if method == "baseline" else method] = time.perf_counter() - start
    files = save_clips(clips, seeds, out)
    metrics = {
        name: video_metrics.summarize(batch, torch.as_tensor(labels))
        for name, batch in clips.items()
    }
    return {
        "model": model.name,
        "trained": [model.trained_frames, model.trained_size, model.trained_size],
        "size": [model.trained_frames * ff, model.trained_size * fh, model.trained_size * fw],
        "factors": [ff, fh, fw],
        "baseline": base,
        "scale": scale,
        "eta": eta,
        "steps": steps,
        "cfg": cfg,
        "seeds": seeds,
        "labels": labels,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "files": files,
        "metrics": metrics,
    }
