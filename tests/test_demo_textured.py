"""Textured scenes: determinism, exact multi-resolution consistency, finer detail when larger."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ug_core.demo import metrics, shapes, textured


@pytest.fixture(scope="module")
def scenes():
    return textured.sample_scene_params(48, seed=11)


def test_seeded_and_deterministic():
    a = textured.render(textured.sample_scene_params(6, 3), 32)
    b = textured.render(textured.sample_scene_params(6, 3), 32)
    assert torch.equal(a, b)
    assert not torch.equal(a, textured.render(textured.sample_scene_params(6, 4), 32))
    x, params = textured.sample(6, 32, seed=3)
    assert torch.equal(x, a) and params.textured.all() and (params.count == 1).all()


def test_flat_scenes_are_the_flat_dataset():
    """textured=False draws the flat dataset's shapes first and renders them bit for bit."""
    p = textured.sample_scene_params(20, 5, textured=False)
    ref = shapes.sample_params(20, 5)
    for name, value in ref.__dict__.items():
        assert np.array_equal(getattr(p.shape, name), value), name
    assert not p.textured.any()
    assert torch.equal(textured.render(p, 40), shapes.render(ref, 40))


def test_texture_noise_is_exactly_area_sampled(scenes):
    """Block means of the 64 and 96 px wave sums are the 32 px one (box filters compose exactly)."""
    n32 = textured.texture_noise(scenes.background, 32)
    for size in (64, 96):
        hi = textured.texture_noise(scenes.background, size)
        down = F.avg_pool2d(hi[:, None], size // 32)[:, 0]
        assert (down - n32).abs().max() < 1e-10
    # Unit variance in the continuum: a finer grid resolves more of it.
    assert n32.std() < textured.texture_noise(scenes.background, 96).std() < 1.0


def test_renders_agree_across_resolutions(scenes):
    """Block mean of the 64 / 96 px render ≈ the 32 px render: mean |diff| < 0.01.

    Not exact: the soft clip tanh is applied per pixel after area sampling, and shape edges are
    supersampled (4×4 points per pixel).
    """
    x32 = textured.render(scenes, 32)
    for size in (64, 96):
        down = F.avg_pool2d(textured.render(scenes, size), size // 32)
        assert (down - x32).abs().mean() < 0.01


def test_finer_detail_at_higher_resolution(scenes):
    """The 64 px render holds detail above the 32 px Nyquist that upscaling the 32 px one lacks."""
    x32, x64 = textured.render(scenes, 32), textured.render(scenes, 64)

    def fine_energy(x: torch.Tensor) -> float:  # energy not explained by 2×2 block means
        return float(((x - F.interpolate(F.avg_pool2d(x, 2), scale_factor=2)) ** 2).mean())

    bicubic = F.interpolate(x32, size=64, mode="bicubic", align_corners=False)
    assert fine_energy(x64) > 1.5 * fine_energy(bicubic)
    # The same scenes without texture: only the edges hold fine detail.
    untextured = copy.deepcopy(scenes)
    untextured.background.amplitude[:] = 0
    untextured.foreground.amplitude[:] = 0
    flat64 = textured.render(untextured, 64)
    assert fine_energy(x64) > 1.5 * fine_energy(flat64)


def test_texture_spectrum_weights():
    """Weights ∝ f^(1 − β/2) on log-spaced frequencies (power 1/f^β), unit continuum variance."""
    tex = textured.sample_texture(16, np.random.default_rng(0))
    f = np.linalg.norm(tex.freq, axis=-1)
    lo, hi = textured.FREQ_RANGE
    assert (f >= lo).all() and (f <= hi).all()
    for i in range(16):
        slope = np.polyfit(np.log(f[i]), np.log(tex.weight[i]), 1)[0]
        assert slope == pytest.approx(1 - tex.beta[i] / 2, abs=1e-9)
    np.testing.assert_allclose((tex.weight**2).sum(1) / 2, 1.0, rtol=1e-12)


def test_colours_stay_in_range_and_segment_to_one_object(scenes):
    for size in (32, 64, 96):
        x = textured.render(scenes, size)
        assert x.min() > -1 and x.max() < 1  # the texture never needs clipping
        counts, areas = metrics.count_objects(x, threshold=textured.SEGMENT_THRESHOLD)
        assert (counts == 1).all(), np.nonzero(counts != 1)
        assert np.abs(areas - scenes.shape.area).mean() < 0.01


def test_two_object_scenes():
    p = textured.sample_scene_params(24, 2, two_objects=1.0)
    assert (p.count == 2).all()
    gap = np.linalg.norm(p.shape.center - p.second.center, axis=1)
    assert (gap > p.shape.radius + p.second.radius).all()
    assert np.array_equal(p.shape.color, p.second.color)
    counts, _ = metrics.count_objects(textured.render(p, 64), threshold=textured.SEGMENT_THRESHOLD)
    assert (counts == 2).all()
    flat = textured.sample_scene_params(24, 2, textured=False, two_objects=0.5)
    assert set(np.unique(flat.count)) == {1, 2}
    assert np.array_equal(metrics.count_objects(textured.render(flat, 64))[0], flat.count)


def test_bad_arguments():
    with pytest.raises(ValueError, match="n must be"):
        textured.sample_scene_params(-1)
    with pytest.raises(ValueError, match="two_objects"):
        textured.sample_scene_params(2, two_objects=1.5)
    with pytest.raises(TypeError, match="textured must be a bool"):
        textured.sample_scene_params(2, textured="yes")
    with pytest.raises(TypeError, match="params must be SceneParams"):
        textured.render(shapes.sample_params(2), 32)
    with pytest.raises(ValueError, match="size"):
        textured.render(textured.sample_scene_params(1), 0)
    with pytest.raises(ValueError, match="threshold"):
        metrics.segment(torch.zeros(1, 3, 8, 8), threshold=-1.0)
