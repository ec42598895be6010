"""The core's two time paths: host (t read for free, or given as host_time) and device (no read).

On a GPU, reading the time tensor on the host is a device-to-host synchronisation. The device
path is forced here on the CPU by declaring CPU tensors not host-readable, and every read of the
time (and of anything computed from it) is recorded by :class:`time_reads.TimeTensor`.
"""

from __future__ import annotations

import pytest
import torch
from test_kernel import SCHEDULES, Model
from time_reads import TimeTensor, reads

import ug_core.guidance as guidance_module
from ug_core import PREDICTIONS, DiscreteSchedule, UpsampleGuidance, step_scale

F64 = torch.float64
SD = DiscreteSchedule.scaled_linear()


@pytest.fixture
def device_path(monkeypatch):
    """Make every tensor time take the device path, as a time on an accelerator does."""
    monkeypatch.setattr(
        guidance_module, "_host_readable", lambda t: not isinstance(t, torch.Tensor)
    )
    reads()
    yield
    reads()


def counting(model):
    calls = []

    def fn(x, t, *args, **kwargs):
        calls.append(tuple(x.shape))
        return model(x, t, *args, **kwargs)

    return fn, calls


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("mode", ["nearest", "exact", "off"])
def test_device_path_equals_host_path_and_reads_nothing(name, prediction, mode, monkeypatch):
    schedule, times = SCHEDULES[name]
    x = torch.randn(len(times), 3, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(times, dtype=F64)
    guide = UpsampleGuidance(schedule, (2, 2), 1.3, prediction, mode)
    host = guide.wrap(Model())(x, t)
    monkeypatch.setattr(guidance_module, "_host_readable", lambda t: False)
    reads()
    device = guide.wrap(Model())(x, TimeTensor.wrap(t))
    assert reads() == []
    torch.testing.assert_close(device.as_subclass(torch.Tensor), host, rtol=0, atol=1e-12)


def test_device_path_keeps_plain_elements_bit_for_bit_and_always_calls(device_path):
    """Outside the η window the device path still makes the low call, and selects the plain
    prediction exactly for those elements; nothing is read back."""
    x = torch.randn(3, 3, 8, 8)
    t = torch.tensor([900, 100, 700])
    guide = UpsampleGuidance(SD, (2, 2), scale=1.0, eta=0.6, time_matching="exact")
    fn, calls = counting(Model())
    out = guide.wrap(fn)(x, TimeTensor.wrap(t))
    assert reads() == []
    plain = Model()(x, t)
    assert calls == [(3, 3, 8, 8), (3, 3, 4, 4)]
    assert torch.equal(out[1], plain[1])
    assert not torch.equal(out[0], plain[0]) and not torch.equal(out[2], plain[2])
    host_guided = guide.wrap(Model())(x, t)
    torch.testing.assert_close(out.as_subclass(torch.Tensor), host_guided, rtol=0, atol=1e-6)


@pytest.mark.parametrize("scale, eta", [(0.0, 1.0), (1.0, 0.0), (step_scale(2.0, 0.0), 1.0)])
def test_never_on_makes_no_low_call_and_reads_nothing(device_path, scale, eta):
    x = torch.randn(2, 3, 8, 8)
    guide = UpsampleGuidance(SD, (2, 2), scale=scale, eta=eta)
    assert guide.never_on
    fn, calls = counting(Model())
    t = TimeTensor.wrap(torch.tensor([900, 10]))
    out = guide.wrap(fn)(x, t)
    assert reads() == [] and calls == [(2, 3, 8, 8)]
    assert torch.equal(out, Model()(x, torch.tensor([900, 10])))


def test_host_time_is_used_and_t_is_never_read():
    """An adapter that knows the time on the host passes it; the device tensor is not touched."""
    x = torch.randn(2, 3, 8, 8, dtype=F64)
    t = torch.tensor([640, 640])
    guide = UpsampleGuidance(SD, (2, 2), scale=1.2, eta=0.6, time_matching="exact")
    expected = guide.wrap(Model())(x, t)
    reads()
    fn, calls = counting(Model())
    tt = TimeTensor.wrap(t)
    got = guide.apply(fn(x, tt), fn, x, tt, host_time=640.0)
    assert reads() == []
    torch.testing.assert_close(got.as_subclass(torch.Tensor), expected, rtol=0, atol=1e-12)
    # Outside the window the host time skips the low call: no call, and the prediction itself.
    fn, calls = counting(Model())
    low = TimeTensor.wrap(torch.tensor([100, 100]))
    pred = fn(x, low)
    assert guide.apply(pred, fn, x, low, host_time=100) is pred and len(calls) == 1
    assert reads() == []


def test_host_time_is_checked_like_t():
    guide = UpsampleGuidance(SD, (2, 2))
    x = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"t=1000\.0 is outside the schedule's timesteps"):
        guide.apply(x, Model(), x, torch.tensor(5), host_time=1000)
    with pytest.raises(TypeError, match=r"host_time must be a number, a sequence or a tensor"):
        guide.apply(x, Model(), x, torch.tensor(5), host_time=object())


