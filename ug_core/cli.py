"""The ``ug`` command: sample a diffusion model above its trained size, with and without UG.

``ug sample`` with no arguments samples the embedded 32×32 shapes model at 64×64, four seeds, three
ways from the same seeds: naive high-resolution sampling, upsample guidance (UG), and the trained
size upscaled bicubically. It writes one PNG per sample and method, a labelled grid (naive | UG |
bicubic, one row per seed) and ``metrics.json`` into ``--out``, and prints the metrics::

    ug sample                                   # embedded model, factor 2, 4 seeds
    ug sample --factor 1.5 --n 8 --scale 1.3    # 48x48, guided towards the trained 32x32
    ug sample --size 64x96 --factor 2           # non-square: guided towards a 32×48 image
    ug sample --model path/to/unet-or-ddpm-pipeline
    ug sample --pipeline path/to/sd-pipeline --prompt "a red disc"

Errors print one line on stderr and exit with status 2 (usage) or 1 (anything else), without a
traceback. Arguments and ``--out`` are checked before torch is imported, ``--device`` and
``--class`` before a model is loaded. The files are written into a hidden temporary folder and
moved into ``--out`` once complete. Under ``torchrun`` or ``accelerate launch`` the processes share
the seeds and rank 0 writes the same files, byte for byte, as one process (:mod:`ug_core.launch`)::

    torchrun --nproc_per_node=2 -m ug_core.cli sample --num-samples 64 --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from . import factors as _factors
from . import launch
from .demo import report
from .demo.report import Job, factor_text
from .launch import UsageError

__all__ = ["main", "parse_factors", "parse_size", "build_parser"]

PROG = "ug"

#: The shipped models (``ug_core.demo.registry``) by name and kind, known without importing torch.
_SHIPPED = {"shapes": "unet", "textured": "unet", "latent-flow": "latent-flow", "video": "video"}


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: ``ug sample: error: …`` (exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_factors(text: str) -> tuple[_factors.Factor, ...]:
    """``--factor``: ``"2"`` → (2, 2); ``"1.5"`` or ``"3/2"`` → (3/2, 3/2); ``"2x3"`` → (2, 3).

    Three entries (``"2x1x1"``) are (frames, height, width) factors. Each is an integer or a ratio
    p/q with q <= 8, at least 1, and one must upsample (> 1). Raises ValueError or TypeError.
    """
    found = _factors.parse_factors(text, "--factor")
    if all(f == 1 for f in found):
        raise ValueError(f"--factor {text!r} does not upsample: at least one factor must be > 1")
    return found


def parse_size(text: str) -> tuple[int, int]:
    """``"64"`` → (64, 64); ``"64x96"`` → (64, 96) (height, width), in pixels. Raises ValueError."""
    try:
        values = tuple(int(p) for p in text.lower().replace(",", "x").split("x"))
    except ValueError:
        values = ()
    if len(values) not in (1, 2) or min(values) < 1:
        raise ValueError(f"--size must be a positive integer or HxW (e.g. 64, 64x96), got {text!r}")
    return values * (3 - len(values))  # type: ignore[return-value]


def _checked(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from a parser that raises ValueError or TypeError."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except (TypeError, ValueError) as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return convert


def _number(
    name: str, lo: float | None = None, hi: float | None = None, kind: type = float
) -> Callable[[str], Any]:
    """An argparse type: a finite ``kind`` (float or int) in [lo, hi], errors naming the option."""
    low, high = -math.inf if lo is None else lo, math.inf if hi is None else hi
    what = "an integer" if kind is int else "a number"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise ValueError(f"{name} must be {what}, got {text!r}") from None
        if not (math.isfinite(value) and low <= value <= high):
            bounds = f">= {lo}" if kind is int else f"in [{low}, {high}]"
            raise ValueError(f"{name} must be {what} {bounds}, got {text!r}")
        return value

    return _checked(parse)


def build_parser() -> argparse.ArgumentParser:
    """The ``ug`` argument parser."""
    from . import __version__

    parser = _Parser(
        prog=PROG,
        description="Upsample guidance (UG): sample diffusion models above their trained size.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    s = sub.add_parser(
        "sample",
        help="sample naive | UG | trained size + bicubic, from the same seeds",
        description=(
            "Sample a model at factor × its trained size three ways from the same seeds: naive, "
            "with upsample guidance, and at the trained size upscaled bicubically. Writes one PNG "
            "per sample, grid.png (naive | UG | bicubic, one row per seed, labelled with its seed "
            "and class) and metrics.json into --out. Default: the embedded 32x32 shapes model."
        ),
    )
    s.set_defaults(command_parser=s)
    src = s.add_mutually_exclusive_group()
    src.add_argument(
        "--model", metavar="NAME|PATH",
        help="a shipped model (shapes: the default; textured: the same UNet on textured "
        "scenes; latent-flow: an AutoencoderKL + SD3 transformer through StableDiffusion3Pipeline;"
        " video: an AnimateDiff-structured UNetMotionModel, 8 frames of 32x32), or a local "
        "diffusers UNet2DModel or DDPMPipeline folder",
    )  # fmt: skip
    src.add_argument(
        "--pipeline", metavar="PATH", help="a local Stable Diffusion-style pipeline folder"
    )
    s.add_argument("--prompt", help="text prompt (with --pipeline)")
    s.add_argument(
        "--factor", type=_checked(parse_factors), default=None, metavar="F",
        help="upsampling factor F (default 2): UG guides the sample towards the model's own "
        "sample at the size divided by F. An integer or a ratio p/q with q <= 8 (1.5, 3/2, "
        "1.25): ratios work with every model but --model video. For a "
        "non-square image give a non-square --size and one factor (--size 64x96 --factor 2 "
        "guides towards a 32x48 image). Unequal factors HxW (e.g. 2x3) stretch the content by "
        "H and W (discs become ellipses): they are meant for time against space in video "
        "models, not for height against width. With --model video: FxHxW on (frames, height, "
        "width), default 2x1x1 (twice the frames); one F means 1xFxF",
    )  # fmt: skip
    s.add_argument(
        "--size", type=_checked(parse_size), metavar="N|HxW",
        help="output size in pixels, square N or HxW such as 64x96 (default: trained size × "
        "factor); a factor p/q needs multiples of p",
    )  # fmt: skip
    s.add_argument(
        "--scale", type=_number("--scale"), default=1.0,
        help="UG scale θ (default 1.0; the paper found about 1.3 best for pixel models)",
    )  # fmt: skip
    s.add_argument(
        "--eta", type=_number("--eta", 0.0, 1.0), default=1.0,
        help="UG η: guidance on during the noisiest η of the time axis (default 1.0)",
    )  # fmt: skip
    s.add_argument(
        "--steps", type=_number("--steps", 1, kind=int), default=None,
        help="sampling steps (default 30 for the shapes model, 25 for a pipeline)",
    )  # fmt: skip
    s.add_argument(
        "--n", "--num-samples", dest="n", type=_number("--n", 1, kind=int), default=4, metavar="N",
        help="number of seeds (default 4); spell it --num-samples under torchrun, whose own "
        "parser takes --n for an abbreviation of its options",
    )  # fmt: skip
    s.add_argument("--seed", type=_number("--seed", 0, kind=int), default=0, help="first seed")
    s.add_argument(
        "--batch-size", type=_number("--batch-size", 1, kind=int), default=4, metavar="B",
        help="samples per model call (default 4): batches of B consecutive seeds, the same "
        "batches under torchrun or accelerate launch, which share them among the processes",
    )  # fmt: skip
    s.add_argument(
        "--cfg", type=_number("--cfg", 0.0), default=None,
        help="classifier-free guidance scale (default 2 for a class-conditional model with a "
        "null class, the pipeline's default for --pipeline)",
    )  # fmt: skip
    s.add_argument(
        "--class", dest="class_name", metavar="NAME",
        help="class of a class-conditional model, a name or an index (default: cycle through "
        "the classes but the null class). The embedded model's: disc, square, triangle, cross, "
        "and none: the null class it was trained with for classifier-free guidance, which "
        "gives unconditional samples (any shape; --cfg has no effect then)",
    )  # fmt: skip
    s.add_argument("--out", metavar="DIR", help="output folder (default: ./ug-samples-<time>)")
    s.add_argument("--device", default="cpu", help="torch device (default cpu)")
    s.add_argument("--threads", type=_number("--threads", 1, kind=int), help="torch CPU threads")
    s.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    c = sub.add_parser(
        "comfyui-install",
        help="add the Upsample Guidance node to a ComfyUI installation",
        description=(
            "Write the one-line custom node file (custom_nodes/upsample_guidance.py) that loads "
            "the Upsample Guidance node from this package; install the package into ComfyUI's "
            "Python first (pip install -e /path/to/upsample-guidance)."
        ),
    )
    c.set_defaults(command_parser=c)
    c.add_argument("path", metavar="PATH", help="ComfyUI's folder, or its custom_nodes folder")
    return parser


def _check_factor(args: argparse.Namespace) -> None:
    """Default ``--factor`` (2, or 2x1x1 for the video model) and its form for the model."""
    video = args.model == "video"  # never with --pipeline (argparse excludes it)
    if args.factor is None:
        args.factor = (2, 1, 1) if video else (2, 2)
        return
    text = factor_text(args.factor)
    if len(args.factor) == 3 and not video:
        raise UsageError(
            f"--factor {text}: three factors (frames, height, width) apply to --model video "
            "only; give F or HxW"
        )
    if video and not all(isinstance(f, int) for f in args.factor):
        raise UsageError(
            f"--factor {text}: --model video takes integer factors (ug_core.demo.video samples "
            "whole multiples of its trained 8 frames of 32x32); ratios work with the image "
            "models: shapes, textured, latent-flow, UNet folders and --pipeline"
        )
    if video and len(args.factor) == 2:
        args.factor = (1, *args.factor)


def _check_options(args: argparse.Namespace) -> None:
    """The options that exclude each other (--prompt, --class, --size with the model)."""
    if args.pipeline is not None:
        if args.prompt is None:
            raise UsageError("--pipeline needs --prompt TEXT")
        if args.class_name is not None:
            raise UsageError("--class applies to class-conditional models, not to --pipeline")
    elif args.prompt is not None:
        raise UsageError(
            "--prompt needs --pipeline PATH (a text-to-image pipeline); a class-conditional "
            "--model takes --class"
        )
    if args.model == "video" and args.size is not None:
        raise UsageError(
            "--size does not apply to --model video: its size is the trained 8 frames of 32x32 "
            "times --factor FxHxW (frames, height, width)"
        )
    if args.size is not None:  # a model's own size unit is checked once it is loaded
        _check_size(args.size, args.factor)


def _check_class(args: argparse.Namespace) -> None:
    """``--class`` against the model folder's ``classes.json``, before the model is loaded."""
    if args.class_name is None or args.pipeline is not None:
        return
    folder = Path(args.model or "shapes")
    if args.model is None or args.model in _SHIPPED:
        from .demo.registry import shipped_model

        folder = shipped_model(args.model or "shapes").folder
    classes = report.folder_classes(folder)
    if classes is not None:  # else checked once the model is loaded (which reports a broken one)
        _labels_for(classes, args, 1)


