"""ug_core.adapters.k_diffusion against the real k-diffusion package (issue #4).

Tolerances (all in float64):
- guided vs the hand-written sigma-space reference, one call: 1e-12 (abs and rel); over a whole
  sampler run: 1e-9. The two differ only in the summation order of the block mean.
- sigma-space guidance vs the core's VP-space guidance on the raw eps model: 1e-9. They differ in
  how the fractional timestep and the input scale are rounded (log-sigma vs log-SNR tables).
- CFG(UG(.)) vs UG(CFG(.)): 1e-12 for one call, 1e-9 over a sampler run.
- scale 0, eta 0, below_range="skip": bit-identical (torch.equal).
"""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import dataclass, field
from fractions import Fraction

import k_diffusion as K
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from ug_core.adapters.k_diffusion import (
    EDM_SIGMA_MAX,
    EDM_SIGMA_MIN,
    FORWARDED_ATTRIBUTES,
    CFGDenoiser,
    UpsampleGuidedDenoiser,
    find_discrete_schedule,
)

from ug_core import DiscreteSchedule, TopUpNoise, UpsampleGuidance, step_scale

pytestmark = pytest.mark.filterwarnings(
    # torchsde's Brownian tree, built by k-diffusion's SDE samplers, notes float32 rounding of t1
    "ignore:Should have tb<=t1:UserWarning"
)