def test_device_path_low_call_time_kinds(device_path):
    x = torch.randn(2, 3, 8, 8, dtype=F64)
    near = UpsampleGuidance(SD, (2, 2), time_matching="nearest")
    exact = UpsampleGuidance(SD, (2, 2), time_matching="exact")
    model = Model()
    near.wrap(model)(x, TimeTensor.wrap(torch.tensor([500, 600])))
    low_t = model.calls[-1]["t"]
    assert low_t.dtype == torch.int64 and low_t.shape == (2,)
    exact.wrap(model)(x, TimeTensor.wrap(torch.tensor(500)))
    low_t = model.calls[-1]["t"]
    assert low_t.dtype == torch.float32 and low_t.shape == ()
    assert reads() == []


def test_step_scale_is_the_same_gate_as_eta():
    x = torch.randn(2, 3, 8, 8, dtype=F64)
    t = torch.tensor([900, 300])
    packed = UpsampleGuidance(SD, (2, 2), scale=step_scale(1.3, eta=0.6))
    plain = UpsampleGuidance(SD, (2, 2), scale=1.3, eta=0.6)
    assert (packed.scale, packed.eta) == (plain.scale, plain.eta) == (1.3, 0.6)
    assert torch.equal(packed.wrap(Model())(x, t), plain.wrap(Model())(x, t))
    assert UpsampleGuidance(SD, scale=step_scale(1.0, 1.0), eta=0.3).eta == 0.3
    with pytest.raises(ValueError, match=r"eta is given twice: eta=0\.5 and scale=step_scale"):
        UpsampleGuidance(SD, scale=step_scale(1.0, 0.6), eta=0.5)
    with pytest.raises(TypeError, match=r"step_scale's theta must be a real number"):
        step_scale(lambda f: f)


def test_callable_scale_on_the_device_path_reads_the_time(device_path):
    """Documented: a general callable scale needs host floats, so its fractions are read."""
    x = torch.randn(2, 3, 8, 8)
    guide = UpsampleGuidance(SD, (2, 2), scale=lambda f: 2 * f)
    guide.wrap(Model())(x, TimeTensor.wrap(torch.tensor([900, 300])))
    assert reads() != []


def test_constant_weight_on_the_device_needs_neither_a_read_nor_a_choice(device_path):
    """With a constant scale and eta = 1, w is the same at every time: the device path is exact."""
    x = torch.randn(2, 3, 8, 8, dtype=F64)
    t = torch.tensor([900, 150])
    guide = UpsampleGuidance(SD, (2, 2), scale=1.3, time_matching="exact")
    assert guide.constant_weight
    out = guide.wrap(Model())(x, TimeTensor.wrap(t))
    assert reads() == []
    torch.testing.assert_close(
        out.as_subclass(torch.Tensor), guide.wrap(Model())(x, t), rtol=0, atol=1e-12
    )


def test_device_time_read_copies_the_time_and_skips_the_call(device_path):
    """device_time="read": one read of t per call, and no low call where w = 0."""
    x = torch.randn(2, 3, 8, 8)
    guide = UpsampleGuidance(SD, (2, 2), scale=1.0, eta=0.6, device_time="read")
    fn, calls = counting(Model())
    out = guide.wrap(fn)(x, TimeTensor.wrap(torch.tensor([100, 100])))
    assert reads() != [] and calls == [(2, 3, 8, 8)]
    assert torch.equal(out.as_subclass(torch.Tensor), Model()(x, torch.tensor([100, 100])))
    with pytest.raises(ValueError, match=r"device_time must be one of \('compute', 'read'\)"):
        UpsampleGuidance(SD, device_time="sync")


def test_the_raw_loops_give_the_core_their_host_times(monkeypatch):
    """The loops know their timesteps on the host: every guided call gets them (no read)."""
    from ug_core.adapters.loops import sample_ddim

    monkeypatch.setattr(guidance_module, "_host_readable", lambda t: False)  # as on a GPU
    seen = []
    prepare = UpsampleGuidance.prepare

    def spy(self, x, t, *, host_time=None):
        seen.append(host_time)
        return prepare(self, x, t, host_time=host_time)

    monkeypatch.setattr(UpsampleGuidance, "prepare", spy)
    guide = UpsampleGuidance(SD, (2, 2), scale=1.0, eta=0.6)
    fn, calls = counting(Model(dtype=torch.float32))
    sample_ddim(fn, SD, 5, torch.Generator().manual_seed(0), guide, shape=(1, 3, 8, 8),
                progress=False)  # fmt: skip
    assert len(seen) == 5 and all(isinstance(h, int) for h in seen)
    assert len(calls) == 5 + 3  # the timesteps 999, 749, 500 are in the window, 250 and 0 not
