"""Quality benchmark, version 2: UG against the alternatives on the three shipped models.

From the repository root. Sampling runs one cell (model × factor × step count) and keeps the
samples (``--samples-dir``); ``--stage measure`` then measures every cell sampled so far into
``benchmarks/results/quality_v2/MODEL_Fx_Ssteps.json`` (+ sample grids) and regenerates
``RESULTS.md``. The default stage does both::

    python benchmarks/quality_v2.py --model textured --factor 2 --steps 20 --n 64 --methods main
    python benchmarks/quality_v2.py --model textured --factor 2 --n 32 --methods theta eta

Models (``ug_core.demo.registry``): ``shapes`` (pixel UNet, flat), ``textured`` (pixel UNet,
textured scenes), ``latent-flow`` (AutoencoderKL + SD3Transformer2DModel through the real
``StableDiffusion3Pipeline``). Sample ``i`` has seed ``i`` and class ``i mod 4`` in every method;
the trained-size samples start from ``√k·D[x_T]`` of the same ``x_T``. Method groups:

- ``main``: naive; UG (θ = 1, η = 1); trained size + bicubic, + Lanczos; HiRes.fix (the bicubic
  image, noised to strength s and denoised at the high resolution: SDEdit) at s = 0.3, 0.5, 0.7;
  HiRes.fix with UG (θ = 1, η = 1) in its high-resolution pass at the same strengths;
- ``basic``: the first four of ``main`` (naive, UG, bicubic, Lanczos); ``hires``: the rest of
  ``main`` (HiRes.fix with and without UG), so that ``basic`` + ``hires`` is ``main``;
- ``theta``: UG θ ∈ {0.5, 1.3, 1.6} at η = 1;  ``eta``: UG θ = 1 at η ∈ {0.2, 0.4, 0.6, 0.8};
- ``ug-best``: UG at ``--theta`` / ``--eta`` (e.g. the best of the sweeps), and HiRes.fix + UG
  at that setting.

UG for the pixel UNets goes through the core (``UpsampleGuidance`` in ``ug_core.adapters.loops``);
for the latent transformer through ``ug_core.adapters.diffusers.apply_upsample_guidance`` on the
``StableDiffusion3Pipeline`` (and on a ``StableDiffusion3Img2ImgPipeline`` sharing its components
for HiRes.fix). Metrics against ground truth rendered at the target size: exactly one object, mean
objects and area, size W1, the hand-crafted Fréchet distance and its groups
(``ug_core.demo.metrics``), and the domain Fréchet distance (``benchmarks/domain_encoder.py``).
The tables in RESULTS.md come from ``benchmarks/report.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import report
import torch
import torch.nn.functional as F
from baselines import lanczos, sdedit
from domain_encoder import load_encoder
from report import ETAS, LOW_ROW, STRENGTHS, THETAS, TRUTH_ROW

from ug_core.factors import as_factor

OUT = report.QUALITY_V2


class PixelRunner:
    """Methods for a pixel UNet (``DemoModel``), UG through the core."""

    def __init__(self, entry, args) -> None:
        from ug_core.demo.model import default_labels, initial_noise

        self.model = entry.load()
        self.args, self.n, self.steps = args, args.n, args.steps
        self.size = (cell_size(args.factor),) * 2
        self.fac = (args.factor, args.factor)
        self.noise = initial_noise(self.n, self.size, 0)
        self.labels = default_labels(self.model, self.n, 0)
        self.common = dict(seed=0, steps=self.steps, labels=self.labels, cfg=args.cfg,
                           batch_size=args.batch_size, progress=False)  # fmt: skip

    def high(self, theta: float | None = None, eta: float = 1.0) -> torch.Tensor:
        """Naive (θ None) or UG sampling at the high resolution."""
        from ug_core.demo.model import generate

        ug = {} if theta is None else dict(factors=self.fac, scale=theta, eta=eta)
        return generate(self.model, self.n, self.size, noise=self.noise, **ug, **self.common)

    def low(self) -> torch.Tensor:
        """Samples at the trained size from √k·D[x_T]."""
        from ug_core.demo.model import generate, low_res_noise

        return generate(self.model, self.n, (32, 32), noise=low_res_noise(self.noise, self.fac),
                        **self.common)  # fmt: skip

    def hires(self, images: torch.Tensor, strength: float, theta=None, eta=1.0) -> torch.Tensor:
        """SDEdit of ``images`` at ``strength``, with UG (θ, η) when θ is given."""
        ug = {} if theta is None else dict(factors=self.fac, scale=theta, eta=eta)
        return sdedit(self.model, images, strength, seed=0, steps=self.steps, labels=self.labels,
                      cfg=self.args.cfg, batch_size=self.args.batch_size, progress=False,
                      **ug)  # fmt: skip


class LatentRunner:
    """Methods for the latent flow model, through the real SD3 pipelines and the adapter."""

    def __init__(self, entry, args) -> None:
        from diffusers import StableDiffusion3Img2ImgPipeline

        if not isinstance(args.factor, int):
            raise SystemExit(f"--factor {args.factor}: the latent-flow cells take integer factors")
        self.lf = entry.load()
        self.args, self.n, self.steps = args, args.n, args.steps
        self.size = (32 * args.factor, 32 * args.factor)
        self.fac = (args.factor, args.factor)
        self.latents = self.lf.initial_latents(self.n, self.size, 0)
        self.labels = torch.arange(self.n) % 4
        p = self.lf.pipe
        self.img2img = StableDiffusion3Img2ImgPipeline(
            transformer=p.transformer, vae=p.vae, scheduler=p.scheduler, text_encoder=None,
            tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None,
            tokenizer_3=None,
        )  # fmt: skip
        self.img2img.set_progress_bar_config(disable=True)

    def _guided(self, pipe, theta, eta, fn):
        from ug_core.adapters.diffusers import apply_upsample_guidance, remove_upsample_guidance

        if theta is None:
            return fn()
        apply_upsample_guidance(pipe, factors=self.fac, scale=theta, eta=eta)
        try:
            return fn()
        finally:
            remove_upsample_guidance(pipe)

    def high(self, theta: float | None = None, eta: float = 1.0) -> torch.Tensor:
        """Naive (θ None) or UG sampling at the high resolution."""
        return self._guided(self.lf.pipe, theta, eta, lambda: self.lf.generate(
            self.labels, self.size, steps=self.steps, cfg=self.args.cfg, latents=self.latents,
            batch_size=self.args.batch_size))  # fmt: skip

    def low(self) -> torch.Tensor:
        """Samples at the trained size from √k·D[x_1]."""
        k = math.prod(self.fac)
        lat = F.avg_pool2d(self.latents, self.fac) * math.sqrt(k)
        return self.lf.generate(self.labels, (32, 32), steps=self.steps, cfg=self.args.cfg,
                                latents=lat, batch_size=self.args.batch_size)  # fmt: skip

    def hires(self, images: torch.Tensor, strength: float, theta=None, eta=1.0) -> torch.Tensor:
        """SD3 img2img of ``images`` at ``strength`` (HiRes.fix), with UG (θ, η) when θ is given."""

        def run() -> torch.Tensor:
            out = []
            bs = self.args.batch_size
            for i in range(0, self.n, bs):
                lab = self.labels[i : i + bs]
                gens = [torch.Generator().manual_seed(10**6 + j) for j in range(i, i + len(lab))]
                res = self.img2img(
                    image=(images[i : i + bs] + 1) / 2, strength=strength,
                    num_inference_steps=self.steps, guidance_scale=self.args.cfg,
                    generator=gens, output_type="pt", height=self.size[0], width=self.size[1],
                    **self.lf.prompt_kwargs(lab),
                ).images  # fmt: skip
                out.append(res.float() * 2 - 1)
            return torch.cat(out).clamp(-1, 1)

        return self._guided(self.img2img, theta, eta, run)


def method_plan(groups: list[str], theta: float, eta: float) -> list[tuple[str, dict]]:
    """(row name, recipe) for the requested method groups, in table order."""
    plan: list[tuple[str, dict]] = []
    if "main" in groups:
        plan += [("naive", dict(kind="high")), ("UG θ=1 η=1", dict(kind="high", theta=1.0))]
        plan += [("trained size + bicubic", dict(kind="bicubic")),
                 ("trained size + Lanczos", dict(kind="lanczos"))]  # fmt: skip
        plan += [(f"HiRes.fix s={s:g}", dict(kind="hires", s=s)) for s in STRENGTHS]
        plan += [(f"HiRes.fix s={s:g} + UG θ=1 η=1", dict(kind="hires", s=s, theta=1.0))
                 for s in STRENGTHS]  # fmt: skip
    if "basic" in groups:
        plan += [("naive", dict(kind="high")), ("UG θ=1 η=1", dict(kind="high", theta=1.0))]
        plan += [("trained size + bicubic", dict(kind="bicubic")),
                 ("trained size + Lanczos", dict(kind="lanczos"))]  # fmt: skip
    if "hires" in groups:
        plan += [(f"HiRes.fix s={s:g}", dict(kind="hires", s=s)) for s in STRENGTHS]
        plan += [(f"HiRes.fix s={s:g} + UG θ=1 η=1", dict(kind="hires", s=s, theta=1.0))
                 for s in STRENGTHS]  # fmt: skip
    if "theta" in groups:
        plan += [(f"UG θ={t:g} η=1", dict(kind="high", theta=t)) for t in THETAS]
    if "eta" in groups:
        plan += [(f"UG θ=1 η={e:g}", dict(kind="high", theta=1.0, eta=e)) for e in ETAS]
    if "ug-best" in groups:
        plan += [(f"UG θ={theta:g} η={eta:g}", dict(kind="high", theta=theta, eta=eta))]
        plan += [(f"HiRes.fix s={s:g} + UG θ={theta:g} η={eta:g}",
                  dict(kind="hires", s=s, theta=theta, eta=eta)) for s in STRENGTHS]  # fmt: skip
    return plan


def measure(images: torch.Tensor, threshold: float, encoder) -> dict[str, np.ndarray]:
    """Counts, largest-object areas, hand-crafted features and domain features of ``images``."""
    from ug_core.demo import metrics

    counts, areas = metrics.count_objects(images, threshold=threshold)
    return dict(
        counts=counts,
        areas=areas,
        hand=metrics.features(images, threshold=threshold),
        domain=encoder.features(images),
    )


def row(m: dict, ref: dict, seconds: float, n: int) -> dict:
    """One method's metrics against the reference measurements."""
    from ug_core.demo import metrics

    out = {
        "n": n,
        "one_object": float((m["counts"] == 1).mean()),
        "mean_objects": float(m["counts"].mean()),
        "mean_area": float(m["areas"].mean()),
        "size_w1": metrics.size_distance(m["areas"], ref["areas"]),
        "frechet": metrics.frechet_distance(m["hand"], ref["hand"]),
        "domain_frechet": metrics.frechet_distance(m["domain"], ref["domain"], normalize=False),
        "seconds": round(seconds, 1),
    }
    for g, cols in metrics.FEATURE_GROUPS.items():
        out[f"frechet_{g}"] = metrics.frechet_distance(m["hand"][:, cols], ref["hand"][:, cols])
    return out


