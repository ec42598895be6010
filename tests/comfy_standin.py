"""A small stand-in for the parts of ComfyUI that a model patch meets, for the contract tests.

ComfyUI cannot be installed from the package registries, so this reproduces its contracts as its
sources have them (read with the search tools; commits are those of the copies read):

- ``comfy/patcher_extension.py`` (comfyanonymous/ComfyUI @ 06ce62de4b2a): ``WrappersMP``,
  ``WrapperExecutor`` (how a wrapper is called: ``wrapper(executor, *args, **kwargs)``, and how it
  calls on: ``executor(*args, **kwargs)`` builds the next executor), ``add_wrapper_with_key``,
  ``get_all_wrappers``, ``copy_nested_dicts``. Copied verbatim in behaviour.
- ``comfy/model_patcher.py`` (comfyanonymous/ComfyUI @ 000a21a0c1b6): ``ModelPatcher.clone``
  (``model_options`` deep-copied, wrapper lists copied, the same ``model``),
  ``add_wrapper_with_key``, ``remove_wrappers_with_key``, ``set_model_unet_function_wrapper``
  (``model_options["model_function_wrapper"]``, which the reference runs use),
  ``add_object_patch``, ``get_model_object``.
- ``comfy/sampler_helpers.py`` ``prepare_model_patcher``: the patcher's wrappers are copied into
  ``model_options["transformer_options"]["wrappers"]`` before sampling.
- ``comfy/samplers.py`` (Comfy-Org/ComfyUI @ e0d4ea77a9f6): ``sampling_function`` (at cfg 1 the
  uncond is dropped unless ``disable_cfg1_optimization``), ``_calc_cond_batch`` (conds batched with
  the candidate list *reversed*, so the uncond half comes first: ``cond_or_uncond == [1, 0]``;
  ``transformer_options`` gets ``cond_or_uncond`` and ``sigmas``; ``control.get_control`` builds a
  fresh control dict per batch; then either ``model_options["model_function_wrapper"](
  model.apply_model, {"input", "timestep", "c", "cond_or_uncond"})`` or
  ``model.apply_model(input_x, timestep_, **c)``), ``cfg_function``.
- ``comfy/model_base.py`` (comfyanonymous/ComfyUI @ 003617c441f2): ``BaseModel.apply_model`` runs
  the ``APPLY_MODEL`` wrappers found in ``transformer_options`` around ``_apply_model(x, t,
  c_concat, c_crossattn, control, transformer_options, **kwargs)``, which takes sigma, scales the
  input with ``calculate_input``, concatenates ``c_concat`` on channels, feeds
  ``timestep(sigma)``, and returns ``calculate_denoised(sigma, output.float(), x)``.
  ``SDXL.encode_adm``: ``y`` = pooled text, then ``Timestep(256)`` embeddings of height, width,
  crop_h, crop_w, target_height, target_width.
- ``comfy/model_sampling.py`` (Comfy-Org/ComfyUI @ 2fd2083913be): ``EPS``, ``V_PREDICTION``,
  ``EDM``, ``X0``, ``CONST`` (input/output conventions and ``noise_scaling``),
  ``ModelSamplingDiscrete`` (sigma range, nearest-index ``timestep``), ``ModelSamplingDiscreteFlow``
  (shift, ``timestep = σ·multiplier``), ``ModelSamplingFlux`` (``timestep = σ``),
  ``ModelSamplingContinuousEDM``, and the ``class ModelSampling(s, c)`` they are combined into.
- ``comfy/ldm/modules/diffusionmodules/openaimodel.py``: ``apply_control`` *pops* the last entry
  of ``control[name]`` and adds it unless it is None (an empty list is silently skipped);
  ``comfy/ldm/modules/diffusionmodules/util.py`` (Comfy-Org/ComfyUI @ 22ec285c2a44):
  ``timestep_embedding`` = ``[cos, sin]`` of ``t·exp(−log(10000)·i/half)``.
- ``comfy/controlnet.py`` (Comfy-Org/ComfyUI @ 03b1ca67fee2): ``get_control(x_noisy, t, cond,
  batched_number, transformer_options)`` returns ``{'input': [...], 'middle': [...], 'output':
  [...]}``, entries may be None and may share tensors.

The diffusion model itself (:class:`TinyDiffusionModel`) is a small conv net with ComfyUI's
calling convention, not a real UNet; everything runs in float32 on the CPU.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

# --- comfy/patcher_extension.py ------------------------------------------------------------------


class WrappersMP:
    OUTER_SAMPLE = "outer_sample"
    SAMPLER_SAMPLE = "sampler_sample"
    CALC_COND_BATCH = "calc_cond_batch"
    APPLY_MODEL = "apply_model"
    DIFFUSION_MODEL = "diffusion_model"


def add_wrapper_with_key(wrapper_type, key, wrapper, transformer_options, is_model_options=False):
    if is_model_options:
        transformer_options = transformer_options.setdefault("transformer_options", {})
    wrappers = transformer_options.setdefault("wrappers", {})
    wrappers.setdefault(wrapper_type, {}).setdefault(key, []).append(wrapper)


def get_all_wrappers(wrapper_type, transformer_options, is_model_options=False):
    if is_model_options:
        transformer_options = transformer_options.get("transformer_options", {})
    w_list = []
    for w in transformer_options.get("wrappers", {}).get(wrapper_type, {}).values():
        w_list.extend(w)
    return w_list


class WrapperExecutor:
    """Handles the call stack of wrappers around a function, in order (ComfyUI's, verbatim)."""

    def __init__(self, original, class_obj, wrappers, idx):
        self.original = original
        self.class_obj = class_obj
        self.wrappers = wrappers.copy()
        self.idx = idx
        self.is_last = idx == len(wrappers)

    def __call__(self, *args, **kwargs):
        return self._create_next_executor().execute(*args, **kwargs)

    def execute(self, *args, **kwargs):
        args = list(args)
        kwargs = dict(kwargs)
        if self.is_last:
            return self.original(*args, **kwargs)
        return self.wrappers[self.idx](self, *args, **kwargs)

    def _create_next_executor(self):
        new_idx = self.idx + 1
        if new_idx > len(self.wrappers):
            raise Exception("Wrapper idx exceeded available wrappers; something went very wrong.")
        if self.class_obj is None:
            return WrapperExecutor.new_executor(self.original, self.wrappers, new_idx)
        return WrapperExecutor.new_class_executor(
            self.original, self.class_obj, self.wrappers, new_idx
        )

    @classmethod
    def new_executor(cls, original, wrappers, idx=0):
        return cls(original, class_obj=None, wrappers=wrappers, idx=idx)

    @classmethod
    def new_class_executor(cls, original, class_obj, wrappers, idx=0):
        return cls(original, class_obj, wrappers, idx=idx)


def copy_nested_dicts(input_dict):
    new_dict = input_dict.copy()
    for key, value in input_dict.items():
        if isinstance(value, dict):
            new_dict[key] = copy_nested_dicts(value)
        elif isinstance(value, list):
            new_dict[key] = value.copy()
    return new_dict


# --- comfy/model_sampling.py ---------------------------------------------------------------------


def reshape_sigma(sigma, noise_dim):
    if sigma.nelement() == 1:
        return sigma.view(())
    return sigma.view(sigma.shape[:1] + (1,) * (noise_dim - 1))


class EPS:
    def calculate_input(self, sigma, noise):
        sigma = reshape_sigma(sigma, noise.ndim)
        return noise / (sigma**2 + self.sigma_data**2) ** 0.5

    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = reshape_sigma(sigma, model_output.ndim)
        return model_input - model_output * sigma

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        sigma = reshape_sigma(sigma, noise.ndim)
        if max_denoise:
            noise = noise * torch.sqrt(1.0 + sigma**2.0)
        else:
            noise = noise * sigma
        noise += latent_image
        return noise

    def inverse_noise_scaling(self, sigma, latent):
        return latent


class V_PREDICTION(EPS):  # noqa: N801  (ComfyUI's name)
    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = reshape_sigma(sigma, model_output.ndim)
        sd = self.sigma_data
        return (
            model_input * sd**2 / (sigma**2 + sd**2)
            - model_output * sigma * sd / (sigma**2 + sd**2) ** 0.5
        )


class EDM(V_PREDICTION):
    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = reshape_sigma(sigma, model_output.ndim)
        sd = self.sigma_data
        return (
            model_input * sd**2 / (sigma**2 + sd**2)
            + model_output * sigma * sd / (sigma**2 + sd**2) ** 0.5
        )


class X0(EPS):
    def calculate_denoised(self, sigma, model_output, model_input):
        return model_output


class CONST:
    def calculate_input(self, sigma, noise):
        return noise

    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = reshape_sigma(sigma, model_output.ndim)
        return model_input - model_output * sigma

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        sigma = reshape_sigma(sigma, noise.ndim)
        s = getattr(self, "noise_scale", 1.0)
        return sigma * (s * noise) + (1.0 - sigma) * latent_image

    def inverse_noise_scaling(self, sigma, latent):
        sigma = reshape_sigma(sigma, latent.ndim)
        return latent / (1.0 - sigma)


def make_beta_schedule_linear(n_timestep, linear_start, linear_end):
    """``make_beta_schedule("linear", ...)`` of comfy/ldm/modules/diffusionmodules/util.py."""
    return torch.linspace(linear_start**0.5, linear_end**0.5, n_timestep, dtype=torch.float64) ** 2


class ModelSamplingDiscrete(nn.Module):
    def __init__(self, model_config=None, linear_start=0.00085, linear_end=0.012):
        super().__init__()
        betas = make_beta_schedule_linear(1000, linear_start, linear_end)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.num_timesteps = 1000
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.register_buffer("sigmas", sigmas.float())
        self.register_buffer("log_sigmas", sigmas.log().float())
        self.sigma_data = 1.0

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def timestep(self, sigma):
        log_sigma = sigma.log()
        dists = log_sigma.to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep):
        t = torch.clamp(timestep.float(), min=0, max=(len(self.sigmas) - 1))
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]
        return log_sigma.exp().to(timestep.device)


