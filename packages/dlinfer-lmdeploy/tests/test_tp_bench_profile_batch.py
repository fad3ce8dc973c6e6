"""bench/lmdeploy_tp_gpu.py --profile-batch N: the profiled window's kernel time per decode step (window span over
the batches' mean step time) and the GPU's idle time per step, from the trace summary."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(scope="module")
def bench(bench_script: Any) -> Any:
    return bench_script("lmdeploy_tp_gpu")


def test_per_step_figures_divide_the_window_by_the_step_time(bench: Any) -> None:
    trace = {"window_span_us": 60_000.0, "kernel_us": 54_000.0,
             "kernel_us_by_kind": {"gemm": 42_000.0, "attention": 9_000.0, "other": 3_000.0}}
    got = bench.per_step_us(trace, {"batch": 64, "batches": 2, "mean_step_ms": 6.0})
    assert got["steps_in_window"] == 10.0
    assert got["kernel_us_per_step_by_kind"] == {"gemm": 4200.0, "attention": 900.0, "other": 300.0}
    assert got["gpu_idle_us_per_step"] == 600.0
    assert got["per_step_source"].startswith("approximate")


def test_no_per_step_figures_without_batches_or_a_span(bench: Any) -> None:
    assert bench.per_step_us({"window_span_us": 1.0, "kernel_us": 1.0}, None) == {}
    assert bench.per_step_us({"window_span_us": 0.0}, {"mean_step_ms": 5.0}) == {}
