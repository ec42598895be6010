"""Import the benchmark and training scripts (``benchmarks/``, ``benchmarks/training/``) by name.

They are scripts, not an installed package: run from the repository root as
``python benchmarks/<name>.py``, each finds its siblings by bare name (``from baselines import
sdedit``, ``from train import render_pool``). :func:`load_benchmark` puts both folders on
``sys.path`` for the import only, so the tests see them as the scripts do.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = (ROOT / "benchmarks", ROOT / "benchmarks" / "training")


def load_benchmark(name: str) -> ModuleType:
    """The module ``benchmarks/<name>.py`` or ``benchmarks/training/<name>.py``, imported."""
    added = [str(folder) for folder in FOLDERS]
    sys.path[:0] = added
    try:
        return importlib.import_module(name)
    finally:
        for folder in added:
            sys.path.remove(folder)
