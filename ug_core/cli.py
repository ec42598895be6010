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
are checked before torch is imported or anything is sampled. The files are written into a hidden
temporary folder and moved into ``--out`` once complete.

Under ``torchrun`` or ``accelerate launch`` the processes share the seeds, in the same batches of
``--batch-size`` consecutive seeds as one process, and rank 0 gathers them and writes the same
files, byte for byte, as one process (docs/design.md, "Many processes")::

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
from pathlib import Path
from typing import Any

__all__ = ["main", "parse_factors", "parse_video_factors", "parse_size", "build_parser"]

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


def parse_video_factors(text: str) -> tuple[int, int, int]:
    """``"FxHxW"`` (or ``"F,H,W"``) → (frames, height, width) factors. Raises ValueError.

    Three integers >= 1, not all 1 (e.g. ``2x1x1``: twice the frames; ``1x2x2``: twice the side).
    """
    allowed = "FxHxW with integers >= 1, not all 1 (e.g. 2x1x1, 1x2x2 or 2x2x2)"
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or any(v < 1 for v in values):
        raise ValueError(f"--factor must be {allowed}, got {text!r}")
    if values == (1, 1, 1):
        raise ValueError(f"--factor {text!r} does not upsample: it must be {allowed}")
    return values  # type: ignore[return-value]


def _factor_type(text: str) -> tuple[int, ...]:
    parts = len(text.lower().replace(",", "x").split("x"))
    if parts > 3:
        raise argparse.ArgumentTypeError(
            f"--factor must be F or HxW (image models) or FxHxW (the video model), got {text!r}"
        )
    try:
        if parts == 3:
            return parse_video_factors(text)
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
        "--factor", type=_factor_type, default=None, metavar="F",
        help="upsampling factor F (default 2): UG guides the sample towards the model's own "
        "sample at the size divided by F. For a non-square image give a non-square --size and "
        "one factor (--size 64x96 --factor 2 guides towards a 32x48 image). Unequal factors "
        "HxW (e.g. 2x3) stretch the content by H and W (discs become ellipses): they are meant "
        "for time against space in video models, not for height against width. With --model "
        "video: FxHxW on (frames, height, width), default 2x1x1 (twice the frames); one F "
        "means 1xFxF",
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
    s.add_argument(
        "--n", "--num-samples", dest="n", type=_positive_int("--n"), default=4, metavar="N",
        help="number of seeds (default 4); spell it --num-samples under torchrun, whose own "
        "parser takes --n for an abbreviation of its options",
    )  # fmt: skip
    s.add_argument("--seed", type=_positive_int("--seed", 0), default=0, help="first seed")
    s.add_argument(
        "--batch-size", type=_positive_int("--batch-size"), default=4, metavar="B",
        help="samples per model call (default 4): batches of B consecutive seeds, the same "
        "batches under torchrun or accelerate launch, which share them among the processes",
    )  # fmt: skip
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


#: The shipped models (``ug_core.demo.registry``) by name and kind, known without importing torch.
_SHIPPED = {"shapes": "unet", "textured": "unet", "latent-flow": "latent-flow", "video": "video"}


def _check_factor(args: argparse.Namespace) -> None:
    """Default ``--factor`` (2 for images; the video model picks its own) and its form."""
    video = args.pipeline is None and args.model == "video"
    if args.factor is None:
        args.factor = None if video else (2, 2)
    elif len(args.factor) == 3 and not video:
        raise UsageError(
            f"--factor {'x'.join(map(str, args.factor))}: three factors (frames, height, width) "
            "apply to --model video only; give F or HxW"
        )
    elif video and len(args.factor) == 2:
        fh, fw = args.factor
        args.factor = (1, fh, fw)


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


def _chunks(n: int, batch: int) -> list[tuple[int, int]]:
    """Samples ``0 … n-1`` as (start, stop) batches of ``batch`` consecutive ones."""
    return [(a, min(a + batch, n)) for a in range(0, n, batch)]


