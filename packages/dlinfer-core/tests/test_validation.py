"""Bad arguments raise DlinferArgumentError naming the op, the argument, the expectation and the actual value.

With validation on ("full") the check runs before the kernel. With it off, a kernel that fails
on bad input is explained after the fact (the kernel's own error is kept as ``__context__``).
Cases where the reference kernel would silently compute garbage are tested with validation on only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch

import dlinfer
from dlinfer import DlinferArgumentError, ops
from dlinfer.dispatch import STATE


@pytest.fixture(scope="module", autouse=True)
def _reference_backend():
    dlinfer.activate("reference")
    yield


@pytest.fixture(autouse=True)
def _restore_validation():
    saved = (STATE.validate, STATE.full)
    yield
    STATE.validate, STATE.full = saved


def _r(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, device=device).to(dtype)


def _i32(values):
    return torch.tensor(values, dtype=torch.int32)


def _cache(nb=3, bs=16, hkv=2, d=8, layout="NHD"):
    shape = (nb, bs, hkv, d) if layout == "NHD" else (nb, hkv, bs, d)
    return _r(*shape), _r(*shape)


@dataclass
class Case:
    op: str
    call: Callable[[], Any]
    arg: str
    expected: str  # a substring of err.expected
    actual: str  # a substring of err.actual
    fails_in_kernel: bool  # the reference kernel raises on these inputs (so validation "off" still explains)


def _prefill(q=None, k=None, v=None, cu=None, **kw):
    q = _r(5, 4, 8) if q is None else q
    k = _r(5, 2, 8) if k is None else k
    v = _r(5, 2, 8) if v is None else v
    cu = _i32([0, 3, 5]) if cu is None else cu
    kw.setdefault("max_seqlen_q", 3)
    return ops.prefill_attention(q, k, v, cu, **kw)


def _decode(q=None, table=None, seqlens=None, caches=None, **kw):
    kc, vc = caches or _cache()
    q = _r(2, 4, 8) if q is None else q
    table = _i32([[0, 1], [2, 0]]) if table is None else table
    seqlens = _i32([20, 5]) if seqlens is None else seqlens
    kw.setdefault("max_seqlen_kv", 32)
    return ops.paged_decode_attention(q, kc, vc, table, seqlens, **kw)


def _paged_prefill(cu=None, seqlens=None, table=None, **kw):
    kc, vc = _cache()
    cu = _i32([0, 2, 5]) if cu is None else cu
    seqlens = _i32([18, 3]) if seqlens is None else seqlens
    table = _i32([[0, 1], [2, 0]]) if table is None else table
    kw.setdefault("max_seqlen_q", 3)
    kw.setdefault("max_seqlen_kv", 32)
    return ops.paged_prefill_attention(_r(5, 4, 8), kc, vc, table, cu, seqlens, **kw)


def _fill(slots, key=None, value=None, **kw):
    kc, vc = _cache()
    key = _r(4, 2, 8) if key is None else key
    value = _r(4, 2, 8) if value is None else value
    return ops.fill_kv_cache(key, value, kc, vc, slots, **kw)


CASES = {
    # ---- wrong rank
    "rank/rms_norm-weight-2d": Case("rms_norm", lambda: ops.rms_norm(_r(4, 8), _r(8, 8)), "weight",
                                    "1-d tensor [H]", "2-d shape [8, 8]", True),
    "rank/prefill-q-2d": Case("prefill_attention", lambda: _prefill(q=_r(5, 8)), "q", "3-d tensor [T, Hq, D]",
                              "2-d shape [5, 8]", True),
    "rank/decode-cache-3d": Case("paged_decode_attention", lambda: _decode(caches=(_r(3, 16, 16), _r(3, 16, 16))),
                                 "key_cache", "4-d tensor", "3-d shape [3, 16, 16]", True),
    "rank/silu-scalar": Case("silu_and_mul", lambda: ops.silu_and_mul(torch.tensor(1.5)), "x",
                             "at least 1 dims", "shape []", True),
    # ---- shape mismatch between related arguments
    "shape/add_rms_norm-residual": Case("add_rms_norm", lambda: ops.add_rms_norm(_r(4, 8), _r(4, 9), _r(8)),
                                        "residual", "H = 8", "[4, 9]", True),
    "shape/add_rms_norm-leading": Case("add_rms_norm", lambda: ops.add_rms_norm(_r(4, 8), _r(3, 8), _r(8)),
                                       "residual", "leading dims [4]", "[3, 8]", True),
    "shape/fill-value-T": Case("fill_kv_cache", lambda: _fill(torch.arange(4), value=_r(5, 2, 8)), "value",
                               "T = 4", "[5, 2, 8]", True),
    "shape/decode-head-size": Case("paged_decode_attention", lambda: _decode(q=_r(2, 4, 16)), "key_cache",
                                   "D = 16", "[3, 16, 2, 8]", True),
    "shape/gqa-not-divisible": Case("prefill_attention", lambda: _prefill(q=_r(5, 3, 8)), "q",
                                    "divisible by the KV heads (2)", "3", True),
    "shape/rotary-too-wide": Case("apply_rotary_pos_emb",
                                  lambda: ops.apply_rotary_pos_emb(_r(3, 2, 8), _r(3, 2, 8), _r(3, 10), _r(3, 10)),
                                  "cos", "even rotary width <= head size 8", "10", True),
    "shape/rotary-odd": Case("apply_rotary_pos_emb",
                             lambda: ops.apply_rotary_pos_emb(_r(3, 2, 8), _r(3, 2, 8), _r(3, 5), _r(3, 5)),
                             "cos", "even rotary width", "5", False),
    "shape/rotary-inplace-too-wide": Case("apply_rotary_pos_emb_inplace", lambda: ops.apply_rotary_pos_emb_inplace(
        _r(3, 2, 8), _r(3, 2, 8), _r(3, 10), _r(3, 10)), "cos", "even rotary width <= head size 8", "10", True),
    "shape/rotary-inplace-k-heads-dim": Case("apply_rotary_pos_emb_inplace", lambda: ops.apply_rotary_pos_emb_inplace(
        _r(3, 2, 8), _r(3, 2, 6), _r(3, 8), _r(3, 8)), "k", "D = 8", "[3, 2, 6]", True),
    "shape/w8a8-in": Case("linear_w8a8", lambda: ops.linear_w8a8(
        torch.randint(-9, 9, (3, 8), dtype=torch.int8), torch.randint(-9, 9, (4, 9), dtype=torch.int8),
        torch.rand(3), torch.rand(4)), "w_q", "IN = 8", "[4, 9]", True),
    "shape/moe-down": Case("fused_moe", lambda: ops.fused_moe(_r(3, 8), _r(4, 12, 8), _r(4, 8, 5), torch.rand(3, 2),
                                                              _i32([[0, 1], [1, 2], [3, 0]])),
                           "down", "I = 6", "[4, 8, 5]", True),
    "shape/awq-groups": Case("weight_quant_matmul", lambda: ops.weight_quant_matmul(
        _r(3, 64, dtype=torch.float16), torch.zeros(64, 2, dtype=torch.int32), _r(3, 16, dtype=torch.float16),
        torch.zeros(3, 2, dtype=torch.int32), group_size=32), "scales", "group_size", "G = 3", True),
    # ---- wrong dtype
    "dtype/rms_norm-weight": Case("rms_norm", lambda: ops.rms_norm(_r(4, 8), _r(8, dtype=torch.float16)), "weight",
                                  "torch.float32", "torch.float16", False),
    "dtype/int-activations": Case("silu_and_mul", lambda: ops.silu_and_mul(torch.ones(2, 8, dtype=torch.int64)), "x",
                                  "torch.float16", "torch.int64", False),
    "dtype/cu_seqlens-float": Case("prefill_attention", lambda: _prefill(cu=torch.tensor([0.0, 3.0, 5.0])),
                                   "cu_seqlens_q", "torch.int32", "torch.float32", True),
    "dtype/block_table-int64": Case("paged_decode_attention", lambda: _decode(table=torch.tensor([[0, 1], [2, 0]])),
                                    "block_table", "torch.int32", "torch.int64", False),
    "dtype/slots-float": Case("fill_kv_cache", lambda: _fill(torch.arange(4.0)), "slot_mapping", "torch.int32",
                              "torch.float32", False),
    "dtype/w8a8-xq": Case("linear_w8a8", lambda: ops.linear_w8a8(_r(3, 8), torch.ones(4, 8, dtype=torch.int8),
                                                                 torch.rand(3), torch.rand(4)),
                          "x_q", "torch.int8", "torch.float32", False),
    "dtype/alibi-half": Case("prefill_attention", lambda: _prefill(alibi_slopes=torch.rand(4).half()),
                             "alibi_slopes", "torch.float32", "torch.float16", False),
    # ---- mismatched devices
    "device/weight-meta": Case("rms_norm", lambda: ops.rms_norm(_r(4, 8), _r(8, device="meta")), "weight",
                               "device cpu", "device meta", True),
    "device/q-meta": Case("prefill_attention", lambda: _prefill(q=_r(5, 4, 8, device="meta")), "k",
                          "device meta", "device cpu", True),
    "device/mirror-not-host": Case("paged_decode_attention",
                                   lambda: _decode(seqlens_kv_cpu=torch.tensor([20, 5], dtype=torch.int32,
                                                                              device="meta")),
                                   "seqlens_kv_cpu", "host (cpu)", "device meta", False),
    # ---- malformed metadata
    "meta/cu-not-from-0": Case("prefill_attention", lambda: _prefill(cu=_i32([1, 3, 5])), "cu_seqlens_q",
                               "cu_seqlens_q[0] == 0", "1", True),
    "meta/cu-empty": Case("prefill_attention", lambda: _prefill(cu=_i32([])), "cu_seqlens_q",
                          "dim B+1 >= 1", "shape [0]", True),
    "rank/cu-2d": Case("prefill_attention", lambda: _prefill(cu=_i32([[0, 3, 5]])), "cu_seqlens_q",
                       "1-d tensor [B+1]", "2-d shape [1, 3]", True),
    "meta/paged-cu-not-from-0": Case("paged_prefill_attention", lambda: _paged_prefill(cu=_i32([1, 2, 5])),
                                     "cu_seqlens_q", "cu_seqlens_q[0] == 0", "1", True),
    "meta/paged-cu-ends-early": Case("paged_prefill_attention", lambda: _paged_prefill(cu=_i32([0, 2, 4])),
                                     "cu_seqlens_q", "last offset == number of query tokens (5)", "4", True),
    "meta/paged-cu-empty": Case("paged_prefill_attention", lambda: _paged_prefill(cu=_i32([])),
                                "cu_seqlens_q", "dim B+1 >= 1", "shape [0]", True),
    "meta/cu-mirror-differs": Case("prefill_attention", lambda: _prefill(cu_seqlens_q_cpu=_i32([0, 2, 5])),
                                   "cu_seqlens_q_cpu", "same values as cu_seqlens_q", "[0, 2, 5]", False),
    "meta/paged-cu-mirror-differs": Case("paged_prefill_attention",
                                         lambda: _paged_prefill(cu_seqlens_q_cpu=_i32([0, 3, 5])),
                                         "cu_seqlens_q_cpu", "same values as cu_seqlens_q", "[0, 3, 5]", False),
    "meta/cu-decreasing": Case("prefill_attention", lambda: _prefill(cu=_i32([0, 4, 2, 5])), "cu_seqlens_q",
                               "non-decreasing", "[0, 4, 2, 5]", True),
    "meta/cu-last": Case("prefill_attention", lambda: _prefill(cu=_i32([0, 2, 4])), "cu_seqlens_q",
                         "last offset == number of query tokens (5)", "4", True),
    "meta/max_seqlen_q-small": Case("prefill_attention", lambda: _prefill(max_seqlen_q=2), "max_seqlen_q",
                                    ">= the longest query (3)", "2", False),
    "meta/block-id-out-of-range": Case("paged_decode_attention", lambda: _decode(table=_i32([[0, 7], [2, 0]])),
                                       "block_table", "block ids in [0, 3)", "[7]", True),
    "meta/block-id-negative": Case("paged_prefill_attention", lambda: _paged_prefill(table=_i32([[0, 1], [-4, 0]])),
                                   "block_table", "block ids in [0, 3)", "[-4]", False),
    "meta/too-few-blocks": Case("paged_decode_attention", lambda: _decode(seqlens=_i32([40, 5]), max_seqlen_kv=40),
                                "block_table", "at least 3 blocks", "2 columns", False),
    "meta/context-shorter-than-query": Case("paged_prefill_attention", lambda: _paged_prefill(seqlens=_i32([1, 3])),
                                            "seqlens_kv", "seqlens_kv[0] >= its query length 2", "1", False),
    "meta/decode-empty-context": Case("paged_decode_attention", lambda: _decode(seqlens=_i32([20, 0])), "seqlens_kv",
                                      "every context >= 1", "[20, 0]", False),
    "meta/max_seqlen_kv-small": Case("paged_decode_attention", lambda: _decode(max_seqlen_kv=10), "max_seqlen_kv",
                                     ">= the longest context (20)", "10", False),
    "meta/mirror-differs": Case("paged_decode_attention", lambda: _decode(seqlens_kv_cpu=_i32([20, 6])),
                                "seqlens_kv_cpu", "same values as seqlens_kv", "[20, 6]", False),
    "meta/slot-out-of-range": Case("fill_kv_cache", lambda: _fill(torch.tensor([0, 5, 48, -1])), "slot_mapping",
                                   "slots in [-1, 48)", "[-1, 48]", True),
    "meta/slot-below-minus-one": Case("fill_kv_cache", lambda: _fill(torch.tensor([0, -2, 3, 4])), "slot_mapping",
                                      "slots in [-1, 48)", "[-2, 4]", False),
    "meta/slot-out-of-range-hnd": Case("fill_kv_cache", lambda: ops.fill_kv_cache(
        _r(4, 2, 8), _r(4, 2, 8), *_cache(nb=2, bs=32, layout="HND"), _i32([0, 1, 2, 64]), kv_layout="HND"),
        "slot_mapping", "slots in [-1, 64)", "[0, 64]", True),
    "meta/topk-gt-E": Case("moe_gating_topk_softmax", lambda: ops.moe_gating_topk_softmax(_r(3, 4), topk=5), "topk",
                           "1 <= topk <= E (4)", "5", True),
    "meta/expert-id-out-of-range": Case("fused_moe", lambda: ops.fused_moe(
        _r(3, 8), _r(4, 12, 8), _r(4, 8, 6), torch.rand(3, 2), _i32([[0, 1], [2, 4], [1, 0]])),
        "topk_ids", "expert ids in [0, 4)", "[0, 4]", True),
    "meta/bad-kv-layout": Case("fill_kv_cache", lambda: _fill(torch.arange(4), kv_layout="NDH"), "kv_layout",
                               "'NHD' or 'HND'", "'NDH'", True),
}


def _check(err: DlinferArgumentError, case: Case) -> None:
    assert err.op == case.op
    assert err.arg == case.arg, f"names argument {err.arg!r}: {err}"
    assert case.expected in err.expected, f"expected-part {err.expected!r} lacks {case.expected!r}"
    assert case.actual in err.actual, f"actual-part {err.actual!r} lacks {case.actual!r}"
    message = str(err)
    for part in (f"dlinfer.ops.{case.op}", f"'{case.arg}'", err.expected, err.actual):
        assert part in message


@pytest.mark.parametrize("name", list(CASES))
def test_validation_on(name):
    case = CASES[name]
    dlinfer.set_validation("full")
    with pytest.raises(DlinferArgumentError) as info:
        case.call()
    _check(info.value, case)
    assert info.value.__context__ is None, "validation must run before the kernel"


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.fails_in_kernel])
def test_validation_off_explains_kernel_failure(name):
    case = CASES[name]
    dlinfer.set_validation("off")
    with pytest.raises(DlinferArgumentError) as info:
        case.call()
    _check(info.value, case)
    kernel_error = info.value.__context__
    assert kernel_error is not None and not isinstance(kernel_error, DlinferArgumentError), \
        "the explanation comes after the kernel's own failure"


def test_shapes_mode_checks_shapes_but_not_metadata_values():
    dlinfer.set_validation("shapes")
    with pytest.raises(DlinferArgumentError) as info:
        CASES["shape/add_rms_norm-residual"].call()
    assert info.value.__context__ is None
    out = _prefill(max_seqlen_q=2)  # metadata values are not read in "shapes" mode (the reference ignores this one)
    assert out.shape == (5, 4, 8)


def test_valid_calls_pass_in_every_mode():
    for mode in ("off", "shapes", "full"):
        dlinfer.set_validation(mode)
        assert _prefill(cu_seqlens_q_cpu=_i32([0, 3, 5])).shape == (5, 4, 8)
        assert _decode(seqlens_kv_cpu=_i32([20, 5])).shape == (2, 4, 8)
        assert _paged_prefill().shape == (5, 4, 8)
        assert _fill(torch.tensor([0, -1, 47, 16])) is None
        assert ops.moe_gating_topk_softmax(_r(3, 4), topk=4)[0].shape == (3, 4)


def test_unrelated_kernel_error_is_not_masked():
    """With valid arguments, a kernel's own error (an unsupported option) comes through unchanged."""
    for mode in ("off", "full"):
        dlinfer.set_validation(mode)
        with pytest.raises(NotImplementedError, match="dynamic_quant"):
            ops.dynamic_quant(_r(3, 8), dtype=torch.int16)


