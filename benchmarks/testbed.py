"""An exact analytic testbed for upsample guidance: stationary Gaussian data on a periodic grid.

The high-resolution data is a stationary Gaussian field whose correlation length is a fixed
fraction of the image; the trained-resolution data is the stationary Gaussian field whose power
spectrum ``λ_low`` is the expected power spectrum of the area mean ``D[x]``
(:func:`downsampled_spectrum`; for integer factors ``D[x]`` is itself stationary with it, for a
ratio p/q it is only cyclostationary, with period q on the low grid). The exact trained-resolution
predictor is a Wiener filter, diagonal in Fourier space, in either form (``x_t = a·x0 + s·ε``):

- ``"epsilon"``: VP, linear DDPM schedule, ``ε̂ = F⁻¹[s/(a²λ + s²)·F[x_t]]``, sampled with DDIM
  (:func:`ug_core.adapters.loops.sample_ddim`);
- ``"flow"``: rectified flow ``x_t = (1 − t)·x0 + t·ε``, velocity ``v = ε − x0``,
  ``v̂ = F⁻¹[(s − aλ)/(a²λ + s²)·F[x_t]]``, the model taking ``1000·t``, sampled with Euler
  (:func:`euler_flow`).

:meth:`GaussianTestbed.model` applies it at any size as a fixed trained-size kernel, as a CNN would
be applied; :meth:`GaussianTestbed.exact_model` is the high-resolution data's own Wiener filter
(the best any method can do). ``python benchmarks/analytic_testbed.py`` writes the tables into
``benchmarks/results/analytic_testbed.md``; why this testbed: ``docs/design.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any

import torch
from ug_core.adapters.loops import sample_ddim

from ug_core.factors import format_factors
from ug_core.guidance import UpsampleGuidance
from ug_core.operators import downsample, normalize_factors, top_up_noise, upsample, whiten
from ug_core.schedules import DiscreteSchedule, FlowSchedule, Schedule, as_times

__all__ = [
    "FORMS",
    "GaussianTestbed",
    "downsampled_spectrum",
    "euler_flow",
    "log_spectral_distance",
    "power_spectrum",
    "run",
    "wiener_gain",
]

_F64 = torch.float64
_C128 = torch.complex128

#: The two forms: form name → (the schedule in the model's time unit, the prediction).
FORMS: dict[str, tuple[Callable[[], Schedule], str]] = {
    "epsilon": (DiscreteSchedule.linear, "epsilon"),
    "flow": (lambda: FlowSchedule(time_scale=1000.0), "flow"),
}


def _freqs(shape: Sequence[int]) -> list[torch.Tensor]:
    """Integer FFT frequencies (cycles per image) along each axis, broadcastable over ``shape``."""
    out = []
    for i, n in enumerate(shape):
        f = torch.fft.fftfreq(n, d=1.0 / n, dtype=_F64)
        out.append(f.reshape([n if j == i else 1 for j in range(len(shape))]))
    return out


def matern_spectrum(shape: Sequence[int], corr: float, order: float) -> torch.Tensor:
    """Eigenvalues of a stationary covariance on the torus ``shape``: ``(1 + (2πνℓ)²)^(−order)``.

    ν is the frequency in cycles per image and ℓ = ``corr`` the correlation length as a fraction
    of the image, so the same ``corr`` describes the same scene at every resolution.
    """
    nu2 = sum(f**2 for f in _freqs(shape))
    return (1.0 + (2 * math.pi * corr) ** 2 * nu2) ** (-order)


def area_mean_matrix(n_high: int, factor: Any) -> torch.Tensor:
    """D on one axis as a dense ``(n_low, n_high)`` float64 matrix: ug_core's area mean of I."""
    return downsample(torch.eye(n_high, dtype=_F64), (factor,)).T


def transfer_power(n_high: int, factor: Any) -> torch.Tensor:
    """``|T|²`` with ``T = F_low·D·F_highᴴ`` (unitary DFTs): the share of frequency μ in ν."""
    d = area_mean_matrix(n_high, factor).to(_C128)
    f_low, f_high = (torch.fft.fft(torch.eye(n, dtype=_C128), norm="ortho") for n in d.shape)
    return (f_low @ d @ f_high.conj().T).abs() ** 2


