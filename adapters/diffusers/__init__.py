"""Upsample guidance for diffusers pipelines, UNet and transformer, in one call.

::

    from ug_core.adapters.diffusers import apply_upsample_guidance, remove_upsample_guidance

    apply_upsample_guidance(pipe, factors=(2, 2), scale=1.0, eta=0.6)
    image = pipe(prompt, height=2048, width=2048).images[0]
    remove_upsample_guidance(pipe)

``pipe.unet`` or ``pipe.transformer`` (and Wan 2.2's ``pipe.transformer_2``) is hooked; each
supported family of denoisers has a small translator in :mod:`.families` (see
:func:`supported_classes`), and the shared plumbing is in :mod:`.hooks`. For a bare denoiser and
scheduler in your own loop, use :func:`guided_denoiser` (``guided_unet`` is the same). How and
why: ``docs/design.md``. Importing this package imports no diffusers.
"""

from __future__ import annotations

import inspect
import warnings
import weakref
from collections.abc import Sequence
from typing import Any

import torch

from ...branch import BranchParallel
from ...scales import ScaleLike
from .families import FAMILIES, MICRO_CONDITIONING, Family, family_of, supported_classes
from .hooks import (
    Application,
    HostTimeWarning,
    Options,
    attach,
    base_module,
    detach,
    state_of,
    unwrap_pipeline,
    wrap_pipeline,
)

__all__ = [
    "DENOISERS",
    "FAMILIES",
    "MICRO_CONDITIONING",
    "SDXL_MICRO_CONDITIONING",
    "GuidedDenoiser",
    "GuidedUNet",
    "HostTimeWarning",
    "apply_upsample_guidance",
    "guided_denoiser",
    "guided_unet",
    "is_upsample_guided",
    "remove_upsample_guidance",
    "supported_classes",
]

#: The pipeline attributes that hold denoisers (all that are present are guided).
DENOISERS = ("unet", "transformer", "transformer_2")

#: The old name of :data:`MICRO_CONDITIONING`.
SDXL_MICRO_CONDITIONING = MICRO_CONDITIONING


def _denoisers(pipe: Any) -> list[tuple[str, torch.nn.Module]]:
    """The pipeline's denoisers as ``(attribute, module)``, seen through compile wrappers."""
    return [
        (name, base_module(value))
        for name in DENOISERS
        if isinstance(value := getattr(pipe, name, None), torch.nn.Module)
    ]


def _micro(micro_conditioning: str, sdxl_micro_conditioning: str | None) -> str:
    """The micro-conditioning option, accepting its old name."""
    if sdxl_micro_conditioning is None:
        return micro_conditioning
    warnings.warn(
        "sdxl_micro_conditioning is now micro_conditioning", DeprecationWarning, stacklevel=3
    )
    if sdxl_micro_conditioning not in MICRO_CONDITIONING:
        raise ValueError(
            f"sdxl_micro_conditioning must be one of {MICRO_CONDITIONING}, got "
            f"{sdxl_micro_conditioning!r}"
        )
    return sdxl_micro_conditioning


