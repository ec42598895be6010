"""upsample-guidance: sample pretrained diffusion models above their trained resolution.

The core is framework-free: the options (:class:`UpsampleGuidanceConfig`), factors
(:func:`parse_factors`), operators (:func:`downsample`, :func:`upsample`), noise schedules
(:class:`DiscreteSchedule`, :class:`SigmaSchedule`, :class:`FlowSchedule`), parameterisations, the
guidance scale over time (:func:`step_scale`), and one kernel (:func:`upsample_guidance`) that
:class:`UpsampleGuidance` and every adapter in ``ug_core.adapters`` call.

The names below are imported from their modules on first use, so that ``import ug_core`` (and the
``ug`` command's argument parsing) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name → the submodule that defines it.
_EXPORTS = {
    "BELOW_RANGE": "config",
    "MIXED_TIMES": "config",
    "UpsampleGuidanceConfig": "config",
    "UpsampleGuidance": "guidance",
    "TopUpNoise": "guidance",
    "RATIO_NOISE": "config",
    "top_up_noise": "operators",
    "pool_time_map": "guidance",
    "upsample_guidance": "guidance",
    "block_size": "factors",
    "check_divisible": "factors",
    "normalize_factors": "factors",
    "parse_factors": "factors",
    "downsample": "operators",
    "upsample": "operators",
    "unwhiten": "operators",
    "whiten": "operators",
    "PREDICTIONS": "parameterizations",
    "guidance_coefficients": "parameterizations",
    "normalize_prediction": "parameterizations",
    "prediction_to_x0": "parameterizations",
    "x0_to_prediction": "parameterizations",
    "step_scale": "scales",
    "TIME_MATCHING": "config",
    "DiscreteSchedule": "schedules",
    "FlowSchedule": "schedules",
    "Match": "schedules",
    "SigmaSchedule": "schedules",
}

__all__ = [
    "BELOW_RANGE",
    "MIXED_TIMES",
    "RATIO_NOISE",
    "TopUpNoise",
    "UpsampleGuidanceConfig",
    "parse_factors",
    "pool_time_map",
    "unwhiten",
    "whiten",
    "DiscreteSchedule",
    "FlowSchedule",
    "Match",
    "PREDICTIONS",
    "SigmaSchedule",
    "TIME_MATCHING",
    "UpsampleGuidance",
    "block_size",
    "check_divisible",
    "downsample",
    "guidance_coefficients",
    "normalize_factors",
    "normalize_prediction",
    "prediction_to_x0",
    "step_scale",
    "top_up_noise",
    "upsample",
    "upsample_guidance",
    "x0_to_prediction",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on first use
    from .config import (
        BELOW_RANGE,
        MIXED_TIMES,
        RATIO_NOISE,
        TIME_MATCHING,
        UpsampleGuidanceConfig,
    )
    from .factors import block_size, check_divisible, normalize_factors, parse_factors
    from .guidance import TopUpNoise, UpsampleGuidance, pool_time_map, upsample_guidance
    from .operators import downsample, top_up_noise, unwhiten, upsample, whiten
    from .parameterizations import (
        PREDICTIONS,
        guidance_coefficients,
        normalize_prediction,
        prediction_to_x0,
        x0_to_prediction,
    )
    from .scales import step_scale
    from .schedules import DiscreteSchedule, FlowSchedule, Match, SigmaSchedule


def __getattr__(name: str) -> Any:
    """Import a public name from its submodule on first access (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ug_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's attributes, lazy exports included."""
    return sorted(set(globals()) | set(_EXPORTS))
