"""Tensor parallelism on the CPU: tp=2 over gloo with LMDeploy's multi-process executor == HF greedy (fp32).

The two worker processes are spawned by LMDeploy; each one wires dlinfer into LMDeploy
through the ``dlinfer_lmdeploy_autoload.pth`` hook, activates the CPU device, and joins a
gloo process group (the reference backend's ``dist_backend``). Linear layers all-reduce,
MoE experts are split between the ranks. The engine runs in a child process with a
deadline, so that a hang fails the test instead of the CI job.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.tp2]

DEADLINE_S = 240
TP2 = '{"tp": 2, "distributed_executor_backend": "mp"}'  # mp explicitly: with ray installed LMDeploy picks ray


def _generate_tp2(path, prompts, n):  # type: ignore[no-untyped-def]
    cmd = [sys.executable, "-m", "dlinfer_lmdeploy.testing.generate_cli", str(path), str(n), TP2, *prompts]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the engine and its two workers
        out, err = proc.communicate()
        pytest.fail(f"tp=2 generation did not finish within {DEADLINE_S}s; stderr tail:\n{err[-3000:]}")
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"rc={proc.returncode}\n{err[-3000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.mark.parametrize("kind", ["llama", "qwen2_moe"])
def test_tp2_matches_hf(kind, tiny_model, hf_greedy):  # type: ignore[no-untyped-def]
    path = tiny_model(kind)
    result = _generate_tp2(path, ["Hello world", "The quick brown fox jumps over the lazy dog."], 10)
    assert result["output_ids"] == hf_greedy(path, result["input_ids"], 10)
