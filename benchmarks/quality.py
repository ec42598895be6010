"""Quality benchmark: UG against what a user would do instead, on the embedded shapes model.

From the repository root::

    python benchmarks/quality.py                       # 256 samples per method, CPU
    python benchmarks/quality.py --n 512 --device cuda # what RESULTS.md reports

For each factor (2× → 64×64, 3× → 96×96) and the same seeds for every method (sample i has seed i,
class label i mod 4, and the trained-size samples start from √k·D[x_T] of the same x_T):

- naive: DDIM at the high resolution with the plain model;
- UG θ ∈ {0.5, 1, 1.3, 1.6} at η = 1 (and θ = 1 with CFG 2, the class-conditional case);
- trained size (32×32) + bicubic, + Lanczos upscaling;
- HiRes.fix-style: the trained-size sample upscaled bicubically, then SDEdit at the high resolution
  with the same model at strengths 0.3, 0.5, 0.7.

Metrics against ground truth rendered at the target resolution (``ug_core.demo.metrics``): the
fraction of samples with exactly one object, the Wasserstein-1 distance between object-size (area)
distributions, and a Fréchet distance on 40 hand-crafted features; an independent ground-truth set
gives each metric's floor. Writes ``benchmarks/results/quality.json``, ``quality.png`` (plot),
``quality_samples.png`` (examples) and regenerates ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"

THETAS = (0.5, 1.0, 1.3, 1.6)
GROUPS = ("layout", "texture", "geometry")
STRENGTHS = (0.3, 0.5, 0.7)


def _chunk_metrics(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from ug_core.demo import metrics

    counts, areas = metrics.count_objects(images)
    return counts, areas, metrics.features(images)


def measure(images: torch.Tensor, pool: ProcessPoolExecutor | None, chunk: int = 64):
    """Object counts, largest-object areas and features of ``images`` (in parallel chunks)."""
    arr = images.numpy()
    parts = [arr[i : i + chunk] for i in range(0, len(arr), chunk)]
    outs = list(pool.map(_chunk_metrics, parts)) if pool else [_chunk_metrics(p) for p in parts]
    return tuple(np.concatenate([o[i] for o in outs]) for i in range(3))


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


def _row(measured: tuple, ref_areas: np.ndarray, ref_feats: np.ndarray, seconds: float) -> dict:
    """One method's metrics from ``measure``'s (counts, areas, features) against a reference."""
    from ug_core.demo import metrics

    counts, areas, feats = measured
    return {
        "one_object": float((counts == 1).mean()),
        "mean_objects": float(counts.mean()),
        "mean_area": float(areas.mean()),
        "size_w1": metrics.size_distance(areas, ref_areas),
        "frechet": metrics.frechet_distance(feats, ref_feats),
        **{
            f"frechet_{g}": metrics.frechet_distance(feats[:, cols], ref_feats[:, cols])
            for g, cols in metrics.FEATURE_GROUPS.items()
        },
        "seconds": round(seconds, 2),
    }


def run_factor(model, factor: int, args, pool) -> dict:
    """All methods at one factor; returns {method: metrics}."""
    from baselines import sdedit

    from ug_core.demo import shapes
    from ug_core.demo.model import default_labels, generate, initial_noise, low_res_noise

    n, steps = args.n, args.steps
    size = (32 * factor, 32 * factor)
    fac = (factor, factor)
    noise = initial_noise(n, size, 0)
    labels = default_labels(model, n, 0)
    common = dict(
        seed=0, steps=steps, labels=labels, batch_size=args.batch_size, progress=not args.quiet
    )
    truth = shapes.render(shapes.sample_params(args.n_ref, 10**6), size)
    _, ref_areas, ref_feats = measure(truth, pool)
    samples: dict[str, torch.Tensor] = {}
    seconds: dict[str, float] = {}

    def timed(name, fn):
        t = time.perf_counter()
        samples[name] = fn()
        seconds[name] = time.perf_counter() - t
        print(f"  {name}: {seconds[name]:.1f} s", flush=True)

    timed("ground truth (independent set)",
          lambda: shapes.render(shapes.sample_params(n, 2 * 10**6), size))  # fmt: skip
    timed("naive", lambda: generate(model, n, size, noise=noise, desc="naive", **common))
    for theta in THETAS:
        timed(
            f"UG θ={theta:g}",
            lambda theta=theta: generate(
                model, n, size, noise=noise, factors=fac, scale=theta, eta=1.0,
                desc=f"UG {theta}", **common,
            ),
        )  # fmt: skip
    if factor in args.cfg_factors:
        timed(
            "UG θ=1 + CFG 2",
            lambda: generate(
                model, n, size, noise=noise, factors=fac, scale=1.0, cfg=2.0, desc="UG+CFG",
                **common,
            ),
        )  # fmt: skip
    t = time.perf_counter()
    low = generate(model, n, (32, 32), noise=low_res_noise(noise, fac), desc="32x32", **common)
    t_low = time.perf_counter() - t
    timed("trained size + bicubic",
          lambda: F.interpolate(low, size=size, mode="bicubic").clamp(-1, 1))  # fmt: skip
    timed("trained size + Lanczos", lambda: lanczos(low, size))
    for key in ("trained size + bicubic", "trained size + Lanczos"):
        seconds[key] += t_low
    for s in STRENGTHS:
        timed(
            f"HiRes.fix s={s:g}",
            lambda s=s: sdedit(
                model, samples["trained size + bicubic"], s, seed=0, steps=steps, labels=labels,
                batch_size=args.batch_size, progress=not args.quiet,
            ),
        )  # fmt: skip
        seconds[f"HiRes.fix s={s:g}"] += seconds["trained size + bicubic"]
    rows = {
        name: _row(measure(images, pool), ref_areas, ref_feats, seconds[name])
        for name, images in samples.items()
    }
    # The trained-size samples themselves, against ground truth at 32×32 (context).
    truth32 = shapes.render(shapes.sample_params(args.n_ref, 10**6), 32)
    _, a32, f32 = measure(truth32, pool)
    rows["(trained size 32×32 itself, vs truth at 32×32)"] = _row(
        measure(low, pool), a32, f32, t_low
    )
    rows["_truth_mean_area"] = float(ref_areas.mean())  # type: ignore[assignment]
    _save_examples(samples, factor)
    return rows


def _save_examples(samples: dict[str, torch.Tensor], factor: int, count: int = 8) -> None:
    """A PNG of the first ``count`` samples of each method (rows), labelled."""
    from PIL import Image, ImageDraw

    names = [k for k in samples if not k.startswith("ground")]
    names = ["ground truth (independent set)"] + names
    h = samples["naive"].shape[-1]
    zoom = 1 if h >= 96 else 96 // h
    tile, label_w = h * zoom, 150
    img = Image.new("RGB", (label_w + count * (tile + 2), len(names) * (tile + 2)), "white")
    draw = ImageDraw.Draw(img)
    for r, name in enumerate(names):
        y = r * (tile + 2)
        draw.text((4, y + tile // 2 - 6), _ascii(name), fill="black")
        x = ((samples[name][:count].clamp(-1, 1) + 1) * 127.5).round().byte()
        for c in range(min(count, x.shape[0])):
            t = Image.fromarray(x[c].permute(1, 2, 0).numpy()).resize((tile, tile), Image.NEAREST)
            img.paste(t, (label_w + c * (tile + 2), y))
    img.save(RESULTS / f"quality_samples_{factor}x.png")


def _ascii(text: str) -> str:
    """PIL's default bitmap font has no Greek letters or accents."""
    for a, b in (("θ", "theta"), ("η", "eta"), ("é", "e"), ("×", "x")):
        text = text.replace(a, b)
    return text


