"""Train the embedded video model: a class-conditional UNetMotionModel on 8×32×32 moving shapes.

Reproducible and seeded, on the CPU or a GPU, from the repository root::

    python benchmarks/training/train_video.py --out ug_core/assets/video32

writes ``config.json`` + ``diffusion_pytorch_model.safetensors`` (``UNetMotionModel``, the EMA
weights), ``class_embeddings.safetensors`` (the learned class tokens, EMA; the last row is the
null class), ``scheduler_config.json`` (a ``DDIMScheduler``), ``classes.json`` and
``training_log.json``, every ``--save-every`` steps (so a cut-off run leaves usable weights, and
``--resume`` continues it from ``resume.pt``).

The data are :mod:`ug_core.demo.moving_shapes` clips rendered on the fly: the clips of step ``i``
come from the seed ``(seed, i)``, so any prefix of a run is a shorter run, and a resumed run is
the uninterrupted one. The class of a clip is dropped to the null class with probability
``--cfg-dropout`` (classifier-free guidance). Like AnimateDiff, the 2-D part starts from an image
model: by default the embedded shapes model (``--init shapes32``; its resnets, convolutions and
time embedding are copied, its null-class embedding folded into the time embedding's bias), and
the new layers' output projections (motion modules, class cross-attention) start at zero, so
that step 0 is the image model run frame by frame. Unlike AnimateDiff, every weight is trained.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from train import ema_update, optimizer_step  # benchmarks/training/train.py

from ug_core.demo import moving_shapes
from ug_core.demo.shapes import CLASSES
from ug_core.demo.video import (
    SCHEDULER_CONFIG,
    TOKEN_DIM,
    TOKENS,
    TRAINED_FRAMES,
    TRAINED_SIZE,
    build_unet,
)

__all__ = ["VideoNet", "init_from_image_model", "train", "main"]


class VideoNet(torch.nn.Module):
    """The trained parameters: the UNetMotionModel and the class tokens (null class last)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.unet = build_unet(seed)
        gen = torch.Generator().manual_seed(seed + 7)
        tokens = torch.randn(len(CLASSES) + 1, TOKENS, TOKEN_DIM, generator=gen) * 0.5
        self.class_tokens = torch.nn.Parameter(tokens)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The epsilon prediction for clips ``x`` (B, 3, F, H, W), called as the pipeline does."""
        tokens = self.class_tokens[labels].repeat_interleave(x.shape[2], dim=0)  # per frame
        return self.unet(x, t, encoder_hidden_states=tokens).sample


def init_from_image_model(unet: torch.nn.Module, folder: str | Path) -> dict[str, int]:
    """Start ``unet``'s 2-D part from a ``UNet2DModel`` folder (the embedded shapes model).

    Copies every parameter whose name and shape match; folds the image model's null-class
    embedding into the time embedding's output bias (the image model added it to the time
    embedding); zeroes the output projections of the motion modules and of the cross-attention
    transformers, so that they start as the identity. Returns counts of what was done.
    """
    from diffusers import UNet2DModel

    image = UNet2DModel.from_pretrained(folder, local_files_only=True)
    src = image.state_dict()
    dst = unet.state_dict()
    copied = {k: v for k, v in src.items() if k in dst and dst[k].shape == v.shape}
    meta_file = Path(folder) / "classes.json"
    null = json.loads(meta_file.read_text()).get("null_class") if meta_file.is_file() else None
    if null is not None and "class_embedding.weight" in src:
        bias = "time_embedding.linear_2.bias"
        copied[bias] = src[bias] + src["class_embedding.weight"][null]
    zeroed = 0
    with torch.no_grad():
        unet.load_state_dict(copied, strict=False)
        for name, module in unet.named_modules():
            if name.endswith("proj_out") and ("motion_modules" in name or "attentions" in name):
                for p in module.parameters():
                    p.zero_()
                zeroed += 1
    return {"copied": len(copied), "zeroed": zeroed, "total": len(dst)}


def _alphas_cumprod() -> torch.Tensor:
    """ᾱ of the linear schedule in :data:`SCHEDULER_CONFIG`, float32."""
    c = SCHEDULER_CONFIG
    betas = torch.linspace(c["beta_start"], c["beta_end"], c["num_train_timesteps"])
    return torch.cumprod(1.0 - betas.double(), 0).float()


def _batch(step: int, seed: int, batch_size: int, cfg_dropout: float) -> tuple:
    """The clips (B, 3, 8, 32, 32) and labels of ``step``: from the seed ``(seed, step)``."""
    rng = np.random.default_rng([seed, step])
    clips = moving_shapes.sample_clips(batch_size, rng)
    x0 = moving_shapes.render_clips(clips, TRAINED_FRAMES, TRAINED_SIZE)
    labels = torch.as_tensor(clips.label)
    labels[torch.as_tensor(rng.uniform(size=batch_size) < cfg_dropout)] = len(CLASSES)
    return x0, labels


def _save(out: Path, ema: VideoNet, info: dict[str, Any]) -> None:
    """Write the EMA model's files (see the module docstring)."""
    from diffusers import DDIMScheduler
    from safetensors.torch import save_file

    ema.unet.save_pretrained(out, safe_serialization=True)
    save_file(
        {"class_tokens": ema.class_tokens.detach().cpu().contiguous()},
        out / "class_embeddings.safetensors",
    )
    DDIMScheduler(**SCHEDULER_CONFIG).save_config(out)
    meta = dict(
        classes=list(CLASSES) + ["none"],
        null_class=len(CLASSES),
        trained_frames=TRAINED_FRAMES,
        trained_size=TRAINED_SIZE,
    )
    (out / "classes.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out / "training_log.json").write_text(json.dumps(info, indent=2) + "\n")


def train(
    out: str | Path,
    steps: int = 3000,
    batch_size: int = 16,
    lr: float = 3e-4,
    seed: int = 0,
    cfg_dropout: float = 0.1,
    ema_decay: float = 0.995,
    warmup: int = 100,
    save_every: int = 100,
    threads: int = 1,
    log_every: int = 10,
    device: str = "cpu",
    init: str | None = "shapes32",
    resume: bool = False,
) -> dict[str, Any]:
    """Train and save the model into ``out``; returns a summary (steps, loss, seconds).

    ``init`` is ``"shapes32"`` (the embedded image model), a ``UNet2DModel`` folder, or None
    (random). With ``resume``, continue from ``out/resume.pt`` if it exists.
    """
    torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    net = VideoNet(seed)
    init_info = None
    if init is not None:
        from ug_core.demo.model import ASSET_DIR as SHAPES_DIR

        folder = SHAPES_DIR if init == "shapes32" else Path(init)
        init_info = init_from_image_model(net.unet, folder)
        print(f"initialised from {folder}: {init_info}", flush=True)
    net.to(device)
    ema = copy.deepcopy(net).requires_grad_(False)
    n_params = sum(p.numel() for p in net.unet.parameters())
    print(f"UNetMotionModel: {n_params / 1e6:.3f} M parameters", flush=True)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warmup))
    ac = _alphas_cumprod()
    gen = torch.Generator().manual_seed(seed + 1)
    losses: list[float] = []
    first, elapsed = 1, 0.0
    ckpt = out / "resume.pt"
    if resume and ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        net.load_state_dict(state["net"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        gen.set_state(state["gen"])
        losses, first, elapsed = state["losses"], state["step"] + 1, state["seconds"]
        print(f"resumed at step {first - 1} ({elapsed:.0f} s so far)", flush=True)
    start -= elapsed

    def save(step: int) -> None:
        seconds = round(time.time() - start, 1)
        info = dict(
            step=step, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
            cfg_dropout=cfg_dropout, ema_decay=ema_decay, warmup=warmup, threads=threads,
            device=device, init=init, init_info=init_info, seconds=seconds,
            loss=float(np.mean(losses[-log_every * 5 :])) if losses else None,
            parameters=n_params,
        )  # fmt: skip
        _save(out, ema, info)
        state = dict(
            net=net.state_dict(), ema=ema.state_dict(), opt=opt.state_dict(),
            sched=sched.state_dict(), gen=gen.get_state(), losses=losses, step=step,
            seconds=seconds,
        )  # fmt: skip
        torch.save(state, out / "resume.tmp")
        os.replace(out / "resume.tmp", ckpt)

    net.train()
    for step in range(first, steps + 1):
        x0, labels = _batch(step, seed, batch_size, cfg_dropout)
        x0, labels = x0.to(device), labels.to(device)
        t = torch.randint(0, len(ac), (batch_size,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen).to(device)
        a = ac[t].view(-1, 1, 1, 1, 1).to(device)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        loss = torch.nn.functional.mse_loss(net(xt, t.to(device), labels), eps)
        optimizer_step(loss, net.parameters(), opt, sched)
        ema_update(ema, net, step, ema_decay)
        losses.append(loss.item())
        if step % log_every == 0 or step == steps:
            print(
                f"step {step}/{steps} loss {np.mean(losses[-log_every:]):.4f} "
                f"{time.time() - start:.0f} s",
                flush=True,
            )
        if step % save_every == 0 or step == steps:
            save(step)
    seconds = time.time() - start
    print(f"done: {steps} steps in {seconds:.0f} s ({seconds / 60:.1f} min)", flush=True)
    tail = losses[-log_every:]
    return dict(steps=steps, loss=float(np.mean(tail)) if tail else None, seconds=seconds)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``python benchmarks/training/train_video.py --help``)."""
    p = argparse.ArgumentParser(
        prog="python benchmarks/training/train_video.py", description=__doc__
    )
    p.add_argument("--out", default="ug_core/assets/video32", help="output folder")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=16, help="clips per step")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cfg-dropout", type=float, default=0.1)
    p.add_argument("--ema-decay", type=float, default=0.995)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument(
        "--init", default="shapes32", help="shapes32 (default), a UNet2DModel folder, or none"
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT/resume.pt")
    a = p.parse_args(argv)
    train(
        a.out, a.steps, a.batch_size, a.lr, a.seed, a.cfg_dropout, a.ema_decay, a.warmup,
        a.save_every, a.threads, a.log_every, a.device,
        None if a.init == "none" else a.init, a.resume,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
