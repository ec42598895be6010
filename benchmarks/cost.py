"""Cost benchmark: wall time, model calls and peak memory of each method, as ratios to naive.

From the repository root::

    python benchmarks/cost.py                        # CPU, 2 threads
    python benchmarks/cost.py --device cuda

Every method samples the same ``--n`` seeds with ``--steps`` DDIM steps on the embedded model, in
one process, interleaved over ``--repeats`` rounds (the median wall time counts), so that all ratios
to naive come from one run on one machine. Model calls and the pixels they process are counted at
the UNet (``baselines.CallCounter``). Peak memory: on CUDA, ``torch.cuda.max_memory_allocated``
above the allocation before the method; on the CPU (Linux), the peak resident set size during the
method above the resident size before it: the kernel's high-water mark (VmHWM) is reset through
``/proc/self/clear_refs`` before each method, and glibc is told to serve allocations of 64 KiB and
more by mmap so that freed tensors leave the resident set at once (else a method could reuse memory
an earlier one freed and look free). tracemalloc cannot see torch's allocations.

UG's extra cost is compared with the ideal η/k of the model cost (k = factor²): the low-resolution
call has 1/k of the pixels and runs only while w ≠ 0. Writes ``results/cost-<device>.json`` and
regenerates ``RESULTS.md`` (``benchmarks/report.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
sys.path.insert(0, str(ROOT))

import report  # noqa: E402
from baselines import CallCounter, lanczos, sdedit  # noqa: E402


def methods(factor: int) -> list[tuple[str, dict]]:
    """(name, options) of every method at one factor."""
    return [
        ("naive", {}),
        ("UG η=1", {"ug": True, "eta": 1.0}),
        ("UG η=0.5", {"ug": True, "eta": 0.5}),
        ("naive + CFG 2", {"cfg": 2.0}),
        ("UG η=1 + CFG 2", {"ug": True, "eta": 1.0, "cfg": 2.0}),
        ("trained size + bicubic", {"low": "bicubic"}),
        ("trained size + Lanczos", {"low": "lanczos"}),
        ("HiRes.fix s=0.3", {"low": "bicubic", "sdedit": 0.3}),
        ("HiRes.fix s=0.5", {"low": "bicubic", "sdedit": 0.5}),
        ("HiRes.fix s=0.7", {"low": "bicubic", "sdedit": 0.7}),
    ]


def run_method(model, factor: int, opts: dict, n: int, steps: int, batch: int) -> torch.Tensor:
    """Sample one method (the same seeds as every other)."""
    from ug_core.demo.model import default_labels, generate, initial_noise, low_res_noise

    size = (32 * factor, 32 * factor)
    fac = (factor, factor)
    noise = initial_noise(n, size, 0)
    labels = default_labels(model, n, 0)
    common = dict(seed=0, steps=steps, labels=labels, cfg=opts.get("cfg", 1.0),
                  batch_size=batch, progress=False)  # fmt: skip
    if "low" not in opts:
        guide = dict(factors=fac, scale=1.0, eta=opts["eta"]) if opts.get("ug") else {}
        return generate(model, n, size, noise=noise, **guide, **common)
    low = generate(model, n, (32, 32), noise=low_res_noise(noise, fac), **common)
    if opts["low"] == "lanczos":
        return lanczos(low, size)
    up = F.interpolate(low, size=size, mode="bicubic").clamp(-1, 1)
    if "sdedit" in opts:
        return sdedit(model, up, opts["sdedit"], seed=0, steps=steps, labels=labels,
                      batch_size=batch, progress=False)  # fmt: skip
    return up


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _proc_status() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in KiB (Linux)."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0])
    return out


def _cpu_peak_start() -> int:
    """Reset this process's peak RSS (``/proc/self/clear_refs``); returns the current RSS (KiB)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return _proc_status()["VmRSS"]


def _cpu_peak_bytes(start: int) -> int:
    """Peak RSS above ``start`` since :func:`_cpu_peak_start`, in bytes."""
    return (_proc_status()["VmHWM"] - start) * 1024


def _release_freed_memory() -> None:
    """Make glibc serve allocations >= 64 KiB by mmap, so freed tensors leave the RSS at once."""
    import ctypes

    ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD


