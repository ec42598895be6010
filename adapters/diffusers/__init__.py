"""Upsample guidance for diffusers pipelines, UNet and transformer, in one call.

::

    from ug_core.adapters.diffusers import apply_upsample_guidance, remove_upsample_guidance

    apply_upsample_guidance(pipe, factors=(2, 2), scale=1.0, eta=0.6)
    image = pipe(prompt, height=2048, width=2048).images[0]
    remove_upsample_guidance(pipe)

``pipe.unet`` or ``pipe.transformer`` (and Wan 2.2's ``pipe.transformer_2``) is hooked; each
supported family of denoisers has a small translator in :mod:`.families` (see
:func:`supported_classes`), and the shared plumbing is in :mod:`.hooks`. For a bare denoiser and
scheduler in your own loop, use :func:`guided_denoiser`; for a denoiser class of your own,
write a :class:`Family` and :func:`register_family` it (``docs/families.md``). The options are an
:class:`~ug_core.UpsampleGuidanceConfig` (``config=``) or its fields as keyword arguments. How
and why: ``docs/design.md``. Importing this package imports no diffusers.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from ...branch import BranchParallel
from ...config import UpsampleGuidanceConfig, resolve_config
from ...factors import parse_factors
from ...scales import ScaleLike
from .families import (
    FAMILIES,
    MICRO_CONDITIONING,
    Call,
    Family,
    family_of,
    register_family,
    supported_classes,
)
from .hooks import (
    HostTimeWarning,
    Session,
    attach,
    base_module,
    bind_arguments,
    consumed_copies,
    detach,
    hooks_bypassed,
    restore_consumed,
    state_of,
    unhooked_caller,
    unwrap_pipeline,
    wrap_pipeline,
)

__all__ = [
    "DENOISERS",
    "FAMILIES",
    "Call",
    "Family",
    "MICRO_CONDITIONING",
    "GuidedDenoiser",
    "HostTimeWarning",
    "apply_upsample_guidance",
    "guided_denoiser",
    "is_upsample_guided",
    "register_family",
    "remove_upsample_guidance",
    "supported_classes",
]

#: The pipeline attributes that hold denoisers (all that are present are guided).
DENOISERS = ("unet", "transformer", "transformer_2")


def _denoisers(pipe: Any) -> list[tuple[str, torch.nn.Module]]:
    """The pipeline's denoisers as ``(attribute, module)``, seen through compile wrappers."""
    return [
        (name, base_module(value))
        for name in DENOISERS
        if isinstance(value := getattr(pipe, name, None), torch.nn.Module)
    ]


def _family_errors(denoisers: list[tuple[str, torch.nn.Module]]) -> str:
    """The registry's errors for denoisers without a family, as a sentence to append, or ''."""
    errors = []
    for _, module in denoisers:
        try:
            family_of(module)
        except TypeError as err:
            errors.append(str(err))
    return "".join(f". {e}" for e in errors)


def _config(config: UpsampleGuidanceConfig | None, factors: Any, **options: Any) -> Any:
    """The config of a diffusers entry point; factors in the pipeline's form (2 or 3 entries)."""
    if factors is not None:
        factors = parse_factors(factors)
    return resolve_config(config, factors=factors, **options)


def apply_upsample_guidance(
    pipe: Any,
    factors: Any = None,
    scale: ScaleLike | None = None,
    *,
    config: UpsampleGuidanceConfig | None = None,
    branch_parallel: Any = None,
    **options: Any,
) -> Any:
    """Turn a diffusers pipeline into an upsample-guided one; returns ``pipe``.

    ``factors`` (default ``(2, 2)``) are the upsampling factors of the latent grid: ``(fh, fw)``
    for images, and for video ``(ff, fh, fw)`` on (frames, height, width) or ``(fh, fw)`` for
    space only; one number means both spatial axes, and ratios such as ``1.5`` or ``'3/2'`` are
    fractional factors; a temporal factor counts latent frames. Then call the pipeline at the
    larger size. ``scale`` is θ (default 1; a float, or a callable of the time fraction, 1 =
    noisiest); the other options (``eta``, ``time_matching``, ``below_range``,
    ``micro_conditioning``, ...) are the fields of :class:`~ug_core.UpsampleGuidanceConfig`,
    given as keywords or as ``config=``. ``micro_conditioning="low"`` (default) makes the low
    call's size conditioning (SDXL's time ids, PixArt-α's resolution) describe the low image.

    The guidance runs while this pipeline samples (its progress bar is running): the same
    denoiser called by another pipeline or directly is not changed. Applying again replaces the
    previous application; :func:`remove_upsample_guidance` undoes it bit for bit, and
    ``scale=0`` or ``eta=0`` leaves every output bit-identical to the plain pipeline's, at any
    size. ``branch_parallel`` (a ``torch.distributed`` group of two processes, or a
    :class:`ug_core.branch.BranchParallel`) makes the low-resolution call on the other process:
    both processes apply it to the same pipeline and call it with the same arguments; rank 0 of
    the group makes the high calls, rank 1 the low ones, and both return the guided result.
    PixArt and Sana's resolution binning snaps ``request / factors`` to a trained-size bin and
    samples that bin times the factors.

    Raises a TypeError for a pipeline the census (:mod:`.census`) lists as unsupported or not
    applicable (with its reason), or without a supported denoiser (the error lists the
    families; :func:`register_family` adds your own), and a ValueError for invalid options; a
    size the factors (times the patch size) don't map to a whole trained size raises a
    ValueError when the pipeline is called, before any model runs, with the nearest sizes that
    work in pixels.
    """
    denoisers = _denoisers(pipe)
    from .census import refusal  # not at import: `python -m ...census` runs it as a script

    refused = refusal(type(pipe))
    if refused is not None:
        raise TypeError(f"{refused}{_family_errors(denoisers)}")
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
    config = _config(config, factors, scale=scale, **options)
    branch = branch_parallel
    if branch is not None and not isinstance(branch, BranchParallel):
        branch = BranchParallel(branch)
    session = Session(pipe, lambda: pipe_ref().scheduler, config, branch)
    for attr, module in denoisers:  # validates every option before anything is replaced
        session.add_denoiser(module, attr)
    remove_upsample_guidance(pipe)
    for _, module in denoisers:
        attach(session, module)
    wrap_pipeline(session, pipe)
    return pipe


