"""Each op reaches the documented tmo kernels (no silent pure-torch path), and block sizes a paged kernel
does not serve are routed to one that does, still matching the reference."""

from __future__ import annotations

import sys

import pytest
import torch

from dlinfer.registry import REFERENCE, REGISTRY
from dlinfer.spec import SPECS
from dlinfer.testing import Case, cases_for, run_case
from dlinfer.testing.inputs import PagedSetup, paged_inputs
from dlinfer.testing.runner import call

EXPECTED = {  # op -> tmo kernels it must call (docs/vendor-semantics.md §6)
    "rms_norm": {"fused_rms_norm"},
    "add_rms_norm": {"fused_rms_norm"},
    "rms_norm_w8a8": {"fused_rms_norm", "per_token_smooth_quantize"},
    "add_rms_norm_w8a8": {"fused_rms_norm", "per_token_smooth_quantize"},
    "apply_rotary_pos_emb": {"apply_rotary"},
    "apply_rotary_pos_emb_inplace": {"apply_rotary"},
    "silu_and_mul": {"active"},
    "fill_kv_cache": {"reshape_paged_cache"},
    "prefill_attention": {"flash_attention"},
    "paged_prefill_attention": {"flash_attention"},
    "paged_decode_attention": {"single_query_cached_kv_attn"},
    "moe_gating_topk_softmax": {"moe_softmax_topk"},
    "fused_moe": {"moe_gen_idx", "moe_expand_input", "group_gemm", "moe_active", "moe_combine_result"},
    "linear": {"matmul"},
    "dynamic_quant": {"per_token_smooth_quantize"},
    "linear_w8a8": {"smooth_quant_matmul"},
}


@pytest.fixture
def spy(camb_ops: dict) -> list:
    calls: list = []
    tmo = sys.modules["torch_mlu_ops"]
    for name in list(vars(tmo)):
        fn = getattr(tmo, name)
        if callable(fn) and not name.startswith("_"):
            def wrapped(*a, _fn=fn, _name=name, **k):
                calls.append((_name, a, k))
                return _fn(*a, **k)
            setattr(tmo, name, wrapped)
    return calls


@pytest.mark.parametrize("op", sorted(EXPECTED))
def test_op_calls_documented_kernels(camb_ops: dict, spy: list, op: str) -> None:
    case = cases_for(op)[0]
    args = case.build(torch.Generator().manual_seed(1), torch.float16, "HND")
    call(SPECS[op], camb_ops[op], args)
    assert {name for name, _, _ in spy} == EXPECTED[op]


def _paged_case(op: str, block_size: int) -> Case:
    setup = PagedSetup((1, 1, 1), (70, 1, 129), 8, 2, 64, 64, block_size) if op == "paged_decode_attention" \
        else PagedSetup((5, 9), (70, 9), 8, 2, 64, 64, block_size)

    def build(g: torch.Generator, dt: torch.dtype, layout: str) -> dict:
        a = paged_inputs(g, setup, dt, layout)
        args = {"q": a["q"], "key_cache": a["key_cache"], "value_cache": a["value_cache"],
                "block_table": a["block_table"], "seqlens_kv": a["seqlens_kv"], "max_seqlen_kv": max(setup.kv_lens),
                "scale": None, "window": 5, "softcap": None, "alibi_slopes": None, "kv_layout": layout,
                "seqlens_kv_cpu": None}
        if op == "paged_prefill_attention":
            args.update(cu_seqlens_q=a["cu_seqlens_q"], max_seqlen_q=max(setup.q_lens), causal=True,
                        cu_seqlens_q_cpu=None)
        return args

    return Case(op, f"bs{block_size}", build, accumulating=True)


@pytest.mark.parametrize(("op", "block_size", "paged"), [
    ("paged_prefill_attention", 16, True), ("paged_prefill_attention", 32, False),
    ("paged_decode_attention", 64, True), ("paged_decode_attention", 128, False),
])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_block_size_routes(camb_ops: dict, spy: list, op: str, block_size: int, paged: bool,
                           dtype: torch.dtype) -> None:
    REGISTRY.discover()
    res = run_case(_paged_case(op, block_size), dtype, camb_ops, REGISTRY.load_ops(REFERENCE), layout="HND",
                   prepare_metadata=REGISTRY.records["camb"].backend.prepare_metadata)  # with and without a plan
    assert res.status == "pass", res.detail
    kernels = {name for name, _, _ in spy}
    if op == "paged_decode_attention":
        assert kernels == ({"single_query_cached_kv_attn"} if paged else {"flash_attention"})
    else:
        flash = [k for name, _, k in spy if name == "flash_attention"]
        assert all((k["block_tables"] is not None) == paged for k in flash) and flash
