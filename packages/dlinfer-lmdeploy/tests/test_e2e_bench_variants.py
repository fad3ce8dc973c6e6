"""bench/lmdeploy_e2e_gpu.py's run labels: ``maca@NAME`` runs maca with another package tree first on the child's
PYTHONPATH (before/after of a change in one device call), and the summary compares the first two labels."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="module")
def bench(bench_script: Any) -> Any:
    return bench_script("lmdeploy_e2e_gpu")


def test_variant_label_puts_its_tree_first_on_the_child_path(bench: Any, tmp_path: Path) -> None:
    variants = bench.parse_variants([f"before={tmp_path}"])
    assert variants == {"before": str(tmp_path.resolve())}
    device, env = bench.child_launch("maca@before", variants, {"PYTHONPATH": "/site:/src", "X": "1"})
    assert device == "maca" and env["X"] == "1"
    assert env["PYTHONPATH"].split(os.pathsep) == [str(tmp_path.resolve()), "/site", "/src"]
    device, env = bench.child_launch("cuda", variants, {"PYTHONPATH": "/site"})
    assert device == "cuda" and env["PYTHONPATH"] == "/site"
    with pytest.raises(SystemExit, match="no --variant after=DIR"):
        bench.child_launch("maca@after", variants, {})
    with pytest.raises(SystemExit, match="expected NAME=DIR"):
        bench.parse_variants(["before"])
    with pytest.raises(SystemExit, match="is not a directory"):
        bench.parse_variants([f"x={tmp_path / 'missing'}"])


def _run(label: str, tok_s: float, ms: float, probe: float = 10.0) -> dict[str, object]:
    return {"mode": "eager", "device_type": label.partition("@")[0], "label": label, "output_tok_per_s": tok_s,
            "batch1_ms_per_token": ms, "batch1_streams_ms": [ms], "batch1_streams_probe_ms": [probe],
            "host_probe_ms": [probe, probe], "first_tokens": [[1, 2], [3], [4], [5]]}


def test_summary_ratios_are_first_label_against_second(bench: Any) -> None:
    results = [_run("maca", 2000.0, 25.0), _run("maca@before", 1600.0, 30.0), _run("maca@before", 1800.0, 28.0),
               _run("maca", 2200.0, 24.0)]
    assert bench.schedule(["maca", "maca@before"], 2) == ["maca", "maca@before", "maca@before", "maca"]
    lines = bench.summarize(results, ["eager"], ("maca", "maca@before"))
    row = next(line for line in lines if line.startswith("| eager | 2, 2 |"))
    # throughput medians 2100 vs 1700; batch-1 medians 24.5 vs 29.0 ms (ratio before/after: > 1 = faster)
    assert "2100.0 / 1700.0 (**1.235**)" in row and "24.50 / 29.00 (**1.184**)" in row
    assert "Ratios are maca vs maca@before" in "\n".join(lines)
    assert any(line.startswith("| eager | maca@before | 1600.0 |") for line in lines)
