"""The sliding-window convention: dlinfer's ``window=W`` shows a query its W most recent keys (HF, vLLM).

LMDeploy's own CUDA kernels keep W+1 keys (``j >= p - W``). The ``sliding_window`` scenario (test_e2e_cpu) checks
dlinfer against HF greedy with the window on; this test shows that the scenario tells the two conventions apart:
served with W+1 keys, the same requests diverge from HF.
"""

from __future__ import annotations

import pytest

from dlinfer_lmdeploy.testing import runner
from dlinfer_lmdeploy.testing.scenarios import BY_NAME

pytestmark = pytest.mark.e2e


def test_a_window_of_w_plus_one_keys_diverges_from_hf(tiny_model, hf_greedy, monkeypatch):  # type: ignore[no-untyped-def]
    from dlinfer_lmdeploy.impls import attention

    scenario = BY_NAME["sliding_window"]
    path = tiny_model(scenario.model)
    exact = attention.window_of
    monkeypatch.setattr(attention, "window_of", lambda w: None if exact(w) is None else exact(w) + 1)
    (phase,) = scenario.phases
    with runner.open_pipeline(path, runner.engine_config(**scenario.engine)) as pipe:
        ids = [runner.encode(pipe, p) for p in phase]
        got = runner.generate(pipe, phase, scenario.new_tokens)
    want = hf_greedy(path, ids, scenario.new_tokens)
    assert all(g != w for g, w in zip(got, want, strict=True)), "W+1 keys gave HF's tokens: the window is untested"
