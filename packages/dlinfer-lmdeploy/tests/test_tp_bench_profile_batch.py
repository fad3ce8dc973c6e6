"""bench/lmdeploy_tp_gpu.py --profile-batch N: the profiled window's kernel time per decode step (window span over
the batches' mean step time) and the GPU's idle time per step, from the trace summary."""

from __future__ import annotations

import json
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


def test_one_profiled_child_per_batch_size_after_one_unprofiled_child(bench: Any, monkeypatch, tmp_path) -> None:
    """``--profile-batch 64,1``: per device one unprofiled child, then one profiled child per batch size, in order;
    the first batch's trace summary stays under ``allreduce`` and every one is kept by batch size."""
    calls: list[tuple[str, Any, int]] = []

    def fake_child(args: Any, model: Any, device: str, tp: int, profile_dir: Any, batch: int = 1) -> dict:
        calls.append((device, profile_dir and profile_dir.name, batch))
        if profile_dir is None:
            return {"model": model.name, "device_type": device, "tp": tp, "output_tok_per_s": 1.0}
        return {"allreduce": {"graph_steps": batch}}

    monkeypatch.setattr(bench, "build", lambda name, layers, root, device, tiny=False: tmp_path / f"{name}-{layers}l")
    monkeypatch.setattr(bench, "_child", fake_child)
    out = tmp_path / "out.json"
    monkeypatch.setattr("sys.argv", ["x", "--tp", "1", "--profile-tp1", "--models", "llama3_8b", "--devices",
                                     "maca,cuda", "--profile-batch", "64,1", "--out", str(out)])
    assert bench.main() == 0
    assert calls == [("maca", None, 1), ("maca", "llama3_8b-8l", 64), ("maca", "llama3_8b-8l", 1),
                     ("cuda", None, 1), ("cuda", "llama3_8b-8l", 64), ("cuda", "llama3_8b-8l", 1)]
    rows = json.loads(out.read_text())
    assert [r["allreduce"] for r in rows] == [{"graph_steps": 64}] * 2
    assert [r["allreduce_by_batch"] for r in rows] == [{"64": {"graph_steps": 64}, "1": {"graph_steps": 1}}] * 2


def test_each_profiled_child_writes_its_own_trace_prefix(bench: Any, monkeypatch, tmp_path) -> None:
    """The profiled children of one model differ in their trace prefix (device, tp and batch size), so that a later
    child never reads an earlier one's trace, and hand their batch size on."""
    from dlinfer_lmdeploy.testing import child

    seen: list[tuple[list[str], dict]] = []
    monkeypatch.setattr(child, "run_module", lambda name, argv, deadline_s, env, what: seen.append((argv, env)) or {})
    args = bench.argparse.Namespace(peer_executor="mp", executor="mp", dry_run=False, profile_delay=20.0,
                                    profile_window=4.0, timeout=60)
    for batch in (64, 1):
        bench._child(args, tmp_path / "m", "maca", 1, tmp_path / "profiles", batch)
    prefixes = [env["LMDEPLOY_PROFILE_OUT_PREFIX"] for _, env in seen]
    assert prefixes == [str(tmp_path / "profiles" / f"maca_tp1_b{b}_rank") for b in (64, 1)]
    assert [argv[argv.index("--profile") + 1] for argv, _ in seen] == ["20.0,4.0,64", "20.0,4.0,1"]
