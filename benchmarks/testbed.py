"""An exact analytic testbed for upsample guidance: stationary Gaussian data on a periodic grid.

The high-resolution data is a stationary Gaussian field whose correlation length is a fixed
fraction of the image; the trained-resolution data is its block mean ``D[x]``. The exact
trained-resolution ε-predictor is a Wiener filter, diagonal in Fourier space::

    ε̂(x_t) = F⁻¹[ s / (a²·λ_low + s²) · F[x_t] ],   x_t = a·x0 + s·ε,

with ``λ_low`` the trained-resolution power spectrum. :meth:`GaussianTestbed.eps_model` applies it
at any size as a fixed trained-size kernel, as a CNN would be applied. ``python
benchmarks/testbed.py`` prints the tables (``benchmarks/analytic_testbed.py`` writes them into
``benchmarks/results/``); why this testbed: ``docs/design.md``. Samples come from the package's
own DDIM loop (:func:`ug_core.adapters.loops.sample_ddim`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from ug_core.adapters.loops import sample_ddim

from ug_core.guidance import UpsampleGuidance
from ug_core.operators import downsample, normalize_factors
from ug_core.schedules import DiscreteSchedule, as_times

__all__ = ["GaussianTestbed", "ddim", "log_spectral_distance", "power_spectrum", "run"]

_F64 = torch.float64


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


def block_mean_spectrum(lam_high: torch.Tensor, factors: Sequence[int]) -> torch.Tensor:
    """Eigenvalues of the covariance of ``D[x]`` for stationary x with eigenvalues ``lam_high``."""
    dims = tuple(range(lam_high.ndim))
    box = torch.ones((), dtype=torch.complex128)
    for axis, (f, freq) in enumerate(zip(factors, _freqs(lam_high.shape), strict=True)):
        n = lam_high.shape[axis]
        j = torch.arange(f, dtype=_F64).reshape([-1] + [1] * lam_high.ndim)
        phase = torch.exp(-2j * math.pi * freq.unsqueeze(0) * j / n)
        box = box * phase.mean(dim=0)
    cov = torch.fft.ifftn(lam_high * box.abs() ** 2, dim=dims).real
    sl = tuple(slice(None, None, f) for f in factors)
    return torch.fft.fftn(cov[sl], dim=dims).real


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


class GaussianTestbed:
    """Gaussian data with an exact trained-resolution denoiser, for ``trained_shape`` × ``factors``.

    ``corr`` is the correlation length as a fraction of the image and ``order`` the smoothness of
    the spectrum. Data is normalised to unit per-pixel variance at the trained resolution. Samples
    have shape ``(batch, 1, *spatial)``; times are timestep indices of ``schedule``.
    """

    def __init__(
        self,
        trained_shape: Sequence[int],
        factors: Sequence[int],
        *,
        corr: float = 0.12,
        order: float = 1.5,
        schedule: DiscreteSchedule | None = None,
    ) -> None:
        self.factors = normalize_factors(factors)
        self.trained_shape = tuple(int(n) for n in trained_shape)
        if len(self.factors) != len(self.trained_shape):
            raise ValueError(
                f"factors {self.factors} and trained_shape {self.trained_shape} must have the "
                "same length"
            )
        self.high_shape = tuple(
            n * f for n, f in zip(self.trained_shape, self.factors, strict=True)
        )
        self.schedule = schedule or DiscreteSchedule.linear()
        lam_high = matern_spectrum(self.high_shape, corr, order)
        lam_low = block_mean_spectrum(lam_high, self.factors)
        norm = lam_low.mean()  # per-pixel variance of D[x]
        self.lam_high = lam_high / norm
        self.lam_low = lam_low / norm
        self._kernels: dict[tuple[float, tuple[int, ...]], torch.Tensor] = {}

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

    def _kernel_spectrum(self, t: float, shape: tuple[int, ...]) -> torch.Tensor:
        """Fourier transform, at grid ``shape``, of the trained-size ε-kernel at timestep t."""
        key = (t, shape)
        if key not in self._kernels:
            a, s = (v.item() for v in self.schedule.coefficients(torch.tensor(t, dtype=_F64)))
            dims = tuple(range(self.ndim))
            gain = s / (a * a * self.lam_low + s * s)
            kernel = torch.fft.ifftn(gain, dim=dims).real  # trained-size periodic kernel
            big = torch.zeros(shape, dtype=_F64)
            idx = [torch.fft.fftfreq(n, d=1.0 / n).long() for n in self.trained_shape]
            grids = torch.meshgrid(*idx, indexing="ij")  # signed offsets, centred window
            big[tuple(g % n for g, n in zip(grids, shape, strict=True))] = kernel
            self._kernels[key] = torch.fft.fftn(big, dim=dims)
        return self._kernels[key]

    def eps_model(self, x: torch.Tensor, t: object) -> torch.Tensor:
        """The ε-predictor: exact at the trained size, a fixed trained-size kernel at any other."""
        shape = tuple(x.shape[-self.ndim :])
        if any(n < m for n, m in zip(shape, self.trained_shape, strict=True)):
            raise ValueError(f"x's size {shape} is smaller than the trained size")
        times = as_times(t).reshape(-1)
        if times.numel() == 1 or bool((times == times[0]).all()):
            times = times[:1].expand(x.shape[0])
        dims = tuple(range(-self.ndim, 0))
        xf = torch.fft.fftn(x.to(_F64), dim=dims)
        out = torch.empty_like(xf)
        for value in times.unique().tolist():
            rows = (times == value).nonzero().flatten()
            out[rows] = xf[rows] * self._kernel_spectrum(value, shape)
        return torch.fft.ifftn(out, dim=dims).real.to(x.dtype)

    def coarse_distance(self, x: torch.Tensor) -> float:
        """Log-spectral distance of ``D[x]`` (high-res samples) to the trained-resolution data."""
        return log_spectral_distance(downsample(x, self.factors), self.lam_low)

    def guidance(self, scale: float = 1.0, **kwargs: object) -> UpsampleGuidance:
        """An :class:`UpsampleGuidance` for this testbed's schedule and factors (ε-prediction)."""
        return UpsampleGuidance(self.schedule, self.factors, scale, "epsilon", **kwargs)


