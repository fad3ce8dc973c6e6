"""bench/lmdeploy_tp_gpu.py: decode steps counted exactly from a profiler trace (one ``cudaGraphLaunch`` per
graph-mode step, its kernels found by correlation id), on synthetic Chrome traces with random timings: the engine's
eager kernels between replays (the LM head, sampling, copies) keep a period and are reported apart; an eager
prefill's GEMMs leave it out."""

from __future__ import annotations

import random
import statistics
from typing import Any

import pytest


@pytest.fixture(scope="module")
def bench(bench_script: Any) -> Any:
    return bench_script("lmdeploy_tp_gpu")


# names as the profilers print them, with the kind each one must be counted under
GRAPH_KERNELS = (("nvjet_hsh_128x64_gemm", "gemm"), ("_decode_split_kernel", "attention"),
                 ("_rms_norm_kernel", "norm"), ("_fwd_grouped_split_kernel", "attention"),
                 ("_reduce_split_kernel", "attention"), ("_silu_and_mul_kernel", "activation"))


def _trace(rng: random.Random, replays: int, prefill_after: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    events: list[dict[str, Any]] = []
    expected: dict[str, Any] = {"busy": [], "by_kind": {}, "by_name": {}, "periods": [], "idles": [], "between": [],
                                "betweens": [],
                                "prefill": {"gemm": 0.0, "attention": 0.0}, "small": 0.0, "gemm": 0.0}
    t = 1000.0
    corr = 7
    starts = []
    for i in range(replays):
        corr += rng.randint(1, 5)
        events.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaGraphLaunch", "ts": t - 5.0, "dur": 4.0,
                       "args": {"correlation": corr}})
        starts.append(t)
        busy = 0.0
        for name, kind in GRAPH_KERNELS + GRAPH_KERNELS[rng.randint(0, 2):rng.randint(3, 6)]:  # some launched twice
            dur = rng.uniform(1.0, 50.0)
            events.append({"ph": "X", "cat": "kernel", "name": name, "ts": t, "dur": dur,
                           "args": {"correlation": corr}})
            expected["by_kind"][kind] = expected["by_kind"].get(kind, 0.0) + dur
            us, launches = expected["by_name"].get(name, (0.0, 0))
            expected["by_name"][name] = (us + dur, launches + 1)
            busy += dur
            t += dur + rng.uniform(0.0, 2.0)
        expected["busy"].append(busy)
        t += rng.uniform(20.0, 400.0)  # the host gap
        between = 0.0
        # the engine's per-step eager kernels: the LM head (outside the graph in LMDeploy 0.18), sampling, copies
        for name in ("nvjet_lm_head_gemm", "_argmax_sampling_kernel", "elementwise_copy_kernel"):
            corr += 1
            dur = rng.uniform(1.0, 30.0)
            events.append({"ph": "X", "cat": "kernel", "name": name, "ts": t, "dur": dur,
                           "args": {"correlation": corr}})
            expected["gemm" if "gemm" in name else "small"] += dur
            between += dur
            t += dur + rng.uniform(5.0, 50.0)
        expected["between"].append(between)
        if i == prefill_after:  # an eager prefill: kernels launched one by one, other correlation ids
            for name in ("nvjet_gemm_prefill", "_flash_prefill_attention_kernel", "nvjet_gemm_prefill") * 2:
                corr += 1
                dur = rng.uniform(100.0, 900.0)
                events.append({"ph": "X", "cat": "kernel", "name": name, "ts": t, "dur": dur,
                               "args": {"correlation": corr}})
                expected["prefill"]["gemm" if "gemm" in name else "attention"] += dur
                t += dur + 3.0
    for i in range(replays - 1):
        if i == prefill_after:
            continue
        period = starts[i + 1] - starts[i]
        expected["periods"].append(period)
        expected["betweens"].append(expected["between"][i])
        expected["idles"].append(period - expected["busy"][i] - expected["between"][i])
    rng.shuffle(events)  # traces are not sorted by time
    return events, expected


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_graph_steps_count_replays_and_split_off_the_prefill(bench: Any, seed: int) -> None:
    rng = random.Random(seed)
    replays = rng.randint(6, 15)
    events, want = _trace(rng, replays, prefill_after=rng.randint(1, replays - 3))
    got = bench.graph_steps(events)
    assert got["graph_steps"] == replays
    assert got["consecutive_replays"] == replays - 2
    assert got["graph_busy_us_per_step"] == pytest.approx(sum(want["busy"]) / replays, abs=0.06)
    assert got["graph_kernel_us_per_step_by_kind"] == pytest.approx(
        {k: v / replays for k, v in want["by_kind"].items()}, abs=0.06)
    by_name = got["graph_kernels_per_step_by_name"]
    assert set(by_name) == {name for name, _ in GRAPH_KERNELS}
    for name, (us, launches) in want["by_name"].items():
        assert by_name[name]["us"] == pytest.approx(us / replays, abs=0.06)
        assert by_name[name]["launches"] == pytest.approx(launches / replays, abs=0.006)
    assert list(by_name) == sorted(by_name, key=lambda n: -by_name[n]["us"])
    assert got["graph_step_period_us_median"] == pytest.approx(statistics.median(want["periods"]), abs=0.06)
    assert got["graph_step_between_us_median"] == pytest.approx(statistics.median(want["betweens"]), abs=0.06)
    assert got["graph_step_idle_us_median"] == pytest.approx(statistics.median(want["idles"]), abs=0.06)
    eager = {"gemm": want["prefill"]["gemm"] + want["gemm"], "attention": want["prefill"]["attention"],
             "other": want["small"]}
    assert got["eager_kernel_us_by_kind"] == pytest.approx(eager, abs=0.06)


def test_a_versioned_driver_launch_counts_and_an_eager_trace_has_no_graph_steps(bench: Any) -> None:
    kernel = {"ph": "X", "cat": "kernel", "name": "k", "ts": 10.0, "dur": 2.0, "args": {"correlation": 3}}
    launch = {"ph": "X", "cat": "cuda_driver", "name": "cuGraphLaunch_v10000", "ts": 9.0, "dur": 1.0,
              "args": {"correlation": 3}}
    assert bench.graph_steps([kernel, launch])["graph_steps"] == 1
    eager = {**launch, "cat": "cuda_runtime", "name": "cudaLaunchKernel"}
    assert bench.graph_steps([kernel, eager]) == {}
