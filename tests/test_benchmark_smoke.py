"""The GPU cost benchmark's smoke mode runs (tiny models on the CPU), so the script can't rot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_cost_smoke(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_cost
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    out = tmp_path / "gpu_cost.md"
    text = gpu_cost.main(["--smoke", "--models", "0,2", "--warmup", "0", "--output", str(out)])
    assert out.read_text() == text
    for row in (
        "| plain pipeline |",
        "| UG θ=1, η=0.6 (eager) |",
        "| UG with scale=0 |",
        "| UG η=0.6, compiled (vs plain compiled) |",
        "| compute floor for η=0.6 (η × call ratio) |",
        "| peak memory, UG η=0.6 |",
        "| HiDiffusion |",
    ):
        assert row in text, row
    results = json.loads(out.with_suffix(".json").read_text())
    assert [r["model"] for r in results] == ["tiny SD UNet", "tiny SD3 transformer"]
    for r in results:
        assert set(r["wall_s"]) >= {"plain", "UG η=0.6", "UG η=1", "UG scale=0"}
        assert all(v > 0 for v in r["wall_s"].values())
        assert r["call_ms"]["high"][0] > 0 and r["call_ms"]["low"][0] > 0