def plot(results: dict, path: Path) -> None:
    """Horizontal bar charts (one object, size W1, Fréchet) for each factor, drawn with PIL."""
    from PIL import Image, ImageDraw

    factors = list(results["factors"])
    methods = [m for m in results["factors"][factors[0]] if not m.startswith(("_", "("))]
    methods = [m for m in methods if all(m in results["factors"][f] for f in factors)]
    panels = [("one_object", "exactly one object (higher is better)", 1.0),
              ("size_w1", "object-size W1 (lower is better)", None),
              ("frechet", "Fréchet distance, log scale (lower is better)", None)]  # fmt: skip
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c"]
    bar_h, gap, label_w, panel_w = 9, 6, 200, 260
    row_h = len(factors) * bar_h + gap
    height = 40 + len(methods) * row_h + 30
    img = Image.new("RGB", (label_w + len(panels) * (panel_w + 20) + 10, height), "white")
    draw = ImageDraw.Draw(img)
    for i, m in enumerate(methods):
        draw.text((6, 40 + i * row_h + 2), _ascii(m), fill="black")
    for p, (key, title, vmax) in enumerate(panels):
        x0 = label_w + p * (panel_w + 20)
        draw.text((x0, 8), _ascii(title), fill="black")
        vals = [results["factors"][f][m][key] for f in factors for m in methods]
        top = vmax or max(vals) * 1.05 or 1.0
        draw.line([(x0, 36), (x0, height - 30)], fill="black")
        for i, m in enumerate(methods):
            for j, f in enumerate(factors):
                v = results["factors"][f][m][key]
                y = 40 + i * row_h + j * bar_h
                if key == "frechet":  # spans four decades: log scale
                    w = int(panel_w * np.log10(1 + v) / np.log10(1 + top))
                else:
                    w = int(panel_w * min(v, top) / top)
                draw.rectangle([x0, y, x0 + max(w, 1), y + bar_h - 2], fill=colors[j % 3])
                text = {"one_object": f"{v:.2f}", "size_w1": f"{v:.3f}"}.get(key, f"{v:.0f}")
                draw.text((x0 + w + 3, y - 2), text, fill="black")
        scale = "log10(1 + x), " if key == "frechet" else ""
        draw.text((x0, height - 24), f"{scale}0 ... {top:.2f}", fill="gray")
    for j, f in enumerate(factors):
        draw.rectangle([6 + j * 80, height - 20, 16 + j * 80, height - 10], fill=colors[j % 3])
        draw.text((20 + j * 80, height - 22), f"{f}x", fill="black")
    img.save(path)


