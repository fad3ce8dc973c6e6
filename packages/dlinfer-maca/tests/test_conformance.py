"""The dlinfer conformance kit (``dlinfer.testing``) run on this backend against the reference.

* ``small`` cases: everywhere. Without a GPU they run under ``TRITON_INTERPRET=1`` on CPU
  (marked ``interpreter``); set ``DLINFER_MACA_KIT_DTYPES=float16,bfloat16`` etc. to narrow.
* ``large`` cases and the attention / MoE sweeps below: only on a CUDA device (block sizes
  16/64/128, GQA 1/4/8, head sizes 64/128/256, contexts to 8k, MoE 8-64 experts top-2/top-8).

Every run draws a fresh seed; the kit poisons the allocator with NaN before each call.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
import torch
from conftest import DEVICE, ON_GPU

from dlinfer.registry import REFERENCE, REGISTRY
from dlinfer.testing import Case, plan, run_case
from dlinfer.testing.inputs import PagedSetup, paged_inputs, randn

BACKEND = "maca"


REFUSED: dict[str, str] = {}
"""Kit cases maca may refuse (op -> fragment of the NotImplementedError): none, as the README says; its two
documented refusals (dynamic_quant to a non-int8 dtype, a W4A16 group size that is not a multiple of 16)
are outside the kit's cases and are checked by test_documented_refusals."""

NOT_LOADABLE = "maca backend not loadable"


def _runs(size: str) -> list[Any]:
    try:
        runs = plan(BACKEND, size=size)
    except Exception as exc:  # noqa: BLE001 - surfaced as a failing test, not a collection crash
        return [pytest.param((NOT_LOADABLE, f"{type(exc).__name__}: {exc}"), id="not-loadable")]
    # the CPU interpreter runs the two working dtypes; fp32 runs on GPU (override with the variable)
    wanted = os.environ.get("DLINFER_MACA_KIT_DTYPES", "" if ON_GPU else "float16,bfloat16")
    if wanted:
        keep = {getattr(torch, n.strip()) for n in wanted.split(",")}
        runs = [r for r in runs if r[1] in keep]
    return [pytest.param(r, id=f"{r[0].op}-{r[0].name}-{str(r[1])[6:]}-{r[2]}") for r in runs]


def _check(case: Case, dtype: torch.dtype, layout: str = "NHD") -> None:
    ops = REGISTRY.load_ops(BACKEND)
    ref = REGISTRY.load_ops(REFERENCE)
    res = run_case(case, dtype, ops, ref, device=DEVICE, layout=layout)
    if res.status == "unsupported":
        allowed = REFUSED.get(case.op)
        assert allowed is not None and allowed in res.detail, \
            f"maca refused {case.op} {case.name} although it declares no such refusal: {res.detail}"
        return
    assert res.status == "pass", f"{res.status} (seed {res.seed}): {res.detail}"


def _unpack(run: Any) -> tuple[Case, torch.dtype, str]:
    if run[0] == NOT_LOADABLE:
        pytest.fail(f"{NOT_LOADABLE}: {run[1]}")
    return run


@pytest.mark.interpreter
@pytest.mark.parametrize("run", _runs("small"))
def test_kit_small(run: Any) -> None:
    case, dtype, layout = _unpack(run)
    _check(case, dtype, layout)


def test_documented_refusals() -> None:
    """Exactly the README's two refusals, raised before any kernel runs, naming op, option and backend."""
    ops = REGISTRY.load_ops(BACKEND)
    with pytest.raises(NotImplementedError, match=r"dlinfer.ops.dynamic_quant: dtype=torch.int16 .*'maca'"):
        ops["dynamic_quant"](torch.randn(2, 16, device=DEVICE, dtype=torch.float16), dtype=torch.int16)
    x = torch.randn(1, 64, device=DEVICE, dtype=torch.float16)
    q = torch.zeros(64, 4, dtype=torch.int32, device=DEVICE)
    with pytest.raises(NotImplementedError, match=r"weight_quant_matmul: group_size=8 .*'maca'"):
        ops["weight_quant_matmul"](x, q, torch.ones(8, 32, device=DEVICE, dtype=torch.float16),
                                   torch.zeros(8, 4, dtype=torch.int32, device=DEVICE), None, group_size=8)
    with pytest.raises(NotImplementedError, match=r"weight_quant_prepare: group_size=8 .*'maca'"):  # at load time
        ops["weight_quant_prepare"](q, torch.ones(8, 32, device=DEVICE, dtype=torch.float16),
                                    torch.zeros(8, 4, dtype=torch.int32, device=DEVICE), group_size=8)


