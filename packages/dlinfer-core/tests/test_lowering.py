"""dlinfer.lowering: dlinfer nodes -> vendor op nodes, on CPU with test-only stub vendor ops.

The stub namespace ``dlinfer_lowering_stub`` mirrors the shape of torch_npu's kernels the Ascend table uses
(an RMSNorm returning (y, rstd), a reshape-and-cache that writes the caches in place, a paged attention taking
flattened [NB, BS, H*D] caches, a block table and *host* per-sequence KV lengths). Each has a reference
kernel written here (independent of dlinfer's reference backend) and a fake.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import pytest
import torch
import torch._dynamo
from torch._functorch.aot_autograd import aot_module_simplified
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

import dlinfer
import dlinfer.dispatch
from dlinfer import lowering, ops
from dlinfer.custom_ops import CUSTOM_OPS
from dlinfer.lowering import Declined, Lowering

NS = "dlinfer_lowering_stub"
_LIB = torch.library.Library(NS, "DEF")
_LIB.define("rms_norm(Tensor x, Tensor gamma, float epsilon=1e-6) -> (Tensor, Tensor)")
_LIB.define("reshape_and_cache(Tensor key, Tensor value, Tensor(a!) key_cache, Tensor(b!) value_cache, "
            "Tensor slot_indices) -> ()")
_LIB.define("paged_attention(Tensor query, Tensor key, Tensor value, *, Tensor? block_table=None, "
            "SymInt[]? actual_seq_lengths_kv=None, int num_heads=1, float scale=1.0, int num_key_value_heads=0, "
            "int block_size=0) -> (Tensor, Tensor)")  # torch_npu FIA's types: host lengths are SymInt[]
CALLS: list[str] = []


@torch.library.impl(_LIB, "rms_norm", "CPU")
def _rms_norm(x, gamma, epsilon=1e-6):  # noqa: ANN001, ANN202
    CALLS.append("rms_norm")
    xf = x.double()
    rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + epsilon)
    return (xf * rstd * gamma.double()).to(x.dtype), rstd.float()


@torch.library.impl(_LIB, "reshape_and_cache", "CPU")
def _reshape_and_cache(key, value, key_cache, value_cache, slot_indices):  # noqa: ANN001, ANN202
    CALLS.append("reshape_and_cache")
    bs = key_cache.shape[1]
    for t, slot in enumerate(slot_indices.tolist()):
        if slot >= 0:
            key_cache[slot // bs, slot % bs] = key[t]
            value_cache[slot // bs, slot % bs] = value[t]


@torch.library.impl(_LIB, "paged_attention", "CPU")
def _paged_attention(query, key, value, *, block_table, actual_seq_lengths_kv, num_heads, scale,  # noqa: ANN001
                     num_key_value_heads, block_size):  # noqa: ANN001, ANN202
    CALLS.append("paged_attention")
    assert isinstance(actual_seq_lengths_kv, list) and all(isinstance(n, int) for n in actual_seq_lengths_kv)
    b, _, hq, d = query.shape
    dv = value.shape[-1] // num_key_value_heads
    out = query.new_zeros(b, 1, hq, dv)
    for i, n in enumerate(actual_seq_lengths_kv):
        blocks = block_table[i, : -(-n // block_size)].long()
        k = key[blocks].reshape(-1, num_key_value_heads, d)[:n].double()
        v = value[blocks].reshape(-1, num_key_value_heads, dv)[:n].double()
        for h in range(hq):
            kv_h = h // (hq // num_key_value_heads)
            p = torch.softmax((k[:, kv_h] @ query[i, 0, h].double()) * scale, 0)
            out[i, 0, h] = (p @ v[:, kv_h]).to(out.dtype)
    return out, query.new_zeros(b, hq, 1, 1, dtype=torch.float32)


@torch.library.register_fake(f"{NS}::rms_norm", lib=_LIB)
def _rms_norm_fake(x, gamma, epsilon=1e-6):  # noqa: ANN001, ANN202
    return torch.empty_like(x), x.new_empty(*x.shape[:-1], 1, dtype=torch.float32)


@torch.library.register_fake(f"{NS}::reshape_and_cache", lib=_LIB)
def _reshape_and_cache_fake(key, value, key_cache, value_cache, slot_indices):  # noqa: ANN001, ANN202
    return None


@torch.library.register_fake(f"{NS}::paged_attention", lib=_LIB)
def _paged_attention_fake(query, key, value, *, block_table, actual_seq_lengths_kv, num_heads, scale,  # noqa: ANN001
                          num_key_value_heads, block_size):  # noqa: ANN001, ANN202
    b, _, hq, _ = query.shape
    dv = value.shape[-1] // num_key_value_heads
    return query.new_empty(b, 1, hq, dv), query.new_empty(b, hq, 1, 1, dtype=torch.float32)


def _first(result, args):  # noqa: ANN001, ANN202
    return result[0]


def _decode_adapt(a):  # noqa: ANN001, ANN202
    q, kc = a.meta("q"), a.meta("key_cache")
    hq, d, hkv = q.shape[1], q.shape[2], kc.shape[2]
    scale = a["scale"] if a["scale"] is not None else 1 / math.sqrt(d)
    if a["window"] is not None:
        return Declined("window")
    return (a["q"].unsqueeze(1), a["key_cache"].flatten(2), a["value_cache"].flatten(2)), dict(
        block_table=a["block_table"], actual_seq_lengths_kv=a["seqlens_kv_cpu"], num_heads=hq, scale=scale,
        num_key_value_heads=hkv, block_size=kc.shape[1])


TABLE = {
    "rms_norm": Lowering(f"{NS}.rms_norm", lambda a: ((a["x"], a["weight"], a["eps"]), {}), output=_first),
    "fill_kv_cache": Lowering(f"{NS}.reshape_and_cache", lambda a: (
        (a["key"], a["value"], a["key_cache"], a["value_cache"], a["slot_mapping"]), {}), output=lambda r, a: None),
    "paged_decode_attention": Lowering(f"{NS}.paged_attention", _decode_adapt,
                                       output=lambda r, a: r[0].squeeze(1),
                                       host_args={"actual_seq_lengths_kv": "seqlens_kv_cpu"}, host_lists=True),
}
STUBS = {getattr(torch.ops, NS).rms_norm.default, getattr(torch.ops, NS).reshape_and_cache.default,
         getattr(torch.ops, NS).paged_attention.default}
DLINFER = set(CUSTOM_OPS.values())

HQ, HKV, D, BS, NB = 4, 2, 8, 4, 12


def decode(q, k, v, kc, vc, slots, table, lens, lens_cpu, w):  # noqa: ANN001, ANN201
    ops.fill_kv_cache(k, v, kc, vc, slots, kv_layout="NHD")
    o = ops.paged_decode_attention(q, kc, vc, table, lens, max_seqlen_kv=NB * BS, kv_layout="NHD",
                                   seqlens_kv_cpu=lens_cpu)
    h = o.reshape(q.shape[0], HQ * D) + 1
    return ops.silu_and_mul(ops.rms_norm(h, w, eps=1e-5))


def _inputs(lens: list[int], seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    b = len(lens)
    table = torch.randperm(NB, generator=g)[: b * 3].reshape(b, 3).to(torch.int32)
    pos = torch.tensor(lens) - 1
    slots = (table.long().gather(1, (pos // BS)[:, None])[:, 0] * BS + pos % BS)
    lens_t = torch.tensor(lens, dtype=torch.int32)
    return [torch.randn(b, HQ, D, generator=g), torch.randn(b, HKV, D, generator=g),
            torch.randn(b, HKV, D, generator=g), torch.randn(NB, BS, HKV, D, generator=g),
            torch.randn(NB, BS, HKV, D, generator=g), slots, table, lens_t, lens_t.clone(),
            torch.randn(HQ * D, generator=g) + 1]


class Vendor:
    """A stand-in vendor: the stub table, and a compile_backend that runs AOT over the lowered graph."""

    def __init__(self, table: dict) -> None:
        self.table = table
        self.graphs: list[torch.fx.GraphModule] = []
        self.inputs: list[list] = []
        self.aot_graphs: list[torch.fx.GraphModule] = []

    def compile_backend(self, gm, example_inputs):  # noqa: ANN001, ANN201
        self.graphs.append(gm)
        self.inputs.append(example_inputs)

        def fw(aot_gm, inputs):  # noqa: ANN001, ANN202
            self.aot_graphs.append(aot_gm)
            return aot_gm.forward

        return aot_module_simplified(gm, example_inputs, fw_compiler=fw, keep_inference_input_mutations=True)


@pytest.fixture
def vendor(monkeypatch: pytest.MonkeyPatch) -> Vendor:
    dlinfer.activate("reference")
    v = Vendor(TABLE)
    backend = dataclasses.replace(dlinfer.dispatch.current(), lowering=lambda: v.table,
                                  compile_backend=v.compile_backend)
    monkeypatch.setattr(dlinfer.dispatch, "current", lambda: backend)
    torch._dynamo.reset()
    yield v
    torch._dynamo.reset()


def _targets(gm: torch.fx.GraphModule) -> list:
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def test_lowered_graph_equals_eager_and_keeps_host_lengths_as_inputs(vendor: Vendor) -> None:
    fn = torch.compile(decode, backend="dlinfer", fullgraph=True, dynamic=False)
    # Same shapes, so later calls replay the compiled graph: lengths of 1 and repeated lengths at compile time
    # (which a specialising or duck-sizing compiler would bake or tie together), then all-different ones.
    for seed, lens in enumerate(([1, 9, 9], [7, 2, 11], [12, 1, 3])):
        eager_in, graph_in = _inputs(lens, seed), _inputs(lens, seed)
        want = decode(*eager_in)
        CALLS.clear()
        got = fn(*graph_in)
        assert CALLS == ["reshape_and_cache", "paged_attention", "rms_norm"], CALLS
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        for i in (3, 4):  # the KV-cache mutation, exactly as eager
            assert torch.equal(graph_in[i], eager_in[i])
    assert len(vendor.graphs) == 1, "later calls must not recompile"
    gm = vendor.graphs[0]
    left = [t for t in _targets(gm) if t in DLINFER]
    assert left == [torch.ops.dlinfer.silu_and_mul.default], left  # no entry: stays, runs eagerly
    attn = next(n for n in gm.graph.nodes if n.target == getattr(torch.ops, NS).paged_attention.default)
    host = attn.kwargs["actual_seq_lengths_kv"]
    assert len(host) == 3 and all(h.op == "placeholder" and "lens_cpu" in h.name for h in host), host
    assert len(set(host)) == 3
    # The graph compiler saw them as unspecialised SymInts, and after AOT functionalisation the cache write is still
    # one stub call and every host length still a distinct graph input (what torchair's ACL-graph replay updates).
    assert all(isinstance(x, torch.SymInt) for x in vendor.inputs[0][-3:]), vendor.inputs[0][-3:]
    aot = vendor.aot_graphs[0]
    assert str(aot.graph).count("reshape_and_cache") == 1
    aot_attn = next(n for n in aot.graph.nodes if n.target == getattr(torch.ops, NS).paged_attention.default)
    lens = aot_attn.kwargs["actual_seq_lengths_kv"]
    assert len(set(lens)) == 3 and all(isinstance(x, torch.fx.Node) and x.op == "placeholder" for x in lens), lens


def test_fake_propagation_through_the_lowered_graph(vendor: Vendor) -> None:
    args = _inputs([3, 6], 7)
    torch.compile(decode, backend="dlinfer", fullgraph=True, dynamic=False)(*args)
    gm = vendor.graphs[0]
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(t) if isinstance(t, torch.Tensor) else int(t) for t in vendor.inputs[0]]
        FakeTensorProp(gm, mode).propagate(*fake)
    attn = next(n for n in gm.graph.nodes if n.target == getattr(torch.ops, NS).paged_attention.default)
    assert tuple(attn.meta["val"][0].shape) == (2, 1, HQ, D)
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    out = out[0] if isinstance(out, (tuple, list)) else out
    assert tuple(out.meta["val"].shape) == (2, HQ * D // 2)


def test_declined_and_unlisted_ops_stay_dlinfer_nodes_reported_once(vendor: Vendor, caplog) -> None:  # noqa: ANN001
    def no_host(q, k, v, kc, vc, slots, table, lens, lens_cpu, w):  # noqa: ANN001, ANN202
        return ops.paged_decode_attention(q, kc, vc, table, lens, max_seqlen_kv=NB * BS, kv_layout="NHD")

    lowering._reported.clear()
    args = _inputs([4, 8], 3)
    with caplog.at_level(logging.WARNING, logger="dlinfer.compile"):
        got = torch.compile(no_host, backend="dlinfer", fullgraph=True, dynamic=False)(*args)
        torch._dynamo.reset()
        torch.compile(no_host, backend="dlinfer", fullgraph=True, dynamic=False)(*_inputs([4, 8], 4))
    torch.testing.assert_close(got, no_host(*args), rtol=1e-5, atol=1e-5)
    assert torch.ops.dlinfer.paged_decode_attention.default in _targets(vendor.graphs[0])
    msgs = [r.getMessage() for r in caplog.records if "paged_decode_attention not lowered" in r.getMessage()]
    assert len(msgs) == 1 and "seqlens_kv_cpu" in msgs[0], msgs


def test_an_adapter_that_bakes_the_host_lengths_is_refused(vendor: Vendor) -> None:
    def baking(a):  # noqa: ANN001, ANN202
        args, kwargs = _decode_adapt(a)
        kwargs["actual_seq_lengths_kv"] = a["seqlens_kv_cpu"] + 0  # computed, not the graph input
        return args, kwargs

    vendor.table = dict(TABLE, paged_decode_attention=dataclasses.replace(TABLE["paged_decode_attention"],
                                                                          adapt=baking))
    with pytest.raises(Exception, match="actual_seq_lengths_kv.*must be the graph inputs"):
        torch.compile(decode, backend="dlinfer", fullgraph=True, dynamic=False)(*_inputs([2, 3], 5))


def test_resolve_names_ops_under_torch_ops() -> None:
    assert lowering.resolve(f"{NS}.rms_norm") is getattr(torch.ops, NS).rms_norm.default
    assert lowering.resolve("aten.add.Tensor") is torch.ops.aten.add.Tensor
    with pytest.raises(ValueError, match="namespace.op"):
        lowering.resolve("rms_norm")
