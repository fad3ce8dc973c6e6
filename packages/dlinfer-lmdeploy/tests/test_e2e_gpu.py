"""On an NVIDIA GPU with the maca plugin: the end-to-end scenarios in bf16, eager and graph mode.

The scenario table is the CPU tests' (``dlinfer_lmdeploy.testing.scenarios``); every generated token is checked
against Hugging Face fp32 logits on the same prefix, with a tolerance calibrated by HF's own bf16 error
(``dlinfer_lmdeploy.testing.bf16_check``). Set ``DLINFER_E2E_STATS=file.jsonl`` to collect the per-request figures.

Tensor parallelism: ``DLINFER_TP=N`` (default 1) runs every scenario at tp=N (needs N GPUs; scenarios whose model
LMDeploy cannot split N ways are skipped with the reason, ``scenario_cli.tp_refusal``). At tp>1 each engine runs in a
child process under ``DLINFER_GPU_DEADLINE_S`` (default 300 s; on timeout the Python stacks of every rank are in the
failure) with NVLink multicast off, and the op-call and eager-decode-step checks are not made (they count in the
worker processes). The checker holds each token to HF's fp32 argmax up to HF's own bf16 error, so tp=N and tp=1 agree
up to bf16 near-ties. ``DLINFER_E2E_DEVICES=maca,cuda`` also runs LMDeploy's own ``cuda`` (the peer) through the same
checker (``DLINFER_PEER_EXECUTOR``: its executor at tp>1, default ``mp``; its child ends without closing the engine,
``DLINFER_HARD_EXIT``, because LMDeploy's mp release can hang on its workers' Inductor compile workers).
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from dlinfer_lmdeploy import graph_runner
from dlinfer_lmdeploy.testing import child, runner, scenario_cli
from dlinfer_lmdeploy.testing.bf16_check import Run, check_against_hf
from dlinfer_lmdeploy.testing.model_table import record_gpu_result
from dlinfer_lmdeploy.testing.scenarios import SCENARIOS, Scenario

pytestmark = [pytest.mark.gpu, pytest.mark.e2e]

TOPK = 5
MODES = ("eager", "graph")
TP = int(os.environ.get("DLINFER_TP", "1"))
DEADLINE_S = float(os.environ.get("DLINFER_GPU_DEADLINE_S", "300"))
DEVICES = tuple(os.environ.get("DLINFER_E2E_DEVICES", "maca").split(","))


def _maca_available() -> bool:
    if not torch.cuda.is_available():
        return False
    import dlinfer_lmdeploy

    return "maca" in dlinfer_lmdeploy.lmdeploy_devices()


requires_maca = pytest.mark.skipif(not _maca_available(), reason="needs a CUDA GPU and the dlinfer-maca plugin")
requires_tp_gpus = pytest.mark.skipif(
    TP > 1 and torch.cuda.device_count() < TP, reason=f"DLINFER_TP={TP} needs {TP} GPUs"
)


@pytest.fixture(scope="module")
def bf16_model(tmp_path_factory):  # type: ignore[no-untyped-def]
    from dlinfer_lmdeploy.testing.model_table import BY_KIND

    built = {}

    def get(kind: str):  # type: ignore[no-untyped-def]
        if kind not in built:
            built[kind] = BY_KIND[kind].build(tmp_path_factory.mktemp(f"bf16_{kind}"), dtype=torch.bfloat16)
        return built[kind]

    return get


def _run_tp(scenario: Scenario, path, mode: str, device: str) -> list[Run]:  # type: ignore[no-untyped-def]
    """tp>1: the scenario in a child process under the deadline (stacks of every rank on timeout)."""
    extra: dict = {"tp": TP}
    env = dict(os.environ)
    if device == "cuda":
        if TP > 1:
            extra["distributed_executor_backend"] = os.environ.get("DLINFER_PEER_EXECUTOR", "mp")
        env[child.HARD_EXIT_ENV] = "1"
    try:
        return scenario_cli.run(scenario.name, path, device, mode, extra, TOPK, deadline_s=DEADLINE_S, env=env)
    except (child.GenerationTimeout, RuntimeError) as exc:
        pytest.fail(str(exc))


def _run(scenario: Scenario, path, mode: str, op_calls, steps, device: str = "maca") -> list[Run]:  # type: ignore[no-untyped-def]
    """Every request of every phase, in order; ``steps``: graph-runner step counts, filled for graph mode."""
    if TP > 1 or device != "maca":
        return _run_tp(scenario, path, mode, device)
    cfg = scenario_cli.engine_overrides(scenario, "maca", mode, {})
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
@requires_tp_gpus
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_scenario_eager_and_graph_match_hf(scenario: Scenario, device: str, bf16_model, op_calls):  # type: ignore[no-untyped-def]
    path = bf16_model(scenario.model)
    if TP > 1 and (why := scenario_cli.tp_refusal(path, TP)):
        pytest.skip(f"tp={TP}: {why}")
    steps: dict = {}
    results = {mode: _run(scenario, path, mode, op_calls, steps, device) for mode in MODES}
    stats, failures = check_against_hf(scenario, path, results, "cuda")
    eager_decode = steps["graph"].eager_decode if "graph" in steps else 0
    if eager_decode:
        failures.append(f"{scenario.name}/graph: {eager_decode} decode steps ran eagerly: {dict(steps['graph'].eager)}")
    if TP == 1 and device == "maca":  # the README's model table records the single-GPU maca outcome
        for mode in MODES:
            record_gpu_result(scenario.model, mode, [f for f in failures if f"/{mode}" in f],
                              eager_decode if mode == "graph" else None)
    for s in stats:
        s.update(tp=TP, device=device)
    out = os.environ.get("DLINFER_E2E_STATS")
    if out:  # figures for the package README / closing notes
        with open(out, "a") as f:
            for s in stats:
                f.write(json.dumps(s) + "\n")
    assert not failures, "\n".join(failures)
