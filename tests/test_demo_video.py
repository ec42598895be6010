"""The video proving ground: moving-shapes data, metrics, the embedded video model, its tools."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from benchmark_modules import load_benchmark

from ug_core.demo import moving_shapes as ms
from ug_core.demo import video
from ug_core.demo import video_metrics as vm
from ug_core.demo.shapes import MARGIN

torch.set_num_threads(1)


def block_mean(x: torch.Tensor, factors: tuple[int, int, int]) -> torch.Tensor:
    """D on (frames, height, width) of clips (n, C, F, H, W), written out with avg_pool3d."""
    return F.avg_pool3d(x, kernel_size=factors, stride=factors)


# --- data ---------------------------------------------------------------------------------------


def test_clips_are_seeded_and_deterministic():
    a, pa = ms.sample(3, 8, 32, seed=4)
    b, pb = ms.sample(3, 8, 32, seed=4)
    assert torch.equal(a, b) and np.array_equal(pa.velocity, pb.velocity)
    assert not torch.equal(a, ms.sample(3, 8, 32, seed=5)[0])
    assert a.shape == (3, 3, 8, 32, 32) and a.dtype == torch.float32
    assert a.min() >= -1 and a.max() <= 1
    # a numpy Generator draws the same clips as its seed
    same = ms.sample_clips(3, np.random.default_rng(4))
    assert np.array_equal(same.velocity, pa.velocity)
    assert ms.render_clips(pa, 5, (24, 40)).shape == (3, 3, 5, 24, 40)


@pytest.mark.parametrize("factors", [(2, 2, 2), (2, 1, 1), (1, 2, 2)])
def test_block_mean_of_the_fine_rendering_is_the_coarse_rendering(factors):
    # The sub-pixel and sub-time grids nest: D of a (2F, 2H, 2W) rendering is exactly the (F, H, W)
    # rendering with twice the samples per axis, up to float32 rounding (tolerance 1e-5).
    clips = ms.sample_clips(4, seed=8)
    ff, fh, _ = factors
    fine = ms.render_clips(clips, 8 * ff, 32 * fh, supersample=2, time_samples=2)
    coarse = ms.render_clips(clips, 8, 32, supersample=2 * fh, time_samples=2 * ff)
    torch.testing.assert_close(block_mean(fine, factors), coarse, rtol=0, atol=1e-5)
    # ... and the coarse rendering at the default sampling up to anti-aliasing: mean abs 0.01
    default = ms.render_clips(clips, 8, 32, supersample=2, time_samples=2)
    assert (block_mean(fine, factors) - default).abs().mean() < 0.01


def test_the_same_motion_sampled_twice_as_densely():
    # 16 frames span the same time as 8: the 8-frame clip's frame i is at (i + 0.5)/8, the
    # 16-frame clip's frames 2i and 2i + 1 at (2i + 0.5)/16 and (2i + 1.5)/16, centred on it.
    t8, t16 = ms.frame_times(8), ms.frame_times(16)
    assert np.allclose(t16.reshape(8, 2).mean(1), t8[:, 0], atol=1e-12)
    assert np.allclose(ms.frame_times(8, 1, shutter=0.0)[:, 0], (np.arange(8) + 0.5) / 8)
    # the exposure of a frame covers its whole interval at shutter 1
    sub = ms.frame_times(4, 4)
    assert np.allclose(sub, (np.arange(16).reshape(4, 4) + 0.5) / 16)


def test_trajectory_stays_inside_bounces_at_most_once_and_keeps_its_speed():
    clips = ms.sample_clips(200, seed=2)
    t = np.linspace(0, 1, 401)
    p = ms.trajectory(clips, t)  # (n, T, 2)
    lo = (clips.shape.radius + MARGIN)[:, None, None]
    assert (p >= lo - 1e-12).all() and (p <= 1 - lo + 1e-12).all()
    d = np.diff(p, axis=1)
    speed = np.linalg.norm(d, axis=2) / np.diff(t)[None]
    assert np.allclose(np.median(speed, 1), clips.speed, rtol=1e-6)
    assert ((clips.speed >= ms.SPEED_RANGE[0]) & (clips.speed <= ms.SPEED_RANGE[1])).all()
    turns = (np.sign(d[:, 1:]) * np.sign(d[:, :-1]) < 0).sum(1)  # (n, 2): reversals per axis
    assert turns.max() <= 1 and turns.sum() > 0  # some bounce, none twice on an axis


def test_bad_data_arguments():
    clips = ms.sample_clips(1)
    with pytest.raises(ValueError, match="frames must be an integer >= 1, got 0"):
        ms.render_clips(clips, 0)
    with pytest.raises(ValueError, match="time_samples"):
        ms.render_clips(clips, 4, time_samples=0)
    with pytest.raises(ValueError, match="shutter must be in"):
        ms.frame_times(4, 1, shutter=1.5)
    with pytest.raises(ValueError, match="size"):
        ms.render_clips(clips, 4, (1, 2, 3))


# --- metrics ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("frames", "size"), [(8, 32), (16, 64)])
def test_ground_truth_scores_at_the_floor(frames, size):
    x, clips = ms.sample(12, frames, size, seed=21)
    per = vm.analyze(x, clips.label)
    assert (per["one_object"] == 1).all()
    assert (per["identity"] == 1).all() and (per["class_match"] == 1).all()
    assert (per["jump"] == 0).all() and (per["smooth"] == 1).all()
    assert per["residual"].max() < 0.3  # % of the image side
    assert per["colour_drift"].max() < 1e-6 and per["size_drift"].max() < 0.05
    assert np.abs(per["speed"] - clips.speed).max() < 0.01  # image sides per clip


def _plain(clips: ms.ClipParams) -> ms.ClipParams:
    """The clips on a plain background (so that two renderings can be composited)."""
    clips.shape.bg_end = clips.shape.bg_start.copy()
    return clips


def _composite(a: torch.Tensor, b: torch.Tensor, bg: np.ndarray) -> torch.Tensor:
    """Both clips' shapes over the plain background ``bg`` (3,)."""
    return a + b - torch.as_tensor(bg, dtype=torch.float32).view(3, 1, 1, 1)


