"""The reference attention and KV-cache ops against an independent float64 oracle.

The oracle below is a plain masked softmax written with explicit Python loops over heads
and query positions; the paged caches are built token by token by this file, not by
``fill_kv_cache``. Nothing here calls the reference backend to produce an expectation.
"""

from __future__ import annotations

import math

import pytest
import torch

import dlinfer
from dlinfer import ops

TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(scope="module", autouse=True)
def _reference_backend():
    dlinfer.activate("reference")
    yield


def _close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    assert got.dtype == dtype
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=atol)


def dense_attention(q, k, v, q_pos, *, causal, scale, window, softcap, alibi):
    """One sequence: q [n, Hq, D], k [L, Hkv, D], v [L, Hkv, Dv], q_pos: list of absolute positions."""
    q, k, v = q.double(), k.double(), v.double()
    n, hq, d = q.shape
    length, hkv, dv = v.shape
    group = hq // hkv
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    out = torch.zeros(n, hq, dv, dtype=torch.float64)
    key_pos = torch.arange(length, dtype=torch.float64)
    for h in range(hq):
        kh = h // group  # query head h reads KV head h // (Hq / Hkv)
        for i in range(n):
            p = q_pos[i]
            s = scale * (k[:, kh, :] @ q[i, h])  # [L]
            if softcap is not None:
                s = softcap * torch.tanh(s / softcap)
            if alibi is not None:
                s = s + float(alibi[h]) * (key_pos - p)
            keep = torch.ones(length, dtype=torch.bool)
            if causal:
                keep &= key_pos <= p
            if window is not None:
                keep &= key_pos > p - window
            if not keep.any():
                continue
            e = torch.exp(s[keep] - s[keep].max())
            out[i, h] = (e / e.sum()) @ v[keep, kh, :]
    return out


def _rand(*shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape) * scale).to(dtype)


def _opts(hq, window=None, softcap=None, alibi=False, scale=None):
    slopes = (torch.rand(hq) * 0.5 + 0.05) if alibi else None
    return {"window": window, "softcap": softcap, "alibi_slopes": slopes, "scale": scale}


def _oracle_kwargs(o):
    return {"scale": o["scale"], "window": o["window"], "softcap": o["softcap"], "alibi": o["alibi_slopes"]}


def _cu(lens):
    cu = [0]
    for n in lens:
        cu.append(cu[-1] + n)
    return torch.tensor(cu, dtype=torch.int32)


# --------------------------------------------------------------------------- paged cache, built independently


