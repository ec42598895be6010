"""The guidance kernel and UpsampleGuidance: Eq. 10 by hand, w = 0, CFG, the four forms, errors."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ug_core import (
    PREDICTIONS,
    DiscreteSchedule,
    FlowSchedule,
    SigmaSchedule,
    UpsampleGuidance,
    guidance_coefficients,
    prediction_to_x0,
    step_scale,
    x0_to_prediction,
)

F64 = torch.float64
SD = DiscreteSchedule.scaled_linear()


# ---------------------------------------------------------------- references written by hand
def hand_down(x, factors):
    """Block mean, one trailing axis at a time, with plain reshapes."""
    nd = len(factors)
    for i, f in enumerate(factors):
        axis = x.ndim - nd + i
        shape = x.shape[:axis] + (x.shape[axis] // f, f) + x.shape[axis + 1 :]
        x = x.reshape(shape).mean(dim=axis + 1)
    return x


def hand_up(y, factors):
    """Nearest upsampling with repeat_interleave."""
    nd = len(factors)
    for i, f in enumerate(factors):
        y = y.repeat_interleave(f, dim=y.ndim - nd + i)
    return y


def hand_tau(t, m2, mode):
    """Appendix A (nearest) or numpy interpolation of log SNR (exact); m2 = k."""
    ac = SD.alphas_cumprod.numpy()
    log_snr = np.log(ac / (1 - ac))
    lam_t = np.interp(t, np.arange(len(ac)), log_snr)
    target = lam_t + np.log(m2)
    if mode == "nearest":
        return int(np.argmin(np.abs(target - log_snr)))
    return float(np.interp(-target, -log_snr, np.arange(len(ac))))  # -log_snr increases


def hand_eq10(model, x, t, w, factors, mode):
    """Paper Eq. 10 with k = prod(factors) for m²: eps + w·U[eps(D[x]/√P, τ)/√k − D[eps]]."""
    k = math.prod(factors)
    ac = SD.alphas_cumprod.numpy()
    ac_t = float(np.exp(np.interp(t, np.arange(len(ac)), np.log(ac / (1 - ac)))))
    ac_t = ac_t / (1 + ac_t) if t != int(t) else float(ac[int(t)])
    P = ac_t + (1 - ac_t) / k
    eps = model(x, t)
    eps_low = model(hand_down(x, factors) / math.sqrt(P), hand_tau(t, k, mode))
    return eps + w * hand_up(eps_low / math.sqrt(k) - hand_down(eps, factors), factors)


# ---------------------------------------------------------------- test models
class Model:
    """A nonlinear, size-agnostic test model that records its calls."""

    def __init__(self, channels=3, seed=0, dtype=F64):
        g = torch.Generator().manual_seed(seed)
        self.mix = torch.randn(channels, channels, generator=g, dtype=F64).to(dtype) / channels
        self.calls = []

    def __call__(self, x, t, *args, **kwargs):
        self.calls.append({"shape": tuple(x.shape), "t": t, "args": args, "kwargs": kwargs})
        tt = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        tt = tt.reshape(-1, *([1] * (x.ndim - 1))) if tt.ndim else tt
        h = torch.einsum("ij,bj...->bi...", self.mix.to(x.device, x.dtype), x)
        out = torch.tanh(h + torch.roll(x, 1, dims=-1)) * (1 + tt / 1000) + 0.1 * x
        for a in args:
            out = out + 0.01 * a.reshape(-1, *([1] * (x.ndim - 1)))
        if "bias" in kwargs:
            out = out + kwargs["bias"].reshape(-1, *([1] * (x.ndim - 1)))
        return out


LAYOUTS = [
    ((2, 3, 8, 8), (2, 2)),
    ((2, 3, 9, 9), (3, 3)),
    ((2, 3, 8, 9), (2, 3)),
    ((2, 3, 12), (2,)),  # 1-D sequences
    ((2, 4, 8, 4, 4), (2, 1, 1)),  # video, temporal
    ((2, 4, 8, 4, 4), (1, 2, 2)),  # video, spatial
    ((2, 4, 4, 4, 4), (2, 2, 2)),  # video, both
]


@pytest.mark.parametrize("shape, factors", LAYOUTS)
@pytest.mark.parametrize("mode", ["nearest", "exact"])
@pytest.mark.parametrize("t", [999, 640, 321.37, 40, 3])
def test_wrap_equals_eq10_by_hand(shape, factors, mode, t):
    model = Model(shape[1])
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    guide = UpsampleGuidance(SD, factors=factors, scale=1.3, prediction="epsilon",
                             time_matching=mode)  # fmt: skip
    got = guide.wrap(model)(x, t)
    expected = hand_eq10(model, x, t, 1.3, factors, mode)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_contract_example():
    model = Model()
    guide = UpsampleGuidance(DiscreteSchedule(SD.alphas_cumprod), factors=(2, 2), scale=1.0,
                             prediction="epsilon", time_matching="nearest")  # fmt: skip
    guided = guide.wrap(model)
    x_t = torch.randn(2, 3, 8, 8, dtype=F64)
    eps = guided(x_t, 500)
    torch.testing.assert_close(eps, hand_eq10(model, x_t, 500, 1.0, (2, 2), "nearest"),
                               rtol=0, atol=1e-12)  # fmt: skip


# ---------------------------------------------------------------- w = 0
@pytest.mark.parametrize("scale", [0.0, lambda f: 0.0, step_scale(1.0, 0.3)])
def test_zero_weight_is_the_plain_model_without_a_low_call(scale):
    model = Model()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float32)
    guide = UpsampleGuidance(SD, (2, 2), scale=scale)
    out = guide.wrap(model)(x, torch.tensor(100))  # fraction 0.1: off for the step scale too
    assert len(model.calls) == 1
    assert torch.equal(out, Model()(x, torch.tensor(100)))


def test_mixed_weights_per_batch_element():
    """Elements whose w is 0 get the plain output bit for bit; one low call for the batch."""
    model = Model()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float32)
    t = torch.tensor([900, 100, 700])
    guide = UpsampleGuidance(SD, (2, 2), scale=step_scale(1.0, eta=0.6), time_matching="exact")
    out = guide.wrap(model)(x, t)
    plain = Model()(x, t)
    assert len(model.calls) == 2 and model.calls[1]["shape"] == (3, 3, 4, 4)
    assert torch.equal(out[1], plain[1])
    assert not torch.equal(out[0], plain[0]) and not torch.equal(out[2], plain[2])


def test_step_scale_is_eq11_on_the_time_fraction():
    s = step_scale(1.5, eta=0.6)
    assert s(1.0) == 1.5 and s(0.4) == 1.5 and s(0.399) == 0.0 and s(0.0) == 0.0
    assert step_scale(1.0, 0.0)(1.0) == 0.0 and step_scale(2.0, 1.0)(0.0) == 2.0
    guide = UpsampleGuidance(SD, (2, 2), scale=1.5, eta=0.6)
    assert guide.weight(torch.tensor([999, 600, 399.6, 399])).tolist() == [1.5, 1.5, 1.5, 0.0]


def test_callable_scale_sees_the_time_fraction():
    seen = []
    guide = UpsampleGuidance(SD, (2, 2), scale=lambda f: seen.append(f) or 2 * f)
    w = guide.weight(torch.tensor([999.0, 333.0]))
    assert sorted(seen) == [333 / 999, 1.0]
    torch.testing.assert_close(w, torch.tensor([2.0, 666 / 999], dtype=F64), rtol=0, atol=1e-15)


# ---------------------------------------------------------------- CFG commutes
def test_cfg_commutes_with_ug_and_costs_one_low_call():
    model = Model()
    x = torch.randn(2, 3, 8, 8, dtype=F64)
    cond, uncond = torch.tensor([1.0, -2.0], dtype=F64), torch.zeros(2, dtype=F64)
    g = 5.0

    def cfg(m):
        def f(x, t, cond):
            both = m(torch.cat([x, x]), t, torch.cat([torch.zeros_like(cond), cond]))
            e_u, e_c = both.chunk(2)
            return e_u + g * (e_c - e_u)

        return f

    guide = UpsampleGuidance(SD, (2, 2), scale=1.0, time_matching="exact")
    ug_of_cfg = guide.wrap(cfg(model))(x, 700, cond)
    calls = len(model.calls)
    cfg_of_ug = cfg(guide.wrap(model))(x, 700, cond)
    assert calls == 2 and len(model.calls) - calls == 2  # one high and one low call each
    assert model.calls[-1]["shape"] == (4, 3, 4, 4)  # the doubled batch, one low call
    torch.testing.assert_close(ug_of_cfg, cfg_of_ug, rtol=0, atol=1e-12)
    assert uncond.sum() == 0


# ---------------------------------------------------------------- the four forms
SCHEDULES = {
    "discrete": (SD, [999.0, 700.0, 412.5, 60.0, 0.0]),
    "sigma": (SigmaSchedule(0.01, 80.0), [80.0, 10.0, 1.0, 0.03]),
    "flow": (FlowSchedule(1000.0), [1000.0, 800.0, 500.0, 120.0, 0.5]),
}


def x0_model(x, t, schedule):
    """A nonlinear x0 estimate used to build consistent ε, x0, v and flow models."""
    a, s = schedule.coefficients(torch.as_tensor(t, dtype=F64))
    a = a.reshape(-1, *([1] * (x.ndim - 1))) if a.ndim else a
    return torch.tanh(x + torch.roll(x, 1, dims=-1)) * (0.5 + a)


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("factors", [(2, 2), (2, 3), (3, 3)])
def test_the_four_forms_are_one_guidance(name, prediction, factors):
    """Each form, converted to x0, equals x0̂ + w·U[x0_low − D[x0̂]] (docs/maths.md §5)."""
    schedule, times = SCHEDULES[name]

    def model(x, t):
        a, s = schedule.coefficients(torch.as_tensor(t, dtype=F64))
        return x0_to_prediction(x0_model(x, t, schedule), x, a, s, prediction)

    shape = (1, 2, 6 * factors[0], 6 * factors[1])
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=F64) * 3
    guide = UpsampleGuidance(schedule, factors, 1.3, prediction, "exact")
    for t in times:
        out = guide.wrap(model)(x, t)
        assert torch.isfinite(out).all()
        a, s = schedule.coefficients(torch.tensor(t, dtype=F64))
        if (prediction != "sample" and s == 0) or (prediction == "epsilon" and a == 0):
            continue  # the conversion to x0 is undefined here; the guidance itself is finite
        m = schedule.match(torch.tensor(t, dtype=F64), guide.k, "exact")
        if m.below:
            continue  # clamped τ: the low call is read at its actual input coefficients
        x0_hat = x0_model(x, t, schedule)
        x0_low = x0_model(hand_down(x, factors) * m.scale, m.time.item(), schedule)
        expected = x0_hat + 1.3 * hand_up(x0_low - hand_down(x0_hat, factors), factors)
        got = prediction_to_x0(out, x, a, s, prediction)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-10, msg=f"t={t}")


@settings(max_examples=200, deadline=None)
@given(
    st.floats(0.01, 1.0), st.floats(0.01, 20.0), st.integers(1, 27),
    st.sampled_from(["epsilon", "sample", "v_prediction", "flow"]),
)  # fmt: skip
def test_closed_form_coefficients_match_the_generic_derivation(a, s, k, prediction):
    """r = B(a, s)/B(ca, cs/√k), q = A(a, s) − r·c·A(ca, cs/√k) for p = A·x + B·x0."""
    a, s = torch.tensor(a, dtype=F64), torch.tensor(s, dtype=F64)
    c = 1 / torch.sqrt(a * a + s * s / k)  # any positive c works; use the VP-like one

    def lin(a_, s_):  # p = A·x + B·x0, read off from x0_to_prediction
        x, x0 = torch.tensor(1.0, dtype=F64), torch.tensor(0.0, dtype=F64)
        A = x0_to_prediction(x0, x, a_, s_, prediction)
        B = x0_to_prediction(torch.tensor(1.0, dtype=F64), torch.tensor(0.0, dtype=F64),
                             a_, s_, prediction)  # fmt: skip
        return A, B

    A, B = lin(a, s)
    A_low, B_low = lin(c * a, c * s / math.sqrt(k))
    r, q = guidance_coefficients(prediction, a, s, c, k)
    torch.testing.assert_close(r, B / B_low, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(q, A - r * c * A_low, rtol=1e-9, atol=1e-9 * (1 + abs(A)))


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_no_nan_at_the_ends_of_every_schedule(prediction):
    zero_snr = SD.alphas_cumprod.clone()
    zero_snr[-1] = 0
    cases = [
        (DiscreteSchedule(zero_snr), [999, 998.5, 0]),
        (SD, [999, 0, 0.25]),
        (FlowSchedule(), [1.0, 0.0, 1e-9]),
        (SigmaSchedule(0.002, 80), [0.0, 80.0, 500.0]),
    ]
    for schedule, times in cases:
        guide = UpsampleGuidance(schedule, (2, 2), 1.0, prediction, "exact")
        for t in times:
            out = guide.wrap(Model())(torch.randn(2, 3, 4, 4), t)
            assert torch.isfinite(out).all(), (type(schedule).__name__, t)


# ---------------------------------------------------------------- times, batches, arguments
def test_time_forms_reach_the_low_call_in_kind():
    model = Model()
    x = torch.randn(2, 3, 8, 8, dtype=F64)
    near = UpsampleGuidance(SD, (2, 2), time_matching="nearest").wrap(model)
    exact = UpsampleGuidance(SD, (2, 2), time_matching="exact").wrap(model)
    near(x, 500)
    assert isinstance(model.calls[-1]["t"], int)
    exact(x, 500)
    assert isinstance(model.calls[-1]["t"], float)
    near(x, torch.tensor(500))
    low_t = model.calls[-1]["t"]
    assert low_t.shape == () and low_t.dtype == torch.int64
    exact(x, torch.tensor([500, 700]))
    low_t = model.calls[-1]["t"]
    assert low_t.shape == (2,) and low_t.dtype == torch.float32
    exact(x, torch.tensor([500.0], dtype=F64))
    assert model.calls[-1]["t"].shape == (1,) and model.calls[-1]["t"].dtype == F64


def test_per_element_times_equal_separate_calls():
    model = Model()
    x = torch.randn(2, 3, 8, 8, dtype=F64)
    guided = UpsampleGuidance(SD, (2, 2), 1.2, time_matching="exact").wrap(model)
    together = guided(x, torch.tensor([800.0, 150.5], dtype=F64))
    first = guided(x[:1], torch.tensor([800.0], dtype=F64))
    second = guided(x[1:], torch.tensor([150.5], dtype=F64))
    torch.testing.assert_close(together, torch.cat([first, second]), rtol=0, atol=1e-12)


def test_extra_args_and_kwargs_reach_both_calls():
    model = Model()
    x = torch.randn(2, 3, 8, 8, dtype=F64)
    arg, bias = torch.tensor([1.0, 2.0], dtype=F64), torch.tensor([0.5, -0.5], dtype=F64)
    UpsampleGuidance(SD, (2, 2)).wrap(model)(x, 600, arg, bias=bias)
    assert len(model.calls) == 2
    for call in model.calls:
        assert call["args"][0] is arg and call["kwargs"]["bias"] is bias


def test_low_res_inputs_hook_adapts_only_the_low_call():
    model = Model()
    x = torch.randn(2, 3, 8, 8, dtype=F64)
    bias = torch.tensor([0.5, -0.5], dtype=F64)

    def hook(args, kwargs, factors):
        assert factors == (2, 2)
        return args, {**kwargs, "bias": kwargs["bias"] * 0}

    UpsampleGuidance(SD, (2, 2)).wrap(model, low_res_inputs=hook)(x, 600, bias=bias)
    assert model.calls[0]["kwargs"]["bias"] is bias
    assert torch.equal(model.calls[1]["kwargs"]["bias"], torch.zeros(2, dtype=F64))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtype_is_kept(dtype):
    model = Model(dtype=dtype)
    x = torch.randn(2, 3, 8, 8).to(dtype)
    out = UpsampleGuidance(SD, (2, 2), time_matching="exact").wrap(model)(x, 321.5)
    assert out.dtype == dtype and torch.isfinite(out.float()).all()
    assert model.calls[1]["shape"] == (2, 3, 4, 4)
    ref = UpsampleGuidance(SD, (2, 2), time_matching="exact").wrap(Model())(x.double(), 321.5)
    tol = {torch.float16: 1e-2, torch.bfloat16: 8e-2, torch.float32: 1e-5, torch.float64: 0}[dtype]
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=tol + 1e-12)


def test_device_is_kept():
    """On the meta device (no GPU here) every tensor the kernel returns stays on x's device."""
    x = torch.empty(2, 3, 8, 8, device="meta")
    out = UpsampleGuidance(SD, (2, 2)).wrap(lambda x, t: x * 2)(x, torch.tensor([5, 900]))
    assert out.device.type == "meta" and out.shape == x.shape


