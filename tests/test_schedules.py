"""Noise schedules: SNR matching, input scaling, interpolation, ranges and errors."""

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ug_core import DiscreteSchedule, FlowSchedule, SigmaSchedule, block_size, downsample

F64 = torch.float64


@st.composite
def monotone_schedules(draw):
    """Random strictly decreasing alphas_cumprod in (0, 1), from random positive betas."""
    n = draw(st.integers(10, 300))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    lo = draw(st.floats(1e-5, 1e-3))
    hi = draw(st.floats(5e-3, 0.05))
    betas = np.sort(rng.uniform(lo, hi, n))
    return DiscreteSchedule(np.cumprod(1 - betas))


factor_layouts = st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple)


@settings(max_examples=120, deadline=None)
@given(monotone_schedules(), factor_layouts, st.floats(0, 1))
def test_exact_matching_gives_k_times_snr(sched, factors, frac):
    k = block_size(factors)
    t = torch.tensor(frac * (sched.num_timesteps - 1), dtype=F64)
    m = sched.match(t, k, "exact")
    assume(not bool(m.below))
    lhs = sched.log_snr(m.time)
    torch.testing.assert_close(lhs, sched.log_snr(t) + math.log(k), rtol=0, atol=1e-9)
    assert m.time <= t + 1e-12  # less noisy


@settings(max_examples=120, deadline=None)
@given(monotone_schedules(), factor_layouts, st.floats(0, 1), st.integers(0, 2**31 - 1))
def test_scaled_block_mean_is_a_sample_at_tau(sched, factors, frac, seed):
    """c·D[x_t] = a(τ)·D[x0] + s(τ)·n with n = √k·D[ε] (unit variance noise)."""
    k = block_size(factors)
    t = torch.tensor(frac * (sched.num_timesteps - 1), dtype=F64)
    m = sched.match(t, k, "exact")
    assume(not bool(m.below))
    a, s = sched.coefficients(t)
    a_tau, s_tau = sched.coefficients(m.time)
    torch.testing.assert_close(m.scale * a, a_tau, rtol=1e-9, atol=0)
    torch.testing.assert_close(m.scale * s / math.sqrt(k), s_tau, rtol=1e-9, atol=1e-15)
    g = torch.Generator().manual_seed(seed)
    shape = (2, *(4 * f for f in factors))
    x0, eps = torch.randn(shape, generator=g, dtype=F64), torch.randn(shape, generator=g, dtype=F64)
    lhs = m.scale * downsample(a * x0 + s * eps, factors)
    rhs = a_tau * downsample(x0, factors) + s_tau * math.sqrt(k) * downsample(eps, factors)
    torch.testing.assert_close(lhs, rhs, rtol=0, atol=1e-9)


def test_block_mean_of_noise_has_std_one_over_sqrt_k():
    g = torch.Generator().manual_seed(0)
    for factors in [(2, 2), (2, 1, 1), (2, 2, 2), (2, 3)]:
        eps = torch.randn(200, *(8 * f for f in factors), generator=g, dtype=F64)
        std = downsample(eps, factors).std().item()
        assert abs(std * math.sqrt(block_size(factors)) - 1) < 0.02, factors


def test_nearest_matches_paper_appendix_code():
    sched = DiscreteSchedule.scaled_linear()
    alphas = sched.alphas_cumprod.numpy()
    for m in (2, 3):
        snr = alphas / (1 - alphas)
        log_snr, log_snr_low = np.log(snr), np.log(snr * m**2)
        expected = [int(np.argmin(np.abs(log_snr_low[t] - log_snr))) for t in range(len(alphas))]
        got = sched.match(torch.arange(len(alphas)), m * m, "nearest").time
        assert got.tolist() == expected


def test_power_is_papers_eq6():
    sched = DiscreteSchedule.linear()
    t = torch.arange(0, 1000, 37)
    ac = sched.alphas_cumprod[t]
    for k in (4, 9, 2, 8):
        expected = 1 / torch.sqrt(ac + (1 - ac) / k)
        assert torch.equal(sched.match(t, k, "nearest").scale, expected)


def test_fractional_timesteps_interpolate_in_log_snr_like_diffusers():
    """diffusers' _sigma_to_t: linear in log sigma between the neighbouring timesteps."""
    sched = DiscreteSchedule.scaled_linear()
    sigmas = ((1 - sched.alphas_cumprod) / sched.alphas_cumprod).sqrt().numpy()
    log_sigmas = np.log(sigmas)
    for sigma in [0.05, 0.3, 1.7, 9.0, 14.0]:
        log_sigma = np.log(sigma)
        low_idx = int(np.clip(np.cumsum(log_sigma - log_sigmas >= 0).argmax(), 0, 998))
        lo, hi = log_sigmas[low_idx], log_sigmas[low_idx + 1]
        w = np.clip((lo - log_sigma) / (lo - hi), 0, 1)
        t = (1 - w) * low_idx + w * (low_idx + 1)
        a, s = sched.coefficients(torch.tensor(t))
        assert abs((s / a).item() - sigma) < 1e-9 * sigma