def test_metrics_catch_a_duplicated_object_and_a_teleport():
    clips = _plain(ms.sample_clips(1, seed=3, labels=[1]))
    x = ms.render_clips(clips, 8, 32)[0]
    # a second, distant copy of the object in the last four frames
    other = ms.ClipParams(clips.shape[0], clips.velocity.copy())
    other.shape.center = 1.0 - other.shape.center
    y = ms.render_clips(other, 8, 32)[0]
    dup = x.clone()
    dup[:, 4:] = _composite(x, y, clips.shape.bg_start[0])[:, 4:]
    per = vm.analyze(dup[None], clips.label)
    assert per["one_object"][0] == 0.5 and per["identity"][0] == 0
    # a teleport: the last four frames from the distant copy alone
    tele = x.clone()
    tele[:, 4:] = y[:, 4:]
    per = vm.analyze(tele[None], clips.label)
    assert per["one_object"][0] == 1 and per["identity"][0] == 1  # the same object ...
    assert per["jump"][0] == 1 and per["smooth"][0] == 0  # ... that jumps
    assert per["residual"][0] > 5 * vm.RESIDUAL_TOLERANCE


def test_metrics_catch_a_change_of_colour_or_class():
    clips = _plain(ms.sample_clips(1, seed=6, labels=[0]))
    x = ms.render_clips(clips, 8, 32)[0]
    recolour = ms.ClipParams(clips.shape[0], clips.velocity.copy())
    recolour.shape.color = -recolour.shape.color  # keeps the contrast? check it is seen
    y = ms.render_clips(recolour, 8, 32)[0]
    mixed = torch.cat([x[:, :4], y[:, 4:]], dim=1)
    per = vm.analyze(mixed[None], clips.label)
    assert per["one_object"][0] == 1 and per["colour_drift"][0] > vm.COLOUR_TOLERANCE
    assert per["identity"][0] == 0
    square = ms.ClipParams(clips.shape[0], clips.velocity.copy())
    square.shape.label = np.array([1])
    square.shape.radius = clips.shape.radius * math.sqrt(math.pi / 2)  # the same area
    z = ms.render_clips(square, 8, 32)[0]
    per = vm.analyze(torch.cat([x[:, :4], z[:, 4:]], dim=1)[None], clips.label)
    assert per["class_consistent"][0] == 0 and per["class_match"][0] == 0.5
    assert per["size_drift"][0] < 0.1  # same area: only the class changed


