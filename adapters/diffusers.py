"""Upsample guidance for diffusers UNet pipelines, in one call, with any VP scheduler.

::

    from ug_core.adapters.diffusers import apply_upsample_guidance, remove_upsample_guidance

    apply_upsample_guidance(pipe, factors=(2, 2), scale=1.0, eta=0.6)
    image = pipe(prompt, height=1024, width=1024).images[0]
    remove_upsample_guidance(pipe)

This module is a translator: it reads diffusers' conventions (the UNet's call signature, the
scheduler's ``alphas_cumprod`` and ``prediction_type``, SDXL's micro-conditioning, AnimateDiff's
per-frame text embeddings, ControlNet's residuals) and hands every guided UNet call to
:class:`ug_core.UpsampleGuidance`, which owns the maths: one low-resolution call for the whole
(CFG-doubled) batch, made only while w != 0, with time and power matching from the schedule.

**How the pipeline is patched.** ``apply_upsample_guidance`` registers a forward pre-hook and a
forward hook (``torch.nn.Module.register_forward_*hook(..., with_kwargs=True)``) on ``pipe.unet``
and touches neither its ``forward``, its class, its parameters nor its config. The pre-hook checks
the latent size before the UNet runs; the forward hook receives the UNet's own output for the
high-resolution call and passes it, with a callable for the low-resolution call, to
``UpsampleGuidance.apply``. Because the hooks live in the module's hook tables and not in
``forward``, they compose in either order with anything that replaces ``forward`` (accelerate's
CPU-offload and device hooks, diffusers' hook registry), they run inside ``torch.compile`` (both
``torch.compile(pipe.unet)`` and ``pipe.unet.compile()``), and removing them restores the UNet bit
for bit. The pipeline itself gets one or two instance attributes (``check_inputs`` and/or
``prepare_latents``, wrapped to check the requested size before any model runs) and a forward
pre-hook on ``pipe.controlnet`` (same check, since the ControlNet runs before the UNet in each
step); ``remove_upsample_guidance`` deletes them all. Applying twice replaces the first application.
The guidance lives on the UNet: another pipeline sharing it (``from_pipe``, ``**pipe.components``)
is guided too, with this pipeline's scheduler; apply to that pipeline instead, which moves the
guidance over. The schedule and prediction type are read from ``pipe.scheduler`` at each call, so
swapping the scheduler after applying is fine; the low-resolution branch never calls a scheduler
method (no ``step``, no ``scale_model_input``): every diffusers scheduler for these pipelines feeds
the UNet a variance-preserving ``x_t`` at a (possibly fractional) timestep index, which is exactly
what :class:`ug_core.DiscreteSchedule` describes.

**Video.** For a video UNet (AnimateDiff's ``UNetMotionModel``; sample ``(B, C, F, H, W)``)
three factors apply to ``(F, H, W)`` and two factors mean ``(1, H, W)``. AnimateDiff passes the
text embeddings repeated once per frame (``repeat_interleave(num_frames)``, ``B·F`` rows); the
low-resolution call gets them block-averaged over each group of frames (D on the frame axis), so
it sees ``B·F/f`` rows. When every frame carries the same embedding (plain AnimateDiff) that mean
is that embedding exactly, bit for bit; with per-frame prompts (FreeNoise) it is the mean prompt
of the merged frames. Embeddings with ``B`` rows pass unchanged.

**SDXL micro-conditioning.** ``added_cond_kwargs["time_ids"]`` holds ``(original_size,
crops_coords_top_left, target_size)`` in pixels. By default (``sdxl_micro_conditioning="low"``)
the low-resolution call gets them divided by the spatial factors, so that they describe the
image it actually sees. Default and why: SDXL was trained with these numbers equal to the real
size and crop of each training image, and upsample guidance assumes that the low-resolution call
is the model sampling natively at the low resolution; a 1024² input labelled "2048²" is out of the
training distribution. ``"high"`` passes the high-resolution ids unchanged (both calls conditioned
alike, e.g. when the ids are used as a style control).

**ControlNet.** The low-resolution call gets the ControlNet residuals (``down_block_additional_
residuals``, ``mid_block_additional_residual`` and T2I-Adapter's ``down_intrablock_additional_
residuals``) block-averaged by the same factors (D on each residual, i.e. average pooling; for
video over frames and pixels). We pool rather than run the ControlNet again on a downsampled input
because (1) pooled residuals are aligned with the low-resolution input exactly, block for block,
which is all the residuals are (feature maps added to the UNet's skip features at the matching
positions); (2) it costs nothing, so the extra cost stays ~η/k of the UNet's; a second ControlNet
run would add the ControlNet's own cost and a downsampled control image (blurred edges, depth
maps), at the matched time τ the ControlNet never saw with that image; (3) it only touches the
UNet call, so it works unchanged for every ControlNet variant without re-creating each
pipeline's ControlNet logic (tested: SD, SDXL, img2img, Multi-ControlNet, guess mode,
ControlNet-Union, AnimateDiff, T2I-Adapter and MultiAdapter, control_guidance_start/end). The UNet
consumes T2I-Adapter's residual list as it runs; the adapter keeps a copy for the low call. A
residual whose size the factors don't divide raises.

**Learned variance.** A UNet whose output has twice its input's channels (DDPM/IF with
``variance_type="learned_range"``) is guided on its first half (the mean prediction); the
variance channels of the high-resolution call are kept as they are. With a learned-variance
scheduler and as many output as input channels (DeepFloyd IF super-resolution: 3 noisy + 3
image channels in, 3 mean + 3 variance out), the input's second half is conditioning (below).

**Conditioning channels.** A UNet with more input than output channels (inpainting: 9 in, 4 out;
InstructPix2Pix: 8 in, 4 out; SD x4 upscaler: 7 in, 4 out) gets, as diffusers' pipelines build it,
the noisy latent in its first ``out_channels`` input channels and clean conditioning after it (mask,
masked-image or image latents). Only the noisy part is guided: the low-resolution call's input is
the scaled ``D[x]`` of Eq. 10 followed by the conditioning channels block-averaged by the same
factors and not scaled (they carry no noise). As with ControlNet residuals, the pooled conditioning
is aligned with the low-resolution input block for block; a block-averaged mask is fractional on the
mask's edge, where the model was trained on binary masks.

**LoRA and IP-Adapter** need nothing: both live inside the UNet (adapted layers, attention
processors) or in arguments that describe the whole image (``cross_attention_kwargs``,
``added_cond_kwargs["image_embeds"]``), which reach the low-resolution call untouched.

For a bare UNet and scheduler in your own loop, use :func:`guided_unet`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..guidance import UpsampleGuidance
from ..operators import downsample, normalize_factors
from ..scales import ScaleLike
from ..schedules import DiscreteSchedule

__all__ = [
    "SDXL_MICRO_CONDITIONING",
    "GuidedUNet",
    "apply_upsample_guidance",
    "guided_unet",
    "is_upsample_guided",
    "remove_upsample_guidance",
]

#: ``sdxl_micro_conditioning`` values: ``"low"`` (the low-resolution call's SDXL time ids describe
#: the low-resolution image; default) or ``"high"`` (it gets the high-resolution ids unchanged).
SDXL_MICRO_CONDITIONING = ("low", "high")

#: UNet classes whose sample is a video ``(B, C, F, H, W)``.
_VIDEO_UNETS = ("UNetMotionModel", "UNet3DConditionModel", "I2VGenXLUNet")

#: The UNet arguments that hold ControlNet / T2I-Adapter residuals (pooled for the low call).
_RESIDUALS = (
    "down_block_additional_residuals",
    "mid_block_additional_residual",
    "down_intrablock_additional_residuals",
)

#: Pipeline methods wrapped to check the requested size before any model runs.
_SIZE_CHECKED = ("check_inputs", "prepare_latents")

_MISSING = object()


def _base_module(unet: Any) -> torch.nn.Module:
    """The module itself, seen through a ``torch.compile`` wrapper (``OptimizedModule``)."""
    return getattr(unet, "_orig_mod", unet)


def _is_video(unet: torch.nn.Module) -> bool:
    """Whether the UNet takes video samples ``(B, C, F, H, W)``."""
    return type(unet).__name__ in _VIDEO_UNETS


def _check_options(factors: Any, sdxl_micro_conditioning: str) -> tuple[int, ...]:
    """Validate the adapter's own options; return the factors as a tuple of 2 or 3 ints."""
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
    if sdxl_micro_conditioning not in SDXL_MICRO_CONDITIONING:
        raise ValueError(
            f"sdxl_micro_conditioning must be one of {SDXL_MICRO_CONDITIONING}, got "
            f"{sdxl_micro_conditioning!r}"
        )
    return factors


