"""Every scheduler the UNet pipelines accept runs under upsample guidance."""

from __future__ import annotations

import pytest
import torch
from diffusers_models import ddim_scheduler, sd_call_kwargs, tiny_sd_pipeline
from ug_core.adapters.diffusers import apply_upsample_guidance

SCHEDULERS = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-karras": ("EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    "euler-ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {}),
    "dpm++2m-karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "dpm++2m-sde-karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
    ),
    "dpm++sde": ("DPMSolverSDEScheduler", {}),
    "dpm++sde-karras": ("DPMSolverSDEScheduler", {"use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}


def make_scheduler(name: str):
    import diffusers

    cls_name, overrides = SCHEDULERS[name]
    return getattr(diffusers, cls_name).from_config(ddim_scheduler().config, **overrides)


def count_calls(scheduler) -> dict[str, int]:
    """Count the scheduler's stateful calls (instance wrappers over its methods)."""
    counts = {"step": 0, "scale_model_input": 0}
    for name in counts:
        method = getattr(scheduler, name)

        def wrapper(*args, _method=method, _name=name, **kwargs):
            counts[_name] += 1
            return _method(*args, **kwargs)

        setattr(scheduler, name, wrapper)
    return counts


@pytest.mark.filterwarnings("ignore:Should have ta>=t0:UserWarning")  # torchsde, at sigma_min
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_scheduler_runs_finite_and_differs(name):
    pipe = tiny_sd_pipeline(scheduler=make_scheduler(name))
    plain_counts = count_calls(pipe.scheduler)
    plain = pipe(**sd_call_kwargs(steps=3)).images
    apply_upsample_guidance(pipe, (2, 2), 1.0)
    pipe.scheduler = make_scheduler(name)  # a fresh one: same state as the plain run had
    guided_counts = count_calls(pipe.scheduler)
    guided = pipe(**sd_call_kwargs(steps=3)).images
    assert guided.shape == plain.shape == (1, 4, 16, 16)
    assert torch.isfinite(guided).all()
    assert (guided - plain).abs().max() > 1e-3
    # the low-resolution branch never calls the scheduler
    assert guided_counts == plain_counts


def test_scheduler_is_read_at_call_time():
    """Swapping the scheduler after applying uses the new one's schedule and prediction type."""
    pipe = tiny_sd_pipeline()
    apply_upsample_guidance(pipe, (2, 2), 1.0)
    pipe.scheduler = ddim_scheduler(prediction_type="v_prediction")
    swapped = pipe(**sd_call_kwargs(steps=2)).images
    fresh = tiny_sd_pipeline(prediction_type="v_prediction")
    apply_upsample_guidance(fresh, (2, 2), 1.0)
    assert torch.equal(swapped, fresh(**sd_call_kwargs(steps=2)).images)