def _fmt(v: float, key: str) -> str:
    if key == "one_object":
        return f"{100 * v:.1f}%"
    if key == "size_w1":
        return f"{v:.4f}"
    if key == "seconds":
        return f"{v:.1f}"
    return f"{v:.2f}"


def _target_lines() -> list[str]:
    """The issue's three targets, checked against the JSON results (met or not)."""
    q, c = RESULTS / "quality.json", RESULTS / "cost-cpu.json"
    if not (q.is_file() and c.is_file()):
        return []
    res, cost = json.loads(q.read_text())["factors"], json.loads(c.read_text())["factors"]
    out = ["## Targets", ""]
    if "2" in res:
        ug, naive = res["2"]["UG θ=1"]["one_object"], res["2"]["naive"]["one_object"]
        met = "met" if ug >= 0.9 and naive < ug - 0.1 else "not met"
        out.append(
            f"- At 2×, UG (θ = 1, η = 1) gives exactly one object in {100 * ug:.1f}% of samples, "
            f"naive sampling in {100 * naive:.1f}% (target ≥ 90% and clearly more): **{met}**."
        )
    for f, rows in res.items():
        uga = {k: v for k, v in rows.items() if k.startswith("UG θ=") and "CFG" not in k}
        best = min(uga, key=lambda k: uga[k]["frechet"])
        bic = rows["trained size + bicubic"]
        met = "met" if uga[best]["frechet"] < bic["frechet"] else "not met"
        groups = ", ".join(
            f"{g} {uga[best]['frechet_' + g]:.1f} vs {bic['frechet_' + g]:.1f}" for g in GROUPS
        )
        out.append(
            f"- At {f}×, the best UG setting on the Fréchet distance ({best}) scores "
            f"{uga[best]['frechet']:.0f} against bicubic's {bic['frechet']:.0f} (target: UG "
            f"lower): **{met}**. By feature group (UG vs bicubic): {groups}."
        )
    for f, rows in cost.items():
        for name, v in rows.items():
            if "extra_time" in v and "CFG" not in name:
                gap = 100 * (v["extra_time"] - v["ideal_extra"])
                met = "met" if abs(gap) <= 5 else "not met"
                out.append(
                    f"- At {f}×, {name}: UG's extra wall time on the CPU is "
                    f"{100 * v['extra_time']:+.1f}% against the ideal η/k = "
                    f"{100 * v['ideal_extra']:.1f}% ({gap:+.1f} points; target within 5): "
                    f"**{met}**."
                )
    return out + [""]


