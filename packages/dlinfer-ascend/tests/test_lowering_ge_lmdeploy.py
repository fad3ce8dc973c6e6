"""LMDeploy's real decode step on the Ascend simulator is one Dynamo graph that the GE (max-autotune) table lowers
completely: no dlinfer node is left, so compile_backend's GE check passes.

The engine runs in graph mode (simulated NPUGraph); the first captured decode step (the runner's fixed buffers) is
traced with ``torch._dynamo.explain`` (the host-simulated device's CudaToHostMode popped, as in dlinfer-lmdeploy's
test_compile_decode.py: Dynamo cannot trace ``Tensor.unflatten``'s ``super()`` call through it; torch.cuda is the
host's while tracing, as in test_lowering.py). GE compilation itself is not modelled.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import lmdeploy_on_simulator

pytest.importorskip("lmdeploy")
pytest.importorskip("dlinfer_lmdeploy")

import torch  # noqa: E402
import torch._dynamo  # noqa: E402
from dlinfer_lmdeploy.testing import sim_e2e  # noqa: E402

pytestmark = pytest.mark.skipif(os.environ.get("DLINFER_HARDWARE") == "1", reason="simulator tests")
KIND = "llama"


@pytest.fixture(scope="module")
def llama_on_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tiny bf16 llama, the simulator installed, a device node declared, the device host-simulated."""
    path = sim_e2e.build_bf16(KIND, tmp_path_factory.mktemp(f"ge_{KIND}"))
    with lmdeploy_on_simulator():
        yield path


def test_lmdeploy_decode_graph_lowers_completely_in_ge_mode(llama_on_sim: Path, monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    from dlinfer.lowering import copy_graph_module, lower
    from dlinfer_lmdeploy import graph_runner as gr
    from dlinfer_lmdeploy.cpu_device import CudaToHostMode

    from dlinfer_ascend import compiler
    from dlinfer_ascend.lowering import TABLE, table

    explained: list[Any] = []
    capture = gr.DlinferGraphRunner._capture

    def explain_then_capture(self: gr.DlinferGraphRunner, key: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not explained:
            entry = self._new_entry(int(key[0]), kwargs)
            self._fill(entry, kwargs)
            redirected = torch.cuda
            torch.cuda = sys.modules["torch_npu.contrib.transfer_to_npu"]._ORIG["cuda"]
            try:
                with torch.overrides._pop_mode_temporarily() as mode:
                    assert isinstance(mode, CudaToHostMode), mode
                    explained.append(torch._dynamo.explain(self.model)(**entry.kwargs))
            finally:
                torch.cuda = redirected
        return capture(self, key, kwargs)

    monkeypatch.setattr(gr.DlinferGraphRunner, "_capture", explain_then_capture)
    monkeypatch.delenv(gr.COMPILE_DECODE_ENV, raising=False)
    torch._dynamo.reset()
    try:
        sim_e2e.run(sim_e2e.row_scenario(KIND, new_tokens=2), llama_on_sim, "ascend", "graph")
    finally:
        torch._dynamo.reset()
    [ex] = explained
    assert ex.graph_break_count == 0 and len(ex.graphs) == 1, [str(b.reason)[:200] for b in ex.break_reasons]
    gm = copy_graph_module(ex.graphs[0])
    report = lower(gm, table(compiler.GE_MODE), backend="ascend")
    assert not report.kept, report.kept
    assert {"fill_kv_cache", "paged_decode_attention", "linear", "silu_and_mul"} <= set(report.lowered), report
    assert any(op.startswith("apply_rotary_pos_emb") for op in report.lowered), report
    compiler.check_ge_convertible(gm)
    names = {getattr(n.target, "__name__", str(n.target)) for n in gm.graph.nodes if n.op == "call_function"}
    assert "npu_scatter_pa_kv_cache_functional" in names and "_npu_reshape_and_cache" not in names, names
    # the same graph with the ACL-mode table: the ATB cache write stays eager's kernel
    acl = copy_graph_module(ex.graphs[0])
    assert not lower(acl, TABLE, backend="ascend").kept
