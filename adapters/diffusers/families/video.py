"""Video transformers (Wan, HunyuanVideo, LTX, Kandinsky 5 and the others of :data:`FAMILIES`).

Conditioning rides along with the sample in three ways, each decided per family below:

- channels after the noisy ones (image-to-video masks and first-frame latents): clean signals,
  area-averaged to the low grid by the hooks (as ``c_concat`` in ComfyUI);
- a time per token or per frame (a clean first frame, diffusion forcing): a time map on the
  latent grid for the core (:meth:`Family.grid_time`), whose low-resolution τ map goes back to
  the model's layout;
- control latents or conditioning tokens on the same grid as the sample: pooled with it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from einops import rearrange

from ....schedules import FlowSchedule, Schedule
from .base import Call, Family, _latents, pool_grid


def token_time_map(t: torch.Tensor, grid: tuple[int, ...], patch: tuple[int, ...]) -> torch.Tensor:
    """A time per token ``(B, N)`` (row-major on the patch grid) as a map ``(B, 1, *grid)``."""
    patches = tuple(n // p for n, p in zip(grid, patch, strict=True))
    if t.ndim != 2 or t.shape[1] != math.prod(patches):
        raise ValueError(
            f"a per-token timestep must have shape (batch, {math.prod(patches)}): one time per "
            f"token of the {patches} patch grid; got {tuple(t.shape)}"
        )
    out = t.reshape(t.shape[0], 1, *patches)
    for axis, p in enumerate(patch, start=2):
        out = out.repeat_interleave(p, dim=axis) if p > 1 else out
    return out


def token_times(t_map: torch.Tensor, patch: tuple[int, ...]) -> torch.Tensor:
    """A time map ``(B, 1, *grid)`` back to one time per token: each patch's first element's."""
    return t_map[(slice(None), 0, *_starts(patch))].flatten(1)


def _starts(patch: tuple[int, ...]) -> tuple[slice, ...]:
    """Each patch's first element, per axis."""
    return tuple(slice(None, None, p) for p in patch)


def frame_time_map(t: torch.Tensor, frames: int, pt: int) -> torch.Tensor:
    """A time per (patched) frame ``(B, F/pt)`` as a map ``(B, 1, F, 1, 1)``."""
    if t.ndim != 2 or t.shape[1] * pt != frames:
        raise ValueError(
            f"a per-frame timestep must have shape (batch, {frames // pt}): one time per latent "
            f"frame; got {tuple(t.shape)}"
        )
    return t.repeat_interleave(pt, dim=1).reshape(t.shape[0], 1, frames, 1, 1)


def _spatial_only(call: Call, who: str, why: str) -> None:
    """ValueError if the call's factors merge frames, which ``who`` can't take because ``why``."""
    if call.low_grid[0] != call.grid[0]:
        raise ValueError(
            f"{who} takes spatial factors only: the latent grid {call.grid} would become "
            f"{call.low_grid}, and {why}; use factors (1, fh, fw)"
        )


class SanaVideo(Family):
    """Sana-Video (``SanaVideoTransformer3DModel``): ``(B, C, F, H, W)``, flow, ``1000·σ``.

    Image-to-video keeps the image's latent frame clean (never stepped) and gives the model a
    time per patch ``(B, 1, F, H/2, W/2)``, 0 on that frame: a time map on the latent grid for
    the core, and the low call gets its τ map per patch.
    """

    name = "Sana-Video"
    classes = ("SanaVideoTransformer3DModel",)
    video = True
    token_residuals = ("controlnet_block_samples",)

    def grid_time(self, t: Any, call: Call) -> Any:
        """A time per patch ``(B, 1, F', H', W')`` as a map on the latent grid."""
        if not (isinstance(t, torch.Tensor) and t.ndim == 5):
            return t
        patch = self.patch(call.module)
        return token_time_map(t.flatten(1), call.grid, patch)

    def low_inputs(self, low: dict, call: Call, factors: tuple[int, ...], micro: str) -> None:
        """The low τ map back per patch."""
        super().low_inputs(low, call, factors, micro)
        t_low = low[self.time_arg]
        if isinstance(t_low, torch.Tensor) and t_low.ndim == 5:
            starts = _starts(self.patch(call.module))
            low[self.time_arg] = t_low[(slice(None), slice(None), *starts)]


