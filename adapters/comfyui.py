"""Upsample guidance as a ComfyUI node, "Upsample Guidance", that patches a ``MODEL``.

The node returns ``model.clone()`` with an ``APPLY_MODEL`` wrapper. It sees the noisy sample and
sigma, and returns the denoised x0 estimate, guided with the core's matching in sigma form (EPS,
V_PREDICTION, EDM, X0: ``x = x0 + σ·n``) or flow form (CONST); one low call for the whole cond +
uncond batch, with ControlNet residuals, ``c_concat`` and SDXL's sizes adapted for it. Install,
sources and conflicts: ``docs/comfyui.md``. Importing this module imports nothing from ComfyUI.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from ..config import UpsampleGuidanceConfig
from ..factors import MAX_DENOMINATOR, parse_factors
from ..guidance import UpsampleGuidance
from ..operators import downsample
from ..schedules import FlowSchedule, SigmaSchedule, discrete_time_fraction

__all__ = [
    "NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "UpsampleGuidanceNode", "WIDGETS",
    "TOOLTIPS", "UpsampleGuidanceWrapper", "WRAPPER_KEY", "node_factors", "comfy_schedule",
    "low_res_size_conditioning", "CUSTOM_NODE_FILE", "custom_node_source", "install_custom_node",
]  # fmt: skip

#: The key our wrapper is registered under (``add_wrapper_with_key``); patching twice replaces it.
WRAPPER_KEY = "upsample_guidance"
#: ``size_conditioning`` choices, as the config's ``micro_conditioning``.
SIZE_CONDITIONING = {"low_resolution": "low", "keep": "high"}
#: The node's inputs: (type, options), one line each as Deep Shrink's; the tooltips are TOOLTIPS.
WIDGETS = {
    "model": ("MODEL", {}),
    "factor": ("FLOAT", {"default": 2.0, "min": 1.25, "max": 4.0, "step": 0.25, "round": 0.25}),
    "scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.05}),
    "eta": ("FLOAT", {"default": 0.6, "min": 0.0, "max": 1.0, "step": 0.01}),
    "time_matching": (["exact", "nearest", "off"], {"default": "exact"}),
    "temporal_factor": ("INT", {"default": 1, "min": 1, "max": 4, "step": 1}),
    "size_conditioning": (list(SIZE_CONDITIONING), {"default": "low_resolution"}),
}
_OPTIONAL = ("temporal_factor", "size_conditioning")
#: What each input does, in users' words (ComfyUI shows them on hover).
TOOLTIPS = {
    "model": "The model to sample above the size it was trained at (SD1.5, SDXL, SD3, Flux, Wan, "
    "...). The node returns a patched copy; the model you connect stays as it is.",
    "factor": "How much larger than the model's trained size you sample, for height and width: "
    "2 = SD1.5 (512 px) at 1024 px or SDXL (1024 px) at 2048 px; 1.5 = SDXL at 1536 px. Set the "
    "latent (Empty Latent Image) to the large size: a multiple of 8 px × the factor's numerator "
    "(factor 2: 16 px; 1.5 = 3/2: 24 px; 1.25 = 5/4: 40 px).",
    "scale": "Strength: 0 turns the node off (the model's own output, bit for bit); 1 takes the "
    "overall layout from a pass at the model's trained size; above 1 pushes harder.",
    "eta": "How much of sampling to guide, from the start: like end_percent with start_percent 0 "
    "on ComfyUI's other nodes. 1 guides every step; 0.6 (the paper's choice for latent models) "
    "leaves the last 40 % to the model alone, for fine detail. Counted on the model's time axis "
    "(on flow models such as SD3, Flux and Wan: the noise level). With a factor that is not a "
    "whole number (1.5, 1.25, ...) use 1: below it the guidance helps little there.",
    "time_matching": "How the trained-size pass finds its noise level. The large image's noise, "
    "averaged down, is weaker: exact uses the noise level that matches it exactly, nearest the "
    "nearest of the model's training steps (the paper's choice); in ComfyUI both give the same "
    "result. off skips the matching (worse images; only to see what matching does).",
    "temporal_factor": "Video models only (Wan, HunyuanVideo): how many times more latent frames "
    "than the model was trained for. 1 leaves the number of frames alone.",
    "size_conditioning": "SDXL only: low_resolution tells the trained-size pass that it makes "
    "the small image (width, height, crop and target size divided by the factor); keep gives it "
    "the large sizes. Other models ignore it.",
}
_FACTOR_WIDGET = "the factor widget takes 1.25 to 4 in steps of 0.25"
_OFF = "set scale to 0 or remove the node for this model"

# Model sampling, by class name along the MRO (ComfyUI builds ``class ModelSampling(s, c)``).
_SIGMA_FORM = ("EPS", "V_PREDICTION")  # EDM and X0 subclass these; all have x = x0 + σ·n
_UNSUPPORTED = {
    "IMG_TO_IMG": "an image-to-image model (Lotus) with no noise to match",
    "IMG_TO_IMG_FLOW": "an image-to-image flow model with no noise to match",
    "IMG_TO_IMG_VELOCITY": "an image-to-image flow model with no noise to match",
    "StableCascadeSampling": "Stable Cascade's compressed latents and cosine time axis",
    "ModelSamplingAV": "packed audio-video latents, whose streams D cannot average",
}
# Pixels per latent element and video frames per latent frame, by latent format (default 8, 4).
_UNITS = {"Wan22": (16, 4), "LTXV": (32, 8), "HunyuanImage21": (32, 4), "ChromaRadiance": (1, 4),
          "Mochi": (8, 6), "Cosmos1CV8x8x8": (8, 8)}  # fmt: skip
# SDXL's ``y`` (model_base.SDXL.encode_adm): pooled text, then one 256-wide timestep embedding
# ([cos, sin], max period 10000) per field; None stays (the refiner's aesthetic score).
_SIZE_LAYOUTS = {
    "SDXL": ("height", "width", "crop_h", "crop_w", "target_height", "target_width"),
    "SDXLRefiner": ("height", "width", "crop_h", "crop_w", None),
}
_EMBED_DIM, _MAX_PERIOD = 256, 10000.0


def _class_names(obj: object) -> list[str]:
    """The class names along ``type(obj)``'s MRO (ComfyUI is not imported to test classes)."""
    return [cls.__name__ for cls in type(obj).__mro__]


