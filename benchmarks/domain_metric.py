"""Sanity of the domain Fréchet distance: does it behave as a metric of this domain should?

From the repository root::

    python benchmarks/domain_metric.py            # 128 images per set, 512 reference images

For flat and textured scenes at 64×64 and 96×96, each set is compared with a reference set of
ground truth rendered at that size:

- *ground truth (independent set)*: other scenes, same distribution: the floor at this sample size;
- *blur*: the same scenes rendered at the trained size (32×32) and upscaled bicubically;
- *grain*: the independent set plus Gaussian noise (σ = 0.03 and 0.1, clipped to [-1, 1]);
- *duplication*: scenes with two shapes (same colour and texture, each 0.6–0.9 of the usual size);
- *texture removed* (textured only): the independent set rendered with zero texture amplitude.

Columns: domain Fréchet (``benchmarks/domain_encoder.py``), the hand-crafted Fréchet
(``ug_core.demo.metrics``) and the fraction of images segmented as exactly one object. Writes
``benchmarks/results/domain_metric.json``; ``python benchmarks/report.py`` puts it in
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from domain_encoder import load_encoder

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"


def sets(data: str, size: int, n: int, seed: int) -> dict[str, torch.Tensor]:
    """The test sets at ``size`` for ``data`` ("flat" or "textured")."""
    from ug_core.demo import textured

    tex = data == "textured"
    scenes = textured.sample_scene_params(n, seed, textured=tex)
    truth = textured.render(scenes, size)
    gen = torch.Generator().manual_seed(seed)
    out = {
        "ground truth (independent set)": truth,
        "blur: trained size (32) + bicubic": F.interpolate(
            textured.render(scenes, 32), size=size, mode="bicubic", align_corners=False
        ).clamp(-1, 1),
    }
    for sigma in (0.03, 0.1):
        noise = torch.randn(truth.shape, generator=gen) * sigma
        out[f"grain: + noise σ={sigma:g}"] = (truth + noise).clamp(-1, 1)
    two = textured.sample_scene_params(n, seed + 1, textured=tex, two_objects=1.0)
    out["duplication: two shapes"] = textured.render(two, size)
    if tex:
        flat = copy.deepcopy(scenes)
        flat.background.amplitude[:] = 0
        flat.foreground.amplitude[:] = 0
        out["texture removed"] = textured.render(flat, size)
    return out


def run(args: argparse.Namespace) -> dict:
    """All rows; returns the JSON-ready results."""
    from ug_core.demo import metrics, textured
    from ug_core.demo.metrics import frechet_distance

    encoder = load_encoder()
    results: dict = {}
    for data in ("flat", "textured"):
        threshold = textured.SEGMENT_THRESHOLD if data == "textured" else None
        kw = {} if threshold is None else {"threshold": threshold}
        for size in args.sizes:
            ref_scenes = textured.sample_scene_params(
                args.n_ref, 10**6, textured=data == "textured"
            )
            ref = textured.render(ref_scenes, size)
            ref_domain, ref_hand = encoder.features(ref), metrics.features(ref, **kw)
            rows = {}
            for name, images in sets(data, size, args.n, 2 * 10**6).items():
                counts, _ = metrics.count_objects(images, **kw)
                rows[name] = {
                    "domain_frechet": frechet_distance(
                        encoder.features(images), ref_domain, normalize=False
                    ),
                    "frechet": frechet_distance(metrics.features(images, **kw), ref_hand),
                    "one_object": float((counts == 1).mean()),
                }
                print(f"{data} {size}: {name}: {rows[name]}", flush=True)
            results[f"{data} {size}"] = rows
    return results


def report_lines(res: dict) -> list[str]:
    """The RESULTS.md section for ``results/domain_metric.json``."""
    cfg = res["config"]
    lines = [
        "## The domain Fréchet distance: sanity",
        "",
        f"{cfg['n']} images per set against {cfg['n_ref']} ground-truth images rendered at the "
        f"same size; encoder `benchmarks/assets/domain_encoder` "
        f"([TRAINING.md](assets/domain_encoder/TRAINING.md)). Command: "
        f"`{cfg['command']}` ({cfg['seconds']:.0f} s).",
        "",
    ]
    for key, rows in res["results"].items():
        lines += [
            f"### {key}×{key.split()[1]}",
            "",
            "| set | domain Fréchet ↓ | hand-crafted Fréchet ↓ | exactly one object |",
            "| --- | --- | --- | --- |",
        ]
        for name, v in rows.items():
            lines.append(
                f"| {name} | {v['domain_frechet']:.2f} | {v['frechet']:.1f} "
                f"| {100 * v['one_object']:.1f}% |"
            )
        lines.append("")
    floor_ok = all(
        rows["ground truth (independent set)"]["domain_frechet"]
        < min(v["domain_frechet"] for k, v in rows.items() if not k.startswith("ground"))
        for rows in res["results"].values()
    )
    lines += [
        "The independent ground-truth set is the floor in every block: "
        + ("**yes**." if floor_ok else "**no** (see the tables)."),
        "",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--n-ref", type=int, default=512)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 96])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    res = {"results": run(args)}
    res["config"] = {
        "n": args.n,
        "n_ref": args.n_ref,
        "seconds": time.perf_counter() - start,
        "command": "python benchmarks/domain_metric.py " + " ".join(argv or sys.argv[1:]),
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "domain_metric.json"
    path.write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n")
    print("\n".join(report_lines(res)))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
