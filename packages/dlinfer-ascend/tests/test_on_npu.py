"""Checks for the first run on Ascend hardware (``DLINFER_HARDWARE=1``; skipped on CPU).

The conformance kit itself runs through ``--dlinfer-backend=ascend``; these cover the device hooks
and the questions docs/vendor-semantics.md leaves UNCONFIRMED that the adaptor depends on.
"""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = pytest.mark.skipif(os.environ.get("DLINFER_HARDWARE") != "1", reason="needs an Ascend NPU")


@pytest.fixture(scope="module")
def ascend() -> dict:
    import dlinfer.dispatch as dispatch
    from dlinfer.registry import REGISTRY

    backend = dispatch.activate("ascend")
    return {"backend": backend, "ops": REGISTRY.load_ops("ascend")}


def test_activation_redirects_cuda_and_reports_the_soc(ascend: dict) -> None:
    assert torch.cuda is torch.npu  # type: ignore[attr-defined]
    info = ascend["backend"].extras["soc_info"]()
    assert info.family in ("A2", "A3"), f"untested SoC {info}"


def test_graph_replay_feeds_new_host_lengths(ascend: dict) -> None:
    from dlinfer.registry import REFERENCE, REGISTRY
    from dlinfer.testing.inputs import PagedSetup, paged_inputs

    ops, dg = ascend["ops"], ascend["backend"].graph
    a = paged_inputs(torch.Generator().manual_seed(0), PagedSetup((1,) * 4, (100, 7, 300, 64), 16, 2, 128, 128, 128),
                     torch.bfloat16, "NHD")
    dev = {k: v.npu() for k, v in a.items()}
    kv_cpu = a["seqlens_kv"].clone()

    def step() -> torch.Tensor:
        return ops["paged_decode_attention"](dev["q"], dev["key_cache"], dev["value_cache"], dev["block_table"],
                                             dev["seqlens_kv"], max_seqlen_kv=512, seqlens_kv_cpu=kv_cpu)

    step()
    graph = dg.graph_factory()
    with dg.capture(graph, pool=dg.pool_factory()):
        out = step()
    for _ in range(3):
        kv_cpu += 1
        dev["seqlens_kv"].copy_(kv_cpu)
        dev["q"].normal_()
        dg.update_before_replay(graph, {"seqlens_kv_cpu": kv_cpu})
        graph.replay()
        torch.npu.synchronize()  # type: ignore[attr-defined]
        ref = REGISTRY.load_ops(REFERENCE)["paged_decode_attention"](
            dev["q"].cpu(), a["key_cache"], a["value_cache"], a["block_table"], kv_cpu, max_seqlen_kv=512,
            scale=None, window=None, softcap=None, alibi_slopes=None, kv_layout="NHD", seqlens_kv_cpu=None)
        torch.testing.assert_close(out.cpu().float(), ref.float(), rtol=2e-2, atol=2e-2)


def test_reshape_and_cache_skips_negative_slots(ascend: dict) -> None:
    kc = torch.zeros(2, 16, 1, 128, dtype=torch.float16).npu()
    vc = torch.zeros_like(kc)
    key = torch.ones(3, 1, 128, dtype=torch.float16).npu()
    ascend["ops"]["fill_kv_cache"](key, key, kc, vc, torch.tensor([3, -1, 17], dtype=torch.int32).npu())
    assert int(kc.cpu().ne(0).any(-1).any(-1).sum()) == 2


def test_dynamic_quant_all_zero_row(ascend: dict) -> None:
    """UNCONFIRMED §5.3: report what the device does with an all-zero row (the reference gives 0, scale 0)."""
    x = torch.zeros(2, 64, dtype=torch.float16).npu()
    x[1] = 1.0
    x_q, scale = ascend["ops"]["dynamic_quant"](x)
    assert torch.equal(x_q[0].cpu(), torch.zeros(64, dtype=torch.int8)), x_q[0]
    assert float(scale[0]) == 0.0