def _units(base_model: object) -> tuple[int, int]:
    """Pixels per latent element and video frames per latent frame of the model's latents."""
    return _UNITS.get(type(getattr(base_model, "latent_format", None)).__name__, (8, 4))


def _sizes(n: int, step: int) -> str:
    """The nearest multiples of ``step`` around ``n``: ``"128 or 144"``."""
    return " or ".join(str(m) for m in (n - n % step, n - n % step + step) if m > 0)


def node_factors(factor: object, temporal_factor: object = 1) -> tuple:
    """``(height, width)`` or ``(frames, height, width)`` from the two factor widgets.

    ``factor``: a number for both spatial axes (the widget: 1.25 to 4 by 0.25; from Python any
    ratio p/q with q <= 8, e.g. ``'4/3'``) or ``'HxW'`` / ``'FxHxW'``; ``temporal_factor``: 1 to 4.
    """
    if isinstance(factor, float) and 1 <= factor <= 4:
        if Fraction(factor).limit_denominator(MAX_DENOMINATOR) != factor:
            low = math.floor(factor * 4) / 4
            use = " or ".join(f"{v:g}" for v in (low, low + 0.25) if 1.25 <= v <= 4)
            raise ValueError(f"factor {factor!r} is not a ratio the node can use; "
                             f"{_FACTOR_WIDGET}: use {use}")  # fmt: skip
    try:
        spatial = parse_factors(factor, "factor")
    except (TypeError, ValueError) as err:
        raise type(err)(f"{err} ({_FACTOR_WIDGET})") from None
    if not all(1 <= f <= 4 for f in spatial):
        raise ValueError(f"factor {factor!r} is outside what the node takes: {_FACTOR_WIDGET}")
    t = temporal_factor
    if isinstance(t, bool) or not isinstance(t, numbers.Integral) or not 1 <= t <= 4:
        raise ValueError(f"temporal_factor must be a whole number from 1 to 4, got {t!r}")
    if t > 1 and len(spatial) == 3:
        raise ValueError(f"factor {factor!r} already has a frames factor: set temporal_factor 1")
    factors = (int(t), *spatial) if t > 1 else spatial
    factors = factors[1:] if len(factors) == 3 and factors[0] == 1 else factors
    if all(f == 1 for f in factors):
        raise ValueError(f"factor {factor!r} with temporal_factor {t} does not upsample: set "
                         "factor to 1.25 or more")  # fmt: skip
    return factors