def apply_upsample_guidance(
    pipe: Any,
    factors: Sequence[int] = (2, 2),
    scale: ScaleLike = 1.0,
    *,
    eta: float = 1.0,
    time_matching: str = "nearest",
    below_range: str = "clamp",
    micro_conditioning: str = "low",
    sdxl_micro_conditioning: str | None = None,
    branch_parallel: Any = None,
) -> Any:
    """Turn a diffusers pipeline into an upsample-guided one; returns ``pipe``.

    ``factors`` are the upsampling factors of the latent grid: ``(fh, fw)`` for images, and for
    video ``(ff, fh, fw)`` on (frames, height, width) or ``(fh, fw)`` for space only; a temporal
    factor counts latent frames. Then call the pipeline at the larger size. ``scale`` is θ (a
    float, or a callable of the time fraction, 1 = noisiest), ``eta`` the paper's η (on during
    the noisiest ``eta`` of the time axis), ``time_matching`` and ``below_range`` as in
    :class:`ug_core.UpsampleGuidance`. ``micro_conditioning`` is ``"low"`` (default: the low call's
    size conditioning, SDXL's time ids or PixArt-α's resolution, describes the low-resolution
    image) or ``"high"`` (keep the high-resolution values); ``sdxl_micro_conditioning`` is its
    old name.

    The guidance runs while this pipeline samples (its progress bar is running): the same
    denoiser called by another pipeline or directly is not changed. Applying again replaces the
    previous application; :func:`remove_upsample_guidance` undoes it bit for bit, and
    ``scale=0`` leaves every output bit-identical to the plain pipeline's.
    ``branch_parallel`` (a ``torch.distributed`` group of two processes, or a
    :class:`ug_core.branch.BranchParallel`) makes the low-resolution call on the other process:
    both processes apply it to the same pipeline and call it with the same arguments; rank 0 of
    the group makes the high calls, rank 1 the low ones, and both return the guided result.
    PixArt and Sana's resolution binning snaps ``request / factors`` to a trained-size bin and
    samples that bin times the factors.

    Raises a TypeError for a pipeline without a supported denoiser (the error lists the
    families) and a ValueError for invalid options; a size the factors (times the patch size)
    don't divide raises a ValueError when the pipeline is called, before any model runs.
    """
    denoisers = _denoisers(pipe)
    if not denoisers:
        has = [n for n in ("prior", "decoder", "prior_transformer") if getattr(pipe, n, None)]
        extra = f" (it has {', '.join(has)})" if has else ""
        raise TypeError(
            "pipe must be a diffusers pipeline with a denoiser (pipe.unet or pipe.transformer), "
            f"got {type(pipe).__name__}{extra}"
        )
    for _, module in denoisers:
        family_of(module)  # a clear error for an unsupported denoiser, first
    if getattr(pipe, "scheduler", None) is None:
        raise TypeError(f"pipe ({type(pipe).__name__}) has no scheduler")
    try:
        pipe_ref = weakref.ref(pipe)
    except TypeError as err:
        raise TypeError(f"pipe must be a diffusers pipeline, got {type(pipe).__name__}") from err
    options = Options.check(
        factors,
        scale,
        eta,
        time_matching,
        below_range,
        _micro(micro_conditioning, sdxl_micro_conditioning),
    )
    branch = branch_parallel
    if branch is not None and not isinstance(branch, BranchParallel):
        branch = BranchParallel(branch)
    app = Application(pipe, lambda: pipe_ref().scheduler, options, branch)
    for attr, module in denoisers:  # validates every option before anything is replaced
        app.add_module(module, attr)
    remove_upsample_guidance(pipe)
    for _, module in denoisers:
        attach(app, module)
    wrap_pipeline(app, pipe)
    return pipe


def _applications(pipe: Any) -> list[Application]:
    """The applications made to this pipeline, found on its denoisers."""
    found: list[Application] = []
    for _, module in _denoisers(pipe):
        state = state_of(module)
        for app in state.apps if state is not None else ():
            if app.pipeline() is pipe and app not in found:
                found.append(app)
    return found


def remove_upsample_guidance(pipe: Any) -> Any:
    """Undo :func:`apply_upsample_guidance` (a no-op if it was not applied); returns ``pipe``."""
    for app in _applications(pipe):
        for module, _, _ in list(app.modules.values()):
            detach(app, module)
        unwrap_pipeline(app, pipe)
    return pipe


def is_upsample_guided(pipe_or_module: Any) -> bool:
    """Whether upsample guidance is applied to this pipeline, or through this denoiser."""
    if isinstance(pipe_or_module, torch.nn.Module):
        state = state_of(base_module(pipe_or_module))
        return state is not None and bool(state.apps)
    return bool(_applications(pipe_or_module))


