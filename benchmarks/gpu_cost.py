"""UG's cost on a GPU: full-size architectures with random weights, in real diffusers pipelines.

For each model (SD1.5's UNet at 1024², SDXL's at 2048², SD3-medium's transformer at 2048², all at
2x their trained size), in one process with interleaved rounds, fp16, DPM++ 2M (UNets) or
FlowMatch Euler (SD3), 20 steps, CFG (batch 2), output as latents:

- wall time of the plain pipeline, and of UG (θ = 1) at η = 0.6 and η = 1, eager and with the
  graph option (``torch.compile(denoiser, mode="reduce-overhead")``, against the plain pipeline
  compiled the same way), and with ``scale=0``;
- one denoiser call at the high and at the trained size, eager and replayed as a CUDA graph;
- the compute floor ``η × (low call / high call)`` from the graph replays;
- peak memory of each run;
- HiDiffusion (``apply_hidiffusion``) as a peer, where it is installed.

The pipelines share one denoiser: UG is applied to its own pipeline objects, and a pipeline
whose application is not sampling leaves the denoiser's calls alone, so no case recompiles
another's graphs. ``--smoke`` runs tiny configs on the CPU in seconds (the test suite runs it).
Run from the repository root::

    python benchmarks/gpu_cost.py --output benchmarks/results/gpu_cost-h200.md
    python benchmarks/gpu_cost.py --smoke
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from ug_core.adapters.diffusers import apply_upsample_guidance  # noqa: E402

# ---------------------------------------------------------------------- architectures
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768,
    attention_head_dim=8,
)
SDXL_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    use_linear_projection=True,
)
#: SD3 medium's shape: SD3Transformer2DModel's defaults (SD3 at 1024 px) with 24 layers and heads.
SD3_MEDIUM = dict(
    num_layers=24, num_attention_heads=24, caption_projection_dim=1536, pos_embed_max_size=192
)


def vae(latent_channels: int, blocks: int, seed: int = 1):
    """A small AutoencoderKL with the scale factor ``2**(blocks-1)`` (only its config is used)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=(8,) * blocks,
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
    )


@dataclass
class Model:
    """One benchmarked model: how to build its pipeline, call it, and its trained size."""

    name: str
    build: Callable[[], Any]
    call: Callable[[int, int], dict]  # (pixels, steps) -> pipeline kwargs
    trained: int  # pixels
    attr: str  # "unet" or "transformer"
    denoiser_inputs: Callable[[int], dict]  # latent size -> one denoiser call's kwargs