# ---------------------------------------------------------------- below the schedule's range
def test_below_range_policies():
    x = torch.randn(2, 3, 8, 8, dtype=F64)
    t = torch.tensor([0, 600])  # t = 0: the matched time would be below timestep 0
    clamp = Model()
    out = UpsampleGuidance(SD, (2, 2), time_matching="exact").wrap(clamp)(x, t)
    assert clamp.calls[1]["t"].tolist() == [0.0, pytest.approx(hand_tau(600, 4, "exact"))]
    assert not torch.equal(out[0], Model()(x, t)[0])
    skip = Model()
    out = UpsampleGuidance(SD, (2, 2), time_matching="exact", below_range="skip").wrap(skip)(x, t)
    assert torch.equal(out[0], Model()(x, t)[0]) and not torch.equal(out[1], Model()(x, t)[1])
    only_below = Model()
    guide = UpsampleGuidance(SD, (2, 2), below_range="skip")
    assert torch.equal(guide.wrap(only_below)(x, 0), Model()(x, 0))
    assert len(only_below.calls) == 1
    with pytest.raises(ValueError, match=r"matched time for t=0\.0 falls below the schedule"):
        UpsampleGuidance(SD, (2, 2), below_range="error").wrap(Model())(x, t)


# ---------------------------------------------------------------- errors
def test_constructor_errors():
    with pytest.raises(ValueError, match=r"prediction must be one of .* got 'noise'"):
        UpsampleGuidance(SD, prediction="noise")
    with pytest.raises(ValueError, match=r"time_matching must be one of .* got 'closest'"):
        UpsampleGuidance(SD, time_matching="closest")
    with pytest.raises(ValueError, match=r"below_range must be one of .* got 'ignore'"):
        UpsampleGuidance(SD, below_range="ignore")
    with pytest.raises(TypeError, match=r"scale must be a real number or a callable.*str"):
        UpsampleGuidance(SD, scale="1")
    with pytest.raises(ValueError, match=r"scale must be finite, got inf"):
        UpsampleGuidance(SD, scale=float("inf"))
    with pytest.raises(ValueError, match=r"eta must lie in \[0, 1\].*got 1\.5"):
        UpsampleGuidance(SD, eta=1.5)
    with pytest.raises(TypeError, match=r"schedule must be a DiscreteSchedule.*got ndarray"):
        UpsampleGuidance(np.linspace(0.99, 0.01, 10))
    with pytest.raises(ValueError, match=r"factors \(2, 0\): each entry must be a number >= 1"):
        UpsampleGuidance(SD, factors=(2, 0))
    with pytest.raises(
        ValueError, match=r"got 1\.33, which is not one; the nearest such ratio is 4/3"
    ):
        UpsampleGuidance(SD, factors=(1.33, 2))