def _check_size(
    size: tuple[int, int], factors: Sequence[Any], unit: int = 1, name: str | None = None
) -> None:
    """Raise UsageError unless each side of ``size`` maps to a whole trained size (in units)."""
    name = name or f"--size {size[0]}x{size[1]}"
    if unit > 1:
        times = "--factor" if all(isinstance(f, int) for f in factors) else "p for --factor p/q"
        name += f" (the pipeline needs multiples of {unit} at both sizes, so of {unit} × {times})"
    try:
        _factors.check_divisible(size, factors, name, unit=(unit, unit))
    except ValueError as err:
        raise UsageError(str(err)) from None


def _sizes(
    args: argparse.Namespace, trained: Sequence[int], unit: int = 1
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(output size, trained-resolution size) in pixels: ``--size``, or trained size × factor."""
    size, name, text = args.size, None, factor_text(args.factor)
    if size is None:
        exact = [Fraction(n) * f for n, f in zip(trained, args.factor, strict=True)]
        if any(s.denominator != 1 for s in exact):
            raise UsageError(
                f"--factor {text} takes the trained size {factor_text(trained)} to "
                f"{factor_text(exact)} pixels, not whole sizes: give --size"
            )
        size = tuple(int(s) for s in exact)
        name = f"the trained size {factor_text(trained)} × --factor {text} = {factor_text(size)}"
    _check_size(size, args.factor, unit, name)
    return size, _factors.low_sizes(size, args.factor)  # type: ignore[return-value]


def _labels_for(model: Any, args: argparse.Namespace, n: int) -> Any:
    """Class labels from --class (a name or index), or the default cycle (report.class_labels)."""
    try:
        return report.class_labels(model, args.class_name, args.seed, n)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _guided(pipe: Any, factors: Sequence[int], args: argparse.Namespace, call: Callable) -> Any:
    """``call()`` with UG applied to a diffusers ``pipe`` (options it refuses: usage errors)."""
    from .adapters.diffusers import apply_upsample_guidance, remove_upsample_guidance

    try:
        apply_upsample_guidance(pipe, factors, args.scale, eta=args.eta)
    except (TypeError, ValueError) as err:
        raise UsageError(str(err)) from None
    try:
        return call()
    finally:
        remove_upsample_guidance(pipe)


def _quiet_libraries() -> None:
    """No transformers warnings (a missing torchvision) and no loading bars."""
    import transformers

    transformers.utils.logging.set_verbosity_error()  # before diffusers imports its pipelines
    transformers.utils.logging.disable_progress_bar()
    import diffusers

    diffusers.utils.logging.disable_progress_bar()


def _pipeline_cfg(cfg: float | None, default: float) -> float:
    """--cfg for a diffusers pipeline, which applies CFG only above 1: 1 (off) or more."""
    if cfg is None:
        return default
    if cfg < 1:
        raise UsageError(f"--cfg {cfg:g}: this model's pipeline takes 1 (no CFG) or more")
    return cfg


def _check_steps(steps: int, most: int) -> int:
    """``steps``, or UsageError beyond the model's training steps."""
    if steps > most:
        raise UsageError(f"--steps {steps} exceeds the model's {most}")
    return steps


def _unet_job(args: argparse.Namespace) -> Job:
    """A shipped UNet model or a UNet2DModel / DDPMPipeline folder, sampled by the core."""
    import torch

    from .demo import shapes
    from .demo.model import ModelLoadError, generate, initial_noise, load, low_res_noise
    from .demo.registry import shipped_model

    entry = None
    if args.model is None or args.model in _SHIPPED:
        entry = shipped_model(args.model or "shapes")
    elif not Path(args.model).exists():
        raise UsageError(
            f"--model {args.model!r}: no such file or folder, and not a shipped model "
            f"({', '.join(_SHIPPED)})"
        )
    try:
        model = load(args.model if entry is None else entry.folder, args.device)
    except ModelLoadError as err:
        raise UsageError(f"--model: {err}") from None
    size, low = _sizes(args, model.sample_size)
    steps = _check_steps(args.steps or 30, model.schedule.num_timesteps)
    cfg = args.cfg if args.cfg is not None else (2.0 if model.null_class is not None else 1.0)
    if cfg != 1.0 and model.null_class is None:
        raise UsageError(f"--cfg {cfg} needs a class-conditional model with a null class")
    labels = _labels_for(model, args, args.n)
    channels = model.unet.config.in_channels
    name = args.model if entry is None else f"shipped {entry.name} model ({entry.folder.name})"

    def sample(batches: list[tuple[int, int]], progress: bool) -> dict[str, Any]:
        """Each sample's x_T from its own seed (and the trained size's from it), per batch."""
        index = [i for a, b in batches for i in range(a, b)]
        if not index:
            return {}
        high = [initial_noise(b - a, size, args.seed + a, channels) for a, b in batches]
        noise = torch.cat(high)
        small_noise = torch.cat([low_res_noise(x, args.factor) for x in high])
        common = dict(
            seed=args.seed, steps=steps, labels=None if labels is None else labels[index],
            cfg=cfg, progress=progress, batch_size=args.batch_size,
        )  # fmt: skip
        naive = generate(model, len(index), size, noise=noise, desc="naive", **common)
        try:
            ug = generate(model, len(index), size, noise=noise, factors=args.factor,
                          scale=args.scale, eta=args.eta, desc="UG", **common)  # fmt: skip
        except (TypeError, ValueError) as err:
            raise UsageError(str(err)) from None
        small = generate(model, len(index), low, noise=small_noise, desc="bicubic", **common)
        return report.with_bicubic(naive, ug, small, size)

    data = entry or shipped_model("shapes")  # a UNet folder of the shapes' classes: flat shapes
    shaped = tuple(model.classes[: len(shapes.CLASSES)]) == shapes.CLASSES and channels == 3
    return Job.image(
        args, name, model.sample_size, size, steps, f"{steps} DDIM steps", sample,
        {"model": name}, {"cfg": cfg}, classes=report.class_names(model, labels),
        metrics=(lambda columns: report.shape_metrics(columns, data, size)) if shaped else None,
        extra=f", CFG {cfg}" if model.conditional else "",
    )  # fmt: skip


def _latent_flow_job(args: argparse.Namespace) -> Job:
    """``--model latent-flow``: the shipped StableDiffusion3Pipeline, guided by the adapter."""
    import torch

    from .demo.model import low_res_noise
    from .demo.registry import shipped_model

    _quiet_libraries()
    entry = shipped_model("latent-flow")
    model = entry.load(args.device)
    config = model.pipe.transformer.config
    unit = model.pipe.vae_scale_factor * config.patch_size
    size, low = _sizes(args, model.sample_size, unit)
    largest = config.pos_embed_max_size * unit
    if max(size) > largest:
        raise UsageError(
            f"size {size[0]}x{size[1]} exceeds the latent-flow model's largest, {largest}x{largest}"
            f" (its positional-embedding grid): use a smaller --factor or --size"
        )
    steps = args.steps or entry.default_steps
    cfg = _pipeline_cfg(args.cfg, entry.default_cfg)
    labels = _labels_for(model, args, args.n)

    def sample(batches: list[tuple[int, int]], progress: bool) -> dict[str, Any]:
        """Each sample's x_1 from its own seed (and the trained size's from it: low_res_noise)."""
        index = [i for a, b in batches for i in range(a, b)]
        if not index:
            return {}
        high = torch.cat([model.initial_latents(b - a, size, args.seed + a) for a, b in batches])

        def run(desc: str, at: Sequence[int], latents: Any) -> Any:
            model.pipe.set_progress_bar_config(disable=not progress, desc=desc)
            return model.generate(labels[index], at, latents=latents, steps=steps, cfg=cfg,
                                  batch_size=args.batch_size)  # fmt: skip

        naive = run("naive", size, high)
        ug = _guided(model.pipe, args.factor, args, lambda: run("UG", size, high))
        small = run("bicubic", low, low_res_noise(high, args.factor))
        return report.with_bicubic(naive, ug, small, size)

    return Job.image(
        args, f"shipped latent-flow model ({entry.folder.name})", model.sample_size, size, steps,
        f"{steps} flow-matching Euler steps", sample, {"model": "latent-flow"}, {"cfg": cfg},
        classes=report.class_names(model, labels), extra=f", CFG {cfg}",
        metrics=lambda columns: report.shape_metrics(columns, entry, size),
    )  # fmt: skip


def _video_job(args: argparse.Namespace) -> Job:
    """``--model video``: the shipped AnimateDiffPipeline model; frame strips and GIFs."""
    _quiet_libraries()
    from .demo import video
    from .demo.registry import shipped_model

    entry, factors = shipped_model("video"), args.factor
    model = entry.load(args.device)
    trained = (model.trained_frames, model.trained_size, model.trained_size)
    size = tuple(n * f for n, f in zip(trained, factors, strict=True))
    longest = model.pipe.unet.config.motion_max_seq_length
    if size[0] > longest:
        raise UsageError(
            f"--factor {factor_text(factors)} asks for {size[0]} frames; the video model's "
            f"motion modules take at most {longest} (a frame factor of at most "
            f"{longest // model.trained_frames})"
        )
    steps = _check_steps(args.steps or entry.default_steps,
                         model.pipe.scheduler.config.num_train_timesteps)  # fmt: skip
    cfg = _pipeline_cfg(args.cfg, entry.default_cfg)
    labels = _labels_for(model, args, args.n)
    base = video.baseline_name(factors)

    def sample(batches: list[tuple[int, int]], progress: bool) -> dict[str, Any]:
        """naive | UG | baseline clips (n, 3, frames, H, W), each from its seed's noise."""
        index = [i for a, b in batches for i in range(a, b)]
        if not index:
            return {}
        clips = video.sample_methods(
            model, factors, [args.seed + i for i in index], labels[index].tolist(), steps, cfg,
            args.scale, args.eta, batch_size=args.batch_size, progress=progress,
        )  # fmt: skip
        return {"naive": clips["naive"], "UG": clips["ug"], base: clips["baseline"]}

    requested = None if (labels == model.null_class).any() else labels  # none: any class
    return Job(
        f"shipped video model ({entry.folder.name})", trained, size, factors,
        f"{steps} DDIM steps", sample,
        dict(model="video", trained=list(trained), size=list(size), factors=list(factors),
             baseline=base, scale=args.scale, eta=args.eta, steps=steps, cfg=cfg),
        report.class_names(model, labels), lambda clips: report.video_metrics(clips, requested),
        f", CFG {cfg}",
    )  # fmt: skip


def _load_pipeline(path: str, device: str) -> Any:
    """A local diffusers pipeline folder, or UsageError."""
    _quiet_libraries()
    import diffusers

    folder = Path(path)
    if not folder.exists():
        raise UsageError(f"--pipeline {path!r}: no such file or folder")
    if not (folder / "model_index.json").is_file():
        raise UsageError(
            f"--pipeline {path!r} is not a diffusers pipeline folder (no model_index.json)"
        )
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"--pipeline {path!r}: cannot read model_index.json: {err}") from None
    missing = [k for k in ("text_encoder", "tokenizer") if not (index.get(k) or [None])[-1]]
    if missing:
        raise UsageError(
            f"--pipeline {path!r} has no {' and no '.join(missing)}, so --prompt cannot be "
            "encoded; save the pipeline with its text encoder and tokenizer"
        )
    try:
        pipe = diffusers.DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    except Exception as err:  # diffusers raises many kinds for a broken folder
        raise UsageError(f"--pipeline {path!r}: cannot load it: {err}") from None
    if getattr(pipe, "unet", None) is None:
        raise UsageError(f"--pipeline {path!r} has no UNet ({type(pipe).__name__})")
    return pipe.to(device)


