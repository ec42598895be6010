"""Noise schedules: what a model's time means, and the time and power matching of upsample guidance.

Every schedule writes a noisy sample as ``x_t = a(t)·x0 + s(t)·ε`` and answers, for ``k`` averaged
elements, two questions (docs/maths.md §1–§3, §6, §7):

- the matched time ``τ`` with ``SNR(τ) = k·SNR(t)``, where ``SNR = a²/s²``;
- the input scale ``c`` that makes ``c·D[x_t]`` a valid sample at ``τ``: its signal coefficient is
  ``c·a(t) = a(τ)`` and its noise coefficient ``c·s(t)/√k = s(τ)``.

Times are always in the unit the *model* takes: a timestep index for :class:`DiscreteSchedule`,
sigma for :class:`SigmaSchedule`, and ``t·time_scale`` for :class:`FlowSchedule`. All schedule maths
runs in float64 (float32 on devices without float64, e.g. MPS) on the device of the times it is
given: CPU times for host-side maths, device times for the sync-free path (no value is ever read
back to the host). Callers cast the results to their own dtype.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import torch

from .config import TIME_MATCHING

__all__ = [
    "Match",
    "Schedule",
    "DiscreteSchedule",
    "SigmaSchedule",
    "FlowSchedule",
    "ShiftedFlowSchedule",
    "time_shift",
    "as_times",
    "as_device_times",
    "times_of",
    "work_dtype",
    "discrete_time_fraction",
    "TIME_MATCHING",
]

_F64 = torch.float64


class Match(NamedTuple):
    """The low-resolution call's time and input scale for a batch of times (float64 tensors)."""

    time: torch.Tensor
    """Matched time τ, in the model's time unit (clamped into the schedule; see ``below``)."""
    scale: torch.Tensor
    """Input scale c: the low-resolution input is ``c·D[x_t]``."""
    below: torch.Tensor
    """True where the exact matched time falls below the schedule's first time."""


@runtime_checkable
class Schedule(Protocol):
    """What the guidance kernel needs from a noise schedule (all times in the model's unit)."""

    def check_times(self, t: torch.Tensor, name: str = "t") -> None:
        """Raise a ValueError naming the value if any time lies outside the schedule."""

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Signal and noise coefficients ``(a, s)`` of ``x_t = a·x0 + s·ε``, float64."""

    def time_fraction(self, t: torch.Tensor) -> torch.Tensor:
        """Position of t on the schedule's time axis, in [0, 1], 1 at the noisiest end."""

    def match(self, t: torch.Tensor, k: int, mode: str = "nearest") -> Match:
        """Matched time and input scale for ``k`` averaged elements."""


def work_dtype(device: torch.device) -> torch.dtype:
    """The dtype of schedule maths on ``device``: float64, or float32 where it has no float64."""
    return torch.float32 if device.type == "mps" else _F64


def as_device_times(t: torch.Tensor, name: str = "t") -> torch.Tensor:
    """A tensor of times in the schedule maths' dtype, on its own device (nothing read back)."""
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold real numbers, got a tensor of dtype {t.dtype}")
    return t.detach().to(work_dtype(t.device))


def as_times(t: object, name: str = "t") -> torch.Tensor:
    """Times (a number, a sequence, an array or a tensor) as a float64 CPU tensor."""
    if isinstance(t, torch.Tensor):
        if t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{name} must hold real numbers, got a tensor of dtype {t.dtype}")
        return t.detach().to(device="cpu", dtype=_F64)
    if isinstance(t, bool):
        raise TypeError(f"{name} must be a number or a tensor of times, got the bool {t!r}")
    if isinstance(t, numbers.Real):
        return torch.tensor(float(t), dtype=_F64)
    if isinstance(t, (np.ndarray, Sequence)):
        try:
            return torch.as_tensor(np.asarray(t, dtype=np.float64))
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must hold real numbers, got {t!r}") from err
    raise TypeError(
        f"{name} must be a number, a sequence or a tensor of times, got {type(t).__name__}"
    )