def test_set_validation_rejects_unknown_mode():
    with pytest.raises(ValueError, match="validation mode"):
        dlinfer.set_validation("everything")


DEGENERATE = {"window=0": ("window", 0), "window=-1": ("window", -1), "softcap=0.0": ("softcap", 0.0),
              "softcap=-2.0": ("softcap", -2.0), "softcap=nan": ("softcap", float("nan"))}
ATTENTION_CALLS = {"prefill_attention": _prefill, "paged_prefill_attention": _paged_prefill,
                   "paged_decode_attention": _decode}


@pytest.mark.parametrize("mode", ["off", "full"])
@pytest.mark.parametrize("op", list(ATTENTION_CALLS))
@pytest.mark.parametrize("case", list(DEGENERATE))
def test_degenerate_window_and_softcap_are_refused(case, op, mode):
    """window <= 0 would mask every key (all-zero output), softcap = 0 divides by zero: refused in every mode."""
    dlinfer.set_validation(mode)
    arg, value = DEGENERATE[case]
    with pytest.raises(DlinferArgumentError) as info:
        ATTENTION_CALLS[op](**{arg: value})
    err = info.value
    assert (err.op, err.arg, err.expected, err.actual) == (op, arg, "a value > 0 or None", repr(value))
    assert f"dlinfer.ops.{op}: argument '{arg}'" in str(err)


@pytest.mark.parametrize("op", list(ATTENTION_CALLS))
def test_smallest_valid_window_and_softcap_are_served(op):
    assert ATTENTION_CALLS[op](window=1, softcap=1e-3).isfinite().all()
