"""The upsample-guidance kernel (paper Eq. 10, generalised; ug-math §4-§7) and its entry point.

Every adapter ends in :func:`upsample_guidance`; :class:`UpsampleGuidance` prepares its inputs
(time and power matching, the scale over time, the one low-resolution model call) for a model
``model(x, t, *args, **kwargs) -> prediction``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from .branch import BranchParallel
from .operators import block_size, check_divisible, downsample, normalize_factors, upsample
from .parameterizations import guidance_coefficients, normalize_prediction
from .scales import ScaleLike, StepScale, check_eta, check_scale, weights_at
from .schedules import TIME_MATCHING, DiscreteSchedule, Schedule, as_device_times, as_times

__all__ = ["upsample_guidance", "UpsampleGuidance", "BELOW_RANGE", "DEVICE_TIME", "LowResInputs"]

#: What happens where the matched time falls below the schedule's first time:
#: ``"clamp"`` evaluates the low-resolution model at the first time (its input keeps the exact
#: power scale, so it is slightly less noisy than the model assumes: a negligible mismatch at the
#: clean end), ``"skip"`` switches the guidance off for that element, ``"error"`` raises.
BELOW_RANGE = ("clamp", "skip", "error")

#: What a time on an accelerator with no ``host_time`` does when w may vary with it:
#: ``"compute"`` computes the guidance on the device and makes the low call at every step (w = 0
#: elements keep the plain prediction; no device-to-host copy), ``"read"`` copies the time to the
#: host once per call (a synchronisation) so that steps with w = 0 make no low call.
DEVICE_TIME = ("compute", "read")

#: ``low_res_inputs(args, kwargs, factors) -> (args, kwargs)``: adapts the extra model inputs to the
#: low-resolution call (e.g. ControlNet residuals or per-frame embeddings). Default: unchanged.
LowResInputs = Callable[[tuple, dict, tuple], tuple[tuple, dict]]

_HALF = (torch.float16, torch.bfloat16)

#: A per-batch-element coefficient: a Python float when the whole batch shares it, else a tensor.
Coefficient = float | torch.Tensor


def _moved(v: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``v`` in ``dtype`` on ``device``, copied asynchronously only if it is elsewhere."""
    if v.device == device:
        return v.to(dtype=dtype)
    return v.to(device=device, dtype=dtype, non_blocking=True)


def _per_sample(v: Coefficient, like: torch.Tensor) -> Coefficient:
    """A coefficient shaped to broadcast against ``like``: floats stay floats (no copy)."""
    if not isinstance(v, torch.Tensor):
        return float(v)
    v = _moved(v, like.device, like.dtype)
    return v.reshape(v.shape + (1,) * (like.ndim - v.ndim)) if v.ndim else v


def upsample_guidance(
    pred: torch.Tensor,
    pred_low: torch.Tensor,
    x_down: torch.Tensor,
    weight: Coefficient,
    r: Coefficient,
    q: Coefficient,
    factors: Sequence[int],
) -> torch.Tensor:
    """The guided prediction ``p + w·U[r·p_low − D[p] + q·D[x]]`` (Eq. 10 for ε: r = 1/√k, q = 0).

    ``pred`` is the model's prediction at the high resolution, ``pred_low`` its prediction on the
    low-resolution input, ``x_down = D[x]`` the block mean of the noisy input, and ``weight``,
    ``r``, ``q`` are floats or one value per batch element, on the host or on ``pred``'s device
    (see :func:`ug_core.parameterizations.guidance_coefficients`). Half-precision inputs are
    combined in float32; the result has ``pred``'s dtype and device.
    """
    factors = normalize_factors(factors)
    work = torch.float32 if pred.dtype in _HALF else pred.dtype
    p = pred.to(work)
    w, r, q = (_per_sample(v, p) for v in (weight, r, q))
    delta = r * pred_low.to(work) - downsample(p, factors) + q * x_down.to(work)
    return (p + w * upsample(delta, factors)).to(pred.dtype)


def _host_readable(t: Any) -> bool:
    """Whether reading ``t``'s values costs no device synchronisation (a number or a CPU tensor)."""
    return not isinstance(t, torch.Tensor) or t.device.type == "cpu"