@dataclass(frozen=True)
class _Ranks:
    """The rank of this process among the launched ones, and their number (1 without a launch).

    ``owned``: this process started ``torch.distributed``, so it ends it too.
    """

    rank: int = 0
    world: int = 1
    owned: bool = False

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the process that gathers the samples and writes the files."""
        return self.rank == 0


class _PeerFailed(Exception):
    """Another process of the launch failed; this one stops with the same exit status."""

    def __init__(self, rank: int, code: int, message: str) -> None:
        super().__init__(message)
        self.rank, self.code, self.message = rank, code, message


def _launch_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) as torchrun and accelerate launch set them; None without."""
    env = os.environ
    if "WORLD_SIZE" not in env:
        return None
    names = ("WORLD_SIZE", "RANK", "LOCAL_RANK")
    found = ", ".join(f"{k}={env.get(k)!r}" for k in names)
    try:
        world, rank = int(env["WORLD_SIZE"]), int(env.get("RANK", ""))
        local = int(env.get("LOCAL_RANK", rank))
    except ValueError:
        raise UsageError(
            f"a launch needs integer WORLD_SIZE, RANK and LOCAL_RANK, got {found}"
        ) from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise UsageError(f"a launch needs WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE, got {found}")
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if world > 1 and not env.get(k)]
    if missing:
        raise UsageError(
            f"WORLD_SIZE={world} but no {' and no '.join(missing)}: start the processes with "
            "torchrun or accelerate launch"
        )
    return rank, world, local


def _single_process_threads() -> int:
    """The CPU threads torch uses in a single process here: the CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _start_ranks(launch: tuple[int, int, int] | None, device: str) -> tuple[_Ranks, str]:
    """Join the launch's process group; returns (ranks, this process's device).

    The group is gloo on the CPU, and NCCL for CUDA tensors with gloo for the gathered samples
    when ``device`` is a GPU; ``--device cuda`` becomes ``cuda:(LOCAL_RANK mod GPUs)``. A group
    that the calling program started already is used as it is.
    """
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return _Ranks(dist.get_rank(), dist.get_world_size()), device
    if launch is None or launch[1] == 1:
        return _Ranks(), device
    if not dist.is_available():
        raise UsageError("this torch build has no torch.distributed: run ug without a launcher")
    cuda = torch.device(device).type == "cuda"
    if cuda and torch.cuda.is_available():
        if device == "cuda":
            device = f"cuda:{launch[2] % torch.cuda.device_count()}"
        torch.cuda.set_device(torch.device(device))
    # The collectives wait for the slowest process's sampling (hours for a large run); a process
    # that dies closes its connections, and the launcher stops the others.
    dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=timedelta(hours=24))
    return _Ranks(dist.get_rank(), dist.get_world_size(), owned=True), device


def _stop_ranks(ranks: _Ranks) -> None:
    """Leave the process group if this process started it, after the others reach this point.

    Without the barrier a process that leaves first can tear gloo down while a peer's last
    message to it is still in flight, and die of SIGABRT instead of exiting with its status.
    The barrier has a timeout, so a peer that never arrives can't hold this process.
    """
    if ranks.owned:
        import torch.distributed as dist

        if ranks.world > 1:
            from datetime import timedelta

            try:
                dist.monitored_barrier(timeout=timedelta(seconds=60))
            except Exception:  # noqa: BLE001 - a missing peer or a non-gloo group: leave anyway
                pass
        dist.destroy_process_group()


def _together(ranks: _Ranks, step: Callable[[], Any]) -> Any:
    """``step()`` on every process; if it fails on any, every process stops (none waits forever).

    The failing process raises its own error; the others raise :class:`_PeerFailed` with its
    exit status (2 for a usage error, 1 otherwise) and message.
    """
    if ranks.world == 1:
        return step()
    import torch.distributed as dist

    value, failure, error = None, None, None
    try:
        value = step()
    except UsageError as err:
        failure, error = (2, str(err)), err
    except Exception as err:
        failure, error = (1, f"{type(err).__name__}: {err}"), err
    failures: list[Any] = [None] * ranks.world
    dist.all_gather_object(failures, failure)
    if error is not None:
        raise error
    for rank, failed in enumerate(failures):
        if failed is not None:
            raise _PeerFailed(rank, *failed)
    return value


def _gather(
    ranks: _Ranks, chunks: list[tuple[int, int]], columns: dict[str, Any]
) -> dict[str, Any] | None:
    """Rank 0: every process's samples, in sample order; the other ranks: None."""
    if ranks.world == 1:
        return columns
    import torch
    import torch.distributed as dist

    parts: list[Any] | None = [None] * ranks.world if ranks.main else None
    dist.gather_object((chunks, columns), parts, dst=0)
    if parts is None:
        return None
    parts = [(c, cols) for c, cols in parts if c]  # a process may have had no batch
    order = [i for c, _ in parts for a, b in c for i in range(a, b)]
    position = torch.tensor(sorted(range(len(order)), key=order.__getitem__))
    return {key: torch.cat([cols[key] for _, cols in parts])[position] for key in parts[0][1]}


