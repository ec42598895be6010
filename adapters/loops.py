"""Raw DDPM (ancestral) and DDIM sampling loops over a :class:`~ug_core.DiscreteSchedule`.

``model(x, t, **extra_args) -> prediction``, with ``t`` an integer timestep tensor of shape
``(batch,)``; an optional :class:`~ug_core.UpsampleGuidance` wraps it. Timesteps are evenly spaced
from N − 1 down to 0, and the last step goes to ᾱ = 1 (it returns the final x0 estimate).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ..guidance import UpsampleGuidance
from ..parameterizations import normalize_prediction, prediction_to_x0, x0_to_prediction
from ..schedules import DiscreteSchedule

__all__ = ["sample_ddim", "sample_ddpm", "loop_timesteps"]


def loop_timesteps(schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    """``steps`` integer timesteps, evenly spaced from N − 1 down to 0 (int64, descending)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    n = schedule.num_timesteps
    if steps > n:
        raise ValueError(f"steps={steps} exceeds the schedule's {n} timesteps")
    if steps == 1:
        return torch.tensor([n - 1])
    return torch.linspace(n - 1, 0, steps, dtype=torch.float64).round().long()


def _initial_noise(
    shape: Sequence[int] | None,
    noise: torch.Tensor | None,
    generator: torch.Generator | None,
    dtype: torch.dtype,
    device: torch.device | str | None,
) -> torch.Tensor:
    """x_T: the given noise, or standard normal noise of ``shape`` drawn from ``generator``."""
    if (shape is None) == (noise is None):
        raise ValueError("pass exactly one of shape= (to draw x_T) or noise= (x_T itself)")
    if noise is not None:
        if not isinstance(noise, torch.Tensor):
            raise TypeError(f"noise must be a torch.Tensor, got {type(noise).__name__}")
        return noise
    if device is None:
        device = generator.device if generator is not None else "cpu"
    return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)


def sample_ddim(
    model: Callable[..., torch.Tensor],
    schedule: DiscreteSchedule,
    steps: int = 50,
    generator: torch.Generator | None = None,
    guidance: UpsampleGuidance | None = None,
    *,
    shape: Sequence[int] | None = None,
    noise: torch.Tensor | None = None,
    ddim_eta: float = 0.0,
    prediction: str | None = None,
    extra_args: dict[str, Any] | None = None,
    clip_sample: float | None = None,
    progress: bool = True,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """DDIM sampling; returns the final sample x0.

    ``ddim_eta`` is DDIM's stochasticity (Song et al. 2021): 0 (default) is deterministic DDIM, 1
    is DDPM ancestral sampling on the strided steps. (Upsample guidance's own η, the gate on the
    time axis, is ``UpsampleGuidance(eta=...)``.) ``prediction`` defaults to the guidance's, else
    ``"epsilon"``. Pass ``shape`` to draw x_T from ``generator``, or ``noise`` to give x_T.
    ``extra_args`` reach every model call (both branches).
    """
    if not isinstance(schedule, DiscreteSchedule):
        raise TypeError(f"schedule must be a DiscreteSchedule, got {type(schedule).__name__}")
    if guidance is not None and not isinstance(guidance, UpsampleGuidance):
        raise TypeError(f"guidance must be an UpsampleGuidance, got {type(guidance).__name__}")
    if guidance is not None:
        if prediction is not None and normalize_prediction(prediction) != guidance.prediction:
            raise ValueError(
                f"prediction={prediction!r} differs from the guidance's {guidance.prediction!r}"
            )
        prediction = guidance.prediction
    prediction = normalize_prediction(prediction or "epsilon")
    extra_args = extra_args or {}
    x = _initial_noise(shape, noise, generator, dtype, device)
    ts = loop_timesteps(schedule, steps)
    if guidance is not None:
        guidance.precompute(ts)  # the loop's times are known on the host: nothing is read back
    ac = schedule.alphas_cumprod
    desc = "DDPM" if ddim_eta == 1.0 else "DDIM"
    for i, t in enumerate(tqdm(ts.tolist(), desc=desc, disable=not progress)):
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        if guidance is None:
            pred = model(x, t_batch, **extra_args)
        else:
            pred = guidance(model, x, t_batch, host_time=t, **extra_args)
        a_t, s_t = ac[t].sqrt().item(), (1 - ac[t]).sqrt().item()
        ac_prev = ac[ts[i + 1]].item() if i + 1 < len(ts) else 1.0
        x0 = prediction_to_x0(pred, x, a_t, s_t, prediction)
        if clip_sample is not None:
            x0 = x0.clamp(-clip_sample, clip_sample)
        eps = x0_to_prediction(x0, x, a_t, s_t, "epsilon")
        var = ddim_eta**2 * (1 - ac_prev) / (1 - ac[t].item()) * (1 - ac[t].item() / ac_prev)
        x = ac_prev**0.5 * x0 + max(1 - ac_prev - var, 0.0) ** 0.5 * eps
        if var > 0:
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            x = x + var**0.5 * z
    return x


def sample_ddpm(
    model: Callable[..., torch.Tensor],
    schedule: DiscreteSchedule,
    steps: int = 1000,
    *args: Any,
    **options: Any,
) -> torch.Tensor:
    """DDPM ancestral sampling: each step draws x_prev from the posterior q(x_prev | x_t, x0̂).

    With fewer steps than the schedule has, the posterior is that of the strided chain: this is
    :func:`sample_ddim` with ``ddim_eta=1``, and takes its other arguments (``generator``,
    ``guidance``, then its keywords).
    """
    return sample_ddim(model, schedule, steps, *args, ddim_eta=1.0, **options)
