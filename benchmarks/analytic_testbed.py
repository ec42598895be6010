"""Upsample guidance on the exact Gaussian testbed: VP-ε and flow forms, integer and ratio factors.

Reproduce (from the repository root; 8–12 minutes on 2 shared CPU cores, 2 processes):

    python benchmarks/analytic_testbed.py

``--render`` rewrites the pages from the last run's JSON. Writes
``benchmarks/results/analytic_testbed.json`` and ``analytic_testbed.md`` and regenerates
``benchmarks/RESULTS.md`` (its section "The exact testbed"; ``benchmarks/report.py`` renders both
from the JSON). The data is a stationary Gaussian field seen at two resolutions; the model is its
exact predictor at the trained size (ε on the linear DDPM schedule sampled with DDIM, or the
rectified-flow velocity sampled with Euler), applied at the larger size as a fixed trained-size
kernel (``benchmarks/testbed.py``). Every method starts from the same seed; the metric is the mean
``|log(P̂/λ)|`` over frequencies between the samples' power spectrum and the data's.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction

import torch
from report import RESULTS, testbed_md_lines, write_report  # benchmarks/report.py
from testbed import CASES, FORMS, VARIANTS, run  # benchmarks/testbed.py

N, STEPS, SEED, WORKERS = 512, 100, 0, 2
ETAS = (0.2, 0.4, 0.6, 0.8, 1.0)
#: The ratio variants swept over η (the others run at η = 1 only).
SWEPT = ("whitening", "top-up, per sample", "top-up, initial noise")
COMMAND = "python benchmarks/analytic_testbed.py"


def job(case: str, form: str) -> tuple[str, str, dict, float]:
    """One case in one form: every method's (coarse, fine), and the seconds it took."""
    torch.set_num_threads(1)
    shape, factors = CASES[case]
    ratio = any(Fraction(f).denominator > 1 for f in factors)
    swept = SWEPT if ratio else ("whitening",)
    variants = {v: ETAS if v in swept else (1.0,) for v in (VARIANTS if ratio else swept)}
    start = time.time()
    rows = run(shape, factors, form, n=N, steps=STEPS, seed=SEED, variants=variants,
               ablations=not ratio)  # fmt: skip
    return case, form, rows, time.time() - start


def pixels(case: str) -> float:
    """The number of high-resolution elements of a case (the longest jobs go first)."""
    shape, factors = CASES[case]
    return math.prod(n * Fraction(f) for n, f in zip(shape, factors, strict=True))


def render() -> None:
    """Write the page and RESULTS.md from the JSON of the last run."""
    res = json.loads((RESULTS / "analytic_testbed.json").read_text())
    (RESULTS / "analytic_testbed.md").write_text("\n".join(testbed_md_lines(res)) + "\n")
    write_report()


def main() -> None:
    """Run every case in both forms, two at a time, and write the JSON, the page and RESULTS.md."""
    start = time.time()
    jobs = sorted(((c, f) for c in CASES for f in FORMS), key=lambda j: -pixels(j[0]))
    cases: dict = {c: {} for c in CASES}
    seconds: dict = {c: {} for c in CASES}
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(WORKERS, mp_context=context) as pool:
        for case, form, rows, took in pool.map(job, *zip(*jobs, strict=True)):
            cases[case][form] = rows
            seconds[case][form] = round(took, 1)
            print(f"{case}, {form}: {took:.0f} s", file=sys.stderr)
    config = {
        "command": COMMAND,
        "n": N,
        "steps": STEPS,
        "seed": SEED,
        "etas": ETAS,
        "workers": WORKERS,
        "seconds": round(time.time() - start, 1),
        "job_seconds": seconds,
        "machine": f"{platform.machine()}, {WORKERS} processes of 1 thread",
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    res = {"config": config, "cases": cases}
    (RESULTS / "analytic_testbed.json").write_text(json.dumps(res, indent=1) + "\n")
    render()
    print(f"done in {config['seconds']:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    render() if sys.argv[1:] == ["--render"] else main()
