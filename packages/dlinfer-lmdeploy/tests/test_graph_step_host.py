"""Host work before a graph replay, at the 8B decode metadata with LMDeploy's int64 tensors (``bench/
graph_step_host.py``): the step's metadata build dispatches no device op, the refill 9 torch ops without a declared
kernel (13 before the metadata was deferred: 8 build + 5 copies) and none with one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


@pytest.mark.parametrize("batch", [1, 64])
def test_graph_decode_step_host_ops(batch: int, bench_script: Any) -> None:
    graph_step_host = bench_script("graph_step_host")
    plain = graph_step_host.measure(batch, declared=False, repeats=1, steps=2)
    assert plain["build_ops"] == []
    assert sorted(plain["refill_ops"]) == sorted(
        ["copy_"] * 4 + ["sub", "floor_divide", "gather", "remainder", "add"]), plain["refill_ops"]
    fused = graph_step_host.measure(batch, declared=True, repeats=1, steps=2)
    assert fused["ops"] == 0, fused


def test_maca_refill_through_triton_on_the_cpu(tmp_path: Path) -> None:
    """``--stand-in-triton``: maca's refill kernel compiles for sm_90 and every declared refill reaches the
    stand-in C launcher through Triton's launch path (no GPU), with no torch op of its own."""
    import triton

    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("Triton's bundled ptxas is missing")
    bench = Path(__file__).resolve().parents[1] / "bench" / "graph_step_host.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    proc = subprocess.run([sys.executable, str(bench), "--declared", "--stand-in-triton", "--batches", "1",
                           "--repeats", "1", "--steps", "3"], capture_output=True, text=True, env=env, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"declared fill:\s+0 ops", proc.stdout), proc.stdout
    launches = int(re.search(r"(\d+) refill launches reached", proc.stdout).group(1))
    assert launches >= 1 + 1 + 3, proc.stdout  # capture, the counted refill and the timed ones
