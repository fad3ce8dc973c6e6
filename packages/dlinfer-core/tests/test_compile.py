"""Graph mode: under torch.compile each dlinfer op is one opaque node; eager bypasses the dispatcher."""

from __future__ import annotations

import contextlib
from unittest import mock

import pytest
import torch
import torch._dynamo
from torch._functorch.aot_autograd import aot_module_simplified
from torch.utils._python_dispatch import TorchDispatchMode

import dlinfer
from dlinfer import ops
from dlinfer.custom_ops import CUSTOM_OPS

DLINFER_TARGETS = {op: name for name, op in CUSTOM_OPS.items()}


@pytest.fixture(scope="module", autouse=True)
def _reference_backend():
    dlinfer.activate("reference")
    yield


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _dlinfer_nodes(gm: torch.fx.GraphModule) -> list[str]:
    return [DLINFER_TARGETS[n.target] for n in gm.graph.nodes
            if n.op == "call_function" and n.target in DLINFER_TARGETS]


class Recorder:
    """A Dynamo backend that keeps every FX graph it is given and runs it eagerly."""

    def __init__(self) -> None:
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        self.graphs.append(gm)
        return gm.forward


# --------------------------------------------------------------------------- a small decoder layer

H, HQ, HKV, D, I, BS = 32, 4, 2, 8, 16, 16  # noqa: E741


def _weights():
    g = torch.Generator().manual_seed(0)

    def r(*s, scale=0.3):
        return torch.randn(*s, generator=g) * scale

    return {"ln1": r(H) + 1, "ln2": r(H) + 1, "wqkv": r((HQ + 2 * HKV) * D, H), "wo": r(H, HQ * D),
            "gate_up": r(2 * I, H), "down": r(H, I)}


def layer(x, residual, cos, sin, key_cache, value_cache, slots, block_table, seqlens, w):
    """Decode step of one layer: 7 dlinfer ops, one of them mutating the caches."""
    normed, residual = ops.add_rms_norm(x, residual, w["ln1"], eps=1e-6)
    qkv = ops.linear(normed, w["wqkv"])
    q, k, v = qkv.split([HQ * D, HKV * D, HKV * D], dim=-1)
    t = x.shape[0]
    q, k = ops.apply_rotary_pos_emb(q.reshape(t, HQ, D), k.reshape(t, HKV, D), cos, sin)
    ops.fill_kv_cache(k, v.reshape(t, HKV, D), key_cache, value_cache, slots, kv_layout="NHD")
    attn = ops.paged_decode_attention(q, key_cache, value_cache, block_table, seqlens, max_seqlen_kv=64,
                                      kv_layout="NHD")
    h = ops.linear(attn.reshape(t, HQ * D), w["wo"])
    normed, residual = ops.add_rms_norm(h, residual, w["ln2"], eps=1e-6)
    out = ops.linear(ops.silu_and_mul(ops.linear(normed, w["gate_up"])), w["down"])
    return out, residual


LAYER_OPS = {"add_rms_norm": 2, "linear": 4, "apply_rotary_pos_emb": 1, "fill_kv_cache": 1,
             "paged_decode_attention": 1, "silu_and_mul": 1}


