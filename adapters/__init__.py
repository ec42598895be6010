"""Thin adapters from frameworks to the upsample-guidance kernel, imported as ``ug_core.adapters``.

- ``ug_core.adapters.loops``: DDPM and DDIM sampling loops for any model.
- ``ug_core.adapters.diffusers``: diffusers pipelines and UNets.
- ``ug_core.adapters.k_diffusion``: k-diffusion-style denoisers.

No framework is imported when this package is imported.
"""