def times_of(t: object, name: str = "t") -> torch.Tensor:
    """Times as a tensor for schedule maths: a tensor keeps its device, anything else is CPU."""
    return as_device_times(t, name) if isinstance(t, torch.Tensor) else as_times(t, name)


def _on(table: torch.Tensor, like: torch.Tensor, cache: dict) -> torch.Tensor:
    """``table`` on ``like``'s device and dtype, copied there once and cached."""
    key = (like.device, like.dtype)
    if key not in cache:
        cache[key] = table.to(device=like.device, dtype=like.dtype)
    return cache[key]


def _check_mode(mode: str) -> str:
    """Return ``mode`` if it is a known time-matching name, else raise a ValueError."""
    if mode not in TIME_MATCHING:
        raise ValueError(f"time_matching must be one of {TIME_MATCHING}, got {mode!r}")
    return mode


def _check_finite(t: torch.Tensor, name: str) -> None:
    """Raise a ValueError if a time is NaN or infinite."""
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite, got {t.tolist()}")


def vp_power(alpha_bar: torch.Tensor, k: int) -> torch.Tensor:
    """P = ᾱ + (1 − ᾱ)/k: the power of D[x_t] for a variance-preserving x_t (paper Eq. 6)."""
    return alpha_bar + (1.0 - alpha_bar) / k


