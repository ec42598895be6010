"""What every family shares: the hooks, the activation, the host clock, the one low call.

- :class:`HookState` lives on the hooked module (``module._upsample_guidance``), as diffusers'
  own hooks keep theirs: the hook handles and the applications made through this module.
- :class:`Application` is one application of UG to one pipeline (or one bare wrapper): its
  options, the family's translator, the scheduler it reads times from, and the pipeline methods
  it wrapped. It guides only while its pipeline is sampling (between the start and the end of
  the pipeline's progress bar), so a pipeline sharing the module is never changed by it.
- :class:`SchedulerClock` tells the time of a call on the host without reading the time tensor:
  from the scheduler's own timesteps (copied to the host once per ``set_timesteps``, before the
  loop) and the index of the current step.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from ...branch import BranchParallel
from ...guidance import Prepared, UpsampleGuidance
from ...operators import check_divisible, downsample, normalize_factors
from ...scales import ScaleLike
from .families import MICRO_CONDITIONING, Call, Family, family_of

__all__ = ["HookState", "Application", "SchedulerClock", "HostTimeWarning", "STATE"]

#: The attribute of a hooked module that holds its :class:`HookState`.
STATE = "_upsample_guidance"

_stamps = itertools.count(1)


class HostTimeWarning(UserWarning):
    """The scheduler's host-side time disagreed with the time the model received."""


def base_module(module: Any) -> Any:
    """The module itself, seen through a ``torch.compile`` wrapper (``OptimizedModule``)."""
    return getattr(module, "_orig_mod", module)