class Mochi(Family):
    """Mochi (``MochiTransformer3DModel``): ``(B, C, F, H, W)``, flow, patch (1, 2, 2).

    With the shipped scheduler (``invert_sigmas=True``) the model gets ``1000·(1 − σ)`` and its
    output is ``x0 − ε``; with a plain flow scheduler, ``1000·σ`` and ``ε − x0``.
    """

    name = "Mochi"
    classes = ("MochiTransformer3DModel",)
    video = True

    def sign(self, scheduler: Any) -> float:
        """-1 with inverted sigmas: the model predicts x0 − ε."""
        return -1.0 if _inverted(scheduler) else 1.0

    def schedule(self, scheduler: Any, module: torch.nn.Module) -> tuple[Schedule, str]:
        """Rectified flow, on the reversed time axis with inverted sigmas."""
        schedule, prediction = super().schedule(scheduler, module)
        if _inverted(scheduler):
            return FlowSchedule(time_scale=schedule.time_scale, reverse=True), prediction
        return schedule, prediction


def _inverted(scheduler: Any) -> bool:
    """Whether a flow scheduler counts time from the noise (``invert_sigmas``, Mochi's)."""
    return bool(getattr(getattr(scheduler, "config", None), "invert_sigmas", False))


class Wan(Family):
    """Wan 2.1 / 2.2 (``WanTransformer3DModel``): video ``(B, C, F, H, W)``, flow, ``1000·σ``.

    - Image-to-video and first-last-frame (``WanImageToVideoPipeline``, 36 input channels): the
      4 mask channels and the image latents after the 16 noisy ones are clean conditioning,
      area-averaged to the low grid with the sample, as ``c_concat``. With spatial factors that
      is the conditioning of the downsampled frames (the mask is constant over a frame); a
      temporal factor averages the conditioned first frame with the next one (mask 0.5).
      ``encoder_hidden_states_image`` (CLIP tokens of the whole image) is kept.
    - Wan 2.2 TI2V-5B (``expand_timesteps``): a time per token ``(B, F·H·W/4)``, 0 on the clean
      first frame of image-to-video. It is a time map on the latent grid for the core; the low
      call gets its τ map back per token (each patch's first element, as the pipeline builds
      it). A temporal factor merges the clean first frame with a noisy one: the core refuses
      that unless ``mixed_times`` says how to combine their times.
    """

    name = "Wan"
    classes = ("WanTransformer3DModel",)
    video = True

    def grid_time(self, t: Any, call: Call) -> Any:
        """A per-token timestep ``(B, N)`` as a map on the latent grid."""
        if isinstance(t, torch.Tensor) and t.ndim == 2:
            return token_time_map(t, call.grid, self.patch(call.module))
        return t

    def low_inputs(self, low: dict, call: Call, factors: tuple[int, ...], micro: str) -> None:
        """The low τ map back per token (per-token calls)."""
        super().low_inputs(low, call, factors, micro)
        t_low = low[self.time_arg]
        if isinstance(t_low, torch.Tensor) and t_low.ndim == 5:
            low[self.time_arg] = token_times(t_low, self.patch(call.module))


class ChronoEdit(Wan):
    """ChronoEdit (``ChronoEditTransformer3DModel``): Wan image-to-video for editing, as Wan.

    The input and the edited image are the first and last latent frames (with optional
    temporal-reasoning frames between, dropped during sampling); its RoPE skips positions
    between them. A temporal factor would merge the input image with the frames after it, and
    is refused.
    """

    name = "ChronoEdit"
    classes = ("ChronoEditTransformer3DModel",)

    def grid_time(self, t: Any, call: Call) -> Any:
        """The call's time; temporal factors are refused."""
        _spatial_only(
            call, "ChronoEdit", "its first and last latent frames are the input and the edit"
        )
        return super().grid_time(t, call)


