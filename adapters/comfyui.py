"""Upsample guidance as a ComfyUI node, "Upsample Guidance", that patches a ``MODEL``.

ComfyUI loads it through a one-line file in ``custom_nodes/`` (:func:`install_custom_node`, or
``ug comfyui-install PATH``). The node returns ``model.clone()`` with an ``APPLY_MODEL`` wrapper
(``add_wrapper_with_key``) where the running ComfyUI has composable wrappers, else a
``model_function_wrapper``. The wrapper sees the noisy sample in the sampler's space and sigma,
and returns the denoised x0 estimate; the guidance is applied there with the core's time and power
matching: EPS, V_PREDICTION, EDM and X0 models in sigma form (``x = x0 + σ·n``, the low call at
``σ/√k``), CONST models in rectified-flow form. One low call for the whole cond + uncond batch;
ControlNet residuals, ``c_concat`` and SDXL's size conditioning adapted for it. Which ComfyUI
sources it follows, the conflicts and the reasons: ``docs/comfyui.md``. Importing this module
imports nothing from ComfyUI.
"""

from __future__ import annotations

import copy
import math
import numbers
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..guidance import UpsampleGuidance
from ..operators import check_divisible, downsample, normalize_factors
from ..schedules import TIME_MATCHING, FlowSchedule, SigmaSchedule

__all__ = [
    "NODE_CLASS_MAPPINGS",
    "NODE_DISPLAY_NAME_MAPPINGS",
    "UpsampleGuidanceNode",
    "UpsampleGuidanceWrapper",
    "WRAPPER_KEY",
    "SIZE_CONDITIONING",
    "TIME_MATCHING_CHOICES",
    "CUSTOM_NODE_FILE",
    "CUSTOM_NODE_SOURCE",
    "parse_factors",
    "low_res_size_conditioning",
    "sampling_form",
    "comfy_schedule",
    "install_wrapper",
    "install_custom_node",
]

#: The key our wrapper is registered under (``add_wrapper_with_key``); patching twice replaces it.
WRAPPER_KEY = "upsample_guidance"

#: ``size_conditioning`` choices: the low call's SDXL size embeddings describe the low-resolution
#: image (``"low_resolution"``, as native sampling at that size would), or stay as they are.
SIZE_CONDITIONING = ("low_resolution", "keep")

#: ``time_matching`` choices. In sigma space ``"exact"`` and ``"nearest"`` agree (the low call gets
#: ``σ/√k`` and a discrete model's own ``timestep(σ)`` rounds it); ``"off"`` is an ablation.
TIME_MATCHING_CHOICES = ("exact",) + tuple(m for m in TIME_MATCHING if m != "exact")

#: The file :func:`install_custom_node` writes into ComfyUI's ``custom_nodes/`` folder.
CUSTOM_NODE_FILE = "upsample_guidance.py"
#: Its one line: ComfyUI finds the node through these two mappings.
CUSTOM_NODE_SOURCE = (
    "from ug_core.adapters.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa\n"
)

_MAX_FACTOR = 4

# Model sampling, by class name along the MRO (ComfyUI builds ``class ModelSampling(s, c)``).
_SIGMA_FORM = ("EPS", "V_PREDICTION")  # EDM and X0 subclass these; all have x = x0 + σ·n
_FLOW_FORM = ("CONST",)
_UNSUPPORTED_SAMPLING = {
    "IMG_TO_IMG": "an image-to-image model (Lotus) with no noise to match",
    "IMG_TO_IMG_FLOW": "an image-to-image flow model with no noise to match",
    "IMG_TO_IMG_VELOCITY": "an image-to-image flow model with no noise to match",
    "StableCascadeSampling": "Stable Cascade's compressed latents and cosine time axis",
    "ModelSamplingAV": "packed audio-video latents, whose streams D cannot average",
}

# SDXL's ``y`` (model_base.SDXL.encode_adm): the pooled text embedding, then one 256-wide
# ``timestep_embedding`` ([cos, sin], max period 10000) per field. Height-like fields scale with the
# height factor, width-like ones with the width factor; None stays (the refiner's aesthetic score).
_SIZE_LAYOUTS = {
    "SDXL": ("height", "width", "crop_h", "crop_w", "target_height", "target_width"),
    "SDXLRefiner": ("height", "width", "crop_h", "crop_w", None),
}
_HEIGHT_FIELDS = ("height", "crop_h", "target_height")
_EMBED_DIM = 256
_MAX_PERIOD = 10000.0


