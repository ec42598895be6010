"""Train the embedded demo model: a small class-conditional diffusers UNet2DModel on 32×32 shapes.

Reproducible and seeded, on the CPU::

    python benchmarks/training/train.py --out ug_core/assets/shapes32

writes ``config.json`` + ``diffusion_pytorch_model.safetensors`` (``UNet2DModel.save_pretrained``,
the EMA weights) and ``scheduler_config.json`` (a ``DDPMScheduler``: 1000 steps, linear betas,
epsilon prediction; :data:`ug_core.demo.model.SCHEDULER_CONFIG`) and ``classes.json`` (the class
names and the null class), and logs the loss and the wall time. The data are
:mod:`ug_core.demo.shapes` images rendered at 32×32 from a fixed seed (a pool, with random
horizontal flips, which leave the distribution unchanged). Class ``len(CLASSES)`` is the null class:
labels are dropped to it with probability ``--cfg-dropout`` so that classifier-free guidance works.

``--data textured`` trains on :mod:`ug_core.demo.textured` scenes instead (the same shapes filled
with fractal texture on a textured background): the shipped ``textured32`` model.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from ug_core.demo import textured as textured_data
from ug_core.demo.model import SCHEDULER_CONFIG
from ug_core.demo.shapes import CLASSES, render, sample_params

__all__ = [
    "DATASETS",
    "MODEL_CONFIG",
    "SCHEDULER_CONFIG",
    "build_model",
    "ema_update",
    "optimizer_step",
    "render_pool",
    "train",
    "main",
]

#: Training data: the flat shapes dataset or the textured scenes.
DATASETS = ("flat", "textured")

#: The UNet2DModel's configuration (about 1.1 M parameters, 4.5 MB in float32).
MODEL_CONFIG = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
    attention_head_dim=32,
    num_class_embeds=len(CLASSES) + 1,
)


def build_model(seed: int = 0):
    """A freshly initialised UNet2DModel with :data:`MODEL_CONFIG` (seeded)."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(**MODEL_CONFIG)


def _alphas_cumprod() -> torch.Tensor:
    """ᾱ of the linear schedule in :data:`SCHEDULER_CONFIG`, float32."""
    c = SCHEDULER_CONFIG
    betas = torch.linspace(c["beta_start"], c["beta_end"], c["num_train_timesteps"])
    return torch.cumprod(1.0 - betas.double(), 0).float()


