"""Tiny diffusers models and pipelines built from configs with random weights (fully offline).

Reusable by any test: ``tiny_sd_pipeline()`` gives a Stable Diffusion pipeline whose UNet was
"trained" at 8x8 latents (16x16 pixels, VAE factor 2), with no text encoder: pass
``prompt_embeds`` / ``negative_prompt_embeds`` from :func:`sd_embeds`. Every builder is
deterministic for a given seed. Zero-initialised layers (ControlNet's zero convolutions, the
motion modules' output projections) get small random weights so that they have an effect.
"""

from __future__ import annotations

import torch

EMBED_DIM = 32  # cross-attention width of every tiny UNet
POOLED_DIM = 16  # SDXL pooled text embedding width
TIME_ID_DIM = 8  # SDXL addition_time_embed_dim
SEQ = 4  # text tokens per prompt


def randomize_zero_params(module: torch.nn.Module, seed: int = 0, std: float = 0.05) -> None:
    """Give every all-zero parameter of ``module`` small random values (deterministic)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.numel() and not bool(p.any()):
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)


def tiny_unet(seed: int = 0, **config):
    """A UNet2DConditionModel with two levels, trained size 8x8, cross-attention width 32."""
    from diffusers import UNet2DConditionModel

    base = dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=EMBED_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    base.update(config)
    torch.manual_seed(seed)
    return UNet2DConditionModel(**base).eval()


def tiny_vae(seed: int = 1):
    """An AutoencoderKL with scale factor 2 (one downsampling), 4 latent channels."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    ).eval()


