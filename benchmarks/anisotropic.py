"""A non-square image from the embedded model: one factor and a non-square size, or two factors.

Reproduce (from the repository root; about 15 minutes on one CPU thread, twice that with CFG)::

    python benchmarks/anisotropic.py --n 64 --steps 20 --threads 1
    python benchmarks/anisotropic.py --n 64 --steps 20 --threads 1 --cfg 2 --tag cfg2

Both requests give a 64×96 image from the 32×32 shapes model, from the same seeds (x_T) and class
labels:

- ``--size 64x96 --factor 2``: factors (2, 2); UG guides towards the model's own 32×48 sample.
- ``--size 64x96 --factor 2x3``: factors (2, 3); UG guides towards a 32×32 sample stretched to
  64×96, so its content is stretched by 1.5 in width.

Also: naive sampling at 64×96, and each request's low-resolution sample upscaled bicubically.
Metrics (``ug_core.demo.metrics``): the fraction of samples with exactly one object, the mean
object count, the largest object's area relative to the image, and its *aspect*: the ratio of its
pixels' standard deviations along the width and along the height (1 for every shape of the dataset
drawn unstretched, at any rotation; 1.5 for one stretched by 1.5 in width), as a geometric mean
over the samples that hold an object. Ground truth rendered square (64×64) gives the unstretched
reference, and rendered at 64×96 (the dataset's renderer stretches a square scene) the stretched
one. Writes ``benchmarks/results/anisotropic[-TAG].md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

RESULTS = Path(__file__).resolve().parent / "results"
SIZE = (64, 96)


def aspects(images: torch.Tensor) -> np.ndarray:
    """Per image: width/height ratio of the largest object's pixel spread (NaN if none)."""
    from ug_core.demo import metrics

    out = np.full(images.shape[0], np.nan)
    for i, mask in enumerate(metrics.segment(images)):
        labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
        if n == 0:
            continue
        sizes = np.bincount(labels.ravel())[1:]
        if sizes.max() < 0.004 * mask.size:  # the metrics' smallest object
            continue
        rows, cols = np.nonzero(labels == sizes.argmax() + 1)
        out[i] = cols.std() / max(rows.std(), 1e-9)
    return out


def summarize(images: torch.Tensor) -> dict[str, float]:
    """One object, mean objects, mean object area and the geometric-mean aspect of ``images``."""
    from ug_core.demo import metrics

    counts, areas = metrics.count_objects(images)
    asp = aspects(images)
    asp = asp[np.isfinite(asp)]
    one = float((counts == 1).mean())
    return {
        "one_object": one,
        "one_object_se": float(np.sqrt(one * (1 - one) / len(counts))),
        "mean_objects": float(counts.mean()),
        "mean_area": float(areas.mean()),
        "aspect": float(np.exp(np.log(asp).mean())) if len(asp) else float("nan"),
        "aspect_iqr": [float(q) for q in np.percentile(asp, [25, 75])] if len(asp) else [],
    }


def run(
    n: int, steps: int, scale: float, cfg: float, batch: int, progress: bool
) -> dict[str, dict]:
    """Every method and reference; returns {name: metrics}."""
    from ug_core.demo import shapes
    from ug_core.demo.model import default_labels, generate, initial_noise, load, low_res_noise

    model = load()
    noise = initial_noise(n, SIZE, 0)
    labels = default_labels(model, n, 0)
    common = dict(seed=0, steps=steps, labels=labels, cfg=cfg, batch_size=batch, progress=progress)
    rows: dict[str, dict] = {}
    params = shapes.sample_params(max(n, 256), 10**6)
    rows["ground truth, square 64x64 (unstretched)"] = summarize(shapes.render(params, 64))
    rows["ground truth rendered at 64x96 (stretched 1.5 in width)"] = summarize(
        shapes.render(params, SIZE)
    )
    t = time.perf_counter()
    rows["naive 64x96"] = summarize(generate(model, n, SIZE, noise=noise, desc="naive", **common))
    for factors, low in (((2, 2), (32, 48)), ((2, 3), (32, 32))):
        tag = f"{factors[0]}x{factors[1]}" if factors[0] != factors[1] else f"{factors[0]}"
        ug = generate(
            model, n, SIZE, noise=noise, factors=factors, scale=scale, eta=1.0,
            desc=f"UG {tag}", **common,
        )  # fmt: skip
        rows[f"UG --factor {tag} (guided towards {low[0]}x{low[1]})"] = summarize(ug)
        small = generate(
            model, n, low, noise=low_res_noise(noise, factors), desc=f"{low}", **common
        )
        up = F.interpolate(small, size=SIZE, mode="bicubic", align_corners=False).clamp(-1, 1)
        rows[f"{low[0]}x{low[1]} sample, bicubic to 64x96"] = summarize(up)
        print(f"  factor {tag} done ({time.perf_counter() - t:.0f} s)", flush=True)
    return rows