def build_paged(ctx_k, ctx_v, bs, layout, dtype):
    """Scatter each sequence's context token by token into randomly chosen physical blocks.

    Unused cache slots and unused block-table columns hold junk, so reading past a
    sequence's context shows up as a wrong result.
    """
    hkv, d = ctx_k[0].shape[1], ctx_k[0].shape[2]
    dv = ctx_v[0].shape[2]
    need = [-(-k.shape[0] // bs) for k in ctx_k]
    nb = sum(need) + 3
    max_blocks = max(need) + 1
    shape_k = (nb, bs, hkv, d) if layout == "NHD" else (nb, hkv, bs, d)
    shape_v = (nb, bs, hkv, dv) if layout == "NHD" else (nb, hkv, bs, dv)
    kc = _rand(*shape_k, dtype=dtype, scale=3.0)
    vc = _rand(*shape_v, dtype=dtype, scale=3.0)
    table = torch.randint(0, nb, (len(ctx_k), max_blocks), dtype=torch.int32)
    perm = torch.randperm(nb).tolist()
    for b, (k, v) in enumerate(zip(ctx_k, ctx_v)):
        for col in range(need[b]):
            table[b, col] = perm.pop()
        for j in range(k.shape[0]):
            blk, off = int(table[b, j // bs]), j % bs
            if layout == "NHD":
                kc[blk, off] = k[j]
                vc[blk, off] = v[j]
            else:
                for h in range(hkv):
                    kc[blk, h, off] = k[j, h]
                    vc[blk, h, off] = v[j, h]
    return kc, vc, table


# --------------------------------------------------------------------------- fill_kv_cache


@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("bs", [16, 64])
@pytest.mark.parametrize("slot_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fill_kv_cache(layout, bs, slot_dtype, dtype):
    t, hkv, d, dv, nb = 9, 2, 8, 12, 3
    key, value = _rand(t, hkv, d, dtype=dtype), _rand(t, hkv, dv, dtype=dtype)
    kshape = (nb, bs, hkv, d) if layout == "NHD" else (nb, hkv, bs, d)
    vshape = (nb, bs, hkv, dv) if layout == "NHD" else (nb, hkv, bs, dv)
    kc, vc = _rand(*kshape, dtype=dtype), _rand(*vshape, dtype=dtype)
    slots = torch.randperm(nb * bs)[:t]
    slots[[1, 4, 8]] = -1  # padding: never written
    slots = slots.to(slot_dtype)
    want_k, want_v = kc.clone(), vc.clone()
    for i, s in enumerate(slots.tolist()):
        if s < 0:
            continue
        blk, off = divmod(s, bs)
        for h in range(hkv):
            if layout == "NHD":
                want_k[blk, off, h] = key[i, h]
                want_v[blk, off, h] = value[i, h]
            else:
                want_k[blk, h, off] = key[i, h]
                want_v[blk, h, off] = value[i, h]
    key_before, value_before = key.clone(), value.clone()
    result = ops.fill_kv_cache(key, value, kc, vc, slots, kv_layout=layout)
    assert result is None
    assert torch.equal(kc, want_k)
    assert torch.equal(vc, want_v)
    assert torch.equal(key, key_before) and torch.equal(value, value_before)


def test_fill_kv_cache_all_padding_leaves_cache_untouched():
    kc, vc = _rand(2, 16, 2, 8), _rand(2, 16, 2, 8)
    before = kc.clone(), vc.clone()
    slots = torch.full((4,), -1, dtype=torch.int64)
    ops.fill_kv_cache(_rand(4, 2, 8), _rand(4, 2, 8), kc, vc, slots, kv_layout="NHD")
    assert torch.equal(kc, before[0]) and torch.equal(vc, before[1])


# --------------------------------------------------------------------------- prefill_attention

PREFILL_CASES = {
    # id: (q_lens, Hq, Hkv, D, Dv, causal, opts)
    "mha-causal": ([5, 3], 2, 2, 16, 16, True, {}),
    "gqa4-noncausal": ([4, 1, 6], 8, 2, 16, 16, False, {}),
    "mqa8-dv": ([3, 5], 8, 1, 16, 8, True, {}),
    "window-causal": ([7, 4], 4, 2, 8, 8, True, {"window": 3}),
    "window-noncausal": ([6], 2, 1, 8, 8, False, {"window": 2}),
    "softcap-scale": ([5, 2], 4, 1, 8, 12, True, {"softcap": 2.0, "scale": 0.9}),
    "alibi": ([6, 3], 4, 4, 8, 8, True, {"alibi": True}),
    "alibi-noncausal": ([4, 5], 4, 2, 8, 8, False, {"alibi": True}),
    "all-options": ([7, 2], 8, 2, 16, 8, True, {"window": 4, "softcap": 3.0, "alibi": True, "scale": 0.3}),
    "empty-seq": ([3, 0, 4], 4, 1, 8, 8, True, {}),
    "single-token": ([1], 4, 2, 8, 8, True, {}),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(PREFILL_CASES), ids=list(PREFILL_CASES))
def test_prefill_attention(case, dtype):
    lens, hq, hkv, d, dv, causal, extra = PREFILL_CASES[case]
    t = sum(lens)
    q, k, v = _rand(t, hq, d, dtype=dtype), _rand(t, hkv, d, dtype=dtype), _rand(t, hkv, dv, dtype=dtype)
    o = _opts(hq, **extra)
    cu = _cu(lens)
    got = ops.prefill_attention(q, k, v, cu, max_seqlen_q=max(lens) + 2, causal=causal, **o)
    want = torch.empty(t, hq, dv, dtype=torch.float64)
    for b, n in enumerate(lens):
        s = int(cu[b])
        want[s : s + n] = dense_attention(q[s : s + n], k[s : s + n], v[s : s + n], list(range(n)),
                                          causal=causal, **_oracle_kwargs(o))
    assert got.shape == (t, hq, dv)
    _close(got, want, dtype)


def test_prefill_attention_default_scale_is_inverse_sqrt_d():
    q, k, v = _rand(4, 2, 32), _rand(4, 2, 32), _rand(4, 2, 32)
    cu = _cu([4])
    got = ops.prefill_attention(q, k, v, cu, max_seqlen_q=4)
    explicit = dense_attention(q, k, v, [0, 1, 2, 3], causal=True, scale=1 / math.sqrt(32), window=None,
                               softcap=None, alibi=None)
    _close(got, explicit, torch.float32)
    wrong = dense_attention(q, k, v, [0, 1, 2, 3], causal=True, scale=1.0, window=None, softcap=None, alibi=None)
    assert not torch.allclose(got.double(), wrong, atol=1e-3)


# --------------------------------------------------------------------------- paged_prefill_attention

PAGED_PREFILL_CASES = {
    # id: (ctx lens, q lens, Hq, Hkv, D, Dv, causal, opts)
    "history-and-fresh": ([20, 5], [3, 5], 2, 2, 8, 8, True, {}),
    "gqa4-boundary": ([16, 17, 33], [2, 1, 4], 8, 2, 8, 8, True, {}),
    "mqa8-dv": ([30, 9], [4, 9], 8, 1, 16, 8, True, {}),
    "empty-seq": ([12, 7, 19], [2, 0, 3], 4, 2, 8, 8, True, {}),
    "single-token": ([1], [1], 4, 1, 8, 8, True, {}),
    "window": ([25, 6], [4, 6], 4, 2, 8, 8, True, {"window": 5}),
    "softcap": ([21, 4], [3, 2], 4, 2, 8, 12, True, {"softcap": 1.5, "scale": 1.1}),
    "alibi": ([18, 3], [3, 3], 4, 4, 8, 8, True, {"alibi": True}),
    "noncausal": ([14, 8], [3, 8], 4, 2, 8, 8, False, {}),
    "all-options": ([40, 11], [5, 3], 8, 2, 8, 16, True, {"window": 7, "softcap": 4.0, "alibi": True}),
}


@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("bs", [16, 64])
@pytest.mark.parametrize("case", list(PAGED_PREFILL_CASES), ids=list(PAGED_PREFILL_CASES))
def test_paged_prefill_attention(case, bs, layout, dtype=torch.float32):
    _run_paged_prefill(case, bs, layout, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", ["gqa4-boundary", "all-options", "empty-seq"])
def test_paged_prefill_attention_half(case, dtype):
    _run_paged_prefill(case, 16, "HND", dtype)


def _run_paged_prefill(case, bs, layout, dtype):
    ctx, lens, hq, hkv, d, dv, causal, extra = PAGED_PREFILL_CASES[case]
    ctx_k = [_rand(n, hkv, d, dtype=dtype) for n in ctx]
    ctx_v = [_rand(n, hkv, dv, dtype=dtype) for n in ctx]
    kc, vc, table = build_paged(ctx_k, ctx_v, bs, layout, dtype)
    t = sum(lens)
    q = _rand(t, hq, d, dtype=dtype)
    o = _opts(hq, **extra)
    cu = _cu(lens)
    seqlens = torch.tensor(ctx, dtype=torch.int32)
    got = ops.paged_prefill_attention(q, kc, vc, table, cu, seqlens, max_seqlen_q=max(lens),
                                      max_seqlen_kv=max(ctx) + 5, causal=causal, kv_layout=layout, **o)
    want = torch.empty(t, hq, dv, dtype=torch.float64)
    for b, n in enumerate(lens):
        s = int(cu[b])
        positions = [ctx[b] - n + i for i in range(n)]  # the new tokens are the last n of the context
        want[s : s + n] = dense_attention(q[s : s + n], ctx_k[b], ctx_v[b], positions, causal=causal,
                                          **_oracle_kwargs(o))
    assert got.shape == (t, hq, dv)
    _close(got, want, dtype)


# --------------------------------------------------------------------------- paged_decode_attention

DECODE_CASES = {
    # id: (ctx lens, Hq, Hkv, D, Dv, opts)
    "mha": ([5, 16, 17], 2, 2, 8, 8, {}),
    "gqa4": ([1, 31, 64, 65], 8, 2, 8, 8, {}),
    "mqa8-dv": ([9, 40], 8, 1, 16, 8, {}),
    "single": ([1], 4, 1, 8, 8, {}),
    "window": ([30, 3], 4, 2, 8, 8, {"window": 6}),
    "softcap": ([22, 7], 4, 2, 8, 8, {"softcap": 1.0, "scale": 1.3}),
    "alibi": ([19, 2], 4, 4, 8, 8, {"alibi": True}),
    "all-options": ([50, 12], 8, 2, 16, 8, {"window": 10, "softcap": 5.0, "alibi": True, "scale": 0.4}),
}


@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("bs", [16, 64])
@pytest.mark.parametrize("case", list(DECODE_CASES), ids=list(DECODE_CASES))
def test_paged_decode_attention(case, bs, layout):
    _run_decode(case, bs, layout, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", ["gqa4", "all-options"])
def test_paged_decode_attention_half(case, dtype):
    _run_decode(case, 16, "NHD", dtype)


def _run_decode(case, bs, layout, dtype):
    ctx, hq, hkv, d, dv, extra = DECODE_CASES[case]
    ctx_k = [_rand(n, hkv, d, dtype=dtype) for n in ctx]
    ctx_v = [_rand(n, hkv, dv, dtype=dtype) for n in ctx]
    kc, vc, table = build_paged(ctx_k, ctx_v, bs, layout, dtype)
    q = _rand(len(ctx), hq, d, dtype=dtype)
    o = _opts(hq, **extra)
    seqlens = torch.tensor(ctx, dtype=torch.int32)
    got = ops.paged_decode_attention(q, kc, vc, table, seqlens, max_seqlen_kv=max(ctx), kv_layout=layout, **o)
    want = torch.cat([
        dense_attention(q[b : b + 1], ctx_k[b], ctx_v[b], [ctx[b] - 1], causal=True, **_oracle_kwargs(o))
        for b in range(len(ctx))
    ])
    assert got.shape == (len(ctx), hq, dv)
    _close(got, want, dtype)


# --------------------------------------------------------------------------- fill, then attend


@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_fill_then_paged_prefill_and_decode(layout):
    """A chunked-prefill step then a decode step, written through fill_kv_cache with -1 padding slots."""
    bs, hq, hkv, d, dv = 16, 4, 2, 8, 8
    hist, new = [18, 0], [3, 6]  # sequence 1 has no history
    ctx = [h + n for h, n in zip(hist, new)]
    ctx_k = [_rand(n + 1, hkv, d) for n in ctx]  # one extra token each for the decode step
    ctx_v = [_rand(n + 1, hkv, dv) for n in ctx]
    nb = 6
    kshape = (nb, bs, hkv, d) if layout == "NHD" else (nb, hkv, bs, d)
    vshape = (nb, bs, hkv, dv) if layout == "NHD" else (nb, hkv, bs, dv)
    kc, vc = _rand(*kshape), _rand(*vshape)
    table = torch.tensor([[4, 1, 0], [5, 3, 2]], dtype=torch.int32)

    def slot(b, pos):
        return int(table[b, pos // bs]) * bs + pos % bs

    # history of sequence 0, then the new tokens of the step plus two padding rows
    hk = ctx_k[0][: hist[0]]
    ops.fill_kv_cache(hk, ctx_v[0][: hist[0]], kc, vc, torch.tensor([slot(0, p) for p in range(hist[0])]),
                      kv_layout=layout)
    step_k = torch.cat([ctx_k[0][hist[0] : ctx[0]], ctx_k[1][: ctx[1]], _rand(2, hkv, d)])
    step_v = torch.cat([ctx_v[0][hist[0] : ctx[0]], ctx_v[1][: ctx[1]], _rand(2, hkv, dv)])
    slots = [slot(0, p) for p in range(hist[0], ctx[0])] + [slot(1, p) for p in range(ctx[1])] + [-1, -1]
    ops.fill_kv_cache(step_k, step_v, kc, vc, torch.tensor(slots, dtype=torch.int32), kv_layout=layout)

    q = _rand(sum(new), hq, d)
    cu = _cu(new)
    got = ops.paged_prefill_attention(q, kc, vc, table, cu, torch.tensor(ctx, dtype=torch.int32),
                                      max_seqlen_q=max(new), max_seqlen_kv=max(ctx), kv_layout=layout)
    want = torch.cat([
        dense_attention(q[int(cu[b]) : int(cu[b + 1])], ctx_k[b][: ctx[b]], ctx_v[b][: ctx[b]],
                        list(range(hist[b], ctx[b])), causal=True, scale=None, window=None, softcap=None, alibi=None)
        for b in range(2)
    ])
    _close(got, want, torch.float32)

    # decode: one more token per sequence
    ops.fill_kv_cache(torch.stack([ctx_k[0][-1], ctx_k[1][-1]]), torch.stack([ctx_v[0][-1], ctx_v[1][-1]]), kc, vc,
                      torch.tensor([slot(0, ctx[0]), slot(1, ctx[1])]), kv_layout=layout)
    qd = _rand(2, hq, d)
    lens = torch.tensor([c + 1 for c in ctx], dtype=torch.int32)
    got = ops.paged_decode_attention(qd, kc, vc, table, lens, max_seqlen_kv=max(ctx) + 1, kv_layout=layout)
    want = torch.cat([
        dense_attention(qd[b : b + 1], ctx_k[b], ctx_v[b], [ctx[b]], causal=True, scale=None, window=None,
                        softcap=None, alibi=None)
        for b in range(2)
    ])
    _close(got, want, torch.float32)


# --------------------------------------------------------------------------- non-finite inputs, degenerate metadata

NONFINITE = {
    # id: (causal, window, where the non-finite values go: (tensor, index, value))
    "nan-q-row": (True, None, [("q", (2, 1), float("nan"))]),
    "nan-k-propagates-to-later-queries": (True, None, [("k", (3, 0), float("nan"))]),
    "nan-v-causally-masked": (True, None, [("v", (5, 1), float("nan"))]),
    "nan-v-outside-window": (True, 2, [("v", (0, 0), float("nan")), ("k", (1, 1), float("nan"))]),
    "inf-v": (True, None, [("v", (2, 0, 1), float("inf")), ("v", (4, 0, 2), float("-inf")),
                           ("v", (3, 0, 2), float("inf"))]),
    "nan-noncausal": (False, None, [("v", (4, 1, 0), float("nan"))]),
}


@pytest.mark.parametrize("case", list(NONFINITE), ids=list(NONFINITE))
def test_prefill_attention_nonfinite_inputs_follow_the_math(case):
    """A NaN in q or a visible k/v reaches the output; a masked-out k/v never does (float64 oracle)."""
    causal, window, poison = NONFINITE[case]
    lens, hq, hkv, d = [6, 3], 4, 2, 8
    t = sum(lens)
    x = {"q": _rand(t, hq, d), "k": _rand(t, hkv, d), "v": _rand(t, hkv, d)}
    for name, index, value in poison:
        x[name][index] = value
    cu = _cu(lens)
    got = ops.prefill_attention(x["q"], x["k"], x["v"], cu, max_seqlen_q=6, causal=causal, window=window,
                                softcap=None, scale=None, alibi_slopes=None)
    want = torch.cat([dense_attention(x["q"][s:e], x["k"][s:e], x["v"][s:e], list(range(e - s)), causal=causal,
                                      scale=None, window=window, softcap=None, alibi=None)
                      for s, e in zip(cu.tolist(), cu.tolist()[1:])])
    assert want.isnan().any() or want.isinf().any(), "the case must poison some outputs"
    assert torch.isfinite(want).any(), "and leave others finite"
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5, equal_nan=True)


def test_paged_decode_nan_value_outside_window_does_not_leak():
    ctx, hq, hkv, d, window = [20, 9], 4, 2, 8, 5
    ctx_k = [_rand(n, hkv, d) for n in ctx]
    ctx_v = [_rand(n, hkv, d) for n in ctx]
    ctx_v[0][3] = float("nan")  # outside the window of the decode query at position 19
    ctx_v[1][8, 1] = float("nan")  # inside the window: reaches heads 2 and 3 of sequence 1
    kc, vc, table = build_paged(ctx_k, ctx_v, 16, "NHD", torch.float32)
    q = _rand(2, hq, d)
    got = ops.paged_decode_attention(q, kc, vc, table, torch.tensor(ctx, dtype=torch.int32), max_seqlen_kv=20,
                                     window=window, scale=None, softcap=None, alibi_slopes=None, kv_layout="NHD")
    want = torch.cat([dense_attention(q[b:b + 1], ctx_k[b], ctx_v[b], [ctx[b] - 1], causal=True, scale=None,
                                      window=window, softcap=None, alibi=None) for b in range(2)])
    assert torch.isfinite(want[0]).all() and want[1, 2:].isnan().all() and torch.isfinite(want[1, :2]).all()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5, equal_nan=True)


BAD_OFFSETS = {
    "starts-above-0": [1, 3, 5],
    "ends-before-T": [0, 2, 4],
    "decreasing": [0, 4, 2, 5],
    "empty": [],
    "2-d": [[0, 3, 5]],
}


@pytest.mark.parametrize("case", list(BAD_OFFSETS), ids=list(BAD_OFFSETS))
def test_reference_kernels_refuse_offsets_that_leave_rows_unwritten(case):
    """Called directly (no validation in front), the reference never returns uninitialised rows."""
    from dlinfer.reference import attention as ref

    cu = torch.tensor(BAD_OFFSETS[case], dtype=torch.int32)
    q, k, v = _rand(5, 4, 8), _rand(5, 2, 8), _rand(5, 2, 8)
    opts = {"scale": None, "window": None, "softcap": None, "alibi_slopes": None}
    with pytest.raises(ValueError, match="prefill_attention: cu_seqlens_q must"):
        ref.prefill_attention(q, k, v, cu, max_seqlen_q=5, causal=True, cu_seqlens_q_cpu=None, **opts)
    kc, vc, table = build_paged([k[:3], k[3:]], [v[:3], v[3:]], 16, "NHD", torch.float32)
    with pytest.raises(ValueError, match="paged_prefill_attention: cu_seqlens_q must"):
        ref.paged_prefill_attention(q, kc, vc, table, cu, torch.tensor([3, 2], dtype=torch.int32), max_seqlen_q=5,
                                    max_seqlen_kv=5, causal=True, kv_layout="NHD", cu_seqlens_q_cpu=None,
                                    seqlens_kv_cpu=None, **opts)


# --------------------------------------------------------------------------- MLA: V a strided view of K


@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_mla_value_cache_viewing_the_key_cache(layout):
    """DeepSeek-V2/V3 as LMDeploy runs them without FlashMLA: D=576, Dv=512, one KV head, the value cache the first
    512 channels of the key cache; fill through the view, then paged prefill and decode (Capabilities.mla)."""
    bs, hq, d, dv = 16, 4, 576, 512
    ctx = [19, 6]
    ctx_k = [_rand(n, 1, d) for n in ctx]
    kc, _, table = build_paged(ctx_k, [k[..., :dv] for k in ctx_k], bs, layout, torch.float32)
    vc = kc[..., :dv]  # a strided view, as LMDeploy passes past_key_value[0][..., :kv_lora_rank]
    assert vc.data_ptr() == kc.data_ptr() and not vc.is_contiguous()
    # the last token of each sequence is written by fill_kv_cache with value = key[..., :dv] (a view)
    new_k = torch.stack([k[-1] for k in ctx_k])
    slots = torch.tensor([int(table[b, (n - 1) // bs]) * bs + (n - 1) % bs for b, n in enumerate(ctx)])
    ops.fill_kv_cache(new_k, new_k[..., :dv], kc, vc, slots, kv_layout=layout)
    seqlens = torch.tensor(ctx, dtype=torch.int32)
    q = _rand(4, hq, d)
    lens = [3, 1]
    cu = _cu(lens)
    got = ops.paged_prefill_attention(q, kc, vc, table, cu, seqlens, max_seqlen_q=3, max_seqlen_kv=max(ctx),
                                      scale=0.05, kv_layout=layout)
    want = torch.cat([
        dense_attention(q[int(cu[b]) : int(cu[b + 1])], ctx_k[b], ctx_k[b][..., :dv],
                        [ctx[b] - lens[b] + i for i in range(lens[b])], causal=True, scale=0.05, window=None,
                        softcap=None, alibi=None)
        for b in range(2)
    ])
    _close(got, want, torch.float32)
    qd = _rand(2, hq, d)
    got = ops.paged_decode_attention(qd, kc, vc, table, seqlens, max_seqlen_kv=max(ctx), scale=0.05,
                                     kv_layout=layout)
    want = torch.cat([
        dense_attention(qd[b : b + 1], ctx_k[b], ctx_k[b][..., :dv], [ctx[b] - 1], causal=True, scale=0.05,
                        window=None, softcap=None, alibi=None)
        for b in range(2)
    ])
    _close(got, want, torch.float32)
