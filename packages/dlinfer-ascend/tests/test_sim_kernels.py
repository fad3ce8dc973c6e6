"""The simulator itself: each function against a textbook formula, and its contract checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from npu_sim import NpuContractError, Unconfirmed, activation, attention, cache, moe, norm, quant, rotary

G = torch.Generator().manual_seed(1234)


def rnd(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=G).to(dtype)


# -- norms ---------------------------------------------------------------------------------------
def test_rms_norm_formula() -> None:
    x, w = rnd(3, 5, 64, dtype=torch.float16), rnd(64, dtype=torch.float16)
    y, rstd = norm.npu_rms_norm(x, w, 1e-5)
    xf = x.double()
    want = xf / torch.sqrt((xf**2).mean(-1, keepdim=True) + 1e-5) * w.double()
    torch.testing.assert_close(y.double(), want, rtol=1e-3, atol=1e-3)
    assert y.dtype == torch.float16 and rstd.dtype == torch.float32 and rstd.shape == (3, 5, 1)


def test_rms_norm_rejects_bad_gamma() -> None:
    with pytest.raises(NpuContractError, match="trailing dims"):
        norm.npu_rms_norm(rnd(2, 64), rnd(32))
    with pytest.raises(NpuContractError, match="gamma dtype"):
        norm.npu_rms_norm(rnd(2, 64, dtype=torch.float16), rnd(64, dtype=torch.bfloat16))


def test_add_rms_norm_rounds_sum_first() -> None:
    a, b, w = rnd(4, 32, dtype=torch.bfloat16), rnd(4, 32, dtype=torch.bfloat16), rnd(32, dtype=torch.bfloat16)
    y, _, s = norm.npu_add_rms_norm(a, b, w)
    assert torch.equal(s, a + b)
    y2, _ = norm.npu_rms_norm(s, w)
    assert torch.equal(y, y2)
    with pytest.raises(NpuContractError):
        norm.npu_add_rms_norm(a, b.half(), w)


# -- rotary / activation -------------------------------------------------------------------------
def _complex_rope(x: torch.Tensor, theta: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Textbook RoPE as complex multiplication, pairs (i, i+D/2) or (2i, 2i+1)."""
    d = x.shape[-1]
    if interleaved:
        z = torch.complex(x[..., 0::2].double(), x[..., 1::2].double())
    else:
        z = torch.complex(x[..., : d // 2].double(), x[..., d // 2 :].double())
    r = z * torch.polar(torch.ones_like(theta.double()), theta.double())
    if interleaved:
        return torch.stack((r.real, r.imag), -1).flatten(-2)
    return torch.cat((r.real, r.imag), -1)


@pytest.mark.parametrize("d", [64, 128])
def test_apply_rotary_pos_emb_in_place_matches_complex_rotation(d: int) -> None:
    t = 5
    q, k = rnd(1, t, 4, d), rnd(1, t, 2, d)
    theta = rnd(t, d // 2)
    cos = torch.cat((theta.cos(), theta.cos()), -1).view(1, t, 1, d)
    sin = torch.cat((theta.sin(), theta.sin()), -1).view(1, t, 1, d)
    q0, k0 = q.clone(), k.clone()
    rq, rk = rotary.npu_apply_rotary_pos_emb(q, k, cos, sin, "BSND")
    assert rq is q and rk is k  # in place
    th = theta.view(1, t, 1, d // 2)
    torch.testing.assert_close(q.double(), _complex_rope(q0, th, False), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k.double(), _complex_rope(k0, th, False), rtol=1e-5, atol=1e-5)


def test_apply_rotary_pos_emb_contract() -> None:
    q, k, c = rnd(1, 3, 2, 96), rnd(1, 3, 2, 96), rnd(1, 3, 1, 96)
    with pytest.raises(NpuContractError, match="head dim 96"):
        rotary.npu_apply_rotary_pos_emb(q, k, c, c)
    q, k, c = rnd(1, 3, 2, 64), rnd(1, 3, 2, 64), rnd(1, 3, 1, 64)
    with pytest.raises(NpuContractError, match="only 'half'"):
        rotary.npu_apply_rotary_pos_emb(q, k, c, c, "BSND", "interleave")
    with pytest.raises(NpuContractError, match="dtype"):
        rotary.npu_apply_rotary_pos_emb(q.half(), k.half(), c, c)
    with pytest.raises(NpuContractError, match="cos/sin must be"):
        rotary.npu_apply_rotary_pos_emb(q, k, rnd(1, 3, 2, 64), rnd(1, 3, 2, 64))
    qkv = rnd(1, 3, 6 * 64)  # q and k sliced from a fused qkv buffer: strided, undocumented for in-place writes
    qs, ks = qkv[..., : 2 * 64].view(1, 3, 2, 64), qkv[..., 2 * 64 : 4 * 64].view(1, 3, 2, 64)
    with pytest.raises(Unconfirmed, match="strided view"):
        rotary.npu_apply_rotary_pos_emb(qs, ks, c, c)


@pytest.mark.parametrize("interleaved", [False, True])
def test_rotary_mul_matches_complex_rotation(interleaved: bool) -> None:
    t, d = 4, 48
    x = rnd(t, 3, d)
    theta = rnd(t, d // 2)
    full = theta.repeat_interleave(2, -1) if interleaved else torch.cat((theta, theta), -1)
    y = rotary.npu_rotary_mul(x, full.cos().view(t, 1, d), full.sin().view(t, 1, d),
                              "interleave" if interleaved else "half")
    torch.testing.assert_close(y.double(), _complex_rope(x, theta.view(t, 1, d // 2), interleaved),
                               rtol=1e-5, atol=1e-5)


def test_swiglu_formula() -> None:
    x = rnd(3, 2 * 40)
    a, b = x[:, :40], x[:, 40:]
    torch.testing.assert_close(activation.npu_swiglu(x, -1), a / (1 + torch.exp(-a)) * b)
    with pytest.raises(NpuContractError, match="even"):
        activation.npu_swiglu(rnd(2, 7))


# -- attention -----------------------------------------------------------------------------------
def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                    visible: torch.Tensor) -> torch.Tensor:
    """Textbook softmax(scale * q k^T) v per head, GQA by contiguous groups; q [n,H,D]."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(rep, 1), v.double().repeat_interleave(rep, 1)
    s = torch.einsum("nhd,mhd->hnm", q.double(), k) * scale
    s = s.masked_fill(~visible, -math.inf)
    return torch.einsum("hnm,mhd->nhd", torch.softmax(s, -1), v)


def paged(k: torch.Tensor, v: torch.Tensor, bs: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense k/v [L, H, D*] -> BnBsH caches [nb, bs, H*D*] with shuffled blocks, block_table [1, nb]."""
    n, h, _ = k.shape
    nb = -(-n // bs)
    perm = torch.randperm(nb, generator=G)
    caches = []
    for x in (k, v):
        blocks = torch.full((nb * bs, h, x.shape[-1]), 7.0, dtype=x.dtype)
        blocks[:n] = x
        cache = torch.empty(nb, bs, h * x.shape[-1], dtype=x.dtype)
        cache[perm] = blocks.view(nb, bs, -1)
        caches.append(cache)
    return caches[0], caches[1], perm.to(torch.int32).view(1, nb)


def _fia_inputs(q_len: int, kv_len: int, d: int = 128, bs: int = 16, hq: int = 4, hkv: int = 2):
    q = rnd(q_len, hq, d, dtype=torch.float16)
    k, v = rnd(kv_len, hkv, d, dtype=torch.float16), rnd(kv_len, hkv, d, dtype=torch.float16)
    kc, vc, bt = paged(k, v, bs)
    return q, k, v, kc, vc, bt


def test_fia_tnd_causal_matches_dense() -> None:
    q_len, kv_len, d = 5, 21, 128
    q, k, v, kc, vc, bt = _fia_inputs(q_len, kv_len, d)
    out, _ = attention.npu_fused_infer_attention_score(
        q, kc, vc, atten_mask=torch.triu(torch.ones(2048, 2048, dtype=torch.bool), 1),
        actual_seq_lengths=[q_len], actual_seq_lengths_kv=torch.tensor([kv_len], dtype=torch.int32),
        block_table=bt, num_heads=4, num_key_value_heads=2, scale=0.1, input_layout="TND",
        sparse_mode=3, block_size=16)
    i = torch.arange(q_len)[:, None]
    j = torch.arange(kv_len)[None, :]
    want = dense_attention(q, k, v, 0.1, j <= i + kv_len - q_len)  # bottom-right causal
    torch.testing.assert_close(out.double(), want, rtol=2e-3, atol=2e-3)


def test_fia_default_scale_is_one() -> None:
    q, k, v, kc, vc, bt = _fia_inputs(1, 9)
    out, _ = attention.npu_fused_infer_attention_score(
        q.view(1, 1, 4, 128), kc, vc, actual_seq_lengths_kv=[9], block_table=bt, num_heads=4,
        num_key_value_heads=2, input_layout="BSND", block_size=16)
    want = dense_attention(q, k, v, 1.0, torch.ones(1, 9, dtype=torch.bool))
    torch.testing.assert_close(out.view(1, 4, 128).double(), want, rtol=2e-3, atol=2e-3)


def test_fia_contract_violations() -> None:
    q, k, v, kc, vc, bt = _fia_inputs(5, 21)
    mask = torch.triu(torch.ones(2048, 2048, dtype=torch.bool), 1)
    base = dict(atten_mask=mask, actual_seq_lengths=[5], actual_seq_lengths_kv=[21], block_table=bt,
                num_heads=4, num_key_value_heads=2, scale=0.1, input_layout="TND", sparse_mode=3,
                block_size=16)
    fia = attention.npu_fused_infer_attention_score
    fia(q, kc, vc, **base)
    with pytest.raises(NpuContractError, match="cumulative|end at"):
        fia(q, kc, vc, **{**base, "actual_seq_lengths": [3]})
    with pytest.raises(NpuContractError, match="mandatory"):
        fia(q, kc, vc, **{**base, "actual_seq_lengths_kv": None})
    with pytest.raises(NpuContractError, match="triu"):
        fia(q, kc, vc, **{**base, "atten_mask": ~mask})  # reversed polarity
    with pytest.raises(NpuContractError, match="block_size"):
        fia(q, kc, vc, **{**base, "block_size": 32})
    with pytest.raises(NpuContractError, match="scale must be a float"):
        fia(q, kc, vc, **{**base, "scale": 1})
    with pytest.raises(NpuContractError, match="block_table"):
        fia(q, kc, vc, **{**base, "block_table": bt.long()})
    with pytest.raises(NpuContractError, match="per sequence"):
        fia(q, kc, vc, **{**base, "actual_seq_lengths_kv": [21, 21]})
    with pytest.raises(NpuContractError, match="integer"):
        fia(q, kc, vc, **{**base, "actual_seq_lengths_kv": torch.tensor([21.0])})
    q64, _, _, kc64, vc64, bt64 = _fia_inputs(5, 21, d=64)
    with pytest.raises(NpuContractError, match="TND without rope"):
        fia(q64, kc64, vc64, **{**base, "block_table": bt64})


def test_fia_band_mode4_and_decode_mask() -> None:
    q_len, kv_len, w = 6, 30, 4
    q, k, v, kc, vc, bt = _fia_inputs(q_len, kv_len)
    mask = torch.triu(torch.ones(2048, 2048, dtype=torch.bool), 1)
    out, _ = attention.npu_fused_infer_attention_score(
        q, kc, vc, atten_mask=mask, actual_seq_lengths=[q_len], actual_seq_lengths_kv=[kv_len],
        block_table=bt, num_heads=4, num_key_value_heads=2, scale=0.2, input_layout="TND",
        sparse_mode=4, pre_tokens=w - 1, next_tokens=0, block_size=16)
    p = torch.arange(q_len)[:, None] + kv_len - q_len
    j = torch.arange(kv_len)[None, :]
    want = dense_attention(q, k, v, 0.2, (j <= p) & (j > p - w))
    torch.testing.assert_close(out.double(), want, rtol=2e-3, atol=2e-3)
    # decode: Q_S = 1 with a (B, KV_S) mask, 1 = masked
    dmask = torch.zeros(1, 32, dtype=torch.bool)
    dmask[0, :10] = True
    out, _ = attention.npu_fused_infer_attention_score(
        q[:1].view(1, 1, 4, 128), kc, vc, atten_mask=dmask, actual_seq_lengths_kv=[kv_len],
        block_table=bt, num_heads=4, num_key_value_heads=2, scale=0.2, input_layout="BSND",
        block_size=16)
    want = dense_attention(q[:1], k, v, 0.2, (j >= 10))
    torch.testing.assert_close(out.view(1, 4, 128).double(), want, rtol=2e-3, atol=2e-3)


def test_atb_flash_attention_masks_and_contract() -> None:
    lens = [3, 5]
    t = sum(lens)
    for dt, masked_value in ((torch.float16, -10000.0), (torch.bfloat16, 1.0)):
        q, k, v = rnd(t, 4, 64, dtype=dt), rnd(t, 2, 64, dtype=dt), rnd(t, 2, 32, dtype=dt)
        mask = torch.triu(torch.ones(5, 5), 1).mul(masked_value).to(dt)
        out = torch.full((t, 4, 32), float("nan"), dtype=dt)
        attention._npu_flash_attention(q, k, v, mask, torch.tensor(lens, dtype=torch.int32), 0.125, 4, 2, out)
        start = 0
        for n in lens:
            sl = slice(start, start + n)
            i = torch.arange(n)
            want = dense_attention(q[sl], k[sl], v[sl], 0.125, i[None, :] <= i[:, None])
            torch.testing.assert_close(out[sl].double(), want, rtol=1e-2, atol=1e-2)
            start += n
    out = torch.empty(t, 4, 32, dtype=torch.bfloat16)
    fa = attention._npu_flash_attention
    with pytest.raises(NpuContractError, match="bf16 mask"):
        fa(q, k, v, (mask.float() * -10000).to(dt), torch.tensor(lens, dtype=torch.int32), 0.1, 4, 2, out)
    with pytest.raises(NpuContractError, match="CPU int32 tensor"):
        fa(q, k, v, mask, lens, 0.1, 4, 2, out)
    with pytest.raises(NpuContractError, match="summing"):
        fa(q, k, v, mask, torch.tensor([3, 8], dtype=torch.int32), 0.1, 4, 2, out)  # cumulative
    qh, kh, vh = q.half(), k.half(), v.half()
    with pytest.raises(Unconfirmed):
        fa(qh, kh, vh, torch.triu(torch.ones(5, 5), 1).half(), torch.tensor(lens, dtype=torch.int32),
           0.1, 4, 2, out.half())


def test_atb_flash_attention_unpad_is_bidirectional_per_sequence() -> None:
    lens = [2, 4]
    q, k, v = rnd(6, 2, 64, dtype=torch.float16), rnd(6, 2, 64, dtype=torch.float16), rnd(6, 2, 64, dtype=torch.float16)
    out = torch.empty(6, 2, 64, dtype=torch.float16)
    attention._npu_flash_attention_unpad(q, k, v, torch.tensor(lens, dtype=torch.int32), 0.125, 2, 2, out)
    want = torch.cat([dense_attention(q[:2], k[:2], v[:2], 0.125, torch.ones(2, 2, dtype=torch.bool)),
                      dense_attention(q[2:], k[2:], v[2:], 0.125, torch.ones(4, 4, dtype=torch.bool))])
    torch.testing.assert_close(out.double(), want, rtol=2e-3, atol=2e-3)


# -- cache ---------------------------------------------------------------------------------------
def test_reshape_and_cache_scatter_and_skip() -> None:
    kc, vc = torch.zeros(3, 4, 2, 8), torch.zeros(3, 4, 2, 6)
    key, value = rnd(3, 2, 8), rnd(3, 2, 6)
    cache._npu_reshape_and_cache(key, value, kc, vc, torch.tensor([5, -1, 11], dtype=torch.int32))
    assert torch.equal(kc[1, 1], key[0]) and torch.equal(kc[2, 3], key[2]) and torch.equal(vc[1, 1], value[0])
    assert int((kc != 0).any(-1).any(-1).sum()) == 2
    with pytest.raises(NpuContractError, match="int32"):
        cache._npu_reshape_and_cache(key, value, kc, vc, torch.tensor([5, -1, 11]))
    with pytest.raises(NpuContractError, match="empty"):
        cache._npu_reshape_and_cache(key[:0], value[:0], kc, vc, torch.zeros(0, dtype=torch.int32))


# -- MoE -----------------------------------------------------------------------------------------
def test_gating_topk_softmax_formula_ties_and_row_idx() -> None:
    x = torch.tensor([[1.0, 3.0, 3.0, 0.0], [0.0, 0.0, 5.0, 1.0]])
    y, idx, row = moe.npu_moe_gating_top_k_softmax(x, None, 2)
    assert idx.tolist() == [[1, 2], [2, 3]] and idx.dtype == torch.int32  # tie -> lower id
    torch.testing.assert_close(y, torch.softmax(x, -1).gather(1, idx.long()))
    assert row.tolist() == [[0, 2], [1, 3]]  # j * N + i
    with pytest.raises(NpuContractError, match="k=5"):
        moe.npu_moe_gating_top_k_softmax(x, None, 5)


def test_moe_routing_grouped_matmul_unpermute_is_dense_moe() -> None:
    t, h, inter, e, topk = 6, 16, 8, 4, 2
    x = rnd(t, h, dtype=torch.float16)
    ids = torch.stack([torch.randperm(e, generator=G)[:topk] for _ in range(t)]).to(torch.int32)
    w = torch.softmax(rnd(t, topk), -1)
    gate_up, down = rnd(e, 2 * inter, h, dtype=torch.float16) * 0.3, rnd(e, h, inter, dtype=torch.float16) * 0.3
    ex, row_idx, counts, _ = moe.npu_moe_init_routing_v2(
        x, ids, active_num=t * topk, expert_num=e, expert_tokens_num_type=1, expert_tokens_num_flag=True,
        active_expert_range=[0, e])
    assert counts.tolist() == torch.bincount(ids.view(-1).long(), minlength=e).tolist()
    hid = moe.npu_grouped_matmul([ex], [gate_up.transpose(1, 2)], group_list=counts, split_item=2,
                                 group_type=0, group_list_type=1)[0]
    y = moe.npu_grouped_matmul([activation.npu_swiglu(hid)], [down.transpose(1, 2)], group_list=counts,
                               split_item=2, group_type=0, group_list_type=1)[0]
    out = moe.npu_moe_token_unpermute(y, row_idx, probs=w)
    want = torch.zeros(t, h, dtype=torch.float64)
    for i in range(t):
        for j in range(topk):
            ei = int(ids[i, j])
            gu = gate_up[ei].double() @ x[i].double()
            a = F.silu(gu[:inter]) * gu[inter:]
            want[i] += w[i, j].double() * (down[ei].double() @ a)
    torch.testing.assert_close(out.double(), want, rtol=2e-2, atol=2e-2)
    with pytest.raises(NpuContractError, match="int64"):
        moe.npu_grouped_matmul([ex], [gate_up.transpose(1, 2)], group_list=counts.int(), split_item=2,
                               group_type=0, group_list_type=1)
    many = torch.zeros(1025, dtype=torch.int64)
    with pytest.raises(NpuContractError, match="1025 entries"):
        moe.npu_grouped_matmul([ex], [torch.zeros(1025, h, 2, dtype=torch.float16)], group_list=many,
                               split_item=2, group_type=0, group_list_type=1)


# -- quant ---------------------------------------------------------------------------------------
def test_dynamic_quant_formula_and_zero_rows() -> None:
    x = rnd(3, 32, dtype=torch.float16)
    y, s = quant.npu_dynamic_quant(x)
    amax = x.float().abs().amax(-1)
    torch.testing.assert_close(s, amax / 127)
    assert torch.equal(y, torch.round(x.float() / s[:, None]).to(torch.int8))
    with pytest.raises(Unconfirmed):
        quant.npu_dynamic_quant(torch.zeros(2, 8, dtype=torch.float16))


def test_quant_matmul_formula_and_dtype_table() -> None:
    a = torch.randint(-127, 128, (3, 16), generator=G, dtype=torch.int8)
    b = torch.randint(-127, 128, (16, 5), generator=G, dtype=torch.int8)
    sc, pt = torch.rand(5, generator=G), torch.rand(3, generator=G)
    y = quant.npu_quant_matmul(a, b, sc, pertoken_scale=pt, output_dtype=torch.bfloat16)
    want = (a.double() @ b.double()) * pt.double()[:, None] * sc.double()
    torch.testing.assert_close(y.double(), want, rtol=1e-2, atol=1e-2)
    with pytest.raises(NpuContractError, match="not in the A2/A3 table"):
        quant.npu_quant_matmul(a, b, sc, pertoken_scale=pt, bias=torch.zeros(5), output_dtype=torch.float16)
    with pytest.raises(NpuContractError, match="fp16/int8/int32"):
        quant.npu_quant_matmul(a, b, sc, output_dtype=torch.bfloat16)
    acc = quant.npu_quant_matmul(a, b, torch.ones(5), output_dtype=torch.int32)
    assert torch.equal(acc, (a.int() @ b.int()))


def test_weight_quant_batchmatmul_int4_lsb_first() -> None:
    k, n, g = 64, 16, 32
    w = torch.randint(-8, 8, (k, n), generator=G)
    nib = (w & 0xF).view(k, n // 8, 8)
    packed = sum(nib[..., i].long() << (4 * i) for i in range(8))
    packed = torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)
    x = rnd(2, k, dtype=torch.float16)
    s = (torch.rand(k // g, n, generator=G) * 0.1).half()
    off = torch.randint(-3, 4, (k // g, n), generator=G).half()
    y = quant.npu_weight_quant_batchmatmul(x, packed, s, off, antiquant_group_size=g)
    deq = (w.double() + off.double().repeat_interleave(g, 0)) * s.double().repeat_interleave(g, 0)
    torch.testing.assert_close(y.double(), x.double() @ deq, rtol=1e-2, atol=1e-2)
    with pytest.raises(NpuContractError, match="multiple of 32"):
        quant.npu_weight_quant_batchmatmul(x, packed, s.repeat_interleave(2, 0), off.repeat_interleave(2, 0),
                                           antiquant_group_size=16)
    with pytest.raises(NpuContractError, match="bias"):
        quant.npu_weight_quant_batchmatmul(x.bfloat16(), packed, s.bfloat16(), off.bfloat16(),
                                           bias=torch.zeros(n, dtype=torch.bfloat16), antiquant_group_size=g)