def test_unloadable_backend_fails_instead_of_skipping(tmp_path) -> None:  # noqa: ANN001
    """With the plugin blocked, the kit test must fail (a broken maca install is not a green run)."""
    env = {**os.environ, "DLINFER_DISABLE_PLUGINS": "maca"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                           "-k", "test_kit_small"], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=600, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 failed" in proc.stdout and NOT_LOADABLE in proc.stdout, proc.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="large conformance cases need a CUDA device")
@pytest.mark.parametrize("run", _runs("large") if ON_GPU else [None])
def test_kit_large(run: Any, request: pytest.FixtureRequest) -> None:
    if request.config.getoption("--dlinfer-backend", default=None):
        pytest.skip("the kit's pytest plugin runs these cases itself (--dlinfer-backend given)")
    case, dtype, layout = _unpack(run)
    _check(case, dtype, layout)


# -- GPU sweeps over the paged-attention geometry and MoE routing -------------------------------------
def _paged_case(op: str, s: PagedSetup) -> Case:
    def build(g: torch.Generator, dt: torch.dtype, layout: str) -> dict[str, Any]:
        a = paged_inputs(g, s, dt, layout)
        common = {"key_cache": a["key_cache"], "value_cache": a["value_cache"], "block_table": a["block_table"],
                  "seqlens_kv": a["seqlens_kv"], "max_seqlen_kv": max(s.kv_lens), "scale": None, "window": None,
                  "softcap": None, "alibi_slopes": None, "kv_layout": layout, "seqlens_kv_cpu": None}
        if op == "paged_decode_attention":
            return {"q": a["q"], **common}
        return {"q": a["q"], "cu_seqlens_q": a["cu_seqlens_q"], "max_seqlen_q": max(s.q_lens), "causal": True,
                "cu_seqlens_q_cpu": None, **common}

    return Case(op, f"{s}", build, size="sweep", accumulating=True)


SWEEP = [(bs, g, d) for bs in (16, 64, 128) for g in (1, 4, 8) for d in (64, 128, 256)]


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="sweeps need a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bs,group,d", SWEEP)
def test_attention_sweep(dtype: torch.dtype, bs: int, group: int, d: int) -> None:
    hkv = 2
    lens = (8192, 1000, 77) if d <= 128 else (4100, 300, 77)
    _check(_paged_case("paged_decode_attention", PagedSetup((1,) * 3, lens, hkv * group, hkv, d, d, bs)), dtype)
    _check(_paged_case("paged_prefill_attention",
                       PagedSetup((300, 129, 77), lens, hkv * group, hkv, d, d, bs)), dtype)


def _moe_case(t: int, e: int, k: int, h: int, inter: int) -> Case:
    def build(g: torch.Generator, dt: torch.dtype, _layout: str) -> dict[str, Any]:
        ids = torch.rand(t, e, generator=g).argsort(-1)[:, :k].to(torch.int32)
        w = torch.softmax(torch.randn(t, k, generator=g), -1)
        return {"x": randn(g, t, h, dtype=dt), "gate_up": randn(g, e, 2 * inter, h, dtype=dt, scale=h**-0.5),
                "down": randn(g, e, h, inter, dtype=dt, scale=inter**-0.5), "topk_weights": w, "topk_ids": ids}

    return Case("fused_moe", f"T{t}-E{e}-top{k}", build, size="sweep", accumulating=True)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="sweeps need a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("t", [1, 32, 512])
@pytest.mark.parametrize("e,k", [(8, 2), (16, 2), (64, 8), (32, 8)])
def test_moe_sweep(dtype: torch.dtype, t: int, e: int, k: int) -> None:
    _check(_moe_case(t, e, k, 1024, 768), dtype)
