"""``torch.library.opcheck`` on every graph op of the spec, plus the declared schemas."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import dlinfer
from dlinfer.custom_ops import CUSTOM_OPS
from dlinfer.spec import AWQ_ORDER, SPECS

GRAPH_OPS = sorted(name for name, spec in SPECS.items() if spec.graph_op)


@pytest.fixture(scope="module", autouse=True)
def _reference_backend():
    dlinfer.activate("reference")
    yield


def _r(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


def _awq(rows: int, cols: int) -> torch.Tensor:
    values = torch.randint(0, 16, (rows, cols))
    packed = torch.zeros(rows, cols // 8, dtype=torch.int64)
    for c in range(cols // 8):
        for i, j in enumerate(AWQ_ORDER):
            packed[:, c] |= values[:, 8 * c + j] << (4 * i)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def _paged(layout: str, dtype: torch.dtype):
    nb, bs, hkv, d, dv = 6, 16, 2, 16, 8
    kshape = (nb, bs, hkv, d) if layout == "NHD" else (nb, hkv, bs, d)
    vshape = (nb, bs, hkv, dv) if layout == "NHD" else (nb, hkv, bs, dv)
    table = torch.tensor([[3, 0, 5], [1, 4, 2]], dtype=torch.int32)
    return _r(*kshape, dtype=dtype), _r(*vshape, dtype=dtype), table


_ATTN_NONE = {"scale": None, "window": None, "softcap": None, "alibi_slopes": None}


def cases(name: str, dtype: torch.dtype, layout: str):
    """(args, kwargs) lists for one op; every keyword is passed (the schema has no defaults)."""
    hq = 4
    if name == "rms_norm":
        return [((_r(3, 5, 32, dtype=dtype), _r(32, dtype=dtype)), {"eps": 1e-6})]
    if name == "add_rms_norm":
        return [((_r(7, 32, dtype=dtype), _r(7, 32, dtype=dtype), _r(32, dtype=dtype)), {"eps": 1e-5})]
    if name == "apply_rotary_pos_emb":
        return [((_r(5, hq, 32, dtype=dtype), _r(5, 2, 32, dtype=dtype), _r(5, r, dtype=dtype), _r(5, r, dtype=dtype)),
                 {"interleaved": inter}) for r, inter in ((32, False), (16, True))]
    if name == "apply_rotary_pos_emb_inplace":  # q and k sliced from one fused qkv buffer, and dense ones
        qkv = _r(5, (hq + 4) * 32, dtype=dtype)
        q, k = qkv[:, : hq * 32].view(5, hq, 32), qkv[:, hq * 32 : (hq + 2) * 32].view(5, 2, 32)
        return [((q, k, _r(5, 32, dtype=dtype), _r(5, 32, dtype=dtype)), {"interleaved": False}),
                ((_r(5, hq, 32, dtype=dtype), _r(5, 2, 32, dtype=dtype), _r(5, 16, dtype=dtype),
                  _r(5, 16, dtype=dtype)), {"interleaved": True})]
    if name == "silu_and_mul":
        return [((_r(2, 3, 48, dtype=dtype),), {})]
    if name == "fill_kv_cache":
        kc, vc, _ = _paged(layout, dtype)
        slots = torch.tensor([5, 17, -1, 40, 95], dtype=torch.int64)
        return [((_r(5, 2, 16, dtype=dtype), _r(5, 2, 8, dtype=dtype), kc, vc, slots), {"kv_layout": layout}),
                ((_r(5, 2, 16, dtype=dtype), _r(5, 2, 8, dtype=dtype), kc.clone(), vc.clone(), slots.int()),
                 {"kv_layout": layout})]
    if name == "prefill_attention":
        q, k, v = _r(7, hq, 16, dtype=dtype), _r(7, 2, 16, dtype=dtype), _r(7, 2, 8, dtype=dtype)
        cu = torch.tensor([0, 3, 3, 7], dtype=torch.int32)
        return [((q, k, v, cu), dict(max_seqlen_q=4, causal=True, cu_seqlens_q_cpu=None, **_ATTN_NONE)),
                ((q, k, v, cu), {"max_seqlen_q": 4, "causal": False, "scale": 0.5, "window": 2, "softcap": 3.0,
                                     "alibi_slopes": torch.rand(hq), "cu_seqlens_q_cpu": cu.clone()})]
    if name == "paged_prefill_attention":
        kc, vc, table = _paged(layout, dtype)
        cu = torch.tensor([0, 2, 5], dtype=torch.int32)
        seqlens = torch.tensor([20, 33], dtype=torch.int32)
        base = {"max_seqlen_q": 3, "max_seqlen_kv": 33, "kv_layout": layout, "cu_seqlens_q_cpu": None,
                "seqlens_kv_cpu": None}
        return [((_r(5, hq, 16, dtype=dtype), kc, vc, table, cu, seqlens), dict(causal=True, **_ATTN_NONE, **base)),
                ((_r(5, hq, 16, dtype=dtype), kc, vc, table, cu, seqlens),
                 dict(causal=True, scale=0.3, window=8, softcap=2.0, alibi_slopes=torch.rand(hq), **base))]
    if name == "paged_decode_attention":
        kc, vc, table = _paged(layout, dtype)
        seqlens = torch.tensor([17, 48], dtype=torch.int32)
        return [((_r(2, hq, 16, dtype=dtype), kc, vc, table, seqlens),
                 dict(max_seqlen_kv=48, kv_layout=layout, seqlens_kv_cpu=seqlens.clone(), **_ATTN_NONE)),
                ((_r(2, hq, 16, dtype=dtype), kc, vc, table, seqlens),
                 {"max_seqlen_kv": 48, "kv_layout": layout, "seqlens_kv_cpu": None, "scale": None, "window": 5,
                  "softcap": 1.0, "alibi_slopes": torch.rand(hq)})]
    if name == "moe_gating_topk_softmax":
        return [((_r(6, 8, dtype=dtype),), {"topk": 2, "renormalize": False}),
                ((_r(6, 8, dtype=dtype),), {"topk": 3, "renormalize": True})]
    if name == "fused_moe":
        t, e, k, h, i = 5, 4, 2, 16, 8
        ids = torch.stack([torch.randperm(e)[:k] for _ in range(t)]).int()
        return [((_r(t, h, dtype=dtype), _r(e, 2 * i, h, dtype=dtype), _r(e, h, i, dtype=dtype), torch.rand(t, k), ids),
                 {})]
    if name == "linear":
        x, w = _r(2, 3, 16, dtype=dtype), _r(8, 16, dtype=dtype)
        return [((x, w, None), {}), ((x, w, _r(8, dtype=dtype)), {})]
    if name == "dynamic_quant":
        return [((_r(2, 3, 16, dtype=dtype),), {"dtype": torch.int8})]
    if name == "linear_w8a8":
        x_q = torch.randint(-127, 128, (4, 16), dtype=torch.int8)
        w_q = torch.randint(-127, 128, (8, 16), dtype=torch.int8)
        return [((x_q, w_q, torch.rand(4), torch.rand(8), None), {"out_dtype": dtype}),
                ((x_q, w_q, torch.rand(4), torch.rand(8), _r(8, dtype=dtype)), {"out_dtype": dtype})]
    if name == "rms_norm_w8a8":
        return [((_r(3, 32, dtype=dtype), _r(32, dtype=dtype)), {"eps": 1e-6})]
    if name == "add_rms_norm_w8a8":
        return [((_r(3, 32, dtype=dtype), _r(3, 32, dtype=dtype), _r(32, dtype=dtype)), {"eps": 1e-6})]
    if name == "weight_quant_matmul":
        n_in, n_out, g = 64, 16, 32
        s = (torch.rand(n_in // g, n_out) * 0.05).to(dtype)
        return [((_r(3, n_in, dtype=dtype), _awq(n_in, n_out), s, _awq(n_in // g, n_out), None), {"group_size": g}),
                ((_r(2, 3, n_in, dtype=dtype), _awq(n_in, n_out), s, _awq(n_in // g, n_out), _r(n_out, dtype=dtype)),
                 {"group_size": g})]
    raise AssertionError(f"no opcheck case for graph op {name!r}: add one")


def test_every_graph_op_is_registered():
    assert sorted(CUSTOM_OPS) == GRAPH_OPS
    for name in GRAPH_OPS:
        assert CUSTOM_OPS[name] is getattr(torch.ops.dlinfer, name).default
    assert "weight_quant_prepare" not in CUSTOM_OPS  # load-time helper, never traced


def test_mutation_is_declared_only_for_the_mutating_ops():
    for name in GRAPH_OPS:
        schema = CUSTOM_OPS[name]._schema
        written = {a.name for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write}
        assert written == set(SPECS[name].mutated), name
    mutating = {name: set(SPECS[name].mutated) for name in GRAPH_OPS if SPECS[name].mutated}
    assert mutating == {"fill_kv_cache": {"key_cache", "value_cache"}, "apply_rotary_pos_emb_inplace": {"q", "k"}}
    for name in mutating:
        assert len(CUSTOM_OPS[name]._schema.returns) == 0, name


# The AOT-dispatch check compiles, which costs about a second per call: run it on one case per op;
# the other cases and variants run the schema and fake-tensor checks.
QUICK = ("test_schema", "test_faketensor")


@pytest.mark.parametrize("name", GRAPH_OPS)
def test_opcheck(name):
    first, *rest = cases(name, torch.float32, "NHD")
    torch.library.opcheck(CUSTOM_OPS[name], *first)
    for args, kwargs in rest:
        torch.library.opcheck(CUSTOM_OPS[name], args, kwargs, test_utils=QUICK)


@pytest.mark.parametrize("name", ["fill_kv_cache", "paged_prefill_attention", "paged_decode_attention"])
def test_opcheck_hnd_layout(name):
    for args, kwargs in cases(name, torch.float16, "HND"):
        torch.library.opcheck(CUSTOM_OPS[name], args, kwargs, test_utils=QUICK)


@pytest.mark.parametrize("name", ["rms_norm", "apply_rotary_pos_emb", "apply_rotary_pos_emb_inplace",
                                  "prefill_attention", "fused_moe", "dynamic_quant", "linear_w8a8",
                                  "add_rms_norm_w8a8", "weight_quant_matmul"])
def test_opcheck_half(name):
    for args, kwargs in cases(name, torch.bfloat16, "NHD"):
        torch.library.opcheck(CUSTOM_OPS[name], args, kwargs, test_utils=QUICK)


@pytest.mark.parametrize("name", GRAPH_OPS)
def test_fake_matches_real_on_meta(name):
    """The fake kernel, run on meta tensors, gives the real kernel's output shapes and dtypes."""
    args, kwargs = cases(name, torch.float16, "HND")[0]
    real = CUSTOM_OPS[name](*[a.clone() if isinstance(a, torch.Tensor) else a for a in args], **kwargs)


    with FakeTensorMode(allow_non_fake_inputs=False) as mode:
        fargs = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        fkw = {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        fake = CUSTOM_OPS[name](*fargs, **fkw)
    real_t = real if isinstance(real, tuple) else (real,) if real is not None else ()
    fake_t = fake if isinstance(fake, tuple) else (fake,) if fake is not None else ()
    assert len(real_t) == len(fake_t) == len(SPECS[name].outputs)
    for r, f in zip(real_t, fake_t):
        assert tuple(r.shape) == tuple(f.shape) and r.dtype == f.dtype, name
