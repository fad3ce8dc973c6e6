"""DLINFER_COMPILE_DECODE=1: graphed decode steps run torch.compile(model, backend="dlinfer") (hostgraph device, CPU).

The ``hostgraph`` device is the reference backend with a host stand-in device graph (testing/host_graph.py);
its replays re-run the decode forward from the runner's fixed buffers, so with the option on every graphed
decode step goes through the Dynamo graph. Tokens must equal the HF oracle's (fp32, exact), and a
``torch._dynamo.explain`` of the first captured decode step (LMDeploy's real forward on the runner's fixed
buffers) must report no graph break.

The explain runs with the CPU device's ``CudaToHostMode`` (a TorchFunctionMode that maps "cuda" to the host,
cpu_device.py) popped: Dynamo cannot trace ``Tensor.unflatten``'s ``super()`` call through a Python
TorchFunctionMode and breaks the graph there (9 breaks on the tiny Llama). That mode exists only on the CPU
test device, so the engine's compiled decode on it runs in pieces (tokens still exact); a vendor device has no
such mode.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch._dynamo

from dlinfer_lmdeploy import graph_runner as gr
from dlinfer_lmdeploy.cpu_device import CudaToHostMode
from dlinfer_lmdeploy.testing import host_graph, runner
from dlinfer_lmdeploy.testing.scenarios import PROMPTS

pytestmark = pytest.mark.e2e
NEW = 6


def test_option_is_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(gr.COMPILE_DECODE_ENV, raising=False)
    assert not gr.compile_decode_enabled()
    monkeypatch.setenv(gr.COMPILE_DECODE_ENV, "1")
    assert gr.compile_decode_enabled()


def test_compiled_decode_matches_oracle_with_no_graph_break(
        tiny_model, hf_greedy, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    path = tiny_model("llama")
    monkeypatch.setenv(gr.COMPILE_DECODE_ENV, "1")
    explained: list[Any] = []
    capture = gr.DlinferGraphRunner._capture

    def explain_then_capture(self: gr.DlinferGraphRunner, key: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not explained:  # the first decode step, from the runner's own fixed buffers
            entry = self._new_entry(int(key[0]), kwargs)
            self._fill(entry, kwargs)
            with torch.overrides._pop_mode_temporarily() as mode:  # the CPU device's CudaToHostMode (see below)
                assert isinstance(mode, CudaToHostMode), mode
                explained.append(torch._dynamo.explain(self.model)(**entry.kwargs))
        return capture(self, key, kwargs)

    monkeypatch.setattr(gr.DlinferGraphRunner, "_capture", explain_then_capture)
    torch._dynamo.reset()
    prompts = [PROMPTS[0], PROMPTS[1]]
    frames_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    with host_graph.installed() as device, gr.counting() as steps:
        cfg = runner.engine_config(device, eager_mode=False, max_batch_size=2)
        with runner.open_pipeline(path, cfg) as pipe:
            ids = [runner.encode(pipe, p) for p in prompts]
            got = runner.generate(pipe, prompts, NEW)
            [engine_runner] = [r for r in gr.live_runners() if r.plugin.name == host_graph.NAME]
            compiled = engine_runner.decode_forward is not engine_runner.model
    assert compiled
    assert got == hf_greedy(path, ids, NEW)
    assert steps.graphed >= NEW - 1 and steps.eager_decode == 0, (steps.graphed, dict(steps.eager))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > frames_before  # Dynamo compiled the decode
    [ex] = explained
    breaks = [(str(b.reason)[:300], [f"{f.filename}:{f.lineno}" for f in b.user_stack[-3:]]) for b in ex.break_reasons]
    assert ex.graph_break_count == 0, breaks
    ops = {str(n.target) for g in ex.graphs for n in g.graph.nodes if n.op == "call_function"}
    assert {"dlinfer.paged_decode_attention.default", "dlinfer.fill_kv_cache.default"} <= ops, sorted(ops)
    torch._dynamo.reset()