F64 = torch.float64
ONE_CALL = {"rtol": 1e-12, "atol": 1e-12}
SAMPLER_RUN = {"rtol": 1e-9, "atol": 1e-9}
VP_SPACE = {"rtol": 1e-9, "atol": 1e-9}
STEPS = 6
SHAPE = (2, 3, 8, 8)
ALPHAS = DiscreteSchedule.scaled_linear().alphas_cumprod  # float64, Stable Diffusion's schedule
HYPOTHESIS = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(autouse=True)
def float64_default():
    """k-diffusion builds some sigmas with the default dtype (dpm_fast, dpm_adaptive)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one intra-op thread is faster, and far faster on a busy shared machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# --- tiny deterministic models ------------------------------------------------------------------


class TinyNet(nn.Module):
    """A tiny time- and cond-conditioned conv net standing in for a UNet: ``net(x, t, cond=None)``.

    ``log_time``: embed log(t)/4 (EDM's c_noise, for a continuous model fed sigma) instead of t/300
    (a discrete timestep).
    """

    def __init__(self, seed: int, log_time: bool = False, channels: int = 3, hidden: int = 8):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.log_time = log_time
        self.conv_in = nn.Conv2d(channels, hidden, 3, padding=1, dtype=F64)
        self.time = nn.Linear(2, hidden, dtype=F64)
        self.cond = nn.Linear(4, hidden, dtype=F64)
        self.conv_out = nn.Conv2d(hidden, channels, 3, padding=1, dtype=F64)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=F64) * 0.3)

    def forward(self, x, t, cond=None, image_cond=None):
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
        t = t.log() / 4 if self.log_time else t / 300
        h = self.conv_in(x) + self.time(torch.stack([t.sin(), t.cos()], -1))[:, :, None, None]
        if cond is not None:
            h = h + self.cond(cond)[:, :, None, None]
        if image_cond is not None:
            h = h + image_cond
        return self.conv_out(torch.tanh(h))


def eps_model(quantize: bool = False):
    return K.external.DiscreteEpsDDPMDenoiser(TinyNet(0), ALPHAS, quantize=quantize).eval()


def v_model():
    return K.external.DiscreteVDDPMDenoiser(TinyNet(1), ALPHAS, quantize=False).eval()


def edm_model():
    return K.layers.Denoiser(TinyNet(2, log_time=True), sigma_data=0.5).eval()


INNERS = {"eps": eps_model, "v": v_model, "edm": edm_model}


def sigma_range(inner) -> tuple[float, float]:
    if hasattr(inner, "sigmas"):
        return float(inner.sigmas.min()), float(inner.sigmas.max())
    return EDM_SIGMA_MIN, EDM_SIGMA_MAX


def sampler_sigmas(inner, steps: int = STEPS) -> torch.Tensor:
    lo, hi = sigma_range(inner)
    return K.sampling.get_sigmas_karras(steps, lo, hi, rho=7.0).to(F64)


class Counting:
    """A denoiser that records each call's (batch, spatial shape, sigma) and forwards it."""

    def __init__(self, inner):
        self.inner_model = inner
        self.calls: list[tuple[int, tuple[int, ...], torch.Tensor]] = []

    def __call__(self, x, sigma, **extra_args):
        self.calls.append((x.shape[0], tuple(x.shape[2:]), torch.as_tensor(sigma).clone()))
        return self.inner_model(x, sigma, **extra_args)

    def low_calls(self, high: tuple[int, ...]) -> list:
        return [c for c in self.calls if c[1] != high]


# --- the hand-written reference (docs/maths.md §6), independent of the core ---------------------


def block_mean(x: torch.Tensor, fh: int, fw: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, c, h // fh, fh, w // fw, fw).mean(dim=(3, 5))


def nearest_up(y: torch.Tensor, fh: int, fw: int) -> torch.Tensor:
    return y.repeat_interleave(fh, dim=2).repeat_interleave(fw, dim=3)


def reference_fraction(inner, sigma: torch.Tensor) -> torch.Tensor:
    """The paper's t/T: sigma_to_t(σ)/(N − 1) for a discrete model, else log-sigma position."""
    if hasattr(inner, "sigma_to_t"):
        return inner.sigma_to_t(sigma) / (len(inner.sigmas) - 1)
    lo, hi = math.log(EDM_SIGMA_MIN), math.log(EDM_SIGMA_MAX)
    return ((sigma.log() - lo) / (hi - lo)).clamp(0, 1)


def reference_guided(inner, theta: float, eta: float = 1.0, factors=(2, 2)):
    """denoised' = denoised + w·U[inner(D[x], max(σ/√k, sigma_min)) − D[denoised]]."""
    fh, fw = factors
    k = fh * fw
    sigma_min = sigma_range(inner)[0]

    def denoiser(x, sigma, **extra_args):
        denoised = inner(x, sigma, **extra_args)
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1).expand(x.shape[0])
        on = (reference_fraction(inner, sigma) >= 1 - eta) & (eta > 0)
        w = torch.where(on, theta, 0.0).reshape(-1, 1, 1, 1)
        low = inner(
            block_mean(x, fh, fw), (sigma / math.sqrt(k)).clamp_min(sigma_min), **extra_args
        )
        return denoised + w * nearest_up(low - block_mean(denoised, fh, fw), fh, fw)

    return denoiser


# --- samplers -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    kwargs: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return self.name + "".join(f"-{k}={v}" for k, v in self.kwargs.items())


DETERMINISTIC = [
    Case("euler"),
    Case("heun"),
    Case("dpm_2"),
    Case("lms"),
    Case("dpmpp_2m"),
    Case("dpm_fast"),
    Case("dpm_adaptive", {"rtol": 0.1, "atol": 0.02}),
    # the SDE and ancestral samplers are deterministic with eta = 0
    Case("euler_ancestral", {"eta": 0.0}),
    Case("dpmpp_2s_ancestral", {"eta": 0.0}),
    Case("dpmpp_sde", {"eta": 0.0}),
    Case("dpmpp_2m_sde", {"eta": 0.0}),
    Case("dpmpp_3m_sde", {"eta": 0.0}),
]
STOCHASTIC = [
    Case("euler_ancestral"),
    Case("dpm_2_ancestral"),
    Case("dpmpp_2s_ancestral"),
    Case("dpmpp_sde"),
    Case("dpmpp_2m_sde"),
    Case("dpmpp_2m_sde", {"solver_type": "heun"}),
    Case("dpmpp_3m_sde"),
    Case("dpm_fast", {"eta": 1.0}),
    Case("dpm_adaptive", {"eta": 1.0, "rtol": 0.1, "atol": 0.02}),
    Case("euler", {"s_churn": 1.0}),
    Case("heun", {"s_churn": 1.0}),
    Case("dpm_2", {"s_churn": 1.0}),
]


def run_sampler(case: Case, model, x: torch.Tensor, sigmas: torch.Tensor, seed: int = 0, **kw):
    torch.manual_seed(seed)
    fn = getattr(K.sampling, f"sample_{case.name}")
    if case.name in ("dpm_fast", "dpm_adaptive"):
        lo, hi = float(sigmas[-2]), float(sigmas[0])
        span = (lo, hi, STEPS) if case.name == "dpm_fast" else (lo, hi)
        return fn(model, x, *span, disable=True, **case.kwargs, **kw)
    return fn(model, x, sigmas, disable=True, **case.kwargs, **kw)


def start_noise(sigmas: torch.Tensor, seed: int = 1) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=F64) * sigmas[0]