def output_sample(output: Any) -> torch.Tensor:
    """The sample tensor of a denoiser output: a BaseOutput, a tuple/list, or a bare tensor."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return output[0]
    sample = getattr(output, "sample", None)
    if isinstance(sample, torch.Tensor):
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


class Plan(NamedTuple):
    """A guided call before it runs: its family, grid, core guidance and prepared values."""

    family: Family
    factors: tuple[int, ...]
    guide: UpsampleGuidance
    prepared: Prepared
    call: Call
    noisy: int
    """How many grid channels are the noisy sample."""
    condition: torch.Tensor | None
    """The clean conditioning channels (block-averaged for the low call), if any."""


@dataclasses.dataclass(frozen=True)
class Options:
    """The options of one application (validated)."""

    factors: tuple[int, ...]
    scale: ScaleLike
    eta: float
    time_matching: str
    below_range: str
    micro: str

    @classmethod
    def check(
        cls,
        factors: Any,
        scale: ScaleLike,
        eta: float,
        time_matching: str,
        below_range: str,
        micro: str,
    ) -> Options:
        """Validate the options (the core's own checks run when the guidance is built)."""
        if isinstance(factors, (int, bool)) or not isinstance(factors, Sequence):
            raise TypeError(
                f"factors must be a sequence of 2 ints (height, width) or 3 ints (frames, height, "
                f"width), got {factors!r}"
            )
        factors = normalize_factors(factors)
        if len(factors) not in (2, 3):
            raise ValueError(
                f"factors must have 2 entries (height, width) or 3 (frames, height, width), got "
                f"{factors!r}"
            )
        if micro not in MICRO_CONDITIONING:
            raise ValueError(
                f"micro_conditioning must be one of {MICRO_CONDITIONING}, got {micro!r}"
            )
        return cls(factors, scale, eta, time_matching, below_range, micro)

    @property
    def never_on(self) -> bool:
        """Whether w is 0 at every time (``scale=0`` or ``eta=0``): nothing is changed then."""
        return self.eta == 0.0 or (not callable(self.scale) and self.scale == 0.0)

    def grid_factors(self, family: Family) -> tuple[int, ...]:
        """The factors of the family's grid: (H, W), or (F, H, W) with (1, fh, fw) for two."""
        if family.video:
            return self.factors if len(self.factors) == 3 else (1, *self.factors)
        if len(self.factors) == 3:
            raise ValueError(
                f"factors={self.factors} has 3 entries (frames, height, width), but the "
                f"{family.name} family takes images; pass 2 factors (height, width)"
            )
        return self.factors


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


class Application:
    """One application of UG to one pipeline (``pipe``) or one bare wrapper (``pipe`` None).

    ``scheduler()`` returns the scheduler to read times and the schedule from (read at each
    call, so swapping the pipeline's scheduler is fine).
    """

    def __init__(
        self,
        pipe: Any,
        scheduler: Callable[[], Any],
        options: Options,
        branch: BranchParallel | None = None,
    ) -> None:
        self.pipe = weakref.ref(pipe) if pipe is not None else None
        self.branch = branch
        self.scheduler = scheduler
        self.options = options
        self.clock = SchedulerClock()
        self.active = 0
        self.stamp = 0
        self.request: dict[str, Any] = {}
        self.saved: dict[str, Any] = {}  # pipeline attributes this application replaced
        self.handles: list[Any] = []  # hooks on other modules (the ControlNet)
        self.modules: dict[int, tuple[torch.nn.Module, Family, str | None]] = {}
        self._guides: dict[tuple, UpsampleGuidance] = {}
        self._guides_owner: tuple = ()
        self.warned = False

    # ------------------------------------------------------------------ set-up
    def add_module(self, module: torch.nn.Module, attr: str | None) -> Family:
        """Register a denoiser of this application (validated now); returns its family."""
        family = family_of(module)
        self.options.grid_factors(family)
        config = getattr(module, "config", None)
        c_in, c_out = getattr(config, "in_channels", None), getattr(config, "out_channels", None)
        if isinstance(c_in, int) and isinstance(c_out, int):
            noisy_channels(type(module).__name__, c_in, c_out, learned_variance=False)
        self.modules[id(module)] = (module, family, attr)
        self.guidance(module, family, self.options.grid_factors(family))  # validates now
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
        self.stamp = next(_stamps)
        host = self.clock.prefetch(self.scheduler())
        if host is None:
            return
        for module, family, _ in self.modules.values():
            guide = self.guidance(module, family, self.options.grid_factors(family))
            if guide.never_on:
                continue
            times = [family.model_time(v, module) for v in host]
            try:
                guide.precompute(times)
            except ValueError:
                pass  # a time outside the model's schedule: reported by the call that meets it

    def deactivate(self) -> None:
        """The pipeline stops sampling."""
        self.active = max(0, self.active - 1)

    # ------------------------------------------------------------------ maths set-up
    def guidance(
        self, module: torch.nn.Module, family: Family, factors: tuple[int, ...]
    ) -> UpsampleGuidance:
        """The core's UpsampleGuidance for the current scheduler, this module and factors."""
        scheduler = self.scheduler()
        owner = (
            scheduler,
            getattr(scheduler, "alphas_cumprod", None),
            getattr(getattr(scheduler, "config", None), "prediction_type", None),
        )
        if len(self._guides_owner) != 3 or any(
            a is not b for a, b in zip(owner, self._guides_owner, strict=True)
        ):
            self._guides, self._guides_owner = {}, owner
        key = (id(module), factors)
        if key not in self._guides:
            if scheduler is None:
                raise TypeError("the pipeline has no scheduler")
            schedule, prediction = family.schedule(scheduler, module)
            o = self.options
            self._guides[key] = UpsampleGuidance(
                schedule,
                factors,
                o.scale,
                prediction,
                o.time_matching,
                eta=o.eta,
                below_range=o.below_range,
                branch_parallel=self.branch,
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
    def check_grid(self, family: Family, call: Call, factors: tuple[int, ...]) -> None:
        """Raise, before the model runs, if the factors × patch don't divide the grid."""
        patch = family.patch(call.module)
        effective = tuple(f * p for f, p in zip(factors, patch, strict=True))
        what = f"factors {factors} x patch {patch}" if any(p > 1 for p in patch) else "factors"
        check_divisible(
            call.grid, effective, f"the {type(call.module).__name__} latent grid ({what})"
        )

    def check_request(self, sizes: dict[str, Any]) -> None:
        """Raise, before any model runs, for a pipeline request the factors don't divide."""
        pipe = self.pipeline()
        for module, family, _ in self.modules.values():
            factors = self.options.grid_factors(family)
            patch = family.patch(module)
            latent = family.request_latents(pipe, sizes)
            names = ("frames", "height", "width")[-len(factors) :]
            for name, f, p in zip(names, factors, patch, strict=True):
                n = latent.get(name)
                if n is None:
                    continue
                pixel = "num_frames" if name == "frames" else name
                gives = f"{n} latent frames" if name == "frames" else f"a latent {name} of {n}"
                note = (
                    " (a temporal factor counts latent frames)"
                    if name == "frames" and n != sizes[pixel]
                    else ""
                )
                unit = f"factor {f} x patch {p}" if p > 1 else f"factor {f}"
                try:
                    check_divisible((n,), (f * p,), f"the latent {name} ({unit})")
                except ValueError as err:
                    raise ValueError(
                        f"{pixel}={sizes[pixel]!r} gives {gives}{note}: {err}"
                    ) from None

    def outer(self, module: torch.nn.Module) -> Any:
        """What the pipeline calls for ``module``: a compile wrapper around it, or the module."""
        entry = self.modules.get(id(module))
        pipe = self.pipeline()
        attr = entry[2] if entry else None
        candidate = getattr(pipe, attr, None) if (pipe is not None and attr) else None
        if candidate is not None and candidate is not module and base_module(candidate) is module:
            return candidate
        return module

    # ------------------------------------------------------------------ the guided call
    def call_of(self, module: torch.nn.Module, named: dict, family: Family) -> Call:
        """A :class:`Call` for one denoiser call, with its grid read and checked."""
        call = Call(named, self.pipeline(), module, self.request)
        sample = named.get(family.sample_arg)
        if not isinstance(sample, torch.Tensor):
            raise TypeError(
                f"the {type(module).__name__} call has no tensor {family.sample_arg!r}: got "
                f"{type(sample).__name__}"
            )
        call.grid = family.grid_of(sample, call)
        call.batch = sample.shape[0]
        return call

    def plan(self, module: torch.nn.Module, named: dict) -> Plan | None:
        """What a call needs before it runs, or None if it is left unguided (w == 0 there).

        The grid is checked here, so that a bad size fails before the denoiser runs, and the
        low-resolution input is prepared (sent to the other process when branch-parallel).
        """
        _, family, _ = self.modules[id(module)]
        factors = self.options.grid_factors(family)
        guide = self.guidance(module, family, factors)
        if guide.never_on:
            return None
        t = named.get(family.time_arg)
        host_t = self.host_time(family, module, t)
        if host_t is not None and guide.skips(host_t):
            return None
        call = self.call_of(module, named, family)
        self.check_grid(family, call, factors)
        x = family.to_grid(named[family.sample_arg], call)
        noisy = self.noisy(module, family, x.shape[1])
        prepared = guide.prepare(x[:, :noisy], t, host_time=host_t)
        if prepared is None:
            return None
        condition = x[:, noisy:] if noisy < x.shape[1] else None
        return Plan(family, factors, guide, prepared, call, noisy, condition)

    def noisy(self, module: torch.nn.Module, family: Family, channels: int) -> int:
        """How many of the grid's ``channels`` are the noisy sample (from the model's config)."""
        out = family.out_channels(module, channels)
        learned = getattr(getattr(self.scheduler(), "config", None), "variance_type", None)
        return noisy_channels(
            type(module).__name__, channels, out, learned in ("learned", "learned_range")
        )

    def low_model(
        self, module: torch.nn.Module, named: dict, plan: Plan, low_call: Callable[..., Any]
    ) -> Callable[[torch.Tensor, Any], torch.Tensor]:
        """The low-resolution call as the core sees it: a grid in, the grid's prediction out."""
        family, factors, call, noisy, condition = (
            plan.family, plan.factors, plan.call, plan.noisy, plan.condition
        )  # fmt: skip

        def model(x_low: torch.Tensor, t_low: Any) -> torch.Tensor:
            """One low-resolution denoiser call."""
            if condition is not None:  # clean conditioning channels: block-averaged, not scaled
                x_low = torch.cat([x_low, downsample(condition, factors).to(x_low.dtype)], dim=1)
            low_grid = Call(named, call.pipe, module, call.request)
            low_grid.grid = tuple(n // f for n, f in zip(call.grid, factors, strict=True))
            low_grid.batch = call.batch
            low = dict(named)
            low.pop("return_dict", None)
            low[family.sample_arg] = family.from_grid(x_low, low_grid)
            low[family.time_arg] = t_low
            family.low_inputs(low, call, factors, self.options.micro)
            out = family.to_grid(output_sample(low_call(**low)), low_grid)
            return _signed(out[:, :noisy], family.output_sign)

        return model

    def guided_output(
        self,
        module: torch.nn.Module,
        named: dict,
        output: Any,
        low_call: Callable[..., Any],
        plan: Plan,
    ) -> Any:
        """The guided output of one planned call whose high-resolution ``output`` is known.

        ``low_call(**kwargs)`` runs the denoiser for the low-resolution call.
        """
        family, call, noisy, sign = plan.family, plan.call, plan.noisy, plan.family.output_sign
        call.named = named
        high = _signed(family.to_grid(output_sample(output), call), sign)
        variance = None
        if high.shape[1] == 2 * noisy:
            high, variance = high[:, :noisy], high[:, noisy:]
        model = self.low_model(module, named, plan, low_call)
        guided = plan.guide.finish(plan.prepared, high, model)
        if variance is not None:
            guided = torch.cat([guided, variance], dim=1)
        return replace_sample(output, family.from_grid(_signed(guided, sign), call))


class HookState:
    """What lives on a hooked denoiser: its hooks and the applications made through it."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.apps: list[Application] = []
        self.handles: list[Any] = []
        self.low_depth = 0  # > 0 during the low-resolution call (and bare-wrapper calls)
        self.kept: dict[str, tuple[list, list]] = {}
        self.pending: tuple[Application, Plan] | None = None  # set by the pre-hook
        forward = inspect.signature(type(module).forward)
        params = list(forward.parameters.values())[1:]
        self.positional = tuple(
            p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        )

    def named(self, args: tuple, kwargs: dict) -> dict[str, Any]:
        """The call's arguments by name (positional ones matched to the forward's parameters)."""
        if len(args) > len(self.positional):
            raise TypeError(
                f"the denoiser was called with {len(args)} positional arguments; its forward "
                f"takes at most {len(self.positional)}"
            )
        named = dict(zip(self.positional, args, strict=False))
        named.update(kwargs)
        return named

    def active(self) -> Application | None:
        """The application whose pipeline is sampling now (the latest started), or None."""
        best = None
        for app in self.apps:
            if app.active and (best is None or app.stamp > best.stamp):
                best = app
        return best

    def pre_hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """Before the high-resolution call: plan it (check the grid, keep consumed lists)."""
        self.pending = None
        if self.low_depth:
            return
        app = self.active()
        if app is None:
            return
        named = self.named(args, kwargs)
        plan = app.plan(module, named)
        if plan is None:
            if app.branch is not None:  # the other process still waits for this call's output
                self.pending = (app, None)
            return
        self.pending = (app, plan)
        self.kept = {
            name: (value, list(value))
            for name in plan.family.consumed_lists
            if isinstance(value := named.get(name), list)
        }

    def hook(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        """Replace the high-resolution output by the guided one."""
        if self.low_depth or self.pending is None:
            return None
        (app, plan), self.pending = self.pending, None
        if plan is None:  # branch-parallel, unguided: share the plain output
            sample = output_sample(output)
            app.branch.share(sample, sample.device)
            return None
        named = self.named(args, kwargs)
        kept, self.kept = self.kept, {}
        for name, (original, copy) in kept.items():
            if named.get(name) is original:  # the list this call got, as it was before the call
                named[name] = copy
        outer = app.outer(module)

        def low_call(**kw: Any) -> Any:
            """The low-resolution call, through the (possibly compiled) module and its hooks."""
            self.low_depth += 1
            try:
                return outer(**kw, return_dict=False)
            finally:
                self.low_depth -= 1

        guided = app.guided_output(module, named, output, low_call, plan)
        if app.branch is not None:
            sample = output_sample(guided)
            app.branch.share(sample, sample.device)
        return guided

    def low_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        """The denoiser's forward on the low process of a branch-parallel application.

        It makes only the low-resolution call (on the input the high process sends) and returns
        the guided output the high process shares; outside the pipeline's sampling, and for the
        low call itself, it is the denoiser's own forward.
        """
        forward = type(module).forward
        app = None if self.low_depth else self.active()
        if app is None or app.branch is None:
            return forward(module, *args, **kwargs)
        named = self.named(args, kwargs)
        plan = app.plan(module, named)
        device = named[app.modules[id(module)][1].sample_arg].device
        if plan is not None:
            outer = app.outer(module)

            def low_call(**kw: Any) -> Any:
                """The low-resolution call through the denoiser's own forward."""
                self.low_depth += 1
                try:
                    return outer(**kw, return_dict=False)
                finally:
                    self.low_depth -= 1

            plan.guide.low_call(plan.prepared, app.low_model(module, named, plan, low_call))
        sample = app.branch.share(None, device)
        if not named.get("return_dict", True):
            return (sample,)
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=sample)

    def install(self, module: torch.nn.Module, low_process: bool = False) -> None:
        """Register the two hooks (opaque to torch.compile: plain Python glue).

        On the low process of a branch-parallel application the forward is replaced instead
        (an instance attribute, deleted again by :meth:`uninstall`).
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


def attach(app: Application, module: torch.nn.Module) -> None:
    """Add ``app`` to the module's state; the hooks are installed for an app that can guide.

    An application with ``scale=0`` (or ``eta=0``) never changes a call, so it needs no hooks.
    """
    state = state_of(module)
    if state is None:
        state = HookState(module)
        module.__dict__[STATE] = state
    low = app.branch is not None and app.branch.role == "low"
    if state.apps and (low or any(a.branch is not None for a in state.apps)):
        raise ValueError(
            "a branch-parallel application cannot share its denoiser with another application; "
            "remove the other one first"
        )
    state.apps.append(app)
    if not app.options.never_on and not state.handles:
        state.install(module, low_process=low)


def detach(app: Application, module: torch.nn.Module) -> None:
    """Remove ``app`` from the module's state; the hooks and the state go with the last one."""
    state = state_of(module)
    if state is None:
        return
    state.apps = [a for a in state.apps if a is not app]
    if all(a.options.never_on for a in state.apps):
        state.uninstall()
    if not state.apps:
        del module.__dict__[STATE]


# ---------------------------------------------------------------------- pipeline wrappers
class ActiveBar:
    """A pipeline's progress bar that marks the application active while the loop runs."""

    def __init__(self, bar: Any, app: Application) -> None:
        self._bar = bar
        self._app = app

    def __enter__(self) -> Any:
        self._app.activate()
        return self._bar.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        self._app.deactivate()
        return self._bar.__exit__(*exc)

    def __iter__(self) -> Any:
        self._app.activate()
        try:
            yield from self._bar
        finally:
            self._app.deactivate()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bar, name)


