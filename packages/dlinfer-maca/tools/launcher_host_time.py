"""Host time of maca's op launchers at the Llama-3-8B batch-1 decode shape, with every kernel launch replaced by a
no-op: what each ``dlinfer_maca.ops`` call costs the host besides Triton's own launch path.

    TRITON_INTERPRET=1 python packages/dlinfer-maca/tools/launcher_host_time.py [--repeats 15] [--calls 500]
    python packages/dlinfer-maca/tools/launcher_host_time.py --launch triton

``--launch triton`` keeps Triton's launch path: a stand-in Triton driver (``mock_triton_driver.py``) makes the kernels
compile for sm_90 with Triton's bundled ptxas (the configs the launchers pick on a GPU, ``TRITON_INTERPRET`` unset)
and run ``JITFunction.run`` in full (argument binding, specialisation, cache lookup, grid, launch bookkeeping); only
loading the binary and the C launcher's ``cuLaunchKernelEx`` are no-ops. The ops' CPU-tensor refusal is lifted.
The difference to the default is Triton's Python launch path per op on this host.

Runs on the CPU (the launches never happen, so no GPU is needed; CPU tensors stand in, ``TRITON_INTERPRET=1`` lets
maca accept them). Shapes: hidden 4096, 32/8 heads of 128, MLP 14336, bf16, one sequence at 301 tokens in 64-token
blocks. Prints per op the minimum (and median) over ``--repeats`` timings of ``--calls`` calls, and the sum over one
decoder layer's calls (rms_norm, rotary in place, fill_kv_cache, paged decode, add_rms_norm, silu_and_mul) times 32
layers. Eager decode on a slow host is bound by this work plus the launches (dlinfer-lmdeploy BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

# decided before Triton is imported: its language functions and the kernels are defined for one mode
_THROUGH_TRITON = "--launch=triton" in sys.argv or "triton" in sys.argv[sys.argv.index("--launch") + 1:][:1] \
    if "--launch" in sys.argv else "--launch=triton" in sys.argv
if _THROUGH_TRITON:
    os.environ["TRITON_INTERPRET"] = "0"  # the kernels are defined (and their configs chosen) as on a GPU
else:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
from triton.runtime import interpreter, jit  # noqa: E402

LAYER = ("rms_norm", "rotary_inplace", "fill_kv_cache", "paged_decode", "add_rms_norm", "silu_and_mul")


def _stub_launches() -> list[int]:
    count = [0]

    def no_launch(self: object, grid: object) -> object:
        def run(*args: object, **kwargs: object) -> None:
            count[0] += 1
        return run

    jit.JITFunction.__getitem__ = no_launch  # type: ignore[method-assign]
    interpreter.InterpretedFunction.__getitem__ = no_launch  # type: ignore[method-assign]
    return count


def _triton_launches() -> list[int]:
    """Triton's launch path with a stand-in driver (no GPU): the launch log of the stand-in C launcher."""
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import mock_triton_driver

    mock_triton_driver.install()
    from dlinfer_maca import ops

    ops._check_device = lambda op, t: None  # CPU tensors stand in for the GPU's
    return mock_triton_driver.LAUNCHES


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--launch", choices=("stub", "triton"), default="stub",
                    help="stub: no launch path at all; triton: Triton's launch path up to the C launcher")
    args = ap.parse_args()
    if args.launch == "triton":
        count = _triton_launches()
    else:
        count = _stub_launches()
    from dlinfer_maca import ops

    torch.set_num_threads(1)
    dt = torch.bfloat16
    H, Hq, Hkv, D, inter = 4096, 32, 8, 128, 14336
    x, w, res = torch.randn(1, H, dtype=dt), torch.ones(H, dtype=dt), torch.randn(1, H, dtype=dt)
    q, k, v = torch.randn(1, Hq + 2 * Hkv, D, dtype=dt).split([Hq, Hkv, Hkv], dim=1)
    cos, sin = torch.randn(1, D, dtype=dt), torch.randn(1, D, dtype=dt)
    kc, vc = torch.zeros(64, 64, Hkv, D, dtype=dt), torch.zeros(64, 64, Hkv, D, dtype=dt)
    slots = torch.tensor([300], dtype=torch.int64)
    table = torch.arange(8, dtype=torch.int32).view(1, 8)
    seqlens = torch.tensor([301], dtype=torch.int32)
    gate_up = torch.randn(1, 2 * inter, dtype=dt)
    calls = {
        "rms_norm": lambda: ops.rms_norm(x, w, eps=1e-5),
        "rotary_inplace": lambda: ops.apply_rotary_pos_emb_inplace(q, k, cos, sin),
        "fill_kv_cache": lambda: ops.fill_kv_cache(k, v, kc, vc, slots, kv_layout="NHD"),
        "paged_decode": lambda: ops.paged_decode_attention(q, kc, vc, table, seqlens, max_seqlen_kv=301,
                                                           kv_layout="NHD"),
        "add_rms_norm": lambda: ops.add_rms_norm(x, res, w, eps=1e-5),
        "silu_and_mul": lambda: ops.silu_and_mul(gate_up),
        "dynamic_quant": lambda: ops.dynamic_quant(x),
    }
    best: dict[str, float] = {}
    for name, fn in calls.items():
        for _ in range(100):
            fn()
        samples = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for _ in range(args.calls):
                fn()
            samples.append((time.perf_counter() - t0) / args.calls * 1e6)
        best[name] = min(samples)
        print(f"{name:16} {best[name]:7.2f} us  (median {statistics.median(samples):7.2f})")
    layer = sum(best[n] for n in LAYER)
    launches = count[0] if args.launch == "stub" else len(count)
    print(f"one decoder layer ({', '.join(LAYER)}): {layer:.1f} us; 32 layers: {layer * 32 / 1000:.2f} ms "
          f"({launches} launches {'stubbed' if args.launch == 'stub' else 'through Triton, C launcher stubbed'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
