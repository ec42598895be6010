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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from . import factors as _factors
from . import launch
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
        "1.25): ratios work with the UNet models (shapes, textured, UNet folders). For a "
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


def _factor_text(factors: Sequence[Any]) -> str:
    """``2x2``, ``3/2x3/2``: factors (or sizes) as ``--factor`` takes them."""
    return "x".join(map(str, factors))


def _check_factor(args: argparse.Namespace) -> None:
    """Default ``--factor`` (2 for images; the video model picks its own) and its form."""
    video = args.pipeline is None and args.model == "video"
    if args.factor is None:
        args.factor = None if video else (2, 2)
        return
    text, adapter = _factor_text(args.factor), "--pipeline" if args.pipeline else None
    if _SHIPPED.get(args.model) in ("latent-flow", "video"):  # through the diffusers adapter
        adapter = f"--model {args.model}"
    if len(args.factor) == 3 and not video:
        raise UsageError(
            f"--factor {text}: three factors (frames, height, width) apply to --model video "
            "only; give F or HxW"
        )
    if adapter and not all(isinstance(f, int) for f in args.factor):
        raise UsageError(
            f"--factor {text}: {adapter} samples through the diffusers adapter, which does not "
            "take fractional factors yet; give integers (ratios work with the shapes and "
            "textured models and UNet folders)"
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


def _check_device(text: str) -> None:
    """Raise UsageError unless ``--device`` is a torch device that this machine has."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise UsageError(
            f"--device {text!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)"
        ) from None
    if device.type == "cpu":
        return
    backend = getattr(torch, device.type, None)  # torch.cuda, torch.mps, torch.xpu, ...
    found = hasattr(backend, "is_available") and backend.is_available()
    count = backend.device_count() if found else 0
    if not count:
        raise UsageError(f"--device {text}: this machine has no {device.type} device; use cpu")
    if (device.index or 0) >= count:
        last = f"{device.type}:{count - 1}"
        raise UsageError(f"--device {text}: this machine has {device.type}:0 to {last} only")


def _check_class(args: argparse.Namespace) -> None:
    """``--class`` against the model folder's ``classes.json``, before the model is loaded."""
    if args.class_name is None or args.pipeline is not None:
        return
    if args.model is None or args.model in _SHIPPED:
        from .demo.registry import shipped_model

        table = shipped_model(args.model or "shapes").folder / "classes.json"
    else:
        table = Path(args.model) / "classes.json"
    try:
        meta = json.loads(table.read_text())
        classes = SimpleNamespace(classes=meta["classes"], null_class=meta.get("null_class"))
    except (OSError, ValueError, KeyError, TypeError):
        return  # no classes.json: checked once the model is loaded (which reports a broken one)
    _labels_for(classes, args, 1)


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
    import errno
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
        if err.errno == errno.ENOENT:  # the folder exists: its file system makes no new entries
            reason = "its file system does not allow new folders"
        raise UsageError(
            f"{what} is not writable: cannot make a folder in {str(parent)!r} ({reason})"
        ) from None


def _check_size(size: tuple[int, int], factors: Sequence[Any], unit: int = 1) -> None:
    """Raise UsageError unless each side of ``size`` maps to a whole trained size (in units)."""
    name = f"--size {size[0]}x{size[1]}"
    if unit > 1:
        name += f" (the pipeline needs multiples of {unit} at both sizes, so of {unit} × --factor)"
    try:
        _factors.check_divisible(size, factors, name, unit=(unit, unit))
    except ValueError as err:
        raise UsageError(str(err)) from None


def _sizes(
    args: argparse.Namespace, trained: Sequence[int], unit: int = 1
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(output size, trained-resolution size) in pixels: ``--size``, or trained size × factor."""
    size = args.size
    if size is None:
        exact = [Fraction(n) * f for n, f in zip(trained, args.factor, strict=True)]
        if any(s.denominator != 1 for s in exact):
            raise UsageError(
                f"--factor {_factor_text(args.factor)} takes the trained size "
                f"{_factor_text(trained)} to {_factor_text(exact)} pixels, not whole sizes: "
                "give --size"
            )
        size = tuple(int(s) for s in exact)
    _check_size(size, args.factor, unit)
    return size, _factors.low_sizes(size, args.factor)  # type: ignore[return-value]


def _labels_for(model: Any, args: argparse.Namespace, n: int) -> Any:
    """Class labels from --class (a name or index), or the default cycle.

    ``model`` has ``classes`` and ``null_class`` (a ``DemoModel``, ``LatentFlow`` or
    ``VideoModel``); the default cycle is ``(seed + i) mod`` the classes but the null class.
    """
    import torch

    if not getattr(model, "conditional", True):
        if args.class_name is not None:
            raise UsageError("--class needs a class-conditional model; this one is unconditional")
        return None
    n_labels = getattr(model, "num_class_embeds", None) or len(model.classes)
    if args.class_name is None:
        real = max(1, len(model.classes) - (model.null_class is not None))
        return torch.tensor([(args.seed + i) % real for i in range(n)], dtype=torch.long)
    names = [c.lower() for c in model.classes]
    key = args.class_name.lower()
    if key in names:
        idx = names.index(key)
    elif key.isdecimal() and int(key) < n_labels:
        idx = int(key)
    else:
        choices = [
            f"{c} (the null class: unconditional samples)" if i == model.null_class else c
            for i, c in enumerate(model.classes)
        ]
        raise UsageError(
            f"--class {args.class_name!r} is not a class of this model; choose one of "
            f"{', '.join(choices)}, or an index below {n_labels}"
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


def _to_uint8(images: Any) -> Any:
    """Images (n, C, H, W) or clips (n, C, F, H, W: frame strips) → uint8 (n, H, W, 3)."""
    import numpy as np

    if images.ndim == 5:  # frames left to right
        images = images.permute(0, 1, 3, 2, 4).flatten(-2)
    x = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return (np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x)[..., :3]


def _save_outputs(
    out: Path, columns: dict[str, Any], seeds: Sequence[int], row_labels: Sequence[str], title: str
) -> Path:
    """``{column}-seed{N}.png`` per sample (a frame strip and a GIF for clips), and grid.png.

    The grid has the columns side by side, one row per seed, each row labelled on its left with
    ``row_labels`` (lines separated by newlines); returns its path.
    """
    from PIL import Image, ImageDraw

    from .demo.video import save_gif

    arrays = {name: _to_uint8(x) for name, x in columns.items()}
    h = max(a.shape[1] for a in arrays.values())
    w = max(a.shape[2] for a in arrays.values())
    zoom = max(1, min(math.ceil(128 / h), 1024 // w))
    th, tw = h * zoom, w * zoom
    pad, head = 4, 18
    label_w = 8 + 6 * max(len(line) for label in row_labels for line in label.split("\n"))
    width, height = label_w + len(arrays) * (tw + pad) + pad, head + len(seeds) * (th + pad) + 18
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    for r, label in enumerate(row_labels):
        draw.multiline_text((pad, head + pad + r * (th + pad) + 2), label, fill="black")
    for c, (name, arr) in enumerate(arrays.items()):
        x0 = label_w + pad + c * (tw + pad)
        draw.text((x0 + 2, 3), name, fill="black")
        for r, seed in enumerate(seeds):
            stem = out / f"{name.lower()}-seed{seed}"
            img = Image.fromarray(arr[r])
            img.save(f"{stem}.png")
            if columns[name].ndim == 5:
                save_gif(columns[name][r], f"{stem}.gif")
            grid.paste(img.resize((tw, th), Image.NEAREST), (x0, head + pad + r * (th + pad)))
    draw.text((pad, grid.height - 14), title, fill="black")
    grid.save(out / "grid.png")
    return out / "grid.png"


def _print_table(rows: dict[str, dict[str, float]], keys: dict[str, str], legend: str) -> None:
    """Print metrics as an aligned table on stdout (``keys``: metric → column title)."""
    width = max(len(k) for k in rows) + 2
    print("\n" + "method".ljust(width) + "".join(label.rjust(14) for label in keys.values()))
    for name, vals in rows.items():
        print(name.ljust(width) + "".join(f"{vals[k]:.3f}".rjust(14) for k in keys))
    print(legend)


def _shape_metrics(
    columns: dict[str, Any], truth: Any, size: Sequence[int], threshold: float | None = None
) -> dict[str, dict[str, float]]:
    """One object, mean objects, object area and size W1 of each column and of ``truth``."""
    from .demo import metrics

    kw = {} if threshold is None else {"threshold": threshold}
    ref_counts, ref_areas = metrics.count_objects(truth, **kw)
    rows: dict[str, dict[str, float]] = {}
    for key, images in [*columns.items(), ("ground truth", truth)]:
        counts, areas = metrics.count_objects(images, **kw)
        rows[key] = {
            "one_object": float((counts == 1).mean()),
            "mean_objects": float(counts.mean()),
            "mean_area": float(areas.mean()),
            "size_w1": metrics.size_distance(areas, ref_areas),
        }
    _print_table(
        rows,
        {"one_object": "one object", "mean_objects": "mean objects", "mean_area": "object area",
         "size_w1": "size W1"},
        "(one object: fraction of samples with exactly one shape; object area: largest shape's "
        "area / image area; size W1: Wasserstein-1 distance of that area's distribution to "
        f"ground truth rendered at {size[0]}x{size[1]})",
    )  # fmt: skip
    return rows


def _video_metrics(clips: dict[str, Any], requested: Any) -> dict[str, dict[str, float]]:
    """Each method's :func:`ug_core.demo.video_metrics.summarize`, printed as a table."""
    from .demo import video_metrics

    rows = {name: video_metrics.summarize(batch, requested) for name, batch in clips.items()}
    _print_table(
        rows,
        {"one_object": "one object", "identity": "identity", "residual": "motion resid.",
         "jump_free": "no jumps"},
        "(one object: fraction of frames with exactly one shape; identity: fraction of clips "
        "whose object keeps its colour, class and size; motion resid.: median residual of the "
        "centroid track against a constant-velocity or bouncing fit, % of the side; no jumps: "
        "fraction of clips without a jump; ug_core.demo.video_metrics)",
    )  # fmt: skip
    return rows


def _finite(value: Any) -> Any:
    """``value`` for JSON: non-finite floats → None, ratios → ``"3/2"``."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, Fraction):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _dims(size: Sequence[Any]) -> str:
    """``64x64`` (height, width), or ``16 frames of 32x32``."""
    return f"{size[0]} frames of {size[1]}x{size[2]}" if len(size) == 3 else _factor_text(size)


@dataclass
class _Job:
    """A ``ug sample`` run: what the header and metrics.json say, and how to sample and score.

    ``sample(batches, progress)`` samples the given (start, stop) batches (sample ``i`` from seed
    ``--seed + i``) three ways and returns naive, UG and the baseline, each (samples, C, H, W)
    images or (samples, C, F, H, W) clips in [-1, 1] at the output size. ``metrics(columns)``
    scores every sample's columns and prints the table.
    """

    name: str
    trained: tuple[int, ...]
    size: tuple[int, ...]
    factors: tuple[Any, ...]
    steps: str
    sample: Callable[[list[tuple[int, int]], bool], dict[str, Any]]
    settings: dict[str, Any]
    classes: list[str] | None = None
    metrics: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    extra: str = ""

    def header(self, args: argparse.Namespace) -> str:
        """The first line printed: model, sizes, seeds and UG's settings."""
        seeds = f"{args.n} seed{'s' if args.n != 1 else ''}"
        return (
            f"{self.name}: trained {_dims(self.trained)}, sampling {_dims(self.size)} (factor "
            f"{_factor_text(self.factors)}), {seeds} from {args.seed}, {self.steps}, UG scale "
            f"{args.scale} eta {args.eta}{self.extra}"
        )

    def write(self, args: argparse.Namespace, columns: dict[str, Any], folder: Path) -> None:
        """The PNGs (and GIFs), the grid, the metrics (printed too) and metrics.json."""
        seeds = list(range(args.seed, args.seed + args.n))
        classes = self.classes or [""] * len(seeds)
        rows = [f"seed {s}" + (f"\n{c}" if c else "") for s, c in zip(seeds, classes, strict=True)]
        title = (
            f"{_dims(self.size)}, factor {_factor_text(self.factors)}, UG scale {args.scale}, "
            f"eta {args.eta}"
        )
        _save_outputs(folder, columns, seeds, rows, title)
        result = {**self.settings, "batch_size": args.batch_size, "seeds": seeds}
        if self.classes is not None:
            result["classes"] = self.classes
        if self.metrics is not None:
            result["metrics"] = self.metrics(columns)
        (folder / "metrics.json").write_text(json.dumps(_finite(result), indent=2) + "\n")


def _run(job: _Job, args: argparse.Namespace, ranks: launch.Ranks) -> int:
    """Sample this process's batches; rank 0 gathers every sample and writes the files."""
    progress = ranks.main and not args.no_progress  # rank 0's bars show its share
    note, run = launch.share(ranks, args.n, args.batch_size, lambda b: job.sample(b, progress))
    if ranks.main:
        print(job.header(args) + note)
    columns = run()

    def write_on_rank_0() -> None:
        if ranks.main:
            launch.write_atomically(args.out_path, lambda folder: job.write(args, columns, folder))

    launch.together(ranks, write_on_rank_0)
    if ranks.main:
        kind = "frame strips (PNG) and GIFs" if len(job.size) == 3 else "PNGs"
        names = ", ".join(columns)
        print(
            f"\nwrote {args.n * 3} {kind} ({names}), grid.png and metrics.json to {args.out_path}/"
        )
    return 0


def _image_settings(
    args: argparse.Namespace, trained: Sequence[int], size: Sequence[int], steps: int
) -> dict[str, Any]:
    """metrics.json's sizes and UG settings for an image model."""
    factor = list(args.factor)
    return dict(trained_size=list(trained), size=list(size), factor=factor, scale=args.scale,
                eta=args.eta, steps=steps)  # fmt: skip


def _with_bicubic(naive: Any, ug: Any, small: Any, size: Sequence[int]) -> dict[str, Any]:
    """The image columns: naive, UG, and the trained-size sample upscaled bicubically."""
    import torch.nn.functional as F

    up = F.interpolate(small, size=tuple(size), mode="bicubic", align_corners=False)
    return {"naive": naive, "UG": ug, "bicubic": up.clamp(-1, 1)}


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


def _unet_job(args: argparse.Namespace) -> _Job:
    """A shipped UNet model or a UNet2DModel / DDPMPipeline folder, sampled by the core."""
    import torch

    from .demo import shapes
    from .demo.model import ModelLoadError, generate, initial_noise, load, low_res_noise

    entry = None
    if args.model is None or args.model in _SHIPPED:
        from .demo.registry import shipped_model

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
    trained = model.sample_size
    size, low = _sizes(args, trained)
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
        noise, small_noise = (
            torch.cat(high),
            torch.cat([low_res_noise(x, args.factor) for x in high]),
        )
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
        return _with_bicubic(naive, ug, small, size)

    def metrics(columns: dict[str, Any]) -> dict[str, Any]:
        """The shape metrics against ground truth rendered at the output size."""
        if entry is None:
            truth = shapes.render(shapes.sample_params(256, 10**6), size)
            return _shape_metrics(columns, truth, size)
        return _shape_metrics(columns, entry.ground_truth(256, size), size, entry.segment_threshold)

    shaped = tuple(model.classes[: len(shapes.CLASSES)]) == shapes.CLASSES and channels == 3
    return _Job(
        name, trained, size, args.factor, f"{steps} DDIM steps", sample,
        {"model": name, **_image_settings(args, trained, size, steps), "cfg": cfg},
        _class_names(model, labels), metrics if shaped else None,
        f", CFG {cfg}" if model.conditional else "",
    )  # fmt: skip


def _latent_flow_job(args: argparse.Namespace) -> _Job:
    """``--model latent-flow``: the shipped StableDiffusion3Pipeline, guided by the adapter."""
    import torch

    from .demo.model import low_res_noise
    from .demo.registry import shipped_model

    _quiet_libraries()
    entry = shipped_model("latent-flow")
    model = entry.load(args.device)
    trained = model.sample_size
    config = model.pipe.transformer.config
    unit = model.pipe.vae_scale_factor * config.patch_size
    size, low = _sizes(args, trained, unit)
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
        """Each sample's x_1 from its own seed (and the trained size's, √k·D[x_1], from it)."""
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
        return _with_bicubic(naive, ug, small, size)

    return _Job(
        f"shipped latent-flow model ({entry.folder.name})", trained, size, args.factor,
        f"{steps} flow-matching Euler steps", sample,
        {"model": "latent-flow", **_image_settings(args, trained, size, steps), "cfg": cfg},
        _class_names(model, labels),
        lambda columns: _shape_metrics(columns, entry.ground_truth(256, size), size,
                                       entry.segment_threshold),
        f", CFG {cfg}",
    )  # fmt: skip


def _video_job(args: argparse.Namespace) -> _Job:
    """``--model video``: the shipped AnimateDiffPipeline model; frame strips and GIFs."""
    _quiet_libraries()
    from .demo import video
    from .demo.registry import shipped_model

    entry = shipped_model("video")
    try:
        factors = video.video_factors((2, 1, 1) if args.factor is None else args.factor)
    except ValueError as err:
        raise UsageError(f"--factor: {err}") from None
    model = entry.load(args.device)
    trained = (model.trained_frames, model.trained_size, model.trained_size)
    size = tuple(n * f for n, f in zip(trained, factors, strict=True))
    longest = model.pipe.unet.config.motion_max_seq_length
    if size[0] > longest:
        raise UsageError(
            f"--factor {_factor_text(factors)} asks for {size[0]} frames; the video model's "
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
    return _Job(
        f"shipped video model ({entry.folder.name})", trained, size, factors,
        f"{steps} DDIM steps", sample,
        dict(model="video", trained=list(trained), size=list(size), factors=list(factors),
             baseline=base, scale=args.scale, eta=args.eta, steps=steps, cfg=cfg),
        _class_names(model, labels), lambda clips: _video_metrics(clips, requested),
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


def _pipeline_job(args: argparse.Namespace) -> _Job:
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
        return _with_bicubic(naive, ug, run(batches, low, "bicubic", progress), size)

    return _Job(
        args.pipeline, trained, size, args.factor, f"{steps} steps", sample,
        {"pipeline": args.pipeline, "prompt": args.prompt,
         **_image_settings(args, trained, size, steps)},
        extra=f", prompt {args.prompt!r}",
    )  # fmt: skip


def _sample(args: argparse.Namespace) -> int:
    """``ug sample``: check what can be checked, join a launch, and run the model's job."""
    out = Path(args.out) if args.out else _new_out_dir()
    _check_out(out, given=bool(args.out))  # before torch is imported or anything is sampled
    args.out_path = out  # written only once every sample is there (launch.write_atomically)
    _check_factor(args)
    _check_options(args)
    if args.size and args.model != "video":  # a pipeline's size unit is checked once loaded
        _check_size(args.size, args.factor)
    found = launch.launch_env()  # torchrun or accelerate launch: this process's share of seeds
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    elif found is not None and found[1] > 1:
        # Launchers set OMP_NUM_THREADS=1 per process; CPU kernels round differently with
        # another thread count, so use what a single process would, for identical files.
        torch.set_num_threads(launch.single_process_threads())
    _check_device(args.device)
    _check_class(args)
    ranks, args.device = launch.start_ranks(found, args.device)
    jobs = {"unet": _unet_job, "latent-flow": _latent_flow_job, "video": _video_job}
    job = _pipeline_job if args.pipeline else jobs[_SHIPPED.get(args.model or "shapes", "unet")]
    try:
        return _run(launch.together(ranks, lambda: job(args)), args, ranks)
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
    """Run the ``ug`` command; returns the exit status (0 ok, 1 error, 2 usage error)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        args, unknown = build_parser().parse_known_args(argv)
        if unknown:  # the command's own error, not the top-level parser's
            args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as exc:  # argparse printed the message (or --help / --version)
        return int(exc.code or 0)
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