class BinnedAtTrainedSize:
    """An image processor whose resolution binning snaps ``request / factors`` to a trained bin.

    PixArt and Sana pipelines snap the request to the nearest bin of the trained size and resize
    the result back; with UG the sampled size becomes that bin times the factors, so a request of
    exactly ``factors ×`` a bin is sampled as asked, and any other is resized back as before.
    """

    def __init__(self, processor: Any, factors: tuple[int, int]) -> None:
        self._processor = processor
        self._factors = factors

    def classify_height_width_bin(self, height: int, width: int, ratios: dict) -> tuple[int, int]:
        """The bin for ``(height / fh, width / fw)``, times the factors."""
        fh, fw = self._factors
        h, w = self._processor.classify_height_width_bin(
            int(height) // fh, int(width) // fw, ratios=ratios
        )
        return int(h) * fh, int(w) * fw

    def __getattr__(self, name: str) -> Any:
        return getattr(self._processor, name)


_MISSING = object()


def wrap_pipeline(app: Application, pipe: Any) -> None:
    """Install the application's pipeline wrappers (instance attributes, removed by unwrap)."""
    original_bar = pipe.progress_bar

    @functools.wraps(original_bar)
    def progress_bar(*args: Any, **kwargs: Any) -> Any:
        """The pipeline's progress bar; UG guides the denoiser while it runs."""
        return ActiveBar(original_bar(*args, **kwargs), app)

    _set(app, pipe, "progress_bar", progress_bar)
    for name in ("check_inputs", "prepare_latents"):
        _wrap_size_check(app, pipe, name)
    processor = getattr(pipe, "image_processor", None)
    if not app.options.never_on and callable(getattr(processor, "classify_height_width_bin", None)):
        _set(app, pipe, "image_processor", BinnedAtTrainedSize(processor, app.options.factors[-2:]))
    controlnet = getattr(pipe, "controlnet", None)
    if isinstance(controlnet, torch.nn.Module):
        hook = functools.partial(_controlnet_pre_hook, app)
        app.handles.append(
            base_module(controlnet).register_forward_pre_hook(hook, with_kwargs=True)
        )


