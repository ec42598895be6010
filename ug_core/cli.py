"""The ``ug`` command: sample a diffusion model above its trained size, with and without UG.

``ug sample`` with no arguments samples the embedded 32×32 shapes model at 64×64, four seeds, three
ways from the same seeds: naive high-resolution sampling, upsample guidance (UG), and the trained
size upscaled bicubically. It writes one PNG per sample and method, a side-by-side grid
(naive | UG | bicubic, one row per seed) and ``metrics.json`` into ``--out``, and prints the
metrics::

    ug sample                                   # embedded model, factor 2, 4 seeds
    ug sample --factor 3 --n 8 --scale 1.3
    ug sample --size 64x96 --factor 2           # non-square: guided towards a 32×48 image
    ug sample --model path/to/unet-or-ddpm-pipeline
    ug sample --pipeline path/to/sd-pipeline --prompt "a red disc"

Errors (bad paths, unknown options, factors that don't divide the size) print one line on stderr
and exit with status 2 (usage) or 1 (anything else), without a traceback. Arguments and ``--out``
are checked before torch is imported or anything is sampled.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "parse_factors", "parse_size", "build_parser"]

PROG = "ug"


class UsageError(Exception):
    """A bad command line (exit status 2)."""


def _pair(text: str) -> tuple[int, int] | None:
    """``"N"`` → (N, N); ``"HxW"`` or ``"H,W"`` → (H, W); None unless positive integers."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        return None
    if len(values) not in (1, 2) or any(v < 1 for v in values):
        return None
    return values if len(values) == 2 else values * 2  # type: ignore[return-value]


def parse_factors(text: str) -> tuple[int, int]:
    """``"2"`` → (2, 2); ``"2x3"`` or ``"2,3"`` → (2, 3) (height, width). Raises ValueError.

    One factor F must be an integer >= 2; a pair ``HxW`` holds integers >= 1, not both 1.
    """
    allowed = (
        "an integer >= 2 (e.g. 2 or 3), or HxW with integers >= 1, not both 1 (e.g. 2x3 or 1x2)"
    )
    pair = _pair(text)
    if pair is None:
        raise ValueError(f"--factor must be {allowed}, got {text!r}")
    if pair == (1, 1):
        raise ValueError(f"--factor {text!r} does not upsample: it must be {allowed}")
    return pair


def parse_size(text: str) -> tuple[int, int]:
    """``"64"`` → (64, 64); ``"64x96"`` → (64, 96) (height, width). Raises ValueError."""
    pair = _pair(text)
    if pair is None:
        raise ValueError(f"--size must be a positive integer or HxW (e.g. 64, 64x96), got {text!r}")
    return pair


def _positive_int(name: str, lo: int = 1):
    """An argparse type: an integer >= lo, with a message naming the option."""

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"{name} must be >= {lo}, got {value}")
        return value

    return convert


def _float(name: str, lo: float | None = None, hi: float | None = None):
    """An argparse type: a finite float in [lo, hi]."""

    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if (
            not math.isfinite(value)
            or (lo is not None and value < lo)
            or (hi is not None and value > hi)
        ):
            rng = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
            raise argparse.ArgumentTypeError(f"{name} must be a number in {rng}, got {text!r}")
        return value

    return convert