def test_call_errors():
    guided = UpsampleGuidance(SD, (2, 2)).wrap(Model())
    with pytest.raises(ValueError, match=r"trailing sizes \(7, 8\).*7 % 2 = 1"):
        guided(torch.zeros(1, 3, 7, 8), 10)
    with pytest.raises(ValueError, match=r"2 factors \(2, 2\) for x of shape \(8, 8\): at most 1"):
        guided(torch.zeros(8, 8), 10)
    with pytest.raises(ValueError, match=r"t=1000\.0 is outside the schedule's timesteps"):
        guided(torch.zeros(1, 3, 8, 8), 1000)
    with pytest.raises(ValueError, match=r"t must be a number, hold 1 or batch-size \(2\) values"):
        guided(torch.zeros(2, 3, 8, 8), torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match=r"model must return a tensor, got tuple"):
        UpsampleGuidance(SD).wrap(lambda x, t: (x,))(torch.zeros(1, 3, 8, 8), 10)
    with pytest.raises(ValueError, match=r"scale\(1\.0\) must return a finite real number"):
        UpsampleGuidance(SD, scale=lambda f: float("nan")).wrap(Model())(
            torch.zeros(1, 3, 8, 8), 999
        )
    with pytest.raises(TypeError, match=r"model must be callable"):
        UpsampleGuidance(SD).wrap(3)
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor, got list"):
        UpsampleGuidance(SD).wrap(Model())([[0.0]], 10)
    # a model that answers the low-resolution call at the wrong size
    wrong = r"low-resolution call returned torch\.Size\(\[1, 3, 8, 8\]\), expected .* 4, 4\)"
    with pytest.raises(ValueError, match=wrong):
        UpsampleGuidance(SD).wrap(lambda x, t: torch.zeros(1, 3, 8, 8))(torch.zeros(1, 3, 8, 8), 10)
    # a known prediction that is not shaped like x
    wrong = r"the model's prediction has shape \(1, 3, 4, 4\), but x has shape \(1, 3, 8, 8\)"
    with pytest.raises(ValueError, match=wrong):
        UpsampleGuidance(SD).apply(torch.zeros(1, 3, 4, 4), Model(), torch.zeros(1, 3, 8, 8), 10)


