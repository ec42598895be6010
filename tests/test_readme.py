"""The README's promises: its test command is what .ci/run runs; its and docs/'s examples run."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _shell_blocks():
    return re.findall(r"```(?:bash|sh|shell)\n(.*?)```", README, flags=re.S)


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _python_blocks():
    """Every ```python block of the README and docs/ as (page, block), but 'not run here' ones."""
    found = []
    for page in PAGES:
        blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
        name = page.relative_to(ROOT).as_posix()
        found += [(name, b) for b in blocks if "not run here" not in b.splitlines()[0]]
    return found


def test_readme_opens_with_the_two_commands():
    first = _shell_blocks()[0]
    commands = [line for line in first.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2
    assert "ug sample" in commands[0]
    assert "pytest" in commands[1] and '".[test]"' in commands[1]
    assert README.index("```") < README.index("## ")  # before any section


def test_ci_runs_the_readme_test_command_verbatim():
    test_command = [line for line in _shell_blocks()[0].splitlines() if "pytest" in line][0]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command.strip() in [line.strip() for line in ci]


def test_the_test_command_installs_ci_pins_from_the_constraints_file():
    """Exact pins are CI's (.ci/constraints.txt); the package's own requirements state ranges."""
    test_command = [line for line in _shell_blocks()[0].splitlines() if "pytest" in line][0]
    assert "-c .ci/constraints.txt" in test_command
    pins = dict(
        re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", line).groups()
        for line in (ROOT / ".ci" / "constraints.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert pins["torch"].startswith("==") and pins["torchvision"].startswith("==")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + sum(project["optional-dependencies"].values(), [])
    assert [r for r in requirements if "==" in r] == []


def test_the_readme_runs_the_venv_tools():
    """Commands in the README run .venv/bin/python, .venv/bin/pip and .venv/bin/ruff, never bare."""
    lines = [line for block in _shell_blocks() for line in block.splitlines()]
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", README, flags=re.S))
    bare = re.compile(r"(?:^|&& |; )(python3?|pip3?|ruff) (?!-m venv)")
    offenders = [text for text in lines + spans if bare.search(text)]
    assert offenders == []


@pytest.mark.parametrize(
    "page, code", _python_blocks(), ids=[f"{p}-{i}" for i, (p, _) in enumerate(_python_blocks())]
)
def test_python_example_runs(page, code, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(code)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
