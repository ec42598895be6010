"""The exact Gaussian testbed: its maths in both forms, ratios and time maps, and UG on it."""

import math
from fractions import Fraction

import pytest
import torch
from benchmark_modules import load_benchmark
from ug_core.adapters.loops import sample_ddim

from ug_core import UpsampleGuidance, downsample, whiten
from ug_core.operators import top_up_noise

_testbed = load_benchmark("testbed")  # benchmarks/testbed.py
GaussianTestbed, run = _testbed.GaussianTestbed, _testbed.run
log_spectral_distance, power_spectrum = _testbed.log_spectral_distance, _testbed.power_spectrum
downsampled_spectrum, matern_spectrum = _testbed.downsampled_spectrum, _testbed.matern_spectrum

F64 = torch.float64
FORMS = ("epsilon", "flow")


def block_mean_spectrum(lam_high: torch.Tensor, factors) -> torch.Tensor:
    """Integer factors, by aliasing: the box filter's |H|², the covariance subsampled (by hand)."""
    dims = tuple(range(lam_high.ndim))
    box = torch.ones((), dtype=torch.complex128)
    for axis, f in enumerate(factors):
        n = lam_high.shape[axis]
        freq = torch.fft.fftfreq(n, d=1.0 / n, dtype=F64)
        freq = freq.reshape([n if j == axis else 1 for j in range(lam_high.ndim)])
        j = torch.arange(f, dtype=F64).reshape([-1] + [1] * lam_high.ndim)
        box = box * torch.exp(-2j * math.pi * freq.unsqueeze(0) * j / n).mean(dim=0)
    cov = torch.fft.ifftn(lam_high * box.abs() ** 2, dim=dims).real
    return torch.fft.fftn(cov[tuple(slice(None, None, f) for f in factors)], dim=dims).real


@pytest.mark.parametrize(("shape", "factors"), [((24, 36), (2, 3)), ((48,), (3,))])
def test_downsampled_spectrum_is_the_block_mean_spectrum_for_integer_factors(shape, factors):
    lam = matern_spectrum(shape, 0.12, 1.5)
    torch.testing.assert_close(
        downsampled_spectrum(lam, factors), block_mean_spectrum(lam, factors), rtol=0, atol=1e-12
    )


def test_fractional_spectrum_matches_monte_carlo():
    """λ_low is D[x]'s expected power spectrum; the spectrum at the low grid's own frequencies,
    with no aliasing or area-mean weighting, is measurably not."""
    bed = GaussianTestbed((8, 9), ("3/2", "4/3"))
    assert bed.high_shape == (12, 12)
    x = bed.sample_data(4000, generator=torch.Generator().manual_seed(0))
    coarse = downsample(x, bed.factors)
    assert log_spectral_distance(coarse, bed.lam_low) < 0.03  # Monte-Carlo floor: about 0.015
    naive = matern_spectrum((8, 9), 0.12, 1.5)
    naive = naive * bed.lam_low.mean() / naive.mean()
    assert log_spectral_distance(coarse, naive) > 0.1
    torch.testing.assert_close(bed.lam_low.mean(), torch.tensor(1.0, dtype=F64))  # unit variance


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("fraction", [0.01, 0.3, 0.9])
def test_model_is_the_exact_posterior_mean_at_the_trained_size(form, fraction):
    """ε̂ = E[ε | x_t] = s·(a²C + s²I)⁻¹·x_t; v̂ = E[ε − x0 | x_t] = (sI − aC)(a²C + s²I)⁻¹·x_t."""
    bed = GaussianTestbed((6, 6), (2, 2), form=form)
    n = 36
    basis = torch.eye(n, dtype=F64).reshape(n, 6, 6)
    cov = torch.fft.ifft2(bed.lam_low * torch.fft.fft2(basis)).real.reshape(n, n)
    t = round(fraction * 999) if form == "epsilon" else fraction * 1000.0
    a, s = (v.item() for v in bed.schedule.coefficients(torch.tensor(float(t))))
    eye = torch.eye(n, dtype=F64)
    gain = s * eye if form == "epsilon" else s * eye - a * cov
    x_t = torch.randn(3, 1, 6, 6, dtype=F64)
    expected = (gain @ torch.linalg.solve(a * a * cov + s * s * eye, x_t.reshape(3, n).T)).T
    got = bed.model(x_t, t).reshape(3, n)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("form", FORMS)
