"""Train the latent flow model: the AutoencoderKL, then the SD3Transformer2DModel on its latents.

Reproducible and seeded, on the CPU or a GPU, from the repository root::

    python benchmarks/training/train_latent.py vae --out runs/latent_flow
    python benchmarks/training/train_latent.py transformer --out runs/latent_flow

Both write into one ``StableDiffusion3Pipeline`` folder (``--out``): ``vae/``, then
``transformer/``, ``scheduler/``, ``model_index.json``, ``class_embeddings.safetensors``,
``classes.json`` and ``training_log_{vae,transformer}.json``. The data are 32×32 textured scenes
(:mod:`ug_core.demo.textured`) rendered from a fixed seed.

- **VAE**: L1 reconstruction + a log-amplitude spectrum L1 (keeps the texture's energy, which L1
  alone blurs away) + a small KL term; random horizontal flips. At the end the SD3 latent scaling
  (``scaling_factor`` = 1 / std, ``shift_factor`` = mean of the posterior means) is measured on
  the training images and written into ``vae/config.json``.
- **Transformer**: rectified flow, ``x_t = (1 − t)·x0 + t·ε`` with ``x0 = (z − shift)·scale`` and
  ``t`` logit-normal, predicting the velocity ``ε − x0`` at timestep ``1000·t`` (what
  ``StableDiffusion3Pipeline`` feeds it). Classes enter as learned tokens
  (:class:`~ug_core.demo.latent.ClassEmbeddings`) dropped to the null class with probability
  ``--cfg-dropout``. The saved weights are EMA weights. Every ``--save-every`` steps the folder is
  a complete pipeline. ``--position-jitter`` crops the positional-embedding grid at a random
  offset per sample (as if each 8×8 latent were a crop of a larger canvas), so that every
  position of the ``pos_embed_max_size`` grid is seen in training; sampling uses the pipeline's
  usual centre crop. Without it the model knows only the central 8×8 positions, and a larger
  canvas meets positions it never saw. ``--init`` continues from a saved pipeline folder.

Learning rates are constant after a linear warm-up, so the first N steps of a run are a run with
``--steps N``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from train import ema_update, optimizer_step, render_pool  # benchmarks/training/train.py

from ug_core.demo.latent import (
    SCHEDULER_CONFIG,
    ClassEmbeddings,
    build_transformer,
    build_vae,
    latent_scaling,
)
from ug_core.demo.shapes import CLASSES

__all__ = ["train_vae", "train_transformer", "main"]


def _log_spectrum(x: torch.Tensor) -> torch.Tensor:
    """log(1 + |FFT|) of each channel (the texture's energy per frequency)."""
    return torch.log1p(torch.fft.rfft2(x, norm="ortho").abs() * 8)


def train_vae(
    out: str | Path,
    steps: int = 3000,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    pool: int = 20000,
    spectral_weight: float = 0.1,
    kl_weight: float = 1e-6,
    warmup: int = 100,
    save_every: int = 250,
    threads: int = 1,
    log_every: int = 50,
    device: str = "cpu",
) -> dict:
    """Train the AutoencoderKL and save it into ``out/vae``; returns a summary."""
    torch.set_num_threads(threads)
    out = Path(out)
    (out / "vae").mkdir(parents=True, exist_ok=True)
    start = time.time()
    images, _ = render_pool(pool, seed, "textured")
    images = images.to(device)
    print(f"rendered {pool} images in {time.time() - start:.1f} s", flush=True)
    vae = build_vae(seed).to(device)
    n_params = sum(p.numel() for p in vae.parameters())
    print(f"AutoencoderKL: {n_params / 1e6:.2f} M parameters", flush=True)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warmup))
    gen = torch.Generator().manual_seed(seed + 1)
    pixels = images[0].numel()
    hist: dict[str, list[float]] = {"loss": [], "l1": [], "spectral": [], "kl": []}

    def save(step: int) -> None:
        vae.eval()
        scale, shift = latent_scaling(vae, images[:4096])
        vae.register_to_config(scaling_factor=scale, shift_factor=shift)
        vae.save_pretrained(out / "vae", safe_serialization=True)
        vae.train()
        info = dict(
            step=step, steps=steps, batch_size=batch_size, lr=lr, seed=seed, pool=pool,
            spectral_weight=spectral_weight, kl_weight=kl_weight, threads=threads,
            device=device, parameters=n_params, scaling_factor=scale, shift_factor=shift,
            seconds=round(time.time() - start, 1),
            **{k: float(np.mean(v[-log_every:])) for k, v in hist.items() if v},
        )  # fmt: skip
        (out / "training_log_vae.json").write_text(json.dumps(info, indent=2) + "\n")

    vae.train()
    for step in range(1, steps + 1):
        idx = torch.randint(0, pool, (batch_size,), generator=gen).to(device)
        x = images[idx]
        flip = torch.rand(batch_size, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None].to(device), x.flip(-1), x)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen).to(device)
        rec = vae.decode(z).sample
        l1 = (rec - x).abs().mean()
        spectral = (_log_spectrum(rec) - _log_spectrum(x)).abs().mean()
        kl = post.kl().mean() / pixels  # per pixel, like the reconstruction terms
        loss = l1 + spectral_weight * spectral + kl_weight * pixels * kl
        optimizer_step(loss, vae.parameters(), opt, sched)
        for k, v in (("loss", loss), ("l1", l1), ("spectral", spectral), ("kl", kl)):
            hist[k].append(v.item())
        if step % log_every == 0 or step == steps:
            print(
                f"vae step {step}/{steps} "
                + " ".join(f"{k} {np.mean(v[-log_every:]):.4f}" for k, v in hist.items())
                + f" {time.time() - start:.0f} s",
                flush=True,
            )
        if step % save_every == 0 or step == steps:
            save(step)
    seconds = time.time() - start
    print(f"vae done: {steps} steps in {seconds:.0f} s ({seconds / 60:.1f} min)", flush=True)
    return dict(steps=steps, loss=float(np.mean(hist["loss"][-log_every:])), seconds=seconds)