def test_every_k_diffusion_sampler_is_covered():
    names = {n.removeprefix("sample_") for n in dir(K.sampling) if n.startswith("sample_")}
    assert names == {c.name for c in DETERMINISTIC + STOCHASTIC}  # a new sampler fails here
    assert {"euler", "heun", "dpm_2", "lms", "dpmpp_2m", "dpm_fast"} <= {
        c.name for c in DETERMINISTIC if not c.kwargs.get("eta")
    }


@pytest.mark.parametrize("kind", sorted(INNERS))
@pytest.mark.parametrize("case", DETERMINISTIC, ids=str)
def test_deterministic_sampler_matches_reference(case, kind):
    inner = INNERS[kind]()
    sigmas = sampler_sigmas(inner)
    x = start_noise(sigmas)
    guided = UpsampleGuidedDenoiser(inner, (2, 2), scale=1.3)
    out = run_sampler(case, guided, x, sigmas)
    ref = run_sampler(case, reference_guided(inner, 1.3), x, sigmas)
    plain = run_sampler(case, inner, x, sigmas)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, **SAMPLER_RUN)
    assert (out - plain).abs().max() > 1e-3  # the guidance did something


@pytest.mark.parametrize("case", [c for c in DETERMINISTIC if c.name in ("euler", "dpmpp_2m")])
def test_deterministic_sampler_with_eta_gate_matches_reference(case):
    inner = eps_model()
    sigmas = sampler_sigmas(inner, 10)
    x = start_noise(sigmas)
    guided = UpsampleGuidedDenoiser(inner, (2, 2), scale=1.0, eta=0.6)
    out = run_sampler(case, guided, x, sigmas)
    ref = run_sampler(case, reference_guided(inner, 1.0, eta=0.6), x, sigmas)
    torch.testing.assert_close(out, ref, **SAMPLER_RUN)


@pytest.mark.parametrize("case", STOCHASTIC, ids=str)
def test_stochastic_sampler_runs_the_full_schedule(case):
    inner = eps_model()
    sigmas = sampler_sigmas(inner)
    assert float(sigmas[0]) == pytest.approx(float(inner.sigmas.max()))
    x = start_noise(sigmas)
    counting = Counting(inner)
    guided = UpsampleGuidedDenoiser(counting, (2, 2), scale=1.0)
    out = run_sampler(case, guided, x, sigmas, seed=3)
    assert torch.isfinite(out).all()
    assert counting.low_calls(SHAPE[2:])  # the guidance ran
    # same noise (same seed), same result as the reference
    ref = run_sampler(case, reference_guided(inner, 1.0), x, sigmas, seed=3)
    torch.testing.assert_close(out, ref, **SAMPLER_RUN)


# --- one call ------------------------------------------------------------------------------------


@HYPOTHESIS
@given(
    kind=st.sampled_from(["eps", "eps_quantized", "v", "edm"]),
    factors=st.sampled_from([(2, 2), (1, 2), (2, 1), (4, 2), (4, 4)]),
    theta=st.floats(-1.0, 3.0),
    eta=st.floats(0.0, 1.0),
    log_sigmas=st.lists(st.floats(math.log(0.01), math.log(20.0)), min_size=2, max_size=2),
)
def test_one_call_matches_reference(kind, factors, theta, eta, log_sigmas):
    inner = eps_model(quantize=True) if kind == "eps_quantized" else INNERS[kind]()
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5), dtype=F64) * 2
    sigma = torch.tensor(log_sigmas, dtype=F64).exp()
    guided = UpsampleGuidedDenoiser(inner, factors, scale=theta, eta=eta)
    out = guided(x, sigma)
    torch.testing.assert_close(
        out, reference_guided(inner, theta, eta, factors)(x, sigma), **ONE_CALL
    )