def test_integer_timesteps_use_the_table_exactly():
    sched = DiscreteSchedule.linear()
    a, s = sched.coefficients(torch.arange(1000))
    assert torch.equal(a, sched.alphas_cumprod.sqrt())
    assert torch.equal(s, (1 - sched.alphas_cumprod).sqrt())


def test_time_fraction_and_sigmas():
    sched = DiscreteSchedule.linear(num_train_timesteps=11)
    assert torch.equal(sched.time_fraction(torch.tensor([0.0, 5.0, 10.0])),
                       torch.tensor([0.0, 0.5, 1.0], dtype=F64))  # fmt: skip
    ac = sched.alphas_cumprod
    torch.testing.assert_close(sched.sigmas, ((1 - ac) / ac).sqrt(), rtol=1e-12, atol=0)


def test_zero_terminal_snr_schedule_is_finite():
    ac = DiscreteSchedule.linear().alphas_cumprod.clone()
    ac[-1] = 0.0
    sched = DiscreteSchedule(ac)
    for mode in ("nearest", "exact"):
        m = sched.match(torch.tensor([999.0, 998.5, 500.0]), 4, mode)
        assert torch.isfinite(m.time).all() and torch.isfinite(m.scale).all()
    assert sched.match(torch.tensor(999.0), 4, "nearest").scale.item() == 2.0


def test_below_range_is_reported_and_clamped():
    sched = DiscreteSchedule.linear()
    m = sched.match(torch.tensor([0.0, 1.0, 500.0]), 4, "exact")
    assert m.below.tolist() == [True, True, False]
    assert m.time[:2].tolist() == [0.0, 0.0]
    n = sched.match(torch.tensor([0.0, 1.0, 500.0]), 4, "nearest")
    assert n.below.tolist() == [True, True, False] and n.time[:2].tolist() == [0.0, 0.0]


def test_sigma_schedule():
    sched = SigmaSchedule(0.01, 80.0)
    m = sched.match(torch.tensor([8.0, 0.015]), 4, "exact")
    assert torch.equal(m.time, torch.tensor([4.0, 0.01], dtype=F64))
    assert m.below.tolist() == [False, True] and torch.equal(m.scale, torch.ones(2, dtype=F64))
    a, s = sched.coefficients(torch.tensor(3.0))
    assert a.item() == 1.0 and s.item() == 3.0
    assert sched.time_fraction(torch.tensor([0.01, 80.0, 100.0, 0.0])).tolist() == [0, 1, 1, 0]
    custom = SigmaSchedule(0.01, 80.0, fraction=lambda sig: sig / 80)
    assert custom.time_fraction(torch.tensor(40.0)).item() == 0.5


@settings(max_examples=100, deadline=None)
@given(st.floats(0, 1), factor_layouts)
def test_flow_schedule_matching(t, factors):
    k = block_size(factors)
    sched = FlowSchedule(time_scale=1000.0)
    m = sched.match(torch.tensor(t * 1000, dtype=F64), k, "exact")
    a, s = sched.coefficients(torch.tensor(t * 1000, dtype=F64))
    a_tau, s_tau = sched.coefficients(m.time)
    torch.testing.assert_close(m.scale * a, a_tau, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m.scale * s / math.sqrt(k), s_tau, rtol=1e-12, atol=1e-12)
    expected = t / (t + math.sqrt(k) * (1 - t)) if t > 0 else 0.0
    assert abs(m.time.item() / 1000 - expected) < 1e-12


@pytest.mark.parametrize(
    "ac, match",
    [
        (
            [0.9, 0.95, 0.5],
            r"strictly decreasing.*alphas_cumprod\[0\] = 0\.9 <= alphas_cumprod\[1\]",
        ),
        ([0.9, 0.9, 0.5], r"strictly decreasing"),
        ([1.0, 0.5], r"must lie in \(0, 1\)"),
        ([0.9, -0.1], r"must lie in \(0, 1\)"),
        ([0.9, 0.0, 0.0], r"must lie in \(0, 1\)"),
        ([0.5], r"at least 2 values"),
        ([0.9, float("nan")], r"must be finite"),
    ],
)
def test_bad_discrete_schedules(ac, match):
    with pytest.raises(ValueError, match=match):
        DiscreteSchedule(ac)


