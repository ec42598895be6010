"""The upsample-guidance kernel (paper Eq. 10, generalised; ``docs/maths.md``) and its entry point.

Every adapter ends in :func:`upsample_guidance`; :class:`UpsampleGuidance` prepares its inputs
(time and power matching, the scale over time, the one low-resolution model call) for a model
``model(x, t, *args, **kwargs) -> prediction``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from .branch import BranchParallel, Local
from .config import (
    BELOW_RANGE,
    DEVICE_TIME,
    MIXED_TIMES,
    UpsampleGuidanceConfig,
    resolve_config,
)
from .factors import block_size, check_divisible, format_factors
from .operators import downsample, top_up_noise, unwhiten, upsample, whiten
from .parameterizations import guidance_coefficients, normalize_prediction, top_up_coefficient
from .scales import ScaleLike, weights_at
from .schedules import DiscreteSchedule, Schedule, as_device_times, as_times

__all__ = [
    "upsample_guidance",
    "UpsampleGuidance",
    "BELOW_RANGE",
    "DEVICE_TIME",
    "MIXED_TIMES",
    "LowResInputs",
    "TopUpNoise",
    "pool_time_map",
]

#: ``low_res_inputs(args, kwargs, factors) -> (args, kwargs)``: adapts the extra model inputs to the
#: low-resolution call (e.g. ControlNet residuals or per-frame embeddings). Default: unchanged.
LowResInputs = Callable[[tuple, dict, tuple], tuple[tuple, dict]]

_HALF = (torch.float16, torch.bfloat16)

#: A coefficient: a Python float when every element shares it, else a tensor (one per batch
#: element, or a map broadcastable to the low-resolution sample).
Coefficient = float | torch.Tensor


def _moved(v: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``v`` in ``dtype`` on ``device``, copied asynchronously only if it is elsewhere."""
    if v.device == device:
        return v.to(dtype=dtype)
    return v.to(device=device, dtype=dtype, non_blocking=True)


def _broadcastable(v: Coefficient, like: torch.Tensor) -> Coefficient:
    """A coefficient shaped to broadcast against ``like``: floats stay floats (no copy).

    A tensor with ``like``'s number of axes is a map and is kept; one value per batch element
    gets trailing axes of size 1.
    """
    if not isinstance(v, torch.Tensor):
        return float(v)
    v = _moved(v, like.device, like.dtype)
    if v.ndim in (0, like.ndim):
        return v
    return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))


def upsample_guidance(
    pred: torch.Tensor,
    pred_low: torch.Tensor,
    x_down: torch.Tensor,
    weight: Coefficient,
    r: Coefficient,
    q: Coefficient,
    factors: Sequence[Any],
    top_up: torch.Tensor | None = None,
) -> torch.Tensor:
    """The guided prediction ``p + w·U[r·p_low − D[p] + q·D[x] (+ z·ζ)]`` (Eq. 10 for ε).

    ``pred`` is the model's prediction at the high resolution, ``pred_low`` its prediction on the
    low-resolution input ``c·D[x]`` (for ε, ``r = 1/√k`` and ``q = 0``), ``x_down = D[x]`` the
    area mean of the noisy input, and ``weight``, ``r``, ``q`` are floats, one value per batch
    element, or maps at the low resolution, on the host or on ``pred``'s device
    (:func:`ug_core.parameterizations.guidance_coefficients`). ``top_up``: for a ratio factor
    whose low input was topped up to ``c·(D[x] + s·ζ)``, the term ``z·ζ`` that takes ζ back out
    (:func:`ug_core.parameterizations.top_up_coefficient`). Where w is 0 the prediction is kept.
    Half-precision inputs are combined in float32; the result has ``pred``'s dtype and device.
    """
    work = torch.float32 if pred.dtype in _HALF else pred.dtype
    p = pred.to(work)
    low = pred_low.to(work)
    w, r, q = (_broadcastable(v, low) for v in (weight, r, q))
    inner = r * low - downsample(p, factors) + q * x_down.to(work)
    delta = w * (inner if top_up is None else inner + top_up.to(work))
    if isinstance(w, torch.Tensor):  # elements with w = 0 keep the plain prediction
        delta = torch.where(w != 0, delta, 0.0)
    return (p + upsample(delta, factors)).to(pred.dtype)


