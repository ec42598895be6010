"""Raw DDPM/DDIM loops: determinism, generators, guidance plumbing, progress bar, errors."""

import pytest
import torch
from benchmark_modules import load_benchmark
from ug_core.adapters.loops import loop_timesteps, sample_ddim, sample_ddpm

from ug_core import DiscreteSchedule, UpsampleGuidance

_testbed = load_benchmark("testbed")  # benchmarks/testbed.py
GaussianTestbed, log_spectral_distance = _testbed.GaussianTestbed, _testbed.log_spectral_distance

SCHED = DiscreteSchedule.linear()


def eps_model(x, t, shift=0.0):
    return 0.3 * torch.tanh(x + torch.roll(x, 1, dims=-1)) + shift


def test_timesteps_are_trailing_and_descending():
    ts = loop_timesteps(SCHED, 5)
    assert ts.tolist() == [999, 749, 500, 250, 0]
    assert loop_timesteps(SCHED, 1).tolist() == [999]
    with pytest.raises(ValueError, match=r"steps must be an integer >= 1, got 0"):
        loop_timesteps(SCHED, 0)
    with pytest.raises(ValueError, match=r"steps=1001 exceeds the schedule's 1000 timesteps"):
        loop_timesteps(SCHED, 1001)


@pytest.mark.parametrize("sampler", [sample_ddim, sample_ddpm])
def test_generator_makes_runs_reproducible(sampler):
    runs = [
        sampler(
            eps_model,
            SCHED,
            6,
            torch.Generator().manual_seed(7),
            shape=(2, 1, 8, 8),
            progress=False,
        )  # fmt: skip
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])
    other = sampler(eps_model, SCHED, 6, torch.Generator().manual_seed(8), shape=(2, 1, 8, 8),
                    progress=False)  # fmt: skip
    assert not torch.equal(runs[0], other)


def test_ddim_is_deterministic_given_the_noise_and_ddpm_is_not():
    noise = torch.randn(2, 1, 8, 8)
    a = sample_ddim(eps_model, SCHED, 5, torch.Generator().manual_seed(0), noise=noise,
                    progress=False)  # fmt: skip
    b = sample_ddim(eps_model, SCHED, 5, torch.Generator().manual_seed(1), noise=noise,
                    progress=False)  # fmt: skip
    assert torch.equal(a, b)
    c = sample_ddpm(eps_model, SCHED, 5, torch.Generator().manual_seed(0), noise=noise,
                    progress=False)  # fmt: skip
    d = sample_ddpm(eps_model, SCHED, 5, torch.Generator().manual_seed(1), noise=noise,
                    progress=False)  # fmt: skip
    assert not torch.equal(c, d)


@pytest.mark.parametrize("sampler", [sample_ddim, sample_ddpm])
def test_guidance_with_zero_scale_is_the_plain_loop(sampler):
    kw = dict(shape=(2, 1, 8, 8), progress=False)
    plain = sampler(eps_model, SCHED, 6, torch.Generator().manual_seed(3), **kw)
    zero = sampler(eps_model, SCHED, 6, torch.Generator().manual_seed(3),
                   UpsampleGuidance(SCHED, (2, 2), scale=0.0), **kw)  # fmt: skip
    on = sampler(eps_model, SCHED, 6, torch.Generator().manual_seed(3),
                 UpsampleGuidance(SCHED, (2, 2), scale=1.0), **kw)  # fmt: skip
    assert torch.equal(plain, zero) and not torch.equal(plain, on)


def test_guided_loop_calls_the_low_resolution_model_once_per_step():
    shapes = []

    def model(x, t, shift):
        shapes.append((tuple(x.shape), t.shape))
        return eps_model(x, t, shift)

    sample_ddim(model, SCHED, 4, None, UpsampleGuidance(SCHED, (2, 2)), shape=(3, 1, 8, 8),
                extra_args={"shift": 0.1}, progress=False)  # fmt: skip
    assert shapes == [((3, 1, 8, 8), (3,)), ((3, 1, 4, 4), (3,))] * 4


