"""The training scripts of the shipped models run a couple of steps on the CPU (smoke tests)."""

from __future__ import annotations

import json

import torch
from benchmark_modules import load_benchmark


def test_textured_unet_training_smoke(tmp_path):
    from diffusers import UNet2DModel

    main = load_benchmark("train").main
    args = ["--out", str(tmp_path), "--data", "textured", "--steps", "2", "--batch-size", "4",
            "--pool", "8", "--threads", "1", "--log-every", "1", "--save-every", "2"]  # fmt: skip
    assert main(args) == 0
    assert UNet2DModel.from_pretrained(tmp_path).config.sample_size == 32
    assert json.loads((tmp_path / "classes.json").read_text())["data"] == "textured"
    assert json.loads((tmp_path / "training_log.json").read_text())["data"] == "textured"


def test_latent_flow_training_smoke(tmp_path):
    """VAE then transformer, two steps each; the folder loads as a StableDiffusion3Pipeline."""
    from ug_core.demo.latent import load_pipeline

    main = load_benchmark("train_latent").main

    common = ["--out", str(tmp_path), "--steps", "2", "--batch-size", "4", "--pool", "8",
              "--log-every", "1", "--save-every", "2"]  # fmt: skip
    assert main(["vae", *common]) == 0
    vae_log = json.loads((tmp_path / "training_log_vae.json").read_text())
    assert vae_log["scaling_factor"] > 0
    assert main(["transformer", *common]) == 0
    lf = load_pipeline(tmp_path)
    assert lf.pipe.vae.config.scaling_factor == vae_log["scaling_factor"]
    out = lf.generate([0], 32, steps=1)
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()
