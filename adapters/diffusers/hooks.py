"""What every family shares: the hooks, the pipeline session, the host clock, the guided call.

- :class:`HookState` lives on the hooked module (``module._upsample_guidance``), as diffusers'
  own hooks keep theirs: the hook handles and the sessions made through this module.
- :class:`Session` is one application of UG to one pipeline (or one bare wrapper): its options,
  its denoisers and their families, the scheduler it reads times from, and the pipeline
  attributes it replaced. It guides only while its pipeline is sampling (between the start and
  the end of the pipeline's progress bar), so a pipeline sharing the module is never changed.
- :class:`GuidedCall` is one guided denoiser call: its plan (family, grid, the core's prepared
  guidance), the low-resolution call and the guided output.
- :class:`LowCallCaches` keeps what diffusers' cache hooks (``enable_cache``) hold for the low
  call apart from the high call's: a cache context of its own, or a state object swapped in.
- :class:`SchedulerClock` tells the time of a call on the host without reading the time tensor:
  from the scheduler's own timesteps (copied to the host once per ``set_timesteps``, before the
  loop) and the index of the current step.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import inspect
import itertools
import warnings
import weakref
from collections.abc import Callable, Iterator
from fractions import Fraction
from typing import Any, NamedTuple

import torch

from ...branch import BranchParallel, Local
from ...config import UpsampleGuidanceConfig
from ...factors import check_divisible, low_sizes
from ...guidance import Prepared, TopUpNoise, UpsampleGuidance
from ...operators import downsample
from .families import Call, Family, family_of

__all__ = [
    "HookState",
    "Session",
    "GuidedCall",
    "SchedulerClock",
    "LowCallCaches",
    "HostTimeWarning",
    "STATE",
]

#: The attribute of a hooked module that holds its :class:`HookState`.
STATE = "_upsample_guidance"

_start_order = itertools.count(1)


class HostTimeWarning(UserWarning):
    """The scheduler's host-side time disagreed with the time the model received."""


def base_module(module: Any) -> Any:
    """The module itself, seen through a ``torch.compile`` wrapper (``OptimizedModule``)."""
    return getattr(module, "_orig_mod", module)


def is_sample(value: Any) -> bool:
    """Whether ``value`` is a denoiser's sample: a tensor, or a list of tensors (Z-Image's)."""
    if isinstance(value, (list, tuple)):
        return len(value) > 0 and all(isinstance(v, torch.Tensor) for v in value)
    return isinstance(value, torch.Tensor)


def sample_device(sample: Any) -> torch.device:
    """The device of a sample (a tensor, or a list of tensors)."""
    return sample.device if isinstance(sample, torch.Tensor) else sample[0].device