@HYPOTHESIS
@given(
    theta=st.floats(-1.0, 3.0),
    eta=st.floats(0.0, 1.0),
    log_sigmas=st.lists(st.floats(-2.8, math.log(14.6)), min_size=2, max_size=2),
)
def test_sigma_space_equals_core_vp_space_for_eps_model(theta, eta, log_sigmas):
    """UG in sigma space on the denoiser == the core's VP-space UG on the raw eps net (§3-§6)."""
    net = TinyNet(0)
    inner = K.external.DiscreteEpsDDPMDenoiser(net, ALPHAS, quantize=False)
    sigma = torch.tensor(log_sigmas, dtype=F64).exp()
    assert (sigma / 2 >= inner.sigma_min).all()  # the VP form has no sigma_min clamp
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(6), dtype=F64) * 3
    guided = UpsampleGuidedDenoiser(inner, (2, 2), scale=theta, eta=eta)

    vp = UpsampleGuidance(
        DiscreteSchedule(ALPHAS), (2, 2), theta, "epsilon", "exact", eta=eta, below_range="error"
    )
    s = sigma.reshape(-1, 1, 1, 1)
    x_vp = x / (1 + s**2).sqrt()
    eps = vp(net, x_vp, inner.sigma_to_t(sigma))
    torch.testing.assert_close(guided(x, sigma), x - s * eps, **VP_SPACE)


def test_scalar_and_per_element_sigma_agree():
    inner = eps_model()
    x = start_noise(sampler_sigmas(inner))
    guided = UpsampleGuidedDenoiser(inner, (2, 2))
    a = guided(x, 1.5)
    b = guided(x, torch.tensor(1.5, dtype=F64))
    c = guided(x, torch.full((2,), 1.5, dtype=F64))
    torch.testing.assert_close(a, c, **ONE_CALL)
    torch.testing.assert_close(b, c, **ONE_CALL)


def test_float32_model_keeps_its_dtype():
    inner = K.external.DiscreteEpsDDPMDenoiser(TinyNet(0).float(), ALPHAS.float(), quantize=False)
    sigmas = inner.get_sigmas(STEPS)
    x = torch.randn(SHAPE, dtype=torch.float32) * sigmas[0]
    out = K.sampling.sample_dpmpp_2m(UpsampleGuidedDenoiser(inner), x, sigmas, disable=True)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


# --- scale over time -----------------------------------------------------------------------------


def test_scale_zero_is_bit_identical_to_the_inner_denoiser():
    counting = Counting(eps_model())
    sigmas = sampler_sigmas(counting.inner_model)
    x = start_noise(sigmas)
    guided = UpsampleGuidedDenoiser(counting, (2, 2), scale=0.0)
    assert torch.equal(guided(x, sigmas[0] * x.new_ones(2)), counting(x, sigmas[0] * x.new_ones(2)))
    for case in (Case("euler"), Case("dpmpp_2m_sde"), Case("dpm_adaptive")):
        assert torch.equal(
            run_sampler(case, guided, x, sigmas), run_sampler(case, counting, x, sigmas)
        )
    assert not counting.low_calls(SHAPE[2:])


@pytest.mark.parametrize("kwargs", [{"eta": 0.0}, {"scale": step_scale(1.0, 0.0)}], ids=str)
def test_guidance_switched_off_is_bit_identical(kwargs):
    counting = Counting(edm_model())
    sigmas = sampler_sigmas(counting.inner_model)
    x = start_noise(sigmas)
    guided = UpsampleGuidedDenoiser(counting, (2, 2), **kwargs)
    out = run_sampler(Case("heun"), guided, x, sigmas)
    assert torch.equal(out, run_sampler(Case("heun"), counting, x, sigmas))
    assert not counting.low_calls(SHAPE[2:])


def test_eta_gates_by_sigma_through_sigma_to_t():
    inner = eps_model()
    guided = UpsampleGuidedDenoiser(inner, (2, 2), scale=1.5, eta=0.6)
    sigmas = inner.get_sigmas(40)[:-1].to(F64)
    on = inner.sigma_to_t(sigmas) / 999 >= 0.4
    assert on.any() and (~on).any()
    torch.testing.assert_close(guided.weight(sigmas), torch.where(on, 1.5, 0.0))


def test_eta_gates_by_log_sigma_for_continuous_models():
    guided = UpsampleGuidedDenoiser(edm_model(), (2, 2), scale=2.0, eta=0.6)
    at = lambda f: EDM_SIGMA_MIN * (EDM_SIGMA_MAX / EDM_SIGMA_MIN) ** f  # noqa: E731
    assert guided.weight(at(0.45)).item() == 2.0
    assert guided.weight(at(0.35)).item() == 0.0
    custom = UpsampleGuidedDenoiser(edm_model(), (2, 2), scale=2.0, sigma_min=0.1, sigma_max=10.0)
    assert custom.guidance.schedule.sigma_min == 0.1 and custom.guidance.schedule.sigma_max == 10.0