def comfy_schedule(model_sampling: Any) -> SigmaSchedule | FlowSchedule:
    """The core schedule of a ComfyUI ``model_sampling``, in its time unit (sigma).

    EPS, V_PREDICTION, EDM, X0: ``SigmaSchedule``, η on ``timestep(σ)/(N − 1)`` (discrete) or on
    ``log σ``'s place in the range, as ComfyUI's ``percent_to_sigma`` counts; CONST: the flow time.
    """
    names = _class_names(model_sampling)
    for name in (n for n in names if n in _UNSUPPORTED):
        raise ValueError(f"model_sampling {names[0]} ({name}) is not supported: "
                         f"{_UNSUPPORTED[name]}; the node guides EPS, V_PREDICTION, EDM, X0 and "
                         "CONST (rectified flow) models")  # fmt: skip
    if "CONST" in names:
        return FlowSchedule(time_scale=1.0)
    if not any(name in _SIGMA_FORM for name in names):
        raise ValueError(f"model_sampling {names[0]} (classes {names[:-1]}) is not supported: "
                         "the node needs EPS, V_PREDICTION, EDM, X0 or CONST model "
                         "sampling")  # fmt: skip
    discrete = "ModelSamplingDiscrete" in names and "ModelSamplingDiscreteEDM" not in names
    fraction = discrete_time_fraction(model_sampling, "timestep") if discrete else None
    lo, hi = float(model_sampling.sigma_min), float(model_sampling.sigma_max)
    return SigmaSchedule(lo, hi, fraction=fraction)


def _check(base_model: Any, x: torch.Tensor, inputs: dict, factors: tuple) -> None:
    """A latent whose sizes map to whole trained sizes, inputs the low call can be given."""
    if not isinstance(x, torch.Tensor) or x.ndim not in (4, 5) or "latent_shapes" in inputs:
        shape = tuple(getattr(x, "shape", ()))
        raise ValueError(f"the node guides image latents (B, C, H, W) and video latents "
                         f"(B, C, F, H, W), not {shape} or packed latents: {_OFF}")  # fmt: skip
    px, per_frame = _units(base_model)
    h, w = x.shape[-2] * px, x.shape[-1] * px
    if len(factors) == 3 and x.ndim == 4:
        raise ValueError(f"temporal_factor {factors[0]} needs a video model; this is an image "
                         f"({w}×{h} px): set temporal_factor to 1")  # fmt: skip
    steps = [Fraction(f).numerator * px for f in factors[-2:]]
    sizes = zip(("height", "width"), (h, w), steps, strict=True)
    bad = [f"{axis} {n} px: use {_sizes(n, s)} px" for axis, n, s in sizes if n % s]
    if bad:
        f = "x".join(f"{float(f):g}" for f in sorted(set(factors[-2:]), key=factors.index))
        raise ValueError(f"at factor {f} the image's height and width must be multiples of "
                         f"{'/'.join(map(str, sorted(set(steps))))} px ({px} px per latent "
                         f"element × the factor's numerator): {'; '.join(bad)}")  # fmt: skip
    if len(factors) == 3 and x.shape[2] % Fraction(factors[0]).numerator:
        n, p = x.shape[2], Fraction(factors[0]).numerator
        lengths = " or ".join(str(per_frame * (int(m) - 1) + 1) for m in _sizes(n, p).split(" or "))
        raise ValueError(f"temporal_factor {factors[0]} needs a multiple of {p} latent frames; "
                         f"the video has {n} (length {per_frame * (n - 1) + 1}): set its length "
                         f"to {lengths}, or temporal_factor to 1")  # fmt: skip
    control = inputs.get("control")
    if control is not None and not isinstance(control, dict):
        raise TypeError(f"control must be a dict of residual lists, got {type(control).__name__}")
    for key, value in (control or {}).items():
        for i, r in enumerate(value if isinstance(value, list) else [value]):
            if isinstance(r, torch.Tensor) and r.ndim != x.ndim:
                raise ValueError(f"control[{key!r}][{i}] has shape {tuple(r.shape)}: token-"
                                 f"shaped ControlNet residuals (Flux, SD3) are not supported: "
                                 f"{_OFF}")  # fmt: skip
            level = x.shape[-1] // r.shape[-1] if isinstance(r, torch.Tensor) else 1  # 1, 2, 4..
            uh, uw = (Fraction(f).numerator * level * px for f in factors[-2:])
            if h % uh or w % uw:
                raise ValueError(f"control[{key!r}][{i}] is a 1/{level} level of the ControlNet, "
                                 f"so the image ({w}×{h} px) must be a multiple of {uh}×{uw} px "
                                 f"(height × width): height {_sizes(h, uh)}, width "
                                 f"{_sizes(w, uw)} px")  # fmt: skip
    for name, value in inputs.items():
        if name not in ("c_concat", "control") and isinstance(value, torch.Tensor):
            if value.ndim == x.ndim and value.shape[-2:] == x.shape[-2:]:
                raise ValueError(f"{name} of shape {tuple(value.shape)} is spatial conditioning "
                                 f"the node cannot give the trained-size pass: {_OFF}")  # fmt: skip