def test_apply_guides_a_known_prediction_like_call():
    model = Model()
    x = torch.randn(2, 3, 8, 8, dtype=F64)
    guide = UpsampleGuidance(SD, (2, 2), 1.2, time_matching="exact")
    expected = guide(model, x, 640.0)
    low = Model()
    got = guide.apply(Model()(x, 640.0), low, x, 640.0)
    assert torch.equal(got, expected)
    assert [c["shape"] for c in low.calls] == [(2, 3, 4, 4)]  # only the low-resolution call
    with pytest.raises(ValueError, match=r"t=1000\.0 is outside"):
        guide.apply(x, low, x, 1000)


# ---------------------------------------------------------------- time maps
class MapModel(Model):
    """:class:`Model` that also takes a time map (a tensor with x's axes, broadcast)."""

    def __call__(self, x, t, *args, **kwargs):
        if isinstance(t, torch.Tensor) and t.ndim == x.ndim:
            self.calls.append({"shape": tuple(x.shape), "t": t})
            h = torch.einsum("ij,bj...->bi...", self.mix.to(x.device, x.dtype), x)
            return torch.tanh(h + torch.roll(x, 1, dims=-1)) * (1 + t.to(x.dtype) / 1000) + 0.1 * x
        return super().__call__(x, t, *args, **kwargs)


