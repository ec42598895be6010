"""Layering: the pure core imports no adapter, no application and no framework (AST scan).

Layers, from the bottom: the pure core (``CORE``), the adapters (``adapters/``, installed as
``ug_core.adapters``), the applications (``ug_core/demo``, ``ug_core/cli.py``), which may use
adapters. Code that only benchmarks or training use lives in ``benchmarks/`` (the training scripts
in ``benchmarks/training/``), outside the package: the installed package (``ug_core/`` and
``adapters/``) imports none of it, and the wheel ships none of it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
CORE = ["operators", "schedules", "parameterizations", "scales", "guidance"]
#: What moved out of the package, and where it lives now (paths from the repository root).
MOVED = {
    "ug_core/testbed.py": "benchmarks/testbed.py",
    "ug_core/demo/encoder.py": "benchmarks/domain_encoder.py",
    "ug_core/assets/domain_encoder": "benchmarks/assets/domain_encoder",
    "ug_core/demo/train.py": "benchmarks/training/train.py",
    "ug_core/demo/train_latent.py": "benchmarks/training/train_latent.py",
    "ug_core/demo/train_video.py": "benchmarks/training/train_video.py",
    "ug_core/demo/train_encoder.py": "benchmarks/training/train_encoder.py",
}
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


def package_files() -> list[Path]:
    """Every Python file of the installed package: ``ug_core/`` and ``adapters/``."""
    return sorted([*(ROOT / "ug_core").rglob("*.py"), *(ROOT / "adapters").rglob("*.py")])


def package_of(path: Path) -> str:
    """The installed package that holds ``path`` (``adapters/`` is ``ug_core.adapters``)."""
    rel = path.relative_to(ROOT)
    top = "ug_core.adapters" if rel.parts[0] == "adapters" else "ug_core"
    return ".".join([top, *rel.parts[1:-1]])


def benchmark_imports(modules: set[str]) -> list[str]:
    """The modules in ``modules`` that are benchmark or training code.

    ``benchmarks`` itself, every script of ``benchmarks/`` and ``benchmarks/training/`` by the bare
    name its siblings import it by (``baselines``, ``testbed``, ``train``, ...), and the package
    paths the moved modules had (``ug_core.testbed``, ``ug_core.demo.train``, ...).
    """
    scripts = {p.stem for p in BENCHMARKS.rglob("*.py")}
    old = {m.removesuffix(".py").replace("/", ".") for m in MOVED if m.endswith(".py")}
    return sorted(
        m
        for m in modules
        if m.split(".")[0] in scripts | {"benchmarks"}
        or any(m == o or m.startswith(o + ".") for o in old)
    )


def test_the_scan_resolves_relative_imports_in_subpackages(tmp_path):
    assert package_of(ROOT / "ug_core" / "demo" / "video.py") == "ug_core.demo"
    assert package_of(ROOT / "adapters" / "diffusers" / "hooks.py") == "ug_core.adapters.diffusers"
    source = tmp_path / "mod.py"
    source.write_text("from .train import SCHEDULER_CONFIG\nfrom ..testbed import run\n")
    found = benchmark_imports(imported_modules(source, "ug_core.demo"))
    assert found == ["ug_core.demo.train", "ug_core.demo.train.SCHEDULER_CONFIG",
                     "ug_core.testbed", "ug_core.testbed.run"]  # fmt: skip
    source.write_text("import baselines\nfrom benchmarks.training.train import render_pool\n")
    assert benchmark_imports(imported_modules(source, "ug_core")) == [
        "baselines", "benchmarks.training.train", "benchmarks.training.train.render_pool",
    ]  # fmt: skip


@pytest.mark.parametrize("path", package_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_package_imports_no_benchmark_or_training_code(path):
    """Not the core only: the demo, the CLI and the adapters import nothing from benchmarks/."""
    assert benchmark_imports(imported_modules(path, package_of(path))) == []


def test_the_moved_modules_are_not_in_the_package():
    """The training scripts, the domain encoder and the testbed live in benchmarks/ alone."""
    for old, new in MOVED.items():
        assert not (ROOT / old).exists(), old
        assert (ROOT / new).exists(), new
    assert not list((ROOT / "ug_core").rglob("train*.py"))
    assert not list((ROOT / "ug_core").rglob("*encoder*"))
    assert (ROOT / "benchmarks" / "assets" / "domain_encoder" / "model.safetensors").is_file()


def test_the_wheel_would_not_ship_benchmark_code_or_the_domain_encoder():
    """pyproject's packages and package-data select nothing below benchmarks/ (nor the encoder)."""
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = {name: ROOT / folder for name, folder in config["package-dir"].items()}

    def folder(package: str) -> Path:
        top = max((n for n in dirs if package == n or package.startswith(n + ".")), key=len)
        return dirs[top].joinpath(*package[len(top) :].split(".")[1:])

    shipped = [p for package in config["packages"] for p in folder(package).glob("*.py")]
    for package, patterns in config.get("package-data", {}).items():
        for pattern in patterns:
            shipped += [p for p in folder(package).glob(pattern) if p.is_file()]
    assert shipped
    for path in shipped:
        rel = path.resolve().relative_to(ROOT)
        assert rel.parts[0] in ("ug_core", "adapters"), rel
        assert "domain_encoder" not in rel.parts and rel.name != "encoder.py", rel
        assert not (rel.suffix == ".py" and rel.stem.startswith("train")), rel
        assert rel.name != "testbed.py", rel


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


def test_benchmark_modules_import_one_another_without_a_cycle():
    """The scripts find their siblings by bare name; the graph of those imports has no cycle.

    Every import counts, function-level ones too: ``report.py`` renders the page from the
    sections of ``domain_metric`` and ``video_quality``, and the scripts that rewrite the page
    (``cost``, ``quality_v2``) import ``report``, never the other way round.
    """
    files = {p.stem: p for p in BENCHMARKS.rglob("*.py")}
    graph = {
        name: {m.split(".")[0] for m in imported_modules(path, "")} & (set(files) - {name})
        for name, path in files.items()
    }
    assert graph["cost"] >= {"report"} and graph["quality_v2"] >= {"report"}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle: {' -> '.join((*path, name))}"
        if name not in done:
            for dep in sorted(graph[name]):
                visit(dep, (*path, name))
            done.add(name)

    for name in sorted(graph):
        visit(name, ())
