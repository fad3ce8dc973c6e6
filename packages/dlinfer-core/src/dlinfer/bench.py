"""``dlinfer bench``: per-op timings of a backend and the dispatch overhead of ``dlinfer.ops``.

Timings are medians over repeated runs measured side by side in one process; the
dispatch overhead compares ``dlinfer.ops.rms_norm`` with a direct call of the same
implementation on a tiny tensor.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch

from dlinfer._sync import synchronize as _sync
from dlinfer.registry import REGISTRY
from dlinfer.spec import SPECS


def time_call(fn: Callable[[], Any], device: torch.device, *, repeat: int = 7, min_seconds: float = 0.02) -> float:
    """Median seconds per call over ``repeat`` batches, each long enough to be measurable."""
    fn()
    _sync(device)
    n = 1
    while True:
        t = time.perf_counter()
        for _ in range(n):
            fn()
        _sync(device)
        if time.perf_counter() - t >= min_seconds or n >= 1 << 20:
            break
        n *= 4
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        _sync(device)
        samples.append((time.perf_counter() - t) / n)
    return statistics.median(samples)


def _min_time(fn: Callable[[], Any], number: int, rounds: int) -> float:
    import timeit

    return min(timeit.repeat(fn, number=number, repeat=rounds)) / number


def dispatch_overhead(backend: str, device: torch.device, rounds: int = 9) -> dict[str, float]:
    """Per-call cost (µs) of ``dlinfer.ops.rms_norm`` on a [1, 8] tensor against a direct call.

    ``noop_*`` swap a do-nothing implementation into the dispatch table, so their difference is
    the dispatch cost alone (kernel noise removed); ``direct``/``ops`` use the backend's real
    ``rms_norm``; ``validated`` adds ``DLINFER_VALIDATE=shapes``. Minimum over interleaved rounds.
    """
    import dlinfer.ops as ops
    from dlinfer.dispatch import STATE, TABLE, activate, set_validation

    activate(backend)
    impl = TABLE.rms_norm
    x = torch.randn(1, 8, device=device)
    w = torch.randn(8, device=device)

    def noop(x: torch.Tensor, weight: torch.Tensor, *, eps: float) -> torch.Tensor:
        return x

    before = (STATE.validate, STATE.full)
    out: dict[str, float] = {}
    try:
        set_validation("off")
        TABLE.rms_norm = noop
        out["noop_direct"] = _min_time(lambda: noop(x, w, eps=1e-6), 20000, rounds)
        out["noop_ops"] = _min_time(lambda: ops.rms_norm(x, w, eps=1e-6), 20000, rounds)
        TABLE.rms_norm = impl
        out["direct"] = _min_time(lambda: impl(x, w, eps=1e-6), 2000, rounds)
        out["ops"] = _min_time(lambda: ops.rms_norm(x, w, eps=1e-6), 2000, rounds)
        set_validation("shapes")
        out["validated"] = _min_time(lambda: ops.rms_norm(x, w, eps=1e-6), 2000, rounds)
    finally:
        TABLE.rms_norm = impl
        STATE.validate, STATE.full = before
    _sync(device)
    return {k: v * 1e6 for k, v in out.items()}


def run_bench(backend: str | None, *, ops: Iterable[str] | None = None, device: str | None = None,
              size: str = "small") -> int:
    from dlinfer.dispatch import activate
    from dlinfer.testing.cases import cases_for
    from dlinfer.testing.runner import call

    name = backend or activate().name
    rec = REGISTRY.records[name]
    assert rec.backend is not None
    dev = torch.device(device or rec.backend.device_type)
    t = dispatch_overhead(name, dev)
    print(f"dispatch overhead ({name}, rms_norm on [1, 8]): {t['noop_ops'] - t['noop_direct']:+.2f} µs per call "
          f"(no-op implementation: direct {t['noop_direct']:.2f} µs, via dlinfer.ops {t['noop_ops']:.2f} µs); "
          f"real rms_norm: direct {t['direct']:.2f} µs, via dlinfer.ops {t['ops']:.2f} µs, "
          f"with DLINFER_VALIDATE=shapes {t['validated']:.2f} µs")
    impl = REGISTRY.load_ops(name)
    reference = REGISTRY.load_ops("reference")
    wanted = set(ops) if ops else set(impl)
    alone = name == "reference"  # timing the reference against itself would print noise as a speedup
    print(f"\n{'op':26} {'case':40} {'dtype':9} {'backend µs':>11}"
          + ("" if alone else f" {'reference µs':>13} {'speedup':>8}"))
    todo = [c for c in cases_for(size=size) if c.op in wanted and c.op in impl]
    for i, case in enumerate(todo):
        dt = case.dtypes[0]
        args = case.build(torch.Generator().manual_seed(i), dt, rec.backend.kv_layout)
        args = {k: v.to(dev) if isinstance(v, torch.Tensor) and not k.endswith("_cpu") else v for k, v in args.items()}
        spec = SPECS[case.op]
        if case.op == "weight_quant_matmul":
            mine = dict(args)
            mine["qweight"], mine["scales"], mine["qzeros"] = impl["weight_quant_prepare"](
                args["qweight"], args["scales"], args["qzeros"], group_size=args["group_size"])
        else:
            mine = args
        fn_be, fn_ref = impl[case.op], reference[case.op]
        t_be = time_call(lambda s=spec, f=fn_be, a=mine: call(s, f, a), dev, repeat=3)
        row = f"{case.op:26} {case.name[:40]:40} {str(dt)[6:]:9} {t_be * 1e6:11.1f}"
        if not alone:
            t_ref = time_call(lambda s=spec, f=fn_ref, a=args: call(s, f, a), dev, repeat=3)
            row += f" {t_ref * 1e6:13.1f} {t_ref / t_be:7.2f}x"
        print(row, flush=True)
        print(f"  {i + 1}/{len(todo)}", file=sys.stderr, end="\r" if sys.stderr.isatty() else "\n")
    return 0
