"""The upsample-guidance kernel (paper Eq. 10, generalised; ug-math §4-§7) and its entry point.

Every adapter ends in :func:`upsample_guidance`; :class:`UpsampleGuidance` prepares its inputs
(time and power matching, the scale over time, the one low-resolution model call) for a model
``model(x, t, *args, **kwargs) -> prediction``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .operators import block_size, check_divisible, downsample, normalize_factors, upsample
from .parameterizations import guidance_coefficients, normalize_prediction
from .scales import ScaleLike, check_scale, weights_at
from .schedules import TIME_MATCHING, Schedule, as_times

__all__ = ["upsample_guidance", "UpsampleGuidance", "BELOW_RANGE", "LowResInputs"]

#: What happens where the matched time falls below the schedule's first time:
#: ``"clamp"`` evaluates the low-resolution model at the first time (its input keeps the exact
#: power scale, so it is slightly less noisy than the model assumes: a negligible mismatch at the
#: clean end), ``"skip"`` switches the guidance off for that element, ``"error"`` raises.
BELOW_RANGE = ("clamp", "skip", "error")

#: ``low_res_inputs(args, kwargs, factors) -> (args, kwargs)``: adapts the extra model inputs to the
#: low-resolution call (e.g. ControlNet residuals or per-frame embeddings). Default: unchanged.
LowResInputs = Callable[[tuple, dict, tuple], tuple[tuple, dict]]

_HALF = (torch.float16, torch.bfloat16)


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A scalar or per-batch-element tensor shaped to broadcast against ``like``, in its dtype."""
    v = v.to(device=like.device, dtype=like.dtype)
    return v.reshape(v.shape + (1,) * (like.ndim - v.ndim)) if v.ndim else v


def upsample_guidance(
    pred: torch.Tensor,
    pred_low: torch.Tensor,
    x_down: torch.Tensor,
    weight: torch.Tensor | float,
    r: torch.Tensor | float,
    q: torch.Tensor | float,
    factors: Sequence[int],
) -> torch.Tensor:
    """The guided prediction ``p + w·U[r·p_low − D[p] + q·D[x]]`` (Eq. 10 for ε: r = 1/√k, q = 0).

    ``pred`` is the model's prediction at the high resolution, ``pred_low`` its prediction on the
    low-resolution input, ``x_down = D[x]`` the block mean of the noisy input, and ``weight``,
    ``r``, ``q`` are scalars or one value per batch element (see
    :func:`ug_core.parameterizations.guidance_coefficients`). Half-precision inputs are combined in
    float32; the result has ``pred``'s dtype and device.
    """
    factors = normalize_factors(factors)
    work = torch.float32 if pred.dtype in _HALF else pred.dtype
    p = pred.to(work)
    w, r, q = (torch.as_tensor(v, dtype=torch.float64) for v in (weight, r, q))
    w, r, q = (_per_sample(v, p) for v in (w, r, q))
    delta = r * pred_low.to(work) - downsample(p, factors) + q * x_down.to(work)
    return (p + w * upsample(delta, factors)).to(pred.dtype)


def _time_like(tau: torch.Tensor, t: Any) -> Any:
    """The matched time in the form the caller gave ``t``: number, 0-d or 1-d tensor."""
    integral = bool((tau == tau.round()).all())
    if isinstance(t, torch.Tensor):
        if t.is_floating_point():
            dtype = t.dtype
        elif integral:
            dtype = t.dtype
        else:
            dtype = torch.float32
        return tau.to(device=t.device, dtype=dtype).reshape(t.shape)
    value = tau.item()
    return int(round(value)) if isinstance(t, numbers.Integral) and integral else value


