"""Host work before a graph replay, at the 8B decode metadata with LMDeploy's int64 tensors (``bench/
graph_step_host.py``): the step's metadata build dispatches no device op, the refill 9 torch ops without a declared
kernel (13 before the metadata was deferred: 8 build + 5 copies) and none with one."""

from __future__ import annotations

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