def test_callable_scale_gets_the_time_fraction():
    inner = eps_model()
    seen = []
    guided = UpsampleGuidedDenoiser(inner, (2, 2), scale=lambda f: seen.append(f) or 2 * f)
    sigma = torch.tensor([14.0, 0.5], dtype=F64)
    fractions = (inner.sigma_to_t(sigma) / 999).tolist()
    torch.testing.assert_close(guided.weight(sigma), 2 * torch.tensor(fractions))
    assert sorted(seen) == pytest.approx(sorted(fractions))


def test_adaptive_sampler_counts_low_calls_by_sigma_not_steps():
    counting = Counting(eps_model())
    guided = UpsampleGuidedDenoiser(counting, (2, 2), eta=0.5)
    sigmas = sampler_sigmas(counting.inner_model)
    run_sampler(
        Case("dpm_adaptive", {"rtol": 0.1, "atol": 0.02}), guided, start_noise(sigmas), sigmas
    )
    high = [c for c in counting.calls if c[1] == SHAPE[2:]]
    expected = sum(bool((counting.inner_model.sigma_to_t(c[2]) / 999 >= 0.5).all()) for c in high)
    assert 0 < expected < len(high)
    assert len(counting.low_calls(SHAPE[2:])) == expected


def test_fraction_override():
    counting = Counting(eps_model())
    guided = UpsampleGuidedDenoiser(counting, (2, 2), eta=0.5, fraction=torch.zeros_like)
    x = start_noise(sampler_sigmas(counting.inner_model))
    sigma = torch.full((2,), 10.0, dtype=F64)
    assert torch.equal(guided(x, sigma), counting(x, sigma))
    assert not counting.low_calls(SHAPE[2:])


# --- below sigma_min ------------------------------------------------------------------------------


def test_below_sigma_min_clamps_by_default():
    counting = Counting(eps_model())
    inner = counting.inner_model
    sigma_min = float(inner.sigma_min)
    x = start_noise(sampler_sigmas(inner))
    sigma = torch.tensor([1.5 * sigma_min, 5.0], dtype=F64)
    out = UpsampleGuidedDenoiser(counting, (2, 2))(x, sigma)
    (low,) = counting.low_calls(SHAPE[2:])
    assert low[2].tolist() == [sigma_min, 2.5]
    assert torch.isfinite(out).all()
    assert (out[0] - inner(x, sigma)[0]).abs().max() > 0  # still guided below sigma_min


def test_below_sigma_min_clamps_for_continuous_models():
    counting = Counting(edm_model())
    x = start_noise(sampler_sigmas(counting.inner_model))
    UpsampleGuidedDenoiser(counting, (2, 2))(x, torch.full((2,), 0.003, dtype=F64))
    (low,) = counting.low_calls(SHAPE[2:])
    assert low[2].tolist() == [EDM_SIGMA_MIN, EDM_SIGMA_MIN]


def test_below_sigma_min_skip_leaves_those_elements_unguided():
    counting = Counting(eps_model())
    inner = counting.inner_model
    sigma_min = float(inner.sigma_min)
    x = start_noise(sampler_sigmas(inner))
    sigma = torch.tensor([1.5 * sigma_min, 5.0], dtype=F64)
    skip = UpsampleGuidedDenoiser(counting, (2, 2), below_range="skip")
    clamp = UpsampleGuidedDenoiser(inner, (2, 2), below_range="clamp")
    out = skip(x, sigma)
    assert torch.equal(out[0], inner(x, sigma)[0])
    torch.testing.assert_close(out[1], clamp(x, sigma)[1], **ONE_CALL)
    counting.calls.clear()
    assert torch.equal(skip(x, sigma[:1]), inner(x, sigma[:1]))
    assert not counting.low_calls(SHAPE[2:])


def test_below_sigma_min_skip_runs_a_sampler_to_the_end():
    inner = eps_model()
    sigmas = sampler_sigmas(inner)
    out = run_sampler(
        Case("dpmpp_2m"),
        UpsampleGuidedDenoiser(inner, below_range="skip"),
        start_noise(sigmas),
        sigmas,
    )
    assert torch.isfinite(out).all()


def test_below_sigma_min_error_raises():
    inner = eps_model()
    guided = UpsampleGuidedDenoiser(inner, (2, 2), below_range="error")
    x = start_noise(sampler_sigmas(inner))
    guided(x, 2.5 * float(inner.sigma_min))
    with pytest.raises(ValueError, match="below"):
        guided(x, 1.5 * float(inner.sigma_min))