def _schedule_of(scheduler: Any) -> tuple[DiscreteSchedule, str]:
    """The VP schedule and prediction type that a diffusers scheduler feeds the UNet."""
    name = type(scheduler).__name__
    alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
    config = getattr(scheduler, "config", None)
    if alphas_cumprod is None or config is None:
        raise TypeError(
            f"the scheduler {name} has no alphas_cumprod: the diffusers adapter supports the "
            "discrete variance-preserving schedulers of UNet pipelines (DDIM, DDPM, PNDM, Euler, "
            "Heun, LMS, DPM-Solver, UniPC, LCM, ...)"
        )
    if getattr(config, "timestep_type", "discrete") != "discrete":
        raise ValueError(
            f"the scheduler {name} has timestep_type={config.timestep_type!r}: its UNet timesteps "
            "are not timestep indices; only timestep_type='discrete' is supported"
        )
    prediction = getattr(config, "prediction_type", "epsilon")
    return DiscreteSchedule(alphas_cumprod), prediction


def _output_sample(output: Any) -> torch.Tensor:
    """The sample tensor of a UNet output: a BaseOutput, a tuple/list, or a bare tensor."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return output[0]
    sample = getattr(output, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    raise TypeError(
        f"the UNet returned {type(output).__name__}; expected a tensor, a tuple or an output "
        "object with .sample"
    )


def _replace_sample(output: Any, sample: torch.Tensor) -> Any:
    """A UNet output of the same type as ``output`` with its sample replaced."""
    if isinstance(output, torch.Tensor):
        return sample
    if isinstance(output, tuple):
        return (sample, *output[1:])
    if isinstance(output, list):
        return [sample, *output[1:]]
    return dataclasses.replace(output, sample=sample)


def _pool(r: torch.Tensor, name: str, batch: int, frames: int | None, factors: tuple[int, ...]):
    """D on one residual: spatial block mean, and for video also over each group of frames."""
    spatial = factors[-2:]
    if not isinstance(r, torch.Tensor) or r.ndim < 3:
        raise TypeError(f"{name} must hold tensors (N, C, H, W), got {type(r).__name__}")
    bad = [(n, f) for n, f in zip(r.shape[-2:], spatial, strict=True) if n % f]
    if bad:
        raise ValueError(
            f"{name} has spatial size {tuple(r.shape[-2:])}, which the factors {spatial} do not "
            "divide; choose a height and width whose latent size at every UNet level is a "
            "multiple of the factors"
        )
    if frames is None or factors[0] == 1:
        return downsample(r, spatial)
    if r.shape[0] != batch * frames:
        raise ValueError(
            f"{name} has {r.shape[0]} rows, expected batch x frames = {batch} x {frames} for "
            "a video UNet"
        )
    video = r.reshape(batch, frames, *r.shape[1:]).transpose(1, 2)
    low = downsample(video, factors).transpose(1, 2)
    return low.reshape(batch * low.shape[1], *low.shape[2:])


def _frame_mean(e: torch.Tensor, batch: int, frames: int, ft: int) -> torch.Tensor:
    """Per-frame rows (``B·F``, ...) averaged over each group of ``ft`` frames (``B·F/ft`` rows)."""
    if e.shape[0] == batch:
        return e
    if e.shape[0] != batch * frames:
        raise ValueError(
            f"encoder_hidden_states has {e.shape[0]} rows; a video UNet with batch {batch} and "
            f"{frames} frames takes {batch} (one per video) or {batch * frames} (one per frame)"
        )
    per_frame = e.reshape(batch, frames, *e.shape[1:]).movedim(1, -1)
    low = downsample(per_frame, (ft,)).movedim(-1, 1)
    return low.reshape(batch * low.shape[1], *low.shape[2:])


def _low_time_ids(time_ids: torch.Tensor, fh: int, fw: int) -> torch.Tensor:
    """SDXL time ids with their pixel sizes divided by the spatial factors.

    SDXL: ``(orig_h, orig_w, crop_top, crop_left, target_h, target_w)``; the refiner's
    ``(orig_h, orig_w, crop_top, crop_left, aesthetic_score)`` keeps its score.
    """
    layout_ok = isinstance(time_ids, torch.Tensor) and time_ids.ndim == 2
    if not layout_ok or time_ids.shape[1] not in (5, 6):
        raise ValueError(
            "added_cond_kwargs['time_ids'] must be a (batch, 6) tensor (SDXL) or (batch, 5) "
            f"(SDXL refiner) to describe the low-resolution image, got "
            f"{getattr(time_ids, 'shape', type(time_ids))}; pass sdxl_micro_conditioning='high' "
            "to keep them unchanged"
        )
    sizes = 4 if time_ids.shape[1] == 5 else 6
    divisor = torch.tensor([fh, fw] * 3, dtype=torch.float32, device=time_ids.device)[:sizes]
    low = time_ids.clone()
    low[:, :sizes] = (time_ids[:, :sizes].float() / divisor).to(time_ids.dtype)
    return low


def _noisy_channels(name: str, c_in: int, c_out: int, learned_variance: bool) -> int:
    """How many leading input channels hold the noisy sample (the rest are clean conditioning).

    ``c_out == 2 c_in``: learned variance, all noisy. ``c_out == c_in``: all noisy, except with a
    learned-variance scheduler, where the output is [mean, variance] of half the channels and
    the input [noisy, conditioning] (DeepFloyd IF super-resolution). ``c_out < c_in``: the first
    ``c_out`` (inpainting, InstructPix2Pix).
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