MAP_SCHEDULES = {
    "vp": (SD, "epsilon", [999.0, 640.0, 321.37, 3.0]),
    "vp-v": (SD, "v_prediction", [999.0, 40.0]),
    "sigma": (SigmaSchedule(0.03, 14.6), "sample", [14.6, 0.5, 0.01]),
    "flow": (FlowSchedule(1000.0), "flow", [1000.0, 700.0, 1.0]),
}


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(sorted(MAP_SCHEDULES)),
    st.integers(0, 3),
    st.sampled_from([(2, 2), (1, 2, 2), (2, 1, 1), ("3/2", "3/2")]),
    st.sampled_from(["full", "broadcast"]),
    st.sampled_from([torch.float64, torch.float32]),
)
def test_a_constant_time_map_is_the_scalar_time_bit_for_bit(name, i, factors, form, dtype):
    schedule, prediction, times = MAP_SCHEDULES[name]
    t = times[i % len(times)]
    shape = (2, 3, 4, 6, 6) if len(factors) == 3 else (2, 3, 6, 6)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(i), dtype=dtype)
    map_shape = shape if form == "full" else (2, 1) + (1,) * (len(shape) - 2)
    guide = UpsampleGuidance(schedule, factors, 1.3, prediction, "exact")
    scalar = guide(MapModel(3), x, torch.full((2,), t, dtype=dtype))
    mapped = guide(MapModel(3), x, torch.full(map_shape, t, dtype=dtype))
    assert torch.equal(scalar, mapped)


