"""torch.compile(backend="dlinfer") on the Ascend simulator: the lowering table, eager == graph, torchair hand-off.

The lowered graph calls the simulated torch_npu / ATB kernels (tests/npu_sim) directly; the eager path calls
them through dlinfer_ascend.ops. Same kernels, same arguments: the results must be bit-identical.
"""

from __future__ import annotations

import dataclasses
import sys

import dlinfer
import dlinfer.dispatch
import npu_sim.torchair as torchair_sim
import pytest
import torch
import torch._dynamo
from dlinfer import ops
from dlinfer.custom_ops import CUSTOM_OPS
from dlinfer.lowering import Lowering
from dlinfer.testing.inputs import PagedSetup, paged_inputs

from dlinfer_ascend import compiler
from dlinfer_ascend.lowering import GE_SUBSTITUTES, TABLE, table

DLINFER = {op: name for name, op in CUSTOM_OPS.items()}
H = 8 * 64


def layer(x, res, w, q, k, v, kc, vc, slots, bt, kv, kv_cpu, logits):  # noqa: ANN001, ANN201
    normed, res = ops.add_rms_norm(x, res, w, eps=1e-6)
    ops.fill_kv_cache(k, v, kc, vc, slots, kv_layout="NHD")
    o = ops.paged_decode_attention(q, kc, vc, bt, kv, max_seqlen_kv=128, kv_layout="NHD", seqlens_kv_cpu=kv_cpu)
    h = ops.rms_norm(o.reshape(o.shape[0], -1) + normed, w, eps=1e-5)
    g = ops.silu_and_mul(torch.cat((h, h * 0.5), -1))
    xq, scale = ops.dynamic_quant(g)
    weights, ids = ops.moe_gating_topk_softmax(logits, topk=2, renormalize=True)
    return g, xq, scale, res, weights, ids


