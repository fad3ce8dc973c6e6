"""The simulator rejects calls outside the documented argument contract, and its semantics match the
documented examples (so that a passing conformance run means something)."""

from __future__ import annotations

import pytest
import torch

import mlu_sim
from mlu_sim import MluContractError, attention, cache, gemm, moe, norm, rotary

H16 = torch.float16


def _r(*shape: int, dtype: torch.dtype = H16) -> torch.Tensor:
    return torch.randn(*shape).to(dtype)


def _cu(*lens: int, dtype: torch.dtype = torch.int32) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=dtype)


def test_fused_rms_norm_contract() -> None:
    with pytest.raises(MluContractError, match="'x': expected 2 or 3-D"):
        norm.fused_rms_norm(_r(1, 2, 3, 8), None, _r(8), None, None, 1e-6, False)
    with pytest.raises(MluContractError, match="'x': expected dtype"):
        norm.fused_rms_norm(_r(2, 8, dtype=torch.float32), None, _r(8, dtype=torch.float32), None, None, 1e-6, False)
    with pytest.raises(MluContractError, match="'gamma'"):
        norm.fused_rms_norm(_r(2, 8), None, _r(4), None, None, 1e-6, False)


def test_apply_rotary_contract_and_order() -> None:
    x, tab = _r(1, 4, 2, 8), _r(4, 8)
    odd, wide = tab[:, :5].contiguous(), _r(4, 10)
    with pytest.raises(MluContractError, match="rotary_dim 5 must be even"):
        rotary.apply_rotary(x, odd, odd, None, None, False, False, False, 4)
    with pytest.raises(MluContractError, match="rotary_dim 10 must be even, > 0 and <= head_size 8"):
        rotary.apply_rotary(x, wide, wide, None, None, False, False, False, 4)
    with pytest.raises(MluContractError, match="'sin_cache': 2 rows < seq 4"):
        rotary.apply_rotary(x, tab[:2], tab[:2], None, None, False, False, False, 4)
    with pytest.raises(MluContractError, match="'max_seqlen'"):
        rotary.apply_rotary(x, tab, tab, None, None, False, False, False, 2)
    qkv = _r(1, 4, 6 * 8)  # q sliced from a fused qkv buffer: a strided view
    with pytest.raises(MluContractError, match="'input': a strided view"):
        rotary.apply_rotary(qkv[..., :16].view(1, 4, 2, 8), tab, tab, None, None, False, False, False, 4)
    # sin comes first: sin=0, cos=1 is the identity; in place, returns its input
    y = x.clone()
    out = rotary.apply_rotary(y, torch.zeros(4, 8, dtype=H16), torch.ones(4, 8, dtype=H16), None, None, False, False,
                              False, 4)
    assert out is y and torch.equal(y, x)
    # cos=0, sin=1 gives rotate-half: (x0..x3, x4..x7) -> (-x4..-x7, x0..x3)
    rot = rotary.apply_rotary(x.clone(), torch.ones(4, 8, dtype=H16), torch.zeros(4, 8, dtype=H16), None, None, False,
                              False, False, 4)
    assert torch.equal(rot, torch.cat((-x[..., 4:], x[..., :4]), -1))


def test_reshape_paged_cache_contract_and_layout() -> None:
    k, v = _r(3, 2, 8), _r(3, 2, 8)
    kc, vc = torch.zeros(4, 2, 16, 8, dtype=H16), torch.zeros(4, 2, 16, 8, dtype=H16)
    with pytest.raises(MluContractError, match="'slot_mapping': expected dtype"):
        cache.reshape_paged_cache(k, v, kc, vc, torch.tensor([0, 1, 2]))
    with pytest.raises(MluContractError, match="does not match"):  # an NHD cache [NB, BS, H, D]
        cache.reshape_paged_cache(k, v, kc.transpose(1, 2), vc.transpose(1, 2), torch.tensor([0, 1, 2]).int())
    with pytest.raises(MluContractError, match="slot 64 outside"):
        cache.reshape_paged_cache(k, v, kc, vc, torch.tensor([0, 64, 2]).int())
    cache.reshape_paged_cache(k, v, kc, vc, torch.tensor([17, -1, 5]).int())
    assert torch.equal(kc[1, :, 1], k[0]) and torch.equal(vc[0, :, 5], v[2]) and kc.count_nonzero() == 2 * 2 * 8


def _flash_kw(cu: torch.Tensor, n: int) -> dict:
    return {"out": None, "cu_seq_lens_q": cu, "cu_seq_lens_kv": cu, "alibi_slope": None, "attn_bias": None,
            "max_seq_len_q": n, "max_seq_len_kv": n, "softmax_scale": 0.5, "is_causal": True}


def test_flash_attention_contract() -> None:
    q, k, v = _r(6, 4, 8), _r(6, 2, 8), _r(6, 2, 8)
    cu = _cu(2, 4)
    with pytest.raises(TypeError):  # positional order is UNCONFIRMED for 1.5.0: keywords required
        attention.flash_attention(q, k, v, None, cu, cu, None, None, 4, 4, 0.5, True)
    with pytest.raises(MluContractError, match="starting at 0"):
        attention.flash_attention(q, k, v, **{**_flash_kw(cu[1:], 4), "cu_seq_lens_kv": cu[1:]})
    with pytest.raises(MluContractError, match="'cu_seq_lens_q': expected dtype"):
        attention.flash_attention(q, k, v, **_flash_kw(_cu(2, 4, dtype=torch.int64), 4))
    with pytest.raises(MluContractError, match="'max_seq_len_q'"):
        attention.flash_attention(q, k, v, **_flash_kw(cu, 3))
    with pytest.raises(MluContractError, match="'out': must not alias q"):
        attention.flash_attention(q, k, v, **{**_flash_kw(cu, 4), "out": q})
    caches = _r(4, 2, 32, 8)
    with pytest.raises(MluContractError, match="block size 32"):
        attention.flash_attention(q, caches, caches, **_flash_kw(cu, 4),
                                  block_tables=torch.zeros(2, 2, dtype=torch.int32))