class WanVACE(Wan):
    """Wan VACE (``WanVACETransformer3DModel``): Wan with control latents beside the sample.

    ``control_hidden_states`` (the masked video's latents, the 8×8-pixel mask packed into
    channels, and reference-image frames, on the sample's grid) are clean conditioning: pooled
    to the low grid as the sample is. Reference images are extra latent frames of both: use
    spatial factors with them (a temporal factor would merge a reference with a video frame).
    ``control_hidden_states_scale`` is kept.
    """

    name = "Wan VACE"
    classes = ("WanVACETransformer3DModel",)

    def low_inputs(self, low: dict, call: Call, factors: tuple[int, ...], micro: str) -> None:
        """The control latents pooled to the low grid."""
        super().low_inputs(low, call, factors, micro)
        control = low.get("control_hidden_states")
        if control is not None:
            low["control_hidden_states"] = pool_grid(control, "control_hidden_states", factors)


class SkyReelsV2(Family):
    """SkyReels-V2 (``SkyReelsV2Transformer3DModel``): Wan's layout, flow, ``1000·σ``.

    Image-to-video concatenates conditioning channels, as Wan's (area-averaged). Diffusion
    forcing (``enable_diffusion_forcing``) gives each latent frame its own time ``(B, F)``
    (clean prefix frames at 0, later causal blocks noisier): a per-frame time map for the core,
    and the low call gets its τ per frame. A temporal factor needs frames of one time per
    merged pair, and is refused with causal blocks (``num_frame_per_block > 1``): the low call
    would attend over blocks of twice as many frames.
    """

    name = "SkyReels-V2"
    classes = ("SkyReelsV2Transformer3DModel",)
    video = True

    def grid_time(self, t: Any, call: Call) -> Any:
        """A per-frame timestep ``(B, F)`` as a map ``(B, 1, F, 1, 1)``."""
        if not (isinstance(t, torch.Tensor) and t.ndim == 2):
            return t
        blocks = getattr(call.module.config, "num_frame_per_block", 1) or 1
        if blocks > 1:
            who = f"SkyReels-V2 diffusion forcing with causal blocks of {blocks} frames"
            _spatial_only(call, who, "the low call's causal blocks would span more frames")
        return frame_time_map(t, call.grid[0], self.patch(call.module)[0])

    def low_inputs(self, low: dict, call: Call, factors: tuple[int, ...], micro: str) -> None:
        """The low τ map back per frame."""
        t_low = low[self.time_arg]
        if isinstance(t_low, torch.Tensor) and t_low.ndim == 5:
            low[self.time_arg] = t_low[:, 0, :: self.patch(call.module)[0], 0, 0]


class HunyuanVideo(Family):
    """HunyuanVideo (``HunyuanVideoTransformer3DModel``): ``(B, C, F, H, W)``, flow, ``1000·σ``.

    Image-to-video, ``image_condition_type="latent_concat"``: the first-frame latents and mask
    are channels after the noisy ones (area-averaged). ``"token_replace"``: the first latent
    frame is the clean image, which the transformer embeds at time 0 while the call's
    ``timestep`` is the noisy frames'; the core gets that per-frame time map (so the clean frame
    is neither power-scaled nor re-timed) and the low call the noisy frames' τ. A temporal
    factor would merge the clean frame with a noisy one and is refused.
    """

    name = "HunyuanVideo"
    classes = ("HunyuanVideoTransformer3DModel",)
    video = True

    def grid_time(self, t: Any, call: Call) -> Any:
        """With ``token_replace``: the call's time on every frame but the clean first (0)."""
        if getattr(call.module.config, "image_condition_type", None) != "token_replace":
            return t
        what = "HunyuanVideo image-to-video with image_condition_type='token_replace'"
        return self.first_clean(t, call, self.patch(call.module)[0], what)

    @staticmethod
    def first_clean(t: Any, call: Call, pt: int, what: str) -> Any:
        """A per-frame map of ``t`` (a tensor, or the host's number) with the first frame at 0."""
        _spatial_only(
            call, what, "the clean first latent frame (time 0) would merge with noisy ones"
        )
        frames = call.grid[0]
        noisy = torch.ones(frames, dtype=torch.float64)
        noisy[:pt] = 0.0
        if not isinstance(t, torch.Tensor):  # the host's time: one map for the batch
            return (t * noisy).reshape(1, 1, frames, 1, 1).expand(call.batch, -1, -1, -1, -1)
        return t.reshape(-1, 1, 1, 1, 1) * noisy.to(t.device, t.dtype).reshape(1, 1, frames, 1, 1)

    def low_inputs(self, low: dict, call: Call, factors: tuple[int, ...], micro: str) -> None:
        """With ``token_replace``: the noisy frames' τ (the last frame's) for the low call."""
        t_low = low[self.time_arg]
        if isinstance(t_low, torch.Tensor) and t_low.ndim == 5:
            low[self.time_arg] = t_low[:, 0, -1, 0, 0].expand(call.batch)


