"""Video quality benchmark: temporal and spatial UG on the embedded video model (8 frames, 32×32).

From the repository root::

    python benchmarks/video_quality.py --n 32 --steps 20 --threads 1   # what RESULTS.md reports
    python benchmarks/video_quality.py --report                        # rewrite the section only

Cases, at the trained size times the factors (frames, height, width): temporal ×2 (16×32×32),
spatial ×2 (8×64×64) and both (16×64×64). Every method starts from the same per-seed noise
(clip i has seed i and class i mod 4; the trained-size samples start from √k·D[x_T] of that
noise), through the real ``AnimateDiffPipeline`` with classifier-free guidance:

- naive: the pipeline at the large size;
- UG: ``apply_upsample_guidance(pipe, factors, θ, eta=η)`` with the case's factors;
- baseline: the trained size, frames linearly blended to the new frame count (temporal) and/or
  upscaled bicubically (spatial);
- reference rows: an independent ground-truth set rendered at the case's size (each metric's
  floor) and the trained-size samples themselves against ground truth at the trained size.

Metrics (``ug_core.demo.video_metrics``): the per-frame single-object rate, identity consistency
(one object of one class, colour and size in every frame), motion quality (residual of the
centroid track against the best constant-velocity/bouncing fit, jumps, the fitted speed) and a
per-frame Fréchet distance on the 40 hand-crafted image features of ``ug_core.demo.metrics``.
Writes ``benchmarks/results/video_quality.json``, a frame strip and an animated GIF per case, and
the "Video proving ground" section at the end of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from domain_encoder import load_encoder

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"  # --results changes these three
JSON = RESULTS / "video_quality.json"
REPORT = ROOT / "RESULTS.md"
START, END = "<!-- video-quality:start -->", "<!-- video-quality:end -->"

CASES = {
    "temporal": (2, 1, 1),
    "spatial": (1, 2, 2),
    "both": (2, 2, 2),
}
TITLES = {
    "temporal": "temporal ×2 (16 frames of 32×32)",
    "spatial": "spatial ×2 (8 frames of 64×64)",
    "both": "both ×2 (16 frames of 64×64)",
}


def _frames(clips: torch.Tensor) -> torch.Tensor:
    """Clips (n, 3, F, H, W) as frames (n·F, 3, H, W)."""
    n, c, f, h, w = clips.shape
    return clips.permute(0, 2, 1, 3, 4).reshape(n * f, c, h, w)


def _encoder():
    """The image proving ground's domain encoder (loaded once)."""
    global _ENCODER
    if _ENCODER is None:
        _ENCODER = load_encoder()
    return _ENCODER


_ENCODER = None