def output_sample(output: Any) -> Any:
    """The sample of a denoiser output: a BaseOutput, a tuple/list, or a bare tensor.

    The sample is a tensor, or a list of tensors for a model that takes its sample as a list.
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return output[0]
    sample = getattr(output, "sample", None)
    if is_sample(sample):
        return sample
    raise TypeError(
        f"the denoiser returned {type(output).__name__}; expected a tensor, a tuple or an "
        "output object with .sample"
    )


def replace_sample(output: Any, sample: torch.Tensor) -> Any:
    """A denoiser output of the same type as ``output`` with its sample replaced."""
    if isinstance(output, torch.Tensor):
        return sample
    if isinstance(output, tuple):
        return (sample, *output[1:])
    if isinstance(output, list):
        return [sample, *output[1:]]
    return dataclasses.replace(output, sample=sample)


def noisy_channels(name: str, c_in: int, c_out: int, learned_variance: bool) -> int:
    """How many leading input channels hold the noisy sample (the rest are clean conditioning).

    ``c_out == 2 c_in``: learned variance, all noisy. ``c_out == c_in``: all noisy, except with a
    learned-variance scheduler, where the output is [mean, variance] of half the channels and
    the input [noisy, conditioning] (DeepFloyd IF super-resolution). ``c_out < c_in``: the first
    ``c_out`` (inpainting, InstructPix2Pix, image-to-video latents).
    """
    if c_out == 2 * c_in:
        return c_in
    if c_out == c_in:
        return c_in // 2 if learned_variance and c_in % 2 == 0 else c_in
    if 0 < c_out < c_in:
        return c_out
    raise ValueError(
        f"{name} has in_channels={c_in} and out_channels={c_out}: supported are out_channels "
        "equal to in_channels, twice it (learned variance), or fewer (the first out_channels "
        "input channels are the noisy sample, the rest conditioning, as in inpainting UNets)"
    )


def _agrees(t: torch.Tensor, value: float) -> bool:
    """Whether a CPU time tensor holds ``value`` in every element (to its dtype's precision)."""
    flat = t.reshape(-1)
    tol = 4 * torch.finfo(t.dtype).eps if t.is_floating_point() else 0.0
    first = float(flat[0])
    if abs(first - value) > tol * max(1.0, abs(value)) + 1e-9:
        return False
    return flat.numel() == 1 or all(s == 0 for s in t.stride()) or bool((flat == flat[0]).all())


def _signed(x: torch.Tensor, sign: float) -> torch.Tensor:
    """``sign · x`` (no copy for +1)."""
    return x if sign == 1.0 else sign * x


@functools.lru_cache(maxsize=64)
def _positional(cls: type) -> tuple[str, ...]:
    """The names of a module class's ``forward`` parameters that may be passed by position."""
    params = list(inspect.signature(cls.forward).parameters.values())[1:]
    return tuple(p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def bind_arguments(module: torch.nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """A denoiser call's arguments by name (positional ones matched to its ``forward``)."""
    names = _positional(type(module))
    if len(args) > len(names):
        raise TypeError(
            f"the denoiser was called with {len(args)} positional arguments; its forward takes "
            f"at most {len(names)}"
        )
    arguments = dict(zip(names, args, strict=False))
    arguments.update(kwargs)
    return arguments


@contextlib.contextmanager
def hooks_bypassed(module: torch.nn.Module) -> Iterator[None]:
    """Calls of ``module`` inside are not guided by its hooks (the low call, a bare wrapper)."""
    state = state_of(module)
    if state is not None:
        state.low_depth += 1
    try:
        yield
    finally:
        if state is not None:
            state.low_depth -= 1


def unhooked_caller(
    module: torch.nn.Module, target: Callable[..., Any], session: Session
) -> Callable[..., Any]:
    """``target(**kwargs, return_dict=False)`` with ``module``'s UG hooks bypassed: the low call.

    diffusers' cache hooks on ``module`` see the low call with state of its own
    (:class:`LowCallCaches`), so a cache never mixes the two resolutions.
    """

    def low_call(**kwargs: Any) -> Any:
        """One low-resolution denoiser call."""
        timesteps = getattr(session.scheduler(), "timesteps", None)
        with hooks_bypassed(module), session.low_caches.swapped(module, timesteps):
            return target(**kwargs, return_dict=False)

    return low_call


#: The cache-context name of the low-resolution call, after the pipeline's ("cond/" + this).
LOW_CONTEXT = "upsample-guidance-low"


def diffusers_registries(module: torch.nn.Module) -> list[Any]:
    """The diffusers ``HookRegistry`` of ``module`` and those of its submodules (none: [])."""
    registry = module.__dict__.get("_diffusers_hook")
    if registry is None:
        return []
    children = getattr(registry, "_get_child_registries", None)
    if children is not None:
        return [registry, *children()]
    return [registry] + [
        m.__dict__["_diffusers_hook"]
        for m in module.modules()
        if m is not module and "_diffusers_hook" in m.__dict__
    ]


def _low_context(context: Any) -> Any:
    """The low call's ``CacheContext`` for the current one (or None), as diffusers 0.42 keys."""
    if context is None:
        from diffusers.hooks.hooks import CacheContext

        return CacheContext(LOW_CONTEXT)
    return dataclasses.replace(context, name=f"{context.name}/{LOW_CONTEXT}")


def _low_context_name(name: str | None) -> str:
    """The low call's context name for the current one (or None), as older diffusers key it."""
    return f"{name}/{LOW_CONTEXT}" if name else LOW_CONTEXT


class LowCallCaches:
    """The state diffusers' cache hooks keep for the low-resolution call, apart from the high one's.

    Hooks with a ``StateManager`` (FirstBlockCache, TaylorSeer, MagCache, ...) key their state by
    cache context: the low call gets a context of its own, named after the current one
    (``"cond"`` → ``"cond/upsample-guidance-low"``), which diffusers resets with the rest. Hooks
    with a single ``state`` object (FasterCache, PyramidAttentionBroadcast) get a second object
    swapped in for the low call, kept for one sampling run (one ``scheduler.timesteps`` tensor).
    """

    def __init__(self) -> None:
        self._run: Any = None  # a weak reference to the timesteps of the current run
        self._states: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # hook -> state

    def _new_run(self, timesteps: Any) -> None:
        """Start fresh low-call states when the scheduler's timesteps are new (a new run)."""
        current = self._run() if self._run is not None else None
        if timesteps is None or current is timesteps:
            return
        self._states = weakref.WeakKeyDictionary()
        try:
            self._run = weakref.ref(timesteps)
        except TypeError:
            self._run = None

    def _state_for(self, hook: Any) -> Any:
        """The low call's state object of a single-state hook (a fresh one the first time)."""
        if hook not in self._states:
            state = hook.state
            try:
                fresh = type(state)()
            except TypeError:  # a state class that needs arguments: a reset copy
                fresh = copy.copy(state)
                fresh.reset()
            self._states[hook] = fresh
        return self._states[hook]

    @contextlib.contextmanager
    def swapped(self, module: torch.nn.Module, timesteps: Any) -> Iterator[None]:
        """Inside, ``module``'s diffusers hooks read and write the low call's state."""
        registries = diffusers_registries(module)
        if not registries:
            yield
            return
        self._new_run(timesteps)
        managers: dict[int, Any] = {}
        singles: list[Any] = []
        for registry in registries:
            for hook in registry.hooks.values():
                for value in vars(hook).values():
                    if hasattr(value, "get_state") and hasattr(value, "_state_cache"):
                        managers.setdefault(id(value), value)
                state = vars(hook).get("state")
                if getattr(hook, "_is_stateful", False) and hasattr(state, "reset"):
                    singles.append(hook)
        names = [m for m in managers.values() if hasattr(m, "_context")]
        legacy = [m for m in managers.values() if hasattr(m, "_current_context")]
        saved = (
            [m._context for m in names],
            [m._current_context for m in legacy],
            [hook.state for hook in singles],
        )
        try:
            for manager, context in zip(names, saved[0], strict=True):
                manager._context = _low_context(context)
            for manager, context in zip(legacy, saved[1], strict=True):
                manager._current_context = _low_context_name(context)
            for hook in singles:
                hook.state = self._state_for(hook)
            yield
        finally:
            for manager, context in zip(names, saved[0], strict=True):
                manager._context = context
            for manager, context in zip(legacy, saved[1], strict=True):
                manager._current_context = context
            for hook, state in zip(singles, saved[2], strict=True):
                hook.state = state


def consumed_copies(family: Family, arguments: dict) -> dict[str, tuple[list, list]]:
    """The list arguments the denoiser consumes as it runs (T2I-Adapter's), with copies."""
    return {
        name: (value, list(value))
        for name in family.consumed_lists
        if isinstance(value := arguments.get(name), list)
    }


def restore_consumed(arguments: dict, copies: dict[str, tuple[list, list]]) -> None:
    """Put back the copies of the consumed lists that this call received."""
    for name, (original, copied) in copies.items():
        if arguments.get(name) is original:
            arguments[name] = copied


class Denoiser(NamedTuple):
    """A denoiser of a session: the module, its family, and the pipeline attribute holding it."""

    module: torch.nn.Module
    family: Family
    attr: str | None


def grid_factors(config: UpsampleGuidanceConfig, family: Family) -> tuple[Any, ...]:
    """The factors of the family's grid: (H, W), or (F, H, W) with (1, fh, fw) for two."""
    factors = config.factors
    if family.video:
        return factors if len(factors) == 3 else (1, *factors)
    if len(factors) == 3:
        raise ValueError(
            f"factors={factors} has 3 entries (frames, height, width), but the {family.name} "
            "family takes images; pass 2 factors (height, width)"
        )
    return factors


class SchedulerClock:
    """The scheduler's time of the current denoiser call, known on the host.

    The index of the call is the offset of ``t`` in ``scheduler.timesteps`` when ``t`` is a view
    of it (``for t in timesteps``, ``t.expand(batch)``), else the scheduler's ``step_index``
    (``begin_index`` before its first step). The timesteps are copied to the host once per new
    ``scheduler.timesteps`` tensor: :meth:`prefetch` does it before the sampling loop.
    """

    def __init__(self) -> None:
        self._ref: Any = None
        self._host: list[float] | None = None

    def prefetch(self, scheduler: Any) -> list[float] | None:
        """The scheduler's timesteps on the host (copied once per ``set_timesteps``)."""
        ts = getattr(scheduler, "timesteps", None)
        if not isinstance(ts, torch.Tensor) or ts.ndim != 1:
            return None
        if self._ref is None or self._ref() is not ts:
            self._host = ts.detach().to(device="cpu", dtype=torch.float64).tolist()
            self._ref = weakref.ref(ts)
        return self._host

    @staticmethod
    def index(scheduler: Any, t: Any) -> int | None:
        """The position of the current call in ``scheduler.timesteps``, or None if unknown."""
        ts = getattr(scheduler, "timesteps", None)
        if (
            isinstance(t, torch.Tensor)
            and isinstance(ts, torch.Tensor)
            and ts.ndim == 1
            and ts.stride(0) == 1
            and t.device == ts.device
            and t.dtype == ts.dtype
            and all(s == 0 for s, n in zip(t.stride(), t.shape, strict=True) if n > 1)
            and t.untyped_storage().data_ptr() == ts.untyped_storage().data_ptr()
        ):
            return t.storage_offset() - ts.storage_offset()
        for name in ("step_index", "begin_index"):
            value = getattr(scheduler, name, None)
            if isinstance(value, int):
                return value
        return None

    def time(self, scheduler: Any, t: Any) -> float | None:
        """The scheduler's timestep for this call, on the host; None if it cannot tell."""
        index = self.index(scheduler, t)
        if index is None:
            return None
        host = self.prefetch(scheduler)
        if host is None or not 0 <= index < len(host):
            return None
        return host[index]


class Session:
    """One application of UG to one pipeline (``pipe``) or one bare wrapper (``pipe`` None).

    ``scheduler()`` returns the scheduler to read times and the schedule from (read at each
    call, so swapping the pipeline's scheduler is fine).
    """

    def __init__(
        self,
        pipe: Any,
        scheduler: Callable[[], Any],
        config: UpsampleGuidanceConfig,
        branch: BranchParallel | None = None,
    ) -> None:
        self.pipe = weakref.ref(pipe) if pipe is not None else None
        self.scheduler = scheduler
        self.config = config
        self.branch = branch
        self.exchange: Local | BranchParallel = branch if branch is not None else Local()
        self.clock = SchedulerClock()
        self.active = 0
        self.start_order = 0  # when this session last started sampling (the latest one guides)
        self.request: dict[str, Any] = {}  # the pipeline call's requested sizes, in pixels
        self.saved: dict[str, Any] = {}  # pipeline attributes this session replaced
        self.handles: list[Any] = []  # hooks on other modules (the ControlNet)
        self.denoisers: dict[int, Denoiser] = {}
        self._guides: dict[tuple, UpsampleGuidance] = {}
        self._guides_scheduler: tuple = ()
        self.warned = False
        self.low_caches = LowCallCaches()  # diffusers' cache hooks: the low call's own state
        self.top_up = TopUpNoise()  # a ratio factor's ζ, one per sample per run, shared by the
        # session's denoisers (Wan 2.2's two transformers sample one trajectory)

    # ------------------------------------------------------------------ set-up
    def add_denoiser(self, module: torch.nn.Module, attr: str | None) -> Family:
        """Register a denoiser of this session (validated now); returns its family."""
        family = family_of(module)
        config = getattr(module, "config", None)
        c_in, c_out = getattr(config, "in_channels", None), getattr(config, "out_channels", None)
        if isinstance(c_in, int) and isinstance(c_out, int):
            noisy_channels(type(module).__name__, c_in, c_out, learned_variance=False)
        self.denoisers[id(module)] = Denoiser(module, family, attr)
        self.guidance(module, family)  # validates the options and the scheduler now
        return family

    def pipeline(self) -> Any:
        """The pipeline, or None for a bare wrapper (or a pipeline that is gone)."""
        return self.pipe() if self.pipe is not None else None

    # ------------------------------------------------------------------ activation
    def activate(self) -> None:
        """The pipeline starts sampling: guide its calls, and precompute its times' guidance.

        The scheduler's timesteps are copied to the host once here, before the loop, and the
        guidance's values at each of them are computed in one batch.
        """
        self.active += 1
        self.start_order = next(_start_order)
        self.top_up.reset()
        host = self.clock.prefetch(self.scheduler())
        if host is None or self.config.never_on:
            return
        for module, family, _ in self.denoisers.values():
            times = [family.model_time(v, module) for v in host]
            try:
                self.guidance(module, family).precompute(times)
            except ValueError:
                pass  # a time outside the model's schedule: reported by the call that meets it

    def deactivate(self) -> None:
        """The pipeline stops sampling."""
        self.active = max(0, self.active - 1)

    # ------------------------------------------------------------------ maths set-up
    def guidance(self, module: torch.nn.Module, family: Family) -> UpsampleGuidance:
        """The core's UpsampleGuidance for the current scheduler, this module and its factors."""
        scheduler = self.scheduler()
        owner = (
            scheduler,
            getattr(scheduler, "alphas_cumprod", None),
            getattr(getattr(scheduler, "config", None), "prediction_type", None),
        )
        if len(self._guides_scheduler) != 3 or any(
            a is not b for a, b in zip(owner, self._guides_scheduler, strict=True)
        ):
            self._guides, self._guides_scheduler = {}, owner
        factors = grid_factors(self.config, family)
        key = (id(module), factors)
        if key not in self._guides:
            if scheduler is None:
                raise TypeError("the pipeline has no scheduler")
            schedule, prediction = family.schedule(scheduler, module)
            self._guides[key] = UpsampleGuidance(
                schedule,
                prediction=prediction,
                config=self.config.replace(factors=factors),
                branch_parallel=self.branch,
                top_up=self.top_up,
            )
        return self._guides[key]

    def host_time(self, family: Family, module: torch.nn.Module, t: Any) -> float | None:
        """The model time of this call on the host (from the scheduler), or None.

        Where ``t`` itself is on the CPU (free to read) the two are compared: a disagreement
        warns once (:class:`HostTimeWarning`) and the time the model got is used.
        """
        value = self.clock.time(self.scheduler(), t)
        if value is None:
            return None
        value = family.model_time(value, module)
        if isinstance(t, torch.Tensor) and t.device.type == "cpu" and not _agrees(t, value):
            if not self.warned:
                self.warned = True
                warnings.warn(
                    f"the scheduler's time {value!r} differs from the time the "
                    f"{type(module).__name__} received ({t.reshape(-1)[0].item()!r}); using the "
                    "latter. Please report this pipeline and scheduler.",
                    HostTimeWarning,
                    stacklevel=2,
                )
            return None
        return value

    # ------------------------------------------------------------------ checks
    def check_request(self, sizes: dict[str, Any]) -> None:
        """Raise, before any model runs, for a pipeline request the factors don't map to.

        The sizes are checked as the pipeline will sample them (its own rounding included), and
        the message suggests the nearest sizes that work, in pixels (frames for video).
        """
        if self.config.never_on:
            return
        pipe = self.pipeline()
        for module, family, _ in self.denoisers.values():
            factors = grid_factors(self.config, family)
            patch = family.patch(module)
            latent = family.request_latents(pipe, sizes)
            names = ("frames", "height", "width")[-len(factors) :]
            for name, f, p in zip(names, factors, patch, strict=True):
                if latent.get(name) is None:
                    continue
                n, to_pixels = latent[name]
                step = Fraction(f).numerator * p
                if n % step == 0:
                    continue
                pixel = "num_frames" if name == "frames" else name
                below, above = n - n % step, n - n % step + step
                near = " or ".join(str(to_pixels(m)) for m in (below, above) if m > 0)
                gives = f"{n} latent frames" if name == "frames" else f"a latent {name} of {n}"
                if name == "frames" and n != sizes[pixel]:
                    gives += " (a temporal factor counts latent frames)"
                unit = f"factor {f} x patch {p}" if p > 1 else f"factor {f}"
                raise ValueError(
                    f"{pixel}={sizes[pixel]!r} gives {gives}; the {unit} needs multiples of "
                    f"{step} to map to a whole trained size: use {pixel}={near}"
                )

    def called_module(self, module: torch.nn.Module) -> Any:
        """What the pipeline calls for ``module``: a compile wrapper around it, or the module."""
        entry = self.denoisers.get(id(module))
        pipe = self.pipeline()
        attr = entry.attr if entry else None
        candidate = getattr(pipe, attr, None) if (pipe is not None and attr) else None
        if candidate is not None and candidate is not module and base_module(candidate) is module:
            return candidate
        return module

    # ------------------------------------------------------------------ the guided call
    def guided_call(self, module: torch.nn.Module, arguments: dict) -> GuidedCall | None:
        """Plan one denoiser call, or None if it is left unguided (w == 0 there).

        The grid is checked here, so that a bad size fails before the denoiser runs, and the
        low-resolution input is prepared (sent to the other process when branch-parallel).
        """
        family = self.denoisers[id(module)].family
        guide = self.guidance(module, family)
        if guide.never_on:
            return None
        t = arguments.get(family.time_arg)
        per_token = isinstance(t, torch.Tensor) and t.ndim > 1  # a time map: the core reads it
        host_t = None if per_token else self.host_time(family, module, t)
        if host_t is not None and guide.skips(host_t):
            return None
        sample = arguments.get(family.sample_arg)
        if not is_sample(sample):
            raise TypeError(
                f"the {type(module).__name__} call has no tensor {family.sample_arg!r}: got "
                f"{type(sample).__name__}"
            )
        call = Call(arguments, self.pipeline(), module, self.request)
        call.grid = family.grid_of(sample, call)
        call.batch = len(sample)
        factors = guide.factors
        patch = family.patch(module)
        what = f"factors {factors} x patch {patch}" if any(p > 1 for p in patch) else "factors"
        check_divisible(
            call.grid, factors, f"the {type(module).__name__} latent grid ({what})", unit=patch
        )
        call.low_grid = low_sizes(call.grid, factors)
        x = family.to_grid(sample, call)
        noisy = self.noisy(module, family, x.shape[1])
        if host_t is not None:
            host_t = family.grid_time(host_t, call)
        prepared = guide.prepare(x[:, :noisy], family.grid_time(t, call), host_time=host_t)
        if prepared is None:
            return None
        condition = x[:, noisy:] if noisy < x.shape[1] else None
        return GuidedCall(self, module, family, guide, prepared, call, noisy, condition)

    def noisy(self, module: torch.nn.Module, family: Family, channels: int) -> int:
        """How many of the grid's ``channels`` are the noisy sample (from the model's config)."""
        out = family.out_channels(module, channels)
        learned = getattr(getattr(self.scheduler(), "config", None), "variance_type", None)
        return noisy_channels(
            type(module).__name__, channels, out, learned in ("learned", "learned_range")
        )


@dataclasses.dataclass
class GuidedCall:
    """One guided denoiser call: what :meth:`Session.guided_call` planned, then its output."""

    session: Session
    module: torch.nn.Module
    family: Family
    guide: UpsampleGuidance
    prepared: Prepared
    call: Call
    noisy: int
    """How many grid channels are the noisy sample."""
    condition: torch.Tensor | None
    """The clean conditioning channels (block-averaged for the low call), if any."""

    def low_prediction(self, low_call: Callable[..., Any]) -> torch.Tensor:
        """The low-resolution prediction on the grid (``low_call(**kwargs)`` runs the denoiser)."""
        family, call, factors = self.family, self.call, self.guide.factors
        sign = family.sign(self.session.scheduler())

        def model(x_low: torch.Tensor, t_low: Any) -> torch.Tensor:
            """The low-resolution call as the core sees it: a grid in, its prediction out."""
            if self.condition is not None:  # clean conditioning: area-averaged, not scaled
                pooled = downsample(self.condition, factors).to(x_low.dtype)
                x_low = torch.cat([x_low, pooled], dim=1)
            low_grid = Call(call.arguments, call.pipe, call.module, call.request)
            low_grid.grid, low_grid.batch = call.low_grid, call.batch
            low = dict(call.arguments)
            low.pop("return_dict", None)
            low[family.sample_arg] = family.from_grid(x_low, low_grid)
            low[family.time_arg] = t_low
            family.low_inputs(low, call, factors, self.session.config.micro_conditioning)
            out = family.to_grid(output_sample(low_call(**low)), low_grid)
            return _signed(out[:, : self.noisy], sign)

        return self.guide.low_call(self.prepared, model)

    def output(self, output: Any, low_call: Callable[..., Any]) -> Any:
        """The guided output of the call whose high-resolution ``output`` is known."""
        family, call = self.family, self.call
        sign = family.sign(self.session.scheduler())
        high = _signed(family.to_grid(output_sample(output), call), sign)
        variance = None
        if high.shape[1] == 2 * self.noisy:
            high, variance = high[:, : self.noisy], high[:, self.noisy :]
        guided = self.guide.finish(self.prepared, high, self.low_prediction(low_call))
        if variance is not None:
            guided = torch.cat([guided, variance], dim=1)
        return replace_sample(output, family.from_grid(_signed(guided, sign), call))


class HookState:
    """What lives on a hooked denoiser: its hooks and the sessions made through it."""

    def __init__(self) -> None:
        self.sessions: list[Session] = []
        self.handles: list[Any] = []
        self.low_depth = 0  # > 0 during the low-resolution call (and bare-wrapper calls)
        self.consumed: dict[str, tuple[list, list]] = {}
        self.pending: tuple[Session, GuidedCall | None] | None = None  # set by the pre-hook

    def active(self) -> Session | None:
        """The session whose pipeline is sampling now (the latest started), or None."""
        best = None
        for session in self.sessions:
            if session.active and (best is None or session.start_order > best.start_order):
                best = session
        return best

    def pre_hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """Before the high-resolution call: plan it (check the grid, keep consumed lists)."""
        self.pending = None
        session = None if self.low_depth else self.active()
        if session is None:
            return
        arguments = bind_arguments(module, args, kwargs)
        guided = session.guided_call(module, arguments)
        if guided is not None or session.branch is not None:  # a peer waits for the output
            self.pending = (session, guided)
        if guided is not None:
            self.consumed = consumed_copies(guided.family, arguments)

    def hook(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        """Replace the high-resolution output by the guided one."""
        if self.low_depth or self.pending is None:
            return None
        (session, guided), self.pending = self.pending, None
        if guided is not None:
            arguments = bind_arguments(module, args, kwargs)
            restore_consumed(arguments, self.consumed)
            self.consumed = {}
            guided.call.arguments = arguments
            output = guided.output(
                output, unhooked_caller(module, session.called_module(module), session)
            )
        if session.branch is not None:
            sample = output_sample(output)
            session.exchange.share(sample, sample_device(sample))
        return output if guided is not None else None

    def low_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        """The denoiser's forward on the low process of a branch-parallel session.

        It makes only the low-resolution call (on the input the high process sends) and returns
        the guided output the high process shares; outside the pipeline's sampling, and for the
        low call itself, it is the denoiser's own forward.
        """
        forward = type(module).forward
        session = None if self.low_depth else self.active()
        if session is None or session.branch is None:
            return forward(module, *args, **kwargs)
        arguments = bind_arguments(module, args, kwargs)
        guided = session.guided_call(module, arguments)
        device = sample_device(arguments[session.denoisers[id(module)].family.sample_arg])
        if guided is not None:
            guided.low_prediction(unhooked_caller(module, session.called_module(module), session))
        sample = session.exchange.share(None, device)
        if not arguments.get("return_dict", True):
            return (sample,)
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=sample)

    def install(self, module: torch.nn.Module, low_process: bool = False) -> None:
        """Register the two hooks (opaque to torch.compile: plain Python glue).

        On the low process of a branch-parallel session the forward is replaced instead (an
        instance attribute, deleted again by :meth:`uninstall`).
        """
        if low_process:
            module.__dict__["forward"] = functools.partial(self.low_forward, module)
            self.handles.append(_ForwardOverride(module))
            return
        pre, post = torch.compiler.disable(self.pre_hook), torch.compiler.disable(self.hook)
        self.handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        self.handles.append(module.register_forward_hook(post, with_kwargs=True))

    def uninstall(self) -> None:
        """Remove the hooks."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


class _ForwardOverride:
    """A handle that deletes an instance ``forward`` override."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def remove(self) -> None:
        """Restore the class's forward."""
        self.module.__dict__.pop("forward", None)


def state_of(module: torch.nn.Module) -> HookState | None:
    """The :class:`HookState` on a module, or None."""
    return module.__dict__.get(STATE)


def attach(session: Session, module: torch.nn.Module) -> None:
    """Add ``session`` to the module's state; the hooks are installed for one that can guide.

    A session with ``scale=0`` (or ``eta=0``) never changes a call, so it needs no hooks.
    """
    state = state_of(module)
    if state is None:
        state = module.__dict__[STATE] = HookState()
    low = session.branch is not None and session.branch.role == "low"
    if state.sessions and any(s.branch is not None for s in (session, *state.sessions)):
        raise ValueError(
            "a branch-parallel application cannot share its denoiser with another application; "
            "remove the other one first"
        )
    state.sessions.append(session)
    if not session.config.never_on and not state.handles:
        state.install(module, low_process=low)


def detach(session: Session, module: torch.nn.Module) -> None:
    """Remove ``session`` from the module's state; the hooks and the state go with the last one."""
    state = state_of(module)
    if state is None:
        return
    state.sessions = [s for s in state.sessions if s is not session]
    if all(s.config.never_on for s in state.sessions):
        state.uninstall()
    if not state.sessions:
        del module.__dict__[STATE]


# ---------------------------------------------------------------------- pipeline wrappers
class ActiveBar:
    """A pipeline's progress bar that marks the session active while the loop runs."""

    def __init__(self, bar: Any, session: Session) -> None:
        self._bar = bar
        self._session = session

    def __enter__(self) -> Any:
        self._session.activate()
        return self._bar.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        self._session.deactivate()
        return self._bar.__exit__(*exc)

    def __iter__(self) -> Any:
        self._session.activate()
        try:
            yield from self._bar
        finally:
            self._session.deactivate()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bar, name)


class BinnedAtTrainedSize:
    """An image processor whose resolution binning snaps ``request / factors`` to a trained bin.

    PixArt and Sana pipelines snap the request to the nearest bin of the trained size and resize
    the result back; with UG the sampled size becomes that bin times the factors, so a request of
    exactly ``factors ×`` a bin is sampled as asked, and any other is resized back as before.
    """

    def __init__(self, processor: Any, factors: tuple[Any, Any]) -> None:
        self._processor = processor
        self._factors = factors

    def classify_height_width_bin(self, height: int, width: int, ratios: dict) -> tuple[int, int]:
        """The bin for ``(height / fh, width / fw)``, times the factors."""
        fh, fw = self._factors
        h, w = self._processor.classify_height_width_bin(
            int(int(height) // fh), int(int(width) // fw), ratios=ratios
        )
        return int(int(h) * fh), int(int(w) * fw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._processor, name)


_MISSING = object()


def wrap_pipeline(session: Session, pipe: Any) -> None:
    """Install the session's pipeline wrappers (instance attributes, removed by unwrap)."""
    original_bar = pipe.progress_bar

    @functools.wraps(original_bar)
    def progress_bar(*args: Any, **kwargs: Any) -> Any:
        """The pipeline's progress bar; UG guides the denoiser while it runs."""
        return ActiveBar(original_bar(*args, **kwargs), session)

    _set(session, pipe, "progress_bar", progress_bar)
    for name in ("check_inputs", "prepare_latents"):
        _wrap_size_check(session, pipe, name)
    if session.config.never_on:
        return
    for name in ("image_processor", "video_processor"):  # PixArt, Sana; Sana-Video
        processor = getattr(pipe, name, None)
        if callable(getattr(processor, "classify_height_width_bin", None)):
            binned = BinnedAtTrainedSize(processor, session.config.factors[-2:])
            _set(session, pipe, name, binned)
    controlnet = getattr(pipe, "controlnet", None)
    if isinstance(controlnet, torch.nn.Module):
        hook = functools.partial(_controlnet_pre_hook, session)
        session.handles.append(
            base_module(controlnet).register_forward_pre_hook(hook, with_kwargs=True)
        )


def _controlnet_pre_hook(session: Session, module: Any, args: tuple, kwargs: dict) -> None:
    """Check the ControlNet's latent size before it runs (it runs before the denoiser)."""
    sample = args[0] if args else kwargs.get("sample")
    if session.active and isinstance(sample, torch.Tensor) and sample.ndim == 4:
        check_divisible(sample.shape, session.config.factors[-2:], "the ControlNet sample")


def _set(session: Session, pipe: Any, name: str, value: Any) -> None:
    """Set an instance attribute of the pipeline, remembering what was there."""
    session.saved[name] = pipe.__dict__.get(name, _MISSING)
    pipe.__dict__[name] = value


def _wrap_size_check(session: Session, pipe: Any, name: str) -> None:
    """Wrap ``pipe.<name>`` (if it takes height and width) to check and record the request."""
    method = getattr(pipe, name, None)
    if not callable(method):
        return
    try:
        signature = inspect.signature(method)
    except (TypeError, ValueError):
        return
    if not {"height", "width"} <= set(signature.parameters):
        return

    @functools.wraps(method)
    def checked(*args: Any, **kwargs: Any) -> Any:
        """The pipeline's method, after checking the requested size against the factors."""
        try:
            sizes = signature.bind(*args, **kwargs).arguments
        except TypeError:
            sizes = {}
        request = {k: sizes.get(k) for k in ("height", "width", "num_frames")}
        request = {k: v for k, v in request.items() if isinstance(v, int)}
        if name == "check_inputs" or not session.request:
            session.request = dict(request)
        session.check_request(request)
        return method(*args, **kwargs)

    _set(session, pipe, name, checked)


def unwrap_pipeline(session: Session, pipe: Any) -> None:
    """Restore the pipeline attributes the session replaced, and remove its other hooks."""
    for handle in session.handles:
        handle.remove()
    session.handles.clear()
    if pipe is not None:
        for name, value in session.saved.items():
            if value is _MISSING:
                pipe.__dict__.pop(name, None)
            else:
                pipe.__dict__[name] = value
    session.saved.clear()