def test_track_fit_is_exact_on_bounces_and_flags_a_sawtooth():
    t = (np.arange(16) + 0.5) / 16
    u = np.where(t < 0.6, 0.3 + 0.4 * t, 0.3 + 0.4 * (1.2 - t))  # bounce at t = 0.6
    v = 0.5 - 0.2 * t
    resid, vel = vm.fit_track(t, np.stack([u, v], 1))
    assert resid < 1e-3 and np.allclose(np.abs(vel), [0.4, 0.2], atol=0.01)
    saw = np.stack([0.3 + 0.4 * ((2 * t) % 1), v], 1)  # the motion twice, jumping back
    assert vm.fit_track(t, saw)[0] > 0.05
    assert math.isnan(vm.fit_track(t[:2], saw[:2])[0])


def test_metric_arguments():
    with pytest.raises(ValueError, match="clips must have shape"):
        vm.analyze(torch.zeros(2, 4, 8, 8, 8))
    with pytest.raises(ValueError, match="labels must have shape"):
        vm.analyze(torch.zeros(2, 3, 4, 8, 8), labels=[0])


# --- baselines ----------------------------------------------------------------------------------


def test_frame_interpolation_blends_linearly_in_time():
    ramp = torch.arange(4, dtype=torch.float64).view(1, 1, 4, 1, 1)  # value = frame index
    out = video.interpolate_frames(ramp, 2)
    # new frame j at time (j + 0.5)/8 sits at source index j/2 - 0.25, clamped to [0, 3]
    expected = (torch.arange(8, dtype=torch.float64) / 2 - 0.25).clamp(0, 3)
    torch.testing.assert_close(out.flatten(), expected, rtol=0, atol=1e-12)
    clip = torch.randn(2, 3, 5, 4, 4)
    assert torch.equal(video.interpolate_frames(clip, 1), clip)
    with pytest.raises(TypeError, match="factor must be an int, got float 1.7"):
        video.interpolate_frames(clip, 1.7)
    with pytest.raises(ValueError, match="factor must be an integer >= 1, got 0"):
        video.interpolate_frames(clip, 0)
    up = video.upscale_bicubic(clip.clamp(-1, 1), (8, 12))
    assert up.shape == (2, 3, 5, 8, 12)


def test_factor_validation():
    assert video.video_factors(2) == (1, 2, 2)
    assert video.video_factors((2, 3)) == (1, 2, 3)
    assert video.video_factors((2, 1, 1)) == (2, 1, 1)
    assert video.baseline_name((2, 1, 1)) == "interp"
    assert video.baseline_name((1, 2, 2)) == "bicubic"
    assert video.baseline_name((2, 2, 2)) == "interp-bicubic"
    with pytest.raises(ValueError, match="do not upsample"):
        video.video_factors((1, 1, 1))
    with pytest.raises(ValueError, match=r"\(frames, height, width\)"):
        video.video_factors((2, 2, 2, 2))
    assert video.video_factors((2.0, 1, 1)) == (2, 1, 1)  # a whole float is that integer
    with pytest.raises(ValueError, match="got 0 "):
        video.video_factors((0, 1, 1))


# --- the embedded model -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    return video.load()


def test_shipped_files_and_pipeline(model):
    from diffusers import AnimateDiffPipeline, UNetMotionModel

    weights = video.ASSET_DIR / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_size <= 10 * 2**20
    assert isinstance(model.pipe, AnimateDiffPipeline)
    assert isinstance(model.pipe.unet, UNetMotionModel)
    assert model.pipe.vae_scale_factor == 1  # pixel space
    assert model.class_tokens.shape == (5, video.TOKENS, video.TOKEN_DIM)
    log = json.loads((video.ASSET_DIR / "training_log.json").read_text())
    assert log["step"] >= 100
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 4\]"):
        model.embeds([5])
    cond, null = model.embeds([4])  # the null class: unconditional
    assert torch.equal(cond, null)


@pytest.mark.parametrize("factors", [(2, 1, 1), (1, 2, 2), (2, 2, 2)])
def test_model_samples_with_ug_through_the_pipeline(model, factors):
    ff, fh, _ = factors
    noise = video.initial_noise(1, 8 * ff, 32 * fh, seed=0)
    plain = model.sample([2], noise, steps=2, cfg=2.0)
    zero = model.sample([2], noise, steps=2, cfg=2.0, factors=factors, scale=0.0)
    ug = model.sample([2], noise, steps=2, cfg=2.0, factors=factors)
    assert plain.shape == (1, 3, 8 * ff, 32 * fh, 32 * fh)
    assert torch.equal(zero, plain)  # scale 0 is the plain pipeline, bit for bit
    assert not torch.equal(ug, plain) and torch.isfinite(ug).all()
    assert ug.abs().max() <= 1
    # the guidance is removed after the call
    assert torch.equal(model.sample([2], noise, steps=2, cfg=2.0), plain)


