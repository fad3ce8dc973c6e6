"""VLM decode is graphed in graph mode: every VLM row of the model table, ``eager_mode=False``, fp32 on the CPU.

The ``hostgraph`` device (``testing/host_graph.py``: the reference backend with a host stand-in graph)
runs the adaptor's DlinferGraphRunner on the CPU. Each VLM row serves an image request, then a
text-only request batched with two image requests (decode batch 3, padded to the capture bucket 4);
the tokens must equal the HF oracle's (fed exactly LMDeploy's inputs, ``testing/vlm.py``), and no
decode step may run eagerly. A stale ``mrope_position_ids`` buffer, a missing capture-key entry or a
VLM keyword argument the runner does not hold would change the tokens or the eager-step count.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dlinfer_lmdeploy import graph_runner
from dlinfer_lmdeploy.testing import host_graph, runner, vlm
from dlinfer_lmdeploy.testing.model_table import ROWS, ModelRow

VLM_ROWS = [
    pytest.param(row, id=row.kind, marks=[pytest.mark.torchvision] if row.needs_torchvision else [])
    for row in ROWS
    if row.modality == "VLM" and "cpu" not in row.refused
]
SCENARIOS = ("one_image", "text_batched_with_images")


@pytest.fixture(scope="module")
def hostgraph():  # type: ignore[no-untyped-def]
    with host_graph.installed() as device:
        yield device


@pytest.mark.e2e
@pytest.mark.parametrize("row", VLM_ROWS)
def test_vlm_graph_mode_matches_oracle_without_eager_decode(
    row: ModelRow, hostgraph: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    if row.needs_torchvision:
        pytest.importorskip("torchvision", reason=f"{row.kind}'s preprocessing needs torchvision (tests-vlm session)")
    path: Path = row.build(tmp_path_factory.mktemp(f"graph_{row.kind}"))
    batches = [s.requests() for s in vlm.SCENARIOS if s.name in SCENARIOS and s.name not in row.skipped]
    cfg = runner.engine_config(hostgraph, dtype="float32", eager_mode=False, max_batch_size=4, **row.engine)
    host_graph.CALLS.clear()
    with graph_runner.counting() as steps, vlm.open_pipeline(path, cfg) as pipe:
        results = [res for batch in batches for res in vlm.generate(pipe, batch, vlm.NEW_TOKENS)]
        [engine_runner] = [r for r in graph_runner.live_runners() if r.plugin.name == host_graph.NAME]
        held = {name for entry in engine_runner.captured.values() for name in entry.buffers}
        uses_mrope = bool(getattr(engine_runner.model_config, "use_mrope", False))
    want = vlm.hf_greedy(row, path, [r.captured for r in results], vlm.NEW_TOKENS)
    assert [r.tokens for r in results] == want
    assert steps.eager_decode == 0, f"{row.kind}: decode steps run eagerly in graph mode: {dict(steps.eager)}"
    # 9 decode steps after each of the two batches' first tokens, all graphed (warm-up steps come on top)
    assert steps.graphed >= 2 * (vlm.NEW_TOKENS - 1), steps
    assert host_graph.CALLS["graph_captured"] >= 2  # buckets 1 and 4
    if uses_mrope:  # the Qwen-VL family: decode replays read the mrope buffer
        assert "mrope_position_ids" in held, held