class HunyuanVideo15(HunyuanVideo):
    """HunyuanVideo 1.5 (``HunyuanVideo15Transformer3DModel``): as HunyuanVideo.

    Both pipelines (text- and image-to-video) concatenate the first-frame latents and a mask
    after the noisy channels (zeros for text-to-video): area-averaged for the low call. The
    SigLIP ``image_embeds`` describe the whole image and are kept. The mean-flow checkpoints
    (``use_meanflow``, a ``timestep_r``) predict the average velocity over a step, not the
    instantaneous prediction the guidance combines: refused.
    """

    name = "HunyuanVideo 1.5"
    classes = ("HunyuanVideo15Transformer3DModel",)

    def grid_of(self, sample: torch.Tensor, call: Call) -> tuple[int, ...]:
        """The video grid; mean-flow calls (with ``timestep_r``) are refused."""
        if call.arguments.get("timestep_r") is not None:
            raise ValueError(
                "HunyuanVideo 1.5 with use_meanflow (a timestep_r) is not supported: a mean-flow "
                "model predicts the average velocity from timestep to timestep_r, not the "
                "velocity at timestep that upsample guidance combines"
            )
        return super().grid_of(sample, call)


class RopeVideo(Family):
    """A video transformer whose pipeline computes rotary embeddings for the whole grid.

    ``(patch_size_t or 1, patch_size, patch_size)``; the low call gets the embeddings of the low
    grid, from the pipeline's own ``_prepare_rotary_positional_embeddings`` (``rope_pipeline``).
    """

    video = True
    rope_pipeline = ""
    """The pipeline class whose method computes the embeddings."""
    rope_batch = False
    """Whether that method takes the batch size first (Allegro's)."""

    def low_inputs(self, low: dict, call: Call, factors: tuple[int, ...], micro: str) -> None:
        """Rotary embeddings of the low grid."""
        if low.get("image_rotary_emb") is None:
            return
        frames, height, width = call.low_grid
        sizes = ((call.batch,) if self.rope_batch else ()) + (height, width, frames)
        device = low[self.sample_arg].device
        low["image_rotary_emb"] = pipeline_rope(self.rope_pipeline, call, *sizes, device)


class CogVideoX(RopeVideo):
    """CogVideoX (``CogVideoXTransformer3DModel``): ``(B, F, C, H, W)``, VP, v-prediction."""

    name = "CogVideoX"
    classes = ("CogVideoXTransformer3DModel",)
    rope_pipeline = "CogVideoXPipeline"
    predictions = ("v_prediction", "epsilon", "sample")

    def grid_of(self, sample: torch.Tensor, call: Call) -> tuple[int, ...]:
        """``(F, H, W)`` of a frames-first sample."""
        if sample.ndim != 5:
            raise ValueError(
                f"{type(call.module).__name__} got hidden_states of shape "
                f"{tuple(sample.shape)}; CogVideoX takes (B, F, C, H, W)"
            )
        return (sample.shape[1], *sample.shape[-2:])

    def to_grid(self, sample: torch.Tensor, call: Call) -> torch.Tensor:
        """``(B, F, C, H, W)`` to ``(B, C, F, H, W)``."""
        return sample.transpose(1, 2)

    def from_grid(self, grid: torch.Tensor, call: Call) -> torch.Tensor:
        """``(B, C, F, H, W)`` to ``(B, F, C, H, W)``."""
        return grid.transpose(1, 2)