def _write_atomically(out: Path, write: Callable[[Path], None]) -> None:
    """``write(folder)`` into a hidden temporary folder, moved into place once it is complete.

    A new ``out`` is the temporary folder (``.<name>.partial-*`` beside it) renamed: it exists
    complete or not at all. Into an existing ``out`` (from ``.ug.partial-*`` inside it) each file
    replaces the one of the same name, ``metrics.json`` last; other files are left alone. A
    failure removes the temporary folder; a killed process leaves it, hidden and named partial.
    """
    import shutil
    import uuid

    fresh = not out.exists()
    home = out.absolute().parent if fresh else out
    home.mkdir(parents=True, exist_ok=True)
    name = out.absolute().name if fresh else "ug"
    tmp = home / f".{name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write(tmp)
        if fresh:
            os.rename(tmp, out)
            return
        files = sorted(tmp.iterdir(), key=lambda p: (p.name == "metrics.json", p.name))
        for path in files:
            os.replace(path, out / path.name)
        tmp.rmdir()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclass
class _Job:
    """A ``ug sample`` run, split so that the processes of a launch can share the samples.

    ``sample(batches, progress)`` samples the given (start, stop) batches of samples (sample
    ``i`` from seed ``--seed + i``) and returns each column, (samples, C, H, W) in [-1, 1] ({}
    for no batch); ``write(columns, folder)`` writes the PNGs, the grid and metrics.json from
    every sample's columns, in sample order, and prints the metrics.
    """

    n: int
    header: str
    sample: Callable[[list[tuple[int, int]], bool], dict[str, Any]]
    write: Callable[[dict[str, Any], Path], None]
    wrote: str = "{n3} PNGs, {grid} and metrics.json"
    """What ``write`` writes, for the closing line (``{n3}``: 3 × samples; ``{grid}``: grid.png)."""


def _run(job: _Job, args: argparse.Namespace, ranks: _Ranks) -> int:
    """Sample this process's batches; rank 0 gathers every sample and writes the files.

    The batches are the same for any number of processes (process ``r`` samples every
    ``world``-th from batch ``r``), so the files are the same too.
    """
    batches = _chunks(job.n, args.batch_size)
    mine = batches[ranks.rank :: ranks.world]
    if ranks.main:
        shared = f", {len(batches)} batches over {ranks.world} processes" if ranks.world > 1 else ""
        idle = ranks.world - len(batches)
        if idle > 0:
            shared += f" ({idle} without a batch: a smaller --batch-size shares the seeds)"
        print(job.header + shared)
    progress = ranks.main and not args.no_progress  # rank 0's bars show its share
    columns = _gather(ranks, mine, _together(ranks, lambda: job.sample(mine, progress)))

    def write_on_rank_0() -> None:
        if ranks.main:
            _write_atomically(args.out_path, lambda folder: job.write(columns, folder))

    _together(ranks, write_on_rank_0)
    if ranks.main:
        out = args.out_path
        wrote = job.wrote.format(n3=job.n * 3, grid=out / "grid.png")
        print(f"\nwrote {wrote} to {out}/")
    return 0


def _sample_unet(args: argparse.Namespace, ranks: _Ranks) -> int:
    """``ug sample`` for a shipped model or a UNet2DModel / DDPMPipeline folder."""
    kind = _SHIPPED.get(args.model or "shapes", "unet")
    jobs = {"unet": _unet_job, "latent-flow": _latent_flow_job, "video": _video_job}
    return _run(_together(ranks, lambda: jobs[kind](args)), args, ranks)


