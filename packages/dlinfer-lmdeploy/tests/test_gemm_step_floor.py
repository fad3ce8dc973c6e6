"""bench/gemm_step_floor_gpu.py: the GEMM list of a decode step, and its CPU smoke run."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(scope="module")
def bench(bench_script: Any) -> Any:
    return bench_script("gemm_step_floor_gpu")


def test_llama3_8b_step_reads_its_documented_weights(bench: Any) -> None:
    per_layer, layers, head = bench.step_gemms("llama3_8b")
    params = layers * sum(k * n for _, k, n in per_layer) + head[1] * head[2]
    # Llama-3-8B without embeddings and norms: 6.98 G in 32 layers + 0.525 G LM head (8.03 G - 0.525 G embedding)
    assert params == 32 * (4096 * 6144 + 4096 * 4096 + 4096 * 2 * 14336 + 14336 * 4096) + 4096 * 128256
    assert 7.49e9 < params < 7.51e9


def test_moe_shapes_are_refused_by_name(bench: Any) -> None:
    with pytest.raises(ValueError, match="mixtral_8x7b is a MoE shape"):
        bench.step_gemms("mixtral_8x7b")


def test_cpu_smoke_sums_layers_and_head(bench: Any) -> None:
    res = bench.measure("qwen2_7b", [1, 4], "cpu", width_div=64)
    for M in (1, 4):
        rows = [r for r in res["rows"] if r["M"] == M]
        assert [r["gemm"] for r in rows] == ["qkv", "o", "gate_up", "down", "lm_head"]
        want = sum(r["us"] * (1 if r["gemm"] == "lm_head" else 28) for r in rows) / 1e3
        assert res["step_gemm_ms"][M] == pytest.approx(want, rel=1e-3, abs=1e-3)
        assert all(r["us"] > 0 for r in rows)
