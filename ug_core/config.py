"""What upsample guidance does, as one frozen object that every entry point takes.

:class:`UpsampleGuidanceConfig` holds the options with the same names everywhere (the core's
:class:`~ug_core.UpsampleGuidance`, the diffusers, k-diffusion and ComfyUI adapters) and
validates them once, when it is made. The entry points also take the short form, the same
names as keyword arguments; :func:`resolve_config` turns either into a config. This module
imports no torch.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

from .factors import Factor, normalize_factors, parse_factors
from .scales import ScaleLike, StepScale, check_eta, check_scale

__all__ = [
    "UpsampleGuidanceConfig",
    "resolve_config",
    "TIME_MATCHING",
    "BELOW_RANGE",
    "DEVICE_TIME",
    "MIXED_TIMES",
    "MICRO_CONDITIONING",
    "RATIO_NOISE",
]

#: The time-matching modes: ``"nearest"`` (the paper's appendix A: the nearest schedule entry),
#: ``"exact"`` (the fractional time whose SNR is exactly k·SNR(t)) and ``"off"`` (τ = t, the
#: paper's §5.3 ablation; only useful to measure what matching buys).
TIME_MATCHING = ("nearest", "exact", "off")

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

#: How a time map combines times that differ inside one block (one low-resolution element):
#: ``"error"`` refuses it, ``"max"`` takes the noisiest, ``"min"`` the cleanest, ``"mean"`` the
#: mean of the block's times.
MIXED_TIMES = ("error", "max", "min", "mean")

#: What a ratio factor (p/q) does about the uneven noise of ``D[x]`` (its covariance is ``s²·DDᵀ``,
#: not ``s²·I/k``; ``docs/maths.md`` §13): ``"top-up"`` adds noise ζ ~ N(0, I/k − DDᵀ), drawn once
#: per sample for the whole trajectory, to the low call's input and takes it out of the result
#: (exact for an exact model); ``"whiten"`` feeds ``W·D[x]`` with ``W = (k·DDᵀ)^(-1/2)`` and
#: unwhitens the prediction; ``"plain"`` uses ``D[x]`` with the mean k. Integer factors: all one.
RATIO_NOISE = ("top-up", "whiten", "plain")

#: ``micro_conditioning`` values: ``"low"`` (the low-resolution call's size conditioning describes
#: the low-resolution image it sees; default) or ``"high"`` (it gets the high-resolution values).
MICRO_CONDITIONING = ("low", "high")


def _choice(value: object, name: str, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of ``allowed``, else a ValueError naming ``name``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class UpsampleGuidanceConfig:
    """The options of upsample guidance, validated on creation (the same names everywhere).

    Example: ``UpsampleGuidanceConfig(factors=(2, 2), scale=1.0, eta=0.6)``.
    """

    factors: tuple[Factor, ...] = (2, 2)
    """Upsampling factor per trailing axis (sampled size / trained size): ints or ratios p/q.

    One number (or ``'3/2'``) means both spatial axes; a sequence gives one per trailing axis.
    """
    scale: ScaleLike = 1.0
    """θ: the guidance weight w (dimensionless), or a callable from the time fraction to w."""
    eta: float = 1.0
    """η: guidance is on during the noisiest η of the time axis (a time fraction in [0, 1])."""
    time_matching: str = "nearest"
    """How the low call's time τ is found (one of :data:`TIME_MATCHING`)."""
    below_range: str = "clamp"
    """Where τ falls below the schedule's first time (one of :data:`BELOW_RANGE`)."""
    match_power: bool = True
    """Whether the low input is scaled by 1/√P to the model's power (False: ablation only)."""
    device_time: str = "compute"
    """What a time on an accelerator does without a host time (one of :data:`DEVICE_TIME`)."""
    mixed_times: str = "error"
    """How a time map's differing times inside one block combine (one of :data:`MIXED_TIMES`)."""
    micro_conditioning: str = "low"
    """The low call's size conditioning (SDXL, PixArt-α): of the low image, or kept (adapters)."""
    ratio_noise: str = "top-up"
    """How a ratio factor evens out the noise of ``D[x]`` (one of :data:`RATIO_NOISE`)."""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        single = isinstance(self.factors, (str, numbers.Real))  # one number: both spatial axes
        factors = parse_factors(self.factors) if single else normalize_factors(self.factors)
        set_(self, "factors", factors)
        scale, eta = check_scale(self.scale), check_eta(self.eta)
        if isinstance(scale, StepScale):  # one gate: step_scale(θ, η) is scale=θ, eta=η
            if eta != 1.0 and scale.eta != 1.0:
                raise ValueError(
                    f"eta is given twice: eta={eta!r} and scale={scale!r}; pass the gate once"
                )
            scale, eta = scale.theta, scale.eta if eta == 1.0 else eta
        set_(self, "scale", scale)
        set_(self, "eta", eta)
        _choice(self.time_matching, "time_matching", TIME_MATCHING)
        _choice(self.below_range, "below_range", BELOW_RANGE)
        _choice(self.device_time, "device_time", DEVICE_TIME)
        _choice(self.mixed_times, "mixed_times", MIXED_TIMES)
        _choice(self.micro_conditioning, "micro_conditioning", MICRO_CONDITIONING)
        _choice(self.ratio_noise, "ratio_noise", RATIO_NOISE)
        if not isinstance(self.match_power, bool):
            raise TypeError(f"match_power must be a bool, got {self.match_power!r}")

    @property
    def never_on(self) -> bool:
        """True when w is 0 at every time (``scale=0`` or ``eta=0``): nothing is ever changed."""
        return self.eta == 0.0 or (not callable(self.scale) and self.scale == 0.0)

    def replace(self, **changes: Any) -> UpsampleGuidanceConfig:
        """A copy with some options changed (validated again)."""
        return dataclasses.replace(self, **changes)


_FIELDS = tuple(f.name for f in dataclasses.fields(UpsampleGuidanceConfig))


def resolve_config(config: UpsampleGuidanceConfig | None = None, **options: Any) -> Any:
    """The config of an entry point: ``config`` itself, or one made from the short form.

    ``options`` are the short form's keyword arguments; None means "not given" (the default).
    Giving both a config and options, or an unknown option, is an error that names them.
    """
    given = {name: value for name, value in options.items() if value is not None}
    unknown = sorted(set(given) - set(_FIELDS))
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)}; the options are {_FIELDS}")
    if config is None:
        return UpsampleGuidanceConfig(**given)
    if not isinstance(config, UpsampleGuidanceConfig):
        raise TypeError(f"config must be an UpsampleGuidanceConfig, got {type(config).__name__}")
    if given:
        raise ValueError(
            f"pass either config= or the options, not both: got config and {sorted(given)}; use "
            "config.replace(...) to change a config"
        )
    return config
