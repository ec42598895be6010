"""upsample-guidance: sample pretrained diffusion models above their trained resolution.

The core is framework-free: operators (:func:`downsample`, :func:`upsample`), noise schedules
(:class:`DiscreteSchedule`, :class:`SigmaSchedule`, :class:`FlowSchedule`), parameterisations, the
guidance scale over time (:func:`step_scale`), and one kernel (:func:`upsample_guidance`) that
:class:`UpsampleGuidance` and every adapter in ``ug_core.adapters`` call.
"""

from .guidance import BELOW_RANGE, UpsampleGuidance, upsample_guidance
from .operators import block_size, downsample, normalize_factors, upsample
from .parameterizations import (
    PREDICTIONS,
    guidance_coefficients,
    normalize_prediction,
    prediction_to_x0,
    x0_to_prediction,
)
from .scales import step_scale
from .schedules import TIME_MATCHING, DiscreteSchedule, FlowSchedule, Match, SigmaSchedule

__version__ = "0.1.0"

__all__ = [
    "BELOW_RANGE",
    "PREDICTIONS",
    "TIME_MATCHING",
    "DiscreteSchedule",
    "FlowSchedule",
    "Match",
    "SigmaSchedule",
    "UpsampleGuidance",
    "block_size",
    "downsample",
    "guidance_coefficients",
    "normalize_factors",
    "normalize_prediction",
    "prediction_to_x0",
    "step_scale",
    "upsample",
    "upsample_guidance",
    "x0_to_prediction",
]
