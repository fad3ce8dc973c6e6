"""bench/shapes.py: the InternLM2.5-7B shape is written in InternLM2's own checkpoint format (fused ``wqkv``), and
LMDeploy serves it through its InternLM2 model class (tiny widths on the CPU, the tp bench's dry run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def shapes(bench_script: Any) -> Any:
    return bench_script("shapes")


def test_internlm2_5_7b_is_written_in_internlm2_format(shapes: Any, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    path = shapes.build("internlm2_5_7b", 2, tmp_path, "cpu", tiny=True)
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["architectures"] == ["InternLM2ForCausalLM"] and cfg["model_type"] == "internlm2"
    assert (cfg["vocab_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (512, 32, 8)
    assert cfg["rope_parameters"]["rope_theta"] == 1e6
    state = load_file(str(path / "model.safetensors"))
    assert not any("q_proj" in k or "k_proj" in k for k in state)
    head = cfg["hidden_size"] // cfg["num_attention_heads"]
    assert state["model.layers.1.attention.wqkv.weight"].shape == ((32 + 2 * 8) * head, cfg["hidden_size"])
    assert {"model.tok_embeddings.weight", "output.weight"} <= set(state)


def test_internlm2_5_7b_runs_through_lmdeploy_dry_run(tmp_path: Path) -> None:
    out = tmp_path / "dry.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "lmdeploy_tp_gpu.py"), "--dry-run", "--tp", "1", "--no-profile", "--models",
         "internlm2_5_7b", "--model-root", str(tmp_path / "models"), "--out", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "TORCH_DEVICE_BACKEND_AUTOLOAD": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads(out.read_text())
    assert row["model"] == "internlm2_5_7b-2l-tiny" and "error" not in row
    assert row["output_tokens"] > 0 and row["batch1_tokens"] > 0
