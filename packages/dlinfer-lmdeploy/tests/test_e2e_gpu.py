"""On an NVIDIA GPU with the maca plugin: the end-to-end scenarios in bf16, eager and graph mode.

The scenario table is the CPU tests' (``dlinfer_lmdeploy.testing.scenarios``); every generated token is checked
against Hugging Face fp32 logits on the same prefix, with a tolerance calibrated by HF's own bf16 error
(``dlinfer_lmdeploy.testing.bf16_check``). Set ``DLINFER_E2E_STATS=file.jsonl`` to collect the per-request figures.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from dlinfer_lmdeploy import graph_runner
from dlinfer_lmdeploy.testing import runner
from dlinfer_lmdeploy.testing.bf16_check import Run, check_against_hf
from dlinfer_lmdeploy.testing.model_table import record_gpu_result
from dlinfer_lmdeploy.testing.scenarios import SCENARIOS, Scenario

pytestmark = [pytest.mark.gpu, pytest.mark.e2e]

TOPK = 5
MODES = ("eager", "graph")


def _maca_available() -> bool:
    if not torch.cuda.is_available():
        return False
    import dlinfer_lmdeploy

    return "maca" in dlinfer_lmdeploy.lmdeploy_devices()


requires_maca = pytest.mark.skipif(not _maca_available(), reason="needs a CUDA GPU and the dlinfer-maca plugin")


@pytest.fixture(scope="module")
def bf16_model(tmp_path_factory):  # type: ignore[no-untyped-def]
    from dlinfer_lmdeploy.testing.model_table import BY_KIND

    built = {}

    def get(kind: str):  # type: ignore[no-untyped-def]
        if kind not in built:
            built[kind] = BY_KIND[kind].build(tmp_path_factory.mktemp(f"bf16_{kind}"), dtype=torch.bfloat16)
        return built[kind]

    return get


def _run(scenario: Scenario, path, mode: str, op_calls, steps) -> list[Run]:  # type: ignore[no-untyped-def]
    """Every request of every phase, in order; ``steps``: graph-runner step counts, filled for graph mode."""
    cfg = runner.engine_config(
        "maca",
        dtype="bfloat16",
        eager_mode=(mode == "eager"),
        max_batch_size=4,
        logprobs_mode="raw_logits",
        **scenario.engine,
    )
    runs: list[Run] = []
    with graph_runner.counting() as counted, runner.open_pipeline(path, cfg) as pipe:
        for phase in scenario.phases:
            op_calls.clear()
            ids = [runner.encode(pipe, p) for p in phase]
            outs = runner.generate_with_logits(pipe, phase, scenario.new_tokens, TOPK)
            runs += [(i, tokens, top) for i, (tokens, top) in zip(ids, outs, strict=True)]
    if mode == "eager":  # in graph mode the decode ops run as graph replays, not as Python calls
        scenario.check_calls(op_calls)
    steps[mode] = counted
    return runs


@requires_maca
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_scenario_eager_and_graph_match_hf(scenario: Scenario, bf16_model, op_calls):  # type: ignore[no-untyped-def]
    path = bf16_model(scenario.model)
    steps: dict = {}
    results = {mode: _run(scenario, path, mode, op_calls, steps) for mode in MODES}
    stats, failures = check_against_hf(scenario, path, results, "cuda")
    eager_decode = steps["graph"].eager_decode
    if eager_decode:
        failures.append(f"{scenario.name}/graph: {eager_decode} decode steps ran eagerly: {dict(steps['graph'].eager)}")
    for mode in MODES:
        record_gpu_result(scenario.model, mode, [f for f in failures if f"/{mode}" in f],
                          eager_decode if mode == "graph" else None)
    out = os.environ.get("DLINFER_E2E_STATS")
    if out:  # figures for the package README / closing notes
        with open(out, "a") as f:
            for s in stats:
                f.write(json.dumps(s) + "\n")
    assert not failures, "\n".join(failures)