def test_model_at_a_larger_size_is_the_trained_kernel(form):
    """A delta at the large size returns the trained-size kernel, embedded and centred."""
    bed = GaussianTestbed((8,), (2,), form=form)
    small = bed.model(torch.eye(8, dtype=F64)[None, None, 0], 500)[0, 0]
    big = bed.model(torch.eye(16, dtype=F64)[None, None, 0], 500)[0, 0]
    torch.testing.assert_close(big[:4], small[:4], rtol=0, atol=1e-12)
    torch.testing.assert_close(big[-4:], small[-4:], rtol=0, atol=1e-12)
    torch.testing.assert_close(big[4:12], torch.zeros(8, dtype=F64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("form", FORMS)
def test_the_exact_sampler_reproduces_the_data_spectrum(form):
    bed = GaussianTestbed((8, 8), (2, 2), form=form)
    noise = torch.randn(512, 1, 16, 16, generator=torch.Generator().manual_seed(0), dtype=F64)
    x = bed.sample(bed.exact_model, noise, 100)
    data = bed.sample_data(512, generator=torch.Generator().manual_seed(1))
    floor = log_spectral_distance(data, bed.lam_high)  # Monte-Carlo floor at n = 512: ~0.035
    assert log_spectral_distance(x, bed.lam_high) < floor + 0.03
    naive = bed.sample(bed.model, noise, 100)  # the trained kernel: far off at this size
    assert log_spectral_distance(naive, bed.lam_high) > floor + 0.1


@pytest.mark.parametrize("steps", [1, 7])
def test_epsilon_form_samples_with_the_loops_ddim_bit_for_bit(steps):
    """The testbed's DDIM, with the guidance wrapping its model, is the raw loop's given it."""
    bed = GaussianTestbed((8, 8), (2, 2))
    guide = UpsampleGuidance(bed.schedule, (2, 2), 1.0)
    noise = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(2), dtype=F64)
    loops = sample_ddim(bed.model, bed.schedule, steps, None, guide, noise=noise, progress=False)
    assert torch.equal(bed.sample(guide.wrap(bed.model), noise, steps), loops)


def trained_euler_on_matched_times(bed, z, steps):
    """Flow Euler at the trained size on the times τ = t/(t + √k(1 − t)) of a uniform t grid."""
    rk = math.sqrt(float(bed.k))
    grid = [i / steps for i in range(steps, -1, -1)]
    taus = [t / (t + rk * (1 - t)) for t in grid]
    for tau, tau_next in zip(taus[:-1], taus[1:], strict=True):
        z = z + (tau_next - tau) * bed.model(z, 1000.0 * tau)
    return z


@pytest.mark.parametrize(
    ("factors", "ratio_noise"),
    [((2, 2), "top-up"), (("3/2", "3/2"), "whiten"), (("4/3", "3/2"), "top-up")],
)
def test_ugs_coarse_part_is_the_trained_size_sampler(factors, ratio_noise):
    """With w = 1 the coarse part evolves on its own: flow Euler at the trained size on the
    matched times, from √k times the coarse noise. Whitening makes that hold for W·D[x] (so D[x]
    is W⁻¹ of a trained-size sample); the core's top-up (one ζ per sample), for D[x] itself."""
    bed = GaussianTestbed((6, 6), factors, form="flow")
    noise = torch.randn(3, 1, *bed.high_shape, generator=torch.Generator().manual_seed(0),
                        dtype=F64)  # fmt: skip
    rk = math.sqrt(float(bed.k))
    guide = bed.guidance(1.0, ratio_noise=ratio_noise)
    x = bed.sample(guide.wrap(bed.model), noise, 12)
    if ratio_noise == "whiten":
        coarse, start = (whiten(downsample(v, bed.factors), bed.factors) for v in (x, noise))
    else:
        ratio = not all(isinstance(f, int) for f in bed.factors)
        zeta = guide.top_up._state[2] if ratio else bed.top_up_noise(3)
        assert (zeta.abs().max() > 0.1) == ratio
        coarse, start = downsample(x, bed.factors), downsample(noise, bed.factors) + zeta
    expected = trained_euler_on_matched_times(bed, rk * start, 12)
    torch.testing.assert_close(coarse, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("factors", [("3/2", "3/2"), ("4/3", "4/3"), ("3/2", "4/3"), (2, 2)])
def test_top_up_noise_fills_the_coarse_noise_to_white(factors):
    """ζ ~ N(0, I/k − DDᵀ), so D[ε] + ζ is white with variance 1/k; I/k − DDᵀ is PSD."""
    bed = GaussianTestbed((12, 12), factors)
    n_high, n_low = math.prod(bed.high_shape), math.prod(bed.trained_shape)
    d = downsample(torch.eye(n_high, dtype=F64).reshape(-1, *bed.high_shape),
                   bed.factors).reshape(n_high, -1).T  # fmt: skip
    gap = torch.eye(len(d), dtype=F64) / float(bed.k) - d @ d.T
    assert torch.linalg.eigvalsh(gap).min() > -1e-12
    basis = torch.eye(n_low, dtype=F64).reshape(n_low, 1, *bed.trained_shape)
    root = top_up_noise(basis, bed.factors).reshape(n_low, n_low)  # columns of the root
    torch.testing.assert_close(root @ root.T, gap, rtol=0, atol=1e-12)
    assert bed.top_up_noise(2).shape == (2, 1, 12, 12)


@pytest.mark.parametrize("factors", [(2, 2), ("3/2", "3/2")])
def test_a_constant_time_map_gives_the_same_samples_bit_for_bit(factors):
    bed = GaussianTestbed((6, 6), factors, form="flow")
    noise = torch.randn(3, 1, *bed.high_shape, generator=torch.Generator().manual_seed(0),
                        dtype=F64)  # fmt: skip
    model = bed.guidance(1.0, eta=0.6).wrap(bed.model)
    calls = []

    def spy(x, t):
        calls.append(tuple(t.shape))
        return model(x, t)

    one = bed.sample(model, noise, 10)
    mapped = bed.sample(spy, noise, 10, time_map=True)
    assert torch.equal(one, mapped)
    assert set(calls) == {tuple(noise.shape)}  # the map reached the guidance at every step


@pytest.mark.parametrize("form", FORMS)
def test_ug_beats_naive_sampling(form):
    """A tiny case of the report (benchmarks/results/analytic_testbed.md), with its ablation."""
    r = {k: v[0] for k, v in run((8, 8), (2, 2), form, n=128, steps=30, ablations=True).items()}
    assert r["naive high-res"] > 2 * r["exact high-res sampler"]
    assert r["UG η=1"] < min(r["naive high-res"] / 2, 1.25 * r["trained-size sampler"])
    assert r["UG η=1, no time matching"] > 3 * r["UG η=1"]
    assert r["UG η=1, no power scaling"] > 3 * r["UG η=1"]


# ------------------------------------------------------------------------------ bad input
def test_testbed_rejects_a_bad_form_shape_or_ratio():
    with pytest.raises(ValueError, match=r"form must be one of \('epsilon', 'flow'\), got 'v'"):
        GaussianTestbed((8, 8), (2, 2), form="v")
    with pytest.raises(ValueError, match=r"factors \(2,\) and trained_shape \(8, 8\) must have"):
        GaussianTestbed((8, 8), (2,))
    with pytest.raises(ValueError, match=r"trained_shape \(8, 8\) does not map .* multiples of q"):
        GaussianTestbed((8, 8), ("4/3", "4/3"))
    assert GaussianTestbed((9, 8), ("4/3", Fraction(3, 2))).high_shape == (12, 12)


def test_models_reject_bad_sizes_and_varying_time_maps():
    bed = GaussianTestbed((8, 8), (2, 2), form="flow")
    with pytest.raises(ValueError, match=r"x's size \(4, 8\) is smaller than the trained size"):
        bed.model(torch.zeros(1, 1, 4, 8, dtype=F64), 500.0)
    with pytest.raises(ValueError, match=r"high-resolution size \(16, 16\), got \(8, 8\)"):
        bed.exact_model(torch.zeros(1, 1, 8, 8, dtype=F64), 500.0)
    varying = torch.full((1, 1, 8, 8), 500.0, dtype=F64)
    varying[..., 0, 0] = 400.0
    with pytest.raises(ValueError, match=r"time map of shape \(1, 1, 8, 8\) whose times differ"):
        bed.model(torch.zeros(1, 1, 8, 8, dtype=F64), varying)


def test_samplers_reject_bad_steps_and_maps_in_the_epsilon_form():
    bed = GaussianTestbed((8,), (2,), form="flow")
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match=r"steps must be an integer >= 1, got"):
            bed.sample(bed.model, torch.zeros(1, 1, 8, dtype=F64), bad)
    eps = GaussianTestbed((8,), (2,))
    with pytest.raises(ValueError, match=r"time_map=True needs form='flow'"):
        eps.sample(eps.model, torch.zeros(1, 1, 8, dtype=F64), 5, time_map=True)


def test_the_report_renders_the_testbed_tables():
    """RESULTS.md's section (benchmarks/report.py) from a result file shaped as the script's."""
    report = load_benchmark("report")
    etas = (0.6, 0.8, 1.0)
    base = {"data (exact samples)": (0.03, 0.03), "exact high-res sampler": (0.04, 0.05),
            "trained-size sampler": (0.05, math.nan), "naive high-res": (0.4, 0.4)}  # fmt: skip
    whole = base | {f"UG η={e:g}": (0.06 * e, 0.3) for e in etas}
    ratio = whole | {f"UG η={e:g}, top-up, {v}": (0.045, 0.2) for e in etas
                     for v in ("per sample", "initial noise")}  # fmt: skip
    ratio |= {"UG η=1: W·D[x] against λ_low": (0.05, math.nan), "UG η=1, mean k": (0.4, 0.3)}
    res = {
        "config": {"command": "python benchmarks/analytic_testbed.py", "n": 8, "steps": 3,
                   "seed": 0, "etas": etas, "seconds": 60.0, "machine": "cpu", "torch": "2"},
        "cases": {"×2": {"flow": whole}, "×3/2": {"epsilon": ratio}},
    }  # fmt: skip
    text = "\n".join(report.testbed_lines(res))
    base_cols = "| 0.030 | 0.040 | 0.050 | 0.400 |"
    assert f"| ×2 | flow | (all) {base_cols} 0.036 | 0.048 | 0.060 | **1.20** |" in text
    assert (
        f"| ×3/2 | VP-ε | top-up, per sample {base_cols} 0.045 | 0.045 | 0.045 | **0.90** |" in text
    )
    assert "| ×3/2 | VP-ε | 0.050 | 0.060 | 0.050 | 0.400 | – | 0.045 | 0.045 |" in text  # η = 1
    assert "Integer factors, both forms: yes, UG (η = 1) / trained size = 1.20–1.20×" in text
    assert 'now `ratio_noise="whiten"`): no, 1.20–1.20×' in text
    assert "one ζ per sample (the library's form" in text and "mean k is 8.89–8.89×" in text
    assert "| ×2 | flow | 0.050 | 0.400 | 0.060 | – | – | – | – |" in text  # ablation
    page = "\n".join(report.testbed_md_lines(res))
    assert "| UG η=1: W·D[x] against λ_low | 0.050 | n/a |" in page