def _pipeline_job(args: argparse.Namespace) -> Job:
    """``--pipeline PATH --prompt TEXT``: a Stable Diffusion-style pipeline, through the adapter."""
    import torch

    pipe = _load_pipeline(args.pipeline, args.device)
    vae = int(getattr(pipe, "vae_scale_factor", 8))
    latent = pipe.unet.config.sample_size
    latent = (latent, latent) if isinstance(latent, int) else tuple(latent)
    trained = (latent[0] * vae, latent[1] * vae)
    # Stable Diffusion pipelines take sizes in multiples of 8 (and of the VAE factor), at both
    # the high and the trained-size (low) resolution.
    size, low = _sizes(args, trained, math.lcm(vae, 8))
    steps = args.steps or 25
    kwargs: dict[str, Any] = dict(num_inference_steps=steps, output_type="pt")
    if args.cfg is not None:
        kwargs["guidance_scale"] = args.cfg

    def run(batches: list[tuple[int, int]], at: Sequence[int], desc: str, progress: bool) -> Any:
        """One pipeline call per batch, each sample's latents from its own seed's generator."""
        pipe.set_progress_bar_config(disable=not progress, desc=desc)
        out = []
        for a, b in batches:
            gens = [torch.Generator().manual_seed(args.seed + i) for i in range(a, b)]
            images = pipe([args.prompt] * (b - a), height=at[0], width=at[1], generator=gens,
                          **kwargs).images  # fmt: skip
            out.append(torch.as_tensor(images).float().cpu() * 2 - 1)
        return torch.cat(out) if out else None

    def sample(batches: list[tuple[int, int]], progress: bool) -> dict[str, Any]:
        """Naive, UG and trained size for the given batches."""
        naive = run(batches, size, "naive", progress)
        # Also without a batch, so that every process checks the options alike.
        ug = _guided(pipe, args.factor, args, lambda: run(batches, size, "UG", progress))
        if not batches:
            return {}
        return report.with_bicubic(naive, ug, run(batches, low, "bicubic", progress), size)

    return Job.image(
        args, args.pipeline, trained, size, steps, f"{steps} steps", sample,
        {"pipeline": args.pipeline, "prompt": args.prompt}, {}, extra=f", prompt {args.prompt!r}",
    )  # fmt: skip