def _embeds(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def full_models(device: torch.device, dtype: torch.dtype) -> list[Model]:
    """SD1.5 and SDXL UNets and SD3-medium's transformer, full size, random weights."""
    from diffusers import (
        DPMSolverMultistepScheduler,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    def dpm():
        return DPMSolverMultistepScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
        )

    def on_device(module):
        return module.to(device=device, dtype=dtype).eval()

    def sd15():
        with torch.device(device):
            unet = UNet2DConditionModel(**SD15_UNET)
        return StableDiffusionPipeline(
            vae=on_device(vae(4, 4)), text_encoder=None, tokenizer=None, unet=on_device(unet),
            scheduler=dpm(), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )  # fmt: skip

    def sdxl():
        with torch.device(device):
            unet = UNet2DConditionModel(**SDXL_UNET)
        return StableDiffusionXLPipeline(
            vae=on_device(vae(4, 4)), text_encoder=None, text_encoder_2=None, tokenizer=None,
            tokenizer_2=None, unet=on_device(unet), scheduler=dpm(), add_watermarker=False,
        )  # fmt: skip

    def sd3():
        with torch.device(device):
            transformer = SD3Transformer2DModel(**SD3_MEDIUM)
        return StableDiffusion3Pipeline(
            transformer=on_device(transformer), vae=on_device(vae(16, 4)),
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), text_encoder=None,
            tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None,
            tokenizer_3=None,
        )  # fmt: skip

    def sd_call(size: int, steps: int) -> dict:
        return dict(
            prompt_embeds=_embeds(1, 77, 768).to(device, dtype),
            negative_prompt_embeds=_embeds(1, 77, 768, seed=1).to(device, dtype),
            height=size, width=size, num_inference_steps=steps, guidance_scale=7.0,
            output_type="latent", generator=torch.Generator(device).manual_seed(0),
        )  # fmt: skip

    def pooled_call(tokens: int, dim: int, pooled: int):
        """The call arguments of a pipeline with pooled text embeddings (SDXL, SD3)."""

        def call(size: int, steps: int) -> dict:
            return dict(
                prompt_embeds=_embeds(1, tokens, dim).to(device, dtype),
                negative_prompt_embeds=_embeds(1, tokens, dim, seed=1).to(device, dtype),
                pooled_prompt_embeds=_embeds(1, pooled).to(device, dtype),
                negative_pooled_prompt_embeds=_embeds(1, pooled, seed=1).to(device, dtype),
                height=size, width=size, num_inference_steps=steps, guidance_scale=7.0,
                output_type="latent", generator=torch.Generator(device).manual_seed(0),
            )  # fmt: skip

        return call

    sdxl_call, sd3_call = pooled_call(77, 2048, 1280), pooled_call(333, 4096, 2048)

    def unet_inputs(dim: int, sdxl_ids: bool = False):
        def inputs(latent: int) -> dict:
            kw = dict(
                sample=torch.randn(2, 4, latent, latent, device=device, dtype=dtype),
                timestep=torch.tensor(500, device=device),
                encoder_hidden_states=torch.randn(2, 77, dim, device=device, dtype=dtype),
            )
            if sdxl_ids:
                kw["added_cond_kwargs"] = {
                    "text_embeds": torch.randn(2, 1280, device=device, dtype=dtype),
                    "time_ids": torch.tensor([[latent * 8.0] * 2 + [0.0] * 2 + [latent * 8.0] * 2]
                                             * 2, device=device, dtype=dtype),
                }  # fmt: skip
            return kw

        return inputs

    def sd3_inputs(latent: int) -> dict:
        return dict(
            hidden_states=torch.randn(2, 16, latent, latent, device=device, dtype=dtype),
            timestep=torch.tensor([500.0, 500.0], device=device),
            encoder_hidden_states=torch.randn(2, 333, 4096, device=device, dtype=dtype),
            pooled_projections=torch.randn(2, 2048, device=device, dtype=dtype),
        )

    return [
        Model("SD1.5 UNet at 1024²", sd15, sd_call, 512, "unet", unet_inputs(768)),
        Model("SDXL UNet at 2048²", sdxl, sdxl_call, 1024, "unet", unet_inputs(2048, True)),
        Model("SD3-medium transformer at 2048²", sd3, sd3_call, 1024, "transformer", sd3_inputs),
    ]


def smoke_models() -> list[Model]:
    """The test suite's tiny SD, SDXL and SD3 pipelines (CPU, seconds)."""
    from diffusers_models import (
        EMBED_DIM,
        POOLED_DIM,
        sd_call_kwargs,
        sdxl_call_kwargs,
        tiny_sd_pipeline,
        tiny_sdxl_pipeline,
    )
    from diffusers_transformers import POOLED_DIM as SD3_POOLED
    from diffusers_transformers import SEQ, TEXT_DIM, sd3_call_kwargs, tiny_sd3_pipeline

    def sd_call(size: int, steps: int) -> dict:
        return sd_call_kwargs(height=size, width=size, steps=steps)

    def sdxl_call(size: int, steps: int) -> dict:
        return sdxl_call_kwargs(height=size, width=size, steps=steps)

    def sd3_call(size: int, steps: int) -> dict:
        return sd3_call_kwargs(height=size, width=size, steps=steps)

    def unet_inputs(latent: int, sdxl: bool = False) -> dict:
        kw = dict(
            sample=torch.randn(2, 4, latent, latent),
            timestep=torch.tensor(500),
            encoder_hidden_states=torch.randn(2, 4, EMBED_DIM),
        )
        if sdxl:
            kw["added_cond_kwargs"] = {
                "text_embeds": torch.randn(2, POOLED_DIM),
                "time_ids": torch.full((2, 6), float(latent * 2)),
            }
        return kw

    def sd3_inputs(latent: int) -> dict:
        return dict(
            hidden_states=torch.randn(2, 4, latent, latent),
            timestep=torch.tensor([500.0, 500.0]),
            encoder_hidden_states=torch.randn(2, SEQ, TEXT_DIM),
            pooled_projections=torch.randn(2, SD3_POOLED),
        )

    return [
        Model("tiny SD UNet", tiny_sd_pipeline, sd_call, 16, "unet", unet_inputs),
        Model(
            "tiny SDXL UNet",
            tiny_sdxl_pipeline,
            sdxl_call,
            16,
            "unet",
            lambda n: unet_inputs(n, True),
        ),  # fmt: skip
        Model("tiny SD3 transformer", tiny_sd3_pipeline, sd3_call, 32, "transformer", sd3_inputs),
    ]