class ModelSamplingContinuousEDM(nn.Module):
    def __init__(self, model_config=None, sigma_min=0.002, sigma_max=120.0, sigma_data=1.0):
        super().__init__()
        self.sigma_data = sigma_data
        sigmas = torch.linspace(math.log(sigma_min), math.log(sigma_max), 1000).exp()
        self.register_buffer("sigmas", sigmas)
        self.register_buffer("log_sigmas", sigmas.log())

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def timestep(self, sigma):
        return 0.25 * sigma.log()


def time_snr_shift(alpha, t):
    if alpha == 1.0:
        return t
    return alpha * t / (1 + (alpha - 1) * t)


class ModelSamplingDiscreteFlow(nn.Module):
    def __init__(self, model_config=None, shift=1.0, multiplier=1000):
        super().__init__()
        self.noise_scale = 1.0
        self.shift = shift
        self.multiplier = multiplier
        ts = self.sigma((torch.arange(1, 1001, 1) / 1000) * multiplier)
        self.register_buffer("sigmas", ts)

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def timestep(self, sigma):
        return sigma * self.multiplier

    def sigma(self, timestep):
        return time_snr_shift(self.shift, timestep / self.multiplier)


def flux_time_shift(mu, sigma, t):
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)


class ModelSamplingFlux(nn.Module):
    def __init__(self, model_config=None, shift=1.15):
        super().__init__()
        self.shift = shift
        ts = self.sigma(torch.arange(1, 10001, 1) / 10000)
        self.register_buffer("sigmas", ts)

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def timestep(self, sigma):
        return sigma

    def sigma(self, timestep):
        return flux_time_shift(self.shift, 1.0, timestep)


