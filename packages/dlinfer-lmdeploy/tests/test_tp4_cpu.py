"""Tensor parallelism at tp=4 on the CPU device (four gloo ranks, LMDeploy's mp executor) == HF greedy (fp32).

Nothing in the adaptor assumes two ranks: the linear layers all-reduce over the tp group, the KV cache is sized per
rank, MoE experts are split as LMDeploy splits them at any tp (each expert's intermediate size over the ranks; the
shared expert likewise). The dense row keeps the tiny Llama's 4 query / 2 KV heads, so LMDeploy replicates each KV
head on two ranks (tp > KV heads); the MoE row is the tiny Qwen2-MoE with 4 KV heads (LMDeploy's qwen2_moe.py has no
KV-head replication). The same Qwen2-MoE with 2 KV heads fails while its weights load on some rank: the engine
must fail at once with that rank's error, not hang (before the fix it hung in the executor's release: a second
failure signal re-entered it and the notifiers waited for killed workers). Each engine runs in a child process with
a deadline (``generate_cli.run``): a hang fails with the Python stacks of every process.
"""

from __future__ import annotations

import time

import pytest

from dlinfer_lmdeploy.testing import generate_cli, tiny_models

pytestmark = [pytest.mark.e2e, pytest.mark.tp4]

DEADLINE_S = 300
TP4 = {"tp": 4, "distributed_executor_backend": "mp"}
PROMPTS = ["Hello world", "The quick brown fox jumps over the lazy dog."]


@pytest.fixture(scope="module")
def qwen2_moe_kv4(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return tiny_models.build("qwen2_moe", tmp_path_factory.mktemp("tiny_qwen2_moe_kv4"), num_key_value_heads=4)


def _run(path, n):  # type: ignore[no-untyped-def]
    try:
        return generate_cli.run(path, n, TP4, PROMPTS, deadline_s=DEADLINE_S)
    except (generate_cli.GenerationTimeout, RuntimeError) as exc:
        pytest.fail(str(exc))


def test_tp4_dense_with_replicated_kv_heads_matches_hf(tiny_model, hf_greedy):  # type: ignore[no-untyped-def]
    path = tiny_model("llama")
    result = _run(path, 8)
    assert result["output_ids"] == hf_greedy(path, result["input_ids"], 8)


def test_tp4_moe_matches_hf(qwen2_moe_kv4, hf_greedy):  # type: ignore[no-untyped-def]
    result = _run(qwen2_moe_kv4, 8)
    assert result["output_ids"] == hf_greedy(qwen2_moe_kv4, result["input_ids"], 8)


def test_tp4_rank_failing_at_load_fails_the_engine_at_once(tiny_model):  # type: ignore[no-untyped-def]
    path = tiny_model("qwen2_moe")  # 2 KV heads: qwen2_moe.py cannot split them over 4 ranks
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="failed: rc=") as failed:
        generate_cli.run(path, 4, TP4, ["Hello world"], deadline_s=DEADLINE_S)
    assert not isinstance(failed.value, generate_cli.GenerationTimeout)
    assert "Proc[" in str(failed.value) and "must match the size of tensor" in str(failed.value), str(failed.value)
    assert time.monotonic() - start < 120