def _controlnet_pre_hook(app: Application, module: Any, args: tuple, kwargs: dict) -> None:
    """Check the ControlNet's latent size before it runs (it runs before the denoiser)."""
    sample = args[0] if args else kwargs.get("sample")
    if app.active and isinstance(sample, torch.Tensor) and sample.ndim == 4:
        check_divisible(sample.shape, app.options.factors[-2:], "the ControlNet sample")


def _set(app: Application, pipe: Any, name: str, value: Any) -> None:
    """Set an instance attribute of the pipeline, remembering what was there."""
    app.saved[name] = pipe.__dict__.get(name, _MISSING)
    pipe.__dict__[name] = value


def _wrap_size_check(app: Application, pipe: Any, name: str) -> None:
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
        if name == "check_inputs" or not app.request:
            app.request = dict(request)
        app.check_request(request)
        return method(*args, **kwargs)

    _set(app, pipe, name, checked)


def unwrap_pipeline(app: Application, pipe: Any) -> None:
    """Restore the pipeline attributes the application replaced, and remove its other hooks."""
    for handle in app.handles:
        handle.remove()
    app.handles.clear()
    if pipe is not None:
        for name, value in app.saved.items():
            if value is _MISSING:
                pipe.__dict__.pop(name, None)
            else:
                pipe.__dict__[name] = value
    app.saved.clear()
