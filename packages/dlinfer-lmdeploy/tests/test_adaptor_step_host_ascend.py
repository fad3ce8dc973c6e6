"""Ascend eager decode launches per layer (bench/adaptor_step_host.py --device ascend-sim on the vendor simulator).

A batch-1 decode layer of the Llama shape needs ten vendor kernels (RMSNorm or add-RMSNorm twice, four matmuls,
rotary, KV-cache write, FIA, SwiGLU); on Ascend every other device op is a launch of its own, so the plugin must
issue nothing but views around them. Runs the bench in a child process (it activates the Ascend plugin, which
redirects torch.cuda) with null vendor kernels.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("dlinfer_ascend")

BENCH = Path(__file__).resolve().parents[1] / "bench" / "adaptor_step_host.py"
PLUGIN_FILES = ("elementwise.py", "attention.py", "norm.py", "cache.py", "plan.py", "_common.py")
VIEW_OPS = {"aten.view", "aten.unsqueeze", "aten.squeeze", "aten.reshape", "aten._reshape_alias", "aten.slice",
            "aten.select", "aten.expand", "aten.as_strided", "aten.t", "aten.transpose", "aten.alias"}


def test_batch1_decode_layer_is_ten_vendor_kernels_and_views(tmp_path: Path) -> None:
    layers = 3
    out = tmp_path / "host.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--device", "ascend-sim", "--layers", str(layers),
                           "--repeats", "1", "--steps", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["vendor_calls_per_step"] == {"adaptor": 10 * layers, "direct": 10 * layers}, res
    by_kernel = res["vendor_calls_by_kernel"]
    assert by_kernel["linear"] == 4 * layers and by_kernel["npu_fused_infer_attention_score"] == layers, by_kernel
    device_ops = {key: n for key, n in res["aten_adaptor_step"]["by_op"].items()
                  if key.split(":")[0] in PLUGIN_FILES and key.split()[-1] not in VIEW_OPS}
    assert not device_ops, f"the Ascend plugin issues device ops besides its vendor kernels: {device_ops}"