def _factor_type(text: str) -> tuple[int, int]:
    try:
        return parse_factors(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _size_type(text: str) -> tuple[int, int]:
    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    """The ``ug`` argument parser."""
    from . import __version__

    parser = argparse.ArgumentParser(
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
            "and class) and metrics.json into --out. Default: "
            "the embedded 32x32 shapes model."
        ),
    )
    src = s.add_mutually_exclusive_group()
    src.add_argument(
        "--model", metavar="PATH", help="a local diffusers UNet2DModel or DDPMPipeline folder"
    )
    src.add_argument(
        "--pipeline", metavar="PATH", help="a local Stable Diffusion-style pipeline folder"
    )
    s.add_argument("--prompt", help="text prompt (with --pipeline)")
    s.add_argument(
        "--factor", type=_factor_type, default=(2, 2), metavar="F",
        help="upsampling factor F (default 2): UG guides the sample towards the model's own "
        "sample at the size divided by F. For a non-square image give a non-square --size and "
        "one factor (--size 64x96 --factor 2 guides towards a 32x48 image). Unequal factors "
        "HxW (e.g. 2x3) stretch the content by H and W (discs become ellipses): they are meant "
        "for time against space in video models, not for height against width",
    )  # fmt: skip
    s.add_argument(
        "--size", type=_size_type, metavar="N|HxW",
        help="output size in pixels, square N or HxW such as 64x96 (default: trained size × "
        "factor); the factor must divide it",
    )  # fmt: skip
    s.add_argument(
        "--scale", type=_float("--scale"), default=1.0,
        help="UG scale θ (default 1.0; the paper found about 1.3 best for pixel models)",
    )  # fmt: skip
    s.add_argument(
        "--eta", type=_float("--eta", 0.0, 1.0), default=1.0,
        help="UG η: guidance on during the noisiest η of the time axis (default 1.0)",
    )  # fmt: skip
    s.add_argument(
        "--steps", type=_positive_int("--steps"), default=None,
        help="sampling steps (default 30 for the shapes model, 25 for a pipeline)",
    )  # fmt: skip
    s.add_argument("--n", type=_positive_int("--n"), default=4, help="number of seeds (default 4)")
    s.add_argument("--seed", type=_positive_int("--seed", 0), default=0, help="first seed")
    s.add_argument(
        "--cfg", type=_float("--cfg", 0.0), default=None,
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
    s.add_argument("--threads", type=_positive_int("--threads"), help="torch CPU threads")
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
    c.add_argument("path", metavar="PATH", help="ComfyUI's folder, or its custom_nodes folder")
    return parser


def _new_out_dir() -> Path:
    """A fresh ``./ug-samples-<timestamp>`` folder name."""
    base = Path(f"ug-samples-{time.strftime('%Y%m%d-%H%M%S')}")
    out, i = base, 1
    while out.exists():
        out, i = Path(f"{base}-{i}"), i + 1
    return out


def _check_out(out: Path, given: bool) -> None:
    """Raise UsageError unless ``out`` is a folder that exists or can be made, and is writable.

    Probes by making (and removing) a temporary folder in ``out``, or in its nearest existing
    parent, so that nothing is left behind.
    """
    import tempfile

    what = f"--out {str(out)!r}" if given else f"the output folder {str(out)!r}"
    if out.exists() and not out.is_dir():
        raise UsageError(f"{what} exists and is not a folder")
    parent = out.absolute()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{what} cannot be made: {str(parent)!r} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".ug-probe-", dir=parent))
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UsageError(
            f"{what} is not writable: cannot make a folder in {str(parent)!r} ({reason})"
        ) from None


def _check_size(size: tuple[int, int], factors: tuple[int, int], unit: int = 1) -> None:
    """Raise UsageError unless ``unit·factor`` divides each side of ``size`` (height, width)."""
    from .operators import check_divisible

    name = f"--size {size[0]}x{size[1]}"
    if unit > 1:
        name += f" (the pipeline needs multiples of {unit} at both sizes, so of {unit} × --factor)"
    try:
        check_divisible(size, (unit * factors[0], unit * factors[1]), name)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _to_uint8(images: Any) -> Any:
    """Images (n, C, H, W) in [-1, 1] → uint8 numpy (n, H, W, 3)."""
    import numpy as np

    x = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return x[..., :3]


