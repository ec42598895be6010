"""Translators on calls built by hand: each refusal of a call it can't read, before any model runs.

The translators are called directly with a :class:`Call` built by hand (a stand-in module that
has only a config): the messages name the argument, what it got and what is accepted.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from ug_core.adapters.diffusers.families import base, image, video
from ug_core.adapters.diffusers.families.base import Call


def call(arguments: dict | None = None, pipe=None, request=None, **config) -> Call:
    """A call of a stand-in module whose config holds ``config``."""
    module = SimpleNamespace(config=SimpleNamespace(**config))
    return Call(arguments or {}, pipe, module, request or {})


Z = torch.zeros
CASES = {
    "cogvideox_frames_first": (
        video.CogVideoX(), Z(1, 4, 8, 8), call(patch_size=2),
        r"got hidden_states of shape \(1, 4, 8, 8\); CogVideoX takes \(B, F, C, H, W\)",
    ),
    "ltx_packed": (
        video.LTXVideo(), Z(1, 4, 8, 8), call(patch_size=1, patch_size_t=1),
        r"LTX-Video takes packed hidden_states \(B, N, C\), got \(1, 4, 8, 8\)",
    ),
    "ltx_sizes": (
        video.LTXVideo(), Z(1, 16, 8), call({"num_frames": 2, "width": 4}, patch_size=1),
        r"must give num_frames, height and width as ints \(or video_coords\), got \(2, None, 4\)",
    ),
    "ltx_coords_without_request": (
        video.LTXVideo(), Z(1, 16, 8), call({"video_coords": Z(1, 3, 16)}, patch_size=1),
        r"video_coords need the pipeline's requested height and width",
    ),
    "ltx_coords_not_whole_frames": (
        video.LTXVideo(), Z(1, 17, 8),
        call({"video_coords": Z(1, 3, 17)}, SimpleNamespace(vae_spatial_compression_ratio=8),
             {"height": 32, "width": 32}, patch_size=1, patch_size_t=1),
        r"LTX-Video got 17 tokens, not whole frames of the 4x4 patch grid of height=32, width=32",
    ),
    "ltx2_attention_mask": (
        video.LTX2(), Z(1, 16, 8), call({"video_self_attention_mask": Z(1, 16, 16)}),
        r"LTX-2 calls with video_self_attention_mask \(in-context and DFR pipelines\) are not",
    ),
    "ltx2_sizes": (
        video.LTX2(), Z(1, 16, 8), call({"num_frames": 2}, patch_size=1),
        r"LTX-2 calls must give num_frames, height and width as ints .* got \(2, None, None\)",
    ),
    "ltx2_not_whole_frames": (
        video.LTX2(), Z(1, 17, 8),
        call({"num_frames": 2, "height": 4, "width": 4}, patch_size=1, patch_size_t=1),
        r"LTX-2 got 17 video tokens, not whole frames of the 4x4 patch grid",
    ),
    "kandinsky5_channels_last": (
        video.Kandinsky5(), Z(1, 4, 8, 8), call(patch_size=(1, 2, 2)),
        r"got hidden_states of shape \(1, 4, 8, 8\); Kandinsky 5 takes \(B, F, H, W, C\)",
    ),
    "flux_packed": (
        image.Flux(), Z(1, 4, 8, 8), call(),
        r"got hidden_states of shape \(1, 4, 8, 8\); the Flux family takes packed tokens",
    ),
    "qwen21_img_shapes": (
        image.QwenImage21(), Z(1, 16, 8), call({"img_shapes": [[(1, 8, 8)]]}),
        r"img_shapes \[\[\(1, 8, 8\)\]\] do not end in the target image of one frame within",
    ),
    "zimage_controlnet": (
        image.ZImage(), [Z(4, 1, 8, 8)], call({"controlnet_block_samples": [Z(1)]}),
        r"with controlnet_block_samples is not supported: they are added to the joint",
    ),
    "zimage_list": (
        image.ZImage(), [Z(4, 1, 8, 8), Z(4, 1, 8, 6)], call(),
        r"takes a list of latents \(C, 1, H, W\) of one shape; got \[\(4, 1, 8, 6\), \(4, 1, 8,",
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_a_call_the_translator_cannot_read_is_refused(name):
    family, sample, the_call, message = CASES[name]
    with pytest.raises(ValueError, match=message):
        family.grid_of(sample, the_call)


def test_pooling_and_scheduler_errors():
    with pytest.raises(TypeError, match=r"down_block_additional_residuals must hold tensors"):
        base.pool_grid([1.0], "down_block_additional_residuals", (2, 2))
    tokens = r"controlnet_block_samples must hold tokens \(batch, 16, dim\) on the \(4, 4\) patch"
    with pytest.raises(ValueError, match=tokens + r" grid, got \(1, 15, 8\)"):
        base.pool_tokens(Z(1, 15, 8), "controlnet_block_samples", (4, 4), (2, 2))
    with pytest.raises(TypeError, match=r"expected a tensor or a list of tensors, got int"):
        base.pool_each(3, lambda r: r)
    with pytest.raises(TypeError, match=r"the scheduler object has no config"):
        base.flow_or_vp(object(), 1.0)
    no_table = SimpleNamespace(config=SimpleNamespace(prediction_type="epsilon"))
    with pytest.raises(TypeError, match=r"has no alphas_cumprod and is not a flow-matching"):
        base.flow_or_vp(no_table, 1.0)
    from diffusers import DDIMScheduler

    with pytest.raises(ValueError, match=r"the scheduler DDIMScheduler is not a flow-matching"):
        base.flow_or_vp(DDIMScheduler(), 1.0 / 1000.0)
    mask = torch.ones(1, 16)  # Chroma's mask must hold text tokens before the 16 image tokens
    with pytest.raises(ValueError, match=r"attention_mask of shape \(1, 16\) is not \(batch, "
                                         r"text \+ 16 image tokens\)"):  # fmt: skip
        image._low_image_mask(mask, (4, 4), (2, 2))


def test_kandinsky5_sparse_attention_needs_the_pipeline():
    """The low grid's sparse-attention parameters come from the pipeline's get_sparse_params: a
    bare transformer called with sparse_params is refused."""
    family, the_call = video.Kandinsky5(), call(patch_size=(1, 2, 2))
    the_call.grid, the_call.low_grid, the_call.batch = (2, 8, 8), (2, 4, 4), 1
    low = {family.sample_arg: Z(1, 2, 4, 4, 4), family.time_arg: torch.tensor([500.0])}
    low["sparse_params"] = {"sta_mask": Z(1)}
    with pytest.raises(ValueError, match=r"Kandinsky 5 calls with sparse attention \(sparse_params"
                                         r"\) need the pipeline's get_sparse_params"):  # fmt: skip
        family.low_inputs(low, the_call, (1, 2, 2), "low")


def test_pixart_alpha_low_call_describes_the_low_image_with_unequal_factors():
    """PixArt-α's size conditioning: the low image's resolution (h/fh, w/fw) and its aspect
    ratio h/w · fw/fh; with micro_conditioning="high" the low call keeps the high values."""
    added = {"resolution": torch.tensor([[512.0, 768.0]]), "aspect_ratio": torch.tensor([[2 / 3]])}
    low = {"added_cond_kwargs": dict(added)}
    image.PixArt().low_inputs(low, call(), (2, 3), "low")
    assert torch.equal(low["added_cond_kwargs"]["resolution"], torch.tensor([[256.0, 256.0]]))
    torch.testing.assert_close(
        low["added_cond_kwargs"]["aspect_ratio"], torch.tensor([[1.0]]), rtol=0, atol=1e-6
    )
    kept = {"added_cond_kwargs": dict(added)}
    image.PixArt().low_inputs(kept, call(), (2, 3), "high")
    assert kept["added_cond_kwargs"] == added