def _inputs(seed: int, grow: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    s = PagedSetup((1, 1, 1), (40 + grow, 17 + grow, 65 + grow), 8, 2, 64, 64, 16)
    a = paged_inputs(g, s, torch.float16, "NHD")
    b = a["q"].shape[0]
    bt, kv = a["block_table"], a["seqlens_kv"]
    pos = kv.long() - 1
    slots = (bt.long().gather(1, (pos // 16)[:, None])[:, 0] * 16 + pos % 16).to(torch.int32)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).half()

    return [r(b, H), r(b, H), r(H) + 1, a["q"], r(b, 2, 64), r(b, 2, 64), a["key_cache"], a["value_cache"],
            slots, bt, kv, kv.clone(), torch.randn(b, 8, generator=g)]


class Recorder:
    def __init__(self) -> None:
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(self, gm, example_inputs):  # noqa: ANN001, ANN204
        self.graphs.append(gm)
        return gm.forward


@pytest.fixture
def ascend(fresh_runtime: None, monkeypatch: pytest.MonkeyPatch) -> Recorder:
    """The ascend backend with its real lowering table; the graph then runs eagerly (no torchair here).

    ``fresh_runtime`` undoes the activation's process-wide device patches afterwards.
    """
    dlinfer.activate("ascend")
    # The device patches point torch.cuda at the simulated torch.npu, whose module does not model what Dynamo reads
    # from a device module while tracing (RNG state, stream contexts; real torch_npu has them): keep the host's
    # torch.cuda while these tests trace (restored here, before fresh_runtime undoes the patches).
    redirected = torch.cuda
    torch.cuda = sys.modules["torch_npu.contrib.transfer_to_npu"]._ORIG["cuda"]
    rec = Recorder()
    backend = dataclasses.replace(dlinfer.dispatch.current(), compile_backend=rec)
    monkeypatch.setattr(dlinfer.dispatch, "current", lambda: backend)
    compiler.set_mode(None)
    torch._dynamo.reset()
    try:
        yield rec
    finally:
        torch._dynamo.reset()
        compiler.set_mode(None)
        torch.cuda = redirected
        dlinfer.dispatch.deactivate()


def test_lowered_graph_is_bit_identical_to_eager_and_replays_new_host_lengths(ascend: Recorder) -> None:
    fn = torch.compile(layer, backend="dlinfer", fullgraph=True, dynamic=False)
    for seed in (0, 1):  # same shapes, new contents and KV lengths: no recompile, the host lengths are inputs
        eager_in, graph_in = _inputs(seed, grow=seed), _inputs(seed, grow=seed)
        want, got = layer(*eager_in), fn(*graph_in)
        for w, o in zip(want, got, strict=True):
            assert torch.equal(w, o)
        assert torch.equal(eager_in[6], graph_in[6]) and torch.equal(eager_in[7], graph_in[7])
    assert len(ascend.graphs) == 1
    gm = ascend.graphs[0]
    assert [DLINFER[n.target] for n in gm.graph.nodes if n.target in DLINFER] == []
    fia = [n for n in gm.graph.nodes if getattr(n.target, "__name__", "") == "npu_fused_infer_attention_score"]
    assert len(fia) == 1
    host = fia[0].kwargs["actual_seq_lengths_kv"]  # one int graph input per sequence (FIA's SymInt[])
    assert isinstance(host, list) and len(host) == 3 and len(set(host)) == 3, host
    assert all(h.op == "placeholder" and "kv_cpu" in h.name for h in host), host


def windowed(q, kc, vc, bt, kv, kv_cpu):  # noqa: ANN001, ANN201
    return ops.paged_decode_attention(q, kc, vc, bt, kv, max_seqlen_kv=128, window=8, kv_layout="NHD",
                                      seqlens_kv_cpu=kv_cpu)


def test_a_windowed_decode_is_lowered_with_eagers_mask_built_in_the_graph(ascend: Recorder) -> None:
    """The window travels as eager's (B, KV_S) mask, computed in the graph from the device KV lengths by eager's own
    window_mask: new lengths (same shapes) give new masks without recompiling; equal to eager bit for bit."""
    fn = torch.compile(windowed, backend="dlinfer", fullgraph=True, dynamic=False)
    for seed in (3, 4):
        a = _inputs(seed, grow=seed - 3)
        args = [a[3], a[6], a[7], a[9], a[10], a[11]]
        got, want = fn(*args), windowed(*args)
        assert torch.equal(got, want)
        full = ops.paged_decode_attention(a[3], a[6], a[7], a[9], a[10], max_seqlen_kv=128, kv_layout="NHD",
                                          seqlens_kv_cpu=a[11])
        assert not torch.equal(got, full), "the window changed nothing: the check would be vacuous"
    assert len(ascend.graphs) == 1
    gm = ascend.graphs[0]
    assert not [n for n in gm.graph.nodes if n.target in DLINFER]
    fia = next(n for n in gm.graph.nodes if getattr(n.target, "__name__", "") == "npu_fused_infer_attention_score")
    assert fia.kwargs["atten_mask"] is not None


def test_an_op_without_an_entry_stays_a_dlinfer_node_and_runs_through_eager_dispatch(ascend: Recorder) -> None:
    """prefill_attention has no ACL-mode entry (ATB, host-built mask): it stays dlinfer::prefill_attention."""
    def prefill(q, k, v, cu, cu_cpu):  # noqa: ANN001, ANN202
        return ops.prefill_attention(q, k, v, cu, max_seqlen_q=8, cu_seqlens_q_cpu=cu_cpu)

    g = torch.Generator().manual_seed(5)
    cu = torch.tensor([0, 5, 8], dtype=torch.int32)
    q, k, v = torch.randn(8, 4, 64, generator=g).half(), *torch.randn(2, 8, 2, 64, generator=g).half()
    got = torch.compile(prefill, backend="dlinfer", fullgraph=True, dynamic=False)(q, k, v, cu, cu.clone())
    assert torch.equal(got, prefill(q, k, v, cu, cu.clone()))
    assert torch.ops.dlinfer.prefill_attention.default in [n.target for n in ascend.graphs[0].graph.nodes]


def test_ge_mode_table_holds_converter_backed_entries_and_substitutes_only() -> None:
    ge = table("max-autotune")
    assert set(ge) == {op for op, e in TABLE.items() if e.extras["ge_converters"]} | set(GE_SUBSTITUTES)
    assert all(e.extras["ge_converters"] for e in ge.values())
    # the substitute is GE-only: the ACL-graph modes keep the eager kernel (ATB), so eager == graph by construction
    assert ge["fill_kv_cache"].target == "npu.npu_scatter_pa_kv_cache_functional"
    assert table("npugraph_ex")["fill_kv_cache"].target == "atb._npu_reshape_and_cache"
    with pytest.raises(ValueError, match="expected one of"):
        table("default")


def _ge_backend(monkeypatch: pytest.MonkeyPatch, glue: torchair_sim.GlueOps | None = None) -> list:
    """The ascend backend in max-autotune: the GE table, compile_backend's GE refusal check, then the graph runs
    eagerly with the GE converters' semantics where they differ from the eager kernels' (npu_sim/torchair.py;
    GE conversion is not modelled here; torchair's AOT step would trace the simulated kernels, which have
    no fake implementations). ``glue``: records the aten ops the graphs run outside the simulated kernels.
    Returns the list of checked graphs."""
    compiler.set_mode("max-autotune")
    torch._dynamo.reset()
    checked: list = []

    def ge(gm, example_inputs):  # noqa: ANN001, ANN202
        compiler.check_ge_convertible(gm)
        checked.append(gm)
        ge_gm = torchair_sim.ge_converter_semantics(gm)  # GE's out-of-place rotary converter
        return ge_gm.forward if glue is None else glue.run(ge_gm)

    backend = dataclasses.replace(dlinfer.dispatch.current(), compile_backend=ge)
    monkeypatch.setattr(dlinfer.dispatch, "current", lambda: backend)
    return checked


def test_ge_mode_lowers_a_decode_layer_with_substitutes_equal_to_eager(
        ascend: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    """max-autotune is no longer refused for a decode layer: the ATB cache write becomes ScatterPaKvCache
    (functional, copied back into the caches); outputs and KV writes equal eager (the ATB write) bit for bit."""
    checked = _ge_backend(monkeypatch)
    fn = torch.compile(layer, backend="dlinfer", fullgraph=True, dynamic=False)
    for seed in (5, 6):
        eager_in, graph_in = _inputs(seed, grow=seed - 5), _inputs(seed, grow=seed - 5)
        before = eager_in[6].clone()
        want, got = layer(*eager_in), fn(*graph_in)
        for w, o in zip(want, got, strict=True):
            assert torch.equal(w, o)
        assert not torch.equal(before, eager_in[6]), "the step wrote nothing: the cache check would be vacuous"
        assert torch.equal(eager_in[6], graph_in[6]) and torch.equal(eager_in[7], graph_in[7])
    assert len(checked) == 1
    names = [getattr(n.target, "__name__", str(n.target)) for n in checked[0].graph.nodes]
    assert "npu_scatter_pa_kv_cache_functional" in names and "_npu_reshape_and_cache" not in names, names
    assert not [n for n in checked[0].graph.nodes if n.target in DLINFER]


def moe_layer(x, w, gate_up, down, logits):  # noqa: ANN001, ANN201
    h = ops.rms_norm(x, w, eps=1e-6)
    weights, ids = ops.moe_gating_topk_softmax(logits, topk=2, renormalize=True)
    return ops.fused_moe(h, gate_up, down, weights, ids) + x


def _moe_inputs(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t, hid, inter, e = 5, 64, 32, 4
    return [torch.randn(t, hid, generator=g).half(), (torch.randn(hid, generator=g) + 1).half(),
            (torch.randn(e, 2 * inter, hid, generator=g) / 8).half(),
            (torch.randn(e, hid, inter, generator=g) / 6).half(), torch.randn(t, e, generator=g)]


def test_ge_mode_lowers_a_moe_layer_with_finalize_routing_equal_to_eager(
        ascend: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    """fused_moe in GE mode: eager's routing and grouped matmuls as glue nodes, finalised by
    npu_moe_finalize_routing (k-major index) instead of npu_moe_token_unpermute; equal to eager on the simulator
    (both accumulate in fp32 in the simulator, in the same order: no tolerance needed there; hardware unverified)."""
    assert "fused_moe" not in table("npugraph_ex")  # ACL modes: eager kernels, captured
    checked = _ge_backend(monkeypatch)
    fn = torch.compile(moe_layer, backend="dlinfer", fullgraph=True, dynamic=False)
    for seed in (20, 21):
        args = _moe_inputs(seed)
        want, got = moe_layer(*args), fn(*args)
        assert want.abs().max() > 0.1 and torch.equal(want, got), (want - got).abs().max()
    names = [getattr(n.target, "__name__", str(n.target)) for n in checked[0].graph.nodes]
    assert "npu_moe_finalize_routing" in names and "npu_moe_token_unpermute" not in names, names
    assert not [n for n in checked[0].graph.nodes if n.target in DLINFER]


def _glue_is_converted(glue: torchair_sim.GlueOps) -> None:
    """Every aten op the lowered graph ran outside the vendor kernels (views, casts, masks, epilogues) has a torchair
    GE converter in torch_npu 2.13.0 (what AOT hands torchair besides the vendor ops)."""
    from test_torchair_coverage import converters

    names = {f"torch.ops.{op.namespace}.{op._opname}.{op._overloadname}" for op in glue.ops}
    assert len(names) > 3, names  # the recording worked
    missing = sorted(n for n in names if n not in converters())
    assert not missing, f"glue ops without a torchair GE converter: {missing}"


def test_ge_mode_lowers_a_windowed_decode(ascend: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused before the window mask was built in the graph (test_lowering_ge.py has what GE still refuses)."""
    glue = torchair_sim.GlueOps()
    checked = _ge_backend(monkeypatch, glue)
    a = _inputs(4)
    args = [a[3], a[6], a[7], a[9], a[10], a[11]]
    fn = torch.compile(windowed, backend="dlinfer", fullgraph=True, dynamic=False)
    assert torch.equal(fn(*args), windowed(*args))
    assert len(checked) == 1 and not [n for n in checked[0].graph.nodes if n.target in DLINFER]
    _glue_is_converted(glue)  # the window mask: arange, sub, le, gt, bitwise_or


def test_simulated_scatter_pa_kv_cache_matches_an_independent_oracle_and_refuses_undocumented_slots(
        ascend: Recorder) -> None:
    """npu_sim's ScatterPaKvCache (Norm) against a loop oracle written here; negative slots are outside the
    documented range and are refused (Unconfirmed), duplicate slots are undefined (refused)."""
    from npu_sim import Unconfirmed
    from npu_sim.cache import npu_scatter_pa_kv_cache_functional as scatter

    g = torch.Generator().manual_seed(7)
    k, v = torch.randn(5, 2, 16, generator=g).half(), torch.randn(5, 2, 8, generator=g).half()
    kc, vc = torch.randn(4, 16, 2, 16, generator=g).half(), torch.randn(4, 16, 2, 8, generator=g).half()
    slots = torch.randperm(64, generator=g)[:5].to(torch.int32)
    ko, vo = scatter(k, v, kc, vc, slots, cache_mode="Norm")
    want_k, want_v = kc.clone(), vc.clone()
    for t, s in enumerate(slots.tolist()):
        want_k.view(-1, 2, 16)[s], want_v.view(-1, 2, 8)[s] = k[t], v[t]
    assert torch.equal(ko, want_k) and torch.equal(vo, want_v)
    assert not torch.equal(ko, kc), "inputs unchanged (functional) and outputs written"
    with pytest.raises(Unconfirmed, match="negative slots"):
        scatter(k, v, kc, vc, torch.tensor([0, 1, -1, 3, 4], dtype=torch.int32), cache_mode="Norm")
    with pytest.raises(Exception, match="duplicate"):
        scatter(k, v, kc, vc, torch.tensor([0, 1, 1, 3, 4], dtype=torch.int32), cache_mode="Norm")


def test_compile_backend_hands_the_lowered_graph_to_torchair_get_compiler(
        ascend: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the documented torchair entry points (npu_sim/torchair.py): aot_module_simplified + get_compiler."""
    monkeypatch.setitem(sys.modules, "torchair", torchair_sim)
    backend = dataclasses.replace(dlinfer.dispatch.current(), compile_backend=compiler.compile_backend)
    monkeypatch.setattr(dlinfer.dispatch, "current", lambda: backend)

    def norm_mlp(x, w):  # noqa: ANN001, ANN202
        return ops.silu_and_mul(torch.cat((ops.rms_norm(x, w, eps=1e-6), x), -1))

    x, w = torch.randn(3, 64).half(), torch.randn(64).half() + 1
    torchair_sim.COMPILED.clear()
    got = torch.compile(norm_mlp, backend="dlinfer", fullgraph=True, dynamic=False)(x, w)
    assert torch.equal(got, norm_mlp(x, w))
    assert [mode for mode, _ in torchair_sim.COMPILED] == [compiler.DEFAULT_MODE]
    aot = torchair_sim.COMPILED[0][1]
    assert not [n for n in aot.graph.nodes if n.target in DLINFER]


def _acl_backend(monkeypatch: pytest.MonkeyPatch, lowering: dict | None = None) -> list:
    """The ascend backend compiling through the ACL-graph stand-in (npu_sim/torchair.py:AclGraph) applied to the
    lowered Dynamo graph (torchair applies it to the AOT graph, which keeps FIA's keyword list of SymInt inputs;
    AOT itself is not part of this model). Returns the list the compiled graphs are appended to."""
    made: list = []

    def acl(gm, example_inputs):  # noqa: ANN001, ANN202
        made.append(torchair_sim.AclGraph(gm))
        return made[-1]

    base = dlinfer.dispatch.current()
    backend = dataclasses.replace(base, compile_backend=acl,
                                  lowering=(lambda: lowering) if lowering is not None else base.lowering)
    monkeypatch.setattr(dlinfer.dispatch, "current", lambda: backend)
    return made


def _replay_steps(static: list, made: list) -> None:
    """Capture at step 0, then replay with new contents and new KV lengths (same shapes) filled into the captured
    inputs in place, as a device-graph runner does; every step must equal eager on a copy of that step's inputs,
    outputs and KV-cache writes, and the captured FIA must have run with this step's host lengths."""
    fn = torch.compile(layer, backend="dlinfer", fullgraph=True, dynamic=False)
    for step in range(3):
        new = _inputs(10 + step, grow=step)
        for s, n in zip(static, new, strict=True):
            s.copy_(n)
        eager = [t.clone() for t in new]
        want = layer(*eager)
        got = [o.clone() for o in fn(*static)]
        assert len(made) == 1, "recompiled: the host lengths must not be guarded on"
        if step:
            lens = made[0].replayed_host_args("actual_seq_lengths_kv")
            assert lens == [new[11].tolist()], f"step {step}: replayed FIA host lengths {lens}, " \
                                                f"this step's are {new[11].tolist()} (baked at capture)"
        for i, (w, o) in enumerate(zip(want, got, strict=True)):
            assert torch.equal(w, o), f"step {step}: output {i} differs from eager"
        assert torch.equal(eager[6], static[6]) and torch.equal(eager[7], static[7]), f"step {step}: KV writes"


def test_acl_graph_capture_replays_new_host_lengths_equal_to_eager(
        ascend: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    made = _acl_backend(monkeypatch)
    _replay_steps(_inputs(10), made)
    assert [list(r) for r in made[0].rulers] == [["actual_seq_lengths_kv"]]
    assert all(kind == "index" for kind, _ in made[0].rulers[0]["actual_seq_lengths_kv"])


def test_acl_graph_capture_replays_a_windowed_decode_with_each_steps_mask(
        ascend: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    """The window mask is computed by captured aten ops from the device KV lengths: each replay masks by its own
    step's lengths (a mask built at capture would be baked), equal to eager."""
    made = _acl_backend(monkeypatch)
    fn = torch.compile(windowed, backend="dlinfer", fullgraph=True, dynamic=False)
    static = [_inputs(10)[i] for i in (3, 6, 7, 9, 10, 11)]
    for step in range(3):
        new = [_inputs(10 + step, grow=step)[i] for i in (3, 6, 7, 9, 10, 11)]
        for s, n in zip(static, new, strict=True):
            s.copy_(n)
        want, got = windowed(*[t.clone() for t in new]), fn(*static).clone()
        assert len(made) == 1 and torch.equal(want, got), f"step {step}"


def _broken_decode(**change) -> Lowering:  # noqa: ANN003
    entry = TABLE["paged_decode_attention"]
    return dataclasses.replace(entry, host_args={}, host_lists=False, **change)


def test_acl_graph_capture_fails_on_a_lowering_that_bakes_host_lengths(
        ascend: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken table whose decode entry reads the host lengths while lowering and passes them as constants:
    torchair gives constant-only lists no update rule, so replays run with the capture step's lengths."""
    static = _inputs(10)
    good = TABLE["paged_decode_attention"]

    def baked(a):  # noqa: ANN001, ANN202
        args, kwargs = good.adapt(a)
        return args, {**kwargs, "actual_seq_lengths_kv": [int(n) for n in static[11].tolist()]}

    made = _acl_backend(monkeypatch, {**TABLE, "paged_decode_attention": _broken_decode(adapt=baked)})
    with pytest.raises(AssertionError, match=r"step 1: replayed FIA host lengths .*\(baked at capture\)"):
        _replay_steps(static, made)
    assert made[0].rulers == [{}]


def test_acl_graph_capture_refuses_host_lengths_passed_as_a_tensor(
        ascend: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken table passing seqlens_kv_cpu itself: FIA would read it on the host at capture; torchair's update
    rule takes only lists and refuses it when the graph is compiled."""
    made = _acl_backend(monkeypatch, {**TABLE, "paged_decode_attention": _broken_decode()})
    with pytest.raises(Exception, match="For updated param type only list is supported"):
        _replay_steps(_inputs(10), made)


def test_simulated_moe_finalize_routing_matches_the_documented_formula() -> None:
    """npu_sim's MoeFinalizeRouting against the torch_npu docstring's formula written as a loop here
    (out[i] = skip1 + skip2 + sum_k scales[i,k] * (rows[idx[i + k*N]] + bias[expert[i,k]]))."""
    from npu_sim.moe import npu_moe_finalize_routing

    g = torch.Generator().manual_seed(9)
    n, k, h, e = 4, 3, 8, 5
    rows = torch.randn(n * k, h, generator=g)
    skip1, skip2, bias = torch.randn(n, h, generator=g), torch.randn(n, h, generator=g), torch.randn(e, h, generator=g)
    scales = torch.rand(n, k, generator=g)
    idx = torch.randperm(n * k, generator=g).to(torch.int32)
    expert = torch.randint(0, e, (n, k), generator=g, dtype=torch.int32)
    want = torch.empty(n, h)
    for i in range(n):
        acc = skip1[i] + skip2[i]
        for j in range(k):
            acc = acc + scales[i, j] * (rows[idx[i + j * n]] + bias[expert[i, j]])
        want[i] = acc
    got = npu_moe_finalize_routing(rows, skip1, skip2, bias, scales, idx, expert, 0, k)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    plain = npu_moe_finalize_routing(rows, None, None, None, scales, idx, None, 0, k)
    torch.testing.assert_close(plain, want - skip1 - skip2 - (scales[..., None] * bias[expert.long()]).sum(1),
                               rtol=1e-5, atol=1e-5)