# ---------------------------------------------------------------------- measurements
def sync(device: torch.device) -> None:
    """Wait for the device."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds of one call of ``fn``, device work included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def peak_memory(fn: Callable[[], Any], device: torch.device) -> float | None:
    """Peak device memory (GiB) during one call of ``fn`` (None off CUDA)."""
    if device.type != "cuda":
        fn()
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) / 2**30


def call_costs(denoiser: torch.nn.Module, inputs: dict, device: torch.device, repeats: int):
    """(eager ms, CUDA-graph replay ms or None) of one denoiser call with ``inputs``."""
    with torch.no_grad():
        for _ in range(2):
            denoiser(**inputs, return_dict=False)
        eager = statistics.median(
            timed(lambda: denoiser(**inputs, return_dict=False), device) for _ in range(repeats)
        )
        if device.type != "cuda":
            return eager * 1e3, None
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                denoiser(**inputs, return_dict=False)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            denoiser(**inputs, return_dict=False)
        replay = statistics.median(timed(graph.replay, device) for _ in range(repeats))
        del graph
        return eager * 1e3, replay * 1e3


def hidiffusion_case(build: Callable[[], Any]) -> Callable[[], Any] | str:
    """A pipeline with HiDiffusion applied, or why there is none."""
    try:
        from hidiffusion import apply_hidiffusion
    except Exception as err:  # noqa: BLE001 - any import failure means "not available"
        return f"not available ({type(err).__name__})"
    pipe = build()
    try:
        apply_hidiffusion(pipe)
    except Exception as err:  # noqa: BLE001
        return f"does not apply ({type(err).__name__}: {err})"
    return pipe


def bench_model(model: Model, args: argparse.Namespace, device: torch.device) -> dict:
    """Every case of one model: wall times (median of rounds), memory, per-call costs."""
    base = model.build()
    base.set_progress_bar_config(disable=True)
    denoiser = getattr(base, model.attr)
    compile_kwargs = (
        {"backend": args.compile_backend}
        if args.compile_backend
        else {"mode": "reduce-overhead", "fullgraph": False}
    )
    compiled = torch.compile(denoiser, **compile_kwargs)

    def pipeline(denoiser_obj: Any, **ug: Any) -> Any:
        pipe = type(base).from_pipe(base, **{model.attr: denoiser_obj})
        pipe.set_progress_bar_config(disable=True)
        if ug:
            apply_upsample_guidance(pipe, (2, 2), **ug)
        return pipe

    cases: dict[str, Any] = {
        "plain": pipeline(denoiser),
        "UG η=0.6": pipeline(denoiser, scale=1.0, eta=0.6),
        "UG η=1": pipeline(denoiser, scale=1.0, eta=1.0),
        "UG scale=0": pipeline(denoiser, scale=0.0),
        "plain, compiled": pipeline(compiled),
        "UG η=0.6, compiled": pipeline(compiled, scale=1.0, eta=0.6),
        "UG η=1, compiled": pipeline(compiled, scale=1.0, eta=1.0),
    }
    peer = hidiffusion_case(lambda: pipeline(denoiser))
    if not isinstance(peer, str):
        cases["HiDiffusion"] = peer
    size = 2 * model.trained
    kwargs = model.call(size, args.steps)

    def run(pipe: Any) -> Callable[[], Any]:
        return lambda: pipe(**kwargs)

    with torch.no_grad():
        for pipe in cases.values():  # warm-up (and compilation)
            for _ in range(args.warmup):
                run(pipe)()
        walls: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.rounds):  # interleaved rounds
            for name, pipe in cases.items():
                walls[name].append(timed(run(pipe), device))
        memory = {name: peak_memory(run(pipe), device) for name, pipe in cases.items()}
    latent = size // getattr(base, "vae_scale_factor", 8)
    high = call_costs(denoiser, model.denoiser_inputs(latent), device, args.call_repeats)
    low = call_costs(denoiser, model.denoiser_inputs(latent // 2), device, args.call_repeats)
    wall = {name: statistics.median(v) for name, v in walls.items()}
    return {
        "model": model.name,
        "wall_s": wall,
        "peak_gib": memory,
        "call_ms": {"high": high, "low": low},
        "hidiffusion": peer if isinstance(peer, str) else "measured",
    }


def report(results: list[dict], args: argparse.Namespace, device: torch.device) -> str:
    """The markdown report: one column per model."""

    def pct(r: dict, name: str, ref: str = "plain") -> str:
        if name not in r["wall_s"]:
            return r["hidiffusion"] if name == "HiDiffusion" else "–"
        ratio = r["wall_s"][name] / r["wall_s"][ref]
        return f"{ratio:.2f}× plain" if name == "HiDiffusion" else f"{100 * (ratio - 1):+.1f} %"

    def floor(r: dict, eta: float) -> str:
        high, low = r["call_ms"]["high"], r["call_ms"]["low"]
        h, lo = (high[1], low[1]) if high[1] is not None else (high[0], low[0])
        return f"{100 * eta * lo / h:+.1f} %"

    def ms(pair: tuple) -> str:
        eager, graph = pair
        return f"{eager:.1f} / {graph:.1f} ms" if graph is not None else f"{eager:.1f} ms / n/a"

    def mem(r: dict, name: str) -> str:
        value = r["peak_gib"].get(name)
        return "n/a" if value is None else f"{value:.2f} GiB"

    names = [r["model"] for r in results]
    rows = [
        ("plain pipeline", [f"{r['wall_s']['plain']:.2f} s" for r in results]),
        ("UG θ=1, η=0.6 (eager)", [pct(r, "UG η=0.6") for r in results]),
        ("UG θ=1, η=1 (eager)", [pct(r, "UG η=1") for r in results]),
        ("UG with scale=0", [pct(r, "UG scale=0") for r in results]),
        ("plain pipeline, compiled", [pct(r, "plain, compiled") for r in results]),
        (
            "UG η=0.6, compiled (vs plain compiled)",
            [pct(r, "UG η=0.6, compiled", "plain, compiled") for r in results],
        ),
        (
            "UG η=1, compiled (vs plain compiled)",
            [pct(r, "UG η=1, compiled", "plain, compiled") for r in results],
        ),
        ("one call at the high size: eager / graph", [ms(r["call_ms"]["high"]) for r in results]),
        ("one call at the trained size: eager / graph", [ms(r["call_ms"]["low"]) for r in results]),
        ("compute floor for η=0.6 (η × call ratio)", [floor(r, 0.6) for r in results]),
        ("peak memory, plain", [mem(r, "plain") for r in results]),
        ("peak memory, UG η=0.6", [mem(r, "UG η=0.6") for r in results]),
        ("HiDiffusion", [pct(r, "HiDiffusion") for r in results]),
    ]
    backend = args.compile_backend or 'mode="reduce-overhead"'
    lines = [
        "# UG's cost on a GPU" + (" (smoke run: tiny models on the CPU)" if args.smoke else ""),
        "",
        f"Command: `python benchmarks/gpu_cost.py{' --smoke' if args.smoke else ''} --steps "
        f"{args.steps} --rounds {args.rounds}` (from the repository root). Device: "
        f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.machine()}"
        f", torch {torch.__version__}, {args.dtype}; compiled = torch.compile({backend}); "
        f"medians of {args.rounds} interleaved rounds; CFG batch 2, output as latents.",
        "",
        "| | " + " | ".join(names) + " |",
        "| --- |" + " --- |" * len(names),
    ]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark; returns the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--call-repeats", type=int, default=None)
    parser.add_argument("--models", default=None, help="comma-separated indices, e.g. 0,2")
    parser.add_argument("--compile-backend", default=None, help="e.g. eager (smoke default)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    smoke = args.smoke
    args.steps = args.steps or (2 if smoke else 20)
    args.rounds = args.rounds or (1 if smoke else 3)
    args.warmup = args.warmup if args.warmup is not None else (1 if smoke else 2)
    args.call_repeats = args.call_repeats or (2 if smoke else 10)
    args.compile_backend = args.compile_backend or ("eager" if smoke else None)
    device = torch.device("cpu" if smoke or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.float16
    args.dtype = str(dtype).replace("torch.", "")
    if device.type == "cpu":
        torch.set_num_threads(1)
    models = smoke_models() if smoke else full_models(device, dtype)
    if args.models:
        models = [models[int(i)] for i in args.models.split(",")]
    results = []
    for model in models:
        with contextlib.suppress(KeyboardInterrupt):
            results.append(bench_model(model, args, device))
            print(json.dumps(results[-1], default=str), flush=True)
    text = report(results, args, device)
    print(text)
    if args.output is not None:
        args.output.write_text(text)
        args.output.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
    return text


if __name__ == "__main__":
    main()
