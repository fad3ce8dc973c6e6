"""The dense GEMMs of one decode step, timed alone: what cuBLAS (``F.linear``, bf16) takes for a shape's layer
GEMMs at M rows, summed over the layers plus the LM head. This is the GEMM share of a decode step's floor that
the vendor GEMM reaches on this GPU, to set beside a profile's GEMM time per step.

    python packages/dlinfer-lmdeploy/bench/gemm_step_floor_gpu.py [--shape llama3_8b] [--ms 1,64]
    python packages/dlinfer-lmdeploy/bench/gemm_step_floor_gpu.py --cpu-smoke        # plumbing only, tiny widths

Each GEMM is timed as the median over 50 replays of a device graph holding 10 calls (weights of one GEMM only, so
the L2 cache holds none of the larger ones between calls). Random weights.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import SHAPES  # noqa: E402


def step_gemms(shape: str) -> tuple[list[tuple[str, int, int]], int, tuple[str, int, int]]:
    """``(per-layer [(name, IN, OUT)], layers, LM head (name, IN, OUT))`` of a dense shape."""
    _, cfg, layers = SHAPES[shape]
    if "num_local_experts" in cfg or "num_experts" in cfg:
        raise ValueError(f"gemm_step_floor: {shape} is a MoE shape; only dense shapes are supported")
    h, heads, kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = h // heads
    inter = cfg["intermediate_size"]
    per_layer = [("qkv", h, (heads + 2 * kv) * d), ("o", heads * d, h), ("gate_up", h, 2 * inter), ("down", inter, h)]
    return per_layer, layers, ("lm_head", h, cfg["vocab_size"])


def _time_us(fn: Any, device: str) -> float:
    import torch

    if device == "cpu":
        fn()
        ts = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e6)
        return sorted(ts)[2]
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(10):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ts = []
    for _ in range(50):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        ts.append(start.elapsed_time(end) / 10 * 1e3)
    return sorted(ts)[len(ts) // 2]


def measure(shape: str, ms: list[int], device: str, width_div: int = 1) -> dict[str, Any]:
    import torch

    per_layer, layers, head = step_gemms(shape)
    rows: list[dict[str, Any]] = []
    totals: dict[int, float] = {}
    for M in ms:
        total = 0.0
        for name, k, n in [*per_layer, head]:
            k, n = max(k // width_div, 8), max(n // width_div, 8)
            w = torch.randn(n, k, device=device, dtype=torch.bfloat16)
            x = torch.randn(M, k, device=device, dtype=torch.bfloat16)
            us = _time_us(lambda x=x, w=w: torch.nn.functional.linear(x, w), device)
            rows.append({"M": M, "gemm": name, "in": k, "out": n, "us": round(us, 2),
                         "gb_per_s": round(n * k * 2 / us / 1e3, 1)})
            total += us * (1 if name == "lm_head" else layers)
            del w, x
        totals[M] = round(total / 1e3, 3)
        parts = ", ".join(f"{r['gemm']} {r['us']:.1f}us" for r in rows if r["M"] == M)
        print(f"{shape} M{M}: GEMMs of one decode step {totals[M]:.3f} ms ({layers} layers + LM head; {parts})",
              flush=True)
    return {"shape": shape, "device": device, "rows": rows, "step_gemm_ms": totals}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="llama3_8b")
    ap.add_argument("--ms", default="1,64")
    ap.add_argument("--out", default=None, help="JSON file")
    ap.add_argument("--cpu-smoke", action="store_true", help="CPU, widths / 64: the plumbing only")
    args = ap.parse_args()
    import torch

    device = "cpu" if args.cpu_smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("needs a CUDA device (or --cpu-smoke)", file=sys.stderr)
        return 2
    res = measure(args.shape, [int(m) for m in args.ms.split(",")], device, 64 if args.cpu_smoke else 1)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