# --- the node's inputs ---------------------------------------------------------------------------


def _axis_factor(value: object, name: str, low: int) -> int:
    """One integer factor in ``[low, 4]``, or a TypeError/ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer in [{low}, {_MAX_FACTOR}], got {value!r}")
    if not low <= int(value) <= _MAX_FACTOR:
        raise ValueError(f"{name} must be an integer in [{low}, {_MAX_FACTOR}], got {value!r}")
    return int(value)


def _factor_from_text(text: str) -> tuple[int, ...]:
    """``"2"`` → (2, 2); ``"2x3"`` → (2, 3) (H, W); ``"2x2x2"`` → (2, 2, 2) (frames, H, W)."""
    parts = [p.strip() for p in text.lower().split("x")]
    if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        raise ValueError(
            f"factor must be 2, 3 or 4, or 'HxW' or 'FxHxW' with integers in [1, {_MAX_FACTOR}] "
            f"(e.g. '2', '2x3', '2x2x2'), got {text!r}"
        )
    if len(parts) == 1:
        return (_axis_factor(int(parts[0]), "factor", 2),) * 2
    return tuple(_axis_factor(int(p), f"factor {text!r}: each axis", 1) for p in parts)


def parse_factors(factor: int | str, temporal_factor: int = 1) -> tuple[int, ...]:
    """The node's factors: ``(height, width)``, or ``(frames, height, width)`` for video.

    ``factor`` is an int in [2, 4] (both spatial axes) or a string ``"F"``, ``"HxW"`` or
    ``"FxHxW"``; ``temporal_factor`` (an int in [1, 4]) adds a frames factor for video latents
    ``(B, C, F, H, W)``. A frames factor of 1 is dropped. At least one factor must exceed 1.
    """
    if isinstance(factor, str):
        factors = _factor_from_text(factor)
    else:
        factors = (_axis_factor(factor, "factor", 2),) * 2
    temporal = _axis_factor(temporal_factor, "temporal_factor", 1)
    if temporal > 1:
        if len(factors) == 3:
            raise ValueError(
                f"factor {factor!r} already names a frames factor; set temporal_factor=1 "
                f"(got {temporal_factor!r}) or give factor as 'HxW'"
            )
        factors = (temporal,) + factors
    if len(factors) == 3 and factors[0] == 1:
        factors = factors[1:]
    if math.prod(factors) == 1:
        raise ValueError(f"factor {factor!r} does not upsample: at least one factor must be > 1")
    return normalize_factors(factors)


def _check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, else a ValueError naming ``name``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value  # type: ignore[return-value]


# --- model sampling -> the core's schedule -------------------------------------------------------


def _class_names(obj: object) -> list[str]:
    """The class names along ``type(obj)``'s MRO (ComfyUI is not imported to test classes)."""
    return [cls.__name__ for cls in type(obj).__mro__]


def sampling_form(model_sampling: object) -> str:
    """``"sigma"`` (EPS, V_PREDICTION, EDM, X0: ``x = x0 + σ·n``) or ``"flow"`` (CONST).

    Anything else is a ValueError naming the model sampling class.
    """
    names = _class_names(model_sampling)
    for name in names:
        if name in _UNSUPPORTED_SAMPLING:
            raise ValueError(
                f"model_sampling {names[0]} ({name}) is not supported: "
                f"{_UNSUPPORTED_SAMPLING[name]}; supported are EPS, V_PREDICTION, EDM, X0 and "
                "CONST (rectified flow) models"
            )
    if any(name in _FLOW_FORM for name in names):
        return "flow"
    if any(name in _SIGMA_FORM for name in names):
        return "sigma"
    raise ValueError(
        f"model_sampling {names[0]} (classes {names[:-1]}) is not supported: upsample guidance "
        "needs EPS, V_PREDICTION, EDM, X0 or CONST (rectified flow) model sampling"
    )


