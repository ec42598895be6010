"""What ``ug sample`` prints and writes: its header, sample PNGs, labelled grid, metrics.json.

The ``ug`` command (:mod:`ug_core.cli`) samples naive, UG and a baseline from the same seeds, a
:class:`Job` per model; this module picks each seed's class (:func:`class_labels`) and turns the
columns (images (n, C, H, W) or clips (n, C, F, H, W), in [-1, 1]) into files and metric tables.
It imports numpy, PIL, torch and the metrics only when it needs them, so that the command checks
its arguments without them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Any

__all__ = [
    "factor_text",
    "dims",
    "class_labels",
    "folder_classes",
    "class_names",
    "to_uint8",
    "save_outputs",
    "Job",
    "with_bicubic",
    "print_table",
    "shape_metrics",
    "video_metrics",
    "json_ready",
]


def factor_text(factors: Sequence[Any]) -> str:
    """``2x2``, ``3/2x3/2``: factors (or sizes) as ``--factor`` takes them."""
    return "x".join(map(str, factors))


def dims(size: Sequence[Any]) -> str:
    """``64x64`` (height, width), or ``16 frames of 32x32``."""
    return f"{size[0]} frames of {size[1]}x{size[2]}" if len(size) == 3 else factor_text(size)


def class_labels(model: Any, class_name: str | None, seed: int, n: int) -> Any:
    """Class labels of ``n`` samples: ``class_name`` (a name or index), or the default cycle.

    ``model`` has ``classes`` and ``null_class`` (a ``DemoModel``, ``LatentFlow`` or
    ``VideoModel``); the default cycle is ``(seed + i) mod`` the classes but the null class. None
    for an unconditional model. Raises ValueError for a class the model does not have.
    """
    import torch

    if not getattr(model, "conditional", True):
        if class_name is not None:
            raise ValueError("--class needs a class-conditional model; this one is unconditional")
        return None
    n_labels = getattr(model, "num_class_embeds", None) or len(model.classes)
    if class_name is None:
        real = max(1, len(model.classes) - (model.null_class is not None))
        return torch.tensor([(seed + i) % real for i in range(n)], dtype=torch.long)
    names = [c.lower() for c in model.classes]
    key = class_name.lower()
    if key in names:
        idx = names.index(key)
    elif key.isdecimal() and int(key) < n_labels:
        idx = int(key)
    else:
        choices = [
            f"{c} (the null class: unconditional samples)" if i == model.null_class else c
            for i, c in enumerate(model.classes)
        ]
        raise ValueError(
            f"--class {class_name!r} is not a class of this model; choose one of "
            f"{', '.join(choices)}, or an index below {n_labels}"
        )
    return torch.full((n,), idx, dtype=torch.long)


def folder_classes(folder: Path) -> Any:
    """A model folder's ``classes.json`` as ``classes`` and ``null_class``; None if unreadable."""
    try:
        meta = json.loads((folder / "classes.json").read_text())
        return SimpleNamespace(classes=meta["classes"], null_class=meta.get("null_class"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def class_names(model: Any, labels: Any) -> list[str] | None:
    """The class name of each label (None for an unconditional model)."""
    if labels is None:
        return None
    names = []
    for i in labels.tolist():
        name = model.classes[i] if i < len(model.classes) else f"class {i}"
        names.append(f"{name} (null class)" if i == model.null_class else name)
    return names


def to_uint8(images: Any) -> Any:
    """Images (n, C, H, W) or clips (n, C, F, H, W: frame strips) → uint8 (n, H, W, 3)."""
    import numpy as np

    if images.ndim == 5:  # frames left to right
        images = images.permute(0, 1, 3, 2, 4).flatten(-2)
    x = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return (np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x)[..., :3]


def save_outputs(
    out: Path, columns: dict[str, Any], seeds: Sequence[int], row_labels: Sequence[str], title: str
) -> Path:
    """``{column}-seed{N}.png`` per sample (a frame strip and a GIF for clips), and grid.png.

    The grid has the columns side by side, one row per seed, each row labelled on its left with
    ``row_labels`` (lines separated by newlines); returns its path.
    """
    from PIL import Image, ImageDraw

    from .video import save_gif

    arrays = {name: to_uint8(x) for name, x in columns.items()}
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


@dataclass
class Job:
    """A ``ug sample`` run: what its header and metrics.json say, and how to sample and score.

    ``sample(batches, progress)`` samples the given (start, stop) batches (sample ``i`` from seed
    ``--seed + i``) three ways and returns naive, UG and the baseline, each (samples, C, H, W)
    images or (samples, C, F, H, W) clips in [-1, 1] at the output size. ``metrics(columns)``
    scores every sample's columns and prints the table. ``args`` below are the command's options
    (``n``, ``seed``, ``scale``, ``eta``, ``batch_size``; ``factor`` for :meth:`image`).
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

    @classmethod
    def image(
        cls, args: Any, name: str, trained: Sequence[int], size: Sequence[int], steps: int,
        what: str, sample: Callable, head: dict[str, Any], tail: dict[str, Any], **more: Any,
    ) -> Job:  # fmt: skip
        """An image model's job; metrics.json: ``head``, the sizes and UG's settings, ``tail``."""
        settings = dict(trained_size=list(trained), size=list(size), factor=list(args.factor),
                        scale=args.scale, eta=args.eta, steps=steps)  # fmt: skip
        return cls(name, tuple(trained), tuple(size), args.factor, what, sample,
                   {**head, **settings, **tail}, **more)  # fmt: skip

    def header(self, args: Any) -> str:
        """The first line printed: model, sizes, seeds and UG's settings."""
        seeds = f"{args.n} seed{'s' if args.n != 1 else ''}"
        return (
            f"{self.name}: trained {dims(self.trained)}, sampling {dims(self.size)} (factor "
            f"{factor_text(self.factors)}), {seeds} from {args.seed}, {self.steps}, UG scale "
            f"{args.scale} eta {args.eta}{self.extra}"
        )

    def write(self, args: Any, columns: dict[str, Any], folder: Path) -> None:
        """The PNGs (and GIFs), the grid, the metrics (printed too) and metrics.json."""
        seeds = list(range(args.seed, args.seed + args.n))
        classes = self.classes or [""] * len(seeds)
        rows = [f"seed {s}" + (f"\n{c}" if c else "") for s, c in zip(seeds, classes, strict=True)]
        title = (
            f"{dims(self.size)}, factor {factor_text(self.factors)}, UG scale {args.scale}, "
            f"eta {args.eta}"
        )
        save_outputs(folder, columns, seeds, rows, title)
        result = {**self.settings, "batch_size": args.batch_size, "seeds": seeds}
        if self.classes is not None:
            result["classes"] = self.classes
        if self.metrics is not None:
            result["metrics"] = self.metrics(columns)
        (folder / "metrics.json").write_text(json.dumps(json_ready(result), indent=2) + "\n")


def with_bicubic(naive: Any, ug: Any, small: Any, size: Sequence[int]) -> dict[str, Any]:
    """An image model's columns: naive, UG, and the trained-size sample upscaled bicubically."""
    import torch.nn.functional as F

    up = F.interpolate(small, size=tuple(size), mode="bicubic", align_corners=False)
    return {"naive": naive, "UG": ug, "bicubic": up.clamp(-1, 1)}


def print_table(rows: dict[str, dict[str, float]], keys: dict[str, str], legend: str) -> None:
    """Print metrics as an aligned table on stdout (``keys``: metric → column title)."""
    width = max(len(k) for k in rows) + 2
    print("\n" + "method".ljust(width) + "".join(label.rjust(14) for label in keys.values()))
    for name, vals in rows.items():
        print(name.ljust(width) + "".join(f"{vals[k]:.3f}".rjust(14) for k in keys))
    print(legend)


def shape_metrics(
    columns: dict[str, Any], entry: Any, size: Sequence[int]
) -> dict[str, dict[str, float]]:
    """One object, mean objects, object area and size W1 of each column and of the ground truth.

    ``entry`` is the shipped model (``ug_core.demo.registry``) whose data the model draws: its
    ground truth is rendered at ``size`` and segmented with its threshold. Prints the table.
    """
    from . import metrics

    truth, kw = entry.ground_truth(256, size), {"threshold": entry.segment_threshold}
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
    print_table(
        rows,
        {"one_object": "one object", "mean_objects": "mean objects", "mean_area": "object area",
         "size_w1": "size W1"},
        "(one object: fraction of samples with exactly one shape; object area: largest shape's "
        "area / image area; size W1: Wasserstein-1 distance of that area's distribution to "
        f"ground truth rendered at {size[0]}x{size[1]})",
    )  # fmt: skip
    return rows


def video_metrics(clips: dict[str, Any], requested: Any) -> dict[str, dict[str, float]]:
    """Each method's :func:`ug_core.demo.video_metrics.summarize`, printed as a table."""
    from . import video_metrics as vm

    rows = {name: vm.summarize(batch, requested) for name, batch in clips.items()}
    print_table(
        rows,
        {"one_object": "one object", "identity": "identity", "residual": "motion resid.",
         "jump_free": "no jumps"},
        "(one object: fraction of frames with exactly one shape; identity: fraction of clips "
        "whose object keeps its colour, class and size; motion resid.: median residual of the "
        "centroid track against a constant-velocity or bouncing fit, % of the side; no jumps: "
        "fraction of clips without a jump; ug_core.demo.video_metrics)",
    )  # fmt: skip
    return rows


def json_ready(value: Any) -> Any:
    """``value`` for JSON: non-finite floats → None, ratios → ``"3/2"``."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, Fraction):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