class DiscreteSchedule:
    """A discrete variance-preserving schedule (DDPM, Stable Diffusion) from ``alphas_cumprod``.

    Time unit: the timestep index, ``0 <= t <= N - 1`` (0 the cleanest). Fractional timesteps, as
    diffusers' Karras-sigma schedulers pass them, are interpolated linearly in log-SNR, which is
    linear interpolation in log-sigma as in diffusers and k-diffusion.
    ``x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε``.

    A zero-terminal-SNR schedule (``alphas_cumprod[-1] == 0``) is accepted; its log-SNR is floored
    at ``log(tiny)`` so that the interpolation stays finite.
    """

    def __init__(self, alphas_cumprod: Sequence[float] | np.ndarray | torch.Tensor) -> None:
        ac = as_times(alphas_cumprod, "alphas_cumprod")
        if ac.ndim != 1 or ac.numel() < 2:
            raise ValueError(
                f"alphas_cumprod must be a 1-D sequence of at least 2 values, got shape "
                f"{tuple(ac.shape)}"
            )
        _check_finite(ac, "alphas_cumprod")
        if ac[0] >= 1 or ac.min() < 0 or (ac[:-1] <= 0).any():
            raise ValueError(
                "alphas_cumprod must lie in (0, 1) (only the last value may be 0), got values "
                f"from {ac.min().item()!r} to {ac.max().item()!r}"
            )
        steps = ac[1:] - ac[:-1]
        if (steps >= 0).any():
            i = int(torch.nonzero(steps >= 0)[0])
            raise ValueError(
                "alphas_cumprod must be strictly decreasing (a monotone schedule), but "
                f"alphas_cumprod[{i}] = {ac[i].item()!r} <= alphas_cumprod[{i + 1}] = "
                f"{ac[i + 1].item()!r}"
            )
        self.alphas_cumprod = ac
        floor = torch.finfo(_F64).tiny
        clipped = ac.clamp_min(floor)
        self.log_snrs = clipped.log() - (1.0 - ac).log()
        """log SNR of each timestep, float64 (strictly decreasing)."""
        self._log_snrs: dict = {}  # the table per (device, dtype)
        self._alphas: dict = {}

    @classmethod
    def linear(
        cls, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
    ) -> DiscreteSchedule:
        """The DDPM linear-beta schedule (diffusers' ``beta_schedule="linear"``)."""
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=_F64)
        return cls(torch.cumprod(1.0 - betas, 0))

    @classmethod
    def scaled_linear(
        cls,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
    ) -> DiscreteSchedule:
        """Stable Diffusion's schedule (diffusers' ``beta_schedule="scaled_linear"``)."""
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=_F64) ** 2
        return cls(torch.cumprod(1.0 - betas, 0))

    @property
    def num_timesteps(self) -> int:
        """N, the number of discrete timesteps."""
        return self.alphas_cumprod.numel()

    @property
    def sigmas(self) -> torch.Tensor:
        """The VE sigma of each timestep, ``√((1 − ᾱ)/ᾱ)`` (k-diffusion's view), float64."""
        return (-self.log_snrs / 2).exp()

    def check_times(self, t: torch.Tensor, name: str = "t") -> None:
        """Raise a ValueError unless every time is a finite timestep in ``[0, N − 1]`` (host)."""
        t = as_times(t, name)
        _check_finite(t, name)
        last = self.num_timesteps - 1
        bad = (t < 0) | (t > last)
        if bad.any():
            raise ValueError(
                f"{name}={t[bad].flatten()[0].item()!r} is outside the schedule's timesteps "
                f"[0, {last}]"
            )

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """log SNR at timestep t, interpolated linearly between integer timesteps."""
        t = times_of(t)
        table = _on(self.log_snrs, t, self._log_snrs)
        i = t.floor().clamp(0, self.num_timesteps - 2).long()
        frac = t - i
        lo, hi = table[i], table[i + 1]
        return torch.where(frac == 0, lo, lo + frac * (hi - lo))

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """ᾱ at timestep t: the table at integers, sigmoid(log SNR) between them."""
        t = times_of(t)
        on_grid = t == t.round()
        alphas = _on(self.alphas_cumprod, t, self._alphas)
        table = alphas[t.round().clamp(0, self.num_timesteps - 1).long()]
        return torch.where(on_grid, table, torch.sigmoid(self.log_snr(t)))

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(√ᾱ_t, √(1 − ᾱ_t))``."""
        ab = self.alpha_bar(t)
        return ab.sqrt(), (1.0 - ab).sqrt()

    def time_fraction(self, t: torch.Tensor) -> torch.Tensor:
        """``t / (N − 1)``: the timestep as a fraction of the time axis (1 = noisiest)."""
        return times_of(t) / (self.num_timesteps - 1)

    def time_from_log_snr(self, log_snr: torch.Tensor) -> torch.Tensor:
        """The fractional timestep with the given log SNR (inverse of :meth:`log_snr`), clamped."""
        target = times_of(log_snr)
        lam = _on(self.log_snrs, target, self._log_snrs)
        idx = torch.searchsorted(-lam, -target.reshape(-1).contiguous(), side="left")
        idx = idx.reshape(target.shape).clamp(1, self.num_timesteps - 1)
        lo, hi = lam[idx - 1], lam[idx]
        frac = ((lo - target) / (lo - hi)).clamp(0, 1)
        return (idx - 1).to(target.dtype) + frac

    def nearest_time(self, log_snr: torch.Tensor) -> torch.Tensor:
        """The integer timestep whose log SNR is nearest (paper, appendix A)."""
        target = times_of(log_snr)
        lam = _on(self.log_snrs, target, self._log_snrs)
        dist = (lam - target.reshape(-1, 1)).abs()
        return dist.argmin(dim=1).reshape(target.shape).to(target.dtype)

    def match(self, t: torch.Tensor, k: int, mode: str = "nearest") -> Match:
        """τ with log SNR(τ) = log SNR(t) + log k, and c = 1/√P, P = ᾱ_t + (1 − ᾱ_t)/k."""
        _check_mode(mode)
        t = times_of(t)
        target = self.log_snr(t) + math.log(k)
        below = target > _on(self.log_snrs, t, self._log_snrs)[0]
        if mode == "nearest":
            tau = self.nearest_time(target)
        elif mode == "exact":
            tau = self.time_from_log_snr(target)
        else:
            tau = t.clone()
        scale = vp_power(self.alpha_bar(t), k).rsqrt()
        return Match(tau, scale, below)


def discrete_time_fraction(
    model: Any, to_timestep: str = "sigma_to_t"
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Sigma → ``model.<to_timestep>(σ)/(N − 1)``: the time fraction of a discrete model.

    ``model`` has a tensor ``sigmas`` (N of them) and a method mapping sigma to its fractional
    timestep: k-diffusion's ``sigma_to_t``, ComfyUI's ``timestep``. The fraction is 1 at the
    noisiest timestep, 0 at the cleanest (the paper's t/T). The method runs in the sigmas' own
    dtype and device (read at each call, so a model moved to another device is followed), and
    the result is on the input's device and dtype: nothing is read back.
    """
    last = len(model.sigmas) - 1

    def fraction(sigma: torch.Tensor) -> torch.Tensor:
        """The time fraction of each sigma."""
        ref = model.sigmas
        t = getattr(model, to_timestep)(sigma.to(device=ref.device, dtype=ref.dtype))
        return t.to(device=sigma.device, dtype=sigma.dtype) / last

    return fraction


