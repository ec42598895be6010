"""The shipped models by name: files, loading, a few sampling steps, and the registry's errors."""

from __future__ import annotations

import json

import pytest
import torch

from ug_core.demo import shapes, textured
from ug_core.demo.registry import SHIPPED, shipped_model, shipped_names

MAX_BYTES = 10 * 2**20  # 10 MB per weights file


def test_registry_names_and_errors():
    assert shipped_names() == ("shapes", "textured", "latent-flow", "video")
    assert shipped_model("textured") is SHIPPED["textured"]
    with pytest.raises(ValueError, match=r"no shipped model 'nope'; shipped models: shapes, "):
        shipped_model("nope")
    with pytest.raises(TypeError, match="name must be a str"):
        shipped_model(3)
    with pytest.raises(ValueError, match=r"factors must be two integers >= 1.*\(1, 1\)"):
        shipped_model("shapes").sample_methods(factors=(1, 1))
    with pytest.raises(ValueError, match=r"'video' is a video model: use .*video.sample_methods"):
        shipped_model("video").sample_methods()
    shapes_model = shipped_model("shapes")
    with pytest.raises(TypeError, match="n must be an int .* got float"):
        shapes_model.sample_methods(n=2.0)
    with pytest.raises(ValueError, match=r"n must be >= 1 .* got 0"):
        shapes_model.sample_methods(n=0)
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\) for n=2, got \(3,\)"):
        shapes_model.sample_methods(n=2, labels=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.4 .* got \[0, 5\]"):
        shapes_model.sample_methods(n=2, labels=[0, 5])
    with pytest.raises(TypeError, match="labels must be integers, got dtype torch.float32"):
        shapes_model.sample_methods(n=2, labels=torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize("name", ["shapes", "textured", "latent-flow", "video"])
def test_shipped_files(name):
    entry = shipped_model(name)
    weights = sorted(entry.folder.rglob("*.safetensors"))
    assert weights, f"no weights in {entry.folder}"
    for path in weights:
        assert path.stat().st_size <= MAX_BYTES, path
    assert (entry.folder / "TRAINING.md").is_file()
    meta = json.loads((entry.folder / "classes.json").read_text())
    assert meta["classes"][: len(shapes.CLASSES)] == list(shapes.CLASSES)
    assert meta["null_class"] == len(shapes.CLASSES)


def test_video_entry_loads_the_video_model():
    from ug_core.demo.video import VideoModel

    model = shipped_model("video").load()
    assert isinstance(model, VideoModel)
    assert (model.trained_frames, model.trained_size) == (8, 32)
    assert type(model.pipe).__name__ == "AnimateDiffPipeline"


def test_ground_truth_and_thresholds():
    flat, tex = shipped_model("shapes"), shipped_model("textured")
    assert torch.equal(flat.ground_truth(3, 32, seed=4), shapes.sample(3, 32, seed=4)[0])
    assert torch.equal(tex.ground_truth(3, 32, seed=4), textured.sample(3, 32, seed=4)[0])
    assert flat.segment_threshold == shapes.MIN_CONTRAST / 2
    assert tex.segment_threshold == shipped_model("latent-flow").segment_threshold
    assert tex.segment_threshold == textured.SEGMENT_THRESHOLD


def test_textured_unet_loads_and_samples():
    from ug_core.demo.model import generate

    entry = shipped_model("textured")
    model = entry.load()
    assert model.sample_size == (32, 32) and model.null_class == len(shapes.CLASSES)
    meta = json.loads((entry.folder / "classes.json").read_text())
    assert meta["data"] == "textured"
    a = generate(model, 2, 64, seed=0, steps=3, factors=(2, 2), progress=False)
    b = generate(model, 2, 64, seed=0, steps=3, factors=(2, 2), progress=False)
    assert a.shape == (2, 3, 64, 64) and torch.isfinite(a).all() and torch.equal(a, b)


@pytest.fixture(scope="module")
def latent_flow():
    return shipped_model("latent-flow").load()


def test_latent_flow_is_a_real_sd3_pipeline(latent_flow):
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    pipe = latent_flow.pipe
    assert type(pipe) is StableDiffusion3Pipeline
    assert isinstance(pipe.transformer, SD3Transformer2DModel)
    assert isinstance(pipe.vae, AutoencoderKL) and pipe.vae_scale_factor == 4
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    assert pipe.text_encoder is None and pipe.tokenizer_3 is None
    assert latent_flow.sample_size == (32, 32)
    assert latent_flow.classes[latent_flow.null_class] == "none"


def test_latent_flow_samples_through_the_pipeline(latent_flow):
    a = latent_flow.generate([0, 3], 32, seed=5, steps=3, cfg=2.0)
    b = latent_flow.generate([0, 3], 32, seed=5, steps=3, cfg=2.0)
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1
    big = latent_flow.generate([1], 64, seed=5, steps=2, cfg=1.0)  # naive 2x: 16x16 latents
    assert big.shape == (1, 3, 64, 64) and torch.isfinite(big).all()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\]"):
        latent_flow.generate([7], 32, steps=1)
    with pytest.raises(ValueError, match=r"latents must have shape \(1, 4, 16, 16\) .* got"):
        latent_flow.generate([1], 64, latents=latent_flow.initial_latents(1, 32, 0))
    with pytest.raises(ValueError, match="size must be a multiple of the VAE factor 4, got 30x30"):
        latent_flow.generate([1], 30)


def test_latent_scaling_matches_training(latent_flow):
    """The VAE config's SD3 scaling makes the training data's latents zero-mean, unit-variance.

    The pipeline decodes ``latents / scaling_factor + shift_factor``; the training script encoded
    ``(z − shift_factor) · scaling_factor``. Fresh scenes (not the training pool): |mean| < 0.1,
    std within 10 % of 1.
    """
    vae = latent_flow.pipe.vae
    log = json.loads((shipped_model("latent-flow").folder / "training_log_vae.json").read_text())
    assert vae.config.scaling_factor == pytest.approx(log["scaling_factor"], rel=1e-6)
    assert vae.config.shift_factor == pytest.approx(log["shift_factor"], rel=1e-6, abs=1e-9)
    images = textured.render(textured.sample_scene_params(128, seed=99), 32)
    with torch.no_grad():
        z = vae.encode(images).latent_dist.mode()
    scaled = (z - vae.config.shift_factor) * vae.config.scaling_factor
    assert abs(float(scaled.mean())) < 0.1
    assert float(scaled.std()) == pytest.approx(1.0, rel=0.1)


def test_shipped_models_sample_methods():
    """The three ``ug sample`` methods from one call, for a pixel UNet (few steps)."""
    out = shipped_model("shapes").sample_methods(n=1, factors=(2, 2), seed=0, steps=2)
    assert set(out) == {"naive", "ug", "bicubic"}
    assert all(v.shape == (1, 3, 64, 64) for v in out.values())
    assert not torch.equal(out["naive"], out["ug"])


def test_latent_flow_sample_methods_through_the_adapter(latent_flow):
    """Naive / UG / bicubic for the latent model: UG by apply_upsample_guidance, removed after."""
    from ug_core.adapters.diffusers import is_upsample_guided

    entry = shipped_model("latent-flow")
    out = entry.sample_methods(n=1, factors=(2, 2), steps=2, eta=0.6, model=latent_flow)
    assert all(v.shape == (1, 3, 64, 64) for v in out.values())
    assert not torch.equal(out["naive"], out["ug"])
    assert not is_upsample_guided(latent_flow.pipe)
    again = entry.sample_methods(n=1, factors=(2, 2), steps=2, eta=0.6, model=latent_flow)
    assert all(torch.equal(out[k], again[k]) for k in out)