class UpsampleGuidance:
    """Upsample guidance for a model trained at a lower resolution.

    ``schedule`` is a :class:`~ug_core.DiscreteSchedule`, :class:`~ug_core.SigmaSchedule` or
    :class:`~ug_core.FlowSchedule` (any :class:`~ug_core.schedules.Schedule`), in the time unit the
    model takes. ``factors`` are the integer upsampling factors of the trailing axes. ``scale`` is
    w: a float, or a callable of the time fraction in [0, 1] (1 = noisiest). ``eta`` gates it as in
    the paper's Eq. 11: guidance is on during the noisiest ``eta`` of the time axis.
    ``prediction`` is what the model returns (epsilon, sample, v_prediction or flow).
    ``time_matching`` is ``"nearest"`` (paper, appendix A), ``"exact"`` (fractional τ), or
    ``"off"`` (ablation). ``match_power=False`` drops the 1/√P input scale (ablation only).
    ``below_range`` is one of :data:`BELOW_RANGE`.

    The low-resolution prediction is read at the coefficients its input actually has,
    ``(c·a(t), c·s(t)/√k)``. With exact matching these are the coefficients of τ. With
    ``"nearest"`` (τ rounded to a timestep) or a clamped τ they differ slightly from τ's; reading
    them this way makes the ε form exactly the paper's Eq. 10.

    Example::

        guide = UpsampleGuidance(DiscreteSchedule(alphas_cumprod), factors=(2, 2), scale=1.0)
        eps = guide.wrap(model)(x_t, t)
    """

    def __init__(
        self,
        schedule: Schedule,
        factors: int | Sequence[int] = (2, 2),
        scale: ScaleLike = 1.0,
        prediction: str = "epsilon",
        time_matching: str = "nearest",
        *,
        eta: float = 1.0,
        below_range: str = "clamp",
        match_power: bool = True,
    ) -> None:
        if not isinstance(schedule, Schedule):
            raise TypeError(
                "schedule must be a DiscreteSchedule, SigmaSchedule, FlowSchedule or provide "
                f"check_times/coefficients/time_fraction/match, got {type(schedule).__name__}"
            )
        if time_matching not in TIME_MATCHING:
            raise ValueError(f"time_matching must be one of {TIME_MATCHING}, got {time_matching!r}")
        if below_range not in BELOW_RANGE:
            raise ValueError(f"below_range must be one of {BELOW_RANGE}, got {below_range!r}")
        self.schedule = schedule
        self.factors = normalize_factors(factors)
        self.k = block_size(self.factors)
        self.scale = check_scale(scale)
        weights_at(self.scale, eta, torch.zeros(0))  # validates eta
        self.eta = float(eta)
        self.prediction = normalize_prediction(prediction)
        self.time_matching = time_matching
        self.below_range = below_range
        self.match_power = bool(match_power)

    def __repr__(self) -> str:
        return (
            f"UpsampleGuidance({type(self.schedule).__name__}, factors={self.factors}, "
            f"scale={self.scale!r}, eta={self.eta}, prediction={self.prediction!r}, "
            f"time_matching={self.time_matching!r})"
        )

    def weight(self, t: Any) -> torch.Tensor:
        """w at model time(s) t, float64 (after checking that t lies in the schedule)."""
        times = as_times(t)
        self.schedule.check_times(times)
        return weights_at(self.scale, self.eta, self.schedule.time_fraction(times))

    def low_res_time(
        self, t: Any, times: torch.Tensor | None = None
    ) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """The low-resolution call's time (shaped like ``t``), its input scale and its validity.

        The validity is False where the matched time fell below the schedule and ``below_range``
        is ``"skip"``.
        """
        times = as_times(t) if times is None else times
        match = self.schedule.match(times, self.k, self.time_matching)
        if match.below.any() and self.below_range == "error":
            raise ValueError(
                f"the matched time for t={times[match.below].flatten()[0].item()!r} falls below "
                f"the schedule's range (factors {self.factors}, k={self.k}); pass "
                "below_range='clamp' or 'skip' to allow it"
            )
        valid = ~match.below if self.below_range == "skip" else torch.ones_like(match.below)
        return _time_like(match.time, t), match.scale, valid

    def check_input(self, x: torch.Tensor, t: Any) -> None:
        """Raise a clear error for a non-tensor input, too many factors, undivided sizes or t."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if len(self.factors) > x.ndim - 1:
            raise ValueError(
                f"{len(self.factors)} factors {self.factors} for x of shape {tuple(x.shape)}: "
                f"at most {x.ndim - 1} trailing axes can be upsampled (axis 0 is the batch)"
            )
        check_divisible(x.shape, self.factors, "x")
        if isinstance(t, torch.Tensor) and t.ndim > 0 and t.numel() not in (1, x.shape[0]):
            raise ValueError(
                f"t must be a number or hold 1 or batch-size ({x.shape[0]}) values, got shape "
                f"{tuple(t.shape)}"
            )

    def __call__(
        self,
        model: Callable[..., torch.Tensor],
        x: torch.Tensor,
        t: Any,
        /,
        *args: Any,
        low_res_inputs: LowResInputs | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """One guided prediction: ``model(x, t, ...)`` plus the upsample-guidance term.

        The whole batch goes through one low-resolution call, made only where w != 0; where
        w == 0 the model's own output is returned unchanged.
        """
        self.check_input(x, t)
        times = as_times(t)  # the one device-to-host copy of t per call
        w = self.weight(times)
        pred = model(x, t, *args, **kwargs)
        return self._guide(pred, w, times, model, x, t, args, kwargs, low_res_inputs)

    def apply(
        self,
        pred: torch.Tensor,
        model: Callable[..., torch.Tensor],
        x: torch.Tensor,
        t: Any,
        /,
        *args: Any,
        low_res_inputs: LowResInputs | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Guide a prediction the caller already has: ``pred = model(x, t, *args, **kwargs)``.

        For adapters that see the high-resolution output first (e.g. a forward hook); ``model``
        is then called only for the low-resolution branch. Same result as :meth:`__call__`.
        """
        self.check_input(x, t)
        times = as_times(t)
        return self._guide(
            pred, self.weight(times), times, model, x, t, args, kwargs, low_res_inputs
        )

    def _guide(
        self,
        pred: torch.Tensor,
        w: torch.Tensor,
        times: torch.Tensor,
        model: Callable[..., torch.Tensor],
        x: torch.Tensor,
        t: Any,
        args: tuple,
        kwargs: dict,
        low_res_inputs: LowResInputs | None,
    ) -> torch.Tensor:
        """The low-resolution call and the kernel, for a known prediction, weights w and times.

        ``times`` is ``t`` as a float64 CPU tensor; ``t`` itself only shapes the low call's time.
        """
        if not isinstance(pred, torch.Tensor):
            raise TypeError(
                f"the model must return a tensor, got {type(pred).__name__}; adapt its output "
                "(e.g. return_dict=False) before wrapping"
            )
        if not bool((w != 0).any()):
            return pred
        if pred.shape != x.shape:
            raise ValueError(
                f"the model's prediction has shape {tuple(pred.shape)}, but x has shape "
                f"{tuple(x.shape)}; guidance needs a prediction shaped like its input"
            )
        t_low, c, valid = self.low_res_time(t, times)
        w = torch.where(valid, w, torch.zeros_like(w))
        if not bool((w != 0).any()):
            return pred
        x_down = downsample(x, self.factors)
        c_in = c if self.match_power else torch.ones_like(c)
        work = torch.float32 if x.dtype in _HALF else x.dtype
        x_low = (x_down.to(work) * _per_sample(c_in, x_down.to(work))).to(x.dtype)
        if self.time_matching == "off":
            t_low = t
        low_args, low_kwargs = (
            low_res_inputs(args, kwargs, self.factors) if low_res_inputs else (args, kwargs)
        )
        pred_low = model(x_low, t_low, *low_args, **low_kwargs)
        if not isinstance(pred_low, torch.Tensor) or pred_low.shape != x_low.shape:
            raise ValueError(
                f"the low-resolution call returned {getattr(pred_low, 'shape', type(pred_low))}, "
                f"expected a tensor of shape {tuple(x_low.shape)}"
            )
        a, s = self.schedule.coefficients(times)
        r, q = guidance_coefficients(self.prediction, a, s, c, self.k)
        guided = upsample_guidance(pred, pred_low, x_down, w, r, q, self.factors)
        if w.ndim == 0 or bool((w != 0).all()):
            return guided
        on = (w != 0).to(pred.device).reshape(w.shape + (1,) * (pred.ndim - 1))
        return torch.where(on, guided, pred)

    def wrap(
        self, model: Callable[..., torch.Tensor], low_res_inputs: LowResInputs | None = None
    ) -> Callable[..., torch.Tensor]:
        """``model`` with upsample guidance: a callable with the same ``(x, t, ...)`` signature."""
        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}")

        def guided(x: torch.Tensor, t: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
            """The upsample-guided model."""
            return self(model, x, t, *args, low_res_inputs=low_res_inputs, **kwargs)

        guided.__wrapped__ = model  # type: ignore[attr-defined]
        guided.guidance = self  # type: ignore[attr-defined]
        return guided