def test_times_outside_the_schedule():
    sched = DiscreteSchedule.linear()
    with pytest.raises(
        ValueError, match=r"t=1000\.0 is outside the schedule's timesteps \[0, 999\]"
    ):
        sched.check_times(torch.tensor([5, 1000]))
    with pytest.raises(ValueError, match=r"t=-0\.5 is outside"):
        sched.check_times(-0.5)
    with pytest.raises(ValueError, match=r"must be finite"):
        sched.check_times(float("nan"))
    with pytest.raises(ValueError, match=r"sigma=-1\.0 is negative"):
        SigmaSchedule().check_times(torch.tensor(-1.0))
    with pytest.raises(ValueError, match=r"t=1001\.0 is outside the flow's times \[0, 1000\.0\]"):
        FlowSchedule(1000).check_times(1001)
    with pytest.raises(TypeError, match=r"t must be a number"):
        sched.check_times(object())


def test_unknown_time_matching_and_bad_ranges():
    with pytest.raises(ValueError, match=r"time_matching must be one of .* got 'closest'"):
        DiscreteSchedule.linear().match(torch.tensor(3.0), 4, "closest")
    with pytest.raises(ValueError, match=r"0 < sigma_min < sigma_max < inf, got sigma_min=1\.0"):
        SigmaSchedule(1.0, 0.5)
    with pytest.raises(ValueError, match=r"time_scale must be a positive finite number, got 0\.0"):
        FlowSchedule(0)
    with pytest.raises(TypeError, match=r"fraction must be callable"):
        SigmaSchedule(fraction=3)


# ---------------------------------------------------------------------- shifted flow (CogView4)
@settings(max_examples=100, deadline=None)
@given(st.floats(0, 1), st.floats(0.1, 10))
def test_time_shift_inverse_is_the_shift_by_one_over_m(s, m):
    from ug_core.schedules import time_shift

    sigma = time_shift(torch.tensor(s, dtype=F64), m)
    assert 0 <= float(sigma) <= 1
    back = time_shift(sigma, 1 / m)
    torch.testing.assert_close(back, torch.tensor(s, dtype=F64), rtol=0, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.floats(0.01, 0.99), st.floats(0.2, 5), st.floats(0.2, 5), st.sampled_from([2, 4, 9]))
def test_shifted_flow_matches_on_sigma_and_returns_the_low_shifts_step(frac, m, m_low, k):
    """The noise level of step 1000·s is time_shift(s, m); the low call's step, shifted by the low
    size's m', is the flow match (§7) of that σ, and c is the flow's."""
    from ug_core.schedules import ShiftedFlowSchedule, time_shift

    sched = ShiftedFlowSchedule(lambda: m, lambda kk: m_low if kk == k else math.nan)
    t = torch.tensor([1000 * frac], dtype=F64)
    sigma = time_shift(torch.tensor([frac], dtype=F64), m)
    a, s = sched.coefficients(t)
    torch.testing.assert_close(s, sigma, rtol=0, atol=1e-12)
    torch.testing.assert_close(a, 1 - sigma, rtol=0, atol=1e-12)
    flow = FlowSchedule().match(sigma, k, "nearest")
    got = sched.match(t, k)
    torch.testing.assert_close(time_shift(got.time / 1000, m_low), flow.time, rtol=0, atol=1e-12)
    torch.testing.assert_close(got.scale, flow.scale, rtol=0, atol=1e-12)


def test_shifted_flow_without_low_shift_uses_the_runs_shift_and_m_1_is_plain_flow():
    from ug_core.schedules import ShiftedFlowSchedule

    t = torch.tensor([250.0, 500.0, 900.0], dtype=F64)
    plain, shifted = FlowSchedule(time_scale=1000.0), ShiftedFlowSchedule(lambda: 1.0)
    for got, want in zip(shifted.match(t, 4), plain.match(t, 4), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    twice = ShiftedFlowSchedule(lambda: 3.0)
    explicit = ShiftedFlowSchedule(lambda: 3.0, lambda k: 3.0)
    assert torch.equal(twice.match(t, 4).time, explicit.match(t, 4).time)


@pytest.mark.parametrize("arg", ["shift", "low_shift"])
def test_shifted_flow_needs_callables(arg):
    from ug_core.schedules import ShiftedFlowSchedule

    kwargs = {"shift": lambda: 2.0, arg: 2.0}
    with pytest.raises(TypeError, match=rf"{arg} must be a callable returning the time shift m"):
        ShiftedFlowSchedule(**kwargs)
