"""Train the domain encoder (``benchmarks/domain_encoder.py``): the domain Fréchet features.

Reproducible and seeded, on the CPU or a GPU, from the repository root::

    python benchmarks/training/train_encoder.py --out benchmarks/assets/domain_encoder

The data: for each of 32, 64 and 96 pixels a pool of scenes (half flat, half textured; a fraction
``--two-objects`` with a second shape), rendered from the seed, with random horizontal and vertical
flips (the targets' centre flips with them). Each step takes a batch from one resolution, in turn.
The loss sums binary cross-entropies (classes present, two objects, textured) and a masked mean
squared error on the unit-scaled regression targets. Writes ``config.json``, ``model.safetensors``
and ``training_log.json`` (with held-out accuracies per resolution) every ``--save-every`` steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from train import optimizer_step  # benchmarks/training/train.py

from ug_core.demo import textured

BENCHMARKS = str(Path(__file__).resolve().parents[1])  # benchmarks/, where the encoder is
if BENCHMARKS not in sys.path:  # run as a script: only benchmarks/training/ is on the path
    sys.path.insert(0, BENCHMARKS)

from domain_encoder import TARGETS, DomainEncoder, scene_targets  # noqa: E402

__all__ = ["RESOLUTIONS", "render_scene_pool", "train_encoder", "main"]

#: Training resolutions and pool sizes (scenes per resolution).
RESOLUTIONS = {32: 12000, 64: 8000, 96: 6000}


def render_scene_pool(
    n: int, size: int, rng: np.random.Generator, two_objects: float = 0.3
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``n`` scenes at ``size`` (half flat, half textured) as float16 images, and their targets."""
    half = n // 2
    parts = [
        textured.sample_scene_params(half, rng, textured=False, two_objects=two_objects),
        textured.sample_scene_params(n - half, rng, textured=True, two_objects=two_objects),
    ]
    images, targets = [], []
    for params in parts:
        for i in range(0, len(params), 500):
            chunk = params[i : i + 500]
            images.append(textured.render(chunk, size).half())
            targets.append(scene_targets(chunk))
    return torch.cat(images), {k: torch.cat([t[k] for t in targets]) for k in targets[0]}


