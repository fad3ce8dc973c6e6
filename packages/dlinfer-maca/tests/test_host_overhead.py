"""Host-side cost of the launchers: the per-call Python work around each kernel launch (eager decode on a slow host
is bound by it). Launches are replaced by a no-op here, so only the launchers' own work runs; the last test runs
Triton's launch path with a stand-in driver (no GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import triton
from conftest import DEVICE, ROOT, needs_ptxas, run_as_for_gpu
from triton.runtime import jit

from dlinfer_maca import ops
from dlinfer_maca.kernels import _utils


@pytest.mark.parametrize("n", [*range(0, 70), 127, 128, 129, 4095, 4096, 4097, 14336, 2**31 - 1, 2**31, 2**40 + 3])
def test_host_helpers_match_triton(n: int) -> None:
    assert _utils.next_pow2(n) == triton.next_power_of_2(max(n, 1))
    for d in (1, 2, 3, 16, 64, 128, 8192):
        assert _utils.cdiv(n, d) == triton.cdiv(n, d)


def _decode_step_calls() -> dict[str, object]:
    """One Llama-shaped decode layer's maca ops at batch 1 (small widths), as LMDeploy calls them."""
    dt = torch.float16
    H, Hq, Hkv, D, inter = 256, 8, 2, 32, 512

    def t(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, dtype=dt, device=DEVICE)

    x, w, res, cos, sin, gu = t(1, H), t(H), t(1, H), t(1, D), t(1, D), t(1, 2 * inter)
    q, k, v = t(1, Hq + 2 * Hkv, D).split([Hq, Hkv, Hkv], dim=1)
    kc, vc = t(8, 16, Hkv, D), t(8, 16, Hkv, D)
    slots = torch.tensor([40], dtype=torch.int64, device=DEVICE)
    table = torch.arange(4, dtype=torch.int32, device=DEVICE).view(1, 4)
    seqlens = torch.tensor([41], dtype=torch.int32, device=DEVICE)
    return {
        "rms_norm": lambda: ops.rms_norm(x, w, eps=1e-5),
        "add_rms_norm": lambda: ops.add_rms_norm(x, res, w, eps=1e-5),
        "apply_rotary_pos_emb_inplace": lambda: ops.apply_rotary_pos_emb_inplace(q, k, cos, sin),
        "fill_kv_cache": lambda: ops.fill_kv_cache(k, v, kc, vc, slots, kv_layout="NHD"),
        "paged_decode_attention": lambda: ops.paged_decode_attention(q, kc, vc, table, seqlens, max_seqlen_kv=41,
                                                                     kv_layout="NHD"),
        "silu_and_mul": lambda: ops.silu_and_mul(gu),
        "dynamic_quant": lambda: ops.dynamic_quant(x),
    }


def test_launchers_call_no_triton_constexpr_function_on_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """``triton.cdiv`` / ``triton.next_power_of_2`` are constexpr functions in Triton 3.x: about 1.7 us per host
    call (argument unwrapping) against 0.2 us for plain Python; a decode launcher made five of them per call."""
    from triton.runtime import interpreter

    launches: list[str] = []

    def no_launch(self: object, grid: object) -> object:
        return lambda *args, **kwargs: launches.append(getattr(self, "__name__", repr(self)))

    for cls in (jit.JITFunction, interpreter.InterpretedFunction):
        monkeypatch.setattr(cls, "__getitem__", no_launch)
    constexpr_calls: list[str] = []
    original = jit.ConstexprFunction.__call__

    def counting(self: jit.ConstexprFunction, *args: object, **kwargs: object) -> object:
        constexpr_calls.append(getattr(self.fn, "__name__", "?"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(jit.ConstexprFunction, "__call__", counting)
    for name, call in _decode_step_calls().items():
        launches.clear()
        constexpr_calls.clear()
        call()
        assert launches, f"{name}: no kernel launch seen"
        assert constexpr_calls == [], f"{name}: host-side Triton constexpr calls {constexpr_calls}"


@needs_ptxas
def test_launch_timing_runs_through_triton_with_the_stand_in_driver(tmp_path: Path) -> None:
    """``tools/launcher_host_time.py --launch triton``: every op of the decode layer compiles for sm_90 and reaches
    the stand-in C launcher through ``JITFunction.run`` (one launch per call at least), with no GPU."""
    proc = run_as_for_gpu([str(ROOT / "packages/dlinfer-maca/tools/launcher_host_time.py"), "--launch", "triton",
                           "--repeats", "1", "--calls", "2"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    ops_timed = {line.split()[0] for line in lines[:-1]}
    assert ops_timed == {"rms_norm", "rotary_inplace", "fill_kv_cache", "paged_decode", "add_rms_norm", "silu_and_mul",
                         "dynamic_quant"}, lines
    launches = int(lines[-1].split("(")[-1].split()[0])
    assert launches >= 7 * (100 + 2), lines[-1]  # warm-up and timed calls of the 7 ops, each launching
    assert "through Triton" in lines[-1]


@needs_ptxas
def test_launch_split_tool_runs_both_launch_ways(tmp_path: Path) -> None:
    """``tools/triton_launch_split.py``: Triton's run path and the same kernel launched without launch metadata both
    reach the stand-in C launcher once per call; the binder alone launches nothing."""
    proc = run_as_for_gpu([str(ROOT / "packages/dlinfer-maca/tools/triton_launch_split.py"), "--calls", "5",
                           "--repeats", "2"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-1] == "20 launches reached the stand-in C launcher", proc.stdout
