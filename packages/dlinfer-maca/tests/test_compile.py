"""torch.compile(backend="dlinfer") with maca selected: Inductor over the graph, each dlinfer op one extern call.

On CPU the maca Triton kernels run under TRITON_INTERPRET=1 and Inductor generates C++ for the glue; on a GPU
the same test runs on CUDA (Triton glue). Small shapes: the interpreter and Inductor's compile are slow on CI.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch._dynamo
from conftest import DEVICE
from torch._inductor.utils import run_and_get_code

import dlinfer
import dlinfer.dispatch
from dlinfer import ops

HQ, HKV, D, BS, NB, H = 4, 2, 32, 16, 6, 128


def decode(x, res, w, wqkv, kc, vc, slots, bt, kv):  # noqa: ANN001, ANN201
    """One decode layer's attention half: norm, qkv projection, cache write, paged attention, glue."""
    t = x.shape[0]
    normed, res = ops.add_rms_norm(x, res, w, eps=1e-6)
    q, k, v = ops.linear(normed, wqkv).split([HQ * D, HKV * D, HKV * D], dim=-1)
    q, k, v = (q * 1.0).reshape(t, HQ, D), k.reshape(t, HKV, D), v.reshape(t, HKV, D)
    ops.fill_kv_cache(k.contiguous(), v.contiguous(), kc, vc, slots, kv_layout="NHD")
    o = ops.paged_decode_attention(q.contiguous(), kc, vc, bt, kv, max_seqlen_kv=NB * BS, kv_layout="NHD")
    return ops.silu_and_mul(torch.cat((o.reshape(t, -1), res.float().sigmoid().to(res.dtype)), -1)), res


def _inputs(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lens = [9, 30]
    bt = torch.randperm(NB, generator=g)[:4].reshape(2, 2).to(torch.int32)
    pos = torch.tensor(lens) - 1
    slots = bt.long().gather(1, (pos // BS)[:, None])[:, 0] * BS + pos % BS

    def r(*s: int) -> torch.Tensor:
        return torch.randn(*s, generator=g)

    out = [r(2, H), r(2, H), r(H) + 1, r((HQ + 2 * HKV) * D, H) * 0.1, r(NB, BS, HKV, D), r(NB, BS, HKV, D),
           slots, bt, torch.tensor(lens, dtype=torch.int32)]
    return [t.to(DEVICE) for t in out]


@pytest.fixture
def maca() -> None:
    dlinfer.activate("maca")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
    dlinfer.dispatch.deactivate()


def test_inductor_graph_equals_eager_and_keeps_dlinfer_ops_as_single_extern_calls(maca: None) -> None:
    assert dlinfer.dispatch.current().compile_backend is not None
    fn = torch.compile(decode, backend="dlinfer", fullgraph=True, dynamic=False)
    eager_in, graph_in = _inputs(0), _inputs(0)
    want = decode(*eager_in)
    got, codes = run_and_get_code(fn, *graph_in)
    for g, e in zip(got, want, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(graph_in[4], eager_in[4])  # the KV-cache writes
    torch.testing.assert_close(graph_in[5], eager_in[5])
    code = "\n".join(codes)
    for op in ("add_rms_norm", "linear", "fill_kv_cache", "paged_decode_attention", "silu_and_mul"):
        calls = re.findall(rf"torch\.ops\.dlinfer\.{op}\.default\(", code)
        assert len(calls) == 1, (op, len(calls))
    assert re.search(r"(cpp|triton_\w+)_fused_", code), "Inductor generated no fused glue kernel"