def ddim(
    eps_model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    schedule: DiscreteSchedule,
    steps: int,
    noise: torch.Tensor,
) -> torch.Tensor:
    """Deterministic DDIM for an ε-model, from x_T = ``noise`` to x0, without a progress bar.

    :func:`ug_core.adapters.loops.sample_ddim`: ``steps`` timesteps evenly spaced from N − 1 down
    to 0 (rounded); the last step goes to ᾱ = 1 (returns x0̂).
    """
    return sample_ddim(eps_model, schedule, steps, noise=noise, progress=False)


def run(
    trained_shape: Sequence[int],
    factors: Sequence[int],
    *,
    n: int = 512,
    steps: int = 250,
    seed: int = 0,
    time_matching: str = "exact",
) -> dict[str, tuple[float, float]]:
    """``(coarse, fine)`` log-spectral distances of every method on one testbed, sampled by DDIM.

    *coarse* compares ``D[x]`` with the trained-resolution data (for the trained-resolution run,
    the samples themselves); *fine* compares the full high-resolution samples with the
    high-resolution data (not defined for the trained-resolution run: NaN).
    """
    bed = GaussianTestbed(trained_shape, factors)

    def sample(shape: tuple[int, ...], guide: UpsampleGuidance | None) -> torch.Tensor:
        """DDIM samples with the testbed's model; every method starts from the same seed."""
        noise = torch.randn(
            (n, 1, *shape), generator=torch.Generator().manual_seed(seed), dtype=_F64
        )
        model = bed.eps_model if guide is None else guide.wrap(bed.eps_model)
        return ddim(model, bed.schedule, steps, noise)

    def scores(x: torch.Tensor) -> tuple[float, float]:
        """(coarse, fine) distances of high-resolution samples."""
        return bed.coarse_distance(x), log_spectral_distance(x, bed.lam_high)

    data = bed.sample_data(n, generator=torch.Generator().manual_seed(seed + 1))
    trained = sample(bed.trained_shape, None)
    guide = bed.guidance
    return {
        "data (exact samples)": scores(data),
        "trained resolution": (log_spectral_distance(trained, bed.lam_low), math.nan),
        "naive high-res": scores(sample(bed.high_shape, None)),
        "UG": scores(sample(bed.high_shape, guide(time_matching=time_matching))),
        "UG, no time matching": scores(sample(bed.high_shape, guide(time_matching="off"))),
        "UG, no power scaling": scores(
            sample(bed.high_shape, guide(time_matching=time_matching, match_power=False))
        ),
        "UG, neither": scores(
            sample(bed.high_shape, guide(time_matching="off", match_power=False))
        ),
    }


CASES = {
    "2-D x2 (16x16 -> 32x32)": ((16, 16), (2, 2)),
    "2-D x3 (16x16 -> 48x48)": ((16, 16), (3, 3)),
    "temporal 1-D x2 (64 -> 128 frames)": ((64,), (2,)),
}


def main() -> None:
    """Print the testbed tables: coarse and fine log-spectral distance per method and case."""
    for name, (shape, factors) in CASES.items():
        print(f"\n{name}: log-spectral distance (lower is better)")
        print(f"  {'method':<24s} {'coarse':>8s} {'fine':>8s}")
        for method, (coarse, fine) in run(shape, factors).items():
            print(f"  {method:<24s} {coarse:8.4f} {fine:8.4f}")


if __name__ == "__main__":
    main()
