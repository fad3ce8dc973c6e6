"""The launch counts of ``bench/profile_batch1.py`` from a torch.profiler trace: each device event is classed by
its name and the API call that launched it (joined by correlation id), and counted per step and inside
``model_forward`` by the launch call's host time. Checked on a synthetic Kineto-format trace whose events are drawn
at random, against counts tallied independently while drawing them."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

KINDS = {  # kind -> (trace category, event name, launch API)
    "triton": ("kernel", "_rms_norm_kernel", "cuLaunchKernelEx"),
    "cublas": ("kernel", "nvjet_tst_64x8_64x16_4x1_v_bz_splitK_TNT", "cudaLaunchKernel"),
    "cublas_ex": ("kernel", "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize64x64x64", "cuLaunchKernelEx"),
    "other": ("kernel", "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<int> >",
              "cudaLaunchKernel"),
    "DtoD": ("gpu_memcpy", "Memcpy DtoD (Device -> Device)", "cudaMemcpyAsync"),
    "HtoD": ("gpu_memcpy", "Memcpy HtoD (Pageable -> Device)", "cudaMemcpyAsync"),
    "DtoH": ("gpu_memcpy", "Memcpy DtoH (Device -> Pinned)", "cudaMemcpyAsync"),
    "memset": ("gpu_memset", "Memset (Device)", "cudaMemsetAsync"),
}
CLASS = {"cublas_ex": "cublas"}


@pytest.fixture(scope="module")
def bench(bench_script: Any) -> Any:
    return bench_script("profile_batch1")


class _Prof:
    """Stands in for torch.profiler's ``profile``: the two methods the summary uses."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events

    def export_chrome_trace(self, path: str) -> None:
        Path(path).write_text(json.dumps({"traceEvents": self.events}))

    def key_averages(self) -> Any:
        class _Table:
            def table(self, **_: Any) -> str:
                return ""

        return _Table()


def test_launch_counts_per_step_and_inside_model_forward(bench: Any, tmp_path: Path) -> None:
    rng = random.Random(1234)
    steps = 3
    events: list[dict[str, Any]] = []
    want = {"step": Counter(), "forward": Counter()}
    syncs = Counter()
    corr = 0
    t = 0.0
    for _ in range(steps):
        fwd_start, fwd_len = t + 50.0, 400.0
        events.append({"ph": "X", "cat": "user_annotation", "name": bench.FWD_MARK, "ts": fwd_start, "dur": fwd_len})
        for _ in range(rng.randrange(20, 40)):
            kind = rng.choice(sorted(KINDS))
            cat, name, api = KINDS[kind]
            ts = t + rng.uniform(0.0, 500.0)  # some launches before / after the forward span
            corr += 1
            events.append({"ph": "X", "cat": "cuda_driver" if api.startswith("cu") and not api.startswith("cuda")
                           else "cuda_runtime", "name": api, "ts": ts, "dur": 2.0, "args": {"correlation": corr}})
            events.append({"ph": "X", "cat": cat, "name": name, "ts": ts + 5000.0, "dur": 3.0,
                           "args": {"correlation": corr}})
            cls = CLASS.get(kind, kind)
            want["step"][cls] += 1
            if fwd_start <= ts <= fwd_start + fwd_len:
                want["forward"][cls] += 1
        for _ in range(rng.randrange(1, 4)):
            ts = t + rng.uniform(0.0, 500.0)
            events.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaStreamSynchronize", "ts": ts, "dur": 30.0,
                           "args": {"correlation": 10**6 + len(events)}})
            syncs["step"] += 1
            syncs["forward"] += fwd_start <= ts <= fwd_start + fwd_len
        t += 1000.0
    rng.shuffle(events)
    got = bench._summarise_trace(_Prof(events), steps, tmp_path, "fake")
    assert got["forward_spans_found"] == steps
    for scope, key in (("step", "per_step"), ("forward", "per_step_in_model_forward")):
        for cls in ("triton", "cublas", "other", "DtoD", "HtoD", "DtoH", "memset"):
            assert got[key][cls] == round(want[scope][cls] / steps, 2), (scope, cls, got[key], want[scope])
        assert got[key]["launches"] == round(sum(want[scope].values()) / steps, 2)
        assert got[key]["host_syncs"] == round(syncs[scope] / steps, 2)
    assert (tmp_path / "fake_trace.json.gz").exists()