def _compact(v: torch.Tensor) -> Coefficient:
    """A host tensor as one float when all its values are equal, else the tensor itself."""
    flat = v.reshape(-1)
    return float(flat[0]) if flat.numel() == 1 or bool((flat == flat[0]).all()) else v


def _time_like(tau: torch.Tensor, t: Any, integral: bool) -> Any:
    """The matched time in the form the caller gave ``t``: number, 0-d or 1-d tensor.

    ``tau`` holds the matched times (on the host, or on ``t``'s device); ``integral`` says
    whether they are whole numbers, so that an integer ``t`` gets an integer time back.
    """
    if isinstance(t, torch.Tensor):
        dtype = t.dtype if (t.is_floating_point() or integral) else torch.float32
        if not integral or t.is_floating_point():
            out = tau
        else:
            out = tau.round()
        if out.device != t.device:
            single = _compact(out)
            if not isinstance(single, torch.Tensor):
                return torch.full(t.shape, single, dtype=dtype, device=t.device)
        moved = _moved(out, t.device, dtype)
        if moved.numel() == t.numel():
            return moved.reshape(t.shape)
        return moved.reshape(()).expand(t.shape)
    value = float(tau.reshape(-1)[0])
    return int(round(value)) if isinstance(t, numbers.Integral) and integral else value


class Prepared(NamedTuple):
    """A guided call before the model runs (see :meth:`UpsampleGuidance.prepare`)."""

    w: Coefficient
    """w: a float, or one per batch element."""
    t_low: Any
    """The low-resolution call's time, in the form the caller gave t."""
    r: Coefficient
    q: Coefficient
    mixed: bool
    """Whether some elements have w == 0 (they keep the plain prediction)."""
    x_down: torch.Tensor | None
    """D[x] (None on the low process of a branch-parallel call)."""
    x_low: torch.Tensor
    """The low-resolution input c·D[x]."""


def _check_prediction(pred: Any) -> None:
    """A TypeError unless the model returned a tensor."""
    if not isinstance(pred, torch.Tensor):
        raise TypeError(
            f"the model must return a tensor, got {type(pred).__name__}; adapt its output "
            "(e.g. return_dict=False) before wrapping"
        )