def _host_readable(t: Any) -> bool:
    """Whether reading ``t``'s values costs no device synchronisation (a number or a CPU tensor)."""
    return not isinstance(t, torch.Tensor) or t.device.type == "cpu"


def _time_like(tau: Coefficient, t: Any, integral: bool, shape: tuple[int, ...]) -> Any:
    """The matched time in the form the caller gave ``t``: a number, or a tensor like ``t``.

    ``tau`` is one time or a tensor of them (on the host, or on ``t``'s device), shaped like the
    batch's times; ``shape`` is that of a time map at the low resolution (else ``t``'s).
    ``integral`` says whether they are whole numbers, so that an integer ``t`` gets an integer
    time back.
    """
    if not isinstance(t, torch.Tensor):
        value = float(tau) if not isinstance(tau, torch.Tensor) else float(tau.reshape(-1)[0])
        return int(round(value)) if isinstance(t, numbers.Integral) and integral else value
    dtype = t.dtype if (t.is_floating_point() or integral) else torch.float32
    if not isinstance(tau, torch.Tensor):
        value = round(tau) if integral and not t.is_floating_point() else tau
        return torch.full(shape, value, dtype=dtype, device=t.device)
    out = tau if (t.is_floating_point() or not integral) else tau.round()
    moved = _moved(out, t.device, dtype)
    if t.ndim <= 1:
        return moved.reshape(t.shape) if moved.numel() == t.numel() else moved.expand(t.shape)
    return moved


class Prepared(NamedTuple):
    """A guided call before the model runs (see :meth:`UpsampleGuidance.prepare`)."""

    w: Coefficient
    """w: a float, one per batch element, or a map at the low resolution."""
    t_low: Any
    """The low-resolution call's time, in the form the caller gave t."""
    r: Coefficient
    q: Coefficient
    x_down: torch.Tensor
    """D[x]: the area mean of the noisy input."""
    x_low: torch.Tensor
    """The low-resolution input ``c·D[x]`` (a ratio factor: plus ``c·s·ζ``, or whitened)."""
    x_shape: tuple[int, ...]
    """The shape of x (and of the prediction)."""
    top_up: torch.Tensor | None = None
    """``z·ζ``, the kernel's top-up term (ratio factors with ``ratio_noise="top-up"``), or None."""


class Entry(NamedTuple):
    """The guidance's values at one host time (model unit), memoised per time."""

    w: float
    tau: float
    integral: bool
    c: float
    r: float
    q: float
    below: bool
    noise: float
    z: float


class Coefficients(NamedTuple):
    """The guidance's values at a batch of times: floats when shared, else tensors like them."""

    w: Coefficient
    tau: Coefficient
    c: Coefficient
    r: Coefficient
    q: Coefficient
    below: Coefficient
    integral: bool
    shape: tuple[int, ...] = ()
    """The shape of the times: t's, or for a time map that of the map at the low resolution."""
    noise: Coefficient = 0.0
    """s at t: the top-up noise's coefficient in ``D[x] + s·ζ`` (ratio factors)."""
    z: Coefficient = 0.0
    """The top-up term's coefficient in the kernel (:func:`top_up_coefficient`)."""