class GuidedDenoiser:
    """A diffusers denoiser (UNet or transformer) with upsample guidance, for your own loop.

    Call it exactly like the denoiser (same arguments, same output type); the schedule and
    prediction type come from ``scheduler`` (read at each call), and the options are those of
    :func:`apply_upsample_guidance`. The denoiser itself is not modified. Feed it what the
    denoiser gets in a diffusers loop (e.g. ``scheduler.scale_model_input(x, t)`` at the
    scheduler's timestep ``t``). The time is read on the host from ``scheduler`` (its timesteps
    are copied once per ``set_timesteps``, at the first call after it).
    """

    def __init__(
        self,
        denoiser: torch.nn.Module,
        scheduler: Any,
        factors: Sequence[int] = (2, 2),
        scale: ScaleLike = 1.0,
        *,
        eta: float = 1.0,
        time_matching: str = "nearest",
        below_range: str = "clamp",
        micro_conditioning: str = "low",
        sdxl_micro_conditioning: str | None = None,
    ) -> None:
        if not isinstance(denoiser, torch.nn.Module):
            raise TypeError(
                "denoiser must be a torch.nn.Module (a diffusers UNet or transformer), got "
                f"{type(denoiser).__name__}"
            )
        self.denoiser = denoiser
        self.scheduler = scheduler
        options = Options.check(
            factors,
            scale,
            eta,
            time_matching,
            below_range,
            _micro(micro_conditioning, sdxl_micro_conditioning),
        )
        self.app = Application(None, lambda: self.scheduler, options)
        self.family: Family = self.app.add_module(base_module(denoiser), None)
        params = list(inspect.signature(type(base_module(denoiser)).forward).parameters.values())
        self._positional = tuple(
            p.name for p in params[1:] if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        )

    @property
    def unet(self) -> torch.nn.Module:
        """The wrapped denoiser (the old name)."""
        return self.denoiser

    @property
    def config(self) -> Any:
        """The denoiser's config."""
        return self.denoiser.config

    @property
    def dtype(self) -> torch.dtype:
        """The denoiser's dtype."""
        return self.denoiser.dtype

    @property
    def device(self) -> torch.device:
        """The denoiser's device."""
        return self.denoiser.device

    def __repr__(self) -> str:
        module = base_module(self.denoiser)
        guide = self.app.guidance(module, self.family, self.app.options.grid_factors(self.family))
        return f"GuidedDenoiser({type(module).__name__}, {guide!r})"

    def _run(self, *args: Any, **kwargs: Any) -> Any:
        """Call the denoiser with the hooks of any pipeline application bypassed."""
        state = state_of(base_module(self.denoiser))
        if state is not None:
            state.low_depth += 1
        try:
            return self.denoiser(*args, **kwargs)
        finally:
            if state is not None:
                state.low_depth -= 1

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The guided call: the denoiser's output with the upsample-guidance term added."""
        module = base_module(self.denoiser)
        if len(args) > len(self._positional):
            raise TypeError(
                f"the denoiser takes at most {len(self._positional)} positional arguments, got "
                f"{len(args)}"
            )
        named = dict(zip(self._positional, args, strict=False))
        named.update(kwargs)
        app, family = self.app, self.family
        plan = app.plan(module, named)
        if plan is None:
            return self._run(*args, **kwargs)
        # The UNet consumes residual lists (T2I-Adapter's are popped): keep them as given.
        kept = {n: list(v) for n in family.consumed_lists if isinstance(v := named.get(n), list)}
        output = self._run(*args, **kwargs)
        named.update(kept)

        def low_call(**kw: Any) -> Any:
            """The low-resolution call."""
            return self._run(**kw, return_dict=False)

        guided = app.guided_output(module, named, output, low_call, plan)
        return output if guided is None else guided


def guided_denoiser(
    denoiser: torch.nn.Module,
    scheduler: Any,
    factors: Sequence[int] = (2, 2),
    scale: ScaleLike = 1.0,
    *,
    eta: float = 1.0,
    time_matching: str = "nearest",
    below_range: str = "clamp",
    micro_conditioning: str = "low",
    sdxl_micro_conditioning: str | None = None,
) -> GuidedDenoiser:
    """A :class:`GuidedDenoiser`: ``denoiser`` with upsample guidance, called like it.

    Example::

        guided = guided_denoiser(unet, scheduler, factors=(2, 2), scale=1.0, eta=0.6)
        for t in scheduler.timesteps:
            x_in = scheduler.scale_model_input(torch.cat([x] * 2), t)
            eps = guided(x_in, t, encoder_hidden_states=embeds).sample
            ...
    """
    return GuidedDenoiser(
        denoiser,
        scheduler,
        factors,
        scale,
        eta=eta,
        time_matching=time_matching,
        below_range=below_range,
        micro_conditioning=micro_conditioning,
        sdxl_micro_conditioning=sdxl_micro_conditioning,
    )


#: The old names, kept: ``guided_unet`` wraps any supported denoiser, a transformer too.
guided_unet = guided_denoiser
GuidedUNet = GuidedDenoiser
