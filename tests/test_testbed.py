"""The exact Gaussian testbed: its maths, and what it shows about UG (paper §5.3 as numbers)."""

import pytest
import torch
from benchmark_modules import load_benchmark
from ug_core.adapters.loops import sample_ddim

from ug_core import UpsampleGuidance, downsample

_testbed = load_benchmark("testbed")  # benchmarks/testbed.py
GaussianTestbed, ddim, run = _testbed.GaussianTestbed, _testbed.ddim, _testbed.run
log_spectral_distance = _testbed.log_spectral_distance

F64 = torch.float64


def test_block_mean_spectrum_matches_monte_carlo():
    bed = GaussianTestbed((8, 8), (2, 3))
    x = bed.sample_data(4000, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4000, 1, 16, 24)
    assert log_spectral_distance(downsample(x, (2, 3)), bed.lam_low) < 0.05
    assert log_spectral_distance(x, bed.lam_high) < 0.05
    torch.testing.assert_close(bed.lam_low.mean(), torch.tensor(1.0, dtype=F64))  # unit variance


@pytest.mark.parametrize("t", [10, 300, 900])
def test_eps_model_is_the_exact_posterior_mean_at_the_trained_size(t):
    """ε̂(x_t) = E[ε | x_t] = s·(a²C + s²I)⁻¹·x_t, with C built as a dense matrix."""
    bed = GaussianTestbed((6, 6), (2, 2))
    n = 36
    basis = torch.eye(n, dtype=F64).reshape(n, 6, 6)
    cov = torch.fft.ifft2(bed.lam_low * torch.fft.fft2(basis)).real.reshape(n, n)
    a, s = (v.item() for v in bed.schedule.coefficients(torch.tensor(float(t))))
    x_t = torch.randn(3, 1, 6, 6, dtype=F64)
    expected = s * torch.linalg.solve(a * a * cov + s * s * torch.eye(n, dtype=F64),
                                      x_t.reshape(3, n).T).T  # fmt: skip
    got = bed.eps_model(x_t, t).reshape(3, n)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


def test_eps_model_at_a_larger_size_is_the_trained_kernel():
    """A delta at the large size returns the trained-size kernel, embedded and centred."""
    bed = GaussianTestbed((8,), (2,))
    small = bed.eps_model(torch.eye(8, dtype=F64)[None, None, 0], 500)[0, 0]
    big = bed.eps_model(torch.eye(16, dtype=F64)[None, None, 0], 500)[0, 0]
    torch.testing.assert_close(big[:4], small[:4], rtol=0, atol=1e-12)
    torch.testing.assert_close(big[-4:], small[-4:], rtol=0, atol=1e-12)
    torch.testing.assert_close(big[4:12], torch.zeros(8, dtype=F64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("steps", [1, 7, 50])
@pytest.mark.parametrize("scale", [None, 1.0])
def test_testbed_ddim_is_the_loops_ddim_bit_for_bit(steps, scale):
    """The testbed's DDIM, with the guidance wrapping its model, is the raw loop's given it."""
    bed = GaussianTestbed((8, 8), (2, 2))
    guide = None if scale is None else UpsampleGuidance(bed.schedule, (2, 2), scale)
    noise = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(2), dtype=F64)
    model = bed.eps_model if guide is None else guide.wrap(bed.eps_model)
    ours = ddim(model, bed.schedule, steps, noise)
    loops = sample_ddim(bed.eps_model, bed.schedule, steps, None, guide, noise=noise,
                        progress=False)  # fmt: skip
    assert torch.equal(ours, loops)


def test_testbed_ddim_rejects_bad_steps():
    bed = GaussianTestbed((8,), (2,))
    for bad in (0, 1001, 2.0, True):  # the loop's own checks
        with pytest.raises(ValueError, match=r"steps must be an integer >= 1|steps=1001 exceeds"):
            ddim(bed.eps_model, bed.schedule, bad, torch.zeros(1, 1, 8, dtype=F64))


CASES = {
    "2-D x2": ((16, 16), (2, 2)),
    "2-D x3": ((16, 16), (3, 3)),
    "temporal 1-D x2": ((64,), (2,)),
}


@pytest.fixture(scope="module", params=list(CASES))
def results(request):
    shape, factors = CASES[request.param]
    return run(shape, factors, n=256, steps=100, seed=0)


def test_naive_sampling_gets_the_coarse_statistics_wrong(results):
    trained = results["trained resolution"][0]
    assert results["naive high-res"][0] > 3 * trained


def test_ug_restores_trained_resolution_quality(results):
    trained = results["trained resolution"][0]
    assert results["UG"][0] < 1.25 * trained


def test_removing_time_matching_degrades_it(results):
    assert results["UG, no time matching"][0] > 2 * results["UG"][0]


def test_removing_power_scaling_degrades_it_badly(results):
    assert results["UG, no power scaling"][0] > 10 * results["UG"][0]
    assert results["UG, neither"][0] > 10 * results["UG"][0]