# --- batching and CFG ---------------------------------------------------------------------------


def cfg_args(batch: int = 2, cond_scale: float = 5.0) -> dict:
    gen = torch.Generator().manual_seed(9)
    return {
        "cond": torch.randn(batch, 4, generator=gen, dtype=F64),
        "uncond": torch.zeros(batch, 4, dtype=F64),
        "cond_scale": cond_scale,
    }


@pytest.mark.parametrize("order", ["ug_of_cfg", "cfg_of_ug"])
def test_cfg_makes_one_low_res_call_for_both_halves(order):
    counting = Counting(eps_model())
    if order == "ug_of_cfg":
        model = UpsampleGuidedDenoiser(CFGDenoiser(counting), (2, 2))
    else:
        model = CFGDenoiser(UpsampleGuidedDenoiser(counting, (2, 2)))
    sigmas = sampler_sigmas(counting.inner_model)
    x = start_noise(sigmas)
    model(x, sigmas[1] * x.new_ones(2), **cfg_args())
    assert [(b, s) for b, s, _ in counting.calls] == [(4, (8, 8)), (4, (4, 4))]
    counting.calls.clear()
    K.sampling.sample_heun(model, x, sigmas, extra_args=cfg_args(), disable=True)
    high = [c for c in counting.calls if c[1] == (8, 8)]
    low = counting.low_calls((8, 8))
    assert len(high) == 2 * STEPS - 1 and len(low) == len(high)
    assert all(b == 4 for b, _, _ in counting.calls)


def test_cfg_commutes_with_upsample_guidance():
    inner = eps_model()
    ug_of_cfg = UpsampleGuidedDenoiser(CFGDenoiser(inner), (2, 2), scale=1.2)
    cfg_of_ug = CFGDenoiser(UpsampleGuidedDenoiser(inner, (2, 2), scale=1.2))
    sigmas = sampler_sigmas(inner)
    x = start_noise(sigmas)
    sigma = torch.tensor([3.0, 0.2], dtype=F64)
    torch.testing.assert_close(
        ug_of_cfg(x, sigma, **cfg_args()), cfg_of_ug(x, sigma, **cfg_args()), **ONE_CALL
    )
    a = K.sampling.sample_dpmpp_2m(ug_of_cfg, x, sigmas, extra_args=cfg_args(), disable=True)
    b = K.sampling.sample_dpmpp_2m(cfg_of_ug, x, sigmas, extra_args=cfg_args(), disable=True)
    torch.testing.assert_close(a, b, **SAMPLER_RUN)


def test_cfg_denoiser_matches_separate_calls():
    inner = eps_model()
    x = start_noise(sampler_sigmas(inner))
    args = cfg_args(cond_scale=3.0)
    sigma = torch.tensor([2.0, 0.7], dtype=F64)
    u = inner(x, sigma, cond=args["uncond"])
    c = inner(x, sigma, cond=args["cond"])
    torch.testing.assert_close(CFGDenoiser(inner)(x, sigma, **args), u + 3.0 * (c - u), **ONE_CALL)
    torch.testing.assert_close(
        CFGDenoiser(inner)(x, 2.0, **args)[0], (u + 3.0 * (c - u))[0], **ONE_CALL
    )


def test_cfg_denoiser_concatenates_dict_conditions():
    seen = {}

    def inner(x, sigma, cond):
        seen.update(cond=cond, sigma=sigma)
        return x

    x = torch.zeros(2, 1, 4, 4)
    uncond = {"c_crossattn": [torch.zeros(2, 3)], "c_concat": [torch.zeros(2, 1, 4, 4)]}
    cond = {"c_crossattn": [torch.ones(2, 3)], "c_concat": [torch.ones(2, 1, 4, 4)]}
    CFGDenoiser(inner)(x, torch.ones(2), uncond=uncond, cond=cond, cond_scale=7.0)
    assert seen["cond"]["c_crossattn"][0].shape == (4, 3)
    assert (
        seen["cond"]["c_concat"][0][:2].eq(0).all() and seen["cond"]["c_concat"][0][2:].eq(1).all()
    )
    assert seen["sigma"].shape == (4,)


