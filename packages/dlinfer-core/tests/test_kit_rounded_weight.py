"""weight_quant_matmul's contract lets a backend round the dequantised weight once to x's dtype (as W4A16 vendor
kernels do); the kit admits exactly that rounding's forward error and still fails a wrong weight.

The case is IN=4096 deep (the kit's large W4A16 case's depth), on the CPU: rounding each weight to fp16/bf16 then
misses the plain accumulating tolerance on outputs near zero (seen on the H200 with the maca kernels), so the
allowance is what admits it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import dlinfer
from dlinfer.reference.quant import dequant_awq
from dlinfer.registry import REFERENCE, REGISTRY
from dlinfer.spec import SPECS
from dlinfer.testing import runner
from dlinfer.testing.cases import Case, _w4a16

CASE = Case("weight_quant_matmul", "256x4096->2048-g128", _w4a16(256, 4096, 2048, 128, False), size="large",
            accumulating=True, dtypes=(torch.float16, torch.bfloat16))


@pytest.fixture(scope="module", autouse=True)
def _reference_backend():  # noqa: ANN202
    dlinfer.activate("reference")  # discovers the registry's backends


def _backend(bug: str | None = None) -> dict:
    """W4A16 with each dequantised weight rounded once to x's dtype, fp32 sums. ``bug``: "zero" moves one group's
    zero point of one column by one step; "columns" swaps two output columns (a nibble-order slip)."""

    def matmul(x, qweight, scales, qzeros, bias, *, group_size):  # noqa: ANN001, ANN202
        w = dequant_awq(qweight, scales, qzeros, group_size)
        if bug == "zero":
            w[:group_size, 7] -= scales[0, 7].float()
        elif bug == "columns":
            w[:, [7, 8]] = w[:, [8, 7]]
        out = x.float() @ w.to(x.dtype).float()
        return (out + bias.float() if bias is not None else out).to(x.dtype)

    ref = REGISTRY.load_ops(REFERENCE)
    return {"weight_quant_prepare": ref["weight_quant_prepare"], "weight_quant_matmul": matmul}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_weight_rounded_once_passes_and_needs_the_allowance(dtype: torch.dtype, monkeypatch) -> None:  # noqa: ANN001
    ref = REGISTRY.load_ops(REFERENCE)
    seed = torch.randint(2**31, ()).item()
    assert runner.run_case(CASE, dtype, _backend(), ref, seed=seed).status == "pass"
    strict = dict(SPECS)
    strict["weight_quant_matmul"] = dataclasses.replace(SPECS["weight_quant_matmul"], rounded_weight=False)
    monkeypatch.setattr(runner, "SPECS", strict)
    res = runner.run_case(CASE, dtype, _backend(), ref, seed=seed)
    assert res.status == "fail", "without the allowance the rounded weights miss the plain tolerance"


@pytest.mark.parametrize(("dtype", "bug"), [(torch.float16, "zero"), (torch.float16, "columns"),
                                          (torch.bfloat16, "columns")])
def test_a_wrong_weight_still_fails(dtype: torch.dtype, bug: str) -> None:
    """The allowance is a worst-case bound (0.7-1.4 per output at this depth in bf16, 0.08-0.18 in fp16): one zero
    point off by a step in one group moves an output by about 0.17, which fp16 catches and bf16 cannot."""
    res = runner.run_case(CASE, dtype, _backend(bug), REGISTRY.load_ops(REFERENCE))
    assert res.status == "fail" and "permitted rounding" in res.detail