def test_flash_attention_bottom_right_window() -> None:
    # one sequence, 2 queries over 5 keys: query 1 sits at position 4; window_size_left=1 keeps keys 3, 4
    q, k, v = _r(2, 1, 8), _r(5, 1, 8), _r(5, 1, 8)
    kw = {**_flash_kw(_cu(2), 2), "cu_seq_lens_kv": _cu(5), "max_seq_len_kv": 5, "window_size_left": 1}
    out = attention.flash_attention(q, k, v, **kw)
    s = (q[1, 0].float() @ k[3:, 0].float().t()) * 0.5
    want = torch.softmax(s, -1) @ v[3:, 0].float()
    torch.testing.assert_close(out[1, 0].float(), want, atol=2e-3, rtol=2e-3)


def test_single_query_contract() -> None:
    q, kc = _r(2, 1, 4, 8), _r(4, 2, 16, 8)
    out, tables = torch.empty(2, 1, 4, 8, dtype=H16), torch.tensor([[0, 1], [2, 3]], dtype=torch.int32)
    lens = torch.tensor([20, 7], dtype=torch.int32)
    args = (None, None, None, 32, -1, -1, 0.5)
    with pytest.raises(MluContractError, match="per-sequence lengths"):
        attention.single_query_cached_kv_attn(q, kc, kc, out, tables, _cu(20, 7), *args)
    with pytest.raises(MluContractError, match="'max_context_len': 16 is below"):
        attention.single_query_cached_kv_attn(q, kc, kc, out, tables, lens, None, None, None, 16, -1, -1, 0.5)
    with pytest.raises(MluContractError, match="windows_size_right"):
        attention.single_query_cached_kv_attn(q, kc, kc, out, tables, lens, None, None, None, 32, -1, 3, 0.5)
    big = _r(2, 2, 128, 8)
    with pytest.raises(MluContractError, match="block size 128"):
        attention.single_query_cached_kv_attn(q, big, big, out, tables[:, :1], lens, *args)
    with pytest.raises(TypeError):  # out and the scales are required
        attention.single_query_cached_kv_attn(q, kc, kc, tables, lens)
    assert attention.single_query_cached_kv_attn(q, kc, kc, out, tables, lens, *args) is None


def test_moe_contracts_and_gen_idx_example() -> None:
    ids = torch.tensor([[2, 0], [0, 1]], dtype=torch.int32)
    expand, combine, count, cusum = moe.moe_gen_idx(ids, 3)
    assert expand.tolist() == [0, 1, 1, 0] and combine.tolist() == [3, 0, 1, 2]
    assert count.tolist() == [2, 1, 1] and cusum.tolist() == [0, 2, 3, 4]
    with pytest.raises(MluContractError, match="'expert_id': expected dtype"):
        moe.moe_gen_idx(ids.long(), 3)
    a, b = _r(4, 8), _r(3, 6, 8)
    with pytest.raises(MluContractError, match="per-expert row counts"):  # cumulative counts are rejected
        moe.group_gemm(a, b, torch.tensor([2, 3, 4], dtype=torch.int32), None, None, None, None, 4)
    with pytest.raises(MluContractError, match="inner dim"):  # weights must be [E, n, k]
        moe.group_gemm(a, b.transpose(1, 2).contiguous(), count, None, None, None, None, 4)
    with pytest.raises(MluContractError, match="'max_m'"):
        moe.group_gemm(a, b, count, None, None, None, None, 1)
    with pytest.raises(MluContractError, match="'reduce_weight': expected dtype"):
        moe.moe_combine_result(_r(4, 8), _r(2, 2), combine, None, cusum, 0, 3)
    with pytest.raises(TypeError):  # optional routing args are keyword-only (order UNCONFIRMED)
        moe.moe_softmax_topk(_r(2, 4), 2, True)


def test_quant_gemm_contracts() -> None:
    x = _r(3, 8)
    with pytest.raises(TypeError):  # the smooth vector is mandatory
        gemm.per_token_smooth_quantize(x)
    with pytest.raises(MluContractError, match="'smooth': expected dtype"):
        gemm.per_token_smooth_quantize(x, torch.ones(8, dtype=H16))
    with pytest.raises(MluContractError, match="'smooth': expected shape"):
        gemm.per_token_smooth_quantize(x, torch.ones(16))
    w8 = torch.randint(-127, 128, (4, 8), dtype=torch.int8)
    with pytest.raises(MluContractError, match="'a': expected dtype"):
        gemm.smooth_quant_matmul(x, torch.ones(3), w8, torch.ones(4), H16)
    with pytest.raises(MluContractError, match="'a': expected 2-D"):
        gemm.matmul(_r(2, 3, 8), _r(4, 8))
    with pytest.raises(MluContractError, match="nn.Linear layout"):
        gemm.matmul(x, _r(8, 4))


def test_install_uninstall_roundtrip() -> None:
    import sys

    mlu_sim.install()
    assert "torch_mlu_ops" in sys.modules and hasattr(torch, "mlu")
    mlu_sim.uninstall()
    assert "torch_mlu_ops" not in sys.modules and not hasattr(torch, "mlu")
