"""Probe of the per-token int8 quantiser at decode sizes: the shipped kernel, variants of it and LMDeploy's.

    python packages/dlinfer-maca/tools/quant_row_probe_gpu.py [--out DIR]

``dynamic_quant`` is 0.80-0.95x of LMDeploy's ``per_token_quant_int8`` at T <= 256 on the H200 (BENCHMARKS.md).
This times, side by side (medians of CUDA-graph replays), variants that each drop one difference between the
two kernels, checks every variant's int8 codes and scales against the shipped kernel's (a code may differ by one
at an exact tie where a variant divides instead of multiplying by the reciprocal), and writes both kernels' PTX
to ``DIR`` so the instruction streams can be compared offline.
"""

# ruff: noqa: B023
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import torch
import triton
import triton.language as tl


@triton.jit
def _variant_kernel(x_ptr, q_ptr, s_ptr, stride_x, stride_q, H, BLOCK: tl.constexpr, CLAMP: tl.constexpr,
                    DIVIDE: tl.constexpr):
    """Runtime H and strides; ``CLAMP``: clamp the codes to +-127; ``DIVIDE``: y / scale instead of y * (1/scale)."""
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < H
    y = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    amax = tl.max(tl.abs(y), axis=0)
    scale = amax / 127.0
    safe = tl.where(scale == 0.0, 1.0, scale)
    if DIVIDE:
        q = tl.extra.cuda.libdevice.rint(y / safe)
    else:
        q = tl.extra.cuda.libdevice.rint(y * (1.0 / safe))
    if CLAMP:
        q = tl.minimum(tl.maximum(q, -127.0), 127.0)
    tl.store(q_ptr + row * stride_q + cols, q.to(tl.int8), mask=mask)
    tl.store(s_ptr + row, scale)


def _variant(x: torch.Tensor, clamp: bool, divide: bool, warps: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
    M, H = x.shape
    q = torch.empty((M, H), dtype=torch.int8, device=x.device)
    s = torch.empty((M,), dtype=torch.float32, device=x.device)
    ck = _variant_kernel[(M,)](x, q, s, x.stride(0), q.stride(0), H, BLOCK=triton.next_power_of_2(H), CLAMP=clamp,
                               DIVIDE=divide, num_warps=warps)
    return q, s, ck


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA device", file=sys.stderr)
        return 2
    from dlinfer_maca.bench import _import_lmdeploy, time_ms
    from dlinfer_maca.kernels import norm

    lmd = _import_lmdeploy()
    os.makedirs(args.out, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for H in (4096, 14336):
        warps = min(max(triton.next_power_of_2(H) // 256, 1), 8)
        for T in (1, 16, 256):
            x = torch.randn(T, H, device="cuda", dtype=torch.bfloat16)
            ref_q, ref_s = norm.dynamic_quant_fwd(x)
            cells: dict[str, float] = {"shipped": 1000 * time_ms(lambda: norm.dynamic_quant_fwd(x))}
            codes: dict[str, int] = {}
            for name, clamp, divide in (("runtime-H", True, False), ("no-clamp", False, False),
                                        ("no-clamp+divide", False, True)):
                q, s, ck = _variant(x, clamp, divide, warps)
                codes[name] = int((q.int() - ref_q.int()).abs().max()) if torch.equal(s, ref_s) else -1
                cells[name] = 1000 * time_ms(lambda: _variant(x, clamp, divide, warps))
            if lmd is not None:
                cells["lmdeploy"] = 1000 * time_ms(lambda: lmd.per_token_quant_int8(x, 1e-7))
            rows.append({"H": H, "T": T, "us": cells, "max_code_diff_vs_shipped": codes})
            print(f"H{H} T{T}: " + " ".join(f"{k} {v:.2f}" for k, v in cells.items()) + f" | code diff {codes}",
                  flush=True)
    # PTX of the shipped kernel and LMDeploy's at H 14336, T 1, for an offline diff
    try:
        import importlib

        lmd_mod = importlib.import_module("lmdeploy.pytorch.kernels.cuda.w8a8_triton_kernels")
        x = torch.randn(1, 14336, device="cuda", dtype=torch.bfloat16)
        norm.dynamic_quant_fwd(x)
        lmd_mod.per_token_quant_int8(x, 1e-7)
        for name, kern in (("shipped", norm._dynamic_quant_kernel), ("lmdeploy", lmd_mod._per_token_quant_int8)):
            for cache in kern.device_caches.values():
                for i, ck in enumerate(cache[0].values()):
                    with open(os.path.join(args.out, f"quant-row-{name}-{i}.ptx"), "w") as f:
                        f.write(ck.asm["ptx"])
    except Exception as exc:  # noqa: BLE001 - the timings above are the main output
        print(f"PTX dump skipped: {type(exc).__name__}: {exc}")
    with open(os.path.join(args.out, "quant-row-probe.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