def _sample(args: argparse.Namespace) -> int:
    """``ug sample``: check what can be checked, join a launch, and run the model's job."""
    # Checked before torch is imported; written once every sample is there (write_atomically).
    args.out_path = launch.out_folder(args.out)
    _check_factor(args)
    _check_options(args)
    found = launch.launch_env()  # torchrun or accelerate launch: this process's share of seeds
    launch.set_threads(args.threads, found)
    launch.check_device(args.device)
    _check_class(args)
    ranks, args.device = launch.start_ranks(found, args.device)
    args.launched = ranks.owned
    jobs = {"unet": _unet_job, "latent-flow": _latent_flow_job, "video": _video_job}
    job = _pipeline_job if args.pipeline else jobs[_SHIPPED.get(args.model or "shapes", "unet")]
    try:
        return launch.run_job(launch.together(ranks, lambda: job(args)), args, ranks)
    finally:
        launch.stop_ranks(ranks)


def _comfyui_install(args: argparse.Namespace) -> int:
    """``ug comfyui-install PATH``: write the custom node file."""
    from .adapters.comfyui import install_custom_node

    try:
        path = install_custom_node(args.path)
    except (TypeError, ValueError) as err:
        raise UsageError(str(err)) from None
    print(f"wrote {path}: restart ComfyUI, then add the node 'Upsample Guidance'")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ug`` command; returns the exit status (0 ok, 1 error, 2 usage error).

    A process of a launch (torchrun, accelerate launch) that started ``torch.distributed`` ends
    here instead, with that status (:func:`ug_core.launch.end_process`).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        args, unknown = build_parser().parse_known_args(argv)
        if unknown:  # the command's own error, not the top-level parser's
            args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as exc:  # argparse printed the message (or --help / --version)
        return int(exc.code or 0)
    status = _run(args)
    if getattr(args, "launched", False):  # this process started torch.distributed
        launch.end_process(status)  # no interpreter teardown: see end_process
    return status


def _run(args: argparse.Namespace) -> int:
    """The command's exit status; its error, if any, printed in one line."""
    try:
        return _comfyui_install(args) if args.command == "comfyui-install" else _sample(args)
    except UsageError as err:
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return 2
    except launch.PeerFailed as err:  # another process's error; it printed the details
        print(f"{PROG} {args.command}: error: rank {err.rank}: {err.message}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # no traceback for users; the message names what failed
        print(f"{PROG} {args.command}: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
