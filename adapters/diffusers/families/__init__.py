"""One small translator per family of diffusers denoisers, and the registry that finds them.

The translator (:class:`Family`) is in :mod:`.base`; the families are in :mod:`.unet`,
:mod:`.image` and :mod:`.video`. :func:`family_of` finds a denoiser's family by its class.
"""

from __future__ import annotations

import torch

from ....config import MICRO_CONDITIONING
from .base import Call, Family
from .image import SD3, AuraFlow, DiT, Flux, Flux2, Lumina2, PixArt, QwenImage, Sana
from .unet import UNet, VideoUNet
from .video import CogVideoX, HunyuanVideo, LTXVideo, Mochi, SanaVideo, Wan

__all__ = ["Call", "Family", "FAMILIES", "family_of", "supported_classes", "MICRO_CONDITIONING"]

#: Every supported family, in the order they are matched.
FAMILIES: tuple[Family, ...] = (
    UNet(),
    VideoUNet(),
    SD3(),
    AuraFlow(),
    Flux(),
    Flux2(),
    QwenImage(),
    PixArt(),
    DiT(),
    Sana(),
    SanaVideo(),
    Lumina2(),
    Mochi(),
    Wan(),
    HunyuanVideo(),
    CogVideoX(),
    LTXVideo(),
)


def supported_classes() -> dict[str, tuple[str, ...]]:
    """Family name → denoiser class names."""
    return {f.name: f.classes for f in FAMILIES}


def family_of(module: torch.nn.Module) -> Family:
    """The family of a denoiser, by its class (or a base class); a TypeError if unknown."""
    names = {cls.__name__ for cls in type(module).__mro__}
    for family in FAMILIES:
        if names & set(family.classes):
            return family
    listed = "; ".join(f"{f.name}: {', '.join(f.classes)}" for f in FAMILIES)
    raise TypeError(
        f"{type(module).__name__} is not a supported denoiser. Supported families: {listed}"
    )