class _Engine:
    """What the hooks and :class:`GuidedUNet` share: options, checks and the guided call."""

    def __init__(
        self,
        unet: torch.nn.Module,
        scheduler: Callable[[], Any],
        factors: Sequence[int],
        scale: ScaleLike,
        eta: float,
        time_matching: str,
        below_range: str,
        sdxl_micro_conditioning: str,
    ) -> None:
        self.factors = _check_options(factors, sdxl_micro_conditioning)
        self.video = _is_video(unet)
        if len(self.factors) == 3 and not self.video:
            raise ValueError(
                f"factors={self.factors} has 3 entries (frames, height, width), but "
                f"{type(unet).__name__} takes images (B, C, H, W); pass 2 factors (height, width)"
            )
        config = getattr(unet, "config", None)
        c_in, c_out = getattr(config, "in_channels", None), getattr(config, "out_channels", None)
        if isinstance(c_in, int) and isinstance(c_out, int):
            _noisy_channels(type(unet).__name__, c_in, c_out, learned_variance=False)
        self.signature = inspect.signature(type(unet).forward)
        self.scheduler = scheduler
        self.options = dict(scale=scale, eta=eta, time_matching=time_matching)
        self.below_range = below_range
        self.micro = sdxl_micro_conditioning
        self._cache: dict[tuple, UpsampleGuidance] = {}
        self._cache_owner: tuple = ()
        self.guidance(None)  # validates the options and the scheduler now

    def sample_factors(self, sample: torch.Tensor) -> tuple[int, ...]:
        """The factors for this sample's trailing axes: (H, W) for images, (F, H, W) for video."""
        if self.video and sample.ndim == 5:
            return self.factors if len(self.factors) == 3 else (1, *self.factors)
        if not self.video and sample.ndim == 4:
            return self.factors
        kind = "video UNets take (B, C, F, H, W)" if self.video else "image UNets take (B, C, H, W)"
        raise ValueError(
            f"factors={self.factors} cannot apply to a UNet sample of shape {tuple(sample.shape)}: "
            f"{kind}"
        )

    def guidance(self, factors: tuple[int, ...] | None) -> UpsampleGuidance:
        """The core's :class:`UpsampleGuidance` for the current scheduler and these factors."""
        scheduler = self.scheduler()
        alphas = getattr(scheduler, "alphas_cumprod", None)
        prediction = getattr(getattr(scheduler, "config", None), "prediction_type", None)
        owner = (scheduler, alphas, prediction)
        if len(self._cache_owner) != 3 or any(
            a is not b for a, b in zip(owner, self._cache_owner, strict=True)
        ):
            self._cache, self._cache_owner = {}, owner
        if factors is None:
            video2 = self.video and len(self.factors) == 2
            factors = (1, *self.factors) if video2 else self.factors
        if factors not in self._cache:
            schedule, prediction = _schedule_of(scheduler)
            self._cache[factors] = UpsampleGuidance(
                schedule,
                factors,
                prediction=prediction,
                below_range=self.below_range,
                **self.options,
            )
        return self._cache[factors]

    def bind(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
        """The UNet call's arguments by name (``sample``, ``timestep``, ...), without ``self``."""
        try:
            bound = self.signature.bind(module, *args, **kwargs)
        except TypeError as err:
            raise TypeError(f"cannot read the UNet call's arguments: {err}") from err
        named: dict[str, Any] = {}
        for name, value in list(bound.arguments.items())[1:]:
            kind = self.signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                named.update(value)
            elif kind is inspect.Parameter.VAR_POSITIONAL:
                if value:
                    raise TypeError("the UNet was called with extra positional arguments")
            else:
                named[name] = value
        return named

    def check_sample(self, sample: Any) -> None:
        """Raise a clear error, before the UNet runs, for a sample the factors don't divide."""
        if not isinstance(sample, torch.Tensor):
            return  # the UNet raises its own error
        factors = self.sample_factors(sample)
        trailing = tuple(sample.shape[-len(factors) :])
        names = ("frames", "height", "width")[-len(factors) :]
        bad = [
            f"latent {n} {s} is not a multiple of {f}"
            for n, s, f in zip(names, trailing, factors, strict=True)
            if s % f
        ]
        if bad:
            raise ValueError(
                f"the UNet sample has shape {tuple(sample.shape)}: {'; '.join(bad)} (factors "
                f"{factors}); choose sizes whose latent size the factors divide"
            )

    def check_request(self, vae_scale_factor: int | None, **sizes: Any) -> None:
        """Raise, before any model runs, for a height/width/num_frames the factors don't divide."""
        fh, fw = self.factors[-2:]
        ft = self.factors[0] if len(self.factors) == 3 else 1
        for name, factor in (("height", fh), ("width", fw)):
            value = sizes.get(name)
            if value is None or vae_scale_factor is None:
                continue
            latent = int(value) // int(vae_scale_factor)
            if latent % factor:
                raise ValueError(
                    f"{name}={value!r} gives a latent {name} of {latent} (VAE scale factor "
                    f"{vae_scale_factor}), which the factor {factor} of factors={self.factors} "
                    f"does not divide; use a {name} that is a multiple of "
                    f"{int(vae_scale_factor) * factor}"
                )
        frames = sizes.get("num_frames")
        if frames is not None and ft > 1 and int(frames) % ft:
            raise ValueError(
                f"num_frames={frames!r} is not divisible by the temporal factor {ft} of "
                f"factors={self.factors}; use a multiple of {ft}"
            )

    def low_res_inputs(self, x: torch.Tensor) -> Callable[[tuple, dict, tuple], tuple]:
        """The core's ``low_res_inputs`` hook for one call with sample ``x``."""
        video = x.ndim == 5
        batch, frames = x.shape[0], (x.shape[2] if video else None)

        def adapt(args: tuple, kwargs: dict, factors: tuple) -> tuple[tuple, dict]:
            """Per-frame embeddings, ControlNet residuals and SDXL time ids for the low call."""
            kw = dict(kwargs)
            ehs = kw.get("encoder_hidden_states")
            if video and factors[0] > 1 and isinstance(ehs, torch.Tensor):
                kw["encoder_hidden_states"] = _frame_mean(ehs, batch, frames, factors[0])
            for name in _RESIDUALS:
                value = kw.get(name)
                if value is None:
                    continue
                if isinstance(value, torch.Tensor):
                    kw[name] = _pool(value, name, batch, frames, factors)
                else:
                    kw[name] = type(value)(_pool(r, name, batch, frames, factors) for r in value)
            added = kw.get("added_cond_kwargs")
            if self.micro == "low" and isinstance(added, dict) and "time_ids" in added:
                kw["added_cond_kwargs"] = {
                    **added,
                    "time_ids": _low_time_ids(added["time_ids"], *factors[-2:]),
                }
            return args, kw

        return adapt

    def guided_output(
        self, low_call: Callable[..., Any], named: dict[str, Any], output: Any
    ) -> Any | None:
        """The guided UNet output for one call whose high-resolution ``output`` is known.

        ``low_call(x, t, **kwargs)`` runs the UNet on the low-resolution input and returns its
        raw output. Returns None where the guidance left the prediction unchanged (w == 0).
        """
        named = dict(named)
        x = named.pop("sample")
        t = named.pop("timestep")
        named.pop("return_dict", None)
        factors = self.sample_factors(x)
        guide = self.guidance(factors)
        high = _output_sample(output)
        condition = None
        if high.ndim == x.ndim:
            learned = getattr(getattr(self.scheduler(), "config", None), "variance_type", None)
            noisy = _noisy_channels(
                "the UNet", x.shape[1], high.shape[1], learned in ("learned", "learned_range")
            )
            if noisy < x.shape[1]:
                # Input [noisy sample, mask, masked image, ...] on the channel axis.
                x, condition = x[:, :noisy], x[:, noisy:]
        channels = x.shape[1]
        variance = None
        if high.ndim == x.ndim and high.shape[1] == 2 * channels:
            high, variance = high[:, :channels], high[:, channels:]

        def model(x_in: torch.Tensor, t_in: Any, **kwargs: Any) -> torch.Tensor:
            """The UNet's low-resolution call as the core sees it: a tensor prediction."""
            if condition is not None:  # clean conditioning channels: block-averaged, not scaled
                x_in = torch.cat([x_in, downsample(condition, factors).to(x_in.dtype)], dim=1)
            low = _output_sample(low_call(x_in, t_in, **kwargs))
            return low[:, :channels] if variance is not None else low

        guided = guide.apply(high, model, x, t, low_res_inputs=self.low_res_inputs(x), **named)
        if guided is high:
            return None
        if variance is not None:
            guided = torch.cat([guided, variance], dim=1)
        return _replace_sample(output, guided)


class _Patch:
    """One application to one pipeline: the hooks and wrapped methods it installed."""

    def __init__(self, pipe: Any, engine: _Engine, unet: torch.nn.Module) -> None:
        self.pipe = weakref.ref(pipe)
        self.engine = engine
        self.unet = unet
        self.handles: list[Any] = []
        self.saved: dict[str, Any] = {}
        self.low_depth = 0
        self.residual_lists: dict[str, tuple[list, list]] = {}

    def pre_hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """Check the latent size and keep the residual lists before the UNet runs.

        Not for the low-resolution call. The UNet consumes residual lists (T2I-Adapter's are
        popped), so the forward hook uses the copies kept here.
        """
        if self.low_depth == 0:
            named = self.engine.bind(module, args, kwargs)
            self.engine.check_sample(named.get("sample"))
            self.residual_lists = {
                name: (value, list(value))
                for name in _RESIDUALS
                if isinstance(value := named.get(name), list)
            }

    def controlnet_pre_hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """Check the spatial latent size before the ControlNet runs."""
        sample = args[0] if args else kwargs.get("sample")
        if isinstance(sample, torch.Tensor) and sample.ndim == 4 and self.low_depth == 0:
            fh, fw = self.engine.factors[-2:]
            if sample.shape[-2] % fh or sample.shape[-1] % fw:
                raise ValueError(
                    f"the ControlNet sample has latent size {tuple(sample.shape[-2:])}, which the "
                    f"factors {(fh, fw)} do not divide; choose a height and width whose latent "
                    "size they divide"
                )

    def hook(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        """Replace the UNet's output by the guided one (the low-resolution call passes through)."""
        if self.low_depth:
            return None
        named = self.engine.bind(module, args, kwargs)
        kept, self.residual_lists = self.residual_lists, {}
        for name, (original, copy) in kept.items():
            if named.get(name) is original:  # the list this call got, as it was before the call
                named[name] = copy

        def low_call(x: torch.Tensor, t: Any, **kw: Any) -> Any:
            """The low-resolution call, through the module (its hooks, offload, compile)."""
            self.low_depth += 1
            try:
                return module(x, t, **kw, return_dict=False)
            finally:
                self.low_depth -= 1

        return self.engine.guided_output(low_call, named, output)

    def install(self) -> None:
        """Register the hooks and wrap the pipeline's size checks."""
        pipe = self.pipe()
        # The hooks are plain Python glue (schedule look-ups, .item()): torch.compile runs them
        # eagerly instead of tracing them; the UNet calls they make are compiled as usual.
        pre_hook, hook = torch.compiler.disable(self.pre_hook), torch.compiler.disable(self.hook)
        self.handles.append(self.unet.register_forward_pre_hook(pre_hook, with_kwargs=True))
        self.handles.append(self.unet.register_forward_hook(hook, with_kwargs=True))
        controlnet = getattr(pipe, "controlnet", None)
        if isinstance(controlnet, torch.nn.Module):
            controlnet = _base_module(controlnet)
            self.handles.append(
                controlnet.register_forward_pre_hook(self.controlnet_pre_hook, with_kwargs=True)
            )
        for name in _SIZE_CHECKED:
            self._wrap_size_check(pipe, name)

    def _wrap_size_check(self, pipe: Any, name: str) -> None:
        """Wrap ``pipe.<name>`` (if it takes height and width) to check them first."""
        method = getattr(pipe, name, None)
        if not callable(method):
            return
        try:
            signature = inspect.signature(method)
        except (TypeError, ValueError):
            return
        if not {"height", "width"} <= set(signature.parameters):
            return
        engine = self.engine

        @functools.wraps(method)
        def checked(*args: Any, **kwargs: Any) -> Any:
            """The pipeline's method, after checking the requested size against the factors."""
            try:
                sizes = signature.bind(*args, **kwargs).arguments
            except TypeError:
                sizes = {}
            engine.check_request(
                getattr(pipe, "vae_scale_factor", None),
                **{k: sizes.get(k) for k in ("height", "width", "num_frames")},
            )
            return method(*args, **kwargs)

        self.saved[name] = pipe.__dict__.get(name, _MISSING)
        pipe.__dict__[name] = checked

    def uninstall(self) -> None:
        """Remove the hooks and restore the wrapped methods exactly."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        pipe = self.pipe()
        if pipe is not None:
            for name, value in self.saved.items():
                if value is _MISSING:
                    pipe.__dict__.pop(name, None)
                else:
                    pipe.__dict__[name] = value
        self.saved.clear()


#: The applied patches, by pipeline and by UNet (a UNet carries at most one).
_BY_PIPE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_BY_UNET: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _unet_of(pipe: Any) -> torch.nn.Module:
    """``pipe.unet`` (through a compile wrapper), or a TypeError naming what the pipeline has."""
    unet = getattr(pipe, "unet", None)
    if not isinstance(unet, torch.nn.Module):
        has = [n for n in ("transformer", "prior", "decoder") if getattr(pipe, n, None) is not None]
        extra = f" (it has {', '.join(has)})" if has else ""
        raise TypeError(
            f"pipe must be a diffusers pipeline with a UNet (pipe.unet), got "
            f"{type(pipe).__name__}{extra}; transformer pipelines are not supported yet"
        )
    return _base_module(unet)


def apply_upsample_guidance(
    pipe: Any,
    factors: Sequence[int] = (2, 2),
    scale: ScaleLike = 1.0,
    *,
    eta: float = 1.0,
    time_matching: str = "nearest",
    below_range: str = "clamp",
    sdxl_micro_conditioning: str = "low",
) -> Any:
    """Turn a diffusers UNet pipeline into an upsample-guided one; returns ``pipe``.

    ``factors`` are the upsampling factors of the latent: ``(fh, fw)`` for images, and for video
    UNets ``(ff, fh, fw)`` on (frames, height, width) or ``(fh, fw)`` for spatial only. The
    pipeline is then called at the high resolution (e.g. ``height=2 * trained``). ``scale`` is
    θ (a float, or a callable of the time fraction, 1 = noisiest), ``eta`` the paper's η
    (guidance on during the noisiest ``eta`` of the time axis), ``time_matching`` and
    ``below_range`` as in :class:`ug_core.UpsampleGuidance`. ``sdxl_micro_conditioning`` is
    ``"low"`` (default: the low-resolution call's SDXL size ids describe the low-resolution
    image) or ``"high"`` (keep the high-resolution ids). Applying again replaces the previous
    application; :func:`remove_upsample_guidance` undoes it. ``scale=0`` leaves every output
    bit-identical to the plain pipeline's.

    Raises a TypeError for a pipeline without ``unet`` and a ValueError for invalid options;
    a height/width (or frame count) whose latent size the factors don't divide raises a
    ValueError when the pipeline is called, before any model runs.
    """
    unet = _unet_of(pipe)
    if getattr(pipe, "scheduler", None) is None:
        raise TypeError(f"pipe ({type(pipe).__name__}) has no scheduler")
    try:
        pipe_ref = weakref.ref(pipe)
    except TypeError as err:
        raise TypeError(f"pipe must be a diffusers pipeline, got {type(pipe).__name__}") from err

    def scheduler() -> Any:
        """The pipeline's current scheduler."""
        return pipe_ref().scheduler

    engine = _Engine(  # validates every option before anything is replaced
        unet, scheduler, factors, scale, eta, time_matching, below_range, sdxl_micro_conditioning
    )
    remove_upsample_guidance(pipe)
    other = _BY_UNET.get(unet)
    if other is not None:  # the same UNet guided through another pipeline: replace that too
        other_pipe = other.pipe()
        if other_pipe is not None:
            remove_upsample_guidance(other_pipe)
        other.uninstall()
        _BY_UNET.pop(unet, None)
    patch = _Patch(pipe, engine, unet)
    patch.install()
    _BY_PIPE[pipe] = patch
    _BY_UNET[unet] = patch
    return pipe


def remove_upsample_guidance(pipe: Any) -> Any:
    """Undo :func:`apply_upsample_guidance` (a no-op if it was not applied); returns ``pipe``."""
    try:
        patch = _BY_PIPE.pop(pipe, None)
    except TypeError:  # not weak-referenceable: never applied
        return pipe
    if patch is not None:
        patch.uninstall()
        if _BY_UNET.get(patch.unet) is patch:
            _BY_UNET.pop(patch.unet, None)
    return pipe


def is_upsample_guided(pipe_or_unet: Any) -> bool:
    """Whether upsample guidance is applied to this pipeline or UNet."""
    if pipe_or_unet in _BY_PIPE:
        return True
    return isinstance(pipe_or_unet, torch.nn.Module) and _base_module(pipe_or_unet) in _BY_UNET


class GuidedUNet:
    """A diffusers UNet with upsample guidance, for your own sampling loop.

    Call it exactly like the UNet (same arguments, same output type); the schedule and
    prediction type come from ``scheduler`` (read at each call), and the options are those of
    :func:`apply_upsample_guidance`. The UNet itself is not modified. Feed it what the UNet gets
    in a diffusers loop, i.e. ``scheduler.scale_model_input(x, t)`` at the scheduler's timestep
    ``t``; the low-resolution call never touches the scheduler.
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        scheduler: Any,
        factors: Sequence[int] = (2, 2),
        scale: ScaleLike = 1.0,
        *,
        eta: float = 1.0,
        time_matching: str = "nearest",
        below_range: str = "clamp",
        sdxl_micro_conditioning: str = "low",
    ) -> None:
        if not isinstance(unet, torch.nn.Module):
            raise TypeError(f"unet must be a torch.nn.Module (a UNet), got {type(unet).__name__}")
        base = _base_module(unet)
        if base in _BY_UNET:
            raise ValueError(
                "this UNet already has upsample guidance applied through a pipeline; call "
                "remove_upsample_guidance(pipe) first, or use the pipeline"
            )
        self.unet = unet
        self.scheduler = scheduler
        self.engine = _Engine(
            base,
            lambda: self.scheduler,
            factors,
            scale,
            eta,
            time_matching,
            below_range,
            sdxl_micro_conditioning,
        )

    @property
    def config(self) -> Any:
        """The UNet's config."""
        return self.unet.config

    @property
    def dtype(self) -> torch.dtype:
        """The UNet's dtype."""
        return self.unet.dtype

    @property
    def device(self) -> torch.device:
        """The UNet's device."""
        return self.unet.device

    def __repr__(self) -> str:
        return f"GuidedUNet({type(self.unet).__name__}, {self.engine.guidance(None)!r})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The guided UNet call: the UNet's output with the upsample-guidance term added."""
        named = self.engine.bind(_base_module(self.unet), args, kwargs)
        self.engine.check_sample(named.get("sample"))
        # The UNet consumes residual lists (T2I-Adapter's are popped): keep them as given.
        kept = {n: list(v) for n in _RESIDUALS if isinstance(v := named.get(n), list)}
        output = self.unet(*args, **kwargs)
        named.update(kept)

        def low_call(x: torch.Tensor, t: Any, **kw: Any) -> Any:
            """The low-resolution call."""
            return self.unet(x, t, **kw, return_dict=False)

        guided = self.engine.guided_output(low_call, named, output)
        return output if guided is None else guided


def guided_unet(
    unet: torch.nn.Module,
    scheduler: Any,
    factors: Sequence[int] = (2, 2),
    scale: ScaleLike = 1.0,
    *,
    eta: float = 1.0,
    time_matching: str = "nearest",
    below_range: str = "clamp",
    sdxl_micro_conditioning: str = "low",
) -> GuidedUNet:
    """A :class:`GuidedUNet`: ``unet`` with upsample guidance, called like ``unet``.

    Example::

        guided = guided_unet(unet, scheduler, factors=(2, 2), scale=1.0, eta=0.6)
        for t in scheduler.timesteps:
            x_in = scheduler.scale_model_input(torch.cat([x] * 2), t)
            eps = guided(x_in, t, encoder_hidden_states=embeds).sample
            ...
    """
    return GuidedUNet(
        unet,
        scheduler,
        factors,
        scale,
        eta=eta,
        time_matching=time_matching,
        below_range=below_range,
        sdxl_micro_conditioning=sdxl_micro_conditioning,
    )
