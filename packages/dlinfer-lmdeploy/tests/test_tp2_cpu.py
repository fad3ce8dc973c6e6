"""Tensor parallelism on the CPU: tp=2 over gloo with LMDeploy's multi-process executor == HF greedy (fp32).

The two worker processes are spawned by LMDeploy; each one wires dlinfer into LMDeploy
through the ``dlinfer_lmdeploy_autoload.pth`` hook, activates the CPU device, and joins a
gloo process group (the reference backend's ``dist_backend``). Linear layers all-reduce,
MoE experts are split between the ranks. The engine runs in a child process with a
deadline (``generate_cli.run``), so that a hang fails the test, with the Python stacks of
every process, instead of the CI job.
"""

from __future__ import annotations

import pytest

from dlinfer_lmdeploy.testing import generate_cli

pytestmark = [pytest.mark.e2e, pytest.mark.tp2]

DEADLINE_S = 240
TP2 = {"tp": 2, "distributed_executor_backend": "mp"}  # mp explicitly: with ray installed LMDeploy picks ray


@pytest.mark.parametrize("kind", ["llama", "qwen2_moe"])
def test_tp2_matches_hf(kind, tiny_model, hf_greedy):  # type: ignore[no-untyped-def]
    path = tiny_model(kind)
    prompts = ["Hello world", "The quick brown fox jumps over the lazy dog."]
    result = generate_cli.run(path, 10, TP2, prompts, deadline_s=DEADLINE_S)
    assert result["output_ids"] == hf_greedy(path, result["input_ids"], 10)