def pipeline_rope(pipeline: str, call: Call, *sizes: Any) -> Any:
    """Rotary embeddings of latent sizes by a pipeline's ``_prepare_rotary_positional_embeddings``.

    The method reads the transformer and the VAE's spatial factor from the pipeline; a stand-in
    gives the call's transformer and a factor of 1, so that it takes latent sizes.
    """
    import diffusers

    shim = type("Shim", (), {})()
    shim.transformer = call.module
    shim.vae_scale_factor_spatial = 1
    method = getattr(diffusers, pipeline)._prepare_rotary_positional_embeddings
    return method(shim, *sizes)


class LTXVideo(Family):
    """LTX-Video (``LTXVideoTransformer3DModel``): tokens ``(B, F·H·W, C)``, flow, ``1000·σ``.

    - Text- and image-to-video calls carry ``num_frames``, ``height`` and ``width`` of the
      latent grid; the low call gets those of the low grid, and the same
      ``rope_interpolation_scale`` (the same frame rate and VAE compression, as native
      low-resolution sampling would pass).
    - Image-to-video gives a time per token (0 on the clean first frame): a time map for the
      core, the low τ map back per token.
    - ``LTXConditionPipeline`` passes ``video_coords`` instead (pixel coordinates per token), and
      prepends conditioning clips to the sequence as extra frames of the same height and width
      (clean at time 0, or partly noised). They are frames of the grid here: pooled spatially
      with the sample, as a low-resolution request would encode the downsampled clips; their
      coordinates are re-derived as those of the low grid (each frame keeps its time
      coordinate, the spatial ones are the low grid's). A temporal factor would merge clips
      placed at their own frame positions and is refused. The grid's size comes from the
      pipeline's requested height and width.
    """

    name = "LTX-Video"
    classes = ("LTXVideoTransformer3DModel",)
    video = True

    def grid_of(self, sample: torch.Tensor, call: Call) -> tuple[int, ...]:
        """``(num_frames, height, width)`` from the call, or from the request (``video_coords``)."""
        if sample.ndim != 3:
            raise ValueError(
                f"LTX-Video takes packed hidden_states (B, N, C), got {tuple(sample.shape)}"
            )
        if call.arguments.get("video_coords") is not None:
            return self._coords_grid(sample, call)
        grid = tuple(call.arguments.get(n) for n in ("num_frames", "height", "width"))
        if any(not isinstance(n, int) for n in grid):
            raise ValueError(
                "LTX-Video calls must give num_frames, height and width as ints (or "
                f"video_coords), got {grid}"
            )
        return grid  # type: ignore[return-value]

    def _coords_grid(self, sample: torch.Tensor, call: Call) -> tuple[int, ...]:
        """The grid of a ``video_coords`` call: the request's latent height and width."""
        ratio = getattr(call.pipe, "vae_spatial_compression_ratio", None)
        height, width = call.request.get("height"), call.request.get("width")
        if not (ratio and isinstance(height, int) and isinstance(width, int)):
            raise ValueError(
                "LTX-Video calls with video_coords need the pipeline's requested height and "
                "width to unpack their tokens: apply upsample guidance to the pipeline "
                "(apply_upsample_guidance), not to the bare transformer"
            )
        pt, p, _ = self.patch(call.module)
        h, w = height // ratio, width // ratio
        per_frame = (h // p) * (w // p)
        if sample.shape[1] % per_frame:
            raise ValueError(
                f"LTX-Video got {sample.shape[1]} tokens, not whole frames of the {h // p}x"
                f"{w // p} patch grid of height={height}, width={width}"
            )
        return (sample.shape[1] // per_frame * pt, h, w)

    def grid_time(self, t: Any, call: Call) -> Any:
        """A per-token timestep as a map on the latent grid (spatial factors with coords)."""
        if call.arguments.get("video_coords") is not None:
            who = "LTX-Video with video_coords (LTXConditionPipeline)"
            _spatial_only(call, who, "its conditioning clips' own frame positions would merge")
        if isinstance(t, torch.Tensor) and t.ndim == 2:
            return token_time_map(t, call.grid, self.patch(call.module))
        return t

    def to_grid(self, sample: torch.Tensor, call: Call) -> torch.Tensor:
        """Tokens to the latent grid ``(B, C, F, H, W)``."""
        pt, p, _ = self.patch(call.module)
        f, h, w = (n // q for n, q in zip(call.grid, (pt, p, p), strict=True))
        return rearrange(
            sample,
            "b (f h w) (c pt ph pw) -> b c (f pt) (h ph) (w pw)",
            f=f, h=h, w=w, pt=pt, ph=p, pw=p,
        )  # fmt: skip

    def from_grid(self, grid: torch.Tensor, call: Call) -> torch.Tensor:
        """The latent grid back to tokens."""
        pt, p, _ = self.patch(call.module)
        return rearrange(
            grid, "b c (f pt) (h ph) (w pw) -> b (f h w) (c pt ph pw)", pt=pt, ph=p, pw=p
        )

    def low_inputs(self, low: dict, call: Call, factors: tuple[int, ...], micro: str) -> None:
        """The low grid's sizes or coordinates, and the low τ map back per token."""
        patch = self.patch(call.module)
        t_low = low[self.time_arg]
        if isinstance(t_low, torch.Tensor) and t_low.ndim == 5:
            low[self.time_arg] = token_times(t_low, patch)
        coords = low.get("video_coords")
        if coords is None:
            for name, n in zip(("num_frames", "height", "width"), call.low_grid, strict=True):
                low[name] = n
            return
        high = tuple(n // q for n, q in zip(call.grid, patch, strict=True))
        _, h, w = (n // q for n, q in zip(call.low_grid, patch, strict=True))
        on_grid = coords.reshape(*coords.shape[:2], *high)
        low["video_coords"] = on_grid[..., :h, :w].flatten(2)  # rows and columns 0.. of the grid

    def request_latents(self, pipe: Any, sizes: dict) -> dict[str, tuple[int, Any]]:
        """LTX's compression ratios: latent frames ``(F − 1)/r_t + 1``."""
        spatial = getattr(pipe, "vae_spatial_compression_ratio", None)
        temporal = getattr(pipe, "vae_temporal_compression_ratio", None)
        return _latents(sizes, spatial, temporal)


class LTX2(LTXVideo):
    """LTX-2 (``LTX2VideoTransformer3DModel``): video and audio together; flow, ``1000·σ``.

    The video tokens ``(B, F·H·W, C)`` are the sample (unpacked with ``num_frames``, ``height``
    and ``width``; keyframe tokens appended by the condition pipeline are further frames of the
    same size); the audio tokens have no grid and ride along unchanged: the low call gets the
    high call's audio latents, audio time and audio sigma, and its audio output is dropped (the
    high call's is kept). The video gets the low grid's ``height``/``width`` and
    ``video_coords`` (the spatial coordinates of the low grid, each frame's time kept), its
    matched time (per token where a conditioning frame is clean) and ``sigma`` (the noisy
    tokens' matched time). Spatial factors only: the audio spans the video's duration, which a
    temporal factor would halve. Video self-attention masks and keyframe markers (in-context
    and DFR pipelines) are per token pair and are refused.
    """

    name = "LTX-2"
    classes = ("LTX2VideoTransformer3DModel",)
    per_token = ("video_self_attention_mask", "video_keyframes_mask")

    def grid_of(self, sample: torch.Tensor, call: Call) -> tuple[int, ...]:
        """``(frames, height, width)``: the call's sizes, frames counted from the tokens."""
        for name in self.per_token:
            if call.arguments.get(name) is not None:
                raise ValueError(
                    f"LTX-2 calls with {name} (in-context and DFR pipelines) are not supported: "
                    "the mask is per video token and has no low-resolution counterpart"
                )
        sizes = tuple(call.arguments.get(n) for n in ("num_frames", "height", "width"))
        if sample.ndim != 3 or any(not isinstance(n, int) for n in sizes):
            raise ValueError(
                "LTX-2 calls must give num_frames, height and width as ints with video tokens "
                f"(B, N, C), got {sizes} and shape {tuple(sample.shape)}"
            )
        pt, p, _ = self.patch(call.module)
        per_frame = (sizes[1] // p) * (sizes[2] // p)
        if sample.shape[1] % per_frame:
            raise ValueError(
                f"LTX-2 got {sample.shape[1]} video tokens, not whole frames of the "
                f"{sizes[1] // p}x{sizes[2] // p} patch grid"
            )
        return (sample.shape[1] // per_frame * pt, sizes[1], sizes[2])

    def grid_time(self, t: Any, call: Call) -> Any:
        """A per-token timestep as a map; temporal factors are refused (the audio's duration)."""
        _spatial_only(call, "LTX-2", "its audio spans the video's duration")
        if isinstance(t, torch.Tensor) and t.ndim == 2:
            return token_time_map(t, call.grid, self.patch(call.module))
        return t

    def low_inputs(self, low: dict, call: Call, factors: tuple[int, ...], micro: str) -> None:
        """The low video's sizes, coordinates, time and sigma; the audio's own time kept."""
        arguments, patch = call.arguments, self.patch(call.module)
        low["audio_timestep"] = _first(arguments, "audio_timestep", self.time_arg)
        low["audio_sigma"] = _first(arguments, "audio_sigma", "sigma")
        t_low = low[self.time_arg]
        if isinstance(t_low, torch.Tensor) and t_low.ndim == 5:
            t_low = low[self.time_arg] = token_times(t_low, patch)
        if arguments.get("sigma") is not None:  # the noisy tokens' time
            low["sigma"] = t_low.amax(dim=1) if t_low.ndim == 2 else t_low
        low["height"], low["width"] = call.low_grid[1:]
        coords = arguments.get("video_coords")
        if coords is not None:
            high = tuple(n // q for n, q in zip(call.grid, patch, strict=True))
            _, h, w = (n // q for n, q in zip(call.low_grid, patch, strict=True))
            on_grid = coords.reshape(*coords.shape[:2], *high, *coords.shape[3:])
            low["video_coords"] = on_grid[:, :, :, :h, :w].flatten(2, 4)


def _first(arguments: dict, *names: str) -> Any:
    """The first of ``names`` the call gave a value (not None)."""
    return next((arguments[n] for n in names if arguments.get(n) is not None), None)


class Kandinsky5(Family):
    """Kandinsky 5 (``Kandinsky5Transformer3DModel``): ``(B, F, H, W, C)``, flow, ``1000·σ``.

    Images are one frame. With ``visual_cond`` the sample carries ``[noisy, conditioning
    latents, mask]`` channels: the last two are clean conditioning (area-averaged; the
    image-to-image source, or zeros). The image-to-video pipeline (``Kandinsky5I2VPipeline``)
    writes the clean image latents into the first frame of the noisy channels themselves and
    never steps them: the core gets that frame at time 0 (neither power-scaled nor re-timed),
    the low call the noisy frames' τ. The low call gets the RoPE positions of the low grid
    (``visual_rope_pos``), and the pipeline's RoPE ``scale_factor`` and sparse-attention
    parameters for the low size.
    """

    name = "Kandinsky 5"
    classes = ("Kandinsky5Transformer3DModel",)
    video = True

    def out_channels(self, module: torch.nn.Module, channels: int) -> int:
        """``out_visual_dim``: the noisy channels (the rest are conditioning)."""
        return module.config.out_visual_dim

    def grid_of(self, sample: torch.Tensor, call: Call) -> tuple[int, ...]:
        """``(F, H, W)`` of a channels-last sample."""
        if sample.ndim != 5:
            raise ValueError(
                f"{type(call.module).__name__} got hidden_states of shape {tuple(sample.shape)}; "
                "Kandinsky 5 takes (B, F, H, W, C)"
            )
        return tuple(sample.shape[1:4])

    def to_grid(self, sample: torch.Tensor, call: Call) -> torch.Tensor:
        """``(B, F, H, W, C)`` to ``(B, C, F, H, W)``."""
        return sample.permute(0, 4, 1, 2, 3)

    def from_grid(self, grid: torch.Tensor, call: Call) -> torch.Tensor:
        """``(B, C, F, H, W)`` to ``(B, F, H, W, C)``."""
        return grid.permute(0, 2, 3, 4, 1)

    def grid_time(self, t: Any, call: Call) -> Any:
        """Image-to-video: the call's time on every frame but the clean first (0)."""
        if not _has_class(call.pipe, "Kandinsky5I2VPipeline"):
            return t
        return HunyuanVideo.first_clean(t, call, self.patch(call.module)[0], "Kandinsky 5")

    def low_inputs(self, low: dict, call: Call, factors: tuple[int, ...], micro: str) -> None:
        """RoPE positions, scale and sparse attention of the low grid; the noisy frames' τ."""
        t_low = low[self.time_arg]
        if isinstance(t_low, torch.Tensor) and t_low.ndim == 5:
            low[self.time_arg] = t_low[:, 0, -1, 0, 0].expand(call.batch)
        patch_grid = [n // p for n, p in zip(call.low_grid, self.patch(call.module), strict=True)]
        device = low[self.sample_arg].device
        low["visual_rope_pos"] = [torch.arange(n, device=device) for n in patch_grid]
        pipe = call.pipe
        scale = getattr(pipe, "_get_scale_factor", None)
        if callable(scale) and low.get("scale_factor") is not None:
            spatial = pipe.vae_scale_factor_spatial
            low["scale_factor"] = scale(call.low_grid[1] * spatial, call.low_grid[2] * spatial)
        if low.get("sparse_params") is not None:
            if not callable(getattr(pipe, "get_sparse_params", None)):
                raise ValueError(
                    "Kandinsky 5 calls with sparse attention (sparse_params) need the pipeline's "
                    "get_sparse_params for the low grid: apply upsample guidance to the pipeline"
                )
            low["sparse_params"] = pipe.get_sparse_params(low[self.sample_arg], device)


def _has_class(obj: Any, name: str) -> bool:
    """Whether ``obj``'s class is, or derives from, a class called ``name``."""
    return any(cls.__name__ == name for cls in type(obj).__mro__)


class Latte(Family):
    """Latte (``LatteTransformer3DModel``): ``(B, C, F, H, W)``, VP, timestep index.

    ε (or v) with a learned variance (guided on the mean half), patched per frame. Its
    temporal position embedding holds ``video_length`` frames: spatial factors only.
    """

    name = "Latte"
    classes = ("LatteTransformer3DModel",)
    video = True
    predictions = ("epsilon", "v_prediction")

    def grid_time(self, t: Any, call: Call) -> Any:
        """The call's time; temporal factors are refused (a fixed temporal embedding)."""
        frames = call.module.config.video_length
        _spatial_only(call, "Latte", f"its temporal position embedding holds {frames} frames")
        return t


class Allegro(RopeVideo):
    """Allegro (``AllegroTransformer3DModel``): ``(B, C, F, H, W)``, VP, timestep index."""

    name = "Allegro"
    classes = ("AllegroTransformer3DModel",)
    rope_pipeline, rope_batch = "AllegroPipeline", True
    predictions = ("epsilon", "v_prediction", "sample")


class EasyAnimate(Family):
    """EasyAnimate (``EasyAnimateTransformer3DModel``): ``(B, C, F, H, W)``, flow, ``1000·σ``.

    ``inpaint_latents`` (mask and masked-video latents) and ``control_latents`` are grids of the
    sample's size that the model concatenates to it: clean conditioning, pooled to the low grid
    as the sample is. The model's rotary embeddings follow the sample's shape.
    """

    name = "EasyAnimate"
    classes = ("EasyAnimateTransformer3DModel",)
    video = True
    conditioning = ("inpaint_latents", "control_latents")

    def out_channels(self, module: torch.nn.Module, channels: int) -> int:
        """The sample is all noisy (the conditioning comes in its own arguments)."""
        return channels

    def low_inputs(self, low: dict, call: Call, factors: tuple[int, ...], micro: str) -> None:
        """The inpainting and control latents pooled to the low grid."""
        for name in self.conditioning:
            if low.get(name) is not None:
                low[name] = pool_grid(low[name], name, factors)


#: The families of this module, in the order they are listed.
FAMILIES: tuple[Family, ...] = (
    SanaVideo(),
    Mochi(),
    Wan(),
    ChronoEdit(),
    WanVACE(),
    SkyReelsV2(),
    HunyuanVideo(),
    HunyuanVideo15(),
    CogVideoX(),
    LTXVideo(),
    LTX2(),
    Kandinsky5(),
    Latte(),
    Allegro(),
    EasyAnimate(),
)