@torch.no_grad()
def _encode_pool(vae, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """SD3-scaled latents ``(mode − shift)·scale`` of ``images``."""
    scale, shift = vae.config.scaling_factor, vae.config.shift_factor
    z = [vae.encode(images[i : i + batch]).latent_dist.mode() for i in range(0, len(images), batch)]
    return (torch.cat(z) - shift) * scale


def jitter_positions(patch_embed: torch.nn.Module, generator: torch.Generator, batch: int) -> None:
    """Make ``patch_embed`` (an SD3 ``PatchEmbed``) crop its grid at random offsets per sample.

    ``batch`` is the training batch size (every call crops that many grids).

    Installed as an instance attribute on the training model only (not saved, not on the EMA).
    """
    grid = patch_embed.pos_embed_max_size
    table = patch_embed.pos_embed  # (1, grid * grid, dim), a buffer

    def cropped_pos_embed(height: int, width: int) -> torch.Tensor:
        """Per-sample random crops of the grid (batch size from the pending call)."""
        h, w = height // patch_embed.patch_size, width // patch_embed.patch_size
        n = batch
        top = torch.randint(0, grid - h + 1, (n,), generator=generator)
        left = torch.randint(0, grid - w + 1, (n,), generator=generator)
        rows = top[:, None, None] + torch.arange(h)[None, :, None]
        cols = left[:, None, None] + torch.arange(w)[None, None, :]
        index = (rows * grid + cols).reshape(n, h * w).to(table.device)
        return table[0][index]  # (n, h·w, dim)

    patch_embed.cropped_pos_embed = cropped_pos_embed


def save_pipeline(out: Path, vae, transformer, embeddings: ClassEmbeddings) -> None:
    """Write ``out`` as a StableDiffusion3Pipeline folder with the class tokens beside it."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
    from diffusers.utils import logging
    from safetensors.torch import save_file

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # "None ... cannot be saved" for each absent text encoder
    try:
        pipe = StableDiffusion3Pipeline(
            transformer=transformer, vae=vae,
            scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
            text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
            text_encoder_3=None, tokenizer_3=None,
        )  # fmt: skip
        pipe.save_pretrained(out, safe_serialization=True)
    finally:
        logging.set_verbosity(verbosity)
    state = {k: v.detach().cpu().contiguous() for k, v in embeddings.state_dict().items()}
    save_file(state, out / "class_embeddings.safetensors")
    meta = dict(classes=list(CLASSES) + ["none"], null_class=len(CLASSES), data="textured")
    (out / "classes.json").write_text(json.dumps(meta, indent=2) + "\n")


def train_transformer(
    out: str | Path,
    steps: int = 6000,
    batch_size: int = 128,
    lr: float = 3e-4,
    seed: int = 0,
    pool: int = 60000,
    cfg_dropout: float = 0.1,
    ema_decay: float = 0.999,
    warmup: int = 200,
    save_every: int = 250,
    threads: int = 1,
    log_every: int = 50,
    device: str = "cpu",
    position_jitter: bool = True,
    init: str | Path | None = None,
) -> dict:
    """Train the SD3Transformer2DModel on the latents of the VAE in ``out/vae``; returns a summary.

    Needs ``out/vae`` from :func:`train_vae`.
    """
    from diffusers import AutoencoderKL

    torch.set_num_threads(threads)
    out = Path(out)
    start = time.time()
    vae = AutoencoderKL.from_pretrained(out / "vae", local_files_only=True).eval().to(device)
    # A data seed of its own, so that the transformer's scenes are not the VAE's pool.
    images, labels = render_pool(pool, seed + 100, "textured")
    x0_pool = _encode_pool(vae, images.to(device))
    labels = labels.to(device)
    del images
    print(f"rendered and encoded {pool} images in {time.time() - start:.1f} s; latents "
          f"{tuple(x0_pool.shape[1:])}, std {x0_pool.std():.3f}", flush=True)  # fmt: skip
    model = build_transformer(seed).to(device)
    torch.manual_seed(seed)
    emb = ClassEmbeddings().to(device)
    if init is not None:
        from diffusers import SD3Transformer2DModel
        from safetensors.torch import load_file

        start_from = SD3Transformer2DModel.from_pretrained(Path(init) / "transformer")
        model.load_state_dict(start_from.state_dict())
        emb.load_state_dict(load_file(Path(init) / "class_embeddings.safetensors"))
        print(f"initialised from {init}", flush=True)
    ema, ema_emb = copy.deepcopy(model).requires_grad_(False), copy.deepcopy(emb)
    if position_jitter:
        jitter_positions(model.pos_embed, torch.Generator().manual_seed(seed + 2), batch_size)
    ema_emb.requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"SD3Transformer2DModel: {n_params / 1e6:.2f} M parameters", flush=True)
    params = list(model.parameters()) + list(emb.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warmup))
    gen = torch.Generator().manual_seed(seed + 1)
    null = len(CLASSES)
    losses: list[float] = []

    def save(step: int) -> None:
        save_pipeline(out, vae, ema, ema_emb)
        info = dict(
            step=step, steps=steps, batch_size=batch_size, lr=lr, seed=seed, pool=pool,
            cfg_dropout=cfg_dropout, ema_decay=ema_decay, threads=threads, device=device,
            parameters=n_params, position_jitter=position_jitter,
            init=None if init is None else str(init), seconds=round(time.time() - start, 1),
            loss=float(np.mean(losses[-log_every:])) if losses else None,
        )  # fmt: skip
        (out / "training_log_transformer.json").write_text(json.dumps(info, indent=2) + "\n")

    model.train()
    for step in range(1, steps + 1):
        idx = torch.randint(0, pool, (batch_size,), generator=gen).to(device)
        x0 = x0_pool[idx]
        y = labels[idx].clone()
        y[torch.rand(batch_size, generator=gen).to(device) < cfg_dropout] = null
        t = torch.sigmoid(torch.randn(batch_size, generator=gen)).to(device)  # logit-normal
        eps = torch.randn(x0.shape, generator=gen).to(device)
        tt = t.view(-1, 1, 1, 1)
        xt = (1 - tt) * x0 + tt * eps
        tokens, pooled = emb(y)
        pred = model(
            hidden_states=xt, timestep=t * 1000, encoder_hidden_states=tokens,
            pooled_projections=pooled, return_dict=False,
        )[0]  # fmt: skip
        loss = torch.nn.functional.mse_loss(pred, eps - x0)
        optimizer_step(loss, params, opt, sched)
        ema_update(ema, model, step, ema_decay)
        ema_update(ema_emb, emb, step, ema_decay)
        losses.append(loss.item())
        if step % log_every == 0 or step == steps:
            print(f"transformer step {step}/{steps} loss {np.mean(losses[-log_every:]):.4f} "
                  f"{time.time() - start:.0f} s", flush=True)  # fmt: skip
        if step % save_every == 0 or step == steps:
            save(step)
    seconds = time.time() - start
    print(f"transformer done: {steps} steps in {seconds:.0f} s ({seconds / 60:.1f} min)",
          flush=True)  # fmt: skip
    return dict(steps=steps, loss=float(np.mean(losses[-log_every:])), seconds=seconds)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``python benchmarks/training/train_latent.py --help``)."""
    p = argparse.ArgumentParser(prog="python benchmarks/training/train_latent.py",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("stage", choices=("vae", "transformer"))
    p.add_argument("--out", default="ug_core/assets/latent_flow", help="pipeline folder")
    p.add_argument("--steps", type=int, help="default: 3000 (vae), 6000 (transformer)")
    p.add_argument("--batch-size", type=int, help="default: 32 (vae), 128 (transformer)")
    p.add_argument("--lr", type=float, help="default: 1e-3 (vae), 3e-4 (transformer)")
    p.add_argument("--pool", type=int, help="default: 20000 (vae), 60000 (transformer)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--no-position-jitter", action="store_true",
                   help="transformer: train on the grid's centre crop only")  # fmt: skip
    p.add_argument("--init", default=None, help="transformer: continue from this pipeline folder")
    a = p.parse_args(argv)
    given = {k: v for k, v in dict(steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                                    pool=a.pool).items() if v is not None}  # fmt: skip
    if a.stage == "transformer":
        given.update(position_jitter=not a.no_position_jitter, init=a.init)
    fn = train_vae if a.stage == "vae" else train_transformer
    fn(a.out, seed=a.seed, save_every=a.save_every, threads=a.threads, device=a.device,
       log_every=a.log_every, **given)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