def test_progress_bar_can_be_turned_off(capsys):
    sample_ddim(eps_model, SCHED, 3, None, shape=(1, 1, 4, 4), progress=True)
    assert "DDIM" in capsys.readouterr().err
    sample_ddim(eps_model, SCHED, 3, None, shape=(1, 1, 4, 4), progress=False)
    assert capsys.readouterr().err == ""


def test_the_loops_sample_the_exact_gaussian_correctly():
    """With the exact denoiser at the trained size, DDIM and DDPM reproduce the data spectrum."""
    bed = GaussianTestbed((16, 16), (2, 2))
    for sampler, steps in [(sample_ddim, 100), (sample_ddpm, 200)]:
        x = sampler(bed.eps_model, bed.schedule, steps, torch.Generator().manual_seed(0),
                    shape=(256, 1, 16, 16), dtype=torch.float64, progress=False)  # fmt: skip
        assert log_spectral_distance(x, bed.lam_low) < 0.15, sampler.__name__


@pytest.mark.parametrize("prediction", ["sample", "v_prediction"])
def test_other_predictions_are_converted(prediction):
    """An x0- or v-model built from the same ε-model gives the same DDIM sample."""
    from ug_core import prediction_to_x0, x0_to_prediction

    def as_pred(x, t):
        a, s = SCHED.coefficients(t[:1])
        x0 = prediction_to_x0(eps_model(x, t), x, a.item(), s.item(), "epsilon")
        return x0_to_prediction(x0, x, a.item(), s.item(), prediction)

    noise = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    ref = sample_ddim(eps_model, SCHED, 5, noise=noise, progress=False, dtype=torch.float64)
    got = sample_ddim(as_pred, SCHED, 5, noise=noise, prediction=prediction, progress=False)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-9)


def test_loop_errors():
    with pytest.raises(ValueError, match=r"exactly one of shape= .* or noise="):
        sample_ddim(eps_model, SCHED, 3, progress=False)
    with pytest.raises(TypeError, match=r"schedule must be a DiscreteSchedule, got list"):
        sample_ddim(eps_model, [0.9, 0.5], 3, shape=(1, 1, 4, 4), progress=False)
    with pytest.raises(
        ValueError, match=r"prediction='sample' differs from the guidance's 'epsilon'"
    ):
        sample_ddim(eps_model, SCHED, 3, None, UpsampleGuidance(SCHED), shape=(1, 1, 4, 4),
                    prediction="sample", progress=False)  # fmt: skip
    with pytest.raises(TypeError, match=r"guidance must be an UpsampleGuidance, got float"):
        sample_ddim(eps_model, SCHED, 3, None, 1.0, shape=(1, 1, 4, 4), progress=False)
    with pytest.raises(ValueError, match=r"prediction must be one of"):
        sample_ddim(eps_model, SCHED, 3, shape=(1, 1, 4, 4), prediction="score", progress=False)


def test_ddim_eta_is_the_ddim_stochasticity():
    """ddim_eta=1 is the DDPM loop on the same steps; ddim_eta=0 the deterministic default."""
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    kw = dict(noise=noise, progress=False)
    ddpm = sample_ddpm(eps_model, SCHED, 5, torch.Generator().manual_seed(0), **kw)
    ddim1 = sample_ddim(eps_model, SCHED, 5, torch.Generator().manual_seed(0), ddim_eta=1.0, **kw)
    assert torch.equal(ddim1, ddpm)
    ddim0 = sample_ddim(eps_model, SCHED, 5, torch.Generator().manual_seed(0), ddim_eta=0.0, **kw)
    assert torch.equal(ddim0, sample_ddim(eps_model, SCHED, 5, **kw))
    assert not torch.equal(ddim0, ddim1)
    with pytest.raises(TypeError, match="eta"):  # `eta` is the guidance gate, not a loop argument
        sample_ddim(eps_model, SCHED, 5, eta=0.5, **kw)