def _own_lists(kw: dict) -> dict:
    """``kw`` with control lists and transformer_options of its own (the model pops/writes)."""
    control = kw.get("control")
    if isinstance(control, dict):
        control = {k: list(v) if isinstance(v, list) else v for k, v in control.items()}
    return {**kw, "control": control, "transformer_options": dict(kw["transformer_options"] or {})}


def _pool_control(control: dict, factors: tuple) -> dict:
    """A control dict whose residuals are area means D[r]: fresh lists, None entries kept."""
    pooled: dict[int, torch.Tensor] = {}  # ControlNet shares tensors between entries

    def pool(item: Any) -> Any:
        if isinstance(item, torch.Tensor) and id(item) not in pooled:
            pooled[id(item)] = downsample(item, factors)
        return pooled.get(id(item), item)

    return {k: [pool(r) for r in v] if isinstance(v, list) else pool(v) for k, v in control.items()}


def _decode_size(chunk: torch.Tensor, embedder: Callable, field: str) -> torch.Tensor:
    """The integer sizes a 256-wide embedding holds, read from its lowest frequency, verified."""
    half = _EMBED_DIM // 2
    lowest = math.exp(-math.log(_MAX_PERIOD) * (half - 1) / half)
    angle = torch.atan2(chunk[:, -1].double(), chunk[:, half - 1].double())
    values = (angle / lowest).round()
    tol = 1e-3 if chunk.dtype in (torch.float32, torch.float64) else 1e-2
    again = embedder(values.to(chunk.device, torch.float32)).to(chunk.dtype)  # the model's own
    if not torch.allclose(again, chunk, rtol=0.0, atol=tol):
        raise ValueError(f"y does not hold an SDXL {field} embedding where one is expected: set "
                         "size_conditioning to keep")  # fmt: skip
    return values


def low_res_size_conditioning(base_model: Any, y: torch.Tensor, factors: tuple) -> torch.Tensor:
    """SDXL's ``y`` with its size fields divided by the height and width factors.

    The pooled text embedding (and the refiner's aesthetic score) stays; each size is decoded,
    divided, and embedded again with the model's own ``embedder``. Other models' ``y`` is returned
    unchanged.
    """
    layout = next((_SIZE_LAYOUTS[n] for n in _class_names(base_model) if n in _SIZE_LAYOUTS), None)
    if layout is None:
        return y
    embedder = getattr(base_model, "embedder", None)
    start = y.shape[-1] - len(layout) * _EMBED_DIM if y.ndim == 2 else -1
    if not callable(embedder) or start <= 0:
        raise ValueError(f"y of shape {tuple(y.shape)} on {type(base_model).__name__} is not "
                         f"SDXL's (pooled text + {len(layout)} size embeddings of {_EMBED_DIM}): "
                         "set size_conditioning to keep")  # fmt: skip
    pieces = [y[:, :start]]
    for i, field in enumerate(layout):
        chunk = y[:, start + i * _EMBED_DIM : start + (i + 1) * _EMBED_DIM]
        if field is not None:
            f = factors[-2] if field in ("height", "crop_h", "target_height") else factors[-1]
            size = _decode_size(chunk, embedder, field) / float(f)
            chunk = embedder(size.to(chunk.device, torch.float32)).to(chunk.dtype)
        pieces.append(chunk)
    return torch.cat(pieces, dim=-1)


# --- the wrapper ---------------------------------------------------------------------------------