def test_low_res_inputs_adapts_spatial_extra_args():
    counting = Counting(eps_model())
    seen = []

    def low_res_inputs(args, kwargs, factors):
        seen.append(factors)
        return args, {**kwargs, "image_cond": block_mean(kwargs["image_cond"], *factors)}

    guided = UpsampleGuidedDenoiser(counting, (2, 2), low_res_inputs=low_res_inputs)
    x = start_noise(sampler_sigmas(counting.inner_model))
    out = guided(x, 1.0, image_cond=torch.ones(2, 8, 8, 8, dtype=F64))
    assert seen == [(2, 2)] and torch.isfinite(out).all()
    assert len(counting.low_calls(SHAPE[2:])) == 1


# --- k-diffusion-facing surface ---------------------------------------------------------------


def test_discrete_schedule_is_found_through_wrappers():
    inner = eps_model()
    assert find_discrete_schedule(inner) is inner
    assert find_discrete_schedule(Counting(Counting(inner))) is inner
    assert find_discrete_schedule(CFGDenoiser(Counting(inner))).sigmas is inner.sigmas
    assert find_discrete_schedule(edm_model()) is None
    guided = UpsampleGuidedDenoiser(CFGDenoiser(inner), (2, 2))
    schedule = guided.guidance.schedule
    assert (schedule.sigma_min, schedule.sigma_max) == sigma_range(inner)
    edm = UpsampleGuidedDenoiser(edm_model()).guidance.schedule
    assert (edm.sigma_min, edm.sigma_max) == (EDM_SIGMA_MIN, EDM_SIGMA_MAX)


def test_forwarded_attributes_and_module_behaviour():
    inner = eps_model()
    guided = UpsampleGuidedDenoiser(CFGDenoiser(inner), (2, 2))
    assert "get_sigmas" in FORWARDED_ATTRIBUTES
    assert torch.equal(guided.get_sigmas(5), inner.get_sigmas(5))
    assert torch.equal(guided.sigma_max, inner.sigma_max)
    assert guided.inner_model.inner_model is inner
    assert sum(p.numel() for p in guided.parameters()) == sum(p.numel() for p in inner.parameters())
    assert all(key.startswith("inner_model.") for key in guided.state_dict())
    assert "UpsampleGuidance" in repr(guided)
    with pytest.raises(AttributeError):
        guided.loss  # noqa: B018  (not forwarded)
    with pytest.raises(AttributeError):
        UpsampleGuidedDenoiser(edm_model()).get_sigmas  # noqa: B018


def test_works_with_a_copied_sampler():
    """A ComfyUI/A1111-style copy of a sampler: same contract, no k_diffusion import needed."""

    def sample_euler_copy(model, x, sigmas, extra_args=None):
        s_in = x.new_ones([x.shape[0]])
        for i in range(len(sigmas) - 1):
            denoised = model(x, sigmas[i] * s_in, **(extra_args or {}))
            x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
        return x

    inner = eps_model()
    sigmas = sampler_sigmas(inner)
    x = start_noise(sigmas)
    guided = UpsampleGuidedDenoiser(inner, (2, 2))
    torch.testing.assert_close(
        sample_euler_copy(guided, x, sigmas),
        K.sampling.sample_euler(guided, x, sigmas, disable=True),
        **ONE_CALL,
    )


def test_import_does_not_import_k_diffusion():
    code = (
        "import sys, ug_core.adapters.k_diffusion as m; "
        "assert m.UpsampleGuidedDenoiser and m.CFGDenoiser; "
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('k_diffusion', 'torchsde')); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"inner": 3}, TypeError, "inner must be a callable denoiser"),
        ({"sigma_min": "0.1"}, TypeError, "sigma_min must be a positive real number.*'0.1'"),
        ({"sigma_max": True}, TypeError, "sigma_max must be a positive real number.*True"),
        ({"sigma_min": 5.0, "sigma_max": 1.0}, ValueError, "sigma_min=5.0, sigma_max=1.0"),
        ({"sigma_min": -1.0}, ValueError, "sigma_min=-1.0"),
        ({"low_res_inputs": 3}, TypeError, "low_res_inputs must be None or a callable"),
        ({"below_range": "ignore"}, ValueError, "below_range must be one of .*'ignore'"),
        ({"time_matching": "closest"}, ValueError, "time_matching must be one of .*'closest'"),
        ({"eta": 1.5}, ValueError, "eta must lie in"),
        ({"scale": "1"}, TypeError, "scale must be a real number or a callable"),
        ({"factors": (2, 0)}, ValueError, r"factors \(2, 0\): each entry must be a number >= 1"),
        ({"fraction": 3}, TypeError, "fraction must be callable"),
    ],
    ids=lambda v: str(v) if isinstance(v, dict) else None,
)
def test_bad_arguments_raise(kwargs, error, match):
    kwargs = {"inner": edm_model(), **kwargs}
    with pytest.raises(error, match=match):
        UpsampleGuidedDenoiser(**kwargs)


