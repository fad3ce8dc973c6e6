"""On an NVIDIA GPU with the maca plugin: every VLM row of the model table in bf16, eager and graph mode.

Each row runs the VLM scenarios of ``testing/vlm.py`` (one image, two images, a text-only request batched with
image requests, the mirrored image) through one engine per mode; every generated token is checked against the
HF fp32 oracle's logits on the same prefix and the same captured images (``bf16_check`` with
``vlm.teacher_forced_fn``), graph mode must run no decode step eagerly, and the mirrored image must change the
output. The outcome per row and mode goes into ``$DLINFER_MODEL_TABLE_OUT`` (the README's model table).
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from dlinfer_lmdeploy import graph_runner
from dlinfer_lmdeploy.testing import model_table, runner, vlm
from dlinfer_lmdeploy.testing.bf16_check import check_against_hf
from dlinfer_lmdeploy.testing.model_table import ModelRow, record_gpu_result
from dlinfer_lmdeploy.testing.scenarios import Scenario

pytestmark = [pytest.mark.gpu, pytest.mark.e2e]

TOPK = 5
NEW_TOKENS = 24
"""longer than the CPU tests' 10: the argmax-agreement statistic of the bf16 checker needs more than 10 steps"""
MODES = ("eager", "graph")
VLM_ROWS = [row for row in model_table.ROWS if row.modality == "VLM" and "maca" not in row.refused]


def _maca_available() -> bool:
    if not torch.cuda.is_available():
        return False
    import dlinfer_lmdeploy

    return "maca" in dlinfer_lmdeploy.lmdeploy_devices()


@pytest.mark.skipif(not _maca_available(), reason="needs a CUDA GPU and the dlinfer-maca plugin")
@pytest.mark.parametrize("row", VLM_ROWS, ids=lambda row: row.kind)
def test_vlm_row_eager_and_graph_match_hf(row: ModelRow, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = row.build(tmp_path_factory.mktemp(f"bf16_{row.kind}"), dtype=torch.bfloat16)
    runs: dict[str, vlm.RowRun] = {}
    steps: dict[str, graph_runner.StepCounts] = {}
    for mode in MODES:
        cfg = runner.engine_config("maca", dtype="bfloat16", eager_mode=(mode == "eager"), max_batch_size=4,
                                   logprobs_mode="raw_logits", **row.engine)
        with graph_runner.counting() as counted:
            runs[mode] = vlm.run_row(path, cfg, NEW_TOKENS, logits=TOPK, skip=row.skipped)
        steps[mode] = counted
    names = list(runs["eager"].results)  # every scenario's requests in one check: agreement is pooled over them
    captured = [r.captured for name in names for r in runs["eager"].results[name]]
    by_mode = {
        mode: [(r.captured.input_ids, r.tokens, top) for name in names
               for r, top in zip(runs[mode].results[name], runs[mode].logits[name], strict=True)]
        for mode in MODES
    }
    sc = Scenario(f"{row.kind} ({', '.join(names)})", row.kind, (), NEW_TOKENS)
    stats, failures = check_against_hf(sc, path, by_mode, "cuda", vlm.teacher_forced_fn(row, path, captured))
    for mode in MODES:
        mirrored, original = runs[mode].results["mirrored_image"][0], runs[mode].results["one_image"][0]
        if mirrored.tokens == original.tokens:
            failures.append(f"{row.kind}/{mode}: mirroring the image did not change the output")
    eager_decode = steps["graph"].eager_decode
    if eager_decode:
        failures.append(f"{row.kind}/graph: {eager_decode} decode steps ran eagerly: {dict(steps['graph'].eager)}")
    out = os.environ.get("DLINFER_E2E_STATS")
    if out:
        with open(out, "a") as fh:
            for s in stats:
                fh.write(json.dumps(s) + "\n")
    for mode in MODES:
        record_gpu_result(row.kind, mode, [f for f in failures if f"/{mode}" in f],
                          eager_decode if mode == "graph" else None)
    assert not failures, "\n".join(failures)