class TopUpNoise:
    """The top-up noise ζ of one sampling run (ratio factors), shared by the guides that sample it.

    ζ ~ N(0, I/k − DDᵀ) (:func:`~ug_core.operators.top_up_noise`) is drawn once per sample and
    kept for the whole trajectory: then ``D[x] + s·ζ`` carries white noise of variance ``s²/k``
    at every step, as the trained-size sampler's input does, and the kernel takes ζ back out. A
    fresh ζ at every call is not exact (``docs/maths.md`` §13). A new run is recognised when the
    noise level rises (or the shape changes); :meth:`reset` starts one explicitly. Each sample's
    ζ is seeded from its own first input, so a run is reproducible from its initial noise and
    rows with equal inputs (the two halves of classifier-free guidance) share ζ.
    """

    def __init__(self) -> None:
        self._state: tuple[tuple, float, torch.Tensor] | None = None

    def reset(self) -> None:
        """Forget ζ: the next call starts a new trajectory."""
        self._state = None

    def draw(
        self, x: torch.Tensor, low_shape: tuple[int, ...], level: float, factors: Sequence[Any]
    ) -> torch.Tensor:
        """ζ of the trajectory ``x`` is on, at time fraction ``level``.

        On x's device; float64 for a float64 x, else float32.
        """
        key = (tuple(low_shape), x.device)
        state = self._state
        if state is None or state[0] != key or level > state[1]:
            head = x.detach().reshape(x.shape[0], -1)[:, :64].to("cpu", torch.float64)
            rows = []
            for row in head.tolist():  # one host read per trajectory
                gen = torch.Generator().manual_seed(hash(tuple(row)) & (2**63 - 1))
                rows.append(torch.randn(low_shape[1:], generator=gen, dtype=torch.float64))
            dtype = torch.float64 if x.dtype == torch.float64 else torch.float32  # MPS: no f64
            zeta = top_up_noise(torch.stack(rows), factors).to(x.device, dtype)
            state = (key, level, zeta)
        self._state = (key, level, state[2])
        return state[2]


def _check_prediction(pred: Any) -> None:
    """A TypeError unless the model returned a tensor."""
    if not isinstance(pred, torch.Tensor):
        raise TypeError(
            f"the model must return a tensor, got {type(pred).__name__}; adapt its output "
            "(e.g. return_dict=False) before wrapping"
        )


def _check_time_shape(t: Any, x: torch.Tensor, name: str) -> None:
    """A ValueError unless ``t`` is a number, one value per batch element, or a time map."""
    if not isinstance(t, torch.Tensor) or t.ndim == 0:
        return
    if t.ndim == 1:
        if t.numel() not in (1, x.shape[0]):
            raise ValueError(
                f"{name} must be a number, hold 1 or batch-size ({x.shape[0]}) values, or be a "
                f"time map shaped like x {tuple(x.shape)}; got shape {tuple(t.shape)}"
            )
        return
    fits = t.ndim == x.ndim and all(n in (1, m) for n, m in zip(t.shape, x.shape, strict=True))
    if not fits:
        raise ValueError(
            f"{name} of shape {tuple(t.shape)} is not a time map of x {tuple(x.shape)}: a time map "
            f"has x's {x.ndim} axes, each of x's size or 1 (broadcast); otherwise pass a number "
            "or one time per batch element"
        )