def _shape_metrics(
    columns: dict[str, Any], truth: Any, threshold: float | None = None
) -> dict[str, dict[str, float]]:
    """One object, mean objects, object area and size W1 of each column and of ``truth``."""
    from .demo import metrics

    kw = {} if threshold is None else {"threshold": threshold}
    ref_counts, ref_areas = metrics.count_objects(truth, **kw)
    rows: dict[str, dict[str, float]] = {}
    for key, images in columns.items():
        counts, areas = metrics.count_objects(images, **kw)
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
    return rows


def _print_shape_metrics(rows: dict[str, dict[str, float]], size: Sequence[int]) -> None:
    """The table of :func:`_shape_metrics` and what its columns mean."""
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


def _unet_job(args: argparse.Namespace) -> _Job:
    """Load and check the model and the options; the job that samples and writes."""
    import torch
    import torch.nn.functional as F

    from .demo import shapes
    from .demo.model import ModelLoadError, generate, initial_noise, load, low_res_noise

    if args.prompt is not None:
        raise UsageError("--prompt needs --pipeline PATH (a text-to-image pipeline)")
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
    name = args.model if entry is None else f"shipped {entry.name} model ({entry.folder.name})"
    header = (
        f"{name}: trained {trained[0]}x{trained[1]}, sampling {size[0]}x{size[1]} "
        f"(factor {fh}x{fw}), {args.n} seeds from {args.seed}, {steps} DDIM steps, "
        f"UG scale {args.scale} eta {args.eta}" + (f", CFG {cfg}" if model.conditional else "")
    )

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
            ug = generate(
                model, len(index), size, noise=noise, factors=args.factor, scale=args.scale,
                eta=args.eta, desc="UG", **common,
            )  # fmt: skip
        except (TypeError, ValueError) as err:
            raise UsageError(str(err)) from None
        small = generate(model, len(index), low, noise=small_noise, desc="trained size", **common)
        return {"naive": naive, "UG": ug, "small": small}

    def write(samples: dict[str, Any], folder: Path) -> None:
        """The PNGs, the grid, the metrics (printed too) and metrics.json."""
        up = F.interpolate(samples["small"], size=size, mode="bicubic", align_corners=False)
        columns = {"naive": samples["naive"], "UG": samples["UG"], "bicubic": up.clamp(-1, 1)}
        seeds = list(range(args.seed, args.seed + args.n))
        classes = _class_names(model, labels)
        row_labels = [
            f"seed {seed}" + (f"\n{c}" if c is not None else "")
            for seed, c in zip(seeds, classes or [None] * len(seeds), strict=True)
        ]
        title = f"{size[0]}x{size[1]}, factor {fh}x{fw}, UG scale {args.scale}, eta {args.eta}"
        _save_outputs(folder, columns, seeds, row_labels, title)
        result: dict[str, Any] = {
            "model": name,
            "trained_size": list(trained),
            "size": list(size),
            "factor": [fh, fw],
            "scale": args.scale,
            "eta": args.eta,
            "steps": steps,
            "cfg": cfg,
            "batch_size": args.batch_size,
            "seeds": seeds,
        }
        if classes is not None:
            result["classes"] = classes
        if is_shapes and channels == 3:
            if entry is not None:
                truth = entry.ground_truth(256, size)
                rows = _shape_metrics(columns, truth, entry.segment_threshold)
            else:
                rows = _shape_metrics(
                    columns, shapes.render(shapes.sample_params(256, 10**6), size)
                )
            result["metrics"] = rows
            _print_shape_metrics(rows, size)
        (folder / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")

    return _Job(args.n, header, sample, write)


def _pipeline_cfg(cfg: float | None, default: float) -> float:
    """--cfg for a diffusers pipeline, which applies CFG only above 1: 1 (off) or more."""
    if cfg is None:
        return default
    if cfg < 1:
        raise UsageError(f"--cfg {cfg:g}: this model's pipeline takes 1 (no CFG) or more")
    return cfg


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN or Infinity)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _latent_flow_job(args: argparse.Namespace) -> _Job:
    """``--model latent-flow``: the shipped StableDiffusion3Pipeline, guided by the adapter."""
    import torch
    import torch.nn.functional as F

    from .adapters.diffusers import apply_upsample_guidance, remove_upsample_guidance
    from .demo.registry import shipped_model

    if args.prompt is not None:
        raise UsageError("--prompt needs --pipeline PATH; the latent-flow model takes --class")
    entry = shipped_model("latent-flow")
    model = entry.load(args.device)
    trained = model.sample_size
    fh, fw = args.factor
    size = args.size or (trained[0] * fh, trained[1] * fw)
    config = model.pipe.transformer.config
    unit = model.pipe.vae_scale_factor * config.patch_size
    _check_size(size, args.factor, unit)
    largest = config.pos_embed_max_size * unit
    if max(size) > largest:
        raise UsageError(
            f"size {size[0]}x{size[1]} exceeds the latent-flow model's largest, {largest}x{largest}"
            f" (its positional-embedding grid): use a smaller --factor or --size"
        )
    low = (size[0] // fh, size[1] // fw)
    steps = args.steps or entry.default_steps
    cfg = _pipeline_cfg(args.cfg, entry.default_cfg)
    labels = _labels_for(model, args, args.n)
    header = (
        f"shipped latent-flow model ({entry.folder.name}): trained {trained[0]}x{trained[1]}, "
        f"sampling {size[0]}x{size[1]} (factor {fh}x{fw}), {args.n} seeds from {args.seed}, "
        f"{steps} flow-matching Euler steps, UG scale {args.scale} eta {args.eta}, CFG {cfg}"
    )

    def sample(batches: list[tuple[int, int]], progress: bool) -> dict[str, Any]:
        """Each sample's x_1 from its own seed (and the trained size's, √k·D[x_1], from it)."""
        index = [i for a, b in batches for i in range(a, b)]
        if not index:
            return {}
        high = torch.cat([model.initial_latents(b - a, size, args.seed + a) for a, b in batches])
        small_latents = F.avg_pool2d(high, (fh, fw)) * math.sqrt(fh * fw)
        lab = labels[index]
        model.pipe.set_progress_bar_config(disable=not progress)
        common = dict(steps=steps, cfg=cfg, batch_size=args.batch_size)
        naive = model.generate(lab, size, latents=high, **common)
        try:
            apply_upsample_guidance(model.pipe, (fh, fw), args.scale, eta=args.eta)
        except (TypeError, ValueError) as err:
            raise UsageError(str(err)) from None
        try:
            ug = model.generate(lab, size, latents=high, **common)
        finally:
            remove_upsample_guidance(model.pipe)
        small = model.generate(lab, low, latents=small_latents, **common)
        return {"naive": naive, "UG": ug, "small": small}

    def write(samples: dict[str, Any], folder: Path) -> None:
        """The PNGs, the grid, the metrics (printed too) and metrics.json."""
        up = F.interpolate(samples["small"], size=size, mode="bicubic", align_corners=False)
        columns = {"naive": samples["naive"], "UG": samples["UG"], "bicubic": up.clamp(-1, 1)}
        seeds = list(range(args.seed, args.seed + args.n))
        classes = _class_names(model, labels)
        row_labels = [f"seed {seed}\n{c}" for seed, c in zip(seeds, classes, strict=True)]
        title = f"{size[0]}x{size[1]}, factor {fh}x{fw}, UG scale {args.scale}, eta {args.eta}"
        _save_outputs(folder, columns, seeds, row_labels, title)
        rows = _shape_metrics(columns, entry.ground_truth(256, size), entry.segment_threshold)
        result = {
            "model": "latent-flow", "trained_size": list(trained), "size": list(size),
            "factor": [fh, fw], "scale": args.scale, "eta": args.eta, "steps": steps,
            "cfg": cfg, "batch_size": args.batch_size, "seeds": seeds, "classes": classes,
            "metrics": rows,
        }  # fmt: skip
        _print_shape_metrics(rows, size)
        (folder / "metrics.json").write_text(json.dumps(_finite(result), indent=2) + "\n")

    return _Job(args.n, header, sample, write)


def _video_job(args: argparse.Namespace) -> _Job:
    """``--model video``: the shipped AnimateDiffPipeline model; frame strips and GIFs."""
    from .demo import video, video_metrics
    from .demo.registry import shipped_model

    if args.prompt is not None:
        raise UsageError("--prompt needs --pipeline PATH; the video model takes --class")
    if args.size is not None:
        raise UsageError(
            "--size does not apply to --model video: its size is the trained 8 frames of 32x32 "
            "times --factor FxHxW (frames, height, width)"
        )
    entry = shipped_model("video")
    try:
        factors = video.video_factors((2, 1, 1) if args.factor is None else args.factor)
    except ValueError as err:
        raise UsageError(f"--factor: {err}") from None
    model = entry.load(args.device)
    ff, fh, fw = factors
    frames, h, w = model.trained_frames * ff, model.trained_size * fh, model.trained_size * fw
    longest = model.pipe.unet.config.motion_max_seq_length
    if frames > longest:
        raise UsageError(
            f"--factor {ff}x{fh}x{fw} asks for {frames} frames; the video model's motion modules "
            f"take at most {longest} (a frame factor of at most {longest // model.trained_frames})"
        )
    steps = args.steps or entry.default_steps
    train_steps = model.pipe.scheduler.config.num_train_timesteps
    if steps > train_steps:
        raise UsageError(f"--steps {steps} exceeds the model's {train_steps}")
    cfg = _pipeline_cfg(args.cfg, entry.default_cfg)
    labels = _labels_for(model, args, args.n)
    base = video.baseline_name(factors)
    header = (
        f"shipped video model ({entry.folder.name}): trained {model.trained_frames} frames of "
        f"{model.trained_size}x{model.trained_size}, sampling {frames} frames of {h}x{w} "
        f"(factors {ff}x{fh}x{fw} on frames, height, width), {args.n} seeds from {args.seed}, "
        f"{steps} DDIM steps, UG scale {args.scale} eta {args.eta}, CFG {cfg}"
    )

    def sample(batches: list[tuple[int, int]], progress: bool) -> dict[str, Any]:
        """naive | UG | baseline clips (n, 3, frames, H, W), each from its seed's noise."""
        index = [i for a, b in batches for i in range(a, b)]
        if not index:
            return {}
        model.pipe.set_progress_bar_config(disable=not progress)
        clips = video.sample_methods(
            model, factors, [args.seed + i for i in index], labels[index].tolist(), steps, cfg,
            args.scale, args.eta, batch_size=args.batch_size, progress=progress,
        )  # fmt: skip
        return {"naive": clips["naive"], "ug": clips["ug"], base: clips["baseline"]}

    def write(clips: dict[str, Any], folder: Path) -> None:
        """A frame strip (PNG) and an animated GIF per seed and method, and metrics.json."""
        folder.mkdir(parents=True, exist_ok=True)
        seeds = list(range(args.seed, args.seed + args.n))
        video.save_clips(clips, seeds, folder)
        requested = None if (labels == model.null_class).any() else labels  # none: any class
        rows = {name: video_metrics.summarize(batch, requested) for name, batch in clips.items()}
        result = {
            "model": "video", "trained": [model.trained_frames, model.trained_size,
            model.trained_size], "size": [frames, h, w], "factors": [ff, fh, fw],
            "baseline": base, "scale": args.scale, "eta": args.eta, "steps": steps, "cfg": cfg,
            "batch_size": args.batch_size, "seeds": seeds,
            "classes": _class_names(model, labels), "metrics": rows,
        }  # fmt: skip
        print()
        _print_table(
            rows,
            [
                ("one_object", "one object"),
                ("identity", "identity"),
                ("residual", "motion resid."),
                ("jump_free", "no jumps"),
            ],
        )
        print(
            "(one object: fraction of frames with exactly one shape; identity: fraction of clips "
            "whose object keeps its colour, class and size; motion resid.: median residual of the "
            "centroid track against a constant-velocity or bouncing fit, % of the side; no "
            "jumps: fraction of clips without a jump; ug_core.demo.video_metrics)"
        )
        (folder / "metrics.json").write_text(json.dumps(_finite(result), indent=2) + "\n")

    wrote = f"{args.n * 3} frame strips (PNG) and GIFs (naive, ug, {base}) and metrics.json"
    return _Job(args.n, header, sample, write, wrote)


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


def _sample_pipeline(args: argparse.Namespace, ranks: _Ranks) -> int:
    """``ug sample --pipeline PATH --prompt TEXT``: a Stable Diffusion-style pipeline."""
    return _run(_together(ranks, lambda: _pipeline_job(args)), args, ranks)


def _pipeline_job(args: argparse.Namespace) -> _Job:
    """Load and check the pipeline and the options; the job that samples and writes."""
    import torch
    import torch.nn.functional as F

    from .adapters.diffusers import apply_upsample_guidance, remove_upsample_guidance

    if args.prompt is None:
        raise UsageError("--pipeline needs --prompt TEXT")
    if args.class_name is not None:
        raise UsageError("--class applies to class-conditional UNet models, not to --pipeline")
    pipe = _load_pipeline(args.pipeline, args.device)
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
    header = (
        f"{args.pipeline}: trained {trained[0]}x{trained[1]}, sampling {size[0]}x{size[1]} "
        f"(factor {fh}x{fw}), {args.n} seeds from {args.seed}, {steps} steps, UG scale "
        f"{args.scale} eta {args.eta}, prompt {args.prompt!r}"
    )

    def run(batches: list[tuple[int, int]], height: int, width: int) -> torch.Tensor:
        """One pipeline call per batch, each sample's latents from its own seed's generator."""
        out = []
        for a, b in batches:
            gens = [torch.Generator().manual_seed(args.seed + i) for i in range(a, b)]
            images = pipe([args.prompt] * (b - a), height=height, width=width, generator=gens,
                          **kwargs).images  # fmt: skip
            out.append(torch.as_tensor(images).float().cpu() * 2 - 1)
        return torch.cat(out)

    def sample(batches: list[tuple[int, int]], progress: bool) -> dict[str, Any]:
        """Naive, UG and trained size for the given batches."""
        pipe.set_progress_bar_config(disable=not progress)
        naive = run(batches, *size) if batches else None
        try:  # also without a batch, so that every process checks the options alike
            apply_upsample_guidance(pipe, args.factor, args.scale, eta=args.eta)
        except (TypeError, ValueError) as err:
            raise UsageError(str(err)) from None
        try:
            ug = run(batches, *size) if batches else None
        finally:
            remove_upsample_guidance(pipe)
        if not batches:
            return {}
        return {"naive": naive, "UG": ug, "small": run(batches, *low)}

    def write(samples: dict[str, Any], folder: Path) -> None:
        """The PNGs, the grid and metrics.json."""
        up = F.interpolate(samples["small"], size=size, mode="bicubic", align_corners=False)
        columns = {"naive": samples["naive"], "UG": samples["UG"], "bicubic": up.clamp(-1, 1)}
        seeds = list(range(args.seed, args.seed + args.n))
        title = f"{size[0]}x{size[1]}, factor {fh}x{fw}, UG scale {args.scale}, eta {args.eta}"
        _save_outputs(folder, columns, seeds, [f"seed {s}" for s in seeds], title)
        result = {
            "pipeline": args.pipeline,
            "prompt": args.prompt,
            "trained_size": list(trained),
            "size": list(size),
            "factor": [fh, fw],
            "scale": args.scale,
            "eta": args.eta,
            "steps": steps,
            "batch_size": args.batch_size,
            "seeds": seeds,
        }
        (folder / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")

    return _Job(args.n, header, sample, write)


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
        args.out_path = out  # written only once every sample is there (_write_atomically)
        _check_factor(args)
        if (
            args.size and args.model != "video"
        ):  # before loading a model (a pipeline's size unit is checked after)
            _check_size(args.size, args.factor)
        launch = _launch_env()  # torchrun or accelerate launch: this process's share of seeds
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        elif launch is not None and launch[1] > 1:
            # Launchers set OMP_NUM_THREADS=1 per process; CPU kernels round differently with
            # another thread count, so use what a single process would, for identical files.
            torch.set_num_threads(_single_process_threads())
        ranks, args.device = _start_ranks(launch, args.device)
        try:
            if args.pipeline is not None:
                return _sample_pipeline(args, ranks)
            return _sample_unet(args, ranks)
        finally:
            _stop_ranks(ranks)
    except UsageError as err:
        sub.print_usage(sys.stderr)
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return 2
    except _PeerFailed as err:  # another process's error; it printed the details
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