class SigmaSchedule:
    """A variance-exploding schedule in sigma (k-diffusion, EDM): ``x = x0 + σ·ε``.

    Time unit: sigma itself; any finite ``σ >= 0`` is a valid time. ``sigma_min`` and
    ``sigma_max`` are the model's range: a matched ``σ/√k`` below ``sigma_min`` is reported as
    below the range, and the default time fraction is the position of ``log σ`` between
    ``log sigma_min`` and ``log sigma_max``, clipped to [0, 1]. Pass ``fraction`` (a callable from a
    float64 sigma tensor to fractions) to map sigma to time differently, e.g. through a discrete
    model's ``sigma_to_t``.
    """

    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        fraction: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        sigma_min, sigma_max = float(sigma_min), float(sigma_max)
        if not (0 < sigma_min < sigma_max < math.inf):
            raise ValueError(
                "SigmaSchedule needs 0 < sigma_min < sigma_max < inf, got "
                f"sigma_min={sigma_min!r}, sigma_max={sigma_max!r}"
            )
        if fraction is not None and not callable(fraction):
            raise TypeError(f"fraction must be callable or None, got {type(fraction).__name__}")
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.fraction = fraction

    def check_times(self, t: torch.Tensor, name: str = "sigma") -> None:
        """Raise a ValueError unless every sigma is finite and ``>= 0``."""
        t = as_times(t, name)
        _check_finite(t, name)
        if (t < 0).any():
            raise ValueError(f"{name}={t[t < 0].flatten()[0].item()!r} is negative; sigma >= 0")

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(1, σ)``."""
        t = times_of(t)
        return torch.ones_like(t), t.clone()

    def time_fraction(self, t: torch.Tensor) -> torch.Tensor:
        """Position of log σ between log sigma_min and log sigma_max in [0, 1], or ``fraction``.

        ``fraction`` gets the sigmas on their own device and its result stays there.
        """
        t = times_of(t)
        if self.fraction is not None:
            out = self.fraction(t)
            if not isinstance(out, torch.Tensor):
                out = as_times(out, "fraction(sigma)")
            return out.to(device=t.device, dtype=t.dtype).reshape(t.shape)
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        return ((t.log() - lo) / (hi - lo)).clamp(0, 1)

    def match(self, t: torch.Tensor, k: int, mode: str = "nearest") -> Match:
        """σ_low = σ/√k, with input scale 1 (``"nearest"`` and ``"exact"`` agree: no grid)."""
        _check_mode(mode)
        t = times_of(t)
        tau = t / math.sqrt(k) if mode != "off" else t.clone()
        below = t / math.sqrt(k) < self.sigma_min
        return Match(tau.clamp_min(self.sigma_min), torch.ones_like(t), below)


class FlowSchedule:
    """Rectified flow (SD3, Flux): ``x_t = (1 − t)·x0 + t·ε`` with ``t`` in [0, 1].

    Time unit: ``t·time_scale`` (diffusers' flow-matching transformers take ``1000·t``), or with
    ``reverse=True`` ``(1 − t)·time_scale`` (Lumina 2 counts time from the noise: 0 = pure noise).
    The matched time is ``t' = t/(t + √k(1 − t))`` and the input scale ``c = 1/((1 − t) + t/√k)``;
    t' is never below 0, so no time is below the range.
    """

    def __init__(self, time_scale: float = 1.0, reverse: bool = False) -> None:
        time_scale = float(time_scale)
        if not (0 < time_scale < math.inf):
            raise ValueError(f"time_scale must be a positive finite number, got {time_scale!r}")
        self.time_scale = time_scale
        self.reverse = bool(reverse)

    def _unit(self, t: torch.Tensor) -> torch.Tensor:
        """Model time to the flow time in [0, 1] (1 = pure noise)."""
        u = times_of(t) / self.time_scale
        return 1.0 - u if self.reverse else u

    def _model(self, u: torch.Tensor) -> torch.Tensor:
        """Flow time back to the model's time unit."""
        return (1.0 - u if self.reverse else u) * self.time_scale

    def check_times(self, t: torch.Tensor, name: str = "t") -> None:
        """Raise a ValueError unless every time lies in ``[0, time_scale]``."""
        t = as_times(t, name)
        _check_finite(t, name)
        bad = (t < 0) | (t > self.time_scale)
        if bad.any():
            raise ValueError(
                f"{name}={t[bad].flatten()[0].item()!r} is outside the flow's times "
                f"[0, {self.time_scale!r}]"
            )

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(1 − t, t)`` of the flow time t."""
        u = self._unit(t)
        return 1.0 - u, u

    def time_fraction(self, t: torch.Tensor) -> torch.Tensor:
        """The flow time t itself (1 = pure noise)."""
        return self._unit(t).clamp(0, 1)

    def match(self, t: torch.Tensor, k: int, mode: str = "nearest") -> Match:
        """``t' = t/(t + √k(1 − t))`` and ``c = 1/((1 − t) + t/√k)``."""
        _check_mode(mode)
        u = self._unit(t)
        rk = math.sqrt(k)
        scale = 1.0 / ((1.0 - u) + u / rk)
        tau = u * scale / rk if mode != "off" else u.clone()
        return Match(self._model(tau), scale, torch.zeros_like(u, dtype=torch.bool))


def time_shift(s: Any, m: Any) -> Any:
    """The flow time ``σ = m·s/(1 + (m − 1)·s)`` of time fraction ``s`` under the shift ``m``.

    SD3's and CogView4's resolution shift: it multiplies the odds ``s/(1 − s)`` by ``m``, so its
    inverse is the shift by ``1/m``.
    """
    return m * s / (1 + (m - 1) * s)


class ShiftedFlowSchedule(FlowSchedule):
    """Rectified flow whose model gets the unshifted step ``time_scale·s`` (CogView4).

    The noise level is ``σ = time_shift(s, m)`` with ``m = shift()``, the current run's shift
    (read at each use). The low call is matched on σ (docs/maths.md §7) and gets the step whose
    shift by ``m' = low_shift(k)`` (default ``m``) is the matched σ': ``time_shift(σ', 1/m')``, the
    step native sampling at ``1/k`` of the tokens pairs with σ'.
    """

    def __init__(
        self,
        shift: Callable[[], float],
        low_shift: Callable[[Any], float] | None = None,
        time_scale: float = 1000.0,
    ) -> None:
        super().__init__(time_scale=time_scale)
        for name, value in (("shift", shift), ("low_shift", low_shift)):
            if value is not None and not callable(value):
                raise TypeError(
                    f"{name} must be a callable returning the time shift m (a float > 0), got "
                    f"{type(value).__name__}"
                )
        self.shift = shift
        self.low_shift = low_shift if low_shift is not None else (lambda k: shift())

    def _unit(self, t: torch.Tensor) -> torch.Tensor:
        """The model's step to the noise level σ."""
        return time_shift(super()._unit(t), self.shift())

    def match(self, t: torch.Tensor, k: int, mode: str = "nearest") -> Match:
        """The matched σ' (§7), as the step that the low size's shift pairs with it."""
        flow = FlowSchedule().match(self._unit(t), k, mode)
        step = time_shift(flow.time, 1.0 / self.low_shift(k))
        return flow._replace(time=self.time_scale * step)