def report(res: dict) -> str:
    """The Markdown page."""
    cfg = res["config"]
    lines = [
        "# A non-square image: one factor with a non-square size, or unequal factors",
        "",
        f"Embedded shapes model (trained at 32×32) sampled at 64×96, {cfg['n']} samples per "
        f"method (seeds 0 to {cfg['n'] - 1}, class labels cycling over the four shapes), "
        f"{cfg['steps']} DDIM steps, UG θ = {cfg['scale']:g}, η = 1, "
        + (f"CFG {cfg['cfg']:g}" if cfg.get("cfg", 1.0) != 1.0 else "no CFG")
        + "; the same x_T for "
        f"every method. {cfg['device']}, torch {cfg['torch']}, {cfg['seconds']:.0f} s. "
        f"Command: `{cfg['command']}`.",
        "",
        "| method | exactly one object (± s.e.) | mean objects | object area | aspect w/h "
        "(geometric mean; IQR) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, v in res["rows"].items():
        iqr = v["aspect_iqr"]
        iqr_s = f"{iqr[0]:.2f}–{iqr[1]:.2f}" if iqr else "–"
        lines.append(
            f"| {name} | {100 * v['one_object']:.1f}% (± {100 * v['one_object_se']:.1f}) "
            f"| {v['mean_objects']:.2f} | {v['mean_area']:.3f} | {v['aspect']:.2f} ({iqr_s}) |"
        )
    rows = res["rows"]
    ug2 = next(v for k, v in rows.items() if k.startswith("UG --factor 2 "))
    ug23 = next(v for k, v in rows.items() if k.startswith("UG --factor 2x3"))
    lines += [
        "",
        "*Aspect*: the largest object's pixel standard deviation along the width over that along "
        "the height. Every shape of the dataset (disc, square, equilateral triangle, cross) has "
        "an isotropic second moment, so an unstretched object scores 1 at any rotation and one "
        "stretched by 1.5 in width scores 1.5; the two ground-truth rows measure both ends with "
        "this segmentation. *Object area*: the largest object's area over the image's.",
        "",
        "## Reading",
        "",
        f"- `--size 64x96 --factor 2`: aspect {ug2['aspect']:.2f}, one object in "
        f"{100 * ug2['one_object']:.1f}% of samples (mean {ug2['mean_objects']:.2f} objects).",
        f"- `--size 64x96 --factor 2x3`: aspect {ug23['aspect']:.2f}, one object in "
        f"{100 * ug23['one_object']:.1f}% (mean {ug23['mean_objects']:.2f} objects).",
    ]
    gap = abs(ug2["one_object"] - ug23["one_object"])
    se = float(np.hypot(ug2["one_object_se"], ug23["one_object_se"]))
    lines.append(
        f"- The one-object rates differ by {100 * gap:.1f} points, "
        + (
            f"within two standard errors ({200 * se:.1f} points): at this sample size the "
            "factors differ in the objects' shape, not in their number."
            if gap <= 2 * se
            else f"more than two standard errors ({200 * se:.1f} points)."
        )
    )
    if abs(np.log(ug23["aspect"] / ug2["aspect"])) > 0.1:
        lines.append(
            "- Unequal factors stretch the content: UG pulls the sample towards the model's "
            "32×32 sample stretched by (2, 3), while one factor pulls it towards the model's own "
            "32×48 sample. Unequal spatial factors are meant for time against space in video "
            "models, not for height against width; for a non-square image, ask for a non-square "
            "size with one factor."
        )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=64, help="samples per method")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--scale", type=float, default=1.0, help="UG θ")
    p.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance scale")
    p.add_argument("--tag", default="", help="suffix of the result files (anisotropic-TAG.md)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--smoke", action="store_true", help="4 samples, 2 steps; writes nothing")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    n, steps = (4, 2) if args.smoke else (args.n, args.steps)
    start = time.perf_counter()
    rows = run(n, steps, args.scale, args.cfg, args.batch_size, not args.quiet)
    res = {
        "rows": rows,
        "config": {
            "n": n,
            "steps": steps,
            "scale": args.scale,
            "cfg": args.cfg,
            "device": f"CPU ({platform.machine()}, {args.threads} thread(s))",
            "torch": torch.__version__,
            "seconds": time.perf_counter() - start,
            "command": "python benchmarks/anisotropic.py " + " ".join(argv or sys.argv[1:]),
        },
    }
    page = report(res)
    if not args.smoke:
        RESULTS.mkdir(parents=True, exist_ok=True)
        stem = "anisotropic" + (f"-{args.tag}" if args.tag else "")
        (RESULTS / f"{stem}.json").write_text(json.dumps(res, indent=2, ensure_ascii=False))
        (RESULTS / f"{stem}.md").write_text(page)
    print(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
