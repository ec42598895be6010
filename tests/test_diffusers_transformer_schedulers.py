"""Transformer pipelines with the schedulers their pipelines ship with, and the host clock.

Every case runs at 2x with UG, gives finite latents that differ from the plain pipeline's, makes
one low call per transformer call, and every call's time comes from the scheduler on the host
(the suite turns a clock that disagrees with the time the model got into an error).
"""

from __future__ import annotations

import pytest
import torch
from diffusers_models import ForwardRecorder
from diffusers_transformers import (
    cogvideox_call_kwargs,
    pixart_call_kwargs,
    sd3_call_kwargs,
    tiny_cogvideox_pipeline,
    tiny_pixart_sigma_pipeline,
    tiny_sd3_pipeline,
    tiny_wan_pipeline,
    wan_call_kwargs,
)
from test_diffusers_transformers import CASES
from ug_core.adapters.diffusers import apply_upsample_guidance

import ug_core.guidance as guidance_module


def flow_heun(pipe):
    from diffusers import FlowMatchHeunDiscreteScheduler

    return FlowMatchHeunDiscreteScheduler(shift=3.0)


def unipc_flow(pipe):
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(
        use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0
    )


def dpm_flow(pipe):
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(
        use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0
    )


def flow_euler(pipe):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=3.0)


def ddim(pipe):
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(pipe.scheduler.config)


def euler(pipe):
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(pipe.scheduler.config)


def cogvideox_dpm(pipe):
    from diffusers import CogVideoXDPMScheduler

    return CogVideoXDPMScheduler.from_config(pipe.scheduler.config)


IMAGE, VIDEO = dict(height=64, width=64), dict(height=128, width=128, num_frames=21)
CASES = {
    "sd3-flow-heun": (tiny_sd3_pipeline, sd3_call_kwargs, IMAGE, flow_heun, (2, 2)),
    "sd3-unipc-flow-sigmas": (tiny_sd3_pipeline, sd3_call_kwargs, IMAGE, unipc_flow, (2, 2)),
    "sd3-dpm++-flow-sigmas": (tiny_sd3_pipeline, sd3_call_kwargs, IMAGE, dpm_flow, (2, 2)),
    "pixart-ddim": (
        tiny_pixart_sigma_pipeline, pixart_call_kwargs, dict(height=512, width=512), ddim, (2, 2)
    ),
    "pixart-euler": (
        tiny_pixart_sigma_pipeline, pixart_call_kwargs, dict(height=512, width=512), euler, (2, 2)
    ),
    "cogvideox-dpm": (
        tiny_cogvideox_pipeline, cogvideox_call_kwargs, VIDEO, cogvideox_dpm, (2, 2, 2)
    ),
    "wan-flow-euler": (tiny_wan_pipeline, wan_call_kwargs, VIDEO, flow_euler, (2, 2, 2)),
    # img2img from mid-schedule with a second-order scheduler (begin index = t_start x order)
    "sd3-img2img-flow-heun": (
        CASES["sd3_img2img"].build, CASES["sd3_img2img"].kwargs, IMAGE, flow_heun, (2, 2)
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_shipped_schedulers_run_with_host_times(name, monkeypatch):
    build, kwargs, size, scheduler, factors = CASES[name]
    pipe = build()
    pipe.scheduler = scheduler(pipe)
    plain = pipe(**kwargs(**size, steps=3))[0]
    seen = []
    prepare = guidance_module.UpsampleGuidance.prepare

    def spy(self, x, t, *, host_time=None):
        seen.append(host_time)
        return prepare(self, x, t, host_time=host_time)

    monkeypatch.setattr(guidance_module.UpsampleGuidance, "prepare", spy)
    apply_upsample_guidance(pipe, factors, 1.0)
    rec = ForwardRecorder(pipe.transformer)
    guided = pipe(**kwargs(**size, steps=3))[0]
    assert torch.isfinite(guided).all() and not torch.equal(guided, plain)
    shapes = [tuple(c[0]["hidden_states"].shape) for c in rec.calls]
    highs = [s for s in shapes if s == shapes[0]]
    assert len(highs) == len(shapes) - len(highs) == len(seen)  # one low call per call
    assert all(h is not None for h in seen), seen  # every time known on the host