def _block_extremes(t: torch.Tensor, axis: int, factor: Any) -> tuple[torch.Tensor, ...]:
    """Per low-resolution element of one axis: the max, min and area mean of the times it covers."""
    from .operators import axis_matrices

    down = torch.as_tensor(axis_matrices(factor)["down"], dtype=t.dtype, device=t.device)
    rows, cols = down.shape
    moved = t.movedim(axis, -1)
    blocks = moved.reshape(*moved.shape[:-1], moved.shape[-1] // cols, 1, cols)
    covered = down > 0
    big = torch.finfo(t.dtype).max
    hi = torch.where(covered, blocks, -big).amax(-1)
    lo = torch.where(covered, blocks, big).amin(-1)
    mean = blocks.squeeze(-2) @ down.T
    return tuple(v.reshape(*moved.shape[:-1], -1).movedim(-1, axis) for v in (hi, lo, mean))


def pool_time_map(t: torch.Tensor, factors: Sequence[Any], mixed_times: str = "error") -> Any:
    """A time map at the low resolution: each element's time is that of the block it covers.

    ``t`` has the sample's axes, each of its size or 1. Axes of size 1 stay 1. Within a block,
    times that differ are a ValueError unless ``mixed_times`` (one of :data:`MIXED_TIMES`) says
    how to combine them (noisiest ``"max"``, cleanest ``"min"``, area ``"mean"``).
    """
    first = t.ndim - len(factors)
    out = t
    for axis, f in enumerate(factors, start=first):
        if f == 1 or out.shape[axis] == 1:
            continue
        hi, lo, mean = _block_extremes(out, axis, f)
        if mixed_times == "error":
            differs = hi != lo
            if bool(differs.any()):
                where = tuple(int(i) for i in differs.nonzero()[0])
                raise ValueError(
                    f"the time map has different times inside one block of the factors "
                    f"{format_factors(factors)} (axis {axis}, low element {where}: from "
                    f"{lo[where].item()!r} to {hi[where].item()!r}); pass mixed_times='max', "
                    "'min' or 'mean' to combine them, or factors that keep such times apart"
                )
            out = hi
        else:
            out = {"max": hi, "min": lo, "mean": mean}[mixed_times]
    return out


def _below_error(value: float, factors: Any, k: Any) -> ValueError:
    """The error for a matched time below the schedule's range (``below_range="error"``)."""
    return ValueError(
        f"the matched time for t={value!r} falls below the schedule's range (factors "
        f"{format_factors(factors)}, k={k}); pass below_range='clamp' or 'skip' to allow it"
    )


class UpsampleGuidance:
    """Upsample guidance for a model trained at a lower resolution.

    ``schedule`` is a :class:`~ug_core.DiscreteSchedule`, :class:`~ug_core.SigmaSchedule` or
    :class:`~ug_core.FlowSchedule` (any :class:`~ug_core.schedules.Schedule`), in the time unit the
    model takes, and ``prediction`` what the model returns (epsilon, sample, v_prediction or
    flow). The options are an :class:`~ug_core.UpsampleGuidanceConfig` (``config=``) or its
    fields as keyword arguments (the short form: ``factors``, ``scale``, ``eta``,
    ``time_matching``, ``below_range``, ``match_power``, ``device_time``, ``mixed_times``).

    ``branch_parallel`` (a :class:`~ug_core.branch.BranchParallel` or a ``torch.distributed``
    group of two) makes the low-resolution call on the other process. The low-resolution
    prediction is read at its input's actual coefficients ``(c·a(t), c·s(t)/√k)``. Why, and how
    the host and device paths work: ``docs/design.md``.

    Example::

        guide = UpsampleGuidance(DiscreteSchedule(alphas_cumprod), factors=(2, 2), scale=1.0)
        eps = guide.wrap(model)(x_t, t)
    """

    def __init__(
        self,
        schedule: Schedule,
        factors: Any = None,
        scale: ScaleLike | None = None,
        prediction: str = "epsilon",
        time_matching: str | None = None,
        *,
        config: UpsampleGuidanceConfig | None = None,
        branch_parallel: Any = None,
        top_up: TopUpNoise | None = None,
        **options: Any,
    ) -> None:
        if not isinstance(schedule, Schedule):
            raise TypeError(
                "schedule must be a DiscreteSchedule, SigmaSchedule, FlowSchedule or provide "
                f"check_times/coefficients/time_fraction/match, got {type(schedule).__name__}"
            )
        config = resolve_config(
            config, factors=factors, scale=scale, time_matching=time_matching, **options
        )
        self.config = config
        self.schedule = schedule
        self.factors = config.factors
        self.k = block_size(self.factors)
        self.scale = config.scale
        self.eta = config.eta
        self.prediction = normalize_prediction(prediction)
        self.time_matching = config.time_matching
        self.below_range = config.below_range
        self._memo: dict[float, Entry] = {}
        self.top_up = top_up if top_up is not None else TopUpNoise()
        self._ratio = not all(isinstance(f, int) for f in self.factors)
        if branch_parallel is None:
            self.exchange: Local | BranchParallel = Local()
        elif isinstance(branch_parallel, BranchParallel):
            self.exchange = branch_parallel
        else:  # a torch.distributed process group of two
            self.exchange = BranchParallel(branch_parallel)

    def __repr__(self) -> str:
        return (
            f"UpsampleGuidance({type(self.schedule).__name__}, factors="
            f"{format_factors(self.factors)}, scale={self.scale!r}, eta={self.eta}, "
            f"prediction={self.prediction!r}, time_matching={self.time_matching!r})"
        )

    @property
    def never_on(self) -> bool:
        """True when w is 0 at every time (``scale=0`` or ``eta=0``): no low call is ever made."""
        return self.config.never_on

    @property
    def constant_weight(self) -> bool:
        """True when w is the same at every time (a constant scale, ``eta=1``, clamped τ)."""
        return not callable(self.scale) and self.eta == 1.0 and self.below_range == "clamp"

    def weight(self, t: Any) -> torch.Tensor:
        """w at model time(s) t, float64 on the CPU (after checking that t lies in the schedule)."""
        times = as_times(t)
        self.schedule.check_times(times)
        return weights_at(self.scale, self.eta, self.schedule.time_fraction(times))

    def check_input(self, x: torch.Tensor, t: Any, host_time: Any = None) -> None:
        """Raise a clear error for a non-tensor input, too many factors, bad sizes or times."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if len(self.factors) > x.ndim - 1:
            raise ValueError(
                f"{len(self.factors)} factors {format_factors(self.factors)} for x of shape "
                f"{tuple(x.shape)}: at most {x.ndim - 1} trailing axes can be upsampled (axis 0 "
                "is the batch)"
            )
        check_divisible(x.shape, self.factors, "x")
        _check_time_shape(t, x, "t")
        _check_time_shape(host_time, x, "host_time")

    # ------------------------------------------------------------------ the calls
    def __call__(
        self, model: Callable[..., torch.Tensor], x: torch.Tensor, t: Any, /, *args: Any, **kw: Any
    ) -> torch.Tensor:
        """One guided prediction: ``model(x, t, *args, **kwargs)`` plus the guidance term.

        ``low_res_inputs`` and ``host_time`` as in :meth:`apply`. With ``branch_parallel``, the
        high process makes the high call and the low process the low call; both return the
        guided prediction.
        """
        return self.apply(None, model, x, t, *args, **kw)

    def apply(
        self,
        pred: torch.Tensor | None,
        model: Callable[..., torch.Tensor],
        x: torch.Tensor,
        t: Any,
        /,
        *args: Any,
        low_res_inputs: LowResInputs | None = None,
        host_time: Any = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Guide ``pred = model(x, t, *args, **kwargs)``, a prediction the caller already has.

        ``model`` is then called only for the low-resolution branch: once for the whole batch,
        and not at all where w == 0 is known on the host (the plain ``pred`` is returned). With
        ``pred=None`` the high call is made too (that is :meth:`__call__`). ``host_time`` is the
        value of ``t`` as the host knows it (a number, one per batch element, or a time map),
        given by adapters that know the sampler's times, so that ``t`` itself is never read.
        ``low_res_inputs(args, kwargs, factors)`` adapts the other inputs for the low call. The
        same as :meth:`prepare`, :meth:`low_call` and :meth:`finish`.
        """
        given = pred is not None
        if given:
            _check_prediction(pred)
        prepared = self.prepare(x, t, host_time=host_time)
        if not given:
            pred = self.exchange.high_call(lambda: model(x, t, *args, **kwargs))
            if pred is not None:
                _check_prediction(pred)
        if prepared is not None:
            pred_low = self.low_call(prepared, model, args, kwargs, low_res_inputs)
            if pred is not None:
                pred = self.finish(prepared, pred, pred_low)
        return pred if given else self.exchange.share(pred, x.device)

    def prepare(self, x: torch.Tensor, t: Any, *, host_time: Any = None) -> Prepared | None:
        """What a guided call needs before the model runs, or None where w == 0 (host-known).

        Computes the low-resolution input ``c·W[D[x]]`` and the kernel's coefficients; with
        ``branch_parallel`` the high process sends that input and the low process receives it.
        """
        self.check_input(x, t, host_time)
        if self.never_on:
            return None
        coeffs = self._coefficients_for(t, host_time, x)
        if coeffs is None:
            return None
        if self.time_matching == "off":
            t_low = t if not (isinstance(t, torch.Tensor) and t.ndim > 1) else self._map(t)
        else:
            t_low = _time_like(coeffs.tau, t, coeffs.integral, coeffs.shape)
        x_down = downsample(x, self.factors)
        work = torch.float32 if x.dtype in _HALF else x.dtype
        low, top_up = x_down.to(work), None
        if self._ratio and self.config.ratio_noise == "whiten":
            low = whiten(low, self.factors)
        elif self._ratio and self.config.ratio_noise == "top-up":
            level = self._noise_level(t, host_time)
            zeta = self.top_up.draw(x, tuple(x_down.shape), level, self.factors).to(work)
            low = low + _broadcastable(coeffs.noise, low) * zeta
            top_up = _broadcastable(coeffs.z, low) * zeta
        x_low = (low * _broadcastable(coeffs.c, low)).to(x.dtype)
        x_low = self.exchange.low_input(x_low)
        return Prepared(coeffs.w, t_low, coeffs.r, coeffs.q, x_down, x_low, tuple(x.shape), top_up)

    def low_call(
        self,
        prepared: Prepared,
        model: Callable[..., torch.Tensor],
        args: tuple = (),
        kwargs: dict | None = None,
        low_res_inputs: LowResInputs | None = None,
    ) -> torch.Tensor:
        """The low-resolution prediction of a prepared call (received, on a branch's high side)."""

        def call() -> torch.Tensor:
            """The low-resolution model call."""
            low_args, low_kwargs = args, kwargs or {}
            if low_res_inputs is not None:
                low_args, low_kwargs = low_res_inputs(low_args, low_kwargs, self.factors)
            x_low = prepared.x_low
            pred_low = model(x_low, prepared.t_low, *low_args, **low_kwargs)
            if not isinstance(pred_low, torch.Tensor) or pred_low.shape != x_low.shape:
                raise ValueError(
                    f"the low-resolution call returned "
                    f"{getattr(pred_low, 'shape', type(pred_low))}, expected a tensor of shape "
                    f"{tuple(x_low.shape)}"
                )
            return pred_low

        return self.exchange.low_prediction(call, prepared.x_low)

    def finish(
        self, prepared: Prepared, pred: torch.Tensor, pred_low: torch.Tensor
    ) -> torch.Tensor:
        """The guided prediction of a prepared call, from the model's ``pred`` and ``pred_low``."""
        _check_prediction(pred)
        if tuple(pred.shape) != prepared.x_shape:
            raise ValueError(
                f"the model's prediction has shape {tuple(pred.shape)}, but x has shape "
                f"{prepared.x_shape}; guidance needs a prediction shaped like its input"
            )
        if self._ratio and self.config.ratio_noise == "whiten":
            pred_low = unwhiten(pred_low, self.factors)
        return upsample_guidance(
            pred,
            pred_low,
            prepared.x_down,
            prepared.w,
            prepared.r,
            prepared.q,
            self.factors,
            prepared.top_up,
        )

    # ------------------------------------------------------------------ times and coefficients
    def _map(self, t: torch.Tensor) -> torch.Tensor:
        """A time map pooled to the low resolution (see :func:`pool_time_map`)."""
        return pool_time_map(t, self.factors, self.config.mixed_times)

    def _noise_level(self, t: Any, host_time: Any) -> float:
        """The noisiest time fraction of this call (a device time is read: one sync per call)."""
        if host_time is not None:
            times = as_times(host_time, "host_time")
        else:
            times = as_times(t) if _host_readable(t) else as_device_times(t)
        return float(self.schedule.time_fraction(times).max())

    def _coefficients_for(self, t: Any, host_time: Any, x: torch.Tensor) -> Coefficients | None:
        """The coefficients of this call, or None where w == 0 everywhere (known on the host).

        The host path (a number, a CPU tensor, or ``host_time``) looks each distinct time up in
        the memo; the device path computes them on the device, reading nothing back.
        """
        source = host_time if host_time is not None else t
        device_read = self.config.device_time == "read" and not self.constant_weight
        if host_time is None and not (_host_readable(t) or device_read):
            times = as_device_times(t)
            if times.ndim > 1:
                times = self._map(times)
            coeffs = self._compute(times)
            if self.below_range == "error" and bool(coeffs.below.any()):
                raise _below_error(times[coeffs.below].flatten()[0].item(), self.factors, self.k)
            integral = isinstance(self.schedule, DiscreteSchedule) and (
                self.time_matching == "nearest"
            )
            return coeffs._replace(integral=integral, shape=tuple(times.shape))
        times = as_times(source, "host_time" if host_time is not None else "t")
        if times.ndim > 1:
            times = self._map(times)
        coeffs = self._host(times)
        low_shape = times.shape if times.ndim > 1 else getattr(t, "shape", ())
        return None if coeffs is None else coeffs._replace(shape=tuple(low_shape))

    def _compute(self, times: torch.Tensor) -> Coefficients:
        """w, τ, c, r, q and ``below`` at model times (float64 maths on the times' device)."""
        w = weights_at(self.scale, self.eta, self.schedule.time_fraction(times))
        match = self.schedule.match(times, self.k, self.time_matching)
        if self.below_range == "skip":
            w = torch.where(match.below, torch.zeros_like(w), w)
        c = match.scale if self.config.match_power else torch.ones_like(match.scale)
        a, s = self.schedule.coefficients(times)
        r, q = guidance_coefficients(self.prediction, a, s, c, self.k)
        z = top_up_coefficient(self.prediction, a, s, c, self.k, r)
        return Coefficients(w, match.time, c, r, q, match.below, False, (), s, z)

    def precompute(self, times: Any) -> None:
        """Compute the guidance's values at these host times (model unit) once, for later calls.

        Adapters that know a sampler's times (the diffusers adapter, from the scheduler) call it
        before sampling, so that each guided call only looks its values up.
        """
        times = as_times(times, "times").reshape(-1)
        self.schedule.check_times(times)
        self._remember(times)

    def _remember(self, times: torch.Tensor) -> None:
        """Store an :class:`Entry` per host time (float64 maths, batched)."""
        if len(self._memo) > 4096:
            self._memo.clear()
        coeffs = self._compute(times)
        integral = coeffs.tau == coeffs.tau.round()
        columns = (coeffs.w, coeffs.tau, integral, coeffs.c, coeffs.r, coeffs.q, coeffs.below)
        columns += (coeffs.noise, coeffs.z)
        for value, *entry in zip(times.tolist(), *(v.tolist() for v in columns), strict=True):
            self._memo[value] = Entry(*entry)

    def skips(self, value: float) -> bool:
        """Whether a call at this host time (model unit) is left unguided (w == 0 there)."""
        if self.never_on:
            return True
        if value not in self._memo:
            self.precompute([value])
        return self._memo[value].w == 0.0

    def _host(self, times: torch.Tensor) -> Coefficients | None:
        """The host path: each distinct time's :class:`Entry`, as floats when the batch shares one.

        None where w == 0 everywhere; a ValueError for a time outside the schedule, or below its
        range with ``below_range="error"``.
        """
        flat = times.reshape(-1).tolist()
        distinct = list(dict.fromkeys(flat))
        missing = [v for v in distinct if v not in self._memo]
        if missing:
            new = torch.tensor(missing, dtype=torch.float64)
            self.schedule.check_times(new)
            self._remember(new)
        entries = [self._memo[v] for v in distinct]
        if all(e.w == 0.0 for e in entries):
            return None
        if self.below_range == "error":
            for value, e in zip(distinct, entries, strict=True):
                if e.below:
                    raise _below_error(value, self.factors, self.k)
        integral = all(e.integral for e in entries)
        if len(entries) == 1:
            e = entries[0]
            return Coefficients(e.w, e.tau, e.c, e.r, e.q, e.below, integral, (), e.noise, e.z)
        rows = torch.tensor([self._memo[v] for v in flat], dtype=torch.float64)
        cols = (rows[:, i].reshape(times.shape) for i in (0, 1, 3, 4, 5, 7, 8))
        w, tau, c, r, q, noise, z = cols
        return Coefficients(w, tau, c, r, q, False, integral, (), noise, z)

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
