"""One small translator per family of diffusers denoisers, and the registry that finds them.

The translator (:class:`Family`) is in :mod:`.base`; the families are in :mod:`.unet`,
:mod:`.image` and :mod:`.video`. :func:`family_of` finds a denoiser's family by its class.
"""

from __future__ import annotations

import torch

from ....config import MICRO_CONDITIONING
from . import image, unet, video
from .base import Call, Family

__all__ = [
    "Call",
    "Family",
    "FAMILIES",
    "family_of",
    "register_family",
    "supported_classes",
    "MICRO_CONDITIONING",
]

#: Every built-in family.
FAMILIES: tuple[Family, ...] = (*unet.FAMILIES, *image.FAMILIES, *video.FAMILIES)

_registered: list[Family] = []  # families registered by users, the latest first


def register_family(family: Family | type[Family]) -> Family:
    """Make a translator for your own denoiser class known; returns the family instance.

    ``family`` is a :class:`Family` subclass (or an instance of one) whose ``classes`` name the
    denoiser classes it translates. A registered family is found before a built-in one for the
    same class, and a later registration before an earlier one.
    """
    if isinstance(family, type) and issubclass(family, Family):
        family = family()
    if not isinstance(family, Family):
        raise TypeError(f"family must be a Family subclass or instance, got {family!r}")
    classes = family.classes
    if not classes or not all(isinstance(c, str) for c in classes):
        raise ValueError(
            f"{type(family).__name__}.classes must name the denoiser classes it translates "
            f"(a tuple of class names), got {classes!r}"
        )
    _registered.insert(0, family)
    return family


def _all() -> tuple[Family, ...]:
    """The registered families, then the built-in ones."""
    return (*_registered, *FAMILIES)


def supported_classes() -> dict[str, tuple[str, ...]]:
    """Family name → denoiser class names (the built-in families, then the registered ones)."""
    return {f.name: f.classes for f in (*FAMILIES, *reversed(_registered))}


def family_of(module: torch.nn.Module) -> Family:
    """The family of a denoiser, by its class, or the nearest base class with a family.

    A TypeError names the class and lists the families if there is none.
    """
    for cls in type(module).__mro__:
        for family in _all():
            if cls.__name__ in family.classes:
                return family
    listed = "; ".join(f"{name}: {', '.join(c)}" for name, c in supported_classes().items())
    raise TypeError(
        f"{type(module).__name__} is not a supported denoiser. Supported families: {listed}"
    )
