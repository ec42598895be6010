"""Layering: the pure core imports no adapter, no application and no framework (AST scan).

Layers, from the bottom: the pure core (``CORE``), the adapters (``adapters/``, installed as
``ug_core.adapters``), the applications (``ug_core/demo``, ``ug_core/cli.py``), which may use
adapters. Code that only benchmarks use lives in ``benchmarks/``, outside the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ["operators", "schedules", "parameterizations", "scales", "guidance", "testbed"]
#: Absolute module prefixes the pure core must not import.
FORBIDDEN = (
    "ug_core.adapters",
    "ug_core.demo",
    "ug_core.cli",
    "adapters",
    "benchmarks",
    "diffusers",
    "transformers",
    "k_diffusion",
)


def imported_modules(path: Path, package: str) -> set[str]:
    """Every module that ``path`` imports anywhere (functions included), as absolute names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            out.add(module)
            out.update(f"{module}.{alias.name}" for alias in node.names)  # `from . import x`
    return out


def _forbidden(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))


def test_the_scan_sees_relative_and_nested_imports(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text(
        "from . import adapters\n"
        "def f():\n"
        "    from .adapters.loops import sample_ddim\n"
        "    import diffusers.models\n"
    )
    found = _forbidden(imported_modules(source, "ug_core"))
    assert found == ["diffusers.models", "ug_core.adapters", "ug_core.adapters.loops",
                     "ug_core.adapters.loops.sample_ddim"]  # fmt: skip


@pytest.mark.parametrize("name", CORE)
def test_pure_core_imports_no_adapter_application_or_framework(name):
    path = ROOT / "ug_core" / f"{name}.py"
    assert _forbidden(imported_modules(path, "ug_core")) == []


def test_the_package_imports_nothing_from_benchmarks():
    files = [*(ROOT / "ug_core").rglob("*.py"), *(ROOT / "adapters").rglob("*.py")]
    for path in files:
        modules = imported_modules(path, "ug_core")
        assert not [m for m in modules if m.split(".")[0] in ("benchmarks", "baselines")], path


def test_benchmark_only_code_lives_in_benchmarks():
    """The SDEdit baseline, its truncated schedule and the call counter are not package code."""
    names = {"sdedit", "CallCounter", "TruncatedSchedule", "_Truncated"}
    for path in (ROOT / "ug_core").rglob("*.py"):
        tree = ast.parse(path.read_text())
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assert not defined & names, (path, defined & names)
    bench = ast.parse((ROOT / "benchmarks" / "baselines.py").read_text())
    assert names - {"_Truncated"} <= {n.name for n in bench.body if hasattr(n, "name")}


def test_every_public_name_of_ug_core_resolves():
    """ug_core's names are imported on first use (so that the CLI parses without torch)."""
    import ug_core

    for name in ug_core.__all__:
        assert getattr(ug_core, name) is not None, name
    assert set(ug_core.__all__) <= set(dir(ug_core))
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        ug_core.nope  # noqa: B018
