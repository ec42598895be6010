"""Branch-parallel UG on two CPU processes: latency per step against single-process UG and plain.

The tiny SD pipeline of the tests (UNet trained at 8x8 latents) sampled at 2x (16x16 latents),
DDIM, CFG, (θ, η) = (1, 1) so that every step is guided. Three ways, each process on one thread:

- plain sampling (one process);
- UG in one process (the low call after the high one);
- UG branch-parallel (two processes over gloo: the low call on the second, at the same time).

Latency per step is the median wall time of a run over its steps. Run from the repository root::

    python benchmarks/branch_parallel.py --output benchmarks/results/branch_parallel.md
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from diffusers_models import sd_call_kwargs, tiny_sd_pipeline  # noqa: E402
from ug_core.adapters.diffusers import apply_upsample_guidance  # noqa: E402


def timings(pipe, steps: int, size: int, repeats: int) -> list[float]:
    """Wall times of ``repeats`` pipeline calls (after one warm-up)."""
    kwargs = sd_call_kwargs(height=size, width=size, steps=steps)
    pipe(**kwargs)
    out = []
    for _ in range(repeats):
        if dist.is_initialized():
            dist.barrier()
        start = time.perf_counter()
        pipe(**kwargs)
        out.append(time.perf_counter() - start)
    return out


def worker(rank: int, port: int, args: argparse.Namespace, out: str) -> None:
    """One of the two branch-parallel processes."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), HF_HUB_OFFLINE="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        pipe = tiny_sd_pipeline()
        apply_upsample_guidance(pipe, (2, 2), 1.0, branch_parallel=dist.group.WORLD)
        times = timings(pipe, args.steps, args.size, args.repeats)
        if rank == 0:
            torch.save(times, Path(out) / "branch.pt")
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=32, help="pixels (the UNet was trained at 16)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    plain = tiny_sd_pipeline()
    single = tiny_sd_pipeline()
    apply_upsample_guidance(single, (2, 2), 1.0)
    per_step = {
        "plain (1 process)": statistics.median(timings(plain, args.steps, args.size, args.repeats)),
        "UG, 1 process": statistics.median(timings(single, args.steps, args.size, args.repeats)),
    }
    with tempfile.TemporaryDirectory() as tmp:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(worker, args=(port, args, tmp), nprocs=2, join=True)
        per_step["UG, branch-parallel (2 processes)"] = statistics.median(
            torch.load(Path(tmp) / "branch.pt")
        )
    per_step = {k: v / args.steps * 1e3 for k, v in per_step.items()}
    base, single_ug = per_step["plain (1 process)"], per_step["UG, 1 process"]
    lines = [
        "# Branch-parallel UG: latency per step on two CPU processes",
        "",
        f"Command: `python benchmarks/branch_parallel.py --steps {args.steps} --repeats "
        f"{args.repeats}` (from the repository root). Tiny SD pipeline at {args.size}x{args.size} "
        f"px (2x), DDIM {args.steps} steps, CFG (batch 2), (θ, η) = (1, 1); {platform.machine()} "
        f"CPU, {os.cpu_count()} cores, torch {torch.__version__}, one thread per process, gloo; "
        f"medians of {args.repeats} runs.",
        "",
        "| | ms per step | added over plain | added over single-process UG |",
        "| --- | --- | --- | --- |",
    ]
    for name, ms in per_step.items():
        lines.append(
            f"| {name} | {ms:.2f} | {ms - base:+.2f} ms ({100 * (ms / base - 1):+.0f} %) | "
            f"{ms - single_ug:+.2f} ms |"
        )
    lines += [
        "",
        "Branch-parallel's added latency is the exchange (the low-resolution input, its "
        "prediction, and the full-size guided prediction) and the guidance arithmetic, instead "
        "of the low call; results are bit-identical to the single process "
        "(`tests/test_branch_parallel.py`). One GPU cannot show the gain of two devices: on a "
        "single device both processes share its compute.",
        "",
    ]
    report = "\n".join(lines)
    print(report)
    if args.output is not None:
        args.output.write_text(report)


if __name__ == "__main__":
    main()