def _flip(x: torch.Tensor, tg: dict, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
    """Random horizontal and vertical flips, with the centre targets flipped to match."""
    tg = {k: v.clone() for k, v in tg.items()}
    for axis, col in ((-1, TARGETS.index("center_u")), (-2, TARGETS.index("center_v"))):
        flip = torch.rand(len(x), generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(axis), x)
        tg["regression"][flip, col] *= -1
    return x, tg


def _loss(out: dict, tg: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss and its parts."""
    parts = dict(
        classes=F.binary_cross_entropy_with_logits(out["classes"], tg["classes"]),
        count=F.binary_cross_entropy_with_logits(out["count"], tg["count"]),
        textured=F.binary_cross_entropy_with_logits(out["textured"], tg["textured"]),
        regression=((out["regression"] - tg["regression"]) ** 2 * tg["mask"]).sum()
        / tg["mask"].sum(),
    )
    return sum(parts.values()), {k: v.item() for k, v in parts.items()}


@torch.no_grad()
def evaluate(model: DomainEncoder, images: torch.Tensor, tg: dict) -> dict[str, float]:
    """Held-out accuracies and the regression's R² (over all targets) on one pool."""
    model.eval()
    outs = [model(images[i : i + 256].float()) for i in range(0, len(images), 256)]
    model.train()
    out = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
    resid = ((out["regression"] - tg["regression"]) ** 2 * tg["mask"]).sum(0)
    var = ((tg["regression"] - tg["regression"].mean(0)) ** 2 * tg["mask"]).sum(0)
    return dict(
        class_accuracy=float(((out["classes"] > 0) == (tg["classes"] > 0.5)).all(1).float().mean()),
        count_accuracy=float(((out["count"] > 0) == (tg["count"] > 0.5)).float().mean()),
        textured_accuracy=float(((out["textured"] > 0) == (tg["textured"] > 0.5)).float().mean()),
        regression_r2=float(1 - resid.sum() / var.sum()),
    )


def train_encoder(
    out: str | Path,
    steps: int = 2500,
    batch_size: int = 48,
    lr: float = 1e-3,
    seed: int = 0,
    pools: dict[int, int] | None = None,
    two_objects: float = 0.3,
    held_out: int = 256,
    cache: str | Path | None = None,
    warmup: int = 100,
    save_every: int = 250,
    threads: int = 1,
    log_every: int = 50,
    device: str = "cpu",
    init: str | Path | None = None,
) -> dict:
    """Train the encoder and save it into ``out``; returns a summary.

    ``init``: an encoder folder (``model.safetensors``) to start from instead of random weights,
    to continue a run in stages (the data, the batches and the schedule restart from ``seed``).

    ``cache``: a file to keep the rendered pools in (rendered and saved if absent, loaded if it
    exists), so that a restarted run skips the rendering.
    """
    from safetensors.torch import save_file

    torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pools = dict(RESOLUTIONS if pools is None else pools)
    start = time.time()
    if cache is not None and Path(cache).is_file():
        data, held = torch.load(cache)
    else:
        rng = np.random.default_rng(seed)
        data = {s: render_scene_pool(n, s, rng, two_objects) for s, n in pools.items()}
        held = {s: render_scene_pool(held_out, s, rng, two_objects) for s in pools}
        if cache is not None:
            torch.save((data, held), cache)
    print(f"rendered {sum(pools.values())} scenes in {time.time() - start:.1f} s", flush=True)
    torch.manual_seed(seed)
    model = DomainEncoder().to(device)
    if init is not None:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(Path(init) / "model.safetensors")))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"DomainEncoder: {n_params / 1e6:.3f} M parameters", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warmup))
    gen = torch.Generator().manual_seed(seed + 1)
    sizes = list(pools)
    history: list[dict[str, float]] = []

    def save(step: int) -> dict:
        scores = {str(s): evaluate(model, held[s][0].to(device), held[s][1]) for s in sizes}
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, out / "model.safetensors")
        (out / "config.json").write_text(json.dumps(model.config, indent=2) + "\n")
        info = dict(
            step=step, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
            pools={str(k): v for k, v in pools.items()}, two_objects=two_objects,
            threads=threads, device=device, parameters=n_params,
            init=None if init is None else str(init),
            seconds=round(time.time() - start, 1),
            loss={k: float(np.mean([h[k] for h in history[-log_every:]])) for k in history[0]}
            if history else None,
            held_out=scores,
        )  # fmt: skip
        (out / "training_log.json").write_text(json.dumps(info, indent=2) + "\n")
        return scores

    model.train()
    for step in range(1, steps + 1):
        size = sizes[(step - 1) % len(sizes)]
        images, tg = data[size]
        idx = torch.randint(0, len(images), (batch_size,), generator=gen)
        x, t = _flip(images[idx].float(), {k: v[idx] for k, v in tg.items()}, gen)
        loss, parts = _loss(model(x.to(device)), {k: v.to(device) for k, v in t.items()})
        optimizer_step(loss, model.parameters(), opt, sched)
        history.append(parts)
        if step % log_every == 0 or step == steps:
            mean = {k: np.mean([h[k] for h in history[-log_every:]]) for k in parts}
            parts_text = " ".join(f"{k} {v:.4f}" for k, v in mean.items())
            print(
                f"encoder step {step}/{steps} {parts_text} {time.time() - start:.0f} s", flush=True
            )
        if step % save_every == 0 or step == steps:
            print(f"  held out: {json.dumps(save(step))}", flush=True)
    seconds = time.time() - start
    print(f"encoder done: {steps} steps in {seconds:.0f} s ({seconds / 60:.1f} min)", flush=True)
    return dict(steps=steps, seconds=seconds)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``python benchmarks/training/train_encoder.py --help``)."""
    p = argparse.ArgumentParser(prog="python benchmarks/training/train_encoder.py",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--out", default="benchmarks/assets/domain_encoder", help="output folder")
    p.add_argument("--steps", type=int, default=2500)
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pool-scale", type=float, default=1.0,
                   help="multiply the pool sizes (32: 12000, 64: 8000, 96: 6000)")  # fmt: skip
    p.add_argument("--two-objects", type=float, default=0.3)
    p.add_argument("--held-out", type=int, default=256, help="held-out scenes per resolution")
    p.add_argument("--cache", default=None, help="file to keep the rendered pools in")
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--init", default=None, help="an encoder folder to continue from")
    a = p.parse_args(argv)
    pools = {s: max(2, int(n * a.pool_scale)) for s, n in RESOLUTIONS.items()}
    train_encoder(
        a.out, a.steps, a.batch_size, a.lr, a.seed, pools, a.two_objects, a.held_out, a.cache,
        save_every=a.save_every, threads=a.threads, log_every=a.log_every, device=a.device,
        init=a.init,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