def save_grid(samples: dict[str, torch.Tensor], path: Path, count: int = 8) -> None:
    """A PNG of the first ``count`` samples of each method (rows), labelled."""
    from PIL import Image, ImageDraw

    names = list(samples)
    h = next(iter(samples.values())).shape[-1]
    zoom = max(1, 96 // h)
    tile, label_w = h * zoom, 210
    img = Image.new("RGB", (label_w + count * (tile + 2), len(names) * (tile + 2)), "white")
    draw = ImageDraw.Draw(img)
    for r, name in enumerate(names):
        y = r * (tile + 2)
        draw.text((4, y + tile // 2 - 6), _ascii(name), fill="black")
        x = ((samples[name][:count].clamp(-1, 1) + 1) * 127.5).round().byte()
        for c in range(min(count, x.shape[0])):
            t = Image.fromarray(x[c].permute(1, 2, 0).numpy()).resize((tile, tile), Image.NEAREST)
            img.paste(t, (label_w + c * (tile + 2), y))
    img.save(path, optimize=True)


def _ascii(text: str) -> str:
    """PIL's default bitmap font has no Greek letters or accents."""
    for a, b in (("θ", "theta"), ("η", "eta"), ("é", "e"), ("×", "x")):
        text = text.replace(a, b)
    return text


def _slug(name: str) -> str:
    """A file name for a method's row name."""
    keep = "".join(c if c.isalnum() or c in "=." else "_" for c in _ascii(name))
    return "_".join(filter(None, keep.split("_")))


def cell_factor(value: object) -> int | Fraction:
    """A cell's factor (both sides): an integer or a ratio such as 3/2 (``'1.5'``, 1.5)."""
    return as_factor(value, "--factor")


def cell_size(factor: object) -> int:
    """The side in pixels of a cell's samples: 32 × factor, a whole number."""
    side = 32 * Fraction(cell_factor(factor))
    if side.denominator != 1:
        raise SystemExit(f"--factor {factor}: 32 x {factor} is not a whole number of pixels")
    return int(side)


def factor_number(factor: object) -> int | float:
    """The factor as a JSON number and in cell names: 2, or 1.5 for 3/2."""
    f = cell_factor(factor)
    return f if isinstance(f, int) else float(f)


def sample_cell(args: argparse.Namespace) -> Path:
    """Sample the requested methods for one (model, factor, steps) cell into the samples folder.

    Each method's images (float16) and wall time go to ``SAMPLES/<cell>/<method>.pt``; metrics
    come later (:func:`measure_cell`), so sampling needs no trained metric.
    """
    from ug_core.demo.registry import shipped_model

    entry = shipped_model(args.model)
    runner = (LatentRunner if entry.kind == "latent-flow" else PixelRunner)(entry, args)
    tag = f"{args.model}_{factor_number(args.factor)}x_{args.steps}steps"
    folder = Path(args.samples_dir) / tag
    folder.mkdir(parents=True, exist_ok=True)
    group = "-".join(args.methods)

    def save(name: str, images: torch.Tensor, seconds: float, kind: str = "sample") -> None:
        torch.save(dict(name=name, images=images.half(), seconds=seconds, kind=kind, group=group),
                   folder / f"{_slug(name)}.pt")  # fmt: skip
        print(f"  {name}: {seconds:.0f} s", flush=True)

    plan = method_plan(args.methods, args.theta, args.eta)
    low = t_low = None
    if any(r["kind"] in ("bicubic", "lanczos", "hires") for _, r in plan):
        t = time.perf_counter()
        low = runner.low()
        t_low = time.perf_counter() - t
        save(LOW_ROW, low, t_low, kind="low")
        bicubic = F.interpolate(low, size=runner.size, mode="bicubic", align_corners=False)
        bicubic = bicubic.clamp(-1, 1)
    for name, r in plan:
        t = time.perf_counter()
        if r["kind"] == "high":
            images = runner.high(r.get("theta"), r.get("eta", 1.0))
        elif r["kind"] == "bicubic":
            images = bicubic
        elif r["kind"] == "lanczos":
            images = lanczos(low, runner.size)
        else:
            images = runner.hires(bicubic, r["s"], r.get("theta"), r.get("eta", 1.0))
        extra = t_low if r["kind"] != "high" else 0.0
        save(name, images, time.perf_counter() - t + extra)
    runs_file = folder / "runs.json"
    runs = json.loads(runs_file.read_text()) if runs_file.is_file() else []
    runs.append({
        "command": "python benchmarks/quality_v2.py " + " ".join(args.argv),
        "methods": args.methods, "n": args.n, "cfg": args.cfg, "model": args.model,
        "factor": factor_number(args.factor), "steps": args.steps,
        "device": f"CPU ({platform.processor() or platform.machine()}, {args.threads} threads)",
    })  # fmt: skip
    runs_file.write_text(json.dumps(runs, indent=2, ensure_ascii=False) + "\n")
    return folder


def measure_cell(folder: Path, n_ref: int) -> Path:
    """Metrics of every stored method of one cell against ground truth; writes its JSON and PNGs."""
    from ug_core.demo.registry import shipped_model

    runs = json.loads((folder / "runs.json").read_text())
    info = runs[-1]
    entry = shipped_model(info["model"])
    encoder = load_encoder()
    thr = entry.segment_threshold
    size = (cell_size(info["factor"]),) * 2
    stored = [torch.load(p) for p in sorted(folder.glob("*.pt"))]
    order: dict[str, int] = {}
    for i, (name, _) in enumerate(method_plan(["main", "theta", "eta"], 1.0, 1.0)):
        order.setdefault(name, i)
    stored.sort(key=lambda d: (d["kind"] != "low", order.get(d["name"], 99), d["name"]))
    ref = measure(entry.ground_truth(n_ref, size), thr, encoder)
    ref32 = measure(entry.ground_truth(n_ref, (32, 32)), thr, encoder)
    sizes = sorted({len(d["images"]) for d in stored}, reverse=True)
    rows, truth = {}, None
    for n in sizes:  # the floor at each sample count in the table (the sweeps use fewer)
        t = time.perf_counter()
        truth_n = entry.ground_truth(n, size, seed=2 * 10**6)
        name = TRUTH_ROW if n == sizes[0] else f"{TRUTH_ROW}, first {n}"
        rows[name] = row(measure(truth_n, thr, encoder), ref, time.perf_counter() - t, n)
        truth = truth_n if truth is None else truth
    grids: dict[str, dict[str, torch.Tensor]] = {}
    for d in stored:
        images = d["images"].float()
        reference = ref32 if d["kind"] == "low" else ref
        rows[d["name"]] = row(measure(images, thr, encoder), reference, d["seconds"], len(images))
        if d["kind"] != "low":
            grid = grids.setdefault(d["group"], {TRUTH_ROW: truth})
            grid[d["name"]] = images
        if d["name"] == "UG θ=1 η=1":  # the sweeps' reference, at their (smaller) n too
            for n in sizes:
                if n < len(images):
                    rows[f"{d['name']}, first {n}"] = row(
                        measure(images[:n], thr, encoder), reference, d["seconds"], n
                    )
        r = rows[d["name"]]
        print(f"  {d['name']}: one {r['one_object']:.3f} W1 {r['size_w1']:.4f} "
              f"Fréchet {r['frechet']:.1f} domain {r['domain_frechet']:.2f}")  # fmt: skip
    if LOW_ROW in rows:  # keep it last
        rows[LOW_ROW] = rows.pop(LOW_ROW)
    data = dict(model=info["model"], factor=info["factor"], steps=info["steps"], cfg=info["cfg"],
                n_ref=n_ref, rows=rows, truth_mean_area=float(ref["areas"].mean()),
                runs=runs)  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{folder.name}.json"
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    for group, samples in grids.items():
        save_grid(samples, OUT / f"{folder.name}_{group}.png")
    print(f"wrote {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="textured", help="shapes, textured or latent-flow")
    p.add_argument(
        "--factor",
        type=cell_factor,
        default=2,
        help="upsampling factor on both sides: 2, 3, or a ratio such as 1.5 or 5/4",
    )
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--n", type=int, default=64, help="samples per method")
    p.add_argument("--n-ref", type=int, default=512, help="ground-truth reference images")
    p.add_argument("--methods", nargs="+", default=["main"],
                   choices=["main", "basic", "hires", "theta", "eta", "ug-best"])  # fmt: skip
    p.add_argument("--theta", type=float, default=1.0, help="UG θ of the ug-best group")
    p.add_argument("--eta", type=float, default=1.0, help="UG η of the ug-best group")
    p.add_argument("--cfg", type=float, default=None,
                   help="classifier-free guidance (default: 1 for the UNets, the registry's "
                        "default for latent-flow)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--samples-dir", default=str(OUT / "samples"),
                   help="where the samples are kept between sampling and measuring")  # fmt: skip
    p.add_argument("--stage", choices=["sample", "measure", "all", "report"], default="all",
                   help="sample this cell, measure every cell sampled so far, or both; report: "
                        "only rewrite RESULTS.md from the measured JSON")  # fmt: skip
    args = p.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    if args.stage in ("sample", "all"):
        from ug_core.demo.registry import shipped_model

        entry = shipped_model(args.model)
        if args.cfg is None:
            args.cfg = entry.default_cfg if entry.kind == "latent-flow" else 1.0
        print(f"{args.model} {args.factor}x {args.steps} steps, n={args.n}: {args.methods}")
        sample_cell(args)
    if args.stage in ("measure", "all"):
        for folder in sorted(Path(args.samples_dir).glob("*_*x_*steps")):
            print(f"measuring {folder.name}", flush=True)
            measure_cell(folder, args.n_ref)
    report.write_report()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
