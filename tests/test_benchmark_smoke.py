"""The GPU cost benchmark's smoke mode runs (tiny models on the CPU), so the script can't rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmark_modules import load_benchmark as _bench

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _checkout_report_untouched():
    """No smoke run may rewrite the checkout's benchmarks/RESULTS.md (restored if one does)."""
    path = ROOT / "benchmarks" / "RESULTS.md"
    before = path.read_bytes()
    yield
    after = path.read_bytes()
    if after != before:
        path.write_bytes(before)
    assert after == before, "the test rewrote benchmarks/RESULTS.md"


def test_gpu_cost_smoke(tmp_path):
    gpu_cost = _bench("gpu_cost")
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


def test_quality_v2_smoke(tmp_path, monkeypatch):
    """Sample two cells (pixel UNet, latent flow), measure them, and write the report's tables."""
    quality_v2, report = _bench("quality_v2"), _bench("report")
    monkeypatch.setattr(quality_v2, "OUT", tmp_path / "out")
    # main() ends by regenerating benchmarks/RESULTS.md; the checkout's report stays as it is.
    monkeypatch.setattr(report, "write_report", lambda: None)
    samples = tmp_path / "samples"
    common = ["--n", "2", "--steps", "1", "--samples-dir", str(samples), "--stage", "sample"]
    quality_v2.main(["--model", "textured", "--methods", "basic", *common])
    quality_v2.main(["--model", "latent-flow", "--methods", "main", "eta", *common])
    for cell in sorted(samples.iterdir()):
        quality_v2.measure_cell(cell, n_ref=4)
    cells = [json.loads(p.read_text()) for p in sorted((tmp_path / "out").glob("*.json"))]
    assert [(c["model"], c["factor"], c["steps"]) for c in cells] == [
        ("latent-flow", 2, 1),
        ("textured", 2, 1),
    ]
    latent = cells[0]["rows"]
    assert {"naive", "UG θ=1 η=1", "UG θ=1 η=0.6", "HiRes.fix s=0.5 + UG θ=1 η=1"} <= set(latent)
    assert latent["naive"]["n"] == 2 and latent["naive"]["domain_frechet"] >= 0
    text = "\n".join(report.quality_v2_lines(tmp_path / "out"))
    # One step gives no useful samples: the lines are computed, not judged, here.
    assert "### latent-flow, 2× (64×64), 1 steps" in text
    assert "### Targets (quality, version 2)" in text
    assert "- Textured, 2×" not in text  # the targets are read from the 20-step cells only
    lines = report.target_lines([dict(c, steps=20) for c in cells])
    assert any(
        line.startswith("- Textured, 2×: UG (θ = 1, η = 1) domain Fréchet") for line in lines
    )
    assert any("domain Fréchet η = 1:" in line and "lowest at η = **" in line for line in lines)
    assert any(line.startswith("- HiRes.fix without → with UG") for line in lines)
    assert "### The η sweep in every cell" in text and "| latent-flow | 2× | 1 |" in text
    assert any(
        line.startswith("- The η sweep on the latent transformer in every cell") for line in lines
    )


def test_quality_v2_sweep_table_compares_at_one_n():
    """θ = η = 1 enters the sweep tables on the sweep's n (its first-n row), and best is named."""
    report = _bench("report")

    def r(one, dom, n):
        return dict(one_object=one, domain_frechet=dom, n=n)

    rows = {"UG θ=1 η=1": r(1.0, 10.0, 32), "UG θ=1 η=1, first 16": r(0.875, 50.0, 16)}
    rows.update({f"UG θ=1 η={e:g}": r(0.9375, 40.0 + 10 * e, 16) for e in report.ETAS})
    cell = dict(model="m", factor=2, steps=20, rows=rows)
    text = "\n".join(report.sweep_lines([cell]))
    assert "### The θ sweep" not in text  # one θ value only: no θ table
    row = next(line for line in text.splitlines() if line.startswith("| m | 2× | 20 |"))
    assert row == (
        "| m | 2× | 20 | 93.8% · 42.0 | 93.8% · 44.0 | 93.8% · 46.0 | 93.8% · 48.0 "
        "| 87.5% · 50.0 | **0.2** (0.2, 0.4, 0.6, 0.8) |"
    )


def test_domain_metric_smoke(tmp_path, monkeypatch):
    domain_metric = _bench("domain_metric")
    monkeypatch.setattr(domain_metric, "RESULTS", tmp_path)
    domain_metric.main(["--n", "4", "--n-ref", "8", "--sizes", "64"])
    res = json.loads((tmp_path / "domain_metric.json").read_text())
    assert set(res["results"]) == {"flat 64", "textured 64"}
    rows = res["results"]["textured 64"]
    assert set(rows) >= {
        "ground truth (independent set)",
        "duplication: two shapes",
        "texture removed",
    }
    assert all(v["domain_frechet"] >= 0 for v in rows.values())
    assert "The independent ground-truth set is the floor" in "\n".join(
        domain_metric.report_lines(res)
    )
