"""Cases the camb kernels do not serve raise NotImplementedError naming the op and the option."""

from __future__ import annotations

import pytest
import torch

from dlinfer.spec import SPECS
from dlinfer.testing import cases_for
from dlinfer.testing.runner import call


def _args(op: str, name_part: str = "", dtype: torch.dtype = torch.float16, layout: str = "HND") -> dict:
    case = next(c for c in cases_for(op) if name_part in c.name)
    return case.build(torch.Generator().manual_seed(0), dtype, layout)


@pytest.mark.parametrize("op", ["rms_norm", "silu_and_mul", "linear", "fused_moe", "prefill_attention"])
def test_fp32_refused(camb_ops: dict, op: str) -> None:
    with pytest.raises(NotImplementedError, match=rf"dlinfer.ops.{op}: dtype=torch.float32 .* 'camb'"):
        call(SPECS[op], camb_ops[op], _args(op, dtype=torch.float32))


@pytest.mark.parametrize("op", ["fill_kv_cache", "paged_prefill_attention", "paged_decode_attention"])
def test_nhd_layout_refused(camb_ops: dict, op: str) -> None:
    with pytest.raises(NotImplementedError, match=rf"{op}: kv_layout='NHD'"):
        call(SPECS[op], camb_ops[op], _args(op, layout="NHD"))


def test_noncausal_alibi_refused(camb_ops: dict) -> None:
    args = {**_args("prefill_attention", "alibi"), "causal": False}
    with pytest.raises(NotImplementedError, match=r"prefill_attention: alibi_slopes with causal=False"):
        call(SPECS["prefill_attention"], camb_ops["prefill_attention"], args)


def test_softcap_and_zero_window_refused(camb_ops: dict) -> None:
    with pytest.raises(NotImplementedError, match=r"paged_decode_attention: softcap"):
        op = "paged_decode_attention"
        call(SPECS[op], camb_ops[op], _args(op, "cap"))
    args = {**_args("prefill_attention", "win"), "window": 0}
    with pytest.raises(NotImplementedError, match=r"prefill_attention: window=0"):
        call(SPECS["prefill_attention"], camb_ops["prefill_attention"], args)


def test_dynamic_quant_int8_only(camb_ops: dict) -> None:
    with pytest.raises(NotImplementedError, match=r"dynamic_quant: dtype=torch.float8"):
        camb_ops["dynamic_quant"](torch.randn(2, 8, dtype=torch.float16), dtype=torch.float8_e4m3fn)
