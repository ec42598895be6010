"""What the diffusers adapter's hooks cost per denoiser call, net of the model (the CPU proxy).

A stand-in denoiser of class ``UNet2DModel`` (so the adapter treats it as a UNet) whose forward
costs a few microseconds sits in a minimal pipeline with a real diffusers DDIM scheduler. Each
case times many calls and reports the median microseconds per call, minus the bare model calls it
makes (one, or two with the low-resolution call):

- hooks installed, another pipeline's call (the application is not active);
- ``scale=0``;
- ``scale=1, eta=0.6`` at a time outside the η window (the host clock says w = 0);
- ``scale=1`` inside the window: the guided call (block mean, time matching, kernel) net of its
  two model calls.

Every guided call gets its time from the scheduler on the host: the time tensor is never read
(``tests/test_diffusers_transformers.py`` and ``tests/test_sync_free.py`` prove it). Run from the
repository root::

    python benchmarks/hook_overhead.py --output benchmarks/results/hook_overhead.md
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time
from pathlib import Path

import torch
from ug_core.adapters.diffusers import apply_upsample_guidance


class UNet2DModel(torch.nn.Module):
    """A stand-in with a UNet's call signature and output, and almost no cost."""

    def __init__(self) -> None:
        super().__init__()
        self.config = type("Config", (), {"in_channels": 4, "out_channels": 4})()

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, return_dict: bool = True):
        """Half the sample, as a tuple."""
        return (sample * 0.5,)


class Pipeline:
    """The least a diffusers pipeline has for the adapter: a denoiser, a scheduler, a bar."""

    def __init__(self) -> None:
        from diffusers import DDIMScheduler

        self.unet = UNet2DModel()
        self.scheduler = DDIMScheduler()
        self.scheduler.set_timesteps(20)

    def progress_bar(self, iterable=None, total=None):
        """A progress bar that shows nothing."""
        return contextlib.nullcontext() if iterable is None else iterable


def per_call(fn, calls: int, repeats: int) -> float:
    """Median over ``repeats`` of the mean seconds per call of ``fn()``."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls)
    return statistics.median(samples)


def measure(calls: int, repeats: int, size: int) -> dict[str, float]:
    """Microseconds per call for each case, net of the model calls."""
    pipe = Pipeline()
    timesteps = pipe.scheduler.timesteps
    high = torch.randn(2, 4, size, size)
    low = torch.randn(2, 4, size // 2, size // 2)
    t_on, t_off = timesteps[0], timesteps[-1]  # 999: in the eta window; 0: outside it
    unet = pipe.unet

    def bare_high() -> None:
        unet.forward(high, t_on)

    def bare_low() -> None:
        unet.forward(low, t_on)

    out: dict[str, float] = {}
    model_high = per_call(bare_high, calls, repeats)
    model_low = per_call(bare_low, calls, repeats)
    out["bare model call (no hooks, for reference)"] = model_high
    out["plain call through nn.Module (no hooks)"] = per_call(
        lambda: unet(high, t_on), calls, repeats
    )
    apply_upsample_guidance(pipe, (2, 2), 1.0, eta=0.6)
    out["hooks installed, application not active"] = per_call(
        lambda: unet(high, t_on), calls, repeats
    )
    with pipe.progress_bar(total=1):
        out["active, eta window off at this time"] = per_call(
            lambda: unet(high, t_off), calls, repeats
        )
        out["active, guided call (high + low)"] = per_call(lambda: unet(high, t_on), calls, repeats)
    apply_upsample_guidance(pipe, (2, 2), 0.0)
    with pipe.progress_bar(total=1):
        out["active, scale=0"] = per_call(lambda: unet(high, t_on), calls, repeats)
    net = {}
    for name, seconds in out.items():
        model = model_high + (model_low if "guided call" in name else 0.0)
        net[name] = (seconds - (0.0 if name.startswith("bare") else model)) * 1e6
    return net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--size", type=int, default=16, help="latent size of the high call")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    net = measure(args.calls, args.repeats, args.size)
    lines = [
        "# Hook overhead per denoiser call (CPU proxy)",
        "",
        f"Command: `python benchmarks/hook_overhead.py --calls {args.calls} --repeats "
        f"{args.repeats} --size {args.size}` (from the repository root). Machine: "
        f"{platform.machine()} CPU, torch {torch.__version__}, 1 thread; medians of "
        f"{args.repeats} rounds of {args.calls} calls; latents 2x4x{args.size}x{args.size}.",
        "",
        "| case | µs per call, net of the model's own calls |",
        "| --- | --- |",
    ]
    lines += [f"| {name} | {value:.1f} |" for name, value in net.items()]
    lines += [
        "",
        "Host synchronisations per guided call: 0 (the time comes from the scheduler's host "
        "copy of its timesteps; the time tensor the model receives is never read).",
        "",
    ]
    report = "\n".join(lines)
    print(report)
    if args.output is not None:
        args.output.write_text(report)


if __name__ == "__main__":
    main()