def _high_shape(x_low: torch.Tensor, factors: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of x whose low-resolution input is ``x_low``."""
    lead = x_low.shape[: x_low.ndim - len(factors)]
    trailing = x_low.shape[len(lead) :]
    return tuple(lead) + tuple(n * f for n, f in zip(trailing, factors, strict=True))


class UpsampleGuidance:
    """Upsample guidance for a model trained at a lower resolution.

    ``schedule`` is a :class:`~ug_core.DiscreteSchedule`, :class:`~ug_core.SigmaSchedule` or
    :class:`~ug_core.FlowSchedule` (any :class:`~ug_core.schedules.Schedule`), in the time unit the
    model takes. ``factors`` are the integer upsampling factors of the trailing axes. ``scale`` is
    w: a float, a callable of the time fraction in [0, 1] (1 = noisiest), or a
    :func:`~ug_core.step_scale`. ``eta`` gates it as in the paper's Eq. 11: guidance is on during
    the noisiest ``eta`` of the time axis (``step_scale(θ, η)`` is the same as ``scale=θ, eta=η``).
    ``prediction`` is what the model returns (epsilon, sample, v_prediction or flow).
    ``time_matching`` is ``"nearest"`` (paper, appendix A), ``"exact"`` (fractional τ), or
    ``"off"`` (ablation). ``match_power=False`` drops the 1/√P input scale (ablation only).
    ``below_range`` is one of :data:`BELOW_RANGE`.

    ``device_time`` (one of :data:`DEVICE_TIME`) is what a time on an accelerator does when no
    ``host_time`` is given and w depends on it. ``branch_parallel`` (a
    :class:`~ug_core.branch.BranchParallel` or a ``torch.distributed`` group of two) makes the
    low-resolution call on the other process. The low-resolution prediction is read at its
    input's actual coefficients ``(c·a(t), c·s(t)/√k)``. Why, and how the host and device paths
    work: ``docs/design.md``.

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
        device_time: str = "compute",
        branch_parallel: Any = None,
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
        if device_time not in DEVICE_TIME:
            raise ValueError(f"device_time must be one of {DEVICE_TIME}, got {device_time!r}")
        scale, eta = check_scale(scale), check_eta(eta)
        if isinstance(scale, StepScale):  # one gate: step_scale(θ, η) is scale=θ, eta=η
            if eta != 1.0 and scale.eta != 1.0:
                raise ValueError(
                    f"eta is given twice: eta={eta!r} and scale={scale!r}; pass the gate once"
                )
            scale, eta = scale.theta, scale.eta if eta == 1.0 else eta
        self.schedule = schedule
        self.factors = normalize_factors(factors)
        self.k = block_size(self.factors)
        self.scale = scale
        self.eta = eta
        self.prediction = normalize_prediction(prediction)
        self.time_matching = time_matching
        self.below_range = below_range
        self.match_power = bool(match_power)
        self.device_time = device_time
        self._memo: dict[float, tuple] = {}  # host time -> (w, τ, integral, c, r, q, below)
        if branch_parallel is None or isinstance(branch_parallel, BranchParallel):
            self.branch = branch_parallel
        else:  # a torch.distributed process group of two
            self.branch = BranchParallel(branch_parallel)

    def __repr__(self) -> str:
        return (
            f"UpsampleGuidance({type(self.schedule).__name__}, factors={self.factors}, "
            f"scale={self.scale!r}, eta={self.eta}, prediction={self.prediction!r}, "
            f"time_matching={self.time_matching!r})"
        )

    @property
    def never_on(self) -> bool:
        """True when w is 0 at every time (``scale=0`` or ``eta=0``): no low call is ever made."""
        return self.eta == 0.0 or (not callable(self.scale) and self.scale == 0.0)

    @property
    def constant_weight(self) -> bool:
        """True when w is the same at every time (a constant scale, ``eta=1``, clamped τ)."""
        return not callable(self.scale) and self.eta == 1.0 and self.below_range == "clamp"

    def weight(self, t: Any) -> torch.Tensor:
        """w at model time(s) t, float64 on the CPU (after checking that t lies in the schedule)."""
        times = as_times(t)
        self.schedule.check_times(times)
        return weights_at(self.scale, self.eta, self.schedule.time_fraction(times))

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
        host_time: Any = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """One guided prediction: ``model(x, t, *args, **kwargs)`` plus the guidance term.

        With ``branch_parallel``, the high process makes the high call and the low process the
        low call; both return the guided prediction.
        """
        prepared = self.prepare(x, t, host_time=host_time)
        if self.branch is not None and self.branch.role == "low":
            if prepared is not None:
                self.low_call(prepared, model, args, kwargs, low_res_inputs)
            return self.branch.share(None, x.device)
        pred = model(x, t, *args, **kwargs)
        out = pred
        if prepared is not None:
            out = self.finish(prepared, pred, model, args, kwargs, low_res_inputs)
        if self.branch is not None:
            self.branch.share(out, out.device)
        return out

    def apply(
        self,
        pred: torch.Tensor,
        model: Callable[..., torch.Tensor],
        x: torch.Tensor,
        t: Any,
        /,
        *args: Any,
        low_res_inputs: LowResInputs | None = None,
        host_time: Any = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Guide a prediction the caller already has: ``pred = model(x, t, *args, **kwargs)``.

        ``model`` is then called only for the low-resolution branch: once for the whole batch,
        and not at all where w == 0 is known on the host (the plain ``pred`` is returned).
        ``host_time`` is the value of ``t`` as the host knows it (a number, or one per batch
        element), given by adapters that know the sampler's times, so that ``t`` itself is never
        read. ``low_res_inputs(args, kwargs, factors)`` adapts the other inputs for the low call.
        The same as :meth:`prepare` then :meth:`finish`.
        """
        _check_prediction(pred)
        prepared = self.prepare(x, t, host_time=host_time)
        if prepared is None:
            return pred
        return self.finish(prepared, pred, model, args, kwargs, low_res_inputs)

    def prepare(self, x: torch.Tensor, t: Any, *, host_time: Any = None) -> Prepared | None:
        """What a guided call needs before the model runs, or None where w == 0 (host-known).

        Computes the low-resolution input ``c·D[x]`` and the kernel's coefficients; with
        ``branch_parallel`` the high process sends that input and the low process receives it.
        """
        self.check_input(x, t)
        if self.never_on:
            return None
        value, times = self._host_times(t, host_time)
        if value is not None:
            params = self._scalar_params(value, t)
        else:
            if times is not None:
                self.schedule.check_times(times)
            params = self._params(t, times)
        if params is None:
            return None
        w, t_low, c, r, q, mixed = params
        if self.branch is not None and self.branch.role == "low":
            lead, trailing = x.shape[: x.ndim - len(self.factors)], x.shape[-len(self.factors) :]
            low_shape = lead + tuple(n // f for n, f in zip(trailing, self.factors, strict=True))
            x_low = self.branch.low_input(torch.empty(low_shape, dtype=x.dtype, device=x.device))
            return Prepared(w, t_low, r, q, mixed, None, x_low)
        x_down = downsample(x, self.factors)
        work = torch.float32 if x.dtype in _HALF else x.dtype
        x_low = (x_down.to(work) * _per_sample(c, x_down.to(work))).to(x.dtype)
        if self.branch is not None:
            self.branch.low_input(x_low)
        return Prepared(w, t_low, r, q, mixed, x_down, x_low)

    def low_call(
        self,
        prepared: Prepared,
        model: Callable[..., torch.Tensor],
        args: tuple = (),
        kwargs: dict | None = None,
        low_res_inputs: LowResInputs | None = None,
    ) -> torch.Tensor:
        """The low-resolution model call of a prepared call (sent on, with ``branch_parallel``)."""
        kwargs = kwargs or {}
        low_args, low_kwargs = (
            low_res_inputs(args, kwargs, self.factors) if low_res_inputs else (args, kwargs)
        )
        x_low = prepared.x_low
        pred_low = model(x_low, prepared.t_low, *low_args, **low_kwargs)
        if not isinstance(pred_low, torch.Tensor) or pred_low.shape != x_low.shape:
            raise ValueError(
                f"the low-resolution call returned {getattr(pred_low, 'shape', type(pred_low))}, "
                f"expected a tensor of shape {tuple(x_low.shape)}"
            )
        if self.branch is not None:
            self.branch.low_prediction(pred_low)
        return pred_low

    def finish(
        self,
        prepared: Prepared,
        pred: torch.Tensor,
        model: Callable[..., torch.Tensor],
        args: tuple = (),
        kwargs: dict | None = None,
        low_res_inputs: LowResInputs | None = None,
    ) -> torch.Tensor:
        """The guided prediction of a prepared call, from the model's own ``pred``.

        Makes the low call (or, with ``branch_parallel``, receives its prediction).
        """
        _check_prediction(pred)
        expected = _high_shape(prepared.x_low, self.factors)
        if tuple(pred.shape) != expected:
            raise ValueError(
                f"the model's prediction has shape {tuple(pred.shape)}, but x has shape "
                f"{expected}; guidance needs a prediction shaped like its input"
            )
        if self.branch is not None:
            pred_low = self.branch.low_prediction(torch.empty_like(prepared.x_low))
        else:
            pred_low = self.low_call(prepared, model, args, kwargs, low_res_inputs)
        guided = upsample_guidance(
            pred, pred_low, prepared.x_down, prepared.w, prepared.r, prepared.q, self.factors
        )
        if not prepared.mixed:
            return guided
        w = prepared.w
        on = _moved(w, pred.device, w.dtype) != 0
        return torch.where(on.reshape(on.shape + (1,) * (pred.ndim - on.ndim)), guided, pred)

    def _host_times(self, t: Any, host_time: Any) -> tuple[float | None, torch.Tensor | None]:
        """The time on the host: one value shared by the batch, or a tensor, or neither.

        ``(value, None)`` when the batch shares one host time, ``(None, times)`` for several,
        ``(None, None)`` for the device path.
        """
        source = host_time if host_time is not None else t
        if host_time is None and not (
            _host_readable(t) or (self.device_time == "read" and not self.constant_weight)
        ):
            return None, None
        if isinstance(source, numbers.Real) and not isinstance(source, bool):
            return float(source), None
        times = as_times(source, "host_time" if host_time is not None else "t")
        flat = times.reshape(-1)
        if flat.numel() == 1 or bool((flat == flat[0]).all()):
            return float(flat[0]), None
        return None, times

    def precompute(self, times: Any) -> None:
        """Compute the guidance's values at these host times (model unit) once, for later calls.

        Adapters that know a sampler's times (the diffusers adapter, from the scheduler) call it
        before sampling, so that each guided call only looks its values up.
        """
        times = as_times(times, "times").reshape(-1)
        self.schedule.check_times(times)
        self._remember(times)

    def _remember(self, times: torch.Tensor) -> None:
        """Store ``(w, τ, τ integral, c, r, q, below)`` per host time (float64 maths, batched)."""
        if len(self._memo) > 4096:
            self._memo.clear()
        w = weights_at(self.scale, self.eta, self.schedule.time_fraction(times))
        match = self.schedule.match(times, self.k, self.time_matching)
        c = match.scale if self.match_power else torch.ones_like(match.scale)
        a, s = self.schedule.coefficients(times)
        r, q = guidance_coefficients(self.prediction, a, s, c, self.k)
        integral = match.time == match.time.round()
        rows = zip(
            times.tolist(), w.tolist(), match.time.tolist(), integral.tolist(), c.tolist(),
            r.tolist(), q.tolist(), match.below.tolist(), strict=True,
        )  # fmt: skip
        for value, *entry in rows:
            self._memo[value] = tuple(entry)

    def skips(self, value: float) -> bool:
        """Whether a call at this host time (model unit) is left unguided (w == 0 there)."""
        if self.never_on:
            return True
        entry = self._memo.get(value)
        if entry is None:
            self.precompute([value])
            entry = self._memo[value]
        return entry[0] == 0.0 or (entry[6] and self.below_range == "skip")

    def _scalar_params(self, value: float, t: Any) -> tuple | None:
        """``_params`` for a batch that shares one host time, from the per-time memo."""
        entry = self._memo.get(value)
        if entry is None:
            times = torch.tensor([value], dtype=torch.float64)
            self.schedule.check_times(times)
            self._remember(times)
            entry = self._memo[value]
        w, tau, integral, c, r, q, below = entry
        if w == 0.0:
            return None
        if below and self.below_range == "error":
            raise ValueError(
                f"the matched time for t={value!r} falls below the schedule's range (factors "
                f"{self.factors}, k={self.k}); pass below_range='clamp' or 'skip' to allow it"
            )
        if below and self.below_range == "skip":
            return None
        if self.time_matching == "off":
            t_low = t
        else:
            t_low = _time_like(torch.tensor(tau, dtype=torch.float64), t, integral)
        return w, t_low, c, r, q, False

    def _params(self, t: Any, times: torch.Tensor | None) -> tuple | None:
        """``(w, t_low, c, r, q, mixed)`` for the low call and the kernel, or None if w == 0.

        ``times`` is ``t`` on the host (float64), or None for the device path, where everything
        is computed from ``t`` on its device. ``mixed`` says whether some elements keep the plain
        prediction (w == 0 there).
        """
        on_host = times is not None
        tt = times if on_host else as_device_times(t)
        w = weights_at(self.scale, self.eta, self.schedule.time_fraction(tt))
        if on_host and not bool((w != 0).any()):
            return None
        match = self.schedule.match(tt, self.k, self.time_matching)
        if self.below_range == "error" and bool(match.below.any()):
            first = (times if on_host else tt.cpu())[match.below.cpu()].flatten()[0].item()
            raise ValueError(
                f"the matched time for t={first!r} falls below the schedule's range (factors "
                f"{self.factors}, k={self.k}); pass below_range='clamp' or 'skip' to allow it"
            )
        if self.below_range == "skip":
            w = torch.where(match.below, torch.zeros_like(w), w)
            if on_host and not bool((w != 0).any()):
                return None
        c = match.scale if self.match_power else torch.ones_like(match.scale)
        a, s = self.schedule.coefficients(tt)
        r, q = guidance_coefficients(self.prediction, a, s, c, self.k)
        if self.time_matching == "off":
            t_low = t
        else:
            integral = (
                bool((match.time == match.time.round()).all())
                if on_host
                else isinstance(self.schedule, DiscreteSchedule) and self.time_matching == "nearest"
            )
            t_low = _time_like(match.time, t, integral)
        if not on_host:
            return w, t_low, c, r, q, not self.constant_weight
        mixed = bool((w == 0).any())
        w, c, r, q = (_compact(v) for v in (w, c, r, q))
        return w, t_low, c, r, q, mixed

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