def optimizer_step(loss: torch.Tensor, params, opt, sched) -> None:
    """One step on ``loss``: gradients clipped to norm 1, then the learning-rate schedule's step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float) -> None:
    """EMA of the parameters, with the usual warm-up of the decay."""
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - d)


def render_pool(pool: int, seed: int, data: str = "flat", size: int = 32):
    """``pool`` training images at ``size`` and their labels, rendered from ``seed`` in chunks."""
    if data not in DATASETS:
        raise ValueError(f"data must be one of {DATASETS}, got {data!r}")
    rng = np.random.default_rng(seed)
    if data == "flat":
        params = sample_params(pool, rng)
        chunks = [render(params[i : i + 1000], size) for i in range(0, pool, 1000)]
        return torch.cat(chunks), torch.as_tensor(params.label)
    scenes = textured_data.sample_scene_params(pool, rng)
    chunks = [textured_data.render(scenes[i : i + 1000], size) for i in range(0, pool, 1000)]
    return torch.cat(chunks), torch.as_tensor(scenes.shape.label)


def train(
    out: str | Path,
    steps: int = 5500,
    batch_size: int = 128,
    lr: float = 5e-4,
    seed: int = 0,
    pool: int = 80000,
    cfg_dropout: float = 0.1,
    ema_decay: float = 0.999,
    warmup: int = 200,
    save_every: int = 250,
    threads: int = 2,
    log_every: int = 50,
    device: str = "cpu",
    data: str = "flat",
    init: str | Path | None = None,
) -> dict:
    """Train and save the model into ``out``; returns a summary (steps, loss, seconds).

    The defaults are the embedded model's settings (``ug_core/assets/shapes32/TRAINING.md``);
    ``data="textured"`` trains on the textured scenes (``ug_core/assets/textured32``). ``init``: a
    UNet2DModel folder with the same configuration to start from (fine-tuning) instead of a fresh
    initialisation.
    """
    from diffusers import DDPMScheduler

    torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    # The data: a pool of 32×32 images rendered from the seed, in chunks.
    images, labels = render_pool(pool, seed, data)
    images, labels = images.to(device), labels.to(device)
    print(f"rendered {pool} images in {time.time() - start:.1f} s", flush=True)

    model = build_model(seed)
    if init is not None:
        from diffusers import UNet2DModel

        start_from = UNet2DModel.from_pretrained(init, local_files_only=True)
        try:
            model.load_state_dict(start_from.state_dict())
        except RuntimeError as err:
            raise ValueError(f"init={str(init)!r} does not match MODEL_CONFIG: {err}") from None
        print(f"initialised from {init}", flush=True)
    model = model.to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"UNet2DModel: {n_params / 1e6:.2f} M parameters", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda i: min(1.0, (i + 1) / warmup),  # constant after warm-up: any prefix is a run
    )
    ac = _alphas_cumprod()
    gen = torch.Generator().manual_seed(seed + 1)
    null = len(CLASSES)
    losses: list[float] = []

    def save(step: int) -> None:
        ema.save_pretrained(out, safe_serialization=True)
        DDPMScheduler(**SCHEDULER_CONFIG).save_config(out)
        meta = dict(classes=list(CLASSES) + ["none"], null_class=null, data=data)
        (out / "classes.json").write_text(json.dumps(meta, indent=2) + "\n")
        info = dict(
            step=step,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            pool=pool,
            cfg_dropout=cfg_dropout,
            ema_decay=ema_decay,
            threads=threads,
            data=data,
            init=None if init is None else str(init),
            seconds=round(time.time() - start, 1),
            loss=float(np.mean(losses[-log_every:])) if losses else None,
        )
        (out / "training_log.json").write_text(json.dumps(info, indent=2) + "\n")

    model.train()
    for step in range(1, steps + 1):
        idx = torch.randint(0, pool, (batch_size,), generator=gen).to(device)
        x0 = images[idx]
        flip = torch.rand(batch_size, generator=gen) < 0.5
        x0 = torch.where(flip[:, None, None, None].to(device), x0.flip(-1), x0)
        y = labels[idx].clone()
        y[torch.rand(batch_size, generator=gen).to(device) < cfg_dropout] = null
        t = torch.randint(0, len(ac), (batch_size,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen).to(device)
        a = ac[t].view(-1, 1, 1, 1).to(device)
        t = t.to(device)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        pred = model(xt, t, class_labels=y).sample
        loss = torch.nn.functional.mse_loss(pred, eps)
        optimizer_step(loss, model.parameters(), opt, sched)
        ema_update(ema, model, step, ema_decay)
        losses.append(loss.item())
        if step % log_every == 0 or step == steps:
            print(
                f"step {step}/{steps} loss {np.mean(losses[-log_every:]):.4f} "
                f"lr {sched.get_last_lr()[0]:.2e} {time.time() - start:.0f} s",
                flush=True,
            )
        if step % save_every == 0 or step == steps:
            save(step)
    seconds = time.time() - start
    print(f"done: {steps} steps in {seconds:.0f} s ({seconds / 60:.1f} min)", flush=True)
    return dict(steps=steps, loss=float(np.mean(losses[-log_every:])), seconds=seconds)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``python benchmarks/training/train.py --help``)."""
    p = argparse.ArgumentParser(prog="python benchmarks/training/train.py", description=__doc__)
    p.add_argument("--out", default="ug_core/assets/shapes32", help="output folder")
    # The defaults are the embedded model's settings (ug_core/assets/shapes32/TRAINING.md).
    p.add_argument("--steps", type=int, default=5500)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pool", type=int, default=80000, help="number of pre-rendered images")
    p.add_argument("--cfg-dropout", type=float, default=0.1)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--data", choices=DATASETS, default="flat",
                   help="flat shapes (shapes32) or textured scenes (textured32)")  # fmt: skip
    p.add_argument("--init", default=None,
                   help="UNet2DModel folder to start from (fine-tuning)")  # fmt: skip
    a = p.parse_args(argv)
    train(
        a.out, a.steps, a.batch_size, a.lr, a.seed, a.pool, a.cfg_dropout, a.ema_decay,
        save_every=a.save_every, threads=a.threads, device=a.device,
        log_every=a.log_every, data=a.data, init=a.init,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