def _sessions(pipe: Any) -> list[Session]:
    """The sessions made for this pipeline, found on its denoisers."""
    found: list[Session] = []
    for _, module in _denoisers(pipe):
        state = state_of(module)
        for session in state.sessions if state is not None else ():
            if session.pipeline() is pipe and session not in found:
                found.append(session)
    return found


def remove_upsample_guidance(pipe: Any) -> Any:
    """Undo :func:`apply_upsample_guidance` (a no-op if it was not applied); returns ``pipe``."""
    for session in _sessions(pipe):
        for module, _, _ in list(session.denoisers.values()):
            detach(session, module)
        unwrap_pipeline(session, pipe)
    return pipe


def is_upsample_guided(pipe_or_module: Any) -> bool:
    """Whether upsample guidance is applied to this pipeline, or through this denoiser."""
    if isinstance(pipe_or_module, torch.nn.Module):
        state = state_of(base_module(pipe_or_module))
        return state is not None and bool(state.sessions)
    return bool(_sessions(pipe_or_module))


class GuidedDenoiser:
    """A diffusers denoiser (UNet or transformer) with upsample guidance, for your own loop.

    Call it exactly like the denoiser (same arguments, same output type); the schedule and
    prediction type come from ``scheduler`` (read at each call), and the options are those of
    :func:`apply_upsample_guidance`. The denoiser itself is not modified. Feed it what the
    denoiser gets in a diffusers loop (e.g. ``scheduler.scale_model_input(x, t)`` at the
    scheduler's timestep ``t``). The time is read on the host from ``scheduler`` (its timesteps
    are copied once per ``set_timesteps``, at the first call after it).

    Example::

        guided = guided_denoiser(unet, scheduler, factors=(2, 2), scale=1.0, eta=0.6)
        for t in scheduler.timesteps:
            x_in = scheduler.scale_model_input(torch.cat([x] * 2), t)
            eps = guided(x_in, t, encoder_hidden_states=embeds).sample
            ...
    """

    def __init__(
        self,
        denoiser: torch.nn.Module,
        scheduler: Any,
        factors: Any = None,
        scale: ScaleLike | None = None,
        *,
        config: UpsampleGuidanceConfig | None = None,
        **options: Any,
    ) -> None:
        if not isinstance(denoiser, torch.nn.Module):
            raise TypeError(
                "denoiser must be a torch.nn.Module (a diffusers UNet or transformer), got "
                f"{type(denoiser).__name__}"
            )
        self.denoiser = denoiser
        self.scheduler = scheduler
        config = _config(config, factors, scale=scale, **options)
        self.session = Session(None, lambda: self.scheduler, config)
        self.family: Family = self.session.add_denoiser(base_module(denoiser), None)

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
        guide = self.session.guidance(module, self.family)
        return f"GuidedDenoiser({type(module).__name__}, {guide!r})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The guided call: the denoiser's output with the upsample-guidance term added."""
        module = base_module(self.denoiser)
        arguments = bind_arguments(module, args, kwargs)
        guided = self.session.guided_call(module, arguments)
        consumed = consumed_copies(self.family, arguments) if guided is not None else {}
        with hooks_bypassed(module):  # a pipeline's application of the same denoiser: not here
            output = self.denoiser(*args, **kwargs)
        if guided is None:
            return output
        restore_consumed(arguments, consumed)
        return guided.output(output, unhooked_caller(module, self.denoiser, self.session))


#: ``guided_denoiser(denoiser, scheduler, factors, scale, eta=...)`` builds a
#: :class:`GuidedDenoiser`.
guided_denoiser = GuidedDenoiser
