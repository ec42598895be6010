"""torch.compile with UG applied: both sizes compile once, nothing recompiles per step, == eager.

The low-resolution call goes through what the pipeline calls (the compiled wrapper), so it is
compiled (and on a GPU with ``mode="reduce-overhead"`` captured as a CUDA graph) like the high
call; the hooks themselves are opaque to dynamo. ``aot_eager`` checks graph capture and
recompiles quickly; one test compiles for real with inductor in ``mode="reduce-overhead"``.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from diffusers_models import sd_call_kwargs, tiny_sd_pipeline
from diffusers_transformers import SD3_TRAINED, sd3_call_kwargs, tiny_sd3_pipeline
from torch._dynamo.utils import counters
from ug_core.adapters.diffusers import apply_upsample_guidance

CASES = {
    "sd-unet": (tiny_sd_pipeline, "unet", lambda seed: sd_call_kwargs(steps=4, seed=seed)),
    "sd3-transformer": (
        tiny_sd3_pipeline,
        "transformer",
        lambda seed: sd3_call_kwargs(2 * SD3_TRAINED, 2 * SD3_TRAINED, steps=4, seed=seed),
    ),
}


def graphs() -> int:
    """Distinct graphs dynamo has compiled so far."""
    return counters["stats"]["unique_graphs"]


def compiled_run(name: str, **compile_kwargs):
    """(eager guided outputs, compiled guided outputs, graphs after run 1, after run 2)."""
    build, attr, kwargs = CASES[name]
    eager = build()
    apply_upsample_guidance(eager, (2, 2), 1.0, eta=0.6)
    expected = [eager(**kwargs(seed))[0] for seed in (0, 1)]
    torch._dynamo.reset()
    counters.clear()
    pipe = build()
    apply_upsample_guidance(pipe, (2, 2), 1.0, eta=0.6)
    setattr(pipe, attr, torch.compile(getattr(pipe, attr), **compile_kwargs))
    first = pipe(**kwargs(0))[0]
    after_first = graphs()
    second = pipe(**kwargs(1))[0]
    after_second = graphs()
    torch._dynamo.reset()
    return expected, [first, second], after_first, after_second


@pytest.mark.parametrize("name", list(CASES))
def test_both_sizes_compile_once_and_equal_eager(name):
    expected, got, after_first, after_second = compiled_run(name, backend="aot_eager")
    assert after_first == 2  # one graph for the high size, one for the low size
    assert after_second == after_first  # no recompilation at later steps or runs
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_reduce_overhead_mode_with_inductor():
    expected, got, after_first, after_second = compiled_run("sd-unet", mode="reduce-overhead")
    assert after_first == 2 and after_second == 2
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
