"""Worker processes for the branch-parallel tests (two processes, gloo, on the CPU)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist


def _init(rank: int, port: int) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)


def core_sampling(branch, out: Path | None = None, rank: int = 0):
    """A guided DDIM run of the kernel tests' model; returns (x0, shapes of the model calls)."""
    from test_kernel import Model
    from ug_core.adapters.loops import sample_ddim

    from ug_core import DiscreteSchedule, UpsampleGuidance

    schedule = DiscreteSchedule.scaled_linear()
    model, shapes = Model(dtype=torch.float32), []

    def counted(x, t):
        shapes.append(tuple(x.shape))
        return model(x, t)

    guide = UpsampleGuidance(schedule, (2, 2), 1.3, eta=0.6, branch_parallel=branch)
    x0 = sample_ddim(
        counted, schedule, 6, torch.Generator().manual_seed(0), guide, shape=(2, 3, 16, 16),
        progress=False,
    )  # fmt: skip
    if out is not None:
        torch.save({"x0": x0, "shapes": shapes}, out / f"core-{rank}.pt")
    return x0, shapes


def diffusers_sampling(branch, out: Path | None = None, rank: int = 0):
    """The tiny SD pipeline at 2x with UG; returns (latents, shapes of the UNet calls)."""
    from diffusers_models import sd_call_kwargs, tiny_sd_pipeline
    from ug_core.adapters.diffusers import apply_upsample_guidance

    pipe = tiny_sd_pipeline()
    apply_upsample_guidance(pipe, (2, 2), 1.0, eta=0.6, branch_parallel=branch)
    shapes = []  # the UNet's first layer runs once per real UNet computation
    pipe.unet.conv_in.register_forward_hook(lambda m, a, o: shapes.append(tuple(a[0].shape)))
    latents = pipe(**sd_call_kwargs(height=32, width=32, steps=4)).images
    if out is not None:
        torch.save({"x0": latents, "shapes": shapes}, out / f"diffusers-{rank}.pt")
    return latents, shapes


def worker(rank: int, port: int, out: str, which: str) -> None:
    """One of the two processes: run ``which`` with branch-parallel UG and save its result."""
    _init(rank, port)
    try:
        run = core_sampling if which == "core" else diffusers_sampling
        run(dist.group.WORLD, Path(out), rank)
    finally:
        dist.destroy_process_group()
