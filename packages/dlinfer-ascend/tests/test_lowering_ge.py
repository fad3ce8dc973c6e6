"""GE (max-autotune) lowering of prefill and decode steps on the Ascend simulator: rotary, attention, quantised linears.

Each step is compiled with the GE table (compile_backend's GE refusal check, then the lowered graph runs on the
simulated kernels, with the GE converters' semantics where they differ from the eager kernels': the rotary converter
works out of place, npu_sim/torchair.py) and compared with eager on copies of the same fresh inputs: outputs and
every mutated input (rotated q/k, KV caches). Eager's kernels are the reference: ATB prefill attention there, FIA
(non-paged TND) in GE; the KV write is ATB there, ScatterPaKvCache in GE.
"""

from __future__ import annotations

import functools

import npu_sim.torchair as torchair_sim
import pytest
import torch
from dlinfer import ops
from dlinfer.custom_ops import CUSTOM_OPS
from dlinfer.testing.inputs import PagedSetup, cu_seqlens, paged_inputs
from test_lowering import _ge_backend, _glue_is_converted, ascend  # noqa: F401  (ascend: the fixture, used by name)

DLINFER = {op: name for name, op in CUSTOM_OPS.items()}
HQ, HKV, D, BS, OUT = 4, 2, 128, 16, 32


def _names(gm: torch.fx.GraphModule) -> list[str]:
    return [getattr(n.target, "__name__", str(n.target)) for n in gm.graph.nodes if n.op == "call_function"]


