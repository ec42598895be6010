"""The procedural shapes dataset, its metrics, and the embedded model's files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from benchmark_modules import load_benchmark

from ug_core.demo import metrics, shapes
from ug_core.demo.model import ASSET_DIR, load

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def params():
    return shapes.sample_params(160, seed=123)


def test_render_any_size_and_range(params):
    for size in (8, 32, 64, 96, (48, 80)):
        x = shapes.render(params[:8], size)
        hw = (size, size) if isinstance(size, int) else size
        assert x.shape == (8, 3, *hw) and x.dtype == torch.float32
        assert x.min() >= -1 and x.max() <= 1


def test_render_is_deterministic_and_resolution_consistent(params):
    a, b = shapes.sample(4, 32, seed=5)[0], shapes.sample(4, 32, seed=5)[0]
    assert torch.equal(a, b)
    assert not torch.equal(a, shapes.sample(4, 32, seed=6)[0])
    # The same scene at 96 px, block-averaged to 32 px, is the 32 px render up to anti-aliasing.
    hi = shapes.render(params[:16], 96, supersample=2)
    lo = shapes.render(params[:16], 32, supersample=6)
    down = torch.nn.functional.avg_pool2d(hi, 3)
    assert (down - lo).abs().mean() < 0.02


def test_anti_aliased_edges(params):
    x = shapes.render(params[:1], 64)
    values = torch.unique(x[0, 0])
    assert len(values) > 10  # coverage levels on the edges, not a binary mask


def test_params_are_valid(params):
    assert set(np.unique(params.label)) <= set(range(len(shapes.CLASSES)))
    lo, hi = shapes.RADIUS_RANGE
    assert (params.radius >= lo).all() and (params.radius <= hi).all()
    # the circumscribed circle lies inside the image, with the margin
    assert (params.center - params.radius[:, None] >= shapes.MARGIN - 1e-9).all()
    assert (params.center + params.radius[:, None] <= 1 - shapes.MARGIN + 1e-9).all()
    # the shape's colour keeps the minimum contrast to every point of the background
    dist = shapes._segment_distance(params.color, params.bg_start, params.bg_end)
    assert (dist >= shapes.MIN_CONTRAST).all()
    fixed = shapes.sample_params(4, 0, labels=[3, 3, 0, 1])
    assert fixed.label.tolist() == [3, 3, 0, 1]


def test_bad_arguments():
    with pytest.raises(ValueError, match="size"):
        shapes.render(shapes.sample_params(1), 0)
    with pytest.raises(ValueError, match="size"):
        shapes.render(shapes.sample_params(1), (1, 2, 3))
    with pytest.raises(ValueError, match="labels"):
        shapes.sample_params(2, 0, labels=[0, 9])
    with pytest.raises(ValueError, match="n must be"):
        shapes.sample_params(-1)
    with pytest.raises(ValueError, match="supersample"):
        shapes.render(shapes.sample_params(1), 8, supersample=0)
    with pytest.raises(ValueError, match="shape"):
        metrics.count_objects(torch.zeros(2, 4, 8, 8))


@pytest.mark.parametrize("size", [32, 64, 96])
def test_metrics_count_exactly_one_on_ground_truth(params, size):
    x = shapes.render(params, size)
    counts, areas = metrics.count_objects(x)
    assert (counts == 1).all(), np.nonzero(counts != 1)
    # measured area matches the analytic area (edge pixels at the threshold: within ~1 px ring)
    err = np.abs(areas - params.area)
    assert err.mean() < 0.25 * 32 / size * 0.04 + 0.003
    assert err.max() < 0.03


def test_size_distribution_is_resolution_free(params):
    a32 = metrics.count_objects(shapes.render(params, 32))[1]
    a96 = metrics.count_objects(shapes.render(params, 96))[1]
    assert metrics.size_distance(a32, a96) < 0.01
    lo, hi = shapes.RADIUS_RANGE
    area = params.area
    assert area.min() > 1.2 * lo**2 and area.max() < np.pi * hi**2
    assert 0.05 < area.mean() < 0.15


def test_count_detects_two_objects_and_none():
    p = shapes.sample_params(1, seed=3, labels=[0])
    p.bg_end = p.bg_start.copy()  # plain background
    p.radius = np.array([0.1])
    p.center = np.array([[0.25, 0.25]])
    a = shapes.render(p, 64)
    p.center = np.array([[0.75, 0.75]])
    b = shapes.render(p, 64)
    both = a.clone()
    both[..., 32:, 32:] = b[..., 32:, 32:]
    counts, _ = metrics.count_objects(torch.cat([a, both]))
    assert counts.tolist() == [1, 2]
    plain = torch.ones(1, 3, 32, 32) * torch.tensor([0.2, -0.3, 0.5])[:, None, None]
    assert metrics.count_objects(plain)[0].tolist() == [0]


def test_frechet_distance_orders_sets():
    truth = shapes.render(shapes.sample_params(200, 1), 64)
    other = shapes.render(shapes.sample_params(200, 2), 64)
    ft, fo = metrics.features(truth), metrics.features(other)
    assert ft.shape == (200, 40)
    assert metrics.frechet_distance(ft, ft) == pytest.approx(0.0, abs=1e-5)
    floor = metrics.frechet_distance(fo, ft)
    low = shapes.render(shapes.sample_params(200, 2), 32)
    blurred = torch.nn.functional.interpolate(low, size=64, mode="bicubic").clamp(-1, 1)
    noisy = other + 0.1 * torch.randn(other.shape, generator=torch.Generator().manual_seed(0))
    fd_blur = metrics.frechet_distance(metrics.features(blurred), ft)
    fd_noise = metrics.frechet_distance(metrics.features(noisy.clamp(-1, 1)), ft)
    assert floor < fd_blur and floor < fd_noise
    summary = metrics.summarize(other, reference_features=ft)
    assert summary["one_object"] == 1.0 and "frechet" in summary


def test_embedded_model_files():
    files = {p.name: p.stat().st_size for p in ASSET_DIR.iterdir()}
    for name in ("config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json"):
        assert name in files
    assert sum(files.values()) <= 10 * 2**20
    model = load()
    assert model.sample_size == (32, 32)
    assert model.conditional and model.null_class == len(shapes.CLASSES)
    assert model.classes[: len(shapes.CLASSES)] == shapes.CLASSES
    assert model.prediction == "epsilon" and model.schedule.num_timesteps == 1000


def test_training_script_runs_on_cpu_and_is_reproducible(tmp_path):
    """The seeded training script, a few steps on the CPU: same seed, same weights."""
    from diffusers import UNet2DModel
    from safetensors.torch import load_file

    train_main = load_benchmark("train").main
    args = ["--steps", "3", "--batch-size", "4", "--pool", "16", "--threads", "1",
            "--log-every", "1", "--save-every", "3", "--device", "cpu"]  # fmt: skip
    for name in ("a", "b"):
        assert train_main(["--out", str(tmp_path / name), *args]) == 0
    weights = "diffusion_pytorch_model.safetensors"
    a, b = load_file(tmp_path / "a" / weights), load_file(tmp_path / "b" / weights)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    unet = UNet2DModel.from_pretrained(tmp_path / "a")
    assert unet.config.sample_size == 32 and unet.config.num_class_embeds == 5
    assert (tmp_path / "a" / "scheduler_config.json").exists()


def test_generate_separates_the_guidance_gate_from_ddim_eta():
    """``eta`` gates UG on the time axis; ``ddim_eta`` is DDIM's stochasticity (seeded)."""
    from ug_core.demo.model import generate

    model = load()
    kw = dict(n=1, size=32, seed=3, steps=3, progress=False)
    plain = generate(model, **kw)
    assert torch.equal(plain, generate(model, ddim_eta=0.0, **kw))
    noisy = generate(model, ddim_eta=1.0, **kw)
    assert torch.equal(noisy, generate(model, ddim_eta=1.0, **kw)) and not torch.equal(noisy, plain)
    kw = dict(n=1, size=64, seed=3, steps=3, factors=(2, 2), progress=False)
    assert not torch.equal(generate(model, eta=1.0, **kw), generate(model, eta=0.5, **kw))
