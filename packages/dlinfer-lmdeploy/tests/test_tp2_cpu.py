"""Tensor parallelism on the CPU: tp=2 over gloo with LMDeploy's multi-process executor == HF greedy (fp32).

The two worker processes are spawned by LMDeploy; each one wires dlinfer into LMDeploy
through the ``dlinfer_lmdeploy_autoload.pth`` hook, activates the CPU device, and joins a
gloo process group (the reference backend's ``dist_backend``). Linear layers all-reduce,
MoE experts are split between the ranks.
"""

from __future__ import annotations

import pytest

from dlinfer_lmdeploy.testing import runner

pytestmark = [pytest.mark.e2e, pytest.mark.tp2]


@pytest.mark.parametrize("kind", ["llama", "qwen2_moe"])
def test_tp2_matches_hf(kind, tiny_model, hf_greedy):  # type: ignore[no-untyped-def]
    path = tiny_model(kind)
    prompts = ["Hello world", "The quick brown fox jumps over the lazy dog."]
    with runner.open_pipeline(path, runner.engine_config(tp=2)) as pipe:
        ids = [runner.encode(pipe, p) for p in prompts]
        assert runner.generate(pipe, prompts, 10) == hf_greedy(path, ids, 10)
