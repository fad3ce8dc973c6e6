"""Where one Triton launch's host time goes, on a host without a GPU (stand-in driver, C launcher stubbed).

    python packages/dlinfer-maca/tools/triton_launch_split.py [--calls 2000] [--repeats 10]

Times maca's RMSNorm kernel (17 parameters) at the 8B decode shape three ways, minimum µs per call:
- ``kernel[grid](...)``: Triton's ``JITFunction.run`` in full;
- the same kernel chosen the same way (Triton's own binder and cache key, so the same compiled variant) and launched
  without the launch metadata and the launch hooks: what a bypass could save without risking a different kernel;
- the binder alone (argument binding and specialisation): the part no such bypass can skip.
Needs ``TRITON_INTERPRET`` unset; uses private Triton 3.6 internals (``device_caches``, ``compute_cache_key``, the C
launcher's argument order), which is why no launcher uses this path.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ["TRITON_INTERPRET"] = "0"  # before Triton is imported: the kernel is defined as for a GPU

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mock_triton_driver  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    mock_triton_driver.install()
    from triton import knobs
    from triton.runtime.driver import driver
    from triton.runtime.jit import compute_cache_key

    from dlinfer_maca.kernels import norm

    torch.set_num_threads(1)
    H = 4096
    x, w = torch.randn(1, H, dtype=torch.bfloat16), torch.ones(H, dtype=torch.bfloat16)
    out = torch.empty_like(x)
    fn = norm._rms_norm_kernel
    call = (x, x, w, out, out, out, H, H, H, H, H, 1e-5)
    meta = dict(BLOCK=H, HAS_RES=False, QUANT=False, HW_RINT=False, I64=False, num_warps=8)
    grid = (1,)
    fn[grid](*call, **meta)  # compiles

    def chosen() -> tuple[Any, Any, Any]:
        kwargs = dict(meta, debug=fn.debug or knobs.runtime.debug,
                      instrumentation_mode=knobs.compilation.instrumentation_mode)
        device = driver.active.get_current_device()
        kernel_cache, key_cache, _, _, binder = fn.device_caches[device]
        bound, specialization, options = binder(*call, **kwargs)
        return kernel_cache[compute_cache_key(key_cache, specialization, options)], bound, device

    def without_metadata() -> None:
        kernel, bound, device = chosen()
        kernel.run(grid[0], 1, 1, driver.active.get_current_stream(device), kernel.function, kernel.packed_metadata,
                   None, None, None, *bound.values())

    def binder_only() -> None:
        fn.device_caches[driver.active.get_current_device()][4](*call, **meta)

    ways: dict[str, Callable[[], None]] = {
        "JITFunction.run": lambda: fn[grid](*call, **meta),
        "same kernel, no launch metadata or hooks": without_metadata,
        "binder alone": binder_only,
    }
    before = len(mock_triton_driver.LAUNCHES)
    for name, way in ways.items():
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for _ in range(args.calls):
                way()
            best = min(best, (time.perf_counter() - t0) / args.calls * 1e6)
        print(f"{name:42} {best:6.2f} us")
    launched = len(mock_triton_driver.LAUNCHES) - before
    print(f"{launched} launches reached the stand-in C launcher")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
