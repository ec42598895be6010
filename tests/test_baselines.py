"""The benchmarks' own code (benchmarks/baselines.py): call counting and the SDEdit baseline."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from ug_core.demo.model import generate, initial_noise, load

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from baselines import CallCounter, TruncatedSchedule, sdedit  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    return load()


def test_counter_counts_one_low_resolution_call_per_guided_step(model):
    counter = CallCounter()
    hook = counter.attach(model)
    try:
        generate(model, 2, 64, steps=3, factors=(2, 2), cfg=2.0, progress=False)
        # CFG halves in one batch: 3 high-resolution calls of 4 images, 3 low of 4 at 32x32.
        assert counter.calls == 6 and counter.by_size == {(64, 64): 3, (32, 32): 3}
        assert counter.pixels == 3 * 4 * 64 * 64 + 3 * 4 * 32 * 32
        counter.reset()
        assert (counter.calls, counter.pixels, counter.by_size) == (0, 0, {})
    finally:
        hook.remove()
    generate(model, 1, 32, steps=2, progress=False)
    assert counter.calls == 0  # removed


def test_sdedit_runs_the_truncated_schedule(model):
    counter = CallCounter()
    hook = counter.attach(model)
    images = initial_noise(2, (32, 32), 0).clamp(-1, 1)
    try:
        out = sdedit(model, images, 0.3, steps=10, progress=False)
    finally:
        hook.remove()
    assert out.shape == images.shape and counter.calls == 3  # round(0.3 * 10) steps
    view = TruncatedSchedule(model, 299)
    assert view.schedule.num_timesteps == 300 and view.unet is model.unet
    assert torch.equal(view.schedule.alphas_cumprod, model.schedule.alphas_cumprod[:300])
    with pytest.raises(ValueError, match=r"strength must be in \(0, 1\], got 0"):
        sdedit(model, images, 0, progress=False)