def test_bad_call_inputs_raise():
    guided = UpsampleGuidedDenoiser(edm_model(), (2, 2))
    with pytest.raises(ValueError, match="do not divide"):
        guided(torch.zeros(1, 3, 7, 8), 1.0)
    with pytest.raises(ValueError, match="sigma=-1.0 is negative"):
        guided(torch.zeros(1, 3, 8, 8), -1.0)


def test_bad_cfg_inputs_raise():
    inner = eps_model()
    with pytest.raises(TypeError, match="inner must be a callable denoiser"):
        CFGDenoiser("model")
    cfg = CFGDenoiser(inner)
    x = torch.zeros(SHAPE, dtype=F64)
    good = cfg_args()
    with pytest.raises(ValueError, match=r"uncond and cond must match .*\(2, 3\) and \(2, 4\)"):
        cfg(x, 1.0, uncond=torch.zeros(2, 3, dtype=F64), cond=good["cond"], cond_scale=2.0)
    with pytest.raises(TypeError, match="uncond and cond must be tensors.*got list and Tensor"):
        cfg(x, 1.0, uncond=[good["uncond"]], cond=good["cond"], cond_scale=2.0)
    with pytest.raises(ValueError, match="sigma must be a number or hold 1 or 2 values"):
        cfg(x, torch.ones(3), **good)


@pytest.mark.parametrize("kind", ["eps", "edm"])
def test_fractional_factors_match_the_topped_up_reference(kind):
    """1.5x in sigma space: denoised + w·U[inner(D[x] + σ·ζ, σ/√k) − D[denoised]] (maths §13),
    ζ the core's one-per-sample draw (its top-up term is 0 in denoised space)."""
    import fractional_reference as ref

    inner = INNERS[kind]()
    f = (Fraction(3, 2), Fraction(3, 2))
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(5), dtype=F64) * 2
    sigma = torch.tensor([3.0, 0.7], dtype=F64)
    out = UpsampleGuidedDenoiser(inner, 1.5, scale=1.3)(x, sigma)
    low_sigma = (sigma / 1.5).clamp_min(sigma_range(inner)[0])  # √k = 1.5 for k = 9/4
    zeta = TopUpNoise().draw(x, (2, 3, 8, 8), 1.0, f)
    low = inner(ref.D(x, f) + sigma.reshape(-1, 1, 1, 1) * zeta, low_sigma)
    denoised = inner(x, sigma)
    expected = denoised + 1.3 * ref.U(low - ref.D(denoised, f), f)
    torch.testing.assert_close(out, expected, **ONE_CALL)
    with pytest.raises(
        ValueError, match=r"trailing sizes \(12, 13\) that the factors \(3/2, 3/2\)"
    ):
        UpsampleGuidedDenoiser(inner, 1.5)(torch.zeros(2, 3, 12, 13, dtype=F64), sigma)


def test_a_fractional_run_is_reproducible_and_keeps_one_zeta():
    """1.5x through a whole sampler: ζ is drawn at the first sigma and kept for the run; a second
    run from the same noise draws the same ζ again, so the samples are equal bit for bit."""
    inner = INNERS["eps"]()
    sigmas = inner.get_sigmas(STEPS)
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(3), dtype=F64)
    guided = UpsampleGuidedDenoiser(inner, 1.5, scale=1.0)
    seen = []
    draw = guided.guidance.top_up.draw

    def spy(*args):
        zeta = draw(*args)
        seen.append(zeta)
        return zeta

    guided.guidance.top_up.draw = spy
    first = K.sampling.sample_dpmpp_2m(guided, x * sigmas[0], sigmas, disable=True)
    assert len(seen) == STEPS and all(z is seen[0] for z in seen)
    second = K.sampling.sample_dpmpp_2m(guided, x * sigmas[0], sigmas, disable=True)
    assert torch.equal(first, second) and seen[-1] is not seen[0]
    assert torch.equal(seen[-1], seen[0])