def ddim_scheduler(**config):
    """Stable Diffusion's DDIM scheduler config (scaled-linear betas, 1000 steps)."""
    from diffusers import DDIMScheduler

    base = dict(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    base.update(config)
    return DDIMScheduler(**base)


def sd_embeds(batch: int = 1, seed: int = 0, dim: int = EMBED_DIM):
    """``(prompt_embeds, negative_prompt_embeds)`` of shape (batch, SEQ, dim)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, SEQ, dim, generator=gen), torch.randn(batch, SEQ, dim, generator=gen)


def tiny_sd_pipeline(scheduler=None, prediction_type: str = "epsilon", seed: int = 0):
    """A StableDiffusionPipeline of tiny random models, without text encoder or safety checker."""
    from diffusers import StableDiffusionPipeline

    scheduler = scheduler or ddim_scheduler(prediction_type=prediction_type)
    return sd_family_pipeline(StableDiffusionPipeline, tiny_unet(seed), scheduler=scheduler)


def sd_family_pipeline(cls, unet, scheduler=None, **components):
    """A Stable Diffusion-family pipeline of class ``cls`` around ``unet`` and ``components``:
    a tiny VAE, SD's DDIM scheduler unless given, no text encoder or safety checker."""
    pipe = cls(
        vae=tiny_vae(),
        text_encoder=None,
        tokenizer=None,
        unet=unet,
        scheduler=scheduler or ddim_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
        **components,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sd_call_kwargs(height: int = 32, width: int = 32, steps: int = 3, cfg: float = 5.0, seed=0):
    """Arguments for a tiny SD pipeline call (CFG on when ``cfg > 1``), output as latents."""
    pe, ne = sd_embeds(seed=seed)
    return dict(
        prompt_embeds=pe,
        negative_prompt_embeds=ne,
        height=height,
        width=width,
        num_inference_steps=steps,
        guidance_scale=cfg,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
    )


def tiny_sdxl_unet(seed: int = 0, **config):
    """:func:`tiny_unet` with SDXL's micro-conditioning (pooled text and six size ids)."""
    return tiny_unet(
        seed,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_ID_DIM,
        projection_class_embeddings_input_dim=6 * TIME_ID_DIM + POOLED_DIM,
        **config,
    )


def tiny_sdxl_pipeline(seed: int = 0):
    """A StableDiffusionXLPipeline of tiny random models (no text encoders, no watermarker)."""
    from diffusers import StableDiffusionXLPipeline

    unet = tiny_sdxl_unet(seed)
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(),
        text_encoder=None,
        text_encoder_2=None,
        tokenizer=None,
        tokenizer_2=None,
        unet=unet,
        scheduler=ddim_scheduler(),
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sdxl_call_kwargs(height: int = 32, width: int = 32, steps: int = 2, cfg: float = 5.0, seed=0):
    """Arguments for a tiny SDXL pipeline call, output as latents."""
    gen = torch.Generator().manual_seed(seed)
    return dict(
        prompt_embeds=torch.randn(1, SEQ, EMBED_DIM, generator=gen),
        negative_prompt_embeds=torch.randn(1, SEQ, EMBED_DIM, generator=gen),
        pooled_prompt_embeds=torch.randn(1, POOLED_DIM, generator=gen),
        negative_pooled_prompt_embeds=torch.randn(1, POOLED_DIM, generator=gen),
        height=height,
        width=width,
        num_inference_steps=steps,
        guidance_scale=cfg,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
    )


def tiny_motion_adapter(seed: int = 2):
    """A MotionAdapter matching :func:`tiny_unet`, with non-zero output projections."""
    from diffusers import MotionAdapter

    torch.manual_seed(seed)
    adapter = MotionAdapter(
        block_out_channels=(16, 32),
        motion_layers_per_block=1,
        motion_num_attention_heads=2,
        motion_norm_num_groups=8,
        motion_max_seq_length=16,
        use_motion_mid_block=False,
    ).eval()
    randomize_zero_params(adapter, seed)
    return adapter


def tiny_animatediff_pipeline(seed: int = 0):
    """An AnimateDiffPipeline (UNetMotionModel) of tiny random models."""
    from diffusers import AnimateDiffPipeline

    pipe = AnimateDiffPipeline(
        vae=tiny_vae(),
        text_encoder=None,
        tokenizer=None,
        unet=tiny_unet(seed),
        motion_adapter=tiny_motion_adapter(),
        scheduler=ddim_scheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def animatediff_call_kwargs(
    frames: int = 4, height: int = 16, width: int = 16, steps: int = 2, cfg: float = 5.0, seed=0
):
    """Arguments for a tiny AnimateDiff call, output as latents (B, C, F, h, w)."""
    return dict(num_frames=frames, **sd_call_kwargs(height, width, steps, cfg, seed))


def tiny_controlnet(unet, seed: int = 3):
    """A ControlNetModel built from ``unet`` (control images at the VAE's scale, factor 2)."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8)).eval()
    randomize_zero_params(net, seed)
    return net


def tiny_union_controlnet(unet, seed: int = 3):
    """A ControlNetUnionModel from ``unet`` (its control-type transformer is 320 wide whatever
    the UNet: shrunk to 16)."""
    from diffusers import ControlNetUnionModel

    torch.manual_seed(seed)
    config = ControlNetUnionModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8)).config
    widths = dict(num_trans_channel=16, num_proj_channel=16, num_trans_head=2)
    config = {k: v for k, v in config.items() if k != "_use_default_values"}
    net = ControlNetUnionModel.from_config({**config, **widths}).eval()
    randomize_zero_params(net, seed)
    return net


def tiny_controlnet_pipeline(seed: int = 0):
    """A StableDiffusionControlNetPipeline of tiny random models."""
    from diffusers import StableDiffusionControlNetPipeline

    unet = tiny_unet(seed)
    controlnet = tiny_controlnet(unet)
    return sd_family_pipeline(StableDiffusionControlNetPipeline, unet, controlnet=controlnet)


def control_image(height: int = 32, width: int = 32, seed: int = 0) -> torch.Tensor:
    """A random control image in [0, 1], shape (1, 3, height, width)."""
    return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(seed))


def tiny_pixel_unet(seed: int = 0, sample_size: int = 16, learned_variance: bool = False):
    """A UNet2DModel for 3-channel pixels (6 output channels with a learned variance)."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=3,
        out_channels=6 if learned_variance else 3,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=8,
    ).eval()


def tiny_ddpm_pipeline(seed: int = 0, sample_size: int = 16, learned_variance: bool = False):
    """A DDPMPipeline (pixel UNet2DModel; learned-range variance if asked)."""
    from diffusers import DDPMPipeline, DDPMScheduler

    scheduler = DDPMScheduler(
        variance_type="learned_range" if learned_variance else "fixed_small", clip_sample=True
    )
    pipe = DDPMPipeline(tiny_pixel_unet(seed, sample_size, learned_variance), scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_ddim_pipeline(seed: int = 0, sample_size: int = 16):
    """A DDIMPipeline (pixel UNet2DModel)."""
    from diffusers import DDIMPipeline, DDIMScheduler

    pipe = DDIMPipeline(tiny_pixel_unet(seed, sample_size), DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


class ForwardRecorder:
    """Records every real forward of a module, beneath all its hooks (so both the high- and the
    low-resolution call of upsample guidance), with its arguments by name and its raw sample.

    It replaces ``module.forward`` on the instance; :meth:`close` deletes it again.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        import inspect

        self.module = module
        self.calls: list[tuple[dict, torch.Tensor]] = []
        signature = inspect.signature(type(module).forward)
        original = module.forward

        def forward(*args, **kwargs):
            bound = signature.bind(module, *args, **kwargs)
            bound.apply_defaults()
            # Lists are copied: the UNet consumes T2I-Adapter residual lists (pop).
            named = {k: list(v) if isinstance(v, list) else v for k, v in bound.arguments.items()}
            named.pop("self")
            out = original(*args, **kwargs)
            sample = out if isinstance(out, torch.Tensor) else out[0]
            if isinstance(sample, torch.Tensor):
                sample = sample.detach().clone()
            self.calls.append((named, sample))
            return out

        module.forward = forward

    def close(self) -> None:
        """Stop recording (restores the class's forward)."""
        del self.module.forward


class OutputRecorder:
    """Records the outputs the caller of a module sees (after every hook, guidance included)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.outputs: list[torch.Tensor] = []

        def hook(mod, args, kwargs, out):
            sample = out if isinstance(out, torch.Tensor) else out[0]
            self.outputs.append(sample.detach().clone())

        self.handle = module.register_forward_hook(hook, with_kwargs=True)

    def close(self) -> None:
        """Stop recording."""
        self.handle.remove()
