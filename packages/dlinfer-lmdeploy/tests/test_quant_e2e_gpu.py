"""On an NVIDIA GPU: the quantised checkpoints of ``testing.tiny_quant`` (AWQ W4A16 and W8A8 smooth-quant of the
tiny Llama3, and of a Llama-3-8B-wide model of 2 layers: hidden 4096, MLP 14336, vocabulary 128256, AWQ group 128,
where the GEMMs take their large-K paths) through LMDeploy with the maca plugin and with LMDeploy's own ``cuda``
backend, eager and graph mode.

Both devices run the same checkpoint and are held to the same check: every generated token against the
dequantised-weight oracle's fp32 logits on the same prefix (teacher forcing, ``testing.bf16_check``), the tolerance
calibrated by the oracle's own error in the engine's dtype (W8A8: bf16; AWQ: fp16, which LMDeploy 0.18 forces for
AWQ). The W8A8 oracle quantises the input of every quantised linear per token (``tiny_quant.load_oracle``). maca
runs in this process (op calls checked in eager mode, no eager decode step in graph mode), ``cuda`` in a child
process (``scenario_cli``). The per-request figures, and how many leading tokens maca and cuda share, go to
``DLINFER_E2E_STATS`` when set. ``DLINFER_QUANT_DEVICES`` (default ``maca,cuda``) picks the devices.

    PHASES=tests TEST_K=quant bash tools/gpu_model_table.sh            (``TEST_K="quant and not 8b"``: tiny only)
"""

from __future__ import annotations

import functools
import json
import os

import pytest
import torch
from test_e2e_gpu import MODES, TP, _run, requires_maca

from dlinfer_lmdeploy.testing import hf_oracle, tiny_quant
from dlinfer_lmdeploy.testing.bf16_check import Run, check_against_hf

pytestmark = [pytest.mark.gpu, pytest.mark.e2e]

DEVICES = tuple(os.environ.get("DLINFER_QUANT_DEVICES", "maca,cuda").split(","))
DTYPE = {name: torch.float16 if "awq" in name else torch.bfloat16 for name in tiny_quant.SCENARIOS}
"""the dtype each checkpoint runs in (its float model is written in it; the oracle's error in it sets the
tolerance): LMDeploy runs AWQ in fp16, W8A8 in the engine's bf16"""


def _shared_prefix(a: list[Run], b: list[Run]) -> list[int]:
    """Per request: how many leading generated tokens two runs of the same requests share."""
    return [next((i for i, (x, y) in enumerate(zip(ra[1], rb[1], strict=True)) if x != y), len(ra[1]))
            for ra, rb in zip(a, b, strict=True)]  # fmt: skip


@requires_maca
@pytest.mark.skipif(TP != 1, reason="the quantised checkpoints are tested at tp=1")
@pytest.mark.parametrize("name", sorted(tiny_quant.SCENARIOS))
def test_quant_maca_and_cuda_against_oracle(name: str, tmp_path, op_calls):  # type: ignore[no-untyped-def]
    scenario = tiny_quant.SCENARIOS[name]
    path = tiny_quant.BUILDERS[name](tmp_path / name, dtype=DTYPE[name])
    oracle = functools.cache(tiny_quant.load_oracle)  # one load per dtype for the test (8b: 6 GB in fp32)
    teacher = functools.partial(hf_oracle.teacher_forced, path, loader=oracle)
    failures: list[str] = []
    stats: list[dict] = []
    by_device: dict[str, dict[str, list[Run]]] = {}
    for device in DEVICES:
        steps: dict = {}
        results = {mode: _run(scenario, path, mode, op_calls, steps, device) for mode in MODES}
        st, fails = check_against_hf(scenario, path, results, "cuda", teacher_forced=teacher, calibration=DTYPE[name])
        failures += [f"{device}: {f}" for f in fails]
        eager_decode = steps["graph"].eager_decode if "graph" in steps else 0
        if eager_decode:
            failures.append(f"{device}/graph: {eager_decode} decode steps ran eagerly: {dict(steps['graph'].eager)}")
        stats += [{**s, "device": device, "quant": name} for s in st]
        by_device[device] = results
    if "maca" in by_device and "cuda" in by_device:
        for mode in MODES:
            stats.append({"request": f"{name}/{mode}", "quant": name,
                          "maca_cuda_shared_tokens": _shared_prefix(by_device["maca"][mode], by_device["cuda"][mode]),
                          "new_tokens": scenario.new_tokens})  # fmt: skip
    oracle.cache_clear()  # a failed test's frame outlives it: free the oracles' GPU memory now
    torch.cuda.empty_cache()
    out = os.environ.get("DLINFER_E2E_STATS")
    if out:
        with open(out, "a") as f:
            for s in stats:
                f.write(json.dumps(s) + "\n")
    assert not failures, "\n".join(failures)