class UpsampleGuidanceWrapper:
    """ComfyUI's ``APPLY_MODEL`` wrapper for one :class:`~ug_core.UpsampleGuidanceConfig`.

    It holds no model: the base model comes with each call (``executor.class_obj``) and its
    ``model_sampling`` is read then, so a ``ModelSampling*`` node placed after ours is followed.
    """

    def __init__(self, config: UpsampleGuidanceConfig) -> None:
        self.config = config
        self._cache: tuple[Any, UpsampleGuidance] | None = None

    def __deepcopy__(self, memo: dict) -> UpsampleGuidanceWrapper:
        return type(self)(self.config)  # the settings, never the cache

    def guidance(self, model_sampling: Any) -> UpsampleGuidance:
        """The core guidance for a model sampling (cached while the model sampling is the same)."""
        if self._cache is None or self._cache[0] is not model_sampling:
            schedule = comfy_schedule(model_sampling)
            guide = UpsampleGuidance(schedule, prediction="sample", config=self.config)
            self._cache = (model_sampling, guide)
        return self._cache[1]

    def low_res_inputs(self, base: Any, args: tuple, kw: dict, factors: tuple) -> tuple:
        """The low call's inputs: c_concat and control pooled, SDXL's sizes re-embedded.

        (``micro_conditioning="high"`` keeps the sizes.) Flux's guidance, the text, Kontext's
        reference latents and the rest pass unchanged.
        """
        low = dict(kw)
        if low.get("c_concat") is not None:
            low["c_concat"] = downsample(low["c_concat"], factors)
        if isinstance(low.get("control"), dict):
            low["control"] = _pool_control(low["control"], factors)
        if isinstance(low.get("y"), torch.Tensor) and self.config.micro_conditioning == "low":
            low["y"] = low_res_size_conditioning(base, low["y"], factors)
        return args, low

    def __call__(self, executor: Any, x: torch.Tensor, t: torch.Tensor, *args: Any, **kwargs: Any):
        """``_apply_model``'s arguments (t is sigma) in, the guided x0 estimate out."""
        base = getattr(executor, "class_obj", None)
        if not hasattr(base, "model_sampling"):
            raise TypeError("the APPLY_MODEL wrapper expects ComfyUI's executor around "
                            "BaseModel._apply_model (executor.class_obj with model_sampling), "
                            f"got {type(base).__name__}")  # fmt: skip
        inputs = {**dict.fromkeys(_HEAD), **dict(zip(_HEAD, args, strict=False)), **kwargs}
        _check(base, x, inputs, self.config.factors)

        def model(x_: torch.Tensor, sigma: torch.Tensor, **kw: Any) -> torch.Tensor:
            """One call on down ComfyUI's wrapper chain, with lists of its own to pop."""
            kw = _own_lists(kw)
            return executor(x_, sigma, *(kw.pop(k) for k in _HEAD), **kw)

        adapt = functools.partial(self.low_res_inputs, base)
        return self.guidance(base.model_sampling)(model, x, t, low_res_inputs=adapt, **inputs)


#: ``_apply_model``'s positional arguments after x and sigma.
_HEAD = ("c_concat", "c_crossattn", "control", "transformer_options")


# --- the node ------------------------------------------------------------------------------------


