"""NPU graph capture of a decode step; replay must feed the new host KV lengths to FIA."""

from __future__ import annotations

import pytest
import torch
from dlinfer.registry import REFERENCE, REGISTRY
from dlinfer.testing.inputs import PagedSetup, paged_inputs
from npu_sim import NpuContractError

from dlinfer_ascend import plugin
from dlinfer_ascend.graph import AscendGraph


def _setup(dtype: torch.dtype) -> dict:
    g = torch.Generator().manual_seed(7)
    s = PagedSetup((1, 1, 1), (40, 17, 65), 8, 2, 64, 64, 16)
    a = paged_inputs(g, s, dtype, "NHD")
    # room to grow every sequence by one token inside its last block row of the table
    return {**a, "kv_cpu": a["seqlens_kv"].clone(), "kv_dev": a["seqlens_kv"].clone(),
            "q_buf": a["q"].clone()}


def _decode(ops: dict, b: dict) -> torch.Tensor:
    return ops["paged_decode_attention"](b["q_buf"], b["key_cache"], b["value_cache"], b["block_table"],
                                         b["kv_dev"], max_seqlen_kv=128, seqlens_kv_cpu=b["kv_cpu"])


def _reference(b: dict) -> torch.Tensor:
    ref = REGISTRY.load_ops(REFERENCE)["paged_decode_attention"]
    return ref(b["q_buf"], b["key_cache"], b["value_cache"], b["block_table"], b["kv_dev"],
               max_seqlen_kv=128, scale=None, window=None, softcap=None, alibi_slopes=None,
               kv_layout="NHD", seqlens_kv_cpu=None)


def _next_step(b: dict, g: torch.Generator) -> None:
    """Framework side of one decode step: new query, one more token per sequence (buffers in place)."""
    b["q_buf"].copy_(torch.randn(b["q_buf"].shape, generator=g).to(b["q_buf"].dtype))
    new = b["kv_dev"] + 1
    b["kv_dev"].copy_(new)
    b["kv_cpu"].copy_(new)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_replay_updates_host_lengths(ops: dict, dtype: torch.dtype) -> None:
    b = _setup(dtype)
    dg = plugin.dlinfer_backend().graph
    graph = dg.graph_factory()
    _decode(ops, b)  # warm-up, as a framework does before capture
    with dg.capture(graph, pool=dg.pool_factory()):
        out = _decode(ops, b)
    g = torch.Generator().manual_seed(11)
    for _ in range(3):
        _next_step(b, g)
        out.fill_(float("nan"))
        dg.update_before_replay(graph, {"seqlens_kv_cpu": b["kv_cpu"]})
        graph.replay()
        want = _reference(b)
        torch.testing.assert_close(out.float(), want.float(), rtol=2e-2, atol=2e-2)


def test_without_update_the_graph_uses_stale_lengths_or_blocks(ops: dict) -> None:
    b = _setup(torch.float16)
    graph = AscendGraph()
    _decode(ops, b)
    out = graph.capture(_decode, ops, b)
    _next_step(b, torch.Generator().manual_seed(5))
    graph.npu_graph.replay()  # replay alone: FIA waits for its host arguments
    with pytest.raises(NpuContractError, match="update"):
        torch.npu.synchronize()
    stale = b["kv_cpu"] - 1
    graph.npu_graph.update(cpu_update_input=[{"actual_seq_lengths_kv": stale}])
    assert not torch.allclose(out.float(), _reference(b).float(), rtol=2e-2, atol=2e-2)
    with pytest.raises(RuntimeError, match="update_host_args"):
        AscendGraph().replay()