def test_per_frame_times_equal_each_frame_guided_alone():
    """A clean first frame and noisy others (image-to-video): the map's τ is per frame."""
    model = MapModel(3)
    x = torch.randn(2, 3, 3, 8, 8, dtype=F64)
    t_map = (
        torch.tensor([0.0, 700.0, 700.0], dtype=F64).reshape(1, 1, 3, 1, 1).expand(2, 1, 3, 1, 1)
    )
    guide = UpsampleGuidance(SD, (1, 2, 2), 1.2, "epsilon", "exact")
    together = guide(model, x, t_map)
    assert model.calls[-1]["t"].shape == (2, 1, 3, 1, 1)  # the low call gets a map too
    frames = [guide(MapModel(3), x[:, :, f], float(t_map[0, 0, f, 0, 0])) for f in range(3)]
    torch.testing.assert_close(together, torch.stack(frames, dim=2), rtol=0, atol=1e-12)


def test_time_map_errors_and_mixed_times():
    model = MapModel(3)
    x = torch.randn(1, 3, 4, 8, 8, dtype=F64)
    with pytest.raises(ValueError, match=r"t of shape \(1, 1, 4, 8\) is not a time map of x "
                                         r"\(1, 3, 4, 8, 8\)"):  # fmt: skip
        UpsampleGuidance(SD, (1, 2, 2))(model, x, torch.zeros(1, 1, 4, 8))
    with pytest.raises(ValueError, match=r"t of shape \(1, 1, 3, 1, 1\) is not a time map"):
        UpsampleGuidance(SD, (1, 2, 2))(model, x, torch.zeros(1, 1, 3, 1, 1))
    t_map = torch.tensor([0.0, 700.0, 700.0, 700.0], dtype=F64).reshape(1, 1, 4, 1, 1)
    with pytest.raises(ValueError, match=r"different times inside one block of the factors "
                                         r"\(2, 2, 2\) \(axis 2, low element \(0, 0, 0, 0, 0\): "
                                         r"from 0\.0 to 700\.0\); pass mixed_times="):  # fmt: skip
        UpsampleGuidance(SD, (2, 2, 2))(model, x, t_map)
    assert len(model.calls) == 0  # before any model call
    noisiest = UpsampleGuidance(SD, (2, 2, 2), mixed_times="max")
    noisiest(model, x, t_map)
    low_t = model.calls[-1]["t"]
    assert low_t.shape == (1, 1, 2, 1, 1) and low_t[0, 0, 0, 0, 0] == low_t[0, 0, 1, 0, 0]
    with pytest.raises(ValueError, match=r"mixed_times must be one of"):
        UpsampleGuidance(SD, mixed_times="median")


