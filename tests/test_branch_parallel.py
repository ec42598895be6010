"""Branch-parallel UG: two processes (gloo, CPU), the low-resolution call on the second one.

The results equal the single-process run exactly (tolerance 0: both processes run the same
operations on the same values), rank 0 makes no low-resolution call and rank 1 no high one.
"""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp
from branch_workers import core_sampling, diffusers_sampling, worker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("which", ["core", "diffusers"])
def test_branch_parallel_equals_single_process(which, tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path), which), nprocs=2, join=True)
    reference, ref_shapes = (core_sampling if which == "core" else diffusers_sampling)(None)
    high, low = (torch.load(tmp_path / f"{which}-{r}.pt") for r in (0, 1))
    assert torch.equal(high["x0"], reference) and torch.equal(low["x0"], reference)
    big = max(ref_shapes, key=lambda s: s[-1])
    assert set(high["shapes"]) == {big}  # rank 0: high calls only
    assert all(s != big for s in low["shapes"]) and low["shapes"]  # rank 1: low calls only
    assert len(high["shapes"]) + len(low["shapes"]) == len(ref_shapes)


def test_branch_parallel_needs_two_initialised_processes():
    from ug_core import DiscreteSchedule, UpsampleGuidance
    from ug_core.branch import BranchParallel

    with pytest.raises(ValueError, match="needs torch.distributed initialised first"):
        BranchParallel()
    with pytest.raises(ValueError, match="needs torch.distributed initialised first"):
        UpsampleGuidance(DiscreteSchedule.linear(), branch_parallel=object())
