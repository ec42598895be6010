"""ComfyUI's entry point for this repository cloned into ``custom_nodes/`` (docs/comfyui.md).

ComfyUI imports a node folder's ``__init__.py`` and reads ``NODE_CLASS_MAPPINGS``. The node itself
is in the package ``upsample-guidance`` (``ug_core``), which must be installed in the Python that
runs ComfyUI; where it is not, the error gives the exact command for that Python.
"""

try:
    from ug_core.adapters.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
except ModuleNotFoundError as err:
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    raise ModuleNotFoundError(
        "Upsample Guidance: install the package upsample-guidance into the Python that runs "
        f'ComfyUI, then restart ComfyUI: "{sys.executable}" -m pip install -e "{here}"'
    ) from err

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