def test_low_res_noise_has_unit_variance():
    noise = video.initial_noise(4, 16, 64, seed=0)
    low = video.low_res_noise(noise, (2, 2, 2))
    assert low.shape == (4, 3, 8, 32, 32)
    assert abs(low.std().item() - 1) < 0.02
    assert torch.equal(video.initial_noise(2, 8, 32, 5)[1], video.initial_noise(1, 8, 32, 6)[0])


def test_sample_cli_writes_strips_and_gifs(model, tmp_path):
    from PIL import Image

    result = video.sample_cli(tmp_path, seeds=[3, 4], factors=(2, 1, 1), steps=2, model=model)
    for method in ("naive", "ug", "interp"):
        for seed in (3, 4):
            strip = Image.open(tmp_path / f"{method}-seed{seed}.png")
            assert strip.size == (16 * 32, 32)  # 16 frames left to right
            gif = Image.open(tmp_path / f"{method}-seed{seed}.gif")
            assert gif.n_frames == 16 and gif.size == (32, 32)
    assert result["baseline"] == "interp" and result["size"] == [16, 32, 32]
    assert result["labels"] == [3, 0]
    assert set(result["metrics"]) == {"naive", "ug", "interp"}
    assert 0 <= result["metrics"]["ug"]["one_object"] <= 1
    assert len(result["files"]) == 12
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        video.sample_cli(tmp_path, seeds=[0], steps=0, model=model)
    with pytest.raises(ValueError, match="labels must hold one class per seed"):
        video.sample_cli(tmp_path, seeds=[0], labels=[1, 2], model=model)


# --- training -----------------------------------------------------------------------------------


def test_training_runs_saves_loads_and_resumes_exactly(tmp_path):
    train = load_benchmark("train_video").train

    a, b = tmp_path / "a", tmp_path / "b"
    train(a, steps=3, batch_size=2, save_every=3, log_every=1)
    train(b, steps=2, batch_size=2, save_every=2, log_every=1)
    train(b, steps=3, batch_size=2, save_every=3, log_every=1, resume=True)
    wa = video.load(a).pipe.unet.state_dict()
    wb = video.load(b).pipe.unet.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # resuming is the uninterrupted run
    log = json.loads((a / "training_log.json").read_text())
    assert log["step"] == 3 and log["init_info"]["copied"] > 100
    m = video.load(a)
    x = m.sample([0], video.initial_noise(1, 8, 32, 0), steps=1)
    assert x.shape == (1, 3, 8, 32, 32)


def test_video_benchmark_smoke(tmp_path):
    video_quality = load_benchmark("video_quality")
    argv = ["--n", "1", "--n-ref", "2", "--steps", "1", "--examples", "1", "--quiet"]
    video_quality.main([*argv, "--cases", "temporal", "--results", str(tmp_path)])
    results = json.loads((tmp_path / "video_quality.json").read_text())
    rows = results["cases"]["temporal"]["rows"]
    assert set(rows) == {
        "ground truth (independent set)",
        "naive",
        "UG (2, 1, 1) θ=1",
        "trained size + frame interpolation",
        "(trained size itself, vs truth at 8×32×32)",
    }
    assert rows["ground truth (independent set)"]["one_object"] == 1.0
    sampled = sum(r.get("seconds", 0.0) for r in rows.values())
    assert results["sampling_seconds"] == sampled > 0
    report = (tmp_path / "RESULTS.md").read_text()
    assert f"sampling {sampled:.0f} s in all" in report
    assert "## Video proving ground" in report and "### Targets (video)" in report
    assert (tmp_path / "video_temporal.gif").is_file()
    assert (tmp_path / "video_strip_temporal.png").is_file()


def test_metrics_refuse_arrays_of_the_wrong_shape():
    from ug_core.demo.metrics import _to_numpy
    from ug_core.demo.video_metrics import _as_clips

    assert _as_clips(np.zeros((3, 2, 4, 4))).shape == (1, 3, 2, 4, 4)
    assert _to_numpy(np.full((3, 4, 4), 2.0)).max() == 1.0  # one image, clipped to [-1, 1]
    with pytest.raises(ValueError, match=r"clips must have shape \(n, 3, frames, H, W\), got"):
        _as_clips(np.zeros((2, 1, 4, 4, 4)))
    with pytest.raises(
        ValueError, match=r"images must have shape \(n, 3, H, W\), got \(2, 4, 4, 4"
    ):
        _to_numpy(np.zeros((2, 4, 4, 4)))