# ---------------------------------------------------------------- fractional factors
@pytest.mark.parametrize(
    "shape, factors",
    [
        ((2, 3, 12, 12), ("3/2", "3/2")),
        ((2, 3, 8, 15), ("4/3", "5/4")),
        ((1, 2, 4, 6, 6), (2, 1, 1.5)),
    ],
)
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_fractional_factors_equal_the_hand_written_whitened_eq10(shape, factors, prediction):
    """p + w·U[r·W⁻¹[p(c·W[D[x]], τ)] − D[p] + q·D[x]] with operators built by hand (maths §13)."""
    import fractional_reference as ref

    fr = [Fraction(str(f)) for f in factors]
    model = Model(shape[1])
    x = torch.randn(shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    t = 640.0
    guide = UpsampleGuidance(SD, factors, 1.3, prediction, "exact", ratio_noise="whiten")
    got = guide.wrap(model)(x, t)
    k = float(math.prod(fr))
    a_bar = float(SD.alpha_bar(torch.tensor(t, dtype=F64)))
    a, s = math.sqrt(a_bar), math.sqrt(1 - a_bar)
    c = 1 / math.sqrt(a_bar + (1 - a_bar) / k)
    tau = hand_tau(t, k, "exact")
    low_in = c * ref.W(ref.D(x, fr), fr)
    p, p_low = model(x, t), ref.W_inv(model(low_in, tau), fr)
    a, s, c = (torch.tensor(v, dtype=F64) for v in (a, s, c))
    r, q = guidance_coefficients(prediction, a, s, c, k)
    expected = p + 1.3 * ref.U(float(r) * p_low - ref.D(p, fr) + float(q) * ref.D(x, fr), fr)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    "shape, factors",
    [
        ((2, 3, 12, 12), ("3/2", "3/2")),
        ((2, 3, 8, 15), ("4/3", "5/4")),
        ((1, 2, 4, 6, 6), (2, 1, 1.5)),
    ],
)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_fractional_factors_equal_the_hand_written_top_up(shape, factors, prediction):
    """The default ratio form: ``p + w·U[r·p(c·(D[x] + s·ζ), τ) − D[p] + q·D[x] + z·ζ]`` with
    ``z = −r·c·A(c·a, c·s/√k)·s`` written out per prediction (maths §13)."""
    import fractional_reference as ref

    fr = [Fraction(str(f)) for f in factors]
    model = Model(shape[1])
    x = torch.randn(shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    t = 640.0
    guide = UpsampleGuidance(SD, factors, 1.3, prediction, "exact")
    got = guide.wrap(model)(x, t)
    zeta = guide.top_up._state[2]
    assert zeta.shape == ref.D(x, fr).shape and zeta.abs().max() > 0.1
    k = float(math.prod(fr))
    a_bar = float(SD.alpha_bar(torch.tensor(t, dtype=F64)))
    a, s = math.sqrt(a_bar), math.sqrt(1 - a_bar)
    c = 1 / math.sqrt(a_bar + (1 - a_bar) / k)
    p, p_low = model(x, t), model(c * (ref.D(x, fr) + s * zeta), hand_tau(t, k, "exact"))
    coeffs = (torch.tensor(v, dtype=F64) for v in (a, s, c))
    r, q = (float(v) for v in guidance_coefficients(prediction, *coeffs, k))
    a_low = {  # ∂p/∂x at the low input, whose coefficients are (c·a, c·s/√k)
        "epsilon": math.sqrt(k) / (c * s),
        "sample": 0.0,
        "flow": math.sqrt(k) / (c * s),
        "v_prediction": math.sqrt(k) * a / s,
    }[prediction]
    z = -r * c * a_low * s
    expected = p + 1.3 * ref.U(r * p_low - ref.D(p, fr) + q * ref.D(x, fr) + z * zeta, fr)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(
    prediction=st.sampled_from(PREDICTIONS),
    flow=st.booleans(),
    frac=st.floats(0.05, 0.95),
    factors=st.sampled_from([("3/2", "3/2"), ("4/3", "5/4"), (2, "3/2")]),
)
def test_the_top_up_term_takes_the_top_up_noise_back_out(prediction, flow, frac, factors):
    """A low model whose x0 estimate does not depend on its input's noise gives the same guided
    prediction for any ζ: z·ζ cancels exactly what ζ puts into r·p_low (every prediction)."""
    schedule = FlowSchedule() if flow else SD
    t = frac if flow else float(round(999 * frac))
    guide = UpsampleGuidance(schedule, factors, 1.0, prediction, "exact")
    x = torch.randn(2, 1, 12, 60, generator=torch.Generator().manual_seed(1), dtype=F64)
    prepared = guide.prepare(x, t)
    coeffs = guide._coefficients_for(t, None, x)
    x0_low = torch.randn(prepared.x_down.shape, dtype=F64)
    pred = torch.randn_like(x)
    a, s = (float(v) for v in schedule.coefficients(torch.tensor(t, dtype=F64)))
    low_a, low_s = coeffs.c * a, coeffs.c * s / math.sqrt(float(guide.k))
    results = []
    for seed in (0, 1):
        gen = torch.Generator().manual_seed(seed)
        zeta = torch.randn(prepared.x_down.shape, generator=gen, dtype=F64)
        x_low = coeffs.c * (prepared.x_down + coeffs.noise * zeta)
        p_low = x0_to_prediction(x0_low, x_low, low_a, low_s, prediction)
        top_up = prepared._replace(x_low=x_low, top_up=coeffs.z * zeta)
        results.append(guide.finish(top_up, pred, p_low))
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=1e-9)


