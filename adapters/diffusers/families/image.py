"""Image transformers: SD3, AuraFlow, Flux, Flux.2, Qwen-Image, PixArt, DiT, Sana, Lumina 2, ...

... Z-Image, HunyuanImage, HiDream and CogView4; the editing, fill and ControlNet variants of
Flux, Flux.2 and Qwen-Image, and Qwen-Image 2.1.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import torch
from einops import rearrange

from ....factors import low_sizes
from ....operators import downsample
from ....schedules import FlowSchedule, Schedule, ShiftedFlowSchedule
from .base import Call, Family


class SD3(Family):
    """SD3 / SD3.5 (``SD3Transformer2DModel``): grid latents, patch 2, time ``1000·σ``."""

    name = "SD3"
    classes = ("SD3Transformer2DModel",)
    token_residuals = ("block_controlnet_hidden_states",)


class AuraFlow(Family):
    """AuraFlow (``AuraFlowTransformer2DModel``): grid latents, patch 2, flow, time ``σ``."""

    name = "AuraFlow"
    classes = ("AuraFlowTransformer2DModel",)

    def time_unit(self, module: torch.nn.Module) -> float:
        """The pipeline passes ``t / 1000``."""
        return 1.0 / 1000.0


class Flux(Family):
    """Flux.1 (Kontext, Fill, Control) and Chroma: packed 2×2-patch tokens ``(B, N, 4C)``, ``σ``.

    The pipeline passes ``t / 1000`` (the model scales it back); ``guidance`` passes through. The
    low call gets ``img_ids`` of the low grid (the high ids, strided and divided: for 0-based ids
    exactly those native low-resolution sampling builds).

    - Kontext appends the reference image's tokens to the target's (``img_ids[..., 0]`` is 1 on
      them). They are kept at full size, ids unchanged: the pipeline sizes the reference apart
      from the output (its preferred ~1 MP resolutions), so the low call, at the trained size,
      sees it as native sampling at that size does; averaging it would give the model a
      reference at a size it never gets. Their outputs, which the pipeline drops, are their
      inputs.
    - Fill's channels are the target, the masked image's latents and the mask as ``s×s``
      sub-pixel channels (``s`` the VAE factor). The masked image is area-averaged like
      ``c_concat``; the mask is area-averaged in pixels (unfolded, averaged, folded back), the
      mask of the low-resolution image, where a per-channel mean would smear its edges across
      sub-pixels.
    """

    name = "Flux"
    classes = ("FluxTransformer2DModel", "ChromaTransformer2DModel")
    latent_multiple = 2
    token_residuals = ("controlnet_block_samples", "controlnet_single_block_samples")
    ids_arg: str | None = "img_ids"
    """Position ids ``(..., N, C)`` with rows and columns in channels 1 and 2, re-derived."""

    def time_unit(self, module: torch.nn.Module) -> float:
        """The pipeline divides the scheduler's ``1000·σ`` by 1000."""
        return 1.0 / 1000.0

    def patch(self, module: torch.nn.Module) -> tuple[int, ...]:
        """Packing makes 2×2 patches of the latent grid."""
        return (2, 2)

    def grid_of(self, sample: torch.Tensor, call: Call) -> tuple[int, ...]:
        """The target's latent grid ``(H, W)``: from the pipeline's request, else ``img_ids``."""
        if sample.ndim != 3:
            raise ValueError(
                f"{type(call.module).__name__} got hidden_states of shape "
                f"{tuple(sample.shape)}; the {self.name} family takes packed tokens (B, N, 4C)"
            )
        tokens = sample.shape[1]
        scale = getattr(call.pipe, "vae_scale_factor", None)
        h, w = call.request.get("height"), call.request.get("width")
        if scale and h and w:
            hp, wp = int(h) // (int(scale) * 2), int(w) // (int(scale) * 2)
            if 0 < hp * wp <= tokens:
                return (2 * hp, 2 * wp)
        return _grid_from_ids(call.arguments.get(self.ids_arg), tokens)

    # ---------------------------------------------------------------- the target in the sequence
    def target(self, length: int, call: Call) -> slice:
        """Where the target's tokens sit in a sequence of ``length`` tokens (references after)."""
        return slice(0, math.prod(call.grid) // 4)

    def references_in_output(self, call: Call) -> bool:
        """Whether the model's output holds the reference tokens too (is the input's length)."""
        return True

    def to_grid(self, sample: torch.Tensor, call: Call) -> torch.Tensor:
        """The target's ``(B, N, 4C)`` tokens unpacked to the latent grid ``(B, C, H, W)``."""
        tokens = sample[:, self.target(sample.shape[1], call)]
        h = call.grid[0] // 2
        return rearrange(tokens, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=h, ph=2, pw=2)

    def pack(self, grid: torch.Tensor, call: Call) -> torch.Tensor:
        """A latent grid packed into 2×2-patch tokens (the target's only)."""
        return rearrange(grid, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2)

    def from_grid(self, grid: torch.Tensor, call: Call) -> torch.Tensor:
        """Packed tokens, with the call's reference tokens (the input's) where they sit."""
        tokens = self.pack(grid, call)
        source = call.arguments[self.sample_arg]
        high = Call(call.arguments, call.pipe, call.module, call.request)
        high.grid = self.grid_of(source, call)
        where = self.target(source.shape[1], high)
        if where.stop - where.start == source.shape[1]:
            return tokens
        if tuple(call.grid) == tuple(high.grid) and not self.references_in_output(call):
            return tokens  # the guided output of a call whose output is the target only
        before, after = source[:, : where.start], source[:, where.stop :]
        return torch.cat([before.to(tokens.dtype), tokens, after.to(tokens.dtype)], dim=1)

    # ---------------------------------------------------------------- the low call's inputs
    def low_inputs(self, low: dict, call: Call, factors: tuple[int, ...], micro: str) -> None:
        """Target ids of the low grid; ControlNet tokens pooled; Chroma's mask; Fill's mask."""
        super().low_inputs(low, call, factors, micro)
        patch_grid = (call.grid[0] // 2, call.grid[1] // 2)
        ids = low.get(self.ids_arg) if self.ids_arg else None
        if isinstance(ids, torch.Tensor):
            where = self.target(ids.shape[-2], call)
            target = ids[..., where, :]
            parts = (ids[..., : where.start, :], _low_ids(target, patch_grid, factors))
            low[self.ids_arg] = torch.cat([*parts, ids[..., where.stop :, :]], dim=-2)
        mask = low.get("attention_mask")
        if isinstance(mask, torch.Tensor):
            low["attention_mask"] = _low_image_mask(mask, patch_grid, factors)
        self._low_fill_mask(low, call, factors)

    def _low_fill_mask(self, low: dict, call: Call, factors: tuple[Any, ...]) -> None:
        """Fill's sub-pixel mask channels of the low call, averaged in pixels."""
        channels = call.arguments[self.sample_arg].shape[-1] // 4
        noisy = self.out_channels(call.module, channels)
        folded = channels - 2 * noisy
        s = math.isqrt(max(folded, 0))
        if s < 2 or s * s != folded:
            return
        high = self.to_grid(call.arguments[self.sample_arg], call)
        mask = _pixel_mean(high[:, 2 * noisy :], s, factors)
        grid = self.to_grid(low[self.sample_arg], _low_call(call))
        grid = torch.cat([grid[:, : 2 * noisy], mask.to(grid.dtype)], dim=1)
        low[self.sample_arg] = self.pack(grid, call)


def _low_call(call: Call) -> Call:
    """The low-resolution call's view of ``call``: the same arguments, the low grid."""
    low = Call(call.arguments, call.pipe, call.module, call.request)
    low.grid, low.batch = call.low_grid, call.batch
    return low


def _pixel_mean(mask: torch.Tensor, s: int, factors: tuple[Any, ...]) -> torch.Tensor:
    """A mask folded as ``s×s`` sub-pixel channels ``(B, s², H, W)``, area-averaged in pixels."""
    pixels = rearrange(mask, "b (sy sx) h w -> b 1 (h sy) (w sx)", sy=s, sx=s)
    low = downsample(pixels, factors[-2:])
    return rearrange(low, "b 1 (h sy) (w sx) -> b (sy sx) h w", sy=s, sx=s)


def _grid_from_ids(ids: Any, tokens: int) -> tuple[int, int]:
    """The target's latent grid from Flux-style ``img_ids``: the tokens whose channel 0 is 0.

    Rows and columns are channels 1 and 2; references (Kontext's, Flux.2's) have channel 0 > 0.
    One read of the ids.
    """
    if not isinstance(ids, torch.Tensor):
        raise ValueError(
            "cannot tell the latent grid of packed tokens: pass img_ids, or call the pipeline "
            "(its requested height and width give the grid)"
        )
    ids = ids[0] if ids.ndim == 3 else ids
    target = ids[ids[:, 0] == 0]
    n = target.shape[0]
    hp, wp = (int(v) + 1 for v in target[:, 1:3].amax(dim=0).tolist()) if n else (0, 0)
    if n == 0 or hp * wp != n or ids.shape[0] != tokens:
        raise ValueError(
            f"img_ids of shape {tuple(ids.shape)} describe a {hp}x{wp} grid in {n} target tokens "
            f"(channel 0 equal to 0), but hidden_states has {tokens} tokens"
        )
    return (2 * hp, 2 * wp)


def _low_index(n_low: int, factor: Any, device: torch.device) -> torch.Tensor:
    """The high-resolution position of each low-resolution one: ``floor(i·f)`` (``::f``)."""
    f = Fraction(factor)
    return torch.arange(n_low, device=device) * f.numerator // f.denominator


def _low_ids(ids: torch.Tensor, patch_grid: tuple[int, int], factors: tuple[Any, ...]) -> Any:
    """Row-major position ids ``([B,] N, C)`` of a patch grid, at the low grid's positions.

    Rows and columns are channels 1 and 2 (Flux's (0, row, col), Flux 2's (t, row, col, l)).
    Integer factors: the ids strided and divided, for 0-based ids exactly those native
    low-resolution sampling builds; a ratio: the low grid's rows and columns counted from the
    first one's position divided by the factor.
    """
    hp, wp = patch_grid
    fh, fw = factors[-2:]
    (lh, lw) = low_sizes((hp, wp), (fh, fw))
    grid = ids.reshape(*ids.shape[:-2], hp, wp, ids.shape[-1])
    rows, cols = _low_index(lh, fh, ids.device), _low_index(lw, fw, ids.device)
    grid = grid.index_select(-3, rows).index_select(-2, cols).clone()
    for channel, f, n, axis in ((1, fh, lh, -3), (2, fw, lw, -2)):
        r = Fraction(f)
        scaled = torch.div(grid[..., channel] * r.denominator, r.numerator, rounding_mode="floor")
        if r.denominator == 1:
            grid[..., channel] = scaled
        else:
            start = scaled.narrow(axis + 1, 0, 1)  # the first row (column) of the low grid
            shape = (n, 1) if axis == -3 else (n,)
            step = torch.arange(n, device=ids.device, dtype=ids.dtype).reshape(shape)
            grid[..., channel] = start + step
    return grid.reshape(*ids.shape[:-2], -1, ids.shape[-1])


def _low_image_mask(mask: torch.Tensor, patch_grid: tuple[int, int], factors: tuple) -> Any:
    """An attention mask ``(B, text + image tokens)`` for the low grid (Chroma's layout).

    The image part is the mask at the first token of each block (Chroma's is all ones).
    """
    tokens = patch_grid[0] * patch_grid[1]
    if mask.ndim != 2 or mask.shape[1] <= tokens:
        raise ValueError(
            f"attention_mask of shape {tuple(mask.shape)} is not (batch, text + {tokens} image "
            "tokens); other masks are not supported"
        )
    text, image = mask[:, :-tokens], mask[:, -tokens:]
    (lh, lw) = low_sizes(patch_grid, factors[-2:])
    low = image.reshape(mask.shape[0], *patch_grid)
    rows, cols = _low_index(lh, factors[-2], mask.device), _low_index(lw, factors[-1], mask.device)
    low = low.index_select(1, rows).index_select(2, cols)
    return torch.cat([text, low.reshape(mask.shape[0], -1)], dim=1)


class Flux2(Flux):
    """Flux.2 and Klein (``Flux2Transformer2DModel``): as Flux, ids ``(t, row, col, l)``.

    Reference images (``t`` = 10, 20, ...) follow the target's tokens, or precede them in
    Klein-KV's first step (``kv_cache_mode="extract"``, ``num_ref_tokens``), whose output is the
    target's only; later steps carry the references' cached keys and values, which the low call
    shares. References are kept at full size, as Kontext's: the pipeline caps them at 1 MP
    whatever the output size, and they attend only to themselves in Klein-KV, so their cache
    holds for the low call too.
    """

    name = "Flux.2"
    classes = ("Flux2Transformer2DModel",)
    token_residuals = ()

    def _extract(self, call: Call) -> int:
        """The reference tokens ahead of the target in a cache-filling call (else 0)."""
        if call.arguments.get("kv_cache_mode") == "extract":
            return int(call.arguments.get("num_ref_tokens") or 0)
        return 0

    def target(self, length: int, call: Call) -> slice:
        """After ``num_ref_tokens`` in a cache-filling call's input; else first."""
        n = math.prod(call.grid) // 4
        start = self._extract(call) if length > n else 0
        return slice(start, start + n)

    def references_in_output(self, call: Call) -> bool:
        """A cache-filling call returns the target's tokens only."""
        return not self._extract(call)


class QwenImage(Flux):
    """Qwen-Image (``QwenImageTransformer2DModel``): Flux's packing, the grid in ``img_shapes``.

    ``img_shapes`` (per batch element a list of ``(frames, rows, cols)``, or one such tuple:
    the ControlNet pipelines' form) holds the target first, then the reference images (Edit,
    Edit Plus: several). The low call gets the target's entry of the low grid, references kept
    at full size with their entries, as Kontext's: the Edit pipelines size them to ~1 MP
    whatever the output. Layered (``use_layer3d_rope``) is refused: its input image is sized
    with the output, so native sampling at the trained size would shrink it too. The pipeline
    passes ``t / 1000``.
    """

    name = "Qwen-Image"
    classes = ("QwenImageTransformer2DModel",)
    token_residuals = ("controlnet_block_samples",)
    ids_arg = None

    def grid_of(self, sample: torch.Tensor, call: Call) -> tuple[int, ...]:
        """``2 × (rows, cols)`` of the first ``img_shapes`` entry."""
        if getattr(call.module.config, "use_layer3d_rope", False):
            raise ValueError(
                "Qwen-Image-Layered (use_layer3d_rope) is not supported: its input image is "
                "sized with the output (resolution), so the low call would need it at the low size"
            )
        shapes = call.arguments.get("img_shapes")
        entries, _ = _qwen_entries(shapes)
        frames, rows, cols = entries[0]
        if frames != 1 or sum(math.prod(e) for e in entries) != sample.shape[1]:
            raise ValueError(
                f"img_shapes {shapes!r} do not describe the {sample.shape[1]} tokens of "
                "hidden_states: a target image of one frame, then its references"
            )
        return (2 * rows, 2 * cols)

    def out_channels(self, module: torch.nn.Module, channels: int) -> int:
        """Qwen-Image's ``out_channels`` counts latent channels, ``in_channels`` packed ones."""
        return channels

    def low_inputs(self, low: dict, call: Call, factors: tuple[int, ...], micro: str) -> None:
        """The target's ``img_shapes`` entries of the low grid; ControlNet tokens pooled."""
        Family.low_inputs(self, low, call, factors, micro)
        entries, flat = _qwen_entries(low["img_shapes"])
        per = [(1, call.low_grid[0] // 2, call.low_grid[1] // 2), *entries[1:]]
        low["img_shapes"] = [per[0] if flat else list(per) for _ in low["img_shapes"]]


def _qwen_entries(shapes: Any) -> tuple[tuple[tuple[int, ...], ...], bool]:
    """The ``(frames, rows, cols)`` entries every batch element shares, and whether it is flat.

    Flat: each element holds one bare tuple (the ControlNet pipelines' form), not a list.
    """
    try:
        flat = all(isinstance(v, int) for v in shapes[0])
        per = {(tuple(s),) if flat else tuple(tuple(e) for e in s) for s in shapes}
        (entries,) = per
        if any(len(e) != 3 for e in entries):
            raise ValueError
    except (TypeError, ValueError, IndexError):
        raise ValueError(
            "Qwen-Image calls must give img_shapes with, per batch element, a list of "
            f"(frames, rows, cols) (or one such tuple), the same for all; got {shapes!r}"
        ) from None
    return tuple(tuple(int(v) for v in e) for e in entries), flat


class QwenImage21(Family):
    """Qwen-Image 2.1 (``QwenImage21Transformer2DModel``): unpatched latent tokens ``(B, N, C)``.

    ``img_shapes`` lists the condition images, then the target (the last entry, row-major
    tokens, the last of ``hidden_states``); ``img_mask`` marks the text encoder's image slots,
    one per 2×2 tokens, the target's appended last. The low call gets the target's entry and
    slots of the low grid; condition images are kept at full size, as Kontext's (the pipeline
    sizes them apart from the output, and under ``causal_condition`` their keys and values, the
    prefix cache included, never see the target). The model returns the whole joint sequence
    (text, conditions, target), or the target's tokens from a cache: the guided output is the
    target's tokens, the part the pipeline keeps (``[:, -N:]``). Time ``σ`` (``t / 1000``).
    """

    name = "Qwen-Image 2.1"
    classes = ("QwenImage21Transformer2DModel",)
    latent_multiple = 2

    def time_unit(self, module: torch.nn.Module) -> float:
        """The pipeline divides the scheduler's ``1000·σ`` by 1000."""
        return 1.0 / 1000.0

    def patch(self, module: torch.nn.Module) -> tuple[int, ...]:
        """The text encoder's image slots cover 2×2 tokens: grids are multiples of 2."""
        return (2, 2)

    def grid_of(self, sample: torch.Tensor, call: Call) -> tuple[int, ...]:
        """``(rows, cols)`` of the last ``img_shapes`` entry."""
        shapes = call.arguments.get("img_shapes")
        entries, flat = _qwen_entries(shapes)
        frames, rows, cols = entries[-1]
        if flat or frames != 1 or sample.ndim != 3 or rows * cols > sample.shape[1]:
            raise ValueError(
                f"img_shapes {shapes!r} do not end in the target image of one frame within the "
                f"tokens of hidden_states {tuple(sample.shape)}"
            )
        return (rows, cols)

    def to_grid(self, sample: torch.Tensor, call: Call) -> torch.Tensor:
        """The last ``rows·cols`` tokens as the grid ``(B, C, rows, cols)``."""
        rows, cols = call.grid
        return rearrange(sample[:, -rows * cols :], "b (h w) c -> b c h w", h=rows)

    def from_grid(self, grid: torch.Tensor, call: Call) -> torch.Tensor:
        """Tokens; the low call's input gets the condition images' tokens ahead of them."""
        tokens = rearrange(grid, "b c h w -> b (h w) c")
        source = call.arguments[self.sample_arg]
        high = math.prod(self.grid_of(source, call))
        if tokens.shape[1] == high:
            return tokens
        return torch.cat([source[:, : source.shape[1] - high].to(tokens.dtype), tokens], dim=1)

    def low_inputs(self, low: dict, call: Call, factors: tuple[int, ...], micro: str) -> None:
        """The target's ``img_shapes`` entry and ``img_mask`` slots of the low grid."""
        entries, _ = _qwen_entries(low["img_shapes"])
        per = [*entries[:-1], (1, *call.low_grid)]
        low["img_shapes"] = [list(per) for _ in low["img_shapes"]]
        mask = low.get("img_mask")
        if isinstance(mask, torch.Tensor):
            fewer = (math.prod(call.grid) - math.prod(call.low_grid)) // 4
            low["img_mask"] = mask[:, : mask.shape[1] - fewer]


class PixArt(Family):
    """PixArt-α / Σ (``PixArtTransformer2DModel``): ε with learned variance, VP schedule.

    PixArt-α's resolution / aspect-ratio micro-conditioning describes the low-resolution image
    in the low call (``micro_conditioning="low"``, as for SDXL).
    """

    name = "PixArt"
    classes = ("PixArtTransformer2DModel",)
    predictions = ("epsilon", "v_prediction", "sample")

    def low_inputs(self, low: dict, call: Call, factors: tuple[int, ...], micro: str) -> None:
        """Resolution divided by the factors, aspect ratio of the low image."""
        added = low.get("added_cond_kwargs")
        if micro != "low" or not isinstance(added, dict):
            return
        fh, fw = factors[-2:]
        out = dict(added)
        resolution = added.get("resolution")
        if isinstance(resolution, torch.Tensor):
            divisor = torch.tensor([float(fh), float(fw)], dtype=torch.float32)
            divisor = divisor.to(resolution.device)
            out["resolution"] = (resolution.float() / divisor).to(resolution.dtype)
        ratio = added.get("aspect_ratio")
        if isinstance(ratio, torch.Tensor) and fh != fw:
            out["aspect_ratio"] = ratio * float(fw / fh)
        low["added_cond_kwargs"] = out


class DiT(Family):
    """DiT (``DiTTransformer2DModel``): class-conditional ε with learned variance, VP schedule.

    ``DiTPipeline`` samples at ``transformer.config.sample_size``: load the transformer with the
    larger ``sample_size`` (its sine-cosine positions follow the grid).
    """

    name = "DiT"
    classes = ("DiTTransformer2DModel",)
    predictions = ("epsilon", "v_prediction", "sample")


class Sana(Family):
    """Sana (``SanaTransformer2DModel``): grid latents, flow, time ``1000·σ·timestep_scale``."""

    name = "Sana"
    classes = ("SanaTransformer2DModel",)
    token_residuals = ("controlnet_block_samples",)

    def time_unit(self, module: torch.nn.Module) -> float:
        """The pipeline multiplies the scheduler's time by ``config.timestep_scale``."""
        return float(getattr(module.config, "timestep_scale", 1.0) or 1.0)


class Lumina2(Family):
    """Lumina 2 (``Lumina2Transformer2DModel``): time ``1 − σ`` (0 = noise), output ``x0 − ε``.

    The pipeline passes ``1 − t/1000`` and negates the output before the scheduler step.
    """

    name = "Lumina 2"
    classes = ("Lumina2Transformer2DModel",)
    latent_multiple = 2
    output_sign = -1.0

    def schedule(self, scheduler: Any, module: torch.nn.Module) -> tuple[Schedule, str]:
        """Rectified flow on the reversed time axis ``u = 1 − σ``."""
        _, prediction = super().schedule(scheduler, module)
        return FlowSchedule(time_scale=1.0, reverse=True), prediction

    def model_time(self, scheduler_time: float, module: torch.nn.Module) -> float:
        """``1 − t/1000``."""
        return 1.0 - scheduler_time / 1000.0


class ZImage(Family):
    """Z-Image (``ZImageTransformer2DModel``): a list of ``(C, 1, H, W)`` latents, ``x`` and ``t``.

    The pipeline passes ``1 − t/1000`` (``1 − σ``, 0 = noise) and negates the output (the model
    predicts ``x0 − ε``), as Lumina 2's; the transformer patchifies 2×2. The guided output is a
    list like the model's. Omni mode (nested lists with condition images) and ControlNet
    residuals (added to the joint, padded image-and-caption sequence) are refused.
    """

    name = "Z-Image"
    classes = ("ZImageTransformer2DModel",)
    sample_arg = "x"
    time_arg = "t"
    latent_multiple = 2
    output_sign = -1.0

    def patch(self, module: torch.nn.Module) -> tuple[int, ...]:
        """The pipelines patchify 2×2 (the call's ``patch_size``, 2)."""
        return (2, 2)

    def schedule(self, scheduler: Any, module: torch.nn.Module) -> tuple[Schedule, str]:
        """Rectified flow on the reversed time axis ``u = 1 − σ``."""
        _, prediction = super().schedule(scheduler, module)
        return FlowSchedule(time_scale=1.0, reverse=True), prediction

    def model_time(self, scheduler_time: float, module: torch.nn.Module) -> float:
        """``(1000 − t)/1000``."""
        return (1000.0 - scheduler_time) / 1000.0

    def grid_of(self, sample: Any, call: Call) -> tuple[int, ...]:
        """``(H, W)`` of the list's latents, which must share one shape ``(C, 1, H, W)``."""
        if call.arguments.get("controlnet_block_samples") is not None:
            raise ValueError(
                f"{type(call.module).__name__} with controlnet_block_samples is not supported: "
                "they are added to the joint image-and-caption sequence, not pooled yet"
            )
        shapes = {tuple(x.shape) for x in sample} if isinstance(sample, (list, tuple)) else set()
        if len(shapes) != 1 or len(next(iter(shapes))) != 4 or next(iter(shapes))[1] != 1:
            raise ValueError(
                f"{type(call.module).__name__} takes a list of latents (C, 1, H, W) of one shape; "
                f"got {sorted(shapes) or type(sample).__name__} (omni mode's nested lists of "
                "condition images are not supported)"
            )
        return next(iter(shapes))[-2:]

    def to_grid(self, sample: Any, call: Call) -> torch.Tensor:
        """The list stacked to ``(B, C, H, W)``."""
        return torch.stack(list(sample)).squeeze(2)

    def from_grid(self, grid: torch.Tensor, call: Call) -> Any:
        """A grid back to the list of ``(C, 1, H, W)``."""
        return list(grid.unsqueeze(2).unbind(0))


class HunyuanImage(Family):
    """HunyuanImage 2.1 (``HunyuanImageTransformer2DModel``): grid latents, ``1000·σ``, flow.

    The MeanFlow-distilled model (``timestep_r``) predicts the mean velocity up to the next
    step, not the flow's velocity at ``t``: refused.
    """

    name = "HunyuanImage"
    classes = ("HunyuanImageTransformer2DModel",)

    def grid_of(self, sample: torch.Tensor, call: Call) -> tuple[int, ...]:
        """As any grid transformer; MeanFlow calls are refused."""
        if call.arguments.get("timestep_r") is not None:
            raise ValueError(
                f"{type(call.module).__name__} with timestep_r (use_meanflow=True, the distilled "
                "model) predicts a mean velocity over a step, which upsample guidance does not "
                "support; use the base model"
            )
        return super().grid_of(sample, call)


class HiDream(Family):
    """HiDream-I1 (``HiDreamImageTransformer2DModel``): grid latents, ``timesteps`` ``1000·σ``.

    The pipeline negates the output before the scheduler step: the model predicts ``x0 − ε``.
    """

    name = "HiDream"
    classes = ("HiDreamImageTransformer2DModel",)
    time_arg = "timesteps"
    latent_multiple = 2
    output_sign = -1.0


class CogView4Shift:
    """The time shift ``m`` of a CogView4 scheduler's current run, and the low size's ``m'``.

    ``m`` is read once per run from the scheduler's ``(timesteps, sigmas)``, whose σ is
    ``time_shift(step, m)`` (``m = μ``, or ``e^μ`` for an exponential shift). With dynamic
    shifting the pipeline's ``μ`` for ``1/k`` of the tokens is ``base + (μ − base)/√k``.
    """

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self._table: Any = None
        self._m = 1.0

    def __call__(self) -> float:
        """``m`` of the current run (a ValueError if its sigmas are not a shift of its steps)."""
        sigmas = getattr(self.scheduler, "sigmas", None)
        if sigmas is None or sigmas is self._table:
            return self._m
        steps = self.scheduler.timesteps.detach().double().cpu() / 1000.0
        sig = sigmas.detach().double().cpu()[: steps.numel()]
        inside = (sig > 0) & (sig < 1) & (steps > 0) & (steps < 1)
        m = (sig * (1 - steps) / (steps * (1 - sig)))[inside]  # the shift multiplies the odds
        if m.numel() and float((m - m[0]).abs().max()) > 1e-3 * float(m[0]):
            raise ValueError(
                f"the scheduler's sigmas {sig.tolist()} are not CogView4's shift of its timesteps "
                f"{(steps * 1000.0).tolist()} (custom sigmas, or another shift): the noise level "
                "of the model's time is unknown"
            )
        self._table, self._m = sigmas, float(m.mean()) if m.numel() else 1.0
        return self._m

    def low(self, k: Any) -> float:
        """``m'`` of native sampling at ``1/k`` of the tokens."""
        m, config = self(), self.scheduler.config
        if not getattr(config, "use_dynamic_shifting", False):
            return m
        exponential = getattr(config, "time_shift_type", "exponential") == "exponential"
        base = float(config.get("base_shift", 0.25))
        mu = math.log(m) if exponential else m
        mu_low = base + (mu - base) / math.sqrt(k)
        return math.exp(mu_low) if exponential else mu_low


class CogView4(Family):
    """CogView4 (``CogView4Transformer2DModel``): grid latents, patch 2, flow.

    The model's time is the unshifted step, the noise level the shifted σ
    (:class:`~ug_core.schedules.ShiftedFlowSchedule`, the shift read by :class:`CogView4Shift`).
    ``original_size``, ``target_size`` and ``crop_coords`` are in pixels: with
    ``micro_conditioning="low"`` the low call's describe the low image.
    """

    name = "CogView4"
    classes = ("CogView4Transformer2DModel",)

    def schedule(self, scheduler: Any, module: torch.nn.Module) -> tuple[Schedule, str]:
        """The scheduler's σ of the model's step."""
        _, prediction = super().schedule(scheduler, module)
        shift = CogView4Shift(scheduler)
        return ShiftedFlowSchedule(shift, shift.low), prediction

    def low_inputs(self, low: dict, call: Call, factors: tuple[int, ...], micro: str) -> None:
        """The pixel sizes divided by the factors (``micro_conditioning="low"``)."""
        if micro != "low":
            return
        for name in ("original_size", "target_size", "crop_coords"):
            value = low.get(name)
            if isinstance(value, torch.Tensor):
                divisor = torch.tensor([float(f) for f in factors[-2:]], device=value.device)
                low[name] = (value.double() / divisor.double()).to(value.dtype)


#: The families of this module, in the order they are listed.
FAMILIES: tuple[Family, ...] = (
    SD3(),
    AuraFlow(),
    Flux(),
    Flux2(),
    QwenImage(),
    PixArt(),
    DiT(),
    Sana(),
    Lumina2(),
    ZImage(),
    HunyuanImage(),
    HiDream(),
    CogView4(),
    QwenImage21(),
)