def _layer_inputs():
    b = 3
    seqlens = torch.tensor([5, 17, 33], dtype=torch.int32)
    table = torch.tensor([[2, 0, 7], [4, 5, 1], [6, 3, 8]], dtype=torch.int32)
    slots = torch.tensor([int(table[i, (n - 1) // BS]) * BS + (n - 1) % BS for i, n in enumerate(seqlens.tolist())])
    theta = (seqlens - 1).double()[:, None] * torch.tensor([10000 ** (-2 * i / D) for i in range(D // 2)])[None]
    cos, sin = torch.cos(theta).repeat(1, 2).float(), torch.sin(theta).repeat(1, 2).float()
    kc, vc = torch.randn(9, BS, HKV, D), torch.randn(9, BS, HKV, D)
    return (torch.randn(b, H), torch.randn(b, H), cos, sin, kc, vc, slots, table, seqlens)


def _clone(args):
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


@pytest.mark.parametrize("dynamic", [False, True])
def test_one_node_per_op_and_same_result_as_eager(dynamic):
    w = _weights()
    inputs = _layer_inputs()
    eager_in, compiled_in = _clone(inputs), _clone(inputs)
    want = layer(*eager_in, w)

    rec = Recorder()
    got = torch.compile(layer, backend=rec, fullgraph=True, dynamic=dynamic)(*compiled_in, w)

    assert len(rec.graphs) == 1, "fullgraph: exactly one graph"
    names = _dlinfer_nodes(rec.graphs[0])
    assert {n: names.count(n) for n in set(names)} == LAYER_OPS
    # nothing of the ops' insides leaks into the graph: no softmax, no index_put from the reference kernels
    others = {str(n.target) for n in rec.graphs[0].graph.nodes if n.op == "call_function"} - {
        str(t) for t in DLINFER_TARGETS}
    assert not any("softmax" in o or "index_put" in o or "rsqrt" in o for o in others), others
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    # the cache mutation happened under compile too
    torch.testing.assert_close(compiled_in[4], eager_in[4], rtol=0, atol=0)
    torch.testing.assert_close(compiled_in[5], eager_in[5], rtol=0, atol=0)
    assert not torch.equal(compiled_in[4], inputs[4])


def test_aot_eager_same_result_and_single_nodes_after_functionalization():
    w = _weights()
    inputs = _layer_inputs()
    eager_in, compiled_in = _clone(inputs), _clone(inputs)
    want = layer(*eager_in, w)

    forward_graphs: list[torch.fx.GraphModule] = []

    def fw_compiler(gm, example_inputs):
        forward_graphs.append(gm)
        return gm.forward

    def backend(gm, example_inputs):
        return aot_module_simplified(gm, example_inputs, fw_compiler=fw_compiler)

    got = torch.compile(layer, backend=backend, fullgraph=True)(*compiled_in, w)
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compiled_in[4], eager_in[4], rtol=0, atol=0)
    torch.testing.assert_close(compiled_in[5], eager_in[5], rtol=0, atol=0)

    (gm,) = forward_graphs
    names = _dlinfer_nodes(gm)
    # functionalisation wraps the mutating op; every other op stays one node
    want_plain = {k: v for k, v in LAYER_OPS.items() if k != "fill_kv_cache"}
    assert {n: names.count(n) for n in set(names)} == want_plain
    functionalized = [n for n in gm.graph.nodes if n.op == "call_function" and "auto_functionalized" in str(n.target)]
    assert len(functionalized) == 1
    assert functionalized[0].args[0] is CUSTOM_OPS["fill_kv_cache"]


def _rotate_fused_qkv(qkv, cos, sin):
    """LMDeploy's pattern: q and k are views of the fused projection output, rotated in place."""
    t = qkv.shape[0]
    q = qkv[:, : HQ * D].view(t, HQ, D)
    k = qkv[:, HQ * D : (HQ + HKV) * D].view(t, HKV, D)
    ops.apply_rotary_pos_emb_inplace(q, k, cos, sin)
    return ops.rms_norm(qkv, torch.ones(qkv.shape[-1]))


@pytest.mark.parametrize("backend", ["recorder", "aot_eager"])
def test_inplace_rotary_on_views_under_compile(backend):
    """One node for the in-place op; the caller's buffer is mutated exactly as in eager mode (v untouched)."""
    _, _, cos, sin, *_ = _layer_inputs()
    qkv = torch.randn(cos.shape[0], (HQ + 2 * HKV) * D)
    eager_buf, compiled_buf = qkv.clone(), qkv.clone()
    want = _rotate_fused_qkv(eager_buf, cos, sin)
    rec = Recorder()
    fn = torch.compile(_rotate_fused_qkv, backend=rec if backend == "recorder" else "aot_eager", fullgraph=True)
    got = fn(compiled_buf, cos, sin)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compiled_buf, eager_buf, rtol=0, atol=0)
    assert not torch.equal(compiled_buf[:, : (HQ + HKV) * D], qkv[:, : (HQ + HKV) * D])
    assert torch.equal(compiled_buf[:, (HQ + HKV) * D :], qkv[:, (HQ + HKV) * D :])
    if backend == "recorder":
        assert _dlinfer_nodes(rec.graphs[0]) == ["apply_rotary_pos_emb_inplace", "rms_norm"]


def test_aot_eager_backend_string():
    x, r, wt = torch.randn(4, 32), torch.randn(4, 32), torch.randn(32)

    def fn(x, r, wt):
        n, s = ops.add_rms_norm(x, r, wt, eps=1e-6)
        q, scale = ops.dynamic_quant(ops.silu_and_mul(n))
        return q, scale, s

    got = torch.compile(fn, backend="aot_eager", fullgraph=True)(x, r, wt)
    want = fn(x, r, wt)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    torch.testing.assert_close(got[2], want[2])


def test_every_graph_op_traces_to_its_custom_op():
    """Each public op, compiled alone, is exactly one node: its own custom op."""
    cases = {
        "rms_norm": lambda: ops.rms_norm(torch.randn(3, 8), torch.randn(8)),
        "silu_and_mul": lambda: ops.silu_and_mul(torch.randn(3, 8)),
        "moe_gating_topk_softmax": lambda: ops.moe_gating_topk_softmax(torch.randn(3, 8), topk=2),
        "dynamic_quant": lambda: ops.dynamic_quant(torch.randn(3, 8)),
        "rms_norm_w8a8": lambda: ops.rms_norm_w8a8(torch.randn(3, 8), torch.randn(8)),
        "add_rms_norm_w8a8": lambda: ops.add_rms_norm_w8a8(torch.randn(3, 8), torch.randn(3, 8), torch.randn(8)),
    }
    for name, fn in cases.items():
        torch._dynamo.reset()
        rec = Recorder()
        torch.compile(fn, backend=rec, fullgraph=True)()
        assert _dlinfer_nodes(rec.graphs[0]) == [name]


# --------------------------------------------------------------------------- eager: no dispatcher


class SeenOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def test_dispatch_mode_sees_custom_ops_when_called_directly():
    """Positive control for the test below: the mode does observe dlinfer:: ops that go through the dispatcher."""
    with SeenOps() as mode:
        torch.ops.dlinfer.rms_norm(torch.randn(2, 8), torch.randn(8), eps=1e-6)
    assert any(s.startswith("dlinfer.") for s in mode.seen), mode.seen


def test_eager_calls_bypass_the_dispatcher():
    w = _weights()
    inputs = _layer_inputs()
    with SeenOps() as mode:
        layer(*inputs, w)
        ops.fused_moe(torch.randn(3, 8), torch.randn(4, 12, 8), torch.randn(4, 8, 6), torch.rand(3, 2),
                      torch.tensor([[0, 1], [2, 3], [1, 0]]))
    assert mode.seen, "the reference kernels' aten ops should be visible"
    assert not [s for s in mode.seen if s.startswith("dlinfer.")]


def _patch_public_namespaces(stack: contextlib.ExitStack, extra: dict) -> dict:
    """Each generated public op has its own globals; put a tripwire in place of its custom op in each."""
    tripwires = {}
    for name in CUSTOM_OPS:
        fn = getattr(ops, name)
        key = f"_custom_{name}"
        assert key in fn.__globals__, name
        tripwires[name] = mock.Mock(side_effect=AssertionError(f"dispatcher used for {name}"))
        stack.enter_context(mock.patch.dict(fn.__globals__, {key: tripwires[name], **extra}))
    return tripwires


def test_eager_never_calls_the_custom_op():
    """Replace every custom op the public wrappers could call with a tripwire; eager calls still work."""
    with contextlib.ExitStack() as stack:
        tripwires = _patch_public_namespaces(stack, {})
        layer(*_layer_inputs(), _weights())
        ops.moe_gating_topk_softmax(torch.randn(3, 8), topk=2)
        ops.dynamic_quant(torch.randn(3, 8))
    assert not any(t.called for t in tripwires.values())
    # positive control: the compiling branch of the same wrappers does reach the tripwires
    with contextlib.ExitStack() as stack:
        tripwires = _patch_public_namespaces(stack, {"_is_compiling": lambda: True})
        with pytest.raises(AssertionError, match="dispatcher used for rms_norm"):
            ops.rms_norm(torch.randn(2, 8), torch.randn(8))
        with pytest.raises(AssertionError, match="dispatcher used for fill_kv_cache"):
            ops.fill_kv_cache(torch.randn(1, 2, 8), torch.randn(1, 2, 8), torch.randn(1, 16, 2, 8),
                              torch.randn(1, 16, 2, 8), torch.tensor([0]))