def reference_features(clips: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Hand-crafted and domain-encoder features of every frame of ``clips``."""
    from ug_core.demo import metrics

    frames = _frames(clips)
    return metrics.features(frames), _encoder().features(frames)


def measure(clips: torch.Tensor, labels, ref_feats, seconds=None) -> dict:
    """The metrics row of a set of clips; ``ref_feats``: :func:`reference_features` of the truth."""
    from ug_core.demo import metrics, video_metrics

    hand, domain = ref_feats
    row = video_metrics.summarize(clips, labels)
    frames = _frames(clips)
    row["frechet"] = metrics.frechet_distance(metrics.features(frames), hand)
    row["domain_frechet"] = metrics.frechet_distance(
        _encoder().features(frames), domain, normalize=False
    )
    if seconds is not None:
        row["seconds"] = round(seconds, 1)
    return row


def _cached(cache: Path | None, key: str, fn):
    """``fn()`` (a tensor and its seconds), kept in ``cache/key.pt`` when a cache is given."""
    path = cache / f"{key}.pt" if cache else None
    if path is not None and path.is_file():
        saved = torch.load(path)
        return saved["clips"], saved["seconds"]
    start = time.perf_counter()
    clips = fn()
    seconds = time.perf_counter() - start
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"clips": clips, "seconds": seconds}, path)
    return clips, seconds


def run_case(model, case: str, args) -> dict:
    """Sample and measure every method of one case."""
    from ug_core.demo import moving_shapes, video

    factors = CASES[case]
    ff, fh, fw = factors
    seeds = list(range(args.n))
    labels = [s % 4 for s in seeds]
    frames, size = 8 * ff, 32 * fh
    tag = f"{case}-n{args.n}-s{args.steps}-cfg{args.cfg}"

    def log(msg: str) -> None:
        if not args.quiet:
            print(f"[{case}] {msg}", flush=True)

    truth, _ = moving_shapes.sample(args.n_ref, frames, size, seed=10**6)
    ref_feats = reference_features(truth)
    truth_low, _ = moving_shapes.sample(args.n_ref, 8, 32, seed=10**6)
    low_feats = reference_features(truth_low)
    indep, _ = moving_shapes.sample(args.n, frames, size, seed=2 * 10**6)
    # Ground truth is measured without requested classes: its classes are its own.
    case_start = time.time()
    rows = {"ground truth (independent set)": measure(indep, None, ref_feats)}
    log(f"ground truth: {rows['ground truth (independent set)']}")
    samples = {}

    def sample(method: str, scale: float = 1.0) -> tuple[torch.Tensor, float]:
        key = f"{tag}-{method}" + (f"-theta{scale}" if method == "ug" else "")
        return _cached(
            args.cache,
            key,
            lambda: video.sample_methods(
                model, factors, seeds, labels, args.steps, args.cfg, scale, args.eta,
                methods=(method,), batch_size=args.batch_size,
            )[method],
        )  # fmt: skip

    clips, sec = sample("naive")
    samples["naive"] = clips
    rows["naive"] = measure(clips, labels, ref_feats, sec)
    log(f"naive: {rows['naive']}")
    for scale in args.scales:
        name = f"UG {factors} θ={scale:g}"
        clips, sec = sample("ug", scale)
        samples.setdefault("UG", clips)
        rows[name] = measure(clips, labels, ref_feats, sec)
        log(f"{name}: {rows[name]}")
    # The baseline from its trained-size samples (cached separately: they are a row too).
    noise = torch.cat([video.initial_noise(1, frames, size, s) for s in seeds])
    low, sec = _cached(
        args.cache,
        f"{tag}-trained",
        lambda: torch.cat([
            model.sample(labels[i : i + args.batch_size],
                         video.low_res_noise(noise[i : i + args.batch_size], factors),
                         args.steps, args.cfg)
            for i in range(0, len(seeds), args.batch_size)
        ]),
    )  # fmt: skip
    start = time.perf_counter()
    base = low
    parts = []
    if ff > 1:
        base = video.interpolate_frames(base, ff)
        parts.append("frame interpolation")
    if (fh, fw) != (1, 1):
        base = video.upscale_bicubic(base, (size, size))
        parts.append("bicubic")
    sec += time.perf_counter() - start
    base_name = "trained size + " + " + ".join(parts)
    samples["baseline"] = base
    rows[base_name] = measure(base, labels, ref_feats, sec)
    log(f"{base_name}: {rows[base_name]}")
    rows["(trained size itself, vs truth at 8×32×32)"] = measure(low, labels, low_feats)
    _save_examples(case, samples, truth[: args.examples])
    return {
        "factors": list(factors),
        "frames": frames,
        "size": size,
        "baseline": base_name,
        "truth_speed": float(np.mean(moving_shapes.sample_clips(args.n_ref, seed=10**6).speed)),
        "rows": rows,
        "seconds": time.time() - case_start,
    }


def _tile(clip: torch.Tensor, zoom: int):
    """Frames of one clip as uint8 (F, H·zoom, W·zoom, 3)."""
    from ug_core.demo import video

    x = video._uint8_frames(clip)
    return x.repeat(zoom, axis=1).repeat(zoom, axis=2)


def _save_examples(case: str, samples: dict, truth: torch.Tensor) -> None:
    """``video_strip_{case}.png`` (frame strips) and ``video_{case}.gif`` (methods side by side)."""
    from PIL import Image, ImageDraw

    RESULTS.mkdir(parents=True, exist_ok=True)
    from ug_core.demo.video import baseline_name

    base = baseline_name(CASES[case]).replace("-", "+")
    names = {"naive": "naive", "UG": "UG", "baseline": base, "truth": "a ground truth"}
    short = {"naive": "naive", "UG": "UG", "baseline": base, "truth": "truth"}
    columns = dict(samples, truth=truth)
    n = min(len(truth), *(len(v) for v in columns.values()))
    size = truth.shape[-1]
    zoom = 2 if size <= 32 else 1
    side = size * zoom
    frames = truth.shape[2]
    pad, head = 4, 14
    # Frame strips: for each seed, one row per method, frames left to right.
    rows = n * len(columns)
    strip = Image.new("RGB", (150 + frames * (side + 1), rows * (side + pad) + pad), "white")
    draw = ImageDraw.Draw(strip)
    y = pad
    for i in range(n):
        for key, clips in columns.items():
            draw.text((4, y + side // 2 - 6), f"seed {i}: {names[key]}"[:24], fill="black")
            for j, fr in enumerate(_tile(clips[i], zoom)):
                strip.paste(Image.fromarray(fr), (150 + j * (side + 1), y))
            y += side + pad
    strip.save(RESULTS / f"video_strip_{case}.png")
    # GIF: one row per seed, one column per method.
    gif = []
    for j in range(frames):
        img = Image.new(
            "RGB", (len(columns) * (side + pad) + pad, head + n * (side + pad)), "white"
        )
        d = ImageDraw.Draw(img)
        for c, (key, clips) in enumerate(columns.items()):
            d.text((pad + c * (side + pad), 1), short[key], fill="black")
            for i in range(n):
                fr = Image.fromarray(_tile(clips[i][:, j : j + 1], zoom)[0])
                img.paste(fr, (pad + c * (side + pad), head + i * (side + pad)))
        gif.append(img)
    gif[0].save(
        RESULTS / f"video_{case}.gif", save_all=True, append_images=gif[1:],
        duration=round(2000 / frames), loop=0,
    )  # fmt: skip


# --- the report ---------------------------------------------------------------------------------

COLUMNS = (
    ("one_object", "single object (frames)", "pct"),
    ("identity", "identity consistent (clips)", "pct"),
    ("class_consistent", "one class (clips)", "pct"),
    ("class_match", "requested class (frames)", "pct"),
    ("colour_drift", "colour drift ↓", "f3"),
    ("size_drift", "size drift ↓", "f3"),
    ("residual", "motion residual, % side ↓", "f2"),
    ("smooth", "smooth motion (clips)", "pct"),
    ("jump_free", "no jump (clips)", "pct"),
    ("speed", "speed", "f3"),
    ("frechet", "frame Fréchet ↓", "f1"),
    ("domain_frechet", "frame domain Fréchet ↓", "f2"),
    ("seconds", "seconds", "f1"),
)


def _fmt(value, kind: str) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    return f"{value:.{kind[1]}f}"


def _ug_row(rows: dict) -> tuple[str, dict]:
    """The θ = 1 UG row (or the first UG row)."""
    ug = [k for k in rows if k.startswith("UG")]
    pick = next((k for k in ug if k.endswith("θ=1")), ug[0])
    return pick, rows[pick]


def _targets(results: dict) -> list[str]:
    lines = []
    cases = results["cases"]
    if "temporal" in cases:
        rows = cases["temporal"]["rows"]
        name, ug = _ug_row(rows)
        nv = rows["naive"]
        ident = ug["identity"] > nv["identity"]
        resid = ug["residual"] < nv["residual"]
        met = "**met**" if ident and resid else "**not met**"
        lines.append(
            f"- Temporal ×2: {name} against naive: identity consistent "
            f"{_fmt(ug['identity'], 'pct')} vs {_fmt(nv['identity'], 'pct')}, motion residual "
            f"{ug['residual']:.2f} vs {nv['residual']:.2f} % of the side (target: UG better on "
            f"both): {met}."
        )
        truth = cases["temporal"]["truth_speed"]
        lines.append(
            f"- Does naive 16-frame sampling from the 8-frame model break or duplicate the motion? "
            f"Naive: smooth motion in {_fmt(nv['smooth'], 'pct')} of clips (UG "
            f"{_fmt(ug['smooth'], 'pct')}, ground truth 100%), a jump in "
            f"{_fmt(1 - nv['jump_free'], 'pct')} (UG {_fmt(1 - ug['jump_free'], 'pct')}), fitted "
            f"speed {nv['speed']:.3f} image sides per clip (UG {ug['speed']:.3f}, ground truth "
            f"{truth:.3f}: a speed near twice the truth means the 8-frame motion played for twice "
            "as long instead of sampled twice as densely)."
        )
    if "spatial" in cases:
        rows = cases["spatial"]["rows"]
        name, ug = _ug_row(rows)
        nv = rows["naive"]
        ok = ug["one_object"] >= 0.9 and nv["one_object"] <= ug["one_object"] - 0.1
        lines.append(
            f"- Spatial ×2: {name} single-object frames {_fmt(ug['one_object'], 'pct')}, naive "
            f"{_fmt(nv['one_object'], 'pct')} (target: UG ≥ 90% and naive clearly lower, here "
            f"at least 10 points): {'**met**' if ok else '**not met**'}."
        )
    return lines


def write_report(results: dict | None = None) -> str:
    """Rewrite the video section of ``RESULTS.md`` from ``video_quality.json``; returns it."""
    results = results or json.loads(JSON.read_text())
    a = results["args"]
    out = [
        START,
        "## Video proving ground",
        "",
        "Generated by `benchmarks/video_quality.py` from `benchmarks/results/video_quality.json` "
        "(rerun it to regenerate this section).",
        "",
        f"The embedded video model (`ug_core/assets/video32`, a class-conditional "
        f"`UNetMotionModel` trained on 8 frames of 32×32 moving shapes; see its `TRAINING.md`), "
        f"sampled through the real `AnimateDiffPipeline` with DDIM, {a['steps']} steps, "
        f"classifier-free guidance {a['cfg']:g}, UG η = {a['eta']:g}; {a['n']} clips per method, "
        f"the same seeds for every method (clip i: seed i, class i mod 4); ground truth: "
        f"{a['n_ref']} clips rendered at the case's size. Ran on {results['machine']}: sampling "
        f"{results.get('sampling_seconds', 0.0):.0f} s in all (the seconds column, kept with "
        f"the cached samples), this run {results['seconds']:.0f} s. "
        f"Command: `{results['command']}`.",
        "",
        "A clip spans a fixed time: 16 frames are the 8-frame motion sampled twice as densely "
        "(the block mean of frame pairs is the 8-frame clip), which is what temporal UG's "
        "block-averaging assumes.",
        "",
    ]
    for case, res in results["cases"].items():
        out += [f"### {TITLES[case]}", ""]
        out.append("| method | " + " | ".join(c[1] for c in COLUMNS) + " |")
        out.append("| --- " * (len(COLUMNS) + 1) + "|")
        for name, row in res["rows"].items():
            cells = [_fmt(row.get(k), kind) for k, _, kind in COLUMNS]
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out += [
            "",
            f"Ground truth's mean speed: {res['truth_speed']:.3f} image sides per clip. "
            f"Examples (seeds 0–{a['examples'] - 1}; naive | UG | baseline | a ground-truth clip): "
            f"![{case}](results/video_{case}.gif) and the frame strips "
            f"[video_strip_{case}.png](results/video_strip_{case}.png).",
            "",
        ]
    out += [
        "Metrics (`ug_core/demo/video_metrics.py`), defined from what the dataset guarantees: "
        "*single object*: fraction of frames whose foreground has exactly one component of at "
        "least 0.4% of the frame; *identity consistent*: clips with one object in every frame, of "
        "one class (template matching against the dataset's four shapes) and with colour drift "
        "≤ 0.15 and size drift ≤ 0.3; *requested class*: frames whose class is the one "
        "sampled; *colour drift*: largest RGB distance of a frame's object colour from the "
        "clip's median ([-1, 1] units); *size drift*: range of the object's area over its median; "
        "*motion residual*: median over clips of the RMS distance between the object's centroid "
        "track and the best constant-velocity fit with at most one bounce per axis, in % of the "
        "image side; *smooth motion*: clips with no jump and a residual ≤ 1.5%; *no jump*: clips "
        "with an object in every frame and no frame-to-frame step longer than twice the "
        "dataset's fastest step plus one pixel; *speed*: mean fitted speed (image sides per clip); "
        "*frame Fréchet*: the Fréchet distance of the 40 hand-crafted image features of "
        "`ug_core/demo/metrics.py` over all frames, against ground-truth frames; *frame domain "
        "Fréchet*: the same on the image proving ground's learned encoder features "
        "(`benchmarks/domain_encoder.py`, `benchmarks/assets/domain_encoder`).",
        "",
        "### Targets (video)",
        "",
        *_targets(results),
        END,
    ]
    section = "\n".join(out) + "\n"
    text = REPORT.read_text() if REPORT.is_file() else "# Benchmark results\n"
    if START in text and END in text:
        before, rest = text.split(START, 1)
        after = rest.split(END, 1)[1].lstrip("\n")
        text = before + section + (("\n" + after) if after else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    REPORT.write_text(text)
    return section


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=32, help="clips per method")
    p.add_argument("--n-ref", type=int, default=64, help="ground-truth clips")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=2.0)
    p.add_argument("--eta", type=float, default=1.0, help="UG η")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0], help="UG θ values")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--examples", type=int, default=4, help="clips in the GIFs and strips")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default=None, help="a video model folder (default: embedded)")
    p.add_argument("--cache", type=Path, default=None, help="keep the samples here (resumable)")
    p.add_argument("--report", action="store_true", help="only rewrite RESULTS.md from the JSON")
    p.add_argument(
        "--results", type=Path, default=None,
        help="write the JSON, images and a RESULTS.md here instead (e.g. for a smoke run)",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    global RESULTS, JSON, REPORT
    if args.results is not None:
        RESULTS, JSON, REPORT = (
            args.results, args.results / "video_quality.json", args.results / "RESULTS.md"
        )  # fmt: skip
    if args.report:
        write_report()
        return 0
    from ug_core.demo import video

    torch.set_num_threads(args.threads)
    model = video.load(args.model, args.device)
    results = {"cases": {}}
    previous = json.loads(JSON.read_text()) if JSON.is_file() else None
    for case in args.cases:
        results["cases"][case] = run_case(model, case, args)
    if previous and previous.get("args", {}).get("n") == args.n:  # keep cases not rerun
        for case, res in previous["cases"].items():
            results["cases"].setdefault(case, res)
        results["cases"] = {c: results["cases"][c] for c in CASES if c in results["cases"]}
    results["seconds"] = sum(res.get("seconds", 0.0) for res in results["cases"].values())
    results["sampling_seconds"] = sum(  # kept with the cached samples: survives a cached rerun
        row.get("seconds", 0.0) for res in results["cases"].values() for row in res["rows"].values()
    )
    results["args"] = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if k not in ("report", "results", "cache")
    }
    results["machine"] = (
        f"{platform.machine()} CPU, {args.threads} thread(s)" if args.device == "cpu"
        else args.device
    )  # fmt: skip
    words = list(argv if argv is not None else sys.argv[1:])
    for flag in ("--cache", "--results"):  # where files go changes nothing
        if flag in words:
            i = words.index(flag)
            del words[i : i + 2]
    results["command"] = " ".join(["python benchmarks/video_quality.py", *words])
    RESULTS.mkdir(parents=True, exist_ok=True)
    JSON.write_text(json.dumps(results, indent=2) + "\n")
    print(write_report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
