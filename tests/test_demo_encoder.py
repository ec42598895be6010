"""The domain encoder: its targets, its API, and that the shipped weights behave as a metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from benchmark_modules import load_benchmark

from ug_core.demo import textured

_encoder = load_benchmark("domain_encoder")
FEATURE_DIM, TARGETS, DomainEncoder = _encoder.FEATURE_DIM, _encoder.TARGETS, _encoder.DomainEncoder
domain_frechet, load_encoder = _encoder.domain_frechet, _encoder.load_encoder
scene_targets = _encoder.scene_targets


@pytest.fixture(scope="module")
def encoder():
    return load_encoder()


def test_targets():
    p = textured.sample_scene_params(40, 1, two_objects=0.5)
    t = scene_targets(p)
    assert t["regression"].shape == (40, len(TARGETS)) and t["classes"].shape == (40, 4)
    assert torch.equal(t["count"], torch.as_tensor(p.count == 2, dtype=torch.float32))
    assert torch.equal(t["classes"].sum(1) >= 1, torch.ones(40, dtype=torch.bool))
    assert (t["textured"] == 1).all() and (t["mask"] == 1).all()
    assert t["regression"].abs().max() < 4  # roughly unit-scaled
    flat = scene_targets(textured.sample_scene_params(8, 1, textured=False))
    for name in ("beta_bg", "beta_fg", "anisotropy_bg", "anisotropy_fg"):
        assert (flat["mask"][:, TARGETS.index(name)] == 0).all()
    assert (flat["regression"][:, TARGETS.index("amplitude_fg")] == 0).all()


def test_features_any_size_and_errors(encoder):
    x = textured.render(textured.sample_scene_params(3, 2), 48)
    f = encoder.features(x)
    assert f.shape == (3, FEATURE_DIM) and f.dtype == np.float64
    # Per-image group norm: batching changes nothing beyond float rounding (atol 1e-5).
    np.testing.assert_allclose(encoder.features(x, batch_size=1), f, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"images must have shape \(n, 3, H, W\) with H, W >= 16"):
        encoder.features(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="at least 2 images"):
        domain_frechet(x[:1], x, encoder)
    # Features may be given as numpy or torch arrays: the same number either way (exact).
    g = encoder.features(textured.render(textured.sample_scene_params(4, 5), 48))
    assert domain_frechet(torch.from_numpy(f), torch.from_numpy(g)) == domain_frechet(f, g)
    with pytest.raises(ValueError, match="holds no config.json"):
        load_encoder("/nonexistent")


def test_metric_sanity_with_shipped_weights(encoder):
    """Floor (independent ground truth) < blur, grain and duplication, on 64 images at 64×64."""
    n = 64
    ref_scenes = textured.sample_scene_params(256, 10**6)
    ref = encoder.features(textured.render(ref_scenes, 64))
    scenes = textured.sample_scene_params(n, 7)
    truth = textured.render(scenes, 64)
    blur = F.interpolate(textured.render(scenes, 32), size=64, mode="bicubic").clamp(-1, 1)
    grain = truth + 0.1 * torch.randn(truth.shape, generator=torch.Generator().manual_seed(0))
    two = textured.render(textured.sample_scene_params(n, 8, two_objects=1.0), 64)
    floor = domain_frechet(encoder.features(truth), ref)
    for name, images in (("blur", blur), ("grain", grain.clamp(-1, 1)), ("two", two)):
        value = domain_frechet(images, ref, encoder)
        assert value > 1.5 * floor, (name, value, floor)


def test_training_script_smoke(tmp_path):
    main = load_benchmark("train_encoder").main
    args = ["--out", str(tmp_path), "--steps", "2", "--batch-size", "4", "--pool-scale", "0.001",
            "--held-out", "4", "--log-every", "1", "--save-every", "2"]  # fmt: skip
    assert main(args) == 0
    model = load_encoder(tmp_path)
    assert isinstance(model, DomainEncoder)
    assert (tmp_path / "training_log.json").is_file()