def _slots(bt: torch.Tensor, starts: list[int], lens: list[int]) -> torch.Tensor:
    """Cache slots of positions starts[b] .. starts[b] + lens[b] - 1 of each sequence (block table bt)."""
    out = []
    for b, (s, n) in enumerate(zip(starts, lens, strict=True)):
        pos = torch.arange(s, s + n)
        out.append(bt[b].long()[pos // BS] * BS + pos % BS)
    return torch.cat(out).to(torch.int32)


def _half(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g).half()


def _w8a8(g: torch.Generator, n_in: int) -> list[torch.Tensor]:
    """int8 weight [OUT, IN], fp32 per-channel scale [OUT], fp16 bias [OUT]."""
    return [torch.randint(-127, 128, (OUT, n_in), generator=g, dtype=torch.int8),
            torch.rand(OUT, generator=g) * 1e-3 + 1e-4, _half(g, OUT)]


def _w4(g: torch.Generator, n_in: int, group: int) -> list[torch.Tensor]:
    """npu_weight_quant_batchmatmul int4 layout: packed int32 [IN, OUT/8], fp16 scale/offset [IN/g, OUT], bias."""
    packed = torch.randint(-2**31, 2**31 - 1, (n_in, OUT // 8), generator=g, dtype=torch.int64).to(torch.int32)
    return [packed, (torch.rand(n_in // group, OUT, generator=g) * 0.02).half(),
            torch.randint(-8, 8, (n_in // group, OUT), generator=g).half(), _half(g, OUT)]


# -- prefill (no history): rotary in place, KV write, ATB / FIA prefill attention, norm + W8A8 linear ---------------

def prefill_layer(q, k, v, cos, sin, kc, vc, slots, cu, cu_cpu, nw, wq, ws, bias):  # noqa: ANN001, ANN201
    ops.apply_rotary_pos_emb_inplace(q, k, cos, sin)
    ops.fill_kv_cache(k, v, kc, vc, slots, kv_layout="NHD")
    o = ops.prefill_attention(q, k, v, cu, max_seqlen_q=8, cu_seqlens_q_cpu=cu_cpu)
    xq, xs = ops.rms_norm_w8a8(o.reshape(o.shape[0], -1), nw, eps=1e-6)
    return ops.linear_w8a8(xq, wq, xs, ws, bias, out_dtype=torch.float16)


def _prefill_inputs(seed: int, lens: list[int], d: int = D) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t, nb = sum(lens), 8
    cu = cu_seqlens(lens)
    return [_half(g, t, HQ, d), _half(g, t, HKV, d), _half(g, t, HKV, d), torch.randn(t, d, generator=g),
            torch.randn(t, d, generator=g), _half(g, nb, BS, HKV, d), _half(g, nb, BS, HKV, d),
            torch.randperm(nb * BS, generator=g)[:t].to(torch.int32), cu, cu.clone(), _half(g, HQ * d) + 1,
            *_w8a8(g, HQ * d)]


def _check_step(fn, layer, make, mutated: tuple[int, ...]) -> None:  # noqa: ANN001
    """fn (compiled) equals layer (eager) on copies of make()'s inputs: outputs and the mutated inputs."""
    eager_in, graph_in = make(), make()
    before = [eager_in[i].clone() for i in mutated]
    want, got = layer(*eager_in), fn(*graph_in)
    for i, (w, o) in enumerate(zip(want if isinstance(want, tuple) else (want,),
                                   got if isinstance(got, tuple) else (got,), strict=True)):
        assert w.float().abs().max() > 0 and torch.equal(w, o), f"output {i}: {(w.float() - o.float()).abs().max()}"
    for b, i in zip(before, mutated, strict=True):
        assert not torch.equal(b, eager_in[i]), f"input {i} was not written: the check would be vacuous"
        assert torch.equal(eager_in[i], graph_in[i]), f"mutated input {i} differs from eager"


@pytest.mark.usefixtures("ascend")
def test_ge_prefill_step_with_fia_substitute_equals_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rotary (ApplyRotaryPosEmb, out of place in GE), ScatterPaKvCache, FIA TND non-paged for ATB SelfAttention,
    RmsNorm + DynamicQuant, QuantBatchMatmul: no dlinfer node left; equal to eager (ATB attention, ATB cache write)
    bit for bit on the simulator for two steps of the same shapes and new host lengths (no recompile)."""
    glue = torchair_sim.GlueOps()
    checked = _ge_backend(monkeypatch, glue)
    fn = torch.compile(prefill_layer, backend="dlinfer", fullgraph=True, dynamic=False)
    for seed, lens in ((30, [5, 3, 7]), (31, [8, 1, 6])):
        _check_step(fn, prefill_layer, functools.partial(_prefill_inputs, seed, lens), mutated=(0, 1, 5, 6))
    assert len(checked) == 1, "recompiled: the host lengths must not be guarded on"
    names = _names(checked[0])
    assert not [n for n in checked[0].graph.nodes if n.target in DLINFER]
    for kernel in ("npu_apply_rotary_pos_emb", "npu_scatter_pa_kv_cache_functional", "npu_fused_infer_attention_score",
                   "npu_rms_norm", "npu_dynamic_quant", "npu_quant_matmul"):
        assert kernel in names, (kernel, names)
    assert "_npu_flash_attention" not in names and "_npu_reshape_and_cache" not in names
    fia = next(n for n in checked[0].graph.nodes
               if getattr(n.target, "__name__", "") == "npu_fused_infer_attention_score")
    for key in ("actual_seq_lengths", "actual_seq_lengths_kv"):  # cu_seqlens_q_cpu[1:] as int graph inputs
        host = fia.kwargs[key]
        assert len(host) == 3 and all(h.op == "placeholder" and "cu_cpu" in h.name for h in host), host
    _glue_is_converted(glue)


# -- decode: rotary out of place (fused or rotary_mul), KV write, FIA decode, add-norm + W8A8, W4A16 -----------------

def decode_layer(q, k, v, cos, sin, kc, vc, slots, bt, kv, kv_cpu, res, nw, wq, ws, bias, qw, sc, off, b4, *,  # noqa: ANN001, ANN201
                 interleaved):
    q2, k2 = ops.apply_rotary_pos_emb(q, k, cos, sin, interleaved=interleaved)
    ops.fill_kv_cache(k2, v, kc, vc, slots, kv_layout="NHD")
    o = ops.paged_decode_attention(q2, kc, vc, bt, kv, max_seqlen_kv=64, kv_layout="NHD", seqlens_kv_cpu=kv_cpu)
    o = o.reshape(o.shape[0], -1)
    xq, xs, h = ops.add_rms_norm_w8a8(o, res, nw, eps=1e-6)
    y8 = ops.linear_w8a8(xq, wq, xs, ws, None, out_dtype=torch.bfloat16)
    y4 = ops.weight_quant_matmul(o, qw, sc, off, b4, group_size=128)
    return q2, k2, y8, y4, h


def _decode_inputs(seed: int, kv_lens: tuple[int, ...]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = paged_inputs(g, PagedSetup((1,) * len(kv_lens), kv_lens, HQ, HKV, D, D, BS), torch.float16, "NHD")
    b, n_in = len(kv_lens), HQ * D
    bt, kv = a["block_table"], a["seqlens_kv"]
    slots = _slots(bt, [n - 1 for n in kv_lens], [1] * b)
    w8 = _w8a8(g, n_in)
    return [a["q"], _half(g, b, HKV, D), _half(g, b, HKV, D), torch.randn(b, D, generator=g),
            torch.randn(b, D, generator=g), a["key_cache"], a["value_cache"], slots, bt, kv, kv.clone(),
            _half(g, b, n_in), _half(g, n_in) + 1, w8[0], w8[1], w8[2].float(), *_w4(g, n_in, 128)]


@pytest.mark.usefixtures("ascend")
@pytest.mark.parametrize("interleaved", [False, True], ids=["rope-fused", "rotary-mul"])
def test_ge_decode_step_with_quantised_linears_equals_eager(
        monkeypatch: pytest.MonkeyPatch, interleaved: bool) -> None:
    glue = torchair_sim.GlueOps()
    checked = _ge_backend(monkeypatch, glue)
    layer = functools.partial(decode_layer, interleaved=interleaved)
    fn = torch.compile(layer, backend="dlinfer", fullgraph=True, dynamic=False)
    for seed, kv_lens in ((40, (33, 17, 50)), (41, (34, 18, 51))):
        _check_step(fn, layer, functools.partial(_decode_inputs, seed, kv_lens), mutated=(5, 6))
    assert len(checked) == 1
    names = _names(checked[0])
    assert not [n for n in checked[0].graph.nodes if n.target in DLINFER]
    rope = "npu_rotary_mul" if interleaved else "npu_apply_rotary_pos_emb"
    for kernel in (rope, "npu_fused_infer_attention_score", "npu_add_rms_norm", "npu_dynamic_quant",
                   "npu_quant_matmul", "npu_weight_quant_batchmatmul"):
        assert kernel in names, (kernel, names)
    _glue_is_converted(glue)


# -- paged prefill (prefix cached): partial rotary in place, FIA TND over the caches, plain linear ----------------

def paged_prefill_layer(q, k, v, cos, sin, kc, vc, slots, bt, cu, kv, cu_cpu, kv_cpu, w, b):  # noqa: ANN001, ANN201
    ops.apply_rotary_pos_emb_inplace(q, k, cos, sin)
    ops.fill_kv_cache(k, v, kc, vc, slots, kv_layout="NHD")
    o = ops.paged_prefill_attention(q, kc, vc, bt, cu, kv, max_seqlen_q=6, max_seqlen_kv=64, kv_layout="NHD",
                                    cu_seqlens_q_cpu=cu_cpu, seqlens_kv_cpu=kv_cpu)
    return ops.linear(o.reshape(o.shape[0], -1), w, b)


def _paged_prefill_inputs(seed: int, q_lens: tuple[int, ...], kv_lens: tuple[int, ...]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = paged_inputs(g, PagedSetup(q_lens, kv_lens, HQ, HKV, D, D, BS), torch.float16, "NHD")
    t, bt = sum(q_lens), a["block_table"]
    slots = _slots(bt, [n - m for n, m in zip(kv_lens, q_lens, strict=True)], list(q_lens))
    return [a["q"], _half(g, t, HKV, D), _half(g, t, HKV, D), torch.randn(t, 64, generator=g),
            torch.randn(t, 64, generator=g), a["key_cache"], a["value_cache"], slots, bt, a["cu_seqlens_q"],
            a["seqlens_kv"], a["cu_seqlens_q"].clone(), a["seqlens_kv"].clone(), _half(g, OUT, HQ * D) / 16,
            _half(g, OUT)]


@pytest.mark.usefixtures("ascend")
def test_ge_paged_prefill_step_equals_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eager's TND route of paged prefill (FIA with cumulative host query lengths) and a partial rotary (R=64 of
    D=128) through ApplyRotaryPosEmb on copies of the first R dims; linear through aten (MatMul)."""
    glue = torchair_sim.GlueOps()
    checked = _ge_backend(monkeypatch, glue)
    fn = torch.compile(paged_prefill_layer, backend="dlinfer", fullgraph=True, dynamic=False)
    for seed, q_lens, kv_lens in ((50, (4, 2, 5), (20, 9, 5)), (51, (3, 5, 3), (30, 5, 12))):
        _check_step(fn, paged_prefill_layer, functools.partial(_paged_prefill_inputs, seed, q_lens, kv_lens),
                    mutated=(0, 1, 5, 6))
    assert len(checked) == 1
    assert not [n for n in checked[0].graph.nodes if n.target in DLINFER]
    assert "npu_fused_infer_attention_score" in _names(checked[0])
    _glue_is_converted(glue)


# -- what GE still refuses ---------------------------------------------------------------------------------------

def _prefill_d64(q, k, v, cu, cu_cpu):  # noqa: ANN001, ANN202
    return ops.prefill_attention(q, k, v, cu, max_seqlen_q=8, cu_seqlens_q_cpu=cu_cpu)


def _paged_prefill_single_tokens(q, kc, vc, bt, cu, kv, cu_cpu, kv_cpu):  # noqa: ANN001, ANN202
    return ops.paged_prefill_attention(q, kc, vc, bt, cu, kv, max_seqlen_q=1, max_seqlen_kv=64, kv_layout="NHD",
                                       cu_seqlens_q_cpu=cu_cpu, seqlens_kv_cpu=kv_cpu)


@pytest.mark.usefixtures("ascend")
def test_ge_refuses_prefill_outside_the_documented_substitutes_naming_op_mode_reason_and_remedy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Head size 64 prefill (FIA's non-paged TND is documented for D=128) and a paged prefill outside eager's TND
    route (single-token queries: eager's per-token route builds host-side rows) have no GE lowering."""
    _ge_backend(monkeypatch)
    p = _prefill_inputs(60, [5, 3], d=64)
    with pytest.raises(Exception, match=r"max-autotune.*\['prefill_attention'\].*head dims \(64, 64\).*"
                                        r"DLINFER_ASCEND_COMPILE_MODE=npugraph_ex"):
        torch.compile(_prefill_d64, backend="dlinfer", fullgraph=True, dynamic=False)(p[0], p[1], p[2], p[8], p[9])
    a = _paged_prefill_inputs(61, (1, 1), (9, 4))
    with pytest.raises(Exception, match=r"max-autotune.*\['paged_prefill_attention'\].*max_seqlen_q 1.*"
                                        r"DLINFER_ASCEND_COMPILE_MODE"):
        torch.compile(_paged_prefill_single_tokens, backend="dlinfer", fullgraph=True, dynamic=False)(
            a[0], a[5], a[6], a[8], a[9], a[10], a[11], a[12])


def test_simulated_unpaged_tnd_fia_matches_an_independent_oracle() -> None:
    """npu_sim's non-paged TND FIA (cumulative q and kv lengths, sparse 3 / 4 / 0, GQA) against a per-sequence
    softmax written here; non-cumulative lengths and undocumented head sizes are refused."""
    from npu_sim import NotModelled, NpuContractError
    from npu_sim.attention import npu_fused_infer_attention_score as fia

    g = torch.Generator().manual_seed(70)
    lens = [3, 6, 4]
    t = sum(lens)
    q, k, v = _half(g, t, HQ, D), _half(g, t, HKV, D), _half(g, t, HKV, D)
    mask = torch.triu(torch.ones(2048, 2048, dtype=torch.bool), 1)
    cum = cu_seqlens(lens)[1:].tolist()
    for mode, extra, band in ((3, {}, None), (4, {"pre_tokens": 1, "next_tokens": 0}, 2), (0, {}, None)):
        kw = dict(atten_mask=mask if mode else None, sparse_mode=mode, **extra)
        got, _ = fia(q, k, v, actual_seq_lengths=cum, actual_seq_lengths_kv=cum, num_heads=HQ, num_key_value_heads=HKV,
                     scale=0.1, input_layout="TND", **kw)
        start = 0
        for n in lens:
            qs, ks, vs = (x[start:start + n].float() for x in (q, k, v))
            ks, vs = ks.repeat_interleave(HQ // HKV, 1), vs.repeat_interleave(HQ // HKV, 1)
            s = torch.einsum("qhd,khd->hqk", qs, ks) * 0.1
            i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
            keep = torch.ones(n, n, dtype=torch.bool) if mode == 0 else (j <= i)
            if band is not None:
                keep &= j > i - band
            want = torch.einsum("hqk,khd->qhd", s.masked_fill(~keep, float("-inf")).softmax(-1), vs)
            torch.testing.assert_close(got[start:start + n].float(), want, rtol=2e-3, atol=2e-3)
            start += n
    with pytest.raises(NpuContractError, match="cumulative"):
        fia(q, k, v, actual_seq_lengths=lens, actual_seq_lengths_kv=cum, num_heads=HQ, num_key_value_heads=HKV,
            scale=0.1, input_layout="TND", atten_mask=mask, sparse_mode=3)
    with pytest.raises(NotModelled, match="D=64"):
        fia(q[..., :64], k[..., :64], v[..., :64], actual_seq_lengths=cum, actual_seq_lengths_kv=cum, num_heads=HQ,
            num_key_value_heads=HKV, scale=0.1, input_layout="TND", sparse_mode=0)