def write_report() -> None:
    """Regenerate benchmarks/RESULTS.md from results/quality.json and results/cost*.json."""
    lines = ["# Benchmark results", ""]
    lines += [
        "Generated by `benchmarks/quality.py` and `benchmarks/cost.py` from the JSON files in",
        "`benchmarks/results/` (rerun either script to regenerate this page).",
        "",
    ]
    q = RESULTS / "quality.json"
    if q.is_file():
        res = json.loads(q.read_text())
        cfg = res["config"]
        lines += [
            "## Quality",
            "",
            f"Embedded shapes model (trained at 32×32), {cfg['n']} samples per method, "
            f"{cfg['steps']} DDIM steps (η_DDIM = 0), the same seeds for every method; ground "
            f"truth: {cfg['n_ref']} images rendered at the target size. Ran on {cfg['device']} "
            f"in {cfg['seconds']:.0f} s. Command: `{cfg['command']}`.",
            "",
            "![quality](results/quality.png)",
            "",
        ]
        for f, rows in res["factors"].items():
            lines += [
                f"### {f}× ({32 * int(f)}×{32 * int(f)})",
                "",
                "| method | exactly one object | mean objects | object area | size W1 ↓ "
                "| Fréchet ↓ | (layout | texture | geometry) | seconds |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            ]
            for name, v in rows.items():
                if name.startswith("_"):
                    continue
                lines.append(
                    f"| {name} | {_fmt(v['one_object'], 'one_object')} | {v['mean_objects']:.2f} "
                    f"| {v['mean_area']:.3f} | {_fmt(v['size_w1'], 'size_w1')} "
                    f"| {_fmt(v['frechet'], 'frechet')} "
                    + "".join(f"| {v.get('frechet_' + g, float('nan')):.1f} " for g in GROUPS)
                    + f"| {_fmt(v['seconds'], 'seconds')} |"
                )
            lines += [
                "",
                f"Ground truth's mean object area at this size: {rows['_truth_mean_area']:.3f}. "
                f"Examples: [quality_samples_{f}x.png](results/quality_samples_{f}x.png).",
                "",
            ]
        lines += [
            "Metrics (`ug_core/demo/metrics.py`): *exactly one object*: fraction of samples whose "
            "foreground (pixels farther than half the dataset's minimum contrast from an affine "
            "background fitted to the border) has exactly one 8-connected component of at least "
            "0.4% of the image; *object area*: the largest component's area / image area; "
            "*size W1*: Wasserstein-1 distance between the samples' and the ground truth's "
            "object-area distributions; *Fréchet*: Fréchet distance between Gaussians fitted to "
            "40 hand-crafted features (4×4 luminance layout, colour means and spreads, radial "
            "power spectrum in 8 bands, gradient-magnitude histogram, object count, area, "
            "foreground fraction, compactness), standardised by the ground truth's statistics. "
            "No pretrained feature network can be downloaded here, and these features measure "
            "exactly what the dataset defines: layout, colour, sharpness and object geometry. "
            "The *ground truth (independent set)* row is each metric's floor at this sample size. "
            "The three columns after it are the same Fréchet distance on each feature group "
            "alone: *layout* (luminance layout, colour), *texture* (power spectrum, gradient "
            "histogram: noise, grain and blur) and *geometry* (object count, area, foreground, "
            "compactness). Ground-truth images are exactly flat away from the edges, so the "
            "texture features have a very small spread there and any residual grain in a sample "
            "weighs heavily in the total.",
            "",
        ]
    lines += _target_lines()
    from domain_metric import report_lines as domain_lines
    from quality_v2 import report_lines as v2_lines

    if (RESULTS / "domain_metric.json").is_file():
        lines += domain_lines(json.loads((RESULTS / "domain_metric.json").read_text()))
    lines += v2_lines()
    for path in sorted(RESULTS.glob("cost*.json")):
        from cost import report_lines  # the cost script's own table

        lines += report_lines(json.loads(path.read_text()))
    for path in sorted(RESULTS.glob("cost*.txt")):  # summaries kept without their JSON
        lines += ["## " + path.stem, "", "```text", path.read_text().rstrip(), "```", ""]
    (ROOT / "RESULTS.md").write_text("\n".join(lines).rstrip() + "\n")
    if (RESULTS / "video_quality.json").is_file():  # the video section, appended by its script
        import video_quality

        video_quality.write_report()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=256, help="samples per method")
    p.add_argument("--n-ref", type=int, default=1024, help="ground-truth reference images")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--factors", type=int, nargs="+", default=[2, 3])
    p.add_argument("--cfg-factors", type=int, nargs="*", default=[2],
                   help="factors that also get the UG θ=1 + CFG 2 row")  # fmt: skip
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 1),
                   help="processes for the metrics")  # fmt: skip
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    from ug_core.demo.model import load

    RESULTS.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model = load(None, args.device)
    device = args.device
    if device.startswith("cuda"):
        device = torch.cuda.get_device_name()
    else:
        device = f"CPU ({platform.processor() or platform.machine()}, {args.threads} threads)"
    results: dict = {"factors": {}}
    pool = ProcessPoolExecutor(args.workers) if args.workers > 1 else None
    try:
        for f in args.factors:
            print(f"factor {f}:", flush=True)
            results["factors"][str(f)] = run_factor(model, f, args, pool)
    finally:
        if pool:
            pool.shutdown()
    results["config"] = {
        "n": args.n,
        "n_ref": args.n_ref,
        "steps": args.steps,
        "device": device,
        "seconds": time.perf_counter() - start,
        "command": "python benchmarks/quality.py " + " ".join(argv or sys.argv[1:]),
    }
    (RESULTS / "quality.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
    plot(results, RESULTS / "quality.png")
    write_report()
    print(f"done in {results['config']['seconds']:.0f} s; wrote {RESULTS}/quality.json, "
          f"quality.png and {ROOT}/RESULTS.md")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