def measure_factor(model, factor: int, args) -> dict:
    """Every method at one factor: median wall time, calls, pixels and peak memory."""
    device = args.device
    k = factor * factor
    table = methods(factor)
    times: dict[str, list[float]] = {name: [] for name, _ in table}
    counts: dict[str, dict] = {}
    peaks: dict[str, int] = {}
    run_method(model, factor, {}, min(args.n, 4), 2, args.batch_size)  # warm-up
    counter = CallCounter()
    hook = counter.attach(model)
    for r in range(args.repeats):
        for name, opts in table:
            counter.reset()
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            elif r == 0 and args.memory:
                base = _cpu_peak_start()
            _sync(device)
            t = time.perf_counter()
            run_method(model, factor, opts, args.n, args.steps, args.batch_size)
            _sync(device)
            times[name].append(time.perf_counter() - t)
            if r == 0:
                c = counter
                counts[name] = {
                    "calls": c.calls,
                    "pixels": c.pixels,
                    "by_size": {f"{h}x{w}": v for (h, w), v in c.by_size.items()},
                }
                if device.startswith("cuda"):
                    peaks[name] = torch.cuda.max_memory_allocated() - base
                elif args.memory:
                    peaks[name] = _cpu_peak_bytes(base)
        print(f"  round {r + 1}/{args.repeats} done", flush=True)
    hook.remove()
    naive_t = statistics.median(times["naive"])
    naive_calls = counts["naive"]
    rows = {}
    for name, _ in table:
        t = statistics.median(times[name])
        base_name = "naive + CFG 2" if "CFG" in name else "naive"
        ref_t = statistics.median(times[base_name])
        rows[name] = {
            "seconds": round(t, 4),
            "seconds_all": [round(x, 4) for x in times[name]],
            "time_ratio": t / naive_t,
            "calls": counts[name]["calls"],
            "calls_by_size": counts[name]["by_size"],
            "calls_ratio": counts[name]["calls"] / naive_calls["calls"],
            "pixels_ratio": counts[name]["pixels"] / naive_calls["pixels"],
            "peak_bytes": peaks.get(name),
            "memory_ratio": (peaks[name] / peaks["naive"]) if peaks.get("naive") else None,
        }
        if name.startswith("UG"):
            eta = dict(table)[name]["eta"]
            rows[name]["extra_time"] = t / ref_t - 1
            rows[name]["ideal_extra"] = eta / k
            base_pixels = counts[base_name]["pixels"]
            rows[name]["extra_pixels"] = counts[name]["pixels"] / base_pixels - 1
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--factors", type=int, nargs="+", default=[2, 3])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--no-memory",
        dest="memory",
        action="store_false",
        help="skip the CPU memory measurement (needs Linux /proc/self/clear_refs)",
    )
    p.add_argument("--tag", default=None, help="suffix of the result file (default: the device)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    from ug_core.demo.model import load

    model = load(None, args.device)
    if args.device.startswith("cuda"):
        device = torch.cuda.get_device_name()
        memory = "`torch.cuda.max_memory_allocated` above the allocation before sampling"
    else:
        device = f"CPU ({platform.machine()}, {args.threads} threads)"
        memory = (
            "peak resident set size during the method (VmHWM, reset through "
            "/proc/self/clear_refs before it) above the resident size before it, with glibc "
            "returning freed allocations >= 64 KiB to the system at once"
        )
        if args.memory:
            _release_freed_memory()
    start = time.perf_counter()
    res: dict = {"factors": {}}
    for f in args.factors:
        print(f"factor {f}:", flush=True)
        res["factors"][str(f)] = measure_factor(model, f, args)
    res["config"] = {
        "n": args.n,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "device": device,
        "memory_method": memory,
        "seconds": time.perf_counter() - start,
        "command": "python benchmarks/cost.py " + " ".join(argv or sys.argv[1:]),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = args.tag or ("cuda" if args.device.startswith("cuda") else "cpu")
    (RESULTS / f"cost-{tag}.json").write_text(json.dumps(res, indent=2, ensure_ascii=False))
    report.write_report()
    for f, rows in res["factors"].items():
        for name, v in rows.items():
            if "extra_time" in v:
                print(f"{f}x {name}: extra time {100 * v['extra_time']:+.1f}% "
                      f"(ideal η/k {100 * v['ideal_extra']:.1f}%, extra pixels "
                      f"{100 * v['extra_pixels']:.1f}%)")  # fmt: skip
    print(f"done in {res['config']['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