class UpsampleGuidanceNode:
    """ComfyUI node "Upsample Guidance": a MODEL that samples above its trained resolution."""

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "model_patches/unet"
    DESCRIPTION = (
        "Upsample guidance (Hwang et al., 2024): sample a model above its trained resolution "
        "without training. Each step adds the model's own prediction at its trained size as "
        "guidance. Put it between the model loader and the sampler; sample at the large size."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict[str, tuple]]:
        """The node's inputs (:data:`WIDGETS`), each with its tooltip."""
        spec = {n: (kind, {**opts, "tooltip": TOOLTIPS[n]}) for n, (kind, opts) in WIDGETS.items()}
        return {
            "required": {n: v for n, v in spec.items() if n not in _OPTIONAL},
            "optional": {n: spec[n] for n in _OPTIONAL},
        }

    def patch(self, model: Any, factor: float | str = 2.0, scale: float = 1.0, eta: float = 0.6,
              time_matching: str = "exact", temporal_factor: int = 1,
              size_conditioning: str = "low_resolution") -> tuple[Any]:  # fmt: skip
        """Return ``(model.clone() with the guidance wrapper,)``; ``model`` itself is unchanged."""
        if not callable(getattr(model, "add_wrapper_with_key", None)):
            raise TypeError(f"model must be a ComfyUI MODEL (a ModelPatcher with "
                            f"add_wrapper_with_key: ComfyUI 0.3.10 or later), got "
                            f"{type(model).__name__}")  # fmt: skip
        micro = SIZE_CONDITIONING.get(size_conditioning)  # type: ignore[call-overload]
        if micro is None:
            raise ValueError(f"size_conditioning must be one of {tuple(SIZE_CONDITIONING)}, got "
                             f"{size_conditioning!r}")  # fmt: skip
        factors = node_factors(factor, temporal_factor)  # device_time: ComfyUI reads sigma anyway
        config = UpsampleGuidanceConfig(factors, scale, eta, time_matching, device_time="read",
                                        micro_conditioning=micro)  # fmt: skip
        wrapper = UpsampleGuidanceWrapper(config)
        wrapper.guidance(model.get_model_object("model_sampling"))  # unsupported models: now
        from comfy.patcher_extension import WrappersMP  # ComfyUI's own, when the node runs

        patched = model.clone()
        patched.remove_wrappers_with_key(WrappersMP.APPLY_MODEL, WRAPPER_KEY)
        patched.add_wrapper_with_key(WrappersMP.APPLY_MODEL, WRAPPER_KEY, wrapper)
        return (patched,)


NODE_CLASS_MAPPINGS = {"UpsampleGuidance": UpsampleGuidanceNode}
NODE_DISPLAY_NAME_MAPPINGS = {"UpsampleGuidance": "Upsample Guidance"}


# --- installing ----------------------------------------------------------------------------------

#: The file :func:`install_custom_node` writes into ComfyUI's ``custom_nodes/`` folder.
CUSTOM_NODE_FILE = "upsample_guidance.py"
# ComfyUI's folder has custom_nodes/ and main.py, comfy/ or (the Desktop app's base) models/.
_ROOT_MARKERS = ("main.py", "comfy", "models")
_NODE_FILE = """# The Upsample Guidance node, from the package upsample-guidance (docs/comfyui.md).
try:
    from ug_core.adapters.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
except ModuleNotFoundError as err:  # not installed in the Python that runs ComfyUI
    import sys

    raise ModuleNotFoundError(
        "Upsample Guidance: install the package upsample-guidance into the Python that runs "
        f'ComfyUI, then restart ComfyUI: "{sys.executable}" -m pip install -e "{CHECKOUT}"'
    ) from err
"""


def custom_node_source() -> str:
    """The custom node file: it imports the node, or gives the exact install command.

    That is for the Python that runs ComfyUI (its ``sys.executable``), in a ModuleNotFoundError.
    """
    root = Path(__file__).resolve().parents[1]  # this package's checkout, if it is one
    checkout = root if (root / "pyproject.toml").is_file() else "/path/to/upsample-guidance"
    return _NODE_FILE.replace("{CHECKOUT}", str(checkout).replace("\\", "/"))


def install_custom_node(path: str | os.PathLike) -> Path:
    """Write the custom node file into ComfyUI's ``custom_nodes`` folder; return its path.

    ``path`` is ComfyUI's folder (a checkout; the portable build's ``ComfyUI`` or the folder with
    it and ``python_embeded``; the Desktop app's base folder) or its ``custom_nodes`` folder;
    anything else is a ValueError. The package must be installed in ComfyUI's Python.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be ComfyUI's folder, got {type(path).__name__}")
    folder = Path(path).expanduser().resolve()

    def is_root(p: Path) -> bool:
        return (p / "custom_nodes").is_dir() and any((p / m).exists() for m in _ROOT_MARKERS)

    if folder.name == "custom_nodes" and is_root(folder.parent):
        target = folder
    elif is_root(folder):
        target = folder / "custom_nodes"
    elif is_root(folder / "ComfyUI") and (folder / "python_embeded").is_dir():  # portable build
        target = folder / "ComfyUI" / "custom_nodes"
    else:
        what = "is not ComfyUI's folder" if folder.is_dir() else "is not a directory"
        raise ValueError(f"{str(path)!r} {what}: pass ComfyUI's folder (with custom_nodes/ and "
                         "main.py, or the Desktop app's base folder with custom_nodes/ and "
                         "models/) or its custom_nodes folder")  # fmt: skip
    out = target / CUSTOM_NODE_FILE
    out.write_text(custom_node_source(), encoding="utf-8")
    return out