def _discrete_fraction(model_sampling: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """Sigma → ``timestep(σ)/(N − 1)``: the paper's t/T on a discrete model's own time axis."""
    last = len(model_sampling.sigmas) - 1

    def fraction(sigma: torch.Tensor) -> torch.Tensor:
        """Return the time fraction of each sigma, on the sigmas' device (nothing read back)."""
        ref = model_sampling.sigmas
        t = model_sampling.timestep(sigma.to(device=ref.device, dtype=ref.dtype))
        return t.to(device=sigma.device, dtype=sigma.dtype) / last

    return fraction


def comfy_schedule(model_sampling: Any) -> SigmaSchedule | FlowSchedule:
    """The core schedule of a ComfyUI ``model_sampling``, in its time unit (sigma).

    Sigma form: ``SigmaSchedule(sigma_min, sigma_max)`` read from the model sampling; η gates by
    ``timestep(σ)/(N − 1)`` on discrete models (``ModelSamplingDiscrete``), by the position of
    ``log σ`` in the range on continuous ones. Flow form: ``FlowSchedule(time_scale=1)`` (σ is the
    flow time t in [0, 1], and the time fraction).
    """
    if sampling_form(model_sampling) == "flow":
        return FlowSchedule(time_scale=1.0)
    names = _class_names(model_sampling)
    discrete = "ModelSamplingDiscrete" in names and "ModelSamplingDiscreteEDM" not in names
    fraction = _discrete_fraction(model_sampling) if discrete else None
    return SigmaSchedule(
        float(model_sampling.sigma_min), float(model_sampling.sigma_max), fraction=fraction
    )


# --- the low-resolution call's other inputs ------------------------------------------------------


def _check_latent(x: torch.Tensor, factors: tuple[int, ...]) -> None:
    """A latent ``(B, C, H, W)`` or ``(B, C, F, H, W)`` whose trailing sizes the factors divide."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"the model's input must be a tensor, got {type(x).__name__}")
    if x.ndim not in (4, 5):
        raise ValueError(
            f"upsample guidance needs latents of shape (B, C, H, W) or (B, C, F, H, W), got "
            f"shape {tuple(x.shape)}"
        )
    if len(factors) == 3 and x.ndim != 5:
        raise ValueError(
            f"a frames factor (factors {factors}) needs a video latent (B, C, F, H, W), got "
            f"shape {tuple(x.shape)}; set temporal_factor=1 or use factor 'HxW'"
        )
    check_divisible(x.shape, factors, "the latent")


def _check_spatial(
    value: torch.Tensor, name: str, x: torch.Tensor, factors: tuple[int, ...]
) -> None:
    """A spatial input must have x's number of axes and sizes the factors divide."""
    if value.ndim != x.ndim:
        raise ValueError(
            f"{name} has shape {tuple(value.shape)}; upsample guidance can only pool spatial "
            f"inputs with the latent's {x.ndim} axes (token-shaped ControlNet residuals, e.g. "
            "from Flux or SD3 ControlNets, are not supported)"
        )
    check_divisible(value.shape, factors, name)


def _control_tensors(control: dict) -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every residual in a ControlNet ``control`` dict (None skipped)."""
    found = []
    for key, value in control.items():
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if isinstance(item, torch.Tensor):
                suffix = f"[{i}]" if isinstance(value, list) else ""
                found.append((f"control[{key!r}]{suffix}", item))
    return found


def _check_inputs(inputs: dict, x: torch.Tensor, factors: tuple[int, ...]) -> None:
    """Raise a clear error for an input the low-resolution call cannot be given."""
    if "latent_shapes" in inputs:
        raise ValueError(
            "latent_shapes: packed multi-stream latents (e.g. audio-video) are not supported"
        )
    c_concat = inputs.get("c_concat")
    if c_concat is not None:
        if not isinstance(c_concat, torch.Tensor) or c_concat.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"c_concat of shape {tuple(getattr(c_concat, 'shape', ()))} must be a tensor "
                f"with the latent's trailing sizes {tuple(x.shape[2:])}"
            )
    control = inputs.get("control")
    if control is not None:
        if not isinstance(control, dict):
            raise TypeError(
                f"control must be a dict of residual lists, got {type(control).__name__}"
            )
        for name, tensor in _control_tensors(control):
            _check_spatial(tensor, name, x, factors)
    for name, value in inputs.items():
        if name in ("c_concat", "control") or not isinstance(value, torch.Tensor):
            continue
        if value.ndim == x.ndim and value.shape[2:] == x.shape[2:]:
            raise ValueError(
                f"{name} of shape {tuple(value.shape)} is spatial conditioning the upsample "
                "guidance node does not know how to give the low-resolution call"
            )


def _own_lists(inputs: dict) -> dict:
    """``inputs`` with control lists and transformer_options of its own (the model pops/writes)."""
    out = dict(inputs)
    control = inputs.get("control")
    if isinstance(control, dict):
        out["control"] = {k: list(v) if isinstance(v, list) else v for k, v in control.items()}
    if isinstance(inputs.get("transformer_options"), dict):
        out["transformer_options"] = dict(inputs["transformer_options"])
    return out


def _pool_control(control: dict, factors: tuple[int, ...]) -> dict:
    """A control dict whose residuals are block means D[r]: fresh lists, None entries kept."""
    pooled: dict[int, torch.Tensor] = {}  # ControlNet shares tensors between entries

    def pool(item: Any) -> Any:
        """D on a residual tensor, once per distinct tensor; anything else unchanged."""
        if not isinstance(item, torch.Tensor):
            return item
        if id(item) not in pooled:
            pooled[id(item)] = downsample(item, factors)
        return pooled[id(item)]

    return {k: [pool(r) for r in v] if isinstance(v, list) else pool(v) for k, v in control.items()}


def _size_layout(base_model: object) -> tuple[str | None, ...] | None:
    """The size fields of an SDXL-family model's ``y``, or None for other models."""
    for name in _class_names(base_model):
        if name in _SIZE_LAYOUTS:
            return _SIZE_LAYOUTS[name]
    return None


def _embed(embedder: Callable, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The model's own size embedding of ``values`` (one per row), in ``like``'s dtype/device."""
    return embedder(values.to(device=like.device, dtype=torch.float32)).to(like.dtype)


def _decode_size(chunk: torch.Tensor, embedder: Callable, field: str) -> torch.Tensor:
    """The integer sizes a 256-wide embedding holds, read from its lowest frequency, verified."""
    half = _EMBED_DIM // 2
    lowest = math.exp(-math.log(_MAX_PERIOD) * (half - 1) / half)
    angle = torch.atan2(chunk[:, -1].double(), chunk[:, half - 1].double())
    values = (angle / lowest).round()
    tol = 1e-3 if chunk.dtype in (torch.float32, torch.float64) else 1e-2
    if not torch.allclose(_embed(embedder, values, chunk), chunk, rtol=0.0, atol=tol):
        raise ValueError(
            f"y does not hold an SDXL {field} embedding where one is expected; pass "
            "size_conditioning='keep' to give the low-resolution call y unchanged"
        )
    return values


def low_res_size_conditioning(
    base_model: Any, y: torch.Tensor, factors: tuple[int, ...]
) -> torch.Tensor:
    """SDXL's ``y`` with its size fields divided by the height and width factors.

    The pooled text embedding (and the refiner's aesthetic score) stays; each size is decoded,
    divided, and embedded again with the model's own ``embedder``. Other models' ``y`` is returned
    unchanged.
    """
    layout = _size_layout(base_model)
    if layout is None:
        return y
    embedder = getattr(base_model, "embedder", None)
    start = y.shape[-1] - len(layout) * _EMBED_DIM if y.ndim == 2 else -1
    if not callable(embedder) or start <= 0:
        raise ValueError(
            f"y of shape {tuple(y.shape)} on {type(base_model).__name__} is not SDXL's (pooled "
            f"text + {len(layout)} size embeddings of {_EMBED_DIM}); pass "
            "size_conditioning='keep'"
        )
    fh, fw = factors[-2:]
    pieces = [y[:, :start]]
    for i, field in enumerate(layout):
        chunk = y[:, start + i * _EMBED_DIM : start + (i + 1) * _EMBED_DIM]
        if field is None:
            pieces.append(chunk)
            continue
        size = _decode_size(chunk, embedder, field)
        pieces.append(_embed(embedder, size / (fh if field in _HEIGHT_FIELDS else fw), chunk))
    return torch.cat(pieces, dim=-1)


def _low_res_inputs(base_model: Any, keep_size: bool) -> Callable[[tuple, dict, tuple], tuple]:
    """The core's ``low_res_inputs`` hook: pool c_concat and control, rewrite SDXL's y."""

    def adapt(args: tuple, kwargs: dict, factors: tuple) -> tuple[tuple, dict]:
        """The low-resolution call's inputs; Flux's guidance and the text pass unchanged."""
        low = dict(kwargs)
        if low.get("c_concat") is not None:
            low["c_concat"] = downsample(low["c_concat"], factors)
        if isinstance(low.get("control"), dict):
            low["control"] = _pool_control(low["control"], factors)
        if isinstance(low.get("y"), torch.Tensor) and not keep_size:
            low["y"] = low_res_size_conditioning(base_model, low["y"], factors)
        return args, low

    return adapt


# --- the wrapper ---------------------------------------------------------------------------------

#: ``call(x, sigma, inputs) -> denoised``: one model evaluation through ComfyUI's own chain.
_Call = Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor]


class UpsampleGuidanceWrapper:
    """Upsample guidance in ComfyUI's hooks: an ``APPLY_MODEL`` wrapper or a function wrapper.

    ComfyUI calls the object itself as an ``APPLY_MODEL`` wrapper, or
    :meth:`unet_function_wrapper` as a ``model_function_wrapper``. ``factors`` are
    ``(height, width)`` or ``(frames, height, width)``; ``scale`` is θ, ``eta``
    is η (guidance on during the noisiest η of the time axis); ``time_matching`` is one of
    :data:`TIME_MATCHING_CHOICES`; ``keep_size_conditioning`` gives SDXL's ``y`` unchanged to the
    low call. ``previous`` is a ``model_function_wrapper`` ours chains to (fallback path only).
    It holds no model: the model comes with each call, and a deep copy (``ModelPatcher.clone``
    deep-copies ``model_options``) copies only the settings.
    """

    def __init__(
        self,
        factors: tuple[int, ...],
        scale: float = 1.0,
        eta: float = 1.0,
        time_matching: str = "exact",
        keep_size_conditioning: bool = False,
        previous: Callable | None = None,
    ) -> None:
        self.factors = normalize_factors(factors)
        self.scale = scale
        self.eta = eta
        self.time_matching = _check_choice(time_matching, "time_matching", TIME_MATCHING_CHOICES)
        self.keep_size_conditioning = bool(keep_size_conditioning)
        self.previous = previous
        self._cache: tuple[Any, UpsampleGuidance] | None = None

    def __deepcopy__(self, memo: dict) -> UpsampleGuidanceWrapper:
        return type(self)(
            self.factors,
            self.scale,
            self.eta,
            self.time_matching,
            self.keep_size_conditioning,
            copy.deepcopy(self.previous, memo),
        )

    def __repr__(self) -> str:
        return (
            f"UpsampleGuidanceWrapper(factors={self.factors}, scale={self.scale!r}, "
            f"eta={self.eta!r}, time_matching={self.time_matching!r})"
        )

    def guidance(self, model_sampling: Any) -> UpsampleGuidance:
        """The core guidance for a model sampling (cached while the model sampling is the same)."""
        if self._cache is None or self._cache[0] is not model_sampling:
            guide = UpsampleGuidance(
                comfy_schedule(model_sampling),
                self.factors,
                self.scale,
                prediction="sample",
                time_matching=self.time_matching,
                eta=self.eta,
                device_time="read",  # ComfyUI's samplers read sigma on the host every step anyway
            )
            self._cache = (model_sampling, guide)
        return self._cache[1]

    def guide(
        self, base_model: Any, call: _Call, x: torch.Tensor, sigma: torch.Tensor, inputs: dict
    ) -> torch.Tensor:
        """Guided denoised output: ``call`` at x, plus one low call for the whole batch."""
        _check_latent(x, self.factors)
        _check_inputs(inputs, x, self.factors)
        guidance = self.guidance(base_model.model_sampling)

        def model(x_: torch.Tensor, sigma_: torch.Tensor, **kw: Any) -> torch.Tensor:
            """One model evaluation, with lists of its own to pop."""
            return call(x_, sigma_, _own_lists(kw))

        adapt = _low_res_inputs(base_model, self.keep_size_conditioning)
        return guidance(model, x, sigma, low_res_inputs=adapt, **inputs)

    def __call__(
        self,
        executor: Any,
        x: torch.Tensor,
        t: torch.Tensor,
        c_concat: torch.Tensor | None = None,
        c_crossattn: torch.Tensor | None = None,
        control: dict | None = None,
        transformer_options: dict | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """The ``APPLY_MODEL`` wrapper: ``t`` is sigma; returns the guided denoised output."""
        inputs = {
            "c_concat": c_concat,
            "c_crossattn": c_crossattn,
            "control": control,
            "transformer_options": {} if transformer_options is None else transformer_options,
            **kwargs,
        }

        def call(x_: torch.Tensor, sigma_: torch.Tensor, kw: dict) -> torch.Tensor:
            """Call on down ComfyUI's wrapper chain (the next wrapper, or ``_apply_model``)."""
            kw = dict(kw)
            head = [kw.pop(k) for k in ("c_concat", "c_crossattn", "control")]
            return executor(x_, sigma_, *head, kw.pop("transformer_options"), **kw)

        base_model = getattr(executor, "class_obj", None)
        if not hasattr(base_model, "model_sampling"):
            raise TypeError(
                "the APPLY_MODEL wrapper expects ComfyUI's executor around BaseModel._apply_model "
                f"(executor.class_obj with model_sampling), got {type(base_model).__name__}"
            )
        return self.guide(base_model, call, x, t, inputs)

    def unet_function_wrapper(self, apply_model: Callable, args: dict) -> torch.Tensor:
        """The ``model_function_wrapper`` form: ``args`` holds input, timestep (sigma), c."""
        base_model = getattr(apply_model, "__self__", None)
        if base_model is None or not hasattr(base_model, "model_sampling"):
            raise TypeError(
                "model_function_wrapper expects ComfyUI's bound BaseModel.apply_model, got "
                f"{type(apply_model).__name__}"
            )
        previous = self.previous

        def call(x_: torch.Tensor, sigma_: torch.Tensor, kw: dict) -> torch.Tensor:
            """Call the model, through the wrapper that was set before ours if any."""
            if previous is None:
                return apply_model(x_, sigma_, **kw)
            inner = {"input": x_, "timestep": sigma_, "c": kw}
            return previous(apply_model, {**inner, "cond_or_uncond": args.get("cond_or_uncond")})

        return self.guide(base_model, call, args["input"], args["timestep"], dict(args["c"]))


# --- hooking it into a ModelPatcher ---------------------------------------------------------------


def _apply_model_wrapper_type(model: Any) -> str | None:
    """``WrappersMP.APPLY_MODEL`` if the running ComfyUI has composable wrappers, else None."""
    if not callable(getattr(model, "add_wrapper_with_key", None)):
        return None
    try:
        from comfy.patcher_extension import WrappersMP
    except ImportError:
        return None
    return getattr(WrappersMP, "APPLY_MODEL", None)


def install_wrapper(patched: Any, wrapper: UpsampleGuidanceWrapper) -> str:
    """Hook ``wrapper`` into a cloned ``ModelPatcher``; return the hook used.

    ``"apply_model"``: ``add_wrapper_with_key(WrappersMP.APPLY_MODEL, WRAPPER_KEY, wrapper)``
    (a wrapper already under our key is replaced). ``"model_function_wrapper"``:
    ``set_model_unet_function_wrapper``, chained to the one already set.
    """
    wrapper_type = _apply_model_wrapper_type(patched)
    if wrapper_type is not None:
        if callable(getattr(patched, "remove_wrappers_with_key", None)):
            patched.remove_wrappers_with_key(wrapper_type, WRAPPER_KEY)
        patched.add_wrapper_with_key(wrapper_type, WRAPPER_KEY, wrapper)
        return "apply_model"
    if not callable(getattr(patched, "set_model_unet_function_wrapper", None)):
        raise TypeError(
            f"model must be a ComfyUI MODEL (a ModelPatcher), got {type(patched).__name__} "
            "without add_wrapper_with_key or set_model_unet_function_wrapper"
        )
    wrapper.previous = patched.model_options.get("model_function_wrapper")
    patched.set_model_unet_function_wrapper(wrapper.unet_function_wrapper)
    return "model_function_wrapper"


def _model_sampling_of(model: Any) -> Any:
    """The model sampling a ComfyUI MODEL samples with (object patches included)."""
    if callable(getattr(model, "get_model_object", None)):
        return model.get_model_object("model_sampling")
    return model.model.model_sampling


class UpsampleGuidanceNode:
    """ComfyUI node "Upsample Guidance": a MODEL that samples above its trained resolution."""

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "model_patches/unet"
    DESCRIPTION = (
        "Upsample guidance (Hwang et al., 2024): sample a model above its trained resolution "
        "without training. Each step adds the model's own low-resolution prediction as guidance."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict[str, tuple]]:
        """The node's inputs, each with its default."""
        return {
            "required": {
                "model": ("MODEL",),
                "factor": (
                    "INT",
                    {
                        "default": 2,
                        "min": 2,
                        "max": _MAX_FACTOR,
                        "step": 1,
                        "tooltip": "Upsampling factor of height and width (2: 512 -> 1024).",
                    },
                ),
                "scale": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 10.0,
                        "step": 0.05,
                        "tooltip": "Guidance scale theta; 0 turns the node off.",
                    },
                ),
                "eta": (
                    "FLOAT",
                    {
                        "default": 0.6,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "Guide during the noisiest eta of the time axis.",
                    },
                ),
                "time_matching": (
                    list(TIME_MATCHING_CHOICES),
                    {"default": "exact", "tooltip": "'off' is an ablation only."},
                ),
            },
            "optional": {
                "temporal_factor": (
                    "INT",
                    {
                        "default": 1,
                        "min": 1,
                        "max": _MAX_FACTOR,
                        "step": 1,
                        "tooltip": "Frames factor for video latents (B, C, F, H, W).",
                    },
                ),
                "size_conditioning": (
                    list(SIZE_CONDITIONING),
                    {
                        "default": "low_resolution",
                        "tooltip": "SDXL: the low call's size embeddings describe the small image.",
                    },
                ),
            },
        }

    def patch(
        self,
        model: Any,
        factor: int | str = 2,
        scale: float = 1.0,
        eta: float = 0.6,
        time_matching: str = "exact",
        temporal_factor: int = 1,
        size_conditioning: str = "low_resolution",
    ) -> tuple[Any]:
        """Return ``(model.clone() with the guidance wrapper,)``; ``model`` itself is unchanged."""
        if not callable(getattr(model, "clone", None)):
            raise TypeError(
                f"model must be a ComfyUI MODEL (a ModelPatcher with clone()), got "
                f"{type(model).__name__}"
            )
        factors = parse_factors(factor, temporal_factor)
        size_conditioning = _check_choice(size_conditioning, "size_conditioning", SIZE_CONDITIONING)
        wrapper = UpsampleGuidanceWrapper(
            factors, scale, eta, time_matching, size_conditioning == "keep"
        )
        wrapper.guidance(_model_sampling_of(model))  # a clear error now for what is unsupported
        patched = model.clone()
        install_wrapper(patched, wrapper)
        return (patched,)


NODE_CLASS_MAPPINGS = {"UpsampleGuidance": UpsampleGuidanceNode}
NODE_DISPLAY_NAME_MAPPINGS = {"UpsampleGuidance": "Upsample Guidance"}


def install_custom_node(custom_nodes_dir: str | os.PathLike) -> Path:
    """Write the one-line custom node file into ComfyUI's ``custom_nodes`` folder; return its path.

    ``custom_nodes_dir`` is that folder, or the ComfyUI folder that holds it. The file imports
    :data:`NODE_CLASS_MAPPINGS` from this package, which must be installed in ComfyUI's Python.
    """
    if not isinstance(custom_nodes_dir, (str, os.PathLike)):
        raise TypeError(f"custom_nodes_dir must be a path, got {type(custom_nodes_dir).__name__}")
    folder = Path(custom_nodes_dir).expanduser()
    if folder.name != "custom_nodes" and (folder / "custom_nodes").is_dir():
        folder = folder / "custom_nodes"
    if not folder.is_dir():
        raise ValueError(
            f"custom_nodes_dir {str(custom_nodes_dir)!r} is not a directory; pass ComfyUI's "
            "custom_nodes folder (e.g. ComfyUI/custom_nodes) or the ComfyUI folder itself"
        )
    path = folder / CUSTOM_NODE_FILE
    path.write_text(CUSTOM_NODE_SOURCE, encoding="utf-8")
    return path
