"""Upsample guidance on the exact Gaussian testbed: naive vs UG vs the paper's §5.3 ablations.

Reproduce (from the repository root, about 2-4 minutes on 2 CPU cores):

    python benchmarks/analytic_testbed.py

Writes benchmarks/results/analytic_testbed.md. The data is a stationary Gaussian field seen at two
resolutions; the model is its exact ε-predictor at the trained size, applied at the larger size as
a fixed trained-size pixel kernel (see benchmarks/testbed.py). Every method is sampled by DDIM from
the same seed; the metric is the mean |log(P̂/λ)| over frequencies between the power spectrum of
the samples and that of the data: "coarse" for D[x] against the trained-resolution data, "fine"
for x against the high-resolution data.
"""

import platform
import sys
import time
from pathlib import Path

import torch
from testbed import CASES, run  # benchmarks/testbed.py

N, STEPS, SEED = 512, 250, 0
OUT = Path(__file__).parent / "results" / "analytic_testbed.md"


def main() -> None:
    torch.set_num_threads(1)
    lines = [
        "# Analytic testbed: exact Gaussian data, exact trained-resolution denoiser",
        "",
        "Reproduce: `python benchmarks/analytic_testbed.py` (from the repository root).",
        f"Settings: {N} samples per method, DDIM with {STEPS} steps, seed {SEED}, linear DDPM "
        "schedule, w = 1 (θ = 1, η = 1), exact time matching. "
        f"torch {torch.__version__}, Python {platform.python_version()}.",
        "",
        "Metric: mean over frequencies of |log(P̂/λ)| (0 = the data's power spectrum; the first "
        "row, exact data samples, is the Monte-Carlo floor). *coarse*: D[x] against the "
        "trained-resolution data, i.e. the coarse statistics UG targets. *fine*: the whole "
        "high-resolution sample against the high-resolution data.",
    ]
    t0 = time.time()
    for name, (shape, factors) in CASES.items():
        results = run(shape, factors, n=N, steps=STEPS, seed=SEED)
        nearest = run(shape, factors, n=N, steps=STEPS, seed=SEED, time_matching="nearest")["UG"]
        lines += ["", f"## {name}", "", "| method | coarse | fine |", "| --- | ---: | ---: |"]
        for method, (coarse, fine) in results.items():
            fine_s = "n/a" if fine != fine else f"{fine:.3f}"
            lines.append(f"| {method} | {coarse:.3f} | {fine_s} |")
            if method == "UG":
                lines.append(f"| UG, nearest time matching | {nearest[0]:.3f} | {nearest[1]:.3f} |")
        print(f"{name}: done ({time.time() - t0:.0f} s)", file=sys.stderr)
    lines += [
        "",
        "## Reading",
        "",
        "- Naive sampling at the larger size gets the coarse statistics wrong: the trained-size "
        "kernel makes structure at the trained *pixel* scale, i.e. too small in the image.",
        "- UG (w = 1) brings the coarse statistics back to trained-resolution quality (the "
        "'trained resolution' row is the same sampler at the trained size).",
        "- Without time matching the low-resolution model sees k times its expected SNR and "
        "leaves residual noise; without the power scaling 1/√P it sees inputs of the wrong "
        "variance and fails completely, as the paper's §5.3 reports.",
        "- The fine column improves only through its coarse band: below the trained scale the "
        "samples keep the naive model's statistics, which UG does not claim to fix.",
        "",
        f"Total runtime: {time.time() - t0:.0f} s.",
    ]
    OUT.write_text("\n".join(lines) + "\n")
    print(OUT.read_text())


if __name__ == "__main__":
    main()