def _save_outputs(
    out: Path,
    columns: dict[str, Any],
    seeds: Sequence[int],
    row_labels: Sequence[str],
    title: str,
) -> Path:
    """One PNG per sample and column, and grid.png; returns the grid's path.

    The grid has the columns side by side, one row per seed, each row labelled on its left with
    ``row_labels`` (e.g. its seed and class; lines separated by newlines).
    """
    from PIL import Image, ImageDraw

    out.mkdir(parents=True, exist_ok=True)
    arrays = {name: _to_uint8(x) for name, x in columns.items()}
    h = max(a.shape[1] for a in arrays.values())
    w = max(a.shape[2] for a in arrays.values())
    zoom = max(1, math.ceil(128 / max(h, w)))
    th, tw = h * zoom, w * zoom
    pad, head = 4, 18
    label_w = 8 + 6 * max(len(line) for label in row_labels for line in label.split("\n"))
    grid = Image.new(
        "RGB",
        (label_w + len(arrays) * (tw + pad) + pad, head + len(seeds) * (th + pad) + pad + 14),
        "white",
    )
    draw = ImageDraw.Draw(grid)
    for r, label in enumerate(row_labels):
        draw.multiline_text((pad, head + pad + r * (th + pad) + 2), label, fill="black")
    for c, (name, arr) in enumerate(arrays.items()):
        x0 = label_w + pad + c * (tw + pad)
        draw.text((x0 + 2, 3), name, fill="black")
        for r, seed in enumerate(seeds):
            img = Image.fromarray(arr[r])
            img.save(out / f"{name.split()[0].lower()}-seed{seed}.png")
            tile = img.resize((img.width * zoom, img.height * zoom), Image.NEAREST)
            grid.paste(tile, (x0, head + pad + r * (th + pad)))
    draw.text((pad, grid.height - 14), title, fill="black")
    path = out / "grid.png"
    grid.save(path)
    return path


def _print_table(rows: dict[str, dict[str, float]], keys: Sequence[tuple[str, str]]) -> None:
    """Print metrics as an aligned table on stdout."""
    width = max(len(k) for k in rows) + 2
    print("method".ljust(width) + "".join(label.rjust(14) for _, label in keys))
    for name, vals in rows.items():
        cells = "".join(
            (f"{vals[k]:.3f}" if isinstance(vals.get(k), float) else str(vals.get(k, "-"))).rjust(
                14
            )
            for k, _ in keys
        )
        print(name.ljust(width) + cells)


def _labels_for(model: Any, args: argparse.Namespace, n: int) -> Any:
    """Class labels from --class (a name or index), or the default cycle."""
    import torch

    from .demo.model import default_labels

    if not model.conditional:
        if args.class_name is not None:
            raise UsageError("--class needs a class-conditional model; this one is unconditional")
        return None
    if args.class_name is None:
        return default_labels(model, n, args.seed)
    names = [c.lower() for c in model.classes]
    key = args.class_name.lower()
    if key in names:
        idx = names.index(key)
    elif key.isdigit() and int(key) < model.num_class_embeds:
        idx = int(key)
    else:
        choices = [
            f"{c} (the null class: unconditional samples)" if i == model.null_class else c
            for i, c in enumerate(model.classes)
        ]
        raise UsageError(
            f"--class {args.class_name!r} is not a class of this model; choose one of "
            f"{', '.join(choices)}, or an index below {model.num_class_embeds}"
        )
    return torch.full((n,), idx, dtype=torch.long)


def _class_names(model: Any, labels: Any) -> list[str] | None:
    """The class name of each label (None for an unconditional model)."""
    if labels is None:
        return None
    names = []
    for i in labels.tolist():
        name = model.classes[i] if i < len(model.classes) else f"class {i}"
        names.append(f"{name} (null class)" if i == model.null_class else name)
    return names