def test_top_up_noise_is_one_per_sample_per_trajectory():
    """ζ is drawn at a trajectory's first call and kept while the noise level falls; a rise (a
    new run) draws again from the new first input, so a rerun from the same noise gets the same
    ζ, rows with equal inputs share one, and other noise gets another."""
    guide = UpsampleGuidance(FlowSchedule(time_scale=1000.0), "3/2", 1.0, "flow")
    model = Model(1)
    x = torch.randn(3, 1, 12, 12, generator=torch.Generator().manual_seed(0), dtype=F64)
    x[1] = x[0]  # the two halves of classifier-free guidance
    zetas = []
    for t in (900.0, 900.0, 500.0, 100.0):
        xt = x * (1 + t / 1e4)
        guide.apply(model(xt, t), model, xt, t)
        zetas.append(guide.top_up._state[2])
    assert all(z is zetas[0] for z in zetas)
    assert torch.equal(zetas[0][0], zetas[0][1]) and not torch.equal(zetas[0][0], zetas[0][2])
    xt = x * 1.09
    guide.apply(model(xt, 900.0), model, xt, 900.0)  # a rerun from the same noise
    assert guide.top_up._state[2] is not zetas[0]
    assert torch.equal(guide.top_up._state[2], zetas[0])
    guide.apply(model(-x, 900.0), model, -x, 900.0)  # the same level, no rise: kept
    assert torch.equal(guide.top_up._state[2], zetas[0])
    guide.top_up.reset()
    guide.apply(model(-x, 900.0), model, -x, 900.0)  # reset: drawn from this input
    assert not torch.equal(guide.top_up._state[2], zetas[0])


@pytest.mark.parametrize("ratio_noise", ["whiten", "plain"])
def test_integer_factors_ignore_ratio_noise_bit_for_bit(ratio_noise):
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=F64)
    model = Model(3)
    default = UpsampleGuidance(SD, 2, 1.0).wrap(model)(x, 500)
    other = UpsampleGuidance(SD, 2, 1.0, ratio_noise=ratio_noise).wrap(model)(x, 500)
    assert torch.equal(other, default)
    assert UpsampleGuidance(SD, 2, 1.0).prepare(x, 500).top_up is None


def test_ratio_noise_is_checked():
    allowed = r"ratio_noise must be one of \('top-up', 'whiten', 'plain'\), got 'white'"
    with pytest.raises(ValueError, match=allowed):
        UpsampleGuidance(SD, "3/2", 1.0, ratio_noise="white")
