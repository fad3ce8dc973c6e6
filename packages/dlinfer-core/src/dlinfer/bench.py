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

from dlinfer.registry import REGISTRY
from dlinfer.spec import SPECS


def _sync(device: torch.device) -> None:
    if device.type != "cpu" and hasattr(torch, "accelerator"):
        torch.accelerator.synchronize()


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


def dispatch_overhead(backend: str, device: torch.device, rounds: int = 7) -> tuple[float, float, float]:
    """(direct µs, dlinfer.ops µs, dlinfer.ops with shape validation µs) per ``rms_norm`` call on a [1, 8] tensor.

    Both are timed in interleaved rounds; each figure is the minimum over rounds (the
    least-disturbed measurement), which isolates the fixed per-call cost on a busy machine.
    """
    import timeit

    import dlinfer.ops as ops
    from dlinfer.dispatch import STATE, activate, set_validation

    activate(backend)
    impl = REGISTRY.load_ops(backend).get("rms_norm") or REGISTRY.load_ops("reference")["rms_norm"]
    x = torch.randn(1, 8, device=device)
    w = torch.randn(8, device=device)
    number = 2000
    direct, public, checked = [], [], []
    before = (STATE.validate, STATE.full)
    try:
        for _ in range(rounds):
            set_validation("off")
            direct.append(timeit.timeit(lambda: impl(x, w, eps=1e-6), number=number) / number)
            public.append(timeit.timeit(lambda: ops.rms_norm(x, w, eps=1e-6), number=number) / number)
            set_validation("shapes")
            checked.append(timeit.timeit(lambda: ops.rms_norm(x, w, eps=1e-6), number=number) / number)
    finally:
        STATE.validate, STATE.full = before
    _sync(device)
    return min(direct) * 1e6, min(public) * 1e6, min(checked) * 1e6


def run_bench(backend: str | None, *, ops: Iterable[str] | None = None, device: str | None = None,
              size: str = "small") -> int:
    from dlinfer.dispatch import activate
    from dlinfer.testing.cases import cases_for
    from dlinfer.testing.runner import call

    name = backend or activate().name
    rec = REGISTRY.records[name]
    assert rec.backend is not None
    dev = torch.device(device or rec.backend.device_type)
    direct, public, checked = dispatch_overhead(name, dev)
    print(f"dispatch overhead ({name}, rms_norm on [1, 8]): direct {direct:.2f} µs, dlinfer.ops {public:.2f} µs, "
          f"overhead {public - direct:+.2f} µs; with DLINFER_VALIDATE=shapes {checked:.2f} µs "
          f"({checked - direct:+.2f} µs)")
    impl = REGISTRY.load_ops(name)
    reference = REGISTRY.load_ops("reference")
    wanted = set(ops) if ops else set(impl)
    print(f"\n{'op':26} {'case':40} {'dtype':9} {'backend µs':>11} {'reference µs':>13} {'speedup':>8}")
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
        t_be = time_call(lambda: call(spec, impl[case.op], mine), dev, repeat=3)
        t_ref = time_call(lambda: call(spec, reference[case.op], args), dev, repeat=3)
        print(f"{case.op:26} {case.name[:40]:40} {str(dt)[6:]:9} {t_be * 1e6:11.1f} {t_ref * 1e6:13.1f} "
              f"{t_ref / t_be:7.2f}x", flush=True)
        print(f"  {i + 1}/{len(todo)}", file=sys.stderr, end="\r" if sys.stderr.isatty() else "\n")
    return 0