def _sample_unet(args: argparse.Namespace) -> int:
    """``ug sample`` for the embedded model or a UNet2DModel / DDPMPipeline folder."""
    import torch.nn.functional as F

    from .demo import metrics, shapes
    from .demo.model import ModelLoadError, generate, initial_noise, load, low_res_noise

    if args.prompt is not None:
        raise UsageError("--prompt needs --pipeline PATH (a text-to-image pipeline)")
    if args.model is not None and not Path(args.model).exists():
        raise UsageError(f"--model {args.model!r}: no such file or folder")
    try:
        model = load(args.model, args.device)
    except ModelLoadError as err:
        raise UsageError(f"--model: {err}") from None
    trained = model.sample_size
    fh, fw = args.factor
    size = args.size or (trained[0] * fh, trained[1] * fw)
    _check_size(size, args.factor)
    low = (size[0] // fh, size[1] // fw)
    steps = args.steps or 30
    if steps > model.schedule.num_timesteps:
        raise UsageError(f"--steps {steps} exceeds the model's {model.schedule.num_timesteps}")
    is_shapes = tuple(model.classes[: len(shapes.CLASSES)]) == shapes.CLASSES
    cfg = args.cfg if args.cfg is not None else (2.0 if model.null_class is not None else 1.0)
    if cfg != 1.0 and model.null_class is None:
        raise UsageError(f"--cfg {cfg} needs a class-conditional model with a null class")
    labels = _labels_for(model, args, args.n)
    channels = model.unet.config.in_channels
    noise = initial_noise(args.n, size, args.seed, channels)
    common = dict(
        seed=args.seed, steps=steps, labels=labels, cfg=cfg, progress=not args.no_progress
    )
    name = "embedded shapes32 model" if args.model is None else args.model
    print(
        f"{name}: trained {trained[0]}x{trained[1]}, sampling {size[0]}x{size[1]} "
        f"(factor {fh}x{fw}), {args.n} seeds from {args.seed}, {steps} DDIM steps, "
        f"UG scale {args.scale} eta {args.eta}" + (f", CFG {cfg}" if model.conditional else "")
    )
    naive = generate(model, args.n, size, noise=noise, desc="naive", **common)
    try:
        ug = generate(
            model, args.n, size, noise=noise, factors=args.factor, scale=args.scale,
            eta=args.eta, desc="UG", **common,
        )  # fmt: skip
    except (TypeError, ValueError) as err:
        raise UsageError(str(err)) from None
    small = generate(
        model, args.n, low, noise=low_res_noise(noise, args.factor), desc="trained size", **common
    )
    up = F.interpolate(small, size=size, mode="bicubic", align_corners=False).clamp(-1, 1)
    columns = {"naive": naive, "UG": ug, "bicubic": up}
    seeds = list(range(args.seed, args.seed + args.n))
    classes = _class_names(model, labels)
    row_labels = [
        f"seed {seed}" + (f"\n{c}" if c is not None else "")
        for seed, c in zip(seeds, classes or [None] * len(seeds), strict=True)
    ]
    title = f"{size[0]}x{size[1]}, factor {fh}x{fw}, UG scale {args.scale}, eta {args.eta}"
    grid = _save_outputs(args.out_path, columns, seeds, row_labels, title)
    result: dict[str, Any] = {
        "model": name,
        "trained_size": list(trained),
        "size": list(size),
        "factor": [fh, fw],
        "scale": args.scale,
        "eta": args.eta,
        "steps": steps,
        "cfg": cfg,
        "seeds": seeds,
    }
    if classes is not None:
        result["classes"] = classes
    rows: dict[str, dict[str, float]] = {}
    if is_shapes and channels == 3:
        truth = shapes.render(shapes.sample_params(256, 10**6), size)
        ref_counts, ref_areas = metrics.count_objects(truth)
        for key, images in columns.items():
            counts, areas = metrics.count_objects(images)
            rows[key] = {
                "one_object": float((counts == 1).mean()),
                "mean_objects": float(counts.mean()),
                "mean_area": float(areas.mean()),
                "size_w1": metrics.size_distance(areas, ref_areas),
            }
        rows["ground truth"] = {
            "one_object": float((ref_counts == 1).mean()),
            "mean_objects": float(ref_counts.mean()),
            "mean_area": float(ref_areas.mean()),
            "size_w1": 0.0,
        }
        result["metrics"] = rows
        print()
        _print_table(
            rows,
            [
                ("one_object", "one object"),
                ("mean_objects", "mean objects"),
                ("mean_area", "object area"),
                ("size_w1", "size W1"),
            ],
        )
        print(
            "(one object: fraction of samples with exactly one shape; object area: largest "
            "shape's area / image area; size W1: Wasserstein-1 distance of that area's "
            f"distribution to ground truth rendered at {size[0]}x{size[1]})"
        )
    (args.out_path / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.n * 3} PNGs, {grid} and metrics.json to {args.out_path}/")
    return 0


def _load_pipeline(path: str, device: str) -> Any:
    """A local diffusers pipeline folder, or UsageError."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
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


def _sample_pipeline(args: argparse.Namespace) -> int:
    """``ug sample --pipeline PATH --prompt TEXT``: a Stable Diffusion-style pipeline."""
    import torch
    import torch.nn.functional as F

    from .adapters.diffusers import apply_upsample_guidance, remove_upsample_guidance

    if args.prompt is None:
        raise UsageError("--pipeline needs --prompt TEXT")
    if args.class_name is not None:
        raise UsageError("--class applies to class-conditional UNet models, not to --pipeline")
    pipe = _load_pipeline(args.pipeline, args.device)
    pipe.set_progress_bar_config(disable=args.no_progress)
    vae = int(getattr(pipe, "vae_scale_factor", 8))
    latent = pipe.unet.config.sample_size
    latent = (latent, latent) if isinstance(latent, int) else tuple(latent)
    trained = (latent[0] * vae, latent[1] * vae)
    fh, fw = args.factor
    size = args.size or (trained[0] * fh, trained[1] * fw)
    # Stable Diffusion pipelines take sizes in multiples of 8 (and of the VAE factor), at both
    # the high and the trained-size (low) resolution.
    _check_size(size, args.factor, math.lcm(vae, 8))
    low = (size[0] // fh, size[1] // fw)
    steps = args.steps or 25
    kwargs: dict[str, Any] = dict(num_inference_steps=steps, output_type="pt")
    if args.cfg is not None:
        kwargs["guidance_scale"] = args.cfg
    seeds = list(range(args.seed, args.seed + args.n))
    prompts = [args.prompt] * args.n

    def run(height: int, width: int) -> torch.Tensor:
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        out = pipe(prompts, height=height, width=width, generator=gens, **kwargs).images
        return torch.as_tensor(out).float().cpu() * 2 - 1

    print(
        f"{args.pipeline}: trained {trained[0]}x{trained[1]}, sampling {size[0]}x{size[1]} "
        f"(factor {fh}x{fw}), {args.n} seeds from {args.seed}, {steps} steps, UG scale "
        f"{args.scale} eta {args.eta}, prompt {args.prompt!r}"
    )
    naive = run(*size)
    try:
        apply_upsample_guidance(pipe, args.factor, args.scale, eta=args.eta)
    except (TypeError, ValueError) as err:
        raise UsageError(str(err)) from None
    try:
        ug = run(*size)
    finally:
        remove_upsample_guidance(pipe)
    up = F.interpolate(run(*low), size=size, mode="bicubic", align_corners=False).clamp(-1, 1)
    columns = {"naive": naive, "UG": ug, "bicubic": up}
    title = f"{size[0]}x{size[1]}, factor {fh}x{fw}, UG scale {args.scale}, eta {args.eta}"
    grid = _save_outputs(args.out_path, columns, seeds, [f"seed {s}" for s in seeds], title)
    result = {
        "pipeline": args.pipeline,
        "prompt": args.prompt,
        "trained_size": list(trained),
        "size": list(size),
        "factor": [fh, fw],
        "scale": args.scale,
        "eta": args.eta,
        "steps": steps,
        "seeds": seeds,
    }
    (args.out_path / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.n * 3} PNGs, {grid} and metrics.json to {args.out_path}/")
    return 0


def _comfyui_install(args: argparse.Namespace, sub: argparse.ArgumentParser) -> int:
    """``ug comfyui-install PATH``: write the custom node file; exit 2 for a bad path."""
    from .adapters.comfyui import install_custom_node

    try:
        path = install_custom_node(args.path)
    except (TypeError, ValueError) as err:
        sub.print_usage(sys.stderr)
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}: restart ComfyUI, then add the node 'Upsample Guidance'")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ug`` command; returns the exit status (0 ok, 1 error, 2 usage error)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse printed the message (or --help / --version)
        return int(exc.code or 0)
    sub = parser._subparsers._group_actions[0].choices[args.command]  # type: ignore[union-attr]
    if args.command == "comfyui-install":
        return _comfyui_install(args, sub)
    try:
        out = Path(args.out) if args.out else _new_out_dir()
        _check_out(out, given=bool(args.out))  # before torch is imported or anything is sampled
        args.out_path = out  # created only once there is something to write
        if args.size:  # before loading a model (a pipeline's size unit is checked after)
            _check_size(args.size, args.factor)
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        if args.pipeline is not None:
            return _sample_pipeline(args)
        return _sample_unet(args)
    except UsageError as err:
        sub.print_usage(sys.stderr)
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # no traceback for users; the message names what failed
        print(f"{PROG} {args.command}: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