#: model_base.model_sampling(): (sampling class s, parameterisation c) per model type.
MODEL_TYPES = {
    "EPS": (ModelSamplingDiscrete, EPS),
    "V_PREDICTION": (ModelSamplingDiscrete, V_PREDICTION),
    "V_PREDICTION_EDM": (ModelSamplingContinuousEDM, V_PREDICTION),
    "EDM": (ModelSamplingContinuousEDM, EDM),
    "X0": (ModelSamplingDiscrete, X0),
    "FLOW": (ModelSamplingDiscreteFlow, CONST),
    "FLUX": (ModelSamplingFlux, CONST),
}


def model_sampling(model_type: str, **settings):
    """``model_base.model_sampling``: an instance of ``class ModelSampling(s, c)``."""
    s, c = MODEL_TYPES[model_type]

    class ModelSampling(s, c):
        pass

    return ModelSampling(**settings)


# --- comfy/ldm/modules/diffusionmodules (openaimodel.py, util.py) --------------------------------


def apply_control(h, control, name):
    if control is not None and name in control and len(control[name]) > 0:
        ctrl = control[name].pop()
        if ctrl is not None:
            h = h + ctrl  # ComfyUI adds in place; out of place here keeps test tensors intact
    return h


def timestep_embedding(timesteps, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period)
        * torch.arange(start=0, end=half, dtype=torch.float32, device=timesteps.device)
        / half
    )
    args = timesteps[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Timestep(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def forward(self, t):
        return timestep_embedding(t, self.dim)


def _down(h: torch.Tensor) -> torch.Tensor:
    """2x average pooling of the two spatial axes (frames kept for video)."""
    if h.ndim == 5:
        return F.avg_pool3d(h, (1, 2, 2))
    return F.avg_pool2d(h, 2)


def _up(h: torch.Tensor) -> torch.Tensor:
    """2x nearest upsampling of the two spatial axes."""
    return h.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)


class TinyDiffusionModel(nn.Module):
    """A tiny two-level conv net with the UNet's calling convention and ControlNet pops.

    ``forward(x, timesteps, context=None, y=None, control=None, transformer_options={},
    guidance=None)``; pops ``control['input']`` twice (full, then half resolution),
    ``control['middle']`` and ``control['output']`` once each. Records every call in ``calls``.
    """

    def __init__(
        self,
        in_channels=4,
        out_channels=4,
        context_dim=6,
        adm_channels=0,
        seed=0,
        dims=2,
        hidden=8,
        time_scale=1.0,
    ):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        self.hidden = hidden
        self.time_scale = time_scale
        self.conv_in = conv(in_channels, hidden, 3, padding=1)
        self.mid = conv(hidden, hidden, 3, padding=1)
        self.conv_out = conv(hidden, out_channels, 3, padding=1)
        self.time = nn.Linear(2, hidden)
        self.context = nn.Linear(context_dim, hidden)
        self.adm = nn.Linear(adm_channels, hidden) if adm_channels else None
        self.guidance = nn.Linear(1, hidden)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        self.calls: list[dict] = []

    @property
    def dtype(self):
        return self.conv_in.weight.dtype

    def _bias(self, h, vec):
        return h + vec.reshape(vec.shape + (1,) * (h.ndim - 2))

    def forward(
        self,
        x,
        timesteps,
        context=None,
        y=None,
        control=None,
        transformer_options={},  # noqa: B006  (ComfyUI's signature)
        guidance=None,
        **kwargs,
    ):
        transformer_options["original_shape"] = list(x.shape)  # the UNet writes into it
        self.calls.append(
            {
                "shape": tuple(x.shape),
                "timesteps": timesteps.clone(),
                "control_lengths": {k: len(v) for k, v in (control or {}).items()},
                "control": {k: list(v) for k, v in (control or {}).items()},
                "y": y,
                "guidance": guidance,
                "context": context,
                "cond_or_uncond": transformer_options.get("cond_or_uncond"),
                "kwargs": kwargs,
            }
        )
        t = timesteps.float() * self.time_scale
        h = self.conv_in(x)
        h = self._bias(h, self.time(torch.stack([t.sin(), t.cos()], -1)))
        if context is not None:
            h = self._bias(h, self.context(context.mean(dim=1)))
        if y is not None and self.adm is not None:
            h = self._bias(h, self.adm(y / 16.0))
        if guidance is not None:
            h = self._bias(h, self.guidance(guidance.reshape(-1, 1).float()))
        h = apply_control(h, control, "input")
        d = apply_control(_down(torch.tanh(h)), control, "input")
        d = apply_control(torch.tanh(self.mid(d)), control, "middle")
        u = apply_control(torch.tanh(h + _up(d)), control, "output")
        return self.conv_out(u)


# --- comfy/latent_formats.py ---------------------------------------------------------------------


class LatentFormat:
    """The node reads only the class name (pixels per latent element: 8, Wan22's 16, ...)."""

    latent_channels = 4


class SD15(LatentFormat):
    pass


class Wan21(LatentFormat):
    latent_channels = 16


class Wan22(Wan21):
    latent_channels = 48


# --- comfy/model_base.py -------------------------------------------------------------------------


class BaseModel(nn.Module):
    def __init__(self, diffusion_model, model_type="EPS", latent_format=None, **sampling_settings):
        super().__init__()
        self.diffusion_model = diffusion_model
        self.model_type = model_type
        self.model_sampling = model_sampling(model_type, **sampling_settings)
        self.latent_format = SD15() if latent_format is None else latent_format
        self.manual_cast_dtype = None

    def process_timestep(self, timestep, **kwargs):
        return timestep

    def get_dtype(self):
        return next(self.diffusion_model.parameters()).dtype

    def apply_model(
        self,
        x,
        t,
        c_concat=None,
        c_crossattn=None,
        control=None,
        transformer_options={},  # noqa: B006  (ComfyUI's signature)
        **kwargs,
    ):
        return WrapperExecutor.new_class_executor(
            self._apply_model,
            self,
            get_all_wrappers(WrappersMP.APPLY_MODEL, transformer_options),
        ).execute(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

    def _apply_model(
        self,
        x,
        t,
        c_concat=None,
        c_crossattn=None,
        control=None,
        transformer_options={},  # noqa: B006  (ComfyUI's signature)
        **kwargs,
    ):
        sigma = t
        xc = self.model_sampling.calculate_input(sigma, x)
        if c_concat is not None:
            xc = torch.cat([xc] + [c_concat.to(xc)], dim=1)
        context = c_crossattn
        dtype = self.get_dtype()
        xc = xc.to(dtype)
        t = self.model_sampling.timestep(t).float()
        if context is not None:
            context = context.to(dtype)
        extra_conds = {}
        for o, extra in kwargs.items():
            if hasattr(extra, "dtype") and extra.dtype not in (torch.int, torch.long):
                extra = extra.to(dtype)
            extra_conds[o] = extra
        t = self.process_timestep(t, x=x, **extra_conds)
        model_output = self.diffusion_model(
            xc,
            t,
            context=context,
            control=control,
            transformer_options=transformer_options,
            **extra_conds,
        )
        return self.model_sampling.calculate_denoised(sigma, model_output.float(), x)


class SDXL(BaseModel):
    """model_base.SDXL: ``y`` carries the pooled text and six size embeddings."""

    def __init__(self, diffusion_model, model_type="EPS", **sampling_settings):
        super().__init__(diffusion_model, model_type, **sampling_settings)
        self.embedder = Timestep(256)
        self.noise_augmentor = None

    def encode_adm(
        self,
        pooled_output,
        width=768,
        height=768,
        crop_w=0,
        crop_h=0,
        target_width=None,
        target_height=None,
    ):
        target_width = width if target_width is None else target_width
        target_height = height if target_height is None else target_height
        out = [
            self.embedder(torch.Tensor([v]))
            for v in (height, width, crop_h, crop_w, target_height, target_width)
        ]
        flat = torch.flatten(torch.cat(out)).unsqueeze(dim=0).repeat(pooled_output.shape[0], 1)
        return torch.cat((pooled_output.to(flat.device), flat), dim=1)


class SDXLRefiner(BaseModel):
    """model_base.SDXLRefiner: pooled text, four size embeddings and the aesthetic score."""

    def __init__(self, diffusion_model, model_type="EPS", **sampling_settings):
        super().__init__(diffusion_model, model_type, **sampling_settings)
        self.embedder = Timestep(256)
        self.noise_augmentor = None

    def encode_adm(
        self, pooled_output, width=768, height=768, crop_w=0, crop_h=0, aesthetic_score=6.0
    ):
        out = [
            self.embedder(torch.Tensor([v]))
            for v in (height, width, crop_h, crop_w, aesthetic_score)
        ]
        flat = torch.flatten(torch.cat(out)).unsqueeze(dim=0).repeat(pooled_output.shape[0], 1)
        return torch.cat((pooled_output.to(flat.device), flat), dim=1)


# --- comfy/model_patcher.py ----------------------------------------------------------------------


class ModelPatcher:
    def __init__(self, model):
        self.model = model
        self.model_options = {"transformer_options": {}}
        self.object_patches = {}
        self.wrappers: dict[str, dict[str, list[Callable]]] = {}
        self.parent = None

    def clone(self):
        n = type(self)(self.model)
        n.object_patches = self.object_patches.copy()
        n.model_options = copy.deepcopy(self.model_options)
        n.parent = self
        for k, w in self.wrappers.items():
            n.wrappers[k] = {k1: w1.copy() for k1, w1 in w.items()}
        return n

    def set_model_unet_function_wrapper(self, unet_wrapper_function):
        self.model_options["model_function_wrapper"] = unet_wrapper_function

    def add_object_patch(self, name, obj):
        self.object_patches[name] = obj

    def get_model_object(self, name):
        if name in self.object_patches:
            return self.object_patches[name]
        return getattr(self.model, name)

    def add_wrapper_with_key(self, wrapper_type, key, wrapper):
        self.wrappers.setdefault(wrapper_type, {}).setdefault(key, []).append(wrapper)

    def remove_wrappers_with_key(self, wrapper_type, key):
        w = self.wrappers.get(wrapper_type, {})
        if key in w:
            w.pop(key)

    def get_all_wrappers(self, wrapper_type):
        w_list = []
        for w in self.wrappers.get(wrapper_type, {}).values():
            w_list.extend(w)
        return w_list


# --- comfy/controlnet.py -------------------------------------------------------------------------


class ControlNet:
    """``get_control`` returns a fresh ``{'input', 'middle', 'output'}`` dict of residual lists.

    The residuals are deterministic functions of the noisy input and a hint at the latent size,
    shaped for :class:`TinyDiffusionModel` (``input`` popped full resolution first, then half).
    ``with_none`` puts a None entry in ``output``'s place, ``shared`` reuses one tensor twice.
    """

    def __init__(self, hint, hidden=8, with_none=False):
        self.hint = hint
        self.hidden = hidden
        self.with_none = with_none
        self.calls = 0

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
        self.calls += 1
        base = torch.tanh(x_noisy.mean(dim=1, keepdim=True) + self.hint.to(x_noisy))
        full = base.repeat_interleave(self.hidden, dim=1) * 0.5
        half = _down(full) * 0.25
        output = None if self.with_none else full * 0.1
        return {"input": [half, full], "middle": [half * 0.5], "output": [output]}


# --- comfy/sampler_helpers.py + comfy/samplers.py ------------------------------------------------


def prepare_model_options(patcher) -> dict:
    """``CFGGuider``'s model_options clone plus ``prepare_model_patcher``'s wrappers."""
    model_options = copy_nested_dicts(patcher.model_options)
    model_options.setdefault("transformer_options", {})
    model_options["transformer_options"]["wrappers"] = copy_nested_dicts(
        getattr(patcher, "wrappers", {})
    )
    return model_options


def calc_cond_batch(model, conds, x_in, timestep, model_options):
    """``_calc_cond_batch`` for conds that all concatenate (no areas, masks or hooks).

    Each cond is ``{"model_conds": {name: tensor}, "control": ControlNet or absent}``.
    """
    out_conds = [torch.zeros_like(x_in) for _ in conds]
    out_counts = [torch.ones_like(x_in) * 1e-37 for _ in conds]
    to_run = [(cond, i) for i in range(len(conds)) if conds[i] is not None for cond in conds[i]]
    while to_run:
        to_batch = list(range(len(to_run)))
        to_batch.reverse()  # ComfyUI reverses the candidates: the uncond half comes first
        input_x, c_list, cond_or_uncond, control = [], [], [], None
        for x in to_batch:
            cond, index = to_run.pop(x)
            input_x.append(x_in)
            c_list.append(cond["model_conds"])
            cond_or_uncond.append(index)
            control = cond.get("control")
        batch_chunks = len(cond_or_uncond)
        input_x = torch.cat(input_x)
        c = {k: torch.cat([ci[k] for ci in c_list]) for k in c_list[0]}
        timestep_ = torch.cat([timestep] * batch_chunks)
        transformer_options = copy_nested_dicts(model_options.get("transformer_options", {}))
        transformer_options["cond_or_uncond"] = cond_or_uncond[:]
        transformer_options["sigmas"] = timestep
        c["transformer_options"] = transformer_options
        if control is not None:
            c["control"] = control.get_control(
                input_x, timestep_, c, len(cond_or_uncond), transformer_options
            )
        if "model_function_wrapper" in model_options:
            output = model_options["model_function_wrapper"](
                model.apply_model,
                {"input": input_x, "timestep": timestep_, "c": c, "cond_or_uncond": cond_or_uncond},
            ).chunk(batch_chunks)
        else:
            output = model.apply_model(input_x, timestep_, **c).chunk(batch_chunks)
        for o in range(batch_chunks):
            out_conds[cond_or_uncond[o]] += output[o]
            out_counts[cond_or_uncond[o]] += 1.0
    return [out_conds[i] / out_counts[i] for i in range(len(conds))]


def sampling_function(model, x, timestep, uncond, cond, cond_scale, model_options):
    if math.isclose(cond_scale, 1.0) and not model_options.get("disable_cfg1_optimization"):
        uncond_ = None
    else:
        uncond_ = uncond
    out = calc_cond_batch(model, [cond, uncond_], x, timestep, model_options)
    return out[1] + (out[0] - out[1]) * cond_scale  # cfg_function


def sample_euler(patcher, noise, sigmas, positive, negative, cfg, latent_image=None):
    """KSampler's path with the Euler sampler: noise scaling, Euler steps on the denoised output."""
    model = patcher.model
    model_options = prepare_model_options(patcher)
    ms = (
        patcher.get_model_object("model_sampling")
        if hasattr(patcher, "get_model_object")
        else (model.model_sampling)
    )
    latent = torch.zeros_like(noise) if latent_image is None else latent_image
    x = ms.noise_scaling(sigmas[0], noise, latent)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = sampling_function(
            model, x, sigmas[i] * s_in, negative, positive, cfg, model_options
        )
        d = (x - denoised) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return ms.inverse_noise_scaling(sigmas[-1], x)


# --- the real engine, where COMFYUI_PATH names a ComfyUI checkout --------------------------------


def use_real_comfyui(path: str) -> None:
    """Put ComfyUI's own code in place of the stand-in's wherever ComfyUI has it.

    Replaced: ``comfy.patcher_extension`` (wrappers and their executor), ``comfy.model_sampling``
    (EPS, V_PREDICTION, EDM, X0, CONST and the four sampling classes), ``BaseModel``'s
    ``apply_model``/``_apply_model``, ``SDXL``/``SDXLRefiner``'s ``encode_adm`` and ``Timestep``
    embedder, ``ModelPatcher``, ``openaimodel.apply_control`` and the latent formats. Kept: the tiny
    diffusion model, the ControlNet stand-in and the simplified sampler above (the real samplers
    run in the real-engine tests of tests/test_comfyui.py).
    """
    import sys
    import types

    sys.path.insert(0, path)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before comfy.model_management is imported
    import comfy.latent_formats as lf
    import comfy.model_base as mb
    import comfy.model_patcher as mp
    import comfy.model_sampling as ms
    import comfy.patcher_extension as pe
    from comfy.ldm.modules.diffusionmodules import openaimodel

    names = globals()
    for name in ("WrappersMP", "WrapperExecutor", "add_wrapper_with_key", "get_all_wrappers"):
        names[name] = getattr(pe, name)
    names["copy_nested_dicts"] = pe.copy_nested_dicts
    sampling = (
        "EPS",
        "V_PREDICTION",
        "EDM",
        "X0",
        "CONST",
        "ModelSamplingDiscrete",
        "ModelSamplingContinuousEDM",
        "ModelSamplingDiscreteFlow",
        "ModelSamplingFlux",
    )
    for name in sampling:
        names[name] = getattr(ms, name)
    names["MODEL_TYPES"] = {
        "EPS": (ms.ModelSamplingDiscrete, ms.EPS),
        "V_PREDICTION": (ms.ModelSamplingDiscrete, ms.V_PREDICTION),
        "V_PREDICTION_EDM": (ms.ModelSamplingContinuousEDM, ms.V_PREDICTION),
        "EDM": (ms.ModelSamplingContinuousEDM, ms.EDM),
        "X0": (ms.ModelSamplingDiscrete, ms.X0),
        "FLOW": (ms.ModelSamplingDiscreteFlow, ms.CONST),
        "FLUX": (ms.ModelSamplingFlux, ms.CONST),
    }

    def real_model_sampling(model_type: str, **settings):
        s, c = names["MODEL_TYPES"][model_type]

        class ModelSampling(s, c):
            pass

        return ModelSampling(types.SimpleNamespace(sampling_settings=settings))

    names["model_sampling"] = real_model_sampling
    names["apply_control"] = openaimodel.apply_control
    names["Timestep"] = openaimodel.Timestep
    for name in ("SD15", "Wan21", "Wan22"):
        names[name] = getattr(lf, name)

    def on_real(real_cls):
        class Model(real_cls):
            def __init__(self, diffusion_model, model_type="EPS", latent_format=None, **settings):
                nn.Module.__init__(self)
                self.diffusion_model = diffusion_model
                self.model_type = model_type
                self.model_sampling = real_model_sampling(model_type, **settings)
                self.latent_format = lf.SD15() if latent_format is None else latent_format
                self.manual_cast_dtype = None
                if real_cls is not mb.BaseModel:
                    self.embedder = openaimodel.Timestep(256)
                    self.noise_augmentor = None

            def encode_adm(self, pooled_output, **sizes):
                return real_cls.encode_adm(self, pooled_output=pooled_output, **sizes)

        Model.__name__ = Model.__qualname__ = real_cls.__name__
        return Model

    for name in ("BaseModel", "SDXL", "SDXLRefiner"):
        names[name] = on_real(getattr(mb, name))
    cpu = torch.device("cpu")
    names["ModelPatcher"] = lambda model: mp.ModelPatcher(model, cpu, cpu)


#: The ComfyUI the real-engine tests ran against, and where: ``COMFYUI_PATH`` (unset: stand-in).
TESTED_COMFYUI = "Comfy-Org/ComfyUI a125cd84b054a57729b5eecab930ca9408719832 (0.3.64)"
REAL = bool(os.environ.get("COMFYUI_PATH"))
if REAL:
    use_real_comfyui(os.environ["COMFYUI_PATH"])