def downsampled_spectrum(lam_high: torch.Tensor, factors: Sequence[Any]) -> torch.Tensor:
    """λ_low: the expected power spectrum of ``D[x]`` for stationary x with eigenvalues λ_high.

    The diagonal of ``F·D·Σ·Dᵀ·Fᴴ``, exactly: ``λ_low(ν) = Σ_μ λ_high(μ)·Π_a |T_a[ν_a, μ_a]|²``
    (:func:`transfer_power` per axis). For integer factors ``D[x]`` is stationary and these are
    its covariance's eigenvalues; for a ratio it is cyclostationary and they are the diagonal.
    """
    out = lam_high
    for axis, f in enumerate(normalize_factors(factors)):
        weights = transfer_power(out.shape[axis], f)
        out = torch.tensordot(weights, out, dims=([1], [axis])).movedim(0, axis)
    return out


def power_spectrum(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Empirical power spectrum over the trailing ``ndim`` axes, averaged over all leading axes.

    Normalised so that its expectation equals the covariance eigenvalues λ of stationary data.
    """
    dims = tuple(range(-ndim, 0))
    power = torch.fft.fftn(x.to(_F64), dim=dims, norm="ortho").abs() ** 2
    return power.reshape(-1, *x.shape[-ndim:]).mean(dim=0)


def log_spectral_distance(x: torch.Tensor, lam: torch.Tensor) -> float:
    """Mean over frequencies of ``|log(P̂/λ)|``: 0 for a perfect covariance, up to sampling noise."""
    p = power_spectrum(x, lam.ndim)
    return float((p / lam).log().abs().mean())


def wiener_gain(lam: torch.Tensor, a: float, s: float, prediction: str) -> torch.Tensor:
    """Per-frequency gain of ``E[p | x_t]`` for data with spectrum λ: ``p̂ = F⁻¹[gain·F[x_t]]``.

    ``E[x0 | x_t]`` has gain ``aλ/(a²λ + s²)`` and ``E[ε | x_t]`` ``s/(a²λ + s²)``; ``"epsilon"``
    returns the latter, ``"flow"`` (``v = ε − x0``) their difference.
    """
    den = a * a * lam + s * s
    eps, x0 = s / den, a * lam / den
    return {"epsilon": eps, "flow": eps - x0}[prediction]


def _times_per_sample(t: object, batch: int) -> torch.Tensor:
    """One time per sample (float64, CPU) from a number, one per sample, or a time map."""
    times = as_times(t)
    if times.ndim > 1:  # a time map: the stationary Wiener filter takes one time per sample
        flat = times.reshape(times.shape[0], -1)
        if not bool((flat == flat[:, :1]).all()):
            raise ValueError(
                f"t is a time map of shape {tuple(times.shape)} whose times differ within a "
                "sample; the testbed's stationary Wiener filter takes one time per sample "
                "(a number, one per sample, or a map that is constant within each sample)"
            )
        times = flat[:, 0]
    times = times.reshape(-1)
    return times.expand(batch) if times.numel() == 1 else times


def euler_flow(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    steps: int,
    noise: torch.Tensor,
    *,
    time_scale: float = 1000.0,
    time_map: bool = False,
) -> torch.Tensor:
    """Deterministic Euler for a flow model, ``x ← x + (t' − t)·v̂``, from t = 1 (``noise``) to 0.

    ``steps`` uniform steps in t; the model takes ``t·time_scale`` as one time per sample, or with
    ``time_map`` as a map with x's shape. The last step returns the final x0 estimate.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    grid = torch.linspace(1.0, 0.0, steps + 1, dtype=_F64).tolist()
    shape = tuple(noise.shape) if time_map else noise.shape[:1]
    x = noise
    for t, t_next in zip(grid[:-1], grid[1:], strict=True):
        x = x + (t_next - t) * model(x, torch.full(shape, t * time_scale, dtype=_F64))
    return x


class GaussianTestbed:
    """Gaussian data with an exact trained-size predictor, for ``trained_shape`` × ``factors``.

    ``factors`` are integers or ratios p/q (q must divide the trained sizes); ``form`` is a key of
    :data:`FORMS`. ``corr`` is the correlation length as a fraction of the image and ``order``
    the smoothness of the spectrum. Data is normalised to unit mean per-pixel variance at the
    trained resolution. Samples have shape ``(batch, 1, *spatial)``; times are in the model's
    unit (timestep index, or ``1000·t``).
    """

    def __init__(
        self,
        trained_shape: Sequence[int],
        factors: Sequence[Any],
        *,
        form: str = "epsilon",
        corr: float = 0.12,
        order: float = 1.5,
    ) -> None:
        if form not in FORMS:
            raise ValueError(f"form must be one of {tuple(FORMS)}, got {form!r}")
        self.factors = normalize_factors(factors)
        self.trained_shape = tuple(int(n) for n in trained_shape)
        if len(self.factors) != len(self.trained_shape):
            raise ValueError(
                f"factors {format_factors(self.factors)} and trained_shape {self.trained_shape} "
                "must have the same length"
            )
        high = [n * Fraction(f) for n, f in zip(self.trained_shape, self.factors, strict=True)]
        if any(h.denominator != 1 for h in high):
            raise ValueError(
                f"trained_shape {self.trained_shape} does not map to whole sizes at factors "
                f"{format_factors(self.factors)}: a factor p/q needs trained sizes that are "
                "multiples of q"
            )
        self.high_shape = tuple(int(h) for h in high)
        self.form = form
        make_schedule, self.prediction = FORMS[form]
        self.schedule = make_schedule()
        lam_high = matern_spectrum(self.high_shape, corr, order)
        lam_low = downsampled_spectrum(lam_high, self.factors)
        norm = lam_low.mean()  # mean per-pixel variance of D[x]
        self.lam_high = lam_high / norm
        self.lam_low = lam_low / norm
        self.k = math.prod(Fraction(f) for f in self.factors)
        self._spectra: dict[tuple[float, tuple[int, ...], bool], torch.Tensor] = {}

    @property
    def ndim(self) -> int:
        """Number of spatial axes."""
        return len(self.trained_shape)

    def sample_data(
        self, n: int, high: bool = True, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``n`` exact data samples at the high (or trained) resolution, float64."""
        lam = self.lam_high if high else self.lam_low
        dims = tuple(range(-self.ndim, 0))
        z = torch.randn((n, 1, *lam.shape), generator=generator, dtype=_F64)
        return torch.fft.ifftn(lam.sqrt() * torch.fft.fftn(z, dim=dims), dim=dims).real

    def _gain(self, t: float, shape: tuple[int, ...], exact: bool) -> torch.Tensor:
        """The predictor's Fourier gain at model time t on grid ``shape`` (memoised).

        ``exact``: the high-resolution data's own Wiener filter; else the trained-size filter's
        periodic kernel, embedded centred in ``shape`` (as a CNN's receptive field would be).
        """
        key = (t, shape, exact)
        if key not in self._spectra:
            a, s = (v.item() for v in self.schedule.coefficients(torch.tensor(t, dtype=_F64)))
            if exact:
                self._spectra[key] = wiener_gain(self.lam_high, a, s, self.prediction)
            else:
                dims = tuple(range(self.ndim))
                gain = wiener_gain(self.lam_low, a, s, self.prediction)
                kernel = torch.fft.ifftn(gain, dim=dims).real  # trained-size periodic kernel
                big = torch.zeros(shape, dtype=_F64)
                idx = [torch.fft.fftfreq(n, d=1.0 / n).long() for n in self.trained_shape]
                grids = torch.meshgrid(*idx, indexing="ij")  # signed offsets, centred window
                big[tuple(g % n for g, n in zip(grids, shape, strict=True))] = kernel
                self._spectra[key] = torch.fft.fftn(big, dim=dims)
        return self._spectra[key]

    def _filter(self, x: torch.Tensor, t: object, exact: bool) -> torch.Tensor:
        """x filtered per sample by :meth:`_gain` at that sample's time."""
        shape = tuple(x.shape[-self.ndim :])
        times = _times_per_sample(t, x.shape[0])
        dims = tuple(range(-self.ndim, 0))
        xf = torch.fft.fftn(x.to(_F64), dim=dims)
        out = torch.empty_like(xf)
        for value in times.unique().tolist():
            rows = (times == value).nonzero().flatten()
            out[rows] = xf[rows] * self._gain(value, shape, exact)
        return torch.fft.ifftn(out, dim=dims).real.to(x.dtype)

    def model(self, x: torch.Tensor, t: object) -> torch.Tensor:
        """The predictor: exact at the trained size, a fixed trained-size kernel at any other.

        ``t``: a number, one time per sample, or a time map constant within each sample.
        """
        shape = tuple(x.shape[-self.ndim :])
        if any(n < m for n, m in zip(shape, self.trained_shape, strict=True)):
            raise ValueError(f"x's size {shape} is smaller than the trained size")
        return self._filter(x, t, exact=False)

    eps_model = model  # the ε form's name, as tests/test_loops.py calls it

    def exact_model(self, x: torch.Tensor, t: object) -> torch.Tensor:
        """The high-resolution data's exact predictor (its own Wiener filter), at the high size."""
        if tuple(x.shape[-self.ndim :]) != self.high_shape:
            raise ValueError(
                f"exact_model takes x at the high-resolution size {self.high_shape}, got "
                f"{tuple(x.shape[-self.ndim :])}"
            )
        return self._filter(x, t, exact=True)

    def sample(
        self,
        model: Callable[[torch.Tensor, Any], torch.Tensor],
        noise: torch.Tensor,
        steps: int,
        *,
        time_map: bool = False,
    ) -> torch.Tensor:
        """Deterministic samples from ``noise``: DDIM (ε form) or Euler (flow form).

        ``time_map`` (flow form) gives the model its time as a map with the sample's shape.
        """
        if self.form == "flow":
            scale = self.schedule.time_scale
            return euler_flow(model, steps, noise, time_scale=scale, time_map=time_map)
        if time_map:
            raise ValueError("time_map=True needs form='flow' (the DDIM loop passes one time)")
        return sample_ddim(model, self.schedule, steps, noise=noise, progress=False)

    def coarse_distance(self, x: torch.Tensor) -> float:
        """Log-spectral distance of ``D[x]`` (high-res samples) to the trained-resolution data."""
        return log_spectral_distance(downsample(x, self.factors), self.lam_low)

    def guidance(self, scale: float = 1.0, **options: Any) -> UpsampleGuidance:
        """An :class:`UpsampleGuidance` for this testbed (exact time matching unless given)."""
        options.setdefault("time_matching", "exact")
        return UpsampleGuidance(self.schedule, self.factors, scale, self.prediction, **options)

    def top_up_noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws of ζ ~ N(0, I/k − DDᵀ) on the low grid, ``(n, 1, *trained_shape)`` float64.

        The core's :func:`~ug_core.operators.top_up_noise`: ``D[ε] + ζ`` is white with variance
        1/k; 0 for integer factors.
        """
        normal = torch.randn((n, 1, *self.trained_shape), generator=generator, dtype=_F64)
        return top_up_noise(normal, self.factors)

    def fresh_top_up(self, guide: UpsampleGuidance) -> Callable[[torch.Tensor, Any], torch.Tensor]:
        """``guide`` (``ratio_noise="top-up"``) with a new ζ at every call, as §13 once wrote it."""
        guided = guide.wrap(self.model)

        def fresh(x: torch.Tensor, t: Any) -> torch.Tensor:
            """The guided prediction with ζ redrawn (seeded from this call's x)."""
            guide.top_up.reset()
            return guided(x, t)

        return fresh


#: UG's forms for a ratio (docs/maths.md §13): (a) whitening, the library's; (b) the plain area
#: mean with the mean k; (c) the low input topped up with fresh noise at every call, as §13 writes
#: it; (c') topped up with one ζ per sample for the whole trajectory; (c'') the plain area mean
#: with the initial noise topped up instead, ``x_T + U[ζ]``. For integer factors all are one.
VARIANTS = ("whitening", "mean k", "top-up, fresh", "top-up, per sample", "top-up, initial noise")


def run(
    trained_shape: Sequence[int],
    factors: Sequence[Any],
    form: str = "epsilon",
    *,
    n: int = 512,
    steps: int = 100,
    seed: int = 0,
    variants: Mapping[str, Sequence[float]] | None = None,
    ablations: bool = False,
) -> dict[str, tuple[float, float]]:
    """``(coarse, fine)`` log-spectral distances of every method on one testbed.

    *coarse* compares ``D[x]`` with λ_low (for the trained-size run, the samples themselves);
    *fine* compares the high-resolution samples with λ_high (NaN for the trained-size run).
    Methods: exact data, the exact high-resolution sampler, the trained-size sampler, naive
    high-resolution sampling, UG (θ = 1) in each variant of :data:`VARIANTS` at the η values
    ``variants`` gives it (default: whitening at η = 1), and with ``ablations`` the paper's §5.3
    rows at η = 1. Every sampler starts from the same seed.
    """
    bed = GaussianTestbed(trained_shape, factors, form=form)

    def sample(
        shape: tuple[int, ...], model: Callable[..., torch.Tensor], top_up: Any = None
    ) -> torch.Tensor:
        """Samples from the seed's noise at ``shape`` (plus ``U[top_up]``, a ζ, if given)."""
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn((n, 1, *shape), generator=gen, dtype=_F64)
        if top_up is not None:
            noise = noise + upsample(top_up, bed.factors)
        return bed.sample(model, noise, steps)

    def scores(x: torch.Tensor) -> tuple[float, float]:
        """(coarse, fine) distances of high-resolution samples."""
        return bed.coarse_distance(x), log_spectral_distance(x, bed.lam_high)

    def ug(eta: float = 1.0, variant: str = "whitening", **options: Any) -> torch.Tensor:
        """Samples of UG (θ = 1) at η in one variant (the core's ``ratio_noise`` where it can)."""
        form = {"whitening": "whiten", "mean k": "plain", "top-up, initial noise": "plain"}
        guide = bed.guidance(1.0, eta=eta, ratio_noise=form.get(variant, "top-up"), **options)
        gen = torch.Generator().manual_seed(seed + 2)
        if variant == "top-up, fresh":
            return sample(bed.high_shape, bed.fresh_top_up(guide))
        zeta = bed.top_up_noise(n, gen) if variant == "top-up, initial noise" else None
        return sample(bed.high_shape, guide.wrap(bed.model), zeta)

    data = bed.sample_data(n, generator=torch.Generator().manual_seed(seed + 1))
    trained = sample(bed.trained_shape, bed.model)
    out = {
        "data (exact samples)": scores(data),
        "exact high-res sampler": scores(sample(bed.high_shape, bed.exact_model)),
        "trained-size sampler": (log_spectral_distance(trained, bed.lam_low), math.nan),
        "naive high-res": scores(sample(bed.high_shape, bed.model)),
    }
    for variant, etas in (variants or {"whitening": (1.0,)}).items():
        for eta in etas:
            x = ug(eta, variant)
            out[f"UG η={eta:g}" + ("" if variant == "whitening" else f", {variant}")] = scores(x)
            if variant == "whitening" and eta == 1 and bed.k != int(bed.k):
                whitened = whiten(downsample(x, bed.factors), bed.factors)
                out["UG η=1: W·D[x] against λ_low"] = (
                    log_spectral_distance(whitened, bed.lam_low),
                    math.nan,
                )
    if ablations and form == "epsilon":  # flow's matched time is exact in closed form
        out["UG η=1, nearest time matching"] = scores(ug(time_matching="nearest"))
    if ablations:
        out["UG η=1, no time matching"] = scores(ug(time_matching="off"))
        out["UG η=1, no power scaling"] = scores(ug(match_power=False))
        out["UG η=1, neither"] = scores(ug(time_matching="off", match_power=False))
    return out


#: The report's cases: name → (trained shape, factors).
CASES = {
    "2-D ×2 (16×16 → 32×32)": ((16, 16), (2, 2)),
    "2-D ×3 (16×16 → 48×48)": ((16, 16), (3, 3)),
    "2-D ×3/2 (16×16 → 24×24)": ((16, 16), ("3/2", "3/2")),
    "2-D ×4/3 (18×18 → 24×24)": ((18, 18), ("4/3", "4/3")),
    "temporal 1-D ×2 (64 → 128 frames)": ((64,), (2,)),
}


def main() -> None:
    """Print every case's coarse and fine log-spectral distances, in both forms (η = 1)."""
    for name, (shape, factors) in CASES.items():
        for form in FORMS:
            print(f"\n{name}, {form} form: log-spectral distance (lower is better)")
            print(f"  {'method':<28s} {'coarse':>8s} {'fine':>8s}")
            for method, (coarse, fine) in run(shape, factors, form, n=256).items():
                print(f"  {method:<28s} {coarse:8.4f} {fine:8.4f}")


if __name__ == "__main__":
    main()
